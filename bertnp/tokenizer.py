"""BERT's tokenizer, written out: text -> basic tokens -> WordPiece pieces -> ids.

Three classes, one per stage, as in Google's ``tokenization.py`` (google-research/bert):

    BasicTokenizer      clean the text, space out CJK ideographs, lower-case and strip accents,
                        split off punctuation                      "UNwant\u00e9d,running" -> ["unwanted", ",", "running"]
    WordpieceTokenizer  greedy longest-match-first split of each word into vocabulary pieces,
                        continuation pieces marked "##"            "unwanted" -> ["un", "##want", "##ed"]
    BertTokenizer       the vocabulary file, special tokens ([CLS] A [SEP] B [SEP]), truncation,
                        padding, ids <-> tokens, decode, save / load

Which reference we match
------------------------
Hugging Face transformers 5 ships two BERT tokenizers: ``BertTokenizer`` (Rust, from the
``tokenizers`` library) and ``BertTokenizerLegacy`` (pure Python, a descendant of Google's code).
This module matches **BertTokenizerLegacy** exactly; the committed fixtures in
``tests/fixtures/tokenizer/`` were produced by it (``tests/reference/make_tokenizer_fixtures.py``).
Why that one:

* it decides "is this a control / whitespace / punctuation character?" with Python's
  ``unicodedata``, as we do, so the two agree on every code point (the Rust tokenizer carries its
  own Unicode tables: it keeps the unassigned U+0378, which BERT's rule drops);
* lower-casing is Python's ``str.lower`` (a word-final capital sigma becomes "\u03c2"; Rust maps it to "\u03c3");
* when a pair is truncated and the number of tokens to remove is odd, the extra token comes off the
  *second* text, exactly as Google's ``truncate_seq_pair`` does (the Rust tokenizer takes it from
  the first).

Differences from BertTokenizerLegacy, all on input it handles poorly: a ``max_length`` that cannot
be met (e.g. ``only_first`` when the first text is too short) raises ``ValueError`` where Hugging
Face logs an error and returns a too-long sequence; an out-of-range id raises instead of decoding
to ``[UNK]``; a vocabulary missing a special token is rejected; ``model_max_length`` defaults to
BERT's 512 positions (Hugging Face: unlimited unless ``tokenizer_config.json`` says otherwise;
pass ``model_max_length=None`` for that);
the legacy class (in transformers 5.x) forgets ``token_type_ids`` unless asked - we always return them;
``return_tensors="np"`` on rows of different lengths raises (pad them) where Hugging Face returns
an object array of arrays; a lone empty encoding (``""`` with ``add_special_tokens=False``) is
padded like any other row, where Hugging Face leaves it empty (it pads it inside a batch).

Speed
-----
The reference path (``tokenize``) applies the rules character by character (with per-character
answers memoised in ``str.translate`` tables): 2.4-3.9 MB/s on English. ``encode_words_cached``
(also used by ``__call__`` and ``encode``) cuts the text at spaces first and tokenizes each
*distinct* chunk once. That is exact, not an approximation: BERT's tokenizer never lets a token
cross a space (every later step - lower-casing, punctuation splitting, WordPiece - runs inside
whitespace-separated words; special tokens with whitespace inside are refused), and English has
few distinct chunks (the 5.39 MB bundled training corpus has 68k), so almost every chunk is a
dictionary hit: the whole corpus encodes in 0.5-1.1 s, 5-12 MB/s on first sight, 10-25 MB/s
once cached (a shared 2-core CPU, the lower figures with another job running; Hugging Face's
legacy tokenizer: 0.65 MB/s, its Rust one called on a list of sentences: 1.3 MB/s on the same
machine). ``tests/test_tokenizer.py::test_encoding_a_corpus_takes_seconds`` (slow) checks it.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path

import numpy as np

__all__ = [
    "BasicTokenizer",
    "WordpieceTokenizer",
    "BertTokenizer",
    "load_vocab",
    "is_whitespace",
    "is_control",
    "is_punctuation",
    "is_cjk_char",
]

VOCAB_FILE_NAME = "vocab.txt"
CONFIG_FILE_NAME = "tokenizer_config.json"

# ---------------------------------------------------------------------------------------------
# Character classes: BERT's four rules (google-research/bert tokenization.py, _is_* functions)
# ---------------------------------------------------------------------------------------------


def is_whitespace(char: str) -> bool:
    """BERT whitespace: space, \\t, \\n, \\r, and Unicode category Zs (U+00A0, U+3000, ...)."""
    # \t \n \r are control characters for Unicode, but BERT counts them as whitespace.
    if char in " \t\n\r":
        return True
    return unicodedata.category(char) == "Zs"


def is_control(char: str) -> bool:
    """BERT control: any category C* (Cc control, Cf format, Co private use, Cn unassigned, Cs)
    except \\t \\n \\r, which are whitespace. Zero-width space U+200B (Cf) is a control char."""
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def is_punctuation(char: str) -> bool:
    """BERT punctuation: every ASCII non-alphanumeric printable character, plus category P*.

    ``$ + < = > ^ ` | ~`` are Unicode symbols (S*), not punctuation, but BERT splits them too
    "for consistency" (Google's comment).
    """
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


# The CJK Unified Ideographs blocks (and their extensions / compatibility blocks) - the 8 ranges
# Google's _is_chinese_char lists. Hiragana, Katakana and Hangul are NOT here: those scripts are
# written with spaces or syllables and go through WordPiece like any other letters.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def is_cjk_char(char: str) -> bool:
    """True for a CJK ideograph (one of BERT's 8 CJK blocks): BERT makes each one its own word."""
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


# Runs of the characters BasicTokenizer turns into a space (rule "clean": \t \n \r, space, Zs).
# Zs has been exactly these 17 code points since Unicode 6.3; a test checks it against unicodedata.
_WHITESPACE_RUN = re.compile("[\t\n\r \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")


class _CharMap(dict):
    """A ``str.translate`` table that fills itself: code point -> replacement, computed on first use.

    ``str.translate`` looks every character up in this dict (in C); a character seen for the first
    time goes to ``__missing__``, which applies the rule once and remembers the answer. So the
    per-character rule is written plainly in Python, yet long texts translate at C speed.
    """

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def __missing__(self, cp: int):
        out = self.rule(chr(cp))
        self[cp] = out
        return out


def _clean_char(char: str):
    """Rule "clean": drop NUL, U+FFFD and control characters; map every whitespace to a space."""
    cp = ord(char)
    if cp == 0 or cp == 0xFFFD or is_control(char):
        return None  # None in a translate table deletes the character
    if is_whitespace(char):
        return " "
    return char


def _space_cjk_char(char: str) -> str:
    """Rule "CJK": put spaces around each CJK ideograph so that it becomes its own word."""
    return f" {char} " if is_cjk_char(char) else char


_CLEAN_TABLE = _CharMap(_clean_char)
_CJK_TABLE = _CharMap(_space_cjk_char)
_PUNCT_CACHE: dict[str, bool] = {}


def _is_punct_cached(char: str) -> bool:
    hit = _PUNCT_CACHE.get(char)
    if hit is None:
        hit = _PUNCT_CACHE[char] = is_punctuation(char)
    return hit


# ---------------------------------------------------------------------------------------------
# Stage 1: BasicTokenizer
# ---------------------------------------------------------------------------------------------


def _check_switches(**switches) -> None:
    """Booleans only: ``"no"`` or ``0`` for do_lower_case is a mistake, not "true" (``strip_accents``
    may also be None: follow do_lower_case)."""
    for name, value in switches.items():
        if not isinstance(value, bool) and not (value is None and name == "strip_accents"):
            raise TypeError(f"{name} must be true or false, got {value!r}")


class BasicTokenizer:
    """Text -> list of words: cleaning, CJK spacing, lower-casing / accents, punctuation splits.

    Args:
        do_lower_case: lower-case the words (uncased BERT). Lower-casing also strips accents
            unless ``strip_accents=False`` ("H\u00e9llo" -> "hello").
        never_split: words passed through untouched (no lower-casing, no punctuation split).
        tokenize_chinese_chars: put each CJK ideograph in its own word.
        strip_accents: None = follow ``do_lower_case`` (BERT's behaviour); True / False force it.
        do_split_on_punc: split punctuation off words (always True for BERT).
    """

    def __init__(self, do_lower_case: bool = True, never_split=None, tokenize_chinese_chars: bool = True,
                 strip_accents: bool | None = None, do_split_on_punc: bool = True):
        if isinstance(never_split, str):
            raise TypeError("never_split must be a list of tokens, not a single str")
        _check_switches(do_lower_case=do_lower_case, tokenize_chinese_chars=tokenize_chinese_chars,
                        strip_accents=strip_accents, do_split_on_punc=do_split_on_punc)
        self.do_lower_case = bool(do_lower_case)
        self.never_split = set(never_split or ())
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.strip_accents = strip_accents
        self.do_split_on_punc = bool(do_split_on_punc)

    def tokenize(self, text: str, never_split=None) -> list[str]:
        """Split ``text`` into basic tokens; ``never_split`` adds words to leave untouched."""
        _check_str(text, "text")
        never_split = self.never_split.union(never_split) if never_split else self.never_split
        text = self.clean_text(text)
        if self.tokenize_chinese_chars:
            text = self.space_cjk_chars(text)
        # Hugging Face's addition (not in Google's code): NFC first, so that "e" + combining acute
        # and the single character "\u00e9" give the same word.
        text = unicodedata.normalize("NFC", text)
        words = []
        for word in text.split():
            if word not in never_split:
                if self.do_lower_case:
                    word = word.lower()
                    if self.strip_accents is not False:
                        word = self.strip_accents_from(word)
                elif self.strip_accents:
                    word = self.strip_accents_from(word)
            words.extend(self.split_on_punctuation(word, never_split))
        # Stripping accents can empty a word (a lone combining mark): split again to drop it.
        return " ".join(words).split()

    @staticmethod
    def clean_text(text: str) -> str:
        """Drop NUL, U+FFFD and control/format characters (\\x0b, U+200B...); whitespace -> " "."""
        return text.translate(_CLEAN_TABLE)

    @staticmethod
    def space_cjk_chars(text: str) -> str:
        """Surround every CJK ideograph with spaces ("ah\u535a\u63a8zz" -> "ah \u535a  \u63a8 zz")."""
        if text.isascii():  # fast path: no CJK possible
            return text
        return text.translate(_CJK_TABLE)

    @staticmethod
    def strip_accents_from(word: str) -> str:
        """Decompose (NFD: "\u00e9" -> "e" + U+0301), then drop the combining marks (category Mn)."""
        if word.isascii():  # fast path: ASCII has no accents
            return word
        return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")

    def split_on_punctuation(self, word: str, never_split=()) -> list[str]:
        """Every punctuation character becomes a word of its own: "don't" -> ["don", "'", "t"]."""
        if not self.do_split_on_punc or word in never_split or word.isalnum():
            return [word]  # isalnum(): letters and digits only, so nothing to split
        pieces: list[str] = []
        start_new = True
        for char in word:
            if _is_punct_cached(char):
                pieces.append(char)
                start_new = True
            else:
                if start_new:
                    pieces.append("")
                    start_new = False
                pieces[-1] += char
        return pieces


# ---------------------------------------------------------------------------------------------
# Stage 2: WordpieceTokenizer
# ---------------------------------------------------------------------------------------------


class WordpieceTokenizer:
    """Word -> vocabulary pieces, greedy longest-match-first (Google's WordpieceTokenizer).

    From the left, take the longest prefix of the rest of the word that is in the vocabulary;
    pieces after the first carry the "##" prefix. If at some point no prefix matches, the *whole*
    word becomes ``unk_token`` (not just the unmatched part). Words longer than
    ``max_input_chars_per_word`` characters are ``unk_token`` too (Hugging Face 100, Google 200).
    """

    def __init__(self, vocab, unk_token: str = "[UNK]", max_input_chars_per_word: int = 100,
                 continuing_subword_prefix: str = "##"):
        if not isinstance(max_input_chars_per_word, int) or max_input_chars_per_word < 1:
            raise ValueError(f"max_input_chars_per_word must be a positive int, got {max_input_chars_per_word!r}")
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word
        self.prefix = continuing_subword_prefix
        # No vocabulary entry is longer than this, so longer candidate substrings are skipped
        # (an optimisation only: the result is the same as trying every length).
        self.longest_entry = max((len(t) for t in vocab), default=0)

    def tokenize_word(self, word: str) -> list[str]:
        """Pieces of one word (no whitespace inside): "unwanted" -> ["un", "##want", "##ed"]."""
        # TASK 4.1 wordpiece: greedy longest-match-first (lesson 03)
        n = len(word)
        if n > self.max_input_chars_per_word:  # BERT rule: over-long word -> [UNK]
            return [self.unk_token]
        vocab, prefix = self.vocab, self.prefix
        pieces = []
        start = 0
        while start < n:
            end = min(n, start + self.longest_entry)
            piece = None
            while end > start:  # longest match first: shrink the candidate from the right
                candidate = word[start:end]
                if start > 0:
                    candidate = prefix + candidate  # continuation piece
                if candidate in vocab:
                    piece = candidate
                    break
                end -= 1
            if piece is None:  # BERT rule: one unmatchable part makes the whole word [UNK]
                return [self.unk_token]
            pieces.append(piece)
            start = end
        return pieces
        # END TASK 4.1

    def tokenize(self, text: str) -> list[str]:
        """Pieces of every whitespace-separated word of ``text``."""
        _check_str(text, "text")
        return [piece for word in text.split() for piece in self.tokenize_word(word)]


# ---------------------------------------------------------------------------------------------
# Helpers: argument checks and the vocabulary file
# ---------------------------------------------------------------------------------------------


def _check_str(value, name: str) -> None:
    """Raise a TypeError naming the argument unless ``value`` is a str."""
    if isinstance(value, str):
        return
    if isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{name} must be str, got {type(value).__name__}: decode it first, e.g. {name}.decode('utf-8')")
    raise TypeError(f"{name} must be str, got {type(value).__name__}")


def load_vocab(vocab_file) -> list[str]:
    """Read a ``vocab.txt``: one token per line, the line number is the id. Returns the tokens.

    Only the line ending is removed (a token may contain spaces); a Windows "\\r\\n" ending is
    removed too. Raises FileNotFoundError / ValueError naming the file.
    """
    if not isinstance(vocab_file, (str, os.PathLike)):
        raise TypeError(f"vocab_file must be a path (str or os.PathLike), got {type(vocab_file).__name__}")
    if not os.fspath(vocab_file):
        raise FileNotFoundError("vocab_file is an empty path")
    path = Path(vocab_file)
    if not path.is_file():
        raise FileNotFoundError(f"vocab_file not found (or not a file): '{path}'")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"vocab_file '{path}' is not UTF-8 text: {err}") from err
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":  # the newline after the last token
        tokens.pop()
    tokens = [t[:-1] if t.endswith("\r") else t for t in tokens]
    if not any(tokens):
        raise ValueError(f"vocab_file '{path}' is empty" + (" (blank lines only)" if tokens else ""))
    return tokens


_PADDING = {False: False, "do_not_pad": False, True: "longest", "longest": "longest", "max_length": "max_length"}
_TRUNCATION = {None: None, False: False, "do_not_truncate": False, True: "longest_first",
               "longest_first": "longest_first", "only_first": "only_first", "only_second": "only_second"}


def _clean_up_tokenization(text: str) -> str:
    """Hugging Face's decode clean-up: remove the space before . ? ! , and English clitics."""
    return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


# ---------------------------------------------------------------------------------------------
# Stage 3: BertTokenizer
# ---------------------------------------------------------------------------------------------


class BertTokenizer:
    """BERT's tokenizer: a ``vocab.txt``, BasicTokenizer + WordPiece, and the model's input format.

    ``tok = BertTokenizer("vocab.txt", do_lower_case=True)`` or ``BertTokenizer.from_pretrained(dir)``.
    Matches Hugging Face transformers' ``BertTokenizerLegacy`` (see the module docstring).

    Args:
        vocab_file: path of the vocabulary, one token per line (line number = id). Positional.
        do_lower_case, strip_accents, tokenize_chinese_chars, never_split: see BasicTokenizer.
        do_basic_tokenize: False skips BasicTokenizer (WordPiece on whitespace-split text only).
        unk_token, sep_token, pad_token, cls_token, mask_token: the special tokens; each must be
            in the vocabulary. They are never split: "[MASK]" in the text is the mask token.
        max_input_chars_per_word: longer words become [UNK] (Hugging Face's 100).
        model_max_length: the ``max_length`` used when truncation / max-length padding is asked
            for without one (BERT's 512 positions); None = unlimited (then they do nothing, as in
            Hugging Face for a tokenizer built from a vocabulary file alone).
        clean_up_tokenization_spaces: ``decode`` removes the space before "." "," "n't" ... (HF).
    """

    def __init__(self, vocab_file, do_lower_case: bool = True, do_basic_tokenize: bool = True,
                 never_split=None, unk_token: str = "[UNK]", sep_token: str = "[SEP]",
                 pad_token: str = "[PAD]", cls_token: str = "[CLS]", mask_token: str = "[MASK]",
                 tokenize_chinese_chars: bool = True, strip_accents: bool | None = None,
                 max_input_chars_per_word: int = 100, model_max_length: int | None = 512,
                 clean_up_tokenization_spaces: bool = True, max_cache_size: int = 2_000_000):
        tokens = load_vocab(vocab_file)
        self.vocab_file = str(vocab_file)
        # token -> id; if a token appears twice the later line wins (as in Hugging Face), but
        # ids_to_tokens keeps every line so that every id of the embedding matrix decodes.
        self.vocab: dict[str, int] = {tok: i for i, tok in enumerate(tokens)}
        self.ids_to_tokens: dict[int, str] = dict(enumerate(tokens))

        specials = {"unk_token": unk_token, "sep_token": sep_token, "pad_token": pad_token,
                    "cls_token": cls_token, "mask_token": mask_token}
        for name, tok in specials.items():
            _check_str(tok, name)
            if not tok or _WHITESPACE_RUN.search(tok):  # the cached path cuts text at whitespace first
                raise ValueError(f"{name}={tok!r} must be a non-empty token without whitespace")
        missing = [f"{name}={tok!r}" for name, tok in specials.items() if tok not in self.vocab]
        if missing:
            raise ValueError(f"vocab_file '{vocab_file}' lacks the special token(s) {', '.join(missing)}; "
                             "a BERT vocabulary needs [PAD] [UNK] [CLS] [SEP] [MASK] (or pass the names it uses)")
        self.unk_token, self.sep_token, self.pad_token = unk_token, sep_token, pad_token
        self.cls_token, self.mask_token = cls_token, mask_token

        if model_max_length is not None and (not isinstance(model_max_length, int)
                                             or isinstance(model_max_length, bool) or model_max_length < 1):
            raise ValueError(f"model_max_length must be a positive int or None, got {model_max_length!r}")
        self.model_max_length = model_max_length
        _check_switches(do_basic_tokenize=do_basic_tokenize,
                        clean_up_tokenization_spaces=clean_up_tokenization_spaces)
        self.do_lower_case = bool(do_lower_case)
        self.do_basic_tokenize = bool(do_basic_tokenize)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.strip_accents = strip_accents
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.basic_tokenizer = BasicTokenizer(do_lower_case=do_lower_case, never_split=never_split,
                                              tokenize_chinese_chars=tokenize_chinese_chars,
                                              strip_accents=strip_accents)
        self.wordpiece_tokenizer = WordpieceTokenizer(self.vocab, unk_token=unk_token,
                                                      max_input_chars_per_word=max_input_chars_per_word)
        # Special tokens written in the text are cut out before anything else (so "x[MASK]y" is
        # x, [MASK], y), longest first in case one is a prefix of another.
        self._special_split = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(set(self.all_special_tokens), key=len, reverse=True)) + ")")
        self._special_set = frozenset(self.all_special_tokens)
        self._cache: dict[str, list[int]] = {}  # whitespace-free chunk of text -> its ids
        self.max_cache_size = int(max_cache_size)

    # ---- vocabulary and special tokens ---------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids (lines of vocab.txt): the rows of the word-embedding matrix."""
        return len(self.ids_to_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    @property
    def all_special_tokens(self) -> list[str]:
        """The special tokens, in Hugging Face's order: unk, sep, pad, cls, mask."""
        return [self.unk_token, self.sep_token, self.pad_token, self.cls_token, self.mask_token]

    @property
    def all_special_ids(self) -> list[int]:
        return [self.vocab[t] for t in self.all_special_tokens]

    @property
    def unk_token_id(self) -> int:
        return self.vocab[self.unk_token]

    @property
    def sep_token_id(self) -> int:
        return self.vocab[self.sep_token]

    @property
    def pad_token_id(self) -> int:
        return self.vocab[self.pad_token]

    @property
    def cls_token_id(self) -> int:
        return self.vocab[self.cls_token]

    @property
    def mask_token_id(self) -> int:
        return self.vocab[self.mask_token]

    def __repr__(self) -> str:
        return (f"BertTokenizer('{self.vocab_file}', vocab_size={self.vocab_size}, "
                f"do_lower_case={self.do_lower_case}, model_max_length={self.model_max_length})")

    # ---- text -> tokens -> ids -----------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Text -> WordPiece tokens (no [CLS]/[SEP] added). The reference path, character by character.

        With Google's test vocabulary, "UNwant\u00e9d,running" -> un ##want ##ed , runn ##ing.
        """
        _check_str(text, "text")
        tokens: list[str] = []
        for part in self._special_split.split(text):
            if not part:
                continue
            if part in self._special_set:  # rule: special tokens are never split
                tokens.append(part)
                continue
            if self.do_basic_tokenize:
                words = self.basic_tokenizer.tokenize(part, never_split=self.all_special_tokens)
            else:
                words = part.split()
            for word in words:
                if word in self.basic_tokenizer.never_split:  # user's never_split: kept whole
                    tokens.append(word)
                else:
                    tokens.extend(self.wordpiece_tokenizer.tokenize_word(word))
        return tokens

    def convert_tokens_to_ids(self, tokens):
        """A token or a list of tokens -> id(s); a token not in the vocabulary -> the [UNK] id."""
        unk = self.unk_token_id
        if isinstance(tokens, str):
            return self.vocab.get(tokens, unk)
        if isinstance(tokens, (bytes, bytearray)) or not hasattr(tokens, "__iter__"):
            raise TypeError(f"tokens must be a str or a list of str, got {type(tokens).__name__}")
        vocab = self.vocab
        ids = []
        for t in tokens:
            if not isinstance(t, str):
                raise TypeError(f"tokens must contain str, got {type(t).__name__}")
            ids.append(vocab.get(t, unk))
        return ids

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        """An id or a list / 1-D array of ids -> token(s). Raises ValueError for an unknown id."""
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            return self._id_to_token(int(ids))
        ids = self._as_id_list(ids, "ids")
        skip = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._id_to_token(i) for i in ids if i not in skip]

    def _id_to_token(self, i: int) -> str:
        tok = self.ids_to_tokens.get(i)
        if tok is None:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return tok

    @staticmethod
    def _as_id_list(ids, name: str) -> list[int]:
        """Accept a list / tuple / 1-D integer array of ids; return a list of Python ints."""
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"{name} must be a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}")
            return ids.tolist()
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise TypeError(f"{name} must be a list of ints, got {type(ids).__name__}")
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise TypeError(f"{name} must contain ints, got {type(i).__name__}")
            out.append(int(i))
        return out

    def encode_words_cached(self, text):
        """Text (or a list of texts) -> token ids, fast; no special tokens. Same ids as
        ``convert_tokens_to_ids(tokenize(text))``.

        The text is cut at runs of BERT whitespace; each distinct chunk is tokenized once by the
        reference path and its ids are cached (up to ``max_cache_size`` chunks). This is exact
        because no BERT token crosses a whitespace: a special token contains none, and cleaning,
        lower-casing, punctuation splitting and WordPiece all work inside whitespace-separated
        words. (Python's ``str.split()`` would not be exact: it also splits at \\x1c-\\x1f and \\x85,
        which BERT *deletes*, joining their neighbours.)
        """
        if isinstance(text, (list, tuple)):
            return [self.encode_words_cached(t) for t in text]
        _check_str(text, "text")
        cache = self._cache
        ids: list[int] = []
        for chunk in _WHITESPACE_RUN.split(text):
            hit = cache.get(chunk)
            if hit is None:
                hit = self.convert_tokens_to_ids(self.tokenize(chunk)) if chunk else []
                if len(cache) < self.max_cache_size:
                    cache[chunk] = hit
            ids.extend(hit)
        return ids

    def clear_cache(self) -> None:
        """Forget the cached chunk -> ids table of ``encode_words_cached``."""
        self._cache.clear()

    # ---- the model's input format ------------------------------------------------------

    def build_inputs_with_special_tokens(self, ids_a: list[int], ids_b: list[int] | None = None) -> list[int]:
        """``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``."""
        if ids_b is None:
            return [self.cls_token_id] + list(ids_a) + [self.sep_token_id]
        return [self.cls_token_id] + list(ids_a) + [self.sep_token_id] + list(ids_b) + [self.sep_token_id]

    @staticmethod
    def create_token_type_ids_from_sequences(ids_a: list[int], ids_b: list[int] | None = None) -> list[int]:
        """Segment ids: 0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``."""
        if ids_b is None:
            return [0] * (len(ids_a) + 2)
        return [0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)

    @staticmethod
    def get_special_tokens_mask(ids_a: list[int], ids_b: list[int] | None = None) -> list[int]:
        """1 where ``build_inputs_with_special_tokens`` puts [CLS] / [SEP], 0 on text tokens."""
        if ids_b is None:
            return [1] + [0] * len(ids_a) + [1]
        return [1] + [0] * len(ids_a) + [1] + [0] * len(ids_b) + [1]

    @staticmethod
    def truncate_pair_lengths(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
        """How many tokens of A and B survive ``longest_first`` truncation to ``max_tokens`` in all.

        Google's ``truncate_seq_pair`` (deterministic variant): while too long, remove one token
        from the longer text - from B when they are equally long. So an odd surplus costs B the
        extra token. (Hugging Face's legacy tokenizer computes the same in closed form.)
        """
        while len_a + len_b > max_tokens:
            if len_a > len_b:
                len_a -= 1
            else:
                len_b -= 1
        return len_a, len_b

    def _truncate(self, ids_a, ids_b, strategy, max_length, num_special):
        """Cut ``ids_a`` / ``ids_b`` (from the right) so that the sequence fits ``max_length``."""
        surplus = len(ids_a) + len(ids_b or ()) + num_special - max_length
        if surplus <= 0:
            return ids_a, ids_b
        if num_special > max_length:
            raise ValueError(f"max_length={max_length} is shorter than the {num_special} special tokens "
                             "the sequence needs")
        if ids_b is None or strategy == "only_first":
            if strategy == "only_second":
                raise ValueError("truncation='only_second' needs a text_pair; the single text is longer than "
                                 f"max_length={max_length}")
            if surplus > len(ids_a):
                raise ValueError(f"truncation='{strategy}' cannot fit max_length={max_length}: the first text has "
                                 f"{len(ids_a)} tokens and {surplus} must go")
            return ids_a[:len(ids_a) - surplus], ids_b
        if strategy == "only_second":
            if surplus > len(ids_b):
                raise ValueError(f"truncation='only_second' cannot fit max_length={max_length}: the second text "
                                 f"has {len(ids_b)} tokens and {surplus} must go")
            return ids_a, ids_b[:len(ids_b) - surplus]
        keep_a, keep_b = self.truncate_pair_lengths(len(ids_a), len(ids_b), max_length - num_special)
        return ids_a[:keep_a], ids_b[:keep_b]

    def _resolve_strategies(self, padding, truncation, max_length):
        """Hugging Face's rules for turning (padding, truncation, max_length) into what happens."""
        if isinstance(padding, str) or isinstance(padding, bool):
            pad = _PADDING.get(padding, None)
        else:
            pad = None
        if pad is None:
            raise ValueError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        trunc = _TRUNCATION.get(truncation, "bad") if isinstance(truncation, (str, bool, type(None))) else "bad"
        if trunc == "bad":
            raise ValueError("truncation must be None, False, True, 'longest_first', 'only_first' or "
                             f"'only_second', got {truncation!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer))):
            raise TypeError(f"max_length must be an int or None, got {type(max_length).__name__}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        # HF: max_length alone (padding literally False, truncation unspecified) means "truncate
        # to it"; padding="do_not_pad" does not count as "alone" there, so not here either.
        if trunc is None:
            trunc = "longest_first" if (max_length is not None and padding is False) else False
        # HF: without max_length, truncation and max-length padding use model_max_length;
        # with no model_max_length either (None = unlimited), they do nothing.
        if max_length is None:
            max_length = self.model_max_length
            if max_length is None:
                trunc = False
                pad = False if pad == "max_length" else pad
        return pad, trunc, max_length

    def _encode_one(self, text, text_pair, add_special_tokens, trunc, max_length):
        ids_a = self.encode_words_cached(text)
        ids_b = self.encode_words_cached(text_pair) if text_pair is not None else None
        num_special = (3 if ids_b is not None else 2) if add_special_tokens else 0
        if trunc:
            ids_a, ids_b = self._truncate(ids_a, ids_b, trunc, max_length, num_special)
        if add_special_tokens:
            input_ids = self.build_inputs_with_special_tokens(ids_a, ids_b)
            token_type_ids = self.create_token_type_ids_from_sequences(ids_a, ids_b)
        else:
            input_ids = ids_a + (ids_b or [])
            token_type_ids = [0] * len(input_ids)
        return input_ids, token_type_ids

    def __call__(self, text, text_pair=None, add_special_tokens: bool = True, padding=False,
                 truncation=None, max_length: int | None = None, return_tensors: str | None = None) -> dict:
        """Encode one text (or pair), or a batch (list) of texts (or pairs), for the model.

        Returns ``{"input_ids", "token_type_ids", "attention_mask"}``: lists (lists of lists for a
        batch), or int64 arrays of shape (batch, length) with ``return_tensors="np"`` (a single
        text gets a batch axis of 1, as in Hugging Face).

        padding: False (none), True / "longest" (to the longest in the batch), "max_length".
        truncation: True / "longest_first" (Google's truncate_seq_pair), "only_first",
            "only_second", False; None (default) truncates iff ``max_length`` is given with ``padding=False``.
        Right-side padding with [PAD] (id ``pad_token_id``), token type 0 and attention mask 0.
        """
        pad, trunc, max_length = self._resolve_strategies(padding, truncation, max_length)
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors must be None or 'np' (bertnp is NumPy-only), got {return_tensors!r}")

        batched = isinstance(text, (list, tuple))
        if batched:
            if len(text) == 0:
                raise ValueError("text is an empty batch")
            for i, t in enumerate(text):
                _check_str(t, f"text[{i}]")
            if text_pair is None:
                pairs = [None] * len(text)
            elif isinstance(text_pair, (list, tuple)):
                if len(text_pair) != len(text):
                    raise ValueError(f"text_pair has {len(text_pair)} items but text has {len(text)}")
                for i, t in enumerate(text_pair):
                    _check_str(t, f"text_pair[{i}]")
                pairs = list(text_pair)
            else:
                raise TypeError(f"text is a batch, so text_pair must be a list of the same length, "
                                f"got {type(text_pair).__name__}")
            texts = list(text)
        else:
            _check_str(text, "text")
            if text_pair is not None:
                _check_str(text_pair, "text_pair")
            texts, pairs = [text], [text_pair]

        rows = [self._encode_one(a, b, add_special_tokens, trunc, max_length) for a, b in zip(texts, pairs)]

        # Padding: to the longest row, or to max_length; never shortens a row.
        if pad == "longest":
            target = max(len(ids) for ids, _ in rows)
        elif pad == "max_length":
            target = max_length
        else:
            target = 0
        out = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
        for ids, types in rows:
            n_pad = max(0, target - len(ids))
            out["input_ids"].append(ids + [self.pad_token_id] * n_pad)
            out["token_type_ids"].append(types + [0] * n_pad)
            out["attention_mask"].append([1] * len(ids) + [0] * n_pad)

        if return_tensors == "np":
            lengths = {len(r) for r in out["input_ids"]}
            if len(lengths) > 1:
                raise ValueError(f"the rows have different lengths {sorted(lengths)}: pass padding=True (or "
                                 "'max_length') to get arrays")
            return {k: np.array(v, dtype=np.int64) for k, v in out.items()}
        if not batched:
            return {k: v[0] for k, v in out.items()}
        return out

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True,
               truncation=None, max_length: int | None = None) -> list[int]:
        """Just the ``input_ids`` of ``self(text, text_pair, ...)`` for one text or pair."""
        _check_str(text, "text")
        return self(text, text_pair, add_special_tokens=add_special_tokens, truncation=truncation,
                    max_length=max_length)["input_ids"]

    # ---- ids -> text ------------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Join tokens with spaces and glue "##" pieces to the piece before them."""
        return " ".join(tokens).replace(" ##", "").strip()

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        """Ids -> text: "##" pieces joined to their word. Lower-casing and accents are not undone.

        ``skip_special_tokens`` drops [CLS] [SEP] [PAD] [MASK] [UNK]; the clean-up (default on, as
        in Hugging Face) removes the space before "." "," "?" "!" "'s" "n't" ...
        """
        tokens = self.convert_ids_to_tokens(self._as_id_list(ids, "ids"), skip_special_tokens=skip_special_tokens)
        text = self.convert_tokens_to_string(tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return _clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(self, batch, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        """``decode`` for each row of a list of id lists or a 2-D array."""
        if isinstance(batch, np.ndarray) and batch.ndim != 2:
            raise ValueError(f"batch must be 2-D, got shape {batch.shape}")
        return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in batch]

    # ---- saving and loading -------------------------------------------------------------

    def save_vocabulary(self, save_directory, filename_prefix: str | None = None) -> tuple[str]:
        """Write the vocabulary as ``vocab.txt`` (one token per line, in id order) in ``save_directory``."""
        directory = Path(save_directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"save_directory is not a directory: '{directory}'")
        path = directory / ((filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE_NAME)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for i in range(self.vocab_size):
                f.write(self.ids_to_tokens[i] + "\n")
        return (str(path),)

    def save_pretrained(self, save_directory) -> tuple[str, str]:
        """Write ``vocab.txt`` and ``tokenizer_config.json`` (Hugging Face's names) to ``save_directory``."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        (vocab_path,) = self.save_vocabulary(directory)
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "do_basic_tokenize": self.do_basic_tokenize,
            "never_split": sorted(self.basic_tokenizer.never_split) or None,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "strip_accents": self.strip_accents,
            "unk_token": self.unk_token, "sep_token": self.sep_token, "pad_token": self.pad_token,
            "cls_token": self.cls_token, "mask_token": self.mask_token,
            "model_max_length": self.model_max_length,
            "max_input_chars_per_word": self.wordpiece_tokenizer.max_input_chars_per_word,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
        }
        config_path = directory / CONFIG_FILE_NAME
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return vocab_path, str(config_path)

    _SWITCHES = ("do_lower_case", "do_basic_tokenize", "tokenize_chinese_chars", "strip_accents",
                 "clean_up_tokenization_spaces")

    # tokenizer_config.json keys we understand; others (tokenizer_class, name_or_path, ...) are ignored.
    _CONFIG_KEYS = ("do_lower_case", "do_basic_tokenize", "never_split", "tokenize_chinese_chars",
                    "strip_accents", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                    "model_max_length", "max_input_chars_per_word", "clean_up_tokenization_spaces")

    @classmethod
    def from_pretrained(cls, directory, **kwargs) -> "BertTokenizer":
        """Load ``directory/vocab.txt`` and, if present, ``directory/tokenizer_config.json``.

        Keyword arguments override the config file. A ``model_max_length`` larger than 10**9
        (Hugging Face writes 10**30 for "unlimited") is ignored.
        """
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a path, got {type(directory).__name__}")
        directory = Path(directory)
        if directory.is_file():
            raise FileNotFoundError(f"directory must be a folder holding {VOCAB_FILE_NAME}, got the file '{directory}' "
                                    "(for a vocabulary file use BertTokenizer(path))")
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: '{directory}'")
        vocab_path = directory / VOCAB_FILE_NAME
        if not vocab_path.is_file():
            raise FileNotFoundError(f"no {VOCAB_FILE_NAME} in '{directory}' (expected '{vocab_path}')")
        options = {}
        config_path = directory / CONFIG_FILE_NAME
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as err:
                raise ValueError(f"cannot read '{config_path}': {err}") from err
            if not isinstance(config, dict):
                raise ValueError(f"'{config_path}' must hold a JSON object")
            for key in cls._CONFIG_KEYS:
                value = config.get(key)
                if value is None:
                    continue  # null means "the default" in Hugging Face's files
                if isinstance(value, dict) and "content" in value:  # AddedToken written as a dict
                    value = value["content"]
                if key == "model_max_length" and (not isinstance(value, int) or value > 10**9):
                    continue
                options[key] = value
        try:
            _check_switches(**{k: v for k, v in options.items() if k in cls._SWITCHES})
        except TypeError as err:
            raise TypeError(f"'{config_path}': {err}") from None
        options.update(kwargs)
        return cls(vocab_path, **options)
