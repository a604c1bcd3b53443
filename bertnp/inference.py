"""Using a trained BERT: fill-mask, next-sentence probability, sentence embeddings, classification
and attention maps.

    import bertnp as bn
    from bertnp import inference as inf
    model = bn.BertForPreTraining.from_pretrained("runs/demo/model")
    tok = bn.BertTokenizer.from_pretrained("runs/demo/model")
    inf.fill_mask(model, tok, "And God said, let there be [MASK].")
        # [{'token_str': 'light', 'token': 1234, 'score': 0.41, 'sequence': 'and god said, let there be light.'}, ...]
    inf.next_sentence_probability(model, tok, "He went home.", "He slept.")      # 0.93

    enc = bn.BertModel.from_pretrained(minilm_dir)            # e.g. all-MiniLM-L6-v2
    emb = inf.sentence_embeddings(enc, tok, ["A man plays guitar.", "Someone strums a guitar."])
    inf.cosine_similarity(emb)                                # (2, 2)
    maps = inf.attention_maps(enc, tok, "The cat sat on the mat.")   # maps.attentions (L, heads, T, T)

Every helper puts the model in eval mode (dropout off) for the call and restores its previous
mode afterwards; outputs are host NumPy arrays / Python numbers whatever the backend. Text goes
through the tokenizer exactly as in training: ``[CLS] A [SEP] (B [SEP])``, truncated to the
model's ``max_position_embeddings`` (or ``max_length``).

Sentence embeddings follow sentence-transformers (all-MiniLM-L6-v2 and friends): the mean of the
last hidden states over the real tokens (attention mask 1, ``[CLS]`` and ``[SEP]`` included,
padding excluded), optionally L2-normalised. ``pooling="cls"`` takes the ``[CLS]`` vector,
``pooling="pooler"`` the tanh-pooled one (what the NSP and classification heads read).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from bertnp import backend

__all__ = ["fill_mask", "next_sentence_probability", "mean_pooling", "sentence_embeddings",
           "cosine_similarity", "classify", "attention_maps", "AttentionMaps", "encode_texts", "softmax"]

IGNORE_INDEX = -100
POOLINGS = ("mean", "cls", "pooler")


# ============================================================================ small helpers

def softmax(x, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of a host array, in float64."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


@contextlib.contextmanager
def _eval_mode(model):
    """Dropout off for the duration; the previous train/eval mode is restored afterwards."""
    if not hasattr(model, "eval") or not hasattr(model, "config"):
        raise TypeError(f"model must be a bertnp model (BertModel, BertForPreTraining, ...), "
                        f"got {type(model).__name__}")
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
        if hasattr(model, "_cache"):
            model._cache = None           # inference needs no backward: free the activations


def _check_tokenizer(model, tokenizer) -> None:
    for attr in ("cls_token_id", "sep_token_id", "pad_token_id", "vocab_size"):
        if not hasattr(tokenizer, attr):
            raise TypeError(f"tokenizer must be a bertnp BertTokenizer, got {type(tokenizer).__name__}")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}: they do not belong together")


def _as_text_list(texts, name: str) -> tuple[list[str], bool]:
    """(list of strings, whether a single string was given)."""
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, (list, tuple)):
        if not texts:
            raise ValueError(f"{name} is empty")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"{name}[{i}] must be a string, got {type(t).__name__}")
        return list(texts), False
    raise TypeError(f"{name} must be a string or a list of strings, got {type(texts).__name__}")


def encode_texts(tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                 max_length: int = 512) -> dict:
    """Tokenize a batch for the model: ``{input_ids, token_type_ids, attention_mask}`` as (B, T)
    int64 arrays, padded to the longest row and truncated to ``max_length`` tokens."""
    enc = tokenizer(list(texts), list(text_pairs) if text_pairs is not None else None,
                    padding=True, truncation=True, max_length=int(max_length), return_tensors="np")
    return {k: np.asarray(enc[k], dtype=np.int64) for k in ("input_ids", "token_type_ids", "attention_mask")}


def _max_length(model, max_length) -> int:
    limit = model.config.max_position_embeddings
    if max_length is None:
        return limit
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    return min(int(max_length), limit)


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


# ============================================================================ masked LM and NSP

def fill_mask(model, tokenizer, text, top_k: int = 5, max_length: int | None = None):
    """The ``top_k`` most likely tokens for each ``[MASK]`` in ``text``.

    The result has the shape of Hugging Face's fill-mask pipeline: for a text with one ``[MASK]``,
    a flat list of ``top_k`` dicts ``{"token_str", "token", "score", "sequence"}``, best first
    (``sequence`` is the text with that mask filled in); for a text with several, one such list per
    ``[MASK]``, in order of appearance (the other masks stay ``[MASK]`` in ``sequence``). Given a
    list of texts, a list with one such result per text::

        fill_mask(model, tok, "the [MASK] sat.")                 # [{...}, {...}, ...]
        fill_mask(model, tok, "the [MASK] sat on the [MASK].")   # [[{...}, ...], [{...}, ...]]
        fill_mask(model, tok, ["a [MASK].", "the [MASK]."])      # [[{...}, ...], [{...}, ...]]

    Only the masked positions go through the 30k-way decoder: the model is called with
    ``labels`` set at the ``[MASK]`` positions, which makes it compute the MLM logits there alone
    (the loss it also computes is ignored).
    """
    from bertnp.model import BertForPreTraining
    if not isinstance(model, BertForPreTraining):
        raise TypeError(f"fill_mask needs a model with the masked-LM head (BertForPreTraining), "
                        f"got {type(model).__name__}")
    _check_tokenizer(model, tokenizer)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    texts, single = _as_text_list(text, "text")
    mask_token, mask_id = tokenizer.mask_token, tokenizer.mask_token_id
    for i, t in enumerate(texts):
        if mask_token not in t:
            raise ValueError(f"text{'' if single else f'[{i}]'} must contain {mask_token}: {t!r}")
    enc = encode_texts(tokenizer, texts, None, _max_length(model, max_length))
    ids = enc["input_ids"]                                                  # (B, T)
    where = ids == mask_id                                                  # (B, T)
    for i in range(len(texts)):
        if not where[i].any():
            raise ValueError(f"{mask_token} in text{'' if single else f'[{i}]'} was truncated away: "
                             "the text is longer than max_length tokens")
    labels = np.where(where, mask_id, IGNORE_INDEX)                         # any valid id marks "predict here"
    with _eval_mode(model):
        out = model(input_ids=ids, attention_mask=enc["attention_mask"],
                    token_type_ids=enc["token_type_ids"], labels=labels)
        logits = backend.to_host(out.prediction_logits)                     # (N, V): masked positions, row-major
    probs = softmax(logits)                                                 # (N, V) float64
    k = min(top_k, probs.shape[1])
    rows, cols = np.nonzero(where)                                          # the same row-major order
    results = [[] for _ in texts]
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    for n, (b, t) in enumerate(zip(rows, cols)):
        p = probs[n]
        top = np.argsort(-p, kind="stable")[:k]
        length = int(enc["attention_mask"][b].sum())
        preds = []
        for token_id in top:
            filled = ids[b, :length].copy()
            filled[t] = token_id
            body = [int(x) for x in filled if int(x) not in special]
            preds.append({"token_str": tokenizer.convert_ids_to_tokens([int(token_id)])[0],
                          "token": int(token_id), "score": float(p[token_id]),
                          "sequence": tokenizer.decode(body)})
        results[b].append(preds)
    results = [r[0] if len(r) == 1 else r for r in results]               # one mask: a flat list, as HF
    return results[0] if single else results


def next_sentence_probability(model, tokenizer, text_a, text_b, max_length: int | None = None):
    """Probability that ``text_b`` follows ``text_a`` (NSP class 0 = IsNext, as Google and HF).

    Strings give a float; two equally long lists give a (B,) float64 array."""
    from bertnp.model import BertForPreTraining
    if not isinstance(model, BertForPreTraining):
        raise TypeError(f"next_sentence_probability needs a model with the NSP head (BertForPreTraining), "
                        f"got {type(model).__name__}")
    _check_tokenizer(model, tokenizer)
    a, single_a = _as_text_list(text_a, "text_a")
    b, single_b = _as_text_list(text_b, "text_b")
    if single_a != single_b or len(a) != len(b):
        raise ValueError(f"text_a and text_b must both be strings or lists of the same length "
                         f"(got {len(a)} and {len(b)})")
    enc = encode_texts(tokenizer, a, b, _max_length(model, max_length))
    with _eval_mode(model):
        out = model(**enc)
        logits = backend.to_host(out.seq_relationship_logits)               # (B, 2)
    p_next = softmax(logits)[:, 0]
    return float(p_next[0]) if single_a else p_next


# ============================================================================ sentence embeddings

def mean_pooling(last_hidden_state, attention_mask) -> np.ndarray:
    """Mean of the hidden states over the tokens whose mask is 1: (B, T, C), (B, T) -> (B, C).

    Accumulated in float64 and returned in the hidden states' dtype (sentence-transformers'
    pooling, before any normalisation). A row with no real token (mask all 0) is a ValueError."""
    h = backend.to_host(last_hidden_state) if hasattr(last_hidden_state, "dtype") else np.asarray(last_hidden_state)
    m = backend.to_host(attention_mask) if hasattr(attention_mask, "dtype") else np.asarray(attention_mask)
    if h.ndim != 3 or m.shape != h.shape[:2]:
        raise ValueError(f"last_hidden_state (B, T, C) and attention_mask (B, T) disagree: "
                         f"{h.shape} and {m.shape}")
    # TASK 7.1 mean_pooling: the mean over the real tokens only (lesson 13)
    w = m.astype(np.float64)[:, :, None]                                     # (B, T) -> (B, T, 1)
    counts = w.sum(axis=1)                                                   # (B, 1)
    if np.any(counts == 0):
        raise ValueError("attention_mask has a row with no real token: nothing to average")
    pooled = (h.astype(np.float64) * w).sum(axis=1) / counts                 # (B, T, C) -> (B, C)
    # END TASK 7.1
    return pooled.astype(h.dtype if h.dtype.kind == "f" else np.float64)


def sentence_embeddings(model, tokenizer, texts, pooling: str = "mean", normalize: bool = False,
                        batch_size: int = 32, max_length: int | None = None) -> np.ndarray:
    """One vector per text: (N, hidden_size), in the model's dtype.

    ``pooling``: "mean" (over the attention mask, sentence-transformers' choice), "cls" (the
    final ``[CLS]`` hidden state) or "pooler" (tanh(W h_CLS + b), needs a pooler). ``normalize``
    scales each vector to unit length (then dot products are cosine similarities). Texts go in
    batches of ``batch_size``; padding never changes a text's vector."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if pooling == "pooler" and not getattr(model, "has_pooler", True):
        raise ValueError("pooling='pooler' needs a model with a pooler (add_pooling_layer=True)")
    _check_tokenizer(model, tokenizer)
    batch_size = _check_batch_size(batch_size)
    texts, single = _as_text_list(texts, "texts")
    limit = _max_length(model, max_length)
    chunks = []
    with _eval_mode(model):
        for start in range(0, len(texts), batch_size):
            enc = encode_texts(tokenizer, texts[start:start + batch_size], None, limit)
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                        token_type_ids=enc["token_type_ids"])
            if pooling == "mean":
                chunks.append(mean_pooling(out.last_hidden_state, enc["attention_mask"]))
            elif pooling == "cls":
                chunks.append(backend.to_host(out.last_hidden_state[:, 0]))  # (B, T, C) -> (B, C)
            else:
                chunks.append(backend.to_host(out.pooler_output))
    emb = np.concatenate(chunks, axis=0)
    if normalize:
        # TASK 7.1 unit_rows: each vector scaled to length 1 (lesson 13)
        norms = np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
        emb = (emb / np.maximum(norms, 1e-12)).astype(emb.dtype)
        # END TASK 7.1
    return emb[0] if single else emb


