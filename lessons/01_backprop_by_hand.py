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
# # Lesson 1 — Backprop by hand, and how to know you got it right
#
# Every operation in `bertnp` is a pair of pure functions (CS231n's convention):
#
# ```python
# out, cache = x_forward(inputs..., settings...)   # cache: what the backward needs
# grads      = x_backward(dout, cache)             # dout = dL/dout, grads = dL/dinputs
# ```
#
# `x_backward` never sees the loss. It receives the *upstream gradient* $\frac{\partial L}{\partial \text{out}}$
# (same shape as `out`) and applies the chain rule once, locally. A whole BERT is a few dozen
# of these pairs composed (`bertnp/model.py`), so if each pair is right, the model is right.
#
# "Right" is decided by a referee that knows no calculus: **finite differences**. In this lesson you
#
# 1. write the referee (a centered-difference gradient) and learn how to compare two gradients;
# 2. derive and implement the backward of a linear layer, then of LayerNorm;
# 3. see why the check must use a *random* upstream gradient (an all-ones `dout` lets a wrong
#    LayerNorm backward pass);
# 4. see where finite differences stop being trustworthy: the noise floor.

# %%
# %matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
from bertnp.gradcheck import check_layer, numerical_gradient, rel_error
from bertnp.ops.linear import linear_forward, linear_backward
from bertnp.ops.layernorm import layernorm_forward, layernorm_backward


# %% [markdown]
# ## 1. The referee: centered differences
#
# For a scalar $f$ and a tiny step $h$, Taylor's theorem gives
#
# $$f(x \pm h e_i) = f(x) \pm h\,\partial_i f + \tfrac{h^2}{2}\,\partial_i^2 f \pm \tfrac{h^3}{6}\,\partial_i^3 f + \dots$$
#
# Subtract the two and the even terms cancel:
#
# $$\partial_i f \approx \frac{f(x + h e_i) - f(x - h e_i)}{2h}, \qquad \text{error } O(h^2).$$
#
# (The one-sided $\frac{f(x+h e_i) - f(x)}{h}$ keeps the $h^2$ term: error $O(h)$.) It costs two
# evaluations of $f$ *per entry of $x$*, far too slow to train with, cheap enough to check a
# small layer. Write it: perturb `x` **in place** one entry at a time (so `f`, which reads `x`,
# sees the change) and put the entry back afterwards.

# %% tags=["exercise"]
# EXERCISE: the centered-difference gradient of a scalar function f() with respect to array x
def my_numerical_gradient(f, x, h=1e-5):
    '''f() takes no argument and reads x. Returns an array shaped like x.'''
    grad = np.zeros_like(x)
    ### BEGIN SOLUTION
    for i in np.ndindex(x.shape):      # every entry, by index into x itself (x.reshape(-1)
        saved = x[i]                   # is a copy for a transposed x: writes would miss x)
        x[i] = saved + h
        f_plus = f()
        x[i] = saved - h
        f_minus = f()
        x[i] = saved                   # restore: the next entry must see the original x
        grad[i] = (f_plus - f_minus) / (2 * h)
    ### END SOLUTION
    return grad


# %% [markdown]
# To compare an analytic gradient $a$ with a numerical one $n$ we use the **relative error**,
# taken elementwise and then the worst entry:
#
# $$\text{rel\_error}(a, n) = \max_i \frac{|a_i - n_i|}{\max(10^{-8},\ |a_i| + |n_i|)}.$$
#
# Relative, because a gradient of size $10^3$ off by $10^{-6}$ is perfect while one of size
# $10^{-6}$ off by $10^{-6}$ is wrong. The $10^{-8}$ keeps two tiny numbers from dividing by zero.
# Rules of thumb in float64 at tiny sizes: **$\le 10^{-7}$ is a correct smooth layer**, $10^{-7}$–$10^{-2}$
# is suspicious, **$> 10^{-2}$ is a bug**. `bertnp.gradcheck.rel_error` implements exactly this.
#
# Check your referee on a function whose derivative we know:
# $f(x) = \sum_i x_i^2 \sin x_i$, so $\partial_i f = 2x_i \sin x_i + x_i^2 \cos x_i$.

# %% tags=["check"]
x = rng.standard_normal((3, 4))
x_before = x.copy()
f = lambda: float((x * x * np.sin(x)).sum())
exact = 2 * x * np.sin(x) + x * x * np.cos(x)

