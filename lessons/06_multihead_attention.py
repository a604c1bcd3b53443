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
# # Lesson 6 — Multi-head attention, all of it
#
# Lesson 2 wrote the softmax backward and checked the library's attention. Now you write the whole
# backward of multi-head self-attention yourself: through the output reshape, the two batched matrix
# products, the softmax with its padding mask, the head split, and the three projections.
#
# 1. The forward, one line at a time, with its shapes: Q/K/V projections, **splitting into heads and
#    merging them back** (reshapes whose gradients are reshapes), scores, mask, softmax, context.
# 2. **Exercise: `attention_backward`**, checked by finite differences, with the usual wrong answers
#    recognised (mask after the softmax, a missing $1/\sqrt{d_h}$, heads in the wrong order, a forgotten
#    path, a sign).
# 3. The **noise floor** again: the key bias, whose true gradient is exactly zero.
# 4. **Attention maps** of a trained model (all-MiniLM-L6-v2): a head that reads the previous token,
#    one that reads the next, heads that park on `[CLS]` — and the same heads scrambled when the head
#    split is done in the wrong order.
#
# **Prerequisites:** lesson 1 (gradient checks, the linear backward), lesson 2 (attention, the padding
# mask, the softmax backward), lesson 5 section 3 (gradients of a value used twice add up). Math:
# matrix products and their gradients, transposes.
#
# **Time:** about 75–90 minutes (the exercise is most of it).

# %%
# %matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
import math
from typing import NamedTuple

from bertnp.ops.attention import AttentionGrads, attention_backward, attention_forward
from bertnp.ops.layernorm import layernorm_forward

PARAMETER_NAMES = ("query_weight", "query_bias", "key_weight", "key_bias", "value_weight", "value_bias")

# %% [markdown]
# ## 1. The forward, line by line
#
# Input: hidden states $x$ of shape (B, T, C). Each of the three projections is a linear layer
# (weights in Hugging Face's (out, in) layout, lesson 1):
#
# $$Q = x W_q^\top + b_q, \qquad K = x W_k^\top + b_k, \qquad V = x W_v^\top + b_v \qquad \text{each (B, T, C)}.$$
#
# **Heads.** With $n_h$ heads of size $d_h = C / n_h$, channel $c$ of a token belongs to head $c \,/\!/\, d_h$:
# head 0 owns channels $0 \dots d_h - 1$, head 1 the next $d_h$, and so on. Splitting is a reshape that
# cuts the last axis into (heads, size) and a transpose that moves heads next to the batch, so that
# every head is one independent attention:
#
# $$(B, T, C) \xrightarrow{\text{reshape}} (B, T, n_h, d_h) \xrightarrow{\text{transpose}} (B, n_h, T, d_h).$$
#
# Then, for every (sequence, head) pair at once (`@` on 4-D arrays multiplies the last two axes):
#
# $$S = \frac{Q_h K_h^\top}{\sqrt{d_h}} + M \quad (B, n_h, T, T), \qquad P = \mathrm{softmax}_{\text{keys}}(S), \qquad O_h = P V_h \quad (B, n_h, T, d_h),$$
#
# and merging undoes the split: transpose back to (B, T, $n_h$, $d_h$), reshape to (B, T, C).
# (The output projection `attention.output.dense` that follows is a separate linear layer in BERT.)
#
# Why several small heads rather than one big one? The projections cost the same ($C \times C$ each), and
# so do the scores ($n_h \cdot T^2 \cdot d_h = T^2 C$ multiply-adds), but each head gets its own softmax:
# $n_h$ different ways to mix the positions instead of one. Section 4 shows what trained heads do with that.

