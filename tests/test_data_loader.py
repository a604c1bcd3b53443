"""Tests of bertnp.data batching: collate, PretrainingLoader, exact resume from a JSON state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertnp.data import IGNORE_INDEX, PretrainingDataset, PretrainingLoader, TrainingInstance, collate
from test_data_helpers import make_tokenizer, synthetic_documents, synthetic_vocab

KEYS = ["input_ids", "token_type_ids", "attention_mask", "labels", "next_sentence_label"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(synthetic_vocab(), tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module")
def docs():
    return synthetic_documents(30, seed=7)


def make_dataset(tok, docs, **kw):
    kw.setdefault("max_seq_length", 48)
    kw.setdefault("seed", 2)
    return PretrainingDataset(docs, tok, **kw)


def same_batch(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_collate_shapes_padding_labels(tok):
    a = TrainingInstance([2, 10, 11, 3, 12, 3], [0, 0, 0, 0, 1, 1], False, 0, 0,
                         input_ids=[2, 4, 11, 3, 12, 3], masked_positions=[1], masked_labels=[10])
    b = TrainingInstance([2, 13, 3, 14, 3], [0, 0, 0, 1, 1], True, 0, 1,
                         input_ids=[2, 13, 3, 99, 3], masked_positions=[3], masked_labels=[14])
    batch = collate([a, b], pad_id=0, max_seq_length=8)
    assert list(batch) == KEYS
    assert all(v.dtype == np.int64 for v in batch.values())
    assert batch["input_ids"].tolist() == [[2, 4, 11, 3, 12, 3, 0, 0], [2, 13, 3, 99, 3, 0, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 10, -100, -100, -100, -100, -100, -100],
                                        [-100, -100, -100, 14, -100, -100, -100, -100]]
    assert batch["next_sentence_label"].tolist() == [0, 1]
    assert collate([a, b], pad_id=0, pad_to="longest")["input_ids"].shape == (2, 6)
    with pytest.raises(ValueError, match="max_seq_length"):
        collate([a], pad_id=0, max_seq_length=4)
    with pytest.raises(ValueError, match="pad_to"):
        collate([a], pad_id=0, max_seq_length=8, pad_to="left")
    with pytest.raises(ValueError, match="instances"):
        collate([], pad_id=0, max_seq_length=8)


def test_loader_batches_match_instances(tok, docs):
    ds = make_dataset(tok, docs)
    loader = PretrainingLoader(ds, batch_size=8)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(ds) // 8)
    assert loader.epoch == 1 and loader.index == 0
    b = batches[0]
    assert b["input_ids"].shape == (8, 48) and b["next_sentence_label"].shape == (8,)
    assert (b["input_ids"][b["attention_mask"] == 0] == tok.pad_token_id).all()
    # every predicted position holds the original token's id; [MASK] only where predicted
    order = loader.order(0)
    for row, k in enumerate(order[:8]):
        x = ds.instance(int(k), 0)
        assert b["input_ids"][row, :len(x.input_ids)].tolist() == x.input_ids
        assert np.flatnonzero(b["labels"][row] != IGNORE_INDEX).tolist() == x.masked_positions
    assert ((b["input_ids"] == tok.mask_token_id) <= (b["labels"] != IGNORE_INDEX)).all()
    # an epoch visits each instance exactly once, in a new order each epoch
    assert sorted(order.tolist()) == list(range(len(ds)))
    assert not np.array_equal(loader.order(0), loader.order(1))
    assert sum(len(x["next_sentence_label"]) for x in batches) == len(ds)


def test_drop_last_and_longest_padding(tok, docs):
    ds = make_dataset(tok, docs)
    loader = PretrainingLoader(ds, batch_size=7, drop_last=True, pad_to="longest")
    batches = list(loader)
    assert len(batches) == len(ds) // 7 and all(len(x["next_sentence_label"]) == 7 for x in batches)
    assert all(x["input_ids"].shape[1] == x["attention_mask"].sum(1).max() for x in batches)
    with pytest.raises(ValueError, match="batch_size"):
        PretrainingLoader(ds, batch_size=len(ds) + 1, drop_last=True)
    with pytest.raises(ValueError, match="batch_size"):
        PretrainingLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="pad_to"):
        PretrainingLoader(ds, batch_size=4, pad_to="right")


@pytest.mark.parametrize("masking", ["dynamic", "static"])
def test_resume_is_exact_across_epochs(tok, docs, masking):
    """Train for k steps, checkpoint the loader as JSON, rebuild everything from the corpus in a
    'new process' and resume: the following batches are exactly those of an uninterrupted run,
    including across an epoch boundary (new order, new dynamic masks)."""
    ds = make_dataset(tok, docs, masking=masking)
    per_epoch = len(PretrainingLoader(ds, batch_size=16))
    steps = per_epoch + 5  # run through one epoch boundary before and after the checkpoint
    reference = PretrainingLoader(ds, batch_size=16)
    expected = [reference.next_batch() for _ in range(2 * steps)]

    first = PretrainingLoader(ds, batch_size=16)
    for _ in range(per_epoch - 3):
        first.next_batch()
    saved = json.dumps(first.state_dict())  # what a training checkpoint stores

    resumed = PretrainingLoader(make_dataset(tok, docs, masking=masking), batch_size=16)
    resumed.load_state_dict(json.loads(saved))
    got = [resumed.next_batch() for _ in range(2 * steps - (per_epoch - 3))]
    assert all(same_batch(g, e) for g, e in zip(got, expected[per_epoch - 3:]))
    # dynamic masking really gives new masks in the second epoch
    if masking == "dynamic":
        assert not same_batch(expected[0], expected[per_epoch])


def test_iter_resumes_mid_epoch(tok, docs):
    ds = make_dataset(tok, docs)
    full = list(PretrainingLoader(ds, batch_size=10))
    loader = PretrainingLoader(ds, batch_size=10)
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    state = loader.state_dict()
    assert (state["epoch"], state["index"]) == (0, 30)
    other = PretrainingLoader(ds, batch_size=10)
    other.load_state_dict(state)
    rest = list(other)  # the rest of epoch 0
    assert len(head) + len(rest) == len(full)
    assert all(same_batch(a, b) for a, b in zip(head + rest, full))


def test_load_state_dict_rejects_other_data_or_options(tok, docs):
    ds = make_dataset(tok, docs)
    state = PretrainingLoader(ds, batch_size=8).state_dict()
    assert json.loads(json.dumps(state)) == state
    with pytest.raises(ValueError, match="num_instances"):
        PretrainingLoader(make_dataset(tok, docs[:-1]), batch_size=8).load_state_dict(state)
    edited = [list(d) for d in docs]
    edited[0][0] = "the " + edited[0][0].split(" ", 1)[1]  # one word changed, same length
    with pytest.raises(ValueError, match="fingerprint"):
        PretrainingLoader(make_dataset(tok, edited), batch_size=8).load_state_dict(state)
    with pytest.raises(ValueError, match="fingerprint"):
        PretrainingLoader(make_dataset(tok, docs, whole_word_mask=True), batch_size=8).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        PretrainingLoader(ds, batch_size=9).load_state_dict(state)
    with pytest.raises(ValueError, match="'index'"):
        PretrainingLoader(ds, batch_size=8).load_state_dict(dict(state, index=10**6))
    with pytest.raises(ValueError, match="'epoch'"):
        PretrainingLoader(ds, batch_size=8).load_state_dict({k: v for k, v in state.items() if k != "epoch"})
