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
# # Lesson 12 — Watching BERT learn
#
# A loss curve is the first thing anyone looks at, and the easiest to misread. A falling loss says
# nothing until you know what the *trivial* models score: a model that knows only how frequent each
# token is already gets far below the starting loss. This lesson watches a small BERT learn and asks,
# at every stage, *what* it has learned.
#
# In this lesson you will
#
# 1. run a short pretraining and look at its predictions as it trains;
# 2. compute the baselines every curve must be read against — the unigram model's accuracy and
#    cross-entropy on the held-out masked tokens — yourself;
# 3. read the curves of a longer run (41 minutes on one CPU core, committed with the package):
#    the unigram plateau and how the model leaves it, what it predicts first (frequent tokens, then
#    words that fit), how its attention sharpens, and when next-sentence prediction starts to work.
#
# **Prerequisites:** lesson 4 (pretraining a tiny BERT with `bertnp.train.Trainer`; the unigram
# plateau), lesson 3 (the batches: `input_ids`, `labels` with -100, `attention_mask`), lesson 2
# (attention maps). Math: logarithms, cross-entropy.
#
# **Time:** about 50 minutes.

# %%
import os
if "OPENBLAS_NUM_THREADS" not in os.environ:               # a setting of your own wins
    os.environ["OPENBLAS_NUM_THREADS"] = "1"               # tiny matrices: 1 thread is as fast, and safe on a busy machine

# %%
# %matplotlib inline
import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
import math
import time
from bertnp.corpus import bundled_corpus
from bertnp.data import PretrainingLoader, read_corpus
from bertnp.inference import fill_mask
from bertnp.lesson_data.lessons_11_14 import load_l12
from bertnp.train import TrainConfig, Trainer

IGNORE = -100
workdir = teach.workdir("lesson12")

# %% [markdown]
# ## 1. A short run, watched
#
# The model of lesson 4: 2 layers of width 64, a 2,000-token WordPiece vocabulary, pairs of 64 tokens
# from the bundled corpus, no dropout, a large learning rate. `Trainer.train(stop_at=s)` pauses the run
# at step `s` (the schedule still plans for all the steps), so we can look at the model between steps:
# at each pause, ask it to fill in a few `[MASK]`s.

# %%
documents = read_corpus(bundled_corpus("train"))
subset = documents[::teach.pick(1, 4)]                          # fast mode: every 4th document (less to tokenize)
corpus_path = workdir / "corpus.txt"                            # BERT's format: a blank line between documents
corpus_path.write_text("\n\n".join("\n".join(doc) for doc in subset) + "\n", encoding="utf-8")
sentences = [s for doc in documents for s in doc][::6]          # a vocabulary from every 6th sentence (~1 s)
vocab_path = workdir / "vocab.txt"
bn.train_wordpiece("\n".join(sentences), vocab_size=2000, vocab_file=vocab_path, show_progress=False)
config = bn.BertConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=256, max_position_embeddings=64)
config.to_json_file(workdir / "config.json")

STEPS = teach.pick(800, 150)
run = TrainConfig(corpus=[str(corpus_path)], eval_corpus=[str(bundled_corpus("heldout"))],
                  vocab=str(vocab_path), model_config=str(workdir / "config.json"), max_seq_length=64,
                  batch_size=32, steps=STEPS, lr=4e-3, warmup=0.05, dropout=0.0, seed=0,
                  out_dir=str(workdir / "run"), eval_every=10 ** 6, eval_batches=teach.pick(8, 4),
                  checkpoint_every=10 ** 6, keep_checkpoints=1, log_every=10, progress=False)
trainer = Trainer(run)
model, tokenizer = trainer.model, trainer.tokenizer
V = tokenizer.vocab_size

probes = ["in the beginning god created the heavens and the [MASK].",
          "and the lord said to moses, speak to the children of [MASK].",
          "he opened his [MASK] and taught them, saying,"]
pauses = [s for s in (0, 10, 25, 50, 100, 200, 400) if s < STEPS] + [STEPS]
top_guesses = {}                                                # pause -> the top guess for each probe
t0 = time.perf_counter()
held_out = [{"step": 0, **trainer.evaluate()}]                  # later pauses are evaluated by the Trainer
for pause in pauses:
    if pause > trainer.step:
        trainer.train(stop_at=pause)
    results = fill_mask(model, tokenizer, probes, top_k=3)        # per probe (one [MASK] each): its top 3, best first
    top_guesses[pause] = [result[0]["token_str"] for result in results]
    guesses = [", ".join(p["token_str"] for p in result) for result in results]
    print(f"step {pause:4d}:  " + "  |  ".join(f"{g:<22}" for g in guesses))
