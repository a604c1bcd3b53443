"""bertnp.parallel: the thread count follows the environment, the pool runs every block once (and
keeps going when a thread is slow), and every threaded operation gives the same bits as the
single-threaded one -- the blocks depend on the sizes only, never on the number of threads."""
import threading
import time

import numpy as np
import pytest

import bertnp as bn
from bertnp import parallel
from bertnp.ops import (attention_backward, attention_forward, cross_entropy_backward, cross_entropy_forward,
                        gelu_backward, gelu_forward, layernorm_backward, layernorm_forward, linear_backward,
                        linear_forward, softmax_backward, softmax_forward)
from bertnp.ops import losses
from bertnp.ops.activations import _gelu
from bertnp.ops.layernorm import _layernorm_forward_rows
from bertnp.optim import AdamW
from conftest import on_numpy


@pytest.fixture(autouse=True)
def _numpy_backend():
    """The pool blocks and threads only the NumPy backend's arrays (parallel._threaded_backend); on a
    device backend every body runs once on the whole array. So these tests run on NumPy whatever the
    test backend; the ops' device paths are tested by the rest of the suite."""
    with on_numpy():
        yield


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 512 elements and GEMMs split from 2 kFLOP: small arrays take the threaded paths."""
    monkeypatch.setattr(parallel, "BLOCK_ELEMENTS", 512)
    monkeypatch.setattr(parallel, "MATMUL_MIN_FLOPS", 2000)
    monkeypatch.setattr(losses, "_ROWS_BLOCK", 512)


# ----------------------------------------------------------------------------- the thread count

@pytest.mark.parametrize("env, expected", [
    ({"OPENBLAS_NUM_THREADS": "3", "OMP_NUM_THREADS": "5"}, 3),   # OpenBLAS's own setting first
    ({"OMP_NUM_THREADS": "4,2"}, 4),                              # an OpenMP list: the outer level
    ({"OPENBLAS_NUM_THREADS": "lots", "OMP_NUM_THREADS": "2"}, 2),  # not a number: ignored
    ({"OPENBLAS_NUM_THREADS": "1"}, 1),                           # make test's workers
])
def test_thread_count_follows_the_environment(monkeypatch, env, expected):
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    with parallel.threads(None):                                  # None: read the environment again
        assert parallel.num_threads() == expected


def test_thread_count_without_settings_is_the_cpus_this_process_may_use(monkeypatch):
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    with parallel.threads(None):
        assert parallel.num_threads() == len(__import__("os").sched_getaffinity(0))


def test_set_num_threads_rejects_nonsense():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="count"):
            parallel.set_num_threads(bad)


def test_one_thread_starts_no_thread(small_blocks):
    x = np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32)
    with parallel.threads(1):
        before = {t.ident for t in threading.enumerate()}
        seen = []
        parallel.run(lambda i: seen.append(threading.get_ident()), 8)
        layernorm_forward(x, np.ones(40, np.float32), np.zeros(40, np.float32))
        assert set(seen) == {threading.get_ident()}
        assert {t.ident for t in threading.enumerate()} == before


# ----------------------------------------------------------------------------- the pool

def test_run_calls_every_index_once_on_two_threads():
    calls, lock = [], threading.Lock()
    both_running = threading.Event()

    def fn(i):
        with lock:
            calls.append((i, threading.get_ident()))
        if i == 0:      # index 0 waits for index 1: possible only if two threads run at once
            assert both_running.wait(30), "index 1 never ran beside index 0"
        if i == 1:
            both_running.set()

    with parallel.threads(2):
        parallel.run(fn, 16)
    assert sorted(i for i, _ in calls) == list(range(16))
    assert len({ident for _, ident in calls}) == 2


def test_a_slow_thread_does_not_hold_the_others_back():
    """A busy machine: the pool thread is made slow (as if the OS gave its core to another job);
    the caller takes the remaining blocks instead of waiting for a fixed half to be done."""
    caller = threading.get_ident()
    ran_by = {}

    def fn(i):
        ran_by[i] = threading.get_ident()
        time.sleep(0.002 if threading.get_ident() == caller else 0.5)

    with parallel.threads(2):
        start = time.perf_counter()
        parallel.run(fn, 40)
        elapsed = time.perf_counter() - start
    assert sorted(ran_by) == list(range(40))
    assert sum(ident == caller for ident in ran_by.values()) >= 38
    assert elapsed < 0.5 + 40 * 0.002 + 0.5          # a static half each would take 20 x 0.5 s


def test_errors_reach_the_caller_and_nested_calls_run_inline():
    def fails(i):
        if i == 3:
            raise KeyError("block 3")
    with parallel.threads(2):
        with pytest.raises(KeyError, match="block 3"):
            parallel.run(fails, 8)
        inner = []
        parallel.run(lambda i: parallel.run(lambda j: inner.append((i, j)), 3), 4)
    assert sorted(inner) == [(i, j) for i in range(4) for j in range(3)]


def test_map_rows_puts_the_blocks_back_together():
    rows = np.arange(10 * 3, dtype=np.float64).reshape(10, 3)
    weights = np.array([1.0, 2.0, 3.0])

    def body(x, scale):
        return x * scale, x.sum(axis=1), x.sum(axis=0)            # rows, rows, a partial sum
    for threads in (1, 2):
        with parallel.threads(threads):
            scaled, row_sums, col_sums = parallel.map_rows(body, (rows,), weights, sums=1, block=6)
        np.testing.assert_array_equal(scaled, rows * weights)
        np.testing.assert_array_equal(row_sums, rows.sum(axis=1))
        np.testing.assert_array_equal(col_sums, rows.sum(axis=0))
    # a broadcast array (length-1 axis 0) goes whole to every block; None passes through
    mask = np.array([[0.0, 1.0, 2.0]])
    out = parallel.map_rows(lambda x, m, none: x + m if none is None else None, (rows, mask, None), block=6)
    np.testing.assert_array_equal(out, rows + mask)
    with pytest.raises(ValueError, match="output 0 of .* has shape"):
        parallel.map_rows(lambda x: x.sum(axis=0), (rows,), block=6)   # a sum, not declared as one


def test_matmul_leaves_blas_threads_as_they_were(small_blocks):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 32)), rng.standard_normal((32, 48))
    with parallel.threads(2):
        np.testing.assert_allclose(parallel.matmul(a, b), a @ b, rtol=1e-13)
    after = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    assert after == before


@pytest.mark.parametrize("shape_a, shape_b", [((96, 32), (32, 40)),      # 2-D: OpenBLAS's threads
                                              ((24, 32), (32, 200)),     # 2-D, more columns than rows
                                              ((5, 3, 16, 8), (5, 3, 8, 16))])   # a stack: axis 0 split
def test_matmul_and_bias_give_a_at_b_plus_bias(small_blocks, shape_a, shape_b):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    bias = rng.standard_normal(shape_b[-1])
    with parallel.threads(2):
        np.testing.assert_allclose(parallel.matmul(a, b), a @ b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(parallel.matmul(a, b, bias), a @ b + bias, rtol=1e-12, atol=1e-12)
    with parallel.threads(1):
        one = parallel.matmul(a, b, bias)
    with parallel.threads(2):
        two = parallel.matmul(a, b, bias)
    if len(shape_a) > 2:     # a stack is sliced by the pool: the same bits for any thread count
        np.testing.assert_array_equal(two, one)
    else:                    # OpenBLAS may block a long sum differently for another thread count
        np.testing.assert_allclose(two, one, rtol=1e-13, atol=1e-13)


def test_a_2d_product_runs_on_as_many_blas_threads_as_the_pool(monkeypatch):
    pytest.importorskip("threadpoolctl")
    seen = []

    class RecordingNumpy:            # parallel's numpy, with a matmul that notes BLAS's thread count
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def matmul(*args, **kwargs):
            seen.append({lib.get_num_threads() for lib in parallel._blas_controllers()})   # NumPy's BLAS
            return np.matmul(*args, **kwargs)

    monkeypatch.setattr(parallel, "np", RecordingNumpy())
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 30)), rng.standard_normal((30, 20))
    for count in (1, 3):
        seen.clear()
        with parallel.threads(count):
            np.testing.assert_allclose(parallel.matmul(a, b), a @ b, rtol=1e-13)
        assert seen == [{count}], f"{count} threads asked, BLAS ran with {seen}"


_IDLE_CPU = """
import os, resource, time
import numpy as np
{setup}
a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
for _ in range(3):
    a @ a                                          # on OpenBLAS's 2 threads
