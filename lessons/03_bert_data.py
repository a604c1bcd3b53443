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
# # Lesson 3 — From text to a pretraining example
#
# BERT never sees characters. Text goes through a pipeline, each stage a few dozen lines of `bertnp`:
#
# 1. **BasicTokenizer** — clean the text, lower-case it, strip accents, split off punctuation: a list of words.
# 2. **WordPiece** — split each word into pieces of a fixed vocabulary (`un ##want ##ed`): a list of ids.
# 3. **Pairs** — two stretches of text `A` and `B`, either consecutive (label 0, *IsNext*) or with `B` from
#    another document (label 1): `[CLS] A [SEP] B [SEP]`, for next-sentence prediction (NSP).
# 4. **Masking** — 15% of the positions are chosen for the masked-LM task; of those 80% become `[MASK]`,
#    10% a random token, 10% stay as they are.
#
# You will implement WordPiece's encoder and the masking rule yourself, and check both — and the
# library's data pipeline — against what Google's `tokenization.py` and `create_pretraining_data.py` do.

# %%
# %matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
import random
import tempfile
from collections import Counter
from pathlib import Path

from bertnp.corpus import bundled_corpus, bert_base_uncased_vocab as bundled_vocab
from bertnp.data import (MaskingVocab, PretrainingDataset, collate, format_instance,
                         num_to_predict, plot_instance, read_corpus)
from bertnp.tokenizer import BasicTokenizer, BertTokenizer, WordpieceTokenizer
from bertnp.wordpiece_trainer import tokenization_stats

workdir = Path(tempfile.mkdtemp(prefix="bertnp-lesson3-"))   # the vocabularies this lesson writes

# %% [markdown]
# ## 1. The basic tokenizer
#
# BERT's `BasicTokenizer` (Google's `tokenization.py`) applies a few fixed rules:
#
# * **clean**: drop control characters (Unicode category C*) and U+FFFD; every whitespace character
#   (tab, newline, no-break space...) becomes a space;
# * **CJK**: put spaces around every Chinese/Japanese ideograph, so each is a word of its own;
# * **lower-case** (uncased models) and **strip accents**: decompose (NFD) and drop the combining marks, é → e;
# * **punctuation**: every ASCII symbol (`$`, `-`, `` ` ``...) and every Unicode P* character is split off as its own word.
#
# These are Google's own test cases:

# %%
basic = BasicTokenizer(do_lower_case=True)
examples = {
    " \tHeLLo!how  \n Are yoU?  ": ["hello", "!", "how", "are", "you", "?"],
    "H\u00e9llo": ["hello"],
    "ah\u535a\u63a8zz": ["ah", "\u535a", "\u63a8", "zz"],
}
for text, expected in examples.items():
    words = basic.tokenize(text)
    print(f"{text!r:32} -> {words}")
    assert words == expected
print(basic.tokenize("He paid $3.50 for the e-mail-order milk, didn't he?"))


# %% [markdown]
# ## 2. WordPiece: greedy longest match first
#
# A vocabulary (`vocab.txt`, one token per line, the line number is the id) holds whole words and word
# pieces; a piece that continues a word carries the prefix `##`. To split a word, WordPiece is greedy:
# from the current position, take the **longest** prefix of the rest of the word that is in the
# vocabulary (with `##` in front unless it is the start of the word), then continue after it.
# If at some point *no* prefix matches, the **whole word** becomes `[UNK]` — not just the unmatched part.
# (Words longer than 100 characters are `[UNK]` too.)
#
# With Google's test vocabulary `[UNK] [CLS] [SEP] want ##want ##ed wa un runn ##ing ,`:
# `unwanted` → `un ##want ##ed` (not `un ##wa ...`: `##want` is longer), `running` → `runn ##ing`,
# and `unwantedx` → `[UNK]` (nothing matches `x`).

