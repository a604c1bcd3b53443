"""Elementwise activations: GELU (exact erf form and tanh approximation), tanh, ReLU.

BERT's ``hidden_act="gelu"`` is the exact form ``0.5 x (1 + erf(x / sqrt 2))``;
``"gelu_new"`` / ``"gelu_pytorch_tanh"`` is the tanh approximation used by GPT-2
(they differ by at most ~5e-4).
"""
from __future__ import annotations

import math
from typing import NamedTuple

from bertnp import backend
from bertnp.ops._checks import require_float

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_COEF = 0.044715


# ----------------------------------------------------------------------------- GELU

class GeluCache(NamedTuple):
    x: object            # (...) the input
    approximate: str     # "none" (erf) or "tanh"


def gelu_forward(x, approximate: str = "none"):
    """x: (...) -> out: (...), GELU(x) = x * Phi(x). Returns (out, cache)."""
    xp = backend.xp()
    require_float("x", x)
    if approximate == "none":
        cdf = 0.5 * (1.0 + backend.erf(x * _SQRT_HALF))          # Phi(x), the normal CDF
    elif approximate == "tanh":
        inner = _SQRT_2_OVER_PI * (x + _GELU_TANH_COEF * (x * x * x))   # x*x*x: x**3 is slow in NumPy
        cdf = 0.5 * (1.0 + xp.tanh(inner))
    else:
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return x * cdf, GeluCache(x, approximate)


def gelu_backward(dout, cache: GeluCache):
    """dout: (...) -> dx: (...)."""
    xp = backend.xp()
    x, approximate = cache
    if approximate == "none":
        # d/dx [x Phi(x)] = Phi(x) + x phi(x), with phi the standard normal density.
        cdf = 0.5 * (1.0 + backend.erf(x * _SQRT_HALF))
        pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)
        return dout * (cdf + x * pdf)
    # tanh form: out = 0.5 x (1 + t), t = tanh(u), u = sqrt(2/pi) (x + c x^3);
    # d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx, with du/dx = sqrt(2/pi) (1 + 3 c x^2).
    x2 = x * x
    t = xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_TANH_COEF * x2 * x))
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_COEF * x2)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


# ----------------------------------------------------------------------------- tanh

class TanhCache(NamedTuple):
    out: object   # (...) tanh(x): the derivative is written in terms of the output


def tanh_forward(x):
    """x: (...) -> out: (...). Returns (out, cache)."""
    require_float("x", x)
    out = backend.xp().tanh(x)
    return out, TanhCache(out)


def tanh_backward(dout, cache: TanhCache):
    """dout: (...) -> dx: (...)."""
    # d tanh(x)/dx = 1 - tanh(x)^2, so reuse the forward output instead of recomputing tanh.
    return dout * (1.0 - cache.out * cache.out)


# ----------------------------------------------------------------------------- ReLU

class ReluCache(NamedTuple):
    positive: object   # (...) boolean: where x > 0


def relu_forward(x):
    """x: (...) -> out: (...), max(x, 0). Returns (out, cache)."""
    require_float("x", x)
    positive = x > 0
    return x * positive, ReluCache(positive)


def relu_backward(dout, cache: ReluCache):
    """dout: (...) -> dx: (...)."""
    # the slope is 1 where x > 0 and 0 elsewhere (the subgradient 0 is taken at x = 0).
    return dout * cache.positive


# ----------------------------------------------------------------------------- by name

def activation_forward(x, name: str):
    """Dispatch on an HF ``hidden_act`` name. Returns (out, cache)."""
    if name == "gelu":
        return gelu_forward(x, "none")
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return gelu_forward(x, "tanh")
    if name == "relu":
        return relu_forward(x)
    if name == "tanh":
        return tanh_forward(x)
    raise ValueError(f"unknown hidden_act {name!r}: use gelu, gelu_new, gelu_pytorch_tanh, relu or tanh")


def activation_backward(dout, cache):
    """Backward of :func:`activation_forward`, dispatched on the cache's type."""
    if isinstance(cache, GeluCache):
        return gelu_backward(dout, cache)
    if isinstance(cache, ReluCache):
        return relu_backward(dout, cache)
    if isinstance(cache, TanhCache):
        return tanh_backward(dout, cache)
    raise TypeError(f"not an activation cache: {type(cache).__name__}")
