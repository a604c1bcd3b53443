"""The AdamW CUDA kernel over many steps, on any machine: its CPU emulation (tests/test_kernels.py
runs each kernel's per-thread arithmetic in float32 through the real wrapper and launch arguments)
against the NumPy reference (``bertnp.kernels.adamw_step_reference`` in float64, which
tests/test_kernels.py ties to ``bertnp.optim.AdamW``) for 300 updates under a warmup/decay
schedule with weight decay, both variants and both kernel versions. Torch is not needed (its
float32 trajectory is compared too, over 10 steps, when installed: test_kernels.py)."""
from __future__ import annotations

import numpy as np
import pytest

from bertnp import kernels
from bertnp.optim import linear_warmup_decay
from conftest import on_numpy
from test_kernels import ADAMW_SHAPES, F32, emulated  # noqa: F401  (emulated is a fixture)

STEPS = 300
HP = dict(beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.01)


def inputs(seed=12):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(F32) for s in ADAMW_SHAPES]
    # gradients of varied scale, with a drift, so that m and v follow something and v spans decades
    scale = [10.0 ** rng.uniform(-3, 0, s) for s in ADAMW_SHAPES]
    grads = [[((0.3 + t / STEPS) * sc * rng.standard_normal(s)).astype(F32) for s, sc in zip(ADAMW_SHAPES, scale)]
             for t in range(STEPS)]
    return params, grads


def trajectory(step_fn, params, grads, dtype, correct_bias, peak_lr=3e-3):
    p = [x.astype(dtype) for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t in range(STEPS):
        lr = peak_lr * linear_warmup_decay(t + 1, 20, STEPS + 10)        # warmup, then linear decay
        for i in range(len(p)):
            step_fn(p[i], grads[t][i].astype(dtype), m[i], v[i], lr=lr, step=t + 1, correct_bias=correct_bias, **HP)
    return p, m, v


@pytest.mark.parametrize("correct_bias", [True, False])
@pytest.mark.parametrize("version", [1, 2])
def test_adamw_kernel_emulation_follows_the_numpy_reference_for_300_steps(emulated, version, correct_bias):
    params, grads = inputs()
    got = trajectory(lambda *a, **k: kernels.adamw_step(*a, version=version, **k), params, grads, np.float32,
                     correct_bias)
    with on_numpy():                      # the reference is host arithmetic, whatever the test backend
        want = trajectory(kernels.adamw_step_reference, params, grads, np.float64, correct_bias)
    assert set(emulated) == {f"adamw_v{version}"} and len(emulated) == STEPS * len(ADAMW_SHAPES)
    for i, shape in enumerate(ADAMW_SHAPES):
        p, m, v = (np.asarray(x[i], dtype=np.float64) for x in got)
        p_ref, m_ref, v_ref = want[0][i], want[1][i], want[2][i]
        assert np.abs(p_ref - params[i]).max() > 0.02                   # the weights really moved
        # float32 rounding, accumulated over 300 steps: ~1e-7 per update of size <= lr
        # float32 rounding of O(1) weights over 300 updates (measured up to 2.6e-6); a bug such as
        # eps before the bias correction is 1.4e-4 off (below)
        assert np.abs(p - p_ref).max() <= 1e-5, (shape, np.abs(p - p_ref).max())
        assert np.abs(m - m_ref).max() <= 1e-6 * np.abs(m_ref).max(), shape        # measured 2.4e-7
        assert np.all(np.abs(v - v_ref) <= 1e-5 * v_ref + 1e-30), shape          # measured 2.3e-6


def test_a_plausible_kernel_bug_is_caught(emulated, monkeypatch):
    """The comparison can fail: eps added before the bias correction of v (a classic slip) moves
    the weights by ten times the tolerance within the 300 steps."""
    params, grads = inputs()
    with on_numpy():
        want = trajectory(kernels.adamw_step_reference, params, grads, np.float64, True)
    import test_kernels
    real = test_kernels.EMULATORS["adamw_v1"]

    def eps_too_early(grid, block, a):
        a = dict(a, eps=np.float32(a["eps"] * a["bc2_sqrt"]))         # sqrt(v)/bc + eps*bc/bc: eps inside
        real(grid, block, a)
    monkeypatch.setitem(test_kernels.EMULATORS, "adamw_v1", eps_too_early)
    got = trajectory(lambda *a, **k: kernels.adamw_step(*a, version=1, **k), params, grads, np.float32, True)
    worst = max(np.abs(np.asarray(got[0][i], dtype=np.float64) - want[0][i]).max() for i in range(len(params)))
    assert worst > 1e-4, worst
