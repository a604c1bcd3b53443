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
# # Lesson 4 — Pretrain a tiny BERT
#
# Everything so far comes together: the operations of lessons 1–2, the data of lesson 3, and
# `bn.AdamW`. BERT is trained on two tasks at once, and the loss is their sum:
#
# $$L = \underbrace{-\frac{1}{N}\sum_{\text{masked } n} \log p_\theta(x_n \mid \tilde x)}_{\text{masked LM}} \;+\; \underbrace{-\frac{1}{B}\sum_{b} \log p_\theta(\text{IsNext}_b \mid \tilde x_b)}_{\text{next-sentence prediction}}$$
#
# In this lesson you will
#
# 1. build a tiny `BertForPreTraining` and predict its loss *before* running it;
# 2. check the gradient of the whole model against finite differences;
# 3. write one training step — and see how a training step is tested, which is harder than it looks;
# 4. make sure the step can overfit a single batch, then train for a short while on the bundled corpus
#    with the library's training loop and watch the loss fall past the "word frequencies" plateau.
#
# **Prerequisites:** lessons 1–3 (gradient checks and the noise floor; attention; the data and its
# labels); what cross-entropy is. AdamW itself is treated in lesson 10: here it is a black box that
# updates the parameters from their gradients.
#
# **Time:** about 60 minutes, of which 1–2 minutes of computing (less in fast mode).
#
# First, one setting. The matrices of a tiny model are small, and for small matrices a single BLAS
# thread is about as fast as several — while several threads slow down *many* times over when another
# program (or the test suite's second worker) is busy on the other cores. So this notebook asks
# OpenBLAS for one thread. It must happen before NumPy is imported: run the notebook from the top.

# %%
import os
if "OPENBLAS_NUM_THREADS" not in os.environ:               # a setting of your own wins
    os.environ["OPENBLAS_NUM_THREADS"] = "1"               # read once, when NumPy loads OpenBLAS

# %%
# %matplotlib inline
import contextlib
import io
import math
import time
from collections import Counter

import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
from bertnp.corpus import bundled_corpus
from bertnp.data import PretrainingDataset, PretrainingLoader, read_corpus
from bertnp.tokenizer import BertTokenizer

workdir = teach.workdir("lesson04")          # vocabulary, run folder, checkpoints
VOCAB_SIZE = 2000

# %% [markdown]
# ## 1. Data and a tiny model
#
# The bundled corpus is public-domain English (the World English Bible, The Devil's Dictionary and the
# Jargon File) in BERT's format: one sentence a line, a blank line between documents. A vocabulary of
# 2,000 WordPiece tokens keeps the output layer small.

# %%
documents = read_corpus(bundled_corpus("train"))
print(f"{len(documents)} documents, {sum(len(d) for d in documents)} sentences")
# a WordPiece vocabulary learned from every 6th sentence of the corpus (lesson 3 shows how), ~1 s
sentences = [s for doc in documents for s in doc][::6]
vocab_path = workdir / "vocab.txt"
bn.train_wordpiece("\n".join(sentences), vocab_size=VOCAB_SIZE, vocab_file=vocab_path, show_progress=False)
tokenizer = BertTokenizer(str(vocab_path), do_lower_case=True)
V = tokenizer.vocab_size
print(f"vocabulary: {V} tokens, e.g. {tokenizer.convert_ids_to_tokens(list(range(V - 8, V)))}")

# %% [markdown]
# The model: `bn.BertConfig` takes Hugging Face's field names. BERT-base has 12 layers of width 768;
# ours has 2 layers of width 64 with 2 heads — about 0.2 M parameters, most of them in the word
# embeddings. Sequences are 64 tokens long.

# %%
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

