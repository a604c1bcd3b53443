"""The backend: selection, errors, host/device moves -- and the proof that the operations and the
model never call NumPy directly on model arrays, so the CuPy path cannot silently break on a
CPU-only machine (run under a strict stand-in for CuPy, and a lint over the source)."""
import ast
from pathlib import Path

import numpy as np
import pytest

import bertnp as bn
from bertnp import backend
from bertnp import ops
from conftest import on_numpy
from strict_xp import STRICT, StrictArray

PACKAGE = Path(bn.__file__).parent


# ----------------------------------------------------------------------------- selection

def test_set_and_get_backend():
    bn.set_backend("numpy")
    assert bn.get_backend() == "numpy" and backend.xp() is np
    with pytest.raises(ValueError, match="unknown backend 'torch'"):
        bn.set_backend("torch")
    with pytest.raises(TypeError, match="backend name"):
        bn.set_backend(3)
    assert bn.get_backend() == "numpy"


def test_cupy_request_without_gpu_says_what_is_missing():
    if backend.is_available("cupy"):
        pytest.skip("a GPU is available here: the missing-CuPy error cannot be shown")
    before = bn.get_backend()
    with pytest.raises(RuntimeError, match="(CuPy|cupy|GPU|CUDA)"):
        bn.set_backend("cupy")
    assert bn.get_backend() == before


