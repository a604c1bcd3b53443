"""Make lesson 12's committed data: a longer pretraining run, watched at log-spaced steps.

    nice -n 10 env OPENBLAS_NUM_THREADS=1 python -m bertnp.lesson_data.l12_make --run-dir /tmp/l12-run --steps 4000

(the command that made the committed files, as recorded in their ``command``; 41 min of training,
50 min wall on the 2-core development machine) trains a small BERT (L4 H128 A4, a 4,000-token
WordPiece vocabulary, sequences of 64, 4,000 steps of 32, peak learning rate 2e-3, dropout 0.1) on the
bundled corpus with :class:`bertnp.train.Trainer` and, at each snapshot step, records what the
model predicts -- small enough to commit, inside the package:

    l12_run.json         the run's configuration, the exact command, timings, the baselines, and per
                         snapshot: held-out losses and accuracies, fill-mask top-10 for the probe
                         sentences, what the held-out predictions are (loss and accuracy at [MASK],
                         random and unchanged positions; at [MASK]: the share of the most frequent token,
                         distinct guesses, accuracy by the target's frequency band, a few correct
                         guesses of rarer tokens in context), and per layer and head where attention
                         goes ([CLS], [SEP], previous / same / next token) and its entropy
    l12_metrics.jsonl    the Trainer's metrics.jsonl (train windows and evaluations), rounded
    l12_attention.npz    attention maps of one held-out sentence pair at a few snapshots (float16)

``bertnp.lesson_data.lessons_11_14.load_l12()`` reads them back. Deterministic for a given BLAS and
thread count (the Trainer is); the run folder (checkpoints, the model) is not committed. A quick test
of the script (about 2 minutes; its step-0 snapshot equals the committed one)::

    python -m bertnp.lesson_data.l12_make --run-dir /tmp/l12-try --steps 20 --out /tmp/l12-try/out
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IGNORE_INDEX = -100

# fill-mask probes: sentences in the corpus's three voices (none is copied from it)
PROBES = [
    "in the beginning god created the heavens and the [MASK].",
    "and the lord said to moses, speak to the children of [MASK].",
    "he opened his [MASK] and taught them, saying,",
    "then they went up to [MASK], the city of david.",
    "a [MASK] is a person who enjoys exploring the details of programmable systems.",
    "the program crashed because of a [MASK] in the code.",
    "marriage, n. the state or condition of a community consisting of a master, a mistress and two [MASK].",
    "i will [MASK] you, and you shall be my people.",
]
# the pair whose attention maps are kept (IsNext; from the held-out Bible text's style)
ATTENTION_PAIR = ("the lord is my shepherd, i shall not want.",
                  "he makes me lie down in green pastures.")
ATTENTION_SNAPSHOTS = 4          # the first, two in between, the last


def snapshot_steps(total: int) -> list[int]:
    """0, 10, 20, 50, 100, 200, 500, 1000, ... below ``total``, and ``total``."""
    steps, k = [0], 0
    while True:
        for m in (1, 2, 5):
            s = m * 10 ** (k + 1)
            if s >= total:
                return steps + [total]
            steps.append(s)
        k += 1


def frequency_bands(counts: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Band of every token id by its training-frequency rank: top 10, 11-100, 101-1000, rarer."""
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    edges = [10, 100, 1000]
    band = np.searchsorted(edges, rank, side="right")        # 0: rank < 10, 1: < 100, 2: < 1000, 3: rarer
    return ["top 10", "11-100", "101-1000", "rarer"], band