# %% [markdown]
# ## 2. The loss before training
#
# Predict it before you compute it. At initialisation every weight is drawn from $\mathcal N(0, 0.02^2)$,
# so the logits are all close to 0 and the softmax is nearly uniform over the $V$ tokens. The cross-entropy
# of a uniform guess is $-\log \frac1V = \ln V$. The NSP head chooses between 2 classes: $\ln 2 \approx 0.693$.
# For BERT-base's vocabulary of 30,522 that is 10.33 + 0.69. A starting loss far from these numbers means a
# bug (an init scale, a mask, labels shifted by one) before a single step is taken.

# %%
model.eval()                                 # dropout off for a clean measurement
out = model(**batch)
mlm0, nsp0 = float(out.mlm_loss), float(out.nsp_loss)
print(f"MLM loss {mlm0:.4f}   ln V = ln {V} = {math.log(V):.4f}")
print(f"NSP loss {nsp0:.4f}   ln 2 = {math.log(2):.4f}")
print("MLM logits are computed only at the", out.prediction_logits.shape[0], "masked positions:",
      out.prediction_logits.shape)
teach.check(abs(mlm0 - math.log(V)) < 0.1, "starting MLM loss", mlm0, f"ln {V} = {math.log(V):.4f} +- 0.1")
teach.check(abs(nsp0 - math.log(2)) < 0.05, "starting NSP loss", nsp0, f"ln 2 = {math.log(2):.4f} +- 0.05")

# %% [markdown]
# ## 3. Checking the gradient of the whole model
#
# `model.backward()` returns the gradient of `out.loss` for every tensor of `model.state_dict()`. Check
# it like one layer in lesson 1, but on a model small enough to perturb entry by entry: float64, dropout
# off (`eval()`), tiny distinct sizes, a padded sequence. Three adjustments:
#
# * the weights are redrawn at scale 0.3 (not 0.02) so that every GELU, tanh and softmax actually bends —
#   with tiny weights the model is almost linear and the check would be too easy;
# * a model has many gradient entries of $\sim 10^{-5}$; the usual centered difference blurs them (its
#   rounding noise at $h = 10^{-5}$ is $\sim 10^{-10}$, a relative error of $10^{-5}$). The 4th-order stencil
#   $\frac{-f(x+2h) + 8f(x+h) - 8f(x-h) + f(x-2h)}{12h}$ cancels the $h^2$ error term too, so it can take
#   $h = 10^{-3}$, where the rounding noise is 100 times smaller;
# * the noise floor (lesson 1) is measured, not guessed: the cell estimates the rounding noise as
#   $\varepsilon |L| / h$ and holds entries tiny on both sides to 100 times that, absolutely.
#
# The word-embedding matrix is used twice — as the input lookup and, transposed, as the MLM decoder — so
# its gradient is the *sum* of both uses; the check covers that too. To keep this quick we check a few
# random entries of every tensor (the test suite checks every entry).

