"""Learn a WordPiece vocabulary (``vocab.txt``) from raw text.

    from bertnp.wordpiece_trainer import train_wordpiece
    tokens = train_wordpiece(["corpus.txt"], vocab_size=8000, vocab_file="out/vocab.txt")
    tok = BertTokenizer("out/vocab.txt")

The algorithm, and why this one
-------------------------------
WordPiece (Schuster & Nakajima 2012, used for BERT by Wu et al. 2016) builds its vocabulary
bottom-up, like byte-pair encoding:

1. Split the text into words exactly as BERT's ``BasicTokenizer`` will (lower-case, strip accents,
   split punctuation and CJK), and count each distinct word.
2. Start from single characters: ``c`` at the start of a word, ``##c`` inside it (both forms for
   every character of the alphabet, so every word over the alphabet can be encoded, never ``[UNK]``;
   punctuation and CJK ideographs only as ``c``, since they are always words of their own).
3. Repeatedly pick a pair of adjacent pieces (a, b), add the merged piece ``ab`` to the vocabulary,
   and rewrite every word with ``ab`` in place of ``a b``, until the vocabulary is full.

The pieces differ in *which* pair is picked:

* BPE (and Hugging Face's ``WordPieceTrainer``, which is BPE with a ``##`` prefix) takes the most
  *frequent* pair: score = count(ab).
* The Hugging Face course's WordPiece takes count(ab) / (count(a) count(b)): pairs whose parts
  rarely occur apart, which ranks pairs of rare pieces (seen once, together) first.
* WordPiece as published picks the merge that most increases the *likelihood* of the training
  data under a unigram language model over the pieces. That is what we do (``scoring="likelihood"``,
  the default), exactly: with piece counts c and N pieces in all, the log-likelihood is
  L = sum_u c_u log(c_u / N) = sum_u c_u log c_u - N log N, and merging the k occurrences of (a, b)
  changes only c_a, c_b (each loses k), the new piece (gains k) and N (loses k), so

      gain(a, b) = f(c_a - k) - f(c_a) + f(c_b - k) - f(c_b) + f(k) - f(N - k) + f(N),   f(x) = x log x

  (for a == b, c_a loses 2k). For small k this is about k * log(k N / (c_a c_b)): the pair's
  count times its pointwise mutual information - frequent *and* cohesive pairs win. ``scoring=
  "frequency"`` gives BPE for comparison. The gain is recomputed for every pair at every merge with
  NumPy (one vectorised pass; counts change after each merge, so a stale priority queue would be wrong).

Encoding afterwards is BERT's greedy longest-match-first (``WordpieceTokenizer``), not a replay of
the merges - the usual WordPiece arrangement.

Measured (a shared 2-core CPU, one process): 8,000 pieces from the bundled corpus ``english.train``
(5.39 MB: World English Bible, The Devil's Dictionary, the Jargon File lexicon) in 4.3 s
("likelihood"; 2.7 s "frequency") on an idle machine, 8.0 s / 3.3 s while another job kept the
cores busy; measured with ``time python -c "import bertnp as bn; from bertnp.corpus import
bundled_corpus; bn.train_wordpiece([bundled_corpus('train')], 8000, show_progress=False)"`` (add
``scoring='frequency'`` for the second figure). On the held-out split (0.28 MB, 61,501 words): 0 % [UNK] words
and 1.109 tokens per word (BPE: 1.096; MiniLM's 30,522-piece vocabulary: 1.100); on out-of-domain
text (the first eight files of /usr/share/common-licenses, 128 KB): 0 % [UNK], 1.23 tokens per
word (BPE 1.20). So the likelihood score does not beat plain frequency on tokens per word - which
is what BPE greedily optimises - but keeps to the published algorithm.
"""

from __future__ import annotations

import gzip
import os
import string
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from bertnp.tokenizer import _WHITESPACE_RUN, BasicTokenizer, _check_str, is_cjk_char, is_punctuation

