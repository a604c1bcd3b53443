"""Shared test helpers: tiny distinct shapes, seeded data, and the GPU skip marker."""
import os

import numpy as np
import pytest

import bertnp as bn
from bertnp import backend


# BERTNP_TEST_BACKEND=cupy runs every test on CuPy (the whole suite on a GPU, issue 9); unset, every
# test starts on NumPy, whatever BERTNP_BACKEND says, so a user's setting cannot change the results.
TEST_BACKEND = os.environ.get("BERTNP_TEST_BACKEND", "numpy").strip().lower() or "numpy"


@pytest.fixture(autouse=True)
def _test_backend():
    """Every test starts (and ends) on the test backend (NumPy unless BERTNP_TEST_BACKEND says)."""
    saved = backend.get_backend()
    if saved != TEST_BACKEND:
        bn.set_backend(TEST_BACKEND)      # a clear error if CuPy or the GPU is missing
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