# %%
tiny_cfg = bn.BertConfig(vocab_size=23, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                         intermediate_size=20, max_position_embeddings=9,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

def tiny_model(seed):
    '''A float64 model of tiny distinct sizes whose weights are large enough to bend every nonlinearity.'''
    m = bn.BertForPreTraining(tiny_cfg, seed=seed, dtype="float64").eval()
    r = np.random.default_rng(seed)
    for name, p in m.parameters().items():
        p[...] = r.normal(0, 0.3, p.shape) + (1.0 if "LayerNorm.weight" in name else 0.0)
    return m

def tiny_batch(seed):
    '''Two sequences of 7 tokens, the second ending in two [PAD]s, three masked positions, NSP labels.'''
    r = np.random.default_rng(seed)
    ids = r.integers(5, 23, (2, 7))
    attention = np.ones((2, 7), dtype=np.int64)
    attention[1, 5:] = 0                              # the second sequence ends in two [PAD]s
    ids[1, 5:] = 0
    types = np.zeros((2, 7), dtype=np.int64)
    types[:, 4:] = 1                                  # segment B starts at position 4
    labels = np.full((2, 7), -100)                    # -100: not predicted
    labels[0, [1, 3]] = r.integers(5, 23, 2)
    labels[1, 2] = r.integers(5, 23)
    return dict(input_ids=ids, attention_mask=attention, token_type_ids=types, labels=labels,
                next_sentence_label=r.integers(0, 2, 2))

def numerical_entries(model, batch, name, flat_indices, h=1e-3):
    '''4th-order centered differences of model(**batch).loss with respect to chosen entries of one tensor.'''
    p = model.parameters()[name]                      # the live array: perturbed in place, then restored
    grads = []
    for i in flat_indices:
        index = np.unravel_index(i, p.shape)          # a multi-index: right for any memory layout
        saved = float(p[index])
        f = {}
        for k in (-2, -1, 1, 2):
            p[index] = saved + k * h
            f[k] = float(model(**batch).loss)
        p[index] = saved
        grads.append((-f[2] + 8 * f[1] - 8 * f[-1] + f[-2]) / (12 * h))
    return np.array(grads)

tiny = tiny_model(seed=3)
check_batch = tiny_batch(seed=3)
tiny.zero_grad()
loss = float(tiny(**check_batch).loss)
analytic = {name: g.copy() for name, g in tiny.backward().items()}
noise = np.finfo(np.float64).eps * abs(loss) / 1e-3         # rounding noise of the stencil at h = 1e-3
floor = 100 * noise
print(f"loss {loss:.3f}: rounding noise ~ eps |L| / h = {noise:.1e}, noise floor {floor:.0e}")

t0 = time.perf_counter()
pick = np.random.default_rng(4)
sampled_analytic, sampled_numeric = {}, {}
for name, p in tiny.parameters().items():
    entries = pick.choice(p.size, size=min(teach.pick(8, 4), p.size), replace=False)
    sampled_analytic[name] = analytic[name].reshape(-1)[entries]
    sampled_numeric[name] = numerical_entries(tiny, check_batch, name, entries)
with contextlib.redirect_stdout(io.StringIO()):                # one line per tensor is too many: show the worst
    errors = teach.check_gradients(sampled_analytic, sampled_numeric, threshold=1e-6, floor=floor)
print(f"{len(errors)} tensors, {sum(a.size for a in sampled_analytic.values())} entries checked "
      f"in {time.perf_counter() - t0:.1f} s; all within 1e-6. The five worst:")
for name, err in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
    print(f"  {err:.1e}  {name}")
teach.check(len(errors) == len(tiny.state_dict()), "tensors checked", len(errors), len(tiny.state_dict()))


# %% [markdown]
# ## 4. One training step
#
# **Your task:** write one step of pretraining. When `train_step(model, optimizer, batch, max_grad_norm)` returns,
#
# * the parameters have moved by **one** optimizer update, computed from the gradient of **this batch's**
#   loss at the parameters the step started from — and from nothing else;
# * before the optimizer used them, the gradients were **clipped by their global norm**: if
#   $\lVert g\rVert = \sqrt{\sum_{\text{tensors}} \sum_{\text{entries}} g^2}$ exceeds `max_grad_norm`, every gradient
#   is multiplied by `max_grad_norm / (norm + 1e-6)` (PyTorch's `clip_grad_norm_`), so that one bad batch
#   cannot throw the weights far. The norm is taken over **all** tensors together, not tensor by tensor;
# * it returns this step's MLM loss and NSP loss as Python floats.
#
# What the library gives you:
#
# * `out = model(**batch)` — the forward pass; `out.loss` (= `out.mlm_loss + out.nsp_loss`) is a NumPy number
#   (a 0-d array on the GPU), not a Python float.
# * `model.backward()` — **adds** the gradient of the last forward's `out.loss` into `model.grads`, a dict
#   `{name: array}`. As in PyTorch, gradients *accumulate* across `backward()` calls; `model.zero_grad()`
#   sets them to zero. `model.grads` returns a new dict each time, but its arrays are the live ones: change
#   them in place (`g *= c`); assigning to the dict changes nothing.
# * `optimizer.step()` — updates the parameters from `model.grads` (AdamW here; lesson 10 opens it up).
#
# Decide the order yourself.

# %% tags=["exercise"]
# EXERCISE: one training step -- gradients of this batch only, clipped by their global norm, one optimizer step
def train_step(model, optimizer, batch, max_grad_norm=1.0):
    '''Returns (MLM loss, NSP loss) of this step's forward pass as floats.'''
    ### BEGIN SOLUTION
    model.zero_grad()                                     # backward() accumulates: start from zero
    out = model(**batch)
    model.backward()
    grads = model.grads
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))   # one norm over ALL tensors
    if norm > max_grad_norm:
        for g in grads.values():
            g *= max_grad_norm / (norm + 1e-6)            # in place: the optimizer reads these arrays
    optimizer.step()
    return float(out.mlm_loss), float(out.nsp_loss)
    ### END SOLUTION


