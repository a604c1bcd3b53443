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
# # Lesson 5 — Embeddings, residuals, post-LN
#
# Before the first attention layer, BERT turns token ids into vectors; between its layers it keeps
# one running sum, the *residual stream*, and normalises it after every addition (*post-LN*).
# This lesson takes those three pieces apart:
#
# 1. the **three embeddings** — token, segment (token type) and learned position — what each one adds,
#    and what a real model (all-MiniLM-L6-v2) learned in its position table;
# 2. the **embedding backward**: a lookup's gradient is a scatter-add, and `W[idx] += g` silently loses
#    updates when an id repeats (you write it, the check knows the usual mistakes);
# 3. the **residual stream**: where a gradient splits, the pieces add up on the way back;
# 4. **post-LN vs pre-LN**: a small pre-LN variant of BERT's layer built from the library's operations,
#    the gradient of every layer in both, and what this has to do with learning-rate warmup.
#
# **Prerequisites:** lesson 1 (forward/backward pairs, gradient checks, LayerNorm's backward) and
# lesson 2 (attention with a padding mask); lesson 3 for `token_type_ids`. Math: the chain rule,
# sums over indices, cosine similarity.
#
# **Time:** about 60–75 minutes.

# %%
# %matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
from typing import NamedTuple

from bertnp.corpus import bert_base_uncased_vocab, bundled_corpus
from bertnp.data import read_corpus
from bertnp.ops.activations import gelu_backward, gelu_forward
from bertnp.ops.attention import attention_backward, attention_forward
from bertnp.ops.layernorm import layernorm_backward, layernorm_forward
from bertnp.ops.linear import linear_backward, linear_forward
from bertnp.ops.losses import cross_entropy_backward, cross_entropy_forward

EPS = 1e-12                                   # BERT's LayerNorm epsilon

# %% [markdown]
# ## 1. Three tables, one sum
#
# A BERT input is three integer arrays of shape (B, T): `input_ids` (which token), `token_type_ids`
# (sentence A = 0 or B = 1, lesson 3) and, implicitly, the positions $0, 1, \dots, T-1$. Each indexes its
# own table of learned vectors, and the three rows are **added**:
#
# $$e_{b,t} = W^{\text{word}}_{\,\text{ids}_{b,t}} + W^{\text{pos}}_{\,t} + W^{\text{type}}_{\,\text{types}_{b,t}} \qquad (C \text{ numbers each}),$$
#
# then LayerNorm and dropout (lesson 7) give the input of layer 1. The shapes:
#
# | table | shape | indexed by |
# |---|---|---|
# | `word_embeddings` | (V, C) = (30522, 384) in MiniLM | `input_ids` (B, T) |
# | `position_embeddings` | (P, C) = (512, 384): at most 512 positions | `arange(T)`, the same for every sequence |
# | `token_type_embeddings` | (2, C) | `token_type_ids` (B, T) |
#
# Here is the sum for a real sentence pair, with the trained tables of **all-MiniLM-L6-v2** (a 6-layer,
# 384-wide BERT that the test dependencies install; it uses BERT-base's uncased vocabulary). It is loaded
# in float64 so that we can compare with the library to the last digits.

# %%
minilm = bn.BertModel.from_pretrained(teach.minilm_dir(), dtype="float64")   # eval mode: dropout off
tokenizer = bn.BertTokenizer.from_pretrained(teach.minilm_dir())
weights = minilm.state_dict()                      # {HF name: array}
word_table = weights["embeddings.word_embeddings.weight"]            # (V, C)
position_table = weights["embeddings.position_embeddings.weight"]    # (P, C)
type_table = weights["embeddings.token_type_embeddings.weight"]      # (2, C)
print("word", word_table.shape, " position", position_table.shape, " token type", type_table.shape)

batch = tokenizer("The cat sat on the mat.", "It was warm there.")
input_ids = np.array([batch["input_ids"]])                 # (B, T) = (1, T)
token_type_ids = np.array([batch["token_type_ids"]])       # (1, T)
T = input_ids.shape[1]
for t, (token, i, s) in enumerate(zip(tokenizer.convert_ids_to_tokens(batch["input_ids"]),
                                      batch["input_ids"], batch["token_type_ids"])):
    print(f"position {t:>2}  {token:<7} id {i:>5}  type {s}")

# %% [markdown]
# The forward of the sum, as the rest of this lesson uses it (the library does the same with
# `bertnp.ops.embedding` and then LayerNorm, in `bertnp/model.py`). The cache keeps only what a backward
# can need: the ids, and the tables' shapes.

# %%
class EmbeddingsCache(NamedTuple):
    input_ids: np.ndarray          # (B, T) int
    token_type_ids: np.ndarray     # (B, T) int
    word_shape: tuple              # (V, C)
    position_shape: tuple          # (P, C), P = max_position_embeddings >= T
    token_type_shape: tuple        # (2, C)


def embeddings_forward(input_ids, token_type_ids, word, position, token_type):
    """(B, T) ids and types; tables (V, C), (P, C), (2, C) -> e (B, T, C). Returns (e, cache)."""
    T = input_ids.shape[1]
    e = (word[input_ids]                     # (B, T) -> (B, T, C): one row per token
         + position[:T]                      # (T, C), broadcast over the batch
         + token_type[token_type_ids])       # (B, T) -> (B, T, C)
    return e, EmbeddingsCache(input_ids, token_type_ids, word.shape, position.shape, token_type.shape)


