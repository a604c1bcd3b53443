"""Numerical gradients, the referee of every backward pass (tests, lessons and grading use it).

The field's convention (CS231n, llm.c):

* centered differences ``(f(x + h) - f(x - h)) / 2h`` in float64 with h = 1e-5 -- error O(h^2);
* a tensor output is turned into a scalar with a *random* upstream gradient, ``L = sum(out * dout)``
  (an all-ones dout hides mistakes: LayerNorm's and softmax's gradients sum to zero along a row, so
  their errors cancel against ones);
* relative error ``max |a - n| / max(1e-8, |a| + |n|)`` elementwise: about 1e-8 or less is a
  correct smooth layer, above 1e-2 is a bug.

Noise floor: finite differences carry ~1e-11 absolute noise at h = 1e-5, so an entry whose true
gradient is ~0 shows a large *relative* error for no fault of the backward. ``rel_error`` accepts a
``floor``: an entry with ``|a| + |n| < floor`` is measured against the floor instead of against
itself, ``|a - n| / floor``. A result <= t then holds such entries to an *absolute* bound,
``|a - n| <= t * floor``: nothing is forgiven, and a wrong sign still fails
(``rel_error([9e-6], [-9e-6], floor=1e-5) == 1.0``). Choose the floor so that ``t * floor`` sits
just above the noise (order-2 stencil, t = 1e-7: floor 1e-3 allows 1e-10).

Example (what a student runs)::

    from bertnp.gradcheck import check_layer
    from bertnp.ops.layernorm import layernorm_forward, layernorm_backward
    errors = check_layer(layernorm_forward, layernorm_backward,
                         dict(x=x, gamma=g, beta=b), wrt=("x", "gamma", "beta"), eps=1e-5)
    # {'x': 2.1e-10, 'gamma': 8.3e-12, 'beta': 4.0e-12}  -- you should see errors around 1e-8 or less
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from bertnp import backend


def rel_error(analytic, numeric, floor: float = 0.0) -> float:
    """Largest elementwise relative error ``|a - n| / max(1e-8, |a| + |n|, floor)``.

    ``floor`` (the finite-difference noise floor, see the module docstring): entries with
    ``|a| + |n|`` below it are measured against the floor, so a result <= t bounds them
    absolutely, ``|a - n| <= t * floor``."""
    a = np.asarray(backend.to_host(analytic), dtype=np.float64)
    n = np.asarray(backend.to_host(numeric), dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"analytic gradient has shape {a.shape} but numeric has {n.shape}")
    if a.size == 0:
        return 0.0
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < np.inf:
        raise ValueError(f"floor must be a number >= 0, got {floor!r}")
    err = np.abs(a - n) / np.maximum(max(1e-8, float(floor)), np.abs(a) + np.abs(n))
    return float(err.max())


# centered-difference stencils: offsets (in units of h) and weights, divided by `denominator * h`
_STENCILS = {
    2: ((1, -1), (1.0, -1.0), 2.0),                        # (f(x+h) - f(x-h)) / 2h,         error O(h^2)
    4: ((2, 1, -1, -2), (-1.0, 8.0, -8.0, 1.0), 12.0),     # (-f(x+2h) + 8f(x+h) - 8f(x-h) + f(x-2h)) / 12h, O(h^4)
}


def numerical_gradient(f: Callable[[], float], x, h: float = 1e-5, order: int = 2):
    """Gradient of the scalar ``f()`` with respect to array ``x`` by centered differences.

    ``x`` is perturbed in place one entry at a time (and restored), so ``f`` must read ``x``.
    Works on either backend; the result has ``x``'s shape and lives on the host.

    ``order=2`` is the field's usual stencil (use h = 1e-5). ``order=4`` cancels the h^2 error term
    too, so a larger step (h = 1e-3) can be used: the rounding noise, ~1e-16 |f| / h, then drops a
    hundredfold. A whole model has many gradient entries of ~1e-5 whose order-2 noise alone
    (~1e-10 absolute) would read as a 1e-5 relative error; order 4 resolves them."""
    if order not in _STENCILS:
        raise ValueError(f"order must be 2 or 4, got {order!r}")
    # TASK 1.1 numerical_gradient: centered differences, entry by entry (lesson 01)
    offsets, weights, denominator = _STENCILS[order]
    x_host = backend.to_host(x)
    if x_host.dtype != np.float64:
        raise TypeError(f"x must be float64 for a gradient check, got {x_host.dtype}")
    grad = np.zeros(x_host.shape, dtype=np.float64)
    # index x by its multi-index, never through x.reshape(-1): for a transposed or otherwise
    # non-contiguous x that reshape is a *copy*, and perturbing it would leave x (and f) unchanged.
    for index in np.ndindex(*x_host.shape):
        saved = float(x[index])
        total = 0.0
        for offset, weight in zip(offsets, weights):
            x[index] = saved + offset * h
            total += weight * float(f())
        x[index] = saved
        grad[index] = total / (denominator * h)
    return grad
    # END TASK 1.1


def _on_backend(value):
    """A host NumPy array -> the active backend's array; anything else unchanged."""
    return backend.to_device(value) if type(value) is np.ndarray else value


