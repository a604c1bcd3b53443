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
# 3. write one training step, and make sure it can overfit a single batch;
# 4. train for about half a minute on the bundled corpus with the library's training loop and watch the loss fall.
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
import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
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
assert abs(mlm0 - math.log(V)) < 0.1
assert abs(nsp0 - math.log(2)) < 0.05

# %% [markdown]
# ## 3. Checking the gradient of the whole model
#
# `model.backward()` returns the gradient of `out.loss` for every tensor of `model.state_dict()`. Check
# it like one layer in lesson 1, but on a model small enough to perturb entry by entry: float64, dropout
# off (`eval()`), tiny distinct sizes, a padded sequence. Two adjustments:
#
# * the weights are redrawn at scale 0.3 (not 0.02) so that every GELU, tanh and softmax actually bends —
#   with tiny weights the model is almost linear and the check would be too easy;
# * `check_model` uses a 4th-order stencil, $\frac{-f(x+2h) + 8f(x+h) - 8f(x-h) + f(x-2h)}{12h}$ with
#   $h = 10^{-3}$: a model has many gradient entries of $\sim 10^{-5}$, which the usual stencil's
#   noise would blur; this one cancels the $h^2$ error term and allows a larger, less noisy step.
#   Entries below $10^{-8}$ on both sides are at its noise floor (lesson 1) and count as matching.
#
# The word-embedding matrix is used twice — as the input lookup and, transposed, as the MLM decoder — so
# its gradient is the *sum* of both uses; the check covers that too. To keep this quick we check 6
# random entries of every tensor (the test suite checks every entry).

# %%
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


# %% [markdown]
# ## 4. One training step
#
# A step of BERT pretraining, as in PyTorch:
#
# 1. `model.zero_grad()` — gradients *accumulate* across `backward()` calls until zeroed;
# 2. `out = model(**batch)` — the forward pass with `labels` and `next_sentence_label`;
# 3. `model.backward()` — the gradient of `out.loss` into `model.grads`;
# 4. `clip_grad_norm(model.grads, 1.0)` — if the global norm $\sqrt{\sum \lVert g\rVert^2}$ of all gradients exceeds 1,
#    scale them all down to norm 1 (one bad batch cannot throw the weights far);
# 5. `optimizer.step()` — AdamW: an Adam update plus decoupled weight decay (none on biases and LayerNorm).

# %% tags=["exercise"]
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


# %% [markdown]
# The first test of any training loop: **can it overfit one batch?** A model that cannot drive the loss on
# 8 fixed sequences towards zero has a bug in the loop, the gradients or the optimizer — and no amount of
# data will fix it. (Dropout is switched off here so that the same batch gives the same loss.)

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
assert abs(mlm_curve[0] - math.log(V)) < 0.1
assert mlm_curve[-1] < 1.0 and nsp_curve[-1] < 0.1

# %% [markdown]
# ## 5. Pretraining on the corpus
#
# The library's loop, `bertnp.train.Trainer`, does exactly your `train_step` for every batch, plus what a
# real run needs: a learning-rate schedule (linear warm-up from 0, then linear decay to 0), a held-out
# evaluation, `metrics.jsonl`, checkpoints it can resume from exactly, and the final model in Hugging Face's
# layout. `bertnp pretrain` on the command line runs the same thing.
#
# Here: the whole training split (about 26,000 pairs of up to 64 tokens) and 400 steps of 32 pairs — half
# a pass over the data, 20–30 seconds on one laptop core — with a peak learning rate of $4\times 10^{-3}$
# (tiny models tolerate far more than BERT-base's $10^{-4}$) and no dropout: in a run this short it would
# only slow learning down.

# %%
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
assert first["loss"] > math.log(V) + math.log(2) - 1.0      # it started near ln V + ln 2 ...
assert last["loss"] < first["loss"] - 1.5                    # ... and fell substantially

# %% [markdown]
# Within a few dozen steps the loss drops to a **plateau**: the model has learned how frequent each token
# is, and predicts that at every `[MASK]` whatever the context. The loss of that guess is the *unigram
# cross-entropy* $-\frac1N \sum_n \log \hat p(x_n)$ with $\hat p$ the token frequencies of the training data —
# about 6 nats here (on English with a 30k vocabulary, about 7). Only a loss *below* it shows that the model
# uses the context. The same goes for the accuracies: the dotted line in the figure is the accuracy of always
# predicting the most frequent token, and for NSP the bar is the share of the majority label — at 64 tokens
# about 60% of the pairs are random-next (lesson 3 explains why), so 60% NSP accuracy means nothing learned.

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
assert last["mlm_loss"] < unigram_ce - 0.1                   # below the plateau: it uses the context
assert last["mlm_acc"] > 1.5 * last["baseline_mlm_acc"]

# %% [markdown]
# ## 6. What did it learn?
#
# Where does the model beat the frequency guess? Here are held-out positions where the input was `[MASK]`,
# the model's top prediction was right, and the answer was *not* the most frequent token. After half a
# minute there are only a few, and they are local patterns — a full stop before `[SEP]`, the end of a word
# whose start is visible — but they are what pulls the loss below the plateau.

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
            context = tok.convert_ids_to_tokens(b["input_ids"][r, max(1, c - 6):c + 4])
            found.append(f"{' '.join(context):<60} [MASK] = {tok.convert_ids_to_tokens(int(answer))}")
print(f"{len(found)} such predictions, for example:")
print("\n".join(found[:8]))

# %% [markdown]
# `bertnp.inference.fill_mask` asks the same question of your own sentences. At this stage the answer
# barely depends on the sentence — the top guesses are still the most frequent tokens. A few minutes of
# training (`make demo`, or `bertnp pretrain`) gives a model whose guesses start to fit the context.

# %%
from bertnp.inference import fill_mask
for text in ["in the beginning god created the heavens and the [MASK].",
             "and he said to them, [MASK] not afraid."]:
    top = fill_mask(model, tok, text, top_k=5)[0]
    print(f"{text:<58} -> " + ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in top))
    assert len(top) == 5 and sum(p["score"] for p in top) <= 1.0 + 1e-6

# %% [markdown]
# ## Summary
#
# * Starting losses: MLM $\approx \ln V$, NSP $\approx \ln 2$ — check them before training.
# * Whole-model gradient check: float64, `eval()`, tiny distinct sizes, weights large enough to bend every
#   nonlinearity, 4th-order stencil; relative error $\le 10^{-6}$.
# * A step is zero-grad, forward, backward, clip, AdamW. First make sure it overfits one batch.
# * Then train: the loss drops quickly to the unigram plateau (word frequencies), then below it as the
#   model starts to use the context. Compare every metric with its trivial baseline.