before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
time.sleep(0.3)                                    # nothing to do: do OpenBLAS's threads spin?
print(resource.getrusage(resource.RUSAGE_SELF).ru_utime - before, os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
"""


def _idle_cpu(setup: str, timeout=None) -> tuple:
    import os
    import subprocess
    import sys
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2")
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    if timeout is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = timeout
    out = subprocess.run([sys.executable, "-c", _IDLE_CPU.format(setup=setup)], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    return float(out[0]), out[1]


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="OpenBLAS starts no thread on one CPU")
def test_importing_bertnp_stops_openblas_threads_spinning_after_a_product():
    """OpenBLAS's idle threads spin ~0.1 s after each threaded call, taking a core from the pool's
    elementwise work; importing bertnp (after NumPy, as a notebook does) makes them sleep at once.
    A user's own OPENBLAS_THREAD_TIMEOUT is left as it is."""
    # measured on an idle 2-core machine: 0.10 s, 0.0001 s, 0.10 s; the bounds leave room for a busy one
    spun, _ = _idle_cpu("")                                        # NumPy alone: the spin
    assert spun > 0.02, f"expected OpenBLAS to spin after a product, it used {spun:.3f} s of CPU idle"
    slept, timeout = _idle_cpu("import bertnp")
    assert timeout == str(parallel.BLAS_SPIN_EXPONENT)
    assert slept < 0.01, f"OpenBLAS's threads still used {slept:.3f} s of CPU while idle"
    kept, timeout = _idle_cpu("import bertnp", timeout="28")
    assert timeout == "28" and kept > 0.02, f"the user's timeout 28 was not kept ({kept:.3f} s idle CPU)"


# ----------------------------------------------------------------------------- threaded ops == one thread

def _assert_same(a, b):
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif hasattr(a, "_fields"):
        _assert_same(tuple(a), tuple(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_ops_equal_single_threaded_bit_for_bit(small_blocks, dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 20, 48)).astype(dtype) * 3
    dout = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta = rng.standard_normal(48).astype(dtype), rng.standard_normal(48).astype(dtype)

    def gelu():
        out, cache = gelu_forward(x)
        return out, gelu_backward(dout, cache)

    def layernorm():
        out, cache = layernorm_forward(x, gamma, beta)
        return out, layernorm_backward(dout, cache)

    scores = rng.standard_normal((6, 4, 20, 20)).astype(dtype)
    mask = np.where(rng.random((6, 1, 1, 20)) < 0.2, np.finfo(dtype).min, 0).astype(dtype)

    def softmax():
        probs, cache = softmax_forward(scores, mask)
        return probs, softmax_backward(scores, cache)

    logits = rng.standard_normal((40, 70)).astype(dtype)
    targets = rng.integers(0, 70, 40)
    targets[::7] = -100

    def cross_entropy():
        loss, cache = cross_entropy_forward(logits, targets)
        return loss, cross_entropy_backward(dtype(1.0), cache)

    weight, bias = rng.standard_normal((36, 48)).astype(dtype), rng.standard_normal(36).astype(dtype)

    def linear():
        out, cache = linear_forward(x, weight, bias)
        return out, linear_backward(rng.standard_normal(out.shape).astype(dtype), cache)

    ws = [rng.standard_normal((48, 48)).astype(dtype) * 0.2 for _ in range(3)]
    bs = [rng.standard_normal(48).astype(dtype) for _ in range(3)]

    def attention():
        out, cache = attention_forward(x, ws[0], bs[0], ws[1], bs[1], ws[2], bs[2], num_heads=4,
                                       additive_mask=mask, dropout_p=0.1, rng=3, training=True)
        return out, attention_backward(dout, cache)

    for fn in (gelu, layernorm, softmax, cross_entropy, linear, attention):
        results = []
        for threads in (1, 2):
            rng = np.random.default_rng(11)      # the same upstream gradient for linear in both runs
            with parallel.threads(threads):
                results.append(fn())
        _assert_same(*results)


def test_blocked_ops_equal_the_whole_array_math(small_blocks):
    """Blocking changes no number an elementwise or row-wise op computes (the parameter gradients
    are partial sums added in block order: equal to rounding)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 20, 48)) * 3
    dout = rng.standard_normal(x.shape)
    gamma, beta = rng.standard_normal(48), rng.standard_normal(48)
    with parallel.threads(2):
        out, cache = layernorm_forward(x, gamma, beta)
        dx, dgamma, dbeta = layernorm_backward(dout, cache)
        g_out, g_cache = gelu_forward(x.astype(np.float32))
    whole_out, whole_xhat, _ = _layernorm_forward_rows(x.reshape(-1, 48), gamma, beta, 1e-12)
    np.testing.assert_array_equal(out.reshape(-1, 48), whole_out)
    np.testing.assert_array_equal(cache.xhat.reshape(-1, 48), whole_xhat)
    np.testing.assert_allclose(dgamma, (dout * cache.xhat).reshape(-1, 48).sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(dbeta, dout.reshape(-1, 48).sum(axis=0), rtol=1e-13)
    np.testing.assert_array_equal(g_out, _gelu(x.astype(np.float32), "none")[0])


def test_adamw_and_a_model_step_are_the_same_for_any_thread_count(small_blocks, monkeypatch):
    monkeypatch.setattr(AdamW, "BLOCK", 100)
    cfg = bn.BertConfig.preset("tiny", vocab_size=120)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 120, (3, 12))
    labels = np.full_like(ids, -100)
    labels[:, 3:6] = ids[:, 3:6]
    results = []
    for threads in (1, 2):
        with parallel.threads(threads):
            model = bn.BertForPreTraining(cfg, seed=0, dtype="float32")
            opt = AdamW(model, lr=1e-2)
            for _ in range(2):
                model.zero_grad()
                out = model(input_ids=ids, labels=labels, next_sentence_label=np.array([0, 1, 0]))
                model.backward()
                opt.step()
            results.append((float(out.loss), {n: p.copy() for n, p in model.parameters().items()}))
    assert results[0][0] == results[1][0]
    for name, value in results[0][1].items():
        np.testing.assert_array_equal(value, results[1][1][name], err_msg=name)


def test_matmul_writes_into_out_views_and_refuses_a_wrong_out(small_blocks):
    """out= takes a view (the attention writes its heads side by side through one): the product lands
    there, the same numbers as a @ b; an out of the wrong shape or dtype is refused by name."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((4, 3, 10, 8)), rng.standard_normal((4, 3, 8, 6))
    side_by_side = np.zeros((4, 10, 3, 6))                          # (B, T, nh, hs)
    with parallel.threads(2):
        result = parallel.matmul(a, b, out=side_by_side.transpose(0, 2, 1, 3))
        np.testing.assert_allclose(side_by_side.transpose(0, 2, 1, 3), a @ b, rtol=1e-12, atol=1e-12)
        assert np.shares_memory(result, side_by_side)
        flat = np.zeros((10, 6))
        parallel.matmul(a[0, 0], b[0, 0], out=flat)
        np.testing.assert_allclose(flat, a[0, 0] @ b[0, 0], rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="out has shape"):
            parallel.matmul(a, b, out=np.zeros((4, 3, 10, 7)))
        with pytest.raises(ValueError, match="out has shape .* dtype float32"):
            parallel.matmul(a, b, out=np.zeros((4, 3, 10, 6), dtype=np.float32))


def test_dropout_drawn_block_by_block_is_the_whole_mask(small_blocks):
    """The CPU draws a dropout mask in blocks, on every core, each block starting its Philox stream at
    its first element; the mask must be the one drawn whole (the GPU kernel draws the same bits)."""
    from bertnp import backend
    from bertnp.ops.dropout import drop_threshold, dropout_forward
    x = np.random.default_rng(5).standard_normal((3, 7, 333)).astype(np.float32)   # 6993: not a multiple of 16
    whole = backend.philox_bits16(x.shape, 9, 4, 2) >= drop_threshold(0.25)
    np.testing.assert_array_equal(backend.philox_bits16((32,), 9, 4, 2, start=1024),
                                  backend.philox_bits16((1056,), 9, 4, 2)[1024:])
    for threads in (1, 2):
        with parallel.threads(threads):
            out, cache = dropout_forward(x, 0.25, (9, 4, 2), training=True)
        np.testing.assert_array_equal(cache.mask, whole)
        np.testing.assert_array_equal(out, np.where(whole, x * np.float32(1 / 0.75), 0))
    for start in (8, 1000, 1041):         # any element: the slice of the whole stream from there
        np.testing.assert_array_equal(backend.philox_bits16((37,), 9, 4, 2, start=start),
                                      backend.philox_bits16((start + 37,), 9, 4, 2)[start:])
    for bad in (-16, 2.0, True):
        with pytest.raises(ValueError, match="start must be a non-negative integer"):
            backend.philox_bits16((4,), 9, 4, 2, start=bad)
