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
# # Lesson 8 — The heads and the losses
#
# The encoder turns a batch of token ids into hidden states $h$ of shape (B, T, C). Pretraining puts
# two small **heads** on top and scores them with two cross-entropies:
#
# * the **masked-LM head** turns each hidden vector into a score for every one of the $V$ tokens of
#   the vocabulary: a dense layer, GELU and LayerNorm (the *transform*), then a product with the
#   **word-embedding matrix** itself (the *decoder*, tied to the input embeddings) plus a bias;
# * the **NSP head** reads only the `[CLS]` vector: the *pooler* (dense + tanh), then a linear layer
#   to 2 classes (0 = IsNext, 1 = random next).
#
# In this lesson you will
#
# 1. recompute both heads by hand from the encoder's output and the state dict;
# 2. write softmax cross-entropy with `ignore_index = -100`, and **derive its backward** (exercise);
# 3. see why the word-embedding matrix receives its gradient from **two places**, and combine them
#    (exercise);
# 4. count and time what gathering the labelled positions *before* the $V$-way product saves;
# 5. meet two real bugs of public BERT code: the MLM loss averaged over ignored positions (d2l) and the
#    NSP loss with `ignore_index=0` (codertimo's BERT-pytorch).
#
# **Prerequisites:** lesson 1 (forward/backward pairs, gradient checks, the linear layer's backward),
# lesson 2 (softmax), lesson 5 (the embedding backward as a scatter-add with repeated ids), lesson 7
# (GELU). Math: the chain rule, the softmax, matrix products.
#
# **Time:** about 60 minutes.

# %%
# %matplotlib inline
import time

import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
from bertnp.ops.activations import gelu_forward
from bertnp.ops.layernorm import layernorm_forward
from bertnp.ops.linear import linear_forward

# %% [markdown]
# ## 1. The two heads, recomputed by hand
#
# A tiny `BertForPreTraining` in float64 (so that "equal" can mean equal to $10^{-12}$), two sequences
# of 10 positions, the second ending in three `[PAD]`s. `labels` marks the positions the MLM loss
# scores (the masked ones, lesson 3) with the original token id, and every other position with
# **-100**, "not predicted".
#
# Called **without** labels, the model scores every position: `prediction_logits` is (B, T, V).
# Called **with** labels, it scores only the labelled positions: (N, V) for the N labelled positions,
# in row-major order. Section 4 shows why.

# %%
config = bn.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=12)
model = bn.BertForPreTraining(config, seed=0, dtype="float64").eval()   # eval(): dropout off
V, C = config.vocab_size, config.hidden_size

input_ids = rng.integers(5, V, size=(2, 10))
attention_mask = np.ones((2, 10), dtype=np.int64)
attention_mask[1, 7:] = 0                          # three [PAD]s at the end of the second sequence
input_ids[1, 7:] = config.pad_token_id
token_type_ids = np.zeros((2, 10), dtype=np.int64)
token_type_ids[:, 5:] = 1                          # segment B starts at position 5
token_type_ids[1, 7:] = 0                          # padding has type 0
labels = np.full((2, 10), -100)
labels[0, [2, 5, 8]] = rng.integers(5, V, size=3)  # three predicted positions in each sequence
labels[1, [1, 3, 6]] = rng.integers(5, V, size=3)
next_sentence_label = np.array([0, 1])             # 0 = IsNext, 1 = random next
batch = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

every = model(**batch)                             # no labels: every position is scored
out = model(**batch, labels=labels, next_sentence_label=next_sentence_label)
print("last_hidden_state      ", every.last_hidden_state.shape)
print("prediction_logits      ", every.prediction_logits.shape, "without labels;",
      out.prediction_logits.shape, "with labels")
print("seq_relationship_logits", out.seq_relationship_logits.shape)
labelled = labels != -100                           # (B, T) bool
teach.check_equal("rows of the labelled logits", out.prediction_logits.shape[0], int(labelled.sum()))
teach.check_close("labelled logits = every position's logits at the labelled positions",
                  out.prediction_logits, every.prediction_logits[labelled], rtol=1e-12)

