"""Elementwise activations: GELU (exact erf form and tanh approximation), tanh, ReLU.

BERT's ``hidden_act="gelu"`` is the exact form ``0.5 x (1 + erf(x / sqrt 2))``;
``"gelu_new"`` / ``"gelu_pytorch_tanh"`` is the tanh approximation used by GPT-2
(they differ by at most ~5e-4).

Speed: SciPy's exact ``erf`` runs in one thread at ~13 ns a value, a quarter of a BERT-mini
training step. So float64 (gradient checks, reference parity) uses it, and float32 on the CPU uses
``erf(x / sqrt 2) = tanh(x R(x^2))`` with R a degree-9 polynomial fitted so that Phi is exact to
float32 rounding (max error 8.5e-8, against 6.1e-8 for SciPy's erf rounded to float32), at ~1/8 of
the cost. ``benchmarks/fit_gelu_cdf.py`` makes the coefficients and measures that error.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from bertnp import backend, parallel
from bertnp.ops._checks import require_float

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_COEF = 0.044715

# float32 Phi: erf(x / sqrt 2) = tanh(x R(x^2)), R(s) = sum _CDF_R[j] s^j for x^2 <= _CDF_X_MAX^2.
# R(s) = atanh(erf(sqrt(s / 2))) / sqrt(s) exactly; its first two terms, sqrt(2/pi) (1 + 0.0455 s),
# are almost GELU's tanh approximation. Fitted by benchmarks/fit_gelu_cdf.py (minimax error of Phi).
_CDF_X_MAX = 5.5          # beyond, Phi is 0 or 1 to float32 precision: clamp x^2 there, tanh saturates
_CDF_R = (
    0.7978846145931738,   # = sqrt(2 / pi), the slope of erf(x / sqrt 2) at 0
    0.03633519492282475,
    -3.615794249866892e-05,
    -5.284951787911682e-05,
    3.135241953481463e-06,
    1.7214512741467114e-08,
    -1.3093768386916877e-08,
    8.024614001309887e-10,
    -2.1786345283904048e-11,
    2.301198986450142e-13,
)


# ----------------------------------------------------------------------------- GELU

class GeluCache(NamedTuple):
    x: object            # (...) the input
    approximate: str     # "none" (erf) or "tanh"
    cdf: object = None   # (...) Phi(x) (or its tanh form) from the forward, reused by the backward;
                         # None (the CUDA kernels recompute it) -> the backward recomputes it


def normal_cdf(x):
    """Phi(x) = 0.5 (1 + erf(x / sqrt 2)), the standard normal CDF, elementwise: a new array.

    float64: SciPy's exact erf. float32: the fitted tanh form (module docstring), exact to float32
    rounding and ~8x cheaper. On CuPy the exact erf is one fused GPU kernel, cheaper than the
    form's ~25 launches, so CuPy always uses it. Large arrays go block by block over every core
    (:func:`bertnp.parallel.elementwise`): a block stays in the cache between the ~25 passes."""
    return parallel.elementwise(_normal_cdf, (x,))


def _normal_cdf(x):
    xp = backend.xp()
    if x.dtype.itemsize >= 8 or backend.get_backend() == "cupy":
        cdf = backend.erf(x * _SQRT_HALF)                 # (...) erf(x / sqrt 2), exact
        cdf += 1.0
        cdf *= 0.5                                        # Phi = (1 + erf) / 2
        return cdf
    cdf = xp.empty_like(x)
    _normal_cdf_float32(x, cdf, xp.empty_like(x))
    return cdf


def _normal_cdf_float32(x, cdf, s) -> None:
    """cdf = Phi(x) = (1 + tanh(x R(x^2))) / 2 written into ``cdf``; ``s`` is scratch space."""
    xp = backend.xp()
    # clamp: past |x| = 5.5, Phi is 0 or 1 anyway. One clip to [-5.5, 5.5], not abs then minimum:
    # NumPy's minimum against a scalar runs ~4x slower than clip (measured on 262k float32: 98 us
    # against 32), and the square is the same either way.
    xp.clip(x, -_CDF_X_MAX, _CDF_X_MAX, out=s)
    s *= s                                                # s = min(|x|, 5.5)^2
    xp.multiply(s, _CDF_R[-1], out=cdf)                   # Horner's rule for R(s), highest power first
    cdf += _CDF_R[-2]
    for c in _CDF_R[-3::-1]:
        cdf *= s
        cdf += c
    cdf *= x                                              # x R(x^2)
    xp.tanh(cdf, out=cdf)                                 # = erf(x / sqrt 2) to float32 rounding
    cdf += 1.0
    cdf *= 0.5                                            # Phi = (1 + erf) / 2


def gelu_forward(x, approximate: str = "none"):
    """x: (...) -> out: (...), GELU(x) = x * Phi(x). Returns (out, cache).

    Phi is kept in the cache: the backward needs it too, and computing it is most of the cost."""
    require_float("x", x)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    # elementwise, so bertnp.parallel runs the math below on blocks of x, on every core
    out, cdf = parallel.elementwise(_gelu, (x,), approximate)
    return out, GeluCache(x, approximate, cdf)


def _gelu(x, approximate: str):
    """GELU's forward on any block of x: (out, Phi(x))."""
    # TASK 1.4 gelu_forward: GELU(x) = x Phi(x), the erf form (lesson 07)
    cdf = _normal_cdf(x) if approximate == "none" else _tanh_cdf(x)   # (...) Phi(x) or its tanh form
    out = x * cdf                                                      # (...) x * Phi(x)
    return out, cdf
    # END TASK 1.4