print(f"({time.perf_counter() - t0:.0f} s)")
same_everywhere = [pause for pause, tops in top_guesses.items() if pause > 0 and len(set(tops)) == 1]
assert same_everywhere, f"at some pause every probe should get the same top guess: {top_guesses}"
print(f"the same top guess for every probe at steps {same_everywhere}: "
      + ", ".join(repr(top_guesses[pause][0]) for pause in same_everywhere))

# %% [markdown]
# At step 0 the guesses are arbitrary tokens (the logits are nearly equal). Within a few dozen steps
# every `[MASK]` gets the same answer — `,`, `the`, `.`, `and`, `of` — whatever the sentence says:
# the model has learned *how frequent tokens are*, the easiest thing to learn, and nothing else. Only
# later do the guesses start to depend on the sentence. Section 3 shows the same in a longer run.
#
# The Trainer evaluated the model on held-out pairs at each pause (`metrics.jsonl`):

# %%
from bertnp.viz import read_metrics
held_out += [r for r in read_metrics(trainer.metrics_path) if r["split"] == "eval"]
print("step  held-out MLM loss  MLM acc  NSP acc")
for r in held_out:
    print(f"{r['step']:4d}  {r['mlm_loss']:17.3f}  {r['mlm_acc']:7.3f}  {r['nsp_acc']:7.3f}")
first_loss = held_out[0]["mlm_loss"]
assert abs(first_loss - math.log(V)) < 0.3, f"the first evaluation should be near ln V = {math.log(V):.2f}: {first_loss:.2f}"

# %% [markdown]
# ## 2. Your turn: the baselines
#
# Two numbers tell you whether an MLM curve shows anything beyond token frequencies: the **unigram**
# model's scores on the *same* held-out targets. The unigram model ignores the context and gives every
# masked position the same distribution: each token's frequency in the training text.
#
# * **accuracy**: always guess the most frequent training token; the share of held-out labelled
#   positions where that is right;
# * **cross-entropy** (in nats, like the model's loss): the mean of $-\log p(t)$ over the held-out
#   labelled targets $t$, with $p(t) = \frac{c(t) + 1}{N + V}$ — the token's training count $c(t)$
#   plus one (so that a token never seen in training is not $-\log 0$), over $N$ counted tokens plus
#   the vocabulary size $V$.
#
# Lesson 4 counted the tokenized documents. A training pipeline usually sees only *batches* (a streamed
# corpus never sits in memory as documents), so here you count from training batches (`input_ids`,
# `labels`, `attention_mask`, as in lesson 3) — a sample of them is enough — and count
# what the text really says: at a labelled position the input shows `[MASK]` or a replacement, and the
# true token is the label. Count only real text — not padding, and none of the `special_ids`
# (`[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`): the model is never asked to predict those. Score only
# the held-out *labelled* positions.
#
# **The check** runs your function on a tiny example you can do by hand, then on the short run: a model
# that has learned only frequencies scores the unigram cross-entropy, so the run's held-out MLM loss
# must fall from well above yours (it starts near $\ln V$) to within 0.05 nats of it.

# %% tags=["exercise"]
# EXERCISE: the unigram baseline: its accuracy and cross-entropy on the held-out labelled tokens
def unigram_baseline(train_batches, eval_batches, vocab_size, special_ids):
    '''train_batches, eval_batches: lists of dicts with (B, T) arrays input_ids, labels (-100: not
    labelled), attention_mask (1: real token). Returns (accuracy, cross_entropy) as floats.'''
    ### BEGIN SOLUTION
    is_special = np.zeros(vocab_size, dtype=bool)
    is_special[list(special_ids)] = True
    counts = np.zeros(vocab_size)
    for b in train_batches:
        text = np.where(b["labels"] != -100, b["labels"], b["input_ids"])   # the true token everywhere
        text = text[b["attention_mask"] == 1]                                # (B, T) -> (n,): real positions
        text = text[~is_special[text]]                                        # no [CLS] / [SEP] / [MASK] ...
        counts += np.bincount(text, minlength=vocab_size)
    targets = np.concatenate([b["labels"][b["labels"] != -100] for b in eval_batches])   # labelled only
    probability = (counts + 1) / (counts.sum() + vocab_size)
    accuracy = float(np.mean(targets == np.argmax(counts)))
    cross_entropy = float(-np.log(probability[targets]).mean())             # natural log: nats
    ### END SOLUTION
    return accuracy, cross_entropy


