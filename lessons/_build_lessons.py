"""Generate the lesson notebooks in this folder from the cell sources below.

    python lessons/_build_lessons.py            # rewrite every lesson
    python lessons/_build_lessons.py 02 04      # only the lessons whose file name starts so

The notebooks are written with nbformat, without outputs and with stable cell ids, so a rebuild
of unchanged sources gives byte-identical files (a reviewable diff). Edit the sources here, not
the .ipynb files, then rebuild and run ``pytest --nbmake lessons``.

Conventions (see README.md):
  * a cell that starts with ``# EXERCISE: <what to implement>`` holds one piece a student writes;
    the solution sits between a ``### BEGIN SOLUTION`` line and a ``### END SOLUTION`` line, which
    a later tool blanks to make the assignment (nbgrader's markers). Such cells carry the tag
    ``exercise``; the cell right after it checks the answer (tag ``check``).
  * every lesson *asserts* what it teaches, so a broken library fails ``make test``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(source: str):
    return new_markdown_cell(dedent(source).strip("\n"))


def code(source: str, tags=()):
    cell = new_code_cell(dedent(source).strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def setup(imports: str):
    """The first code cell: the common SETUP, then the lesson's own imports."""
    return code(SETUP.strip("\n") + "\n" + dedent(imports).strip("\n"))


def exercise(source: str):
    """A student's piece: must start with '# EXERCISE:' and hold one solution block."""
    text = dedent(source).strip("\n")
    assert text.startswith("# EXERCISE: "), text[:40]
    assert text.count("### BEGIN SOLUTION") == 1 and text.count("### END SOLUTION") == 1, text[:40]
    return code(text, tags=("exercise",))


def check(source: str):
    """The cell that checks the exercise right before it."""
    return code(source, tags=("check",))


SETUP = r"""
%matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
"""


# =====================================================================================
# 01: backprop by hand
# =====================================================================================

