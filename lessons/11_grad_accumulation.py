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
# # Lesson 11 — Gradient accumulation and batch size
#
# BERT was pretrained with 256 sequences per update. If 256 do not fit in memory, you run the
# update's batch as $K$ **micro-batches**, one after the other, add up their gradients, and take a
# single optimizer step. Done right, that step is *exactly* the step of the big batch. Done the
# obvious way — average the $K$ micro-batch losses — it is not. Hugging Face's `Trainer` shipped
# the obvious way for years, and fixed it in October 2024 (transformers PR #34191).
#
# In this lesson you will
#
# 1. write BERT's loss for one update as sums over *labelled tokens* and over *sequences*, and
#    see why the two parts need different denominators;
# 2. measure how wrong "average the micro-batch losses" is, and when it happens to be right;
# 3. write the accumulation that gives the big batch's gradient exactly (float64, to rounding);
# 4. see what a larger batch buys: a gradient whose noise falls as $1/B$.
#
# **Prerequisites:** lesson 4 (the pretraining loss and one training step: `zero_grad`, forward,
# `backward`). Lesson 8 (cross-entropy with `ignore_index`) helps. Math: weighted means, and the
# fact that the gradient of a sum is the sum of the gradients.
#
# **Time:** about 45 minutes.

# %%
# %matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
from bertnp.corpus import bundled_corpus, bert_base_uncased_vocab
from bertnp.data import PretrainingDataset, PretrainingLoader, read_corpus
from bertnp.tokenizer import BertTokenizer

IGNORE = -100                                 # a label that is not predicted

# %% [markdown]
# ## 1. One update, two losses, two denominators
#
# A batch of $B$ sequences holds $N$ labelled (masked) positions in all — about 15% of each
# sequence's tokens, so a short sequence holds fewer. BERT's loss for the update is
#
# $$L \;=\; \underbrace{\frac{1}{N}\sum_{\text{labelled } n} \ell^{\text{MLM}}_n}_{\text{mean over tokens}}
#   \;+\; \underbrace{\frac{1}{B}\sum_{b=1}^{B} \ell^{\text{NSP}}_b}_{\text{mean over sequences}}$$
#
# where $\ell$ is a cross-entropy. Every labelled token weighs $1/N$, every sequence $1/B$.
#
# To see everything to the last digit we work in float64 with dropout off, on a tiny model
# (2 layers of width 16) with BERT-base's vocabulary, and a batch of real pretraining pairs from the
# bundled corpus, 64 tokens long.

# %%
documents = read_corpus(bundled_corpus("train"))
tokenizer = BertTokenizer(str(bert_base_uncased_vocab()), do_lower_case=True)
dataset = PretrainingDataset(documents[:80], tokenizer, max_seq_length=64, max_predictions_per_seq=10, seed=0)
loader = PretrainingLoader(dataset, batch_size=64, seed=0)
pool = loader.next_batch()                     # 64 pairs to draw from in this lesson

config = bn.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
model = bn.BertForPreTraining(config, seed=0, dtype="float64").eval()   # eval(): no dropout

labelled = (pool["labels"] != IGNORE).sum(axis=1)
length = pool["attention_mask"].sum(axis=1)
print("tokens per pair:   ", length[:24], "...")
print("labelled per pair: ", labelled[:24], "...")

# %% [markdown]
# Most pairs fill all 64 positions and carry 10 labels (`max_predictions_per_seq`); the short ones —
# Google's `short_seq_prob` pairs, and the ends of documents — carry fewer.
#
# Now one update of 12 pairs: the 4 shortest of the pool and 8 full ones. A loader that groups
# sequences of similar length (to waste less padding; many do) puts the short ones together, so take
# the 12 in order of length and cut them into 3 micro-batches of 5, 4 and 3 pairs: unequal in
# sequences *and* in labelled tokens.

# %%
def take(batch, rows):
    """The sub-batch of the given rows (every array of the batch is indexed by row first)."""
    return {key: value[rows] for key, value in batch.items()}


