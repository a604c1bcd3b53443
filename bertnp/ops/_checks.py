"""Argument checks shared by the operations: clear errors that name the offending argument.

They look only at shapes and dtypes (host-side metadata), so they never synchronise a GPU.
"""
from __future__ import annotations


def require_float(name: str, array) -> None:
    """Raise TypeError unless ``array`` is an array of a floating dtype."""
    dtype = getattr(array, "dtype", None)
    if dtype is None:
        raise TypeError(f"{name} must be an array, got {type(array).__name__}")
    if dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {dtype}")


def require_int(name: str, array) -> None:
    """Raise TypeError unless ``array`` is an array of an integer dtype."""
    dtype = getattr(array, "dtype", None)
    if dtype is None:
        raise TypeError(f"{name} must be an array, got {type(array).__name__}")
    if dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {dtype}")


def require_shape(name: str, array, shape: tuple) -> None:
    """Raise ValueError unless ``array.shape == shape`` (None in ``shape`` matches any size)."""
    actual = tuple(array.shape)
    ok = len(actual) == len(shape) and all(s is None or s == a for s, a in zip(shape, actual))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} has shape {actual}, expected {want}")


def require_same_dtype(names_arrays) -> None:
    """Raise TypeError if the floating arrays do not share one dtype (no silent up/down-casting)."""
    named = [(n, a) for n, a in names_arrays if a is not None]
    dtypes = {a.dtype for _, a in named}
    if len(dtypes) > 1:
        listing = ", ".join(f"{n}: {a.dtype}" for n, a in named)
        raise TypeError(f"arguments must share one floating dtype, got {listing}")


def require_probability(name: str, p) -> None:
    """Raise ValueError unless 0 <= p < 1 (a dropout probability)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(p).__name__}")
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
