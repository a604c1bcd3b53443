"""Assignment 1 (public): the backward passes of the operations, checked by finite differences.

Run one task with `bertnp course check 1.3`. Tiny distinct shapes, float64, a random upstream
gradient (never all ones: LayerNorm's and softmax's errors cancel against ones).
"""
import numpy as np
from scipy.special import erf, logsumexp

from referee import CheckFailed, check, check_inverted_dropout, close, gradient_check, rng, teach

from bertnp.ops.dropout import dropout_backward, dropout_forward
from bertnp.ops.embedding import embedding_backward, embedding_forward
from bertnp.ops.layernorm import layernorm_backward, layernorm_forward
from bertnp.ops.linear import linear_backward, linear_forward
from bertnp.ops.losses import cross_entropy_backward, cross_entropy_forward
from bertnp.ops.softmax import softmax_backward, softmax_forward
from bertnp.ops import activations


def test_numerical_gradient():
    """Task 1.1: centered differences, checked on a function whose gradient is known exactly."""
    from bertnp.gradcheck import numerical_gradient
    r = rng(1)
    x = r.standard_normal((3, 4))
    w = r.standard_normal((3, 4))
    original = x.copy()
    grad = numerical_gradient(lambda: float((np.sin(x) * w).sum() + (x * x).sum()), x)
    check(np.shape(grad) == x.shape, "numerical_gradient's shape", np.shape(grad), x.shape)
    close("numerical gradient of sum(sin(x) w) + sum(x^2), against cos(x) w + 2x", grad,
          np.cos(x) * w + 2 * x, rtol=1e-7, atol=1e-8)
    check(np.array_equal(x, original), "x is restored after the differences (no entry left perturbed)",
          "changed" if not np.array_equal(x, original) else "unchanged", "unchanged")
    # f(x) = sum(x^3): a centered difference gives exactly 3x^2 + h^2 (a one-sided one 3x^2 + 3xh + h^2)
    h = 1e-2
    cubic = numerical_gradient(lambda: float((x * x * x).sum()), x, h=h)
    close("numerical gradient of sum(x^3) with h = 1e-2: a CENTERED difference gives 3x^2 + h^2",
          cubic, 3 * x * x + h * h, rtol=1e-7, atol=1e-9)


def test_linear_backward():
    """Task 1.2: out = x @ W.T + b."""
    r = rng(2)
    inputs = dict(x=r.standard_normal((2, 3, 4)), weight=r.standard_normal((5, 4)), bias=r.standard_normal(5))
    gradient_check("linear_backward", linear_forward, linear_backward, inputs, wrt=("x", "weight", "bias"))


def test_layernorm_backward():
    """Task 1.3: LayerNorm over the last axis (mean and variance depend on every entry of a row)."""
    r = rng(3)
    inputs = dict(x=r.standard_normal((2, 3, 6)) * 2 + 0.5, gamma=r.standard_normal(6), beta=r.standard_normal(6))
    gradient_check("layernorm_backward", layernorm_forward, layernorm_backward, inputs,
                   wrt=("x", "gamma", "beta"), eps=1e-5)


def _exact_gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def test_gelu_forward():
    """Task 1.4: GELU(x) = x * Phi(x) with the exact erf (HF's "gelu"), not the tanh approximation."""
    x = np.linspace(-4, 4, 41)
    out, _ = activations.gelu_forward(x.copy(), "none")
    expected = _exact_gelu(x)
    if not np.allclose(out, expected, rtol=1e-10, atol=1e-12):
        tanh_form = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
        if np.allclose(out, tanh_form, rtol=1e-9, atol=1e-12):
            raise CheckFailed("gelu_forward: your values are GELU's tanh approximation (gelu_new), "
                              f"which differs from the erf form by up to {np.abs(tanh_form - expected).max():.1e}; "
                              "hidden_act='gelu' asks for x * Phi(x) with the exact erf")
    close("gelu_forward(x, 'none') against x * Phi(x) with the exact erf", out, expected)


def test_gelu_backward():
    """Task 1.4: the derivative of x * Phi(x), against finite differences of the exact GELU."""
    r = rng(4)
    x = r.standard_normal((3, 5)) * 2
    _, cache = activations.gelu_forward(x.copy(), "none")
    dout = r.standard_normal(x.shape)
    dx = activations.gelu_backward(dout, cache)
    numerical = teach.finite_differences(lambda: float((_exact_gelu(x) * dout).sum()), x)
    teach.check_gradient("gelu_backward: dx", dx, numerical, threshold=1e-7)