# %%
def split_heads(t, num_heads):
    """(B, T, C) -> (B, nh, T, hs): head h holds channels h*hs ... (h+1)*hs - 1."""
    B, T, C = t.shape
    return t.reshape(B, T, num_heads, C // num_heads).transpose(0, 2, 1, 3)   # (B, T, nh, hs) -> (B, nh, T, hs)


def merge_heads(t):
    """(B, nh, T, hs) -> (B, T, C): the inverse of split_heads."""
    B, nh, T, hs = t.shape
    return t.transpose(0, 2, 1, 3).reshape(B, T, nh * hs)                     # (B, T, nh, hs) -> (B, T, C)


class MHACache(NamedTuple):
    x: np.ndarray            # (B, T, C) the input
    params: dict             # query_weight (C, C), query_bias (C,), key_..., value_...
    q: np.ndarray            # (B, nh, T, hs) queries, split into heads (not scaled)
    k: np.ndarray            # (B, nh, T, hs)
    v: np.ndarray            # (B, nh, T, hs)
    probs: np.ndarray        # (B, nh, T, T) attention probabilities
    additive_mask: object    # (B, 1, 1, T) or None: 0 for real keys, the dtype's minimum for padding
    num_heads: int
    scale: float             # 1 / sqrt(hs)


def mha_forward(x, params, num_heads, additive_mask=None):
    """x: (B, T, C) -> out: (B, T, C), multi-head self-attention without the output projection."""
    B, T, C = x.shape
    scale = 1.0 / math.sqrt(C // num_heads)
    q = x @ params["query_weight"].T + params["query_bias"]          # (B, T, C) @ (C, C) -> (B, T, C)
    k = x @ params["key_weight"].T + params["key_bias"]
    v = x @ params["value_weight"].T + params["value_bias"]
    q, k, v = (split_heads(t, num_heads) for t in (q, k, v))         # (B, nh, T, hs) each
    scores = (q @ k.swapaxes(-1, -2)) * scale                        # (B, nh, T, hs) @ (B, nh, hs, T) -> (B, nh, T, T)
    if additive_mask is not None:
        scores = scores + additive_mask                              # (B, 1, 1, T) broadcasts over heads and queries
    scores = scores - scores.max(axis=-1, keepdims=True)             # stable softmax (lesson 2)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)                       # (B, nh, T, T), rows sum to 1
    context = probs @ v                                              # (B, nh, T, T) @ (B, nh, T, hs) -> (B, nh, T, hs)
    out = merge_heads(context)                                       # (B, T, C)
    return out, MHACache(x, params, q, k, v, probs, additive_mask, num_heads, scale)

# %% [markdown]
# Does it compute what the library computes? `bertnp.ops.attention.attention_forward` fuses the three
# projections into one matrix product and scales $Q$ instead of the scores, but the meaning is the same.
# Two sequences, the second padded at its last two positions:

# %%
B, T, C, nh = 2, 5, 12, 3
x = rng.standard_normal((B, T, C))
params = {}
for proj in ("query", "key", "value"):
    params[proj + "_weight"] = rng.standard_normal((C, C)) / np.sqrt(C)     # (out, in)
    params[proj + "_bias"] = 0.1 * rng.standard_normal(C)
attention_mask = np.array([[1, 1, 1, 1, 1],
                           [1, 1, 1, 0, 0]])                            # (B, T): 1 real, 0 padding
additive = (1.0 - attention_mask)[:, None, None, :] * np.finfo(np.float64).min   # (B, T) -> (B, 1, 1, T)

out, cache = mha_forward(x, params, nh, additive)
library_out, _ = attention_forward(x, **params, num_heads=nh, additive_mask=additive)
teach.check_close("mha_forward vs bertnp's attention_forward", out, library_out, rtol=1e-12, atol=1e-13)
teach.check_equal("probability of the padded keys", cache.probs[1, :, :, 3:], np.zeros((nh, T, 2)))
for name, value in [("x", x), ("q, k, v per head", cache.q), ("scores, probs", cache.probs), ("out", out)]:
    print(f"{name:<18} {value.shape}")

# %% [markdown]
# ### A reshape's gradient is a reshape
#
# `split_heads` does no arithmetic: it moves every entry of its input to a new place. So every output
# entry *is* one input entry, and the gradient goes back along the same wire: the gradient of a split is
# a merge of the gradient, and the gradient of a merge is a split. Check it by finite differences on
# $L = \sum \mathrm{split}(x) \odot G$:

# %%
x_small = rng.standard_normal((2, 4, 6))                        # (B, T, C) = (2, 4, 6), nh = 2, hs = 3
G = rng.standard_normal((2, 2, 4, 3))                           # an upstream gradient for (B, nh, T, hs)
numeric = teach.finite_differences(lambda: float((split_heads(x_small, 2) * G).sum()), x_small)
error = teach.check_gradient("d split_heads(x) / dx, as merge_heads(G)", merge_heads(G), numeric)
teach.check_equal("merge_heads(split_heads(x)) == x", merge_heads(split_heads(x_small, 2)), x_small)

# %% [markdown]
# The axis order matters, and a wrong one does not crash. `t.reshape(B, nh, T, hs)` also produces an array of
# shape (B, $n_h$, T, $d_h$) — but it cuts the *flattened* (T, C) block into $n_h$ pieces, so "head 0" gets the
# first few *positions*, all channels, not channels $0 \dots d_h - 1$ of every position. Label each entry
# of a (1, 4, 6) input with `10 * position + channel` and look at head 0:

# %%
labelled = (10 * np.arange(4)[:, None] + np.arange(6)[None, :])[None].astype(float)   # (1, T=4, C=6)
right = split_heads(labelled, 2)                    # (1, 2, 4, 3)
wrong = labelled.reshape(1, 2, 4, 3)                # (1, 4, 6) -> (1, 2, 4, 3): the same shape, the wrong entries
print("head 0, right (positions 0-3, channels 0-2):\n", right[0, 0])
print("head 0, wrong (positions 0-1 and their channels, cut into rows of 3):\n", wrong[0, 0])
teach.check(not np.array_equal(right, wrong), "reshape(B, nh, T, hs) is not the head split")

# %% [markdown]
# ## 2. The backward — your exercise
#
# Write `my_attention_backward(dout, cache)`. Given $\partial L / \partial\,\text{out}$ of shape (B, T, C) and the
# `MHACache` of `mha_forward`, return a dict with the gradient of each input, **each with its input's
# shape**:
#
# | key | shape | |
# |---|---|---|
# | `x` | (B, T, C) | |
# | `query_weight`, `key_weight`, `value_weight` | (C, C) | (out, in) layout |
# | `query_bias`, `key_bias`, `value_bias` | (C,) | |
#
# How to get there:
#
# * Walk `mha_forward` **from its last line to its first**. Each line becomes one or two backward lines.
# * A batched product $Z = A\,B$ (over the last two axes) hands back two gradients. Which ones, and
#   in which order, follows from lesson 1's linear layer. Check every shape.
# * `merge_heads` and `split_heads` are each other's gradients (section 1).
# * The softmax backward is lesson 2's. Write it inline here: in a course handout the library's
#   `softmax_backward` is blanked too. The mask is a constant.
# * $x$ is read by **three** projections (lesson 5: gradients of a value used twice add up).
#
# The check compares every gradient with finite differences of $L = \sum \text{out} \odot \text{dout}$ on tiny,
# distinct sizes (B, T, C, $n_h$, $d_h$) = (2, 4, 6, 2, 3), the second sequence padded. One entry is special
# (section 3): the key bias, whose true gradient is exactly zero. The check holds such near-zero
# entries to an absolute $10^{-9}$ (`floor=1e-9`) and every other entry to a relative $10^{-7}$.

# %% tags=["exercise"]
# EXERCISE: attention_backward -- the gradients of x and of the six projection parameters
def my_attention_backward(dout, cache):
    '''dout: (B, T, C); cache: MHACache. Returns {"x": (B, T, C), "query_weight": (C, C), "query_bias": (C,), ...}.'''
    x, params, q, k, v, probs, additive_mask, num_heads, scale = cache
    ### BEGIN SOLUTION
    B, T, C = x.shape
    dcontext = split_heads(dout, num_heads)                     # out = merge(context): (B, T, C) -> (B, nh, T, hs)
    dprobs = dcontext @ v.swapaxes(-1, -2)                      # context = probs @ v: (B, nh, T, hs) @ (B, nh, hs, T)
    dv = probs.swapaxes(-1, -2) @ dcontext                      # (B, nh, T, T) @ (B, nh, T, hs) -> (B, nh, T, hs)
    row_dot = (dprobs * probs).sum(axis=-1, keepdims=True)      # softmax: (B, nh, T, 1) sum_j dp_j p_j
    dscores = probs * (dprobs - row_dot)                        # (B, nh, T, T); the mask is a constant
    dq = (dscores @ k) * scale                                  # scores = (q @ k^T) * scale
    dk = (dscores.swapaxes(-1, -2) @ q) * scale                 # (B, nh, T, T)^T @ (B, nh, T, hs)
    grads = {}
    dx = np.zeros_like(x)
    x_rows = x.reshape(-1, C)                                   # (B, T, C) -> (B*T, C)
    for name, d_heads in (("query", dq), ("key", dk), ("value", dv)):
        d = merge_heads(d_heads)                                # (B, nh, T, hs) -> (B, T, C)
        d_rows = d.reshape(-1, C)                               # (B, T, C) -> (B*T, C)
        grads[name + "_weight"] = d_rows.T @ x_rows             # (C, B*T) @ (B*T, C) -> (C, C)
        grads[name + "_bias"] = d_rows.sum(axis=0)              # (C,)
        dx += d @ params[name + "_weight"]                      # x feeds all three: the paths add
    grads["x"] = dx
    ### END SOLUTION
    return grads


# %% tags=["check"]
check_rng = np.random.default_rng(11)
Bc, Tc, Cc, nhc = 2, 4, 6, 2                                    # head size 3: T, C, nh, hs all different
x_check = check_rng.standard_normal((Bc, Tc, Cc))
params_check = {}
for proj in ("query", "key", "value"):
    params_check[proj + "_weight"] = 0.5 * check_rng.standard_normal((Cc, Cc))
    params_check[proj + "_bias"] = check_rng.standard_normal(Cc)
mask_check = np.zeros((Bc, 1, 1, Tc))
mask_check[1, ..., 3:] = np.finfo(np.float64).min               # the last position of sequence 1 is padding

out_check, cache_check = mha_forward(x_check, params_check, nhc, mask_check)
dout_check = check_rng.standard_normal(out_check.shape)         # random upstream gradient, never all-ones
loss = lambda: float((mha_forward(x_check, params_check, nhc, mask_check)[0] * dout_check).sum())
numeric = {"x": teach.finite_differences(loss, x_check)}
numeric.update({name: teach.finite_differences(loss, params_check[name]) for name in PARAMETER_NAMES})

yours = my_attention_backward(dout_check, cache_check)
try:
    errors = teach.check_gradients(yours, numeric, threshold=1e-7, floor=1e-9)
except teach.CheckFailed as failure:            # two mistakes the generic hints above do not name
    def agrees(name, transposed=False):
        mine = yours.get(name)
        mine = None if mine is None else (np.transpose(mine) if transposed else np.asarray(mine))
        return mine is not None and mine.shape == numeric[name].shape and np.allclose(mine, numeric[name], 1e-6, 1e-9)
    notes = [f"{name} is the TRANSPOSE of the numerical gradient: a weight and its gradient are stored "
             "(out, in), entry [i, j] for output channel i and input channel j"
             for name in ("query_weight", "key_weight", "value_weight") if agrees(name, transposed=True)]
    if all(agrees(name) for name in PARAMETER_NAMES):
        notes.append("all six parameter gradients are right and only x is wrong: x is read by three "
                     "projections; does your dx add up all three contributions?")
    raise teach.CheckFailed(str(failure) + "".join(f"\n  lesson hint: {note}" for note in notes)) from None

# %% [markdown]
# ### Solution notes
#
# The forward and, line by line from the bottom up, its backward ($s = 1/\sqrt{d_h}$):
#
# | forward | backward |
# |---|---|
# | $\text{out} = \mathrm{merge}(O_h)$ | $dO_h = \mathrm{split}(d\,\text{out})$ |
# | $O_h = P\,V_h$ | $dP = dO_h\,V_h^\top$, $\quad dV_h = P^\top dO_h$ |
# | $P = \mathrm{softmax}(S)$ | $dS = P \odot \big(dP - \textstyle\sum_j dP_{:,j} P_{:,j}\big)$ (row by row) |
# | $S = s\,Q_h K_h^\top + M$ | $dQ_h = s\,dS\,K_h$, $\quad dK_h = s\,dS^\top Q_h$ ($M$ is a constant) |
# | $Q_h = \mathrm{split}(Q)$, same for $K, V$ | $dQ = \mathrm{merge}(dQ_h)$, ... |
# | $Q = x W_q^\top + b_q$, same for $K, V$ | $dW_q = dQ^\top x$, $\ db_q = \sum_{\text{rows}} dQ$, and $dx = dQ\,W_q + dK\,W_k + dV\,W_v$ |
#
# Each matrix-product line follows the same rule as lesson 1: for $Z = AB$, $dA = dZ\,B^\top$ and $dB = A^\top dZ$ —
# write the shapes down and only one arrangement fits. (With square $C \times C$ weights, though, `x.T @ dQ` has
# the right shape and the *transposed* value: the check catches it by value and says so.)
#
# Three things students get wrong, each caught by the check above:
#
# * **The mask after the softmax.** Zeroing the padded probabilities after a softmax over all keys
#   (or recomputing $P$ that way in the backward) leaves rows that no longer sum to 1: wrong values for
#   the padded sequence. The mask belongs *inside* the softmax, as an additive $-\infty$-like constant, and
#   then the backward needs nothing from it: $P$ is already 0 at padded keys, so $dS$ is 0 there too.
# * **$1/\sqrt{d_h}$ forgotten in the backward.** The scale multiplies the scores, so it multiplies
#   both $dQ_h$ and $dK_h$ (the check's hint says "a constant 1.732 x": $\sqrt 3$).
# * **The head order.** `dout.reshape(B, nh, T, hs)` has the right shape and scrambles positions with
#   heads; only `split_heads`/`merge_heads` in the forward's exact axis order invert each other.

# %% [markdown]
# ## 3. The key bias: a gradient that is exactly zero
#
# Section 2's check needed a floor for one tensor. Here is why. The key bias adds the same vector $b_k$ to
# every key, so the score of query $i$ against key $j$ gains $s\, q_i \cdot b_k$ — the same for every key $j$.
# The softmax ignores a constant added to a row (lesson 2), so **no output depends on $b_k$**: the true
# gradient is exactly zero. Your backward computes it as $\sum_j dK_j$, a sum of nonzero terms that cancel:
# $\sum_j dS_{ij} = 0$ for every row, because the rows of $P$ sum to 1.

# %%
shifted = dict(params_check, key_bias=params_check["key_bias"] + 5.0)
out_shifted, _ = mha_forward(x_check, shifted, nhc, mask_check)
change = np.abs(out_shifted - out_check).max()
teach.check(change < 1e-12, "change of the output when the key bias moves by 5", change, "< 1e-12")

lib_out, lib_cache = attention_forward(x_check, **params_check, num_heads=nhc, additive_mask=mask_check)
library = attention_backward(dout_check, lib_cache)._asdict()          # the library's gradients, by name
noise = numeric["key_bias"]
print(f"key bias: library's analytic gradient up to {np.abs(library['key_bias']).max():.1e}, "
      f"finite differences up to {np.abs(noise).max():.1e} (rounding noise)")
raw = float(teach.rel_error_array(library["key_bias"], noise).max())
print(f"relative error of the key bias without a floor: {raw:.1e}   (two kinds of rounding noise, compared)")
teach.check(np.abs(library["key_bias"]).max() < 1e-12, "largest |analytic key-bias gradient|",
            np.abs(library["key_bias"]).max(), "< 1e-12")
teach.check(np.abs(noise).max() < 1e-9, "largest |numerical key-bias gradient| (noise)", np.abs(noise).max(), "< 1e-9")
error = teach.check_gradient("key_bias with an absolute floor of 1e-9", library["key_bias"], noise, floor=1e-9)

# %% [markdown]
# A floor forgives only entries that are tiny on *both* sides: a real gradient of $10^{-3}$ that your
# backward got wrong still fails, however small it looks. The floor does not forgive a wrong key
# bias either: had the check allowed any tiny value, a backward that returned $10^{-6}$ noise of its own
# for it would also pass. `teach.check_gradient` demands agreement to $10^{-9}$ *absolutely* there.
#
# In a trained model this shows in the weights. The loss never pulls on MiniLM's key biases, and they
# are far smaller than its other biases (about 300 times smaller than the query biases):

# %%
minilm = bn.BertModel.from_pretrained(teach.minilm_dir(), dtype="float64")    # eval mode: dropout off
tokenizer = bn.BertTokenizer.from_pretrained(teach.minilm_dir())
weights = minilm.state_dict()
bias_std = {proj: np.mean([weights[f"encoder.layer.{i}.attention.self.{proj}.bias"].std()
                           for i in range(minilm.config.num_hidden_layers)]) for proj in ("query", "key", "value")}
print("MiniLM, mean over layers of std(bias):", {k: f"{v:.1e}" for k, v in bias_std.items()})
teach.check(bias_std["key"] < bias_std["query"] / 100, "std of MiniLM's key biases vs query biases / 100",
            bias_std["key"], f"< {bias_std['query'] / 100:.1e}")

# %% [markdown]
# ## 4. Attention maps of a trained model
#
# MiniLM has 6 layers of 12 heads. `BertModel(..., output_attentions=True)` returns every layer's
# probabilities, (B, $n_h$, T, T) each. Row $i$ of a map says how query position $i$ spreads its attention over the
# keys. First, padding again, now through the whole model: a batch with a short sentence padded to the
# length of a long one gives the short sentence **the same hidden states** as running it alone.

# %%
sentence_a = "The quick brown fox jumps over the lazy dog because it was bored."
sentence_b = "She put the book on the table and left the room without a word."
short = "A dog barked."
both = tokenizer([sentence_a, short], padding="longest")
ids, mask = np.array(both["input_ids"]), np.array(both["attention_mask"])        # (2, T)
n_short = int(mask[1].sum())
padded_run = minilm(input_ids=ids, attention_mask=mask).last_hidden_state        # (2, T, C)
alone = minilm(input_ids=ids[1:, :n_short]).last_hidden_state                    # (1, n_short, C)
print(f"batch of 2: {ids.shape[1]} positions, the short sentence has {n_short} real tokens and "
      f"{ids.shape[1] - n_short} [PAD]")
teach.check_close("short sentence: padded in a batch vs alone", padded_run[1, :n_short], alone[0],
                  rtol=1e-10, atol=1e-12)

# %% [markdown]
# Now a sentence pair, and every head of every layer. For each head we measure how much attention, on
# average over the queries, goes to the **previous** token, the **next** token, and `[CLS]`:

# %%
pair = tokenizer(sentence_a, sentence_b)
pair_ids, pair_types = np.array([pair["input_ids"]]), np.array([pair["token_type_ids"]])
tokens = tokenizer.convert_ids_to_tokens(pair["input_ids"])
maps = np.stack(minilm(input_ids=pair_ids, token_type_ids=pair_types, output_attentions=True).attentions)[:, 0]
L_layers, H, T_pair, _ = maps.shape                                           # (L, nh, T, T)
previous = np.array([[np.diagonal(maps[l, h], -1).mean() for h in range(H)] for l in range(L_layers)])  # P[i, i-1]
following = np.array([[np.diagonal(maps[l, h], 1).mean() for h in range(H)] for l in range(L_layers)])  # P[i, i+1]
on_cls = maps[..., 0].mean(axis=-1)                                           # (L, nh): mean of P[:, 0]
prev_layer, prev_head = map(int, np.unravel_index(np.argmax(previous), previous.shape))
next_layer, next_head = map(int, np.unravel_index(np.argmax(following), following.shape))
cls_layer, cls_head = map(int, np.unravel_index(np.argmax(on_cls), on_cls.shape))

fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), layout="constrained")
for ax, table, what in zip(axes, (previous, following, on_cls), ("the previous token", "the next token", "[CLS]")):
    im = ax.imshow(table, vmin=0, vmax=1, cmap="viridis")
    ax.set_xlabel("head"); ax.set_ylabel("layer"); ax.set_title(f"mean attention to {what}")
    ax.set_xticks(range(H)); ax.set_yticks(range(L_layers))