e, _ = embeddings_forward(input_ids, token_type_ids, word_table, position_table, type_table)
x0, _ = layernorm_forward(e, weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"], EPS)
print("e:", e.shape, "  input of layer 1 = LayerNorm(e):", x0.shape)
row_norms = {name: float(np.linalg.norm(table, axis=1).mean())
             for name, table in [("word", word_table), ("position", position_table[:T]), ("token type", type_table)]}
print("mean row norm:", {k: round(v, 3) for k, v in row_norms.items()})

# %% [markdown]
# (Section 4 runs the whole encoder from this `x0` and lands exactly on the library's output: that
# is the proof that this sum is what BERT computes.)
#
# ### What the word table adds: meaning, independent of place
#
# Each vocabulary entry has one vector, wherever it occurs. Training puts tokens that can stand in
# the same places near each other. The nearest rows of `cat`, by cosine similarity:

# %%
unit_words = word_table / np.linalg.norm(word_table, axis=1, keepdims=True)
for word in ("cat", "king", "three"):
    row = tokenizer.convert_tokens_to_ids([word])[0]
    similarity = unit_words @ unit_words[row]                       # (V,) cosine with every row
    nearest = np.argsort(-similarity)[1:6]                          # [0] is the word itself
    print(f"{word:<6} ->", ", ".join(f"{tok} {similarity[i]:.2f}" for tok, i in
                                   zip(tokenizer.convert_ids_to_tokens(nearest.tolist()), nearest)))
neighbours_of_cat = tokenizer.convert_ids_to_tokens(
    np.argsort(-(unit_words @ unit_words[tokenizer.convert_tokens_to_ids(["cat"])[0]]))[1:6].tolist())
teach.check("cats" in neighbours_of_cat and "kitten" in neighbours_of_cat,
            "the nearest rows of 'cat' include 'cats' and 'kitten'", neighbours_of_cat, "cats, kitten among them")

# %% [markdown]
# ### What the position table adds: order
#
# Attention itself has no idea of order. Every query scores every key by a dot product, and
# the softmax and the weighted sum treat the keys as a *set*. So without positions, **permuting the
# tokens just permutes the outputs** (the encoder is *permutation-equivariant*): "dog bites man" and
# "man bites dog" would get the same vectors, shuffled. The position rows break that symmetry.
#
# Check it on MiniLM: zero its position table for a moment, shuffle the tokens, and compare.

# %%
perm = np.random.default_rng(1).permutation(T)              # a shuffle of the T positions
position_live = minilm.parameters()["embeddings.position_embeddings.weight"]   # the live array
saved = position_live.copy()

def encode(ids, types):
    return minilm(input_ids=ids, token_type_ids=types).last_hidden_state   # (1, T, C)

try:
    position_live[...] = 0.0                                  # no position information at all
    plain = encode(input_ids, token_type_ids)
    shuffled = encode(input_ids[:, perm], token_type_ids[:, perm])
finally:
    position_live[...] = saved                                # put the trained table back
with_positions = encode(input_ids, token_type_ids)
with_positions_shuffled = encode(input_ids[:, perm], token_type_ids[:, perm])

gap_without = np.abs(shuffled - plain[:, perm]).max()
gap_with = np.abs(with_positions_shuffled - with_positions[:, perm]).max()
print(f"without positions: shuffled output vs shuffled original, max |diff| = {gap_without:.1e}")
print(f"with positions:    shuffled output vs shuffled original, max |diff| = {gap_with:.2f}")
teach.check(gap_without < 1e-10, "without positions the encoder is permutation-equivariant (max |diff|)",
            gap_without, "< 1e-10")
teach.check(gap_with > 0.1, "with positions, order changes the output (max |diff|)", gap_with, "> 0.1")

# %% [markdown]
# What did MiniLM learn in that table? Compare every position row with every other (cosine
# similarity), next to a table freshly initialised as BERT does it, $\mathcal N(0, 0.02^2)$. At
# initialisation all rows are unrelated (similarity $\approx 0$ off the diagonal); after training,
# **neighbouring positions are similar and the similarity fades with distance** — the model has
# learned a notion of "near" from data. Nothing in the architecture told it that position 7 is
# next to position 8.

# %%
def cosine_matrix(table):
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    return unit @ unit.T                                          # (P, P)

shown = teach.pick(512, 128)                                      # positions in the picture
learned = cosine_matrix(position_table[:shown])
initial = cosine_matrix(np.random.default_rng(2).normal(0.0, 0.02, position_table[:shown].shape))
offsets = np.arange(1, shown // 2 + 1)                             # distances with at least P/2 pairs each
by_offset_learned = np.array([np.diag(learned, k).mean() for k in offsets])   # mean over pairs t, t+k
by_offset_initial = np.array([np.diag(initial, k).mean() for k in offsets])

fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
for ax, matrix, title in [(axes[0], initial, "initialisation N(0, 0.02²)"),
                          (axes[1], learned, "all-MiniLM-L6-v2, trained")]:
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_title(f"position embeddings: {title}")
    ax.set_xlabel("position j"); ax.set_ylabel("position i")
fig.colorbar(im, ax=axes[:2], shrink=0.8, label="cosine similarity of rows i and j")
axes[2].plot(offsets, by_offset_learned, label="trained (MiniLM)")
axes[2].plot(offsets, by_offset_initial, label="initialisation")
axes[2].set_xscale("log"); axes[2].axhline(0, color="gray", lw=0.5)
axes[2].set_xlabel("distance |i - j|"); axes[2].set_ylabel("mean cosine similarity")
axes[2].set_title("similarity fades with distance"); axes[2].legend()
plt.show()

print(f"neighbours (distance 1): trained {by_offset_learned[0]:.2f}, initialisation {by_offset_initial[0]:.3f}")
print(f"distance 64: trained {by_offset_learned[63]:.2f}")
teach.check(by_offset_learned[0] > 0.7, "trained: mean cosine of neighbouring positions", by_offset_learned[0], "> 0.7")
teach.check(abs(by_offset_initial[0]) < 0.05, "initialisation: mean cosine of neighbouring positions",
            by_offset_initial[0], "about 0")
teach.check(by_offset_learned[63] < by_offset_learned[0] - 0.3, "trained: similarity at distance 64 is lower",
            by_offset_learned[63], f"< {by_offset_learned[0] - 0.3:.2f}")

# %% [markdown]
# Learned position embeddings have a cost: a model trained only on sequences of at most 128 tokens
# never updates rows 128–511 (their gradient is zero, section 2), and no model can go past row $P-1$.
# That is why the original BERT pretrained 90% of its steps at length 128 and the last 10% at 512.
# (Run this lesson in full mode to see all 512 of MiniLM's rows: they are structured to the end, so
# MiniLM, or the model it was distilled from, did see long sequences.)
#
# ### What the token-type table adds: which sentence
#
# Two rows, one for sentence A and one for B. Only their *difference* carries information: every
# token gets exactly one type row and exactly one position row, so adding a vector $c$ to both type
# rows and subtracting it from every position row changes no sum $e_{b,t}$ at all. Try it:

# %%
c = np.random.default_rng(3).standard_normal(type_table.shape[1])     # any vector (C,)
type_live = minilm.parameters()["embeddings.token_type_embeddings.weight"]
type_saved = type_live.copy()
try:
    type_live += c                                                # both type rows + c
    position_live -= c                                            # every position row - c
    moved = encode(input_ids, token_type_ids)
finally:
    type_live[...] = type_saved
    position_live[...] = saved
gap = np.abs(moved - with_positions).max()
print(f"type rows + c, position rows - c: max |change of the output| = {gap:.1e}")
teach.check(gap < 1e-10, "only the difference of the two type rows matters (max |diff|)", gap, "< 1e-10")
print("|type row 1 - type row 0| =", round(float(np.linalg.norm(type_table[1] - type_table[0])), 3),
      "  vs a word row:", round(row_norms["word"], 3))

# %% [markdown]
# ## 2. The embedding backward
#
# A lookup `out = W[ids]` has no multiplication in it, but it still has a gradient with respect to
# the table: each entry of $W$ reaches the loss through every output row that copied it.
#
# **Your task.** Given $\frac{\partial L}{\partial e}$ (shape (B, T, C)) and the cache of
# `embeddings_forward`, return the gradients of the three tables, each with **its table's shape**:
# (V, C), (P, C) and (2, C). Method: follow each entry $W_{v,c}$ forward — which entries of $e$ did it
# change, and by how much? — and sum what comes back. Think about an id that appears twice in the
# batch, about positions $\ge T$, and about the batch axis for positions.
#
# The check compares your three gradients with finite differences (`teach.finite_differences`) of
# $L = \sum e \odot \text{de}$ for a random `de`, on a batch in which several ids repeat.

# %% tags=["exercise"]
# EXERCISE: embedding_backward -- dword (V, C), dposition (P, C), dtoken_type (2, C) from de (B, T, C)
def my_embedding_backward(de, cache):
    '''de: (B, T, C) = dL/de; cache: EmbeddingsCache. Returns (dword, dposition, dtoken_type).'''
    input_ids, token_type_ids, word_shape, position_shape, token_type_shape = cache
    ### BEGIN SOLUTION
    B, T, C = de.shape
    de_rows = de.reshape(-1, C)                            # (B, T, C) -> (B*T, C): one row per token
    dword = np.zeros(word_shape)                           # (V, C)
    np.add.at(dword, input_ids.reshape(-1), de_rows)       # ids (B, T) -> (B*T,); row ids[n] += de[n], repeats accumulate
    dposition = np.zeros(position_shape)                   # (P, C): rows T.. were not used
    dposition[:T] = de.sum(axis=0)                         # (B, T, C) -> (T, C): row t fed every sequence
    dtoken_type = np.zeros(token_type_shape)               # (2, C)
    np.add.at(dtoken_type, token_type_ids.reshape(-1), de_rows)   # types (B, T) -> (B*T,): a scatter-add too
    ### END SOLUTION
    return dword, dposition, dtoken_type


# %% tags=["check"]
check_rng = np.random.default_rng(5)
V, P, C = 7, 6, 4                                        # tiny, distinct sizes: V != P != C, and T < P
ids = np.array([[1, 4, 4, 2, 0],                         # (B, T) = (3, 5); id 1 starts every row like [CLS];
                [1, 5, 4, 2, 3],                         # ids 1, 2, 4, 5 repeat; 0 and 3 occur once; 6 never
                [1, 5, 5, 5, 2]])
types = np.array([[0, 0, 0, 1, 1],
                  [0, 0, 1, 1, 1],
                  [0, 0, 0, 0, 1]])
tables = {"word": check_rng.standard_normal((V, C)),
          "position": check_rng.standard_normal((P, C)),
          "token_type": check_rng.standard_normal((2, C))}
e_check, cache_check = embeddings_forward(ids, types, **tables)
de_check = check_rng.standard_normal(e_check.shape)      # a random upstream gradient, never all-ones

loss = lambda: float((embeddings_forward(ids, types, **tables)[0] * de_check).sum())   # L = sum(e * de)
numeric = {name: teach.finite_differences(loss, table) for name, table in tables.items()}
yours = dict(zip(tables, my_embedding_backward(de_check, cache_check)))
try:
    errors = teach.check_gradients(yours, numeric, threshold=1e-7)
except teach.CheckFailed as failure:                     # say it when the wrong rows are the repeated ids
    notes = []
    for name, index in (("word", ids), ("token_type", types)):
        count = np.bincount(index.reshape(-1), minlength=numeric[name].shape[0])   # occurrences of each row's id
        if np.shape(yours[name]) == numeric[name].shape:
            bad = np.flatnonzero(teach.rel_error_array(yours[name], numeric[name]).max(axis=1) > 1e-7)
            if bad.size and np.all(count[bad] > 1):
                notes.append(f"  {name}: the wrong rows {bad.tolist()} are ids that occur {count[bad].tolist()} times "
                             "in the batch: does every occurrence add its row of de?")
    raise teach.CheckFailed("\n".join([str(failure)] + notes)) from None

# %% [markdown]
# ### Solution notes
#
# **The word table.** $e_{n,c} = W_{\text{ids}_n, c} + \dots$ (with $n$ running over all $B \cdot T$ tokens), so
# $\partial e_{n,c} / \partial W_{v,c} = 1$ if $\text{ids}_n = v$ and 0 otherwise, and
#
# $$\frac{\partial L}{\partial W_{v,c}} = \sum_{n\,:\,\text{ids}_n = v} \frac{\partial L}{\partial e_{n,c}} .$$
#
# A **scatter-add**: every token sends its row of `de` back to its id's row, and an id that occurs
# $k$ times receives the sum of $k$ rows. Rows of ids that never occur get exactly zero. The same
# formula in matrix form: the lookup is a product with one-hot rows, $e = \text{onehot}(\text{ids})\,W$
# with onehot of shape (N, V), so lesson 1's linear backward gives $dW = \text{onehot}^\top de$ — the same
# numbers, computed with a (V, N) matrix that is almost all zeros.
#
# **The position table.** Row $t$ is added to position $t$ of *every* sequence, so its gradient is
# $\sum_b de_{b,t}$ (a sum over the batch axis, not a mean), and rows $t \ge T$ were not used: zero.
#
# **The type table.** A scatter-add like the words, into 2 rows.
#
# ### Why `W[idx] += g` is wrong
#
# The tempting one-liner `dW[ids] += de_rows` reads the rows `dW[ids]`, adds, and writes them back —
# for a repeated id, all the writes go to the same row and **the last one wins**. NumPy's documentation of
# `ufunc.at` says so: "`a[[0,0]] += 1` will only increment the first element once because of buffering, whereas
# `add.at(a, [0,0], 1)` will increment the first element twice". See it on four tokens:

# %%
ids_small = np.array([3, 1, 3, 3])                      # id 3 three times
g = np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 40.0], [8.0, 80.0]])   # (4, 2) one gradient row per token
buffered = np.zeros((5, 2))
buffered[ids_small] += g                                # read, add, write: row 3 is written 3 times
unbuffered = np.zeros((5, 2))
np.add.at(unbuffered, ids_small, g)                     # every occurrence adds
print("dW[ids] += g      -> row 3 =", buffered[3], "  (only the last token's gradient)")
print("np.add.at(dW,...) -> row 3 =", unbuffered[3], "  (1 + 4 + 8, 10 + 40 + 80)")
teach.check_equal("np.add.at: row 3 gets all three rows", unbuffered[3], g[0] + g[2] + g[3])
teach.check_equal("dW[ids] += g: row 3 gets only the last", buffered[3], g[3])