# %% [markdown]
# Now the heads by hand, from `last_hidden_state` and the state dict (Hugging Face's names).
# The MLM head: gather the labelled rows, then
#
# $$t = \operatorname{LayerNorm}(\operatorname{gelu}(h W_t^\top + b_t)), \qquad \text{logits} = t\, E^\top + b,$$
#
# where $E$ (V, C) is `bert.embeddings.word_embeddings.weight`, the very matrix the input lookup uses.
# There is no separate decoder matrix in `state_dict()`: Hugging Face's checkpoints list it a second
# time as `cls.predictions.decoder.weight`, the same tensor. Tying saves $V \times C$ parameters
# (23.4 M of BERT-base's 110 M) and makes the input and the output vectors of a token the same vector.

# %%
P = model.state_dict()
E = P["bert.embeddings.word_embeddings.weight"]                        # (V, C)
print("a decoder weight of its own?", "cls.predictions.decoder.weight" in P)

h = out.last_hidden_state                                              # (B, T, C)
selected = h[labelled]                                                 # (B, T, C) -> (N, C), row-major
t, _ = linear_forward(selected, P["cls.predictions.transform.dense.weight"],
                      P["cls.predictions.transform.dense.bias"])       # (N, C)
t, _ = gelu_forward(t)                                                 # exact erf GELU (lesson 7)
t, _ = layernorm_forward(t, P["cls.predictions.transform.LayerNorm.weight"],
                         P["cls.predictions.transform.LayerNorm.bias"], config.layer_norm_eps)
mlm_logits = t @ E.T + P["cls.predictions.bias"]                       # (N, C) @ (C, V) -> (N, V)
teach.check_close("MLM logits by hand", mlm_logits, out.prediction_logits, rtol=1e-12)

# the NSP head: the pooler reads position 0 ([CLS]) only
pooled = np.tanh(h[:, 0] @ P["bert.pooler.dense.weight"].T + P["bert.pooler.dense.bias"])   # (B, C)
nsp_logits = pooled @ P["cls.seq_relationship.weight"].T + P["cls.seq_relationship.bias"]   # (B, 2)
teach.check_close("pooler output by hand", pooled, out.pooler_output, rtol=1e-12)
teach.check_close("NSP logits by hand", nsp_logits, out.seq_relationship_logits, rtol=1e-12)

# %% [markdown]
# ## 2. Softmax cross-entropy with `ignore_index`
#
# For a row of logits $z$ (one per class) and a target class $y$, the cross-entropy is the negative log
# of the softmax probability of the target:
#
# $$\ell(z, y) = -\log \frac{e^{z_y}}{\sum_c e^{z_c}} = \log \sum_c e^{z_c} - z_y .$$
#
# Over a batch of $N$ rows it is averaged over the rows that are scored, $S = \{n : y_n \ne -100\}$:
#
# $$L = \frac{1}{|S|} \sum_{n \in S} \ell(z_n, y_n).$$
#
# The ignored rows count **neither in the sum nor in the count**. To compute $\log\sum e^{z}$ without
# overflow, subtract the row's maximum first (it cancels: lesson 2). If every row is ignored, the loss
# is 0 (not $0/0$). Here it is in NumPy — the referee of this lesson's checks:

# %%
def softmax(z):
    """Row-wise softmax of (N, C) logits."""
    e = np.exp(z - z.max(axis=1, keepdims=True))        # (N, C) shifted: exp cannot overflow
    return e / e.sum(axis=1, keepdims=True)


def ce_forward(logits, targets, ignore_index=-100):
    """Mean cross-entropy over the rows whose target is not ignore_index. logits (N, C), targets (N,)."""
    valid = targets != ignore_index                                  # (N,) the rows in S
    safe = np.where(valid, targets, 0)                               # (N,) an index that exists
    shifted = logits - logits.max(axis=1, keepdims=True)             # (N, C)
    nll = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(len(targets)), safe]   # (N,)
    return float((nll * valid).sum() / max(valid.sum(), 1))


mlm_loss = ce_forward(out.prediction_logits, labels[labelled])
nsp_loss = ce_forward(out.seq_relationship_logits, next_sentence_label)
teach.check_close("MLM loss", mlm_loss, out.mlm_loss, rtol=1e-12)
teach.check_close("NSP loss", nsp_loss, out.nsp_loss, rtol=1e-12)
print(f"MLM {mlm_loss:.4f} (ln V = {np.log(V):.4f}),  NSP {nsp_loss:.4f} (ln 2 = {np.log(2):.4f})")
teach.check_equal("loss when every row is ignored", ce_forward(out.prediction_logits, np.full(6, -100)), 0.0)

