"""Assignment 3 (public): BERT's backward, composed from the ops, checked by finite differences on
a tiny float64 model (the loss is MLM + NSP; eval mode, so no dropout)."""
import numpy as np

from referee import check, close, model_gradient_check, tiny_batch, tiny_model

ALL = slice(None)


def test_embeddings_backward():
    """Task 3.1: word + position + token type, LayerNorm -- the gradient reaches the three tables."""
    model = tiny_model(1)
    model_gradient_check("embeddings backward", model, tiny_batch(), {
        "bert.embeddings.word_embeddings.weight": slice(0, 6),
        "bert.embeddings.position_embeddings.weight": slice(0, 7),
        "bert.embeddings.token_type_embeddings.weight": ALL,
        "bert.embeddings.LayerNorm.weight": ALL,
        "bert.embeddings.LayerNorm.bias": ALL})


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


def test_pooler_nsp_backward():
    """Task 3.4: NSP logits = Linear(tanh(Linear(h[:, 0]))): the gradient enters at [CLS] only."""
    model = tiny_model(4)
    parts = {"cls.seq_relationship.weight": ALL, "cls.seq_relationship.bias": ALL,
             "bert.pooler.dense.weight": slice(0, 3), "bert.pooler.dense.bias": ALL,
             "bert.encoder.layer.1.output.LayerNorm.weight": ALL}
    model_gradient_check("pooler + NSP backward (NSP loss only)", model, tiny_batch(with_mlm=False), parts)
    model_gradient_check("pooler + NSP backward (MLM + NSP)", model, tiny_batch(), parts)


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
    close("MLM loss: mean cross-entropy over the 3 labelled positions", float(out.mlm_loss), mlm, rtol=1e-10)
    nsp_z = np.asarray(full.seq_relationship_logits)
    nsp = np.mean(np.log(np.exp(nsp_z).sum(-1)) - nsp_z[[0, 1], batch["next_sentence_label"]])
    close("NSP loss", float(out.nsp_loss), nsp, rtol=1e-10)
    close("loss = MLM loss + NSP loss", float(out.loss), mlm + nsp, rtol=1e-10)
    model_gradient_check("pretraining loss backward", model, batch, {
        "bert.encoder.layer.1.output.LayerNorm.weight": ALL,
        "cls.predictions.transform.dense.bias": ALL})