def prediction_stats(model, batches, counts: np.ndarray, band: np.ndarray, n_bands: int, tokenizer,
                     n_examples: int = 8) -> dict:
    """What the model predicts at the held-out labelled positions (eval mode).

    A labelled position's input is [MASK] (80%), a random token (10%) or the true token itself
    (10%): accuracy is reported for each kind, because at the last kind the answer is visible.
    The other statistics are over the [MASK] positions only."""
    mask_id, top_token = tokenizer.mask_token_id, int(np.argmax(counts))
    frequent = set(np.argsort(-counts)[:3].tolist())                 # the 3 most frequent tokens
    preds, targets, inputs, losses, examples = [], [], [], [], []
    for b in batches:
        out = model(**b)
        logits = np.asarray(out.prediction_logits, dtype=np.float64)   # (N, V): the labelled positions, row-major
        p = logits.argmax(axis=-1)                                    # (N,)
        rows, cols = np.nonzero(b["labels"] != IGNORE_INDEX)         # the same order
        t, x = b["labels"][rows, cols], b["input_ids"][rows, cols]
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(shifted).sum(axis=-1))                  # (N,) log of the softmax's denominator
        losses.append(log_z - shifted[np.arange(t.size), t])          # -log p(target): cross-entropy per position
        preds.append(p), targets.append(t), inputs.append(x)
        for r, c, guess, target, shown in zip(rows, cols, p, t, x):
            if len(examples) < n_examples and shown == mask_id and guess == target and int(target) not in frequent:
                left = tokenizer.convert_ids_to_tokens(b["input_ids"][r, max(1, c - 7):c].tolist())
                right = tokenizer.convert_ids_to_tokens(b["input_ids"][r, c + 1:c + 4].tolist())
                examples.append([" ".join(left), tokenizer.convert_ids_to_tokens(int(target)), " ".join(right)])
    p, t, x = np.concatenate(preds), np.concatenate(targets), np.concatenate(inputs)
    nll = np.concatenate(losses)
    kinds = {"mask": x == mask_id, "random": (x != mask_id) & (x != t), "unchanged": x == t}
    m = kinds["mask"]
    by_band = []
    for k in range(n_bands):
        sel = m & (band[t] == k)
        by_band.append(float((p[sel] == t[sel]).mean()) if sel.any() else None)
    return {"acc_by_kind": {k: float((p[v] == t[v]).mean()) for k, v in kinds.items()},
            "loss_by_kind": {k: float(nll[v].mean()) for k, v in kinds.items()},
            "positions_by_kind": {k: int(v.sum()) for k, v in kinds.items()},
            "share_most_frequent": float((p[m] == top_token).mean()), "distinct_predicted": int(np.unique(p[m]).size),
            "distinct_targets": int(np.unique(t[m]).size), "acc_by_band": by_band,
            "targets_by_band": [int((m & (band[t] == k)).sum()) for k in range(n_bands)],
            "correct_rarer_examples": examples}


