"""Linear (fully connected) layer: ``out = x @ W.T + b``.

The weight is stored in Hugging Face / PyTorch layout ``(out_features, in_features)``, so the
forward multiplies by ``W.T`` -- a *view*, never a copied transpose (BLAS reads it as is).
``matmul(a, b, bias)`` is ``a @ b + bias``; on the CPU :mod:`bertnp.parallel` computes slices of it on
every core.
"""
from __future__ import annotations

from typing import NamedTuple

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


def linear_backward(dout, cache: LinearCache):
    """dout: (..., out) -> (dx (..., in), dweight (out, in), dbias (out,) or None)."""
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
