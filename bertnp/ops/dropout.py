"""Inverted dropout: zero each element with probability p and scale the survivors by 1/(1-p),
so the expected value is unchanged and evaluation needs no rescaling.

    keep[e] = bits16(key, e) >= T,   T = round(p * 2^16)        (so P(drop) = T / 2^16, p to 2^-17)
    out[e]  = x[e] * keep[e] / (1 - p)

The random bits come from a counter-based generator, Philox4x64-10 (Salmon et al. 2011): the 16
bits of element e are a pure function of the key (seed, step, site) and of e, computed without any
generator state (``bertnp.backend.philox_bits16`` spells out the layout). So

* the same key gives the same mask every time -- gradient checks with dropout on, and bit-exact
  resumed training (a model's key is (dropout_seed, forward_count, site): saving forward_count is
  enough to resume);
* NumPy (NumPy's own Philox, on the host) and CuPy (kernels/dropout.cu, one thread per 16 elements)
  draw the SAME mask for the same key, so the two backends train alike with dropout on;
* nothing is built per call: no generator to seed, on the GPU one kernel launch per dropout site;
* a share of a batch's rows (:mod:`bertnp.cores`, one share per CPU core) draws exactly the whole
  batch's mask for its rows: the key's ``row`` is the share's first row, and element e of the share
  is element row * (elements a row) + e of the whole mask.

The cache keeps the mask as 1 byte per element (bool on NumPy, uint8 on CuPy), not a float scale.
"""
from __future__ import annotations

import operator
from typing import NamedTuple

from bertnp import backend, parallel
from bertnp.ops._checks import require_float, require_probability

KEY_LIMIT = 2 ** 64          # seed, step and site are Philox key / counter words (uint64)
BITS = 16                    # random bits per element: the drop probability is resolved to 2^-16


class DropoutKey(NamedTuple):
    """Where a mask comes from: the model's dropout seed, its forward counter, the dropout site,
    and the row of the whole batch that x's first row (axis 0) is (0 unless x is a share of it)."""
    seed: int
    step: int = 0
    site: int = 0
    row: int = 0


class DropoutCache(NamedTuple):
    mask: object           # (...) 1 byte per element, nonzero where kept; None when dropout was a no-op
    scale: float = 1.0     # 1 / (1 - p), what the kept elements were multiplied by


def dropout_key(rng) -> DropoutKey:
    """``rng`` -- an int seed, or a (seed, step, site) or (seed, step, site, row) tuple of ints -- as
    a checked DropoutKey."""
    parts = tuple(rng) if isinstance(rng, tuple) else (rng,)
    if len(parts) not in (1, 3, 4) or any(isinstance(v, bool) for v in parts):
        raise TypeError(f"rng must be an int seed or a (seed, step, site[, row]) tuple of ints, got {rng!r}")
    try:
        values = [operator.index(v) for v in parts]
    except TypeError:
        raise TypeError(f"rng must be an int seed or a (seed, step, site[, row]) tuple of ints, got "
                        f"{type(rng).__name__}") from None
    if any(not 0 <= v < KEY_LIMIT for v in values):
        raise ValueError(f"rng: seed, step, site and row must be in [0, 2**64), got {tuple(values)}")
    return DropoutKey(*values)


def drop_threshold(p: float) -> int:
    """T such that an element is dropped when its 16 random bits are below T: P(drop) = T / 2^16."""
    return int(round(p * (1 << BITS)))


def _device_kernels():
    """bertnp.kernels when dropout runs as CUDA kernels (the CuPy backend), else None."""
    if backend.get_backend() != "cupy":
        return None
    from bertnp import kernels                # imported here: kernels imports the ops
    return kernels


def dropout_forward(x, p: float, rng=None, training: bool = True):
    """x: (...) -> out: (...). ``rng``: an int seed or a (seed, step, site[, row]) key. Returns (out, cache)."""
    require_float("x", x)
    require_probability("p", p)
    if not training or p == 0.0:
        return x, DropoutCache(None)
    if rng is None:
        raise ValueError("rng (an int seed or a (seed, step, site) key) is required when training with p > 0")
    key = dropout_key(rng)
    # TASK 1.6 dropout_forward: inverted dropout's mask and scale (lesson 07)
    threshold, scale = drop_threshold(p), 1.0 / (1.0 - p)
    kernels = _device_kernels()
    if kernels is not None and key.row == 0:  # one kernel: the bits, the mask and out, in one pass
        out, mask = kernels.dropout_philox_forward(x, key, threshold, scale)
        return out, DropoutCache(mask, scale)
    xp = backend.xp()

    def keep_and_scale(x, bits, out, mask):               # any block of elements, with its random bits
        xp.greater_equal(bits, threshold, out=mask)       # (...) bool: kept where the bits reach T
        xp.multiply(x, x.dtype.type(scale), out=out)      # (...) scaled survivors ...
        out *= mask                                       # ... and zeros where dropped

    out, mask = _on_blocks(keep_and_scale, x, key)
    return out, DropoutCache(mask, scale)
    # END TASK 1.6


def _on_blocks(keep_and_scale, x, key: DropoutKey):
    """``keep_and_scale(x, bits, out, mask)`` on blocks of x's elements, on every core, each block
    drawing its own bits (``philox_bits16(..., start=)``: the same bits as the whole mask's; x's
    first element is element ``key.row`` * (elements a row) of the whole batch's mask) and
    using them while they are in the cache (measured on the attention's (16, 4, 128, 128)
    probabilities: 2.7 ms drawn whole and then compared and multiplied, 1.6 ms in blocks on two
    threads). Returns (out, mask) shaped like x; one block on another array module (the bits are
    drawn on the host and copied over)."""
    xp = backend.xp()
    out, mask = xp.empty_like(x), xp.empty(x.shape, dtype=bool)
    first = key.row * (x.size // x.shape[0]) if x.ndim and x.shape[0] else 0   # x's first element in the whole mask
    seed, step, site = key.seed, key.step, key.site
    if backend.get_backend() != "numpy" or not x.flags.c_contiguous:
        keep_and_scale(x, backend.to_device(backend.philox_bits16(tuple(x.shape), seed, step, site, start=first)),
                       out, mask)
        return out, mask
    flat_x, flat_out, flat_mask = x.reshape(-1), out.reshape(-1), mask.reshape(-1)   # (...) -> (n,), views

    def one_block(part: slice) -> None:
        bits = backend.philox_bits16((part.stop - part.start,), seed, step, site, start=first + part.start)
        keep_and_scale(flat_x[part], bits, flat_out[part], flat_mask[part])

    block = parallel.BLOCK_ELEMENTS // 16 * 16            # whole Philox blocks of 16 elements
    parallel.run_blocks(flat_x.size, block, one_block)
    return out, mask


def dropout_backward(dout, cache: DropoutCache):
    """dout: (...) -> dx: (...)."""
    # TASK 1.6 dropout_backward: (lesson 07)
    if cache.mask is None:
        return dout
    # out = x * mask * scale elementwise, so the gradient passes through the same mask and scale.
    kernels = _device_kernels()
    if kernels is not None:
        return kernels.dropout_mask_backward(dout, cache.mask, cache.scale)
    dx = dout * dout.dtype.type(cache.scale)              # (...)
    dx *= cache.mask
    return dx
    # END TASK 1.6