fig.colorbar(im, ax=axes, shrink=0.9, label="mean probability")
plt.show()
print(f"previous-token head: layer {prev_layer} head {prev_head} ({previous[prev_layer, prev_head]:.2f});  "
      f"next-token head: layer {next_layer} head {next_head} ({following[next_layer, next_head]:.2f});  "
      f"[CLS] head: layer {cls_layer} head {cls_head} ({on_cls[cls_layer, cls_head]:.2f})")
teach.check(previous.max() > 0.9, "the best previous-token head's mean attention to position i-1", previous.max(), "> 0.9")
teach.check(following.max() > 0.5, "the best next-token head's mean attention to position i+1", following.max(), "> 0.5")

# %% [markdown]
# Three of them, and for comparison a head of the first layer that spreads its attention widely:

# %%
entropy = -(maps * np.log(maps + 1e-30)).sum(axis=-1).mean(axis=-1)           # (L, nh): mean entropy of a row
wide_head = int(np.argmax(entropy[0]))
chosen = [(prev_layer, prev_head, "previous token"), (next_layer, next_head, "next token"),
          (cls_layer, cls_head, "parks on [CLS]"), (0, wide_head, "spread out")]
fig, axes = plt.subplots(1, 4, figsize=(20, 5.6), layout="constrained")
for ax, (layer, head, what) in zip(axes, chosen):
    im = ax.imshow(maps[layer, head], vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(T_pair), tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(T_pair), tokens, fontsize=7)
    ax.set_xlabel("key (attended to)"); ax.set_title(f"layer {layer}, head {head}: {what}")