__all__ = ["train_wordpiece", "count_words", "tokenization_stats", "SPECIAL_TOKENS"]

# BERT's special tokens, [PAD] first so that the padding id is 0 (as in every BERT vocabulary).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PREFIX = "##"


# ---------------------------------------------------------------------------------------------
# Step 1: the corpus -> word counts
# ---------------------------------------------------------------------------------------------


def _is_path(s: str) -> bool:
    """Is this str item a file name? Never if it holds whitespace (a sentence, a text); otherwise
    yes if such a file exists or the name ends like a text file (then a missing file is an error,
    not one odd word of training text)."""
    if not s or any(ch.isspace() for ch in s):
        return False
    return s.endswith((".txt", ".gz")) or os.path.isfile(s)


def _sources(files_or_texts) -> Iterator[tuple[str, Iterable[str]]]:
    """Yield (name, lines) for each input: a file (``pathlib.Path``, or a str that ``_is_path``;
    ``.gz`` is decompressed) or a text (any other str)."""
    if isinstance(files_or_texts, (str, os.PathLike)):
        files_or_texts = [files_or_texts]
    if isinstance(files_or_texts, (bytes, bytearray)) or not hasattr(files_or_texts, "__iter__"):
        raise TypeError(f"files_or_texts must be a path, a str or a list of them, got {type(files_or_texts).__name__}")
    for i, item in enumerate(files_or_texts):
        if isinstance(item, os.PathLike) or (isinstance(item, str) and _is_path(item)):
            path = Path(item)
            if not path.is_file():
                what = "a directory, not a file" if path.is_dir() else "no such file"
                raise FileNotFoundError(f"files_or_texts[{i}]: {what}: '{path}'")
            yield str(path), _read_lines(path)
        else:
            _check_str(item, f"files_or_texts[{i}]")
            yield f"text {i}", item.splitlines()


def _read_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (``.gz``: decompressed); a bad file raises ValueError naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError as err:
        raise ValueError(f"'{path}' is not UTF-8 text: {err}") from err
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"'{path}' is not a valid gzip file: {err}") from err


def count_words(files_or_texts, basic_tokenizer: BasicTokenizer | None = None,
                show_progress: bool = True) -> Counter:
    """Count BERT's basic-tokenizer words in the inputs: ``Counter({"the": 64023, ",": 70551, ...})``.

    Each distinct whitespace-separated chunk is basic-tokenized once (chunks never share a word,
    see ``BertTokenizer.encode_words_cached``), so a few MB take a second or two.
    """
    basic = basic_tokenizer or BasicTokenizer()
    chunks: Counter = Counter()
    sources = list(_sources(files_or_texts))            # (name, lazy lines): files are read below
    # a bar only when there is more than one source to count (one text gave "reading: 0 source")
    for name, lines in tqdm(sources, desc="reading", unit=" source", disable=not show_progress or len(sources) < 2):
        for line in lines:
            chunks.update(_WHITESPACE_RUN.split(line))
    chunks.pop("", None)
    words: Counter = Counter()
    for chunk, n in chunks.items():
        for word in basic.tokenize(chunk):
            words[word] += n
    return words


# ---------------------------------------------------------------------------------------------
# Steps 2-3: characters, then merges
# ---------------------------------------------------------------------------------------------


def _xlogx(x: np.ndarray) -> np.ndarray:
    """f(x) = x log x for counts x >= 0, with f(0) = f(1) = 0 (log of max(x, 1) avoids log 0)."""
    return x * np.log(np.maximum(x, 1.0))


class _Growable:
    """A 1-D NumPy array with amortised O(1) append (doubling), viewed through ``.a``."""

    def __init__(self, dtype):
        self.buf = np.zeros(1024, dtype=dtype)
        self.n = 0

    def append(self, value) -> int:
        if self.n == len(self.buf):
            self.buf = np.concatenate([self.buf, np.zeros_like(self.buf)])
        self.buf[self.n] = value
        self.n += 1
        return self.n - 1

    @property
    def a(self) -> np.ndarray:
        return self.buf[: self.n]