def cosine_similarity(a, b=None) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b`` (default ``a``): (N, M), float64."""
    a = np.atleast_2d(np.asarray(backend.to_host(a) if hasattr(a, "dtype") else a, dtype=np.float64))
    b = a if b is None else np.atleast_2d(np.asarray(backend.to_host(b) if hasattr(b, "dtype") else b,
                                                     dtype=np.float64))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"cosine_similarity needs (N, C) and (M, C) arrays, got {a.shape} and {b.shape}")
    # TASK 7.1 cosine_similarity: (lesson 13)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    similarity = a @ b.T                                                     # (N, C) @ (C, M) -> (N, M)
    # END TASK 7.1
    return similarity


# ============================================================================ classification

def classify(model, tokenizer, texts, text_pairs=None, batch_size: int = 32, max_length: int | None = None):
    """Predict with a :class:`~bertnp.BertForSequenceClassification`.

    Returns one dict per text: ``{"label": name, "label_id": i, "score": p(label),
    "probabilities": {name: p}}``; label names come from the config's ``id2label`` (what
    :mod:`bertnp.finetune` saves), else ``LABEL_i``. A single string gives a single dict."""
    from bertnp.model import BertForSequenceClassification
    if not isinstance(model, BertForSequenceClassification):
        raise TypeError(f"classify needs a BertForSequenceClassification, got {type(model).__name__}")
    _check_tokenizer(model, tokenizer)
    batch_size = _check_batch_size(batch_size)
    texts, single = _as_text_list(texts, "texts")
    pairs = None
    if text_pairs is not None:
        pairs, single_p = _as_text_list(text_pairs, "text_pairs")
        if single_p != single or len(pairs) != len(texts):
            raise ValueError("text_pairs must match texts (both strings, or lists of the same length)")
    names = label_names(model)
    limit = _max_length(model, max_length)
    results = []
    with _eval_mode(model):
        for start in range(0, len(texts), batch_size):
            enc = encode_texts(tokenizer, texts[start:start + batch_size],
                               None if pairs is None else pairs[start:start + batch_size], limit)
            probs = softmax(backend.to_host(model(**enc).logits))               # (B, num_labels)
            for row in probs:
                i = int(np.argmax(row))
                results.append({"label": names[i], "label_id": i, "score": float(row[i]),
                                "probabilities": {names[j]: float(row[j]) for j in range(len(names))}})
    return results[0] if single else results


def label_names(model) -> list[str]:
    """The class names of a classifier: its config's ``id2label`` if complete, else ``LABEL_i``."""
    n = model.num_labels
    id2label = model.config.extra.get("id2label") or {}
    try:
        names = [str(id2label[str(i)]) if str(i) in id2label else str(id2label[i]) for i in range(n)]
    except (KeyError, TypeError):
        names = [f"LABEL_{i}" for i in range(n)]
    return names