def _scalar(out, dout) -> float:
    """L = sum(out * dout): the scalar whose gradient with respect to out is dout."""
    xp = backend.xp()
    return float((xp.asarray(out) * dout).sum())


def check_layer(forward: Callable, backward: Callable, inputs: Mapping[str, object],
                wrt: Sequence[str], grad_names: Sequence[str] | None = None, *, h: float = 1e-5,
                seed: int = 0, floor: float = 0.0, order: int = 2, **params) -> dict:
    """Compare ``backward`` with finite differences of ``forward`` for each input named in ``wrt``.

    * ``forward(**inputs, **params) -> (out, cache)``; ``params`` are non-differentiable
      settings (eps, num_heads, a dropout seed ...).
    * ``backward(dout, cache)`` returns the gradients as a dict keyed by input name, or as a
      tuple whose entries are named by ``grad_names`` (default: ``wrt`` in order).
    * The upstream gradient ``dout`` is standard normal (seeded), shaped like ``out``.

    Returns ``{name: relative error}``. The inputs must be float64. Host (NumPy) arrays among the
    inputs and params are first copied to the active backend, so the same call checks a layer on
    the GPU (on NumPy nothing is copied: ``x`` itself is perturbed, and restored).
    """
    inputs = {name: _on_backend(value) for name, value in inputs.items()}
    params = {name: _on_backend(value) for name, value in params.items()}
    for name in wrt:
        if name not in inputs:
            raise ValueError(f"wrt names {name!r}, which is not among the inputs {sorted(inputs)}")
        dtype = getattr(inputs[name], "dtype", None)
        if dtype is None or dtype != np.float64:
            raise TypeError(f"input {name!r} must be a float64 array for a gradient check, got {dtype}")

    out, cache = forward(**inputs, **params)
    dout = backend.to_device(np.random.default_rng(seed).standard_normal(tuple(out.shape)))
    grads = backward(dout, cache)
    if not isinstance(grads, Mapping):
        if not isinstance(grads, tuple):
            grads = (grads,)
        names = list(grad_names) if grad_names is not None else list(wrt)
        if len(names) > len(grads):
            raise ValueError(f"backward returned {len(grads)} gradients but {len(names)} names were given")
        grads = dict(zip(names, grads))

    def loss() -> float:
        new_out, _ = forward(**inputs, **params)
        return _scalar(new_out, dout)

    errors = {}
    for name in wrt:
        if name not in grads or grads[name] is None:
            raise ValueError(f"backward returned no gradient for {name!r}")
        numeric = numerical_gradient(loss, inputs[name], h=h, order=order)
        errors[name] = rel_error(grads[name], numeric, floor=floor)
    return errors


def check_model(model, inputs: Mapping[str, object], names: Sequence[str] | None = None, *,
                h: float = 1e-3, order: int = 4, floor: float = 0.0, max_entries: int | None = None,
                seed: int = 0) -> dict:
    """Finite-difference check of a whole model's ``backward()`` against ``model(**inputs).loss``.

    The model must be float64 and deterministic (``model.eval()``). For each parameter tensor in
    ``names`` (default: all of ``model.parameters()``) compares every entry, or ``max_entries``
    randomly chosen ones. Uses the 4th-order stencil by default (see ``numerical_gradient``): a
    model has many small gradient entries that the 2nd-order stencil's noise would blur.
    Returns ``{name: relative error}``.
    """
    if order not in _STENCILS:
        raise ValueError(f"order must be 2 or 4, got {order!r}")
    offsets, weights, denominator = _STENCILS[order]
    params = model.parameters()
    names = list(names) if names is not None else list(params)
    model.zero_grad()
    model(**inputs)
    grads = {k: backend.to_host(v) for k, v in model.backward().items()}
    rng = np.random.default_rng(seed)
    errors = {}
    for name in names:
        if name not in params:
            raise ValueError(f"unknown parameter {name!r}")
        p = params[name]                      # the live parameter: perturbed in place, restored
        idx = np.arange(p.size)
        if max_entries is not None and p.size > max_entries:
            idx = np.sort(rng.choice(p.size, size=max_entries, replace=False))
        # TASK 1.1 check_model: the same differences on a model's parameters (lesson 01)
        numeric = np.empty(idx.size)
        for j, i in enumerate(idx):
            index = np.unravel_index(i, p.shape)  # a multi-index: right for any memory layout
            saved = float(p[index])
            total = 0.0
            for offset, weight in zip(offsets, weights):
                p[index] = saved + offset * h
                total += weight * float(model(**inputs).loss)
            p[index] = saved
            numeric[j] = total / (denominator * h)
        # END TASK 1.1
        errors[name] = rel_error(grads[name].reshape(-1)[idx], numeric, floor=floor)
    return errors
