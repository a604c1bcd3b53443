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
# # Lesson 16 — Data parallelism: one big batch on many processes
#
# When one process is too slow, give every process a share of each batch and let them add up their
# gradients. Done right, N processes train **exactly** the model one process trains on the whole batch —
# not roughly, to the last bits of float64 rounding. Done wrong, they train something else and nothing
# crashes. In this lesson you will
#
# 1. **split a batch's loss into shares that add up to the big batch's loss** (exercise), and see the
#    per-rank-mean bug that looks right and is not (the same bug as in lesson 11, now across processes);
# 2. launch **two MPI processes from this notebook** (`mpiexec -n 2`) that train a BERT with one
#    all-reduce per step, and assert that their weights equal one process's after several AdamW steps;
# 3. **write the ring all-reduce** (exercise): reduce-scatter, then all-gather, over N simulated ranks —
#    the algorithm behind NCCL and MPI's large all-reduces — and count the bytes it sends;
# 4. measure what an all-reduce costs here, fit the ring's cost model $t = \alpha + 2\frac{N-1}{N}\frac{S}{\beta}$
#    to it, and work out how efficiency falls as machines are added.
#
# **Prerequisites:** lesson 4 (a training step), lesson 10 (AdamW, clipping), lesson 11 (gradient
# accumulation and the normalisation of token-level losses). Math: sums and means; Python's `subprocess`.
# Nothing about MPI is assumed: the four MPI calls used are explained where they appear.
#
# **Time:** about 60 minutes.
#
# The two processes run on the cores of this machine, one BLAS thread each (set before NumPy loads):

# %%
import os
if "OPENBLAS_NUM_THREADS" not in os.environ:               # a setting of your own wins
    os.environ["OPENBLAS_NUM_THREADS"] = "1"               # read once, when NumPy loads OpenBLAS

# %%
# %matplotlib inline
import json
import sys
import time

import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import distributed, teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
work = teach.workdir("lesson16")              # the scripts and results the processes write
print("MPI launcher:", distributed.find_mpiexec())

# %% [markdown]
# ## 1. A batch, split across ranks
#
# Data parallelism in one sentence: **every process (a *rank*) holds the same model, takes its own rows of
# the update's batch, runs forward and backward on them, and the ranks add up their gradients** before
# the optimizer step — the same step on every rank, so the weights stay identical.
#
# "Add up their gradients" is only right if each rank's gradient is its **share** of the big batch's
# gradient. BERT's loss is a mean over the batch's *labelled tokens* (MLM) plus a mean over its *sequences*
# (NSP):
#
# $$L = \frac{1}{M}\sum_{\text{labelled tokens } t} \ell_t \;+\; \frac{1}{S}\sum_{\text{sequences } s} \ell_s .$$
#
# A rank sees only its rows: its own token losses $\ell_t$ and sequence losses $\ell_s$. The gradient of a sum
# is the sum of the gradients, so if every rank computes a loss share $L_r$ with $\sum_r L_r = L$, then the
# sum of the ranks' gradients *is* the big batch's gradient.
#
# Masking makes the ranks unequal: one rank's rows may hold 9 labelled tokens, another's 14. Here is a
# batch of 8 sequences as 3 ranks would split it (contiguous rows, as `bertnp` shares them):

# %%
def toy_token_losses(rng, rows=8):
    """Per-row lists of MLM token losses (unequal counts, as masking gives) and per-row NSP losses."""
    counts = rng.integers(0, 6, rows)                         # labelled tokens per sequence: 0..5
    mlm = [rng.uniform(0.5, 9.0, c) for c in counts]          # cross-entropies of those tokens
    nsp = rng.uniform(0.1, 1.5, rows)                         # one NSP cross-entropy per sequence
    return mlm, nsp


mlm_rows, nsp_rows = toy_token_losses(np.random.default_rng(3))
shares = np.array_split(np.arange(8), 3)                      # rows of ranks 0, 1, 2
for r, rows in enumerate(shares):
    print(f"rank {r}: rows {rows.tolist()}, labelled tokens {sum(len(mlm_rows[i]) for i in rows)}, "
          f"sequences {len(rows)}")
big_batch_loss = np.concatenate(mlm_rows).mean() + nsp_rows.mean()
print(f"the big batch's loss: {big_batch_loss:.6f}")

# %% [markdown]
# ### Exercise 1: a rank's share of the loss
#
# Write `my_loss_share`: given **this rank's** token losses and sequence losses, and the counts that the
# ranks can learn from each other first (the update's total labelled tokens and total sequences, summed over
# all ranks — one small all-reduce), return this rank's share $L_r$ of the loss, such that **the shares of
# all ranks add up to $L$ exactly**, however unequally the labelled tokens fall. A rank may hold no labelled
# token at all. You may not need every argument.
#
# The check splits several batches over 1 to 5 ranks (one with an empty rank), adds your shares, and
# compares with the big batch's loss.