# the matrix form gives the same numbers as the scatter-add
onehot = np.eye(5)[ids_small]                           # (4,) -> (4, 5): row n is e_{ids[n]}
teach.check_close("onehot.T @ g vs np.add.at", onehot.T @ g, unbuffered, rtol=0, atol=0)

# %% [markdown]
# How much does the bug lose on real data? Tokenise 32 documents of the bundled corpus into
# sequences of 128 tokens with BERT-base's vocabulary, draw a random `de`, and compare:

# %%
documents = read_corpus(bundled_corpus("train"))
corpus_tokenizer = bn.BertTokenizer(str(bert_base_uncased_vocab()), do_lower_case=True)
real_ids = np.array([corpus_tokenizer(" ".join(doc[:12]), max_length=128, truncation=True,
                                      padding="max_length")["input_ids"] for doc in documents[:32]])   # (32, 128)
real_de = rng.standard_normal(real_ids.shape + (16,))           # (B, T, 16): a narrow C is enough here
right = np.zeros((corpus_tokenizer.vocab_size, 16))
token_ids, token_rows = real_ids.reshape(-1), real_de.reshape(-1, 16)   # (32, 128) -> (4096,), (32, 128, 16) -> (4096, 16)
np.add.at(right, token_ids, token_rows)
wrong = np.zeros_like(right)
wrong[token_ids] += token_rows
distinct = len(np.unique(real_ids))
lost = np.linalg.norm(wrong - right) / np.linalg.norm(right)
print(f"{real_ids.size} tokens, {distinct} distinct ids: {1 - distinct / real_ids.size:.0%} of the tokens repeat an id")
print(f"relative error of the word-table gradient with dW[ids] += g: {lost:.2f}")
teach.check(lost > 0.5, "relative error of dW[ids] += g on a real batch", lost, "> 0.5 (most of it lost)")

