"""Every operation's backward against finite differences (float64, tiny distinct shapes, random
upstream gradient), plus numerical-stability, float32-vs-float64 and bad-input checks.

Thresholds: 1e-7 for every smooth operation (the field's convention; errors here come out near
1e-9 or below). The attention key bias has an exactly zero true gradient (softmax is invariant to
adding the same number to every score of a query row, and k-bias adds q.b to all of them), so its
check uses the noise floor explained in bertnp.gradcheck: entries with |a| + |n| below 1e-3 are
measured against 1e-3, so the threshold holds them to |a - n| <= 1e-7 x 1e-3 = 1e-10, ten times
the order-2 stencil's rounding noise (~1e-11). No entry is forgiven."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from bertnp.gradcheck import check_layer, numerical_gradient, rel_error
from conftest import dev, host
from bertnp.ops import (attention_backward, attention_forward, cross_entropy_backward,
                        cross_entropy_forward, dropout_backward, dropout_forward, embedding_backward,
                        embedding_forward, gelu_backward, gelu_forward, layernorm_backward,
                        layernorm_forward, linear_backward, linear_forward, relu_backward,
                        relu_forward, softmax_backward, softmax_forward, tanh_backward, tanh_forward)
from bertnp.ops.linear import linear_rows_forward

SMOOTH = 1e-7
NEG = np.finfo(np.float64).min


# ----------------------------------------------------------------------------- gradient checks

def test_linear_gradcheck(rng):
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    errors = check_layer(linear_forward, linear_backward, dict(x=x, weight=w, bias=b),
                         wrt=("x", "weight", "bias"))
    assert max(errors.values()) <= SMOOTH, errors


def test_linear_without_bias(rng):
    x, w = rng.standard_normal((3, 5)), rng.standard_normal((4, 5))
    errors = check_layer(linear_forward, linear_backward, dict(x=x, weight=w, bias=None),
                         wrt=("x", "weight"))
    assert max(errors.values()) <= SMOOTH, errors
    assert linear_backward(np.ones((3, 4)), linear_forward(x, w)[1])[2] is None


def test_linear_rows_gradcheck_and_zero_elsewhere(rng):
    """The Linear at some rows of x only (the last layer of a pretraining step away from the scored
    rows): its backward, through linear_backward, against finite differences; at the selected rows
    the whole layer's numbers, 0 elsewhere, and dx 0 at the rows that were not used."""
    x, w, b = rng.standard_normal((2, 4, 5)), rng.standard_normal((3, 5)), rng.standard_normal(3)
    rows = np.array([0, 3, 5, 6])
    errors = check_layer(linear_rows_forward, linear_backward, dict(x=x, weight=w, bias=b),
                         wrt=("x", "weight", "bias"), rows=rows)
    assert max(errors.values()) <= SMOOTH, errors
    out, cache = linear_rows_forward(dev(x), dev(w), dev(b), rows)
    assert out.shape == (2, 4, 3)
    whole = host(linear_forward(dev(x), dev(w), dev(b))[0]).reshape(8, 3)
    others = np.setdiff1d(np.arange(8), rows)
    np.testing.assert_allclose(host(out).reshape(8, 3)[rows], whole[rows], rtol=1e-13, atol=0)
    assert (host(out).reshape(8, 3)[others] == 0).all()
    dx, dw, db = linear_backward(dev(rng.standard_normal((2, 4, 3))), cache)
    assert dx.shape == x.shape and (host(dx).reshape(8, 5)[others] == 0).all()


@pytest.mark.parametrize("rows", [np.array([[0, 1]]), np.array([0.0, 1.0]), np.array([True, False]),
                                  np.array([2, 1]), np.array([1, 1]), np.array([0, 8]), np.array([-1, 2])],
                         ids=["2-D", "float", "bool", "unsorted", "repeated", "past-the-end", "negative"])
def test_linear_rows_refuses_bad_rows(rng, rows):
    x, w = dev(rng.standard_normal((2, 4, 5))), dev(rng.standard_normal((3, 5)))
    with pytest.raises(ValueError, match="^rows must be"):
        linear_rows_forward(x, w, None, rows)


