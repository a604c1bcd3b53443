"""Assignment 6 (public, GPU courses): LayerNorm forward as a CUDA kernel, checked against NumPy.
Graded only where CuPy finds a GPU; elsewhere the test is skipped and the task is not graded."""
import numpy as np
import pytest

from referee import CheckFailed, close

import bertnp as bn


def _cupy_or_skip():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
        bn.set_backend("cupy")
        return cupy
    except Exception as exc:            # no CuPy, no driver, no device
        pytest.skip(f"no GPU here ({type(exc).__name__}: {exc}): task 6.1 is graded on a GPU machine only")


@pytest.mark.gpu
@pytest.mark.parametrize("version", [1, 2])
def test_layernorm_forward_kernel(version):
    """Task 6.1: out, xhat and rstd of kernels/layernorm.cu's layernorm_forward_v1 and _v2."""
    cupy = _cupy_or_skip()
    from bertnp import kernels
    r = np.random.default_rng(0)
    x = (r.standard_normal((37, 50)) * 3 + 1).astype(np.float32)
    gamma = r.standard_normal(50).astype(np.float32)
    beta = r.standard_normal(50).astype(np.float32)
    out, cache = kernels.layernorm_forward(cupy.asarray(x), cupy.asarray(gamma), cupy.asarray(beta), 1e-5,
                                           version=version)
    mean, var = x.mean(-1, keepdims=True, dtype=np.float64), x.var(-1, keepdims=True, dtype=np.float64)
    xhat = (x - mean) / np.sqrt(var + 1e-5)
    got = cupy.asnumpy(out)
    if not np.allclose(got, xhat * gamma + beta, rtol=1e-4, atol=1e-4):
        raise CheckFailed(f"task 6.1 layernorm_forward_v{version}: the kernel's output differs from NumPy's by up "
                          f"to {np.nanmax(np.abs(got - (xhat * gamma + beta))):.3g} (a kernel that is still the stub "
                          "writes nothing: see kernels/README.md)")
    close(f"layernorm_forward_v{version}: out", got, xhat * gamma + beta, rtol=1e-5, atol=1e-5)
    close(f"layernorm_forward_v{version}: xhat", cupy.asnumpy(cache.xhat), xhat, rtol=1e-5, atol=1e-5)
    close(f"layernorm_forward_v{version}: rstd", cupy.asnumpy(cache.rstd), 1 / np.sqrt(var + 1e-5), rtol=1e-5)