# %% [markdown]
# **How do you test a training step?** Watching the loss fall is not enough: a step that forgets to zero
# the gradients, or never clips, still trains a tiny model — it just trains a real one badly, and nobody
# notices for days. So the check replaces the optimizer by a **recording** one: its `step()` stores a copy of
# the gradients it is given and then does plain SGD. Before each step the check computes, on a separate copy
# of the model, what those gradients should be: this batch's gradient at the current parameters, clipped by
# the global norm. It runs three steps on three different batches of the tiny float64 model of section 3,
# with `max_grad_norm` set to a quarter of the gradient's norm (clipping must act), and on the third step to
# ten times the norm (clipping must not act). When the gradients differ, it recognises the usual mistakes —
# gradients left over from the previous step, the previous step's gradients, no clipping, clipping after the
# step, clipping tensor by tensor — and says which.

# %%
class RecordingSGD:
    '''A stand-in optimizer for the check: step() records the gradients it is given, then does plain SGD.'''
    def __init__(self, model, lr=0.05):
        self.model, self.lr, self.seen = model, lr, []

    def zero_grad(self):
        self.model.zero_grad()

    def step(self):
        grads = self.model.grads
        self.seen.append({name: g.copy() for name, g in grads.items()})
        for name, p in self.model.parameters().items():
            p -= self.lr * grads[name]

def global_norm(grads):
    return math.sqrt(sum(float((g * g).sum()) for g in grads.values()))

def clipped(grads, max_norm):
    '''The gradients scaled as clip_grad_norm_ would: by max_norm / (norm + 1e-6) when the norm exceeds max_norm.'''
    norm = global_norm(grads)
    scale = max_norm / (norm + 1e-6) if norm > max_norm else 1.0
    return {name: g * scale for name, g in grads.items()}

def distance(a, b):
    '''Largest difference between two gradient dicts, relative to the largest entry of b.'''
    largest = max(float(np.abs(g).max()) for g in b.values())
    return max(float(np.abs(a[n] - b[n]).max()) for n in b) / max(largest, 1e-300)

