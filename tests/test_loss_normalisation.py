"""Gradient accumulation is exact: an update's losses and gradients are those of its whole batch.

The pretraining loss is the mean MLM cross-entropy over the update's labelled tokens plus the mean
NSP cross-entropy over its sequences. With K micro-batches (and, later, several processes) each
forward divides its *summed* losses by the update's counts (``mlm_denominator``,
``nsp_denominator``), so the micro-batches' losses and gradients simply add up. Averaging the
micro-batches' own means instead -- what bertnp did with ``grad_accum`` and Hugging Face's Trainer
did until transformers PR #34191 -- weighs a labelled token of a sparsely masked micro-batch more
than one of a densely masked micro-batch, and is not the big batch's gradient."""
from __future__ import annotations

import numpy as np
import pytest

from bertnp.config import BertConfig
from bertnp.model import BertForPreTraining
from bertnp.optim import scale_grads
from bertnp.train import Trainer
from conftest import host
from tiny_world import make_world, quiet, tiny_config

STEPS = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("accumulation"), n_docs=24)


def five_steps(trainer_class, world, out, batch_size, grad_accum):
    """Losses of 5 AdamW updates of 8 sequences each, float64, dropout off; the final weights."""
    trainer = trainer_class(tiny_config(world, out, dtype="float64", dropout=0.0, batch_size=batch_size,
                                        grad_accum=grad_accum, steps=STEPS, warmup=0, lr=5e-3, eval_batches=0,
                                        log_every=1), log=quiet)
    assert len(trainer.dataset) >= STEPS * 8                  # no epoch boundary inside an update
    for _ in range(STEPS):
        trainer.train_step()
    trainer.read_pending()
    steps = trainer.take_read_steps()
    return steps, {k: np.array(v) for k, v in trainer.model.parameters().items()}


def relative(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(np.asarray(b))), 1e-300))


def compare(world, tmp_path, trainer_class):
    big, big_weights = five_steps(Trainer, world, tmp_path / "big", batch_size=8, grad_accum=1)
    acc, acc_weights = five_steps(trainer_class, world, tmp_path / "acc", batch_size=4, grad_accum=2)
    losses = max(relative([s[k] for s in acc], [s[k] for s in big]) for k in ("loss", "mlm_loss", "nsp_loss"))
    # the attention key bias has an exactly zero gradient (softmax ignores a shift of a row's scores):
    # it stays at ~1e-18, rounding noise, where a relative comparison means nothing; it is held to
    # an absolute 1e-15 instead
    noise = [k for k in big_weights if k.endswith("attention.self.key.bias")]
    assert all(np.abs(acc_weights[k] - big_weights[k]).max() <= 1e-15 for k in noise)
    weights = max(relative(acc_weights[k], big_weights[k]) for k in big_weights if k not in noise)
    return big, acc, losses, weights


def test_accumulated_update_equals_the_big_batch(world, tmp_path):
    """grad_accum 2 with half the micro-batch == one batch of 8, to 1e-12 relative, for 5 AdamW
    steps: losses, accuracies and every weight. The micro-batches hold unequal numbers of labelled
    tokens (else any weighting would agree)."""
    trainer = Trainer(tiny_config(world, tmp_path / "probe", batch_size=4, grad_accum=2, steps=STEPS), log=quiet)
    counts = [int((trainer.loader.next_batch()["labels"] != -100).sum()) for _ in range(2 * STEPS)]
    assert any(counts[2 * i] != counts[2 * i + 1] for i in range(STEPS)), counts

    big, acc, losses, weights = compare(world, tmp_path, Trainer)
    assert losses <= 1e-12 and weights <= 1e-12, (losses, weights)
    for a, b in zip(acc, big):
        assert (a["mlm_total"], a["nsp_total"], a["mlm_correct"], a["nsp_correct"]) == \
            (b["mlm_total"], b["nsp_total"], b["mlm_correct"], b["nsp_correct"])
    assert big[-1]["loss"] < big[0]["loss"]                      # the runs do train


class MeanOfMeans(Trainer):
    """The old rule: each micro-batch's own mean loss, gradients scaled by 1/K."""

    def _forward_backward(self, batch, totals, model=None):
        model = self.model if model is None else model
        out = model(**batch)
        model.backward()
        k = self.config.grad_accum
        return {"loss": out.loss / k, "mlm_loss": out.mlm_loss / k, "nsp_loss": out.nsp_loss / k,
                "mlm_correct": 0, "nsp_correct": 0}

    def _reduce_gradients(self, grads):
        scale_grads(grads, 1.0 / self.config.grad_accum)


def test_mean_of_micro_batch_means_is_not_the_big_batch(world, tmp_path):
    """The regression test: the per-micro-batch mean (HF Trainer's bug) misses by far more than 1e-12."""
    _, _, losses, weights = compare(world, tmp_path, MeanOfMeans)
    assert losses > 1e-6 and weights > 1e-6, (losses, weights)


def test_denominators_split_a_batch_into_shares_that_add_up():
    """The model's side: forward(..., mlm_denominator=N, nsp_denominator=B) on two halves of a batch
    gives losses and gradients that sum to the whole batch's, with the HF default unchanged."""
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=12, max_position_embeddings=12, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(cfg, seed=1, dtype="float64")
    r = np.random.default_rng(0)
    ids = r.integers(5, 30, (4, 10))
    labels = np.full((4, 10), -100)
    labels[0, [1, 2, 3, 4, 5]] = 7                                # 5 labelled tokens in row 0 ...
    labels[2, 4] = 9                                              # ... 1 in row 2, none in rows 1 and 3
    labels[3, 8] = 11
    batch = dict(input_ids=ids, labels=labels, next_sentence_label=np.array([0, 1, 1, 0]))
    model.zero_grad()
    whole = model(**batch)
    grads = {k: v.copy() for k, v in model.backward().items()}
    model.zero_grad()
    parts = []
    for rows in (slice(0, 1), slice(1, 4)):                       # 5 and 2 labelled tokens
        half = {k: v[rows] for k, v in batch.items()}
        parts.append(model(**half, mlm_denominator=7, nsp_denominator=4))
        model.backward()
    for key in ("loss", "mlm_loss", "nsp_loss"):
        assert float(sum(getattr(p, key) for p in parts)) == pytest.approx(float(getattr(whole, key)), rel=1e-13)
    for name, g in model.grads.items():
        np.testing.assert_allclose(host(g), host(grads[name]), rtol=1e-12, atol=1e-15, err_msg=name)
    # the halves' own means average to something else
    mean_of_means = np.mean([float(model(**{k: v[r_] for k, v in batch.items()}).mlm_loss)
                             for r_ in (slice(0, 1), slice(1, 4))])
    assert abs(mean_of_means - float(whole.mlm_loss)) > 1e-3
    with pytest.raises(ValueError, match="mlm_denominator"):
        model(**batch, mlm_denominator=3)                        # fewer than the batch's own 7
    with pytest.raises(ValueError, match="nsp_denominator"):
        model(**batch, nsp_denominator=0)
