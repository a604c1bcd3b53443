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
# # Lesson 7 — GELU, the feed-forward block, dropout
#
# Two thirds of BERT's parameters sit in one small piece of each layer: the **feed-forward block**
# $W_2\,\mathrm{gelu}(W_1 h + b_1) + b_2$. And every block's output passes through **dropout** during training.
# In this lesson:
#
# 1. **GELU** in its exact (erf) form and its tanh approximation: the difference measured, what it does
#    to a real model's outputs, and the derivative — **your first exercise**;
# 2. the **feed-forward block** of a trained model (all-MiniLM-L6-v2), recomputed from the library's operations:
#    its share of the parameters, and what its GELU actually receives;
# 3. **inverted dropout**: why it scales by $1/(1-p)$ (the expectation is preserved — measured), and why
#    the backward must reuse the forward's mask — **your second exercise**.
#
# **Prerequisites:** lesson 1 (gradient checks); lessons 5 and 6 for section 2, which recomputes one
# layer of a trained model (embeddings, attention, residual, post-LN). Math: the product and chain rules; the normal distribution's density and CDF; expectation
# and variance of a Bernoulli variable.
#
# **Time:** about 50–60 minutes.

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

from scipy.special import erf                 # full float64 precision (the library uses it too)

from bertnp.ops.activations import gelu_forward
from bertnp.ops.attention import attention_forward
from bertnp.ops.layernorm import layernorm_forward
from bertnp.ops.linear import linear_forward

# %% [markdown]
# ## 1. GELU, exact and approximate
#
# The Gaussian Error Linear Unit (Hendrycks & Gimpel, 2016) multiplies its input by the probability that
# a standard normal variable is smaller:
#
# $$\mathrm{gelu}(x) = x\,\Phi(x), \qquad \Phi(x) = \tfrac12\Big(1 + \mathrm{erf}\big(x/\sqrt2\big)\Big), \qquad \mathrm{erf}(z) = \frac{2}{\sqrt\pi}\int_0^z e^{-t^2}\,dt .$$
#
# For large positive $x$, $\Phi \approx 1$ and gelu is the identity; for large negative $x$, $\Phi \approx 0$ and it
# is 0; in between it is a smooth ReLU that dips slightly below zero. This exact form is what BERT and
# Hugging Face's `hidden_act="gelu"` compute. Early implementations (and GPT-2, `"gelu_new"`) used a cheaper
# **tanh approximation** of $\Phi$:
#
# $$\mathrm{gelu}_{\tanh}(x) = \tfrac12\,x\Big(1 + \tanh\big(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\big)\Big).$$

# %%
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

def gelu_erf(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))                            # x Phi(x)

def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))   # x*x*x: x**3 is slow

grid = np.linspace(-10, 10, teach.pick(2_000_001, 200_001))                   # a fine grid of inputs
difference = gelu_tanh(grid) - gelu_erf(grid)
worst = int(np.argmax(np.abs(difference)))
print(f"max |gelu_tanh - gelu_erf| on [-10, 10]: {abs(difference[worst]):.3e} at x = {grid[worst]:.3f}")
teach.check(1e-4 < abs(difference[worst]) < 5e-4, "max |tanh form - erf form|", abs(difference[worst]), "between 1e-4 and 5e-4")