# %% tags=["exercise"]
# EXERCISE: WordPiece's greedy longest-match-first split of ONE word
def my_wordpiece(word, vocab, unk_token="[UNK]", max_chars=100):
    '''word: str without spaces; vocab: a set or dict of tokens. Returns the list of pieces.'''
    if len(word) > max_chars:
        return [unk_token]
    pieces = []
    ### BEGIN SOLUTION
    start = 0
    while start < len(word):
        end = len(word)
        piece = None
        while end > start:                       # try the longest candidate first
            candidate = word[start:end] if start == 0 else "##" + word[start:end]
            if candidate in vocab:
                piece = candidate
                break
            end -= 1
        if piece is None:                        # nothing matches here: the whole word is unknown
            return [unk_token]
        pieces.append(piece)
        start = end
    ### END SOLUTION
    return pieces


# %% tags=["check"]
google_vocab = ["[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un", "runn", "##ing", ","]
for word, expected in [("unwanted", ["un", "##want", "##ed"]), ("running", ["runn", "##ing"]),
                       ("unwantedx", ["[UNK]"]), ("want", ["want"]), ("", [])]:
    assert my_wordpiece(word, set(google_vocab)) == expected, (word, my_wordpiece(word, set(google_vocab)))

# the full tokenizer on Google's example (BertTokenizer also needs [PAD] and [MASK]: appended, ids 11, 12)
(workdir / "google_vocab.txt").write_text("".join(t + "\n" for t in google_vocab + ["[PAD]", "[MASK]"]))
google_tok = BertTokenizer(str(workdir / "google_vocab.txt"))
tokens = google_tok.tokenize("UNwant\u00e9d,running")
print(tokens, google_tok.convert_tokens_to_ids(tokens))
assert tokens == ["un", "##want", "##ed", ",", "runn", "##ing"]
assert google_tok.convert_tokens_to_ids(tokens) == [7, 4, 5, 10, 8, 9]

# %% [markdown]
# The real thing: the uncased BERT-base vocabulary (30,522 tokens, shipped with bertnp: `bertnp.corpus.bert_base_uncased_vocab()`).
# Frequent words are single tokens; rare ones split into meaningful-ish pieces. Your function must agree
# with the library's `WordpieceTokenizer` on every word of a slice of the corpus:

# %%
bert_vocab_file = bundled_vocab()                  # BERT-base uncased, shipped with bertnp
bert_tok = BertTokenizer(str(bert_vocab_file), do_lower_case=True)
for text in ["unaffable", "tokenization", "hackishness", "The Jebusites dwelt in Jerusalem."]:
    print(f"{text!r:36} -> {bert_tok.tokenize(text)}")

documents = read_corpus(bundled_corpus("train"))                     # 1,180 documents, lists of sentences
heldout = read_corpus(bundled_corpus("heldout"))

# %% tags=["check"]
words = sorted({w for doc in documents[::20] for s in doc for w in basic.tokenize(s)})
library = WordpieceTokenizer(bert_tok.vocab)
mismatches = [w for w in words if my_wordpiece(w, bert_tok.vocab) != library.tokenize_word(w)]
print(f"{len(words)} distinct words compared, {len(mismatches)} mismatches")
assert not mismatches, mismatches[:10]

# %% [markdown]
# ## 3. Learning a vocabulary
#
# Where does the vocabulary come from? `bn.train_wordpiece` builds one bottom-up, like byte-pair encoding:
# start from single characters (`c` and `##c`), then repeatedly **merge** the adjacent pair of pieces
# whose merge most increases the likelihood of the training text under a unigram model of the pieces —
# roughly, pairs that are both frequent and occur together more than chance. Each merge adds one token,
# until the vocabulary has the requested size. Encoding afterwards is the greedy longest match you just wrote.
#
# Train tiny vocabularies on a few hundred lines of the corpus, sampled across all three texts, and
# measure them on the held-out split: the number of WordPiece tokens per word falls as the vocabulary
# grows (and a vocabulary trained on 600 lines covers the held-out text almost without `[UNK]`).