axes[0].set_ylabel("query (attending)")
fig.colorbar(im, ax=axes, shrink=0.7, label="attention probability")
plt.show()

# %% [markdown]
# Many heads put most of their attention on `[CLS]` (Clark et al., 2019, saw BERT-base's heads do the same
# with `[SEP]`). The softmax forces every row to sum to 1, so a head that has nothing to add for a token must
# still attend *somewhere*. Does attending to `[CLS]` add anything? What a head adds is the attention-weighted
# sum of the value vectors, passed through that head's slice of the output projection. Recompute the
# `[CLS]` head's layer with `mha_forward` and compare what `[CLS]` offers with what the other tokens offer:

# %%
def embed(ids, types):
    """Lesson 5's sum of three rows, then the embedding LayerNorm: the input of layer 0 (B, T, C)."""
    e = (weights["embeddings.word_embeddings.weight"][ids]
         + weights["embeddings.position_embeddings.weight"][:ids.shape[1]]
         + weights["embeddings.token_type_embeddings.weight"][types])
    return layernorm_forward(e, weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"],
                             minilm.config.layer_norm_eps)[0]


def layer_input(layer, ids, types):
    """The hidden states entering MiniLM's layer `layer` (B, T, C): a copy of MiniLM cut after layer - 1."""
    if layer == 0:
        return embed(ids, types)
    cut = bn.BertModel(bn.BertConfig.from_dict(dict(minilm.config.to_dict(), num_hidden_layers=layer)), dtype="float64")
    cut.load_state_dict({n: t for n, t in weights.items()
                         if not n.startswith("encoder.layer.") or int(n.split(".")[2]) < layer})
    return cut.eval()(input_ids=ids, token_type_ids=types).last_hidden_state


