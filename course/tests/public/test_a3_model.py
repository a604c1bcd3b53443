"""Assignment 3 (public): BERT's backward, composed from the ops, checked by finite differences on
a tiny float64 model (the loss is MLM + NSP; eval mode, so no dropout -- except one check in
training mode, whose dropout masks are the same in every forward)."""
import numpy as np

from referee import (CheckFailed, check, check_gradients_accumulate, close, model_gradient_check, positions_reached,
                     tiny_batch, tiny_model)

ALL = slice(None)


def test_embeddings_backward():
    """Task 3.1: word + position + token type, LayerNorm -- the gradient reaches the three tables."""
    model = tiny_model(1)
    check_position_rows_differ(model, tiny_batch())
    model_gradient_check("embeddings backward", model, tiny_batch(), {
        "bert.embeddings.word_embeddings.weight": slice(0, 6),
        "bert.embeddings.position_embeddings.weight": slice(0, 7),
        "bert.embeddings.token_type_embeddings.weight": ALL,
        "bert.embeddings.LayerNorm.weight": ALL,
        "bert.embeddings.LayerNorm.bias": ALL})
    check_embeddings_in_training(tiny_model(1, dropout=0.2).train(), tiny_batch(), {
        "bert.embeddings.LayerNorm.weight": ALL, "bert.embeddings.token_type_embeddings.weight": ALL})
    check_gradients_accumulate("embeddings backward", model, tiny_batch(), [
        "bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight",
        "bert.embeddings.LayerNorm.bias"])


def check_position_rows_differ(model, batch) -> None:
    """Position t's row gets the gradient of position t (summed over the batch), not one shared
    sum: rows that are all the same point at a sum over the positions too."""
    model.zero_grad()
    model(**batch)
    seq_len = batch["input_ids"].shape[1]
    rows = np.asarray(model.backward()["bert.embeddings.position_embeddings.weight"])[:seq_len]
    if np.any(rows) and np.allclose(rows, rows[0], rtol=1e-9, atol=0.0):
        raise CheckFailed(f"embeddings backward: all {seq_len} used rows of the position table get the same gradient "
                          f"{np.array2string(rows[0], precision=3)}: position t was added at position t only, so its "
                          "row gets that position's gradient, summed over the batch axis alone")


def check_embeddings_in_training(model, batch, parts) -> None:
    """The gradient check once more in training mode (dropout on, the same masks in every forward):
    run after the eval-mode one passed, so a failure here is the dropout's part of the backward."""
    try:
        model_gradient_check(f"embeddings backward in training mode (dropout {model.config.hidden_dropout_prob})",
                             model, batch, parts)
    except CheckFailed as exc:
        raise CheckFailed("embeddings backward: right in eval mode, wrong in training: the embeddings' sum goes through "
                          "LayerNorm and then dropout, so the backward starts with dropout_backward (the forward's "
                          f"mask, from the cache)\n{exc}") from None


def test_encoder_layer_backward():
    """Task 3.2: each layer is x -> LN(x + attn(x)) -> LN(h + ffn(h)); the residuals add gradients."""
    model = tiny_model(2)
    parts = {}
    for i in range(2):
        layer = f"bert.encoder.layer.{i}."
        parts.update({layer + "attention.self.query.weight": slice(0, 2),
                      layer + "attention.self.value.bias": ALL,
                      layer + "attention.output.dense.weight": slice(0, 2),
                      layer + "attention.output.LayerNorm.weight": ALL,
                      layer + "intermediate.dense.weight": slice(0, 2),
                      layer + "output.dense.bias": ALL,
                      layer + "output.LayerNorm.bias": ALL})
    parts["bert.embeddings.LayerNorm.weight"] = ALL     # what flows through every layer to the start
    model_gradient_check("encoder layers backward", model, tiny_batch(), parts)
    check_gradients_accumulate("encoder layers backward", model, tiny_batch(),
                               [name for name in model.parameters() if name.startswith("bert.encoder.")])


