"""Corpus reading, BERT pretraining instances (NSP pairs + masking), batching.

The pipeline, one function or class per step:

    read_corpus(paths)              -> documents: list of documents, each a list of sentences (str)
    tokenize_documents(docs, tok)   -> the same shape with token ids (each word tokenized once, cached)
    PretrainingDataset(docs, tok)   -> sentence pairs + masks, exactly as Google's
                                       create_pretraining_data.py builds them
    PretrainingLoader(ds, 16)       -> batches: dict of int64 NumPy arrays, resumable via state_dict()

Instance generation follows Google's ``create_pretraining_data.py`` (google-research/bert) step by
step; each block below names the step it reproduces. Where that script (or another well-known
implementation) has a known bug, the block says so and says what we do instead:

* random "next" segment drawn from the *same* document after 10 unlucky tries (small corpora):
  we keep Google's 10 tries and then draw from the other documents;
* a corpus of one document gives silently wrong NSP data: we raise a ValueError; a corpus whose
  documents all have one sentence works, but every pair is a random next (a UserWarning says so);
* random replacement may draw ``[PAD]``, ``[CLS]``, ``[unused7]``...: excluded by default
  (``random_token_excludes_special=True``), allowed as an option for exact parity;
* whole-word masking decides 80/10/10 per word piece in Google's code: we decide once per word;
  and its grouping glues a ``##`` piece that starts B (after front truncation) to A's last word,
  across the ``[SEP]``: here a word never spans a ``[SEP]``;
* Hugging Face's NSP dataset never truncated pairs over the block size: we always truncate
  (``truncate_seq_pair``), and a test checks that no instance is longer than ``max_seq_length``;
* a literal ``[SEP]`` / ``[CLS]`` / ``[MASK]`` / ``[PAD]`` in the corpus *text* would become the
  special token and forge a segment boundary: such tokens are read as ``[UNK]``.

NSP labels are Google's and Hugging Face's: **0 = IsNext, 1 = random next** (d2l and codertimo
use the opposite). MLM labels are -100 where nothing is predicted (PyTorch's ignore index).

Randomness: every random choice comes from an explicit ``random.Random`` (the generator Google's
script uses) or ``numpy.random.Generator``, seeded from the ``seed`` argument; the global RNGs are
never touched. With ``masking="static"``, ``random_token_excludes_special=False`` and
``whole_word_mask=False`` the sequence of random draws is the one Google's script makes, so the
same token-id corpus and seed give Google's instances.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "split_sentences",
    "read_corpus",
    "documents_from_text",
    "tokenize_documents",
    "MaskingVocab",
    "TrainingInstance",
    "truncate_seq_pair",
    "create_instances_from_document",
    "create_masked_lm_predictions",
    "create_training_instances",
    "num_to_predict",
    "collate",
    "PretrainingDataset",
    "PretrainingLoader",
    "shorter_sequences",
    "format_instance",
    "plot_instance",
    "IGNORE_INDEX",
]

IGNORE_INDEX = -100  # label of a position that is not predicted (torch.nn.CrossEntropyLoss default)

# --------------------------------------------------------------------------------------------
# 1. Reading a corpus
# --------------------------------------------------------------------------------------------

# Words ending in "." that do not end a sentence. Kept short on purpose: a splitter for teaching,
# not a full one. Single capital letters (initials such as "J. R. Tolkien") do not end a sentence
# either, except "I" (the pronoun ends sentences far more often than it is an initial).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e cf fig vol no nos viz approx dept est "
    "jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
# A sentence ends at . ! or ? (possibly repeated), optionally followed by closing quotes or
# brackets, then whitespace, then something that can start a sentence: an opening quote or
# bracket (optional) and an upper-case letter or a digit.
_SENTENCE_END = re.compile(r"""([.!?]+)(["'\u2019\u201d)\]]*)\s+(?=["'\u2018\u201c(\[]*[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    """Split plain prose into sentences (the splitter used for ``format="plain"`` files).

    Rules, in order:
      * a blank line (paragraph break) always ends a sentence; other line breaks are spaces;
      * a sentence ends after ``.``, ``!`` or ``?`` (and any closing quotes / brackets right after
        it) when whitespace and then an upper-case letter or digit (optionally behind an opening
        quote or bracket) follow;
      * except after an abbreviation (``Mr.``, ``Dr.``, ``e.g.``, ``etc.``... see
        ``_ABBREVIATIONS``), a single capital letter other than ``I`` (an initial), or a number
        that starts the sentence (a list item: ``2. Performance of...``).
    Whitespace inside a sentence is collapsed to single spaces; empty sentences are dropped.

    >>> split_sentences('He said, "Stop." Then Mr. Smith left.  It was 5 p.m. when')
    ['He said, "Stop."', 'Then Mr. Smith left.', 'It was 5 p.m. when']
    """
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        start = 0
        for m in _SENTENCE_END.finditer(paragraph):
            if m.group(1) == ".":
                # the word right before the full stop, without opening quotes / brackets
                word = paragraph[start : m.start(1)].rsplit(" ", 1)[-1].lstrip("\"'(\u2018\u201c[")
                if word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper() and word != "I"):
                    continue
                if word.isdigit() and paragraph[start:m.start(1)].strip() == word:
                    continue
            sentences.append(paragraph[start : m.end(2)])
            start = m.end()
        tail = paragraph[start:].strip()
        if tail:
            sentences.append(tail)
    return sentences


def documents_from_text(text: str, format: str = "bert") -> list[list[str]]:
    """Parse one file's text into documents (lists of sentences).

    ``format="bert"`` is Google's corpus format: one sentence per line, a blank line between
    documents (lines are stripped; a line of only whitespace counts as blank).
    ``format="plain"``: the whole text is one document, split with :func:`split_sentences`.
    Empty documents are dropped.
    """
    if format == "bert":
        documents: list[list[str]] = [[]]
        for line in text.splitlines():
            line = line.strip()
            if not line:  # create_training_instances: "Empty lines are used as document delimiters"
                documents.append([])
            else:
                documents[-1].append(line)
        return [d for d in documents if d]
    if format == "plain":
        sentences = split_sentences(text)
        return [sentences] if sentences else []
    raise ValueError(f"format must be 'bert' or 'plain', got {format!r}")


def _read_text(path: Path) -> str:
    """Read a UTF-8 file (gzip-compressed or not, detected by its magic bytes)."""
    if path.is_dir():
        raise FileNotFoundError(f"corpus file not found: '{path}' is a folder; give the files in it")
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: '{path}'")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"corpus file '{path}': corrupt gzip data ({e})") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # Decode again line by line, only to say *where* the bad byte is.
        for lineno, line in enumerate(raw.split(b"\n"), start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"corpus file '{path}', line {lineno}: not valid UTF-8 "
                    f"(byte 0x{line[e.start]:02x} at column {e.start + 1}); "
                    "convert the file to UTF-8 first"
                ) from None
        raise  # pragma: no cover - the whole-file decode failed, so some line fails too
    return text.lstrip("\ufeff")  # a UTF-8 byte-order mark is not text


def read_corpus(paths, format: str = "bert") -> list[list[str]]:
    """Read one or more corpus files into documents: ``list[list[str]]`` (sentences).

    ``paths``: a path or a list of paths (``str`` or ``os.PathLike``); ``.gz`` files (any file
    starting with gzip's magic bytes) are decompressed transparently. Files must be UTF-8
    (a ``ValueError`` names the file and line otherwise). ``format``: ``"bert"`` (one sentence
    per line, blank line between documents) or ``"plain"`` (each file one document, split into
    sentences by :func:`split_sentences`). Every file starts a new document (Google's reader lets
    the last document of one file run on into the next file when it lacks a final blank line).

    Raises FileNotFoundError (naming the file), ValueError for bad UTF-8, a bad ``format``, or a
    corpus without a single sentence.
    """
    if format not in ("bert", "plain"):
        raise ValueError(f"format must be 'bert' or 'plain', got {format!r}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("paths: no corpus files given")
    documents: list[list[str]] = []
    for path in paths:
        documents.extend(documents_from_text(_read_text(path), format))
    if not documents:
        raise ValueError(f"corpus is empty: no sentences in {', '.join(str(p) for p in paths)}")
    return documents


# --------------------------------------------------------------------------------------------
# 2. Tokenizing (each distinct word once)
# --------------------------------------------------------------------------------------------


def _token_strings(tokenizer) -> list[str]:
    """id -> token string for the tokenizer's whole vocabulary (duck-typed)."""
    n = len(tokenizer)
    itos = getattr(tokenizer, "ids_to_tokens", None)
    if itos is None:
        itos = {i: t for t, i in tokenizer.vocab.items()}
    if isinstance(itos, dict):
        return [itos.get(i, "[UNK]") for i in range(n)]
    return [itos[i] for i in range(n)]


def _forbidden_in_text(tokenizer) -> set[int]:
    """Special ids that must not come out of corpus text: [CLS] [SEP] [MASK] [PAD]."""
    return {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, tokenizer.pad_token_id}


def tokenize_documents(documents: Sequence[Sequence[str]], tokenizer) -> list[list[list[int]]]:
    """Tokenize sentences into token ids, keeping the documents' shape.

    Speed: the text is cut at spaces and each distinct chunk (a word with its punctuation) is
    tokenized once and cached. This equals tokenizing the whole line because BERT's tokenizer
    treats a space as a hard boundary (every later step - lower-casing, punctuation split,
    WordPiece - works inside whitespace-separated pieces). The Bible has ~13k distinct chunks in
    ~800k, so the corpus tokenizes in seconds.

    Like Google's reader, a sentence that gives no tokens is dropped, then empty documents.
    A special token written literally in the text (``[SEP]``...) becomes ``[UNK]`` so that the
    text can never forge a segment boundary or a mask.
    """
    # bertnp.tokenizer.BertTokenizer has this cache built in (shared across calls); for any
    # other tokenizer with tokenize / convert_tokens_to_ids we keep our own.
    encode = getattr(tokenizer, "encode_words_cached", None)
    cache: dict[str, list[int]] = {}

    def encode_with_own_cache(sentence: str) -> list[int]:
        ids: list[int] = []
        for chunk in sentence.split(" "):
            if not chunk:
                continue
            piece = cache.get(chunk)
            if piece is None:
                piece = cache[chunk] = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(chunk))
            ids.extend(piece)
        return ids

    encode = encode or encode_with_own_cache
    return _documents_of_ids(documents, lambda d, k, sentence: encode(sentence), tokenizer)


def _documents_of_ids(documents, encode, tokenizer) -> list[list[list[int]]]:
    """``encode(d, k, sentence) -> ids`` for every sentence k of every document d; a literal
    ``[CLS] [SEP] [MASK] [PAD]`` id becomes ``[UNK]``; empty sentences and documents are dropped."""
    unk = tokenizer.unk_token_id
    forbidden = _forbidden_in_text(tokenizer)
    out: list[list[list[int]]] = []
    for d, doc in enumerate(documents):
        doc_ids: list[list[int]] = []
        for k, sentence in enumerate(doc):
            ids = encode(d, k, sentence)
            if any(i in forbidden for i in ids):
                ids = [unk if i in forbidden else i for i in ids]
            if ids:
                doc_ids.append(ids)
        if doc_ids:
            out.append(doc_ids)
    return out


# --------------------------------------------------------------------------------------------
# 3. Pairs: create_instances_from_document and truncate_seq_pair
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingInstance:
    """One pretraining example, all as token ids.

    ``tokens``: the original ``[CLS] A [SEP] B [SEP]``; ``input_ids``: the same after masking;
    ``masked_positions`` (ascending) and ``masked_labels`` (the original ids there);
    ``segment_ids``: 0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``; ``is_random_next``: True when B
    comes from another document (NSP label 1); ``doc_a`` / ``doc_b``: the documents A and B come
    from (indices into the tokenized corpus, for tests and pictures); ``chunk_sentences``: how
    many sentences the packed chunk had (1 forces a random next, as in Google's script).
    """

    tokens: list[int]
    segment_ids: list[int]
    is_random_next: bool
    doc_a: int
    doc_b: int
    chunk_sentences: int = 0
    input_ids: list[int] = field(default_factory=list)
    masked_positions: list[int] = field(default_factory=list)
    masked_labels: list[int] = field(default_factory=list)

    @property
    def next_sentence_label(self) -> int:
        """0 = IsNext, 1 = random next (Google / Hugging Face convention)."""
        return int(self.is_random_next)


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_num_tokens: int, rng: random.Random) -> None:
    """Google's ``truncate_seq_pair``, in place: while the pair is too long, drop one token from
    the longer segment (B on a tie), from the front or the back with probability 0.5 each."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        # "sometimes truncate from the front and sometimes from the back ... avoid biases"
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


def create_instances_from_document(
    all_documents: Sequence[Sequence[Sequence[int]]],
    document_index: int,
    max_seq_length: int,
    short_seq_prob: float,
    rng: random.Random,
    cls_id: int,
    sep_id: int,
    mask_fn=None,
) -> list[TrainingInstance]:
    """Google's ``create_instances_from_document`` on token ids.

    ``mask_fn(instance)``, if given, masks each instance right after it is built, which is where
    Google's script calls ``create_masked_lm_predictions`` (so the random draws interleave the
    same way). Without it the instances come back unmasked (``input_ids == tokens``).
    """
    document = all_documents[document_index]
    n_docs = len(all_documents)
    # Account for [CLS], [SEP], [SEP]
    max_num_tokens = max_seq_length - 3

    # Per document target length: usually full, with probability short_seq_prob a random shorter
    # one (to reduce the mismatch between pretraining and short fine-tuning inputs).
    # TASK 4.2 create_instances: chunks, the A/B split, random next (lesson 03)
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    # Pack whole sentences into a chunk until the target is reached; then split the chunk at a
    # random sentence boundary into A and B (so NSP is about real sentence boundaries).
    instances: list[TrainingInstance] = []
    current_chunk: list[Sequence[int]] = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                # `a_end`: how many sentences of the chunk go into A (random split point).
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a: list[int] = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])

                tokens_b: list[int] = []
                doc_b = document_index
                # Random next: always when the chunk has one sentence, else with probability 0.5.
                # (`or` short-circuits: no random draw for a one-sentence chunk, as in Google's.)
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    # Google: 10 tries to find a different document ...
                    for _ in range(10):
                        random_document_index = rng.randint(0, n_docs - 1)
                        if random_document_index != document_index:
                            break
                    # ... and then it used the same document anyway (a known bug on small corpora:
                    # with 2 documents it happens once in 1024 random-next pairs). We draw
                    # uniformly from the *other* documents instead. Only reached after 10
                    # unlucky tries, so the random stream is otherwise unchanged.
                    if random_document_index == document_index:
                        random_document_index = rng.randint(0, n_docs - 2)
                        if random_document_index >= document_index:
                            random_document_index += 1
                    doc_b = random_document_index
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    # The chunk's B sentences were not used: "put them back" so they are not wasted.
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                else:
                    # Actual next: B is the rest of the chunk.
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                # Too long pairs are truncated, never dropped and never left long.
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                assert len(tokens_a) >= 1 and len(tokens_b) >= 1

                tokens = [cls_id, *tokens_a, sep_id, *tokens_b, sep_id]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                instance = TrainingInstance(tokens, segment_ids, is_random_next, document_index, doc_b,
                                            chunk_sentences=len(current_chunk))
                if mask_fn is not None:
                    mask_fn(instance)
                else:
                    instance.input_ids = list(tokens)
                instances.append(instance)
            current_chunk = []
            current_length = 0
        i += 1
    return instances
    # END TASK 4.2


# --------------------------------------------------------------------------------------------
# 4. Masking: create_masked_lm_predictions
# --------------------------------------------------------------------------------------------


class MaskingVocab:
    """What masking needs to know about the vocabulary, taken once from a tokenizer.

    ``random_ids``: the ids random replacement draws from. With
    ``random_token_excludes_special=True`` (default) this leaves out the tokenizer's special ids
    (``all_special_ids``: [PAD] [UNK] [CLS] [SEP] [MASK]) and any other bracketed token such as
    Google's ``[unused0]``: a random replacement should look like text the model will see.
    With ``False`` it is the whole vocabulary in id order, as Google's ``vocab_words``.
    ``is_subword[id]``: the token starts with ``##`` (a WordPiece continuation), for whole-word
    masking.
    """

    def __init__(self, tokenizer, random_token_excludes_special: bool = True):
        tokens = _token_strings(tokenizer)
        self.size = len(tokens)
        if self.size == 0:
            raise ValueError("tokenizer: empty vocabulary")
        self.cls_id = int(tokenizer.cls_token_id)
        self.sep_id = int(tokenizer.sep_token_id)
        self.mask_id = int(tokenizer.mask_token_id)
        self.pad_id = int(tokenizer.pad_token_id)
        self.unk_id = int(tokenizer.unk_token_id)
        specials = set(getattr(tokenizer, "all_special_ids", ()))
        specials |= {self.cls_id, self.sep_id, self.mask_id, self.pad_id, self.unk_id}
        self.special_ids = frozenset(int(i) for i in specials)
        self.is_subword = [t.startswith("##") for t in tokens]
        if random_token_excludes_special:
            self.random_ids = [
                i for i, t in enumerate(tokens)
                if i not in self.special_ids and not (len(t) > 2 and t[0] == "[" and t[-1] == "]")
            ]
            if not self.random_ids:
                raise ValueError("tokenizer: no non-special token to draw random replacements from")
        else:
            self.random_ids = list(range(self.size))


def num_to_predict(length: int, masked_lm_prob: float = 0.15, max_predictions_per_seq: int = 20) -> int:
    """How many positions are masked in a sequence of ``length`` tokens ([CLS] and [SEP] included):
    ``min(max_predictions_per_seq, max(1, round(length * masked_lm_prob)))``.

    Rounding: Google's script writes ``int(round(len(tokens) * masked_lm_prob))``; we use Python 3's
    ``round`` (half to even), which is what that line does under Python 3. Under Python 2 (which
    the 2018 TF1 script also ran on) ``round`` rounds halves away from zero. With 0.15 the product
    is exactly ``k + 0.5`` for lengths 10, 30, 50, 70, 90, 110, 130...; Python 3 gives
    2, 4, 8, 10, 14, 16, 20 there, Python 2 gives one more for 30, 70, 110 (5, 11, 17).

    >>> [num_to_predict(n) for n in (10, 30, 50, 70, 128)]
    [2, 4, 8, 10, 19]
    """
    return min(max_predictions_per_seq, max(1, int(round(length * masked_lm_prob))))


def create_masked_lm_predictions(
    tokens: Sequence[int],
    vocab: MaskingVocab,
    rng: random.Random,
    masked_lm_prob: float = 0.15,
    max_predictions_per_seq: int = 20,
    whole_word_mask: bool = False,
) -> tuple[list[int], list[int], list[int]]:
    """Google's ``create_masked_lm_predictions`` on token ids.

    Returns ``(output_ids, masked_positions, masked_labels)``. Exactly
    :func:`num_to_predict` positions are chosen uniformly among all tokens except ``[CLS]`` and
    ``[SEP]``; each becomes ``[MASK]`` with probability 0.8, stays itself with 0.1, or becomes a
    random token from ``vocab.random_ids`` with 0.1 (it may draw the original token; that is
    counted as "random", as in Google's).

    Whole-word masking chooses whole words (a piece plus its ``##`` continuations; a word never
    spans a ``[SEP]``, even when truncation cut B in the middle of a word). A word that
    would overshoot the count is skipped (Google's rule), so a sequence can end up with a few
    fewer predictions than the formula when long words remain; the 80/10/10 choice is made once
    per word, so a word is never half [MASK] and half original (Google decides per piece).
    """
    # Candidates: every position but [CLS] / [SEP]; with whole-word masking, continuation
    # pieces ("##...") join the candidate before them.
    cand_indexes: list[list[int]] = []
    after_special = True  # the previous token was [CLS] / [SEP]
    for i, tok in enumerate(tokens):
        if tok == vocab.cls_id or tok == vocab.sep_id:
            after_special = True
            continue
        # A "##" piece right after [SEP] (B cut at the front by truncate_seq_pair) starts a new
        # candidate: Google's code would glue it to the last word of A, across the [SEP].
        if whole_word_mask and cand_indexes and vocab.is_subword[tok] and not after_special:
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
        after_special = False
    rng.shuffle(cand_indexes)

    # TASK 4.3 masking: exactly num_to_predict positions, 80/10/10 (lesson 03)
    output = list(tokens)
    n_predict = num_to_predict(len(tokens), masked_lm_prob, max_predictions_per_seq)
    random_ids = vocab.random_ids
    n_random = len(random_ids)
    masked: list[tuple[int, int]] = []  # (position, original id)
    for index_set in cand_indexes:
        if len(masked) >= n_predict:
            break
        # Google: skip a word that would go over the count (only possible with whole words).
        if len(masked) + len(index_set) > n_predict:
            continue
        # (Google also skips positions already covered; with disjoint candidates none ever is.)
        if whole_word_mask:
            # 80/10/10 decided once for the whole word.
            if rng.random() < 0.8:
                for index in index_set:
                    output[index] = vocab.mask_id
            elif rng.random() < 0.5:
                pass  # 10%: keep the original pieces
            else:
                for index in index_set:
                    output[index] = random_ids[rng.randint(0, n_random - 1)]
        else:
            index = index_set[0]
            # 80% of the time, replace with [MASK]
            if rng.random() < 0.8:
                output[index] = vocab.mask_id
            # 10% of the time, keep the original
            elif rng.random() < 0.5:
                pass
            # 10% of the time, replace with a random token
            else:
                output[index] = random_ids[rng.randint(0, n_random - 1)]
        for index in index_set:
            masked.append((index, tokens[index]))
    masked.sort()
    return output, [p for p, _ in masked], [t for _, t in masked]
    # END TASK 4.3


def _mask_instance(instance: TrainingInstance, vocab: MaskingVocab, rng: random.Random,
                   masked_lm_prob: float, max_predictions_per_seq: int, whole_word_mask: bool) -> TrainingInstance:
    out, pos, lab = create_masked_lm_predictions(
        instance.tokens, vocab, rng, masked_lm_prob, max_predictions_per_seq, whole_word_mask)
    instance.input_ids, instance.masked_positions, instance.masked_labels = out, pos, lab
    return instance


def _check_options(max_seq_length, short_seq_prob, masked_lm_prob, max_predictions_per_seq, dupe_factor):
    def is_int(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
    if not is_int(max_seq_length) or max_seq_length < 5:
        raise ValueError(f"max_seq_length must be an integer >= 5 ([CLS] a [SEP] b [SEP]), got {max_seq_length!r}")
    def is_number(x):
        return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
    if not (is_number(short_seq_prob) and 0.0 <= short_seq_prob <= 1.0):
        raise ValueError(f"short_seq_prob must be in [0, 1], got {short_seq_prob!r}")
    if not (is_number(masked_lm_prob) and 0.0 < masked_lm_prob < 1.0):
        raise ValueError(f"masked_lm_prob must be in (0, 1), got {masked_lm_prob!r}")
    if not is_int(max_predictions_per_seq) or max_predictions_per_seq < 1:
        raise ValueError(f"max_predictions_per_seq must be an integer >= 1, got {max_predictions_per_seq!r}")
    if not is_int(dupe_factor) or dupe_factor < 1:
        raise ValueError(f"dupe_factor must be an integer >= 1, got {dupe_factor!r}")


def _check_documents(documents) -> None:
    """A corpus must give NSP a 'different document' to draw from."""
    if len(documents) == 0:
        raise ValueError("documents: the corpus is empty (no sentence gave any token)")
    if len(documents) == 1:
        raise ValueError(
            "documents: the corpus has a single document, so next-sentence prediction has no other "
            "document to draw a random 'next' segment from (Google's script silently draws it from "
            "the same document). Separate documents with a blank line (BERT format), or give "
            "several files.")


def create_training_instances(
    documents: Sequence[Sequence[Sequence[int]]],
    vocab: MaskingVocab,
    max_seq_length: int = 128,
    dupe_factor: int = 10,
    short_seq_prob: float = 0.1,
    masked_lm_prob: float = 0.15,
    max_predictions_per_seq: int = 20,
    rng: random.Random | None = None,
    whole_word_mask: bool = False,
    mask: bool = True,
) -> list[TrainingInstance]:
    """Google's ``create_training_instances`` after reading: token-id documents in, instances out.

    Shuffles the documents, makes ``dupe_factor`` passes over them (each pass draws new pairs and,
    with ``mask=True``, new masks: Google's static masking), then shuffles the instances.
    ``doc_a`` / ``doc_b`` of each instance index ``documents`` as given (before the shuffle).
    ``rng`` defaults to ``random.Random(12345)`` (Google's default ``random_seed``).
    """
    _check_options(max_seq_length, short_seq_prob, masked_lm_prob, max_predictions_per_seq, dupe_factor)
    _check_documents(documents)
    rng = random.Random(12345) if rng is None else rng
    order = list(range(len(documents)))
    rng.shuffle(order)  # Google: rng.shuffle(all_documents)
    all_documents = [documents[k] for k in order]

    mask_fn = None
    if mask:
        def mask_fn(inst):
            _mask_instance(inst, vocab, rng, masked_lm_prob, max_predictions_per_seq, whole_word_mask)

    instances: list[TrainingInstance] = []
    for _ in range(dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(create_instances_from_document(
                all_documents, document_index, max_seq_length, short_seq_prob, rng,
                vocab.cls_id, vocab.sep_id, mask_fn))
    rng.shuffle(instances)
    for inst in instances:  # report documents by their index in `documents`
        inst.doc_a, inst.doc_b = order[inst.doc_a], order[inst.doc_b]
    return instances


# --------------------------------------------------------------------------------------------
# 5. Batching
# --------------------------------------------------------------------------------------------


def collate(instances: Sequence[TrainingInstance], pad_id: int, max_seq_length: int | None = None,
            pad_to: str = "max_length") -> dict[str, np.ndarray]:
    """Stack instances into the model's inputs (all int64):

    ``input_ids`` (B, T), ``token_type_ids`` (B, T), ``attention_mask`` (B, T) 1 = real token,
    0 = padding, ``labels`` (B, T) original id at masked positions and -100 elsewhere,
    ``next_sentence_label`` (B,) 0 = IsNext, 1 = random.
    ``pad_to="max_length"`` pads to ``max_seq_length``; ``"longest"`` to the longest instance in
    the batch (less work for short batches). Padding uses ``pad_id`` and token type 0.
    """
    if len(instances) == 0:
        raise ValueError("instances: empty batch")
    longest = max(len(x.input_ids) for x in instances)
    if pad_to == "max_length":
        if max_seq_length is None:
            raise ValueError("max_seq_length is required with pad_to='max_length'")
        if longest > max_seq_length:
            raise ValueError(f"instances: an instance has {longest} tokens > max_seq_length={max_seq_length}")
        T = max_seq_length
    elif pad_to == "longest":
        T = longest
    else:
        raise ValueError(f"pad_to must be 'max_length' or 'longest', got {pad_to!r}")
    B = len(instances)
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((B, T), dtype=np.int64)
    attention_mask = np.zeros((B, T), dtype=np.int64)
    labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
    nsp = np.empty(B, dtype=np.int64)
    for b, x in enumerate(instances):
        n = len(x.input_ids)
        input_ids[b, :n] = x.input_ids
        token_type_ids[b, :n] = x.segment_ids
        attention_mask[b, :n] = 1
        labels[b, x.masked_positions] = x.masked_labels
        nsp[b] = x.is_random_next
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
            "labels": labels, "next_sentence_label": nsp}


# --------------------------------------------------------------------------------------------
# 6. Dataset and resumable loader
# --------------------------------------------------------------------------------------------


def _clean_token_id_documents(documents, tokenizer, vocab_size: int) -> list[list[list[int]]]:
    """Already-tokenized documents: lists of Python ints, every id checked to be in
    ``[0, vocab_size)`` (ValueError naming the document and sentence), then as for text
    (:func:`_documents_of_ids`: specials -> ``[UNK]``, empties dropped)."""
    def checked(d, k, sentence):
        ids = [int(i) for i in sentence]
        bad = next((i for i in ids if not 0 <= i < vocab_size), None)
        if bad is not None:
            raise ValueError(f"documents[{d}][{k}]: token id {bad} is outside the vocabulary "
                             f"[0, {vocab_size})")
        return ids
    return _documents_of_ids(documents, checked, tokenizer)


def _is_token_ids(documents) -> bool:
    """True if documents hold token ids (ints) rather than sentences (str)."""
    for doc in documents:
        for sentence in doc:
            return not isinstance(sentence, str)
    return False


class PretrainingDataset:
    """All pretraining instances of a corpus, masked statically or dynamically.

    ``documents``: ``list[list[str]]`` (sentences, as :func:`read_corpus` returns; tokenized here
    with the word cache) or ``list[list[list[int]]]`` (already token ids: checked to lie in the
    vocabulary, and a literal ``[CLS]`` / ``[SEP]`` / ``[MASK]`` / ``[PAD]`` id becomes ``[UNK]``, as for text).

    Pairs (A, B, NSP label) are built once, at construction, by :func:`create_training_instances`
    with ``random.Random(seed)`` and ``dupe_factor`` passes over the documents.

    * ``masking="dynamic"`` (default, as Hugging Face's collator / RoBERTa): masks are drawn when an
      instance is fetched, fresh for every epoch: instance ``i`` of epoch ``e`` is masked with
      ``random.Random(f"bertnp-mask:{seed}:{e}:{i}")``. Nothing about masking has to be stored
      or checkpointed: ``instance(i, epoch)`` is a pure function of ``(seed, epoch, i)``.
    * ``masking="static"`` (Google's): each of the ``dupe_factor`` copies is masked once, inline,
      in Google's order of random draws; every epoch sees the same masks.

    NSP balance: Google flips a fair coin for every chunk of two or more sentences, but a chunk
    of one sentence is always a random next and a random next "puts back" the unused sentences
    (making more chunks), so a little over half of all labels are 1 (about 0.55 on the bundled
    corpus). Pairs are fixed for the life of the dataset (as in Hugging Face's NSP dataset);
    ``dupe_factor > 1`` adds more, differently cut pairs. With static masking, ``instance()``
    returns the stored object itself: treat it as read-only.

    Options are validated; a bad value raises ValueError naming the argument.
    """

    def __init__(self, documents, tokenizer, *, max_seq_length: int = 128, short_seq_prob: float = 0.1,
                 masked_lm_prob: float = 0.15, max_predictions_per_seq: int = 20,
                 whole_word_mask: bool = False, masking: str = "dynamic", dupe_factor: int = 1,
                 random_token_excludes_special: bool = True, seed: int = 12345):
        _check_options(max_seq_length, short_seq_prob, masked_lm_prob, max_predictions_per_seq, dupe_factor)
        if masking not in ("dynamic", "static"):
            raise ValueError(f"masking must be 'dynamic' or 'static', got {masking!r}")
        for name, flag in (("whole_word_mask", whole_word_mask),
                           ("random_token_excludes_special", random_token_excludes_special)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.tokenizer = tokenizer
        self.vocab = MaskingVocab(tokenizer, random_token_excludes_special)
        self.max_seq_length = int(max_seq_length)
        self.short_seq_prob = float(short_seq_prob)
        self.masked_lm_prob = float(masked_lm_prob)
        self.max_predictions_per_seq = int(max_predictions_per_seq)
        self.whole_word_mask = bool(whole_word_mask)
        self.masking = masking
        self.dupe_factor = int(dupe_factor)
        self.random_token_excludes_special = bool(random_token_excludes_special)
        self.seed = int(seed)

        if not _is_token_ids(documents):
            documents = tokenize_documents(documents, tokenizer)
        else:
            documents = _clean_token_id_documents(documents, tokenizer, self.vocab.size)
        self.documents = documents
        _check_documents(documents)
        if not any(len(d) >= 2 for d in documents):
            import warnings
            warnings.warn("documents: every document has a single sentence, so every pair is a random "
                          "next (NSP label 1); next-sentence prediction will learn nothing", stacklevel=2)
        self.instances = create_training_instances(
            documents, self.vocab, self.max_seq_length, self.dupe_factor, self.short_seq_prob,
            self.masked_lm_prob, self.max_predictions_per_seq, random.Random(self.seed),
            self.whole_word_mask, mask=(masking == "static"))
        self._fingerprint = None

    @classmethod
    def from_files(cls, paths, tokenizer, format: str = "bert", **options) -> "PretrainingDataset":
        """Read corpus files (see :func:`read_corpus`) and build the dataset."""
        return cls(read_corpus(paths, format), tokenizer, **options)

    def __len__(self) -> int:
        return len(self.instances)

    def instance(self, index: int, epoch: int = 0) -> TrainingInstance:
        """Instance ``index`` as seen in ``epoch`` (masked; dynamic masks depend on the epoch)."""
        pair = self.instances[index]
        if self.masking == "static":
            return pair
        rng = random.Random(f"bertnp-mask:{self.seed}:{epoch}:{index}")
        inst = TrainingInstance(pair.tokens, pair.segment_ids, pair.is_random_next, pair.doc_a, pair.doc_b,
                                pair.chunk_sentences)
        return _mask_instance(inst, self.vocab, rng, self.masked_lm_prob, self.max_predictions_per_seq,
                              self.whole_word_mask)

    def __getitem__(self, index: int) -> TrainingInstance:
        return self.instance(index, 0)

    def options(self) -> dict:
        """The options that define the instances (JSON-friendly)."""
        return {"max_seq_length": self.max_seq_length, "short_seq_prob": self.short_seq_prob,
                "masked_lm_prob": self.masked_lm_prob, "max_predictions_per_seq": self.max_predictions_per_seq,
                "whole_word_mask": self.whole_word_mask, "masking": self.masking,
                "dupe_factor": self.dupe_factor,
                "random_token_excludes_special": self.random_token_excludes_special, "seed": self.seed}

    def fingerprint(self) -> str:
        """CRC-32 of the tokenized corpus, the pairs and the options: the same corpus, tokenizer
        and options give the same value, so a checkpoint can tell it is resumed on the same data."""
        if self._fingerprint is None:
            crc = zlib.crc32(json.dumps(self.options(), sort_keys=True).encode())
            crc = zlib.crc32(np.array([self.vocab.size, len(self.instances)], dtype=np.int64).tobytes(), crc)
            for doc in self.documents:
                crc = zlib.crc32(np.asarray([len(s) for s in doc], dtype=np.int32).tobytes(), crc)
                crc = zlib.crc32(np.fromiter(itertools.chain.from_iterable(doc), dtype=np.int32).tobytes(), crc)
            for x in self.instances:
                crc = zlib.crc32(np.asarray(x.tokens, dtype=np.int32).tobytes(), crc)
                crc = zlib.crc32(b"\x01" if x.is_random_next else b"\x00", crc)
            self._fingerprint = f"{crc:08x}"
        return self._fingerprint


class PretrainingLoader:
    """Batches from a :class:`PretrainingDataset`, resumable exactly from a JSON state.

    Order: epoch ``e`` visits the instances in ``numpy.random.default_rng([seed, e]).permutation``
    order (or in dataset order with ``shuffle=False``). The whole position is ``(epoch, index)``:
    the order and (dynamic) masks are pure functions of ``(seed, epoch, instance)``, so there is no
    hidden generator state to save, and a restored loader yields exactly the batches the original
    would have yielded next.

        for batch in loader: ...             # the rest of the current epoch, then epoch += 1
        batch = loader.next_batch()          # endless stream, epochs roll over
        state = loader.state_dict()          # JSON-serializable dict: {"epoch", "index", ...}
        loader.load_state_dict(state)        # checks it belongs to the same data and options

    ``state_dict()`` taken after ``k`` batches means: the next batch is batch ``k + 1``.
    """

    STATE_VERSION = 1

    def __init__(self, dataset: PretrainingDataset, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = False, pad_to: str = "max_length", seed: int | None = None):
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if pad_to not in ("max_length", "longest"):
            raise ValueError(f"pad_to must be 'max_length' or 'longest', got {pad_to!r}")
        if drop_last and len(dataset) < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the dataset ({len(dataset)} instances) "
                             "and drop_last=True: an epoch would have no batch")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.pad_to = pad_to
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = dataset.seed if seed is None else int(seed)
        self.epoch = 0
        self.index = 0  # position in the epoch's order (instances already served)
        self._order_epoch = None
        self._order = None

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The instance order of ``epoch``."""
        if self._order_epoch != epoch:
            n = len(self.dataset)
            self._order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                           else np.arange(n))
            self._order_epoch = epoch
        return self._order

    def next_batch(self) -> dict[str, np.ndarray]:
        """The next batch; after the last batch of an epoch the position moves to the next epoch."""
        n = len(self.dataset)
        order = self.order(self.epoch)
        stop = min(self.index + self.batch_size, n)
        batch = [self.dataset.instance(int(k), self.epoch) for k in order[self.index:stop]]
        self.index = stop
        remaining = n - self.index
        if remaining == 0 or (self.drop_last and remaining < self.batch_size):
            self.epoch, self.index = self.epoch + 1, 0
        return collate(batch, self.dataset.vocab.pad_id, self.dataset.max_seq_length, self.pad_to)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """The remaining batches of the current epoch (a full epoch when at its start)."""
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """The loader's position and what it depends on, as plain JSON types."""
        return {"version": self.STATE_VERSION, "epoch": self.epoch, "index": self.index, "seed": self.seed,
                "batch_size": self.batch_size, "shuffle": self.shuffle, "drop_last": self.drop_last,
                "num_instances": len(self.dataset), "fingerprint": self.dataset.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by :meth:`state_dict` (e.g. after ``json.loads``).

        Raises ValueError naming the key when the state does not fit this loader: another
        corpus, tokenizer or options (``fingerprint``), another ``batch_size`` / ``seed`` ...
        """
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict, got {type(state).__name__}")
        for key in ("version", "epoch", "index", "seed", "batch_size", "shuffle", "drop_last",
                    "num_instances", "fingerprint"):
            if key not in state:
                raise ValueError(f"state: missing key '{key}'")
        if state["version"] != self.STATE_VERSION:
            raise ValueError(f"state: 'version' {state['version']!r} is not {self.STATE_VERSION}")
        mine = self.state_dict()
        for key in ("num_instances", "fingerprint", "seed", "batch_size", "shuffle", "drop_last"):
            if state[key] != mine[key]:
                raise ValueError(f"state: '{key}' is {state[key]!r} but this loader has {mine[key]!r} "
                                 "(resume with the same corpus, tokenizer and options)")
        epoch, index = state["epoch"], state["index"]
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"state: 'epoch' must be an integer >= 0, got {epoch!r}")
        if not isinstance(index, int) or not 0 <= index < max(1, len(self.dataset)):
            raise ValueError(f"state: 'index' must be in [0, {len(self.dataset)}), got {index!r}")
        self.epoch, self.index = epoch, index


def shorter_sequences(loader: PretrainingLoader, length: int) -> PretrainingLoader:
    """``loader``'s data cut into pairs of ``length`` tokens (BERT's first phase): the same documents,
    masking options and seed, the predictions per sequence scaled with the length, and batches of
    ``batch_size x max_seq_length / length`` sequences, so that a batch holds the same tokens."""
    ds = loader.dataset
    short = PretrainingDataset(ds.documents, ds.tokenizer, max_seq_length=length, short_seq_prob=ds.short_seq_prob,
                               masked_lm_prob=ds.masked_lm_prob,
                               max_predictions_per_seq=max(1, round(ds.max_predictions_per_seq * length / ds.max_seq_length)),
                               whole_word_mask=ds.whole_word_mask, masking=ds.masking, dupe_factor=ds.dupe_factor,
                               random_token_excludes_special=ds.random_token_excludes_special, seed=ds.seed)
    return PretrainingLoader(short, loader.batch_size * ds.max_seq_length // length, shuffle=loader.shuffle,
                             drop_last=loader.drop_last, pad_to=loader.pad_to, seed=loader.seed)


# --------------------------------------------------------------------------------------------
# 7. Looking at one instance (lessons)
# --------------------------------------------------------------------------------------------


def _kind(instance: TrainingInstance, pos: int, mask_id: int) -> str:
    """What masking did at ``pos``: '' (not predicted), 'mask', 'random' or 'kept'."""
    if pos not in instance.masked_positions:
        return ""
    if instance.input_ids[pos] == mask_id:
        return "mask"
    return "kept" if instance.input_ids[pos] == instance.tokens[pos] else "random"


def format_instance(instance: TrainingInstance, tokenizer, max_rows: int | None = None) -> str:
    """A text table of one instance: position, segment, original token, model input, label.

    The label column shows the token to predict at masked positions (how it was masked in
    brackets: [MASK], random, kept) and is empty elsewhere (label -100).
    """
    names = _token_strings(tokenizer)
    mask_id = tokenizer.mask_token_id
    label = "IsNext (0)" if not instance.is_random_next else "random next (1)"
    lines = [f"NSP label: {label}; documents A={instance.doc_a} B={instance.doc_b}; "
             f"{len(instance.tokens)} tokens, {len(instance.masked_positions)} predicted",
             f"{'pos':>4} {'seg':>3}  {'original':<16} {'input':<16} label"]
    n = len(instance.tokens) if max_rows is None else min(max_rows, len(instance.tokens))
    for p in range(n):
        kind = _kind(instance, p, mask_id)
        lab = f"{names[instance.tokens[p]]}  ({kind})" if kind else ""
        lines.append(f"{p:>4} {instance.segment_ids[p]:>3}  {names[instance.tokens[p]]:<16} "
                     f"{names[instance.input_ids[p]]:<16} {lab}")
    if n < len(instance.tokens):
        lines.append(f"... {len(instance.tokens) - n} more")
    return "\n".join(lines)


def plot_instance(instance: TrainingInstance, tokenizer, max_tokens: int = 48, ax=None):
    """A picture of one instance (drawn by :func:`bertnp.viz.plot_instance`, where every figure is)."""
    from bertnp.viz import plot_instance as draw
    return draw(instance, tokenizer, max_tokens=max_tokens, ax=ax)