# the library computes both forms, and agrees with these definitions in float64
teach.check_close("bertnp gelu_forward(approximate='none') vs x Phi(x)", gelu_forward(grid)[0], gelu_erf(grid), rtol=1e-14, atol=1e-15)
teach.check_close("bertnp gelu_forward(approximate='tanh') vs the tanh form", gelu_forward(grid, "tanh")[0], gelu_tanh(grid),
                  rtol=1e-13, atol=1e-15)

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
near = np.abs(grid) <= 4
axes[0].plot(grid[near], np.maximum(grid[near], 0), color="lightgray", lw=3, label="ReLU")
axes[0].plot(grid[near], gelu_erf(grid[near]), label="gelu (erf): x Φ(x)")
axes[0].plot(grid[near], gelu_tanh(grid[near]), "--", label="gelu (tanh approximation)")
axes[0].set_xlabel("x"); axes[0].set_ylabel("activation"); axes[0].set_title("GELU: the two forms on top of each other")
axes[0].legend(); axes[0].grid(alpha=0.3)
wide = np.abs(grid) <= 6
axes[1].plot(grid[wide], difference[wide])
axes[1].axhline(0, color="gray", lw=0.5)
axes[1].set_xlabel("x"); axes[1].set_ylabel("gelu_tanh(x) - gelu_erf(x)")
axes[1].set_title(f"their difference: at most {abs(difference[worst]):.1e}")
axes[1].grid(alpha=0.3)
plt.show()

# %% [markdown]
# $5 \times 10^{-4}$ is invisible in a plot and far above float32's resolution ($\sim 10^{-7}$ relative). Swap the
# form inside a trained model and the outputs move measurably, although the *meaning* barely does. MiniLM
# was trained with the erf form; run it both ways on two sentences:

# %%
minilm = bn.BertModel.from_pretrained(teach.minilm_dir(), dtype="float64")    # eval mode: dropout off
tokenizer = bn.BertTokenizer.from_pretrained(teach.minilm_dir())
weights = minilm.state_dict()
batch = tokenizer(["The cat sat on the mat.", "A man is playing a guitar on stage."], padding="longest",
                  return_tensors="np")
exact_run = minilm(**batch).last_hidden_state
minilm.config.hidden_act = "gelu_new"              # the tanh form, everywhere in the model
try:
    tanh_run = minilm(**batch).last_hidden_state
finally:
    minilm.config.hidden_act = "gelu"

real = batch["attention_mask"][..., None]                                     # (B, T, 1)
pooled = [(h * real).sum(axis=1) / real.sum(axis=1) for h in (exact_run, tanh_run)]   # mean over real tokens (B, C)
cosine = (pooled[0] * pooled[1]).sum(axis=1) / np.linalg.norm(pooled[0], axis=1) / np.linalg.norm(pooled[1], axis=1)
shift = np.abs(exact_run - tanh_run).max()
print(f"largest change of a hidden state: {shift:.1e};  cosine of the sentence embeddings: "
      + ", ".join(f"{c:.7f}" for c in cosine))
teach.check(shift > 1e-4, "largest change of MiniLM's output when gelu is swapped for its tanh form", shift, "> 1e-4")
teach.check(cosine.min() > 0.9999, "cosine between the two sentence embeddings", cosine.min(), "> 0.9999")

# %% [markdown]
# So: for *using* a model the two forms are interchangeable; for *reproducing* one (lesson 9 matches Hugging Face
# to $10^{-12}$) the erf form is required, with a full-precision erf. That is why `bertnp` uses SciPy's `erf` in float64.
#
# ### The derivative — exercise
#
# Write the backward of the **erf form**: given $\partial L/\partial\,\text{out}$ and the cache (which holds the input $x$),
# return $\partial L / \partial x$. Derive $\frac{d}{dx}\,x\,\Phi(x)$ yourself: the product rule, then the chain rule on
# $\Phi(x) = \frac12(1 + \mathrm{erf}(x/\sqrt2))$, using $\frac{d}{dz}\mathrm{erf}(z) = \frac{2}{\sqrt\pi}e^{-z^2}$ (from the integral above).
# Use `erf` and `np.exp`; do not call the library.
#
# The check compares with finite differences of $L = \sum \mathrm{gelu}(x) \odot \text{dout}$ for $x$ between about $-3$ and $3$,
# in float64 with threshold $10^{-7}$ — strict enough to tell the erf form's derivative from the tanh form's — and
# then looks far out, at $x = \pm 10$ and $\pm 40$, where the derivative must be 0 and 1 without overflow or NaN.
# (Why not finite differences far out? There the true gradient is tiny, $\approx 10^{-7}$ at $x = -6$, and the
# finite differences' absolute noise, $\sim 10^{-10}$ here, is a large *relative* error: lesson 1's noise floor.)