def test_softmax_backward():
    """Task 1.5: softmax over the last axis, with BERT's additive padding mask."""
    r = rng(5)
    mask = np.zeros((2, 1, 1, 5))
    mask[1, ..., 3:] = np.finfo(np.float64).min                 # the second sequence: 2 padded keys
    inputs = dict(scores=r.standard_normal((2, 3, 4, 5)))
    gradient_check("softmax_backward", lambda scores: softmax_forward(scores, mask),
                   softmax_backward, inputs, wrt=("scores",), floor=1e-10)


def test_dropout():
    """Task 1.6: inverted dropout -- drop with probability p, scale the rest by 1/(1-p), and the
    backward multiplies by the same mask."""
    x = rng(6).standard_normal((200, 50)) + 3.0
    p = 0.3
    out, cache = dropout_forward(x, p, rng=7, training=True)
    dropped = out == 0
    share = dropped.mean()
    # 10,000 Bernoulli(0.3) draws: standard deviation 0.0046, so 5 sigma is 0.023
    check(abs(share - p) < 0.023, "share of dropped entries", share, f"{p} +- 0.023")
    dout = rng(8).standard_normal(x.shape)
    dx = dropout_backward(dout, cache)
    check_inverted_dropout("dropout", x, p, out, dout, dx)       # names the usual mistakes
    close("kept entries are x / (1 - p)", out[~dropped], x[~dropped] / (1 - p))
    close("dropout_backward: dx = dout * (the forward's mask) / (1 - p)", dx, np.where(dropped, 0.0, dout / (1 - p)))
    evaluated, cache = dropout_forward(x, p, rng=7, training=False)
    close("in eval mode dropout is the identity", evaluated, x)
    close("... and so is its backward", dropout_backward(dout, cache), dout)


def test_embedding_backward():
    """Task 1.7: the lookup's backward is a scatter-ADD: a repeated id collects every gradient."""
    r = rng(9)
    table = r.standard_normal((7, 3))
    ids = np.array([[1, 4, 1, 6], [4, 4, 0, 2]])                # ids 1 and 4 repeat
    out, cache = embedding_forward(ids, table)
    dout = r.standard_normal(out.shape)
    dtable = embedding_backward(dout, cache)
    numerical = teach.finite_differences(lambda: float((embedding_forward(ids, table)[0] * dout).sum()), table)
    teach.check_gradient("embedding_backward: dtable (ids 1 and 4 repeat)", dtable, numerical)


def _reference_ce(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    nll = logsumexp(logits[keep], axis=1) - logits[keep][np.arange(keep.sum()), targets[keep]]
    return nll.sum() / max(keep.sum(), 1), nll


def test_cross_entropy():
    """Task 1.8: the mean over the rows that are NOT ignored (-100), and its backward."""
    r = rng(10)
    logits = r.standard_normal((6, 5)) * 2
    targets = np.array([1, -100, 4, 0, -100, 2])
    loss, cache = cross_entropy_forward(logits, targets)
    expected, nll = _reference_ce(logits, targets)
    if not np.isclose(float(loss), expected, rtol=1e-10):
        over_all = nll.sum() / len(targets)
        if np.isclose(float(loss), over_all, rtol=1e-10):
            raise CheckFailed(f"cross_entropy_forward: loss {float(loss):.6f} is the sum over the scored rows "
                              f"divided by ALL {len(targets)} rows; the mean is over the {len(nll)} rows whose "
                              f"target is not ignore_index: expected {expected:.6f}")
    check(np.isclose(float(loss), expected, rtol=1e-10), "cross-entropy with 2 of 6 rows ignored",
          float(loss), expected)
    gradient_check("cross_entropy_backward", lambda logits: cross_entropy_forward(logits, targets),
                   cross_entropy_backward, {"logits": logits}, wrt=("logits",))
    dlogits = cross_entropy_backward(1.0, cache)
    close("ignored rows get a zero gradient", np.asarray(dlogits)[targets == -100], np.zeros((2, 5)))