# %%
sentences = [s for doc in documents for s in doc]
lines = sentences[::len(sentences) // 600][:600]                    # 600 lines from all three texts
heldout_text = "\n".join(s for doc in heldout for s in doc)

stats = {}
for size in (300, 600, 1200):
    vocab = bn.train_wordpiece("\n".join(lines), vocab_size=size, show_progress=False)
    path = workdir / f"vocab{size}.txt"
    path.write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    tok = BertTokenizer(str(path))
    stats[size] = tokenization_stats(tok, heldout_text)
    print(f"vocab {size:>5}: {stats[size]['tokens_per_word']:.2f} tokens/word, "
          f"[UNK] {100 * stats[size]['unk_rate']:.2f}% of words;  "
          f"the last merges: {vocab[-6:]}")
stats[30522] = tokenization_stats(bert_tok, heldout_text)
print(f"BERT-base's 30,522: {stats[30522]['tokens_per_word']:.2f} tokens/word")
print("with the 1,200-token vocabulary:", tok.tokenize("The Jebusites dwelt in Jerusalem."))

fig, ax = plt.subplots(figsize=(6, 3.5))
sizes = sorted(stats)
ax.semilogx(sizes, [stats[s]["tokens_per_word"] for s in sizes], "o-")
ax.annotate("trained here on 600 lines", (1200, stats[1200]["tokens_per_word"]), xytext=(8, 8),
            textcoords="offset points")
ax.annotate("BERT-base", (30522, stats[30522]["tokens_per_word"]), xytext=(-60, 8), textcoords="offset points")
ax.set_xlabel("vocabulary size"); ax.set_ylabel("WordPiece tokens per word (held-out)")
ax.set_title("a bigger vocabulary: fewer, longer pieces"); ax.grid(alpha=0.3)
plt.show()

per_word = [stats[s]["tokens_per_word"] for s in sizes]
assert all(a > b for a, b in zip(per_word, per_word[1:]))          # strictly fewer tokens per word
assert stats[1200]["unk_rate"] < 0.01
assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] is id 0, as in every BERT vocab

# %% [markdown]
# ## 4. One pretraining instance
#
# `PretrainingDataset` follows Google's `create_pretraining_data.py` step by step. Per document it packs
# whole sentences into a chunk of up to `max_seq_length - 3` tokens (room for `[CLS]` and two `[SEP]`),
# splits the chunk at a random sentence boundary into `A` and `B`, and then, with probability ½,
# replaces `B` by text from another random document (NSP label 1, *random next*); otherwise `B` is the
# real continuation (label 0, *IsNext*). A pair that is too long loses tokens from the longer side, at the
# front or the back at random. `segment_ids` (the model's `token_type_ids`) are 0 for `[CLS] A [SEP]` and
# 1 for `B [SEP]`.
#
# Then masking. For a sequence of $n$ tokens, exactly $\min(\text{max\_predictions},\ \max(1, \operatorname{round}(0.15\,n)))$
# positions are chosen uniformly among all tokens except `[CLS]` and `[SEP]`. The model must predict the
# original token at each. Of the chosen positions
#
# * 80% are replaced by `[MASK]`,
# * 10% by a random token (so the model cannot assume that a visible token is always correct),
# * 10% are left unchanged (so the representation of visible tokens also has to carry their identity).
#
# `format_instance` shows one: the original token, what the model is given, and the label. (A segment
# that starts or ends in the middle of a word was shortened by the truncation.)

# %%
tokenizer = BertTokenizer(str(workdir / "vocab1200.txt"))
MAX_LEN, MAX_PRED = 48, 7
dataset = PretrainingDataset(documents[::4], tokenizer, max_seq_length=MAX_LEN,
                             max_predictions_per_seq=MAX_PRED, seed=1)
print(f"{len(dataset)} instances from {len(documents[::4])} documents\n")
instance = dataset[3]
print(format_instance(instance, tokenizer))

# %%
fig = plot_instance(instance, tokenizer)
plt.show()


# %% [markdown]
# Write the masking rule yourself. `vocab` is a `MaskingVocab`: it has `cls_id`, `sep_id`, `mask_id`, and
# `random_ids`, the ids a random replacement may draw (every token except the special ones, so `[PAD]`
# or `[CLS]` never appear in the middle of a text). Use only the `rng` you are given (a `random.Random`):
# reproducible data comes from explicit seeds.