# %%
class GeluCache(NamedTuple):
    x: np.ndarray            # (...) the input

def my_gelu_forward(x):
    """x: (...) -> out: (...), the erf form. Returns (out, cache)."""
    return gelu_erf(x), GeluCache(x)

# %% tags=["exercise"]
# EXERCISE: gelu_backward -- dx from dout for out = x * Phi(x) (the erf form)
def my_gelu_backward(dout, cache):
    '''dout: (...) -> dx: (...).'''
    x = cache.x
    ### BEGIN SOLUTION
    cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))                  # Phi(x): the path through the first factor
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)         # phi(x) = Phi'(x): the path through Phi
    dx = dout * (cdf + x * pdf)                                   # product rule
    ### END SOLUTION
    return dx


# %% tags=["check"]
check_rng = np.random.default_rng(21)
x_check = np.concatenate([np.linspace(-3.1, 3.1, 32), 1.2 * check_rng.standard_normal(48)]).reshape(8, 10)   # (80,) -> (8, 10)
dout_check = check_rng.standard_normal(x_check.shape)           # random upstream gradient, never all-ones
numeric = teach.finite_differences(lambda: float((my_gelu_forward(x_check)[0] * dout_check).sum()), x_check)
_, cache_check = my_gelu_forward(x_check)
yours = my_gelu_backward(dout_check, cache_check)
try:
    error = teach.check_gradient("dx of gelu (erf form)", yours, numeric, threshold=1e-7)
except teach.CheckFailed as failure:              # the entries above are at random x: show gelu'(x) at known x
    probe = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    probe_numeric = teach.finite_differences(lambda: float(gelu_erf(probe).sum()), probe)
    probe_yours = np.asarray(my_gelu_backward(np.ones(5), GeluCache(probe)), dtype=float)
    table = "\n".join(f"    x = {v:+.0f}:  yours {a: .8f}   numerical {n: .8f}"
                       for v, a, n in zip(probe, probe_yours, probe_numeric))
    note = ("\n  lesson hint: with dout = 1 yours is right, so the factor dout is missing (dx = dout * gelu'(x))"
            if np.allclose(probe_yours, probe_numeric, rtol=1e-7, atol=1e-9) else "")
    raise teach.CheckFailed(f"{failure}\n  gelu'(x) at a few x (dout = 1):\n{table}{note}") from None
far = np.array([-40.0, -10.0, 10.0, 40.0])                      # far out: no overflow, no NaN
teach.check_close("gelu'(x) far out (dout = 1): 0 on the left, 1 on the right",
                  my_gelu_backward(np.ones(4), GeluCache(far)), np.array([0.0, 0.0, 1.0, 1.0]), atol=1e-12)

# %% [markdown]
# ### Solution notes
#
# Product rule: $\frac{d}{dx}\big[x\,\Phi(x)\big] = \Phi(x) + x\,\Phi'(x)$. Chain rule:
# $\Phi'(x) = \frac12 \cdot \frac{2}{\sqrt\pi} e^{-x^2/2} \cdot \frac{1}{\sqrt2} = \frac{1}{\sqrt{2\pi}}e^{-x^2/2} = \varphi(x)$, the standard normal density. So
#
# $$\mathrm{gelu}'(x) = \Phi(x) + x\,\varphi(x), \qquad dx = \text{dout} \odot \big(\Phi(x) + x\,\varphi(x)\big).$$
#
# The term $x\,\varphi(x)$ is what makes GELU different from "ReLU with a soft switch": it is negative for
# $x < 0$, so $\mathrm{gelu}'$ dips below zero (gelu has a minimum near $x = -0.75$), and it peaks above 1 near $x = 1.4$.
# The library's `gelu_backward` keeps $\Phi(x)$ from the forward in its cache instead of recomputing the erf.
#
# Differentiating the tanh form instead gives a different function. Its largest distance from the exact
# derivative, and the two derivatives side by side:

# %%
def gelu_tanh_derivative(x):                      # d/dx of the tanh form, by the same two rules
    t = np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)

exact_derivative = 0.5 * (1 + erf(grid / math.sqrt(2))) + grid * np.exp(-0.5 * grid * grid) / math.sqrt(2 * math.pi)
derivative_gap = np.abs(gelu_tanh_derivative(grid) - exact_derivative)
print(f"max |tanh-form derivative - exact derivative| = {derivative_gap.max():.1e} at x = {grid[np.argmax(derivative_gap)]:.2f}")
minimum_at = grid[np.argmin(gelu_erf(grid))]
print(f"gelu's minimum: x = {minimum_at:.4f}, gelu = {gelu_erf(minimum_at):.4f}")
teach.check(derivative_gap.max() > 1e-4, "the tanh form's derivative is a different function (max gap)",
            derivative_gap.max(), "> 1e-4, far above the 1e-7 threshold")
teach.check(abs(minimum_at + 0.7518) < 1e-3, "gelu's minimum, where gelu'(x) = 0", minimum_at, "-0.7518")

fig, (ax, gap_ax) = plt.subplots(1, 2, figsize=(13, 3.8), layout="constrained")
ax.plot(grid[near], exact_derivative[near], label="gelu'(x) = Φ(x) + x φ(x)")
ax.plot(grid[near], gelu_tanh_derivative(grid[near]), "--", label="derivative of the tanh form")
ax.plot(grid[near], (grid[near] > 0).astype(float), color="lightgray", lw=3, zorder=0, label="ReLU'")
ax.axhline(0, color="gray", lw=0.5)
ax.set_xlabel("x"); ax.set_ylabel("derivative"); ax.set_title("GELU's derivative dips below 0 and rises above 1")
ax.legend(loc="upper left"); ax.grid(alpha=0.3)
gap_ax.plot(grid[wide], gelu_tanh_derivative(grid[wide]) - exact_derivative[wide])
gap_ax.axhline(0, color="gray", lw=0.5)
gap_ax.set_xlabel("x"); gap_ax.set_ylabel("tanh form's derivative - gelu'(x)")
gap_ax.set_title(f"the gap: up to {derivative_gap.max():.1e}, far above the check's 1e-7"); gap_ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# ## 2. The feed-forward block
#
# Each layer's second sub-block works on every position separately (no mixing across positions — that is
# attention's job) and widens the vector four times in between:
#
# $$\mathrm{FFN}(h) = W_2\,\mathrm{gelu}(W_1 h + b_1) + b_2, \qquad W_1: (4C, C),\ W_2: (C, 4C),$$
#
# followed, in BERT's post-LN (lesson 5), by dropout, the residual and LayerNorm: $y = \mathrm{LN}(h + \mathrm{drop}(\mathrm{FFN}(h)))$.
# Counting parameters per layer shows where a BERT's size is:

# %%
cfg = minilm.config
C, intermediate = cfg.hidden_size, cfg.intermediate_size
layer0 = {name[len("encoder.layer.0."):]: t for name, t in weights.items() if name.startswith("encoder.layer.0.")}
ffn_params = sum(layer0[n].size for n in ("intermediate.dense.weight", "intermediate.dense.bias",
                                           "output.dense.weight", "output.dense.bias"))
