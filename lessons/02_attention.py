# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 2 — Scaled dot-product attention, with a padding mask
#
# BERT's self-attention lets every position look at every other position of the same sequence.
# For one head with query, key and value projections of the hidden states $X$ (one row per position):
#
# $$Q = X W_q^\top + b_q,\quad K = X W_k^\top + b_k,\quad V = X W_v^\top + b_v,$$
# $$S = \frac{Q K^\top}{\sqrt{d_h}} + M, \qquad P = \operatorname{softmax}_{\text{row}}(S), \qquad O = P V .$$
#
# $M$ is the **padding mask**: 0 for real keys, a huge negative number for `[PAD]` keys, so no
# position ever attends to padding. With $n_h$ heads the hidden size $C$ is split into $n_h$ slices
# of $d_h = C / n_h$, each head attends on its own, and the results are concatenated.
#
# In this lesson: the shapes at every step, why the softmax needs care (logits of $\pm 10^4$, a row
# that is entirely padding), the softmax backward (yours to write), a gradient check of
# `attention_forward` / `attention_backward`, and a picture of the attention maps.

# %%
# %matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
from bertnp.gradcheck import check_layer, rel_error
from bertnp.ops.attention import AttentionGrads, attention_backward, attention_forward
from bertnp.ops.softmax import softmax_backward, softmax_forward

# %% [markdown]
# ## 1. Shapes, step by step
#
# A batch of $B = 2$ sequences of $T = 5$ positions, hidden size $C = 12$, $n_h = 3$ heads of $d_h = 4$
# (small and all different, so a wrong axis cannot go unnoticed). The second sequence has 3 real
# tokens and 2 `[PAD]`s. The tokenizer's `attention_mask` (1 = real, 0 = padding) becomes the additive
# mask exactly as `bertnp.model` builds it: $(1 - \text{mask}) \times$ the dtype's most negative number,
# shaped (B, 1, 1, T) so it broadcasts over heads and queries.

# %%
B, T, C, nh = 2, 5, 12, 3
hs = C // nh                                             # head size d_h
x = rng.standard_normal((B, T, C))                       # hidden states (B, T, C)
params = {}
for proj in ("query", "key", "value"):
    params[proj + "_weight"] = rng.standard_normal((C, C)) / np.sqrt(C)   # (out, in)
    params[proj + "_bias"] = 0.1 * rng.standard_normal(C)

attention_mask = np.array([[1, 1, 1, 1, 1],
                           [1, 1, 1, 0, 0]])             # (B, T): the second sequence is padded
additive = (1.0 - attention_mask)[:, None, None, :] * np.finfo(np.float64).min   # (B, T) -> (B, 1, 1, T)

def split_heads(t):                                      # (B, T, C) -> (B, nh, T, hs)
    return t.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)

q = x @ params["query_weight"].T + params["query_bias"]  # (B, T, C)
k = x @ params["key_weight"].T + params["key_bias"]
v = x @ params["value_weight"].T + params["value_bias"]
qh, kh, vh = split_heads(q), split_heads(k), split_heads(v)          # (B, nh, T, hs)
scores = qh @ kh.swapaxes(-1, -2) / np.sqrt(hs) + additive           # (B, nh, T, T): query x key
scores_shifted = scores - scores.max(axis=-1, keepdims=True)         # see section 2
probs = np.exp(scores_shifted) / np.exp(scores_shifted).sum(axis=-1, keepdims=True)   # (B, nh, T, T)
context = probs @ vh                                                 # (B, nh, T, hs)
out = context.transpose(0, 2, 1, 3).reshape(B, T, C)                 # (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)

for name, a in [("x", x), ("q = x Wq^T + bq", q), ("q split into heads", qh), ("scores", scores),
                ("probs", probs), ("context = probs @ v", context), ("out (heads concatenated)", out)]:
    print(f"{name:<26} {str(a.shape):<16}")

# %% [markdown]
# The library does the same in `bertnp/ops/attention.py` (with the three projections fused into one
# matrix product, and the $1/\sqrt{d_h}$ applied to $Q$ instead of to the $T \times T$ scores). Same numbers:

# %%
lib_out, cache = attention_forward(x, **params, num_heads=nh, additive_mask=additive)
lib_probs = cache.softmax_cache.probs                    # the attention maps (B, nh, T, T)
print("max |ours - library|:", np.abs(out - lib_out).max())
assert np.allclose(out, lib_out, rtol=1e-12, atol=1e-12)
assert np.allclose(probs, lib_probs, rtol=1e-12, atol=1e-14)

