"""NumPy vs CuPy, float32: every operation, the model and a training step give the same numbers
on the GPU as on the CPU, |x - ref| <= atol + rtol |ref| with rtol 1e-5 (atol per check below).
Skipped, with the reason, where CuPy or a GPU is missing."""
import numpy as np
import pytest

import bertnp as bn
from bertnp import backend, ops
from conftest import cupy_or_skip

pytestmark = pytest.mark.gpu
RTOL = 1e-5


def _run_both(fn, host_args):
    """fn(*args) on NumPy arrays, then on CuPy copies; returns (numpy_result, cupy_result_on_host)."""
    bn.set_backend("numpy")
    ref = fn(*host_args)
    cupy_or_skip()
    try:
        dev = fn(*[backend.to_device(a) if isinstance(a, np.ndarray) else a for a in host_args])
        dev = [None if d is None else backend.to_host(d) for d in dev]
    finally:
        bn.set_backend("numpy")
    return ref, dev


def _assert_close(ref, got, atol, what):
    for i, (r, g) in enumerate(zip(ref, got)):
        if r is None:
            continue
        r = np.asarray(r)
        assert g.shape == r.shape, f"{what}[{i}] shape"
        bad = np.abs(g - r) > atol + RTOL * np.abs(r)
        assert not bad.any(), f"{what}[{i}]: max diff {np.abs(g - r).max()}"


def _pair(forward, backward_fn, **params):
    def fn(*args):
        out, cache = forward(*args, **params)
        dout = backend.to_device(np.random.default_rng(1).standard_normal(np.shape(out)).astype(np.float32))
        grads = backward_fn(dout, cache)
        return [out] + list(grads if isinstance(grads, tuple) else (grads,))
    return fn


R = np.random.default_rng(0)
F = lambda *s: R.standard_normal(s).astype(np.float32)  # noqa: E731

CASES = {
    "linear": (_pair(ops.linear_forward, ops.linear_backward), (F(3, 7, 129), F(65, 129), F(65)), 1e-5),
    "layernorm": (_pair(ops.layernorm_forward, ops.layernorm_backward, eps=1e-12), (F(3, 7, 129), F(129), F(129)), 1e-5),
    "gelu": (_pair(ops.gelu_forward, ops.gelu_backward), (F(5, 771),), 1e-6),
    "gelu_tanh": (_pair(ops.gelu_forward, ops.gelu_backward, approximate="tanh"), (F(5, 771),), 1e-6),
    "tanh": (_pair(ops.tanh_forward, ops.tanh_backward), (F(5, 771),), 1e-6),
    "softmax": (_pair(ops.softmax_forward, ops.softmax_backward),
                (F(2, 3, 5, 97), np.where(R.random((2, 1, 1, 97)) < 0.3, np.finfo(np.float32).min, 0).astype(np.float32)), 1e-6),
    "embedding": (_pair(ops.embedding_forward, ops.embedding_backward), (R.integers(0, 50, (4, 9)), F(50, 33)), 1e-5),
    "attention": (_pair(ops.attention_forward, ops.attention_backward, num_heads=3),
                  (F(2, 11, 24), F(24, 24), F(24), F(24, 24), F(24), F(24, 24), F(24)), 1e-4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_numpy_vs_cupy(name):
    fn, args, atol = CASES[name]
    ref, got = _run_both(fn, args)
    _assert_close(ref, got, atol, name)


def test_cross_entropy_numpy_vs_cupy():
    logits = F(37, 1003) * 5
    targets = R.integers(0, 1003, 37)
    targets[::4] = -100

    def fn(z, t):
        loss, cache = ops.cross_entropy_forward(z, t, check_range=False)
        return [loss, ops.cross_entropy_backward(np.float32(1.0), cache)]
    ref, got = _run_both(fn, (logits, targets))
    _assert_close(ref, got, 1e-6, "cross_entropy")


def test_pretraining_step_numpy_vs_cupy():
    """Forward + backward of a small BERT: the loss and every gradient agree across backends."""
    cfg = bn.BertConfig.preset("tiny", vocab_size=1000, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    r = np.random.default_rng(0)
    batch = dict(input_ids=r.integers(1, 1000, (4, 33)), attention_mask=np.ones((4, 33), dtype=int),
                 labels=np.where(r.random((4, 33)) < 0.15, r.integers(1, 1000, (4, 33)), -100),
                 next_sentence_label=np.array([0, 1, 1, 0]))
    batch["attention_mask"][2, 20:] = 0

    def step():
        model = bn.BertForPreTraining(cfg, seed=0)
        out = model(**batch)
        grads = model.backward()
        return [out.loss] + [grads[k] for k in sorted(grads)]
    bn.set_backend("numpy")
    ref = step()
    cupy_or_skip()
    try:
        got = [backend.to_host(g) for g in step()]
    finally:
        bn.set_backend("numpy")
    _assert_close(ref, got, 1e-5, "pretraining step")
