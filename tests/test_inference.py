"""Inference helpers (bertnp.inference) and attention figures (bertnp.viz) on tiny
models: fill-mask equals the full-logit softmax, NSP probability, mean pooling (also against the
recorded MiniLM hidden states), padding invariance, attention maps recomputed by hand, and the
figures written as PNG files. The real-checkpoint checks are in test_pretrained.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertnp import inference as inf
from bertnp.config import BertConfig
from bertnp.model import BertForPreTraining, BertForSequenceClassification, BertModel
from bertnp.tokenizer import BertTokenizer
from conftest import host

FIXTURE = Path(__file__).resolve().parent / "reference" / "minilm_outputs.npz"
WORDS = "the a cat dog sat ran on under mat sofa king queen house river big small and then slept".split()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS + ["##s", "##ed"]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer(root / "vocab.txt")


def config(tok, **kw):
    base = dict(vocab_size=tok.vocab_size, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                intermediate_size=40, max_position_embeddings=32)
    base.update(kw)
    return BertConfig(**base)


@pytest.fixture(scope="module")
def pre64(tok):
    return BertForPreTraining(config(tok), seed=3, dtype="float64")


# ============================================================================ fill-mask and NSP

def test_fill_mask_equals_softmax_of_full_logits(tok, pre64):
    text = "the [MASK] sat on the [MASK] ."
    result = inf.fill_mask(pre64, tok, text, top_k=4)
    assert len(result) == 2 and all(len(r) == 4 for r in result)
    enc = tok(text, return_tensors="np")
    pre64.eval()
    full = host(pre64(**enc).prediction_logits)[0]                           # (T, V): every position
    positions = np.flatnonzero(enc["input_ids"][0] == tok.mask_token_id)
    for preds, pos in zip(result, positions):
        p = inf.softmax(full[pos])
        top = np.argsort(-p)[:4]
        assert [d["token"] for d in preds] == top.tolist()
        np.testing.assert_allclose([d["score"] for d in preds], p[top], rtol=1e-12)
        assert [d["score"] for d in preds] == sorted([d["score"] for d in preds], reverse=True)
        for d in preds:
            assert d["token_str"] == tok.convert_ids_to_tokens([d["token"]])[0]
            assert "[CLS]" not in d["sequence"] and "[SEP]" not in d["sequence"]
            assert d["sequence"].count("[MASK]") == 1                       # the other mask stays
    batch = inf.fill_mask(pre64, tok, [text, "a [MASK] ran ."], top_k=2)
    assert len(batch) == 2 and len(batch[0]) == 2 and len(batch[1]) == 2
    assert [d["token"] for d in batch[0][0]] == [d["token"] for d in result[0][:2]]
    assert all(isinstance(d, dict) for d in batch[1])                      # one mask: a flat list


def test_fill_mask_one_mask_is_a_flat_list_as_hf_pipeline(tok, pre64):
    """HF's pipeline: one text with one [MASK] -> [dict, ...]; a list of such texts -> [[dict, ...], ...]."""
    one = inf.fill_mask(pre64, tok, "the [MASK] ran .", top_k=3)
    assert isinstance(one, list) and len(one) == 3 and all(isinstance(d, dict) for d in one)
    assert one[0]["score"] >= one[1]["score"] >= one[2]["score"]
    two = inf.fill_mask(pre64, tok, ["the [MASK] ran .", "a [MASK] sat ."], top_k=3)
    assert len(two) == 2 and all(isinstance(r, list) and len(r) == 3 for r in two)
    assert all(isinstance(d, dict) for r in two for d in r)
    assert [d["token"] for d in two[0]] == [d["token"] for d in one]


def test_fill_mask_errors_and_mode_restored(tok, pre64):
    pre64.train()
    count = pre64.forward_count
    inf.fill_mask(pre64, tok, "the [MASK] .")
    assert pre64.training and pre64.forward_count == count                # dropout mode back, no dropout drawn
    pre64.eval()
    with pytest.raises(ValueError, match=r"must contain \[MASK\]"):
        inf.fill_mask(pre64, tok, "no mask here")
    with pytest.raises(ValueError, match=r"text\[1\] must contain"):
        inf.fill_mask(pre64, tok, ["the [MASK]", "none"])
    with pytest.raises(ValueError, match="top_k"):
        inf.fill_mask(pre64, tok, "the [MASK]", top_k=0)
    with pytest.raises(ValueError, match="truncated away"):
        inf.fill_mask(pre64, tok, "the " * 40 + "[MASK]")
    with pytest.raises(TypeError, match="BertForPreTraining"):
        inf.fill_mask(BertModel(config(tok)), tok, "the [MASK]")
    with pytest.raises(TypeError, match="model"):
        inf.fill_mask("model", tok, "the [MASK]")


