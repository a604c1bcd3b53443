"""Layer normalization over the last axis (Ba, Kiros & Hinton 2016), as BERT uses it.

    mean = x.mean(-1);  var = ((x - mean)**2).mean(-1)     # population variance (divide by C)
    xhat = (x - mean) / sqrt(var + eps)                    # eps inside the square root
    out  = gamma * xhat + beta
"""
from __future__ import annotations

from typing import NamedTuple

from bertnp import backend
from bertnp.ops._checks import require_float, require_same_dtype, require_shape


class LayerNormCache(NamedTuple):
    xhat: object   # (..., C) the normalised input
    rstd: object   # (..., 1) 1 / sqrt(var + eps), the per-row statistic the backward needs
    gamma: object  # (C,)


def layernorm_forward(x, gamma, beta, eps: float = 1e-12):
    """x: (..., C), gamma: (C,), beta: (C,) -> out: (..., C). Returns (out, cache)."""
    xp = backend.xp()
    require_float("x", x)
    require_float("gamma", gamma)
    require_float("beta", beta)
    channels = x.shape[-1]
    require_shape("gamma", gamma, (channels,))
    require_shape("beta", beta, (channels,))
    require_same_dtype([("x", x), ("gamma", gamma), ("beta", beta)])
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")

    mean = x.mean(axis=-1, keepdims=True)              # (..., C) -> (..., 1)
    xhat = x - mean                                    # (..., C) x - mean, normalised in place below
    out = xp.multiply(xhat, xhat)                      # (..., C) (x - mean)^2; the buffer becomes out
    var = out.mean(axis=-1, keepdims=True)             # (..., 1) population variance
    rstd = 1.0 / xp.sqrt(var + eps)                    # (..., 1)
    xhat *= rstd                                       # (..., C) xhat = (x - mean) * rstd
    xp.multiply(xhat, gamma, out=out)                  # (..., C)
    out += beta                                        # out = gamma * xhat + beta
    return out, LayerNormCache(xhat, rstd, gamma)


def layernorm_backward(dout, cache: LayerNormCache):
    """dout: (..., C) -> (dx (..., C), dgamma (C,), dbeta (C,))."""
    # TASK 1.3 layernorm_backward: dx, dgamma, dbeta (lesson 01)
    xp = backend.xp()
    xhat, rstd, gamma = cache
    channels = xhat.shape[-1]
    dout2d = dout.reshape(-1, channels)                # (..., C) -> (N, C)
    # out = gamma * xhat + beta: beta's gradient sums dout over rows, gamma's weights it by xhat.
    dbeta = dout2d.sum(axis=0)                         # (C,)
    scratch = dout * xhat                              # (..., C), reused below
    dgamma = scratch.reshape(-1, channels).sum(axis=0)  # (C,)
    # through the scale: dL/dxhat = dout * gamma (this buffer becomes dx).
    dx = dout * gamma                                  # (..., C) dxhat
    # xhat = (x - mean) * rstd, and mean and rstd depend on every x of the row. Differentiating
    # gives dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)): the mean term removes
    # the component along the all-ones direction, the xhat term the component along xhat.
    dxhat_mean = dx.mean(axis=-1, keepdims=True)                     # (..., 1)
    xp.multiply(dx, xhat, out=scratch)
    dxhat_xhat_mean = scratch.mean(axis=-1, keepdims=True)           # (..., 1)
    xp.multiply(xhat, dxhat_xhat_mean, out=scratch)                  # (..., C)
    dx -= dxhat_mean
    dx -= scratch
    dx *= rstd                                                       # (..., C)
    return dx, dgamma, dbeta
    # END TASK 1.3