def diagnose(seen, fresh, leftover, previous, max_norm, grads_after):
    '''Which known mistake explains the gradients step() saw (None if none does).'''
    near = lambda a, b: b is not None and distance(a, b) < 1e-5
    if global_norm(seen) == 0.0:
        return ("step() saw gradients that are all zero: the optimizer ran before backward(), "
                "or the gradients were zeroed after backward()")
    if global_norm(leftover) > 0 and (near(seen, clipped({n: leftover[n] + fresh[n] for n in fresh}, max_norm))
                                      or near(seen, {n: leftover[n] + fresh[n] for n in fresh})):
        return ("step() saw this batch's gradient PLUS the gradient left in model.grads by the previous step: "
                "backward() accumulates, so zero the gradients before it")
    if previous is not None and (near(seen, clipped(previous, max_norm)) or near(seen, previous)):
        return ("step() saw the PREVIOUS step's gradient, not this batch's: backward() must follow this "
                "step's forward pass (and come before the optimizer step)")
    if near(seen, fresh):
        if near(grads_after, clipped(fresh, max_norm)):
            return (f"step() saw the unclipped gradients (global norm {global_norm(fresh):.4g} > max_grad_norm "
                    f"{max_norm:.4g}), and they were clipped only afterwards: clip BEFORE optimizer.step()")
        return (f"step() saw unclipped gradients (global norm {global_norm(fresh):.4g} > max_grad_norm "
                f"{max_norm:.4g}): clip them, in place, before optimizer.step() -- scale every gradient by "
                "one factor from the global norm (clipping entries by value, as np.clip does, is another thing)")
    if global_norm(fresh) <= max_norm and near(seen, {n: g * max_norm / (global_norm(fresh) + 1e-6) for n, g in fresh.items()}):
        return (f"the gradients were scaled although their global norm {global_norm(fresh):.4g} was below "
                f"max_grad_norm {max_norm:.4g}: scale them only when the norm exceeds max_grad_norm")
    per_tensor = {n: g * min(1.0, max_norm / (math.sqrt(float((g * g).sum())) + 1e-6)) for n, g in fresh.items()}
    if near(seen, per_tensor):
        return (f"each tensor was clipped to norm {max_norm:.4g} on its own: clip by the GLOBAL norm, "
                "one factor for all tensors")
    return None

def check_train_step(train_step, steps=3):
    model = tiny_model(seed=11)
    reference = tiny_model(seed=11)                   # a separate copy for the expected values
    optimizer = RecordingSGD(model)
    previous = None
    for t in range(steps):
        batch = tiny_batch(seed=100 + t)
        start = {n: p.copy() for n, p in model.parameters().items()}
        leftover = {n: g.copy() for n, g in model.grads.items()}
        reference.load_state_dict(start)
        reference.zero_grad()
        ref_out = reference(**batch)
        fresh = {n: g.copy() for n, g in reference.backward().items()}    # this batch's gradient, here
        max_norm = global_norm(fresh) * (0.25 if t < steps - 1 else 10.0)
        expected = clipped(fresh, max_norm)
        where = f"step {t + 1} (max_grad_norm = {max_norm:.4g}, the gradient's global norm {global_norm(fresh):.4g})"

        try:
            result = train_step(model, optimizer, batch, max_grad_norm=max_norm)
        except NotImplementedError:
            raise                                     # the exercise is not written yet
        except Exception as exc:
            raise teach.CheckFailed(f"{where}: train_step raised {type(exc).__name__}: {exc}") from exc

        calls = len(optimizer.seen) - t
        if calls != 1:
            teach.check(False, f"{where}: optimizer.step() calls", calls, 1)
        seen = optimizer.seen[-1]
        if distance(seen, expected) > 1e-5:
            reason = diagnose(seen, fresh, leftover, previous, max_norm, model.grads)
            teach.check(False, f"{where}: the gradients optimizer.step() used" + (f"\n  {reason}" if reason else
                        " are not this batch's clipped gradient"), f"global norm {global_norm(seen):.6g}",
                        f"global norm {global_norm(expected):.6g}")
        update = {n: optimizer.lr * g for n, g in seen.items()}
        moved = {n: start[n] - p for n, p in model.parameters().items()}
        if distance(moved, update) > 1e-9:
            teach.check(False, f"{where}: the parameters must move by exactly one optimizer update "
                        "(nothing else may change them)", f"relative difference {distance(moved, update):.1e}", 0)
        expected_losses = (float(ref_out.mlm_loss), float(ref_out.nsp_loss))
        if not (isinstance(result, tuple) and len(result) == 2 and all(type(v) is float for v in result)):
            teach.check(False, f"{where}: what train_step returns", f"{type(result).__name__} of "
                        + ", ".join(type(v).__name__ for v in result) if isinstance(result, tuple) else type(result).__name__,
                        "a tuple of two Python floats (read each loss with float(...))")
        if not np.allclose(result, expected_losses, rtol=1e-10):
            teach.check(False, f"{where}: returned (MLM loss, NSP loss) -- they must be the losses of THIS step's "
                        "forward pass, before the update", tuple(round(v, 8) for v in result),
                        tuple(round(v, 8) for v in expected_losses))
        print(f"  {where}: step() used this batch's gradient, {'clipped to' if max_norm < global_norm(fresh) else 'unclipped, norm'} "
              f"{global_norm(seen):.4g}; losses {result[0]:.4f}, {result[1]:.4f}  ok")
        previous = fresh


