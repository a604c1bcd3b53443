"""The one module that knows about CuPy.

Every operation in :mod:`bertnp.ops` asks this module for its array module ``xp``
(``numpy`` or ``cupy``) at call time, so the same line of code runs on the CPU or the GPU::

    import bertnp as bn
    bn.set_backend("cupy")          # or the environment variable BERTNP_BACKEND=cupy
    xp = bn.backend.xp()            # -> the cupy module
    a = bn.backend.to_device(host_array)   # numpy -> current backend
    h = bn.backend.to_host(a)              # current backend -> numpy

Besides the array module it provides the few functions that have no common name in NumPy and
CuPy (the exact ``erf``, a scatter-add, the dropout mask's random bits) so that nothing else in the
library has to ask which backend is active.
"""
from __future__ import annotations

import contextlib
import math
import os

import numpy as np

_BACKENDS = ("numpy", "cupy")

_name = "numpy"          # the active backend's name
_xp = np                 # its array module
_cupy = None             # the cupy module once imported (None until first asked for)


# A one-line kernel: set_backend("cupy") compiles (NVRTC) and runs it, so a broken CUDA install fails
# there, with its cause named, and not in the middle of the first training step.
_PROBE_SOURCE = r"""
extern "C" __global__ void bertnp_probe(float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = 2.0f * i;
}
"""

# (words any of which identify the failure in CuPy's message, what to tell the user), first match wins
_CAUSES = (
    (("libnvrtc-builtins", "nvrtc-builtins"),
     "NVRTC (CUDA's run-time compiler) loaded but cannot find its companion libnvrtc-builtins library. "
     "Some nvidia-cuda-nvrtc 13.0 wheels ship it beside libnvrtc.so without a search path: put that folder "
     "(site-packages/nvidia/cu13/lib) on LD_LIBRARY_PATH, or upgrade the wheel (pip install -U nvidia-cuda-nvrtc)."),
    (("cuda headers", "cuda_fp16.h", "cuda_runtime.h", "cuda_bf16.h", "cannot open source file",
      "could not find cuda include"),
     "CuPy cannot find the CUDA headers it compiles its kernels against (CuPy 14 compiles every kernel, its "
     "own included, when first used). Install them with the CUDA components from PyPI: "
     "pip install 'bertnp[gpu]' (= cupy-cuda12x[ctk]; cupy-cuda13x[ctk] for CUDA 13), or point CUDA_PATH at "
     "a CUDA toolkit."),
    (("libnvrtc", "nvrtc"),
     "CuPy cannot load or run NVRTC (libnvrtc, the CUDA run-time compiler that builds every kernel). "
     "Install it with the CUDA components from PyPI: pip install 'bertnp[gpu]' (= cupy-cuda12x[ctk]; "
     "cupy-cuda13x[ctk] for CUDA 13), or install a CUDA toolkit of the same major version as the CuPy wheel."),
    (("unsupported toolchain", "no kernel image", "insufficient", "unsupported ptx", "ptx jit"),
     "The GPU driver is older than the CUDA version CuPy compiles for. Update the NVIDIA driver, or install "
     "the CuPy wheel of the CUDA major version the driver supports (cupy-cuda12x for a CUDA 12 driver)."),
    (("out of memory", "cudaerrormemoryallocation"),
     "The GPU has no memory left for even a 16-byte array: another process holds it (see nvidia-smi)."),
)


def _diagnose(exc: BaseException) -> str:
    """A sentence naming the likely cause of a failed CuPy start, from the exception CuPy raised."""
    text = f"{type(exc).__name__}: {exc}".lower()
    for words, advice in _CAUSES:
        if any(word in text for word in words):
            return advice
    return "The one-line test kernel failed for a reason not recognised here; CuPy's message is below."


def _probe(cupy) -> None:
    """Compile and run the one-line kernel (NVRTC), then one of CuPy's own elementwise kernels and a
    reduction (which need the CUDA headers), and read the answer back."""
    kernel = cupy.RawKernel(_PROBE_SOURCE, "bertnp_probe")
    out = cupy.zeros(4, dtype=cupy.float32)
    kernel((1,), (4,), (out, np.int32(4)))                 # out = [0, 2, 4, 6]
    total = float((out + 1).sum())                          # 1 + 3 + 5 + 7
    if total != 16.0:
        raise RuntimeError(f"the probe kernel computed {cupy.asnumpy(out)}, expected [0. 2. 4. 6.]")