# %% tags=["check"]
def check_unigram_baseline(unigram_baseline):
    # by hand: ids 0-4 are [PAD] [UNK] [CLS] [SEP] [MASK], 5-9 words; V = 10
    train = [{"input_ids":      np.array([[2, 5, 4, 6, 3, 0], [2, 7, 7, 5, 8, 3]]),
              "labels":         np.array([[-100, -100, 7, -100, -100, -100], [-100, -100, -100, -100, 7, -100]]),
              "attention_mask": np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])}]
    # the text: 5 7 6 | 7 7 5 7 (the 8 at row 1 replaced a 7): counts 5: 2, 6: 1, 7: 4, N = 7
    tiny_eval = [{"input_ids": np.array([[2, 4, 6, 4, 4, 3]]), "labels": np.array([[-100, 7, -100, 5, 9, -100]]),
                  "attention_mask": np.ones((1, 6), dtype=int)}]
    try:
        accuracy, cross_entropy = unigram_baseline(train, tiny_eval, 10, [0, 1, 2, 3, 4])
    except IndexError as exc:
        raise teach.CheckFailed(f"IndexError on the tiny example ({exc})\n  hint: -100 is not a token id: "
                                "score only the labelled positions") from None
    def expected_with_hint(expected, known_slips, got):
        """``expected``, followed by the hint of the known slip whose value ``got`` equals."""
        hint = next((h for value, h in known_slips.items() if got == value or abs(got - value) < 1e-9), None)
        return expected if hint is None else f"{expected:.6f}\n  hint: {hint}"

    teach.check(abs(accuracy - 1 / 3) < 1e-12, "tiny example: accuracy of always guessing token 7 on targets 7, 5, 9",
                accuracy, expected_with_hint(1 / 3, {1 / 6: "you divided by all 6 positions of the held-out row: "
                                                             "only the 3 labelled ones count"}, accuracy))
    def ce(*probabilities):
        return -sum(math.log(p) for p in probabilities) / len(probabilities)
    expected_ce = ce(5 / 17, 3 / 17, 1 / 17)           # targets 7, 5, 9: counts 4 + 1, 2 + 1, 0 + 1 over 7 + 10
    specials_counted = "the [CLS] and [SEP] (or [PAD]) of the input are in your counts: count only real text"
    ce_slips = {expected_ce / math.log(2): "that is in bits (log2): the model's loss is in nats (natural log)",
                ce(5 / 21, 3 / 21, 1 / 21): specials_counted, ce(5 / 22, 3 / 22, 1 / 22): specials_counted,
                ce(3 / 16, 3 / 16, 1 / 16): "you counted the input ids: at a labelled position the true token is the label",
                math.inf: "token 9 never occurs in the training text, so without the +1 its probability is 0",
                ce(5 / 7, 3 / 7, 1 / 7): "each of the V tokens got one extra count: the total is N + V, not N"}
    teach.check(abs(cross_entropy - expected_ce) < 1e-12, "tiny example: unigram cross-entropy (nats)",
                cross_entropy, expected_with_hint(expected_ce, ce_slips, cross_entropy))

    # the short run: its held-out MLM loss starts near ln V and falls to, then past, the unigram plateau
    side_loader = PretrainingLoader(trainer.dataset, batch_size=32, seed=123)       # not the trainer's loader
    train_sample = [side_loader.next_batch() for _ in range(teach.pick(60, 20))]
    specials = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
                tokenizer.mask_token_id]
    accuracy, cross_entropy = unigram_baseline(train_sample, trainer.eval_batches, V, specials)
    steps = [r["step"] for r in held_out]
    losses = [r["mlm_loss"] for r in held_out]
    print(f"  the short run: unigram accuracy {accuracy:.3f}, cross-entropy {cross_entropy:.3f} nats; "
          f"held-out MLM loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    teach.check(losses[0] > cross_entropy + 0.5, f"the run starts well above the unigram cross-entropy: "
                f"held-out MLM loss {losses[0]:.3f} > {cross_entropy:.3f} + 0.5")
    teach.check(min(losses) < cross_entropy + 0.05, f"the run reaches the unigram plateau: "
                f"lowest held-out MLM loss {min(losses):.3f} < {cross_entropy:.3f} + 0.05")
    teach.check(0.02 < accuracy < 0.2, f"the most frequent token is right at 2-20% of the masked positions: {accuracy:.3f}")

    fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(12, 3.8))
    ax.plot(np.maximum(steps, 1), losses, "o-", label="held-out MLM loss")
    ax.axhline(math.log(V), color="gray", ls=":", label=f"ln V = {math.log(V):.2f} (a uniform guess)")
    ax.axhline(cross_entropy, color="red", ls="--", label=f"your unigram cross-entropy {cross_entropy:.2f}")
    ax.set_xscale("log"); ax_acc.set_xscale("log")
    ax.set_xlabel("step (log scale; step 0 at 1)"); ax.set_ylabel("nats"); ax.set_title(f"the short run: loss ({V}-token vocabulary)")
    ax.legend(); ax.grid(alpha=0.3)
    ax_acc.plot(np.maximum(steps, 1), [r["mlm_acc"] for r in held_out], "o-", label="held-out MLM accuracy")
    ax_acc.axhline(accuracy, color="red", ls="--", label=f"your unigram accuracy {accuracy:.3f}")
    ax_acc.set_xlabel("step (log scale; step 0 at 1)"); ax_acc.set_ylabel("accuracy"); ax_acc.set_title("the short run: accuracy")
    ax_acc.legend(); ax_acc.grid(alpha=0.3)
    plt.show()