# %% tags=["exercise"]
# EXERCISE: a rank's share of the update's loss, so that the shares of all ranks add up to it
def my_loss_share(mlm_token_losses, nsp_sequence_losses, total_tokens, total_sequences, n_ranks):
    """mlm_token_losses: (m,) this rank's labelled-token cross-entropies (m may be 0);
    nsp_sequence_losses: (s,) this rank's sequences' NSP cross-entropies;
    total_tokens, total_sequences: the update's counts over ALL ranks; n_ranks: how many ranks.
    Returns a float L_r with sum over ranks of L_r == the whole batch's MLM mean + NSP mean."""
    ### BEGIN SOLUTION
    share = float(np.sum(mlm_token_losses)) / max(total_tokens, 1)     # this rank's part of the MLM mean
    share += float(np.sum(nsp_sequence_losses)) / total_sequences      # ... and of the NSP mean
    ### END SOLUTION
    return share


# %% tags=["check"]
def check_loss_shares(loss_share):
    for seed, n_ranks in [(3, 3), (4, 2), (5, 5), (6, 1), (7, 4)]:
        mlm, nsp = toy_token_losses(np.random.default_rng(seed))
        if seed == 5:
            mlm[0] = mlm[1] = np.zeros(0)                 # rank 0 of 5 (rows 0, 1) holds no labelled token
        expected = np.concatenate(mlm).mean() + nsp.mean()
        split = np.array_split(np.arange(8), n_ranks)
        total_tokens, total_sequences = sum(len(m) for m in mlm), len(nsp)
        parts = []
        for rows in split:
            tokens = np.concatenate([mlm[i] for i in rows])
            parts.append(loss_share(tokens, nsp[rows], total_tokens, total_sequences, n_ranks))
        per_rank = ", ".join(f"{p:.4f}" for p in parts)
        token_counts = [sum(len(mlm[i]) for i in rows) for rows in split]
        teach.check(np.isfinite(parts).all() and abs(sum(parts) - expected) <= 1e-12 * expected,
                    f"{n_ranks} rank(s) holding {token_counts} labelled tokens: your shares [{per_rank}] "
                    f"add up to the big batch's loss", round(float(sum(parts)), 12), round(float(expected), 12))


check_loss_shares(my_loss_share)

# %% [markdown]
# **Solution notes.** Write the big batch's loss with its sums split by rank:
# $L = \frac{1}{M}\sum_r \sum_{t \in r} \ell_t + \frac{1}{S}\sum_r \sum_{s \in r} \ell_s = \sum_r \Big(\frac{1}{M}\sum_{t\in r}\ell_t + \frac{1}{S}\sum_{s\in r}\ell_s\Big)$.
# So a rank **sums** its losses and divides by the **global** counts $M$ and $S$. A rank needs $M$ before it can
# scale its loss, so the ranks all-reduce two integers before the forward pass: one tiny message per update.
#
# The tempting answer, "each rank takes its own mean, then average the ranks" ($\frac{1}{N}\sum_r
# \bar\ell_r$), weights a token on a rank with few labelled tokens more than a token on a rank with many;
# it is right only when every rank holds the same number of labelled tokens, which masking never
# guarantees (and it divides by zero on a rank with none). It is the bug lesson 11 showed in gradient
# accumulation — Hugging Face's Trainer averaged micro-batch means until transformers PR #34191 (Oct 2024) —
# now across processes. The same rule holds for logged losses and accuracies.
#
# The library does exactly this: `model(..., mlm_denominator=M, nsp_denominator=S)` divides the summed
# cross-entropies by the update's counts instead of the rows' own, so its gradients are shares too. On a
# real model (float64, no dropout): the sum of three ranks' gradients equals the big batch's, and the
# average of the ranks' own-mean gradients does not:

# %%
cfg = bn.BertConfig(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=32,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def make_batch(step, rows=8, length=16, vocab=120):
    """The update's batch for ``step``: the same on every rank (seeded by the step); rows hold 0..5
    labelled tokens, so the ranks' shares are unequal."""
    r = np.random.default_rng(1000 + step)
    ids = r.integers(5, vocab, (rows, length))
    labels = np.full((rows, length), -100)
    for i in range(rows):
        spots = r.choice(np.arange(1, length), r.integers(0, 6), replace=False)
        labels[i, spots] = r.integers(5, vocab, len(spots))
    return dict(input_ids=ids, labels=labels, next_sentence_label=r.integers(0, 2, rows))


def gradients(model, batch, **denominators):
    model.zero_grad()
    model(**batch, **denominators)
    return {k: v.copy() for k, v in model.backward().items()}


model = bn.BertForPreTraining(cfg, seed=0, dtype="float64")
batch = make_batch(0)
big = gradients(model, batch)
M, S = int((batch["labels"] != -100).sum()), len(batch["labels"])
parts = [gradients(model, {k: v[rows] for k, v in batch.items()}, mlm_denominator=M, nsp_denominator=S)
         for rows in np.array_split(np.arange(8), 3)]
own_means = [gradients(model, {k: v[rows] for k, v in batch.items()}) for rows in np.array_split(np.arange(8), 3)]
print("labelled tokens per rank:", [int((batch["labels"][rows] != -100).sum()) for rows in np.array_split(np.arange(8), 3)])

# the attention key biases' gradient is exactly zero in exact arithmetic (lesson 2): only rounding noise
# (~1e-18) is left there, which a relative comparison would blow up. Compare every other tensor relative
# to its own scale.
compared = [k for k in big if not k.endswith("attention.self.key.bias")]


def largest_relative(a, b, names):
    return max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in names)


