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
# # Lesson 10 — Optimization: AdamW, warmup, clipping
#
# `model.backward()` gives a gradient; this lesson is about what BERT does with it. In this lesson you will
#
# 1. see what Adam's per-coordinate normalisation does to a step, and why weight decay must be **decoupled**
#    from it (AdamW), and which tensors BERT does not decay;
# 2. **write the AdamW step** — derive its bias correction — and check it against numbers PyTorch's
#    `torch.optim.AdamW` produced (exercise);
# 3. compare PyTorch's AdamW with Google's original BERT optimizer (no bias correction);
# 4. **write global-norm clipping** (exercise) and see why it is global;
# 5. run the whole recipe — warmup, linear decay, clipping, AdamW — and match PyTorch for 12 steps;
# 6. see what goes wrong without warmup on a post-LN BERT at a high learning rate.
#
# **Prerequisites:** lesson 4 (a training step: zero-grad, forward, backward, clip, step), lesson 5 (post-LN),
# lesson 2 (attention's softmax). Math: exponential moving averages, expectations.
#
# **Time:** about 75 minutes.
#
# One setting first (as in lesson 4): this notebook trains small models, for which one BLAS thread is about as
# fast as several — and several slow down many times over when the other cores are busy. It must be set before
# NumPy is imported: run the notebook from the top.

# %%
import os
if "OPENBLAS_NUM_THREADS" not in os.environ:               # a setting of your own wins
    os.environ["OPENBLAS_NUM_THREADS"] = "1"               # read once, when NumPy loads OpenBLAS

# %%
# %matplotlib inline
import time

import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
from bertnp.lesson_data.lessons_09_10 import load_l10
from bertnp.optim import AdamW, LinearWarmupDecay, clip_grad_norm

# %% [markdown]
# ## 1. Adam normalises every coordinate
#
# Adam keeps two exponential moving averages per parameter entry, of the gradient and of its square,
#
# $$m_t = \beta_1 m_{t-1} + (1 - \beta_1)\, g_t, \qquad v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2 \qquad (m_0 = v_0 = 0),$$
#
# and moves each entry by $\text{lr}\cdot \hat m_t / (\sqrt{\hat v_t} + \epsilon)$, where $\hat m, \hat v$ are $m, v$ with a
# correction for their start at zero (section 3 is yours to derive). The ratio $m / \sqrt v$ has no units: **the step is
# about lr, whatever the size of the gradient** (as long as it is well above $\epsilon = 10^{-6}$). A gradient ten thousand
# times larger gives the same steps:

# %%
def adam_steps(gradient_scale, steps=5, lr=1e-2):
    w = np.zeros(3)
    g = np.zeros(3)
    opt = AdamW({"w": w}, lr=lr, weight_decay=0.0, grads={"w": g})   # the library's AdamW, on a plain dict
    for t in range(steps):
        g[:] = gradient_scale * np.array([1.0, -2.0, 0.5]) * (1 + 0.1 * t)
        opt.step()
    return w


small, large = adam_steps(1e-2), adam_steps(1e2)
print("after 5 steps, gradient x 1e-2:", small, "   gradient x 1e2:", large)
teach.check_close("Adam's steps do not depend on the gradient's scale", small, large, rtol=1e-3)

# %% [markdown]
# This is what makes Adam robust across layers whose gradients differ by orders of magnitude — and it has two
# consequences this lesson is about. Weight decay written as part of the gradient gets normalised away
# (section 2). And early in training, when $m$ and $v$ rest on a handful of gradients, every entry still moves by
# about lr: a big learning rate moves *everything* at once (section 7).
#
# ## 2. Weight decay: an L2 term, or decoupled?
#
# Weight decay pulls weights towards 0. With plain SGD, adding $\frac{\lambda}{2}\lVert\theta\rVert^2$ to the loss
# (an "L2 term") and shrinking $\theta \leftarrow \theta(1 - \text{lr}\,\lambda)$ each step are the same thing. With
# Adam they are not. Put $\lambda\theta$ into the gradient and Adam divides it by $\sqrt{v}$ like any other gradient: the
# decay a weight feels then depends on its gradient history, and on a weight with no other gradient it becomes a
# step of size lr, *whatever* $\lambda$ is. Loshchilov & Hutter's **AdamW** takes the decay out of the moments:
#
# $$\theta \leftarrow \theta\,(1 - \text{lr}\cdot\lambda) \quad\text{(the old weights, first)}, \qquad\text{then the Adam step from } m, v \text{ of the loss's gradient only.}$$
#
# See it on a weight whose loss gradient is zero, so that only the decay acts:

