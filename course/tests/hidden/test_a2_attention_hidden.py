"""Assignment 2 (hidden): attention against an independent per-head reference, other shapes."""
import numpy as np
import pytest

from referee import CheckFailed, close, gradient_check, rng

from bertnp.ops.attention import attention_backward, attention_forward

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_public_a2", Path(__file__).parents[1] / "public" / "test_a2_attention.py")
public = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(public)

NAMES = ("x", "query_weight", "query_bias", "key_weight", "key_bias", "value_weight", "value_bias")


def _inputs(seed, B=2, T=4, C=6):
    r = rng(seed)
    inputs = {"x": r.standard_normal((B, T, C))}
    for n in ("query", "key", "value"):
        inputs[f"{n}_weight"] = r.standard_normal((C, C)) * 0.5
        inputs[f"{n}_bias"] = r.standard_normal(C) * 0.2
    mask = np.zeros((B, 1, 1, T))
    mask[0, ..., T - 1:] = np.finfo(np.float64).min
    return inputs, mask


def _per_head(inputs, mask, heads):
    """The projections (B, T, C) each, and every (b, columns of head h, probabilities (T, T))."""
    x = inputs["x"]
    B, T, C = x.shape
    hs = C // heads
    q, k, v = (x @ inputs[f"{n}_weight"].T + inputs[f"{n}_bias"] for n in ("query", "key", "value"))
    heads_probs = []
    for b in range(B):
        for h in range(heads):
            cols = slice(h * hs, (h + 1) * hs)
            s = q[b, :, cols] @ k[b, :, cols].T / np.sqrt(hs) + mask[b, 0]
            p = np.exp(s - s.max(-1, keepdims=True))
            heads_probs.append((b, cols, p / p.sum(-1, keepdims=True)))
    return q, k, v, heads_probs


def _reference(inputs, mask, heads):
    q, k, v, heads_probs = _per_head(inputs, mask, heads)
    out = np.zeros_like(inputs["x"])
    for b, cols, p in heads_probs:
        out[b, :, cols] = p @ v[b, :, cols]
    return out


@pytest.mark.parametrize("heads", [1, 3])
def test_attention_forward_hidden(heads):
    inputs, mask = _inputs(5)
    out, _ = attention_forward(**inputs, num_heads=heads, additive_mask=mask)
    close(f"attention output with {heads} head(s) against a per-head reference", out, _reference(inputs, mask, heads))
    out, _ = attention_forward(**inputs, num_heads=heads)
    close(f"attention output with {heads} head(s), no mask", out, _reference(inputs, np.zeros((2, 1, 1, 4)), heads))


def _dk_transposes_swapped(inputs, mask, heads, dout):
    """dWk as dk = dscores @ q (the transposes of dk swapped) would make it, from a per-head backward."""
    x = inputs["x"]
    C = x.shape[-1]
    q, k, v, heads_probs = _per_head(inputs, mask, heads)
    dk = np.zeros_like(x)
    for b, cols, p in heads_probs:
        dp = dout[b, :, cols] @ v[b, :, cols].T
        ds = p * (dp - (p * dp).sum(-1, keepdims=True))
        dk[b, :, cols] = ds @ q[b, :, cols] * (C // heads) ** -0.5   # the mistake: dscores, not dscores^T
    return dk.reshape(-1, C).T @ x.reshape(-1, C)                      # (C, B*T) @ (B*T, C)


@pytest.mark.parametrize("heads", [1, 3])
def test_attention_backward_hidden(heads):
    inputs, mask = _inputs(6)
    dout = rng(11).standard_normal(inputs["x"].shape)
    _, cache = attention_forward(**inputs, num_heads=heads, additive_mask=mask)
    if np.allclose(np.asarray(attention_backward(dout, cache).key_weight),
                   _dk_transposes_swapped(inputs, mask, heads, dout), rtol=1e-9, atol=1e-12):
        raise CheckFailed(f"attention_backward ({heads} heads): dkey_weight is what dk = dscores @ q gives: the "
                          "transpose is on the wrong side. scores = q k^T, so dq = dscores k and dk = dscores^T q")
    gradient_check(f"attention_backward ({heads} heads)",
                   lambda **kw: attention_forward(**kw, num_heads=heads, additive_mask=mask),
                   lambda dout, cache: attention_backward(dout, cache)._asdict(),
                   inputs, wrt=NAMES, threshold=1e-6, floor=1e-8, seed=heads,
                   factors=public.scale_mistakes(head_size=6 // heads))
    public.check_with_dropout(f"attention_backward ({heads} heads)", inputs, mask, num_heads=heads, p=0.3)
