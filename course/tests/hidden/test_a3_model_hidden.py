"""Assignment 3 (hidden): other seeds and batches, one layer and three."""
import numpy as np
import pytest

from referee import CheckFailed, model_gradient_check, tiny_batch, tiny_model

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_public_a3", Path(__file__).parents[1] / "public" / "test_a3_model.py")
public = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(public)

ALL = slice(None)


def _batch(seed):
    batch = tiny_batch()
    if seed:
        batch["input_ids"] = np.array([[1, 3, 3, 2, 6, 2], [1, 12, 8, 2, 5, 0]])
        batch["attention_mask"] = (batch["input_ids"] != 0).astype(np.int64)
        batch["labels"] = np.full((2, 6), -100)
        batch["labels"][0, 2] = 3
        batch["labels"][1, [1, 4]] = [12, 7]
        batch["next_sentence_label"] = np.array([0, 0])
    return batch


@pytest.mark.parametrize("seed,layers", [(11, 1), (12, 3)])
def test_embeddings_backward_hidden(seed, layers):
    model_gradient_check("embeddings backward", tiny_model(seed, layers), _batch(seed % 2), {
        "bert.embeddings.word_embeddings.weight": slice(0, 13),
        "bert.embeddings.position_embeddings.weight": ALL,
        "bert.embeddings.token_type_embeddings.weight": ALL})


@pytest.mark.parametrize("seed,layers", [(13, 1), (14, 3)])
def test_encoder_layer_backward_hidden(seed, layers):
    parts = {f"bert.encoder.layer.{layers - 1}.attention.self.key.weight": slice(0, 2),
             "bert.encoder.layer.0.intermediate.dense.bias": ALL,
             "bert.encoder.layer.0.attention.output.dense.bias": ALL,
             "bert.embeddings.position_embeddings.weight": slice(0, 3)}
    model_gradient_check("encoder layers backward", tiny_model(seed, layers), _batch(seed % 2), parts)


@pytest.mark.parametrize("seed", [15, 16])
def test_mlm_head_backward_hidden(seed):
    model_gradient_check("MLM head backward", tiny_model(seed, 1), _batch(seed % 2), {
        "bert.embeddings.word_embeddings.weight": ALL,
        "cls.predictions.transform.LayerNorm.bias": ALL})


@pytest.mark.parametrize("seed", [17, 18])
def test_pooler_nsp_backward_hidden(seed):
    public.check_pooler_reaches_cls_only(tiny_model(seed, 1), _batch(seed % 2))
    _check_tanh_derivative(tiny_model(seed, 1), _batch(seed % 2))
    model_gradient_check("pooler + NSP backward", tiny_model(seed, 1), _batch(seed % 2), {
        "bert.pooler.dense.weight": ALL, "cls.seq_relationship.bias": ALL,
        "bert.embeddings.token_type_embeddings.weight": ALL})


@pytest.mark.parametrize("seed", [19, 20])
def test_pretraining_loss_hidden(seed):
    public.check_mlm_reaches_labelled_only(tiny_model(seed, 1), _batch(seed % 2))
    model_gradient_check("pretraining loss backward", tiny_model(seed, 1), _batch(seed % 2), {
        "bert.embeddings.word_embeddings.weight": slice(0, 13), "bert.encoder.layer.0.output.dense.bias": ALL})


def _check_tanh_derivative(model, batch) -> None:
    """The pooler bias's gradient with an NSP-only loss, by the referee's own formula; a gradient
    equal to it WITHOUT tanh's derivative names that mistake (the check that follows finds the rest)."""
    batch = {k: v for k, v in batch.items() if k != "labels"}
    model.zero_grad()
    out = model(**batch)
    got = np.asarray(model.backward()["bert.pooler.dense.bias"]).copy()
    z, pooled = np.asarray(out.seq_relationship_logits), np.asarray(out.pooler_output)   # (B, 2), (B, C)
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    probs[np.arange(len(z)), batch["next_sentence_label"]] -= 1.0
    dpooled = probs / len(z) @ np.asarray(model.parameters()["cls.seq_relationship.weight"])   # (B, C)
    without_tanh = dpooled.sum(axis=0)
    if np.allclose(got, without_tanh, rtol=1e-9, atol=1e-14) and \
            not np.allclose(got, (dpooled * (1 - pooled * pooled)).sum(axis=0), rtol=1e-9, atol=1e-14):
        raise CheckFailed("pooler backward: bert.pooler.dense.bias's gradient is the NSP head's dpooled summed, "
                          "WITHOUT tanh's derivative: pooled = tanh(dense(h[:, 0])), so multiply by "
                          "1 - pooled^2 (the forward's output, in the cache) before the dense layer's backward")
