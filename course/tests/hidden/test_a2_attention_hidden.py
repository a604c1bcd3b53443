"""Assignment 2 (hidden): attention against an independent per-head reference, other shapes."""
import numpy as np
import pytest

from referee import close, gradient_check, rng

from bertnp.ops.attention import attention_backward, attention_forward

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


def _reference(inputs, mask, heads):
    x = inputs["x"]
    B, T, C = x.shape
    hs = C // heads
    q = x @ inputs["query_weight"].T + inputs["query_bias"]
    k = x @ inputs["key_weight"].T + inputs["key_bias"]
    v = x @ inputs["value_weight"].T + inputs["value_bias"]
    out = np.zeros_like(x)
    for b in range(B):
        for h in range(heads):
            cols = slice(h * hs, (h + 1) * hs)
            s = q[b, :, cols] @ k[b, :, cols].T / np.sqrt(hs) + mask[b, 0]
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[b, :, cols] = p @ v[b, :, cols]
    return out


@pytest.mark.parametrize("heads", [1, 3])
def test_attention_forward_hidden(heads):
    inputs, mask = _inputs(5)
    out, _ = attention_forward(**inputs, num_heads=heads, additive_mask=mask)
    close(f"attention output with {heads} head(s) against a per-head reference", out, _reference(inputs, mask, heads))
    out, _ = attention_forward(**inputs, num_heads=heads)
    close(f"attention output with {heads} head(s), no mask", out, _reference(inputs, np.zeros((2, 1, 1, 4)), heads))


@pytest.mark.parametrize("heads", [1, 3])
def test_attention_backward_hidden(heads):
    inputs, mask = _inputs(6)
    gradient_check(f"attention_backward ({heads} heads)",
                   lambda **kw: attention_forward(**kw, num_heads=heads, additive_mask=mask),
                   lambda dout, cache: attention_backward(dout, cache)._asdict(),
                   inputs, wrt=NAMES, threshold=1e-6, floor=1e-8, seed=heads)