def test_mlm_head_backward():
    """Task 3.3: transform (dense, GELU, LayerNorm) and the decoder tied to the word embeddings:
    that matrix's gradient is the sum of the lookup's and the decoder's."""
    model = tiny_model(3)
    model_gradient_check("MLM head backward", model, tiny_batch(with_nsp=False), {
        "cls.predictions.bias": ALL,
        "cls.predictions.transform.dense.weight": slice(0, 3),
        "cls.predictions.transform.dense.bias": ALL,
        "cls.predictions.transform.LayerNorm.weight": ALL,
        "bert.embeddings.word_embeddings.weight": ALL,           # both uses of the tied matrix
        "bert.encoder.layer.1.output.LayerNorm.bias": ALL})
    check_gradients_accumulate("MLM head backward", model, tiny_batch(with_nsp=False),
                               [name for name in model.parameters() if name.startswith("cls.predictions.")]
                               + ["bert.embeddings.word_embeddings.weight"])


def test_pooler_nsp_backward():
    """Task 3.4: NSP logits = Linear(tanh(Linear(h[:, 0]))): the gradient enters at [CLS] only."""
    check_pooler_reaches_cls_only(tiny_model(4), tiny_batch(with_mlm=False))
    model = tiny_model(4)
    parts = {"cls.seq_relationship.weight": ALL, "cls.seq_relationship.bias": ALL,
             "bert.pooler.dense.weight": slice(0, 3), "bert.pooler.dense.bias": ALL,
             "bert.encoder.layer.1.output.LayerNorm.weight": ALL}
    model_gradient_check("pooler + NSP backward (NSP loss only)", model, tiny_batch(with_mlm=False), parts)
    model_gradient_check("pooler + NSP backward (MLM + NSP)", model, tiny_batch(), parts)
    check_gradients_accumulate("pooler + NSP backward", model, tiny_batch(), [
        "bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.seq_relationship.weight", "cls.seq_relationship.bias"])


def check_pooler_reaches_cls_only(model, batch) -> None:
    reached = positions_reached(model, {k: v for k, v in batch.items() if k != "labels"})     # NSP loss only
    check(reached == [0], "pooler backward, NSP loss only, with attention that mixes no positions (value weights "
          "0): the positions whose hidden state gets a gradient. The pooler reads h[:, 0] alone, so its gradient "
          "lands on [CLS] (position 0) and nowhere else", reached, [0])


def test_pretraining_loss():
    """Task 3.5: loss = mean MLM cross-entropy over the labelled positions + mean NSP cross-entropy."""
    model = tiny_model(5)
    batch = tiny_batch()
    out = model(**batch)
    full = model(**{k: v for k, v in batch.items() if k not in ("labels", "next_sentence_label")})
    logits = np.asarray(full.prediction_logits)                       # (B, T, V) at every position
    labels = batch["labels"]
    rows, cols = np.nonzero(labels != -100)
    z = logits[rows, cols]                                            # (N, V) row-major
    mlm = np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(rows)), labels[rows, cols]])
    check(np.asarray(out.prediction_logits).shape == (3, 13),
          "with labels, prediction_logits holds the 3 labelled positions", np.asarray(out.prediction_logits).shape, (3, 13))
    close("with labels, prediction_logits row i holds the logits of the i-th labelled position in row-major order "
          "(sequence 0 position 1, sequence 0 position 4, sequence 1 position 2)", out.prediction_logits, z, rtol=1e-10)
    close("MLM loss: mean cross-entropy over the 3 labelled positions", float(out.mlm_loss), mlm, rtol=1e-10)
    nsp_z = np.asarray(full.seq_relationship_logits)
    nsp = np.mean(np.log(np.exp(nsp_z).sum(-1)) - nsp_z[[0, 1], batch["next_sentence_label"]])
    close("NSP loss", float(out.nsp_loss), nsp, rtol=1e-10)
    close("loss = MLM loss + NSP loss", float(out.loss), mlm + nsp, rtol=1e-10)
    check_mlm_reaches_labelled_only(tiny_model(5), tiny_batch(with_nsp=False))
    model_gradient_check("pretraining loss backward", model, batch, {
        "bert.encoder.layer.1.output.LayerNorm.weight": ALL,
        "cls.predictions.transform.dense.bias": ALL})


def check_mlm_reaches_labelled_only(model, batch) -> None:
    labelled = sorted({int(t) for t in np.nonzero(batch["labels"] != -100)[1]})
    reached = positions_reached(model, {k: v for k, v in batch.items() if k != "next_sentence_label"})   # MLM only
    check(reached == labelled, "MLM loss only, with attention that mixes no positions (value weights 0): the "
          "positions whose hidden state gets a gradient must be the labelled ones -- scatter each gathered row's "
          "gradient back to the (sequence, position) it was gathered from", reached, labelled)
