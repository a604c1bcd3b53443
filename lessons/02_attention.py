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
# In this lesson: the shapes at every step, why the scores are divided by $\sqrt{d_h}$, a softmax that
# survives logits of $\pm 10^4$ and a row that is entirely padding, the softmax backward (yours to
# derive and write), a gradient check of the whole attention — where one parameter sits on the noise
# floor for a reason worth understanding — and a picture of the attention maps.
#
# **Prerequisites:** lesson 1 (backward passes, gradient checks, the noise floor); matrix products
# over batch axes (`(B, nh, T, hs) @ (B, nh, hs, T)`); $e^x$ and its derivative.
#
# **Time:** about 45–60 minutes.

# %%
# %matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
from bertnp.ops.attention import AttentionGrads, attention_backward, attention_forward
from bertnp.ops.softmax import SoftmaxCache, softmax_forward   # the backward is yours to write

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

def split_heads(t):                                      # (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs)
    return t.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)

q = x @ params["query_weight"].T + params["query_bias"]  # (B, T, C)
k = x @ params["key_weight"].T + params["key_bias"]
v = x @ params["value_weight"].T + params["value_bias"]
qh, kh, vh = split_heads(q), split_heads(k), split_heads(v)          # (B, nh, T, hs)
scores = qh @ kh.swapaxes(-1, -2) / np.sqrt(hs) + additive           # (B, nh, T, hs) @ (B, nh, hs, T) -> (B, nh, T, T)
scores_shifted = scores - scores.max(axis=-1, keepdims=True)         # see section 2
probs = np.exp(scores_shifted) / np.exp(scores_shifted).sum(axis=-1, keepdims=True)   # (B, nh, T, T)
context = probs @ vh                                                 # (B, nh, T, T) @ (B, nh, T, hs) -> (B, nh, T, hs)
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
teach.check_close("our attention output vs attention_forward", out, lib_out, rtol=1e-12, atol=1e-12)
teach.check_close("our attention maps vs attention_forward", probs, lib_probs, rtol=1e-12, atol=1e-14)

# every row of every map is a probability distribution, and padding keys get exactly 0
teach.check_close("sum of every row of every map", lib_probs.sum(axis=-1), np.ones((B, nh, T)), rtol=1e-12)
teach.check_equal("probability of the two [PAD] keys, sequence 1, every head and query",
                  lib_probs[1, :, :, 3:], np.zeros((nh, T, 2)))
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
teach.check_equal("outputs at the real positions of sequence 1, garbage in its padding",
                  out_changed[1, :3], lib_out[1, :3])
teach.check_equal("outputs of sequence 0 (not padded)", out_changed[0], lib_out[0])

# %% [markdown]
# ### Why divide by $\sqrt{d_h}$?
#
# If the entries of $q$ and $k$ are independent with mean 0 and variance 1, then $q \cdot k = \sum_{i=1}^{d_h} q_i k_i$
# has variance $d_h$. At BERT-base's $d_h = 64$ the raw scores have a standard deviation of 8, the
# softmax saturates to nearly one-hot, and its gradient (section 3) nearly vanishes. Dividing by
# $\sqrt{d_h}$ brings the standard deviation back to 1 whatever the head size. Measured on 20,000 random
# pairs (the standard deviation of a sample of $n$ has its own spread, about $\sigma/\sqrt{2n} = 0.005\,\sigma$,
# so we allow 4 times that):

# %%
for d in (4, 16, 64, 256):
    qs, ks = rng.standard_normal((2, 20000, d))
    dots = (qs * ks).sum(axis=-1)
    print(f"d_h = {d:>3}: std of q.k = {dots.std():6.2f}   std of q.k / sqrt(d_h) = {dots.std() / np.sqrt(d):.3f}")
    teach.check(abs(dots.std() / np.sqrt(d) - 1) < 4 * 0.005, f"std of q.k / sqrt({d})",
                dots.std() / np.sqrt(d), "1 +- 0.02")

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
# the right answer. Remember this **shift invariance**: it comes back twice in this lesson.

# %%
s = np.array([[1e4, 0.0, -1e4],
              [3.0, 1.0, 0.2]])
with np.errstate(over="ignore", invalid="ignore"):       # silence the warnings: we want to see the NaN
    naive = np.exp(s) / np.exp(s).sum(axis=-1, keepdims=True)
