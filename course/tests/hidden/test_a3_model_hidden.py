"""Assignment 3 (hidden): other seeds and batches, one layer and three."""
import numpy as np
import pytest

from referee import model_gradient_check, tiny_batch, tiny_model

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
    model_gradient_check("pooler + NSP backward", tiny_model(seed, 1), _batch(seed % 2), {
        "bert.pooler.dense.weight": ALL, "cls.seq_relationship.bias": ALL,
        "bert.embeddings.token_type_embeddings.weight": ALL})


@pytest.mark.parametrize("seed", [19, 20])
def test_pretraining_loss_hidden(seed):
    model_gradient_check("pretraining loss backward", tiny_model(seed, 1), _batch(seed % 2), {
        "bert.embeddings.word_embeddings.weight": slice(0, 13), "bert.encoder.layer.0.output.dense.bias": ALL})