shared = {k: sum(p[k] for p in parts) for k in big}
averaged = {k: sum(p[k] for p in own_means) / 3 for k in big}
worst, wrong = largest_relative(shared, big, compared), largest_relative(averaged, big, compared)
print(f"sum of shares vs big batch: largest relative difference {worst:.1e}")
print(f"average of own means vs big batch: largest relative difference {wrong:.1e}")
assert worst < 1e-12, f"the shares should add up to the big batch's gradient: {worst:.1e}"
assert wrong > 1e-3, f"the per-rank-mean average should be visibly wrong: {wrong:.1e}"

# %% [markdown]
# ## 2. Two processes, one model: MPI from the notebook
#
# Real ranks are separate processes, possibly on separate machines, that share nothing but messages.
# **MPI** is the standard that clusters run for this; `mpi4py` is its Python binding and the `mpich`
# package from PyPI brings an MPI library with its launcher, `mpiexec` (`pip install 'bertnp[mpi]'`).
# `mpiexec -n 2 python script.py` starts the script twice; inside, `MPI.COMM_WORLD` tells each copy its
# `rank` (0 or 1) and the `size` (2). The script below needs four MPI calls:
#
# - `comm.Allreduce(local, total, op=MPI.SUM)` — every rank passes an array, every rank gets the
#   element-wise sum over all ranks. Used twice per step: for the counts $M, S$ (two integers), and for the
#   gradients — **all of them in one flat buffer**, one call per step rather than one per tensor (46 calls
#   would each pay the latency $\alpha$ of section 4);
# - `comm.allreduce(x)` (lower case) — the same for a Python number (the logged loss);
# - `comm.gather(x)` — rank 0 collects one object from every rank (to print the counts).
#
# Everything else is the training step of lesson 4. Clipping and AdamW run on every rank on identical
# summed gradients, so every rank makes the same update and the weights never drift apart. The script also
# runs on one process (`size` 1: the whole batch), and with `per-rank-mean` it makes the mistake of
# exercise 1 (own means, gradients averaged).

# %%
SCRIPT = r'''
"""Data-parallel training: every rank builds the same model, takes its rows of each update's batch,
scales its loss by the update's counts, and the ranks sum their gradients (one all-reduce)."""
import sys
import numpy as np
from mpi4py import MPI
import bertnp as bn
from bertnp.optim import AdamW, clip_grad_norm

mode, steps, result = sys.argv[1], int(sys.argv[2]), sys.argv[3]      # "exact" or "per-rank-mean"
comm = MPI.COMM_WORLD
rank, size = comm.rank, comm.size
bn.set_backend("numpy")
CONFIG = dict(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=32, max_position_embeddings=32,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
model = bn.BertForPreTraining(bn.BertConfig(**CONFIG), seed=0, dtype="float64")   # the same on every rank
opt = AdamW(model, lr=1e-2, weight_decay=0.01)
names = sorted(model.grads)                           # one order on every rank: the flat buffer's layout


def make_batch(step, rows=8, length=16, vocab=120):   # the notebook's: the same batch on every rank
    r = np.random.default_rng(1000 + step)
    ids = r.integers(5, vocab, (rows, length))
    labels = np.full((rows, length), -100)
    for i in range(rows):
        spots = r.choice(np.arange(1, length), r.integers(0, 6), replace=False)
        labels[i, spots] = r.integers(5, vocab, len(spots))
    return dict(input_ids=ids, labels=labels, next_sentence_label=r.integers(0, 2, rows))


losses, counts = [], []
for step in range(steps):
    batch = make_batch(step)
    rows = np.array_split(np.arange(8), size)[rank]                   # this rank's rows
    share = {k: v[rows] for k, v in batch.items()}
    local = np.array([(share["labels"] != -100).sum(), len(rows)], dtype=np.int64)
    total = np.empty_like(local)
    comm.Allreduce(local, total, op=MPI.SUM)                          # M and S of the whole update
    counts.append(comm.gather(int(local[0])))
    model.zero_grad()
    if mode == "exact":                                               # this rank's share of the loss
        out = model(**share, mlm_denominator=int(total[0]), nsp_denominator=int(total[1]))
    else:                                                             # the mistake: its own means
        out = model(**share)
    grads = model.backward()
    flat = np.concatenate([grads[n].ravel() for n in names])         # (P,) every gradient, one buffer
    comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)                    # summed over the ranks, in place
    if mode != "exact":
        flat /= size                                                  # ... and averaged
    offset = 0
    for n in names:                                                   # back into the model's gradients
        grads[n][...] = flat[offset:offset + grads[n].size].reshape(grads[n].shape)
        offset += grads[n].size
    clip_grad_norm(grads, 1.0)
    opt.step()
    loss = comm.allreduce(float(out.loss), op=MPI.SUM)                # the shares add up to the loss
    losses.append(loss if mode == "exact" else loss / size)

if rank == 0:                                                         # rank 0 alone writes
    np.savez(result, losses=np.array(losses), **model.parameters())
    print(f"{size} rank(s), {mode}: losses {np.round(losses, 4).tolist()}")
    if size > 1:
        print("labelled tokens per rank, step by step:", counts)
'''
script = work / "data_parallel.py"
script.write_text(SCRIPT)
STEPS = teach.pick(10, 5)


