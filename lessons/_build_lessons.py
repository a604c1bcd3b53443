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


def code(*parts: str, tags=()):
    """A code cell; several parts are dedented one by one and joined."""
    cell = new_code_cell("\n".join(dedent(part).strip("\n") for part in parts))
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
        (BERT keeps the key bias anyway — Hugging Face checkpoints have it — and it stays where it started:
        in training its gradient is rounding noise, far below AdamW's $\epsilon$, and it gets no weight decay.)

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


# =====================================================================================
# 03: BERT's data
# =====================================================================================

def lesson_03():
    return [
        md(r"""
        # Lesson 3 — From text to a pretraining example

        BERT never sees characters. Text goes through a pipeline, each stage a few dozen lines of `bertnp`:

        1. **BasicTokenizer** — clean the text, lower-case it, strip accents, split off punctuation: a list of words.
        2. **WordPiece** — split each word into pieces of a fixed vocabulary (`un ##want ##ed`): a list of ids.
        3. **Pairs** — two stretches of text `A` and `B`, either consecutive (label 0, *IsNext*) or with `B` from
           another document (label 1): `[CLS] A [SEP] B [SEP]`, for next-sentence prediction (NSP).
        4. **Masking** — 15% of the positions are chosen for the masked-LM task; of those 80% become `[MASK]`,
           10% a random token, 10% stay as they are.

        You will implement WordPiece's encoder and the masking rule yourself, and check both — and the
        library's data pipeline — against what Google's `tokenization.py` and `create_pretraining_data.py` do.
        """),
        setup(r"""
        import random
        import tempfile
        from collections import Counter
        from pathlib import Path

        from bertnp.corpus import bundled_corpus
        from bertnp.data import (MaskingVocab, PretrainingDataset, collate, format_instance,
                                 num_to_predict, plot_instance, read_corpus)
        from bertnp.tokenizer import BasicTokenizer, BertTokenizer, WordpieceTokenizer
        from bertnp.wordpiece_trainer import tokenization_stats

        workdir = Path(tempfile.mkdtemp(prefix="bertnp-lesson3-"))   # the vocabularies this lesson writes
        """),
        md(r"""
        ## 1. The basic tokenizer

        BERT's `BasicTokenizer` (Google's `tokenization.py`) applies a few fixed rules:

        * **clean**: drop control characters (Unicode category C*) and U+FFFD; every whitespace character
          (tab, newline, no-break space...) becomes a space;
        * **CJK**: put spaces around every Chinese/Japanese ideograph, so each is a word of its own;
        * **lower-case** (uncased models) and **strip accents**: decompose (NFD) and drop the combining marks, é → e;
        * **punctuation**: every ASCII symbol (`$`, `-`, `` ` ``...) and every Unicode P* character is split off as its own word.

        These are Google's own test cases:
        """),
        code(r"""
        basic = BasicTokenizer(do_lower_case=True)
        examples = {
            " \tHeLLo!how  \n Are yoU?  ": ["hello", "!", "how", "are", "you", "?"],
            "H\u00e9llo": ["hello"],
            "ah\u535a\u63a8zz": ["ah", "\u535a", "\u63a8", "zz"],
        }
        for text, expected in examples.items():
            words = basic.tokenize(text)
            print(f"{text!r:32} -> {words}")
            assert words == expected
        print(basic.tokenize("He paid $3.50 for the e-mail-order milk, didn't he?"))
        """),
        md(r"""
        ## 2. WordPiece: greedy longest match first

        A vocabulary (`vocab.txt`, one token per line, the line number is the id) holds whole words and word
        pieces; a piece that continues a word carries the prefix `##`. To split a word, WordPiece is greedy:
        from the current position, take the **longest** prefix of the rest of the word that is in the
        vocabulary (with `##` in front unless it is the start of the word), then continue after it.
        If at some point *no* prefix matches, the **whole word** becomes `[UNK]` — not just the unmatched part.
        (Words longer than 100 characters are `[UNK]` too.)

        With Google's test vocabulary `[UNK] [CLS] [SEP] want ##want ##ed wa un runn ##ing ,`:
        `unwanted` → `un ##want ##ed` (not `un ##wa ...`: `##want` is longer), `running` → `runn ##ing`,
        and `unwantedx` → `[UNK]` (nothing matches `x`).
        """),
        exercise(r"""
        # EXERCISE: WordPiece's greedy longest-match-first split of ONE word
        def my_wordpiece(word, vocab, unk_token="[UNK]", max_chars=100):
            '''word: str without spaces; vocab: a set or dict of tokens. Returns the list of pieces.'''
            if len(word) > max_chars:
                return [unk_token]
            pieces = []
            ### BEGIN SOLUTION
            start = 0
            while start < len(word):
                end = len(word)
                piece = None
                while end > start:                       # try the longest candidate first
                    candidate = word[start:end] if start == 0 else "##" + word[start:end]
                    if candidate in vocab:
                        piece = candidate
                        break
                    end -= 1
                if piece is None:                        # nothing matches here: the whole word is unknown
                    return [unk_token]
                pieces.append(piece)
                start = end
            ### END SOLUTION
            return pieces
        """),
        check(r"""
        google_vocab = ["[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un", "runn", "##ing", ","]
        for word, expected in [("unwanted", ["un", "##want", "##ed"]), ("running", ["runn", "##ing"]),
                               ("unwantedx", ["[UNK]"]), ("want", ["want"]), ("", [])]:
            assert my_wordpiece(word, set(google_vocab)) == expected, (word, my_wordpiece(word, set(google_vocab)))

        # the full tokenizer on Google's example (BertTokenizer also needs [PAD] and [MASK]: appended, ids 11, 12)
        (workdir / "google_vocab.txt").write_text("".join(t + "\n" for t in google_vocab + ["[PAD]", "[MASK]"]))
        google_tok = BertTokenizer(str(workdir / "google_vocab.txt"))
        tokens = google_tok.tokenize("UNwant\u00e9d,running")
        print(tokens, google_tok.convert_tokens_to_ids(tokens))
        assert tokens == ["un", "##want", "##ed", ",", "runn", "##ing"]
        assert google_tok.convert_tokens_to_ids(tokens) == [7, 4, 5, 10, 8, 9]
        """),
        md(r"""
        The real thing: the uncased BERT-base vocabulary (30,522 tokens, shipped with the test fixtures).
        Frequent words are single tokens; rare ones split into meaningful-ish pieces. Your function must agree
        with the library's `WordpieceTokenizer` on every word of a slice of the corpus:
        """),
        code(r"""
        bert_vocab_file = Path("../tests/fixtures/tokenizer/vocab.txt")      # relative to lessons/
        bert_tok = BertTokenizer(str(bert_vocab_file), do_lower_case=True)
        for text in ["unaffable", "tokenization", "hackishness", "The Jebusites dwelt in Jerusalem."]:
            print(f"{text!r:36} -> {bert_tok.tokenize(text)}")

        documents = read_corpus(bundled_corpus("train"))                     # 1,180 documents, lists of sentences
        heldout = read_corpus(bundled_corpus("heldout"))
        """),
        check(r"""
        words = sorted({w for doc in documents[::20] for s in doc for w in basic.tokenize(s)})
        library = WordpieceTokenizer(bert_tok.vocab)
        mismatches = [w for w in words if my_wordpiece(w, bert_tok.vocab) != library.tokenize_word(w)]
        print(f"{len(words)} distinct words compared, {len(mismatches)} mismatches")
        assert not mismatches, mismatches[:10]
        """),
        md(r"""
        ## 3. Learning a vocabulary

        Where does the vocabulary come from? `bn.train_wordpiece` builds one bottom-up, like byte-pair encoding:
        start from single characters (`c` and `##c`), then repeatedly **merge** the adjacent pair of pieces
        whose merge most increases the likelihood of the training text under a unigram model of the pieces —
        roughly, pairs that are both frequent and occur together more than chance. Each merge adds one token,
        until the vocabulary has the requested size. Encoding afterwards is the greedy longest match you just wrote.

        Train tiny vocabularies on a few hundred lines of the corpus, sampled across all three texts, and
        measure them on the held-out split: the number of WordPiece tokens per word falls as the vocabulary
        grows (and a vocabulary trained on 600 lines covers the held-out text almost without `[UNK]`).
        """),
        code(r"""
        sentences = [s for doc in documents for s in doc]
        lines = sentences[::len(sentences) // 600][:600]                    # 600 lines from all three texts
        heldout_text = "\n".join(s for doc in heldout for s in doc)

        stats = {}
        for size in (300, 600, 1200):
            vocab = bn.train_wordpiece("\n".join(lines), vocab_size=size, show_progress=False)
            path = workdir / f"vocab{size}.txt"
            path.write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
            tok = BertTokenizer(str(path))
            stats[size] = tokenization_stats(tok, heldout_text)
            print(f"vocab {size:>5}: {stats[size]['tokens_per_word']:.2f} tokens/word, "
                  f"[UNK] {100 * stats[size]['unk_rate']:.2f}% of words;  "
                  f"the last merges: {vocab[-6:]}")
        stats[30522] = tokenization_stats(bert_tok, heldout_text)
        print(f"BERT-base's 30,522: {stats[30522]['tokens_per_word']:.2f} tokens/word")
        print("with the 1,200-token vocabulary:", tok.tokenize("The Jebusites dwelt in Jerusalem."))

        fig, ax = plt.subplots(figsize=(6, 3.5))
        sizes = sorted(stats)
        ax.semilogx(sizes, [stats[s]["tokens_per_word"] for s in sizes], "o-")
        ax.annotate("trained here on 600 lines", (1200, stats[1200]["tokens_per_word"]), xytext=(8, 8),
                    textcoords="offset points")
        ax.annotate("BERT-base", (30522, stats[30522]["tokens_per_word"]), xytext=(-60, 8), textcoords="offset points")
        ax.set_xlabel("vocabulary size"); ax.set_ylabel("WordPiece tokens per word (held-out)")
        ax.set_title("a bigger vocabulary: fewer, longer pieces"); ax.grid(alpha=0.3)
        plt.show()

        per_word = [stats[s]["tokens_per_word"] for s in sizes]
        assert all(a > b for a, b in zip(per_word, per_word[1:]))          # strictly fewer tokens per word
        assert stats[1200]["unk_rate"] < 0.01
        assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] is id 0, as in every BERT vocab
        """),
        md(r"""
        ## 4. One pretraining instance

        `PretrainingDataset` follows Google's `create_pretraining_data.py` step by step. Per document it packs
        whole sentences into a chunk of up to `max_seq_length - 3` tokens (room for `[CLS]` and two `[SEP]`),
        splits the chunk at a random sentence boundary into `A` and `B`, and then, with probability ½,
        replaces `B` by text from another random document (NSP label 1, *random next*); otherwise `B` is the
        real continuation (label 0, *IsNext*). A pair that is too long loses tokens from the longer side, at the
        front or the back at random. `segment_ids` (the model's `token_type_ids`) are 0 for `[CLS] A [SEP]` and
        1 for `B [SEP]`.

        Then masking. For a sequence of $n$ tokens, exactly $\min(\text{max\_predictions},\ \max(1, \operatorname{round}(0.15\,n)))$
        positions are chosen uniformly among all tokens except `[CLS]` and `[SEP]`. The model must predict the
        original token at each. Of the chosen positions

        * 80% are replaced by `[MASK]`,
        * 10% by a random token (so the model cannot assume that a visible token is always correct),
        * 10% are left unchanged (so the representation of visible tokens also has to carry their identity).

        `format_instance` shows one: the original token, what the model is given, and the label. (A segment
        that starts or ends in the middle of a word was shortened by the truncation.)
        """),
        code(r"""
        tokenizer = BertTokenizer(str(workdir / "vocab1200.txt"))
        MAX_LEN, MAX_PRED = 48, 7
        dataset = PretrainingDataset(documents[::4], tokenizer, max_seq_length=MAX_LEN,
                                     max_predictions_per_seq=MAX_PRED, seed=1)
        print(f"{len(dataset)} instances from {len(documents[::4])} documents\n")
        instance = dataset[3]
        print(format_instance(instance, tokenizer))
        """),
        code(r"""
        fig = plot_instance(instance, tokenizer)
        plt.show()
        """),
        md(r"""
        Write the masking rule yourself. `vocab` is a `MaskingVocab`: it has `cls_id`, `sep_id`, `mask_id`, and
        `random_ids`, the ids a random replacement may draw (every token except the special ones, so `[PAD]`
        or `[CLS]` never appear in the middle of a text). Use only the `rng` you are given (a `random.Random`):
        reproducible data comes from explicit seeds.
        """),
        exercise(r"""
        # EXERCISE: BERT's masking of one sequence -- choose the positions, then 80% [MASK] / 10% random / 10% kept
        def my_mask_tokens(tokens, vocab, rng, masked_lm_prob=0.15, max_predictions=MAX_PRED):
            '''tokens: list of ids ([CLS] A [SEP] B [SEP]). Returns (input_ids, positions (ascending), labels).'''
            ### BEGIN SOLUTION
            candidates = [i for i, t in enumerate(tokens) if t not in (vocab.cls_id, vocab.sep_id)]
            rng.shuffle(candidates)
            n_predict = min(max_predictions, max(1, round(len(tokens) * masked_lm_prob)))
            positions = sorted(candidates[:n_predict])
            input_ids = list(tokens)
            for p in positions:
                if rng.random() < 0.8:
                    input_ids[p] = vocab.mask_id                 # 80%: [MASK]
                elif rng.random() < 0.5:
                    pass                                         # 10%: keep the original token
                else:
                    input_ids[p] = rng.choice(vocab.random_ids)  # 10%: a random token
            ### END SOLUTION
            return input_ids, positions, [tokens[p] for p in positions]
        """),
        md(r"""
        A masking rule cannot be checked on one example: check its **statistics** over many. The helper below
        verifies the exact rules on every sequence (the number of predictions, never `[CLS]`/`[SEP]`, labels are
        the original tokens, nothing else changed) and measures the 80/10/10 split. (A random replacement that
        happens to draw the original token counts as "kept": with about 1,200 candidates that is rare.)
        """),
        code(r"""
        def masking_statistics(examples, max_predictions=MAX_PRED):
            '''examples: (tokens, input_ids, positions, labels) tuples. Asserts the rules; returns the fractions.'''
            kinds = Counter()
            for tokens, input_ids, positions, labels in examples:
                assert len(positions) == num_to_predict(len(tokens), 0.15, max_predictions)
                assert list(positions) == sorted(set(positions))
                assert all(tokens[p] not in (tokenizer.cls_token_id, tokenizer.sep_token_id) for p in positions)
                assert list(labels) == [tokens[p] for p in positions]
                chosen = set(positions)
                assert all(input_ids[i] == tokens[i] for i in range(len(tokens)) if i not in chosen)
                for p in positions:
                    kinds["mask" if input_ids[p] == tokenizer.mask_token_id else
                          "kept" if input_ids[p] == tokens[p] else "random"] += 1
            total = sum(kinds.values())
            return {k: kinds[k] / total for k in ("mask", "random", "kept")}, total

        def assert_80_10_10(fractions, total):
            print(f"{total} predictions: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in fractions.items()))
            assert total > 5000
            assert abs(fractions["mask"] - 0.8) < 0.02
            assert abs(fractions["random"] - 0.1) < 0.015 and abs(fractions["kept"] - 0.1) < 0.015
        """),
        check(r"""
        vocab = MaskingVocab(tokenizer)
        rng = random.Random(0)
        mine = []
        for i in range(len(dataset)):
            tokens = dataset.instances[i].tokens                         # the unmasked pair
            mine.append((tokens, *my_mask_tokens(tokens, vocab, rng)))
        assert_80_10_10(*masking_statistics(mine))
        allowed = set(vocab.random_ids)                                  # random replacements are never special
        for tokens, input_ids, positions, _ in mine:
            for p in positions:
                if input_ids[p] not in (tokenizer.mask_token_id, tokens[p]):
                    assert input_ids[p] in allowed
        """),
        md(r"""
        ## 5. The library's instances, by the numbers

        The same checks on the library's own instances, plus the pairs: every sequence is `[CLS] A [SEP] B [SEP]`
        within `max_seq_length`; an IsNext pair takes `A` and `B` from the same document, a random-next pair
        from two different ones. How many pairs are random? A chunk of two or more sentences flips a fair coin;
        a chunk of a *single* sentence (one long sentence already fills the target length) has no boundary to
        split at and always gets a random next. So the share of label 1 is a half *among multi-sentence chunks*,
        and more than a half overall — the shorter `max_seq_length`, the more (about 56% at BERT's 128).

        The masks are **dynamic** (as RoBERTa and Hugging Face do): instance $i$ in epoch $e$ is masked with a
        generator seeded by $(\text{seed}, e, i)$, so every epoch sees different masks of the same pairs — and
        nothing about masking has to be stored to resume training exactly. Google's original masks each copy once,
        statically (`masking="static"`, with `dupe_factor` copies).
        """),
        check(r"""
        epoch0 = [dataset.instance(i, epoch=0) for i in range(len(dataset))]
        assert_80_10_10(*masking_statistics(
            [(x.tokens, x.input_ids, x.masked_positions, x.masked_labels) for x in epoch0]))

        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        for x in epoch0:
            assert len(x.tokens) <= MAX_LEN and x.tokens[0] == cls and x.tokens[-1] == sep
            first_sep = x.tokens.index(sep)
            assert x.tokens.count(sep) == 2 and 1 < first_sep < len(x.tokens) - 2      # A and B are not empty
            assert x.segment_ids == [0] * (first_sep + 1) + [1] * (len(x.tokens) - first_sep - 1)
            assert (x.doc_a != x.doc_b) == x.is_random_next                           # NSP label 1 = other document
        multi = [x.next_sentence_label for x in epoch0 if x.chunk_sentences >= 2]
        single = [x.next_sentence_label for x in epoch0 if x.chunk_sentences == 1]
        print(f"random next (label 1): {100 * np.mean(multi):.1f}% of {len(multi)} pairs cut from multi-sentence chunks, "
              f"{100 * np.mean(single):.0f}% of {len(single)} single-sentence chunks; "
              f"{100 * np.mean([x.next_sentence_label for x in epoch0]):.1f}% overall")
        assert abs(np.mean(multi) - 0.5) < 0.03 and all(single)

        # dynamic masking: the same pairs, other masks in the next epoch
        epoch1 = [dataset.instance(i, epoch=1) for i in range(len(dataset))]
        assert all(a.tokens == b.tokens for a, b in zip(epoch0, epoch1))
        changed = np.mean([a.masked_positions != b.masked_positions for a, b in zip(epoch0, epoch1)])
        print(f"masks that differ between epoch 0 and epoch 1: {100 * changed:.0f}%")
        assert changed > 0.9

        lengths = [len(x.tokens) for x in epoch0]
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist(lengths, bins=range(5, MAX_LEN + 2), log=True)
        ax.set_xlabel("tokens in the instance"); ax.set_ylabel("instances (log scale)")
        ax.set_title("most pairs fill max_seq_length; short_seq_prob = 0.1 makes some short")
        plt.show()
        """),
        md(r"""
        ## 6. A batch

        `collate` pads a list of instances to one array per model input. Padding is `[PAD]` (id 0) with
        `attention_mask` 0 (lesson 2: padded keys get no attention), and `labels` is $-100$ wherever nothing is
        predicted — PyTorch's *ignore index*: those positions do not count in the loss. This is the dictionary
        `model(**batch)` takes in lesson 4.
        """),
        code(r"""
        batch = collate(epoch0[:4], pad_id=tokenizer.pad_token_id, max_seq_length=MAX_LEN)
        for key, value in batch.items():
            print(f"{key:<20} {str(value.shape):<9} {value.dtype}")
        print("labels of the first sequence:", batch["labels"][0])
        assert batch["input_ids"].shape == (4, MAX_LEN) and batch["next_sentence_label"].shape == (4,)
        assert np.all(batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id)
        assert np.all(batch["labels"][batch["attention_mask"] == 0] == -100)
        assert (batch["labels"] != -100).sum() == sum(len(x.masked_positions) for x in epoch0[:4])
        """),
        md(r"""
        ## Summary

        * BasicTokenizer: clean, split CJK, lower-case and strip accents, split punctuation.
        * WordPiece: greedy longest match with `##` continuations; one unmatched part makes the whole word `[UNK]`.
          A vocabulary is learned bottom-up by merges; a bigger one means fewer tokens per word.
        * An instance: `[CLS] A [SEP] B [SEP]`, NSP label 0 = IsNext, 1 = random next (Google's and Hugging Face's
          convention; some re-implementations flip it).
        * Masking: $\max(1, \operatorname{round}(0.15\,n))$ positions (capped), never `[CLS]`/`[SEP]`; 80% `[MASK]`, 10% random,
          10% unchanged. Check it by its statistics.
        """),
    ]


# =====================================================================================
# 04: pretrain a tiny BERT
# =====================================================================================

LESSON_04_VOCAB = r"""
# a WordPiece vocabulary learned from every 6th sentence of the corpus (lesson 3 shows how), ~1 s
sentences = [s for doc in documents for s in doc][::6]
vocab_path = workdir / "vocab.txt"
bn.train_wordpiece("\n".join(sentences), vocab_size=VOCAB_SIZE, vocab_file=vocab_path, show_progress=False)
tokenizer = BertTokenizer(str(vocab_path), do_lower_case=True)
V = tokenizer.vocab_size
print(f"vocabulary: {V} tokens, e.g. {tokenizer.convert_ids_to_tokens(list(range(V - 8, V)))}")
"""


def lesson_04():
    return [
        md(r"""
        # Lesson 4 — Pretrain a tiny BERT

        Everything so far comes together: the operations of lessons 1–2, the data of lesson 3, and
        `bn.AdamW`. BERT is trained on two tasks at once, and the loss is their sum:

        $$L = \underbrace{-\frac{1}{N}\sum_{\text{masked } n} \log p_\theta(x_n \mid \tilde x)}_{\text{masked LM}} \;+\; \underbrace{-\frac{1}{B}\sum_{b} \log p_\theta(\text{IsNext}_b \mid \tilde x_b)}_{\text{next-sentence prediction}}$$

        In this lesson you will

        1. build a tiny `BertForPreTraining` and predict its loss *before* running it;
        2. check the gradient of the whole model against finite differences;
        3. write one training step, and make sure it can overfit a single batch;
        4. train for about half a minute on the bundled corpus with the library's training loop and watch the loss fall.

        First, one setting. The matrices of a tiny model are small, and for small matrices a single BLAS
        thread is about as fast as several — while several threads slow down *many* times over when another
        program (or the test suite's second worker) is busy on the other cores. So this notebook asks
        OpenBLAS for one thread. It must happen before NumPy is imported: run the notebook from the top.
        """),
        code(r"""
        import os
        if "OPENBLAS_NUM_THREADS" not in os.environ:               # a setting of your own wins
            os.environ["OPENBLAS_NUM_THREADS"] = "1"               # read once, when NumPy loads OpenBLAS
        """),
        setup(r"""
        import math
        import tempfile
        import time
        from pathlib import Path

        from bertnp.corpus import bundled_corpus
        from bertnp.data import PretrainingDataset, PretrainingLoader, read_corpus
        from bertnp.gradcheck import check_model
        from bertnp.optim import clip_grad_norm
        from bertnp.tokenizer import BertTokenizer

        workdir = Path(tempfile.mkdtemp(prefix="bertnp-lesson4-"))   # vocab, run folder, checkpoints
        VOCAB_SIZE = 2000
        """),
        md(r"""
        ## 1. Data and a tiny model

        The bundled corpus is public-domain English (the World English Bible, The Devil's Dictionary and the
        Jargon File) in BERT's format: one sentence a line, a blank line between documents. A vocabulary of
        2,000 WordPiece tokens keeps the output layer small.
        """),
        code(r"""
        documents = read_corpus(bundled_corpus("train"))
        print(f"{len(documents)} documents, {sum(len(d) for d in documents)} sentences")
        """, LESSON_04_VOCAB),
        md(r"""
        The model: `bn.BertConfig` takes Hugging Face's field names. BERT-base has 12 layers of width 768;
        ours has 2 layers of width 64 with 2 heads — about 0.2 M parameters, most of them in the word
        embeddings. Sequences are 64 tokens long.
        """),
        code(r"""
        config = bn.BertConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=256, max_position_embeddings=64,
                               pad_token_id=tokenizer.pad_token_id)
        model = bn.BertForPreTraining(config, seed=0, dtype="float32")
        sizes = {}
        for name, p in model.parameters().items():
            part = ("word embeddings (tied to the MLM decoder)" if "word_embeddings" in name else
                    "encoder layers" if ".encoder." in name else "other embeddings, pooler, heads")
            sizes[part] = sizes.get(part, 0) + p.size
        for part, n in sizes.items():
            print(f"{part:<44} {n:>8,}")
        print(f"{'total':<44} {model.num_parameters():>8,}")

        # a first batch: 16 pairs, each [CLS] A [SEP] B [SEP], 15% of the tokens masked (lesson 3)
        small = PretrainingDataset(documents[:40], tokenizer, max_seq_length=64, max_predictions_per_seq=10, seed=0)
        batch = PretrainingLoader(small, batch_size=16, seed=0).next_batch()
        for key, value in batch.items():
            print(f"{key:<20} {str(value.shape):<10} {value.dtype}")
        """),
        md(r"""
        ## 2. The loss before training

        Predict it before you compute it. At initialisation every weight is drawn from $\mathcal N(0, 0.02^2)$,
        so the logits are all close to 0 and the softmax is nearly uniform over the $V$ tokens. The cross-entropy
        of a uniform guess is $-\log \frac1V = \ln V$. The NSP head chooses between 2 classes: $\ln 2 \approx 0.693$.
        For BERT-base's vocabulary of 30,522 that is 10.33 + 0.69. A starting loss far from these numbers means a
        bug (an init scale, a mask, labels shifted by one) before a single step is taken.
        """),
        code(r"""
        model.eval()                                 # dropout off for a clean measurement
        out = model(**batch)
        mlm0, nsp0 = float(out.mlm_loss), float(out.nsp_loss)
        print(f"MLM loss {mlm0:.4f}   ln V = ln {V} = {math.log(V):.4f}")
        print(f"NSP loss {nsp0:.4f}   ln 2 = {math.log(2):.4f}")
        print("MLM logits are computed only at the", out.prediction_logits.shape[0], "masked positions:",
              out.prediction_logits.shape)
        assert abs(mlm0 - math.log(V)) < 0.1
        assert abs(nsp0 - math.log(2)) < 0.05
        """),
        md(r"""
        ## 3. Checking the gradient of the whole model

        `model.backward()` returns the gradient of `out.loss` for every tensor of `model.state_dict()`. Check
        it like one layer in lesson 1, but on a model small enough to perturb entry by entry: float64, dropout
        off (`eval()`), tiny distinct sizes, a padded sequence. Two adjustments:

        * the weights are redrawn at scale 0.3 (not 0.02) so that every GELU, tanh and softmax actually bends —
          with tiny weights the model is almost linear and the check would be too easy;
        * `check_model` uses a 4th-order stencil, $\frac{-f(x+2h) + 8f(x+h) - 8f(x-h) + f(x-2h)}{12h}$ with
          $h = 10^{-3}$: a model has many gradient entries of $\sim 10^{-5}$, which the usual stencil's
          noise would blur; this one cancels the $h^2$ error term and allows a larger, less noisy step.
          Entries below $10^{-8}$ on both sides are at its noise floor (lesson 1) and count as matching.

        The word-embedding matrix is used twice — as the input lookup and, transposed, as the MLM decoder — so
        its gradient is the *sum* of both uses; the check covers that too. To keep this quick we check 6
        random entries of every tensor (the test suite checks every entry).
        """),
        code(r"""
        tiny_cfg = bn.BertConfig(vocab_size=23, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                                 intermediate_size=20, max_position_embeddings=9)
        tiny = bn.BertForPreTraining(tiny_cfg, seed=3, dtype="float64").eval()
        r = np.random.default_rng(3)
        for name, p in tiny.parameters().items():
            p[...] = r.normal(0, 0.3, p.shape) + (1.0 if "LayerNorm.weight" in name else 0.0)

        ids = r.integers(5, 23, (2, 7))
        attention = np.ones((2, 7), dtype=np.int64)
        attention[1, 5:] = 0                                  # the second sequence ends in two [PAD]s
        ids[1, 5:] = 0
        types = np.zeros((2, 7), dtype=np.int64)
        types[:, 4:] = 1                                      # segment B starts at position 4
        labels = np.full((2, 7), -100)                        # -100: not predicted
        labels[0, [1, 3]] = [5, 6]
        labels[1, 2] = 7
        tiny_batch = dict(input_ids=ids, attention_mask=attention, token_type_ids=types, labels=labels,
                          next_sentence_label=np.array([0, 1]))

        t0 = time.perf_counter()
        errors = check_model(tiny, tiny_batch, max_entries=6, floor=1e-8)
        print(f"{len(errors)} tensors checked in {time.perf_counter() - t0:.1f} s; the five worst:")
        for name, err in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
            print(f"  {err:.1e}  {name}")
        assert len(errors) == len(tiny.state_dict())
        assert max(errors.values()) <= 1e-6
        """),
        md(r"""
        ## 4. One training step

        A step of BERT pretraining, as in PyTorch:

        1. `model.zero_grad()` — gradients *accumulate* across `backward()` calls until zeroed;
        2. `out = model(**batch)` — the forward pass with `labels` and `next_sentence_label`;
        3. `model.backward()` — the gradient of `out.loss` into `model.grads`;
        4. `clip_grad_norm(model.grads, 1.0)` — if the global norm $\sqrt{\sum \lVert g\rVert^2}$ of all gradients exceeds 1,
           scale them all down to norm 1 (one bad batch cannot throw the weights far);
        5. `optimizer.step()` — AdamW: an Adam update plus decoupled weight decay (none on biases and LayerNorm).
        """),
        exercise(r"""
        # EXERCISE: one training step -- zero the gradients, forward, backward, clip to norm 1.0, AdamW step
        def train_step(model, optimizer, batch, max_grad_norm=1.0):
            '''Returns (MLM loss, NSP loss) of this step's forward pass as floats.'''
            ### BEGIN SOLUTION
            model.zero_grad()
            out = model(**batch)
            model.backward()
            clip_grad_norm(model.grads, max_grad_norm)
            optimizer.step()
            ### END SOLUTION
            return float(out.mlm_loss), float(out.nsp_loss)
        """),
        md(r"""
        The first test of any training loop: **can it overfit one batch?** A model that cannot drive the loss on
        8 fixed sequences towards zero has a bug in the loop, the gradients or the optimizer — and no amount of
        data will fix it. (Dropout is switched off here so that the same batch gives the same loss.)
        """),
        check(r"""
        no_dropout = bn.BertConfig.from_dict({**config.to_dict(), "hidden_dropout_prob": 0.0,
                                              "attention_probs_dropout_prob": 0.0})
        overfit = bn.BertForPreTraining(no_dropout, seed=0)
        optimizer = bn.AdamW(overfit, lr=3e-3, weight_decay=0.0)
        one_batch = {k: v[:8] for k, v in batch.items()}
        history = [train_step(overfit, optimizer, one_batch) for _ in range(40)]
        mlm_curve, nsp_curve = np.array(history).T
        print(f"MLM loss {mlm_curve[0]:.2f} -> {mlm_curve[-1]:.3f}   NSP loss {nsp_curve[0]:.2f} -> {nsp_curve[-1]:.4f}")

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(mlm_curve, label="MLM loss"); ax.plot(nsp_curve, label="NSP loss")
        ax.set_xlabel("step"); ax.set_ylabel("loss (nats)"); ax.set_title("overfitting one batch of 8")
        ax.legend(); ax.grid(alpha=0.3)
        plt.show()
        assert abs(mlm_curve[0] - math.log(V)) < 0.1
        assert mlm_curve[-1] < 1.0 and nsp_curve[-1] < 0.1
        """),
        md(r"""
        ## 5. Pretraining on the corpus

        The library's loop, `bertnp.train.Trainer`, does exactly your `train_step` for every batch, plus what a
        real run needs: a learning-rate schedule (linear warm-up from 0, then linear decay to 0), a held-out
        evaluation, `metrics.jsonl`, checkpoints it can resume from exactly, and the final model in Hugging Face's
        layout. `bertnp pretrain` on the command line runs the same thing.

        Here: the whole training split (about 26,000 pairs of up to 64 tokens) and 400 steps of 32 pairs — half
        a pass over the data, 20–30 seconds on one laptop core — with a peak learning rate of $4\times 10^{-3}$
        (tiny models tolerate far more than BERT-base's $10^{-4}$) and no dropout: in a run this short it would
        only slow learning down.
        """),
        code(r"""
        from bertnp.train import TrainConfig, Trainer
        config.to_json_file(workdir / "config.json")
        run = TrainConfig(vocab=str(vocab_path), model_config=str(workdir / "config.json"),
                          max_seq_length=64, batch_size=32, steps=400, lr=4e-3, warmup=0.05, dropout=0.0,
                          seed=0, out_dir=str(workdir / "run"), eval_every=100, eval_batches=4,
                          checkpoint_every=1000, log_every=10, progress=False)
        trainer = Trainer(run)
        t0 = time.perf_counter()
        summary = trainer.train()
        print(f"{summary['step']} steps in {time.perf_counter() - t0:.1f} s "
              f"({summary['tokens_seen'] / summary['train_time']:.0f} tokens/s)")
        """),
        md(r"""
        The run left `metrics.jsonl` (one record per 10 training steps, averaged, and one per evaluation on
        held-out documents the model never trains on) and drew it as `training.png`:
        """),
        code(r"""
        from IPython.display import Image, display
        from bertnp.viz import read_metrics
        display(Image(filename=str(trainer.out / "training.png")))
        records = read_metrics(trainer.metrics_path)
        train_records = [r for r in records if r["split"] == "train"]
        eval_records = [r for r in records if r["split"] == "eval"]
        first, last = train_records[0], eval_records[-1]
        print(f"loss (MLM + NSP): first 10 steps {first['loss']:.2f}  ->  held-out after {last['step']} steps {last['loss']:.2f}")
        assert first["loss"] > math.log(V) + math.log(2) - 1.0      # it started near ln V + ln 2 ...
        assert last["loss"] < first["loss"] - 1.5                    # ... and fell substantially
        """),
        md(r"""
        Within a few dozen steps the loss drops to a **plateau**: the model has learned how frequent each token
        is, and predicts that at every `[MASK]` whatever the context. The loss of that guess is the *unigram
        cross-entropy* $-\frac1N \sum_n \log \hat p(x_n)$ with $\hat p$ the token frequencies of the training data —
        about 6 nats here (on English with a 30k vocabulary, about 7). Only a loss *below* it shows that the model
        uses the context. The same goes for the accuracies: the dotted line in the figure is the accuracy of always
        predicting the most frequent token, and for NSP the bar is the share of the majority label — at 64 tokens
        about 60% of the pairs are random-next (lesson 3 explains why), so 60% NSP accuracy means nothing learned.
        """),
        code(r"""
        import itertools
        train_ids = np.fromiter(itertools.chain.from_iterable(itertools.chain.from_iterable(trainer.dataset.documents)),
                                dtype=np.int64)                        # every token of the tokenized training split
        frequency = (np.bincount(train_ids, minlength=V) + 1.0) / (train_ids.size + V)   # add-one smoothing
        eval_labels = np.concatenate([b["labels"][b["labels"] != -100] for b in trainer.eval_batches])
        unigram_ce = float(-np.log(frequency[eval_labels]).mean())
        nsp_labels = np.concatenate([b["next_sentence_label"] for b in trainer.eval_batches])
        majority = max(nsp_labels.mean(), 1 - nsp_labels.mean())

        print(f"held-out MLM loss {last['mlm_loss']:.3f}   unigram cross-entropy {unigram_ce:.3f}")
        print(f"held-out MLM accuracy {last['mlm_acc']:.3f}   most-frequent-token baseline {last['baseline_mlm_acc']:.3f}")
        print(f"held-out NSP accuracy {last['nsp_acc']:.3f}   always guessing the majority label {majority:.3f}")
        assert last["mlm_loss"] < unigram_ce - 0.1                   # below the plateau: it uses the context
        assert last["mlm_acc"] > 1.5 * last["baseline_mlm_acc"]
        """),
        md(r"""
        ## 6. What did it learn?

        Where does the model beat the frequency guess? Here are held-out positions where the input was `[MASK]`,
        the model's top prediction was right, and the answer was *not* the most frequent token. After half a
        minute there are only a few, and they are local patterns — a full stop before `[SEP]`, the end of a word
        whose start is visible — but they are what pulls the loss below the plateau.
        """),
        code(r"""
        model, tok = trainer.model.eval(), trainer.tokenizer
        most_frequent = int(np.argmax(frequency))
        found = []
        for b in trainer.eval_batches:
            predicted = np.asarray(model(**b).prediction_logits).argmax(axis=-1)   # (N,): the labelled positions, row-major
            rows, cols = np.nonzero(b["labels"] != -100)                            # the same row-major order
            for r, c, guess in zip(rows, cols, predicted):
                answer = b["labels"][r, c]
                if b["input_ids"][r, c] == tok.mask_token_id and guess == answer != most_frequent:
                    context = tok.convert_ids_to_tokens(b["input_ids"][r, max(1, c - 6):c + 4])
                    found.append(f"{' '.join(context):<60} [MASK] = {tok.convert_ids_to_tokens(int(answer))}")
        print(f"{len(found)} such predictions, for example:")
        print("\n".join(found[:8]))
        """),
        md(r"""
        `bertnp.inference.fill_mask` asks the same question of your own sentences. At this stage the answer
        barely depends on the sentence — the top guesses are still the most frequent tokens. A few minutes of
        training (`make demo`, or `bertnp pretrain`) gives a model whose guesses start to fit the context.
        """),
        code(r"""
        from bertnp.inference import fill_mask
        for text in ["in the beginning god created the heavens and the [MASK].",
                     "and he said to them, [MASK] not afraid."]:
            top = fill_mask(model, tok, text, top_k=5)          # one [MASK]: a flat list, best first
            print(f"{text:<58} -> " + ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in top))
            assert len(top) == 5 and sum(p["score"] for p in top) <= 1.0 + 1e-6
        """),
        md(r"""
        ## Summary

        * Starting losses: MLM $\approx \ln V$, NSP $\approx \ln 2$ — check them before training.
        * Whole-model gradient check: float64, `eval()`, tiny distinct sizes, weights large enough to bend every
          nonlinearity, 4th-order stencil; relative error $\le 10^{-6}$.
        * A step is zero-grad, forward, backward, clip, AdamW. First make sure it overfits one batch.
        * Then train: the loss drops quickly to the unigram plateau (word frequencies), then below it as the
          model starts to use the context. Compare every metric with its trivial baseline.
        """),
    ]


LESSONS = {
    "01_backprop_by_hand.ipynb": lesson_01,
    "02_attention.ipynb": lesson_02,
    "03_bert_data.ipynb": lesson_03,
    "04_pretrain_tiny_bert.ipynb": lesson_04,
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
