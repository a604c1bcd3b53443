"""Assignment 1 (hidden): other shapes and seeds, the forward passes against independent
references (so a forward changed to fit a wrong backward does not pass), and the edge cases."""
import numpy as np
import pytest
from scipy.special import erf, logsumexp

from referee import CheckFailed, check, check_inverted_dropout, close, gradient_check, rng, teach

import bertnp as bn
from bertnp.ops.embedding import embedding_backward, embedding_forward
from bertnp.ops.layernorm import layernorm_backward, layernorm_forward
from bertnp.ops.linear import linear_backward, linear_forward
from bertnp.ops.losses import cross_entropy_backward, cross_entropy_forward
from bertnp.ops.softmax import softmax_backward, softmax_forward
from bertnp.ops import activations
from bertnp.ops.dropout import dropout_backward, dropout_forward


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5)])
def test_numerical_gradient_hidden(shape):
    from bertnp.gradcheck import check_model, numerical_gradient
    r = rng(11)
    x = r.standard_normal(shape)
    a = r.standard_normal(shape)
    grad = numerical_gradient(lambda: float(np.exp(0.3 * x).sum() + (a * x).sum()), x)
    close("numerical gradient of sum(exp(0.3 x)) + sum(a x)", grad, 0.3 * np.exp(0.3 * x) + a, rtol=1e-7, atol=1e-8)
    xt = r.standard_normal(shape[::-1]).T                            # a transposed view: not contiguous
    grad_t = numerical_gradient(lambda: float((xt * xt).sum()), xt)
    close("numerical gradient of sum(x^2) for a transposed (non-contiguous) x", grad_t, 2 * xt, rtol=1e-7, atol=1e-8)
    # check_model's own differences, on a tiny float64 model whose backward is right
    cfg = bn.BertConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=8, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = bn.BertForPreTraining(cfg, seed=0, dtype="float64").eval()
    batch = dict(input_ids=np.array([[2, 5, 7, 3]]), labels=np.array([[-100, 5, -100, 3]]),
                 next_sentence_label=np.array([1]))
    errors = check_model(model, batch, names=["cls.seq_relationship.weight", "bert.pooler.dense.bias"],
                         max_entries=4)
    worst = max(errors.values())
    check(worst < 1e-6, "check_model's relative errors on a model with a correct backward", f"{worst:.2e}", "< 1e-6")


@pytest.mark.parametrize("seed", [0, 1])
def test_linear_backward_hidden(seed):
    r = rng(20 + seed)
    inputs = dict(x=r.standard_normal((3, 2)), weight=r.standard_normal((4, 2)), bias=r.standard_normal(4))
    out, _ = linear_forward(**inputs)
    close("linear_forward against x @ W.T + b", out, inputs["x"] @ inputs["weight"].T + inputs["bias"])
    gradient_check("linear_backward", linear_forward, linear_backward, inputs, wrt=("x", "weight", "bias"), seed=seed)
    # no bias
    gradient_check("linear_backward without bias", lambda x, weight: linear_forward(x, weight, None),
                   lambda d, c: linear_backward(d, c)[:2], dict(x=inputs["x"], weight=inputs["weight"]),
                   wrt=("x", "weight"), seed=seed)


@pytest.mark.parametrize("shape", [(5, 4), (2, 2, 3)])
def test_layernorm_backward_hidden(shape):
    r = rng(30)
    x = r.standard_normal(shape) * 3 - 1
    gamma, beta = r.standard_normal(shape[-1]), r.standard_normal(shape[-1])
    out, _ = layernorm_forward(x, gamma, beta, 1e-5)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    close("layernorm_forward against (x - mean) / sqrt(var + eps) * gamma + beta", out,
          (x - mean) / np.sqrt(var + 1e-5) * gamma + beta)
    gradient_check("layernorm_backward", layernorm_forward, layernorm_backward,
                   dict(x=x, gamma=gamma, beta=beta), wrt=("x", "gamma", "beta"), eps=1e-5, seed=3)


