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
# 3. see why a check must use a *random* upstream gradient (an all-ones `dout` lets a wrong
#    LayerNorm backward pass);
# 4. see where finite differences stop being trustworthy: the noise floor.
#
# **Prerequisites:** partial derivatives and the chain rule; NumPy arrays, broadcasting, `reshape`
# and the matrix product `@`. This is the first lesson.
#
# **Time:** about 60–75 minutes; the LayerNorm derivation (section 3) is half of it.
#
# **How the exercises work (all lessons).** An exercise is a code cell that starts with
# `# EXERCISE:`. Write your code between `### BEGIN SOLUTION` and `### END SOLUTION` (in a course
# handout that region only raises `NotImplementedError`; in this repository it holds the reference
# solution). The cell after it is the **check**: run it, and if your answer is wrong it tells you
# which values are off and often why. Below each check, **solution notes** derive the answer:
# try first, read them when you are stuck or done. Only the check cells call your code; everything
# else in the lesson uses the library, so the lesson runs even while an exercise is unsolved.

# %%
# %matplotlib inline
import io
import contextlib
import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
# the library's forward passes; the backward passes are yours to write
from bertnp.ops.linear import linear_forward
from bertnp.ops.layernorm import layernorm_forward


# %% [markdown]
# ## 1. The referee: finite differences
#
# For a scalar function $f$ of an array $x$, the partial derivative along entry $i$ is the limit of
# a difference quotient. Taylor's theorem says how far a finite step $h$ is from that limit:
#
# $$f(x \pm h e_i) = f(x) \pm h\,\partial_i f + \tfrac{h^2}{2}\,\partial_i^2 f \pm \tfrac{h^3}{6}\,\partial_i^3 f + \dots$$
#
# The one-sided quotient $\frac{f(x+h e_i) - f(x)}{h}$ is off by about $\frac h2 \partial_i^2 f$: an error
# $O(h)$. **Your task:** combine the two evaluations $f(x + h e_i)$ and $f(x - h e_i)$ into an
# estimate of $\partial_i f$ whose error is $O(h^2)$ — the expansion above shows which combination
# cancels the $\frac{h^2}{2}\partial_i^2 f$ term, the one behind the one-sided error — and apply it to
# every entry of `x`.
#
# The function `f` takes no argument: it reads the array `x` itself. So perturb `x` **in place**, one
# entry at a time, and leave `x` exactly as you found it. The check also hands you a transposed
# (non-contiguous) view, so make sure your writes land in `x` itself. (`np.ndindex(x.shape)` iterates
# over every multi-index of an array of that shape.) "Exactly" means bit for bit: in floating point
# `x + h - 2h + h` need not be `x` again.

# %% tags=["exercise"]
# EXERCISE: the centered-difference gradient of a scalar function f() with respect to the array x
def my_numerical_gradient(f, x, h=1e-5):
    '''f() takes no argument and reads x (float64). Returns an array shaped like x.'''
    grad = np.zeros(x.shape)
    ### BEGIN SOLUTION
    for i in np.ndindex(x.shape):      # every entry, by index into x itself
        saved = x[i]
        x[i] = saved + h
        f_plus = f()
        x[i] = saved - h
        f_minus = f()
        x[i] = saved                   # restore: the next entry must see the original x
        grad[i] = (f_plus - f_minus) / (2 * h)
    ### END SOLUTION
    return grad