def lesson_01():
    return [
        md(r"""
        # Lesson 1 — Backprop by hand, and how to know you got it right

        Every operation in `bertnp` is a pair of pure functions (CS231n's convention):

        ```python
        out, cache = x_forward(inputs..., settings...)   # cache: what the backward needs
        grads      = x_backward(dout, cache)             # dout = dL/dout, grads = dL/dinputs
        ```

        `x_backward` never sees the loss. It receives the *upstream gradient* $\frac{\partial L}{\partial \text{out}}$
        (same shape as `out`) and applies the chain rule once, locally. A whole BERT is a few dozen
        of these pairs composed (`bertnp/model.py`), so if each pair is right, the model is right.

        "Right" is decided by a referee that knows no calculus: **finite differences**. In this lesson you

        1. write the referee (a centered-difference gradient) and learn how to compare two gradients;
        2. derive and implement the backward of a linear layer, then of LayerNorm;
        3. see why the check must use a *random* upstream gradient (an all-ones `dout` lets a wrong
           LayerNorm backward pass);
        4. see where finite differences stop being trustworthy: the noise floor.
        """),
        setup(r"""
        from bertnp.gradcheck import check_layer, numerical_gradient, rel_error
        from bertnp.ops.linear import linear_forward, linear_backward
        from bertnp.ops.layernorm import layernorm_forward, layernorm_backward
        """),
        md(r"""
        ## 1. The referee: centered differences

        For a scalar $f$ and a tiny step $h$, Taylor's theorem gives

        $$f(x \pm h e_i) = f(x) \pm h\,\partial_i f + \tfrac{h^2}{2}\,\partial_i^2 f \pm \tfrac{h^3}{6}\,\partial_i^3 f + \dots$$

        Subtract the two and the even terms cancel:

        $$\partial_i f \approx \frac{f(x + h e_i) - f(x - h e_i)}{2h}, \qquad \text{error } O(h^2).$$

        (The one-sided $\frac{f(x+h e_i) - f(x)}{h}$ keeps the $h^2$ term: error $O(h)$.) It costs two
        evaluations of $f$ *per entry of $x$*, far too slow to train with, cheap enough to check a
        small layer. Write it: perturb `x` **in place** one entry at a time (so `f`, which reads `x`,
        sees the change) and put the entry back afterwards.
        """),
        exercise(r"""
        # EXERCISE: the centered-difference gradient of a scalar function f() with respect to array x
        def my_numerical_gradient(f, x, h=1e-5):
            '''f() takes no argument and reads x. Returns an array shaped like x.'''
            grad = np.zeros_like(x)
            ### BEGIN SOLUTION
            flat_x = x.reshape(-1)             # a view: writing flat_x[i] changes x
            flat_grad = grad.reshape(-1)
            for i in range(flat_x.size):
                saved = flat_x[i]
                flat_x[i] = saved + h
                f_plus = f()
                flat_x[i] = saved - h
                f_minus = f()
                flat_x[i] = saved              # restore: the next entry must see the original x
                flat_grad[i] = (f_plus - f_minus) / (2 * h)
            ### END SOLUTION
            return grad
        """),
        md(r"""
        To compare an analytic gradient $a$ with a numerical one $n$ we use the **relative error**,
        taken elementwise and then the worst entry:

        $$\text{rel\_error}(a, n) = \max_i \frac{|a_i - n_i|}{\max(10^{-8},\ |a_i| + |n_i|)}.$$

        Relative, because a gradient of size $10^3$ off by $10^{-6}$ is perfect while one of size
        $10^{-6}$ off by $10^{-6}$ is wrong. The $10^{-8}$ keeps two tiny numbers from dividing by zero.
        Rules of thumb in float64 at tiny sizes: **$\le 10^{-7}$ is a correct smooth layer**, $10^{-7}$–$10^{-2}$
        is suspicious, **$> 10^{-2}$ is a bug**. `bertnp.gradcheck.rel_error` implements exactly this.

        Check your referee on a function whose derivative we know:
        $f(x) = \sum_i x_i^2 \sin x_i$, so $\partial_i f = 2x_i \sin x_i + x_i^2 \cos x_i$.
        """),
        check(r"""
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
        """),
        md(r"""
        ## 2. A linear layer

        `bertnp` stores weights in PyTorch's layout, `weight` of shape (out, in):

        $$y_{no} = \sum_i x_{ni} W_{oi} + b_o \qquad (y = x W^\top + b),$$

        where $n$ runs over every leading axis (batch, position) flattened together.
        The backward gets $\delta_{no} = \partial L / \partial y_{no}$ and follows each path from an input to $L$:

        * $x_{ni}$ feeds every output $y_{no}$ of its row with weight $W_{oi}$: $\ \frac{\partial L}{\partial x_{ni}} = \sum_o \delta_{no} W_{oi}$, i.e. `dx = dout @ W`.
        * $W_{oi}$ is used in every row $n$, multiplied by $x_{ni}$: $\ \frac{\partial L}{\partial W_{oi}} = \sum_n \delta_{no} x_{ni}$, i.e. `dW = dout.T @ x` with the rows flattened.
        * $b_o$ is added to every row: $\ \frac{\partial L}{\partial b_o} = \sum_n \delta_{no}$.

        A useful sanity check: **a gradient has the shape of the thing it is the gradient of.**
        `dW` must be (out, in), so `dout.T @ x` is the only product of the two that fits.
        """),
        exercise(r"""
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
        """),
        md(r"""
        `check_layer` runs the forward, draws a random `dout`, calls your backward, and compares each
        gradient with `numerical_gradient` of the scalar $L = \sum \text{out} \odot \text{dout}$ (whose
        gradient with respect to `out` is exactly `dout`). Use small, *distinct* sizes (2, 3, 4, 5):
        with equal sizes a transposed matrix has the right shape and the wrong values.
        """),
        check(r"""
        inputs = dict(x=rng.standard_normal((2, 3, 4)),       # (B, T, in): the leading axes are flattened
                      weight=rng.standard_normal((5, 4)),     # (out, in)
                      bias=rng.standard_normal(5))
        errors = check_layer(linear_forward, my_linear_backward, inputs, wrt=("x", "weight", "bias"))
        print({k: f"{v:.1e}" for k, v in errors.items()})
        assert max(errors.values()) < 1e-7, errors
        """),
        md(r"""
        ## 3. LayerNorm, step by step

        BERT normalises every hidden vector (a row of $C$ numbers) to zero mean and unit variance,
        then rescales it with learned $\gamma, \beta$:

        $$\mu = \frac1C \sum_j x_j, \qquad \sigma^2 = \frac1C \sum_j (x_j - \mu)^2, \qquad r = \frac{1}{\sqrt{\sigma^2 + \epsilon}},$$
        $$\hat x_j = (x_j - \mu)\, r, \qquad y_j = \gamma_j \hat x_j + \beta_j .$$

        (Population variance, $\epsilon$ inside the square root, $\epsilon = 10^{-12}$ in BERT.)
        Each row is independent, so derive the backward for one row with $\delta_j = \partial L/\partial y_j$.

        **Step 1, the affine part.** $y_j = \gamma_j \hat x_j + \beta_j$ gives, summed over all rows,
        $\ \frac{\partial L}{\partial \beta_j} = \sum_{\text{rows}} \delta_j,\ \ \frac{\partial L}{\partial \gamma_j} = \sum_{\text{rows}} \delta_j \hat x_j$,
        and $g_j := \frac{\partial L}{\partial \hat x_j} = \gamma_j \delta_j$.

        **Step 2, how one $x_i$ moves every $\hat x_j$.** $x_i$ reaches $\hat x_j$ three ways: directly (only when $j = i$),
        through $\mu$, and through $r$. With $\frac{\partial \mu}{\partial x_i} = \frac1C$ and
        $\frac{\partial \sigma^2}{\partial x_i} = \frac2C (x_i - \mu)$ (the $\mu$-term sums to zero), so
        $\frac{\partial r}{\partial x_i} = -\frac{r^3}{C}(x_i - \mu)$:

        $$\frac{\partial \hat x_j}{\partial x_i} = r\Big(\delta_{ij} - \frac1C\Big) + (x_j - \mu)\frac{\partial r}{\partial x_i} = r\Big(\delta_{ij} - \frac1C - \frac1C\,\hat x_j \hat x_i\Big).$$

        **Step 3, sum over $j$.**

        $$\frac{\partial L}{\partial x_i} = \sum_j g_j \frac{\partial \hat x_j}{\partial x_i} = r\Big(g_i - \overline{g} - \hat x_i\, \overline{g \hat x}\Big), \qquad \overline{g} = \frac1C\sum_j g_j,\ \ \overline{g\hat x} = \frac1C\sum_j g_j \hat x_j .$$

        Read it geometrically: LayerNorm's output does not change if you add a constant to the row
        (so the gradient has no component along $(1, \dots, 1)$: the $-\overline{g}$ term removes it) or
        scale the row (no component along $\hat x$: the $-\hat x\, \overline{g\hat x}$ term removes it).
        Hence **every row of `dx` sums to zero** — remember that in section 4.

        The forward caches `LayerNormCache(xhat, rstd, gamma)`: $\hat x$, $r$ (shape (..., 1)) and $\gamma$.
        """),
        exercise(r"""
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
        """),
        check(r"""
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
        """),
        md(r"""
        ## 4. Why the upstream gradient must be random

        It is tempting to check a layer with `dout = np.ones_like(out)`, i.e. $L = \sum y$. Take a common
        mistake: treat $r$ as a constant (forget the path through the variance), which gives
        `dx = rstd * (g - g.mean())`. Check it both ways, at BERT's initialisation $\gamma = 1$, $\beta = 0$.
        The helper below is what `check_layer` does inside, but with a `dout` we choose.
        """),
        code(r"""
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
        """),
        md(r"""
        With all-ones the check **cannot tell the two apart**: both get the same error. The reason:
        with $\gamma = 1, \beta = 0$, $L = \sum_j \hat x_j = 0$ for every input — a normalised row sums to zero — so the
        true gradient is exactly zero, and the numerical gradient is nothing but rounding noise
        ($\sim 10^{-11}$). Any backward that returns (almost) zeros "agrees" with noise as well as any
        other: the error printed is noise divided by $10^{-8}$, for the right and the wrong answer alike.
        Softmax has the same trap: its probabilities sum to 1, so $L = \sum p$ is a constant.

        A random `dout` probes every direction: the correct backward lands near $10^{-10}$, the wrong one
        near 1. That is why `check_layer` always draws `dout` from a standard normal.
        """),
        code(r"""
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
        """),
        md(r"""
        ## 5. The noise floor

        Finite differences have two errors pulling in opposite directions:

        * **truncation**: the Taylor terms we dropped, $\sim h^2$ for centered differences ($\sim h$ one-sided);
        * **rounding**: $f(x \pm h)$ are each computed with a relative error of about machine epsilon
          $\varepsilon$ ($2.2\times 10^{-16}$ in float64), and dividing their difference by $2h$ magnifies it to
          $\sim \varepsilon |f| / h$.

        The total is smallest where the two meet: $h \approx \varepsilon^{1/3} \approx 10^{-5}$ for centered
        differences in float64, with an error near $\varepsilon^{2/3} \approx 10^{-11}$ (often better in practice).
        In float32 ($\varepsilon \approx 1.2\times 10^{-7}$) the rounding term at $h = 10^{-5}$ is about $10^{-2}$,
        and no step does reliably better than $\sim 10^{-5}$ — useless for telling a subtle bug from a correct layer.
        **Gradient checks run in float64.** See it on $f(x) = \sin(x)\, e^x$ at $x = 0.7$ (at the far left,
        float32 cannot even represent $x \pm h$ as different from $x$: the estimate is 0, the error 100%):
        """),
        code(r"""
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
        """),
        md(r"""
        ### Entries whose true gradient is zero

        The rounding noise is *absolute*: about $10^{-11}$ whatever the gradient's size. For an entry
        whose true gradient is exactly 0, the analytic side returns ~0, the numerical side returns noise,
        and the *relative* error is noise / $10^{-8}$, as large as $10^{-3}$ — for a correct backward (you saw it
        in section 4 with all-ones). BERT has such an entry: the attention key bias, whose gradient is
        exactly zero (lesson 2 shows why).

        `rel_error(a, n, floor=...)` treats entries where **both** $|a|$ and $|n|$ are below `floor` as
        matching. Use it only for that, with a floor near the noise ($10^{-9}$), never to make a real
        error go away: the floor cannot rescue an entry where one side is large.
        """),
        code(r"""
        _, noise_only = check_dx(layernorm_backward, ones)           # the true gradient is exactly zero
        print(f"numerical gradient where the truth is 0: max |n| = {np.abs(noise_only).max():.1e}")
        print("without a floor:", rel_error(np.zeros_like(noise_only), noise_only),
              "  with floor=1e-9:", rel_error(np.zeros_like(noise_only), noise_only, floor=1e-9))
        assert np.abs(noise_only).max() < 1e-9
        assert rel_error(np.zeros_like(noise_only), noise_only, floor=1e-9) == 0.0
        # the floor forgives only entries that are tiny on BOTH sides
        assert rel_error(np.array([1e-3]), np.array([2e-3]), floor=1e-9) > 0.3
        """),
        md(r"""
        ## Summary

        * A backward is one local chain rule: `grads = x_backward(dout, cache)`; every gradient has the shape of its input.
        * Check it with centered differences in **float64**, $h = 10^{-5}$, a **random** `dout`, tiny **distinct** sizes.
        * Relative error $\le 10^{-7}$: correct. $> 10^{-2}$: a bug. Entries with a true gradient of zero sit on the
          noise floor: give `rel_error` a `floor` of $\sim 10^{-9}$ for those, and only those.
        * LayerNorm's `dx` has no component along the all-ones direction or along $\hat x$; softmax's is similar.
          That is exactly why an all-ones `dout` cannot see their mistakes.

        Next: lesson 2 puts softmax inside attention.
        """),
    ]