check_unigram_baseline(unigram_baseline)

# %% [markdown]
# ### Solution notes (read after trying)
#
# `np.where(labels != -100, labels, input_ids)` restores the true token at every position; masking with
# `attention_mask == 1` drops the padding, and a boolean table over the vocabulary drops the specials.
# `np.bincount` counts. For the held-out side, `labels[labels != -100]` keeps exactly the scored
# positions. The usual slips each leave a trace in the tiny example: counting the `[CLS]`/`[SEP]`/`[MASK]`
# ids inflates $N$; counting `input_ids` counts `[MASK]` and random replacements instead of the words;
# leaving the -100s in makes `probability[-100]` silently read the 100th-from-last token (or fail, with a
# small vocabulary) and dilutes the accuracy; `np.log2` gives bits, while the model's loss is in nats
# ($1 \text{ nat} = 1/\ln 2 \approx 1.44$ bits).

# %% [markdown]
# ## 3. A longer run
#
# The short run stops soon after it leaves the plateau. What comes next takes longer than a lesson
# should: a small BERT (4 layers of width 128, 4 heads, 1.35 M parameters, a 4,000-token vocabulary,
# dropout 0.1, peak learning rate $2\times10^{-3}$ after 200 warmup steps, then a linear decay) trained
# for 4,000 steps of 32 pairs of 64 tokens — about 5 passes over the corpus, 41 minutes of training on
# one core of a shared 2-core machine. Its held-out metrics, and snapshots of what it predicts at steps
# 0, 10, 20, 50, 100, ..., 4,000, were saved with the package; `load_l12()` reads them, with the exact
# command that made them (the script is `bertnp/lesson_data/l12_make.py`).

# %%
long_run = load_l12()
print("made by:", long_run["command"])
print(f"on {long_run['machine']}, {long_run['made']}: {long_run['train_s'] / 60:.0f} min of training, "
      f"{long_run['wall_s'] / 60:.0f} min wall")
base = long_run["baselines"]
print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in base.items()})
snapshots = long_run["snapshots"]
print("snapshots at steps", [s["step"] for s in snapshots])

# %%
train_rec = [r for r in long_run["metrics"] if r["split"] == "train"]
eval_rec = [r for r in long_run["metrics"] if r["split"] == "eval"]
snap_steps = np.array([max(s["step"], 1) for s in snapshots])          # step 0 drawn at 1 on a log axis

fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
ax = axes[0]
ax.plot([r["step"] for r in train_rec], [r["mlm_loss"] for r in train_rec], lw=0.8, alpha=0.6, label="train (20-step means)")
ax.plot(snap_steps, [s["eval"]["mlm_loss"] for s in snapshots], "o-", label="held-out")
ax.axhline(base["ln_vocab"], color="gray", ls=":", label=f"ln V = {base['ln_vocab']:.2f}")
ax.axhline(base["unigram_cross_entropy"], color="red", ls="--", label=f"unigram {base['unigram_cross_entropy']:.2f}")
ax.set_ylabel("MLM loss (nats)"); ax.set_title("masked LM: loss")
ax = axes[1]
ax.plot(snap_steps, [s["eval"]["mlm_acc"] for s in snapshots], "o-", label="held-out MLM accuracy")
ax.axhline(base["most_frequent_token_acc"], color="red", ls="--",
           label=f"always '{base['most_frequent_token']}': {base['most_frequent_token_acc']:.3f}")
ax.set_ylabel("accuracy"); ax.set_title("masked LM: accuracy")
ax = axes[2]
ax.plot(snap_steps, [s["eval"]["nsp_acc"] for s in snapshots], "o-", label="held-out NSP accuracy")
ax.axhline(base["nsp_majority"], color="red", ls="--", label=f"majority label {base['nsp_majority']:.3f}")
ax.set_ylabel("accuracy"); ax.set_title("next-sentence prediction")
for ax in axes:
    ax.set_xscale("log"); ax.set_xlabel("step (log scale; step 0 drawn at 1)")
    ax.legend(fontsize=8); ax.grid(alpha=0.3, which="both")
