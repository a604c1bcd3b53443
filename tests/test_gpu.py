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


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_pretraining_step_numpy_vs_cupy(dropout):
    """Forward + backward of a small BERT: the loss and every gradient agree across backends --
    with dropout on too, since both backends draw the same Philox masks for the same key."""
    cfg = bn.BertConfig.preset("tiny", vocab_size=1000, hidden_dropout_prob=dropout,
                               attention_probs_dropout_prob=dropout)
    r = np.random.default_rng(0)
    batch = dict(input_ids=r.integers(1, 1000, (4, 33)), attention_mask=np.ones((4, 33), dtype=int),
                 labels=np.where(r.random((4, 33)) < 0.15, r.integers(1, 1000, (4, 33)), -100),
                 next_sentence_label=np.array([0, 1, 1, 0]))
    batch["attention_mask"][2, 20:] = 0

    def step():
        model = bn.BertForPreTraining(cfg, seed=0).train()
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


def _tiny_run(tmp_path, out, **kw):
    """A TrainConfig for a few steps of a tiny model on a tiny corpus made here."""
    from bertnp.train import TrainConfig
    words = "the a old red blue king queen dog cat saw took gave near under and but then so".split()
    corpus, vocab, config = tmp_path / "corpus.txt", tmp_path / "vocab.txt", tmp_path / "config.json"
    if not corpus.exists():
        r = np.random.default_rng(0)
        docs = ["\n".join(" ".join(words[int(i)] for i in r.integers(0, len(words), int(r.integers(4, 9))))
                          + "." for _ in range(int(r.integers(4, 8)))) for _ in range(12)]
        corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + words) + "\n",
                         encoding="utf-8")
        bn.BertConfig(vocab_size=len(words) + 6, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=24, max_position_embeddings=32).to_json_file(config)
    options = dict(corpus=[str(corpus)], vocab=str(vocab), model_config=str(config), max_seq_length=24,
                   batch_size=4, steps=4, lr=5e-3, warmup=1, dropout=0.0, out_dir=str(tmp_path / out),
                   eval_every=100, eval_batches=0, checkpoint_every=2, log_every=1, progress=False, seed=3)
    options.update(kw)
    return TrainConfig(**options)


def _train_losses(run_dir):
    import json
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r.get("split") == "train"]


def test_training_loop_and_checkpoints_across_backends(tmp_path):
    """The training loop on CuPy follows the NumPy trajectory (dropout off); a checkpoint written on
    CuPy resumes on NumPy; the final model loads on either backend and gives the same logits."""
    from bertnp.train import Trainer
    cupy_or_skip()
    bn.set_backend("numpy")
    Trainer(_tiny_run(tmp_path, "cpu", backend="numpy"), log=lambda *_: None).train()
    summary = Trainer(_tiny_run(tmp_path, "gpu", backend="cupy"), log=lambda *_: None).train()
    assert bn.get_backend() == "cupy"
    cpu, gpu = _train_losses(tmp_path / "cpu"), _train_losses(tmp_path / "gpu")
    # a trajectory, not one op: AdamW turns float32 noise in near-zero gradients into +-lr steps
    assert len(cpu) == len(gpu) == 4 and np.allclose(gpu, cpu, rtol=1e-3), (cpu, gpu)
    batch = dict(input_ids=np.array([[2, 7, 8, 9, 3, 0]]), attention_mask=np.array([[1, 1, 1, 1, 1, 0]]))
    model = bn.BertForPreTraining.from_pretrained(summary["model_dir"])           # on CuPy
    on_gpu = backend.to_host(model(**batch).prediction_logits)
    bn.set_backend("numpy")
    model = bn.BertForPreTraining.from_pretrained(summary["model_dir"])           # the same files on NumPy
    np.testing.assert_allclose(model(**batch).prediction_logits, on_gpu, rtol=1e-4, atol=1e-5)
    resumed = Trainer(_tiny_run(tmp_path, "gpu", backend="numpy", steps=6, resume=True), log=lambda *_: None)
    assert resumed.step == 4
    assert resumed.train()["step"] == 6
