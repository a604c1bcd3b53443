"""Regenerate course/tests/public/data/*.npz from the instructor's library (the solution).

The public tests of forward-pass tasks compare with these numbers instead of carrying a reference
implementation, which would hand the task's answer to every student. tests/test_course_manifest.py
fails when a fixture no longer matches the library.

    python course/tests/hidden/make_public_fixtures.py
"""
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "public" / "data"


def attention_inputs():
    """Two sequences of 5 tokens, width 6, 2 heads; the second sequence has 2 padded keys."""
    r = np.random.default_rng(2024)
    C = 6
    inputs = {"x": r.standard_normal((2, 5, C))}
    for name in ("query", "key", "value"):
        inputs[f"{name}_weight"] = r.standard_normal((C, C)) * 0.5
        inputs[f"{name}_bias"] = r.standard_normal(C) * 0.1
    mask = np.zeros((2, 1, 1, 5))
    mask[1, ..., 3:] = np.finfo(np.float64).min
    return inputs, mask


def attention_fixture():
    from bertnp.ops.attention import attention_forward
    inputs, mask = attention_inputs()
    out, cache = attention_forward(**inputs, num_heads=2, additive_mask=mask)
    return {**inputs, "additive_mask": mask, "out": out, "probs": cache.softmax_cache.probs}


def adamw_inputs():
    """Three tensors named like BERT's (a weight, a bias, a LayerNorm weight) and three steps of gradients."""
    r = np.random.default_rng(7)
    params = {"layer.dense.weight": r.standard_normal((3, 4)), "layer.dense.bias": r.standard_normal(4),
              "layer.LayerNorm.weight": 1 + 0.1 * r.standard_normal(4)}
    grads = [{k: r.standard_normal(v.shape) for k, v in params.items()} for _ in range(3)]
    return params, grads


def adamw_fixture():
    import bertnp as bn
    params, steps = adamw_inputs()
    live = {k: v.copy() for k, v in params.items()}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    opt = bn.AdamW(live, grads=grads, lr=0.05, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1)
    out = {}
    for k, v in params.items():
        out[f"start/{k}"] = v
    for t, g in enumerate(steps):
        for k in grads:
            grads[k][...] = g[k]
            out[f"grad{t}/{k}"] = g[k]
        opt.step()
        for k in live:
            out[f"after{t}/{k}"] = live[k].copy()
    return out


def main():
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez(DATA / "attention_forward.npz", **attention_fixture())
    np.savez(DATA / "adamw_steps.npz", **adamw_fixture())
    print(f"wrote {DATA / 'attention_forward.npz'} and {DATA / 'adamw_steps.npz'}")


if __name__ == "__main__":
    main()