def test_embedding_gradcheck_with_repeated_ids(rng):
    ids = np.array([[1, 4, 1], [0, 4, 4]])          # repeated ids must accumulate
    table = rng.standard_normal((6, 3))
    errors = check_layer(embedding_forward, embedding_backward, dict(table=table),
                         wrt=("table",), ids=ids)
    assert errors["table"] <= SMOOTH
    dout = dev(np.ones((2, 3, 3)))
    dtable = host(embedding_backward(dout, embedding_forward(dev(ids), dev(table))[1]))
    np.testing.assert_array_equal(dtable[:, 0], [1, 2, 0, 0, 3, 0])   # counts of each id


def test_embedding_padding_idx_gets_no_gradient(rng):
    ids = np.array([[0, 2, 0]])
    _, cache = embedding_forward(dev(ids), dev(rng.standard_normal((3, 2))), padding_idx=0)
    dtable = host(embedding_backward(dev(np.ones((1, 3, 2))), cache))
    np.testing.assert_array_equal(dtable[0], 0.0)
    np.testing.assert_array_equal(dtable[2], 1.0)


def test_layernorm_gradcheck(rng):
    x = rng.standard_normal((2, 3, 7)) * 3 + 1
    gamma, beta = rng.standard_normal(7), rng.standard_normal(7)
    errors = check_layer(layernorm_forward, layernorm_backward, dict(x=x, gamma=gamma, beta=beta),
                         wrt=("x", "gamma", "beta"), eps=1e-5)
    assert max(errors.values()) <= SMOOTH, errors


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_gradcheck(rng, approximate):
    x = rng.standard_normal((3, 4)) * 2
    errors = check_layer(gelu_forward, gelu_backward, dict(x=x), wrt=("x",), approximate=approximate)
    assert errors["x"] <= SMOOTH


def test_tanh_gradcheck(rng):
    errors = check_layer(tanh_forward, tanh_backward, dict(x=rng.standard_normal((3, 5))), wrt=("x",))
    assert errors["x"] <= SMOOTH


def test_relu_gradcheck(rng):
    x = rng.standard_normal((4, 5))
    x[np.abs(x) < 0.01] = 0.5                       # stay away from the kink at 0
    errors = check_layer(relu_forward, relu_backward, dict(x=x), wrt=("x",))
    assert errors["x"] <= SMOOTH


def test_softmax_gradcheck_with_mask(rng):
    scores = rng.standard_normal((2, 3, 4, 5))
    mask = np.zeros((2, 1, 1, 5))
    mask[1, ..., 3:] = NEG                          # padding keys of the second sequence
    errors = check_layer(softmax_forward, softmax_backward, dict(scores=scores), wrt=("scores",),
                         additive_mask=mask)
    assert errors["scores"] <= SMOOTH


def test_dropout_gradcheck_with_seeded_mask(rng):
    x = rng.standard_normal((3, 4, 5))
    errors = check_layer(dropout_forward, dropout_backward, dict(x=x), wrt=("x",), p=0.3, rng=7)
    assert errors["x"] <= SMOOTH


def _on_device(arguments: dict) -> dict:
    """The host arrays among keyword arguments moved to the test backend (numbers stay as they are)."""
    return {name: dev(a) if isinstance(a, np.ndarray) else a for name, a in arguments.items()}


def _attention_inputs(rng, channels=6):
    inputs = dict(x=rng.standard_normal((2, 5, channels)))
    for proj in ("query", "key", "value"):
        inputs[proj + "_weight"] = rng.standard_normal((channels, channels)) * 0.5
        inputs[proj + "_bias"] = rng.standard_normal(channels)
    return inputs


ATTN_GRADS = ("x", "query_weight", "query_bias", "key_weight", "key_bias", "value_weight", "value_bias")


@pytest.mark.parametrize("training", [False, True])
def test_attention_gradcheck(rng, training):
    inputs = _attention_inputs(rng)
    mask = np.zeros((2, 1, 1, 5))
    mask[1, ..., 3:] = NEG
    errors = check_layer(attention_forward, attention_backward, inputs, wrt=ATTN_GRADS,
                         num_heads=2, additive_mask=mask, dropout_p=0.2, rng=3, training=training,
                         floor=1e-3)
    assert max(errors.values()) <= SMOOTH, errors


def test_attention_key_bias_gradient_is_exactly_zero(rng):
    """Why the key bias needs the noise floor above: its true gradient is 0."""
    out, cache = attention_forward(**_on_device(_attention_inputs(rng)), num_heads=3)
    grads = attention_backward(dev(rng.standard_normal(out.shape)), cache)
    assert np.abs(host(grads.key_bias)).max() < 1e-12


