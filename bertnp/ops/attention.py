"""Multi-head scaled dot-product self-attention (Vaswani et al. 2017), BERT's ``attention.self``.

For each head h with query, key and value projections of the same input x:

    Q = x Wq^T + bq,  K = x Wk^T + bk,  V = x Wv^T + bv          (B, T, C) each
    scores = Q_h K_h^T / sqrt(hs) + mask                          (B, nh, T, T)
    probs  = dropout(softmax(scores))                             (B, nh, T, T)
    out_h  = probs V_h,  and the heads are concatenated back      (B, T, C)

The output projection (``attention.output.dense``) is a separate Linear in the model, exactly as
in Hugging Face's module tree. The three projections are done as ONE matrix product with the
weights stacked to (3C, C): same arithmetic, one large GEMM instead of three small ones.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from bertnp import backend
from bertnp.ops._checks import require_float, require_same_dtype, require_shape
from bertnp.ops.dropout import DropoutCache, dropout_backward, dropout_forward
from bertnp.ops.linear import LinearCache, linear_backward, linear_forward
from bertnp.ops.softmax import SoftmaxCache, softmax_backward, softmax_forward
from bertnp.parallel import matmul   # a @ b; on the CPU, the batch of matrices is split over the cores


class AttentionCache(NamedTuple):
    qkv_cache: LinearCache       # the fused projection's cache (input x, stacked weight)
    q: object                    # (B, nh, T, hs) queries, already scaled by 1/sqrt(hs)
    k: object                    # (B, nh, T, hs)
    v: object                    # (B, nh, T, hs)
    softmax_cache: SoftmaxCache  # holds probs (B, nh, T, T)
    dropout_cache: DropoutCache  # attention-probability dropout mask
    probs_dropped: object        # (B, nh, T, T) probabilities after dropout (what multiplied V)
    num_heads: int
    scale: float
    softmax_backward_fn: object = softmax_backward   # the backward paired with the softmax used


class AttentionGrads(NamedTuple):
    x: object
    query_weight: object
    query_bias: object
    key_weight: object
    key_bias: object
    value_weight: object
    value_bias: object


def attention_forward(x, query_weight, query_bias, key_weight, key_bias, value_weight, value_bias,
                      num_heads: int, additive_mask=None, dropout_p: float = 0.0, rng=None,
                      training: bool = False, softmax_fns=None):
    """x: (B, T, C); weights (C, C), biases (C,); additive_mask broadcastable to (B, nh, T, T),
    typically (B, 1, 1, T) with 0 for real keys and a large negative number for padding.
    Returns (out (B, T, C), cache); ``cache.softmax_cache.probs`` are the attention maps."""
    xp = backend.xp()
    require_float("x", x)
    if x.ndim != 3:
        raise ValueError(f"x must be 3-D (batch, seq_len, hidden), got shape {tuple(x.shape)}")
    batch, seq_len, channels = x.shape
    if not isinstance(num_heads, int) or num_heads <= 0 or channels % num_heads:
        raise ValueError(f"num_heads={num_heads!r} must be a positive divisor of hidden size {channels}")
    named = [("query_weight", query_weight), ("key_weight", key_weight), ("value_weight", value_weight)]
    for name, weight in named:
        require_float(name, weight)
        require_shape(name, weight, (channels, channels))
    for name, bias in [("query_bias", query_bias), ("key_bias", key_bias), ("value_bias", value_bias)]:
        require_float(name, bias)
        require_shape(name, bias, (channels,))
    require_same_dtype([("x", x)] + named)
    head_size = channels // num_heads
    scale = 1.0 / math.sqrt(head_size)

    # one GEMM for the three projections: stack the weights along the output axis.
    # TASK 2.1 attention_forward: scores, the padding mask, softmax, context (lesson 06)
    qkv_weight = xp.concatenate([query_weight, key_weight, value_weight], axis=0)   # (3C, C)
    qkv_bias = xp.concatenate([query_bias, key_bias, value_bias], axis=0)           # (3C,)
    qkv, qkv_cache = linear_forward(x, qkv_weight, qkv_bias)                        # (B, T, 3C)
    qkv = qkv.reshape(batch, seq_len, 3, num_heads, head_size)                       # (B, T, 3, nh, hs)
    qkv = qkv.transpose(2, 0, 3, 1, 4)                                               # (3, B, nh, T, hs)
    q, k, v = qkv[0] * scale, qkv[1], qkv[2]         # (B, nh, T, hs) each; scaling Q is cheaper than scores

    scores = matmul(q, k.swapaxes(-1, -2))                                           # (B, nh, T, T)
    # softmax_fns: an optional (forward, backward) pair with the softmax ops' signatures, e.g. the
    # fused CUDA kernel of kernels/softmax_attention.cu; by default the NumPy reference.
    softmax_fwd, softmax_bwd = softmax_fns if softmax_fns is not None else (softmax_forward, softmax_backward)
    probs, softmax_cache = softmax_fwd(scores, additive_mask)                        # (B, nh, T, T)
    probs_dropped, dropout_cache = dropout_forward(probs, dropout_p, rng, training)  # (B, nh, T, T)
    # P V written straight into the heads-side-by-side layout (B, T, nh, hs): no copy to concatenate them
    context = xp.empty((batch, seq_len, num_heads, head_size), dtype=x.dtype)        # (B, T, nh, hs)
    matmul(probs_dropped, v, out=context.transpose(0, 2, 1, 3))                      # (B, nh, T, hs) view
    out = context.reshape(batch, seq_len, channels)                                  # (B, T, C), a view
    # END TASK 2.1
    cache = AttentionCache(qkv_cache, q, k, v, softmax_cache, dropout_cache, probs_dropped,
                           num_heads, scale, softmax_bwd)
    return out, cache


def attention_backward(dout, cache: AttentionCache) -> AttentionGrads:
    """dout: (B, T, C) -> AttentionGrads(dx, dWq, dbq, dWk, dbk, dWv, dbv)."""
    xp = backend.xp()
    qkv_cache, q, k, v, softmax_cache, dropout_cache, probs_dropped, num_heads, scale, softmax_bwd = cache
    batch, seq_len, channels = dout.shape
    head_size = channels // num_heads

    # TASK 2.2 attention_backward: every gradient of the attention (lesson 06)
    dcontext = dout.reshape(batch, seq_len, num_heads, head_size).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
    # the gradients of q, k and v go straight into the fused projection's output layout
    # (B, T, 3, nh, hs) = (B, T, 3C), through the same transposed view the forward read them from
    dqkv = xp.empty((batch, seq_len, 3, num_heads, head_size), dtype=dout.dtype)   # (B, T, 3, nh, hs)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)                    # (B, nh, T, hs) views each
    # context = probs_dropped @ v: the two factors' gradients are the usual matmul pair.
    dprobs_dropped = matmul(dcontext, v.swapaxes(-1, -2))         # (B, nh, T, hs) @ (B, nh, hs, T) -> (B, nh, T, T)
    matmul(probs_dropped.swapaxes(-1, -2), dcontext, out=dv)      # (B, nh, T, T) @ (B, nh, T, hs) -> (B, nh, T, hs)
    dprobs = dropout_backward(dprobs_dropped, dropout_cache)      # back through the dropout mask
    dscores = softmax_bwd(dprobs, softmax_cache)                  # back through the softmax (mask is constant)
    # scores = q_scaled @ k^T: again a matmul pair.
    matmul(dscores, k, out=dq)                                    # (B, nh, T, T) @ (B, nh, T, hs): d q_scaled
    dq *= scale                                                   # dq = d q_scaled * scale (q_scaled = q * scale)
    matmul(dscores.swapaxes(-1, -2), q, out=dk)                   # (B, nh, T, T) @ (B, nh, T, hs) -> (B, nh, T, hs)
    dqkv = dqkv.reshape(batch, seq_len, 3 * channels)             # (B, T, 3, nh, hs) -> (B, T, 3C), a view
    dx, dqkv_weight, dqkv_bias = linear_backward(dqkv, qkv_cache)  # (B, T, C), (3C, C), (3C,)
    c = channels
    # the stacked weight's gradient splits back into the three projections' (views, no copies).
    return AttentionGrads(dx,
                          dqkv_weight[:c], dqkv_bias[:c],
                          dqkv_weight[c:2 * c], dqkv_bias[c:2 * c],
                          dqkv_weight[2 * c:], dqkv_bias[2 * c:])
    # END TASK 2.2
