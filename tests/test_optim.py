"""AdamW, the schedule, clipping and accumulation: hand-computed values, the independent PyTorch
reference trajectory (tests/reference/adamw_trajectory_f64.npz), in-place memory behaviour and
state save/load."""
from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bertnp import checkpoint
from conftest import dev, host
from bertnp.optim import (AdamW, LinearWarmupDecay, clip_grad_norm, default_no_decay, global_grad_norm,
                          linear_warmup_decay, scale_grads)

FIXTURE = Path(__file__).resolve().parent / "reference" / "adamw_trajectory_f64.npz"


class StandIn:
    """The smallest object AdamW accepts as a model: live ``parameters()`` and ``grads``."""

    def __init__(self, shapes: dict, seed: int = 0, dtype=np.float64):
        rng = np.random.default_rng(seed)
        self._params = {n: dev(rng.standard_normal(s).astype(dtype)) for n, s in shapes.items()}
        self.grads = {n: dev(np.zeros(s, dtype=dtype)) for n, s in shapes.items()}

    def parameters(self):
        return self._params

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)


# ----------------------------------------------------------------------------- hand-computed

def test_adamw_two_steps_by_hand():
    """Two torch-style AdamW updates of a decayed scalar and an undecayed bias, written out."""
    w, b = dev(np.array([1.0])), dev(np.array([2.0]))
    gw, gb = dev(np.zeros(1)), dev(np.zeros(1))
    opt = AdamW({"w": w, "x.bias": b}, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                grads={"w": gw, "x.bias": gb})
    assert opt.weight_decay_of("w") == 0.1 and opt.weight_decay_of("x.bias") == 0.0

    # step 1, g = 0.5 for both
    gw[:] = gb[:] = 0.5
    opt.step()
    #   w: decay 1 * (1 - 0.1*0.1) = 0.99; m = 0.05, v = 0.00025
    #      m_hat = 0.05 / 0.1 = 0.5, sqrt(v_hat) = sqrt(0.00025 / 0.001) = 0.5
    #      w = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8)
    assert float(w[0]) == pytest.approx(0.99 - 0.1 * 0.5 / (0.5 + 1e-8), rel=1e-15, abs=0)
    assert float(b[0]) == pytest.approx(2.0 - 0.1 * 0.5 / (0.5 + 1e-8), rel=1e-15, abs=0)   # no decay
    w1, b1 = float(w[0]), float(b[0])

    # step 2, g = -0.25
    gw[:] = gb[:] = -0.25
    opt.step()
    #   m = 0.9 * 0.05 + 0.1 * -0.25 = 0.02;  v = 0.999 * 0.00025 + 0.001 * 0.0625 = 0.00031225
    #   bias corrections 1 - 0.9^2 = 0.19, 1 - 0.999^2 = 0.001999
    m_hat, v_hat = 0.02 / 0.19, 0.00031225 / 0.001999
    assert float(opt.exp_avg["w"][0]) == pytest.approx(0.02, rel=1e-14)
    assert float(opt.exp_avg_sq["w"][0]) == pytest.approx(0.00031225, rel=1e-14)
    assert float(w[0]) == pytest.approx(w1 * 0.99 - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8), rel=1e-14)
    assert float(b[0]) == pytest.approx(b1 - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8), rel=1e-14)
    assert opt.step_count == 2


def test_google_variant_by_hand_and_differs():
    """correct_bias=False is Google BERT's optimizer: no bias correction, eps on the raw sqrt(v)."""
    w = dev(np.array([1.0]))
    g = dev(np.array([0.5]))
    opt = AdamW({"w": w}, lr=0.1, eps=1e-6, weight_decay=0.1, correct_bias=False, grads={"w": g})
    opt.step()
    # m = 0.05, v = 0.00025; update = 0.05 / (sqrt(0.00025) + 1e-6) + 0.1 * 1.0
    assert float(w[0]) == pytest.approx(1.0 - 0.1 * (0.05 / (math.sqrt(0.00025) + 1e-6) + 0.1), rel=1e-14)

    # Over 20 steps with the same gradients, the two variants end visibly apart.
    ends = []
    for correct in (True, False):
        model = StandIn({"w": (50,)}, seed=1)
        opt = AdamW(model, lr=1e-3, weight_decay=0.01, correct_bias=correct)
        rng = np.random.default_rng(5)
        for _ in range(20):
            model.grads["w"][:] = dev(rng.standard_normal(50))
            opt.step()
        ends.append(host(model.parameters()["w"]).copy())
    assert np.max(np.abs(ends[0] - ends[1])) > 1e-3


def test_no_decay_rule():
    assert default_no_decay("cls.predictions.bias")
    assert default_no_decay("bert.encoder.layer.0.output.LayerNorm.weight")
    assert default_no_decay("bert.embeddings.LayerNorm.bias")
    assert not default_no_decay("bert.embeddings.word_embeddings.weight")
    assert not default_no_decay("bert.pooler.dense.weight")