# %% [markdown]
# **The check** compares your estimate with a function whose derivative we know exactly,
# $f(x) = \sum_i e^{x_i} + e^{\sum_i a_i x_i}$ (every entry affects every other entry's derivative
# through the second term), with $\partial_i f = e^{x_i} + a_i\, e^{\sum_j a_j x_j}$.
#
# Two gradients are compared by the **relative error**, entry by entry, and then the worst entry:
#
# $$\text{rel\_error}(a, n) = \max_i \frac{|a_i - n_i|}{\max(10^{-8},\ |a_i| + |n_i|)} .$$
#
# Relative, because a gradient of size $10^3$ off by $10^{-6}$ is perfect while one of size $10^{-6}$ off
# by $10^{-6}$ is wrong. Rules of thumb in float64 at tiny sizes: **$\le 10^{-7}$ is a correct smooth
# layer**, $10^{-7}$–$10^{-2}$ is suspicious, **$> 10^{-2}$ is a bug**. `teach.check_gradient` computes it
# and, when it fails, shows the worst entries and what the pattern suggests. (Against an exact derivative
# the check can be stricter: $10^{-8}$. Here the column it labels `numerical` holds the exact derivative.)

# %% tags=["check"]
check_rng = np.random.default_rng(101)
a = check_rng.uniform(0.1, 0.5, size=(3, 4))
cases = {"x (3, 4), contiguous": 0.5 * check_rng.standard_normal((3, 4)),
         "x (3, 4), a transposed view of a (4, 3) array": 0.5 * check_rng.standard_normal((4, 3)).T}
for label, x in cases.items():
    f = lambda: float(np.exp(x).sum() + np.exp((a * x).sum()))
    exact = np.exp(x) + a * np.exp((a * x).sum())
    x_before = x.copy()
    mine = my_numerical_gradient(f, x)
    teach.check(np.array_equal(x, x_before),
                f"{label}: largest change your function left in x (put every entry back: "
                "save x[i] and assign it back, since adding h and subtracting it again need not restore it)",
                float(np.abs(x - x_before).max()), 0.0)
    teach.check_gradient(f"{label}: yours vs the exact derivative", mine, exact, threshold=1e-8)


# %% [markdown]
# ### Solution notes (read after trying)
#
# Subtract the two expansions: the even terms ($f(x)$ and $\frac{h^2}{2}\partial_i^2 f$) cancel, and
#
# $$\partial_i f = \frac{f(x + h e_i) - f(x - h e_i)}{2h} - \tfrac{h^2}{6}\,\partial_i^3 f + \dots$$
#
# so the **centered difference** has error $O(h^2)$. It costs two evaluations of $f$ *per entry of $x$*:
# far too slow to train with, cheap enough to check a small layer. The traps:
#
# * put each entry back (`x[i] = saved`) before moving on, or every later entry is measured at a shifted point;
# * index `x` itself (`np.ndindex(x.shape)` gives every multi-index). `x.reshape(-1)` or `x.ravel()` of a
#   transposed array is a *copy*: perturbing it leaves `x`, and therefore `f`, unchanged, and the gradient
#   comes out as zeros;
# * dividing by $h$ instead of $2h$ doubles everything (the check's hint says "a constant 2 x").
#
# From here on the checks use `teach.finite_differences`, the same centered difference kept in the
# library, so that they do not depend on your answer to this exercise.

# %% [markdown]
# ## 2. A linear layer
#
# `bertnp` stores weights in PyTorch's layout, `weight` of shape (out, in):
#
# $$y_{no} = \sum_i x_{ni} W_{oi} + b_o \qquad (y = x W^\top + b),$$
#
# where $n$ runs over every leading axis of `x` (batch, position) flattened together, so `x` may be
# (in,), (N, in) or (B, T, in). **Your task:** given `dout` $= \partial L / \partial y$ (shaped like $y$)
# return $\partial L/\partial x$, $\partial L/\partial W$ and $\partial L/\partial b$ — vectorised, no
# Python loop over rows. The forward's cache holds `x`, `weight` and `has_bias`; without a bias,
# return `None` for `dbias`. The check passes a (B, T, in) = (2, 3, 4) input: flatten the leading axes
# first (`x.reshape(-1, x.shape[-1])` is (N, in)) and the sums over $n$ become plain matrix products.
#
# *Method:* write the scalar chain rule for one entry, e.g. $\frac{\partial L}{\partial W_{oi}} = \sum_{n}
# \frac{\partial L}{\partial y_{no}} \frac{\partial y_{no}}{\partial W_{oi}}$ (which outputs does $W_{oi}$
# touch, and with what coefficient?), then read the sum as a matrix product. A gradient has the shape of
# the thing it is the gradient of: that leaves only one way to multiply `dout` and `x` into an (out, in) array.