def test_cross_entropy_gradcheck_with_ignored_rows(rng):
    logits = rng.standard_normal((6, 7))
    targets = np.array([1, -100, 3, 0, 6, -100])
    errors = check_layer(cross_entropy_forward, cross_entropy_backward, dict(logits=logits),
                         wrt=("logits",), targets=targets)
    assert errors["logits"] <= SMOOTH


def test_fourth_order_stencil_agrees(rng):
    x = rng.standard_normal(5)
    g2 = numerical_gradient(lambda: float(np.sin(x).sum()), x, h=1e-5)
    g4 = numerical_gradient(lambda: float(np.sin(x).sum()), x, h=1e-3, order=4)
    assert rel_error(g2, np.cos(x)) < 1e-9 and rel_error(g4, np.cos(x)) < 1e-11


def test_rel_error_floor_bounds_tiny_entries_absolutely():
    """Below the floor an entry is measured against the floor: held to |a - n| <= t * floor, never
    forgiven. A gradient of the wrong sign fails at any size the threshold can see."""
    assert rel_error([1e-7, 1.0], [-1e-7, 1.0]) == pytest.approx(1.0)
    assert rel_error([1e-7, 1.0], [-1e-7, 1.0], floor=1e-6) == pytest.approx(0.2)      # 2e-7 / 1e-6
    assert rel_error([9e-6], [-9e-6], floor=1e-5) == pytest.approx(1.0)                 # the audit's case
    assert rel_error([4e-7], [-4e-7], floor=1e-5) == pytest.approx(0.08)                # far below the floor
    assert rel_error([3e-13], [-2e-13], floor=1e-5) == pytest.approx(5e-8)              # noise: within 1e-12
    assert rel_error([1e-3], [2e-3], floor=1e-9) > 0.3                                  # above it: relative
    assert rel_error([0.5], [0.5 + 1e-9], floor=1e-5) == pytest.approx(1e-9)
    with pytest.raises(ValueError, match="floor"):
        rel_error([1.0], [1.0], floor=-1)


def test_numerical_gradient_perturbs_non_contiguous_arrays(rng):
    """A transposed view cannot be flattened without a copy: the referee must still perturb x itself
    (perturbing a copy would leave f unchanged and report a zero gradient)."""
    x = rng.standard_normal((3, 4)).T                # (4, 3), Fortran-ordered view
    w = rng.standard_normal((4, 3))
    numeric = numerical_gradient(lambda: float((np.sin(x) * w).sum()), x)
    assert rel_error(numeric, np.cos(x) * w) < 1e-8


def test_gradcheck_catches_a_wrong_backward(rng):
    """The referee must fail a wrong answer: a LayerNorm backward that forgets the mean terms."""
    def wrong_backward(dout, cache):
        dx, dgamma, dbeta = layernorm_backward(dout, cache)
        return dout * cache.gamma * cache.rstd, dgamma, dbeta
    x = rng.standard_normal((3, 5))
    errors = check_layer(layernorm_forward, wrong_backward,
                         dict(x=x, gamma=rng.standard_normal(5), beta=rng.standard_normal(5)),
                         wrt=("x",), eps=1e-5)
    assert errors["x"] > 1e-2


# ----------------------------------------------------------------------------- properties over random shapes

shape_strategy = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
# Random shapes and values reach entries whose true gradient is tiny (a GELU deep in its tail, a
# saturated softmax, LayerNorm over 3 channels, a masked position's query, the attention key bias
# whose gradient is exactly 0): there the order-2 stencil's rounding noise (~1e-11) dominates. The
# property tests use the order-4 stencil with h = 1e-3 (noise ~1e-13 to 1e-12 for these losses of
# order 1 to 10, see bertnp.gradcheck). Entries with |a| + |n| below the floor, 1e-4, are measured
# against it: held to an absolute |a - n| <= 1e-7 x 1e-4 = 1e-11, about ten times that noise (an
# attention key bias showed 1.3e-12, too much for a floor of 1e-5; with 1e-4, hypothesis seeds
# 1-60 all pass); every larger entry to the relative threshold 1e-7.
PROPERTY = dict(order=4, h=1e-3, floor=1e-4)