def test_gelu_hidden():
    r = rng(40)
    x = r.standard_normal((4, 6)) * 3
    out, cache = activations.gelu_forward(x.copy(), "none")
    close("gelu_forward (erf form)", out, 0.5 * x * (1 + erf(x / np.sqrt(2))))
    dout = r.standard_normal(x.shape)
    numerical = teach.finite_differences(lambda: float((0.5 * x * (1 + erf(x / np.sqrt(2))) * dout).sum()), x)
    teach.check_gradient("gelu_backward: dx", activations.gelu_backward(dout, cache), numerical)
    out32, _ = activations.gelu_forward(x.astype(np.float32), "none")
    check(out32.dtype == np.float32, "gelu_forward keeps float32", out32.dtype, "float32")


def test_softmax_backward_hidden():
    r = rng(50)
    gradient_check("softmax_backward", lambda scores: softmax_forward(scores), softmax_backward,
                   dict(scores=r.standard_normal((3, 7)) * 3), wrt=("scores",), floor=1e-10)
    probs, _ = softmax_forward(r.standard_normal((2, 4)))
    close("softmax rows sum to 1", probs.sum(-1), np.ones(2))


def test_dropout_hidden():
    x = rng(60).standard_normal((100, 100))
    for p in (0.1, 0.5):
        out, cache = dropout_forward(x, p, rng=3, training=True)
        share = (out == 0).mean()
        check(abs(share - p) < 0.025, f"share dropped at p={p}", share, f"{p} +- 0.025")
        again, _ = dropout_forward(x, p, rng=3, training=True)
        close("the same seed gives the same mask", again, out)
        dout = np.ones_like(x)
        dx = dropout_backward(dout, cache)
        check_inverted_dropout("dropout", x, p, out, dout, dx)
        close(f"backward at p={p} reuses the forward's mask", dx, np.where(out == 0, 0.0, 1 / (1 - p)))
    out, _ = dropout_forward(x, 0.0, rng=3, training=True)
    close("p = 0 is the identity", out, x)


def test_embedding_backward_hidden():
    r = rng(70)
    table = r.standard_normal((5, 4))
    ids = np.array([3, 3, 3, 1, 0, 3])                     # id 3 four times
    out, cache = embedding_forward(ids, table)
    close("embedding_forward is a row lookup", out, table[ids])
    dout = r.standard_normal(out.shape)
    dtable = embedding_backward(dout, cache)
    expected = np.zeros_like(table)
    for n, i in enumerate(ids):
        expected[i] += dout[n]
    teach.check_gradient("embedding_backward: dtable (id 3 four times)", dtable, expected)
    # padding_idx: that row gets nothing from the lookup
    out, cache = embedding_forward(ids, table, padding_idx=3)
    dtable = embedding_backward(dout, cache)
    expected[3] = 0.0
    teach.check_gradient("embedding_backward with padding_idx=3 (the padding row gets no gradient)", dtable, expected)
    accumulate = np.ones_like(table)
    _, cache = embedding_forward(ids, table)
    embedding_backward(dout, cache, out=accumulate)
    expected = np.ones_like(table)
    for n, i in enumerate(ids):
        expected[i] += dout[n]
    teach.check_gradient("embedding_backward(out=grad) adds into grad", accumulate, expected)


def test_cross_entropy_hidden():
    r = rng(80)
    logits = r.standard_normal((5, 7)) * 3
    targets = np.array([-100, 6, 0, -100, -100])
    loss, _ = cross_entropy_forward(logits, targets)
    keep = targets != -100
    nll = logsumexp(logits[keep], axis=1) - logits[keep][np.arange(keep.sum()), targets[keep]]
    check(np.isclose(float(loss), nll.mean(), rtol=1e-10), "cross-entropy, 3 of 5 rows ignored",
          float(loss), float(nll.mean()))
    gradient_check("cross_entropy_backward", lambda logits: cross_entropy_forward(logits, targets),
                   cross_entropy_backward, {"logits": logits}, wrt=("logits",), seed=2)
    all_ignored, cache = cross_entropy_forward(logits, np.full(5, -100))
    check(float(all_ignored) == 0.0, "every row ignored: the loss is 0, not NaN", float(all_ignored), 0.0)
    close("... and so is its gradient", cross_entropy_backward(1.0, cache), np.zeros_like(logits))
    big = np.array([[1000.0, 0.0, -1000.0]])
    loss, _ = cross_entropy_forward(big, np.array([2]))
    check(np.isclose(float(loss), 2000.0), "logits of +-1000 do not overflow", float(loss), 2000.0)