def attention_stats(model, batches, special: dict, max_pairs: int = 64) -> dict:
    """Per layer and head, averaged over the real query tokens of held-out pairs: the attention
    mass on [CLS], on [SEP]s, on the previous / same / next position, and the entropy (nats)."""
    keys = ("cls", "sep", "previous", "self", "next", "entropy")
    sums, n = None, 0
    for b in batches:
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                    token_type_ids=b["token_type_ids"], output_attentions=True)
        A = np.stack([np.asarray(a, dtype=np.float64) for a in out.attentions], axis=1)  # (B, L, H, T, T)
        if sums is None:
            sums = {k: np.zeros(A.shape[1:3]) for k in keys}
        for i in range(A.shape[0]):
            T = int(b["attention_mask"][i].sum())
            a = A[i, :, :, :T, :T]                                                      # (L, H, T, T)
            ids = b["input_ids"][i, :T]
            sums["cls"] += a[..., ids == special["cls"]].sum(-1).mean(-1)
            sums["sep"] += a[..., ids == special["sep"]].sum(-1).mean(-1)
            sums["previous"] += np.diagonal(a, offset=-1, axis1=-2, axis2=-1).sum(-1) / T   # query q, key q-1
            sums["self"] += np.diagonal(a, axis1=-2, axis2=-1).mean(-1)
            sums["next"] += np.diagonal(a, offset=1, axis1=-2, axis2=-1).sum(-1) / T
            sums["entropy"] += (-(a * np.log(np.maximum(a, 1e-30))).sum(-1)).mean(-1)
            n += 1
            if n >= max_pairs:
                return {k: np.round(v / n, 4).tolist() for k, v in sums.items()}
    return {k: np.round(v / max(n, 1), 4).tolist() for k, v in sums.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="the Trainer's out_dir (not committed)")
    ap.add_argument("--out", type=Path, default=HERE, help="where the small files go (default: this package)")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import bertnp as bn
    from bertnp.inference import attention_maps, fill_mask
    from bertnp.train import TrainConfig, Trainer

    bn.set_backend("numpy")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = bn.BertConfig(vocab_size=4000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                              intermediate_size=512, max_position_embeddings=64)
    model_cfg.to_json_file(args.run_dir / "config.json")
    run = TrainConfig(vocab_size=4000, model_config=str(args.run_dir / "config.json"), max_seq_length=64,
                      batch_size=32, steps=args.steps, lr=args.lr, warmup=0.05, dropout=args.dropout,
                      seed=args.seed, out_dir=str(args.run_dir / "run"), eval_every=100, eval_batches=20,
                      checkpoint_every=10 ** 9, keep_checkpoints=1, log_every=20, progress=False, overwrite=True)
    t_start = time.time()
    trainer = Trainer(run)
    tok, model = trainer.tokenizer, trainer.model
    V = tok.vocab_size
    special = {"cls": tok.cls_token_id, "sep": tok.sep_token_id}

    # the baselines of the held-out labelled tokens, from the training text's token counts
    counts = np.zeros(V)
    for doc in trainer.dataset.documents:
        for sentence in doc:
            counts += np.bincount(sentence, minlength=V)
    p_unigram = (counts + 1) / (counts.sum() + V)                    # add-one smoothing
    eval_targets = np.concatenate([b["labels"][b["labels"] != IGNORE_INDEX] for b in trainer.eval_batches])
    top_token = int(np.argmax(counts))
    nsp = np.concatenate([b["next_sentence_label"] for b in trainer.eval_batches])
    band_names, band = frequency_bands(counts)
    baselines = {"unigram_cross_entropy": float(-np.log(p_unigram[eval_targets]).mean()),
                 "most_frequent_token": tok.convert_ids_to_tokens(top_token),
                 "most_frequent_token_acc": float((eval_targets == top_token).mean()),
                 "nsp_majority": float(max(nsp.mean(), 1 - nsp.mean())),
                 "ln_vocab": math.log(V), "eval_mlm_targets": int(eval_targets.size),
                 "eval_pairs": int(nsp.size)}

    steps = snapshot_steps(args.steps)
    keep_maps = set(np.unique(np.round(np.linspace(0, len(steps) - 1, ATTENTION_SNAPSHOTS)).astype(int)))
    snapshots, maps, map_steps, tokens = [], [], [], None
    for i, s in enumerate(steps):
        if s > trainer.step:
            trainer.train(stop_at=s)
        model.eval()
        ev = trainer.evaluate()
        probes = []
        for result in fill_mask(model, tok, PROBES, top_k=10):        # one [MASK] per probe: a flat top-10
            probes.append([[p["token_str"], round(p["score"], 4)] for p in result])
        snap = {"step": s, "elapsed_s": round(trainer.train_time, 1),
                "eval": {k: round(float(v), 5) for k, v in ev.items() if isinstance(v, (int, float))},
                "fill_mask": probes,
                "predictions": prediction_stats(model, trainer.eval_batches, counts, band, len(band_names), tok),
                "attention": attention_stats(model, trainer.eval_batches, special)}
        if i in keep_maps:
            m = attention_maps(model, tok, *ATTENTION_PAIR)
            maps.append(m.attentions.astype(np.float16))
            map_steps.append(s)
            tokens = m.tokens
        model.train()
        snapshots.append(snap)
        print(f"step {s}: held-out MLM loss {ev['mlm_loss']:.3f} acc {ev['mlm_acc']:.3f} NSP acc {ev['nsp_acc']:.3f}"
              f"  top guess for probe 0: {probes[0][0]}  ({trainer.train_time:.0f} s)", flush=True)

    command = "nice -n 10 env OPENBLAS_NUM_THREADS=1 python -m bertnp.lesson_data.l12_make " + \
        " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    info = {"command": command, "config": run.to_dict(), "model_config": model_cfg.to_dict(),
            "num_parameters": model.num_parameters(), "vocab_size": V,
            "wall_s": round(time.time() - t_start, 1), "train_s": round(trainer.train_time, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}",
            "made": time.strftime("%Y-%m-%d"), "probes": PROBES, "frequency_bands": band_names,
            "baselines": baselines, "snapshot_steps": steps, "snapshots": snapshots}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "l12_run.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    keep = ("split", "step", "loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "baseline_mlm_acc")
    lines = []
    for line in trainer.metrics_path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        lines.append(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in rec.items() if k in keep}))
    (args.out / "l12_metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    np.savez_compressed(args.out / "l12_attention.npz", attentions=np.stack(maps), steps=np.array(map_steps),
                        tokens=np.array(tokens))
    print(f"wrote {args.out}/l12_run.json, l12_metrics.jsonl, l12_attention.npz "
          f"({trainer.train_time:.0f} s of training, {time.time() - t_start:.0f} s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