def _tanh_cdf(x):
    """GPT-2's approximation of Phi: 0.5 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3); a new array."""
    xp = backend.xp()
    cdf = x * x                                                   # x*x*x: x**3 is slow in NumPy
    cdf *= _GELU_TANH_COEF
    cdf += 1.0
    cdf *= x
    cdf *= _SQRT_2_OVER_PI                                        # u = sqrt(2/pi) (x + c x^3)
    xp.tanh(cdf, out=cdf)
    cdf += 1.0
    cdf *= 0.5                                                    # 0.5 (1 + tanh(u))
    return cdf


def gelu_backward(dout, cache: GeluCache):
    """dout: (...) -> dx: (...)."""
    x, approximate, cdf = cache
    if cdf is None:        # the CUDA kernels' cache: recompute Phi
        cdf = normal_cdf(x) if approximate == "none" else _tanh_cdf(x)
    return parallel.elementwise(_gelu_backward, (dout, x, cdf), approximate)   # on blocks, every core


def _gelu_backward(dout, x, cdf, approximate: str):
    """GELU's backward on any block: dx from dout, x and the forward's Phi(x)."""
    xp = backend.xp()
    if approximate == "none":
        # TASK 1.4 gelu_backward: the erf form's derivative (lesson 07)
        # d/dx [x Phi(x)] = Phi(x) + x phi(x), with phi = Phi' the standard normal density.
        dx = x * x
        dx *= -0.5
        xp.exp(dx, out=dx)
        dx *= _INV_SQRT_2PI                                        # phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
        dx *= x
        dx += cdf                                                 # Phi(x) + x phi(x)
        dx *= dout
        return dx
        # END TASK 1.4
    # tanh form: out = x * cdf, cdf = 0.5 (1 + t), t = tanh(u), u = sqrt(2/pi) (x + c x^3);
    # d/dx = cdf + 0.5 x (1 - t^2) du/dx, with du/dx = sqrt(2/pi) (1 + 3 c x^2) and t = 2 cdf - 1.
    t = 2.0 * cdf - 1.0
    du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_COEF * (x * x))
    return dout * (cdf + 0.5 * x * (1.0 - t * t) * du_dx)


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