fig.tight_layout()
plt.show()

# %% [markdown]
# On a logarithmic step axis the phases separate:
#
# 1. **The first hundred steps** (the learning rate warms up over 200): the loss falls from $\ln V$
#    (every token equally likely) to the unigram line. Learning the token frequencies is easy: the
#    output bias alone can do it.
# 2. **The plateau**: around step 100 the held-out loss sits on the unigram cross-entropy and the
#    accuracy on "always guess `,`".
# 3. **Below the line**: the loss keeps falling, the accuracy climbs to more than twice the baseline,
#    and NSP, at the majority label up to step 100 (about 60% of the pairs are random-next at 64
#    tokens, lesson 3), rises above it. The train loss (with dropout) and the held-out loss stay close: no overfitting.
#
# It looks as if the model has learned to use the context. The numbers first; section 4 asks what is
# behind them.

# %%
final = snapshots[-1]
plateau = [s for s in snapshots if 10 <= s["step"] <= 200]
closest = min(plateau, key=lambda s: abs(s["eval"]["mlm_loss"] - base["unigram_cross_entropy"]))
print(f"start: MLM loss {snapshots[0]['eval']['mlm_loss']:.3f} (ln V {base['ln_vocab']:.3f})")
print(f"plateau: step {closest['step']}, MLM loss {closest['eval']['mlm_loss']:.3f} (unigram {base['unigram_cross_entropy']:.3f})")
print(f"end, step {final['step']}: MLM loss {final['eval']['mlm_loss']:.3f}, accuracy {final['eval']['mlm_acc']:.3f}, "
      f"NSP accuracy {final['eval']['nsp_acc']:.3f}")
assert abs(snapshots[0]["eval"]["mlm_loss"] - base["ln_vocab"]) < 0.2, \
    f"the run should start near ln V = {base['ln_vocab']:.3f}: {snapshots[0]['eval']['mlm_loss']:.3f}"
assert abs(closest["eval"]["mlm_loss"] - base["unigram_cross_entropy"]) < 0.15, \
    f"the loss should pass along the unigram plateau: closest {closest['eval']['mlm_loss']:.3f}"
assert final["eval"]["mlm_loss"] < base["unigram_cross_entropy"] - 0.5, \
    f"the final loss should be well below the plateau: {final['eval']['mlm_loss']:.3f}"
assert final["eval"]["mlm_acc"] > 2 * base["most_frequent_token_acc"], \
    f"final MLM accuracy {final['eval']['mlm_acc']:.3f} vs the most-frequent-token {base['most_frequent_token_acc']:.3f}"
assert final["eval"]["nsp_acc"] > base["nsp_majority"] + 0.1, \
    f"NSP should be learned: {final['eval']['nsp_acc']:.3f} vs majority {base['nsp_majority']:.3f}"
early_nsp = [s["eval"]["nsp_acc"] for s in snapshots if s["step"] <= 100]
assert max(early_nsp) <= base["nsp_majority"] + 0.01, \
    f"on the way to the plateau NSP is no better than the majority label {base['nsp_majority']:.3f}: {early_nsp}"

# %% [markdown]
# ## 4. What has it learned?
#
# At each snapshot the model filled the `[MASK]` of eight probe sentences. Its top three for four of them:

# %%
show = [0, 2, 4, 7]
print(f"{'step':>5}  " + "  ".join(f"{long_run['probes'][i][:34]:<36}" for i in show))
for s in snapshots:
    cells = [", ".join(t for t, p in s["fill_mask"][i][:3]) for i in show]
    print(f"{s['step']:5d}  " + "  ".join(f"{c[:36]:<36}" for c in cells))

# %% [markdown]
# Arbitrary tokens at first; within a hundred steps the same few frequent tokens for every sentence —
# and after 4,000 steps, still mostly those. So where do the falling loss and the rising accuracy come
# from?
#
# Remember lesson 3's 80/10/10 rule: of the labelled positions, 80% show `[MASK]`, 10% a random token,
# and 10% **the answer itself**. The loss and accuracy above average over all three kinds. The run
# recorded them separately:

# %%
pred = [s["predictions"] for s in snapshots]
kinds = (("mask", "input [MASK] (80%)"), ("random", "input a random token (10%)"),
         ("unchanged", "input the answer itself (10%)"))
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for kind, label in kinds:
    axes[0].plot(snap_steps, [p["loss_by_kind"][kind] for p in pred], "o-", label=label)
    axes[1].plot(snap_steps, [p["acc_by_kind"][kind] for p in pred], "o-", label=label)
