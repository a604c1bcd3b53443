"""The one module that knows about CuPy.

Every operation in :mod:`bertnp.ops` asks this module for its array module ``xp``
(``numpy`` or ``cupy``) at call time, so the same line of code runs on the CPU or the GPU::

    import bertnp as bn
    bn.set_backend("cupy")          # or the environment variable BERTNP_BACKEND=cupy
    xp = bn.backend.xp()            # -> the cupy module
    a = bn.backend.to_device(host_array)   # numpy -> current backend
    h = bn.backend.to_host(a)              # current backend -> numpy

Besides the array module it provides the few functions that have no common name in NumPy and
CuPy (the exact ``erf``, a scatter-add, seeded random generators) so that nothing else in the
library has to ask which backend is active.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

_BACKENDS = ("numpy", "cupy")

_name = "numpy"          # the active backend's name
_xp = np                 # its array module
_cupy = None             # the cupy module once imported (None until first asked for)


def _import_cupy():
    """Import CuPy and check that a GPU answers; raise a clear error saying what is missing."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy  # noqa: WPS433 (the only import of cupy in the library)
    except ImportError as exc:  # not installed, or installed for another CUDA
        raise RuntimeError(
            "backend 'cupy' needs CuPy, which is not installed (or failed to import: "
            f"{exc}). Install the GPU extra: pip install 'bertnp[gpu]' (a cupy-cuda12x wheel)."
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing: cupy raises CUDARuntimeError
        raise RuntimeError(
            f"backend 'cupy' needs an NVIDIA GPU with a working CUDA driver; CuPy says: {exc}"
        ) from exc
    if count < 1:
        raise RuntimeError("backend 'cupy' needs an NVIDIA GPU, and none was found")
    _cupy = cupy
    return cupy


def is_available(name: str) -> bool:
    """True if backend ``name`` can be used on this machine (for cupy: installed and a GPU answers)."""
    if name == "numpy":
        return True
    if name == "cupy":
        try:
            _import_cupy()
        except RuntimeError:
            return False
        return True
    return False


def set_backend(name: str) -> None:
    """Choose where arrays live: ``"numpy"`` (CPU) or ``"cupy"`` (GPU).

    Models hold arrays of the backend that was active when they were built; switch before
    building one (or move it with ``load_state_dict``, which copies to the active backend).
    """
    global _name, _xp
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a string, got {type(name).__name__}")
    name = name.strip().lower()
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose one of {', '.join(_BACKENDS)}")
    _xp = _import_cupy() if name == "cupy" else np
    _name = name


def get_backend() -> str:
    """The active backend's name: ``"numpy"`` or ``"cupy"``."""
    return _name


def xp():
    """The active array module (``numpy`` or ``cupy``). Ops call this at run time, never at import."""
    return _xp


@contextlib.contextmanager
def using(array_module, name: str = "custom"):
    """Temporarily use another array module (tests use a strict stand-in for CuPy)."""
    global _name, _xp
    saved = (_name, _xp)
    _name, _xp = name, array_module
    try:
        yield array_module
    finally:
        _name, _xp = saved


# ----------------------------------------------------------------------------- host <-> device

def to_device(array, dtype=None):
    """Copy a host array (or list) to the active backend; a no-op for NumPy arrays on NumPy."""
    if _name == "cupy" and dtype is None and hasattr(array, "dtype"):
        return _xp.asarray(array)
    return _xp.asarray(array, dtype=dtype)


def to_host(array):
    """Return a NumPy array for any backend's array (scalars pass through as NumPy scalars)."""
    if isinstance(array, np.ndarray) and type(array) is np.ndarray:
        return array
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    if hasattr(array, "get") and not isinstance(array, (np.ndarray, np.generic, dict)):
        return array.get()  # other device arrays with CuPy's .get()
    return np.asarray(array)


def is_device_array(array) -> bool:
    """True if ``array`` is an array of the active backend."""
    return isinstance(array, _xp.ndarray)


def synchronize() -> None:
    """Wait for the GPU to finish queued work (a no-op on NumPy). Use only for timing and logging."""
    if _name == "cupy":
        _cupy.cuda.Stream.null.synchronize()


# ----------------------------------------------------------------------------- host memory

_retained = None   # the answer of the first retain_freed_host_memory() call


def retain_freed_host_memory() -> bool:
    """Ask the C library's allocator (glibc) to keep freed memory for reuse, process-wide.

    By default glibc serves every large block (above 128 KB, adaptively up to 32 MB) straight from
    the OS with mmap and gives it back on free. A training step frees and re-allocates the same
    activations every step, so each step page-faults them back in: measured ~35,000 faults and
    ~90 ms of a ~750 ms BERT-mini step on a 2-core machine. With the thresholds raised, the freed
    blocks stay in the heap and are reused without a fault; the peak memory is the same (the
    step's own peak), it is only not returned between steps. Returns True if applied; False where
    the C library is not glibc (nothing changes). The training loops and benchmarks call it.
    """
    global _retained
    if _retained is not None:
        return _retained
    _retained = False
    try:
        import ctypes
        import ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # from glibc's <malloc.h>
    one_gib = 1 << 30
    _retained = bool(mallopt(M_MMAP_THRESHOLD, one_gib)) and bool(mallopt(M_TRIM_THRESHOLD, one_gib))
    return _retained


# ----------------------------------------------------------------------------- functions without a common name

def erf(x):
    """The exact error function, elementwise (scipy / cupyx.scipy; a 1e-7 approximation breaks
    float64 parity with PyTorch's GELU)."""
    if _name == "cupy":
        import cupyx.scipy.special as cupy_special
        return cupy_special.erf(x)
    if _xp is not np and hasattr(_xp, "erf"):
        return _xp.erf(x)  # a stand-in namespace may provide its own
    from scipy.special import erf as scipy_erf
    return scipy_erf(x)


def scatter_add(target, indices, values) -> None:
    """In place: ``target[indices[i]] += values[i]`` for every i, correct when indices repeat.

    (``target[indices] += values`` is wrong for repeated indices: it adds only once.)
    """
    if _name == "cupy":
        import cupyx
        cupyx.scatter_add(target, indices, values)
    else:
        _xp.add.at(target, indices, values)


def seed_from(*keys: int) -> int:
    """Mix several integers (seed, step, site) into one 63-bit seed, deterministically."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFF for k in keys]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def rng(seed: int):
    """A seeded random generator of the active backend (``xp.random.default_rng``)."""
    return _xp.random.default_rng(int(seed))


def default_backend_from_env() -> None:
    """Apply ``BERTNP_BACKEND`` if it is set (called once when bertnp is imported)."""
    name = os.environ.get("BERTNP_BACKEND", "").strip()
    if name:
        set_backend(name)


# ----------------------------------------------------------------------------- several GPUs (bertnp.distributed)

def nccl():
    """``(cupy.cuda.nccl, cupy.cuda)``: NCCL's collectives and CUDA streams/events, for all-reducing
    gradients between GPUs; RuntimeError saying why not (not on cupy, or CuPy finds no NCCL)."""
    if _name != "cupy":
        raise RuntimeError("NCCL needs the cupy backend")
    try:
        from cupy.cuda import nccl as cupy_nccl
    except ImportError as exc:
        raise RuntimeError(f"CuPy cannot load NCCL ({exc}): pip install nvidia-nccl-cu12") from exc
    if not getattr(cupy_nccl, "available", True):
        raise RuntimeError("CuPy was built without NCCL: pip install nvidia-nccl-cu12")
    return cupy_nccl, _cupy.cuda


def use_device(local_rank: int) -> int:
    """Make GPU ``local_rank % count`` current for this process (one GPU per rank on a machine);
    call before allocating. Returns the device index (0 on NumPy, which has none)."""
    if _name != "cupy":
        return 0
    index = int(local_rank) % _cupy.cuda.runtime.getDeviceCount()
    _cupy.cuda.Device(index).use()
    return index