@settings(max_examples=15, deadline=None)
@given(lead=shape_strategy, n_in=st.integers(1, 5), n_out=st.integers(1, 5), seed=st.integers(0, 99))
def test_linear_property(lead, n_in, n_out, seed):
    r = np.random.default_rng(seed)
    inputs = dict(x=r.standard_normal(lead + (n_in,)), weight=r.standard_normal((n_out, n_in)),
                  bias=r.standard_normal(n_out))
    errors = check_layer(linear_forward, linear_backward, inputs, wrt=("x", "weight", "bias"), **PROPERTY)
    assert max(errors.values()) <= SMOOTH


@settings(max_examples=15, deadline=None)
@given(lead=shape_strategy, channels=st.integers(3, 6), seed=st.integers(0, 99))
def test_layernorm_property(lead, channels, seed):
    # (C = 2 is degenerate: xhat is exactly +-1 whatever x is, so dL/dx is ~0 and only noise remains)
    r = np.random.default_rng(seed)
    inputs = dict(x=r.standard_normal(lead + (channels,)) * 2, gamma=r.standard_normal(channels),
                  beta=r.standard_normal(channels))
    # a row whose entries are nearly equal (std ~ 0.01, as 3 random values can be) has a huge rstd
    # and derivatives that change on the scale of h = 1e-3: the stencil, not the backward, is off
    assume(inputs["x"].std(axis=-1).min() > 0.1)
    out, _ = layernorm_forward(**_on_device(inputs), eps=1e-5)
    normalised = (host(out) - inputs["beta"]) / inputs["gamma"]
    np.testing.assert_allclose(normalised.mean(-1), 0, atol=1e-8)
    errors = check_layer(layernorm_forward, layernorm_backward, inputs, wrt=("x", "gamma", "beta"), eps=1e-5, **PROPERTY)
    assert max(errors.values()) <= SMOOTH


@settings(max_examples=15, deadline=None)
@given(lead=shape_strategy, k=st.integers(1, 6), seed=st.integers(0, 99))
def test_softmax_property(lead, k, seed):
    r = np.random.default_rng(seed)
    scores = r.standard_normal(lead + (k,)) * 1.5   # moderate: no saturated (~0-gradient) rows
    probs, _ = softmax_forward(dev(scores))
    np.testing.assert_allclose(host(probs).sum(-1), 1.0, rtol=1e-12)
    errors = check_layer(softmax_forward, softmax_backward, dict(scores=scores), wrt=("scores",), **PROPERTY)
    assert errors["scores"] <= SMOOTH


@settings(max_examples=15, deadline=None)
@given(shape=shape_strategy, seed=st.integers(0, 99), approximate=st.sampled_from(["none", "tanh"]))
def test_gelu_property(shape, seed, approximate):
    x = np.random.default_rng(seed).standard_normal(shape) * 1.5   # moderate: not deep in the tail
    errors = check_layer(gelu_forward, gelu_backward, dict(x=x), wrt=("x",), approximate=approximate, **PROPERTY)
    assert errors["x"] <= SMOOTH


@settings(max_examples=10, deadline=None)
@given(shape=shape_strategy, p=st.floats(0.05, 0.9), seed=st.integers(0, 99))
def test_dropout_property(shape, p, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    out1, out2 = (host(dropout_forward(dev(x), p, rng=seed)[0]) for _ in range(2))
    np.testing.assert_array_equal(out1, out2)                     # same seed, same mask
    kept = out1 != 0
    np.testing.assert_allclose(out1[kept], x[kept] / (1 - p))     # survivors scaled by 1/(1-p)


@settings(max_examples=15, deadline=None)
@given(lead=shape_strategy, vocab=st.integers(1, 5), dim=st.integers(1, 4), seed=st.integers(0, 99))
def test_embedding_property(lead, vocab, dim, seed):
    r = np.random.default_rng(seed)
    ids = r.integers(0, vocab, lead)                      # small vocabularies: ids repeat often
    table = r.standard_normal((vocab, dim))
    out, _ = embedding_forward(dev(ids), dev(table))
    assert out.shape == lead + (dim,)
    errors = check_layer(embedding_forward, embedding_backward, dict(table=table), wrt=("table",),
                         ids=ids, **PROPERTY)
    assert errors["table"] <= SMOOTH


@settings(max_examples=15, deadline=None)
@given(shape=shape_strategy, seed=st.integers(0, 99), op=st.sampled_from(["tanh", "relu"]))
def test_tanh_relu_property(shape, seed, op):
    x = np.random.default_rng(seed).standard_normal(shape) * 1.5
    x[np.abs(x) < 0.01] = 0.5                             # ReLU: stay 2h away from the kink at 0
    forward, backward = (tanh_forward, tanh_backward) if op == "tanh" else (relu_forward, relu_backward)
    errors = check_layer(forward, backward, dict(x=x), wrt=("x",), **PROPERTY)
    assert errors["x"] <= SMOOTH


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(1, 6), seed=st.integers(0, 99))
def test_cross_entropy_property(n, k, seed):
    r = np.random.default_rng(seed)
    logits = r.standard_normal((n, k)) * 2
    targets = np.where(r.random(n) < 0.3, -100, r.integers(0, k, n))   # some (maybe all) rows ignored
    loss, _ = cross_entropy_forward(dev(logits), dev(targets))
    counted = targets != -100
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -logp[counted, targets[counted]].mean() if counted.any() else 0.0
    assert float(loss) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    errors = check_layer(cross_entropy_forward, cross_entropy_backward, dict(logits=logits),
                         wrt=("logits",), targets=targets, **PROPERTY)
    assert errors["logits"] <= SMOOTH