axes[0].axhline(base["unigram_cross_entropy"], color="red", ls="--", label="unigram cross-entropy")
axes[1].axhline(base["most_frequent_token_acc"], color="red", ls="--", label=f"always '{base['most_frequent_token']}'")
axes[0].set_ylabel("held-out MLM loss (nats)"); axes[0].set_title("loss by what the input shows")
axes[1].set_ylabel("held-out MLM accuracy"); axes[1].set_title("accuracy by what the input shows")
for ax in axes:
    ax.set_xscale("log"); ax.set_xlabel("step (log scale; step 0 at 1)"); ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
fig.tight_layout()
plt.show()

end = final["predictions"]
n = end["positions_by_kind"]
share = {k: v / sum(n.values()) for k, v in n.items()}
drop = base["unigram_cross_entropy"] - final["eval"]["mlm_loss"]
from_mask = share["mask"] * (base["unigram_cross_entropy"] - end["loss_by_kind"]["mask"])
from_unchanged = share["unchanged"] * (base["unigram_cross_entropy"] - end["loss_by_kind"]["unchanged"])
print(f"step {final['step']}: loss by kind", {k: round(v, 3) for k, v in end["loss_by_kind"].items()},
      " accuracy by kind", {k: round(v, 3) for k, v in end["acc_by_kind"].items()})
print(f"the MLM loss is {drop:.2f} nats below the unigram line: {from_mask:.2f} of it from the [MASK] positions, "
      f"{from_unchanged:.2f} from the unchanged ones")
assert end["acc_by_kind"]["unchanged"] > 5 * end["acc_by_kind"]["mask"], \
    f"where the input shows the answer, the model copies it: {end['acc_by_kind']}"
assert from_unchanged > from_mask, f"copying should explain most of the drop: {from_unchanged:.2f} vs {from_mask:.2f}"
assert end["loss_by_kind"]["mask"] < base["unigram_cross_entropy"] - 0.05, \
    f"at [MASK] the loss should be (a little) below the unigram line: {end['loss_by_kind']['mask']:.3f}"
assert end["acc_by_kind"]["mask"] < 1.5 * base["most_frequent_token_acc"], \
    f"at [MASK] the accuracy is still near the most-frequent-token baseline: {end['acc_by_kind']['mask']:.3f}"

# %% [markdown]
# Most of the drop below the unigram line is **copying**: where the input shows the answer, the model
# has learned to repeat it (that is exactly what the 10% unchanged positions are for: they make the
# model keep a good representation of every input token, since any of them might be scored). At the
# `[MASK]` positions — the real prediction task — the accuracy is still that of guessing `,`, and the
# loss only a little below the unigram line. A curve of "MLM accuracy" over all labelled positions
# hides this; report it at `[MASK]` positions when you want to know what a model can *predict*.
#
# Still, the `[MASK]` loss *is* below the unigram line, so the context changes the model's probabilities.
# How? Here are all eight probes at the plateau and at the end, top ten:

# %%
plateau_snapshot = min(snapshots, key=lambda s: abs(s["step"] - 100))
for snap in (plateau_snapshot, final):
    print(f"step {snap['step']}:")
    for i, probe in enumerate(long_run["probes"]):
        print(f"  {probe[:56]:<58} " + " ".join(t for t, p in snap["fill_mask"][i]))
distinct_lists = lambda snap: len({tuple(t for t, p in r) for r in snap["fill_mask"]})
print(f"different top-10 lists: {distinct_lists(plateau_snapshot)} at step {plateau_snapshot['step']}, "
      f"{distinct_lists(final)} at step {final['step']}")
assert distinct_lists(final) > distinct_lists(plateau_snapshot), \
    f"by the end the guesses should depend on the sentence: {distinct_lists(plateau_snapshot)} -> {distinct_lists(final)} lists"

# %% [markdown]
# On the plateau every sentence gets the same list. By the end the lists differ by *register*: the
# Bible-like probes get `he`, `his`, `you`, `shall`, `yahweh`; the dictionary-like ones `a`, `-`, `##s` —
# the model has learned which of the three books a sentence comes from (that is also most of what next-
# sentence prediction needs on this corpus: a random "next" sentence usually comes from another book),
# but not yet which *word* is missing. Over all `[MASK]` positions: how often its top guess is `,`, how
# many different tokens it guesses at all, and its accuracy on targets by how frequent they are:

# %%
bands = long_run["frequency_bands"]
fig, axes = plt.subplots(1, 3, figsize=(16, 4))
axes[0].plot(snap_steps, [p["share_most_frequent"] for p in pred], "o-")
axes[0].set_ylabel(f"share of guesses = '{base['most_frequent_token']}'")
axes[0].set_title("guessing the most frequent token (at [MASK])")
axes[1].plot(snap_steps, [p["distinct_predicted"] for p in pred], "o-", label="distinct tokens guessed")
axes[1].axhline(pred[0]["distinct_targets"], color="gray", ls=":", label="distinct targets")
axes[1].set_yscale("log"); axes[1].set_ylabel("tokens"); axes[1].legend(fontsize=8)
axes[1].set_title("how many different guesses (at [MASK])")
for k, band in enumerate(bands):
    axes[2].plot(snap_steps, [p["acc_by_band"][k] for p in pred], "o-",
                 label=f"rank {band} ({pred[0]['targets_by_band'][k]} targets)")
axes[2].set_ylabel("accuracy at [MASK]"); axes[2].set_title("accuracy by the target's frequency rank")
axes[2].legend(fontsize=8)
for ax in axes:
    ax.set_xscale("log"); ax.set_xlabel("step (log scale; step 0 at 1)"); ax.grid(alpha=0.3, which="both")
fig.tight_layout()
plt.show()
collapsed = max((s for s in snapshots if s["step"] <= 200), key=lambda s: s["predictions"]["share_most_frequent"])
print(f"step {collapsed['step']}: {collapsed['predictions']['share_most_frequent']:.0%} of the guesses are "
      f"'{base['most_frequent_token']}'; step {final['step']}: {end['share_most_frequent']:.0%}, "
      f"{end['distinct_predicted']} distinct; accuracy by band {[round(a, 3) for a in end['acc_by_band']]}")
for s in snapshots[-2:]:
    examples = s["predictions"]["correct_rarer_examples"]
    print(f"correct guesses at [MASK] other than the 3 most frequent tokens, step {s['step']}: {len(examples)}"
          + "".join(f"\n    {left:>48} [{word}] {right}" for left, word, right in examples[:5]))
assert collapsed["predictions"]["share_most_frequent"] > 0.9, \
    f"on the plateau nearly every guess is the most frequent token: {collapsed['predictions']['share_most_frequent']:.3f}"
assert end["acc_by_band"][0] > 5 * max(end["acc_by_band"][1:] + [0.001]), \
    f"only the most frequent targets are ever right at [MASK]: {end['acc_by_band']}"

# %% [markdown]
# The most frequent targets are the only ones it gets right at `[MASK]` (mostly `,`, `the`, `.` where
# they belong). Leaving the plateau *for real* — predicting content words from their context — takes
# this small model far longer than 41 minutes on one core (BERT-base: a million steps of 256 sequences
# of up to 512 tokens; this run: 4,000 steps of 32 sequences of 64). Lesson 4's and this lesson's short
# runs show only its beginning.
#
# ## 5. Attention over training
#
# The run also measured, at each snapshot and for every layer and head, where the attention goes
# (averaged over held-out pairs), and saved the full maps of one pair at four snapshots. At
# initialisation the queries and keys are random and small, so every row of attention is nearly
# uniform: the entropy of a row over $T$ keys is close to $\ln T$. Training makes heads *choose*.

# %%
att = [s["attention"] for s in snapshots]
entropy = np.array([a["entropy"] for a in att])                       # (snapshots, L, H)
patterns = {"previous token": "previous", "next token": "next", "itself": "self", "[CLS]": "cls", "[SEP]": "sep"}
strongest = {name: np.array([a[key] for a in att]).max(axis=(1, 2)) for name, key in patterns.items()}   # (snapshots,)
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for layer in range(entropy.shape[1]):
    axes[0].plot(snap_steps, entropy[:, layer].mean(axis=1), "o-", label=f"layer {layer}")
axes[0].set_ylabel("mean attention entropy (nats)"); axes[0].set_title("attention sharpens")
for name, values in strongest.items():
    axes[1].plot(snap_steps, values, "o-", label=name)
axes[1].set_ylabel("mean mass, in the head that puts the most there")
axes[1].set_title("which rules do heads learn?")
for ax in axes:
    ax.set_xscale("log"); ax.set_xlabel("step (log scale; step 0 at 1)"); ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
fig.tight_layout()
plt.show()
for name, values in strongest.items():
    where = np.unravel_index(np.argmax(att[-1][patterns[name]]), entropy.shape[1:])
    print(f"{name:<15} strongest head: step 0 {values[0]:.3f} -> step {final['step']} {values[-1]:.3f} "
          f"(layer {where[0]}, head {where[1]})")