# %% tags=["exercise"]
# EXERCISE: linear_backward -- dx, dweight, dbias of out = x @ weight.T + bias
def my_linear_backward(dout, cache):
    '''dout: (..., out). cache: LinearCache(x (..., in), weight (out, in), has_bias).
    Returns (dx (..., in), dweight (out, in), dbias (out,) or None).'''
    x, weight, has_bias = cache
    ### BEGIN SOLUTION
    x2d = x.reshape(-1, x.shape[-1])                # (..., in)  -> (N, in)
    dout2d = dout.reshape(-1, dout.shape[-1])       # (..., out) -> (N, out)
    dx = dout @ weight                              # (..., out) @ (out, in) -> (..., in)
    dweight = dout2d.T @ x2d                        # (out, N) @ (N, in) -> (out, in)
    dbias = dout2d.sum(axis=0) if has_bias else None   # (N, out) -> (out,)
    ### END SOLUTION
    return dx, dweight, dbias


# %% [markdown]
# **How a layer is checked.** A layer's output is a tensor, but finite differences need a scalar. Take
# $L = \sum \text{out} \odot \text{dout}$ for a fixed `dout`: its gradient with respect to `out` is exactly
# `dout`, so the gradients your backward computes from `dout` must equal the finite differences of $L$.
# `dout` is drawn at random (section 4 shows why never all ones), and the sizes are small and *distinct*
# (2, 3, 4, 5): with equal sizes a transposed matrix has the right shape and the wrong values.
# The helper below is the whole referee.

# %%
def numerical_grads(forward, inputs, dout, wrt, **settings):
    '''Finite differences of L = sum(forward(**inputs, **settings)[0] * dout) for each input named in wrt.'''
    def loss():
        out, _ = forward(**inputs, **settings)
        return float((out * dout).sum())
    return {name: teach.finite_differences(loss, inputs[name]) for name in wrt}


# %% tags=["check"]
check_rng = np.random.default_rng(102)
inputs = dict(x=check_rng.standard_normal((2, 3, 4)),      # (B, T, in): the leading axes are flattened
              weight=check_rng.standard_normal((5, 4)),    # (out, in)
              bias=check_rng.standard_normal(5))
out, cache = linear_forward(**inputs)
dout = check_rng.standard_normal(out.shape)                # random upstream gradient, shaped like out
dx, dweight, dbias = my_linear_backward(dout, cache)
numeric = numerical_grads(linear_forward, inputs, dout, wrt=("x", "weight", "bias"))
teach.check_gradients({"x": dx, "weight": dweight, "bias": dbias}, numeric)

_, cache_no_bias = linear_forward(inputs["x"], inputs["weight"])     # a layer without bias
dbias_none = my_linear_backward(dout, cache_no_bias)[2]
teach.check(dbias_none is None, "dbias of a layer without bias",
            "None" if dbias_none is None else f"an array of shape {np.shape(dbias_none)}", "None")


# %% [markdown]
# ### Solution notes
#
# Follow each path from an input to $L$, with $\delta_{no} = \partial L / \partial y_{no}$:
#
# * $x_{ni}$ feeds every output $y_{no}$ of its row with coefficient $W_{oi}$: $\ \frac{\partial L}{\partial x_{ni}} = \sum_o \delta_{no} W_{oi}$, i.e. `dx = dout @ W` (any leading axes).
# * $W_{oi}$ is used in every row $n$, multiplied by $x_{ni}$: $\ \frac{\partial L}{\partial W_{oi}} = \sum_n \delta_{no} x_{ni}$, i.e. `dW = dout2d.T @ x2d` with the rows flattened to (N, out) and (N, in).
# * $b_o$ is added to every row: $\ \frac{\partial L}{\partial b_o} = \sum_n \delta_{no}$, the sum of `dout` over **all** leading axes.
#
# The usual mistakes: `x2d.T @ dout2d` (that is $dW^\top$, shape (in, out)); summing the bias gradient over
# the batch axis only (shape (T, out)); dividing by the number of rows (a mean, not a sum: the loss, not
# the layer, decides whether anything is averaged).