# %% tags=["exercise"]
# EXERCISE: BERT's masking of one sequence -- choose the positions, then 80% [MASK] / 10% random / 10% kept
def my_mask_tokens(tokens, vocab, rng, masked_lm_prob=0.15, max_predictions=MAX_PRED):
    '''tokens: list of ids ([CLS] A [SEP] B [SEP]). Returns (input_ids, positions (ascending), labels).'''
    ### BEGIN SOLUTION
    candidates = [i for i, t in enumerate(tokens) if t not in (vocab.cls_id, vocab.sep_id)]
    rng.shuffle(candidates)
    n_predict = min(max_predictions, max(1, round(len(tokens) * masked_lm_prob)))
    positions = sorted(candidates[:n_predict])
    input_ids = list(tokens)
    for p in positions:
        if rng.random() < 0.8:
            input_ids[p] = vocab.mask_id                 # 80%: [MASK]
        elif rng.random() < 0.5:
            pass                                         # 10%: keep the original token
        else:
            input_ids[p] = rng.choice(vocab.random_ids)  # 10%: a random token
    ### END SOLUTION
    return input_ids, positions, [tokens[p] for p in positions]


# %% [markdown]
# A masking rule cannot be checked on one example: check its **statistics** over many. The helper below
# verifies the exact rules on every sequence (the number of predictions, never `[CLS]`/`[SEP]`, labels are
# the original tokens, nothing else changed) and measures the 80/10/10 split. (A random replacement that
# happens to draw the original token counts as "kept": with about 1,200 candidates that is rare.)

# %%
def masking_statistics(examples, max_predictions=MAX_PRED):
    '''examples: (tokens, input_ids, positions, labels) tuples. Asserts the rules; returns the fractions.'''
    kinds = Counter()
    for tokens, input_ids, positions, labels in examples:
        assert len(positions) == num_to_predict(len(tokens), 0.15, max_predictions)
        assert list(positions) == sorted(set(positions))
        assert all(tokens[p] not in (tokenizer.cls_token_id, tokenizer.sep_token_id) for p in positions)
        assert list(labels) == [tokens[p] for p in positions]
        chosen = set(positions)
        assert all(input_ids[i] == tokens[i] for i in range(len(tokens)) if i not in chosen)
        for p in positions:
            kinds["mask" if input_ids[p] == tokenizer.mask_token_id else
                  "kept" if input_ids[p] == tokens[p] else "random"] += 1
    total = sum(kinds.values())
    return {k: kinds[k] / total for k in ("mask", "random", "kept")}, total