@settings(max_examples=8, deadline=None)
@given(batch=st.integers(1, 2), seq_len=st.integers(1, 4), num_heads=st.integers(1, 3),
       head_size=st.integers(1, 3), seed=st.integers(0, 99))
def test_attention_property(batch, seq_len, num_heads, head_size, seed):
    """Random (B, T, nh, hs), a random padding mask, dropout on.

    Each sequence keeps at least one real key: in a fully masked row the scores vanish into the
    mask by rounding (s + finfo.min == finfo.min), so finite differences see no dependence on Q
    and K while the analytic backward, like torch's autograd, still passes the softmax gradient to
    them. That row is checked for finite output elsewhere (the fully-masked-row tests)."""
    r = np.random.default_rng(seed)
    channels = num_heads * head_size
    inputs = _attention_inputs(r, channels)
    inputs["x"] = r.standard_normal((batch, seq_len, channels))
    for proj in ("query", "key"):     # scores of order 1: a saturated softmax (p ~ 1 - 1e-6) has
        inputs[proj + "_weight"] /= math.sqrt(channels)    # high derivatives that the stencil
    mask = np.where(r.random((batch, 1, 1, seq_len)) < 0.3, NEG, 0.0)   # cannot follow (~1e-5)
    mask[..., int(r.integers(0, seq_len))] = 0.0                  # one real key per sequence at least
    errors = check_layer(attention_forward, attention_backward, inputs, wrt=ATTN_GRADS,
                         num_heads=num_heads, additive_mask=mask, dropout_p=0.2, rng=seed,
                         training=True, **PROPERTY)
    assert max(errors.values()) <= SMOOTH, errors


# ----------------------------------------------------------------------------- values

def test_gelu_values_match_definitions():
    x = np.linspace(-5, 5, 41)
    exact = host(gelu_forward(dev(x), "none")[0])
    cdf = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(exact, x * cdf, rtol=1e-14, atol=1e-16)
    approx = host(gelu_forward(dev(x), "tanh")[0])
    assert np.abs(approx - exact).max() < 5e-4                    # the two forms differ by <= ~5e-4


def test_dropout_rate_and_mean():
    x = dev(np.ones((200, 500)))
    out = host(dropout_forward(x, 0.1, rng=0)[0])
    assert abs((out == 0).mean() - 0.1) < 0.005                   # 100k draws: sd 0.001
    assert abs(out.mean() - 1.0) < 0.01                           # inverted dropout keeps the mean
    same, cache = dropout_forward(x, 0.1, training=False)
    assert same is x and cache.mask is None


def test_cross_entropy_value_matches_definition(rng):
    logits, targets = rng.standard_normal((4, 5)), np.array([0, -100, 4, 2])
    loss, _ = cross_entropy_forward(dev(logits), dev(targets))
    rows = [0, 2, 3]
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert float(loss) == pytest.approx(-np.mean(logp[rows, targets[rows]]), rel=1e-14)


