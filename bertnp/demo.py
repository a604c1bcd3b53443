"""``make demo`` (= ``bertnp demo``): pretrain a small BERT on the bundled corpus in eight minutes
and show what it learned.

This module holds the demo's recipe, its held-out evaluation (the same one ``bertnp eval`` runs),
the examples it prints and how it sizes itself to the machine it finds.
"""
from __future__ import annotations

import math
import time

__all__ = ["DEMO", "run_demo", "heldout_evaluation", "choose_threads", "unigram_cross_entropy", "attention_by_offset",
           "offset_shares", "describe_heads"]

HELDOUT_SEED = 1            # the held-out pairs' seed: `bertnp eval --seed` defaults to it too


def heldout_batches(tokenizer, documents=None, seq_length: int = 128, batch_size: int = 32,
                    seed: int = HELDOUT_SEED, max_batches: int | None = None):
    """(held-out batches, their dataset): pairs built like the training data, with BERT's static
    15% masks drawn with ``seed``; ``documents`` default to the bundled held-out split."""
    from bertnp.data import PretrainingDataset, PretrainingLoader, read_corpus
    if documents is None:
        from bertnp.corpus import bundled_corpus
        documents = read_corpus([bundled_corpus("heldout")])
    ds = PretrainingDataset(documents, tokenizer, max_seq_length=seq_length,
                            max_predictions_per_seq=max(1, round(0.15 * seq_length)),
                            masking="static", seed=seed)
    loader = PretrainingLoader(ds, batch_size, shuffle=False)
    n = len(loader) if max_batches is None else min(max_batches, len(loader))
    return [loader.next_batch() for _ in range(n)], ds


def heldout_evaluation(model, tokenizer, documents=None, seq_length: int = 128, batch_size: int = 32,
                       seed: int = HELDOUT_SEED, max_batches: int | None = None) -> dict:
    """Held-out loss and MLM / NSP accuracy of ``model``, next to the unigram baseline.

    What ``bertnp eval`` prints and the demo reports: :func:`bertnp.train.evaluate_model` on
    :func:`heldout_batches`, plus ``baseline_mlm_acc`` (always predicting the most frequent
    non-special token of the held-out text, ``baseline_token``) and ``seconds``."""
    from bertnp.train import evaluate_model, unigram_baseline
    batches, ds = heldout_batches(tokenizer, documents, seq_length, batch_size, seed, max_batches)
    t0 = time.perf_counter()
    result = evaluate_model(model, batches)
    specials = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
                tokenizer.mask_token_id, tokenizer.unk_token_id]
    top, base = unigram_baseline(ds.documents, batches, specials)
    result.update(baseline_token=top, baseline_mlm_acc=base, seconds=time.perf_counter() - t0)
    return result


# ============================================================================ the recipe

# The demo's run, chosen on held-out data to learn the most in eight minutes of a 2-core CPU
# (benchmarks/demo_recipe.py, recipe `v2k+mask40+p16`; the measurements are in benchmarks/RESULTS.md,
# "The demo's recipe"). What matters most is the first phase on sequences of 16: trained on 128 from
# the start, this small BERT stays a bag of words for the whole eight minutes (every head spreads its
# attention evenly; held-out MLM accuracy ~0.15). In a short context each neighbour is a large share
# of what attention averages, so heads that read the token to the left and to the right appear, and
# after the switch to 128 the accuracy more than doubles (~0.36 at the same CPU time). Then: a 2k
# vocabulary beat 4k, batches of 32 beat 16 and 8, 40% of the tokens masked beat 25%.
DEMO = dict(preset="tiny", vocab_size=2000, max_seq_length=128, batch_size=32, masked_lm_prob=0.4, lr=2e-3,
            warmup=0.1, dropout=0.0, phase1_seq_length=16, phase1_fraction=0.3, time_budget=480.0,
            eval_every=100, eval_batches=8, checkpoint_every=200, log_every=10, seed=0)
