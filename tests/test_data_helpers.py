"""Helpers for the data tests: a small BERT-style tokenizer and synthetic corpora.

``make_tokenizer(vocab_tokens, tmp_path)`` returns ``bertnp.tokenizer.BertTokenizer`` when that
module is importable (the real one is preferred), else ``MiniTokenizer``, a stand-in with the
same duck-typed interface: lower-case, split on spaces and punctuation, greedy longest-match
WordPiece with ``##`` continuations, special tokens never split.
"""

from __future__ import annotations

import collections
import random
import re

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_SPECIAL_RE = re.compile(r"(\[PAD\]|\[UNK\]|\[CLS\]|\[SEP\]|\[MASK\])")


class MiniTokenizer:
    """A minimal uncased WordPiece tokenizer (stand-in for bertnp.tokenizer.BertTokenizer)."""

    def __init__(self, tokens: list[str]):
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.ids_to_tokens = {i: t for t, i in self.vocab.items()}
        self.pad_token_id = self.vocab["[PAD]"]
        self.unk_token_id = self.vocab["[UNK]"]
        self.cls_token_id = self.vocab["[CLS]"]
        self.sep_token_id = self.vocab["[SEP]"]
        self.mask_token_id = self.vocab["[MASK]"]
        self.all_special_ids = [self.vocab[t] for t in SPECIALS]

    def __len__(self):
        return len(self.vocab)

    def _wordpiece(self, word):
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text):
        out = []
        for part in _SPECIAL_RE.split(text):
            if part in SPECIALS:
                out.append(part)
                continue
            for word in re.findall(r"\w+|[^\w\s]", part.lower()):
                out.extend(self._wordpiece(word))
        return out

    def convert_tokens_to_ids(self, tokens):
        return [self.vocab.get(t, self.unk_token_id) for t in tokens]


def make_tokenizer(vocab_tokens: list[str], tmp_path):
    """The real BertTokenizer on a vocab file if bertnp.tokenizer exists, else MiniTokenizer."""
    try:
        from bertnp.tokenizer import BertTokenizer
    except ImportError:
        return MiniTokenizer(vocab_tokens)
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab_tokens) + "\n", encoding="utf-8")
    return BertTokenizer(str(path), do_lower_case=True)


# Words of the synthetic corpus: whole words, plus words that WordPiece splits into pieces
# (for whole-word masking): "unbreakable" -> un ##break ##able.
WORDS = ("the a an of to and in that it was for on are as with his they at be this from have or "
         "one had by word but not what all were we when your can said there use each which she do "
         "how their if will up other about out many then them these so some her would make like "
         "him into time has look two more write go see number no way could people my than first "
         "water been call who oil its now find long down day did get come made may part").split()
SPLIT_WORDS = ["unbreakable", "rethinking", "unthinkable", "rebreaking", "undoable", "redoing"]
PIECES = ["un", "re", "##break", "##think", "##able", "##ing", "##do", "do"]


def synthetic_vocab(extra_random: int = 200) -> list[str]:
    """Specials, punctuation, the corpus words, the pieces, a Google-style [unused0], and filler
    tokens (so random replacement has a realistic choice)."""
    tokens = SPECIALS + ["[unused0]", ".", ",", "!", "?"] + WORDS + [p for p in PIECES if p not in WORDS]
    tokens += [f"filler{i}" for i in range(extra_random)]
    return list(dict.fromkeys(tokens))


def synthetic_documents(n_docs: int, seed: int = 0, min_sent: int = 1, max_sent: int = 30,
                        min_words: int = 3, max_words: int = 25) -> list[list[str]]:
    """Random documents of random sentences; each document's sentences carry a tag word
    (so tests can also check where text came from, if they want)."""
    rng = random.Random(seed)
    vocab_words = WORDS + SPLIT_WORDS
    docs = []
    for _ in range(n_docs):
        doc = []
        for _ in range(rng.randint(min_sent, max_sent)):
            words = [rng.choice(vocab_words) for _ in range(rng.randint(min_words, max_words))]
            doc.append(" ".join(words) + rng.choice([".", "!", "?"]))
        docs.append(doc)
    return docs


def corpus_vocab(documents: list[list[str]], size: int = 6000) -> list[str]:
    """A word-level vocab for a real corpus: specials, single characters and their ``##``
    forms (so every word tokenizes without [UNK]), then the most frequent lower-cased words."""
    counts = collections.Counter()
    chars = set()
    for doc in documents:
        for s in doc:
            for w in re.findall(r"\w+|[^\w\s]", s.lower()):
                counts[w] += 1
                chars.update(w)
    tokens = SPECIALS + sorted(chars) + ["##" + c for c in sorted(chars)]
    tokens += [w for w, _ in counts.most_common(size) if w not in tokens]
    return list(dict.fromkeys(tokens))
