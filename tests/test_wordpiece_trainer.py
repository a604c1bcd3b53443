"""train_wordpiece (bertnp/wordpiece_trainer.py): the merge rule against a brute-force
likelihood computation, the vocabulary file, coverage on real held-out text, and bad input."""

from __future__ import annotations

import gzip
import math
import warnings
from collections import Counter

import pytest

from bertnp.tokenizer import BertTokenizer
from bertnp.wordpiece_trainer import SPECIAL_TOKENS, count_words, tokenization_stats, train_wordpiece

# A tiny corpus with no letter repeated three times in a row (so pair counts = possible merges).
TINY = ("low " * 5 + "lower " * 2 + "newest " * 6 + "widest " * 3 + "new " * 2 + "wide " * 4
        + "slow " * 3 + "lowest " * 2 + "newer " * 3)


def first_merges(vocab: list[str]) -> list[str]:
    """The merged pieces, in the order the trainer added them (longer than one character)."""
    return [t for t in vocab[len(SPECIAL_TOKENS):] if len(t.removeprefix("##")) > 1]


def brute_force_merges(text: str, n_merges: int, scoring: str, trainer_choice: list[str]) -> None:
    """Re-derive each merge by trying every candidate: apply it to all words, compute the unigram
    log-likelihood sum_u c_u log(c_u / N) (or just the pair count for BPE), and check that the
    trainer's piece is among the best. Then continue from the trainer's choice."""
    words = Counter(text.split())
    seqs = {w: [w[0]] + ["##" + c for c in w[1:]] for w in words}

    def join(a, b):
        return a + b[2:]

    def merge_all(seqs, a, b):
        out = {}
        for w, s in seqs.items():
            new, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    new.append(join(a, b))
                    i += 2
                else:
                    new.append(s[i])
                    i += 1
            out[w] = new
        return out

    def log_likelihood(seqs):
        c = Counter()
        for w, s in seqs.items():
            for u in s:
                c[u] += words[w]
        n = sum(c.values())
        return sum(v * math.log(v / n) for v in c.values())

    for step in range(n_merges):
        pairs = Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += words[w]
        candidates = {p: n for p, n in pairs.items() if n >= 2}
        if scoring == "frequency":
            scores = {p: float(n) for p, n in candidates.items()}
        else:
            scores = {p: log_likelihood(merge_all(seqs, *p)) for p in candidates}
        best = max(scores.values())
        best_pieces = {join(*p) for p, v in scores.items() if v >= best - 1e-9}
        assert trainer_choice[step] in best_pieces, (step, trainer_choice[step], best_pieces)
        chosen = next(p for p in scores if join(*p) == trainer_choice[step] and scores[p] >= best - 1e-9)
        seqs = merge_all(seqs, *chosen)


def n_single_pieces(vocab_size_probe: int = 10_000) -> int:
    vocab = train_wordpiece([TINY], vocab_size_probe, min_frequency=10_000, show_progress=False)
    return len(vocab)


@pytest.mark.parametrize("scoring", ["likelihood", "frequency"])
def test_merges_match_brute_force(scoring):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the probe stops early on purpose
        base = n_single_pieces()
    vocab = train_wordpiece([TINY], base + 8, scoring=scoring, show_progress=False)
    merges = first_merges(vocab)
    assert len(vocab) == base + 8 and len(merges) == 8
    brute_force_merges(TINY, 8, scoring, merges)


def test_likelihood_and_frequency_choose_differently():
    """The WordPiece score is not BPE's: on this corpus their merge sequences part ways."""
    a = first_merges(train_wordpiece([TINY], 120, scoring="likelihood", show_progress=False))
    b = first_merges(train_wordpiece([TINY], 120, scoring="frequency", show_progress=False))
    assert a != b


def test_vocab_layout_and_file(tmp_path):
    path = tmp_path / "out" / "vocab.txt"
    vocab = train_wordpiece([TINY], 120, vocab_file=path, show_progress=False)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # PAD = id 0
    assert len(vocab) == 120 == len(set(vocab))
    assert path.read_text(encoding="utf-8") == "".join(t + "\n" for t in vocab)
    assert "##," not in vocab and "," in vocab  # punctuation is never a continuation piece
    assert "##e" in vocab and "*" in vocab  # both forms of letters; ASCII even if unseen
    tok = BertTokenizer(path)
    assert tok.pad_token_id == 0
    for word in set(TINY.split()):
        assert "[UNK]" not in tok.tokenize(word), word
    assert tok.tokenize("x = 3 * y;") == ["x", "=", "3", "*", "y", ";"]
    assert train_wordpiece([TINY], 120, vocab_file=tmp_path, show_progress=False) == vocab  # dir -> vocab.txt
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8") == path.read_text(encoding="utf-8")


