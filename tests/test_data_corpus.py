"""The bundled corpus, data speed on it, and the lesson helpers that show one instance."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from bertnp.corpus import bundled_corpus
from bertnp.data import (
    PretrainingDataset,
    PretrainingLoader,
    format_instance,
    plot_instance,
    read_corpus,
    tokenize_documents,
)
from test_data_helpers import corpus_vocab, make_tokenizer


@pytest.fixture(scope="module")
def train_docs():
    return read_corpus(bundled_corpus("train"))


@pytest.fixture(scope="module")
def heldout_docs():
    return read_corpus(bundled_corpus("heldout"))


@pytest.fixture(scope="module")
def tok(train_docs, tmp_path_factory):
    return make_tokenizer(corpus_vocab(train_docs, 8000), tmp_path_factory.mktemp("vocab"))


def test_bundled_corpus_files_and_split(train_docs, heldout_docs):
    train, heldout = bundled_corpus("train"), bundled_corpus("heldout")
    raw = sum(len(gzip.decompress(p.read_bytes())) for p in (train, heldout))
    packed = train.stat().st_size + heldout.stat().st_size
    assert 3e6 <= raw <= 10e6 and packed <= 3e6
    # the numbers bertnp/corpus/README.md states
    assert (len(train_docs), sum(map(len, train_docs))) == (1180, 49698)
    assert (len(heldout_docs), sum(map(len, heldout_docs))) == (62, 2585)
    # held-out documents are whole documents that are not in the training split
    train_set = {tuple(d) for d in train_docs}
    assert not any(tuple(d) in train_set for d in heldout_docs)
    assert train_docs[0][0] == "In the beginning God created the heavens and the earth."
    assert any(s.startswith("CYNIC, n.") for d in train_docs for s in d)  # the Devil's Dictionary
    assert any(s.startswith("baroque, adj.") for d in train_docs for s in d)  # the Jargon File
    with pytest.raises(ValueError, match="split"):
        bundled_corpus("test")


def test_tokenized_corpus_is_clean(train_docs, tok):
    """The stand-in vocabulary covers every character, so the corpus has no [UNK]."""
    ids = tokenize_documents(train_docs[:200], tok)
    flat = np.concatenate([np.asarray(s) for d in ids for s in d])
    assert flat.size > 100_000 and not (flat == tok.unk_token_id).any()


def test_batches_never_go_back_to_the_text(train_docs, tok, monkeypatch):
    """A training step must not wait for data: the corpus is tokenized once, when the dataset is
    built, and a batch is then assembled from token ids alone (pairs and, with dynamic masking,
    fresh masks). So after building, the tokenizer is never called again -- not by the fingerprint
    a checkpoint records, not by 100 batches. (How fast a batch is assembled is measured in
    benchmarks/, not asserted here.)"""
    ds = PretrainingDataset(train_docs, tok, max_seq_length=128, seed=0)  # tokenizes the corpus
    assert len(ds) > 10_000

    def no_text(*args, **kwargs):
        raise AssertionError("the tokenizer was called after the dataset was built")
    for name in ("tokenize", "encode_words_cached", "convert_tokens_to_ids", "__call__"):
        monkeypatch.setattr(tok, name, no_text, raising=False)
    first = ds.fingerprint()  # computed once, at the first loader checkpoint
    loader = PretrainingLoader(ds, batch_size=32)
    for _ in range(100):
        batch = loader.next_batch()
    assert batch["input_ids"].shape == (32, 128)
    assert ds.fingerprint() == first


def test_format_instance_text(heldout_docs, tok):
    ds = PretrainingDataset(heldout_docs, tok, max_seq_length=64, seed=1)
    x = ds.instance(0, 0)
    text = format_instance(x, tok)
    lines = text.splitlines()
    assert len(lines) == 2 + len(x.tokens)
    assert lines[0].startswith("NSP label: ")
    assert ("random next (1)" in lines[0]) == x.is_random_next
    assert lines[2].split()[2] == "[CLS]"
    marked = [ln for ln in lines[2:] if ln.rstrip().endswith(("(mask)", "(random)", "(kept)"))]
    assert len(marked) == len(x.masked_positions)
    assert "more" in format_instance(x, tok, max_rows=5).splitlines()[-1]


def test_plot_instance_figure(heldout_docs, tok):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = PretrainingDataset(heldout_docs, tok, max_seq_length=64, seed=1)
    x = ds.instance(0, 0)
    fig = plot_instance(x, tok, max_tokens=32)
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 32  # one box per token, original and input rows
    assert [t.get_text() for t in ax.texts][:2] == ["[CLS]", "[CLS]"]
    plt.close(fig)