def _import_cupy():
    """Import CuPy, check that a GPU answers and that a kernel compiles and runs there; raise a
    RuntimeError naming what is missing otherwise."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy  # noqa: WPS433 (the only import of cupy in the library)
    except ImportError as exc:  # not installed, or installed for another CUDA
        raise RuntimeError(
            "backend 'cupy' needs CuPy, which is not installed (or failed to import: "
            f"{exc}). Install the GPU extra: pip install 'bertnp[gpu]' (cupy-cuda12x with the CUDA "
            "components it compiles with; for CUDA 13: pip install 'cupy-cuda13x[ctk]')."
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing: cupy raises CUDARuntimeError
        raise RuntimeError(
            f"backend 'cupy' needs an NVIDIA GPU with a working CUDA driver; CuPy says: {exc}"
        ) from exc
    if count < 1:
        raise RuntimeError("backend 'cupy' needs an NVIDIA GPU, and none was found")
    try:
        _probe(cupy)
    except Exception as exc:  # noqa: BLE001 (CompileException, CUDARuntimeError, OSError ...: all reported)
        raise RuntimeError(
            f"backend 'cupy': a GPU answers, but compiling and running a one-line kernel failed. "
            f"{_diagnose(exc)} (CuPy {getattr(cupy, '__version__', '?')}; "
            f"{type(exc).__name__}: {str(exc).strip()[:2000]})"
        ) from exc
    _cupy = cupy
    return cupy


def cupy_versions() -> dict:
    """CuPy's and CUDA's versions as this process sees them (for reports; starts the cupy backend)."""
    cupy = _import_cupy()
    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])

    def version(number):                                  # 12040 -> "12.4"
        return f"{number // 1000}.{number % 1000 // 10}"
    try:
        nvrtc = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception as exc:  # noqa: BLE001
        nvrtc = f"unknown ({exc})"
    return {"cupy": cupy.__version__, "cuda_runtime": version(runtime.runtimeGetVersion()),
            "cuda_driver": version(runtime.driverGetVersion()), "nvrtc": nvrtc, "gpu": name,
            "compute_capability": f"{props['major']}.{props['minor']}"}


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
    if type(array) is np.ndarray:
        return array
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    if callable(getattr(array, "get", None)) and not isinstance(array, (np.generic, dict)):
        return array.get()  # other device arrays with CuPy's .get() (the tests' strict stand-in)
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
    activations every step, so each step page-faults them back in, tens of thousands of faults a
    BERT-mini step (count them with ``resource.getrusage(resource.RUSAGE_SELF).ru_minflt`` before and
    after a step; tests/test_backend.py does it for 40 MB re-allocations). With the thresholds raised, the freed
    blocks stay in the heap and are reused without a fault; the peak memory is the same (the
    step's own peak), it is only not returned between steps. Every thread allocates from the one
    (main) arena, so the threads of :mod:`bertnp.cores` reuse that memory too. Returns True if
    applied; False where the C library is not glibc (nothing changes). The training loops and
    benchmarks call it, before they start threads.
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
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8          # from glibc's <malloc.h>
    one_gib = 1 << 30
    _retained = bool(mallopt(M_MMAP_THRESHOLD, one_gib)) and bool(mallopt(M_TRIM_THRESHOLD, one_gib))
    # one arena for every thread: glibc gives each new thread an arena of its own, made of heaps of at
    # most 64 MB that it unmaps when they empty -- so a thread running a share of the batch
    # (bertnp.cores) faulted its activations back in every step, ~5,700 faults a BERT-mini step
    # (its step 619 ms against 507 with one arena, in benchmarks/bench_cpu.py's rotation)
    _retained = _retained and bool(mallopt(M_ARENA_MAX, 1))
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


def philox_bits16(shape, seed: int, step: int, site: int, *, start: int = 0):
    """16 random bits per element, on the host, for the dropout key (seed, step, site).

    NumPy's Philox4x64-10 (Salmon et al. 2011), a counter-based generator: with key (seed, 0) and
    counter (b, 0, step, site), block b = 1, 2, ... gives four 64-bit words, i.e. 16 values of 16
    bits; element e takes bits 16(e % 4) .. 16(e % 4) + 15 of word (e // 4) % 4 of block e // 16 + 1.
    Nothing is stored between calls: the bits of any element follow from the key alone, which is
    how the dropout kernel (kernels/dropout.cu) computes the SAME bits on the GPU, thread by thread,
    and how the CPU draws a large mask block by block, on every core, or a share of a batch's rows
    (``start``: the index of the first element in the whole mask; the generator starts at the
    Philox block holding it, block start // 16 + 1, and the elements before ``start`` in that block
    are dropped). Returns a NumPy uint16 array of ``shape``."""
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ValueError(f"start must be a non-negative integer (an element of the whole mask), got {start!r}")
    count = math.prod(shape)
    skip = start % 16                                                  # elements of the first block before start
    generator = np.random.Philox(counter=np.array([start // 16, 0, step, site], dtype=np.uint64),
                                 key=np.array([seed, 0], dtype=np.uint64))
    words = generator.random_raw(-(-(skip + count) // 4))              # (ceil((skip + n) / 4),) uint64
    # little-endian: the low 16 bits of each word come first, on any machine
    return words.astype("<u8", copy=False).view("<u2")[skip:skip + count].reshape(shape)


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