def big_batch_reference(model, batch):
    """Loss and gradient of the whole batch in one forward/backward: the referee."""
    model.zero_grad()
    out = model(**batch)
    grads = {name: g.copy() for name, g in model.backward().items()}
    return float(out.loss), grads


chosen = np.concatenate([np.argsort(length, kind="stable")[:4], np.flatnonzero(length == 64)[:8]])
rows = chosen[np.argsort(length[chosen], kind="stable")]   # 12 pairs, shortest first
micro_sizes = [5, 4, 3]
micro_batches = [take(pool, r) for r in np.split(rows, np.cumsum(micro_sizes)[:-1])]
batch = take(pool, rows)                                # the same 12 pairs as one batch

for k, mb in enumerate(micro_batches):
    print(f"micro-batch {k}: {len(mb['next_sentence_label'])} pairs, "
          f"{int((mb['labels'] != IGNORE).sum()):2d} labelled tokens")
N, B = int((batch["labels"] != IGNORE).sum()), len(batch["next_sentence_label"])
print(f"whole batch:   {B} pairs, {N} labelled tokens")

big_loss, big_grads = big_batch_reference(model, batch)
print(f"\nloss of the whole batch: {big_loss:.12f}  ({len(big_grads)} gradient tensors)")

# %% [markdown]
# ## 2. The obvious accumulation, and why it is wrong
#
# The obvious loop: for each micro-batch, forward and `backward()` (gradients *add up* in
# `model.grads` until `zero_grad()`), then divide by $K$ so that the sum becomes a mean; log the
# mean of the $K$ losses. This is what a training loop does when it reads "gradient accumulation
# = average over micro-batches".

# %%
def naive_accumulation(model, micro_batches):
    """Average of the K micro-batch losses and of their gradients (the bug)."""
    K = len(micro_batches)
    model.zero_grad()
    losses = []
    for micro_batch in micro_batches:
        losses.append(float(model(**micro_batch).loss))
        model.backward()                                  # adds this micro-batch's gradient
    return float(np.mean(losses)), {name: g / K for name, g in model.grads.items()}


def gradient_error(grads, reference):
    """Relative error of a whole set of gradients: ||g - ref|| / ||ref|| over all tensors at once."""
    diff = sum(float(((grads[n] - reference[n]) ** 2).sum()) for n in reference)
    norm = sum(float((reference[n] ** 2).sum()) for n in reference)
    return (diff / norm) ** 0.5


naive_loss, naive_grads = naive_accumulation(model, micro_batches)
naive_error = gradient_error(naive_grads, big_grads)
print(f"logged loss:   naive {naive_loss:.6f}   whole batch {big_loss:.6f}")
print(f"gradient:      relative error of the naive accumulation {naive_error:.2e}")
assert naive_error > 1e-3, f"the naive accumulation should differ visibly here, error {naive_error:.2e}"
assert abs(naive_loss - big_loss) > 1e-4, f"the naive logged loss should differ: {naive_loss} vs {big_loss}"

# %% [markdown]
# A relative error of about 10%, in float64 — not rounding: a different gradient. Why?
# The micro-batch $k$ with $N_k$ labelled tokens reports its *own* mean, so after dividing by $K$
# each of its tokens weighs $\frac{1}{K N_k}$ instead of $\frac{1}{N}$. Tokens in a micro-batch
# of short sequences count more than tokens in a micro-batch of long ones. Here is that weight for
# every labelled token of the update:

# %%
token_owner = np.concatenate([np.full(int((mb["labels"] != IGNORE).sum()), k) for k, mb in enumerate(micro_batches)])
counts = np.array([int((mb["labels"] != IGNORE).sum()) for mb in micro_batches])
naive_weight = 1.0 / (len(micro_batches) * counts[token_owner])

fig, ax = plt.subplots(figsize=(8, 3))
ax.bar(np.arange(N), naive_weight, color=[f"C{k}" for k in token_owner], width=1.0, label="naive: 1 / (K N_k)")
ax.axhline(1 / N, color="black", lw=2, label=f"the big batch: 1 / N = 1/{N}")
ax.set_xlabel("labelled token of the update (coloured by micro-batch)")
ax.set_ylabel("weight in the MLM loss")
ax.set_title(f"What each labelled token weighs: micro-batches of {', '.join(map(str, counts))} labelled tokens")
ax.set_ylim(0, 1.4 * naive_weight.max())
ax.legend(loc="upper left", ncol=2); ax.grid(alpha=0.3)
plt.show()
assert abs(naive_weight.sum() - 1) < 1e-12, f"the naive weights still sum to 1: {naive_weight.sum()}"