mine = my_numerical_gradient(f, x)
err_exact = rel_error(mine, exact)
err_library = rel_error(mine, numerical_gradient(f, x))
print(f"vs the exact derivative: {err_exact:.1e}   vs bertnp.gradcheck.numerical_gradient: {err_library:.1e}")
assert np.array_equal(x, x_before), "x must be restored after the check"
assert err_exact < 1e-7
assert err_library < 1e-12


# %% [markdown]
# ## 2. A linear layer
#
# `bertnp` stores weights in PyTorch's layout, `weight` of shape (out, in):
#
# $$y_{no} = \sum_i x_{ni} W_{oi} + b_o \qquad (y = x W^\top + b),$$
#
# where $n$ runs over every leading axis (batch, position) flattened together.
# The backward gets $\delta_{no} = \partial L / \partial y_{no}$ and follows each path from an input to $L$:
#
# * $x_{ni}$ feeds every output $y_{no}$ of its row with weight $W_{oi}$: $\ \frac{\partial L}{\partial x_{ni}} = \sum_o \delta_{no} W_{oi}$, i.e. `dx = dout @ W`.
# * $W_{oi}$ is used in every row $n$, multiplied by $x_{ni}$: $\ \frac{\partial L}{\partial W_{oi}} = \sum_n \delta_{no} x_{ni}$, i.e. `dW = dout.T @ x` with the rows flattened.
# * $b_o$ is added to every row: $\ \frac{\partial L}{\partial b_o} = \sum_n \delta_{no}$.
#
# A useful sanity check: **a gradient has the shape of the thing it is the gradient of.**
# `dW` must be (out, in), so `dout.T @ x` is the only product of the two that fits.

# %% tags=["exercise"]
# EXERCISE: linear_backward -- dx, dweight, dbias of out = x @ weight.T + bias
def my_linear_backward(dout, cache):
    '''dout: (..., out). cache: LinearCache(x (..., in), weight (out, in), has_bias).'''
    x, weight, has_bias = cache
    ### BEGIN SOLUTION
    x2d = x.reshape(-1, x.shape[-1])                # (..., in)  -> (N, in)
    dout2d = dout.reshape(-1, dout.shape[-1])       # (..., out) -> (N, out)
    dx = dout @ weight                              # (..., out) @ (out, in) -> (..., in)
    dweight = dout2d.T @ x2d                        # (out, N) @ (N, in) -> (out, in)
    dbias = dout2d.sum(axis=0) if has_bias else None   # (out,)
    ### END SOLUTION
    return dx, dweight, dbias


# %% [markdown]
# `check_layer` runs the forward, draws a random `dout`, calls your backward, and compares each
# gradient with `numerical_gradient` of the scalar $L = \sum \text{out} \odot \text{dout}$ (whose
# gradient with respect to `out` is exactly `dout`). Use small, *distinct* sizes (2, 3, 4, 5):
# with equal sizes a transposed matrix has the right shape and the wrong values.

# %% tags=["check"]
inputs = dict(x=rng.standard_normal((2, 3, 4)),       # (B, T, in): the leading axes are flattened
              weight=rng.standard_normal((5, 4)),     # (out, in)
              bias=rng.standard_normal(5))