# %% tags=["check"]
check_train_step(train_step)

# %% [markdown]
# ### Solution notes
#
# One correct order: `model.zero_grad()`, `out = model(**batch)`, `model.backward()`, clip, `optimizer.step()`,
# return `float(out.mlm_loss), float(out.nsp_loss)`. Why each place:
#
# * `zero_grad` first (or at the end of the previous step): `backward()` *adds*, so without it step $t$
#   uses $g_1 + \dots + g_t$;
# * `backward()` after this step's forward: it differentiates the *last* forward pass (bertnp refuses a
#   backward with no forward before it; a framework that keeps the old graph would silently reuse it);
# * clip after `backward()` and before `step()`, with **one** factor from the norm of all tensors together:
#   per-tensor clipping changes the *direction* of the update (small tensors keep their size while large
#   ones shrink), global clipping only its length. Scale the arrays in place (`g *= factor`): `model.grads`
#   hands out the live arrays in a new dict;
# * the loss to report is the one the gradient came from, computed before the update.
#
# The library's loop does the same with `bertnp.optim.clip_grad_norm(model.grads, max_grad_norm)`, which
# returns the norm *before* clipping: log it, it is the earliest warning of a diverging run.

# %% [markdown]
# ## 5. Can it overfit one batch?
#
# The first test of any training loop: **can it drive the loss on a few fixed sequences towards zero?** A
# model that cannot has a bug in the loop, the gradients or the optimizer — and no amount of data will fix it.
# Here with the real optimizer, AdamW, on 8 sequences of the corpus, dropout off so that the same batch gives
# the same loss.

# %% tags=["check"]
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
teach.check(abs(mlm_curve[0] - math.log(V)) < 0.1, "MLM loss of the first step", mlm_curve[0], f"ln V = {math.log(V):.3f} +- 0.1")
teach.check(mlm_curve[-1] < 1.0, "MLM loss after 40 steps on one batch", mlm_curve[-1], "< 1.0")
teach.check(nsp_curve[-1] < 0.1, "NSP loss after 40 steps on one batch", nsp_curve[-1], "< 0.1")

# %% [markdown]
# ## 6. Pretraining on the corpus
#
# The library's loop, `bertnp.train.Trainer`, does exactly your `train_step` for every batch, plus what a
# real run needs: a learning-rate schedule (linear warm-up from 0, then linear decay to 0), a held-out
# evaluation, `metrics.jsonl`, checkpoints it can resume from exactly, and the final model in Hugging Face's
# layout. `bertnp pretrain` on the command line runs the same thing.
#
# Here: the whole training split (about 26,000 pairs of up to 64 tokens), 400 steps of 32 pairs — half a pass
# over the data — with a peak learning rate of $4\times 10^{-3}$ (tiny models
# tolerate far more than BERT-base's $10^{-4}$) and no dropout: in a run this short it would only slow learning
# down. In fast mode (`BERTNP_LESSONS_FAST=1`) the pairs are at most 32 tokens long (about 37,000 of them),
# which halves the work per step.