# %% [markdown]
# The weights still sum to 1, so nothing looks broken: the loss goes down, training "works". But
# the model optimises a *different* objective, one that depends on how the batch was cut, and the
# logged loss is not the loss of the update. The same happens to NSP when the micro-batches hold
# different numbers of sequences (here 5, 4, 3): a sequence in the micro-batch of 3 weighs
# $\frac{1}{3 \cdot 3}$, not $\frac{1}{12}$.
#
# **Hugging Face's version of this bug.** The `Trainer` scaled each micro-batch's mean loss by
# $1/K$ (`gradient_accumulation_steps`). For causal language models fine-tuned on texts of very
# different lengths, training with accumulation gave a visibly higher loss than the same batch
# without it, and people noticed in October 2024. PR #34191 (*Fix Gradient Accumulation issue*)
# fixed it by counting the labelled tokens of the whole accumulation window first
# (`num_items_in_batch`) and dividing each micro-batch's *summed* loss by that count.

# %% [markdown]
# ## 3. Your turn: the exact accumulation
#
# **Goal.** Compute the whole batch's loss $L$ (section 1) and its gradient, running the model on one
# micro-batch at a time — never on the big batch. The result must equal the big batch's to rounding.
#
# **What the model gives you.**
#
# * `model(input_ids=..., attention_mask=..., token_type_ids=..., labels=...)` *without*
#   `next_sentence_label`: `out.loss` is that micro-batch's MLM mean alone;
#   with only `next_sentence_label`: its NSP mean alone; with both: their sum.
# * `model.backward()` adds the gradient of the last forward's `out.loss` onto `model.grads` and returns
#   `model.grads` (a dict of the live arrays); `model.zero_grad()` sets them to zero.
#
# **Hint.** Write $L$ as a sum over the micro-batches of each micro-batch's *mean* losses. What multiplies
# each mean? Then remember that `backward()` *adds*.
#
# **The check** runs your function on two different cuttings of the batch into micro-batches
# (unequal in sequences and in labelled tokens), each time with leftover gradients from "a previous
# update" in the model, and compares loss and gradients with the big batch: relative error
# $\le 10^{-10}$.

