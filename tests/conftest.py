"""Shared test helpers: tiny distinct shapes, seeded data, and the GPU skip marker."""
import numpy as np
import pytest

import bertnp as bn
from bertnp import backend


@pytest.fixture(autouse=True)
def _numpy_backend():
    """Every test starts (and ends) on the NumPy backend unless it switches itself."""
    saved = backend.get_backend()
    if saved != "numpy":
        bn.set_backend("numpy")
    yield
    if backend.get_backend() != saved:
        bn.set_backend(saved)


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
