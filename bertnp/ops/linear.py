"""Linear (fully connected) layer: ``out = x @ W.T + b``.

The weight is stored in Hugging Face / PyTorch layout ``(out_features, in_features)``, so the
forward multiplies by ``W.T`` -- a *view*, never a copied transpose (BLAS reads it as is).
``matmul(a, b, bias)`` is ``a @ b + bias``; on the CPU :mod:`bertnp.parallel` computes slices of it on
every core.

:func:`linear_rows_forward` is the same layer applied to some rows of x only (0 at the others), for
rows whose outputs no loss reads: a pretraining step's last encoder layer away from the labelled
positions and [CLS] (``BertForPreTraining.skip_unscored_rows``). :func:`linear_backward` takes
either cache.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from bertnp import backend
from bertnp.ops._checks import require_float, require_same_dtype, require_shape
from bertnp.parallel import matmul   # a @ b (+ bias), with the output's rows split over the CPU cores


class LinearCache(NamedTuple):
    x: object        # (..., in)   the input, needed for dW
    weight: object   # (out, in)   needed for dx
    has_bias: bool


def linear_forward(x, weight, bias=None):
    """x: (..., in), weight: (out, in), bias: (out,) or None -> out: (..., out). Returns (out, cache)."""
    require_float("x", x)
    require_float("weight", weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x has shape {tuple(x.shape)}: its last axis must equal weight's in_features {weight.shape[1]}")
    if bias is not None:
        require_float("bias", bias)
        require_shape("bias", bias, (weight.shape[0],))
    require_same_dtype([("x", x), ("weight", weight), ("bias", bias)])

    lead = x.shape[:-1]
    # ONE matrix product over all rows: (B, T, in) @ (in, out) would be a *batched* matmul that calls
    # BLAS once per leading index (16 small GEMMs instead of one large one: several times slower).
    x2d = x.reshape(-1, x.shape[-1])         # (..., in) -> (N, in), a view when x is contiguous
    out = matmul(x2d, weight.T, bias)        # (N, in) @ (in, out) + (out,) -> (N, out); weight.T is a view,
                                             # the bias is broadcast over the rows (added in place)
    return out.reshape(lead + (weight.shape[0],)), LinearCache(x, weight, bias is not None)  # (N, out) -> (..., out)


class RowsLinearCache(NamedTuple):
    inner: LinearCache   # the layer's cache on the selected rows (N, in)
    rows: object         # (N,) the selected rows: indices into x's rows, x.reshape(-1, in)
    x_shape: tuple       # (..., in) x's shape: dx comes back in it


def linear_rows_forward(x, weight, bias, rows):
    """The Linear at some rows of x only: ``out`` (..., out) is linear_forward's output at ``rows``
    (sorted, distinct indices into x's rows, x.reshape(-1, in)) and 0 at every other row, which
    depends on nothing. Returns (out, cache); linear_backward takes the cache.

    For rows whose outputs no loss reads (their gradient is 0): the work and the gradients are
    those of the selected rows alone, the same numbers as the whole layer's at those rows."""
    require_float("x", x)
    rows_host = backend.to_host(rows)                              # (N,) a NumPy array, checked on the host
    if x.ndim < 1:
        raise ValueError(f"x must have at least one axis, got shape {tuple(x.shape)}")
    require_float("weight", weight)
    # weight against x here: past the gather, linear_forward would name the gathered shape (N, in), not x's
    if weight.ndim != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"x has shape {tuple(x.shape)} and weight {tuple(weight.shape)}: weight must be 2-D "
                         f"(out_features, in_features) with in_features = x's last axis {x.shape[-1]}")
    count = math.prod(x.shape[:-1])                                # x's rows
    if rows_host.ndim != 1 or rows_host.dtype.kind not in "iu":
        raise ValueError(f"rows must be a 1-D array of integer row indices, got {rows_host.dtype} "
                         f"of shape {rows_host.shape}")
    if rows_host.size and (rows_host[0] < 0 or rows_host[-1] >= count
                           or (rows_host[1:] <= rows_host[:-1]).any()):
        raise ValueError(f"rows must be sorted, distinct indices in [0, {count}) (x's rows), "
                         f"got {rows_host[:8].tolist()}{' ...' if rows_host.size > 8 else ''}")
    x2d = x.reshape(-1, x.shape[-1])                                # (..., in) -> (R, in)
    rows_d = backend.to_device(rows_host)
    selected, inner = linear_forward(x2d[rows_d], weight, bias)    # (N, in) -> (N, out)
    out = backend.xp().zeros((x2d.shape[0], selected.shape[-1]), dtype=selected.dtype)   # (R, out)
    out[rows_d] = selected                                         # the other rows stay 0
    return out.reshape(x.shape[:-1] + (selected.shape[-1],)), RowsLinearCache(inner, rows_d, tuple(x.shape))


def _linear_rows_backward(dout, cache: RowsLinearCache):
    """The backward of linear_rows_forward: the selected rows' backward; dx is 0 at the other rows
    (their outputs did not depend on x)."""
    inner, rows, x_shape = cache
    dselected = dout.reshape(-1, dout.shape[-1])[rows]             # (..., out) -> (R, out) -> (N, out)
    dx_selected, dweight, dbias = linear_backward(dselected, inner)  # (N, in), (out, in), (out,)
    dx = backend.xp().zeros((math.prod(x_shape[:-1]), x_shape[-1]), dtype=dx_selected.dtype)   # (R, in)
    dx[rows] = dx_selected                                         # rows are distinct: = is exact
    return dx.reshape(x_shape), dweight, dbias                     # (R, in) -> (..., in)


def linear_backward(dout, cache: LinearCache):
    """dout: (..., out) -> (dx (..., in), dweight (out, in), dbias (out,) or None).
    (``cache`` may also be a RowsLinearCache, from linear_rows_forward.)"""
    if isinstance(cache, RowsLinearCache):
        return _linear_rows_backward(dout, cache)
    # TASK 1.2 linear_backward: dx, dweight, dbias (lesson 01)
    x, weight, has_bias = cache
    x2d = x.reshape(-1, x.shape[-1])                 # (..., in) -> (N, in)
    dout2d = dout.reshape(-1, dout.shape[-1])        # (..., out) -> (N, out)
    # out = x W^T, so dL/dx = dout W: each input feature collects from every output it fed.
    dx = matmul(dout2d, weight).reshape(x.shape)     # (N, out) @ (out, in) -> (N, in) -> (..., in)
    # dL/dW[o, i] = sum over rows n of dout[n, o] * x[n, i]: one matrix product over all rows.
    dweight = matmul(dout2d.T, x2d)                  # (out, N) @ (N, in) -> (out, in)
    # the bias is added to every row, so its gradient is dout summed over the rows.
    dbias = dout2d.sum(axis=0) if has_bias else None  # (N, out) -> (out,)
    return dx, dweight, dbias
    # END TASK 1.2
