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
# You will implement WordPiece's encoder and the masking rule yourself, and check both against
# independent references: Google's and Hugging Face's published tokenizations, and the *statistics*
# a correct masking rule must have — which is also how to test anything random.
#
# **Prerequisites:** Python strings, lists, sets and dicts; the binomial distribution (mean $np$,
# standard deviation $\sqrt{np(1-p)}$). Lessons 1–2 are not needed for this one.
#
# **Time:** about 60 minutes.

# %%
# %matplotlib inline
import random
from collections import Counter

import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
from bertnp.corpus import bundled_corpus, bert_base_uncased_vocab
from bertnp.data import MaskingVocab, PretrainingDataset, collate, format_instance, read_corpus
from bertnp.tokenizer import BasicTokenizer, BertTokenizer
from bertnp.wordpiece_trainer import tokenization_stats

workdir = teach.workdir("lesson03")           # a fresh folder for the vocabularies this lesson writes

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
# These are Google's own test cases (from `tokenization_test.py`):

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
    teach.check(words == expected, f"basic.tokenize({text!r})", words, expected)
print(basic.tokenize("He paid $3.50 for the e-mail-order milk, didn't he?"))

# %% [markdown]
# The real thing, used below: BERT-base's uncased vocabulary (30,522 tokens, shipped with bertnp as
# `bertnp.corpus.bert_base_uncased_vocab()`), and the bundled corpus (public-domain English: the World
# English Bible, The Devil's Dictionary and the Jargon File; one sentence a line, a blank line between documents).

# %%
bert_tok = BertTokenizer(str(bert_base_uncased_vocab()), do_lower_case=True)
bert_vocab = bert_tok.vocab                                          # {token: id}
documents = read_corpus(bundled_corpus("train"))                     # 1,180 documents, lists of sentences
heldout = read_corpus(bundled_corpus("heldout"))
print(f"vocabulary: {len(bert_vocab)} tokens; corpus: {len(documents)} documents, "
      f"{sum(len(d) for d in documents)} sentences")

# %% [markdown]
# ## 2. WordPiece: greedy longest match first
#
# A vocabulary (`vocab.txt`, one token per line, the line number is the id) holds whole words and word
# pieces; a piece that continues a word carries the prefix `##`. To split one word, WordPiece is greedy:
#
# * from the current position, take the **longest** prefix of the rest of the word that is in the
#   vocabulary — written with `##` in front, unless the piece starts the word — then continue after it;
# * if at some position *no* prefix is in the vocabulary, the **whole word** becomes `[UNK]` — not just
#   the part that failed;
# * a word longer than `max_chars` characters (100 in Hugging Face, 200 in Google's code) is `[UNK]` at once.
#
# With Google's test vocabulary `[UNK] [CLS] [SEP] want ##want ##ed wa un runn ##ing ,`:
# `unwanted` → `un ##want ##ed`, `running` → `runn ##ing`, and `unwantedx` → `[UNK]`.
# **Your task:** write it, for one word (no spaces; the basic tokenizer has already split the text).

# %% tags=["exercise"]
# EXERCISE: WordPiece's greedy longest-match-first split of ONE word
def my_wordpiece(word, vocab, unk_token="[UNK]", max_chars=100):
    '''word: str without spaces; vocab: a set or dict of tokens. Returns the list of pieces.'''
    pieces = []
    ### BEGIN SOLUTION
    if len(word) > max_chars:
        return [unk_token]
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


# %% [markdown]
# **The check** uses references that do not come from `bertnp`:
#
# 1. Google's test vectors above (`tokenization_test.py`);
# 2. words tokenized by Hugging Face's pure-Python `BertTokenizer` on the BERT-base vocabulary — copied
#    here from bertnp's test fixtures (generated with transformers 5.23), among them the example of
#    Google's README, `johanson` → `johan ##son`, and the limit at 100 characters;
# 3. properties every greedy longest match must have, on about 3,000 distinct words of the corpus: the pieces
#    spell the word, every piece is in the vocabulary, no piece could have been longer, and a word of plain
#    lower-case letters is never `[UNK]` (every letter and every `##letter` is in the vocabulary).