# %% [markdown]
# Most of the gradient is gone, and nothing crashes: the frequent tokens (`the`, `[CLS]`, `[SEP]`, `.`)
# just receive the gradient of one of their occurrences per batch instead of all of them. Only a
# gradient check with repeated ids catches it. (`bertnp.ops.embedding.embedding_backward` uses
# `np.add.at`, or `cupyx.scatter_add` on a GPU. It also has PyTorch's `padding_idx`: Hugging Face's
# BERT gives the `[PAD]` row of the word table no gradient, so it stays where it started.)

# %% [markdown]
# ## 3. The residual stream: gradients add where paths meet
#
# Every sub-layer of BERT is wrapped as $y = x + F(x)$: the input is carried past the block and added to
# what the block computed. In the backward, $x$ reaches $y$ along two paths, and the chain rule sums
# them:
#
# $$\frac{\partial L}{\partial x} = \underbrace{\frac{\partial L}{\partial y}}_{\text{skip path}} + \underbrace{J_F(x)^\top \frac{\partial L}{\partial y}}_{\text{through } F} .$$
#
# The same rule holds wherever a value is used twice (a tied weight, lesson 8; the three projections
# that all read $x$, lesson 6): **gradients of a value used twice add up; never overwrite.** Forgetting
# the skip term is a classic bug — check a small block $F(x) = W_2\,\mathrm{gelu}(W_1 x)$ both ways:

# %%
x_res = rng.standard_normal((3, 6))
W1, W2 = 0.5 * rng.standard_normal((10, 6)), 0.5 * rng.standard_normal((6, 10))

def block_forward(x):
    hidden, c1 = linear_forward(x, W1)                     # (N, 6) -> (N, 10)
    act, c2 = gelu_forward(hidden)
    f, c3 = linear_forward(act, W2)                        # (N, 10) -> (N, 6)
    return x + f, (c1, c2, c3)                             # the residual: y = x + F(x)

def block_backward(dy, caches, skip=True):
    c1, c2, c3 = caches
    dact = linear_backward(dy, c3)[0]
    dhidden = gelu_backward(dact, c2)
    dx_through_f = linear_backward(dhidden, c1)[0]
    return dx_through_f + dy if skip else dx_through_f     # the two paths meet: add

y_res, caches_res = block_forward(x_res)
dy_res = rng.standard_normal(y_res.shape)
numeric_dx = teach.finite_differences(lambda: float((block_forward(x_res)[0] * dy_res).sum()), x_res)
error = teach.check_gradient("dx of y = x + F(x)", block_backward(dy_res, caches_res), numeric_dx)
err_without_skip = float(teach.rel_error_array(block_backward(dy_res, caches_res, skip=False), numeric_dx).max())
teach.check(err_without_skip > 1e-2, "relative error when the skip path is forgotten", err_without_skip, "> 1e-2")

# %% [markdown]
# The skip path matters most in a deep stack. Through $L$ blocks without skips, the gradient is a product
# of $L$ Jacobians, and with BERT's small initial weights each one shrinks it. With skips, the product
# contains the identity, so $\frac{\partial L}{\partial y_L}$ reaches the bottom unchanged, plus corrections.
# Twenty-four blocks, weights $\mathcal N(0, 0.02^2)$ at width 64:

# %%
depth, width = 24, 64
stack = [(rng.normal(0, 0.02, (4 * width, width)), rng.normal(0, 0.02, (width, 4 * width))) for _ in range(depth)]
x_deep = rng.standard_normal((8, width))
dy_deep = rng.standard_normal((8, width))

def stack_input_gradient(skip):
    caches, x = [], x_deep
    for Wa, Wb in stack:
        hidden, c1 = linear_forward(x, Wa)
        act, c2 = gelu_forward(hidden)
        f, c3 = linear_forward(act, Wb)
        x = x + f if skip else f
        caches.append((c1, c2, c3))
    d = dy_deep
    for c1, c2, c3 in reversed(caches):
        d_f = linear_backward(gelu_backward(linear_backward(d, c3)[0], c2), c1)[0]
        d = d + d_f if skip else d_f
    return np.linalg.norm(d) / np.linalg.norm(dy_deep)

with_skip, without_skip = stack_input_gradient(True), stack_input_gradient(False)
print(f"|dL/dx_0| / |dL/dy_L| after {depth} blocks: with skips {with_skip:.3f}, without {without_skip:.1e}")
teach.check(0.5 < with_skip < 2, "with skips the gradient reaches the bottom (norm ratio)", with_skip, "about 1")
teach.check(without_skip < 1e-6, "without skips it vanishes (norm ratio)", without_skip, "< 1e-6")

# %% [markdown]
# ## 4. Post-LN and pre-LN
#
# Where does LayerNorm go? BERT (like the original Transformer) normalises **after** each addition:
#
# $$\text{post-LN:}\qquad h = \mathrm{LN}_1\big(x + \mathrm{Attn}(x)\big), \qquad y = \mathrm{LN}_2\big(h + \mathrm{FFN}(h)\big).$$
#
# GPT-2 and most later models normalise **inside** the branch, before it, and once more at the very top:
#
# $$\text{pre-LN:}\qquad h = x + \mathrm{Attn}\big(\mathrm{LN}_1(x)\big), \qquad y = h + \mathrm{FFN}\big(\mathrm{LN}_2(h)\big), \qquad \text{output} = \mathrm{LN}_{\text{final}}(y_L).$$
#
# In pre-LN the skip path runs untouched from the top of the stack to the embeddings (section 3's
# picture). In post-LN, every addition is followed by a LayerNorm, so on the way down the gradient
# passes through $2L$ LayerNorm backwards, each of which divides by the standard deviation of
# $x + F(x)$ and removes two directions (lesson 1).
#
# Below is one encoder layer in both forms, built from the library's operations (dropout left out: it is
# lesson 7). The parameter names inside a layer are Hugging Face's, so MiniLM's weights plug straight in.
# Read the backward for the residual sums: `dh = dy + ...` and `dx = dh + ...`.