def run_ranks(n, mode):
    """``mpiexec -n n python data_parallel.py mode STEPS result.npz``, one BLAS thread per rank; its printout."""
    result = work / f"{mode}-{n}.npz"
    started = time.perf_counter()
    done = distributed.launch(n, str(script), mode, str(STEPS), str(result), threads_per_rank=1,
                              capture_output=True, check=False, timeout=600)
    assert done.returncode == 0, f"mpiexec -n {n} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}"
    print(done.stdout.strip(), f"   [{time.perf_counter() - started:.1f} s]")
    return dict(np.load(result))


one = run_ranks(1, "exact")
two = run_ranks(2, "exact")
two_wrong = run_ranks(2, "per-rank-mean")

# %% [markdown]
# The two ranks never held the same number of labelled tokens, and still (float64, no dropout):

# %%
weights = [k for k in one if k != "losses"]


def largest_difference(a, b):
    """(largest |a - b| over all weights, largest relative to the tensor's scale, key biases left out:
    they start at 0 and move only by rounding noise, ~1e-14, since their gradient is 0)."""
    absolute = max(float(np.abs(a[k] - b[k]).max()) for k in weights)
    return absolute, largest_relative(a, b, [k for k in weights if not k.endswith("attention.self.key.bias")])


exact_abs, exact_rel = largest_difference(two, one)
wrong_abs, wrong_rel = largest_difference(two_wrong, one)
print(f"after {STEPS} AdamW steps, 2 ranks vs 1 process: max |difference| {exact_abs:.1e} "
      f"(relative {exact_rel:.1e}); losses differ by {np.abs(two['losses'] - one['losses']).max():.1e}")
print(f"the per-rank-mean mistake vs 1 process: max |difference| {wrong_abs:.1e} (relative {wrong_rel:.1e})")
assert exact_rel <= 1e-12, f"2 ranks should train the 1-process model to rounding: relative {exact_rel:.1e}"
assert np.abs(two["losses"] - one["losses"]).max() <= 1e-12, "the summed loss shares should be the big batch's losses"
assert wrong_rel > 1e-4, f"averaging the ranks' own means should train another model: relative {wrong_rel:.1e}"

# %% [markdown]
# Why not bit for bit? One process adds the 8 rows' contributions to each weight gradient in one matrix
# product; two ranks add 4 rows each, then add the two sums. Floating-point addition is not associative, so
# the last bit or two of a gradient can differ (~1e-16 relative), and AdamW, which divides each gradient entry by
# its own running scale, carries that along: ~1e-13 relative in the weights after 10 steps. In float32 with dropout
# the ranks also draw different dropout masks than one process would (in `bertnp` each rank mixes its rank
# into the dropout seed), so they agree in distribution, not in bits. The mistake, in contrast, changes the
# update by ~1e-3 relative on the first step already.
#
# `bertnp pretrain` does all of this for you: `mpiexec -n 2 bertnp pretrain ...` (README, "Several processes
# and machines") shares each update's rows, all-reduces the counts and one flat gradient buffer, lets rank 0
# alone write checkpoints and metrics, compares a checksum of the weights every 100 steps, and stops every
# rank with a message naming the one that died or hangs. From a notebook: `bertnp.distributed.launch(2, "-m",
# "bertnp", "pretrain", ...)`.
#
# ## 3. The ring all-reduce
#
# How does an all-reduce add up N buffers of $S$ bytes? The obvious way — every rank sends its buffer to rank 0,
# which adds them and sends the sum back — makes rank 0 receive $(N-1)S$ bytes and send as much: its link is the
# bottleneck, and the time grows with N. The **ring all-reduce** (Patarasuk & Yuan 2009; one of NCCL's algorithms
# for large buffers, and MPI libraries use the same reduce-scatter + all-gather idea; Baidu brought it to deep
# learning in 2017) keeps every link equally busy:
#
# - cut each rank's buffer into N chunks; rank r only ever sends to rank r+1 (mod N) and receives from r−1;
# - **reduce-scatter**, N−1 steps: each step every rank sends one chunk to its right neighbour, which adds it
#   to its own copy of that chunk. Choose the chunk indices well, and after N−1 steps each rank holds *one*
#   chunk that is the complete sum over all ranks (a different chunk on each rank);
# - **all-gather**, N−1 steps: each rank passes complete chunks along the ring (copying, not adding), until
#   every rank holds every complete chunk.
#
# Each rank sends $2(N-1)$ chunks of $S/N$ bytes: $2\frac{N-1}{N}S$ bytes in all, **less than $2S$ however many
# ranks there are**. That is why its time hardly grows with N (section 4).
#
# ### Exercise 2: the ring all-reduce in NumPy
#
# Below, `Ring` simulates the network: `ring.exchange(outgoing)` takes one array per rank — what rank r sends
# to rank r+1 — performs one step of the ring (all ranks send at once), and returns what each rank received
# (`received[r]` came from rank r−1). It counts the steps and the bytes. Write `my_ring_allreduce(buffers,
# ring)`: N 1-D float64 buffers, one per rank, of equal length (not necessarily a multiple of N); afterwards
# **every** buffer must hold the element-wise **sum** of the N original buffers, in place, using only
# `ring.exchange` to move data between ranks, in $2(N-1)$ steps. `np.array_split(buffer, N)` gives the N chunks
# as views (writing into a view writes into the buffer). Work out which chunk rank r sends at step s, and where
# the chunk it receives goes; a small table for N = 3 on paper helps.