def train_wordpiece(files_or_texts, vocab_size: int = 8000, *, vocab_file=None, do_lower_case: bool = True,
                    strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                    min_frequency: int = 2, limit_alphabet: int | None = 1000,
                    initial_alphabet: str = string.ascii_letters + string.digits + string.punctuation,
                    max_input_chars_per_word: int = 100, scoring: str = "likelihood",
                    special_tokens=SPECIAL_TOKENS, show_progress: bool = True) -> list[str]:
    """Learn a WordPiece vocabulary of ``vocab_size`` tokens; returns it (line i of vocab.txt = id i).

    Args:
        files_or_texts: a file / text or a list of them (e.g. sentences). ``pathlib.Path`` items
            are UTF-8 files (``.gz`` decompressed). A str item is a file name only if it has no
            whitespace and names an existing file or ends in ".txt" / ".gz"; otherwise it is text.
            (So a one-word sentence that happens to name a file in the working directory would be
            read as that file: pass one joined text, or Path objects, to rule that out.)
        vocab_size: size of the vocabulary, special tokens and alphabet included.
        vocab_file: if given, the vocabulary is written there (a directory gets ``vocab.txt``).
        do_lower_case, strip_accents, tokenize_chinese_chars: BasicTokenizer settings; use the
            same ones for the BertTokenizer that will read this vocabulary.
        min_frequency: a pair seen fewer times is never merged (training may then stop early).
        limit_alphabet: keep only this many most frequent characters (words with other
            characters are left out, and become [UNK] when encoding); None keeps all.
        initial_alphabet: characters always in the vocabulary, seen in the corpus or not (default:
            printable ASCII, so that "*" or "=" in new text is not [UNK]).
        max_input_chars_per_word: longer words are left out (the encoder makes them [UNK]).
        scoring: "likelihood" (WordPiece, the default) or "frequency" (BPE), see the module docstring.
        special_tokens: ids 0, 1, ...; default [PAD] [UNK] [CLS] [SEP] [MASK].
        show_progress: tqdm progress bars.
    """
    # ---- arguments ----
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
    if limit_alphabet is not None and (isinstance(limit_alphabet, bool) or not isinstance(limit_alphabet, int)
                                       or limit_alphabet < 1):
        raise ValueError(f"limit_alphabet must be a positive int or None, got {limit_alphabet!r}")
    if isinstance(max_input_chars_per_word, bool) or not isinstance(max_input_chars_per_word, int) \
            or max_input_chars_per_word < 1:
        raise ValueError(f"max_input_chars_per_word must be a positive int, got {max_input_chars_per_word!r}")
    if initial_alphabet is None:
        initial_alphabet = ""
    _check_str(initial_alphabet, "initial_alphabet")
    if scoring not in ("likelihood", "frequency"):
        raise ValueError(f"scoring must be 'likelihood' or 'frequency', got {scoring!r}")
    if isinstance(special_tokens, (str, bytes)) or not hasattr(special_tokens, "__iter__"):
        raise TypeError(f"special_tokens must be a list of str, got {type(special_tokens).__name__}")
    special_tokens = list(special_tokens)
    for i, tok in enumerate(special_tokens):
        _check_str(tok, f"special_tokens[{i}]")
        if not tok or any(ch.isspace() for ch in tok):
            raise ValueError(f"special_tokens[{i}]={tok!r} must be a non-empty token without whitespace")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special_tokens has duplicates: {special_tokens}")
    if vocab_size <= len(special_tokens):
        raise ValueError(f"vocab_size={vocab_size} leaves no room beyond the {len(special_tokens)} special tokens")
    if vocab_file is not None and not isinstance(vocab_file, (str, os.PathLike)):
        raise TypeError(f"vocab_file must be a path (str or os.PathLike) or None, got {type(vocab_file).__name__}")

    # ---- step 1: words ----
    basic = BasicTokenizer(do_lower_case=do_lower_case, strip_accents=strip_accents,
                           tokenize_chinese_chars=tokenize_chinese_chars)
    word_counts = count_words(files_or_texts, basic, show_progress)
    word_counts = Counter({w: n for w, n in word_counts.items() if len(w) <= max_input_chars_per_word})
    if not word_counts:
        raise ValueError("files_or_texts holds no words to learn from")

    # ---- step 2: the alphabet ----
    char_counts: Counter = Counter()
    for w, n in word_counts.items():
        for ch in w:
            char_counts[ch] += n
    alphabet = [ch for ch, _ in sorted(char_counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if limit_alphabet is not None:
        alphabet = alphabet[:limit_alphabet]
    # The initial alphabet goes in even if the corpus lacks it (no [UNK] for "*" or "=" later),
    # normalised as the basic tokenizer will normalise text.
    for ch in basic.tokenize(" ".join(initial_alphabet)):
        if len(ch) == 1 and ch not in alphabet:
            alphabet.append(ch)
    # Both forms, "c" and "##c", except for punctuation and CJK ideographs: the basic tokenizer
    # always makes those words of their own, so "##," could never be used.
    pieces = [ch for ch in alphabet] + [PREFIX + ch for ch in alphabet if not (is_punctuation(ch) or is_cjk_char(ch))]
    need = len(special_tokens) + len(pieces)
    if vocab_size < need:
        raise ValueError(f"vocab_size={vocab_size} is smaller than the {len(special_tokens)} special tokens plus "
                         f"{len(pieces)} single-character pieces ({need}); raise vocab_size or lower limit_alphabet")
    vocab: list[str] = list(special_tokens)
    in_vocab = set(vocab)
    unit_id: dict[str, int] = {}  # piece -> index into the unit arrays (not the vocab id)
    units: list[str] = []
    unit_count = _Growable(np.float64)

    def add_unit(piece: str) -> int:
        if piece not in unit_id:
            unit_id[piece] = len(units)
            units.append(piece)
            unit_count.append(0.0)
            if piece not in in_vocab:
                vocab.append(piece)
                in_vocab.add(piece)
        return unit_id[piece]

    for piece in pieces:
        add_unit(piece)
    known = set(alphabet)

    # Each distinct word as a list of unit indices ("hat" -> h ##a ##t) with its count.
    words: list[list[int]] = []
    freqs: list[int] = []
    for w, n in word_counts.items():
        if all(ch in known for ch in w):
            words.append([unit_id[w[0]]] + [unit_id[PREFIX + ch] for ch in w[1:]])  # punctuation: 1-char words
            freqs.append(n)

    # Pair statistics: index per distinct adjacent pair, its count, and the words that contain it.
    pair_index: dict[tuple[int, int], int] = {}
    pair_left, pair_right = _Growable(np.int64), _Growable(np.int64)
    pair_count = _Growable(np.float64)
    pair_words: list[set[int]] = []

    def pair_of(a: int, b: int) -> int:
        p = pair_index.get((a, b))
        if p is None:
            p = pair_index[(a, b)] = len(pair_words)
            pair_left.append(a)
            pair_right.append(b)
            pair_count.append(0.0)
            pair_words.append(set())
        return p

    def account(wi: int, sign: int) -> None:
        """Add (sign=+1) or remove (-1) word wi's units and pairs from the counts."""
        seq, n = words[wi], freqs[wi] * sign
        for u in seq:
            unit_count.buf[u] += n
        for a, b in zip(seq, seq[1:]):
            p = pair_of(a, b)
            pair_count.buf[p] += n
            if sign > 0:
                pair_words[p].add(wi)

    for wi in range(len(words)):
        account(wi, +1)

    # ---- step 3: merges ----
    total = float(unit_count.a.sum())  # N, the number of pieces in the corpus
    bar = tqdm(total=vocab_size, initial=len(vocab), desc="wordpiece vocab", unit=" token",
               disable=not show_progress)
    while len(vocab) < vocab_size:
        # Score only the pairs seen at least min_frequency times (most pairs are rarer, or dead).
        live = np.flatnonzero(pair_count.a >= min_frequency)
        if len(live) == 0:
            warnings.warn(f"train_wordpiece: no pair occurs min_frequency={min_frequency} times any more; "
                          f"stopping at {len(vocab)} tokens instead of vocab_size={vocab_size}", stacklevel=2)
            break
        k = pair_count.a[live]
        if scoring == "frequency":
            score = k
        else:
            left, right = pair_left.a[live], pair_right.a[live]
            ca, cb = unit_count.a[left], unit_count.a[right]
            f_unit = _xlogx(unit_count.a)  # f(c_u) once per unit (thousands), gathered for the pairs
            f_ca, f_cb = f_unit[left], f_unit[right]
            # likelihood gain of merging all k occurrences (module docstring), a != b ...
            score = (_xlogx(np.maximum(ca - k, 0)) - f_ca + _xlogx(np.maximum(cb - k, 0)) - f_cb
                     + _xlogx(k) - _xlogx(np.maximum(total - k, 0)) + _xlogx(np.array(total)))
            same = np.flatnonzero(left == right)  # ... and a == b ("##l" "##l"), where c_a loses 2k
            if len(same):
                ks, cs = k[same], ca[same]
                score[same] = (_xlogx(np.maximum(cs - 2 * ks, 0)) - f_ca[same] + _xlogx(ks)
                               - _xlogx(np.maximum(total - ks, 0)) + _xlogx(np.array(total)))
        best = int(live[np.argmax(score)])  # ties: the earliest pair, so training is deterministic
        a, b = int(pair_left.a[best]), int(pair_right.a[best])
        merged = add_unit(units[a] + units[b][len(PREFIX):])  # "##a" + "##b" -> "##ab", "a" + "##b" -> "ab"
        # Rewrite every word containing (a, b), left to right, non-overlapping.
        for wi in list(pair_words[best]):
            seq = words[wi]
            if not any(x == a and y == b for x, y in zip(seq, seq[1:])):
                continue  # stale entry: the pair was merged away in this word earlier
            account(wi, -1)
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            words[wi] = out
            account(wi, +1)
        pair_words[best] = set()
        total = float(unit_count.a.sum())
        bar.update(len(vocab) - bar.n)  # +1, or +0 when the merged piece was already known
    bar.close()

    if vocab_file is not None:
        path = Path(vocab_file)
        if path.is_dir():
            path = path / "vocab.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(t + "\n" for t in vocab))
    return vocab


def tokenization_stats(tokenizer, text: str) -> dict:
    """How well a vocabulary covers ``text``: words (basic-tokenizer words), WordPiece tokens,
    the fraction of words that became [UNK], and tokens per word."""
    if not (hasattr(tokenizer, "basic_tokenizer") and hasattr(tokenizer, "wordpiece_tokenizer")):
        raise TypeError(f"tokenizer must be a BertTokenizer, got {type(tokenizer).__name__}")
    _check_str(text, "text")
    words = tokens = unk = 0
    for line in text.splitlines():
        for word in tokenizer.basic_tokenizer.tokenize(line):
            pieces = tokenizer.wordpiece_tokenizer.tokenize_word(word)
            words += 1
            tokens += len(pieces)
            unk += pieces == [tokenizer.unk_token]
    return {"words": words, "tokens": tokens, "unk_words": unk,
            "unk_rate": unk / max(words, 1), "tokens_per_word": tokens / max(words, 1)}