# %%
def encoder_layer_forward(x, p, additive_mask, num_heads, post_ln=True):
    """x: (B, T, C) -> y: (B, T, C). p: this layer's parameters by HF name. Returns (y, cache)."""
    cache = {}
    def norm(name, t):
        out, cache[name] = layernorm_forward(t, p[name + ".weight"], p[name + ".bias"], EPS)
        return out
    attn_in = x if post_ln else norm("attention.output.LayerNorm", x)          # pre-LN: normalise the branch input
    attn, cache["attn"] = attention_forward(
        attn_in, p["attention.self.query.weight"], p["attention.self.query.bias"],
        p["attention.self.key.weight"], p["attention.self.key.bias"],
        p["attention.self.value.weight"], p["attention.self.value.bias"], num_heads, additive_mask)  # (B, T, C)
    a, cache["attn_out"] = linear_forward(attn, p["attention.output.dense.weight"], p["attention.output.dense.bias"])
    h = x + a                                                                    # residual 1
    if post_ln:
        h = norm("attention.output.LayerNorm", h)
    ffn_in = h if post_ln else norm("output.LayerNorm", h)
    f, cache["ffn1"] = linear_forward(ffn_in, p["intermediate.dense.weight"], p["intermediate.dense.bias"])  # (B, T, 4C)
    f, cache["gelu"] = gelu_forward(f)
    f, cache["ffn2"] = linear_forward(f, p["output.dense.weight"], p["output.dense.bias"])   # (B, T, C)
    y = h + f                                                                    # residual 2
    if post_ln:
        y = norm("output.LayerNorm", y)
    return y, cache


def encoder_layer_backward(dy, cache, post_ln=True):
    """dy: (B, T, C) -> (dx, {HF name: gradient})."""
    grads = {}
    def norm_backward(name, d):
        d, grads[name + ".weight"], grads[name + ".bias"] = layernorm_backward(d, cache[name])
        return d
    if post_ln:
        dy = norm_backward("output.LayerNorm", dy)              # y = LN2(h + f)
    df, grads["output.dense.weight"], grads["output.dense.bias"] = linear_backward(dy, cache["ffn2"])
    df = gelu_backward(df, cache["gelu"])
    df, grads["intermediate.dense.weight"], grads["intermediate.dense.bias"] = linear_backward(df, cache["ffn1"])
    if not post_ln:
        df = norm_backward("output.LayerNorm", df)              # ffn_in = LN2(h)
    dh = dy + df                                                # residual 2: skip path + FFN path
    if post_ln:
        dh = norm_backward("attention.output.LayerNorm", dh)    # h = LN1(x + a)
    da, grads["attention.output.dense.weight"], grads["attention.output.dense.bias"] = \
        linear_backward(dh, cache["attn_out"])
    g = attention_backward(da, cache["attn"])
    for proj in ("query", "key", "value"):
        grads[f"attention.self.{proj}.weight"] = getattr(g, proj + "_weight")
        grads[f"attention.self.{proj}.bias"] = getattr(g, proj + "_bias")
    dattn_in = g.x
    if not post_ln:
        dattn_in = norm_backward("attention.output.LayerNorm", dattn_in)   # attn_in = LN1(x)
    dx = dh + dattn_in                                          # residual 1: skip path + attention path
    return dx, grads


def layer_parameters(state, i):
    """Layer i's tensors from a BertModel state dict, named as inside the layer."""
    prefix = f"encoder.layer.{i}."
    return {name[len(prefix):]: t for name, t in state.items() if name.startswith(prefix)}

# %% [markdown]
# **Is the post-LN version BERT?** Run MiniLM's six layers from the `x0` of section 1 and compare with
# the library's `BertModel` — the forward, and the gradient of every layer parameter for a random
# $\partial L / \partial(\text{output})$:

# %%
heads = minilm.config.num_attention_heads
layers_minilm = [layer_parameters(weights, i) for i in range(minilm.config.num_hidden_layers)]
x, caches = x0, []
for p in layers_minilm:
    x, c_layer = encoder_layer_forward(x, p, None, heads, post_ln=True)
    caches.append(c_layer)
library_out = minilm(input_ids=input_ids, token_type_ids=token_type_ids).last_hidden_state
teach.check_close("our post-LN stack vs bertnp.BertModel (last hidden state)", x, library_out, rtol=1e-10, atol=1e-12)

dout_top = rng.standard_normal(x.shape)
ours, d = {}, dout_top
for i in reversed(range(len(caches))):
    d, layer_grads = encoder_layer_backward(d, caches[i], post_ln=True)
    ours.update({f"encoder.layer.{i}.{name}": grad for name, grad in layer_grads.items()})
minilm.zero_grad()
library_grads = minilm.backward(dlast_hidden_state=dout_top)
worst = max(float(np.abs(ours[n] - library_grads[n]).max() / np.abs(library_grads[n]).max()) for n in ours)
teach.check(worst < 1e-9, f"all {len(ours)} layer gradients equal the library's (largest difference / largest entry)",
            worst, "< 1e-9")

# %% [markdown]
# The pre-LN version has no library to compare with, so it gets the referee: finite differences on a
# tiny two-layer stack (with a final LayerNorm), with respect to the input and a few parameters of each kind.

# %%
def init_layer(C, intermediate, std, rng):
    """Fresh parameters, BERT's scheme: weights N(0, std^2) in HF layout (out, in), biases 0, LayerNorm 1 and 0."""
    shapes = {"attention.self.query.weight": (C, C), "attention.self.key.weight": (C, C),
              "attention.self.value.weight": (C, C), "attention.output.dense.weight": (C, C),
              "intermediate.dense.weight": (intermediate, C), "output.dense.weight": (C, intermediate)}
    p = {}
    for name, shape in shapes.items():
        p[name] = rng.normal(0.0, std if np.isscalar(std) else std(shape), shape)
        p[name.replace("weight", "bias")] = np.zeros(shape[0])
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        p[name + ".weight"], p[name + ".bias"] = np.ones(C), np.zeros(C)
    return p


