"""Softmax over the last axis, with an optional additive mask (BERT's attention padding mask).

    p = exp(s + m - max) / sum(exp(s + m - max))

Subtracting the row maximum changes nothing mathematically (softmax is shift-invariant) but keeps
``exp`` from overflowing, so logits of +-1e4 are fine. BERT masks padding keys by adding a large
negative number (the dtype's minimum) to their scores, which gives them probability exactly 0.
A row whose every key is masked gets a uniform distribution (as in Hugging Face), never NaN.
"""
from __future__ import annotations

from typing import NamedTuple

from bertnp import backend, parallel
from bertnp.ops._checks import require_float


class SoftmaxCache(NamedTuple):
    probs: object   # (..., K) the output: the backward is written in terms of it


def softmax_forward(scores, additive_mask=None):
    """scores: (..., K), additive_mask: broadcastable to scores or None -> probs: (..., K)."""
    xp = backend.xp()
    require_float("scores", scores)
    if additive_mask is not None:
        require_float("additive_mask", additive_mask)
        try:
            xp.broadcast_shapes(tuple(additive_mask.shape), tuple(scores.shape))
        except ValueError:
            raise ValueError(
                f"additive_mask of shape {tuple(additive_mask.shape)} does not broadcast to "
                f"scores of shape {tuple(scores.shape)}") from None
        lead = (1,) * (scores.ndim - additive_mask.ndim)
        additive_mask = additive_mask.reshape(lead + tuple(additive_mask.shape))   # (K,) -> (1, ..., K): the same broadcast
    # rows are independent: bertnp.parallel runs the math below on blocks of the leading axis (a mask
    # with a length-1 leading axis goes whole to every block), on every core
    if scores.ndim < 2:                                      # one row: nothing to split
        probs = _softmax_forward_rows(scores, additive_mask)
    else:
        probs = parallel.map_rows(_softmax_forward_rows, (scores, additive_mask))
    return probs, SoftmaxCache(probs)


def _softmax_forward_rows(scores, additive_mask):
    """The forward on any block of rows: probs."""
    xp = backend.xp()
    masked = scores if additive_mask is None else scores + additive_mask   # (..., K); scores stay intact
    row_max = masked.max(axis=-1, keepdims=True)              # (..., 1)
    # a row of -inf (possible only with an infinite mask) has no finite max: shift by 0 instead.
    row_max = xp.where(xp.isfinite(row_max), row_max, 0)
    # s + m - max, written into the masked sum's buffer when there is one (one new array either way)
    probs = xp.subtract(masked, row_max, out=None if masked is scores else masked)   # (..., K)
    xp.exp(probs, out=probs)                                  # all in [0, 1]
    # (einsum's row sum: ~3x faster than NumPy's sum along a short last axis, measured on 128 keys)
    total = xp.einsum("...k->...", probs)[..., None]          # (..., 1), >= 1 unless all -inf
    probs /= xp.where(total > 0, total, 1)                    # all -inf rows stay 0, never NaN
    return probs


def softmax_backward(dprobs, cache: SoftmaxCache):
    """dprobs: (..., K) -> dscores: (..., K). (The mask is a constant: it has no gradient.)"""
    if dprobs.ndim < 2:
        return _softmax_backward_rows(dprobs, cache.probs)
    return parallel.map_rows(_softmax_backward_rows, (dprobs, cache.probs))   # blocks of rows, every core


def _softmax_backward_rows(dprobs, probs):
    """The backward on any block of rows: dscores."""
    # TASK 1.5 softmax_backward: dscores from dprobs (lesson 02)
    xp = backend.xp()
    # Jacobian dp_i/ds_j = p_i (delta_ij - p_j), so ds = p * (dp - sum_j dp_j p_j) row by row.
    dot = xp.einsum("...k,...k->...", dprobs, probs)[..., None]   # (..., 1) sum_j dp_j p_j, in one pass
    dscores = xp.empty_like(dprobs)                           # (..., K)
    xp.subtract(dprobs, dot, out=dscores)                     # (..., K) dp - dot
    dscores *= probs                                          # p * (dp - dot)
    return dscores
    # END TASK 1.5