errors = check_layer(linear_forward, my_linear_backward, inputs, wrt=("x", "weight", "bias"))
print({k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-7, errors


# %% [markdown]
# ## 3. LayerNorm, step by step
#
# BERT normalises every hidden vector (a row of $C$ numbers) to zero mean and unit variance,
# then rescales it with learned $\gamma, \beta$:
#
# $$\mu = \frac1C \sum_j x_j, \qquad \sigma^2 = \frac1C \sum_j (x_j - \mu)^2, \qquad r = \frac{1}{\sqrt{\sigma^2 + \epsilon}},$$
# $$\hat x_j = (x_j - \mu)\, r, \qquad y_j = \gamma_j \hat x_j + \beta_j .$$
#
# (Population variance, $\epsilon$ inside the square root, $\epsilon = 10^{-12}$ in BERT.)
# Each row is independent, so derive the backward for one row with $\delta_j = \partial L/\partial y_j$.
#
# **Step 1, the affine part.** $y_j = \gamma_j \hat x_j + \beta_j$ gives, summed over all rows,
# $\ \frac{\partial L}{\partial \beta_j} = \sum_{\text{rows}} \delta_j,\ \ \frac{\partial L}{\partial \gamma_j} = \sum_{\text{rows}} \delta_j \hat x_j$,
# and $g_j := \frac{\partial L}{\partial \hat x_j} = \gamma_j \delta_j$.
#
# **Step 2, how one $x_i$ moves every $\hat x_j$.** $x_i$ reaches $\hat x_j$ three ways: directly (only when $j = i$),
# through $\mu$, and through $r$. With $\frac{\partial \mu}{\partial x_i} = \frac1C$ and
# $\frac{\partial \sigma^2}{\partial x_i} = \frac2C (x_i - \mu)$ (the $\mu$-term sums to zero), so
# $\frac{\partial r}{\partial x_i} = -\frac{r^3}{C}(x_i - \mu)$:
#
# $$\frac{\partial \hat x_j}{\partial x_i} = r\Big(\delta_{ij} - \frac1C\Big) + (x_j - \mu)\frac{\partial r}{\partial x_i} = r\Big(\delta_{ij} - \frac1C - \frac1C\,\hat x_j \hat x_i\Big).$$
#
# **Step 3, sum over $j$.**
#
# $$\frac{\partial L}{\partial x_i} = \sum_j g_j \frac{\partial \hat x_j}{\partial x_i} = r\Big(g_i - \overline{g} - \hat x_i\, \overline{g \hat x}\Big), \qquad \overline{g} = \frac1C\sum_j g_j,\ \ \overline{g\hat x} = \frac1C\sum_j g_j \hat x_j .$$
#
# Read it geometrically: LayerNorm's output does not change if you add a constant to the row
# (so the gradient has no component along $(1, \dots, 1)$: the $-\overline{g}$ term removes it) or
# scale the row (no component along $\hat x$: the $-\hat x\, \overline{g\hat x}$ term removes it).
# Hence **every row of `dx` sums to zero** — remember that in section 4.
#
# The forward caches `LayerNormCache(xhat, rstd, gamma)`: $\hat x$, $r$ (shape (..., 1)) and $\gamma$.

# %% tags=["exercise"]
# EXERCISE: layernorm_backward -- dx, dgamma, dbeta from dout and LayerNormCache(xhat, rstd, gamma)
def my_layernorm_backward(dout, cache):
    '''dout: (..., C) -> dx (..., C), dgamma (C,), dbeta (C,).'''
    xhat, rstd, gamma = cache
    ### BEGIN SOLUTION
    C = xhat.shape[-1]
    dbeta = dout.reshape(-1, C).sum(axis=0)                        # step 1: sum over every row
    dgamma = (dout * xhat).reshape(-1, C).sum(axis=0)
    g = dout * gamma                                               # dL/dxhat
    g_mean = g.mean(axis=-1, keepdims=True)                        # (..., 1): the path through mu
    gx_mean = (g * xhat).mean(axis=-1, keepdims=True)              # (..., 1): the path through r
    dx = rstd * (g - g_mean - xhat * gx_mean)                      # step 3
    ### END SOLUTION
    return dx, dgamma, dbeta


# %% tags=["check"]
x = rng.standard_normal((2, 3, 5))                   # (B, T, C)
gamma, beta = rng.standard_normal(5), rng.standard_normal(5)
errors = check_layer(layernorm_forward, my_layernorm_backward,
                     dict(x=x, gamma=gamma, beta=beta), wrt=("x", "gamma", "beta"))
print({k: f"{v:.1e}" for k, v in errors.items()})
assert max(errors.values()) < 1e-7, errors

# and it agrees with the library's backward, and every row of dx sums to zero
out, cache = layernorm_forward(x, gamma, beta)
dout = rng.standard_normal(out.shape)
for mine, ref in zip(my_layernorm_backward(dout, cache), layernorm_backward(dout, cache)):
    assert np.allclose(mine, ref, rtol=1e-10, atol=1e-12)
assert np.abs(my_layernorm_backward(dout, cache)[0].sum(axis=-1)).max() < 1e-12


# %% [markdown]
# ## 4. Why the upstream gradient must be random
#
# It is tempting to check a layer with `dout = np.ones_like(out)`, i.e. $L = \sum y$. Take a common
# mistake: treat $r$ as a constant (forget the path through the variance), which gives
# `dx = rstd * (g - g.mean())`. Check it both ways, at BERT's initialisation $\gamma = 1$, $\beta = 0$.
# The helper below is what `check_layer` does inside, but with a `dout` we choose.

# %%
def forgot_the_variance(dout, cache):        # WRONG on purpose: r treated as a constant
    xhat, rstd, gamma = cache
    g = dout * gamma
    return rstd * (g - g.mean(axis=-1, keepdims=True)), None, None

x = rng.standard_normal((3, 5))
gamma, beta = np.ones(5), np.zeros(5)            # how BERT initialises every LayerNorm

def check_dx(backward, dout, floor=0.0):
    out, cache = layernorm_forward(x, gamma, beta)
    analytic = backward(dout, cache)[0]
    loss = lambda: float((layernorm_forward(x, gamma, beta)[0] * dout).sum())   # L = sum(out * dout)
    numeric = numerical_gradient(loss, x)
    return rel_error(analytic, numeric, floor=floor), numeric

ones, random_dout = np.ones((3, 5)), rng.standard_normal((3, 5))
for name, dout in [("all-ones dout", ones), ("random dout  ", random_dout)]:
    right, numeric = check_dx(layernorm_backward, dout)
    wrong, _ = check_dx(forgot_the_variance, dout)
    print(f"{name}: correct backward {right:.1e}   wrong backward {wrong:.1e}   "
          f"(largest numeric gradient {np.abs(numeric).max():.1e})")

# %% [markdown]
# With all-ones the check **cannot tell the two apart**: both get the same error. The reason:
# with $\gamma = 1, \beta = 0$, $L = \sum_j \hat x_j = 0$ for every input — a normalised row sums to zero — so the
# true gradient is exactly zero, and the numerical gradient is nothing but rounding noise
# ($\sim 10^{-11}$). Any backward that returns (almost) zeros "agrees" with noise as well as any
# other: the error printed is noise divided by $10^{-8}$, for the right and the wrong answer alike.
# Softmax has the same trap: its probabilities sum to 1, so $L = \sum p$ is a constant.
#
# A random `dout` probes every direction: the correct backward lands near $10^{-10}$, the wrong one
# near 1. That is why `check_layer` always draws `dout` from a standard normal.

# %%
right_ones, _ = check_dx(layernorm_backward, ones)
wrong_ones, _ = check_dx(forgot_the_variance, ones)
right_random, _ = check_dx(layernorm_backward, random_dout)
wrong_random, _ = check_dx(forgot_the_variance, random_dout)
assert abs(right_ones - wrong_ones) < 1e-6           # all-ones: indistinguishable ...
assert right_random < 1e-7 and wrong_random > 1e-2   # random: the bug is caught

# check_layer (random dout inside) catches it too
errors = check_layer(layernorm_forward, forgot_the_variance, dict(x=x, gamma=gamma, beta=beta), wrt=("x",))
print("check_layer on the wrong backward:", errors)
assert errors["x"] > 1e-2

# %% [markdown]
# ## 5. The noise floor
#
# Finite differences have two errors pulling in opposite directions:
#
# * **truncation**: the Taylor terms we dropped, $\sim h^2$ for centered differences ($\sim h$ one-sided);
# * **rounding**: $f(x \pm h)$ are each computed with a relative error of about machine epsilon
#   $\varepsilon$ ($2.2\times 10^{-16}$ in float64), and dividing their difference by $2h$ magnifies it to
#   $\sim \varepsilon |f| / h$.
#
# The total is smallest where the two meet: $h \approx \varepsilon^{1/3} \approx 10^{-5}$ for centered
# differences in float64, with an error near $\varepsilon^{2/3} \approx 10^{-11}$ (often better in practice).
# In float32 ($\varepsilon \approx 1.2\times 10^{-7}$) the rounding term at $h = 10^{-5}$ is about $10^{-2}$,
# and no step does reliably better than $\sim 10^{-5}$ — useless for telling a subtle bug from a correct layer.
# **Gradient checks run in float64.** See it on $f(x) = \sin(x)\, e^x$ at $x = 0.7$ (at the far left,
# float32 cannot even represent $x \pm h$ as different from $x$: the estimate is 0, the error 100%):

# %%
fun = lambda t: np.sin(t) * np.exp(t)
x0 = 0.7
exact = np.cos(x0) * np.exp(x0) + np.sin(x0) * np.exp(x0)
hs = np.logspace(-13, -1, 49)

def rel(approx):
    return abs(float(approx) - exact) / abs(exact)

one_sided = [rel((fun(x0 + h) - fun(x0)) / h) for h in hs]
centered = [rel((fun(x0 + h) - fun(x0 - h)) / (2 * h)) for h in hs]
x32 = np.float32(x0)
centered32 = [rel((fun(x32 + np.float32(h)) - fun(x32 - np.float32(h))) / (2 * np.float32(h)))
              if np.float32(h) > 0 else np.nan for h in hs]

fig, ax = plt.subplots(figsize=(9, 4))
ax.loglog(hs, one_sided, "o-", ms=3, label="one-sided, float64: $O(h)$")
ax.loglog(hs, centered, "o-", ms=3, label="centered, float64: $O(h^2)$")
ax.loglog(hs, centered32, "o-", ms=3, label="centered, float32")
ax.axvline(1e-5, color="gray", ls=":", label="h = 1e-5")
ax.set_xlabel("step h"); ax.set_ylabel("relative error of the derivative")
ax.set_title("rounding noise (left) against truncation error (right)")
ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5)); ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