# %% [markdown]
# **The d2l bug.** Dive into Deep Learning's BERT computed the loss at every prediction slot, zeroed the
# padded ones, and then took the mean over *all* slots — padding included. That is
# $\frac{|S|}{N} L$: a loss that shrinks when you pad more. Score every position of the (B, T, V)
# logits and compare: the right loss does not care how much padding there is; the wrong one does.

# %%
def ce_mean_over_all_rows(logits, targets, ignore_index=-100):          # WRONG on purpose (d2l's bug)
    valid = targets != ignore_index
    return ce_forward(logits, targets, ignore_index) * valid.sum() / len(targets)


logits_all = every.prediction_logits.reshape(-1, V)                      # (B, T, V) -> (B*T, V)
targets_all = labels.reshape(-1)                                         # (B*T,)
for extra in (0, 20):                                                    # append 20 more ignored rows
    z = np.concatenate([logits_all, rng.standard_normal((extra, V))])
    y = np.concatenate([targets_all, np.full(extra, -100)])
    right, wrong = ce_forward(z, y), ce_mean_over_all_rows(z, y)
    print(f"{len(y):3d} rows, {int((y != -100).sum())} scored:  right {right:.4f}   mean over all rows {wrong:.4f}")
    teach.check_close(f"loss over all {len(y)} rows with ignore_index", right, out.mlm_loss, rtol=1e-12)
    assert abs(wrong - right) > 0.5, f"the mean over all rows ({wrong:.4f}) should be far from the right loss ({right:.4f})"

# %% [markdown]
# ### Exercise: the backward of the cross-entropy
#
# Write the gradient of the mean cross-entropy with respect to the logits. You receive what the forward
# already computed, the softmax probabilities $p_n = \operatorname{softmax}(z_n)$, the targets, and the
# upstream gradient `dloss` $= \partial(\text{objective})/\partial L$ (1 when $L$ is the whole
# objective; something else when $L$ is scaled or summed with another loss). Return
# $\partial(\text{objective})/\partial z$, shape (N, C).
#
# * The ignored rows never reached the loss. If every row is ignored, return zeros, not NaN.
# * Method: take **one** row $n \in S$, write $\ell$ as a function of $z_{n1}, \dots, z_{nC}$, and
#   differentiate with respect to $z_{nc}$ — once for $c = y_n$ and once for $c \ne y_n$. Then account
#   for the mean over $S$, and for `dloss`.
#
# The check compares your gradient with finite differences of `dloss * ce_forward(...)` (lesson 1's
# referee) on 7 rows, two of them ignored, with a repeated target and a target 0.

# %% tags=["exercise"]
# EXERCISE: the backward of softmax cross-entropy with ignore_index (mean over the scored rows)
def my_cross_entropy_backward(dloss, probs, targets, ignore_index=-100):
    '''dloss: float. probs: (N, C) softmax of the logits. targets: (N,) ints, ignore_index = not scored.
    Returns dlogits (N, C).'''
    ### BEGIN SOLUTION
    valid = targets != ignore_index                        # (N,) the rows in S
    count = max(int(valid.sum()), 1)                       # |S|; 1 when all are ignored (then all rows are 0)
    dlogits = probs.copy()                                 # d ell_n / d z_n = p_n - onehot(y_n)
    rows = np.flatnonzero(valid)
    dlogits[rows, targets[rows]] -= 1.0
    dlogits *= (dloss / count) * valid[:, None]            # the mean over S; ignored rows get 0
    ### END SOLUTION
    return dlogits


# %% tags=["check"]
check_rng = np.random.default_rng(80)
z = 2.0 * check_rng.standard_normal((7, 5))                # (N, C): 7 rows, 5 classes
y = np.array([3, -100, 0, 4, -100, 3, 1])                  # two ignored rows, target 3 twice, a target 0
dloss = 0.7
numeric = teach.finite_differences(lambda: dloss * ce_forward(z, y), z)
print(f"{len(y)} rows of {z.shape[1]} classes, {int((y != -100).sum())} of them scored; dloss = {dloss}")
mine = my_cross_entropy_backward(dloss, softmax(z), y)
error = teach.check_gradient("dlogits", mine, numeric, threshold=1e-7)
teach.check_equal("dlogits of the two ignored rows", np.asarray(mine)[y == -100], np.zeros((2, 5)))
nothing_scored = my_cross_entropy_backward(1.0, softmax(z), np.full(7, -100))
error = teach.check_gradient("dlogits when every row is ignored", nothing_scored, np.zeros((7, 5)))

