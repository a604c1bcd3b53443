"""A strict stand-in for CuPy, so the CuPy code path is exercised on a CPU-only machine.

Arrays are ``StrictArray`` (a NumPy subclass) and the namespace ``STRICT`` wraps NumPy so that
everything created through it is a StrictArray. Like CuPy arrays, StrictArrays

* refuse NumPy *functions* called on them directly (``np.sum(a)``, ``np.where(a, ...)``): code must
  go through the backend's ``xp`` -- that is exactly the call that breaks on a real GPU when
  someone writes ``np.`` in an operation;
* refuse to be mixed with plain host arrays in arithmetic (``a + np.ones(3)``), as CuPy raises
  ``TypeError: Unsupported type <class 'numpy.ndarray'>``;
* refuse a host array assigned into them (``a[...] = np.ones(3)``), as CuPy raises
  ``ValueError: non-scalar numpy.ndarray cannot be used for fill``;
* offer ``.get()`` to copy to the host, and reductions return 0-d arrays, not Python scalars.

``np.asarray(a)`` / ``np.array(a)`` / ``np.asanyarray(a)`` of a NumPy subclass return a plain copy
or view without asking the subclass, where CuPy raises ``TypeError: Implicit conversion to a NumPy
array is not allowed``. :func:`guard_host_conversions` closes that hole for a test: it replaces
those three functions in the numpy module by ones that refuse a StrictArray (calls made by NumPy's
C code, and by the stand-in's own namespace, are not affected).

``BERTNP_TEST_BACKEND=strict`` runs the whole suite on this stand-in (tests/conftest.py).
"""
from __future__ import annotations

import threading

import numpy as np
import scipy.special

_state = threading.local()


def _allowed() -> bool:
    return getattr(_state, "depth", 0) > 0


class StrictArray(np.ndarray):
    """A host array that behaves like a device array with respect to NumPy's namespace."""

    def __array_function__(self, func, types, args, kwargs):
        if not _allowed():
            raise TypeError(f"numpy.{func.__name__}() called directly on a device array: "
                            "use the backend's xp instead")
        return super().__array_function__(func, types, args, kwargs)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        outs = kwargs.get("out", ())
        for operand in inputs + tuple(outs):
            if type(operand) is np.ndarray and operand.ndim > 0:
                raise TypeError(f"{ufunc.__name__}: cannot mix a device array with a host "
                                f"numpy.ndarray of shape {operand.shape}")
        base_inputs = tuple(x.view(np.ndarray) if isinstance(x, StrictArray) else x for x in inputs)
        if outs:
            kwargs["out"] = tuple(x.view(np.ndarray) if isinstance(x, StrictArray) else x for x in outs)
        result = getattr(ufunc, method)(*base_inputs, **kwargs)
        if outs:
            return outs[0] if len(outs) == 1 else outs
        return _wrap(result)

    def __setitem__(self, key, value):
        if type(value) is np.ndarray and value.ndim > 0:
            raise ValueError(f"non-scalar numpy.ndarray (shape {value.shape}) cannot be assigned into a "
                             "device array: move it with backend.to_device first (CuPy refuses it)")
        super().__setitem__(key, value)

    def get(self):
        """Copy to the host, as cupy.ndarray.get() does."""
        return np.array(self.view(np.ndarray))


def _wrap(result):
    if isinstance(result, tuple):
        return tuple(_wrap(r) for r in result)
    if isinstance(result, list):
        return [_wrap(r) for r in result]
    if isinstance(result, np.ndarray) and not isinstance(result, StrictArray):
        return result.view(StrictArray)
    if isinstance(result, np.generic):
        return np.asarray(result).view(StrictArray)
    return result


class _Call:
    """A NumPy callable run with the strict check lifted, its outputs made StrictArrays."""

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args, **kwargs):
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            return _wrap(self._fn(*args, **kwargs))
        finally:
            _state.depth -= 1

    def __getattr__(self, name):       # ufunc methods: xp.add.at, xp.maximum.reduce ...
        attr = getattr(self._fn, name)
        return _Call(attr) if callable(attr) else attr


class _Generator:
    def __init__(self, gen):
        self._gen = gen

    def __getattr__(self, name):
        return _Call(getattr(self._gen, name))


class _Random:
    def default_rng(self, seed=None):
        return _Generator(np.random.default_rng(seed))


class StrictNamespace:
    """The array module that bertnp.backend hands out while the strict backend is active."""
    ndarray = StrictArray
    random = _Random()
    erf = _Call(scipy.special.erf)      # what cupyx.scipy.special.erf provides on the GPU

    def __getattr__(self, name):
        attr = getattr(np, name)
        if isinstance(attr, type) and issubclass(attr, np.generic):
            return attr                  # dtypes: xp.float32 etc.
        if isinstance(attr, (type(np), float, int)) or attr is None:
            return attr
        return _Call(attr) if callable(attr) else attr


STRICT = StrictNamespace()


_CONVERSIONS = ("asarray", "array", "asanyarray")


def guard_host_conversions(monkeypatch) -> None:
    """For one test: np.asarray / np.array / np.asanyarray of a StrictArray raise TypeError, as
    CuPy's arrays do (move them with backend.to_host, or .get())."""
    for name in _CONVERSIONS:
        original = getattr(np, name)

        def guarded(obj, *args, _original=original, _name=name, **kwargs):
            if isinstance(obj, StrictArray) and not _allowed():
                raise TypeError(f"numpy.{_name}() of a device array: implicit conversion to a NumPy "
                                "array is not allowed (CuPy refuses it); use backend.to_host")
            return _original(obj, *args, **kwargs)
        monkeypatch.setattr(np, name, guarded)


# the ways a device value is read on the host: on a GPU each one waits for the GPU to finish
HOST_READS = ("__bool__", "__float__", "__int__", "__index__", "item", "get", "tolist")


class HostReadWatch:
    """Records every host read of a StrictArray (bool(), float(), int(), .item(), .get(), .tolist())
    made while ``armed`` is True. ``watch = HostReadWatch(monkeypatch)``; ``watch.armed = True``
    around the code that must not synchronise; then ``assert not watch.reads``."""

    def __init__(self, monkeypatch):
        self.reads: list[str] = []
        self.armed = False
        for name in HOST_READS:
            original = getattr(StrictArray, name)

            def guarded(array, *args, _name=name, _original=original, **kwargs):
                if self.armed:
                    self.reads.append(_name)
                return _original(array, *args, **kwargs)
            monkeypatch.setattr(StrictArray, name, guarded)
