"""Assignment 2 (public): multi-head self-attention with BERT's padding mask."""
from pathlib import Path

import numpy as np

from referee import CheckFailed, check, close, gradient_check, rng

from bertnp.ops.attention import attention_backward, attention_forward

FIXTURE = Path(__file__).with_name("data") / "attention_forward.npz"
NAMES = ("x", "query_weight", "query_bias", "key_weight", "key_bias", "value_weight", "value_bias")


def _fixture():
    data = np.load(FIXTURE)
    return {n: data[n].copy() for n in NAMES}, data["additive_mask"], data["out"], data["probs"]


def test_attention_forward():
    """Task 2.1: scores Q K^T / sqrt(head size) plus the mask, softmax over the keys, times V."""
    inputs, mask, expected_out, expected_probs = _fixture()
    out, cache = attention_forward(**inputs, num_heads=2, additive_mask=mask)
    probs = np.asarray(cache.softmax_cache.probs)
    check(probs.shape == (2, 2, 5, 5), "attention probabilities' shape (B, heads, T, T)", probs.shape, (2, 2, 5, 5))
    row_sums = probs.sum(-1)
    padded = probs[1, :, :, 3:]
    if not np.allclose(row_sums, 1.0, atol=1e-12) or np.any(padded != 0.0):
        raise CheckFailed(f"attention probabilities: each row must sum to 1 over the keys (it sums to "
                          f"{row_sums.min():.4f} .. {row_sums.max():.4f}) with exactly 0 on the padded keys (they get "
                          f"up to {np.abs(padded).max():.4f}): add the padding mask to the scores BEFORE the softmax -- "
                          "exp of the dtype's minimum is exactly 0, and the real keys share all the probability")
    close("attention probabilities against the reference numbers", probs, expected_probs, rtol=1e-9, atol=1e-12)
    close("attention output against the reference numbers", out, expected_out, rtol=1e-9, atol=1e-12)


def test_attention_backward():
    """Task 2.2: every gradient of the attention, with the padding mask, by finite differences,
    then again with dropout on the probabilities (training mode). (The key bias has an exactly zero gradient -- softmax ignores a shift of a row -- so entries
    below 1e-8 are compared absolutely.)"""
    inputs, mask, _, _ = _fixture()
    gradient_check("attention_backward",
                   lambda **kw: attention_forward(**kw, num_heads=2, additive_mask=mask),
                   lambda dout, cache: attention_backward(dout, cache)._asdict(),
                   inputs, wrt=NAMES, threshold=1e-6, floor=1e-8, factors=scale_mistakes(head_size=3))
    check_with_dropout("attention_backward", inputs, mask, num_heads=2)


def scale_mistakes(head_size: int) -> dict:
    """The constant factors a misplaced 1/sqrt(head_size) leaves on dWq, dbq or dWk."""
    s = head_size ** -0.5
    return {1 / s: f"the scores' 1/sqrt(head_size) = {s:.4g} is missing from this gradient "
                   "(scores = (q / sqrt(hs)) k^T: both dq and dk carry it once)",
            s: f"the scores' 1/sqrt(head_size) = {s:.4g} is applied twice here (the cache's q is already scaled)"}


def check_with_dropout(what: str, inputs: dict, mask, num_heads: int, p: float = 0.2) -> None:
    """The same gradient check with dropout on the probabilities (training, a fixed seed: the same
    mask in every forward, so finite differences see one function). Run after the check without
    dropout passed, so a failure here is the dropout's part of the backward."""
    try:
        gradient_check(f"{what} with attention dropout p={p}",
                       lambda **kw: attention_forward(**kw, num_heads=num_heads, additive_mask=mask,
                                                      dropout_p=p, rng=5, training=True),
                       lambda dout, cache: attention_backward(dout, cache)._asdict(),
                       inputs, wrt=NAMES, threshold=1e-6, floor=1e-8, seed=4)
    except CheckFailed as exc:
        raise CheckFailed(f"{what}: right without dropout, wrong with attention dropout p={p} (training): "
                          "context = dropout(probs) @ v, so dv takes the DROPPED probabilities and dprobs goes back "
                          f"through dropout_backward with the forward's mask before the softmax backward\n{exc}") from None