def test_next_sentence_probability(tok, pre64):
    p = inf.next_sentence_probability(pre64, tok, "the cat sat .", "the dog ran .")
    enc = tok("the cat sat .", "the dog ran .", return_tensors="np")
    pre64.eval()
    logits = pre64(**enc).seq_relationship_logits[0]
    assert p == pytest.approx(float(np.exp(logits[0]) / np.exp(logits).sum()), rel=1e-12)
    both = inf.next_sentence_probability(pre64, tok, ["the cat sat .", "a king"], ["the dog ran .", "a queen slept"])
    assert both.shape == (2,) and both[0] == pytest.approx(p, rel=1e-9)
    with pytest.raises(ValueError, match="same length"):
        inf.next_sentence_probability(pre64, tok, ["a"], ["b", "c"])
    with pytest.raises(TypeError, match="NSP head"):
        inf.next_sentence_probability(BertModel(config(tok)), tok, "a", "b")


# ============================================================================ sentence embeddings

def test_mean_pooling_on_recorded_minilm_states():
    """The pooling formula alone, on HF's recorded hidden states (no checkpoint needed)."""
    ref = np.load(FIXTURE)
    got = inf.mean_pooling(ref["last_hidden_state_f64"], ref["attention_mask"])
    np.testing.assert_allclose(got, ref["mean_embeddings_f64"], rtol=0, atol=1e-13)
    assert got.dtype == np.float64
    np.testing.assert_allclose(inf.cosine_similarity(got), ref["cosine_similarity_f64"], atol=1e-13)
    got32 = inf.mean_pooling(ref["last_hidden_state"], ref["attention_mask"])
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, ref["mean_embeddings"], atol=1e-6)
    with pytest.raises(ValueError, match="no real token"):
        inf.mean_pooling(np.zeros((1, 2, 3)), np.zeros((1, 2), dtype=int))
    with pytest.raises(ValueError, match="disagree"):
        inf.mean_pooling(np.zeros((1, 2, 3)), np.ones((1, 3), dtype=int))


