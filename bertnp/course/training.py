"""The plain training loop of course assignment 5, written on the public API.

``bertnp.train.TrainingLoop`` is the library's full loop (accumulation, device-side logging,
checkpoints, resume); these two functions are its core, small enough to write by hand and to grade:

    step = train_step(model, optimizer, batch, max_grad_norm=1.0)    # one update: a dict of floats
    losses = pretrain(model, optimizer, schedule, batches, steps)      # a short run: its losses

``batches`` is any iterator of pretraining batches (``bertnp.data.PretrainingLoader``); ``schedule``
a :class:`bertnp.optim.LinearWarmupDecay` built on ``optimizer``.
"""
from __future__ import annotations

from typing import Iterator

from bertnp.optim import clip_grad_norm

__all__ = ["train_step", "pretrain"]


def train_step(model, optimizer, batch: dict, max_grad_norm: float = 1.0) -> dict:
    """One optimizer update on one batch (a dict of ``BertForPreTraining``'s keyword arguments:
    input_ids, attention_mask, token_type_ids, labels, next_sentence_label).

    Returns ``{"loss", "mlm_loss", "nsp_loss", "grad_norm"}`` as floats: the forward pass's losses
    and the global gradient norm before clipping."""
    # TASK 5.4 train_step: gradients of this batch only, clipped by their global norm, one update (lesson 04)
    model.zero_grad()                                    # gradients accumulate until zeroed
    out = model(**batch)
    model.backward()
    grad_norm = clip_grad_norm(model.grads, max_grad_norm)
    optimizer.step()
    # END TASK 5.4
    return {"loss": float(out.loss), "mlm_loss": float(out.mlm_loss), "nsp_loss": float(out.nsp_loss),
            "grad_norm": float(grad_norm)}


def pretrain(model, optimizer, schedule, batches: Iterator[dict], steps: int,
             max_grad_norm: float = 1.0) -> list[float]:
    """``steps`` updates with :func:`train_step`, the learning rate following ``schedule``.

    Returns the training loss of every step. The model is left in training mode."""
    losses: list[float] = []
    # TASK 5.5 pretrain: the loop: a batch, a step, the schedule (lesson 04)
    model.train()
    for _ in range(steps):
        batch = next(batches)
        losses.append(train_step(model, optimizer, batch, max_grad_norm)["loss"])
        schedule.step()                                  # the next update's learning rate
    # END TASK 5.5
    return losses