def assert_80_10_10(fractions, total):
    print(f"{total} predictions: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in fractions.items()))
    assert total > 5000
    assert abs(fractions["mask"] - 0.8) < 0.02
    assert abs(fractions["random"] - 0.1) < 0.015 and abs(fractions["kept"] - 0.1) < 0.015


# %% tags=["check"]
vocab = MaskingVocab(tokenizer)
rng = random.Random(0)
mine = []
for i in range(len(dataset)):
    tokens = dataset.instances[i].tokens                         # the unmasked pair
    mine.append((tokens, *my_mask_tokens(tokens, vocab, rng)))
assert_80_10_10(*masking_statistics(mine))
allowed = set(vocab.random_ids)                                  # random replacements are never special
for tokens, input_ids, positions, _ in mine:
    for p in positions:
        if input_ids[p] not in (tokenizer.mask_token_id, tokens[p]):
            assert input_ids[p] in allowed

# %% [markdown]
# ## 5. The library's instances, by the numbers
#
# The same checks on the library's own instances, plus the pairs: every sequence is `[CLS] A [SEP] B [SEP]`
# within `max_seq_length`; an IsNext pair takes `A` and `B` from the same document, a random-next pair
# from two different ones. How many pairs are random? A chunk of two or more sentences flips a fair coin;
# a chunk of a *single* sentence (one long sentence already fills the target length) has no boundary to
# split at and always gets a random next. So the share of label 1 is a half *among multi-sentence chunks*,
# and more than a half overall — the shorter `max_seq_length`, the more (about 56% at BERT's 128).
#
# The masks are **dynamic** (as RoBERTa and Hugging Face do): instance $i$ in epoch $e$ is masked with a
# generator seeded by $(\text{seed}, e, i)$, so every epoch sees different masks of the same pairs — and
# nothing about masking has to be stored to resume training exactly. Google's original masks each copy once,
# statically (`masking="static"`, with `dupe_factor` copies).

# %% tags=["check"]
epoch0 = [dataset.instance(i, epoch=0) for i in range(len(dataset))]
assert_80_10_10(*masking_statistics(
    [(x.tokens, x.input_ids, x.masked_positions, x.masked_labels) for x in epoch0]))

cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
for x in epoch0:
    assert len(x.tokens) <= MAX_LEN and x.tokens[0] == cls and x.tokens[-1] == sep
    first_sep = x.tokens.index(sep)
    assert x.tokens.count(sep) == 2 and 1 < first_sep < len(x.tokens) - 2      # A and B are not empty
    assert x.segment_ids == [0] * (first_sep + 1) + [1] * (len(x.tokens) - first_sep - 1)
    assert (x.doc_a != x.doc_b) == x.is_random_next                           # NSP label 1 = other document
multi = [x.next_sentence_label for x in epoch0 if x.chunk_sentences >= 2]
single = [x.next_sentence_label for x in epoch0 if x.chunk_sentences == 1]
print(f"random next (label 1): {100 * np.mean(multi):.1f}% of {len(multi)} pairs cut from multi-sentence chunks, "
      f"{100 * np.mean(single):.0f}% of {len(single)} single-sentence chunks; "
      f"{100 * np.mean([x.next_sentence_label for x in epoch0]):.1f}% overall")
assert abs(np.mean(multi) - 0.5) < 0.03 and all(single)

# dynamic masking: the same pairs, other masks in the next epoch
epoch1 = [dataset.instance(i, epoch=1) for i in range(len(dataset))]
assert all(a.tokens == b.tokens for a, b in zip(epoch0, epoch1))
changed = np.mean([a.masked_positions != b.masked_positions for a, b in zip(epoch0, epoch1)])
print(f"masks that differ between epoch 0 and epoch 1: {100 * changed:.0f}%")
assert changed > 0.9

lengths = [len(x.tokens) for x in epoch0]
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(lengths, bins=range(5, MAX_LEN + 2), log=True)
ax.set_xlabel("tokens in the instance"); ax.set_ylabel("instances (log scale)")
ax.set_title("most pairs fill max_seq_length; short_seq_prob = 0.1 makes some short")
plt.show()

# %% [markdown]
# ## 6. A batch
#
# `collate` pads a list of instances to one array per model input. Padding is `[PAD]` (id 0) with
# `attention_mask` 0 (lesson 2: padded keys get no attention), and `labels` is $-100$ wherever nothing is
# predicted — PyTorch's *ignore index*: those positions do not count in the loss. This is the dictionary
# `model(**batch)` takes in lesson 4.

# %%
batch = collate(epoch0[:4], pad_id=tokenizer.pad_token_id, max_seq_length=MAX_LEN)
for key, value in batch.items():
    print(f"{key:<20} {str(value.shape):<9} {value.dtype}")
print("labels of the first sequence:", batch["labels"][0])
assert batch["input_ids"].shape == (4, MAX_LEN) and batch["next_sentence_label"].shape == (4,)
assert np.all(batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id)
assert np.all(batch["labels"][batch["attention_mask"] == 0] == -100)
assert (batch["labels"] != -100).sum() == sum(len(x.masked_positions) for x in epoch0[:4])

# %% [markdown]
# ## Summary
#
# * BasicTokenizer: clean, split CJK, lower-case and strip accents, split punctuation.
# * WordPiece: greedy longest match with `##` continuations; one unmatched part makes the whole word `[UNK]`.
#   A vocabulary is learned bottom-up by merges; a bigger one means fewer tokens per word.
# * An instance: `[CLS] A [SEP] B [SEP]`, NSP label 0 = IsNext, 1 = random next (Google's and Hugging Face's
#   convention; some re-implementations flip it).
# * Masking: $\max(1, \operatorname{round}(0.15\,n))$ positions (capped), never `[CLS]`/`[SEP]`; 80% `[MASK]`, 10% random,
#   10% unchanged. Check it by its statistics.