attention_params = sum(t.size for n, t in layer0.items() if n.startswith("attention.") and "LayerNorm" not in n)
layer_params = sum(t.size for t in layer0.values())
print(f"MiniLM layer (C = {C}, intermediate = {intermediate}): {layer_params:,} parameters")
print(f"  attention (Q, K, V, output): {attention_params:,} = {attention_params / layer_params:.1%}")
print(f"  feed-forward (W1, W2):       {ffn_params:,} = {ffn_params / layer_params:.1%}")
teach.check(abs(ffn_params / layer_params - 2 / 3) < 0.01, "the feed-forward block's share of a layer's parameters",
            ffn_params / layer_params, "about 2/3 (8C^2 of 12C^2)")

# %% [markdown]
# What does the GELU of a trained model receive? Recompute MiniLM's first layer with the library's operations:
# the embeddings (lesson 5), attention (lesson 6) and the post-LN residual, then the feed-forward block.
# To be sure the recomputation is right, compare it with a one-layer `BertModel` that holds MiniLM's first layer.

# %%
ids, types = batch["input_ids"], batch["token_type_ids"]
real_tokens = batch["attention_mask"].astype(bool)                            # (B, T)
additive = (1.0 - batch["attention_mask"])[:, None, None, :] * np.finfo(np.float64).min   # (B, T) -> (B, 1, 1, T)
W = lambda name: layer0[name]
ln = lambda t, name: layernorm_forward(t, W(name + ".weight"), W(name + ".bias"), cfg.layer_norm_eps)[0]

e = (weights["embeddings.word_embeddings.weight"][ids] + weights["embeddings.position_embeddings.weight"][:ids.shape[1]]
     + weights["embeddings.token_type_embeddings.weight"][types])                # (B, T, C)
