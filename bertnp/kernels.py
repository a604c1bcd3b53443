"""Hand-written CUDA kernels for the hot operations, as drop-ins for :mod:`bertnp.ops`.

The CUDA C sources live in the top-level ``kernels/`` folder, one operation per file in llm.c's
manner (``softmax_attention.cu``, ``layernorm.cu``, ``gelu.cu``, ``cross_entropy.cu``,
``adamw.cu``, ``dropout.cu``); each opens with a comment giving the math, the numbered versions and
the launch configuration. This module compiles each file once per process with
``cupy.RawModule`` (NVRTC compiles for the running GPU; CuPy also keeps a disk cache) and wraps its
kernels in functions with the SAME signatures and the SAME cache types as the NumPy operations, so a model can switch per run::

    from bertnp import kernels
    F = kernels.ops(use_kernels)                  # a namespace: kernel wrappers, or bertnp.ops itself
    out, cache = F.layernorm_forward(x, gamma, beta, eps)
    dx, dgamma, dbeta = F.layernorm_backward(dout, cache)

Every wrapper falls back to the NumPy reference (running on whatever backend is active) unless the
backend is CuPy and the arrays are float32, so turning kernels on is always safe; float64 (gradient
checks) always takes the reference path. The reference is the truth: ``tests/test_kernels.py``
checks every kernel against it.

Rules kept here: CuPy is reached only through :func:`bertnp.backend.xp`; scalars go to kernels as
``numpy.int32`` / ``numpy.int64`` / ``numpy.float32`` (their exact C types); nothing is copied to the
host, so no wrapper synchronises the GPU (except ``cross_entropy_forward(check_range=True)``, which
checks the targets on the host exactly like the reference; pass ``check_range=False`` in a hot loop).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bertnp import backend
from bertnp import ops as _ref
from bertnp.ops._checks import require_int, require_shape
from bertnp.ops.activations import GeluCache
from bertnp.ops.layernorm import LayerNormCache
from bertnp.ops.losses import CrossEntropyCache
from bertnp.ops.softmax import SoftmaxCache

__all__ = [
    "KERNEL_NAMES", "kernel_dir", "kernel_sources", "compile_all", "kernels_active", "ops",
    "softmax_forward", "softmax_backward", "layernorm_forward", "layernorm_backward",
    "gelu_forward", "gelu_backward", "activation_forward", "activation_backward",
    "cross_entropy_forward", "cross_entropy_backward", "adamw_step", "adamw_step_reference",
    "dropout_philox_forward", "dropout_mask_backward",
]

# ----------------------------------------------------------------------------- finding the sources

KERNEL_NAMES = ("softmax_attention", "layernorm", "gelu", "cross_entropy", "adamw", "dropout")
PACKAGE_DATA_DIR = "cuda_kernels"     # where setup.cfg puts kernels/*.cu inside an installed bertnp
KERNELS_DIR_ENV = "BERTNP_KERNELS_DIR"
COMPILE_OPTIONS = ("-std=c++17",)     # CuPy adds the running GPU's -arch itself

# The version each wrapper launches unless told otherwise (the numbers of the .cu files' headers).
DEFAULT_VERSIONS = {
    "softmax_forward": 3, "softmax_backward": 2,
    "layernorm_forward": 2, "layernorm_backward": 3, "layernorm_param_grad": 2,
    "gelu": 2, "cross_entropy_forward": 2, "cross_entropy_backward": 2, "adamw": 2,
}
VERSIONS = {
    "softmax_forward": (1, 2, 3), "softmax_backward": (1, 2),
    "layernorm_forward": (1, 2), "layernorm_backward": (1, 2, 3), "layernorm_param_grad": (1, 2),
    "gelu": (1, 2), "cross_entropy_forward": (1, 2), "cross_entropy_backward": (1, 2), "adamw": (1, 2),
}


def kernel_dir() -> Path:
    """The folder holding the ``.cu`` files.

    Looked for in this order: ``$BERTNP_KERNELS_DIR`` (used alone when set); ``bertnp/cuda_kernels``
    inside an installed (non-editable) package, where setup.cfg ships them; ``kernels/`` beside the
    ``bertnp`` package in a source checkout or an editable install.
    """
    def complete(folder: Path) -> bool:
        return all((folder / f"{name}.cu").is_file() for name in KERNEL_NAMES)

    override = os.environ.get(KERNELS_DIR_ENV, "").strip()
    if override:
        folder = Path(override).expanduser()
        if not complete(folder):
            raise FileNotFoundError(
                f"{KERNELS_DIR_ENV}={override!r} does not hold the CUDA sources "
                f"{', '.join(n + '.cu' for n in KERNEL_NAMES)}")
        return folder
    here = Path(__file__).resolve().parent
    candidates = [here / PACKAGE_DATA_DIR, here.parent / "kernels"]
    for folder in candidates:
        if complete(folder):
            return folder
    raise FileNotFoundError(
        "CUDA kernel sources (kernels/*.cu) not found; looked in "
        + ", ".join(str(c) for c in candidates) + f" (set {KERNELS_DIR_ENV} to point elsewhere)")


def kernel_sources() -> dict:
    """``{name: Path}`` of every kernel source, e.g. ``{"layernorm": .../layernorm.cu, ...}``."""
    folder = kernel_dir()
    return {path.stem: path for path in sorted(folder.glob("*.cu"))}


# ----------------------------------------------------------------------------- compiling, once per process

_MODULES: dict = {}      # name -> cupy.RawModule
_FUNCTIONS: dict = {}    # (name, kernel) -> cupy.RawKernel


def _module(name: str):
    module = _MODULES.get(name)
    if module is None:
        cupy = backend.xp()
        code = kernel_sources()[name].read_text(encoding="utf-8")
        module = cupy.RawModule(code=code, options=COMPILE_OPTIONS)
        _MODULES[name] = module
    return module


def _function(name: str, kernel: str):
    key = (name, kernel)
    fn = _FUNCTIONS.get(key)
    if fn is None:
        fn = _module(name).get_function(kernel)   # compiles (NVRTC) on the first request
        _FUNCTIONS[key] = fn
    return fn


def compile_all() -> list:
    """Compile and load every kernel now (for the active CuPy backend); returns the kernel names.
    Useful at start-up so that a compile error shows before training, not in its first step."""
    if backend.get_backend() != "cupy":
        raise RuntimeError("compile_all() needs the cupy backend (bertnp.set_backend('cupy'))")
    loaded = []
    for name, path in kernel_sources().items():
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            if line.startswith('extern "C" __global__ void '):
                kernel = line.split("void ", 1)[1].split("(", 1)[0].strip()
                _function(name, kernel)
                loaded.append(kernel)
    return loaded


def kernels_active(*arrays) -> bool:
    """True when the kernels would run for these arrays: CuPy backend and every array float32."""
    return backend.get_backend() == "cupy" and all(
        a is not None and getattr(a, "dtype", None) == np.float32 for a in arrays)


def _version(op: str, version) -> int:
    chosen = DEFAULT_VERSIONS[op] if version is None else version
    if chosen not in VERSIONS[op]:
        raise ValueError(f"{op}: version must be one of {VERSIONS[op]}, got {version!r}")
    return chosen


# ----------------------------------------------------------------------------- launch configurations
# Pure functions of the sizes, so that tests can replay a kernel's index arithmetic on the CPU.

THREAD_ROWS_BLOCK = 128          # v1 row kernels: one thread per row
WARP = 32
WARP_ROWS_BLOCK = 256            # v2/v3 row kernels: 8 warps per block, one row each
ELEMENTWISE_BLOCK = 256
GRID_CAP = 4096                  # grid-stride kernels: enough blocks to fill any current GPU


def rows_launch(rows: int, per_warp: bool):
    """(grid, block) for a row kernel: one thread per row, or one warp per row."""
    if per_warp:
        rows_per_block = WARP_ROWS_BLOCK // WARP
        return (max(1, -(-rows // rows_per_block)),), (WARP_ROWS_BLOCK,)
    return (max(1, -(-rows // THREAD_ROWS_BLOCK)),), (THREAD_ROWS_BLOCK,)


def elementwise_launch(n: int, vectorized: bool):
    """(grid, block) for a grid-stride elementwise kernel (vectorized: counts float4 groups)."""
    items = n // 4 if vectorized else n
    return (max(1, min(GRID_CAP, -(-items // ELEMENTWISE_BLOCK))),), (ELEMENTWISE_BLOCK,)


def cross_entropy_block(num_classes: int) -> int:
    """Threads per row for the block-per-row cross-entropy (a multiple of 32, at most 1024)."""
    return 512 if num_classes >= 4096 else 256


def param_grad_chunks(rows: int):
    """(rows_per_chunk, n_chunks) for the two-stage dgamma/dbeta reduction (n_chunks <= 1024)."""
    rows_per_chunk = max(32, -(-rows // 1024))
    return rows_per_chunk, max(1, -(-rows // rows_per_chunk))


LN_FUSED_WARPS = 4               # backward v3: warps per block, each with its own 2 x C sums
LN_FUSED_MAX_C = 1536            # 4 warps x 2 x C floats <= 48 KB of shared memory
FINAL_ROWS = 16                  # finalize: rows of the (32, 16) block summing chunks in parallel


def fused_chunks(rows: int):
    """(rows_per_chunk, n_chunks) for backward v3: 2 rows per warp (8 per block) keeps ~one warp per
    two rows in flight, as many as v2 has, while the partial sums add only 2 / (3 x 8) = 8% to the
    bytes dx reads and writes; at most 2048 chunks (then more rows per chunk)."""
    rows_per_chunk = max(2 * LN_FUSED_WARPS, -(-rows // 2048))
    return rows_per_chunk, max(1, -(-rows // rows_per_chunk))


def _address(array) -> int:
    data = array.data
    return data.ptr if hasattr(data, "ptr") else array.ctypes.data   # CuPy, or NumPy (CPU tests)


def _aligned16(*arrays) -> bool:
    """float4 kernels need 16-byte aligned pointers (CuPy's allocations are; offset views may not be)."""
    return all(_address(a) % 16 == 0 for a in arrays)


_NULL = np.uint64(0)     # a NULL pointer argument (8 bytes of zero)

# ----------------------------------------------------------------------------- attention softmax


def _mask_plan(xp, shape, mask):
    """Express ``mask`` as one row of K values per leading-axis index, or return None.

    HF's mask is (B, 1, 1, K) for scores (B, nh, T, K): mask row b serves the nh*T rows of batch
    element b. Any other broadcasting pattern goes to the reference."""
    if mask is None:
        return None, 1, 0
    ndim, K = len(shape), shape[-1]
    if ndim < 2 or mask.ndim > ndim:
        return None
    mshape = (1,) * (ndim - mask.ndim) + tuple(mask.shape)
    if mshape[-1] != K or any(s != 1 for s in mshape[1:-1]) or mshape[0] not in (1, shape[0]):
        return None
    rows_per_batch = math.prod(shape[1:-1])
    stride = K if mshape[0] != 1 else 0
    return xp.ascontiguousarray(mask.reshape(mshape[0], K)), rows_per_batch, stride


def softmax_forward(scores, additive_mask=None, *, version=None):
    """Drop-in for :func:`bertnp.ops.softmax_forward`: scores (..., K) -> (probs, SoftmaxCache)."""
    xp = backend.xp()
    if not kernels_active(scores) or scores.ndim == 0 or scores.size == 0 or (
            additive_mask is not None and getattr(additive_mask, "dtype", None) != scores.dtype):
        return _ref.softmax_forward(scores, additive_mask)
    plan = _mask_plan(xp, tuple(scores.shape), additive_mask)
    if plan is None:
        return _ref.softmax_forward(scores, additive_mask)
    mask, rows_per_batch, mask_stride = plan
    v = _version("softmax_forward", version)
    K = scores.shape[-1]
    rows = scores.size // K
    scores = xp.ascontiguousarray(scores)
    probs = xp.empty(scores.shape, dtype=scores.dtype)
    grid, block = rows_launch(rows, per_warp=v > 1)
    _function("softmax_attention", f"softmax_forward_v{v}")(
        grid, block, (probs, scores, _NULL if mask is None else mask, np.int64(rows), np.int32(K),
                      np.int64(rows_per_batch), np.int64(mask_stride)))
    return probs, SoftmaxCache(probs)


def softmax_backward(dprobs, cache: SoftmaxCache, *, version=None):
    """Drop-in for :func:`bertnp.ops.softmax_backward`: dprobs (..., K) -> dscores (..., K)."""
    xp = backend.xp()
    probs = cache.probs
    if (not kernels_active(dprobs, probs) or dprobs.shape != probs.shape or probs.ndim == 0
            or probs.size == 0):
        return _ref.softmax_backward(dprobs, cache)
    v = _version("softmax_backward", version)
    K = probs.shape[-1]
    rows = probs.size // K
    dprobs = xp.ascontiguousarray(dprobs)
    probs = xp.ascontiguousarray(probs)
    dscores = xp.empty(probs.shape, dtype=probs.dtype)
    grid, block = rows_launch(rows, per_warp=v > 1)
    _function("softmax_attention", f"softmax_backward_v{v}")(
        grid, block, (dscores, dprobs, probs, np.int64(rows), np.int32(K)))
    return dscores


# ----------------------------------------------------------------------------- LayerNorm


def layernorm_forward(x, gamma, beta, eps: float = 1e-12, *, version=None):
    """Drop-in for :func:`bertnp.ops.layernorm_forward`: x (..., C) -> (out, LayerNormCache)."""
    xp = backend.xp()
    if not kernels_active(x, gamma, beta) or x.ndim == 0 or x.size == 0:
        return _ref.layernorm_forward(x, gamma, beta, eps)
    C = x.shape[-1]
    require_shape("gamma", gamma, (C,))
    require_shape("beta", beta, (C,))
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    v = _version("layernorm_forward", version)
    rows = x.size // C
    x = xp.ascontiguousarray(x)
    gamma_c, beta_c = xp.ascontiguousarray(gamma), xp.ascontiguousarray(beta)
    out = xp.empty(x.shape, dtype=x.dtype)
    xhat = xp.empty(x.shape, dtype=x.dtype)
    rstd = xp.empty(x.shape[:-1] + (1,), dtype=x.dtype)        # (..., 1) as the reference
    grid, block = rows_launch(rows, per_warp=v > 1)
    _function("layernorm", f"layernorm_forward_v{v}")(
        grid, block, (out, xhat, rstd, x, gamma_c, beta_c, np.int64(rows), np.int32(C), np.float32(eps)))
    return out, LayerNormCache(xhat, rstd, gamma)


def layernorm_backward(dout, cache: LayerNormCache, *, version=None, param_version=None):
    """Drop-in for :func:`bertnp.ops.layernorm_backward`: dout (..., C) -> (dx, dgamma, dbeta)."""
    xp = backend.xp()
    xhat, rstd, gamma = cache
    if (not kernels_active(dout, xhat, rstd, gamma) or dout.shape != xhat.shape or xhat.ndim == 0
            or xhat.size == 0):
        return _ref.layernorm_backward(dout, cache)
    v = _version("layernorm_backward", version)
    pv = _version("layernorm_param_grad", param_version)
    C = xhat.shape[-1]
    rows = xhat.size // C
    if v == 3 and C > LN_FUSED_MAX_C:                             # its shared sums would not fit
        v = 2
    dout = xp.ascontiguousarray(dout)
    xhat = xp.ascontiguousarray(xhat)
    rstd = xp.ascontiguousarray(rstd)
    gamma_c = xp.ascontiguousarray(gamma)
    dx = xp.empty(xhat.shape, dtype=xhat.dtype)
    dgamma = xp.empty((C,), dtype=xhat.dtype)
    dbeta = xp.empty((C,), dtype=xhat.dtype)
    if v == 3:                                                    # dx and the partial sums, one pass
        rows_per_chunk, n_chunks = fused_chunks(rows)
        partial = xp.empty((n_chunks, 2, C), dtype=xhat.dtype)
        _function("layernorm", "layernorm_backward_v3")(
            (n_chunks,), (LN_FUSED_WARPS * WARP,),
            (dx, partial, dout, xhat, rstd, gamma_c, np.int64(rows), np.int32(C), np.int32(rows_per_chunk)),
            shared_mem=LN_FUSED_WARPS * 2 * C * 4)
        _finalize_param_grads(dgamma, dbeta, partial, n_chunks, C)
        return dx, dgamma, dbeta
    grid, block = rows_launch(rows, per_warp=v > 1)
    _function("layernorm", f"layernorm_backward_dx_v{v}")(
        grid, block, (dx, dout, xhat, rstd, gamma_c, np.int64(rows), np.int32(C)))
    col_grid = -(-C // 256)
    if pv == 1:
        _function("layernorm", "layernorm_param_grad_v1")(
            (col_grid,), (256,), (dgamma, dbeta, dout, xhat, np.int64(rows), np.int32(C)))
    else:
        rows_per_chunk, n_chunks = param_grad_chunks(rows)
        partial = xp.empty((n_chunks, 2, C), dtype=xhat.dtype)
        _function("layernorm", "layernorm_param_grad_partial")(
            (col_grid, n_chunks), (256,),
            (partial, dout, xhat, np.int64(rows), np.int32(C), np.int32(rows_per_chunk)))
        _finalize_param_grads(dgamma, dbeta, partial, n_chunks, C)
    return dx, dgamma, dbeta


def _finalize_param_grads(dgamma, dbeta, partial, n_chunks: int, C: int) -> None:
    """dgamma, dbeta = the sums over chunks of partial (n_chunks, 2, C), in a fixed order."""
    _function("layernorm", "layernorm_param_grad_finalize")(
        (-(-C // WARP), 2), (WARP, FINAL_ROWS), (dgamma, dbeta, partial, np.int32(n_chunks), np.int32(C)))


# ----------------------------------------------------------------------------- GELU

_APPROX = {"none": 0, "tanh": 1}


def gelu_forward(x, approximate: str = "none", *, version=None):
    """Drop-in for :func:`bertnp.ops.gelu_forward`: x (...) -> (out, GeluCache)."""
    xp = backend.xp()
    if approximate not in _APPROX or not kernels_active(x) or x.size == 0:
        return _ref.gelu_forward(x, approximate)
    v = _version("gelu", version)
    x_c = xp.ascontiguousarray(x)
    out = xp.empty(x_c.shape, dtype=x_c.dtype)
    if v == 2 and not _aligned16(x_c, out):
        v = 1
    grid, block = elementwise_launch(x_c.size, vectorized=v == 2)
    _function("gelu", f"gelu_forward_v{v}")(
        grid, block, (out, x_c, np.int64(x_c.size), np.int32(_APPROX[approximate])))
    return out, GeluCache(x, approximate)


def gelu_backward(dout, cache: GeluCache, *, version=None):
    """Drop-in for :func:`bertnp.ops.gelu_backward`: dout (...) -> dx (...)."""
    xp = backend.xp()
    x, approximate = cache.x, cache.approximate
    if (approximate not in _APPROX or not kernels_active(dout, x) or dout.shape != x.shape
            or x.size == 0):
        return _ref.gelu_backward(dout, cache)
    v = _version("gelu", version)
    x_c, dout_c = xp.ascontiguousarray(x), xp.ascontiguousarray(dout)
    dx = xp.empty(x_c.shape, dtype=x_c.dtype)
    if v == 2 and not _aligned16(x_c, dout_c, dx):
        v = 1
    grid, block = elementwise_launch(x_c.size, vectorized=v == 2)
    _function("gelu", f"gelu_backward_v{v}")(
        grid, block, (dx, x_c, dout_c, np.int64(x_c.size), np.int32(_APPROX[approximate])))
    return dx


def activation_forward(x, name: str):
    """Drop-in for :func:`bertnp.ops.activation_forward`: the GELUs take the kernel."""
    if name == "gelu":
        return gelu_forward(x, "none")
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return gelu_forward(x, "tanh")
    return _ref.activation_forward(x, name)


def activation_backward(dout, cache):
    """Drop-in for :func:`bertnp.ops.activation_backward`."""
    if isinstance(cache, GeluCache):
        return gelu_backward(dout, cache)
    return _ref.activation_backward(dout, cache)


# ----------------------------------------------------------------------------- cross-entropy


def cross_entropy_forward(logits, targets, ignore_index: int = -100, check_range: bool = True, *,
                          version=None):
    """Drop-in for :func:`bertnp.ops.cross_entropy_forward`: logits (N, V), targets (N,) ->
    (loss (), CrossEntropyCache). The probabilities are written once, by the kernel."""
    xp = backend.xp()
    if not kernels_active(logits) or logits.ndim != 2 or logits.size == 0:
        return _ref.cross_entropy_forward(logits, targets, ignore_index, check_range)
    require_int("targets", targets)
    if targets.shape != logits.shape[:1]:
        raise ValueError(
            f"targets has shape {tuple(targets.shape)}, expected ({logits.shape[0]},) to match logits")
    N, V = logits.shape
    valid_bool = targets != ignore_index                          # (N,)
    if check_range:                                               # the reference's check (it syncs)
        bad = valid_bool & ((targets < 0) | (targets >= V))
        if bool(bad.any()):
            raise ValueError(f"targets must be in [0, {V}) or equal ignore_index={ignore_index}; "
                             f"got {int(targets[bad][0])}")
    # TASK 1.8 kernel_ce_rows: which rows count (lesson 08)
    safe_targets = xp.where(valid_bool, targets, 0)               # (N,) the cache's safe index
    valid = valid_bool.astype(logits.dtype)                       # (N,) 1.0 / 0.0
    # END TASK 1.8
    v = _version("cross_entropy_forward", version)
    logits = xp.ascontiguousarray(logits)
    targets64 = xp.ascontiguousarray(targets.astype(xp.int64, copy=False))
    probs = xp.empty((N, V), dtype=logits.dtype)
    nll = xp.empty((N,), dtype=logits.dtype)
    if v == 1:
        grid, block = rows_launch(N, per_warp=False)
    else:
        grid, block = (N,), (cross_entropy_block(V),)
    _function("cross_entropy", f"cross_entropy_forward_v{v}")(
        grid, block, (probs, nll, logits, targets64, np.int64(ignore_index), np.int64(N), np.int32(V)))
    # TASK 1.8 kernel_ce_loss: the mean over the counted rows (lesson 08)
    count = xp.maximum(valid.sum(), 1.0)                          # () counted rows, at least 1
    loss = (nll * valid).sum() / count                            # () on the device: no sync
    # END TASK 1.8
    return loss, CrossEntropyCache(probs, safe_targets, valid, count)


def cross_entropy_backward(dloss, cache: CrossEntropyCache, *, version=None):
    """Drop-in for :func:`bertnp.ops.cross_entropy_backward`: dloss () -> dlogits (N, V)."""
    xp = backend.xp()
    probs, targets, valid, count = cache
    if not kernels_active(probs) or probs.ndim != 2 or probs.size == 0:
        return _ref.cross_entropy_backward(dloss, cache)
    v = _version("cross_entropy_backward", version)
    N, V = probs.shape
    probs = xp.ascontiguousarray(probs)
    targets64 = xp.ascontiguousarray(targets.astype(xp.int64, copy=False))
    valid32 = xp.ascontiguousarray(valid.astype(xp.float32, copy=False))
    count32 = xp.ascontiguousarray(xp.asarray(count).astype(xp.float32, copy=False))
    if backend.is_device_array(dloss):                            # a 0-d device array: by pointer
        dloss_ptr, dloss_value = xp.ascontiguousarray(dloss.astype(xp.float32, copy=False)), np.float32(0)
    else:                                                         # a host number: by value
        dloss_ptr, dloss_value = _NULL, np.float32(dloss)
    dlogits = xp.empty((N, V), dtype=probs.dtype)
    if v == 1:
        grid, block = elementwise_launch(N * V, vectorized=False)
    else:
        grid, block = (N,), (256,)
    _function("cross_entropy", f"cross_entropy_backward_v{v}")(
        grid, block, (dlogits, probs, targets64, valid32, dloss_ptr, dloss_value, count32,
                      np.int64(N), np.int32(V)))
    return dlogits


# ----------------------------------------------------------------------------- AdamW

def _adamw_scalars(lr, step, beta1, beta2, weight_decay):
    """Per-step scalars in double precision (as PyTorch computes them on the host)."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be a positive integer (1 for the first update), got {step!r}")
    # TASK 5.1 adamw_scalars: the decay factor and the bias corrections (lesson 10)
    decay = 1.0 - lr * weight_decay                  # p *= 1 - lr * wd
    step_size = lr / (1.0 - beta1 ** int(step))      # lr / (1 - b1^t)
    bc2_sqrt = math.sqrt(1.0 - beta2 ** int(step))   # sqrt(1 - b2^t)
    # END TASK 5.1
    return decay, step_size, bc2_sqrt


def adamw_step_reference(param, grad, exp_avg, exp_avg_sq, *, lr, step, beta1=0.9, beta2=0.999,
                         eps=1e-6, weight_decay=0.0, correct_bias=True):
    """The AdamW update in array code (any backend, any float dtype), in place on param, exp_avg,
    exp_avg_sq: ``correct_bias=True`` is torch.optim.AdamW, ``False`` Google BERT's optimizer
    (no bias correction, decay inside the update), the same switch as :class:`bertnp.AdamW`."""
    # TASK 5.1 adamw_step_reference: the same update in array code (lesson 10)
    xp = backend.xp()
    decay, step_size, bc2_sqrt = _adamw_scalars(lr, step, beta1, beta2, weight_decay)
    if correct_bias:
        param *= decay                                           # decoupled decay on the old weights
        exp_avg += (1.0 - beta1) * (grad - exp_avg)              # m = b1 m + (1 - b1) g  (torch's lerp)
        exp_avg_sq *= beta2
        exp_avg_sq += (1.0 - beta2) * (grad * grad)              # v = b2 v + (1 - b2) g^2
        denom = xp.sqrt(exp_avg_sq) / bc2_sqrt + eps             # eps after the bias correction
        param -= step_size * (exp_avg / denom)
    else:
        exp_avg *= beta1
        exp_avg += (1.0 - beta1) * grad
        exp_avg_sq *= beta2
        exp_avg_sq += (1.0 - beta2) * (grad * grad)
        update = exp_avg / (xp.sqrt(exp_avg_sq) + eps) + weight_decay * param
        param -= lr * update
    # END TASK 5.1


def adamw_step(param, grad, exp_avg, exp_avg_sq, *, lr, step, beta1=0.9, beta2=0.999, eps=1e-6,
               weight_decay=0.0, correct_bias=True, version=None):
    """One AdamW update of one tensor, in place (param, exp_avg, exp_avg_sq), as ONE kernel launch.

    ``step`` counts updates from 1 (``AdamW.step_count`` after its increment). Falls back to
    :func:`adamw_step_reference` off CuPy, for float64, or for non-contiguous state (which a kernel
    could not update in place)."""
    xp = backend.xp()
    decay, step_size, bc2_sqrt = _adamw_scalars(lr, step, beta1, beta2, weight_decay)
    shapes = {tuple(a.shape) for a in (param, grad, exp_avg, exp_avg_sq)}
    if len(shapes) != 1:
        raise ValueError(f"param, grad, exp_avg and exp_avg_sq must share one shape, got {sorted(shapes)}")
    contiguous = all(a.flags.c_contiguous for a in (param, exp_avg, exp_avg_sq))
    if not kernels_active(param, grad, exp_avg, exp_avg_sq) or not contiguous or param.size == 0:
        return adamw_step_reference(param, grad, exp_avg, exp_avg_sq, lr=lr, step=step, beta1=beta1,
                                    beta2=beta2, eps=eps, weight_decay=weight_decay,
                                    correct_bias=correct_bias)
    v = _version("adamw", version)
    grad = xp.ascontiguousarray(grad)
    if v == 2 and not _aligned16(param, grad, exp_avg, exp_avg_sq):
        v = 1
    n = param.size
    grid, block = elementwise_launch(n, vectorized=v == 2)
    f32 = np.float32
    _function("adamw", f"adamw_v{v}")(
        grid, block, (param, grad, exp_avg, exp_avg_sq, np.int64(n), np.int32(0 if correct_bias else 1),
                      f32(lr), f32(beta1), f32(beta2), f32(1.0 - beta1), f32(1.0 - beta2), f32(eps),
                      f32(weight_decay), f32(decay), f32(step_size), f32(bc2_sqrt)))
    return None


# ----------------------------------------------------------------------------- dropout
# Not behind use_kernels: on CuPy, bertnp.ops.dropout always draws its mask here (the alternative,
# a cupy.random generator per dropout site per step, costs more than every other kernel together).

DROPOUT_BLOCK = 256              # threads per block of dropout_forward_f32 / dropout_mask: its shared tile
DROPOUT_TILE = 16 * DROPOUT_BLOCK  # elements per tile: one Philox call (16 values) per thread


def dropout_launch(n: int):
    """(grid, block) for the tiled dropout kernels: grid-stride over tiles of 4096 elements."""
    return (max(1, min(GRID_CAP, -(-n // DROPOUT_TILE))),), (DROPOUT_BLOCK,)


def dropout_philox_forward(x, key, threshold: int, scale: float):
    """Dropout on the device: x (...) -> (out (...), mask (...) bool), the mask drawn from the
    key's Philox bits (kernels/dropout.cu; the same bits as NumPy's, bertnp.backend.philox_bits16).
    float32: ONE kernel writes the mask and out; other dtypes: the mask kernel, then array code."""
    xp = backend.xp()
    seed, step, site = (np.uint64(v) for v in key[:3])       # (a share's row, key[3], is 0 here: dropout_forward)
    n = x.size
    mask = xp.empty(x.shape, dtype=xp.bool_)
    grid, block = dropout_launch(n)
    if n and x.dtype == np.float32:
        x_c = xp.ascontiguousarray(x)
        out = xp.empty(x.shape, dtype=x.dtype)
        _function("dropout", "dropout_forward_f32")(
            grid, block, (out, mask, x_c, np.int64(n), seed, step, site, np.uint32(threshold),
                          np.float32(scale)))
        return out, mask
    if n:
        _function("dropout", "dropout_mask")(
            grid, block, (mask, np.int64(n), seed, step, site, np.uint32(threshold)))
    # TASK 1.6 kernel_dropout_forward: the scale and the mask, in array code (lesson 07)
    out = x * x.dtype.type(scale)                 # (...) the reference's two passes
    out *= mask
    return out, mask
    # END TASK 1.6


def dropout_mask_backward(dout, mask, scale: float):
    """dout (...) -> dx (...) = dout * scale * mask: one kernel for float32, array code otherwise."""
    xp = backend.xp()
    if dout.dtype != np.float32 or dout.shape != mask.shape or dout.size == 0:
        # TASK 1.6 kernel_dropout_backward: the same mask and scale, in array code (lesson 07)
        dx = dout * dout.dtype.type(scale)
        dx *= mask
        return dx
        # END TASK 1.6
    dout_c, mask_c = xp.ascontiguousarray(dout), xp.ascontiguousarray(mask)
    dx = xp.empty(dout.shape, dtype=dout.dtype)
    grid, block = elementwise_launch(dout.size, vectorized=False)
    _function("dropout", "dropout_backward_f32")(
        grid, block, (dx, dout_c, mask_c, np.int64(dout.size), np.float32(scale)))
    return dx


# ----------------------------------------------------------------------------- one switch per run


def ops(use_kernels: bool = True) -> SimpleNamespace:
    """The operation table a model calls through: kernel wrappers when ``use_kernels`` (each still
    falling back to the reference off CuPy / for float64), else :mod:`bertnp.ops` itself."""
    names = ["softmax_forward", "softmax_backward", "layernorm_forward", "layernorm_backward",
             "gelu_forward", "gelu_backward", "activation_forward", "activation_backward",
             "cross_entropy_forward", "cross_entropy_backward"]
    if use_kernels:
        table = {name: globals()[name] for name in names}
        table["adamw_step"] = adamw_step
    else:
        table = {name: getattr(_ref, name) for name in names}
        table["adamw_step"] = adamw_step_reference
    return SimpleNamespace(use_kernels=bool(use_kernels), **table)
