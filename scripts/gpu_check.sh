#!/usr/bin/env bash
# First contact with a lent GPU machine (one H100 or H200): everything the GPU path needs checked and
# measured, in one run of under 9 minutes, with every result written under $OUT (8 files).
#
#   OUT=/path/to/results scripts/gpu_check.sh            # on the GPU machine, from the repository root
#   OUT=/tmp/out scripts/gpu_check.sh --cpu-dry-run      # here: the stages a CPU can run (see below)
#
# The machine is offline and brings its own CuPy: nothing is installed, the repository is imported
# from this folder (PYTHONPATH), and a missing tool (compute-sanitizer, torch, pytest) is recorded,
# not fatal. The stages run in this order, each under its own time limit, so that one hang cannot
# eat the budget; the last (the whole suite on CuPy) gets whatever time is left:
#
#   1 versions      GPU, driver, CUDA, CuPy, NVRTC, NumPy, torch, tools     -> versions.txt
#   2 compile       every kernel through CuPy (NVRTC), then the GPU tests   -> compile_and_gpu_tests.txt
#   3 gpu tests     pytest -m gpu: kernels vs NumPy, dropout bit for bit, no host syncs
#   4 sanitizer     compute-sanitizer memcheck + racecheck, every kernel on edge shapes -> sanitizer.txt
#   5 dropout       the cost of dropout's random numbers, previous scheme vs Philox    -> dropout.txt
#   6 kernels       per-kernel GB/s, % of measured copy and of nominal HBM             -> kernels.txt
#   7 step          BERT-base training step, kernels off / on, PyTorch eager if present -> step.txt
#   8 suite         BERTNP_TEST_BACKEND=cupy pytest tests, in the time left            -> suite_cupy.txt
#   and summary.txt: one line per stage (status, seconds).
#
# --cpu-dry-run (no GPU needed): versions; the nvcc/NVRTC compile tests; the GPU tests (they skip,
# saying why); the sanitizer driver without the sanitizer on the strict CuPy stand-in; dropout on
# NumPy; kernels and step (bench_gpu.py says there is no GPU); the suite on the strict stand-in
# (tests/test_kernels.py only). GPU_CHECK_STAGES="versions dropout" runs only the named stages.
set -uo pipefail

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --cpu-dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
PY=${GPU_CHECK_PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-4}
BUDGET=${GPU_CHECK_BUDGET:-530}            # seconds for all stages (the limit is 9 minutes)
STAGES=${GPU_CHECK_STAGES:-"versions compile gpu_tests sanitizer dropout kernels step suite"}
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "gpu_check.sh $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
     "$( ((DRY_RUN)) && echo '(CPU dry run)')" > "$SUMMARY"

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }
wanted() { [[ " $STAGES " == *" $1 "* ]]; }
have() { command -v "$1" > /dev/null 2>&1; }

# run_stage NAME LIMIT_SECONDS FILE COMMAND...: the command's output appended to FILE, its status
# (ok, FAILED rc, TIMEOUT) and time to summary.txt. The limit shrinks to the time left, less 10 s.
run_stage() {
    local name=$1 limit=$2 file=$3
    shift 3
    local remaining
    remaining=$(( $(left) - 10 ))
    if (( remaining < 5 )); then
        printf '%-10s skipped: no time left\n' "$name" >> "$SUMMARY"
        return 0
    fi
    (( limit > remaining )) && limit=$remaining
    local t0 rc status
    t0=$(date +%s)
    {
        echo "===== $name: $* (limit ${limit}s)"
        timeout --kill-after=10 "$limit" "$@"
    } >> "$file" 2>&1
    rc=$?
    case $rc in
        0) status="ok" ;;
        124|137) status="TIMEOUT after ${limit}s" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    printf '%-10s %-24s %4ss  -> %s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$(basename "$file")" >> "$SUMMARY"
    echo "===== $name: $status" >> "$file"
    return 0
}

note() { printf '%-10s %s\n' "$1" "$2" >> "$SUMMARY"; }

# ------------------------------------------------------------------------------------ 1 versions
if wanted versions; then
    cat > "$WORK/versions.py" <<'PYEOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.platform())
for name in ("numpy", "scipy", "safetensors", "tqdm", "cupy", "torch", "transformers", "pytest",
             "xdist", "hypothesis", "matplotlib"):
    try:
        module = importlib.import_module(name)
        print(f"{name:13s} {getattr(module, '__version__', 'present')}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name:13s} MISSING ({type(exc).__name__}: {exc})")
try:
    import bertnp
    from bertnp import backend
    print("bertnp", bertnp.__version__, "from", bertnp.__file__)
    for key, value in backend.cupy_versions().items():
        print(f"{key:18s} {value}")
except Exception as exc:  # noqa: BLE001
    print("the cupy backend cannot start:", exc)