stable, _ = softmax_forward(s)
print("naive: ", naive)
print("stable:", stable)
teach.check(np.isnan(naive[0]).any(), "the naive softmax of [1e4, 0, -1e4] contains NaN", naive[0], "a NaN")
teach.check_close("stable softmax of [1e4, 0, -1e4]", stable[0], [1.0, 0.0, 0.0], rtol=0, atol=1e-300)
teach.check_close("stable softmax of an ordinary row", stable[1], np.exp(s[1]) / np.exp(s[1]).sum(), rtol=1e-15)

# %% [markdown]
# ### A fully masked row
#
# What if *every* key of a row is padding — say a batch row that is all `[PAD]`? Then every score in
# the row is $s + \text{finfo.min}$. In floating point that sum **is** `finfo.min` (the gap between
# neighbouring float64 numbers up there is about $10^{292}$), so all scores are equal and the softmax is
# uniform: finite, harmless, and ignored by the loss. Hugging Face uses the dtype's minimum for exactly
# this reason. With $-\infty$ as the mask the shift would be $-\infty - (-\infty) = $ `nan`;
# `softmax_forward` guards against that case too and returns a row of zeros.

# %%
row_scores = rng.standard_normal((1, 4))
p_min, _ = softmax_forward(row_scores, np.full((1, 4), np.finfo(np.float64).min))
p_inf, _ = softmax_forward(row_scores, np.full((1, 4), -np.inf))
print("mask = finfo.min:", p_min, "   mask = -inf:", p_inf)
teach.check_close("fully masked row (finfo.min)", p_min, np.full((1, 4), 0.25), rtol=1e-15)
teach.check(np.all(np.isfinite(p_inf)), "fully masked row (-inf) is finite", p_inf, "no NaN")

# the same inside attention: a sequence made only of padding
pad_only = np.zeros((1, 1, 1, T)) + np.finfo(np.float64).min
_, c = attention_forward(x[:1], **params, num_heads=nh, additive_mask=pad_only)
teach.check_close("attention maps of a sequence made only of padding", c.softmax_cache.probs,
                  np.full((1, nh, T, T), 1 / T), rtol=1e-15)


# %% [markdown]
# ## 3. The softmax backward
#
# **Your task:** given `probs` $= p = \operatorname{softmax}(s)$ (row by row over the last axis, in the
# forward's `SoftmaxCache`) and the upstream gradient `dprobs` $= \partial L/\partial p$, return
# `dscores` $= \partial L/\partial s$, for arrays of any number of leading axes — attention's are
# (B, nh, T, T).
#
# *Method:* $p_i = e^{s_i}/Z$ with $Z = \sum_k e^{s_k}$, and $Z$ depends on every $s_j$. Work out
# $\partial p_i / \partial s_j$ for $j = i$ and for $j \ne i$ (it can be written with $p$ alone), then
# apply the chain rule, summing over $i$. Do **not** build the $K \times K$ Jacobian per row: the result
# needs only one number per row besides `probs` and `dprobs`.
#
# Two facts to test your formula against (the check tests them too): a masked key has $p_j = 0$, so
# nothing the loss does can move it; and shifting a whole row of scores changes nothing (section 2), so
# each row of `dscores` sums to zero. The mask is a constant: it gets no gradient.

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


# %% [markdown]
# The check uses one attention map, (T, T) = (5, 5), and then attention-shaped scores, (B, nh, T, T) =
# (2, 3, 5, 5), with padded keys masked, a random `dprobs`, and the finite differences of lesson 1. Note that
# the two last axes have the same size, as in attention: a sum over the wrong one of them changes no shape.

# %%
def numerical_grads(forward, inputs, dout, wrt, **settings):
    '''Finite differences of L = sum(forward(**inputs, **settings)[0] * dout) for each input named in wrt
    (lesson 1, section 2).'''
    def loss():
        out, _ = forward(**inputs, **settings)
        return float((out * dout).sum())
    return {name: teach.finite_differences(loss, inputs[name]) for name in wrt}


# %% tags=["check"]
check_rng = np.random.default_rng(201)
cases = {"map (5, 5)": ((5, 5), (1, 5), np.s_[..., 4:]),                          # the last key is padding
         "scores (2, 3, 5, 5)": ((2, 3, 5, 5), (2, 1, 1, 5), np.s_[1, ..., 3:])}     # keys 3, 4 of sequence 1