# %% [markdown]
# ### Solution notes
#
# For one scored row, $\ell = \log \sum_c e^{z_c} - z_y$. The first term's derivative is
# $e^{z_c} / \sum_{c'} e^{z_{c'}} = p_c$; the second term contributes $-1$ only at $c = y$:
#
# $$\frac{\partial \ell}{\partial z_c} = p_c - [c = y] \qquad\text{(softmax minus one-hot).}$$
#
# The mean multiplies each scored row by $1/|S|$, and an ignored row is not in $L$ at all, so its
# gradient is exactly 0. With the upstream gradient:
#
# $$\frac{\partial\, \text{obj}}{\partial z_{nc}} = \text{dloss}\cdot\frac{[n \in S]}{|S|}\,\big(p_{nc} - [c = y_n]\big).$$
#
# One line, and it never forms the softmax's $C \times C$ Jacobian (lesson 2): the log-sum-exp and the
# softmax collapse into $p - \text{onehot}$. The usual mistakes and what the check says about them:
# dividing by $N$ instead of $|S|$ (d2l's bug, a constant factor $|S|/N$ on every scored row);
# forgetting the one-hot (every entry off); forgetting the mean (a factor $|S|$); subtracting the
# one-hot at a "safe" target in the ignored rows and keeping them (only the ignored rows are off).
#
# The loss also gives you a free test: **each scored row of `dlogits` sums to zero** (probabilities sum
# to 1, the one-hot sums to 1). The library's `cross_entropy_backward` computes exactly this:

# %%
from bertnp.ops.losses import cross_entropy_backward, cross_entropy_forward

library_loss, ce_cache = cross_entropy_forward(z, y)
library_dlogits = cross_entropy_backward(dloss, ce_cache)
teach.check_close("library loss vs ce_forward", library_loss, ce_forward(z, y), rtol=1e-12)
teach.check_gradient("library dlogits vs finite differences", library_dlogits, numeric)
row_sums = library_dlogits.sum(axis=1)
print(f"largest |sum| of a row of dlogits: {np.abs(row_sums).max():.1e}")
assert np.abs(row_sums).max() < 1e-15, f"every row of dlogits must sum to 0; largest |sum| {np.abs(row_sums).max():.1e}"

# %% [markdown]
# ## 3. The word-embedding matrix is used twice
#
# Follow $E$ through the forward pass:
#
# 1. **the lookup**: $x_{bt} = E[\text{id}_{bt}]$ starts the encoder (plus position and type embeddings);
# 2. **the decoder**: $\text{logits}_n = t_n E^\top + b$ ends the MLM head.
#
# $E$ changes the loss along both paths, so the chain rule *adds* the two contributions:
# $\frac{\partial L}{\partial E} = \frac{\partial L}{\partial E}\Big|_\text{lookup} + \frac{\partial L}{\partial E}\Big|_\text{decoder}$.
# PyTorch does this silently when two modules hold the same `Parameter`; in `bertnp` the model's
# backward adds the decoder's share and then the lookup's share into the same gradient array.
#
# ### Exercise: the tied gradient
#
# Given what arrives at the two uses of $E$ during the backward pass,
#
# * `dlogits` (N, V): the gradient of the decoder's output, $\text{logits} = t\,E^\top + b$;
# * `head_output` (N, C): the rows $t$ the decoder multiplied;
# * `ids` (B, T): the ids the lookup read, and `dembedded` (B, T, C): the gradient of the looked-up vectors,
#
# return the whole gradient of $E$, shape (V, C). Each use is a backward you have written before
# (lesson 1's linear layer, lesson 5's embedding); the exercise is to get both into one array without
# losing anything — and ids repeat.
#
# The check builds a small model that uses a matrix $E$ in both places (a lookup, a tanh layer that mixes
# positions standing in for the encoder, a decoder tied to $E$, the mean cross-entropy) and compares your
# result with finite differences of the loss with respect to $E$.

# %% tags=["exercise"]
# EXERCISE: the gradient of the tied word-embedding matrix (lookup + decoder)
def my_tied_embedding_backward(dlogits, head_output, ids, dembedded):
    '''dlogits (N, V), head_output (N, C), ids (B, T) ints, dembedded (B, T, C) -> dE (V, C).'''
    V, C = dlogits.shape[1], head_output.shape[1]
    dE = np.zeros((V, C))
    ### BEGIN SOLUTION
    dE += dlogits.T @ head_output                                  # decoder: (V, N) @ (N, C), like a Linear's dW
    np.add.at(dE, ids.reshape(-1), dembedded.reshape(-1, C))       # lookup: scatter-add, repeated ids accumulate
    ### END SOLUTION
    return dE