# %% tags=["check"]
google_vocab = {"[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un", "runn", "##ing", ","}
for word, expected in [("unwanted", ["un", "##want", "##ed"]), ("running", ["runn", "##ing"]),
                       ("unwantedx", ["[UNK]"]), ("want", ["want"]), (",", [","]), ("", [])]:
    got = my_wordpiece(word, google_vocab)
    teach.check(got == expected, f"Google's vocabulary: my_wordpiece({word!r})", got, expected)

hugging_face = {   # word -> pieces, from transformers.BertTokenizerLegacy on BERT-base's uncased vocabulary
    "johanson": ["johan", "##son"], "unwantedx": ["unwanted", "##x"], "angstrom": ["ang", "##strom"],
    "brulee": ["br", "##ule", "##e"], "decomposed": ["deco", "##mp", "##osed"], "eeeee": ["ee", "##ee", "##e"],
    "backslash": ["backs", "##lash"], "caret": ["care", "##t"], "embeddings": ["em", "##bed", "##ding", "##s"],
    "tokenizer": ["token", "##izer"], "truncation": ["tr", "##un", "##cation"],
    "unsqueeze": ["un", "##sque", "##ez", "##e"], "contextualized": ["context", "##ual", "##ized"],
    "softhyphen": ["soft", "##hy", "##ph", "##en"], "unassignedx": ["una", "##ssi", "##gned", "##x"],
    "straße": ["st", "##raße"], "2623677": ["262", "##36", "##7", "##7"], "ǆ": ["[UNK]"],
    "supercalifragilisticexpialidocious": ["super", "##cal", "##if", "##rag", "##ilis", "##tic", "##ex",
                                           "##pia", "##lid", "##oc", "##ious"],
    "a" * 100: ["aaa"] + ["##aa"] * 48 + ["##a"],      # 100 characters: still tokenized
    "a" * 101: ["[UNK]"],                              # 101: over the limit
}
wrong = {w: my_wordpiece(w, bert_vocab) for w in hugging_face}
wrong = {w: got for w, got in wrong.items() if got != hugging_face[w]}
teach.check(not wrong, f"BERT-base vocabulary: words (of {len(hugging_face)}) where my_wordpiece differs from Hugging Face"
            + "".join(f"\n    {w[:24]!r}{f' ({len(w)} characters)' if len(w) > 24 else ''}: got {g[:6]}, "
                      f"expected {hugging_face[w][:6]}" for w, g in list(wrong.items())[:3]),
            len(wrong), 0)

def pieces_problem(word, pieces, vocab):
    '''What is wrong with pieces as a greedy longest-match split of word (None if nothing).'''
    if pieces == ["[UNK]"]:
        return "[UNK] for a word of plain lower-case letters" if word.isascii() and word.isalpha() else None
    spelled = "".join(p[2:] if i > 0 else p for i, p in enumerate(pieces))
    if spelled != word or any(p.startswith("##") != (i > 0) for i, p in enumerate(pieces)):
        return f"the pieces {pieces} do not spell the word as first piece + ##continuations"
    start = 0
    for i, piece in enumerate(pieces):
        if piece not in vocab:
            return f"piece {piece!r} is not in the vocabulary"
        end = start + len(piece) - (2 if i > 0 else 0)
        longer = [word[start:e] if i == 0 else "##" + word[start:e] for e in range(end + 1, len(word) + 1)]
        longer = [c for c in longer if c in vocab]
        if longer:
            return f"piece {i} is {piece!r}, but the longer {longer[-1]!r} is in the vocabulary"
        start = end
    return None