# every row of every map is a probability distribution, and padding keys get exactly 0
assert np.allclose(lib_probs.sum(axis=-1), 1.0)
assert np.all(lib_probs[1, :, :, 3:] == 0.0)
print("attention of sequence 1, head 0 (rows: queries, columns: keys):")
print(lib_probs[1, 0])

# %% [markdown]
# Because padding keys get probability exactly 0, **what sits at a padded position cannot change
# the output at the real positions**. (The padded positions still produce outputs of their own, as
# queries; the losses ignore them.)

# %%
x_changed = x.copy()
x_changed[1, 3:] = 100 * rng.standard_normal((2, C))     # garbage at the two padded positions
out_changed, _ = attention_forward(x_changed, **params, num_heads=nh, additive_mask=additive)
print("change at real positions of sequence 1:", np.abs(out_changed[1, :3] - lib_out[1, :3]).max())
assert np.array_equal(out_changed[1, :3], lib_out[1, :3])
assert np.array_equal(out_changed[0], lib_out[0])

# %% [markdown]
# ### Why divide by $\sqrt{d_h}$?
#
# If the entries of $q$ and $k$ are independent with mean 0 and variance 1, then $q \cdot k = \sum_{i=1}^{d_h} q_i k_i$
# has variance $d_h$. At BERT-base's $d_h = 64$ the raw scores have a standard deviation of 8, the
# softmax saturates to nearly one-hot, and its gradient (next sections) nearly vanishes. Dividing by
# $\sqrt{d_h}$ brings the standard deviation back to 1 whatever the head size:

# %%
for d in (4, 16, 64, 256):
    qs, ks = rng.standard_normal((2, 20000, d))
    dots = (qs * ks).sum(axis=-1)
    print(f"d_h = {d:>3}: std of q.k = {dots.std():6.2f}   std of q.k / sqrt(d_h) = {dots.std() / np.sqrt(d):.3f}")
    assert abs(dots.std() / np.sqrt(d) - 1) < 0.05

# %% [markdown]
# ## 2. A softmax that never overflows
#
# $\operatorname{softmax}(s)_i = e^{s_i} / \sum_k e^{s_k}$. Written literally it breaks on large logits:
# `exp(1e4)` is `inf` in any float type, and `inf / inf` is `nan`. But adding a constant $c$ to every
# score changes nothing,
#
# $$\frac{e^{s_i - c}}{\sum_k e^{s_k - c}} = \frac{e^{-c} e^{s_i}}{e^{-c}\sum_k e^{s_k}} = \frac{e^{s_i}}{\sum_k e^{s_k}},$$
#
# so take $c = \max_k s_k$: every exponent is then $\le 0$ (no overflow) and one of them is exactly
# $e^0 = 1$ (the sum is $\ge 1$: no division by zero). Very negative scores underflow to 0, which is
# the right answer.

# %%
s = np.array([[1e4, 0.0, -1e4],
              [3.0, 1.0, 0.2]])
with np.errstate(over="ignore", invalid="ignore"):       # silence the warnings: we want to see the NaN
    naive = np.exp(s) / np.exp(s).sum(axis=-1, keepdims=True)
stable, _ = softmax_forward(s)
print("naive: ", naive)
print("stable:", stable)
assert np.isnan(naive[0]).any()
assert np.all(np.isfinite(stable)) and np.allclose(stable[0], [1.0, 0.0, 0.0])
assert np.allclose(stable[1], np.exp(s[1]) / np.exp(s[1]).sum())

# %% [markdown]
# ### A fully masked row
#
# What if *every* key of a row is padding — say a batch row that is all `[PAD]`? Then every score in
# the row is $s + \text{finfo.min}$. In floating point that sum **is** `finfo.min` (the ulp up there is
# about $10^{292}$), so all scores are equal and the softmax is uniform: finite, harmless, and ignored by
# the loss. Hugging Face uses the dtype's minimum for exactly this reason. With $-\infty$ as the
# mask the shift would be $-\infty - (-\infty) = $ `nan`; `softmax_forward` guards against that case too
# and returns a row of zeros.