# %% tags=["check"]
check_rng = np.random.default_rng(81)
Vc, Cc = 11, 4                                              # distinct sizes: a transpose is a shape error
Ec = 0.5 * check_rng.standard_normal((Vc, Cc))              # the tied matrix
A = 0.5 * check_rng.standard_normal((Cc, Cc))               # the "encoder": mixes features ...
Mix = 0.5 * check_rng.standard_normal((5, 5))               # ... and positions, as attention does
b = 0.1 * check_rng.standard_normal(Vc)                     # the decoder's own bias
ids = np.array([[1, 4, 4, 7, 2],
                [4, 9, 1, 0, 0]])                           # 4 three times, 1 and 0 twice; 3, 5, 6, 8, 10 unused
check_labels = np.full((2, 5), -100)
check_labels[0, 2], check_labels[0, 3], check_labels[1, 1] = 5, 4, 10
positions = np.flatnonzero(check_labels.reshape(-1) != -100)   # (N,) flat indices of the labelled positions
targets = check_labels.reshape(-1)[positions]                  # (N,)


def tied_forward():
    embedded = Ec[ids]                                      # (B, T, C)  use 1: the lookup
    hidden = np.tanh(Mix @ embedded @ A)                    # (T, T) @ (B, T, C) @ (C, C): the stand-in encoder
    head_output = hidden.reshape(-1, Cc)[positions]         # (B, T, C) -> (B*T, C) -> (N, C)
    logits = head_output @ Ec.T + b                         # (N, V)     use 2: the decoder
    return hidden, head_output, logits


hidden, head_output, logits = tied_forward()
# the backward down to the two uses (what the model computes before it reaches E):
dlogits = (softmax(logits) - np.eye(Vc)[targets]) / len(targets)          # (N, V) mean cross-entropy
dhidden = np.zeros((2 * 5, Cc))
dhidden[positions] = dlogits @ Ec                                          # (N, V) @ (V, C): to the gathered rows
dembedded = Mix.T @ ((dhidden.reshape(2, 5, Cc) * (1 - hidden * hidden)) @ A.T)   # back through tanh, A, Mix
try:
    mine = my_tied_embedding_backward(dlogits, head_output, ids, dembedded)
except (ValueError, IndexError) as exc:
    raise teach.CheckFailed(f"my_tied_embedding_backward raised {type(exc).__name__}: {exc}\n  hint: a gradient has "
                            f"the shape of its tensor: each use's share of dE is (V, C) = {Ec.shape}") from exc
numeric = teach.finite_differences(lambda: ce_forward(tied_forward()[2], targets), Ec)
never_looked_up = np.setdiff1d(np.arange(Vc), ids)                     # rows only the decoder reaches
if np.allclose(np.asarray(mine)[never_looked_up], 0.0):
    raise teach.CheckFailed(f"dE: rows {never_looked_up.tolist()} were never looked up, and yours is 0 on all of them; "
                            f"the true gradient there is not (largest {np.abs(numeric[never_looked_up]).max():.2e}): "
                            "the decoder uses every row of E. The decoder's share is missing, or was overwritten")
try:
    error = teach.check_gradient("dE (both uses of the tied matrix)", mine, numeric, threshold=1e-7)
except teach.CheckFailed as failure:                 # which rows are off, and how often the lookup read each
    off_rows = np.flatnonzero((teach.rel_error_array(mine, numeric) > 1e-7).any(axis=1))
    reads = np.bincount(ids.reshape(-1), minlength=Vc)
    raise teach.CheckFailed(f"{failure}\n  lesson hint: the rows that are off: {off_rows.tolist()}; how many times "
                            f"the lookup read each of them: {reads[off_rows].tolist()} (ids: {ids.tolist()})") from None