# %% tags=["exercise"]
# EXERCISE: the whole batch's loss and gradient, accumulated one micro-batch at a time
def accumulate(model, micro_batches):
    '''Loss and gradient of the whole batch (MLM mean over ALL its labelled tokens + NSP mean over
    ALL its sequences), from forward/backward passes on one micro-batch at a time.

    micro_batches: list of dicts with input_ids, attention_mask, token_type_ids, labels (-100 = not
    labelled) and next_sentence_label, together the whole batch.
    Returns (loss, grads): loss a float; grads {name: array} with the names and shapes of model.grads.'''
    loss = 0.0
    grads = {name: np.zeros_like(g) for name, g in model.grads.items()}
    ### BEGIN SOLUTION
    n_tokens = sum(int((mb["labels"] != -100).sum()) for mb in micro_batches)        # N
    n_sequences = sum(len(mb["next_sentence_label"]) for mb in micro_batches)      # B
    for mb in micro_batches:
        inputs = {k: mb[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        parts = (("labels", int((mb["labels"] != -100).sum()) / n_tokens),          # N_k / N
                 ("next_sentence_label", len(mb["next_sentence_label"]) / n_sequences))  # B_k / B
        for label_name, weight in parts:
            if weight == 0:
                continue                          # no labelled token here: nothing to add (and no 0/0)
            model.zero_grad()                     # backward() adds: start from zero for each pass
            out = model(**inputs, **{label_name: mb[label_name]})
            loss += weight * float(out.loss)
            for name, g in model.backward().items():
                grads[name] += weight * g
    ### END SOLUTION
    return loss, grads


# %% tags=["check"]
def check_accumulate(accumulate, model, batch, cuttings):
    """Run `accumulate` on each cutting of `batch` into micro-batches and compare with the big batch."""
    big_loss, big_grads = big_batch_reference(model, batch)
    for sizes in cuttings:
        starts = np.cumsum(sizes)[:-1]
        micro = [take(batch, r) for r in np.split(np.arange(len(batch["next_sentence_label"])), starts)]
        mlm_counts = [int((mb["labels"] != IGNORE).sum()) for mb in micro]
        print(f"micro-batches of {sizes} pairs, {mlm_counts} labelled tokens:")
        for g in model.grads.values():             # leftovers of "a previous update"
            g[...] = rng.standard_normal(g.shape)
        loss, grads = accumulate(model, micro)
        missing = sorted(set(big_grads) - set(grads))
        teach.check(not missing, f"a gradient for each of the {len(big_grads)} tensors"
                    + (f" (missing: {', '.join(missing[:3])} ...)" if missing else ""))
        # per tensor: max |yours - big batch| / max |big batch|; a tensor whose true gradient is ~0
        # (the attention key bias: softmax ignores a shift) is measured against 1e-3 of the largest
        scale = max(float(np.abs(g).max()) for g in big_grads.values())
        errors = {name: float(np.abs(grads[name] - big_grads[name]).max()
                              / max(float(np.abs(big_grads[name]).max()), 1e-3 * scale)) for name in big_grads}
        worst = max(errors, key=errors.get)
        grads_ok = errors[worst] <= 1e-10
        teach.check(grads_ok, f"gradients: largest relative error {errors[worst]:.2e} (in {worst}), threshold 1e-10"
                    + ("" if grads_ok else f"\n  hint: {diagnose(model, micro, grads)}"))
        loss_ok = abs(loss - big_loss) <= 1e-10 * abs(big_loss)
        teach.check(loss_ok, f"loss: yours {loss:.12f}, the big batch's {big_loss:.12f}" + (
            "" if loss_ok else "\n  hint: your gradient is right, your loss is not: weight each mean loss like its gradient"))


def diagnose(model, micro, grads):
    """Which known wrong accumulation do these gradients look like?"""
    parts = []                                     # per micro-batch: (N_k, B_k, MLM-mean grads, NSP-mean grads)
    for mb in micro:
        g = {}
        for label_name in ("labels", "next_sentence_label"):
            model.zero_grad()
            model(**{k: mb[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, **{label_name: mb[label_name]})
            g[label_name] = {n: a.copy() for n, a in model.backward().items()}
        parts.append((int((mb["labels"] != IGNORE).sum()), len(mb["next_sentence_label"]), g))
    N = sum(p[0] for p in parts)
    B = sum(p[1] for p in parts)
    K = len(parts)
    candidates = {
        "the plain average over micro-batches (1/K for both losses): the bug this lesson is about":
            [(1 / K, 1 / K) for _ in parts],
        "MLM weighted by the micro-batch's share of SEQUENCES: but MLM is a mean over labelled tokens":
            [(b / B, b / B) for n, b, _ in parts],
        "NSP weighted by the micro-batch's share of labelled TOKENS: but NSP is a mean over sequences":
            [(n / N, n / N) for n, b, _ in parts],
    }
    for label, weights in candidates.items():
        expected = {name: sum(wm * g["labels"][name] + wn * g["next_sentence_label"][name]
                              for (wm, wn), (_, _, g) in zip(weights, parts)) for name in grads}
        if gradient_error(grads, expected) < 1e-9:
            return f"your gradient equals {label}"
    return ("none of the usual weightings: did you zero the gradients before each backward()? "
            "backward() adds onto whatever model.grads holds (here: leftovers of a previous update)")


check_accumulate(accumulate, model, batch, cuttings=[[5, 4, 3], [2, 7, 1, 2]])

# %% [markdown]
# ### Solution notes (read after trying)
#
# Split both sums by micro-batch. Micro-batch $k$ holds $N_k$ labelled tokens and $B_k$ sequences,
# and reports its means $L^{\text{MLM}}_k = \frac{1}{N_k}\sum_{n \in k} \ell_n$ and
# $L^{\text{NSP}}_k = \frac{1}{B_k}\sum_{b \in k} \ell_b$. Then
#
# $$L = \frac{1}{N}\sum_k \sum_{n\in k} \ell_n + \frac{1}{B}\sum_k \sum_{b \in k} \ell_b
#     = \sum_k \frac{N_k}{N}\,L^{\text{MLM}}_k \;+\; \sum_k \frac{B_k}{B}\,L^{\text{NSP}}_k ,$$
#
# and, the gradient being linear, $\nabla L = \sum_k \frac{N_k}{N}\nabla L^{\text{MLM}}_k + \sum_k \frac{B_k}{B}\nabla L^{\text{NSP}}_k$.
# The weights need $N$ and $B$ of the *whole* update, so count them before the first forward.
# The plain average uses $\frac1K$ for both: right only when every micro-batch holds exactly $N/K$
# labelled tokens *and* $B/K$ sequences.
#
# Because `backward()` returns the gradient of MLM + NSP together, the solution runs each micro-batch
# twice (MLM labels only, then NSP labels only) and zeroes the gradients before each pass. A training
# loop avoids the second pass by giving the loss its denominators: if the cross-entropy divides its
# *sum* by the update's $N$ (and NSP's by $B$) instead of taking its own mean, one backward per
# micro-batch adds exactly the right amount — that is what `num_items_in_batch` does in Hugging Face's
# fix. Across processes (lesson 16) the same rule holds: each rank's share is weighted by its tokens,
# not $\frac{1}{\text{ranks}}$.
#
# One more condition for *exact* equality: no sequence's forward may depend on the other sequences
# of its batch. BERT normalises with LayerNorm, per token, so that holds; a model with BatchNorm
# would see different statistics in each micro-batch. And dropout must be off (or draw the same masks).

# %% [markdown]
# ## 4. How unequal must the micro-batches be?
#
# The naive average is exact when the counts are equal — and the error grows with the imbalance.
# Take 8 full-length pairs and cut them into two micro-batches of 4 (equal in sequences, so NSP is
# right either way); keep all 40 labels in the first, and only $m$ of the 40 in the second.

# %%
full_rows = np.flatnonzero(labelled == labelled.max())[:8]
first, second = take(pool, full_rows[:4]), take(pool, full_rows[4:])
n_first = int((first["labels"] != IGNORE).sum())
keep_counts = teach.pick([40, 30, 20, 14, 10, 7, 5, 3, 2, 1], [40, 30, 10, 2])
ratios, errors = [], []
for m in keep_counts:
    second_m = dict(second)
    kept = np.flatnonzero(second["labels"].reshape(-1) != IGNORE)[:m]      # the first m labels, row-major
    labels = np.full(second["labels"].size, IGNORE)
    labels[kept] = second["labels"].reshape(-1)[kept]
    second_m["labels"] = labels.reshape(second["labels"].shape)            # (4 * 64,) -> (4, 64)
    whole = {key: np.concatenate([first[key], second_m[key]]) for key in first}
    _, reference = big_batch_reference(model, whole)
    _, naive = naive_accumulation(model, [first, second_m])
    ratios.append(n_first / m)
    errors.append(gradient_error(naive, reference))
    print(f"labelled tokens {n_first:2d} : {m:2d}   (ratio {n_first / m:5.1f})   naive gradient error {errors[-1]:.2e}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogx(ratios, errors, "o-", label="naive average of 2 micro-batches")
ax.annotate(f"equal counts: {errors[0]:.0e}", (ratios[0], errors[0]), textcoords="offset points", xytext=(14, 22))
ax.set_xlabel("labelled tokens in micro-batch 1 / in micro-batch 2")
ax.set_ylabel("relative gradient error ||g - g_big|| / ||g_big||")
ax.set_title("The naive average's error grows with the imbalance")
ax.legend(loc="upper left"); ax.grid(alpha=0.3, which="both")
plt.show()
assert errors[0] < 1e-12, f"equal token and sequence counts: the naive average is exact, error {errors[0]:.2e}"
assert all(b > a for a, b in zip(errors[1:], errors[2:])), f"the error should grow with the imbalance: {errors}"
assert errors[-1] > 0.05, f"at a ratio of {ratios[-1]:.0f} the error should be large, got {errors[-1]:.2e}"

# %% [markdown]
# At equal counts the naive average is exact to rounding ($10^{-16}$); already at 40 : 30 it is off by
# about 10%, and past a ratio of 8 the error is larger than the gradient itself. The gradients of two
# micro-batches differ a lot — different sentences, different masked words, so different rows of the
# embedding matrix — so weighting them wrongly moves the sum a lot.
#
# Exact at equal counts is also why the bug hides in BERT pretraining, where Google's packing fills
# most sequences to the same length, and surfaces in fine-tuning on texts of mixed lengths, with
# length-bucketed loaders, and in the last, smaller micro-batch of an epoch.
#
# ## 5. What a bigger batch buys
#
# Accumulation makes any batch size possible at the memory cost of one micro-batch. Why want a big one?
# A mini-batch gradient is an *estimate* of the gradient over all the data: an average of many noisy
# per-example contributions, so its variance around the true gradient falls like $1/B$. Measure it:
# draw mini-batches of $B$ pairs, and compare each gradient with the mean gradient of all 64.

# %%
all_loss, full_gradient = big_batch_reference(model, pool)
sizes = [1, 2, 4, 8, 16]
draws = teach.pick(24, 8)
noise = []
for size in sizes:
    squared = []
    for _ in range(draws):
        sample = take(pool, rng.choice(64, size=size, replace=False))
        _, g = big_batch_reference(model, sample)
        squared.append(sum(float(((g[n] - full_gradient[n]) ** 2).sum()) for n in g))
    noise.append(np.mean(squared))
    print(f"B = {size:2d}: mean squared distance to the 64-pair gradient {noise[-1]:.3e}")
noise = np.array(noise)

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.loglog(sizes, noise, "o-", label="measured (each point: mean of %d draws)" % draws)
ax.loglog(sizes, noise[0] / np.array(sizes), "k--", label="$\\propto 1/B$")
ax.set_xlabel("batch size B (pairs)")
ax.set_ylabel("E ||g_B - g_64||^2")
ax.set_title("Gradient noise falls like 1/B")
ax.legend(); ax.grid(alpha=0.3, which="both")
plt.show()
slope = np.polyfit(np.log(sizes), np.log(noise), 1)[0]
print(f"slope on log-log axes: {slope:.2f} (1/B would be -1; drawing from a pool of 64 makes it a little steeper)")
assert -1.6 < slope < -0.6, f"the gradient noise should fall roughly like 1/B, measured slope {slope:.2f}"

# %% [markdown]
# Halving the noise costs twice the computation, so batches grow only as far as they pay: past some
# size, a step of a twice-as-big batch is worth less than two steps. The usual rule of thumb when the
# batch grows by $k$ is to grow the learning rate too (linearly, with a warmup: Goyal et al., 2017,
# for ImageNet); BERT used 256 sequences at a learning rate of $10^{-4}$, and LAMB (You et al., 2019)
# trained it with batches of 32k and more. None of that changes the point of this lesson: however the
# batch is computed — in one piece, in micro-batches, or on many machines — the update must be the
# gradient of the *same* loss.
#
# ## Summary
#
# * One update's loss: MLM mean over its $N$ labelled tokens + NSP mean over its $B$ sequences.
# * Micro-batch $k$'s means enter with weights $N_k/N$ and $B_k/B$ — not $1/K$. Count $N$ and $B$
#   before the first forward; zero the gradients where `backward()` would add what you do not want.
# * The plain average is exact only for equal counts; its error grows with the imbalance (here about 10%
#   at 40 : 30 labelled tokens, more than 100% past 8 : 1), and the logged loss is wrong too.
# * Exact equality needs float64 to see it, dropout off, and per-sequence normalisation (LayerNorm).
# * The gradient's noise falls like $1/B$: accumulation buys a bigger batch for time, not memory.