# %%
def l2_adam(weight_decay, steps, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-6):
    """Adam with the decay added to the gradient (an L2 term), on one weight with no loss gradient."""
    w, m, v, path = 1.0, 0.0, 0.0, []
    for t in range(1, steps + 1):
        g = 0.0 + weight_decay * w                       # loss gradient 0, plus the L2 term
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w -= lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
        path.append(w)
    return np.array(path)


def decoupled(weight_decay, steps, lr=1e-2):
    """The library's AdamW (decoupled decay) on the same weight."""
    w, g, path = np.ones(1), np.zeros(1), []
    opt = AdamW({"w": w}, lr=lr, weight_decay=weight_decay, grads={"w": g})
    for _ in range(steps):
        opt.step()
        path.append(w[0])
    return np.array(path)


steps = 60
fig, ax = plt.subplots(figsize=(8, 3.6))
paths = {}
for wd, style, width in ((1e-1, "-", 4), (1e-3, "--", 1.5)):       # the thin dashed lines are drawn on top
    paths["L2", wd], paths["AdamW", wd] = l2_adam(wd, steps), decoupled(wd, steps)
    ax.plot(paths["L2", wd], "C0" + style, lw=width, alpha=0.7, label=f"L2 term inside Adam, weight decay {wd:g}")
    ax.plot(paths["AdamW", wd], "C1" + style, lw=width, alpha=0.7, label=f"AdamW (decoupled), weight decay {wd:g}")
ax.set_xlabel("step"); ax.set_ylabel("weight (its loss gradient is 0)")
ax.set_title("Weight decay with lr = 1e-2: inside the moments vs decoupled")
ax.legend(fontsize=8); ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()
for wd in (1e-1, 1e-3):
    print(f"weight decay {wd:g}: after {steps} steps L2-in-Adam {paths['L2', wd][-1]:.4f}   AdamW {paths['AdamW', wd][-1]:.6f}"
          f"   (1 - lr*wd)^{steps} = {(1 - 1e-2 * wd) ** steps:.6f}")
teach.check_close("AdamW with a zero gradient: exactly (1 - lr*wd)^t", paths["AdamW", 1e-3][-1], (1 - 1e-5) ** steps, rtol=1e-12)
teach.check_close("L2 inside Adam: a 100x smaller decay gives the same path", paths["L2", 1e-3], paths["L2", 1e-1], rtol=2e-2)

# %% [markdown]
# With the L2 term, a decay 100 times weaker shrinks the weight just as fast — by lr per step, a far stronger pull
# than intended. Decoupled decay shrinks it by exactly $(1 - \text{lr}\,\lambda)$ per step.
#
# **Which tensors are decayed.** BERT (Google's code and Hugging Face's) decays every weight matrix and every
# embedding table, and **not** the biases and the LayerNorm parameters:
#
# * a LayerNorm gain $\gamma$ starts at 1 and sets its layer's output scale; decay would pull it towards 0, i.e. shrink
#   the layer's output, which is no sensible prior. $\beta$ and the biases are offsets, a few numbers each, that
#   do not make the function more complex when they grow;
# * what decay is meant to restrain is the large matrices that multiply activations.
#
# `bertnp.optim.AdamW`'s rule is by name: no decay when the name ends in `.bias` or contains `LayerNorm`
# (so `cls.predictions.bias`, the decoder's bias, is not decayed; the tied word-embedding matrix is).

# %%
l10 = load_l10()                                               # PyTorch's numbers for a tiny BERT (section 3)
config = bn.BertConfig.from_dict(l10["config_json"])
tiny = bn.BertForPreTraining(config, dtype="float64").eval()
opt = AdamW(tiny, weight_decay=0.01)
not_decayed = [n for n in tiny.parameters() if opt.weight_decay_of(n) == 0.0]
decayed = [n for n in tiny.parameters() if opt.weight_decay_of(n) > 0.0]
print(f"decayed: {len(decayed)} tensors, {sum(tiny.parameters()[n].size for n in decayed):,} numbers; "
      f"not decayed: {len(not_decayed)} tensors, {sum(tiny.parameters()[n].size for n in not_decayed):,} numbers")
print("not decayed, e.g.:", not_decayed[:4], "...")
torch_decay = {k[len("weight_decay/"):]: float(v) for k, v in l10.items() if k.startswith("weight_decay/")}
teach.check_equal("bertnp's decay per tensor = the PyTorch run's parameter groups",
                  [opt.weight_decay_of(n) for n in sorted(torch_decay)], [torch_decay[n] for n in sorted(torch_decay)])