at = lambda curve: curve[int(np.argmin(abs(np.log10(hs) + 5)))]     # the value at h = 1e-5
print(f"at h = 1e-5: one-sided {at(one_sided):.1e}, centered {at(centered):.1e}, centered float32 {at(centered32):.1e}")
best = hs[int(np.nanargmin(centered))]
print(f"best centered step in float64: h = {best:.0e}, error {min(centered):.1e}")
assert at(centered) < 1e-9 and at(one_sided) > 100 * at(centered)
assert 1e-7 <= best <= 1e-3
assert at(centered32) > 1e-4                         # float32 at the usual step: hopeless

# %% [markdown]
# ### Entries whose true gradient is zero
#
# The rounding noise is *absolute*: about $10^{-11}$ whatever the gradient's size. For an entry
# whose true gradient is exactly 0, the analytic side returns ~0, the numerical side returns noise,
# and the *relative* error is noise / $10^{-8}$, as large as $10^{-3}$ — for a correct backward (you saw it
# in section 4 with all-ones). BERT has such an entry: the attention key bias, whose gradient is
# exactly zero (lesson 2 shows why).
#
# `rel_error(a, n, floor=...)` treats entries where **both** $|a|$ and $|n|$ are below `floor` as
# matching. Use it only for that, with a floor near the noise ($10^{-9}$), never to make a real
# error go away: the floor cannot rescue an entry where one side is large.

