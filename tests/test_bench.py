"""The CPU benchmark harness and the per-op profiler stay runnable (bertnp part only, no torch, a
tiny config, a few seconds), the analytic FLOP count matches the reference figure, RESULTS.md
keeps the sections other harnesses own -- and the float32 fast paths the benchmark led to are as
accurate as float32 allows."""
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import bertnp as bn
from conftest import dev, host
from bertnp.ops.activations import gelu_backward, gelu_forward, normal_cdf

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield importlib.import_module("bench_cpu")
    finally:
        sys.path.remove(str(BENCH_DIR))


TINY = ["--config", "tiny", "--vocab", "300", "--batch", "2", "--seq", "16", "--predictions", "3",
        "--rounds", "2", "--warmup", "1", "--peak-size", "128", "--no-torch", "--threads", "1"]


def test_harness_runs_bertnp_only_and_writes_results(bench, tmp_path):
    results = tmp_path / "RESULTS.md"
    out = tmp_path / "out.json"
    assert bench.main(TINY + ["--memory-steps", "1", "--profile-steps", "1",
                              "--results", str(results), "--json", str(out)]) == 0
    text = results.read_text()
    for expected in ("## CPU, with", "### Training step", "### Inference", "### Peak memory",
                     "### Targets (issue 18)", "### Per-operation profile of the bertnp step",
                     "| A: bertnp (NumPy, float32) |", "## GPU",
                     "Not measured yet: no GPU was available to this session."):
        assert expected in text, expected
    data = json.loads(out.read_text())
    assert set(data["train"]) == {"A", "A0"} and data["train"]["A"]["median"] > 0
    assert "| A0: bertnp, the last layer at every row" in text
    assert data["peak_flops_per_s"]["median"] > 0
    memory = {(m["variant"], m["mode"]): m for m in data["memory"]}
    assert memory[("A", "train")]["peak_rss"] >= memory[("A", "train")]["baseline_rss"] > 0
    ops = data["profile"]["ops"]
    for op in ("gelu", "layernorm", "softmax", "attention", "cross_entropy", "embedding", "dropout", "AdamW step"):
        assert op in ops, op
    assert any(op.startswith("linear 128->300") for op in ops)     # the tied decoder on its own row


def test_results_keep_other_sections(bench, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# bertnp benchmarks\n\nintro\n\n## CPU\n\nold numbers\n\n## GPU\n\nH100 table\n")
    bench.write_results("## CPU\n\nnew numbers\n", path)
    text = path.read_text()
    assert "new numbers" in text and "old numbers" not in text
    assert text.index("intro") < text.index("## CPU") < text.index("## GPU")
    assert "H100 table" in text and "Not measured yet" not in text
    # one section per kind of CPU: a run on one kind keeps the other kind's figures
    kinds = tmp_path / "KINDS.md"
    kinds.write_text("# bertnp benchmarks\n\n## CPU, without AVX-512\n\nearlier run\n\n## GPU\n\nH100 table\n")
    bench.write_results("## CPU, with AVX-512\n\nthis run\n", kinds)
    bench.write_results("## CPU, with AVX-512\n\nthe next run\n", kinds)
    text = kinds.read_text()
    assert "earlier run" in text and "the next run" in text and "this run" not in text
    assert text.index("without AVX-512") < text.index("with AVX-512\n") < text.index("## GPU")
    assert bench.machine_kind({"avx512": True}) == "## CPU, with AVX-512"
    assert bench.machine_kind({"avx512": False}) == "## CPU, without AVX-512"
    fresh = tmp_path / "NEW.md"
    bench.write_results("## CPU\n\nfirst\n", fresh)
    assert fresh.read_text().endswith("## GPU\n\nNot measured yet: no GPU was available to this session.\n")


def test_flop_count_matches_the_reference_figures(bench):
    """reference.md: BERT-mini, batch 16 x 128, vocab 30522 -- ~57 GFLOP masked-only, ~139 at every position."""
    cfg = bench.make_config("mini")
    flops = bench.step_flops(cfg, batch=16, seq_len=128, predictions=20)
    assert flops["step"] / 1e9 == pytest.approx(57.0, abs=0.5)
    assert flops["all_positions_step"] / 1e9 == pytest.approx(139.0, abs=1.0)
    assert flops["step"] == 3 * flops["forward"]
    # what bertnp executes: the last layer's attention output and FFN at the 16 x 20 labelled rows
    # and 16 [CLS] rows only, instead of 16 x 128: 2 x (2048 - 336) x (C^2 + 2CI) less a forward
    assert flops["step"] - flops["scored_step"] == 3 * 2 * (2048 - 336) * (256 ** 2 + 2 * 256 * 1024)
    assert flops["scored_step"] / 1e9 == pytest.approx(50.9, abs=0.1)


def test_batch_is_a_valid_pretraining_batch(bench):
    cfg = bench.make_config("tiny", vocab_size=300)
    batch = bench.make_batch(cfg, batch=3, seq_len=16, predictions=4)
    labels = batch["labels"]
    assert ((labels != -100).sum(axis=1) == 4).all()
    assert (labels[:, 0] == -100).all() and (labels[:, -1] == -100).all()     # never [CLS] / [SEP]
    out = bn.BertForPreTraining(cfg, seed=0)(**batch)
    assert out.prediction_logits.shape == (12, 300) and np.isfinite(float(out.loss))


# ----------------------------------------------------------------------------- the float32 GELU


def test_float32_normal_cdf_is_exact_to_float32_rounding():
    """The fitted tanh form (benchmarks/fit_gelu_cdf.py) against the exact float64 Phi: within
    1e-7 everywhere (SciPy's erf rounded to float32 gave 6.1e-8), 0 and 1 in the far tails."""
    x = np.concatenate([np.linspace(-14, 14, 400_001), [-1e30, -40.0, 0.0, 40.0, 1e30]])
    x32 = x.astype(np.float32)
    exact = 0.5 * (1 + np.vectorize(math.erf)(x32.astype(np.float64) / math.sqrt(2)))
    phi = host(normal_cdf(dev(x32)))
    assert phi.dtype == np.float32
    assert np.abs(phi - exact).max() <= 1e-7
    assert host(normal_cdf(dev(np.array([np.inf, -np.inf], dtype=np.float32)))).tolist() == [1.0, 0.0]
    assert np.isnan(host(normal_cdf(dev(np.array([np.nan], dtype=np.float32))))).all()
    # 400k values go block by block (cache blocking); a strided view takes the one-pass path: same bits
    np.testing.assert_array_equal(host(normal_cdf(dev(x32)[::2])), phi[::2])
    # float64 keeps the exact erf: bit-for-bit what it computed before
    from scipy.special import erf
    x64 = np.linspace(-6, 6, 101)
    np.testing.assert_array_equal(host(normal_cdf(dev(x64))), 0.5 * (1.0 + erf(x64 * (1.0 / math.sqrt(2.0)))))


def test_float32_gelu_and_its_gradient_match_float64():
    x = np.random.default_rng(0).standard_normal(100_000) * 3
    dout = np.random.default_rng(1).standard_normal(x.shape)
    out64, cache64 = gelu_forward(dev(x))
    out32, cache32 = gelu_forward(dev(x.astype(np.float32)))
    assert np.abs(host(out32) - host(out64)).max() <= 5e-7 * max(1.0, np.abs(x).max() / 8)
    dx64 = host(gelu_backward(dev(dout), cache64))
    dx32 = host(gelu_backward(dev(dout.astype(np.float32)), cache32))
    assert dx32.dtype == np.float32
    assert np.abs(dx32 - dx64).max() <= 1e-6