# %% [markdown]
# ### Solution notes
#
# * **Decoder.** $\text{logits} = t E^\top + b$ is a linear layer whose weight (in the (out, in) layout) is
#   $E$, so its share is lesson 1's `dW = dout.T @ x`: `dlogits.T @ head_output`, (V, N) @ (N, C).
#   Every row of $E$ gets some of it — every token's logit was scored, not only the targets'.
# * **Lookup.** Row $v$ of $E$ was copied to every position holding id $v$: its share is the sum of
#   `dembedded` over those positions, a scatter-add (`np.add.at`). `dE[ids] += dembedded` looks the same
#   and is wrong: with a repeated id, NumPy applies the `+=` once (lesson 5).
# * **Both into one array**, adding. `dE = ...` for the second share overwrites the first: the check then
#   shows the rows that only one use reached (ids 3, 5, 6, 8, 10 are never looked up) being wrong.
#
# ### The two shares in the real model
#
# The same split, on the model of section 1: compute the decoder's share from the head by hand
# (`dlogits` from the formula of the exercise above), and take the lookup's share as what remains of
# `model.backward()`'s gradient. The lookup's share must vanish on every row whose token is not in
# `input_ids` — and on the `[PAD]` row too: like PyTorch's `nn.Embedding(padding_idx=0)`, which Hugging
# Face uses, the lookup sends no gradient to the padding token's row.

# %%
model.zero_grad()
out = model(**batch, labels=labels, next_sentence_label=next_sentence_label)
dE_model = model.backward()["bert.embeddings.word_embeddings.weight"]          # (V, C): both shares
targets_model = labels[labelled]                                                 # (N,)
dlogits_model = (softmax(np.asarray(out.prediction_logits)) - np.eye(V)[targets_model]) / len(targets_model)
decoder_share = dlogits_model.T @ t                                              # (V, N) @ (N, C): t from section 1
lookup_share = dE_model - decoder_share

looked_up = np.zeros(V, dtype=bool)
looked_up[np.unique(input_ids[attention_mask == 1])] = True        # rows the lookup read (not [PAD])
scale = np.abs(dE_model).max()
lookup_elsewhere = np.abs(lookup_share[~looked_up]).max() / scale
lookup_norms = np.linalg.norm(lookup_share, axis=1)
decoder_norms = np.linalg.norm(decoder_share, axis=1)
print(f"{looked_up.sum()} of {V} rows were looked up")
print(f"lookup share on the rows never looked up: at most {lookup_elsewhere:.1e} of the gradient's largest entry")
print(f"smallest row norm: lookup share on looked-up rows {lookup_norms[looked_up].min():.1e}, "
      f"decoder share on any row {decoder_norms.min():.1e}")
assert lookup_elsewhere < 1e-12, f"the lookup cannot reach rows it never read, yet {lookup_elsewhere:.1e} remains"
assert lookup_norms[looked_up].min() > 1e-6, f"a looked-up row got no lookup share ({lookup_norms[looked_up].min():.1e})"
assert decoder_norms.min() > 1e-6, f"the decoder reaches every row, yet one got {decoder_norms.min():.1e}"

fig, ax = plt.subplots(figsize=(10, 3.2))
ids_axis = np.arange(V)
ax.bar(ids_axis - 0.2, decoder_norms, width=0.4, label="decoder share (every row)")
ax.bar(ids_axis + 0.2, lookup_norms, width=0.4, label="lookup share (only ids in the input)")
ax.set_xlabel("token id (row of the word-embedding matrix)")
ax.set_yscale("log"); ax.set_ylim(1e-4, 3)
ax.set_ylabel("norm of the row's gradient")
ax.set_title("The tied matrix's gradient: two shares, added")
ax.legend(); ax.grid(alpha=0.3, axis="y")
fig.tight_layout()
plt.show()

# %% [markdown]
# The tall blue bars are the rows of the target tokens: their logit gets $p - 1$ instead of $p$. The
# orange bars come in three heights. The largest (~0.5) sit on the ids at the labelled positions:
# the head reads those positions' hidden states, and a hidden state carries its own embedding forward
# through the residual stream. The middle ones (~0.1) are the ids at position 0, which the NSP head reads
# through the pooler. The rest (below $10^{-3}$) reach the loss only through attention, which in this
# untrained one-layer model mixes positions only weakly.
#
# ## 4. Gather first: the 30k-way product at the labelled positions only
#
# The decoder is the most expensive operation in BERT pretraining: a (rows, C) @ (C, V) product with
# $V = 30{,}522$. Computed at every position, as Hugging Face does, it costs $2 \cdot BT \cdot C \cdot V$
# FLOPs forward — and roughly twice that again backward. But the loss reads only the ~15% of positions
# that carry a label; the other 85% of the logits are computed and thrown away. `bertnp` gathers the
# labelled rows of $h$ **before** the transform and the decoder (section 1), and scatters their gradient
# back after the backward; since the positions are distinct, the scatter is a plain assignment.
#
# **Counting.** Forward FLOPs per token of one encoder layer: the four $C \times C$ projections
# ($4 \cdot 2C^2$), the feed-forward block ($2 \cdot 2 C I$), and the attention scores and weighted sum
# ($2 \cdot 2 T C$). The MLM head costs $2C^2 + 2CV$ per scored position. A training step is about 3 times
# the forward (the backward computes two products for each one of the forward).