# %% [markdown]
# ## 3. Exercise: the AdamW step
#
# Write one update of PyTorch's `torch.optim.AdamW`, for a dict of named tensors, in place:
#
# * **decay**: the old weights are multiplied by $(1 - \text{lr}\cdot\lambda)$, with $\lambda = 0$ for biases and LayerNorm
#   parameters (by name, as above); the decay never enters $m$ or $v$;
# * **moments**: $m$ and $v$ as in section 1, updated in place in `state`;
# * **bias correction**: $m$ starts at 0, so after a few steps it is a weighted sum of only a few gradients, with
#   weights that do not add up to 1 — it is too small. Work out $\mathbb E[m_t]$ when every $g_t$ has the same
#   distribution, and divide $m_t$ by the factor that makes $\hat m_t$ an unbiased estimate of $\mathbb E[g]$. Do the
#   same for $v$;
# * **the step**: $\text{lr}\cdot \hat m / (\sqrt{\hat v} + \epsilon)$, with $\epsilon$ added *after* the correction (PyTorch's
#   choice; Google's BERT adds it to the uncorrected $\sqrt v$ — section 4).
#
# The check runs three tests: a step with a zero gradient (only the decay acts), a first step from zero moments,
# and then two updates of a whole tiny BERT from PyTorch's starting weights with PyTorch's gradient, compared
# with the weights `torch.optim.AdamW` produced (committed in `bertnp.lesson_data`).