try:
    import torch
    print("torch.cuda", torch.version.cuda, "available", torch.cuda.is_available())
except Exception as exc:  # noqa: BLE001
    print("torch:", exc)
PYEOF
    {
        if have nvidia-smi; then nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv
        else echo "nvidia-smi: not found"; fi
        if have nvcc; then nvcc --version; else echo "nvcc: not found"; fi
        if have compute-sanitizer; then compute-sanitizer --version; else echo "compute-sanitizer: not found"; fi
    } > "$OUT/versions.txt" 2>&1
    run_stage versions 60 "$OUT/versions.txt" "$PY" "$WORK/versions.py"
fi

# ------------------------------------------------------------------------------------ 2 compile, 3 GPU tests
TESTS_FILE="$OUT/compile_and_gpu_tests.txt"
if wanted compile; then
    if ((DRY_RUN)); then        # nvcc (sm_90, ptxas warnings as errors) and NVRTC where a libnvrtc is found
        run_stage compile 120 "$TESTS_FILE" "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_kernels.py \
            -k "compiles_with or sources_found"
    else                        # what a run really does: CuPy's NVRTC for this GPU, every kernel
        run_stage compile 90 "$TESTS_FILE" "$PY" -c "
import time, bertnp as bn
from bertnp import kernels
t = time.perf_counter(); bn.set_backend('cupy')
print(f'set_backend(\"cupy\"): probe kernel compiled and ran in {time.perf_counter() - t:.1f} s')
t = time.perf_counter(); names = kernels.compile_all()
print(f'{len(names)} kernels compiled and loaded in {time.perf_counter() - t:.1f} s:', ' '.join(names))"
    fi
fi
if wanted gpu_tests; then
    run_stage gpu_tests 150 "$TESTS_FILE" "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu \
        tests/test_kernels.py tests/test_gpu.py
fi

# ------------------------------------------------------------------------------------ 4 sanitizer
# Every kernel and version once, on shapes at the edges: one row, one key, a vocabulary of 1, C = 1,
# sizes one past a vector width or a tile, offset (misaligned) views, fully masked rows.
cat > "$WORK/edges.py" <<'PYEOF'
import sys
import numpy as np
import bertnp as bn
from bertnp import backend, kernels, ops

if "--strict" in sys.argv:                        # the CPU dry run: the strict stand-in, emulated launches
    sys.path.insert(0, "tests")
    from strict_xp import STRICT
    from test_kernels import EmulatedKernel
    from bertnp.ops import dropout as dropout_module
    kernels.kernels_active = lambda *arrays: all(getattr(a, "dtype", None) == np.float32 for a in arrays)
    kernels._function = lambda module, name: EmulatedKernel(module, name)
    dropout_module._device_kernels = lambda: kernels
    backend.using(STRICT, "strict").__enter__()
else:
    bn.set_backend("cupy")
    # no memory pool: each array its own cudaMalloc, so memcheck sees every array's bounds (a pool
    # hands out slices of larger blocks, and a read past a slice stays inside the block)
    backend.xp().cuda.set_allocator(None)
r = np.random.default_rng(0)
dev = lambda a: backend.to_device(np.asarray(a, dtype=np.float32))   # noqa: E731
launched = 0
for K, rows in [(1, 1), (33, 9), (129, 3)]:
    scores = dev(r.standard_normal((rows, 1, 1, K)))
    mask = dev(np.where(r.random((rows, 1, 1, K)) < 0.5, -np.inf, 0.0))
    for v in kernels.VERSIONS["softmax_forward"]:
        probs, cache = kernels.softmax_forward(scores, mask, version=v)
        for b in kernels.VERSIONS["softmax_backward"]:
            kernels.softmax_backward(dev(np.ones(scores.shape)), cache, version=b)
            launched += 2
for C, rows in [(1, 1), (129, 9), (771, 2)]:
    x, g, b = dev(r.standard_normal((rows, C))), dev(np.ones(C)), dev(np.zeros(C))
    for v in kernels.VERSIONS["layernorm_forward"]:
        out, cache = kernels.layernorm_forward(x, g, b, version=v)
        for bv in kernels.VERSIONS["layernorm_backward"]:
            for pv in kernels.VERSIONS["layernorm_param_grad"]:
                kernels.layernorm_backward(dev(r.standard_normal((rows, C))), cache, version=bv, param_version=pv)
                launched += 3
for n in (1, 3, 4, 5, 4097):
    for v in kernels.VERSIONS["gelu"]:
        x = dev(r.standard_normal(n + 1))[1:]        # 4 bytes past an aligned start
        out, cache = kernels.gelu_forward(x, version=v)
        kernels.gelu_backward(dev(np.ones(n)), cache, version=v)
        p, grad, m, s = dev(np.ones(n)), dev(np.ones(n)), dev(np.zeros(n)), dev(np.zeros(n))
        kernels.adamw_step(p, grad, m, s, lr=1e-3, step=1, weight_decay=0.01, version=v)
        launched += 3
