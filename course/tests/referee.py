"""The referee of the grading tests: the checks and the numerical gradient come from a trusted copy.

`bertnp course grade` points BERTNP_COURSE_REFEREE_TEACH at the instructor's bertnp/teach.py and
this module loads that file by path, so a submission's own bertnp.teach or bertnp.gradcheck never
judges it. In a handout (`bertnp course check`) it is the handout's teach.py, whose numerical
gradient is the student's task 1.1 -- as in minitorch, the first task is the referee of the rest.

Every check raises teach.CheckFailed with the values: which tensor, which entries, the relative
error against the threshold, and a hint when the pattern suggests one (a sign, a factor, a
missing term, a few rows only).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np


def _load_teach():
    path = os.environ.get("BERTNP_COURSE_REFEREE_TEACH", "")
    if path and Path(path).is_file():
        spec = importlib.util.spec_from_file_location("_bertnp_course_referee_teach", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    from bertnp import teach as module          # run by hand with pytest: the installed teach
    return module


teach = _load_teach()
CheckFailed = teach.CheckFailed


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def numeric(f, x, h: float = 1e-5) -> np.ndarray:
    """Centered differences of the scalar f() with respect to x (perturbed in place, restored)."""
    return teach.finite_differences(f, x, h=h)


def as_dict(grads, names) -> dict:
    if isinstance(grads, dict):
        return grads
    if not isinstance(grads, tuple):
        grads = (grads,)
    return dict(zip(names, grads))


def gradient_check(what: str, forward, backward, inputs: dict, wrt, names=None, *, threshold: float = 1e-7,
                   floor: float = 0.0, seed: int = 0, h: float = 1e-5, **params) -> dict:
    """``backward``'s gradients of L = sum(out * dout) (dout random, never all ones) against
    centered differences of ``forward``; raises CheckFailed naming the op, the tensor and entries."""
    out, cache = forward(**inputs, **params)
    dout = rng(seed + 100).standard_normal(np.shape(out))
    grads = as_dict(backward(dout, cache), list(names or wrt))

    def loss() -> float:
        return float((np.asarray(forward(**inputs, **params)[0]) * dout).sum())

    numerical = {}
    for name in wrt:
        if grads.get(name) is None:
            raise CheckFailed(f"{what}: no gradient returned for {name}")
        numerical[name] = numeric(loss, inputs[name], h=h)
    try:
        return teach.check_gradients({f"{what}: d{n}": grads[n] for n in wrt},
                                     {f"{what}: d{n}": numerical[n] for n in wrt}, threshold, floor)
    except CheckFailed as exc:
        raise CheckFailed(str(exc)) from None


def close(what: str, actual, expected, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    teach.check_close(what, actual, expected, rtol=rtol, atol=atol)


def check(condition, what: str, actual=None, expected=None) -> None:
    teach.check(condition, what, actual, expected)