words = sorted({w for doc in documents for s in doc for w in basic.tokenize(s)})
words = words[::max(1, len(words) // 3000)]
problems = {w: pieces_problem(w, my_wordpiece(w, bert_vocab), bert_vocab) for w in words}
problems = {w: p for w, p in problems.items() if p}
teach.check(not problems, f"corpus words (of {len(words)}) whose split is not a greedy longest match"
            + "".join(f"\n    {w!r}: {p}" for w, p in list(problems.items())[:3]), len(problems), 0)

# %% [markdown]
# ### Solution notes
#
# Two nested loops: the outer one walks `start` along the word; the inner one tries `end` from
# `len(word)` *down* to `start + 1` and stops at the first candidate in the vocabulary (the longest).
# The candidate carries `##` unless `start == 0`. If the inner loop finds nothing, return `[unk_token]`
# for the whole word. Mistakes the check catches: trying the shortest candidate first (`u ##n ##w ...`),
# forgetting the `##` (or putting it on the first piece too), replacing only the unmatched rest by `[UNK]`,
# never trying the whole remaining word (`end` starting at `len(word) - 1`), forgetting the length limit.
#
# Greedy is not "best": `backslash` becomes `backs ##lash`, not `back ##sl ##ash`, and nothing guarantees
# the fewest pieces. It is fast and deterministic, and the vocabulary was learned with the same encoder
# in mind. The library's version is `WordpieceTokenizer.tokenize_word` in `bertnp/tokenizer.py`:

# %%
for text in ["unaffable", "tokenization", "hackishness", "The Jebusites dwelt in Jerusalem."]:
    print(f"{text!r:36} -> {bert_tok.tokenize(text)}")

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
    learned = bn.train_wordpiece("\n".join(lines), vocab_size=size, show_progress=False)   # a list of tokens
    path = workdir / f"vocab{size}.txt"
    path.write_text("".join(t + "\n" for t in learned), encoding="utf-8")
    tok = BertTokenizer(str(path))
    stats[size] = tokenization_stats(tok, heldout_text)
    print(f"vocab {size:>5}: {stats[size]['tokens_per_word']:.2f} tokens/word, "
          f"[UNK] {100 * stats[size]['unk_rate']:.2f}% of words;  "
          f"the last merges: {learned[-6:]}")
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
teach.check(all(a > b for a, b in zip(per_word, per_word[1:])), "tokens per word, vocabulary sizes "
            f"{sizes}, strictly falling", [round(p, 3) for p in per_word], "a falling sequence")
teach.check(stats[1200]["unk_rate"] < 0.01, "share of held-out words that are [UNK] with 1,200 tokens",
            stats[1200]["unk_rate"], "< 0.01")
teach.check(learned[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
            "the first five tokens ([PAD] is id 0, as in every BERT vocabulary)",
            learned[:5], ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])

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
# Then masking, Google's rule. For a sequence of $n$ tokens (`[CLS]` and `[SEP]` included) exactly
#
# $$\min\big(\text{max\_predictions},\ \max(1, \operatorname{round}(0.15\, n))\big)$$
#
# positions are chosen uniformly among all tokens except `[CLS]` and `[SEP]` (`round` is Python 3's, which
# rounds halves to even: $\operatorname{round}(4.5) = 4$). The model must predict the original token at each.
# Of the chosen positions, each independently
#
# * becomes `[MASK]` with probability 0.8,
# * becomes a random token with probability 0.1 (so the model cannot assume that a visible token is always correct),
# * stays unchanged with probability 0.1 (so the representation of a visible token also has to carry its identity).
#
# `format_instance` shows one: the original token, what the model is given, and the label. (A segment
# that starts or ends in the middle of a word was shortened by the truncation.)

# %%
tokenizer = BertTokenizer(str(workdir / "vocab1200.txt"))
MAX_LEN, MAX_PRED = 48, 7
dataset = PretrainingDataset(documents[::teach.pick(4, 8)], tokenizer, max_seq_length=MAX_LEN,
                             max_predictions_per_seq=MAX_PRED, seed=1)
print(f"{len(dataset)} instances from {len(documents[::teach.pick(4, 8)])} documents\n")
print(format_instance(dataset[3], tokenizer))

# %% [markdown]
# Write the masking rule yourself. `vocab` is a `MaskingVocab`: it has `cls_id`, `sep_id`, `mask_id`, and
# `random_ids`, the ids a random replacement may draw (every token except the special ones, so `[PAD]`
# or `[CLS]` never appear in the middle of a text). Use only the `rng` you are given (a `random.Random`;
# `rng.shuffle`, `rng.random()` and `rng.choice` are all you need): reproducible data comes from explicit
# seeds, and the check calls your function twice with the same seed.

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
    labels = [tokens[p] for p in positions]
    ### END SOLUTION
    return input_ids, positions, labels


# %% [markdown]
# A masking rule cannot be checked on one example: check its **statistics** over many. The helper below
# does it in two parts.
#
# *Rules that hold for every sequence:* the number of predictions, never `[CLS]`/`[SEP]`, positions
# ascending and distinct, labels are the original tokens, nothing else changed, random replacements are
# never special tokens.
#
# *Proportions over all sequences*, each compared with its expected value $p$, with a tolerance of
# **4 binomial standard deviations**, $4\sqrt{p(1-p)/N}$ for $N$ observations (a correct rule fails such a
# test with probability about $6\cdot10^{-5}$; a rule off by a few points fails it for sure once $N$ is in the
# thousands):
#
# * the shares of `[MASK]`, random and kept among all predictions: 0.8, 0.1, 0.1. (A random replacement that
#   happens to draw the original token looks "kept"; with about 1,200 tokens to draw from that moves the
#   shares by $10^{-4}$, far inside the tolerance.)
# * the decisions are independent within a sequence: the first two predictions of a sequence are both
#   `[MASK]` with probability $0.8^2 = 0.64$ (a rule that decides once per sequence gives 0.8);
# * the positions are uniform among the candidates: the mean of (rank + ½) / (number of candidates) over all
#   predictions is ½, with the standard deviation of a uniform variable, $1/\sqrt{12}$, per prediction
#   (drawing without replacement only makes the spread smaller, so this tolerance is safe).

# %%
def require(condition, what, actual, expected):
    '''teach.check without its "ok" line, for rules tested on thousands of sequences.'''
    if not condition:
        teach.check(False, what, actual, expected)

def masking_report(examples, max_predictions, specials, mask_id, allowed_random):
    '''examples: (tokens, input_ids, positions, labels) tuples. Checks the per-sequence rules (raising on the
    first sequence that breaks one) and returns the measured proportions with their tolerances.'''
    kinds, first_two_both_mask, ranks = Counter(), [], []
    for n_seq, (tokens, input_ids, positions, labels) in enumerate(examples):
        n = len(tokens)
        where = f"sequence {n_seq} ({n} tokens)"
        expected = min(max_predictions, max(1, round(0.15 * n)))
        require(len(positions) == expected, f"{where}: number of predictions, "
                    f"min({max_predictions}, max(1, round(0.15 * {n})))", len(positions), expected)
        require(list(positions) == sorted(set(positions)), f"{where}: positions ascending and distinct",
                    list(positions), sorted(set(positions)))
        special_hits = [p for p in positions if tokens[p] in specials]
        require(not special_hits, f"{where}: positions chosen at [CLS]/[SEP]", special_hits, [])
        require(list(labels) == [tokens[p] for p in positions], f"{where}: labels (the ORIGINAL tokens)",
                    list(labels), [tokens[p] for p in positions])
        chosen = set(positions)
        changed = [i for i in range(n) if i not in chosen and input_ids[i] != tokens[i]]
        require(not changed, f"{where}: positions changed although not chosen", changed, [])
        seq_kinds = ["mask" if input_ids[p] == mask_id else "kept" if input_ids[p] == tokens[p] else "random"
                     for p in positions]
        bad_random = [input_ids[p] for p, k in zip(positions, seq_kinds) if k == "random" and input_ids[p] not in allowed_random]
        require(not bad_random, f"{where}: random replacements that are special tokens", bad_random, [])
        kinds.update(seq_kinds)
        if len(positions) >= 2:
            first_two_both_mask.append(seq_kinds[0] == seq_kinds[1] == "mask")
        candidates = [i for i in range(n) if tokens[i] not in specials]
        ranks += [(candidates.index(p) + 0.5) / len(candidates) for p in positions]
    print(f"  all {len(examples)} sequences follow the rules of every sequence (count, specials, labels, nothing else changed)  ok")
    total = sum(kinds.values())
    binomial = lambda p, n: 4 * np.sqrt(p * (1 - p) / n)
    return {   # name: (measured, expected, tolerance); the two structural tests first, their message is the clearer one
        "share of sequences whose first two predictions are both [MASK] (decisions must be independent)":
            (np.mean(first_two_both_mask), 0.64, binomial(0.64, len(first_two_both_mask))),
        "mean relative rank of the chosen positions among the candidates (they must be uniform)":
            (np.mean(ranks), 0.5, 4 / np.sqrt(12 * len(ranks))),
        "share of [MASK] among predictions": (kinds["mask"] / total, 0.8, binomial(0.8, total)),
        "share of random tokens among predictions": (kinds["random"] / total, 0.1, binomial(0.1, total)),
        "share of kept tokens among predictions": (kinds["kept"] / total, 0.1, binomial(0.1, total)),
    }

def check_proportions(report, n_sequences):
    for name, (measured, expected, tolerance) in report.items():
        teach.check(abs(measured - expected) <= tolerance, f"{name} ({n_sequences} sequences)",
                    round(float(measured), 4), f"{expected} +- {tolerance:.4f}")


# %% tags=["check"]
vocab = MaskingVocab(tokenizer)
specials = {vocab.cls_id, vocab.sep_id}
check_rng = random.Random(301)
# 1. every length from 5 to 128 (the cap binds from 47 tokens on; 30 tokens is round(4.5) = 4), made-up text
synthetic = []
for n in list(range(5, 129)) * 3:
    a_len = check_rng.randint(1, n - 4)
    body = [check_rng.choice(vocab.random_ids) for _ in range(n - 3)]
    synthetic.append([vocab.cls_id] + body[:a_len] + [vocab.sep_id] + body[a_len:] + [vocab.sep_id])
# 2. the unmasked pairs of the dataset above
pairs = [dataset.instances[i].tokens for i in range(len(dataset))]

examples = []
for tokens in synthetic + pairs:
    saved = list(tokens)
    input_ids, positions, labels = my_mask_tokens(tokens, vocab, check_rng, max_predictions=MAX_PRED)
    require(tokens == saved, "the tokens you were given are unchanged (return a new list)", "changed", "unchanged")
    examples.append((tokens, input_ids, positions, labels))
first = [my_mask_tokens(t, vocab, random.Random(7)) for t in pairs[:50]]
random.random(); np.random.random()                          # disturb the global random generators
same = first == [my_mask_tokens(t, vocab, random.Random(7)) for t in pairs[:50]]
teach.check(same, "two runs with the same seed (use only the rng you are given)",
            "the same masks" if same else "different masks", "the same masks")
report = masking_report(examples, MAX_PRED, specials, vocab.mask_id, set(vocab.random_ids))
check_proportions(report, len(examples))

# %% [markdown]
# ### Solution notes
#
# Collect the candidate positions (everything but `[CLS]` and `[SEP]`), shuffle them with `rng`, take the
# first $\min(\text{max\_predictions}, \max(1, \operatorname{round}(0.15 n)))$ and sort them. For each chosen
# position draw once: below 0.8 it becomes `[MASK]`; otherwise draw again and keep the token or replace it
# by `rng.choice(vocab.random_ids)`, half and half. Labels are read from the *original* `tokens`.
#
# What the check catches, and how:
# * choosing each position with probability 0.15 (a Bernoulli per token) gives 15% *on average* but not the
#   exact count — the first sequence of the wrong length fails;
# * including `[CLS]`/`[SEP]` among the candidates — some sequence picks one;
# * `elif rng.random() < 0.1` for the random branch (10% of 20% = 2%, not 10%), or reusing the first random
#   number for the second decision (then "kept" never happens) — the shares are off by many tolerances;
# * one decision for the whole sequence — the share of first-two-both-`[MASK]` is 0.8, not 0.64;
# * no shuffle (the first candidates every time) — the mean rank is far below ½;
# * `int(0.15 * n)` or `round(0.15 * (n - 3))` — the count is wrong for some length;
# * the global `random` module or NumPy's generator instead of `rng` — the same seed gives other masks.

# %% [markdown]
# ## 5. The library's instances, by the numbers
#
# The same checks on the library's own instances (`PretrainingDataset` masks with
# `bertnp.data.create_masked_lm_predictions`), plus the pairs: every sequence is `[CLS] A [SEP] B [SEP]`
# within `max_seq_length`; an IsNext pair takes `A` and `B` from the same document, a random-next pair
# from two different ones. How many pairs are random? A chunk of two or more sentences flips a fair coin;
# a chunk of a *single* sentence (one long sentence already fills the target length) has no boundary to
# split at and always gets a random next. So the share of label 1 is a half *among multi-sentence chunks*,
# and more than a half overall — the shorter `max_seq_length`, the more (about 56% at BERT's 128 with
# BERT-base's vocabulary on the whole corpus; here, at 48 tokens with a small vocabulary, far more).
#
# The masks are **dynamic** (as RoBERTa and Hugging Face do): instance $i$ in epoch $e$ is masked with a
# generator seeded by $(\text{seed}, e, i)$, so every epoch sees different masks of the same pairs — and
# nothing about masking has to be stored to resume training exactly. Google's original masks each copy once,
# statically (`masking="static"`, with `dupe_factor` copies).

# %%
epoch0 = [dataset.instance(i, epoch=0) for i in range(len(dataset))]
library_report = masking_report([(x.tokens, x.input_ids, x.masked_positions, x.masked_labels) for x in epoch0],
                                MAX_PRED, specials, vocab.mask_id, set(vocab.random_ids))
check_proportions(library_report, len(epoch0))

cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
for n_seq, x in enumerate(epoch0):
    first_sep = x.tokens.index(sep)
    layout_ok = (len(x.tokens) <= MAX_LEN and x.tokens[0] == cls and x.tokens[-1] == sep
                 and x.tokens.count(sep) == 2 and 1 < first_sep < len(x.tokens) - 2)      # A and B not empty
    if not layout_ok:
        teach.check(False, f"instance {n_seq}: [CLS] A [SEP] B [SEP] within {MAX_LEN} tokens",
                    tokenizer.convert_ids_to_tokens(x.tokens), "that layout")
    segments = [0] * (first_sep + 1) + [1] * (len(x.tokens) - first_sep - 1)
    if x.segment_ids != segments or (x.doc_a != x.doc_b) != x.is_random_next:
        teach.check(False, f"instance {n_seq}: segment ids and NSP label", (x.segment_ids, x.doc_a, x.doc_b,
                    x.is_random_next), "0 up to the first [SEP], then 1; label 1 exactly when B is from another document")
print(f"all {len(epoch0)} instances are [CLS] A [SEP] B [SEP] with the right segment ids; "
      "label 1 exactly when B comes from another document  ok")

multi = [x.next_sentence_label for x in epoch0 if x.chunk_sentences >= 2]
single = [x.next_sentence_label for x in epoch0 if x.chunk_sentences == 1]
print(f"random next (label 1): {100 * np.mean(multi):.1f}% of {len(multi)} pairs cut from multi-sentence chunks, "
      f"{100 * np.mean(single):.0f}% of {len(single)} single-sentence chunks; "
      f"{100 * np.mean([x.next_sentence_label for x in epoch0]):.1f}% overall")
teach.check(abs(np.mean(multi) - 0.5) <= 4 * np.sqrt(0.25 / len(multi)), "share of label 1 among multi-sentence chunks",
            round(float(np.mean(multi)), 4), f"0.5 +- {4 * np.sqrt(0.25 / len(multi)):.4f}")
teach.check(all(single), "single-sentence chunks with a random next", f"{sum(single)} of {len(single)}", "all")

# dynamic masking: the same pairs, other masks in the next epoch
epoch1 = [dataset.instance(i, epoch=1) for i in range(len(dataset))]
same_pairs = sum(a.tokens == b.tokens for a, b in zip(epoch0, epoch1))
teach.check(same_pairs == len(epoch0), "instances with the same pair in epochs 0 and 1", same_pairs, len(epoch0))
changed = float(np.mean([a.masked_positions != b.masked_positions for a, b in zip(epoch0, epoch1)]))
teach.check(changed > 0.9, "share of instances whose masked positions differ between epoch 0 and epoch 1", changed, "> 0.9")

# %% [markdown]
# Two pictures of the rule. On the left, why a statistical check needs thousands of observations: the share
# of `[MASK]` measured over the first $N$ predictions of the library's instances, inside the band
# $0.8 \pm 4\sqrt{0.16/N}$ that shrinks like $1/\sqrt N$, next to a simulated wrong rule that masks 77%: it
# leaves the band only after a few thousand predictions. On the right, how many positions the rule predicts
# as a function of the sequence length.

# %%
from bertnp.data import create_masked_lm_predictions
lengths = np.arange(3, 161)
counts = [len(create_masked_lm_predictions([cls] + [vocab.random_ids[0]] * (n - 2) + [sep], vocab,
                                           random.Random(0), max_predictions_per_seq=20)[1]) for n in lengths]

is_mask = np.array([x.input_ids[p] == vocab.mask_id for x in epoch0 for p in x.masked_positions])
N = np.arange(1, is_mask.size + 1)
wrong_rule = rng.random(is_mask.size) < 0.77                        # a simulated rule with 77% [MASK]
band = 4 * np.sqrt(0.8 * 0.2 / N)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
ax1.fill_between(N, 0.8 - band, 0.8 + band, color="gray", alpha=0.25, label="0.8 +- 4 binomial sd")
ax1.semilogx(N, np.cumsum(is_mask) / N, label="the library's masking")
ax1.semilogx(N, np.cumsum(wrong_rule) / N, label="a wrong rule: 77% [MASK]")
ax1.set_ylim(0.6, 1.0); ax1.set_xlabel("predictions observed, N"); ax1.set_ylabel("share of [MASK] so far")
ax1.set_title("a tolerance from the binomial sd shrinks like 1/sqrt(N)"); ax1.legend(fontsize=8); ax1.grid(alpha=0.3)
ax2.step(lengths, counts, where="mid", label="positions predicted (library)")
ax2.plot(lengths, 0.15 * lengths, ":", color="gray", label="0.15 n")
ax2.axhline(20, color="red", lw=0.8, ls="--", label="max_predictions_per_seq = 20")
ax2.set_xlabel("sequence length n (with [CLS] and [SEP])"); ax2.set_ylabel("predictions")
ax2.set_title("exactly min(20, max(1, round(0.15 n)))"); ax2.legend(fontsize=8); ax2.grid(alpha=0.3)
plt.show()
outside = np.abs(np.cumsum(wrong_rule) / N - 0.8) > band           # the wrong rule outside the band
stays_out = int(N[~outside][-1]) + 1                                 # from here on it never comes back
print(f"the 77% rule leaves the band for good after {stays_out} predictions")
teach.check(1000 <= stays_out <= 10000, "predictions after which the 77% rule stays outside the band",
            stays_out, "a few thousand (1,000 to 10,000)")
teach.check_equal("library's number of predictions for n = 3..160", counts,
                  [min(20, max(1, round(0.15 * n))) for n in lengths])

# %%
lengths_seen = [len(x.tokens) for x in epoch0]
fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
ax.hist(lengths_seen, bins=range(5, MAX_LEN + 2), log=True)
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
shown = [x for x in epoch0 if len(x.tokens) < MAX_LEN][:2] + epoch0[:2]   # two short pairs: padding to see
batch = collate(shown, pad_id=tokenizer.pad_token_id, max_seq_length=MAX_LEN)
for key, value in batch.items():
    print(f"{key:<20} {str(value.shape):<9} {value.dtype}")
print("attention_mask of the first sequence:", batch["attention_mask"][0])
print("labels of the first sequence:        ", batch["labels"][0])
teach.check(batch["input_ids"].shape == (4, MAX_LEN) and batch["next_sentence_label"].shape == (4,),
            "shapes of input_ids and next_sentence_label", (batch["input_ids"].shape, batch["next_sentence_label"].shape),
            ((4, MAX_LEN), (4,)))
padding = batch["attention_mask"] == 0
teach.check_equal("input_ids where attention_mask is 0", batch["input_ids"][padding],
                  np.full(padding.sum(), tokenizer.pad_token_id))
teach.check_equal("labels where attention_mask is 0", batch["labels"][padding], np.full(padding.sum(), -100))
teach.check(int((batch["labels"] != -100).sum()) == sum(len(x.masked_positions) for x in shown),
            "labelled positions in the batch", int((batch["labels"] != -100).sum()),
            sum(len(x.masked_positions) for x in shown))

# %% [markdown]
# ## Summary
#
# * BasicTokenizer: clean, split CJK, lower-case and strip accents, split punctuation.
# * WordPiece: greedy longest match with `##` continuations; one unmatched part makes the whole word `[UNK]`.
#   A vocabulary is learned bottom-up by merges; a bigger one means fewer tokens per word.
# * An instance: `[CLS] A [SEP] B [SEP]`, NSP label 0 = IsNext, 1 = random next (Google's and Hugging Face's
#   convention; some re-implementations flip it).
# * Masking: exactly $\min(\text{max}, \max(1, \operatorname{round}(0.15\,n)))$ positions, never `[CLS]`/`[SEP]`;
#   each independently 80% `[MASK]`, 10% random, 10% unchanged.
# * Test a random procedure by its statistics, with tolerances from the binomial standard deviation —
#   never by one example, and never with a tolerance picked by eye.
#
# Next: lesson 4 trains a tiny BERT on these instances.