# %%
class Ring:
    """N ranks in a ring: at each step every rank r sends one array to rank (r + 1) % N."""

    def __init__(self, n):
        self.n, self.steps, self.bytes_sent = n, 0, np.zeros(n, dtype=np.int64)

    def exchange(self, outgoing):
        """outgoing[r]: the array rank r sends to rank r+1. Returns received, received[r] from rank r-1."""
        if len(outgoing) != self.n:
            raise ValueError(f"exchange needs one array per rank ({self.n}), got {len(outgoing)}")
        self.steps += 1
        for r, array in enumerate(outgoing):
            self.bytes_sent[r] += np.asarray(array).nbytes
        return [np.array(outgoing[(r - 1) % self.n], copy=True) for r in range(self.n)]   # over the wire: copies


# %% tags=["exercise"]
# EXERCISE: the ring all-reduce (reduce-scatter, then all-gather), in place, through ring.exchange only
def my_ring_allreduce(buffers, ring):
    """buffers: list of N 1-D float64 arrays of equal length, buffers[r] held by rank r. In place, every
    buffer becomes the element-wise sum of all N; data moves only through ring.exchange, 2(N-1) calls."""
    n = len(buffers)
    ### BEGIN SOLUTION
    chunks = [np.array_split(b, n) for b in buffers]        # chunks[r][c]: a view of rank r's chunk c
    # reduce-scatter: at step s rank r sends chunk (r - s) % n; rank r receives chunk (r - 1 - s) % n from
    # rank r - 1 and adds it. After n - 1 steps rank r holds chunk (r + 1) % n summed over all n ranks.
    for s in range(n - 1):
        received = ring.exchange([chunks[r][(r - s) % n] for r in range(n)])
        for r in range(n):
            chunks[r][(r - 1 - s) % n] += received[r]
    # all-gather: at step s rank r passes on complete chunk (r + 1 - s) % n; the receiver copies it
    for s in range(n - 1):
        received = ring.exchange([chunks[r][(r + 1 - s) % n] for r in range(n)])
        for r in range(n):
            chunks[r][(r - s) % n][...] = received[r]
    ### END SOLUTION