# ----------------------------------------------------------------------------- numerical stability

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_extreme_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [0.0, 0.0, 0.0]], dtype=dtype)
    targets = np.array([0, 0, 2])
    loss, cache = cross_entropy_forward(dev(logits), dev(targets))
    dlogits = host(cross_entropy_backward(dtype(1.0), cache))
    assert np.isfinite(host(loss)) and np.isfinite(dlogits).all()
    assert float(loss) == pytest.approx((0.0 + 2e4 + math.log(3)) / 3, rel=1e-6)
    # (softmax - onehot) / 3: row 0 is already right, row 1 puts all its mass on the wrong class
    expected = np.array([[0, 0, 0], [-1, 0, 1], [1 / 3, 1 / 3, -2 / 3]]) / 3
    np.testing.assert_allclose(dlogits, expected, rtol=1e-6, atol=1e-7)


def test_ignored_rows_cannot_change_the_loss(rng):
    """d2l's bug: averaging before masking lets padded / -100 slots count. Here the logits of
    ignored rows may be anything (even +-1e4): the loss does not move, their gradient is exactly 0,
    and the mean divides by the counted rows only."""
    logits = rng.standard_normal((5, 6))
    targets = np.array([2, -100, 0, -100, 5])
    loss, _ = cross_entropy_forward(dev(logits), dev(targets))
    wild = logits.copy()
    wild[[1, 3]] = rng.standard_normal((2, 6)) * 1e4
    loss_wild, cache = cross_entropy_forward(dev(wild), dev(targets))
    assert float(loss_wild) == float(loss)
    dlogits = host(cross_entropy_backward(1.0, cache))
    assert not dlogits[[1, 3]].any()
    counted, _ = cross_entropy_forward(dev(logits[[0, 2, 4]]), dev(targets[[0, 2, 4]]))
    assert float(loss) == pytest.approx(float(counted), rel=1e-15)


def test_cross_entropy_all_ignored_is_zero_not_nan(rng):
    logits = rng.standard_normal((3, 4))
    loss, cache = cross_entropy_forward(dev(logits), dev(np.full(3, -100)))
    assert float(loss) == 0.0
    np.testing.assert_array_equal(host(cross_entropy_backward(1.0, cache)), 0.0)