# %% [markdown]
# ## 3. LayerNorm
#
# BERT normalises every hidden vector (a row of $C$ numbers) to zero mean and unit variance,
# then rescales it with learned $\gamma, \beta$:
#
# $$\mu = \frac1C \sum_j x_j, \qquad \sigma^2 = \frac1C \sum_j (x_j - \mu)^2, \qquad r = \frac{1}{\sqrt{\sigma^2 + \epsilon}},$$
# $$\hat x_j = (x_j - \mu)\, r, \qquad y_j = \gamma_j \hat x_j + \beta_j .$$
#
# (Population variance, $\epsilon$ inside the square root, $\epsilon = 10^{-12}$ in BERT.) Every row is
# normalised on its own; $\gamma$ and $\beta$, of shape (C,), are shared by all rows.
# The forward caches `LayerNormCache(xhat, rstd, gamma)`: $\hat x$ (shaped like `x`), $r$ (shape (..., 1))
# and $\gamma$.
#
# **Your task:** from `dout` $= \partial L/\partial y$ compute `dx`, `dgamma`, `dbeta`, vectorised over
# all rows (no loop over rows, and no $C \times C$ matrix per row).
#
# *Method:* `dgamma` and `dbeta` are like the linear layer's weight and bias, but elementwise. For `dx`,
# note that $x_i$ reaches the loss along **three paths**: directly through $\hat x_i$, through $\mu$, and
# through $\sigma^2$ (i.e. $r$) — and $\mu$ and $r$ touch every $\hat x_j$ of the row. Work out
# $\partial \mu/\partial x_i$ and $\partial \sigma^2/\partial x_i$, then $\partial \hat x_j/\partial x_i$, then sum over $j$
# with $g_j = \partial L/\partial \hat x_j$. The result can be written with two row means.
# Two facts to test your formula against (the check tests them too): adding a constant to a row does not
# change $y$, and neither does scaling the row (up to $\epsilon$).

# %% tags=["exercise"]
# EXERCISE: layernorm_backward -- dx, dgamma, dbeta from dout and LayerNormCache(xhat, rstd, gamma)
def my_layernorm_backward(dout, cache):
    '''dout: (..., C) -> dx (..., C), dgamma (C,), dbeta (C,).'''
    xhat, rstd, gamma = cache
    ### BEGIN SOLUTION
    C = xhat.shape[-1]
    dbeta = dout.reshape(-1, C).sum(axis=0)                        # (..., C) -> (N, C) -> (C,)
    dgamma = (dout * xhat).reshape(-1, C).sum(axis=0)              # (C,)
    g = dout * gamma                                               # dL/dxhat, (..., C)
    g_mean = g.mean(axis=-1, keepdims=True)                        # (..., 1): the path through mu
    gx_mean = (g * xhat).mean(axis=-1, keepdims=True)              # (..., 1): the path through r
    dx = rstd * (g - g_mean - xhat * gx_mean)
    ### END SOLUTION
    return dx, dgamma, dbeta


# %% [markdown]
# The check first tests the two invariances (they say *which* path is missing when one is), then
# compares all three gradients with finite differences, on a (B, T, C) input and on a 2-D one. If both
# invariances pass and `dx` is still off everywhere, divide yours by the numerical one: a ratio that is
# constant within each row but changes from row to row means a missing (or extra) per-row factor.