# %% tags=["check"]
def check_ring(ring_allreduce):
    for n, length in [(2, 6), (3, 10), (4, 4), (5, 13), (1, 3)]:
        r = np.random.default_rng(100 + n)
        originals = [r.integers(-50, 50, length).astype(np.float64) for _ in range(n)]   # integer sums: exact
        buffers = [b.copy() for b in originals]
        ring = Ring(n)
        ring_allreduce(buffers, ring)
        expected = np.sum(originals, axis=0)
        for rank, b in enumerate(buffers):
            if not np.array_equal(b, expected):
                wrong = np.flatnonzero(b != expected)
                raise teach.CheckFailed(
                    f"{n} ranks, {length} numbers: rank {rank} holds {b.tolist()}, the sum is {expected.tolist()} "
                    f"(wrong at {wrong.tolist()}; the inputs were {[o.tolist() for o in originals]}). "
                    "Averaged instead of summed? A chunk added twice or to the wrong place? Copied (not added) "
                    "during the reduce-scatter, or added during the all-gather?")
        sent = np.array([2 * (n - 1) * length / n] * n)
        teach.check(ring.steps == 2 * (n - 1), f"{n} ranks: ring steps", ring.steps, 2 * (n - 1))
        teach.check(np.abs(ring.bytes_sent / 8 - sent).max() <= 2 * (n - 1),
                    f"{n} ranks, {length} numbers: numbers sent per rank (one chunk a step; ~2(N-1)/N x {length})",
                    (ring.bytes_sent // 8).tolist(), np.round(sent, 1).tolist())


check_ring(my_ring_allreduce)

# %% [markdown]
# **Solution notes.** Number the steps s = 0 … N−2. In the reduce-scatter, rank r sends chunk $(r - s) \bmod N$;
# its neighbour r+1 receives it, and that is chunk $((r+1) - 1 - s) \bmod N$ in the receiver's terms, so the
# receiver adds what it gets into its chunk $(r - 1 - s) \bmod N$. Follow chunk c: rank c sends it at step 0, rank
# c+1 adds it and sends the partial sum at step 1, … after N−1 steps rank c+N−1 = c−1 (mod N) holds it summed over
# all N ranks — that is, rank r holds chunk $(r+1) \bmod N$ complete. The all-gather starts there: at step s rank r
# sends chunk $(r + 1 - s) \bmod N$ and the receiver **copies** it (adding would double-count). The usual wrong
# answers: dividing by N (an average — the per-rank-mean mistake in another place), an index off by one (a chunk
# added to the wrong chunk: the sums come out wrong on some ranks), adding during the all-gather, or sending the
# whole buffer each step (right sums, N times the traffic).
#
# ## 4. What communication costs
#
# The ring's time for a buffer of $S$ bytes on N ranks is, in the usual model,
#
# $$t(S, N) = 2(N-1)\,\alpha + 2\,\frac{N-1}{N}\,\frac{S}{\beta},$$
#
# with $\alpha$ the latency of one message and $\beta$ the bandwidth of one link. Small buffers pay $\alpha$,
# large ones pay $S/\beta$. Let us measure `MPI_Allreduce` on this machine, 2 ranks over shared memory, for
# buffers of a few KB to many MB, and fit $\alpha$ and $\beta$. (Expect the model to be rough here: MPI switches
# protocol and algorithm with the buffer's size, and a buffer that stops fitting in the CPU caches gets slower per
# byte. The model is for reasoning about networks, where $\alpha$ and $\beta$ are properties of the link.)

# %%
TIMING = r'''
import sys, json, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
repeats, sizes = int(sys.argv[1]), [int(s) for s in sys.argv[2:]]
rows = []
for nbytes in sizes:
    buffer = np.ones(nbytes // 8)                                  # float64
    times = []
    for i in range(repeats + 1):
        comm.Barrier()                                             # start together: time the communication only
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        elapsed = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)   # the slowest rank's time
        if i:
            times.append(elapsed)                                  # the first call warms up
    rows.append([nbytes, float(np.median(times))])
if comm.rank == 0:
    print(json.dumps(rows))
'''
(work / "allreduce_timing.py").write_text(TIMING)
sizes = [2 ** k for k in range(12, teach.pick(27, 25), 2)]       # 4 KiB .. 64 MiB (fast: .. 16 MiB)
done = distributed.launch(2, str(work / "allreduce_timing.py"), str(teach.pick(20, 5)), *map(str, sizes),
                          threads_per_rank=1, capture_output=True, timeout=600)
measured = np.array(json.loads(done.stdout.strip().splitlines()[-1]))      # (sizes, 2): bytes, seconds
nbytes, seconds = measured[:, 0], measured[:, 1]
for b, t in measured:
    print(f"{int(b):>10,d} bytes: {1e3 * t:8.3f} ms")

# fit t = 2(N-1) alpha + 2(N-1)/N S / beta, linear in (alpha, 1/beta): least squares on the RELATIVE error
# (each row divided by its time), so the microsecond buffers count as much as the millisecond ones
N = 2
design = np.stack([np.full_like(nbytes, 2 * (N - 1)), 2 * (N - 1) / N * nbytes], axis=1)   # (sizes, 2)
(alpha, inverse_beta), *_ = np.linalg.lstsq(design / seconds[:, None], np.ones_like(seconds), rcond=None)
print(f"fitted: alpha = {1e6 * alpha:.1f} us per message, beta = {1 / inverse_beta / 1e9:.2f} GB/s per link")
assert seconds[-1] > 3 * seconds[0], \
    f"a {nbytes[-1]:.0f}-byte all-reduce should take far longer than a {nbytes[0]:.0f}-byte one: {seconds[[0, -1]]}"
assert alpha > 0 and inverse_beta > 0, f"the fit should give a positive latency and bandwidth: {alpha}, {inverse_beta}"
beta = 1 / inverse_beta


def ring_seconds(size_bytes, ranks, alpha, beta):
    """The ring all-reduce's cost model: 2(N-1) latencies + 2(N-1)/N x bytes / bandwidth."""
    return 2 * (ranks - 1) * alpha + 2 * (ranks - 1) / ranks * size_bytes / beta


# %% [markdown]
# Now the question that matters: as machines are added, how much of each step goes to communication? Take
# BERT-mini (the preset `bertnp pretrain` trains by default): its gradients are $4P$ bytes in float32, all-reduced once per
# update. Measure what one process computes per second here, and take an update of 256 sequences × 128 tokens
# shared by N machines (*strong scaling*: the batch is fixed, each machine's share shrinks as 1/N). A step then
# takes $\frac{\text{tokens}}{N \cdot \text{speed}}$ of compute plus $t(4P, N)$ of all-reduce, and the efficiency is
# compute / (compute + communication) — without overlapping the two (`bertnp`'s `--overlap-allreduce` starts each
# layer's all-reduce while backward goes on; `benchmarks/RESULTS.md` measures whether it pays on a given machine).

# %%
mini = bn.BertConfig.preset("mini", vocab_size=30522)
rows, length = teach.pick((8, 128), (2, 64))
r = np.random.default_rng(0)
step_batch = dict(input_ids=r.integers(1000, 30522, (rows, length)),
                  labels=np.where(r.random((rows, length)) < 0.15, r.integers(1000, 30522, (rows, length)), -100),
                  next_sentence_label=r.integers(0, 2, rows))
mini_model = bn.BertForPreTraining(mini, seed=0)                 # float32, as BERT trains
params = mini_model.num_parameters()
times = []
for _ in range(teach.pick(3, 2)):
    t0 = time.perf_counter()
    mini_model.zero_grad()
    mini_model(**step_batch)
    mini_model.backward()
    times.append(time.perf_counter() - t0)
speed = rows * length / min(times)                                # tokens per second, one process, 1 thread
print(f"BERT-mini: {params:,} parameters = {4 * params / 1e6:.1f} MB of float32 gradients per update; "
      f"forward + backward here: {speed:,.0f} tokens/s")

update_tokens = 256 * 128
machines = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256])
networks = {"10 Gb/s, 20 µs": (20e-6, 10e9 / 8), "100 Gb/s, 5 µs": (5e-6, 100e9 / 8)}
speedups = [1, 30, 1000]                   # machines as fast as this process, 30x and 1000x faster
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.5, 5.2))
ax1.loglog(nbytes, 1e3 * seconds, "o", label="measured, 2 ranks")
ax1.loglog(nbytes, 1e3 * ring_seconds(nbytes, 2, alpha, beta), "-",
           label=rf"model: $\alpha$ = {1e6 * alpha:.0f} µs, $\beta$ = {beta / 1e9:.2f} GB/s")