def test_schedule_values():
    f = [linear_warmup_decay(s, 3, 12) for s in range(14)]
    assert f[:4] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert f[4:12] == pytest.approx([8 / 9, 7 / 9, 6 / 9, 5 / 9, 4 / 9, 3 / 9, 2 / 9, 1 / 9], rel=1e-15)
    assert f[12] == 0.0 and f[13] == 0.0
    assert linear_warmup_decay(0, 0, 10) == 1.0        # no warmup: full lr at once

    opt = AdamW({"w": dev(np.zeros(1))}, lr=1e-3, grads={"w": dev(np.zeros(1))})
    sched = LinearWarmupDecay(opt, warmup_steps=3, total_steps=12)
    seen = []
    for _ in range(12):
        seen.append(opt.lr)
        opt.step()
        sched.step()
    ref = np.load(FIXTURE)["lrs"]                     # the fixture's torch LambdaLR values
    np.testing.assert_allclose(seen, ref, rtol=1e-15, atol=0)
    state = sched.state_dict()
    other = LinearWarmupDecay(AdamW({"w": dev(np.zeros(1))}, lr=5.0, grads={"w": dev(np.zeros(1))}), 1, 2)
    other.load_state_dict(json.loads(json.dumps(state)))
    assert other.last_step == 12 and other.optimizer.lr == 0.0


# ----------------------------------------------------------------------------- clipping, accumulation

def test_clip_grad_norm_like_torch():
    grads = {"a": dev(np.full((3, 4), 2.0)), "b": dev(np.full(5, -1.0))}
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(math.sqrt(12 * 4 + 5), rel=1e-15)
    coef = 1.0 / (norm + 1e-6)                        # torch's clip_grad_norm_ formula
    np.testing.assert_allclose(host(grads["a"]), 2.0 * coef, rtol=1e-15)
    assert global_grad_norm(grads) == pytest.approx(norm * coef, rel=1e-12)

    small = {"a": dev(np.full(4, 0.1))}
    assert clip_grad_norm(small, 1.0) == pytest.approx(0.2)
    np.testing.assert_array_equal(host(small["a"]), 0.1)    # under the threshold: untouched

    bad = {"a": dev(np.array([1.0, np.nan]))}
    assert math.isnan(clip_grad_norm(bad, 1.0))
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(small, 0.0)


def test_accumulation_equals_big_batch():
    """k micro-batches accumulated and scaled by 1/k give the same update as their mean gradient."""
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((4, 3)) for _ in range(4)]
    a, b = StandIn({"w": (4, 3)}, seed=2), StandIn({"w": (4, 3)}, seed=2)
    opt_a, opt_b = AdamW(a, lr=1e-2), AdamW(b, lr=1e-2)
    for part in parts:
        a.grads["w"] += dev(part)                     # what backward() does per micro-batch
    scale_grads(a.grads, 1 / len(parts))
    b.grads["w"][:] = dev(np.mean(parts, axis=0))
    opt_a.step(), opt_b.step()
    np.testing.assert_allclose(host(a.parameters()["w"]), host(b.parameters()["w"]), rtol=1e-14, atol=1e-15)


# ----------------------------------------------------------------------------- memory

@pytest.mark.parametrize("correct_bias", [True, False])
def test_step_allocates_no_parameter_sized_array(correct_bias):
    shapes = {"big.weight": (512, 256), "big.bias": (512,), "LayerNorm.weight": (256,),
              "other.weight": (256, 300)}
    model = StandIn(shapes, dtype=np.float32)
    opt = AdamW(model, lr=1e-3, correct_bias=correct_bias)
    for g in model.grads.values():
        g[...] = 0.01
    opt.step()                                        # warm up any lazy state
    smallest_big = 256 * 300 * 4                      # bytes of one "big" parameter (307 kB)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        clip_grad_norm(model.grads, 1e-3)             # clips (norm is ~10): an in-place multiply
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < smallest_big / 10, f"step allocated {peak} bytes at peak"


def test_updates_are_in_place():
    model = StandIn({"w": (3, 2)})
    w = model.parameters()["w"]
    before = w.copy()
    opt = AdamW(model, lr=0.1)
    model.grads["w"][...] = 1.0
    opt.step()
    assert model.parameters()["w"] is w and not np.array_equal(host(w), host(before))
    opt.zero_grad()
    assert not host(model.grads["w"]).any()