# %%
_, noise_only = check_dx(layernorm_backward, ones)           # the true gradient is exactly zero
print(f"numerical gradient where the truth is 0: max |n| = {np.abs(noise_only).max():.1e}")
print("without a floor:", rel_error(np.zeros_like(noise_only), noise_only),
      "  with floor=1e-9:", rel_error(np.zeros_like(noise_only), noise_only, floor=1e-9))
assert np.abs(noise_only).max() < 1e-9
assert rel_error(np.zeros_like(noise_only), noise_only, floor=1e-9) == 0.0
# the floor forgives only entries that are tiny on BOTH sides
assert rel_error(np.array([1e-3]), np.array([2e-3]), floor=1e-9) > 0.3

# %% [markdown]
# ## Summary
#
# * A backward is one local chain rule: `grads = x_backward(dout, cache)`; every gradient has the shape of its input.
# * Check it with centered differences in **float64**, $h = 10^{-5}$, a **random** `dout`, tiny **distinct** sizes.
# * Relative error $\le 10^{-7}$: correct. $> 10^{-2}$: a bug. Entries with a true gradient of zero sit on the
#   noise floor: give `rel_error` a `floor` of $\sim 10^{-9}$ for those, and only those.
# * LayerNorm's `dx` has no component along the all-ones direction or along $\hat x$; softmax's is similar.
#   That is exactly why an all-ones `dout` cannot see their mistakes.
#
# Next: lesson 2 puts softmax inside attention.