for label, (shape, mask_shape, padded) in cases.items():
    scores = check_rng.standard_normal(shape)
    mask = np.zeros(mask_shape)
    mask[padded] = np.finfo(np.float64).min
    p, cache_s = softmax_forward(scores, mask)
    dprobs = check_rng.standard_normal(p.shape)
    ds = my_softmax_backward(dprobs, cache_s)
    teach.check(np.shape(ds) == p.shape, f"{label}: shape of dscores", np.shape(ds), p.shape)
    teach.check(np.all(ds[padded] == 0), f"{label}: largest |dscores| of a masked key (its probability is exactly 0)",
                float(np.abs(ds[padded]).max()), 0.0)
    teach.check(np.abs(ds.sum(axis=-1)).max() < 1e-12,
                f"{label}: largest |sum of a row of dscores| (shifting a row of scores changes nothing, so each "
                "row must sum to 0; the term that makes it so is one number per row, shaped (..., 1) and broadcast "
                "along the row: is it there, summed over the last axis, kept with keepdims?)",
                float(np.abs(ds.sum(axis=-1)).max()), "< 1e-12")
    numeric = numerical_grads(softmax_forward, dict(scores=scores), dprobs, wrt=("scores",), additive_mask=mask)
    teach.check_gradient(f"{label}: dscores", ds, numeric["scores"])

# %% [markdown]
# ### Solution notes
#
# With $Z = \sum_k e^{s_k}$ and $p_i = e^{s_i}/Z$, the quotient rule gives
#
# $$\frac{\partial p_i}{\partial s_j} = \frac{\delta_{ij} e^{s_i}}{Z} - \frac{e^{s_i} e^{s_j}}{Z^2} = p_i(\delta_{ij} - p_j),$$
#
# the Jacobian $J = \operatorname{diag}(p) - p p^\top$ (symmetric). The chain rule sums over $i$:
#
# $$\frac{\partial L}{\partial s_j} = \sum_i dp_i\, p_i(\delta_{ij} - p_j) = p_j\Big(dp_j - \sum_i dp_i\, p_i\Big).$$
#
# So one dot product per row, $\langle dp, p\rangle$, replaces the $K\times K$ matrix: $O(K)$ work instead of
# $O(K^2)$ for each of the $B \cdot n_h \cdot T$ rows. Both facts follow: a masked key ($p_j = 0$) gets exactly 0,
# and $\sum_j \partial L/\partial s_j = \langle dp, p\rangle - \langle dp, p\rangle \sum_j p_j = 0$.
#
# The usual mistakes: the sum $\langle dp, p\rangle$ taken without `keepdims` — for one (T, T) map the result,
# of shape (T,), broadcasts against (T, T) along the wrong axis without a word (with more leading axes NumPy
# at least raises an error); the sum over the wrong axis (`axis=-2`); a sign error; keeping only the
# diagonal of $J$ ($p \odot dp$ or $p(1-p) \odot dp$).
#
# The cell below confirms the Jacobian formula on one row against finite differences of `softmax_forward`
# (column $j$ of $J$ is $\partial p / \partial s_j$):

# %%
row = rng.standard_normal(6)
p_row, _ = softmax_forward(row)
jacobian = np.diag(p_row) - np.outer(p_row, p_row)                      # J[i, j] = dp_i / ds_j
numeric_jacobian = np.stack([numerical_grads(softmax_forward, dict(scores=row), np.eye(6)[i], wrt=("scores",))["scores"]
                             for i in range(6)])                       # row i: the gradient of p_i
teach.check_close("diag(p) - p p^T vs finite differences", jacobian, numeric_jacobian, rtol=1e-6, atol=1e-10)

# %% [markdown]
# ## 4. Gradient check of the whole attention
#
# `attention_backward` chains the pieces in reverse: the two matrix products
# ($O = PV$ and $S = QK^\top/\sqrt{d_h}$, each giving a pair of gradients), the softmax backward in
# between, and finally the linear backward of the fused projection. It returns
# `AttentionGrads(x, query_weight, query_bias, key_weight, key_bias, value_weight, value_bias)`.
# (Lesson 6 asks you to write it.) Check all seven with tiny, distinct sizes and a padded sequence —
# first with plain relative errors:

# %%
Bc, Tc, Cc, nhc = 2, 4, 6, 2
inputs = dict(x=rng.standard_normal((Bc, Tc, Cc)))
for proj in ("query", "key", "value"):
    inputs[proj + "_weight"] = 0.5 * rng.standard_normal((Cc, Cc))
    inputs[proj + "_bias"] = rng.standard_normal(Cc)
mask_c = np.zeros((Bc, 1, 1, Tc))
mask_c[1, ..., 3:] = np.finfo(np.float64).min            # the last position of sequence 1 is padding

out_c, cache_c = attention_forward(**inputs, num_heads=nhc, additive_mask=mask_c)
dout_c = rng.standard_normal(out_c.shape)
analytic = attention_backward(dout_c, cache_c)._asdict()            # {name: gradient}
numeric = numerical_grads(attention_forward, inputs, dout_c, wrt=AttentionGrads._fields,
                          num_heads=nhc, additive_mask=mask_c)
raw = {name: float(teach.rel_error_array(analytic[name], numeric[name]).max()) for name in numeric}
for name, err in raw.items():
    print(f"{name:<14} relative error {err:.1e}   largest |numerical gradient| {np.abs(numeric[name]).max():.1e}")
teach.check(raw["key_bias"] > 1e3 * max(e for n, e in raw.items() if n != "key_bias"),
            "key_bias's relative error vs 1000 x the worst of the others", raw["key_bias"],
            f"> {1e3 * max(e for n, e in raw.items() if n != 'key_bias'):.1e}")

# %% [markdown]
# Everything is near $10^{-8}$ or below except `key_bias`, whose relative error is thousands of times larger
# (how much larger depends on the sizes and the seed). Is the backward wrong there? Look at the last
# column: its numerical gradient is $\sim 10^{-11}$, rounding noise. What the key bias does: it adds the same
# vector $b_k$ to every key, so every score of query row $i$ gains the *same* amount $q_i \cdot b_k / \sqrt{d_h}$,
# and softmax ignores a constant added to a row (section 2). So **the loss does not depend on $b_k$ at all:
# its true gradient is exactly zero**, the analytic one is rounding-sized, and the numerical one is noise.
# That is the noise floor of lesson 1. The right response is an absolute floor of $10^{-9}$, which holds
# entries tiny on both sides to agree within $10^{-9}$ and leaves every other entry to the relative test:

# %%
teach.check(np.abs(analytic["key_bias"]).max() < 1e-12, "largest |analytic key-bias gradient|",
            float(np.abs(analytic["key_bias"]).max()), "< 1e-12")
# the loss really ignores the key bias: shift it and nothing changes
shifted = dict(inputs, key_bias=inputs["key_bias"] + 3.0)
out_shifted, _ = attention_forward(**shifted, num_heads=nhc, additive_mask=mask_c)
teach.check_close("attention output after adding 3 to the key bias", out_shifted, out_c, rtol=0, atol=1e-12)

errors = teach.check_gradients(analytic, numeric, threshold=1e-7, floor=1e-9)

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
fig.suptitle("attention maps of the padded sequence (random weights)")
plt.show()
teach.check(lib_probs[1, :, :, 3:].max() == 0.0, "largest attention on a [PAD] key",
            float(lib_probs[1, :, :, 3:].max()), 0.0)

# %% [markdown]
# ## Summary
#
# * Shapes: (B, T, C) $\to$ heads (B, $n_h$, T, $d_h$) $\to$ scores (B, $n_h$, T, T) $\to$ back to (B, T, C).
# * Scale by $1/\sqrt{d_h}$ so the scores have unit variance; subtract the row maximum before `exp`.
# * Padding: add the dtype's minimum to padded keys; they get probability exactly 0, and a fully masked
#   row becomes uniform instead of NaN.
# * Softmax backward: one dot product per row, never the $K\times K$ Jacobian; masked keys get 0, rows sum to 0.
# * The key bias's gradient is exactly zero (softmax's shift invariance); a gradient check holds it to an
#   absolute noise floor of $10^{-9}$ and nothing more.
#
# Next: lesson 3 turns text into BERT's training examples.