# %% tags=["check"]
check_rng = np.random.default_rng(103)
for shape in [(2, 3, 5), (4, 6)]:
    C = shape[-1]
    inputs = dict(x=check_rng.standard_normal(shape), gamma=check_rng.standard_normal(C),
                  beta=check_rng.standard_normal(C))
    out, cache = layernorm_forward(**inputs)
    dout = check_rng.standard_normal(out.shape)
    dx, dgamma, dbeta = my_layernorm_backward(dout, cache)
    # y does not change when a constant is added to a row: no gradient along (1, ..., 1)
    teach.check(np.abs(dx.sum(axis=-1)).max() < 1e-10,
                f"x {shape}: largest |sum of a row of dx| (shifting a row changes nothing, so each row of dx sums to 0)",
                float(np.abs(dx.sum(axis=-1)).max()), "< 1e-10")
    # ... nor when the row is scaled: no gradient along xhat
    teach.check(np.abs((dx * cache.xhat).sum(axis=-1)).max() < 1e-10,
                f"x {shape}: largest |dx . xhat| of a row (scaling a row changes nothing, so dx is orthogonal to xhat)",
                float(np.abs((dx * cache.xhat).sum(axis=-1)).max()), "< 1e-10")
    numeric = numerical_grads(layernorm_forward, inputs, dout, wrt=("x", "gamma", "beta"))
    teach.check_gradients({"x": dx, "gamma": dgamma, "beta": dbeta}, numeric)


# %% [markdown]
# ### Solution notes
#
# Take one row, $\delta_j = \partial L/\partial y_j$.
#
# **The affine part.** $y_j = \gamma_j \hat x_j + \beta_j$ gives, summed over all rows,
# $\ \frac{\partial L}{\partial \beta_j} = \sum_{\text{rows}} \delta_j,\ \ \frac{\partial L}{\partial \gamma_j} = \sum_{\text{rows}} \delta_j \hat x_j$,
# and $g_j := \frac{\partial L}{\partial \hat x_j} = \gamma_j \delta_j$.
#
# **How one $x_i$ moves every $\hat x_j$.** $\frac{\partial \mu}{\partial x_i} = \frac1C$ and
# $\frac{\partial \sigma^2}{\partial x_i} = \frac2C (x_i - \mu)$ (the path through $\mu$ contributes
# $-\frac2C\sum_j (x_j - \mu) = 0$), so $\frac{\partial r}{\partial x_i} = -\frac{r^3}{C}(x_i - \mu)$ and
#
# $$\frac{\partial \hat x_j}{\partial x_i} = r\Big(\delta_{ij} - \frac1C\Big) + (x_j - \mu)\frac{\partial r}{\partial x_i} = r\Big(\delta_{ij} - \frac1C - \frac1C\,\hat x_j \hat x_i\Big).$$
#
# **Sum over $j$.**
#
# $$\frac{\partial L}{\partial x_i} = \sum_j g_j \frac{\partial \hat x_j}{\partial x_i} = r\Big(g_i - \overline{g} - \hat x_i\, \overline{g \hat x}\Big), \qquad \overline{g} = \frac1C\sum_j g_j,\ \ \overline{g\hat x} = \frac1C\sum_j g_j \hat x_j .$$
#
# Read it geometrically: $-\overline g$ removes the component of $g$ along $(1, \dots, 1)$ (the shift
# invariance) and $-\hat x\,\overline{g\hat x}$ the component along $\hat x$ (the scale invariance; $\hat x$
# has mean 0 and $\sum_j \hat x_j^2 = C$ up to $\epsilon$). Forget the path through $\mu$ and the rows of `dx`
# stop summing to zero; forget the path through $r$ and `dx` is no longer orthogonal to $\hat x$.
# `bertnp/ops/layernorm.py` computes exactly this, in place.

# %% [markdown]
# ## 4. Why the upstream gradient must be random
#
# It is tempting to check a layer with `dout = np.ones_like(out)`, i.e. $L = \sum y$. Take a common wrong
# backward — treat $r$ as a constant (forget the path through the variance) — and check it both ways,
# at BERT's initialisation $\gamma = 1$, $\beta = 0$, with the same check as above (threshold $10^{-7}$,
# and the noise floor of section 5, $10^{-9}$).