# %%
def step_gflop(B, T, C, L, I, V, scored_per_sequence):
    """FLOPs (in 1e9) of one training step (forward + backward = 3 x forward), matrix products only."""
    encoder = B * T * L * (4 * 2 * C * C + 2 * 2 * C * I + 2 * 2 * T * C)
    head = B * scored_per_sequence * (2 * C * C + 2 * C * V)
    return 3 * (encoder + head) / 1e9, 3 * head / 1e9


mini = dict(B=16, T=128, C=256, L=4, I=1024, V=30522)            # BERT-mini, BERT's sequence length
everywhere, head_everywhere = step_gflop(**mini, scored_per_sequence=128)
gathered, head_gathered = step_gflop(**mini, scored_per_sequence=20)   # max_predictions_per_seq = 20
print(f"BERT-mini step, logits at every position : {everywhere:6.1f} GFLOP, of which the MLM head {head_everywhere / everywhere:.0%}")
print(f"BERT-mini step, logits at 20 of 128      : {gathered:6.1f} GFLOP, of which the MLM head {head_gathered / gathered:.0%}")
print(f"{everywhere / gathered:.2f}x fewer FLOPs for the same loss and the same gradients")
assert 0.65 < head_everywhere / everywhere < 0.75, f"MLM head share {head_everywhere / everywhere:.3f}, expected ~0.7"
assert everywhere / gathered > 2.3, f"FLOP ratio of a step {everywhere / gathered:.2f}, expected > 2.3"

# %% [markdown]
# **Timing.** Count, then measure: the decoder product alone, at every position versus gathered, for
# growing vocabularies. The gathered path includes the gather itself (a copy of N rows). Each time is
# the best of a few repeats, alternating the two versions so that whatever else the machine does hits
# both alike.

# %%
rows = teach.pick(16 * 128, 8 * 128)                   # B*T positions
width = teach.pick(256, 128)                           # C
vocab_sizes = teach.pick([2000, 4000, 8000, 16000, 30522], [1000, 2000, 4000, 8000])
scored_share = 0.15
time_rng = np.random.default_rng(84)
hidden_f32 = time_rng.standard_normal((rows, width)).astype(np.float32)          # (B*T, C), float32 as in training
scored_rows = np.sort(time_rng.choice(rows, size=int(scored_share * rows), replace=False))   # (N,)


def best_time(fn, repeats):
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


times_full, times_gathered = [], []
gathered_rows = np.empty((len(scored_rows), width), dtype=np.float32)           # (N, C), reused
for vocab in vocab_sizes:
    table = (0.02 * time_rng.standard_normal((vocab, width))).astype(np.float32)    # (V, C)
    logits_full = np.empty((rows, vocab), dtype=np.float32)                       # outputs allocated once:
    logits_gathered = np.empty((len(scored_rows), vocab), dtype=np.float32)       # we time arithmetic, not malloc

    def full():
        np.matmul(hidden_f32, table.T, out=logits_full)                           # (B*T, C) @ (C, V)

    def gathered_fn():
        np.take(hidden_f32, scored_rows, axis=0, out=gathered_rows)               # the gather: (B*T, C) -> (N, C)
        np.matmul(gathered_rows, table.T, out=logits_gathered)                    # (N, C) @ (C, V)

    t_full, t_gathered = np.inf, np.inf
    for _ in range(3):                                                            # alternate the two
        t_full = min(t_full, best_time(full, 1))
        t_gathered = min(t_gathered, best_time(gathered_fn, 2))
    times_full.append(t_full)
    times_gathered.append(t_gathered)
    print(f"V = {vocab:6d}: every position {1e3 * t_full:7.1f} ms ({2 * rows * width * vocab / t_full / 1e9:5.1f} GFLOP/s)"
          f"   gathered {1e3 * t_gathered:6.1f} ms   {t_full / t_gathered:4.1f}x faster")
speedup = times_full[-1] / times_gathered[-1]
assert speedup > 3.0, (f"gathering 15% of the rows should make the product several times faster "
                       f"(FLOP ratio {rows / len(scored_rows):.1f}); measured only {speedup:.2f}x")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