ax1.set(xlabel="buffer size, bytes", ylabel="MPI_Allreduce time, ms",
        title="All-reduce on this machine (2 ranks, shared memory)")
ax1.legend()
efficiency = {}
for (network, (a, b)), style in zip(networks.items(), ["-", "--"]):
    for speedup, color in zip(speedups, ["C0", "C1", "C3"]):
        compute = update_tokens / (machines * speed * speedup)
        communication = np.array([ring_seconds(4 * params, n, a, b) for n in machines])
        efficiency[network, speedup] = compute / (compute + communication)
        ax2.semilogx(machines, 100 * efficiency[network, speedup], style, marker="o", ms=3, color=color, base=2,
                     label=f"{speedup}x this process, {network}")
ax2.set(xlabel="machines N", ylabel="scaling efficiency, %", ylim=(0, 105),
        title=f"BERT-mini: update of 256 x 128 tokens, {4 * params / 1e6:.0f} MB all-reduced")
ax2.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
plt.tight_layout()
plt.show()

for (network, speedup), e in efficiency.items():
    print(f"{speedup:>5}x, {network:15s}" + " ".join(f"N={n}: {100 * x:3.0f}%" for n, x in zip(machines, e)))
    assert np.all(np.diff(e) <= 1e-12), f"efficiency should fall as machines are added ({network}, {speedup}x): {e}"
fastest = efficiency["10 Gb/s, 20 µs", 1000]
assert fastest[machines == 8][0] < 0.5, f"machines 1000x faster on 10 Gb/s should be below 50% at N = 8: {fastest}"
# the ring's time is bounded as N grows: at most 2 S / beta (+ latencies), whatever N
bounded = ring_seconds(4 * params, 1024, 0.0, 1e9) / ring_seconds(4 * params, 2, 0.0, 1e9)
assert bounded < 2, f"the ring's bandwidth term should stay below twice its 2-rank value: ratio {bounded:.3f}"
print(f"bandwidth term at N = 1024 vs N = 2: x{bounded:.3f} (the ring's bound: < 2)")

# %% [markdown]
# Read the figure from right to left:
#
# - **Communication per step hardly grows with N** (the ring: less than $2S/\beta$), but **compute per machine
#   shrinks as 1/N** when the batch is fixed. At some N the all-reduce dominates, and adding machines stops
#   paying. How soon depends on the ratio of compute speed to link bandwidth: fast GPUs on a slow network hit
#   the wall after a few machines (a GPU does this work orders of magnitude faster than one CPU core: the
#   red curves), while this CPU process, slow as it is, hardly notices a 10 Gb/s network.
# - The latency term $2(N-1)\alpha$ does grow with N: with hundreds of ranks it matters even for large
#   buffers, which is why large systems use trees or hierarchical rings (within a machine, then across).
# - The ways out: fewer bytes (float16/bfloat16 gradients halve $S$), **overlap** (all-reduce layer l's
#   gradients while backward computes layer l−1's: communication hides behind compute, up to the compute
#   time), and a larger batch per machine (*weak scaling*: each machine keeps its share, the update grows with
#   N, compute per step stays constant, so efficiency stays at compute / (compute + $2S/\beta$)). A larger
#   update changes the optimization, though: that is lesson 11's batch-size discussion.
#
# `benchmarks/RESULTS.md` ("Several processes (MPI)") has the measurements for `bertnp pretrain` itself on a
# 2-core machine: 1 process × 2 threads against 2 ranks × 1 thread, the all-reduce's share of a step, and the
# all-reduce alone against size and rank count; `benchmarks/README.md` the same model for BERT-base.