# %%
def forgot_the_variance(dout, cache):        # WRONG on purpose: r treated as a constant
    xhat, rstd, gamma = cache
    g = dout * gamma
    return rstd * (g - g.mean(axis=-1, keepdims=True)), None, None

bert_init = dict(x=rng.standard_normal((3, 5)), gamma=np.ones(5), beta=np.zeros(5))   # how BERT initialises LayerNorm

def verdict(backward, dout):
    '''Run the gradient check of dx quietly; return ("passes" or "FAILS", the numerical gradient).'''
    _, cache = layernorm_forward(**bert_init)
    numeric = numerical_grads(layernorm_forward, bert_init, dout, wrt=("x",))["x"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            teach.check_gradient("dx", backward(dout, cache)[0], numeric, threshold=1e-7, floor=1e-9)
        return "passes", numeric
    except teach.CheckFailed:
        return "FAILS", numeric

ones_dout, random_dout = np.ones((3, 5)), rng.standard_normal((3, 5))
wrong_with_ones, numeric_ones = verdict(forgot_the_variance, ones_dout)
wrong_with_random, numeric_random = verdict(forgot_the_variance, random_dout)
print(f"all-ones dout: the wrong backward {wrong_with_ones:<6}  (largest |numerical gradient| {np.abs(numeric_ones).max():.1e})")
print(f"random dout:   the wrong backward {wrong_with_random:<6}  (largest |numerical gradient| {np.abs(numeric_random).max():.1e})")
teach.check(wrong_with_ones == "passes", "with an all-ones dout the wrong backward", wrong_with_ones, "passes (the trap)")
teach.check(wrong_with_random == "FAILS", "with a random dout the wrong backward", wrong_with_random, "FAILS")

# %% [markdown]
# With all ones the check **cannot see the bug**. The reason: with $\gamma = 1, \beta = 0$,
# $L = \sum_j \hat x_j = 0$ for every input — a normalised row sums to zero — so the true gradient is
# exactly zero, and the numerical gradient is nothing but rounding noise ($\sim 10^{-11}$). The wrong
# backward returns zeros here too (its `g` is constant along the row), and zeros "agree" with noise.
# A correct backward would pass as well: the all-ones check says nothing either way.
# Softmax has the same trap (lesson 2): its probabilities sum to 1, so $L = \sum p$ is a constant.
#
# A random `dout` probes every direction at once, so every term of the backward matters. That is why
# every check in these lessons draws `dout` from a standard normal.

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
steps = np.logspace(-13, -1, 49)

def rel(approx):
    return abs(float(approx) - exact) / abs(exact)

one_sided = [rel((fun(x0 + h) - fun(x0)) / h) for h in steps]
centered = [rel((fun(x0 + h) - fun(x0 - h)) / (2 * h)) for h in steps]
x32 = np.float32(x0)
centered32 = [rel((fun(x32 + np.float32(h)) - fun(x32 - np.float32(h))) / (2 * np.float32(h)))
              if np.float32(h) > 0 else np.nan for h in steps]

fig, ax = plt.subplots(figsize=(9, 4))
ax.loglog(steps, one_sided, "o-", ms=3, label="one-sided, float64: $O(h)$")
ax.loglog(steps, centered, "o-", ms=3, label="centered, float64: $O(h^2)$")
ax.loglog(steps, centered32, "o-", ms=3, label="centered, float32")
ax.axvline(1e-5, color="gray", ls=":", label="h = 1e-5")
ax.set_xlabel("step h"); ax.set_ylabel("relative error of the derivative")
ax.set_title("rounding noise (left) against truncation error (right)")
ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5)); ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