x = layernorm_forward(e, weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"], cfg.layer_norm_eps)[0]
attn, _ = attention_forward(x, *(W(f"attention.self.{p}.{k}") for p in ("query", "key", "value") for k in ("weight", "bias")),
                            num_heads=cfg.num_attention_heads, additive_mask=additive)
h = ln(x + linear_forward(attn, W("attention.output.dense.weight"), W("attention.output.dense.bias"))[0],
       "attention.output.LayerNorm")                                          # (B, T, C)
pre_activation, _ = linear_forward(h, W("intermediate.dense.weight"), W("intermediate.dense.bias"))   # (B, T, 4C)
ffn_out, _ = linear_forward(gelu_erf(pre_activation), W("output.dense.weight"), W("output.dense.bias"))  # (B, T, C)
y = ln(h + ffn_out, "output.LayerNorm")

one_layer = bn.BertModel(bn.BertConfig.from_dict(dict(cfg.to_dict(), num_hidden_layers=1)), dtype="float64")
one_layer.load_state_dict({n: t for n, t in weights.items() if not n.startswith("encoder.layer.")
                           or n.startswith("encoder.layer.0.")})
one_layer.eval()                                   # a new model starts in training mode: dropout off for the comparison
teach.check_close("layer 0 recomputed vs a one-layer BertModel", y[real_tokens],
                  one_layer(**batch).last_hidden_state[real_tokens], rtol=1e-10, atol=1e-12)

values = pre_activation[real_tokens].ravel()                                  # every real token's 4C inputs of gelu
negative = float((values < 0).mean())
print(f"{values.size:,} inputs of gelu: {negative:.0%} negative, {float((np.abs(values) < 2).mean()):.0%} in [-2, 2] "
      "where gelu is curved")
teach.check(negative > 0.5, "share of gelu's inputs that are negative (mostly switched off)", negative, "> 0.5")

fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
ax.hist(values, bins=120, range=(-8, 4), density=True, alpha=0.6, label="MiniLM layer 0: W1 h + b1")
axis2 = ax.twinx()
span = np.linspace(-8, 4, 400)
axis2.plot(span, gelu_erf(span), color="C1", label="gelu(x)")
axis2.set_ylabel("gelu(x)")
ax.set_xlabel("pre-activation x"); ax.set_ylabel("density")
ax.set_title("what the GELU of a trained BERT receives (two sentences, every real token)")
fig.legend(loc="upper left", bbox_to_anchor=(0.08, 0.92))
plt.show()

# %% [markdown]
# Most of the $4C$ units are negative for any given token, where gelu is (nearly) zero: each token
# switches on a minority of the units, and which ones is what the block has learned.
#
# ## 3. Inverted dropout
#
# During training, dropout sets each entry to zero with probability $p$ (BERT: $p = 0.1$, on the embeddings, the
# attention probabilities, and each sub-block's output before the residual addition), so that no unit can rely
# on any particular other unit being there. In evaluation it is switched off.
#
# **Inverted** dropout scales the survivors by $\frac{1}{1-p}$ during training:
#
# $$\text{out} = x \odot \frac{m}{1-p}, \qquad m_i \sim \mathrm{Bernoulli}(1 - p) \text{ independently (1 = keep)} .$$
#
# Then $\mathbb E[\text{out}_i] = x_i \frac{(1-p)}{1-p} = x_i$: the expected activation in training equals the activation
# in evaluation, so evaluation needs nothing at all. (The original dropout paper kept the survivors unscaled and
# multiplied the weights by $1-p$ at test time instead: the same expectation, with the bookkeeping in the wrong place.)
#
# ### Exercise: the forward and the backward
#
# Write `my_dropout_forward(x, p, rng, training)` and `my_dropout_backward(dout, cache)`. Draw the mask from
# the generator `rng` you are given (`rng.random(shape)` gives uniforms in [0, 1)), never from `np.random`
# directly: the check re-creates the same generator to get the same mask again. You decide what the cache holds.
# The check:
#
# * the share of zeros is $p$ (for $p$ = 0.1 and 0.3, within five standard errors), the survivors equal $x / (1-p)$,
#   and the mean of the output is the mean of the input;
# * with `training=False` the output is $x$ itself;
# * your backward matches finite differences of $L = \sum \text{out} \odot \text{dout}$, where every evaluation of the
#   forward uses a generator seeded the same way (so the same mask).

# %% tags=["exercise"]
# EXERCISE: inverted dropout -- the forward (out, cache) and the backward (dx)
def my_dropout_forward(x, p, rng, training=True):
    '''x: (...) -> out: (...). rng: a numpy Generator. Returns (out, cache).'''
    ### BEGIN SOLUTION
    if not training or p == 0.0:
        return x, None                                      # evaluation: the identity, nothing to remember
    keep = rng.random(x.shape) >= p                         # (...) True with probability 1 - p
    scale = keep / (1.0 - p)                                # (...) 0 where dropped, 1/(1-p) where kept
    out = x * scale
    cache = scale                                           # the backward needs exactly this mask
    ### END SOLUTION
    return out, cache


def my_dropout_backward(dout, cache):
    '''dout: (...) -> dx: (...).'''
    ### BEGIN SOLUTION
    if cache is None:
        return dout                                         # the identity's gradient
    dx = dout * cache                                       # out = x * scale elementwise: the same scale
    ### END SOLUTION
    return dx


# %% tags=["check"]
x_ones = np.ones((400, 500))                                    # 200,000 entries
same_a = my_dropout_forward(x_ones[:3], 0.5, np.random.default_rng(1))[0]
same_b = my_dropout_forward(x_ones[:3], 0.5, np.random.default_rng(1))[0]
teach.check_equal("two forwards with equally seeded generators (draw the mask from rng)", same_a, same_b)
for p in (0.1, 0.3):
    out, _ = my_dropout_forward(x_ones, p, np.random.default_rng(31))
    dropped = float((out == 0).mean())
    standard_error = math.sqrt(p * (1 - p) / out.size)
    teach.check(abs(dropped - p) < 5 * standard_error, f"p = {p}: share of dropped entries", dropped,
                f"{p} +- {5 * standard_error:.4f}")
    teach.check_close(f"p = {p}: the surviving entries (x = 1)", out[out != 0], np.full(int((out != 0).sum()), 1 / (1 - p)))
    mean_error = 5 * math.sqrt(p / (1 - p) / out.size)
    teach.check(abs(out.mean() - 1.0) < mean_error, f"p = {p}: mean of the output (x = 1)", out.mean(),
                f"1 +- {mean_error:.4f}")

x_check = np.random.default_rng(32).standard_normal((6, 7))
teach.check_equal("training=False returns x", my_dropout_forward(x_check, 0.3, np.random.default_rng(33), training=False)[0],
                  x_check)
dout_check = np.random.default_rng(34).standard_normal(x_check.shape)
out_check, cache_check = my_dropout_forward(x_check, 0.3, np.random.default_rng(35))
yours = my_dropout_backward(dout_check, cache_check)
loss = lambda: float((my_dropout_forward(x_check, 0.3, np.random.default_rng(35))[0] * dout_check).sum())
numeric = teach.finite_differences(loss, x_check)
try:
    error = teach.check_gradient("dx of dropout (p = 0.3)", yours, numeric, threshold=1e-7)
except teach.CheckFailed as failure:
    passed = (np.asarray(yours) != 0) == (numeric != 0)          # each entry: zero in both, or in neither
    note = ("" if passed.all() else f"\n  lesson hint: {int((~passed).sum())} of {passed.size} entries are zero in one "
            "gradient and not in the other: your backward drops other entries than the forward did")
    raise teach.CheckFailed(f"{failure}{note}") from None

# %% [markdown]
# ### Solution notes
#
# For a fixed mask, $\text{out}_i = x_i \cdot m_i/(1-p)$: each output depends on one input, with slope $m_i/(1-p)$. So
#
# $$dx = \text{dout} \odot \frac{m}{1-p},$$
#
# **with the mask of the forward**. The forward computed the loss through one particular random network (the units
# that $m$ kept); the gradient is the derivative of *that* function. A fresh mask in the backward gives the
# derivative of another network, one that never produced the loss — finite differences of the real loss disagree
# with it (the check above fails). So the forward keeps the mask in its cache, exactly as `bertnp`'s dropout does:
# the mask is drawn in the forward, kept in the forward's cache, and reused by the backward. (How the library
# draws and stores its masks is a detail of the library; the rule is the same.)
#
# How wrong is a fresh mask? Its gradient even *looks* plausible: same size, same sign where both masks kept.
# The cosine between the two is about $1 - p$:

# %%
p = 0.1
dout_big = rng.standard_normal(100_000)
mask_forward = (rng.random(dout_big.shape) >= p) / (1 - p)
mask_fresh = (rng.random(dout_big.shape) >= p) / (1 - p)
right_dx, fresh_dx = dout_big * mask_forward, dout_big * mask_fresh
cos_fresh = float(right_dx @ fresh_dx / np.linalg.norm(right_dx) / np.linalg.norm(fresh_dx))
print(f"p = {p}: cosine(gradient with the forward's mask, gradient with a fresh mask) = {cos_fresh:.3f}")
teach.check(abs(cos_fresh - (1 - p)) < 0.01, "cosine between the right gradient and a fresh-mask one", cos_fresh, f"{1 - p} +- 0.01")

# %% [markdown]
# About 0.9, and wrong in nearly one entry out of five ($2p(1-p)$ of them: where exactly one of the two masks kept).
# A bug like this crashes nothing and produces plausible gradients, which is why only a gradient check with
# dropout **on and seeded** finds it.
#
# ### The expectation, measured
#
# Average the output of many independent masks for one fixed input. Inverted dropout's average converges to $x$;
# without the $1/(1-p)$ it converges to $(1-p)\,x$ — which is why non-inverted dropout must rescale at evaluation.
# The error of the average shrinks like $\sqrt{p/(1-p)}\,|x|/\sqrt{N}$ after $N$ draws (the variance of one draw is
# $x^2\,p/(1-p)$):

# %%
p = 0.25
x_fixed = rng.standard_normal(2_000)                                # one input vector
draws = teach.pick(2_000, 400)
masks = rng.random((draws, x_fixed.size)) >= p                      # (N, n) True = keep
inverted = x_fixed * masks / (1 - p)                                # (N, n) outputs of inverted dropout
plain = x_fixed * masks                                             # (N, n) without the scaling
counts = np.arange(1, draws + 1)[:, None]
running_inverted = np.cumsum(inverted, axis=0) / counts             # (N, n) mean of the first k draws
running_plain = np.cumsum(plain, axis=0) / counts
rms = lambda a: np.sqrt((a * a).mean(axis=-1))                      # root-mean-square over the n entries
error_inverted = rms(running_inverted - x_fixed) / rms(x_fixed)
error_plain = rms(running_plain - x_fixed) / rms(x_fixed)
theory = np.sqrt(p / (1 - p)) / np.sqrt(counts[:, 0])

fig, ax = plt.subplots(figsize=(8.5, 4), layout="constrained")
ax.loglog(counts[:, 0], error_inverted, label="inverted dropout: mean of k draws vs x")
ax.loglog(counts[:, 0], error_plain, label="no 1/(1-p) scaling: mean of k draws vs x")
ax.loglog(counts[:, 0], theory, "k:", label="sqrt(p/(1-p)) / sqrt(k)")
ax.axhline(p, color="gray", lw=0.5, label=f"p = {p}: where the unscaled mean stops")
ax.set_xlabel("number of dropout masks k"); ax.set_ylabel("relative RMS error of the mean")
ax.set_title(f"dropout p = {p}: only the inverted form averages to x"); ax.legend(); ax.grid(alpha=0.3)
plt.show()

variance_measured = float((inverted.var(axis=0) / (x_fixed * x_fixed)).mean())
print(f"after {draws} draws: inverted {error_inverted[-1]:.4f} (theory {theory[-1]:.4f}), unscaled {error_plain[-1]:.3f} "
      f"(-> p = {p}); variance / x^2 = {variance_measured:.4f} (theory p/(1-p) = {p / (1 - p):.4f})")
teach.check(error_inverted[-1] < 2 * theory[-1], "inverted: relative error of the mean after all draws",
            error_inverted[-1], f"< {2 * theory[-1]:.4f} (twice the theory)")
teach.check(abs(error_plain[-1] - p) < 0.02, "unscaled: the mean converges to (1-p) x, a relative error of p",
            error_plain[-1], f"{p} +- 0.02")
teach.check(abs(variance_measured / (p / (1 - p)) - 1) < 0.1, "variance of one draw / x^2", variance_measured,
            f"p/(1-p) = {p / (1 - p):.4f} within 10%")

# %% [markdown]
# The expectation is preserved; the variance is not — a dropped-out network is noisier, by $p/(1-p)$ of the
# squared activation per entry. That noise is the regularisation.
#
# ## Summary
#
# * GELU $= x\,\Phi(x)$ with the exact erf; the tanh form differs by at most $4.7\times10^{-4}$: harmless for using a
#   model, fatal for reproducing one to float64. $\mathrm{gelu}'(x) = \Phi(x) + x\,\varphi(x)$ — product rule, then chain rule.
# * The feed-forward block $W_2\,\mathrm{gelu}(W_1 h + b_1) + b_2$ holds two thirds of a layer's parameters; in a trained model
#   most of its $4C$ units are negative (off) for any given token.
# * Inverted dropout scales the survivors by $1/(1-p)$ so that the expectation is the evaluation-time value.
#   Its backward multiplies by **the forward's mask** — it is the derivative of the network that was actually run.
#
# Next: lesson 8 — the heads and the losses.