@pytest.mark.parametrize("correct_bias", [True, False])
def test_cache_blocked_update_is_bit_identical(correct_bias, monkeypatch):
    """On the CPU a large tensor is updated block by block (cache blocking): the same numbers, to
    the bit, as one pass over the whole tensor -- also for a tensor whose size is not a multiple
    of the block, and for a non-contiguous gradient (which takes the whole-tensor path)."""
    shapes = {"emb.weight": (37, 29), "b.bias": (11,)}
    runs = {}
    for block in (64, 10**9):                         # 64: many blocks and a ragged last one
        monkeypatch.setattr(AdamW, "BLOCK", block)
        model = StandIn(shapes, seed=3, dtype=np.float32)
        opt = AdamW(model, lr=1e-2, weight_decay=0.1, correct_bias=correct_bias)
        rng = np.random.default_rng(5)
        for _ in range(3):
            for name, g in model.grads.items():
                g[...] = dev(rng.standard_normal(g.shape))
            opt.step()
        runs[block] = ({n: host(p).copy() for n, p in model.parameters().items()},
                       {n: host(m).copy() for n, m in opt.exp_avg_sq.items()})
    for n in shapes:
        np.testing.assert_array_equal(runs[64][0][n], runs[10**9][0][n], err_msg=n)
        np.testing.assert_array_equal(runs[64][1][n], runs[10**9][1][n], err_msg=n)
    monkeypatch.setattr(AdamW, "BLOCK", 64)
    model = StandIn({"w": (40, 30)}, seed=1, dtype=np.float32)
    transposed = dev(np.ones((30, 40), dtype=np.float32)).T             # not C-contiguous
    opt = AdamW(model.parameters(), grads={"w": transposed})
    before = host(model.parameters()["w"]).copy()
    opt.step()
    assert not np.array_equal(host(model.parameters()["w"]), before)


# ----------------------------------------------------------------------------- state save/load

def test_state_round_trip_through_checkpoint(tmp_path):
    shapes = {"a.weight": (4, 3), "a.bias": (4,)}
    model, twin = StandIn(shapes, seed=0), StandIn(shapes, seed=0)
    opt = AdamW(model, lr=1e-2, weight_decay=0.1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        for g in model.grads.values():
            g[...] = dev(rng.standard_normal(g.shape))
        opt.step()
    path = checkpoint.save_optimizer(tmp_path / "optimizer.safetensors", opt)
    for n in shapes:
        twin.parameters()[n][...] = model.parameters()[n]
    opt2 = AdamW(twin, lr=123.0, weight_decay=0.0)
    checkpoint.load_optimizer(path, opt2)
    assert opt2.step_count == 3 and opt2.lr == 1e-2 and opt2.weight_decay == 0.1
    for _ in range(2):
        for n, g in model.grads.items():
            g[...] = dev(rng.standard_normal(g.shape))
            twin.grads[n][...] = g
        opt.step(), opt2.step()
    for n in shapes:
        np.testing.assert_array_equal(host(model.parameters()[n]), host(twin.parameters()[n]))

    bad = AdamW(StandIn({"a.weight": (4, 3)}), lr=1e-2)
    with pytest.raises(ValueError, match="optimizer.safetensors.*a.bias"):
        checkpoint.load_optimizer(path, bad)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        checkpoint.load_optimizer(tmp_path / "junk.safetensors", opt2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "lr"), (dict(lr=float("nan")), "lr"), (dict(betas=(0.9, 1.0)), "betas"),
    (dict(betas=(0.9,)), "betas"), (dict(eps=0.0), "eps"), (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW(StandIn({"w": (2,)}), **kwargs)


def test_bad_params():
    with pytest.raises(TypeError, match="params"):
        AdamW([np.zeros(2)])
    with pytest.raises(ValueError, match="grads"):
        AdamW({"w": np.zeros(2)})
    opt = AdamW({"w": np.zeros(2)}, grads={"v": np.zeros(2)})
    with pytest.raises(ValueError, match="w"):
        opt.step()
    with pytest.raises(ValueError, match="warmup_steps"):
        LinearWarmupDecay(opt, 5, 3)


# ----------------------------------------------------------------------------- reference (no model)

def test_first_two_updates_match_torch_fixture():
    """The fixture's first update has lr 0, so updates 1 and 2 both use grad0: bn.AdamW + schedule +
    clipping from the fixture's gradient alone must land on torch's weights after update 2."""
    ref = np.load(FIXTURE)
    names = [k[len("param/"):] for k in ref.files if k.startswith("param/")]
    params = {n: dev(ref[f"param/{n}"].copy()) for n in names}
    grads = {n: p * 0 for n, p in params.items()}
    opt = AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, grads=grads)
    for n in names:
        assert opt.weight_decay_of(n) == float(ref[f"weight_decay/{n}"]), n
    sched = LinearWarmupDecay(opt, warmup_steps=3, total_steps=12)
    for step in range(2):
        for n in names:
            grads[n][...] = dev(ref[f"grad0/{n}"])
        norm = clip_grad_norm(grads, 1.0)
        assert norm == pytest.approx(ref["grad_norms"][step], rel=1e-13)
        opt.step()
        sched.step()
    worst = max(float(np.max(np.abs(host(params[n]) - ref[f"step2/{n}"]))) for n in names)
    assert worst < 1e-15, worst