# steps that fit the budget on the machine the recipe was tuned on (2 cores, quiet): far fewer
# means a slower or busier machine, and the demo says so. Measured with `make demo` on the quiet
# 2-core AVX-512 machine (2026-12-07, 2 threads): it planned 2,028 steps from its probe, re-planned
# 2,286 from the speed it measured while training, and ran 2,286 (472 s of the 480 s budget).
PLANNED_STEPS = 2050
# After training the demo evaluates the whole held-out split (24 batches of 32 x 128, forward only:
# ~7 steps' worth), prints its examples (~0.1 step) and draws its figure (1-4 s): time for it is
# kept from the budget in steps at the measured speed -- slow on a busy machine too -- plus a
# couple of seconds that do not scale with the model (measured: benchmarks/RESULTS.md, "The demo's recipe")
RESERVE_STEPS = 12
RESERVE_SECONDS = 2.0


# ============================================================================ the machine

def choose_threads(cores: int | None = None, load: float | None = None) -> tuple[int, str]:
    """(BLAS threads, why) for the machine as found: one thread per core that the load average
    says is free (at least one). OpenBLAS threads that find their core taken wait for it at every
    matrix product, so on a busy machine fewer threads are faster, not slower."""
    import os
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = int(round(load))                       # cores kept busy by other jobs (1-minute average)
    threads = max(1, cores - busy)
    if threads == cores:
        why = f"{cores} core{'s' * (cores > 1)}, load average {load:.2f}: all free"
    else:
        why = (f"{cores} core{'s' * (cores > 1)}, load average {load:.2f}: about {min(busy, cores)} busy "
               "with other jobs, so fewer threads rather than fighting for cores")
    return threads, why


def blas_threads(requested: int | None = None):
    """A context manager limiting the threads -- BLAS's and those of bertnp's own CPU operations
    (:mod:`bertnp.parallel`) -- to the chosen count, and a line saying what was chosen and why.
    ``OPENBLAS_NUM_THREADS`` (or ``OMP_NUM_THREADS``) set by the user wins, as does ``requested``."""
    import contextlib
    import os
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if requested is None and os.environ.get(var, "").isdigit():
            return contextlib.nullcontext(), f"threads: {os.environ[var]} ({var} set by you)"
    if requested is not None:
        return _thread_limit(requested), f"threads: {requested} (--threads)"
    threads, why = choose_threads()
    return _thread_limit(threads), f"threads: {threads} ({why})"


def _thread_limit(count: int):
    import contextlib
    from threadpoolctl import threadpool_limits
    from bertnp import parallel

    @contextlib.contextmanager
    def limit():
        with threadpool_limits(limits=count, user_api="blas"), parallel.threads(count):
            yield
    return limit()


# ============================================================================ what it shows

def unigram_cross_entropy(train_documents, batches, vocab_size: int, special_ids=()) -> float:
    """Cross-entropy (nats) of the unigram model -- training-token frequencies, add-one smoothed,
    special tokens excluded -- on the batches' masked tokens: the MLM loss of a model that learned
    word frequencies and nothing else."""
    import numpy as np
    # TASK 5.7 unigram_cross_entropy: add-one smoothed training frequencies, no special tokens (lesson 12)
    counts = np.ones(vocab_size)
    for doc in train_documents:
        for sentence in doc:
            np.add.at(counts, np.asarray(sentence, dtype=np.int64), 1)
    counts[list(special_ids)] = 0
    log_p = np.log(counts / counts.sum(), where=counts > 0, out=np.full(vocab_size, -np.inf))
    labels = np.concatenate([b["labels"][b["labels"] != -100] for b in batches])
    # END TASK 5.7
    return float(-log_p[labels].mean())