# %%
from bertnp.train import TrainConfig, Trainer
STEPS, SEQ = 400, teach.pick(64, 32)
config.to_json_file(workdir / "config.json")
run = TrainConfig(vocab=str(vocab_path), model_config=str(workdir / "config.json"),
                  max_seq_length=SEQ, batch_size=32, steps=STEPS, lr=4e-3, warmup=0.05, dropout=0.0,
                  seed=0, out_dir=str(workdir / "run"), eval_every=STEPS // 4, eval_batches=16,
                  checkpoint_every=1000, log_every=10, progress=False)
trainer = Trainer(run)
t0 = time.perf_counter()
summary = trainer.train()
print(f"{summary['step']} steps in {time.perf_counter() - t0:.1f} s "
      f"({summary['tokens_seen'] / summary['train_time']:.0f} tokens/s)")

# %% [markdown]
# The run left `metrics.jsonl` (one record per 10 training steps, averaged, and one per evaluation on
# held-out documents the model never trains on) and drew it as `training.png`:

# %%
from IPython.display import Image, display
from bertnp.viz import read_metrics
display(Image(filename=str(trainer.out / "training.png")))
records = read_metrics(trainer.metrics_path)
train_records = [r for r in records if r["split"] == "train"]
eval_records = [r for r in records if r["split"] == "eval"]
first, last = train_records[0], eval_records[-1]
print(f"loss (MLM + NSP): first 10 steps {first['loss']:.2f}  ->  held-out after {last['step']} steps {last['loss']:.2f}")
teach.check(first["loss"] > math.log(V) + math.log(2) - 1.0, "mean loss of the first 10 steps (it starts near ln V + ln 2)",
            first["loss"], f"> {math.log(V) + math.log(2) - 1.0:.2f}")
teach.check(last["loss"] < first["loss"] - 1.5, "held-out loss at the end (it fell substantially)",
            last["loss"], f"< {first['loss'] - 1.5:.2f}")

# %% [markdown]
# Within a few dozen steps the loss drops to a **plateau**: the model has learned how frequent each token
# is, and predicts that at every `[MASK]` whatever the context. The loss of that guess is the *unigram
# cross-entropy* $-\frac1N \sum_n \log \hat p(x_n)$ with $\hat p$ the token frequencies of the training data —
# about 6 nats here (on English with a 30k vocabulary, about 7). Only a loss *below* it shows that the model
# uses the context; the figure below draws the MLM loss against it. The same goes for the accuracies: the
# dotted line in `training.png` above (its "unigram baseline") is the accuracy of always
# predicting the most frequent token, and for NSP the bar is the share of the majority label — at 64 tokens
# about 60% of the pairs are random-next (lesson 3 explains why), so 60% NSP accuracy means nothing learned.
#
# How far above a baseline is "above"? The held-out set has $N$ labelled tokens, so an accuracy measured on it
# has a binomial standard deviation of about $\sqrt{p(1-p)/N}$ (lesson 3); the check asks for more than 4 of them.

# %%
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

fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
ax.plot([r["step"] for r in train_records], [r["mlm_loss"] for r in train_records], alpha=0.6,
        label="training MLM loss (mean of 10 steps)")
ax.plot([r["step"] for r in eval_records], [r["mlm_loss"] for r in eval_records], "o-", label="held-out MLM loss")
ax.axhline(unigram_ce, color="gray", ls=":", label=f"unigram cross-entropy {unigram_ce:.2f} (word frequencies only)")
ax.axhline(math.log(V), color="gray", ls="--", lw=0.8, label=f"uniform guess, ln V = {math.log(V):.2f}")
ax.set_xlabel("step"); ax.set_ylabel("MLM loss (nats)"); ax.grid(alpha=0.3); ax.legend(fontsize=8)
ax.set_title("down to the unigram plateau fast, then below it slowly")
plt.show()
teach.check(last["mlm_loss"] < unigram_ce - 0.1, "held-out MLM loss, below the unigram plateau (it uses the context)",
            last["mlm_loss"], f"< {unigram_ce - 0.1:.3f}")