def pre_ln_stack_forward(x, layers, final_gamma, final_beta, num_heads):
    caches = []
    for p in layers:
        x, c_layer = encoder_layer_forward(x, p, None, num_heads, post_ln=False)
        caches.append(c_layer)
    out, final_cache = layernorm_forward(x, final_gamma, final_beta, EPS)    # the extra LayerNorm at the top
    return out, (caches, final_cache)


tiny_rng = np.random.default_rng(7)
tiny_layers = [init_layer(6, 10, 0.5, tiny_rng) for _ in range(2)]
for p in tiny_layers:                                # non-trivial biases and LayerNorm parameters too
    for name in p:
        p[name] = p[name] + 0.3 * tiny_rng.standard_normal(p[name].shape)
final_gamma, final_beta = 1 + 0.3 * tiny_rng.standard_normal(6), 0.3 * tiny_rng.standard_normal(6)
x_tiny = tiny_rng.standard_normal((2, 3, 6))
dout_tiny = tiny_rng.standard_normal((2, 3, 6))

out_tiny, (tiny_caches, final_cache) = pre_ln_stack_forward(x_tiny, tiny_layers, final_gamma, final_beta, 2)
d, _, _ = layernorm_backward(dout_tiny, final_cache)
analytic = {}
for i in reversed(range(2)):
    d, layer_grads = encoder_layer_backward(d, tiny_caches[i], post_ln=False)
    analytic.update({f"layer {i} {name}": g for name, g in layer_grads.items()})
analytic["x"] = d

tiny_loss = lambda: float((pre_ln_stack_forward(x_tiny, tiny_layers, final_gamma, final_beta, 2)[0] * dout_tiny).sum())
checked = {"x": x_tiny}
for i in range(2):
    for name in ("attention.self.query.weight", "attention.self.value.bias", "attention.output.LayerNorm.weight",
                 "intermediate.dense.weight", "output.LayerNorm.bias"):
        checked[f"layer {i} {name}"] = tiny_layers[i][name]
# a stack of ~20 operations: the whole-model threshold of lesson 4 (1e-6) instead of one layer's 1e-7
errors = teach.check_gradients({k: analytic[k] for k in checked},
                               {k: teach.finite_differences(tiny_loss, t) for k, t in checked.items()}, threshold=1e-6)

# %% [markdown]
# ### The gradient of every layer, at initialisation
#
# Now the comparison. Two 12-layer encoders with the same weights, one post-LN and one pre-LN, each with a
# masked-LM-like head (the output scored against the word table, lesson 8) and cross-entropy against
# random targets. For each layer we measure the norm of the gradient of its FFN output matrix
# (`output.dense.weight`; the other matrices tell the same story).
#
# We do it twice. Once with **BERT's initialisation**, weights $\mathcal N(0, 0.02^2)$. And once with weights of
# the size **training gives them**: a trained BERT's matrices are much larger than 0.02. MiniLM's, measured
# as std $\times \sqrt{\text{fan-in}}$ (1 would be "unit gain", 0.02 × √384 = 0.39 is BERT's start):

# %%
gains = {name: float(t.std() * np.sqrt(t.shape[1])) for name, t in weights.items()
         if name.startswith("encoder.layer.") and name.endswith("weight") and t.ndim == 2}
print(f"MiniLM's {len(gains)} layer matrices: std x sqrt(fan-in) from {min(gains.values()):.2f} to "
      f"{max(gains.values()):.2f} (median {np.median(list(gains.values())):.2f}); BERT's init at C=384: {0.02 * np.sqrt(384):.2f}")
teach.check(min(gains.values()) > 0.8, "trained matrices are bigger than the 0.02 init (smallest gain)",
            min(gains.values()), "> 0.8 (init: 0.39)")

# %%
def layer_gradient_norms(post_ln, std, n_layers, C, seed=0):
    """Per-layer |dL/d output.dense.weight| of a fresh n_layers-deep encoder with an MLM-like loss."""
    init_rng = np.random.default_rng(seed)                       # the same weights for post- and pre-LN
    vocab, batch_size, seq_len, n_heads = 1000, 2, 32, 4
    layers = [init_layer(C, 4 * C, std, init_rng) for _ in range(n_layers)]
    word = init_rng.normal(0.0, 0.02, (vocab, C))
    ids_run = init_rng.integers(0, vocab, (batch_size, seq_len))
    targets = init_rng.integers(0, vocab, batch_size * seq_len)
    x, _ = layernorm_forward(word[ids_run] + init_rng.normal(0, 0.02, (seq_len, C)), np.ones(C), np.zeros(C), EPS)
    run_caches = []
    for p in layers:
        x, c_layer = encoder_layer_forward(x, p, None, n_heads, post_ln)
        run_caches.append(c_layer)
    if not post_ln:
        x, final = layernorm_forward(x, np.ones(C), np.zeros(C), EPS)
    logits = x.reshape(-1, C) @ word.T                            # (B, T, C) -> (B*T, C) @ (C, V)
    loss, ce_cache = cross_entropy_forward(logits, targets)
    d = (cross_entropy_backward(1.0, ce_cache) @ word).reshape(x.shape)   # (B*T, V) @ (V, C) -> (B, T, C)
    if not post_ln:
        d, _, _ = layernorm_backward(d, final)
    norms = []
    for c_layer in reversed(run_caches):
        d, layer_grads = encoder_layer_backward(d, c_layer, post_ln)
        norms.append(np.linalg.norm(layer_grads["output.dense.weight"]))
    return np.array(norms[::-1])                                  # index 0 = layer 1 (bottom)

