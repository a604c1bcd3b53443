"""Assignment 5 (hidden): AdamW against an independent reference, schedule edges, clipping on the
device path, train_step with the real optimizer."""
import math

import numpy as np

from referee import accumulation_batch, check, check_accumulation, close, tiny_batch, tiny_model

import bertnp as bn
from bertnp.optim import clip_grad_norm, linear_warmup_decay


def _reference_adamw(params, grads_per_step, lr, betas, eps, wd):
    """torch.optim.AdamW, written out."""
    b1, b2 = betas
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        for k in p:
            decay = 0.0 if (k.endswith(".bias") or "LayerNorm" in k) else wd
            p[k] = p[k] * (1 - lr * decay)
            m[k] = b1 * m[k] + (1 - b1) * grads[k]
            v2[k] = b2 * v2[k] + (1 - b2) * grads[k] ** 2
            p[k] = p[k] - lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v2[k] / (1 - b2 ** t)) + eps)
    return p


def test_adamw_hidden():
    r = np.random.default_rng(5)
    params = {"enc.query.weight": r.standard_normal((4, 3)), "enc.query.bias": r.standard_normal(4),
              "emb.LayerNorm.bias": r.standard_normal(3), "emb.LayerNorm.weight": 1 + r.standard_normal(3)}
    steps = [{k: r.standard_normal(v.shape) for k, v in params.items()} for _ in range(5)]
    expected = _reference_adamw(params, steps, 3e-2, (0.8, 0.99), 1e-8, 0.05)
    live = {k: v.copy() for k, v in params.items()}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    opt = bn.AdamW(live, grads=grads, lr=3e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.05)
    for g in steps:
        for k in grads:
            grads[k][...] = g[k]
        opt.step()
    for k in params:
        close(f"{k} after 5 AdamW steps against torch's update", live[k], expected[k], rtol=1e-10, atol=1e-13)


def test_warmup_decay_hidden():
    check(linear_warmup_decay(0, 0, 10) == 1.0, "no warmup: the first multiplier is 1", linear_warmup_decay(0, 0, 10), 1.0)
    check(math.isclose(linear_warmup_decay(3, 4, 4), 0.75), "warmup to the last step", linear_warmup_decay(3, 4, 4), 0.75)
    check(linear_warmup_decay(4, 4, 4) == 0.0, "the multiplier at total_steps", linear_warmup_decay(4, 4, 4), 0.0)


def test_clip_grad_norm_hidden():
    r = np.random.default_rng(9)
    grads = {"x.weight": r.standard_normal((5, 5)), "y.bias": r.standard_normal(5) * 10}
    before = {k: v.copy() for k, v in grads.items()}
    total = math.sqrt(sum(float((v * v).sum()) for v in before.values()))
    norm = clip_grad_norm(grads, 2.0, sync=False)
    close("clip_grad_norm(sync=False) returns the global norm", float(norm), total, rtol=1e-12)
    for k in grads:
        close(f"{k} clipped on the device path", grads[k], before[k] * (2.0 / (total + 1e-6)), rtol=1e-12)


def test_train_step_hidden():
    from bertnp.course.training import train_step
    batch = tiny_batch()
    mine, reference = tiny_model(22, layers=1), tiny_model(22, layers=1)
    opt_mine = bn.AdamW(mine, lr=1e-2)
    opt_ref = bn.AdamW(reference, lr=1e-2)
    for _ in range(3):
        train_step(mine, opt_mine, batch, max_grad_norm=0.5)
        reference.zero_grad()
        reference(**batch)
        reference.backward()
        clip_grad_norm(reference.grads, 0.5)
        opt_ref.step()
    for k, v in reference.parameters().items():
        close(f"{k} after 3 train_steps against zero_grad/forward/backward/clip/step", mine.parameters()[k], v,
              rtol=1e-10, atol=1e-13)


def test_grad_accumulation_hidden():
    """Other cuttings: a micro-batch without a labelled token, one sequence each, a 2-layer model."""
    model = tiny_model(32, layers=2)
    batch = accumulation_batch(5)
    for sizes in ([3, 1, 1], [1, 1, 1, 1, 1], [4, 1]):
        check_accumulation(model, batch, sizes, rtol=1e-12)


def test_unigram_baseline_hidden():
    """A larger random case against a direct count; a token never seen in training; several batches."""
    from bertnp.demo import unigram_cross_entropy
    from bertnp.train import unigram_baseline
    r = np.random.default_rng(12)
    V, specials = 40, [0, 1, 2, 3, 4]
    documents = [[list(r.integers(1, V - 1, size=r.integers(3, 9))) for _ in range(r.integers(1, 4))] for _ in range(30)]
    documents[0].append([17] * 40)                             # one clear favourite (no tie)
    documents[1].append([1] * 60)                              # [UNK] more frequent still: a special
    batches = []
    for _ in range(3):
        labels = np.where(r.random((4, 10)) < 0.3, r.integers(5, V, size=(4, 10)), -100)
        labels[0, 0] = V - 1                                   # never in the training text
        labels[1, 1] = 17
        batches.append({"input_ids": r.integers(0, V, size=(4, 10)), "labels": labels})
    counts = np.zeros(V)
    for doc in documents:
        for sentence in doc:
            np.add.at(counts, np.asarray(sentence), 1)
    counts[specials] = 0
    targets = np.concatenate([b["labels"][b["labels"] != -100] for b in batches])
    top, accuracy = unigram_baseline(documents, batches, specials)
    check(top == 17, "the most frequent training token", top, 17)
    close("the most-frequent-token accuracy", accuracy, float(np.mean(targets == 17)), rtol=1e-12)
    smoothed = counts + 1
    smoothed[specials] = 0
    expected = float(-np.log(smoothed[targets] / smoothed.sum()).mean())
    close("the unigram cross-entropy (add-one, specials excluded)", unigram_cross_entropy(documents, batches, V, specials),
          expected, rtol=1e-12)