def self_attention_parameters(layer):
    return {f"{proj}_{kind}": weights[f"encoder.layer.{layer}.attention.self.{proj}.{kind}"]
            for proj in ("query", "key", "value") for kind in ("weight", "bias")}


head_size = minilm.config.hidden_size // H
_, cls_cache = mha_forward(layer_input(cls_layer, pair_ids, pair_types), self_attention_parameters(cls_layer), H)
teach.check_close(f"layer {cls_layer} maps from mha_forward vs the library's", cls_cache.probs[0], maps[cls_layer],
                  rtol=1e-9, atol=1e-12)
output_slice = weights[f"encoder.layer.{cls_layer}.attention.output.dense.weight"][:, cls_head * head_size:(cls_head + 1) * head_size]
offered = cls_cache.v[0, cls_head] @ output_slice.T              # (T, hs) @ (hs, C) -> (T, C): what each key offers
offered_norm = np.linalg.norm(offered, axis=-1)                  # (T,)
ratio = offered_norm[0] / offered_norm[1:].mean()
print(f"layer {cls_layer} head {cls_head}: |what [CLS] offers| = {offered_norm[0]:.2f}, "
      f"mean over the other tokens = {offered_norm[1:].mean():.2f} (ratio {ratio:.3f})")
teach.check(ratio < 0.2, "what [CLS] offers the [CLS] head / what the other tokens offer", ratio, "< 0.2")