def test_sentence_embeddings_do_not_depend_on_padding_or_batching(tok):
    model = BertModel(config(tok), seed=1, dtype="float64").eval()
    texts = ["the cat sat on the mat .", "a dog", "the king and the queen slept under a big tree house ."]
    one_by_one = np.stack([inf.sentence_embeddings(model, tok, t) for t in texts])
    together = inf.sentence_embeddings(model, tok, texts, batch_size=8)
    pairs = inf.sentence_embeddings(model, tok, texts, batch_size=2)
    np.testing.assert_allclose(together, one_by_one, atol=1e-12)
    np.testing.assert_allclose(pairs, one_by_one, atol=1e-12)
    # the mean is over [CLS] ... [SEP] of each text: recompute the first by hand
    enc = tok(texts[1], return_tensors="np")
    h = host(model(**enc).last_hidden_state)[0]
    np.testing.assert_allclose(together[1], h.mean(axis=0), atol=1e-12)
    cls = inf.sentence_embeddings(model, tok, texts, pooling="cls")
    np.testing.assert_allclose(cls[1], h[0], atol=1e-12)
    pooled = inf.sentence_embeddings(model, tok, texts, pooling="pooler")
    np.testing.assert_allclose(pooled[1], host(model(**enc).pooler_output)[0], atol=1e-12)
    unit = inf.sentence_embeddings(model, tok, texts, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(unit @ unit.T, inf.cosine_similarity(together), atol=1e-12)
    assert inf.sentence_embeddings(BertModel(config(tok)), tok, texts).dtype == np.float32
    with pytest.raises(ValueError, match="pooling"):
        inf.sentence_embeddings(model, tok, texts, pooling="max")
    with pytest.raises(ValueError, match="pooler"):
        inf.sentence_embeddings(BertModel(config(tok), add_pooling_layer=False), tok, texts, pooling="pooler")
    with pytest.raises(ValueError, match="empty"):
        inf.sentence_embeddings(model, tok, [])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        inf.sentence_embeddings(model, tok, ["a", 3])
    with pytest.raises(ValueError, match="batch_size"):
        inf.sentence_embeddings(model, tok, texts, batch_size=0)


def test_cosine_similarity():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    s = inf.cosine_similarity(a)
    np.testing.assert_allclose(s, [[1, 2 ** -0.5, -1], [2 ** -0.5, 1, -(2 ** -0.5)], [-1, -(2 ** -0.5), 1]])
    assert inf.cosine_similarity(a, a[:1]).shape == (3, 1)
    with pytest.raises(ValueError, match="cosine_similarity"):
        inf.cosine_similarity(a, np.ones((2, 3)))


def test_tokenizer_and_model_must_match(tok):
    small = BertModel(config(tok, vocab_size=10))
    with pytest.raises(ValueError, match="vocab_size"):
        inf.sentence_embeddings(small, tok, "the cat")
    with pytest.raises(TypeError, match="BertTokenizer"):
        inf.sentence_embeddings(BertModel(config(tok)), "not a tokenizer", "the cat")


# ============================================================================ classification

def test_classify_uses_label_names(tok, tmp_path):
    cfg = config(tok)
    cfg.extra["id2label"] = {"0": "animal", "1": "royal", "2": "place"}
    clf = BertForSequenceClassification(cfg, num_labels=3, seed=0, dtype="float64")
    out = inf.classify(clf, tok, ["the cat sat", "the king"], text_pairs=["on the mat", "and queen"])
    assert len(out) == 2
    for r in out:
        assert set(r["probabilities"]) == {"animal", "royal", "place"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
        assert r["score"] == r["probabilities"][r["label"]]
    single = inf.classify(clf, tok, "the cat sat", text_pairs="on the mat")
    # alone the text is not padded, so BLAS sums in another order: equal to rounding, not bitwise
    assert (single["label"], single["label_id"]) == (out[0]["label"], out[0]["label_id"])
    for name, p in out[0]["probabilities"].items():
        assert single["probabilities"][name] == pytest.approx(p, rel=1e-12, abs=0)
    clf.save_pretrained(tmp_path / "clf")                   # the names survive save / load
    again = BertForSequenceClassification.from_pretrained(tmp_path / "clf", dtype="float64")
    assert inf.label_names(again) == ["animal", "royal", "place"]
    assert inf.classify(again, tok, "the cat sat", text_pairs="on the mat")["label"] == out[0]["label"]
    plain = BertForSequenceClassification(config(tok), num_labels=2)
    assert inf.label_names(plain) == ["LABEL_0", "LABEL_1"]
    with pytest.raises(TypeError, match="BertForSequenceClassification"):
        inf.classify(BertModel(config(tok)), tok, "a")


# ============================================================================ attention maps

def test_attention_maps_are_the_models_probabilities(tok):
    """Layer 0's maps recomputed by hand from the weights (embeddings -> LayerNorm -> QK^T/sqrt(d)
    -> softmax), in float64; every row of every map sums to 1."""
    model = BertModel(config(tok), seed=5, dtype="float64")
    maps = inf.attention_maps(model, tok, "the cat sat .", "a dog ran")
    T = len(maps.tokens)
    assert maps.tokens[0] == "[CLS]" and maps.tokens[-1] == "[SEP]" and maps.tokens.count("[SEP]") == 2
    assert maps.attentions.shape == (2, 3, T, T)
    assert maps.token_type_ids.tolist() == [0] * 6 + [1] * 4
    np.testing.assert_allclose(maps.attentions.sum(axis=-1), 1.0, atol=1e-12)
    P, c = {name: host(p) for name, p in model.state_dict().items()}, model.config
    ids, types = maps.input_ids, maps.token_type_ids
    x = (P["embeddings.word_embeddings.weight"][ids] + P["embeddings.position_embeddings.weight"][:T]
         + P["embeddings.token_type_embeddings.weight"][types])                       # (T, C)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    x = (x - mu) / np.sqrt(var + c.layer_norm_eps) * P["embeddings.LayerNorm.weight"] + P["embeddings.LayerNorm.bias"]
    L = "encoder.layer.0.attention.self."
    q = x @ P[L + "query.weight"].T + P[L + "query.bias"]
    k = x @ P[L + "key.weight"].T + P[L + "key.bias"]
    hs = c.hidden_size // c.num_attention_heads
    for h in range(c.num_attention_heads):
        s = q[:, h * hs:(h + 1) * hs] @ k[:, h * hs:(h + 1) * hs].T / np.sqrt(hs)    # (T, T)
        np.testing.assert_allclose(maps.head(0, h), inf.softmax(s), atol=1e-12)
    np.testing.assert_allclose(maps.head(1), maps.attentions[1].mean(axis=0))
    with pytest.raises(ValueError, match="layer"):
        maps.head(2)
    with pytest.raises(ValueError, match="head"):
        maps.head(0, 3)
    with pytest.raises(TypeError, match="text"):
        inf.attention_maps(model, tok, ["a", "b"])


def test_attention_figures(tok, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from bertnp.viz import plot_attention, plot_attention_heads
    model = BertForPreTraining(config(tok), seed=2)
    maps = inf.attention_maps(model, tok, "the cat sat on the mat .")
    path = plot_attention(maps, layer=1, head=2, path=tmp_path / "figs" / "one.png")
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    grid = plot_attention_heads(maps, layer=0, path=tmp_path / "heads.png")
    assert grid.is_file() and grid.stat().st_size > 5000
    fig = plot_attention(maps.attentions[0, 0], tokens=maps.tokens)         # a bare (T, T) map
    assert isinstance(fig, Figure)
    assert isinstance(plot_attention(maps, head=None), Figure)              # mean of the heads
    with pytest.raises(ValueError, match="layer"):
        plot_attention(maps, layer=5)
    with pytest.raises(ValueError, match="tokens"):
        plot_attention(maps.attentions, tokens=["a"])
    with pytest.raises(ValueError, match="ncols"):
        plot_attention_heads(maps, ncols=0)
