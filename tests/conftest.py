"""Shared test helpers: tiny distinct shapes, seeded data, the test backend and the GPU skip marker.

``BERTNP_TEST_BACKEND`` picks where every test runs:

* ``numpy`` (the default): plain NumPy, whatever ``BERTNP_BACKEND`` says, so a user's setting
  cannot change the results;
* ``strict``: the CPU stand-in for CuPy of ``tests/strict_xp.py`` -- NumPy underneath, but its
  arrays refuse implicit conversion to host arrays exactly where CuPy's do (``np.testing`` on a
  device array, a host array mixed into device arithmetic, ``np.`` functions on device arrays).
  The whole suite passing here is the CPU's proof that it would run on CuPy;
* ``cupy``: the GPU (the whole suite on CuPy; a clear error if CuPy or the GPU is missing).

Tests stay backend-clean with two helpers: ``dev(a)`` moves host data (NumPy arrays, lists) to the
test backend before it enters an operation or a model, and ``host(a)`` brings a result back before
NumPy looks at it (``np.testing``, ``np.isfinite`` ...). On NumPy both are no-ops.
"""
import contextlib
import os

import numpy as np
import pytest

import bertnp as bn
from bertnp import backend

TEST_BACKENDS = ("numpy", "strict", "cupy")
TEST_BACKEND = os.environ.get("BERTNP_TEST_BACKEND", "numpy").strip().lower() or "numpy"
if TEST_BACKEND not in TEST_BACKENDS:
    raise ValueError(f"BERTNP_TEST_BACKEND={TEST_BACKEND!r}: choose one of {', '.join(TEST_BACKENDS)}")


@contextlib.contextmanager
def _on_test_backend(monkeypatch):
    """Make the test backend the active one for the duration; restore exactly what was active after
    (a test may switch backends, e.g. to CuPy and back to NumPy, inside)."""
    saved = (backend._name, backend._xp)
    try:
        if TEST_BACKEND == "strict":
            from strict_xp import STRICT, guard_host_conversions
            guard_host_conversions(monkeypatch)       # np.asarray(device array) fails, as on CuPy
            with backend.using(STRICT, "strict"):
                yield
        else:
            bn.set_backend(TEST_BACKEND)              # cupy: a clear error if CuPy or the GPU is missing
            yield
    finally:
        backend._name, backend._xp = saved


@pytest.fixture(scope="session", autouse=True)
def _session_backend():
    """The test backend for the whole session, so module- and session-scoped fixtures build their
    models and arrays on it too."""
    patcher = pytest.MonkeyPatch()
    try:
        with _on_test_backend(patcher):
            yield
    finally:
        patcher.undo()


@pytest.fixture(autouse=True)
def _test_backend(monkeypatch):
    """Every test starts on the test backend (whatever the test before it switched to)."""
    with _on_test_backend(monkeypatch):
        yield


def dev(array, dtype=None):
    """Host data -> an array of the active backend (what a model or an operation takes)."""
    return None if array is None else backend.to_device(array, dtype=dtype)


def host(array):
    """Any backend's array (or a 0-d result) -> a NumPy array, for NumPy's checks."""
    return None if array is None else backend.to_host(array)


def on_device_backend() -> bool:
    """True when the test backend keeps arrays off the host (strict or cupy)."""
    return backend.get_backend() in ("strict", "cupy")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def cupy_or_skip():
    """Switch to the CuPy backend, or skip with the reason CuPy cannot be used here."""
    if not backend.is_available("cupy"):
        try:
            backend._import_cupy()
        except RuntimeError as exc:
            pytest.skip(f"no GPU backend: {exc}")
    bn.set_backend("cupy")


def on_numpy():
    """A context with the NumPy backend active: host references computed inside a device test."""
    return backend.using(np, "numpy")