# ============================================================================ attention maps

@dataclass
class AttentionMaps:
    """Attention probabilities of one (pair of) text(s): ``attentions[layer, head, query, key]``."""
    tokens: list                  # the T tokens, [CLS] ... [SEP]
    attentions: np.ndarray        # (L, heads, T, T); each row (query) sums to 1 over the keys
    input_ids: np.ndarray         # (T,)
    token_type_ids: np.ndarray    # (T,)

    @property
    def num_layers(self) -> int:
        return self.attentions.shape[0]

    @property
    def num_heads(self) -> int:
        return self.attentions.shape[1]

    def head(self, layer: int, head: int | None = None) -> np.ndarray:
        """(T, T) map of one head, or the mean over the heads when ``head`` is None."""
        if not -self.num_layers <= layer < self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}), got {layer}")
        if head is None:
            return self.attentions[layer].mean(axis=0)
        if not -self.num_heads <= head < self.num_heads:
            raise ValueError(f"head must be in [0, {self.num_heads}), got {head}")
        return self.attentions[layer, head]


def attention_maps(model, tokenizer, text: str, text_pair: str | None = None,
                   max_length: int | None = None) -> AttentionMaps:
    """Run one text (or pair) with ``output_attentions=True`` and return every layer's and head's
    attention probabilities (after softmax, before dropout; eval mode) as host float arrays.
    Draw them with :func:`bertnp.viz.plot_attention`."""
    _check_tokenizer(model, tokenizer)
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if text_pair is not None and not isinstance(text_pair, str):
        raise TypeError(f"text_pair must be a string, got {type(text_pair).__name__}")
    enc = encode_texts(tokenizer, [text], None if text_pair is None else [text_pair], _max_length(model, max_length))
    with _eval_mode(model):
        kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                  "token_type_ids": enc["token_type_ids"], "output_attentions": True}
        out = model(**kwargs)
        layers = [backend.to_host(a)[0] for a in out.attentions]           # L x (heads, T, T)
    ids = enc["input_ids"][0]
    return AttentionMaps(tokens=tokenizer.convert_ids_to_tokens([int(i) for i in ids]),
                         attentions=np.stack(layers), input_ids=ids,
                         token_type_ids=enc["token_type_ids"][0])