base = last["baseline_mlm_acc"]
margin = 4 * math.sqrt(base * (1 - base) / eval_labels.size)        # 4 binomial sd over the held-out tokens
teach.check(last["mlm_acc"] > base + margin, f"held-out MLM accuracy over {eval_labels.size} tokens vs the "
            "most-frequent-token baseline + 4 sd", last["mlm_acc"], f"> {base:.3f} + {margin:.3f}")

# %% [markdown]
# ## 7. What did it learn?
#
# Where does the model beat the frequency guess? Here are held-out positions where the input was `[MASK]`,
# the model's top prediction was right, and the answer was *not* the most frequent token (the context shows
# six tokens before the position and three after; the position itself is marked `>[MASK]<`). After half a
# minute there are only a handful, and they are local patterns — mostly the full stop before `[SEP]` — but
# they are what pulls the loss below the plateau.

# %%
model, tok = trainer.model.eval(), trainer.tokenizer
most_frequent = int(np.argmax(frequency))
found = []
for b in trainer.eval_batches:
    predicted = np.asarray(model(**b).prediction_logits).argmax(axis=-1)   # (N,): the labelled positions, row-major
    rows, cols = np.nonzero(b["labels"] != -100)                            # the same row-major order
    for r, c, guess in zip(rows, cols, predicted):
        answer = b["labels"][r, c]
        if b["input_ids"][r, c] == tok.mask_token_id and guess == answer != most_frequent:
            before = tok.convert_ids_to_tokens(b["input_ids"][r, max(1, c - 6):c])
            after = tok.convert_ids_to_tokens(b["input_ids"][r, c + 1:c + 4])
            context = " ".join(before + [">[MASK]<"] + after)
            found.append((f"{context:<64} [MASK] = {tok.convert_ids_to_tokens(int(answer))}",
                          tok.convert_ids_to_tokens(int(answer))))
print(f"{len(found)} such predictions; the answers: {Counter(answer for _, answer in found).most_common(5)}. For example:")
print("\n".join(line for line, _ in found[:8]))

# %% [markdown]
# `bertnp.inference.fill_mask` asks the same question of your own sentences. At this stage the answer
# barely depends on the sentence — the top guesses are still the most frequent tokens. A few minutes of
# training (`make demo`, or `bertnp pretrain`) gives a model whose guesses start to fit the context.

# %%
from bertnp.inference import fill_mask
guesses = []
for text in ["in the beginning god created the heavens and the [MASK].",
             "and he said to them, [MASK] not afraid."]:
    top = fill_mask(model, tok, text, top_k=5)                  # one [MASK]: a flat list of 5
    guesses.append({p["token_str"] for p in top})
    print(f"{text:<58} -> " + ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in top))
    total = sum(p["score"] for p in top)
    teach.check(len(top) == 5 and total <= 1.0 + 1e-6, "five guesses whose probabilities sum to at most 1",
                (len(top), round(total, 4)), "(5, <= 1)")
shared = guesses[0] & guesses[1]
teach.check(len(shared) >= 3, "top-5 guesses the two different sentences share (the context barely matters yet)",
            sorted(shared), "at least 3")

# %% [markdown]
# ## Summary
#
# * Starting losses: MLM $\approx \ln V$, NSP $\approx \ln 2$ — check them before training.
# * Whole-model gradient check: float64, `eval()`, tiny distinct sizes, weights large enough to bend every
#   nonlinearity, a 4th-order stencil, a measured noise floor; relative error $\le 10^{-6}$.
# * A step: this batch's gradient only (zero, forward, backward), clipped by the global norm, one optimizer
#   update. Test it against an independently computed update, not by watching the loss — then make sure it
#   overfits one batch.
# * Then train: the loss drops quickly to the unigram plateau (word frequencies), then below it as the
#   model starts to use the context. Compare every metric with its trivial baseline.
#
# Next: lesson 5 opens the model up, starting with its embeddings.