def test_inputs_files_gzip_and_texts(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_text("Hello world.\nHello again!\n", encoding="utf-8")
    packed = tmp_path / "b.txt.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write("Héllo World\n")
    counts = count_words([plain, str(packed), "hello  text", "and/or"], show_progress=False)
    assert counts == Counter({"hello": 4, "world": 2, ".": 1, "again": 1, "!": 1, "text": 1,
                              "and": 1, "/": 1, "or": 1})  # "and/or": a one-word sentence, not a path
    cased = train_wordpiece([str(plain)], 163, do_lower_case=False, show_progress=False)
    assert "H" in cased and "h" in cased


def test_progress_bar(capsys):
    train_wordpiece([TINY], 115, show_progress=True)
    assert "wordpiece vocab" in capsys.readouterr().err


def test_real_text_coverage():
    """Train on part of the bundled English corpus, measure on its held-out split."""
    from bertnp.corpus import bundled_corpus

    with gzip.open(bundled_corpus("train"), "rt", encoding="utf-8") as f:
        train = "\n".join(f.read().splitlines()[::12])  # every 12th sentence, 0.45 MB, both books
    with gzip.open(bundled_corpus("heldout"), "rt", encoding="utf-8") as f:
        heldout = f.read()
    vocab = train_wordpiece([train], 3000, show_progress=False)
    vocab_path = _write(vocab)
    tok = BertTokenizer(vocab_path)
    stats = tokenization_stats(tok, heldout)
    assert stats["words"] > 50_000
    assert stats["unk_rate"] < 0.001  # only characters the training text never showed (measured: 1 word)
    assert stats["tokens_per_word"] < 1.35  # measured 1.27 (whole corpus, 8k pieces: 1.11)
    vocab_path.unlink()


def _write(vocab):
    import tempfile
    from pathlib import Path

    f = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8")
    f.write("".join(t + "\n" for t in vocab))
    f.close()
    return Path(f.name)


def test_tokenization_stats():
    tok = BertTokenizer(_write(train_wordpiece([TINY], 120, show_progress=False)))
    stats = tokenization_stats(tok, "lowest widest \u4e2d")
    assert stats["words"] == 3 and stats["unk_words"] == 1 and stats["unk_rate"] == pytest.approx(1 / 3)


def test_stops_early_with_a_warning_when_pairs_run_out():
    with pytest.warns(UserWarning, match="vocab_size=5000"):
        vocab = train_wordpiece(["ab ab ab cd"], 5000, show_progress=False)
    assert "ab" in vocab and "cd" not in vocab  # "cd" was seen once: below min_frequency=2


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_wordpiece([tmp_path / "missing.txt"], 300)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_wordpiece(["data/missing.txt"], 300)  # a str that looks like a file name is a file name
    with pytest.raises(TypeError, match="files_or_texts"):
        train_wordpiece(b"bytes", 300)
    with pytest.raises(TypeError, match=r"files_or_texts\[1\]"):
        train_wordpiece(["ok", None], 300)
    with pytest.raises(ValueError, match="no words"):
        train_wordpiece(["   \n"], 300, show_progress=False)
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece([TINY], 50, show_progress=False)  # smaller than the alphabet
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece([TINY], 5)
    with pytest.raises(TypeError, match="vocab_size"):
        train_wordpiece([TINY], 300.0)
    with pytest.raises(ValueError, match="scoring"):
        train_wordpiece([TINY], 300, scoring="magic")
    with pytest.raises(ValueError, match="min_frequency"):
        train_wordpiece([TINY], 300, min_frequency=0)


def test_bad_files_and_arguments_are_named(tmp_path):
    with pytest.raises(TypeError, match="files_or_texts"):
        train_wordpiece(5, 300, show_progress=False)
    with pytest.raises(FileNotFoundError, match="directory, not a file"):
        train_wordpiece([tmp_path], 300, show_progress=False)
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt.*UTF-8"):
        train_wordpiece([binary], 300, show_progress=False)
    corrupt = tmp_path / "corrupt.txt.gz"
    corrupt.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="corrupt.txt.gz.*gzip"):
        train_wordpiece([corrupt], 300, show_progress=False)
    with pytest.raises(ValueError, match="limit_alphabet"):
        train_wordpiece([TINY], 300, limit_alphabet=True)
    with pytest.raises(ValueError, match="max_input_chars_per_word"):
        train_wordpiece([TINY], 300, max_input_chars_per_word=None)
    with pytest.raises(TypeError, match="initial_alphabet"):
        train_wordpiece([TINY], 300, initial_alphabet=["a", "b"])
    with pytest.raises(TypeError, match="special_tokens"):
        train_wordpiece([TINY], 300, special_tokens="[PAD]")  # one str, not a list
    with pytest.raises(TypeError, match=r"special_tokens\[1\]"):
        train_wordpiece([TINY], 300, special_tokens=["[PAD]", None])
    with pytest.raises(ValueError, match=r"special_tokens\[0\]"):
        train_wordpiece([TINY], 300, special_tokens=["[P AD]"])
    with pytest.raises(ValueError, match="duplicates"):
        train_wordpiece([TINY], 300, special_tokens=["[PAD]", "[PAD]"])
    with pytest.raises(TypeError, match="vocab_file"):
        train_wordpiece([TINY], 300, vocab_file=b"vocab.txt")  # checked before training, not after
    with pytest.raises(TypeError, match="tokenizer"):
        tokenization_stats(None, "text")


@pytest.mark.slow
def test_8k_vocabulary_on_the_bundled_corpus(tmp_path, capsys):
    """An 8k vocabulary from the whole bundled corpus (5.4 MB), with a progress bar; coverage of
    the held-out split. (Its speed is measured by benchmarks, not asserted here.)"""
    from bertnp.corpus import bundled_corpus

    vocab = train_wordpiece([bundled_corpus("train")], 8000, vocab_file=tmp_path, show_progress=True)
    assert "wordpiece vocab" in capsys.readouterr().err
    assert len(vocab) == 8000 and vocab[:5] == list(SPECIAL_TOKENS)
    with gzip.open(bundled_corpus("heldout"), "rt", encoding="utf-8") as f:
        stats = tokenization_stats(BertTokenizer(tmp_path / "vocab.txt"), f.read())
    assert stats["unk_words"] == 0 and stats["tokens_per_word"] < 1.12  # measured 0 and 1.109