n_layers, width = 12, teach.pick(256, 128)
unit_gain = lambda shape: 1.0 / np.sqrt(shape[1])                 # std = 1 / sqrt(fan-in)
settings = {"BERT's init: N(0, 0.02²)": 0.02, "trained scale: std = 1/sqrt(fan-in)": unit_gain}
norms = {(label, post): layer_gradient_norms(post, std, n_layers, width)
         for label, std in settings.items() for post in (True, False)}

fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharey=True, layout="constrained")
for ax, label in zip(axes, settings):
    for post, style in ((True, "o-"), (False, "s--")):
        ax.plot(range(1, n_layers + 1), norms[(label, post)], style, label="post-LN (BERT)" if post else "pre-LN")
    ax.set_yscale("log"); ax.set_xlabel("layer (1 = bottom, next to the embeddings)")
    ax.set_title(f"weights: {label}"); ax.legend(); ax.grid(alpha=0.3)
axes[0].set_ylabel("|dL / d output.dense.weight|")
fig.suptitle(f"gradient norm of each layer at initialisation, {n_layers} layers, width {width}")
plt.show()

for label in settings:
    ratio = norms[(label, True)] / norms[(label, False)]
    print(f"{label:<38} post-LN / pre-LN: bottom layer {ratio[0]:.2f}, top layer {ratio[-1]:.2f}")
small = norms[(list(settings)[0], True)] / norms[(list(settings)[0], False)]
grown = norms[(list(settings)[1], True)] / norms[(list(settings)[1], False)]
teach.check(abs(small[-1] - 1) < 0.2, "BERT's init: post-LN / pre-LN at the top layer", small[-1], "about 1")
teach.check(grown[-1] > 2, "trained scale: post-LN / pre-LN at the top layer", grown[-1], "> 2")
teach.check(0.5 < grown[0] < 1.0, "trained scale: post-LN / pre-LN at the bottom layer (pre-LN's is larger there)",
            grown[0], "between 0.5 and 1")
teach.check(grown[-1] > 1.5 * grown[0], "trained scale: the ratio grows from bottom to top",
            f"{grown[0]:.2f} -> {grown[-1]:.2f}", "top > 1.5 x bottom")

# %% [markdown]
# Read the figure:
#
# * **With BERT's small initial weights the two are almost the same.** The branches $F(x)$ start tiny
#   next to the residual stream, so $\mathrm{LN}(x + F(x)) \approx \mathrm{LN}(x)$ and moving the LayerNorm changes little:
#   a freshly initialised post-LN BERT behaves much like a pre-LN one.
# * **With weights of trained size they differ, most at the top.** Post-LN's gradient is about the same in
#   every layer, while pre-LN's falls from the bottom layer to the top one: at the bottom pre-LN's is somewhat
#   *larger* (a ratio of about 0.75), at the top post-LN's is several times larger. Xiong et al. (2020, "On
#   Layer Normalization in the Transformer Architecture") show this for weights of unit gain: the gradient
#   of the last layer's FFN weights does not depend on the depth $L$ in post-LN, and shrinks like $1/\sqrt{L}$
#   in pre-LN (pre-LN's final LayerNorm divides by the size of a stream that $L$ branches have added to).
#   Here $\sqrt{12} \approx 3.5$; we measure a factor of about 2.5.
#
# **What that means for warmup.** Xiong et al. connect the two: with large gradients at the top layers, a
# large learning rate from the first step makes post-LN training unstable. They found that post-LN
# Transformers need a *warmup* — a learning rate that grows linearly from 0 over the first thousands of steps
# (10,000 in the original BERT) — and diverge or stall without it, while pre-LN ones train without warmup.
# (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond", add a reason that holds for
# any architecture: in the first steps Adam's estimate of each gradient's scale rests on a handful of samples,
# so its steps are erratic; warmup keeps them small until the estimates settle. Lesson 10 covers Adam.)
#
# Our reading of the two panels together (an interpretation, not a theorem): BERT starts in the left one,
# where nothing is wrong yet, and its weights grow towards the right one during the first part of training —
# exactly the phase that warmup slows down. Lesson 10 runs the experiment: the same post-LN model with and
# without warmup.
#
# Why keep post-LN, then? Because BERT and every checkpoint trained from it are post-LN: to load
# MiniLM or BERT-base, the layer has to compute exactly what they were trained with.

# %% [markdown]
# ## Summary
#
# * BERT's input is the **sum** of three looked-up rows — token, position, segment — then LayerNorm.
#   Positions break attention's permutation symmetry; trained position rows are similar to their
#   neighbours; only the difference of the two segment rows matters.
# * A lookup's backward is a **scatter-add**: `np.add.at(dW, ids, de)`, the position gradient a sum over the
#   batch, unused rows zero. `dW[ids] += de` keeps only the last occurrence of an id: on a real batch it
#   lost most of the gradient, without any error.
# * Where a value is used twice (the skip path and the branch) its **gradients add**. The skip path
#   carries the gradient through a deep stack; without it, it vanishes.
# * Post-LN (BERT) normalises after each addition; pre-LN inside the branch. At BERT's 0.02 init they
#   behave alike; at trained weight sizes post-LN's top layers get much larger gradients — one reason
#   post-LN BERT is trained with learning-rate warmup.
#
# Next: lesson 6 opens up the attention block — all heads, all projections, and the full backward.