def fill_mask_examples(tokenizer, n: int = 6, seed: int = 0):
    """Held-out sentences with one whole word (a single WordPiece token) replaced by [MASK]: a rule
    fixed before training (8-16 words a sentence, a word of at least 3 letters, ``random.Random(seed)``)."""
    import random
    from bertnp.corpus import bundled_corpus
    from bertnp.data import read_corpus
    rng = random.Random(seed)
    sentences = [s for doc in read_corpus([bundled_corpus("heldout")]) for s in doc if 8 <= len(s.split()) <= 16]
    rng.shuffle(sentences)
    examples = []
    for s in sentences:
        words = s.split()
        spots = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 3
                 and len(tokenizer.tokenize(w)) == 1]
        if not spots:
            continue
        i = rng.choice(spots)
        truth = tokenizer.tokenize(words[i])[0]
        examples.append((" ".join(words[:i] + [tokenizer.mask_token] + words[i + 1:]), truth))
        if len(examples) == n:
            break
    return examples


def nsp_examples(n: int = 6):
    """(A, B, is_next) pairs from the held-out split by a rule fixed before training: the first ``n``
    held-out documents of at least 3 sentences, in corpus order; A is a document's first sentence;
    even-numbered examples take its second sentence as B (the true next), odd-numbered ones the
    second sentence of the document half the list further on (a random next)."""
    from bertnp.corpus import bundled_corpus
    from bertnp.data import read_corpus
    docs = [d for d in read_corpus([bundled_corpus("heldout")]) if len(d) >= 3]
    pairs = []
    for k in range(n):
        a = docs[k][0]
        if k % 2 == 0:
            pairs.append((a, docs[k][1], True))
        else:
            pairs.append((a, docs[(k + len(docs) // 2) % len(docs)][1], False))
    return pairs


def offset_shares(attentions, offsets):
    """(layers, heads, len(offsets)) host array from one forward's attention maps (per layer
    (B, heads, T, T)): the mean probability a query puts on the key ``offset`` tokens away, over
    every query that has such a key (-1: the token to its left)."""
    import numpy as np
    from bertnp import backend
    shares = np.zeros((len(attentions), attentions[0].shape[1], len(offsets)))
    for layer, probs in enumerate(attentions):
        probs = backend.to_host(probs)                                       # (B, heads, T, T)
        T = probs.shape[-1]
        for k, off in enumerate(offsets):
            query = np.arange(max(0, -off), min(T, T - off))                 # queries with a key at query + off
            shares[layer, :, k] = probs[:, :, query, query + off].mean(axis=(0, 2))
    return shares


def attention_by_offset(model, batches, offsets=range(-3, 4)):
    """:func:`offset_shares` averaged over ``batches``. A head spreading its attention evenly puts
    ~1/length on each offset; a head that reads a neighbour puts most of it on -1 or +1."""
    offsets = list(offsets)
    total = 0.0
    for b in batches:
        out = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], output_attentions=True)
        total = total + offset_shares(out.attentions, offsets)
    return total / max(len(batches), 1)


def describe_heads(shares, offsets) -> list[str]:
    """One line a head: where it puts most of its attention, or that it spreads it evenly."""
    lines = []
    for layer, head in ((l, h) for l in range(shares.shape[0]) for h in range(shares.shape[1])):
        k = int(shares[layer, head].argmax())
        off, share = offsets[k], shares[layer, head, k]
        where = {-1: "the token to its left", 0: "itself", 1: "the token to its right"}.get(
            off, f"the token {abs(off)} to its {'left' if off < 0 else 'right'}")
        if share < 0.05:                                   # ~1/length: no neighbour stands out
            lines.append(f"layer {layer + 1} head {head + 1}: spread about evenly over the sequence "
                         f"(at most {share:.0%} on one neighbour): a bag of words")
        else:
            lines.append(f"layer {layer + 1} head {head + 1}: {share:.0%} on {where}")
    return lines


def is_word(token: str) -> bool:
    """A word (or word piece) rather than punctuation, a number or a special token."""
    return token.removeprefix("##").isalpha()


# ============================================================================ the demo

def _wrap(text: str, width: int = 96, indent: str = "    ") -> str:
    import textwrap
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent)


def run_demo(out: str = "runs/demo", time_budget: float = DEMO["time_budget"], vocab: str | None = None,
             backend: str = "numpy", progress: bool = True, threads: int | None = None,
             recipe: dict | None = None) -> dict:
    """Train, then print what the model learned; returns the figures it printed (a dict).

    ``recipe``: TrainConfig options replacing the demo's (:data:`DEMO`), e.g. a tiny model for a test."""
    from bertnp.inference import fill_mask, next_sentence_probability
    from bertnp.train import TrainConfig, Trainer
    from bertnp.checkpoint import read_jsonl
    from bertnp.viz_demo import plot_pretraining_story
    t_start = time.perf_counter()
    print(f"bertnp demo: a WordPiece vocabulary ({DEMO['vocab_size']} tokens) and a BERT-{DEMO['preset']} "
          f"trained on the bundled corpus, all in {time_budget / 60:.3g} min; sequences of "
          f"{DEMO['max_seq_length']}, batches of {DEMO['batch_size']}, {DEMO['masked_lm_prob']:.0%} of the tokens "
          f"masked in training (held-out pairs: BERT's 15%), lr {DEMO['lr']:g}; output in '{out}'")
    if DEMO.get("phase1_seq_length") and not (recipe and "phase1_seq_length" in recipe):
        print(f"Two phases, as BERT was trained: the first {DEMO['phase1_fraction']:.0%} of the steps on sequences of "
              f"{DEMO['phase1_seq_length']} (a short context teaches the model to read its neighbours), then "
              f"{DEMO['max_seq_length']}")
    limit, why = blas_threads(threads)
    print(why)
    # what comes after training (the whole held-out evaluation, the examples, the figure) is paid
    # from the same budget: the Trainer keeps RESERVE_STEPS steps' worth of time for it, at the speed
    # it measures while training (a busy machine evaluates slowly too), and RESERVE_SECONDS more
    options = dict(DEMO, **(recipe or {}))
    options.update(time_budget=max(1.0, time_budget - RESERVE_SECONDS), reserve_steps=RESERVE_STEPS, out_dir=out,
                   overwrite=True, backend=backend, progress=progress, vocab=vocab,
                   plot=False)     # the demo draws its own figure, once
    with limit:
        trainer = Trainer(TrainConfig(**options))
        planned = trainer.config.steps
        if time_budget >= DEMO["time_budget"] and planned < 0.8 * PLANNED_STEPS:
            print(f"note: this machine is slower or busier than the one the demo was tuned on: the budget fits "
                  f"{planned} steps, not the ~{PLANNED_STEPS} planned, so the model will learn less than the "
                  "README's figures (a quieter machine, or a longer --time-budget, helps)")
        summary = trainer.train()
        model, tok = trainer.model, trainer.tokenizer
        model.eval()
        final = heldout_evaluation(model, tok, seq_length=trainer.config.max_seq_length,
                                   batch_size=trainer.config.batch_size)

        print("\nFill-mask on held-out sentences (never seen in training; the masked word chosen "
              "before training):")
        words = 0
        examples = fill_mask_examples(tok)
        for text, truth in examples:
            preds = [(p["token_str"], p["score"]) for p in fill_mask(model, tok, text, top_k=5)]
            words += is_word(preds[0][0])
            mark = "right" if preds[0][0] == truth else ("in top 5" if truth in [t for t, _ in preds] else "")
            print(f"  {text}\n    true: {truth:<12} predicted: " +
                  ", ".join(f"{t} ({p:.2f})" for t, p in preds) + (f"   [{mark}]" if mark else ""))
        print(f"  top-1 guesses that are words (not punctuation): {words} of {len(examples)}")

        print("\nNext-sentence prediction on held-out pairs (chosen by a fixed rule, before training):")
        nsp_right = 0
        pairs = nsp_examples()
        for a, b, is_next in pairs:
            p = next_sentence_probability(model, tok, a, b)
            right = (p > 0.5) == is_next
            nsp_right += right
            print(_wrap(f"A: {a}") + "\n" + _wrap(f"B: {b}"))
            print(f"      P(B follows A) = {p:.3f}   truth: {'next' if is_next else 'random'}   "
                  f"[{'right' if right else 'wrong'}]")
        print(f"  right: {nsp_right} of {len(pairs)}")

        shares = None
        if trainer.eval_batches:
            offsets = list(range(-3, 4))
            shares = attention_by_offset(model, trainer.eval_batches[:2], offsets)
            print("\nWhat the attention heads read (held-out pairs): where each head puts most of its attention")
            for line in describe_heads(shares, offsets):
                print("  " + line)

    specials = [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.unk_token_id]
    unigram_ce = unigram_cross_entropy(trainer.dataset.documents, trainer.eval_batches, tok.vocab_size, specials)
    figure = None
    try:
        figure = plot_pretraining_story(trainer.metrics_path, trainer.out / "training.png", unigram_ce=unigram_ce,
                                        baseline_mlm_acc=trainer.baseline_acc, phase1_end=trainer.phase1_end or None,
                                        phase1_label=f"phase 1: sequences of {trainer.config.phase1_seq_length}",
                                        title=f"bertnp demo: BERT-{DEMO['preset']}, {summary['step']} steps, "
                                              f"{summary['train_time']:.0f} s of training")
    except ImportError:
        pass

    train_recs = [r for r in read_jsonl(trainer.metrics_path) if r.get("split") == "train"]
    total = time.perf_counter() - t_start
    print("\nResults (held-out: the whole held-out split, as `bertnp eval` computes it)")
    if train_recs:
        print(f"  training loss:          {train_recs[0]['loss']:.3f} (first {trainer.config.log_every} steps) "
              f"-> {train_recs[-1]['loss']:.3f} (last {trainer.config.log_every})")
    print(f"  held-out MLM accuracy:  {final['mlm_acc']:.3f}   (unigram baseline, always "
          f"'{tok.ids_to_tokens[final['baseline_token']]}': {final['baseline_mlm_acc']:.3f})")
    print(f"  held-out NSP accuracy:  {final['nsp_acc']:.3f}   (chance 0.5)")
    print(f"  held-out loss:          {final['loss']:.3f} (MLM {final['mlm_loss']:.3f}, unigram cross-entropy "
          f"{unigram_ce:.3f}; NSP {final['nsp_loss']:.3f}, chance {math.log(2):.3f})")
    print(f"  {summary['step']} steps, {summary['tokens_seen']:,} tokens; training {summary['train_time']:.0f} s, "
          f"total {total:.0f} s of a {time_budget:.0f} s budget")
    print("\nFiles")
    print(f"  model (Hugging Face layout): {summary.get('model_dir')}")
    print(f"  last checkpoint:             {summary['checkpoint']}")
    print(f"  figure:                      {figure or '(not drawn: pip install matplotlib)'}")
    print(f"  metrics:                     {summary['metrics']}")
    print("\nTry it (in the virtual environment: `source .venv/bin/activate` first, or call .venv/bin/bertnp):")
    print(f"  bertnp fill-mask --model {summary.get('model_dir')} \"And God said, let there be [MASK].\"")
    print(f"  bertnp eval --model {summary.get('model_dir')}")
    return {"steps": summary["step"], "planned_steps": planned, "train_time": summary["train_time"],
            "total_time": total, "heldout": final, "unigram_cross_entropy": unigram_ce,
            "fill_mask_words": words, "fill_mask_examples": len(examples), "nsp_examples_right": nsp_right,
            "attention_by_offset": None if shares is None else shares.tolist(),
            "model_dir": summary.get("model_dir"), "figure": str(figure) if figure else None}