# %%
row_scores = rng.standard_normal((1, 4))
all_masked = np.full((1, 4), np.finfo(np.float64).min)
p_min, _ = softmax_forward(row_scores, all_masked)
p_inf, _ = softmax_forward(row_scores, np.full((1, 4), -np.inf))
print("mask = finfo.min:", p_min, "   mask = -inf:", p_inf)
assert np.allclose(p_min, 0.25)
assert np.all(np.isfinite(p_inf))

# the same inside attention: a sequence made only of padding
pad_only = np.zeros((1, 1, 1, T)) + np.finfo(np.float64).min
_, c = attention_forward(x[:1], **params, num_heads=nh, additive_mask=pad_only)
assert np.allclose(c.softmax_cache.probs, 1 / T)


# %% [markdown]
# ## 3. The softmax backward
#
# Write $p = \operatorname{softmax}(s)$ for one row. Differentiating $p_i = e^{s_i}/Z$ with $Z = \sum_k e^{s_k}$:
#
# $$\frac{\partial p_i}{\partial s_j} = \frac{\delta_{ij} e^{s_i}}{Z} - \frac{e^{s_i} e^{s_j}}{Z^2} = p_i(\delta_{ij} - p_j).$$
#
# Given the upstream gradient $dp_i = \partial L/\partial p_i$, the chain rule sums over $i$:
#
# $$ds_j = \sum_i dp_i\, p_i(\delta_{ij} - p_j) = p_j\Big(dp_j - \sum_i dp_i\, p_i\Big).$$
#
# So there is no need to build the $K \times K$ Jacobian $\operatorname{diag}(p) - p p^\top$ for each of the
# $B \cdot n_h \cdot T$ rows: one dot product per row does it, $O(K)$ instead of $O(K^2)$. Note two
# consequences: a masked key ($p_j = 0$) gets gradient exactly 0, and $\sum_j ds_j = 0$ (adding a constant
# to the scores changes nothing, so the gradient has no component along $(1, \dots, 1)$).
# The mask is a constant: it has no gradient.

# %% tags=["exercise"]
# EXERCISE: softmax_backward -- dscores from dprobs and SoftmaxCache(probs), row by row over the last axis
def my_softmax_backward(dprobs, cache):
    '''dprobs: (..., K) -> dscores: (..., K).'''
    probs = cache.probs                                  # (..., K)
    ### BEGIN SOLUTION
    dot = (dprobs * probs).sum(axis=-1, keepdims=True)   # (..., 1): sum_i dp_i p_i per row
    dscores = probs * (dprobs - dot)                     # (..., K)
    ### END SOLUTION
    return dscores


# %% tags=["check"]
scores = rng.standard_normal((2, 3, 4, 5))               # (B, nh, T, T) with distinct sizes
mask = np.zeros((2, 1, 1, 5))
mask[1, ..., 3:] = np.finfo(np.float64).min              # padding keys in the second sequence
errors = check_layer(softmax_forward, my_softmax_backward, dict(scores=scores), wrt=("scores",),
                     additive_mask=mask)
print("check_layer:", errors)
assert errors["scores"] < 1e-7

# the same as multiplying by the explicit Jacobian, on one row
probs_row, cache_row = softmax_forward(scores[0, 0, 0])
dp = rng.standard_normal(5)
jacobian = np.diag(probs_row) - np.outer(probs_row, probs_row)      # J[i, j] = dp_i / ds_j
assert np.allclose(my_softmax_backward(dp, cache_row), jacobian.T @ dp, atol=1e-14)

# masked keys get exactly zero gradient; each row of the gradient sums to zero
p, cache_m = softmax_forward(scores, mask)
ds = my_softmax_backward(rng.standard_normal(p.shape), cache_m)
assert np.all(ds[1, ..., 3:] == 0.0)
assert np.abs(ds.sum(axis=-1)).max() < 1e-12

# %% [markdown]
# ## 4. Gradient check of the whole attention
#
# `attention_backward` chains the pieces in reverse: the two matrix products
# ($O = PV$ and $S = QK^\top/\sqrt{d_h}$, each giving a pair of gradients), your softmax backward in
# between, and finally the linear backward of the fused projection. It returns
# `AttentionGrads(x, query_weight, query_bias, key_weight, key_bias, value_weight, value_bias)`.
# Check every one of them with tiny, distinct sizes and a padded sequence:

# %%
Bc, Tc, Cc, nhc = 2, 4, 6, 2
inputs = dict(x=rng.standard_normal((Bc, Tc, Cc)))
for proj in ("query", "key", "value"):
    inputs[proj + "_weight"] = 0.5 * rng.standard_normal((Cc, Cc))
    inputs[proj + "_bias"] = rng.standard_normal(Cc)
mask_c = np.zeros((Bc, 1, 1, Tc))
mask_c[1, ..., 3:] = np.finfo(np.float64).min            # last position of sequence 1 is padding

raw = check_layer(attention_forward, attention_backward, inputs, wrt=AttentionGrads._fields,
                  num_heads=nhc, additive_mask=mask_c)
for name, err in raw.items():
    print(f"{name:<14} {err:.1e}")

# %% [markdown]
# Everything is near $10^{-9}$ or below except `key_bias`, whose error is far larger than the others' (how much
# larger depends on the sizes and the seed; it can reach $10^{-3}$). Is the backward wrong there? Look at
# what the key bias does: it adds the same vector $b_k$ to every key, so every score of query row $i$ gains
# the *same* amount $q_i \cdot b_k / \sqrt{d_h}$. Softmax ignores a constant added to a row (section 2). So
# **the loss does not depend on $b_k$ at all: its true gradient is exactly zero**, the analytic one is rounding-sized,
# and the numerical one is rounding noise. That is the noise floor from lesson 1. The right response is
# a floor of $10^{-9}$, which forgives only entries that are tiny on both sides:

# %%
out_c, cache_c = attention_forward(**inputs, num_heads=nhc, additive_mask=mask_c)
grads = attention_backward(rng.standard_normal(out_c.shape), cache_c)
print("largest |analytic key-bias gradient|:", np.abs(grads.key_bias).max())
assert np.abs(grads.key_bias).max() < 1e-12

# the loss really ignores the key bias: shift it and nothing changes
shifted = dict(inputs, key_bias=inputs["key_bias"] + 3.0)
out_shifted, _ = attention_forward(**shifted, num_heads=nhc, additive_mask=mask_c)
assert np.allclose(out_shifted, out_c, atol=1e-12)

errors = check_layer(attention_forward, attention_backward, inputs, wrt=AttentionGrads._fields,
                     num_heads=nhc, additive_mask=mask_c, floor=1e-9)
print({k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-7, errors

# %% [markdown]
# (BERT keeps the key bias anyway — Hugging Face checkpoints have it — and it stays where it started:
# in training its gradient is rounding noise, far below AdamW's $\epsilon$, and it gets no weight decay.)
#
# ## 5. Attention maps
#
# `attention_forward` keeps the probabilities in its cache (`cache.softmax_cache.probs`, shape (B, nh, T, T));
# `model(..., output_attentions=True)` returns them for every layer. Row $i$ of a map says how much
# query position $i$ takes from each key position. Here are the three heads for the padded sequence of
# section 1: the two `[PAD]` columns are empty. The weights are random, so the patterns mean nothing
# yet; lesson 4 trains a BERT.

# %%
tokens = ["[CLS]", "cats", "[SEP]", "[PAD]", "[PAD]"]
fig, axes = plt.subplots(1, nh, figsize=(12, 3.8), sharey=True, layout="constrained")
for h, ax in enumerate(axes):
    im = ax.imshow(lib_probs[1, h], vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(T), tokens, rotation=45); ax.set_yticks(range(T), tokens)
    ax.set_xlabel("key"); ax.set_title(f"head {h}")
axes[0].set_ylabel("query")
fig.colorbar(im, ax=axes, shrink=0.8, label="attention probability")
plt.show()
assert lib_probs[1, :, :, 3:].max() == 0.0

# %% [markdown]
# ## Summary
#
# * Shapes: (B, T, C) $\to$ heads (B, $n_h$, T, $d_h$) $\to$ scores (B, $n_h$, T, T) $\to$ back to (B, T, C).
# * Scale by $1/\sqrt{d_h}$ so the scores have unit variance; subtract the row maximum before `exp`.
# * Padding: add the dtype's minimum to padded keys; they get probability exactly 0, a fully masked
#   row becomes uniform instead of NaN.
# * Softmax backward: $ds = p \odot (dp - \langle dp, p\rangle)$, one dot product per row.
# * The key bias's gradient is exactly zero (softmax's shift invariance); gradient checks give it a
#   $10^{-9}$ noise floor and nothing more.