# %% tags=["exercise"]
# EXERCISE: one update of torch.optim.AdamW (decoupled decay, no decay on biases and LayerNorm, bias correction)
def my_adamw_step(params, grads, state, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
    '''params, grads: {name: float64 array}; params are updated in place.
    state: {} before the first update; keeps "step" (updates done) and the moments "m", "v" ({name: array}).'''
    beta1, beta2 = betas
    state["step"] = t = state.get("step", 0) + 1
    for name, p in params.items():
        g = grads[name]
        m = state.setdefault("m", {}).setdefault(name, np.zeros_like(p))   # first moment, update in place
        v = state.setdefault("v", {}).setdefault(name, np.zeros_like(p))   # second moment, update in place
        ### BEGIN SOLUTION
        decay = 0.0 if (name.endswith(".bias") or "LayerNorm" in name) else weight_decay
        p *= 1.0 - lr * decay                          # decoupled: shrink the OLD weights, outside m and v
        m *= beta1
        m += (1.0 - beta1) * g                         # EMA of g
        v *= beta2
        v += (1.0 - beta2) * g * g                     # EMA of g^2
        m_hat = m / (1.0 - beta1 ** t)                 # E[m_t] = (1 - beta1^t) E[g]
        v_hat = v / (1.0 - beta2 ** t)                 # E[v_t] = (1 - beta2^t) E[g^2]
        p -= lr * m_hat / (np.sqrt(v_hat) + eps)       # eps after the correction (PyTorch)
        ### END SOLUTION


# %% tags=["check"]
# 1. a zero gradient: only the decay moves a weight, by the factor (1 - lr * weight_decay) = 1 - 0.1 * 0.5
probe = {name: np.ones(3) for name in ("layer.dense.weight", "layer.dense.bias",
                                       "layer.LayerNorm.weight", "layer.LayerNorm.bias")}
my_adamw_step(probe, {n: np.zeros(3) for n in probe}, {}, lr=0.1, weight_decay=0.5)
for name, expected in (("layer.dense.weight", 0.95), ("layer.dense.bias", 1.0),
                       ("layer.LayerNorm.weight", 1.0), ("layer.LayerNorm.bias", 1.0)):
    teach.check_close(f"{name} after one step with g = 0 ({'decayed' if expected < 1 else 'never decayed'})",
                      probe[name], np.full(3, expected), rtol=1e-12)
# 2. the first step from zero moments: m_hat = g and sqrt(v_hat) = |g|, so each entry moves by
#    lr * g / (|g| + eps) -- about lr, whatever the size of g
w = {"w": np.zeros(4)}
g = np.array([1e-3, -2.0, 50.0, 0.1])
my_adamw_step(w, {"w": g}, {}, lr=0.01, weight_decay=0.0)
first_expected = -0.01 * g / (np.abs(g) + 1e-6)
try:
    teach.check_close("first step, g = [1e-3, -2, 50, 0.1]", w["w"], first_expected, rtol=1e-9)
except teach.CheckFailed as failure:
    moved = np.asarray(w["w"]) / first_expected                       # 1 everywhere when right
    raise teach.CheckFailed(f"{failure}\n  lesson hint: each entry moved {np.round(moved, 4).tolist()} x the expected "
                            "step; at t = 1 the corrected moments are m_hat = g and v_hat = g^2 exactly: "
                            "look at your bias correction and at where eps goes") from None
# 3. PyTorch's numbers: two updates of a tiny BERT with the (clipped) gradient at its initial weights;
#    the first has lr 0 (warmup starts at 0) and only fills m and v, the second has lr 1e-3 / 3
params = {k[len("param/"):]: v.copy() for k, v in l10.items() if k.startswith("param/")}
clipped = {k[len("grad0/"):]: v * l10["clip_coefs"][0] for k, v in l10.items() if k.startswith("grad0/")}
state = {}
for lr in l10["lrs"][:2]:
    my_adamw_step(params, clipped, state, lr=float(lr), betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
failures, failed_names, worst = [], [], 0.0
for name, p in params.items():
    expected = l10[f"step2/{name}"]
    worst = max(worst, float(np.abs(p - expected).max() / np.abs(expected).max()))
    if not np.allclose(p, expected, rtol=1e-10, atol=1e-15):            # check_close's test, quietly
        try:
            teach.check_close(f"{name} after 2 updates", p, expected, rtol=1e-10, atol=1e-15)
        except teach.CheckFailed as exc:
            failures.append(str(exc))
            failed_names.append(name)
if failures:
    decayed_failed = sum(torch_decay[n] > 0 for n in failed_names)
    hint = ("only tensors that torch decays differ: look at how and when you apply the decay"
            if decayed_failed == len(failed_names) else
            f"{decayed_failed} decayed and {len(failed_names) - decayed_failed} undecayed tensors differ: "
            "look at the moments and the step (do m and v keep their values between calls?)")
    raise teach.CheckFailed(f"{len(failures)} of {len(params)} tensors differ from torch.optim.AdamW after 2 updates:\n"
                            + "\n".join(failures[:3]) + f"\n  hint: {hint}")
print(f"  all {len(params)} tensors equal torch.optim.AdamW's after 2 updates "
      f"(largest difference {worst:.1e} of a tensor's largest entry)  ok")


# %% [markdown]
# ### Solution notes
#
# **Bias correction.** Unrolling the recursion from $m_0 = 0$: $m_t = (1-\beta_1)\sum_{k=1}^{t} \beta_1^{t-k} g_k$. If every
# $g_k$ has mean $\mathbb E[g]$, then $\mathbb E[m_t] = (1-\beta_1)\frac{1 - \beta_1^t}{1 - \beta_1}\mathbb E[g] = (1 - \beta_1^t)\,\mathbb E[g]$: the weights
# sum to $1 - \beta_1^t$, not 1. So $\hat m_t = m_t / (1 - \beta_1^t)$, and likewise $\hat v_t = v_t / (1 - \beta_2^t)$. At $t = 1$,
# $\hat m_1 = g_1$ and $\hat v_1 = g_1^2$: the first step is $\text{lr}\cdot g/(|g| + \epsilon)$ — check 2 above.
#
# **Order.** PyTorch decays first, on the old weights: $\theta \leftarrow \theta(1 - \text{lr}\lambda) - \text{lr}\,\hat m/(\sqrt{\hat v}+\epsilon)$.
# Decaying *after* the step multiplies the step by $(1 - \text{lr}\lambda)$ too — a difference of
# $\text{lr}^2\lambda$ per step, tiny (here $\sim 10^{-9}$), but check 3 compares with PyTorch to $10^{-10}$ and sees it.
#
# What each check catches: decaying biases and LayerNorm (check 1, and most tensors of check 3); the decay
# added to the gradient — an L2 term — (check 1 gives 0.9 instead of 0.95); no bias correction (check 2: steps of
# $\sim 3\,\text{lr}$); $\epsilon$ inside the square root or before the correction (check 2's small entry, $g = 10^{-3}$, where
# $\epsilon$ is not negligible); decaying after the step (check 3).
#
# ## 4. PyTorch's AdamW and Google's
#
# Google's original BERT optimizer (`AdamWeightDecayOptimizer`) has **no bias correction**, and adds $\epsilon$ to the
# raw $\sqrt{v}$. For a steady gradient its step is the corrected step times
#
# $$\frac{1 - \beta_1^t}{\sqrt{1 - \beta_2^t}} \qquad(\text{the bias corrections that were left out}),$$
#
# which is 3.2 at $t = 1$, peaks at 6.6 near $t = 12$ (the first moment has warmed up, the second has not),
# and returns to 1 only after several thousand steps. BERT's long warmup (10,000 steps) hides most of this.
# `bertnp.optim.AdamW(correct_bias=False)` is Google's variant. On the tiny BERT, 20 steps at a constant
# learning rate, the two separate visibly. Google's larger early steps look good here — one fixed batch, a small
# learning rate — but they are larger steps all the same, exactly when the moments know least (section 7):

# %%
batch = {k: l10[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label")}
start_weights = {k[len("param/"):]: v for k, v in l10.items() if k.startswith("param/")}


def run_tiny(steps, lr, correct_bias=True, schedule=None, clip=1.0):
    """Train the tiny BERT from PyTorch's starting weights on its one batch; returns the losses, norms, lrs."""
    model = bn.BertForPreTraining(config, dtype="float64").eval()        # eval: dropout off, as in the torch run
    model.load_state_dict(start_weights)
    optimizer = AdamW(model, lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, correct_bias=correct_bias)
    scheduler = LinearWarmupDecay(optimizer, *schedule) if schedule else None
    losses, norms, lrs = [], [], []
    for _ in range(steps):
        model.zero_grad()
        losses.append(float(model(**batch).loss))
        model.backward()
        norms.append(clip_grad_norm(model.grads, clip))
        lrs.append(optimizer.lr)
        optimizer.step()
        if scheduler:
            scheduler.step()
    return np.array(losses), np.array(norms), np.array(lrs), model


losses_torch_style, *_, model_torch_style = run_tiny(20, lr=1e-3, correct_bias=True)
losses_google, *_, model_google = run_tiny(20, lr=1e-3, correct_bias=False)
apart = max(float(np.abs(model_torch_style.parameters()[n] - model_google.parameters()[n]).max())
            for n in start_weights)
print(f"after 20 steps: loss {losses_torch_style[-1]:.4f} (PyTorch's) vs {losses_google[-1]:.4f} (Google's); "
      f"largest weight difference {apart:.4f}")

t = np.arange(1, 20001)
factor = (1 - 0.9 ** t) / np.sqrt(1 - 0.999 ** t)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
ax1.semilogx(t, factor)
ax1.axhline(1, color="k", lw=0.8)
ax1.set_xlabel("step t"); ax1.set_ylabel("Google step / PyTorch step")
ax1.set_title(r"$(1-\beta_1^t)/\sqrt{1-\beta_2^t}$ for a steady gradient"); ax1.grid(alpha=0.3, which="both")
ax2.plot(losses_torch_style, "o-", ms=3, label="PyTorch's AdamW (bias correction)")
ax2.plot(losses_google, "s-", ms=3, label="Google's (no bias correction)")
ax2.set_xlabel("step"); ax2.set_ylabel("loss (MLM + NSP)")
ax2.set_title("the tiny BERT, lr 1e-3, no warmup"); ax2.legend(); ax2.grid(alpha=0.3)
fig.tight_layout()
plt.show()
teach.check_close("largest ratio in the first 100 steps", factor[:100].max(), 6.57, rtol=0.01)
assert apart > 1e-3, f"the two optimizers should end visibly apart after 20 steps, largest difference {apart:.1e}"
assert abs(losses_torch_style[-1] - losses_google[-1]) > 0.05, \
    f"losses after 20 steps should differ: {losses_torch_style[-1]:.4f} vs {losses_google[-1]:.4f}"

# %% [markdown]
# ## 5. Exercise: global-norm clipping
#
# One batch with an unlucky sample can produce a huge gradient, and a huge step. BERT clips: when the gradient is
# too long it is scaled down — all of it, by one factor — so that its **global norm**, over all tensors at once,
#
# $$\lVert g \rVert = \sqrt{\textstyle\sum_{\text{tensors}} \sum_{\text{entries}} g^2},$$
#
# is at most `max_norm`. Write it as PyTorch's `clip_grad_norm_` does: the factor is `max_norm / (norm + 1e-6)`,
# applied only when it is below 1, to every tensor in place; return the norm *before* clipping (a training loop
# logs it: it is the best early warning of a diverging run).
#
# The check clips PyTorch's gradient at the tiny BERT's initial weights (whose global norm is about 3.1) and
# compares the norm and every clipped tensor with PyTorch's; then checks that a short gradient is left alone.

# %% tags=["exercise"]
# EXERCISE: clip the global gradient norm (in place), as torch.nn.utils.clip_grad_norm_
def my_clip_grad_norm(grads, max_norm):
    '''grads: {name: array}, scaled in place. Returns the global norm before clipping (a float).'''
    ### BEGIN SOLUTION
    norm = float(np.sqrt(sum(float((g * g).sum()) for g in grads.values())))   # one norm over every entry
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= coef                                   # the same factor everywhere: the direction is kept
    ### END SOLUTION
    return norm


# %% tags=["check"]
grads = {k[len("grad0/"):]: v.copy() for k, v in l10.items() if k.startswith("grad0/")}
norm = my_clip_grad_norm(grads, 1.0)
if all(np.array_equal(g, l10[f"grad0/{name}"]) for name, g in grads.items()):
    raise teach.CheckFailed(f"the gradients (global norm {l10['grad_norms'][0]:.3f} > 1) were not changed: "
                            "scale the arrays of the dict in place (g *= factor), the caller keeps using them")
teach.check_close("norm returned (before clipping) vs torch", norm, l10["grad_norms"][0], rtol=1e-12)
failures = []
for name, g in grads.items():
    expected = l10[f"grad0/{name}"] * l10["clip_coefs"][0]
    if not np.allclose(g, expected, rtol=1e-12, atol=0.0):
        try:
            teach.check_close(f"clipped {name}", g, expected, rtol=1e-12)
        except teach.CheckFailed as exc:
            failures.append(str(exc))
if failures:
    factors = [float(np.median(g[l10[f"grad0/{n}"] != 0] / l10[f"grad0/{n}"][l10[f"grad0/{n}"] != 0]))
               for n, g in grads.items() if np.any(l10[f"grad0/{n}"])]            # the factor each tensor got
    raise teach.CheckFailed(f"{len(failures)} of {len(grads)} clipped gradients differ from torch "
                            f"(every tensor must be scaled by the same factor {l10['clip_coefs'][0]:.6f}; "
                            f"yours were scaled by {min(factors):.6f} ... {max(factors):.6f}):\n" + "\n".join(failures[:4]))
print(f"  all {len(grads)} clipped gradients equal torch's (factor {l10['clip_coefs'][0]:.6f})  ok")
short = {"a": np.array([0.3, -0.4]), "b.bias": np.array([0.1])}
before = {k: v.copy() for k, v in short.items()}
my_clip_grad_norm(short, 1.0)
for name in short:
    teach.check_equal(f"a gradient of norm {np.sqrt(0.26):.2f} < 1 is not changed: {name}", short[name], before[name])

# %% [markdown]
# ### Solution notes
#
# One norm over everything, one factor for everything, in place. The common mistake is to clip each tensor by its
# own norm: then a tensor with a large gradient is scaled down and the others are not — the update no longer points
# along the gradient. Global clipping only shortens the step:

# %%
original = np.concatenate([l10[k].ravel() for k in l10 if k.startswith("grad0/")])
per_tensor = np.concatenate([(l10[k] * min(1.0, 1.0 / (np.linalg.norm(l10[k]) + 1e-6))).ravel()
                             for k in l10 if k.startswith("grad0/")])
global_clip = original * min(1.0, 1.0 / (np.linalg.norm(original) + 1e-6))
cosine = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
print(f"cosine with the gradient: global clipping {cosine(global_clip, original):.6f}, "
      f"per-tensor clipping {cosine(per_tensor, original):.4f};  norms {np.linalg.norm(global_clip):.3f} vs "
      f"{np.linalg.norm(per_tensor):.3f}")
assert cosine(global_clip, original) > 1 - 1e-12, "global clipping must keep the direction"
assert cosine(per_tensor, original) < 0.999, "per-tensor clipping turns the gradient"

# %% [markdown]
# ## 6. Warmup, linear decay, and the whole recipe against PyTorch
#
# BERT's learning rate rises linearly from 0 to its peak over the warmup steps, then falls linearly to 0 at the last
# step (`bertnp.optim.LinearWarmupDecay`, the same as `transformers.get_linear_schedule_with_warmup`). The very first
# update has learning rate 0: it only fills $m$ and $v$.

# %%
schedule = LinearWarmupDecay(AdamW({"w": np.zeros(1)}, lr=1e-4, grads={"w": np.zeros(1)}),
                             warmup_steps=100, total_steps=1000)
lrs = np.array([schedule.lr_at(s) for s in range(1001)])
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(lrs)
ax.set_xlabel("completed updates"); ax.set_ylabel("learning rate")
ax.set_title("linear warmup (10%) and linear decay, peak 1e-4"); ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()
teach.check_equal("lr of the first update, of update 101, after the last", [lrs[0], lrs[100], lrs[1000]], [0.0, 1e-4, 0.0])

# %% [markdown]
# Now the whole recipe on the tiny BERT, exactly as PyTorch ran it for the committed file: warmup 3 of 12 updates,
# peak lr $10^{-3}$, global clipping at 1, AdamW with decay 0.01 — the library's `clip_grad_norm`, `AdamW` and
# `LinearWarmupDecay` (your functions above do the same). Every loss, gradient norm and learning rate must match:

# %%
losses, norms, lrs_used, _ = run_tiny(12, lr=1e-3, schedule=(3, 12))
teach.check_close("learning rates of the 12 updates", lrs_used, l10["lrs"], rtol=1e-15)
teach.check_close("global gradient norms before clipping", norms, l10["grad_norms"], rtol=1e-10)
teach.check_close("losses before each update", losses, l10["losses"], rtol=1e-10)
teach.check_equal("the first update (lr 0) changes nothing: loss 2 = loss 1", losses[1], losses[0])
print("losses:", np.round(losses, 4))

# %% [markdown]
# ## 7. What goes wrong without warmup
#
# Why start at 0? Section 1 gave half the answer: Adam's first steps move **every** entry by about lr, because
# $\hat m/\sqrt{\hat v}$ rests on one or two gradients and is close to $\pm 1$ everywhere. At a learning rate that is
# fine later, those first steps shove every weight at once by far more than its own size (BERT initialises with
# standard deviation 0.02). Warmup makes the first steps small until $v$ has seen enough gradients to tell noisy
# coordinates (small $|\hat m|/\sqrt{\hat v}$) from consistent ones.
#
# Post-LN makes this worse. Xiong et al. (2020) showed that in a post-LN Transformer the gradients of the layers near
# the output are large at initialisation, and that post-LN models need warmup where pre-LN ones can do without
# (lesson 5). Here is the effect on our post-LN BERT: a 4-layer model trained at a high peak learning rate
# ($3\times10^{-2}$), once with no warmup and once with 30% warmup, same data, same seeds. Besides the loss we
# measure the **entropy of the first layer's attention** on a fixed batch: $-\sum_j p_{ij}\log p_{ij}$ averaged over
# queries and heads. At initialisation attention is nearly uniform, $\approx \ln(\text{number of real keys})$.

# %%
from bertnp.corpus import bundled_corpus
from bertnp.data import PretrainingDataset, PretrainingLoader, read_corpus
from bertnp.tokenizer import BertTokenizer

workdir = teach.workdir("lesson10")
documents = read_corpus(bundled_corpus("train"))
sentences = [s for doc in documents for s in doc][::6]
bn.train_wordpiece("\n".join(sentences), vocab_size=2000, vocab_file=workdir / "vocab.txt", show_progress=False)
tokenizer = BertTokenizer(str(workdir / "vocab.txt"), do_lower_case=True)
dataset = PretrainingDataset(documents[:300], tokenizer, max_seq_length=64, max_predictions_per_seq=10, seed=0)
probe_batch = PretrainingLoader(dataset, 16, seed=999).next_batch()
probe_inputs = {k: probe_batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
print(f"{len(dataset)} pretraining pairs of up to 64 tokens, vocabulary {tokenizer.vocab_size}")


def first_layer_entropy(model):
    """Mean entropy (nats) of layer 0's attention rows on the probe batch, over heads and real queries."""
    model.eval()
    probs = model(**probe_inputs, output_attentions=True).attentions[0]            # (B, heads, T, T)
    model.train()
    row_entropy = -(probs * np.log(np.maximum(probs, 1e-30))).sum(axis=-1)          # (B, heads, T)
    return float(row_entropy.mean(axis=1)[probe_inputs["attention_mask"] == 1].mean())


def pretrain(seed, warmup_share, steps, peak_lr=3e-2, every=3):
    cfg = bn.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = bn.BertForPreTraining(cfg, seed=seed)                                   # float32, as in training
    optimizer = AdamW(model, lr=peak_lr, weight_decay=0.01)
    scheduler = LinearWarmupDecay(optimizer, int(warmup_share * steps), steps)
    loader = PretrainingLoader(dataset, 16, seed=seed)
    losses, entropies = [], [(0, first_layer_entropy(model))]
    for step in range(1, steps + 1):
        batch = loader.next_batch()
        model.zero_grad()
        losses.append(float(model(**batch).mlm_loss))
        model.backward()
        clip_grad_norm(model.grads, 1.0)
        optimizer.step()
        scheduler.step()
        if step % every == 0 or step == steps:
            entropies.append((step, first_layer_entropy(model)))
    return np.array(losses), np.array(entropies)


seeds = teach.pick([0, 1, 2, 3], [0, 1])
train_steps = 30
start = time.perf_counter()
runs = {(seed, warm): pretrain(seed, warm, train_steps) for seed in seeds for warm in (0.0, 0.3)}
print(f"{len(runs)} runs of {train_steps} steps in {time.perf_counter() - start:.1f} s")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for (seed, warm), (losses, entropies) in runs.items():
    color = "C3" if warm == 0 else "C0"
    label = ("no warmup" if warm == 0 else "30% warmup") if seed == seeds[0] else None
    ax1.plot(np.arange(1, len(losses) + 1), losses, color=color, alpha=0.8, lw=1.2, label=label)
    ax2.plot(entropies[:, 0], entropies[:, 1], "o-", ms=3, color=color, alpha=0.8, label=label)
ax1.set_xlabel("step"); ax1.set_ylabel("MLM loss (training batch)")
ax1.set_title(f"peak lr 3e-2, {len(seeds)} seeds each"); ax1.legend(); ax1.grid(alpha=0.3)
ax2.set_xlabel("step"); ax2.set_ylabel("entropy of layer 0's attention (nats)")
ax2.set_title("first layer's attention, on a fixed batch"); ax2.legend(); ax2.grid(alpha=0.3)
fig.tight_layout()
plt.show()

initial_entropy = runs[seeds[0], 0.0][1][0, 1]
gaps = [runs[s, 0.3][1][-1, 1] - runs[s, 0.0][1][-1, 1] for s in seeds]
rise = [runs[s, 0.0][0][1:].max() - runs[s, 0.0][0][0] for s in seeds]
rise_warm = [runs[s, 0.3][0][1:].max() - runs[s, 0.3][0][0] for s in seeds]
for s, gap, r, rw in zip(seeds, gaps, rise, rise_warm):
    print(f"seed {s}: final entropy, warmup minus no warmup {gap:+.2f} nats (start {initial_entropy:.2f});  "
          f"loss above its start: no warmup {r:+.2f}, warmup {rw:+.2f}")
assert min(gaps) > 0.5, f"without warmup the first layer's attention should collapse (entropy gaps {np.round(gaps, 2)})"
assert max(rise_warm) < 0.1, f"with warmup the loss should not rise above its start, rose by {np.round(rise_warm, 2)}"

# %% [markdown]
# Without warmup, the first updates move every weight of the first layer by about lr — more than its initial size of
# 0.02 — and its attention **collapses**: each query puts most of its weight on a few keys (entropy 1.5–3 nats, against
# ~4.1 for a uniform row over ~60 keys; $e^{1.5} \approx 4.5$ keys' worth). With warmup the same peak learning rate,
# reached gradually, leaves the attention spread out. A collapsing softmax also learns more slowly: its Jacobian
# $\operatorname{diag}(p) - pp^\top$ (lesson 2) vanishes as a row approaches one-hot. "Attention entropy collapse" is a
# known companion of unstable transformer training at high learning rates (Zhai et al., 2023). On most seeds the loss
# also jumps *above* its starting value in the first steps without warmup; with warmup it never did.
#
# Measured for this setting on 6 seeds: the entropy gap was at least 1.1 nats at 30 steps (the check asks for 0.5), and
# the loss with warmup never rose more than 0.03 above its start. Warmup lowers the risk, it does not remove it: in
# runs of 60 steps, which spend twice as long at the peak, 1 of 6 seeds collapsed with warmup too (all 6 without).
#
# In a run this short both reach the unigram plateau of lesson 4, so the loss curve alone hides the difference; the
# attention shows it. What a collapsed first layer costs later, when the model should start to use the context, takes
# a longer run to measure — a good experiment to try with `bertnp pretrain` and its `--warmup` setting.
#
# ## Summary
#
# * Adam's step is about lr per entry, whatever the gradient's scale. So weight decay must be **decoupled**: shrink the
#   old weights by $(1 - \text{lr}\lambda)$, outside $m$ and $v$. No decay on biases and LayerNorm parameters.
# * Bias correction divides $m_t$ by $1-\beta_1^t$ and $v_t$ by $1-\beta_2^t$ (their weights' sum); PyTorch adds $\epsilon$
#   after it. Google's BERT optimizer skips the correction, and its early steps are up to ~6.6x larger.
# * Clip the **global** norm: one factor for all tensors keeps the update's direction.
# * Warmup from 0, then linear decay. Without warmup, a high learning rate makes the first, sign-like Adam steps
#   large everywhere; on a post-LN BERT the first layer's attention collapses.
#
# Next: lesson 11 — gradient accumulation, and why averaging micro-batch losses is wrong for BERT.