at = lambda curve: curve[int(np.argmin(abs(np.log10(steps) + 5)))]     # the value at h = 1e-5
best = steps[int(np.nanargmin(centered))]
print(f"at h = 1e-5: one-sided {at(one_sided):.1e}, centered {at(centered):.1e}, centered float32 {at(centered32):.1e}")
print(f"best centered step in float64: h = {best:.0e}, error {min(centered):.1e}")
teach.check(at(centered) < 1e-9, "centered float64 error at h = 1e-5", at(centered), "< 1e-9")
teach.check(at(one_sided) > 100 * at(centered), "one-sided error at h = 1e-5, vs 100 x centered",
            at(one_sided), f"> {100 * at(centered):.1e}")
teach.check(1e-7 <= best <= 1e-3, "best centered step", best, "between 1e-7 and 1e-3 (near eps^(1/3))")
teach.check(at(centered32) > 1e-4, "centered float32 error at h = 1e-5", at(centered32), "> 1e-4: hopeless")

# %% [markdown]
# ### Entries whose true gradient is zero
#
# The rounding noise is *absolute*: about $\varepsilon |f| / h$ whatever the gradient's size. For an entry
# whose true gradient is exactly 0, a correct backward returns ~0, the numerical side returns noise, and
# the *relative* error is $|n| / 10^{-8}$ — up to $10^{-3}$ for a correct backward (you met such entries in
# section 4). BERT has one: the attention key bias, whose gradient is exactly zero (lesson 2 shows why).
#
# The cure is a **noise floor**: `teach.check_gradient(..., floor=1e-9)` holds the entries where *both*
# gradients are below `floor` to an **absolute** tolerance — they must agree within `floor` — instead of a
# relative one. Two rules:
#
# * choose the floor just above the noise: measure it (below, $|n| \sim 10^{-11}$) or estimate it as
#   $\varepsilon |f|/h$, and take 10–100 times that;
# * never raise it to make a failure go away. A floor is a tolerance: set it at $10^{-5}$ and a gradient
#   of $4\cdot 10^{-6}$ with the **wrong sign** passes.

# %%
noise = numeric_ones                                   # section 4: the true gradient is exactly 0
print(f"numerical gradient where the truth is 0: largest |n| = {np.abs(noise).max():.1e}")
zeros = np.zeros_like(noise)

def passes(analytic, numeric, floor):
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            teach.check_gradient("g", analytic, numeric, threshold=1e-7, floor=floor)
        return True
    except teach.CheckFailed:
        return False

small = np.array([4e-6, 1.0])                          # a small true gradient, and a large one
sign_error = np.array([-4e-6, 1.0])                    # the small one with the wrong sign
table = {"zeros vs noise, no floor": passes(zeros, noise, 0.0),
         "zeros vs noise, floor 1e-9": passes(zeros, noise, 1e-9),
         "sign error of 4e-6, floor 1e-9": passes(sign_error, small, 1e-9),
         "sign error of 4e-6, floor 1e-5 (too big)": passes(sign_error, small, 1e-5)}
for case, ok in table.items():
    print(f"  {case:<42} {'passes' if ok else 'FAILS'}")
teach.check(np.abs(noise).max() < 1e-9, "largest numerical gradient where the truth is 0", float(np.abs(noise).max()), "< 1e-9")
teach.check(list(table.values()) == [False, True, False, True], "the four verdicts",
            list(table.values()), [False, True, False, True])

# %% [markdown]
# ## Summary
#
# * A backward is one local chain rule: `grads = x_backward(dout, cache)`; every gradient has the shape of its input.
# * Check it with centered differences in **float64**, $h = 10^{-5}$, a **random** `dout`, tiny **distinct** sizes.
# * Relative error $\le 10^{-7}$: correct. $> 10^{-2}$: a bug. Entries with a true gradient of zero sit on the
#   noise floor: hold them to an absolute floor of $\sim 10^{-9}$, measured, and never use the floor to hide an error.
# * LayerNorm's `dx` has no component along the all-ones direction or along $\hat x$; softmax's is similar.
#   That is exactly why an all-ones `dout` cannot see their mistakes.
#
# Next: lesson 2 puts softmax inside attention.