for N, V in [(1, 1), (3, 1003), (5, 30522)]:
    logits = dev(r.standard_normal((N, V)))
    targets = backend.to_device(np.where(np.arange(N) % 2 == 1, -100, np.arange(N) % V))
    for v in kernels.VERSIONS["cross_entropy_forward"]:
        loss, cache = kernels.cross_entropy_forward(logits, targets, check_range=False, version=v)
        for b in kernels.VERSIONS["cross_entropy_backward"]:
            kernels.cross_entropy_backward(loss, cache, version=b)
            launched += 2
for n in (1, 15, 17, 4097):
    for dtype in (np.float32, np.float64):
        x = backend.to_device(r.standard_normal(n).astype(dtype))
        out, cache = ops.dropout_forward(x, 0.1, rng=(1, 2, 3))
        ops.dropout_backward(x, cache)
        launched += 2
backend.synchronize()
print(f"{launched} launches on edge shapes, every kernel and version: done")
PYEOF
if wanted sanitizer; then
    if ((DRY_RUN)); then
        run_stage sanitizer 120 "$OUT/sanitizer.txt" "$PY" "$WORK/edges.py" --strict
    elif have compute-sanitizer; then
        for tool in memcheck racecheck; do
            run_stage "$tool" 80 "$OUT/sanitizer.txt" compute-sanitizer --tool "$tool" --error-exitcode 1 \
                --print-limit 30 "$PY" "$WORK/edges.py"
        done
    else
        note sanitizer "skipped: compute-sanitizer not found (looked on PATH)"
        echo "compute-sanitizer not found on PATH" > "$OUT/sanitizer.txt"
    fi
fi

# ------------------------------------------------------------------------------------ 5 dropout, 6 kernels, 7 step
if wanted dropout; then
    if ((DRY_RUN)); then
        run_stage dropout 90 "$OUT/dropout.txt" "$PY" benchmarks/bench_dropout.py --rounds 3
    else
        run_stage dropout 60 "$OUT/dropout.txt" "$PY" benchmarks/bench_dropout.py --backend cupy \
            --json "$WORK/dropout.json"
        [[ -f "$WORK/dropout.json" ]] && cat "$WORK/dropout.json" >> "$OUT/dropout.txt"
    fi
fi
REQUIRE_GPU="--require-gpu"                 # on the GPU machine "no GPU" is a failure, not a skip
((DRY_RUN)) && REQUIRE_GPU=""
if wanted kernels; then
    # shellcheck disable=SC2086  # REQUIRE_GPU is empty or one word
    run_stage kernels 90 "$OUT/kernels.txt" "$PY" benchmarks/bench_gpu.py $REQUIRE_GPU --json "$WORK/kernels.json"
    [[ -f "$WORK/kernels.json" ]] && cat "$WORK/kernels.json" >> "$OUT/kernels.txt"
fi
if wanted step; then
    TORCH_FLAG=""
    if "$PY" -c "import torch, transformers; assert torch.cuda.is_available()" > /dev/null 2>&1; then
        TORCH_FLAG="--torch"
    else
        note step "PyTorch eager not timed: torch, transformers or torch.cuda missing"
    fi
    # shellcheck disable=SC2086  # TORCH_FLAG and REQUIRE_GPU are empty or one word
    run_stage step 120 "$OUT/step.txt" "$PY" benchmarks/bench_gpu.py $REQUIRE_GPU --no-kernels --step $TORCH_FLAG \
        --preset base --batch 32 --seq 128 --steps 10 --warmup 3 --json "$WORK/step.json"
    [[ -f "$WORK/step.json" ]] && cat "$WORK/step.json" >> "$OUT/step.txt"
fi

# ------------------------------------------------------------------------------------ 8 the suite on CuPy
if wanted suite; then
    if ((DRY_RUN)); then
        run_stage suite "$(left)" "$OUT/suite_cupy.txt" env BERTNP_TEST_BACKEND=strict \
            "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py
    else
        WORKERS=""
        "$PY" -c "import xdist" > /dev/null 2>&1 && WORKERS="-n 4"
        # shellcheck disable=SC2086  # WORKERS is empty or two words
        run_stage suite "$(left)" "$OUT/suite_cupy.txt" env BERTNP_TEST_BACKEND=cupy \
            "$PY" -m pytest -q -rfE -p no:cacheprovider $WORKERS --durations=15 tests
    fi
fi

echo "total $(elapsed)s of a ${BUDGET}s budget" >> "$SUMMARY"
cat "$SUMMARY"