# %% [markdown]
# ## 5. The same split inside one machine: a share per core
#
# Nothing in section 1 needs separate processes. `bertnp`'s training loop uses the same split on the cores of
# one machine (`bertnp.cores.CoreReplicas`): each core takes a share of a micro-batch's rows and runs its
# whole forward and backward on a **replica** of the model — the same weight arrays, its own gradients and
# activations — in a thread of this process, BLAS on one thread. The all-reduce becomes a sum in memory: the
# replicas' gradients are added into the model's. Two things make the shares add up to the whole batch
# exactly, and you have met both:
#
# - the **loss shares** of exercise 1: every share divides its summed losses by the whole batch's counts
#   (the model's `mlm_denominator=` / `nsp_denominator=`, as for lesson 11's micro-batches);
# - the **dropout masks**: lesson 7's masks are counter-based random bits, a pure function of the key
#   (seed, step, site) and of the element's index. A replica's key also carries its share's first row, so
#   it draws the whole batch's mask for its rows: dropout stays on, and the shares still equal one model on
#   the whole batch. (The MPI script of section 2 turned dropout off instead.)
#
# Why, when `bertnp.parallel` already spreads every operation over the cores? Most operations are memory
# traffic, not arithmetic (lesson 15's profile): a GELU or a LayerNorm on two cores runs only 1.3–1.9× as
# fast as on one, and every operation waits for its slowest block before the next one starts. A whole share
# per core has no such hand-offs. First the check — dropout on, float64, 7 rows in three shares:

# %%
from bertnp import parallel
from bertnp.cores import CoreReplicas

core_config = bn.BertConfig(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=32)   # dropout 0.1, BERT's default
core_batch = make_batch(5, rows=7)
one_model = bn.BertForPreTraining(core_config, seed=0, dtype="float64").train()
whole = gradients(one_model, core_batch)                     # one model, the whole batch, its own means

shared_model = bn.BertForPreTraining(core_config, seed=0, dtype="float64").train()
replicas = CoreReplicas(shared_model, count=3)
core_counts = {"mlm_denominator": int((core_batch["labels"] != -100).sum()),
               "nsp_denominator": len(core_batch["labels"])}   # the WHOLE batch's counts, as in exercise 1


def share_forward_backward(model, share):
    model(**share, **core_counts)            # this share's summed losses over the whole batch's counts
    model.backward()                         # into this replica's own gradients


shared_model.zero_grad()
replicas.run(core_batch, share_forward_backward)            # three shares at once, then their gradients added
print("rows per share:", [part.stop - part.start for part in replicas.shares(7)])
core_worst = largest_relative(shared_model.grads, whole, [k for k in whole if not k.endswith("key.bias")])
print(f"three shares on the cores vs one model on the whole batch: largest relative difference {core_worst:.1e}")
assert core_worst < 1e-12, f"the cores' shares should add up to the whole batch's gradient: {core_worst:.1e}"

# %% [markdown]
# And the time, on two threads: the whole batch with every operation on both cores, against two shares, one a
# core. (Timings on a shared machine wobble; `benchmarks/README.md`, "issue 18, third round", has careful ones.)

# %%
time_config = bn.BertConfig(vocab_size=teach.pick(8000, 500), hidden_size=teach.pick(128, 32),
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=teach.pick(512, 128),
                            max_position_embeddings=128)
time_batch = make_batch(6, rows=teach.pick(16, 8), length=teach.pick(128, 32), vocab=time_config.vocab_size)
time_counts = {"mlm_denominator": int((time_batch["labels"] != -100).sum()),
               "nsp_denominator": len(time_batch["labels"])}
timed_model = bn.BertForPreTraining(time_config, seed=0, dtype="float32").train()
two_shares = CoreReplicas(timed_model, count=2)


def one_step(split):
    timed_model.zero_grad()
    if split:
        two_shares.run(time_batch, lambda model, share: (model(**share, **time_counts), model.backward()))
    else:
        timed_model(**time_batch)
        timed_model.backward()


with parallel.threads(2):
    step_ms = {False: [], True: []}
    for repeat in range(teach.pick(12, 3) + 1):
        for split in (False, True):                      # alternate: a slow spell hits both alike
            start = time.perf_counter()
            one_step(split)
            if repeat:                                   # the first round warms up
                step_ms[split].append(1e3 * (time.perf_counter() - start))
print(f"forward + backward, two threads: every op on both cores {np.median(step_ms[False]):.0f} ms, "
      f"a share per core {np.median(step_ms[True]):.0f} ms (medians of {len(step_ms[True])})")

# %% [markdown]
# ## Summary
#
# - Data parallelism = same model on every rank, disjoint rows of each update, **sum** of gradients, same
#   optimizer step everywhere.
# - Shares add up only if each rank divides its **summed** losses by the update's **global** counts (labelled
#   tokens for MLM, sequences for NSP): one tiny all-reduce before the forward. Averaging the ranks' own means
#   trains a different model, silently.
# - With that, N processes equal one big batch up to float rounding (asserted here after several AdamW steps).
# - One all-reduce of one flat buffer per update; the ring all-reduce sends $2\frac{N-1}{N}S$ bytes per rank
#   whatever N, so communication is bounded while compute per machine shrinks: efficiency falls with N at a
#   rate set by compute speed / bandwidth.
# - The same split works between the cores of one machine (`bertnp.cores`): replicas sharing the weights,
#   a sum of gradients in memory, and dropout's counter-based masks drawn for each share's rows.