def test_cross_entropy_empty_batch():
    loss, cache = cross_entropy_forward(dev(np.zeros((0, 4))), dev(np.zeros(0, dtype=np.int64)))
    assert float(loss) == 0.0 and cross_entropy_backward(1.0, cache).shape == (0, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_extreme_and_fully_masked_rows(dtype):
    scores = np.array([[[1e4, -1e4, 0.0, 5.0]], [[3.0, 1.0, 2.0, 0.0]]], dtype=dtype)   # (2, 1, 4)
    mask = np.zeros((2, 1, 4), dtype=dtype)
    mask[1] = np.finfo(dtype).min                     # every key of row 1 masked
    probs, cache = softmax_forward(dev(scores), dev(mask))
    assert np.isfinite(host(probs)).all()
    np.testing.assert_allclose(host(probs)[0, 0], [1, 0, 0, 0], atol=1e-30)
    np.testing.assert_allclose(host(probs)[1, 0], 0.25, rtol=1e-6)   # all masked: uniform, as HF
    assert np.isfinite(host(softmax_backward(dev(np.ones(probs.shape, dtype)), cache))).all()
    inf_mask = np.where(mask < 0, -np.inf, 0).astype(dtype)
    probs_inf, _ = softmax_forward(dev(scores), dev(inf_mask))
    assert np.isfinite(host(probs_inf)).all()                  # an infinite mask gives zeros, not NaN


def test_attention_fully_masked_sequence_has_no_nan(rng):
    inputs = _attention_inputs(rng)
    mask = np.full((2, 1, 1, 5), NEG)
    out, cache = attention_forward(**_on_device(inputs), num_heads=2, additive_mask=dev(mask))
    grads = attention_backward(dev(np.ones(out.shape)), cache)
    assert np.isfinite(host(out)).all() and all(np.isfinite(host(g)).all() for g in grads)


# ----------------------------------------------------------------------------- float32 vs float64

def test_float32_forward_matches_float64(rng):
    x = rng.standard_normal((2, 5, 6))
    inputs = _attention_inputs(rng)
    mask = np.zeros((2, 1, 1, 5))
    mask[0, ..., 4:] = NEG
    cases = [
        (linear_forward, dict(x=x, weight=rng.standard_normal((3, 6)), bias=rng.standard_normal(3)), {}),
        (layernorm_forward, dict(x=x, gamma=rng.standard_normal(6), beta=rng.standard_normal(6)), dict(eps=1e-12)),
        (gelu_forward, dict(x=x), {}),
        (gelu_forward, dict(x=x), dict(approximate="tanh")),
        (tanh_forward, dict(x=x), {}),
        (softmax_forward, dict(scores=x), {}),
        (attention_forward, inputs, dict(num_heads=3, additive_mask=mask)),
    ]
    ids = rng.integers(0, 7, (2, 5))
    cases += [
        (relu_forward, dict(x=x), {}),
        (embedding_forward, dict(table=rng.standard_normal((7, 6))), dict(ids=ids)),
        (cross_entropy_forward, dict(logits=rng.standard_normal((6, 9)) * 3),
         dict(targets=np.array([0, 8, -100, 4, 4, 2]))),
    ]
    for forward, args, params in cases:
        out64, _ = forward(**_on_device(args), **_on_device(params))
        p32 = dict(params)
        if "additive_mask" in p32:
            p32["additive_mask"] = np.where(mask < 0, np.finfo(np.float32).min, 0).astype(np.float32)
        out32, _ = forward(**{k: dev(v.astype(np.float32)) for k, v in args.items()}, **_on_device(p32))
        assert out32.dtype == np.float32, forward.__name__
        np.testing.assert_allclose(host(out32), host(out64), rtol=2e-5, atol=2e-6, err_msg=forward.__name__)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_errors_name_the_argument(rng):
    x = rng.standard_normal((2, 5))
    with pytest.raises(ValueError, match="x has shape"):
        linear_forward(x, rng.standard_normal((3, 4)))
    with pytest.raises(ValueError, match="bias"):
        linear_forward(x, rng.standard_normal((3, 5)), rng.standard_normal(4))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        linear_forward(np.ones((2, 5), dtype=np.int64), rng.standard_normal((3, 5)))
    with pytest.raises(TypeError, match="share one floating dtype"):
        linear_forward(x.astype(np.float32), rng.standard_normal((3, 5)))
    with pytest.raises(ValueError, match="gamma has shape"):
        layernorm_forward(x, np.ones(4), np.zeros(5))
    with pytest.raises(TypeError, match="ids must be an integer array"):
        embedding_forward(np.array([0.0, 1.0]), rng.standard_normal((3, 2)))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        embedding_forward(np.array([0, 3]), rng.standard_normal((3, 2)))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        embedding_forward(np.array([-1, 2]), rng.standard_normal((3, 2)))
    with pytest.raises(ValueError, match="targets must be in"):
        cross_entropy_forward(x, np.array([0, 7]))
    with pytest.raises(TypeError, match="targets must be an integer array"):
        cross_entropy_forward(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="targets has shape"):
        cross_entropy_forward(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="p must be in"):
        dropout_forward(x, 1.0, rng=0)
    with pytest.raises(ValueError, match="p must be in"):
        dropout_forward(x, -0.1, rng=0)
    with pytest.raises(ValueError, match="additive_mask"):
        softmax_forward(x, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="num_heads"):
        attention_forward(**_attention_inputs(rng), num_heads=4)
    with pytest.raises(ValueError, match="approximate"):
        gelu_forward(x, "fast")
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        layernorm_forward(np.ones((2, 5), dtype=np.int32), np.ones(5), np.zeros(5))
    with pytest.raises(TypeError, match="scores must be a floating-point array"):
        softmax_forward(np.ones((2, 5), dtype=np.int64))
    with pytest.raises(TypeError, match="logits must be a floating-point array"):
        cross_entropy_forward(np.ones((2, 5), dtype=np.int64), np.array([0, 1]))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        gelu_forward(np.arange(3))
    with pytest.raises(ValueError, match="table must be 2-D"):
        embedding_forward(np.array([0, 1]), rng.standard_normal(3))
    bad = _attention_inputs(rng)
    bad["key_weight"] = rng.standard_normal((6, 5))
    with pytest.raises(ValueError, match="key_weight has shape"):
        attention_forward(**bad, num_heads=2)
    bad = _attention_inputs(rng)
    bad["value_bias"] = rng.standard_normal(4)
    with pytest.raises(ValueError, match="value_bias has shape"):
        attention_forward(**bad, num_heads=2)
    bad = _attention_inputs(rng)
    bad["x"] = bad["x"][0]
    with pytest.raises(ValueError, match="x must be 3-D"):
        attention_forward(**bad, num_heads=2)
    with pytest.raises(TypeError, match="float64"):
        check_layer(gelu_forward, gelu_backward, dict(x=x.astype(np.float32)), wrt=("x",))