# =====================================================================================
# 02: attention
# =====================================================================================

def lesson_02():
    return [
        md(r"""
        # Lesson 2 — Scaled dot-product attention, with a padding mask

        BERT's self-attention lets every position look at every other position of the same sequence.
        For one head with query, key and value projections of the hidden states $X$ (one row per position):

        $$Q = X W_q^\top + b_q,\quad K = X W_k^\top + b_k,\quad V = X W_v^\top + b_v,$$
        $$S = \frac{Q K^\top}{\sqrt{d_h}} + M, \qquad P = \operatorname{softmax}_{\text{row}}(S), \qquad O = P V .$$

        $M$ is the **padding mask**: 0 for real keys, a huge negative number for `[PAD]` keys, so no
        position ever attends to padding. With $n_h$ heads the hidden size $C$ is split into $n_h$ slices
        of $d_h = C / n_h$, each head attends on its own, and the results are concatenated.

        In this lesson: the shapes at every step, why the softmax needs care (logits of $\pm 10^4$, a row
        that is entirely padding), the softmax backward (yours to write), a gradient check of
        `attention_forward` / `attention_backward`, and a picture of the attention maps.
        """),
        setup(r"""
        from bertnp.gradcheck import check_layer, rel_error
        from bertnp.ops.attention import AttentionGrads, attention_backward, attention_forward
        from bertnp.ops.softmax import softmax_backward, softmax_forward
        """),
        md(r"""
        ## 1. Shapes, step by step

        A batch of $B = 2$ sequences of $T = 5$ positions, hidden size $C = 12$, $n_h = 3$ heads of $d_h = 4$
        (small and all different, so a wrong axis cannot go unnoticed). The second sequence has 3 real
        tokens and 2 `[PAD]`s. The tokenizer's `attention_mask` (1 = real, 0 = padding) becomes the additive
        mask exactly as `bertnp.model` builds it: $(1 - \text{mask}) \times$ the dtype's most negative number,
        shaped (B, 1, 1, T) so it broadcasts over heads and queries.
        """),
        code(r"""
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
        """),
        md(r"""
        The library does the same in `bertnp/ops/attention.py` (with the three projections fused into one
        matrix product, and the $1/\sqrt{d_h}$ applied to $Q$ instead of to the $T \times T$ scores). Same numbers:
        """),
        code(r"""
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
        """),
        md(r"""
        Because padding keys get probability exactly 0, **what sits at a padded position cannot change
        the output at the real positions**. (The padded positions still produce outputs of their own, as
        queries; the losses ignore them.)
        """),
        code(r"""
        x_changed = x.copy()
        x_changed[1, 3:] = 100 * rng.standard_normal((2, C))     # garbage at the two padded positions
        out_changed, _ = attention_forward(x_changed, **params, num_heads=nh, additive_mask=additive)
        print("change at real positions of sequence 1:", np.abs(out_changed[1, :3] - lib_out[1, :3]).max())
        assert np.array_equal(out_changed[1, :3], lib_out[1, :3])
        assert np.array_equal(out_changed[0], lib_out[0])
        """),
        md(r"""
        ### Why divide by $\sqrt{d_h}$?

        If the entries of $q$ and $k$ are independent with mean 0 and variance 1, then $q \cdot k = \sum_{i=1}^{d_h} q_i k_i$
        has variance $d_h$. At BERT-base's $d_h = 64$ the raw scores have a standard deviation of 8, the
        softmax saturates to nearly one-hot, and its gradient (next sections) nearly vanishes. Dividing by
        $\sqrt{d_h}$ brings the standard deviation back to 1 whatever the head size:
        """),
        code(r"""
        for d in (4, 16, 64, 256):
            qs, ks = rng.standard_normal((2, 20000, d))
            dots = (qs * ks).sum(axis=-1)
            print(f"d_h = {d:>3}: std of q.k = {dots.std():6.2f}   std of q.k / sqrt(d_h) = {dots.std() / np.sqrt(d):.3f}")
            assert abs(dots.std() / np.sqrt(d) - 1) < 0.05
        """),
        md(r"""
        ## 2. A softmax that never overflows

        $\operatorname{softmax}(s)_i = e^{s_i} / \sum_k e^{s_k}$. Written literally it breaks on large logits:
        `exp(1e4)` is `inf` in any float type, and `inf / inf` is `nan`. But adding a constant $c$ to every
        score changes nothing,

        $$\frac{e^{s_i - c}}{\sum_k e^{s_k - c}} = \frac{e^{-c} e^{s_i}}{e^{-c}\sum_k e^{s_k}} = \frac{e^{s_i}}{\sum_k e^{s_k}},$$

        so take $c = \max_k s_k$: every exponent is then $\le 0$ (no overflow) and one of them is exactly
        $e^0 = 1$ (the sum is $\ge 1$: no division by zero). Very negative scores underflow to 0, which is
        the right answer.
        """),
        code(r"""
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
        """),
        md(r"""
        ### A fully masked row

        What if *every* key of a row is padding — say a batch row that is all `[PAD]`? Then every score in
        the row is $s + \text{finfo.min}$. In floating point that sum **is** `finfo.min` (the ulp up there is
        about $10^{292}$), so all scores are equal and the softmax is uniform: finite, harmless, and ignored by
        the loss. Hugging Face uses the dtype's minimum for exactly this reason. With $-\infty$ as the
        mask the shift would be $-\infty - (-\infty) = $ `nan`; `softmax_forward` guards against that case too
        and returns a row of zeros.
        """),
        code(r"""
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
        """),
        md(r"""
        ## 3. The softmax backward

        Write $p = \operatorname{softmax}(s)$ for one row. Differentiating $p_i = e^{s_i}/Z$ with $Z = \sum_k e^{s_k}$:

        $$\frac{\partial p_i}{\partial s_j} = \frac{\delta_{ij} e^{s_i}}{Z} - \frac{e^{s_i} e^{s_j}}{Z^2} = p_i(\delta_{ij} - p_j).$$

        Given the upstream gradient $dp_i = \partial L/\partial p_i$, the chain rule sums over $i$:

        $$ds_j = \sum_i dp_i\, p_i(\delta_{ij} - p_j) = p_j\Big(dp_j - \sum_i dp_i\, p_i\Big).$$

        So there is no need to build the $K \times K$ Jacobian $\operatorname{diag}(p) - p p^\top$ for each of the
        $B \cdot n_h \cdot T$ rows: one dot product per row does it, $O(K)$ instead of $O(K^2)$. Note two
        consequences: a masked key ($p_j = 0$) gets gradient exactly 0, and $\sum_j ds_j = 0$ (adding a constant
        to the scores changes nothing, so the gradient has no component along $(1, \dots, 1)$).
        The mask is a constant: it has no gradient.
        """),
        exercise(r"""
        # EXERCISE: softmax_backward -- dscores from dprobs and SoftmaxCache(probs), row by row over the last axis
        def my_softmax_backward(dprobs, cache):
            '''dprobs: (..., K) -> dscores: (..., K).'''
            probs = cache.probs                                  # (..., K)
            ### BEGIN SOLUTION
            dot = (dprobs * probs).sum(axis=-1, keepdims=True)   # (..., 1): sum_i dp_i p_i per row
            dscores = probs * (dprobs - dot)                     # (..., K)
            ### END SOLUTION
            return dscores
        """),
        check(r"""
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
        """),
        md(r"""
        ## 4. Gradient check of the whole attention

        `attention_backward` chains the pieces in reverse: the two matrix products
        ($O = PV$ and $S = QK^\top/\sqrt{d_h}$, each giving a pair of gradients), your softmax backward in
        between, and finally the linear backward of the fused projection. It returns
        `AttentionGrads(x, query_weight, query_bias, key_weight, key_bias, value_weight, value_bias)`.
        Check every one of them with tiny, distinct sizes and a padded sequence:
        """),
        code(r"""
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
        """),
        md(r"""
        Everything is near $10^{-9}$ or below except `key_bias`, whose error is far larger than the others' (how much
        larger depends on the sizes and the seed; it can reach $10^{-3}$). Is the backward wrong there? Look at
        what the key bias does: it adds the same vector $b_k$ to every key, so every score of query row $i$ gains
        the *same* amount $q_i \cdot b_k / \sqrt{d_h}$. Softmax ignores a constant added to a row (section 2). So
        **the loss does not depend on $b_k$ at all: its true gradient is exactly zero**, the analytic one is rounding-sized,
        and the numerical one is rounding noise. That is the noise floor from lesson 1. The right response is
        a floor of $10^{-9}$, which forgives only entries that are tiny on both sides:
        """),
        code(r"""
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
        """),
        md(r"""
        (BERT keeps the key bias anyway — Hugging Face checkpoints have it — and it simply never learns:
        AdamW's weight decay is the only thing that moves it.)

        ## 5. Attention maps

        `attention_forward` keeps the probabilities in its cache (`cache.softmax_cache.probs`, shape (B, nh, T, T));
        `model(..., output_attentions=True)` returns them for every layer. Row $i$ of a map says how much
        query position $i$ takes from each key position. Here are the three heads for the padded sequence of
        section 1: the two `[PAD]` columns are empty. The weights are random, so the patterns mean nothing
        yet; lesson 4 trains a BERT.
        """),
        code(r"""
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
        """),
        md(r"""
        ## Summary

        * Shapes: (B, T, C) $\to$ heads (B, $n_h$, T, $d_h$) $\to$ scores (B, $n_h$, T, T) $\to$ back to (B, T, C).
        * Scale by $1/\sqrt{d_h}$ so the scores have unit variance; subtract the row maximum before `exp`.
        * Padding: add the dtype's minimum to padded keys; they get probability exactly 0, a fully masked
          row becomes uniform instead of NaN.
        * Softmax backward: $ds = p \odot (dp - \langle dp, p\rangle)$, one dot product per row.
        * The key bias's gradient is exactly zero (softmax's shift invariance); gradient checks give it a
          $10^{-9}$ noise floor and nothing more.
        """),
    ]


LESSONS = {
    "01_backprop_by_hand.ipynb": lesson_01,
    "02_attention.ipynb": lesson_02,
}


def build(name: str, make_cells) -> Path:
    nb = new_notebook()
    nb.cells = make_cells()
    stem = name.split("_")[0]
    for i, cell in enumerate(nb.cells):
        cell.id = f"l{stem}-{i:02d}"                 # stable ids: a rebuild gives the same file
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "pygments_lexer": "ipython3"},
    }
    nbformat.validate(nb)
    path = HERE / name
    nbformat.write(nb, path)
    return path


def main(argv: list[str]) -> None:
    chosen = [n for n in LESSONS if not argv or any(n.startswith(a) for a in argv)]
    if not chosen:
        raise SystemExit(f"no lesson matches {argv}; lessons: {', '.join(LESSONS)}")
    for name in chosen:
        print("wrote", build(name, LESSONS[name]).relative_to(HERE.parent))


if __name__ == "__main__":
    main(sys.argv[1:])