def test_environment_variable_selects_backend(monkeypatch):
    monkeypatch.setenv("BERTNP_BACKEND", "numpy")
    backend.default_backend_from_env()
    assert bn.get_backend() == "numpy"
    monkeypatch.setenv("BERTNP_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        backend.default_backend_from_env()


def test_host_device_helpers():
    a = np.arange(6.0).reshape(2, 3)
    with on_numpy():
        assert backend.to_device(a) is a                   # NumPy on NumPy: no copy
    assert backend.to_host(a) is a
    with backend.using(STRICT, "strict"):
        d = backend.to_device(a)
        assert isinstance(d, StrictArray) and backend.is_device_array(d)
        h = backend.to_host(d)
        assert type(h) is np.ndarray and np.array_equal(h, a)


def test_scatter_add_handles_repeated_indices():
    target = np.zeros((3, 2))
    backend.scatter_add(target, np.array([0, 2, 0]), np.ones((3, 2)))
    np.testing.assert_array_equal(target[:, 0], [2, 0, 1])


def test_philox_bits_are_numpys_philox_stream():
    """philox_bits16 is NumPy's Philox4x64-10 with key (seed, 0) and counter (0, 0, step, site):
    element e is 16-bit piece e % 4 (low bits first) of raw word e // 4. Checked here against the
    generator's raw words (and in test_kernels against a transcription of the CUDA kernel)."""
    words = np.random.Philox(counter=[0, 0, 2, 3], key=[1, 0]).random_raw(3)
    pieces = [(int(w) >> (16 * k)) & 0xFFFF for w in words for k in range(4)]
    got = backend.philox_bits16((2, 5), 1, 2, 3)
    assert got.dtype == np.uint16 and got.shape == (2, 5)
    assert got.reshape(-1).tolist() == pieces[:10]
    assert not np.array_equal(got, backend.philox_bits16((2, 5), 1, 2, 4))


# ----------------------------------------------------------------------------- the CuPy start-up check

class _FakeArray(np.ndarray):
    """A host array whose arithmetic fails like a CuPy whose own kernels cannot be compiled."""
    error = None

    def __add__(self, other):
        raise self.error


def _fake_cupy(devices=1, count_error=None, kernel_error=None, op_error=None, wrong=False):
    """Just enough of CuPy's surface for backend._import_cupy: a device count, RawKernel, zeros."""
    import types

    def raw_kernel(source, name):
        assert "bertnp_probe" in source and name == "bertnp_probe"
        if kernel_error is not None:
            raise kernel_error

        def launch(grid, block, args):
            out, n = args
            assert type(n) is np.int32 and grid == (1,) and block == (4,)
            out[:] = 2.0 * np.arange(int(n)) + (1.0 if wrong else 0.0)
        return launch

    def zeros(n, dtype):
        array = np.zeros(n, dtype=dtype)
        if op_error is not None:
            array = array.view(_FakeArray)
            _FakeArray.error = op_error
        return array

    def device_count():
        if count_error is not None:
            raise count_error
        return devices
    runtime = types.SimpleNamespace(getDeviceCount=device_count)
    return types.SimpleNamespace(__version__="14.2.0", float32=np.float32, RawKernel=raw_kernel,
                                 zeros=zeros, asnumpy=np.asarray, cuda=types.SimpleNamespace(runtime=runtime))


def _start_with(monkeypatch, fake):
    import sys
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_cupy", None)
    return backend._import_cupy


CUPY_FAILURES = [
    # (what CuPy raises, where, words the message must contain)
    (RuntimeError("nvrtc: error: failed to open libnvrtc-builtins.so.13.0. Make sure that "
                  "libnvrtc-builtins.so.13.0 is installed correctly."), "kernel",
     ["libnvrtc-builtins", "LD_LIBRARY_PATH"]),
    (RuntimeError("catastrophic error: cannot open source file \"cuda_fp16.h\""), "op",
     ["CUDA headers", "cupy-cuda12x[ctk]", "cupy-cuda13x[ctk]"]),
    (RuntimeError("Failed to find CUDA headers"), "op", ["CUDA headers", "bertnp[gpu]"]),
    (OSError("libnvrtc.so.12: cannot open shared object file: No such file or directory"), "kernel",
     ["NVRTC", "bertnp[gpu]"]),
    (RuntimeError("cudaErrorUnsupportedPtxVersion: the provided PTX was compiled with an unsupported "
                  "toolchain."), "kernel", ["driver"]),
    (ValueError("something else entirely"), "kernel", ["not recognised", "something else entirely"]),
]


@pytest.mark.parametrize("error,where,words", CUPY_FAILURES)
def test_cupy_start_names_the_cause_of_a_failed_kernel(monkeypatch, error, where, words):
    """set_backend('cupy') compiles and runs a one-line kernel and one of CuPy's own: a broken
    NVRTC, missing headers or an old driver fail there, with the cause and the fix named."""
    start = _start_with(monkeypatch, _fake_cupy(**{f"{where}_error": error}))
    with pytest.raises(RuntimeError) as info:
        start()
    message = str(info.value)
    assert "one-line kernel failed" in message and "CuPy 14.2.0" in message
    for word in words:
        assert word in message, (word, message)
    assert backend._cupy is None and bn.get_backend() != "cupy"


def test_cupy_start_reports_missing_gpu_driver_and_wrong_answers(monkeypatch):
    start = _start_with(monkeypatch, _fake_cupy(devices=0))
    with pytest.raises(RuntimeError, match="none was found"):
        start()
    start = _start_with(monkeypatch, _fake_cupy(count_error=RuntimeError("cudaErrorNoDevice")))
    with pytest.raises(RuntimeError, match="working CUDA driver.*cudaErrorNoDevice"):
        start()
    start = _start_with(monkeypatch, _fake_cupy(wrong=True))
    with pytest.raises(RuntimeError, match="expected"):
        start()


def test_cupy_start_succeeds_when_the_probe_runs(monkeypatch):
    fake = _fake_cupy()
    _start_with(monkeypatch, fake)
    bn.set_backend("cupy")
    try:
        assert bn.get_backend() == "cupy" and backend.xp() is fake and backend._import_cupy() is fake
    finally:
        bn.set_backend("numpy")


# ----------------------------------------------------------------------------- the strict stand-in works

def test_strict_stand_in_catches_direct_numpy_calls():
    with backend.using(STRICT, "strict"):
        x = STRICT.ones((2, 3))
        with pytest.raises(TypeError, match="called directly"):
            np.sum(x)
        with pytest.raises(TypeError, match="mix a device array with a host"):
            x + np.ones(3)
        with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
            x[0] = np.ones(3)
        x[0] = STRICT.ones(3)                               # device into device, or a scalar: fine
        x[1, 0] = np.float64(2.0)
        assert isinstance(STRICT.exp(x) + 1.0, StrictArray)
        assert isinstance(x.sum(), StrictArray)             # reductions stay on the "device"


# ----------------------------------------------------------------------------- ops and model under the stand-in

def _strict(array):
    return STRICT.asarray(array)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_op_runs_forward_and_backward_on_strict_arrays(dtype):
    """float32 takes GELU's fitted-tanh path, float64 the exact erf (backend.erf): both are run."""
    r = np.random.default_rng(0)
    with backend.using(STRICT, "strict"):
        S = lambda *shape: _strict(r.standard_normal(shape).astype(dtype))  # noqa: E731
        x = S(2, 5, 6)
        cases = [
            (ops.linear_forward, ops.linear_backward, (x, S(4, 6), S(4)), {}),
            (ops.layernorm_forward, ops.layernorm_backward, (x, S(6), S(6)), dict(eps=1e-12)),
            (ops.gelu_forward, ops.gelu_backward, (x,), {}),
            (ops.gelu_forward, ops.gelu_backward, (x,), dict(approximate="tanh")),
            (ops.tanh_forward, ops.tanh_backward, (x,), {}),
            (ops.relu_forward, ops.relu_backward, (x,), {}),
            (ops.softmax_forward, ops.softmax_backward, (x, _strict(np.zeros((2, 1, 6), dtype))), {}),
            (ops.dropout_forward, ops.dropout_backward, (x, 0.1), dict(rng=3)),
            (ops.embedding_forward, ops.embedding_backward, (_strict(np.array([[0, 3, 3]])), S(4, 6)), {}),
            (ops.attention_forward, ops.attention_backward,
             (x, S(6, 6), S(6), S(6, 6), S(6), S(6, 6), S(6), 2),
             dict(additive_mask=_strict(np.zeros((2, 1, 1, 5), dtype)), dropout_p=0.1, rng=1, training=True)),
        ]
        for forward, backward_fn, args, kwargs in cases:
            out, cache = forward(*args, **kwargs)
            assert isinstance(out, StrictArray), forward.__name__
            grads = backward_fn(_strict(np.ones(out.shape, dtype)), cache)
            grads = grads if isinstance(grads, tuple) else (grads,)
            for g in grads:
                assert g is None or isinstance(g, StrictArray), forward.__name__
        for check_range in (True, False):      # the range check reads the targets on the "device"
            loss, cache = ops.cross_entropy_forward(S(4, 7), _strict(np.array([1, -100, 6, 0])),
                                                    check_range=check_range)
            assert isinstance(loss, StrictArray)
            assert isinstance(ops.cross_entropy_backward(_strict(dtype(1.0)), cache), StrictArray)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_and_optimizer_run_on_strict_arrays(dtype):
    """The whole training step -- model forward with dropout, backward, AdamW -- never touches
    NumPy directly with model arrays."""
    cfg = bn.BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=10)
    r = np.random.default_rng(0)
    batch = dict(input_ids=r.integers(1, 40, (2, 6)), attention_mask=np.array([[1] * 6, [1] * 4 + [0] * 2]),
                 token_type_ids=np.zeros((2, 6), dtype=int),
                 labels=np.where(r.random((2, 6)) < 0.4, r.integers(1, 40, (2, 6)), -100),
                 next_sentence_label=np.array([0, 1]))
    with backend.using(STRICT, "strict"):
        model = bn.BertForPreTraining(cfg, seed=0, dtype=dtype).train()
        assert all(isinstance(p, StrictArray) for p in model.parameters().values())
        out = model(**batch)
        assert isinstance(out.loss, StrictArray) and np.isfinite(float(out.loss))
        grads = model.backward()
        assert all(isinstance(g, StrictArray) for g in grads.values())
        opt = bn.AdamW(model, lr=1e-3)
        opt.step()
        model.zero_grad()
        assert all(isinstance(p, StrictArray) for p in model.parameters().values())
        clf = bn.BertForSequenceClassification(cfg, num_labels=3, seed=0, dtype=dtype)
        o = clf(input_ids=batch["input_ids"], labels=np.array([0, 2]))
        clf.backward()
        assert isinstance(o.logits, StrictArray)
        enc = bn.BertModel(cfg, seed=0, dtype=dtype)           # the bare encoder's own backward
        h = enc(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        grads = enc.backward(dlast_hidden_state=STRICT.ones(h.last_hidden_state.shape, dtype=dtype),
                             dpooler_output=STRICT.ones(h.pooler_output.shape, dtype=dtype))
        assert all(isinstance(g, StrictArray) for g in grads.values())


# ----------------------------------------------------------------------------- lint

def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_ops_never_import_numpy_or_scipy():
    """Operations get their array module from bertnp.backend, never NumPy itself."""
    for path in sorted((PACKAGE / "ops").glob("*.py")):
        for module in _imports(path):
            assert module.split(".")[0] not in ("numpy", "scipy", "cupy", "cupyx"), \
                f"{path.name} imports {module}: use bertnp.backend.xp() instead"


def test_only_backend_imports_cupy():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "backend.py":
            continue
        for module in _imports(path):
            assert module.split(".")[0] not in ("cupy", "cupyx"), f"{path} imports {module}"


def test_import_needs_only_the_core_dependencies():
    """`import bertnp` (and building a model) must not pull in matplotlib, torch or cupy."""
    import subprocess
    import sys
    code = ("import sys, numpy as np, bertnp as bn\n"
            "m = bn.BertForPreTraining(bn.BertConfig.preset('tiny', vocab_size=50))\n"
            "m(input_ids=np.ones((1, 4), dtype=int))\n"
            "heavy = {'matplotlib', 'torch', 'cupy', 'cupyx', 'transformers', 'pandas', 'IPython'}\n"
            "print(sorted({k.split('.')[0] for k in sys.modules} & heavy))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_retained_host_memory_is_reused_without_page_faults():
    """After retain_freed_host_memory() a large array freed and allocated again comes back from the
    heap, not from the OS: no page faults. Without it glibc maps every block above 32 MB afresh
    (measured here: ~2,800 faults for these five 40 MB arrays)."""
    import resource
    import sys
    if not sys.platform.startswith("linux"):
        pytest.skip("the minor-fault count of getrusage is Linux's")
    if not backend.retain_freed_host_memory():
        pytest.skip("the C library is not glibc: nothing to retain")
    assert backend.retain_freed_host_memory() is True          # idempotent
    n = 10_000_000                                              # 40 MB of float32
    del_me = np.ones(n, dtype=np.float32)
    del del_me
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        a = np.ones(n, dtype=np.float32)
        del a
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 500, f"{faults} page faults for 5 reallocations of 40 MB"


def test_retained_host_memory_is_reused_by_other_threads_too():
    """A thread that allocates and frees a step's worth of activations, again and again (a share
    of bertnp.cores), reuses the retained memory: glibc's per-thread arenas (heaps of at most 64 MB,
    unmapped when they empty) would fault them back in every time. A fresh process, so that the
    setting comes before any thread has an arena."""
    import subprocess
    import sys
    if not sys.platform.startswith("linux"):
        pytest.skip("the minor-fault count of getrusage is Linux's")
    code = ("import resource, threading, numpy as np\n"
            "from bertnp import backend\n"
            "if not backend.retain_freed_host_memory(): print('skip'); raise SystemExit\n"
            "def step():\n"
            "    arrays = [np.ones(3_000_000 + 1000 * i, dtype=np.float32) for i in range(30)]   # 12 MB each\n"
            "    del arrays\n"
            "faults = []\n"
            "def worker():\n"
            "    step()\n"
            "    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt\n"
            "    for _ in range(5):\n"
            "        step()\n"
            "    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)\n"
            "t = threading.Thread(target=worker); t.start(); t.join()\n"
            "print(faults[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    if out == "skip":
        pytest.skip("the C library is not glibc: nothing to retain")
    assert int(out) < 1000, f"{out} page faults for 5 re-allocations of 360 MB in a thread"
