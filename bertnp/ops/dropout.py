"""Inverted dropout: zero each element with probability p and scale the survivors by 1/(1-p),
so the expected value is unchanged and evaluation needs no rescaling.

The mask comes from a seeded generator, so a given seed gives the same mask every time -- that is
what makes gradient checks with dropout on, and bit-exact resumed training, possible.
"""
from __future__ import annotations

from typing import NamedTuple

from bertnp import backend
from bertnp.ops._checks import require_float, require_probability


class DropoutCache(NamedTuple):
    scale: object   # (...) 0 where dropped, 1/(1-p) where kept; None when dropout was a no-op


def dropout_forward(x, p: float, rng=None, training: bool = True):
    """x: (...) -> out: (...). ``rng``: a backend generator or an int seed. Returns (out, cache)."""
    require_float("x", x)
    require_probability("p", p)
    if not training or p == 0.0:
        return x, DropoutCache(None)
    if rng is None:
        raise ValueError("rng (a generator or an int seed) is required when training with p > 0")
    if isinstance(rng, int):
        rng = backend.rng(rng)
    xp = backend.xp()
    # TASK 1.6 dropout_forward: inverted dropout's mask and scale (lesson 07)
    scale = rng.random(x.shape, dtype=x.dtype)            # (...) uniform in [0, 1); the buffer becomes scale
    keep = scale >= p                                     # (...) True with probability 1 - p
    xp.multiply(keep, x.dtype.type(1.0 / (1.0 - p)), out=scale)   # (...) 0 or 1/(1-p), in x's dtype
    return x * scale, DropoutCache(scale)
    # END TASK 1.6


def dropout_backward(dout, cache: DropoutCache):
    """dout: (...) -> dx: (...)."""
    # TASK 1.6 dropout_backward: (lesson 07)
    if cache.scale is None:
        return dout
    # out = x * scale elementwise, so the gradient passes through the same scale.
    return dout * cache.scale
    # END TASK 1.6