ax1.plot(vocab_sizes, 1e3 * np.array(times_full), "o-", label=f"every position ({rows} rows)")
ax1.plot(vocab_sizes, 1e3 * np.array(times_gathered), "o-", label=f"gathered ({len(scored_rows)} rows, 15%)")
ax1.set_xlabel("vocabulary size V"); ax1.set_ylabel("time of the decoder product (ms)")
ax1.set_title(f"measured: (rows, {width}) @ ({width}, V), float32")
ax1.legend(); ax1.grid(alpha=0.3)

shares = np.linspace(0.05, 1.0, 20)
ratios = [everywhere / step_gflop(**mini, scored_per_sequence=s * 128)[0] for s in shares]
ax2.plot(100 * shares, ratios, "-", label="whole BERT-mini step (counted)")
ax2.plot(100 * shares, 1 / shares, "--", label="decoder product alone (counted)")
ax2.plot([100 * scored_share], [times_full[-1] / times_gathered[-1]], "k*", ms=12,
         label=f"decoder product, measured at V={vocab_sizes[-1]}")
ax2.set_yscale("log"); ax2.set_xlabel("share of positions that carry a label (%)")
ax2.set_ylabel("x fewer FLOPs than every position")
ax2.set_title("what gathering saves"); ax2.legend(); ax2.grid(alpha=0.3, which="both")
fig.tight_layout()
plt.show()

# %% [markdown]
# The decoder alone gets the full $BT/N \approx 6.7\times$; the whole step about $2.4\times$, because the
# encoder's cost does not change. A matrix product of this size is limited by arithmetic, so fewer FLOPs
# is less time, and at the larger vocabularies the measured speedup comes out near the FLOP ratio. (On a
# busy machine it comes out higher: the long product is interrupted by other programs more often than the
# short one. Measuring next to other work is measuring the other work too.)
#
# Gathering changes nothing in the results. The loss is the mean over the scored rows either way
# (section 2 checked `ce_forward` over every position against the model's gathered loss), and the rows
# that were never scored receive zero gradient from the MLM loss in both versions.
#
# ## 5. The NSP head, and a bug that hid in it
#
# The NSP head is tiny (C → 2), and its loss is the same cross-entropy over the B sequences, with
# labels **0 = IsNext, 1 = random next** (Google's and Hugging Face's convention; d2l and codertimo use
# the opposite). Nothing is ignored here — which is what codertimo's BERT-pytorch got wrong: it used one
# loss object with `ignore_index=0` for both tasks, so for NSP every example with label 0 was *skipped*.
# The loss then rewards a model that always answers "1":

# %%
always_one = np.tile([-5.0, 5.0], (8, 1))                   # (B, 2): "random next" for every pair, very sure
nsp_labels = np.array([0, 1, 0, 0, 1, 1, 0, 1])
right = ce_forward(always_one, nsp_labels)
buggy = ce_forward(always_one, nsp_labels, ignore_index=0)    # label 0 = IsNext treated as "not scored"
print(f"a model that always says 'random next':  right loss {right:.3f}   with ignore_index=0 {buggy:.5f}")
assert buggy < 1e-3 and right > 1.0, f"with ignore_index=0 the loss is {buggy:.1e}, the right loss {right:.2f}"

# %% [markdown]
# With that loss the NSP accuracy of codertimo's model was stuck at 50%. A test that would have caught
# it: the NSP loss of a constant prediction on a balanced batch must be large. (`bertnp`'s model uses
# `ignore_index=-100` for both losses, and its test suite checks the NSP loss on fixtures with both labels.)
#
# ## Summary
#
# * MLM head: gather the labelled rows, dense + GELU + LayerNorm, then logits $= t E^\top + b$ with the
#   **word-embedding matrix** as the decoder. NSP head: tanh pooler on `[CLS]`, then C → 2.
# * Cross-entropy with `ignore_index`: the mean over the scored rows only; ignored rows count neither in
#   the sum nor in the count. Its backward is one line: `dloss * (p - onehot) / |S|` on scored rows, 0 elsewhere.
# * A tied matrix gets the **sum** of its uses' gradients: the decoder's `dlogits.T @ t` on every row,
#   plus the lookup's scatter-add on the looked-up rows (none on `[PAD]`).
# * Gathering the ~15% labelled positions before the $V$-way product cuts the decoder's FLOPs ~6.7x and a
#   BERT-mini step's ~2.4x, with identical loss and gradients.
#
# Next: lesson 9 puts every piece together and checks the whole model against Hugging Face.