# %% [markdown]
# Almost nothing: `[CLS]`'s value vector for this head is tiny, so attending to it is a way of *not* changing the
# token — a "no-op" (Kobayashi et al., 2020, measured the same small norms in BERT). The attention weights alone
# would have suggested that `[CLS]` matters most.
#
# **Where the head split meets a real checkpoint.** A head is *defined* by which channels of $Q$, $K$ and $V$
# it owns. Recompute layer 0 with `mha_forward` — once with the right split, once with the wrong
# `reshape(B, nh, T, hs)` of section 1 — and look for the previous-token head:

# %%
layer0 = self_attention_parameters(0)
x0 = layer_input(0, pair_ids, pair_types)
_, ours = mha_forward(x0, layer0, H)
teach.check_close("layer 0 maps from mha_forward vs the library's", ours.probs[0], maps[0], rtol=1e-9, atol=1e-12)

def wrong_split(t, num_heads):                       # the bug: right shape, positions and heads mixed
    B, T, C = t.shape
    return t.reshape(B, num_heads, T, C // num_heads)    # (B, T, C) -> (B, nh, T, hs), wrongly

right_split = split_heads
try:
    split_heads = wrong_split                        # mha_forward looks split_heads up when it runs
    _, scrambled = mha_forward(x0, layer0, H)
finally:
    split_heads = right_split
scrambled_previous = np.array([np.diagonal(scrambled.probs[0, h], -1).mean() for h in range(H)])
print(f"layer 0, best previous-token head: right split {previous[0].max():.2f}, wrong split {scrambled_previous.max():.2f}")
teach.check(scrambled_previous.max() < 0.5, "wrong split: the best previous-token head of layer 0",
            scrambled_previous.max(), "< 0.5 (the head is gone)")

# %% [markdown]
# With the wrong split, "head 2" is built from the channels of a few *positions* instead of its own 32
# channels at every position, and the previous-token head vanishes. Nothing crashes and every shape is
# right, which is why a shape comment on every reshape is worth writing.
#
# ## Summary
#
# * Heads: (B, T, C) $\to$ reshape (B, T, $n_h$, $d_h$) $\to$ transpose (B, $n_h$, T, $d_h$); merging is the exact inverse,
#   and each is the other's gradient. `reshape(B, nh, T, hs)` alone has the right shape and wrong contents.
# * Backward, bottom-up: split $d\text{out}$; two matrix-product pairs ($O = PV$, $S = s\,QK^\top$) with the
#   softmax backward between them; the scale multiplies both $dQ$ and $dK$; merge; three linear backwards
#   whose $dx$ contributions add.
# * The padding mask sits inside the softmax and needs nothing in the backward; padded sequences give
#   the real tokens exactly the hidden states they have alone.
# * The key bias has an exactly zero gradient (shift invariance): check it with an absolute floor, never
#   by loosening the threshold.
# * Trained heads specialise: previous-token, next-token, and `[CLS]`-parking heads that add (almost) nothing,
#   because `[CLS]`'s value vector for them is tiny.
#
# Next: lesson 7 — GELU, the feed-forward block, and dropout.