maps = long_run["attention"]
tokens = maps["tokens"]
n_snap, n_layers = len(maps["steps"]), maps["maps"].shape[1]
fig, axes = plt.subplots(n_layers, n_snap, figsize=(2.6 * n_snap, 2.6 * n_layers))
for i, step in enumerate(maps["steps"]):
    for layer in range(n_layers):
        ax = axes[layer, i]
        ax.imshow(maps["maps"][i, layer].mean(axis=0), vmin=0, vmax=0.5, cmap="Blues")   # mean of the heads
        ax.set_xticks([]); ax.set_yticks([])
        if layer == 0:
            ax.set_title(f"step {step}")
        if i == 0:
            ax.set_ylabel(f"layer {layer}")
fig.suptitle(f"attention, mean of the heads (rows: queries, columns: keys) for: {' '.join(tokens)}", y=1.0, fontsize=9)
fig.tight_layout()
plt.show()

print(f"mean attention entropy: step 0 {entropy[0].mean():.2f} -> end {entropy[-1].mean():.2f} nats "
      f"(ln T for T = 64 keys: {math.log(64):.2f})")
assert entropy[-1].mean() < entropy[0].mean() - 0.3, \
    f"attention should become sharper (lower entropy): {entropy[0].mean():.3f} -> {entropy[-1].mean():.3f} nats"
specialised = max(strongest, key=lambda name: strongest[name][-1] / strongest[name][0])
assert strongest[specialised][-1] > 5 * strongest[specialised][0], \
    f"some head should specialise: {specialised} {strongest[specialised][0]:.3f} -> {strongest[specialised][-1]:.3f}"
assert max(strongest["previous token"][-1], strongest["next token"][-1]) < 0.1, \
    f"in this run no head has learned to look at its neighbours: previous {strongest['previous token'][-1]:.3f}, " \
    f"next {strongest['next token'][-1]:.3f}"
rows = maps["maps"].sum(axis=-1)
assert np.allclose(rows, 1, atol=1e-2), f"every attention row sums to 1 (float16 storage): {rows.min():.4f} .. {rows.max():.4f}"
first_sep = tokens.index("[SEP]")
segment = np.array([0 if t <= first_sep else 1 for t in range(len(tokens))])       # A: [CLS] .. first [SEP]
same_segment = segment[:, None] == segment[None, :]                                 # (T, T) query and key in one segment
within = maps["maps"][:, 0].mean(axis=1)[:, same_segment].sum(axis=-1) / len(tokens)  # (snapshots,) layer 0, mean of heads
print("layer 0: share of attention within the query's own segment, by snapshot:",
      {step: round(float(w), 3) for step, w in zip(maps["steps"], within)}, f"(uniform: {same_segment.mean():.3f})")
assert within[-1] > within[0] + 0.2, f"layer 0 should learn to attend within the segment: {within.round(3).tolist()}"

# %% [markdown]
# At step 0 the maps are flat: uniform attention over the keys (entropy $\ln 64 = 4.16$ for 64 keys). Then
# the entropy falls and structure appears. Vertical stripes: heads in which every token looks at `[SEP]`
# (the strongest puts 65% of all attention there). Clark et al. (2019) found such heads all over BERT-base
# and read them as "no-op" attention — a head with nothing to find parks its probability on a token whose
# value changes little; lesson 13 finds the same kind in MiniLM. And in layer 0 at the end, two blocks:
# each token attends within its own segment, A or B (80% of layer 0's attention at the end, 50% at
# the start) — the raw material of next-sentence prediction.
#
# What has *not* appeared is as telling: no head looks at the previous or the next token. MiniLM has
# heads that do almost nothing else (lesson 13), and without looking at its neighbours a model cannot
# tell which word is missing — which is what section 4 found at the `[MASK]` positions.
#
# ## Summary
#
# * Read every curve against its trivial baseline: $\ln V$ at the start, the unigram cross-entropy and
#   the most-frequent-token accuracy for MLM, the majority label for NSP.
# * The unigram baseline counts the true tokens of the training text (labels where labelled; no padding,
#   no specials) and scores the held-out *labelled* positions, in nats.
# * BERT learns the token frequencies within a hundred steps and sits on the unigram plateau; every
#   `[MASK]` gets the most frequent token.
# * Then the averaged MLM loss and accuracy leave the plateau — but split by what the input shows, most
#   of that is **copying** the 10% of labelled tokens that are left unchanged. At `[MASK]` this small
#   model first learns the *register* (which book a sentence is from), long before the missing *word*.
#   Report MLM accuracy at `[MASK]` positions.
# * Attention goes from uniform to structured, `[SEP]` "no-op" heads first; the neighbour-looking heads
#   that predicting a word needs had not appeared after 4,000 steps. NSP, which on this corpus is mostly
#   "same book or not", rises well above the majority label.
