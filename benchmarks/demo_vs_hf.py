"""Same recipe, same eight minutes: the demo's BERT in bertnp and in Hugging Face transformers.

    pip install -e '.[bench]'                             # torch==2.13.0 + transformers
    python benchmarks/demo_vs_hf.py --wait-idle 900 --write   # ~17 min; writes its section of RESULTS.md

Both sides get exactly the same run: the demo's vocabulary, its training pairs and masks in the same
order (one bertnp PretrainingLoader, replayed for each side), the same model shape, the same initial
weights (bertnp's, loaded into HF's BertForPreTraining), AdamW with the same settings and no-decay
groups, the same warmup/linear-decay schedule, gradient clipping at 1.0, no dropout, the same BLAS
thread count; then the same wall-clock budget for the training loop. Each side's number of steps is
estimated from its own measured speed (after 5 steps, re-estimated at 10%, 25%, 50%, 75% and 90% of
the plan), so the learning rate decays to zero when its budget ends. The two sides
run one after the other in this one process, bertnp first.

Hugging Face's model is used as its users run it: ``BertForPreTraining(..., labels=...)`` computes
the MLM decoder at every position; bertnp computes it at the masked positions only (the same loss),
and steps as its training loop does: each core runs a share of the batch's rows on a replica of the
model (``bertnp.cores``; the same step as the whole batch at once, to rounding).

Held-out evaluation is identical for both: ``bertnp.demo.heldout_batches`` (the whole bundled
held-out split, sequences of 128, BERT's static 15% masks, seed 1), MLM accuracy over the masked
tokens, NSP accuracy over the pairs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## The demo's recipe: bertnp and Hugging Face in the same eight minutes"


def _threads_from_argv(argv) -> int:
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 2


THREADS = _threads_from_argv(sys.argv[1:])
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(THREADS)            # before NumPy or torch load their BLAS

sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402

import bertnp as bn  # noqa: E402
from bertnp.cores import CoreReplicas  # noqa: E402
from bertnp.demo import DEMO, PLANNED_STEPS, heldout_batches  # noqa: E402
from bertnp.optim import clip_grad_norm, linear_warmup_decay  # noqa: E402

RETUNE_AT = (0.1, 0.25, 0.5, 0.75, 0.9)     # the load of a shared machine changes: re-plan often


def loadavg() -> float:
    return os.getloadavg()[0]


def wait_idle(limit_s: float, threshold: float = 0.5) -> bool:
    deadline = time.monotonic() + limit_s
    while loadavg() >= threshold:
        if time.monotonic() >= deadline:
            return False
        time.sleep(10)
    return True


# ============================================================================ the shared setup

def build_data(cache: Path):
    """(tokenizer, training loader, held-out batches, model config): the demo's, as its Trainer builds them."""
    from bertnp.corpus import bundled_corpus
    from bertnp.data import PretrainingDataset, PretrainingLoader, read_corpus, shorter_sequences
    from bertnp.train import load_tokenizer, train_vocab
    docs = read_corpus([bundled_corpus("train")])
    vocab = cache / f"vocab-{DEMO['vocab_size']}.txt"
    if not vocab.is_file():
        train_vocab(docs, DEMO["vocab_size"], vocab, show_progress=False)
    tok = load_tokenizer(vocab)
    T = DEMO["max_seq_length"]
    masked_lm_prob = DEMO.get("masked_lm_prob", 0.15)
    ds = PretrainingDataset(docs, tok, max_seq_length=T, masked_lm_prob=masked_lm_prob,
                            max_predictions_per_seq=max(1, round(masked_lm_prob * T)), seed=DEMO["seed"])
    loader = PretrainingLoader(ds, DEMO["batch_size"], seed=DEMO["seed"])
    # the Trainer's phase-1 loader (short sequences), when the recipe has one
    loader.phase1 = shorter_sequences(loader, DEMO["phase1_seq_length"]) if DEMO.get("phase1_seq_length") else None
    held, _ = heldout_batches(tok, seq_length=T, batch_size=DEMO["batch_size"])
    cfg = bn.BertConfig.preset(DEMO["preset"], vocab_size=tok.vocab_size, **DEMO.get("model", {}))
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    cfg.pad_token_id = tok.pad_token_id
    return tok, loader, held, cfg


def timed_training(step, loader, budget: float, set_lr) -> dict:
    """Run ``step(batch)`` until the budget is spent; the schedule's end is estimated from the
    measured speed (after 5 steps, then again at RETUNE_AT fractions of the plan). A two-phase
    recipe draws from ``loader.phase1`` for its first ``phase1_fraction`` of the steps, as the Trainer does."""
    for each in (loader, loader.phase1):
        if each is not None:
            each.load_state_dict({**each.state_dict(), "epoch": 0, "index": 0})
    lr, warm = DEMO["lr"], DEMO["warmup"]
    total, done, t0 = PLANNED_STEPS, 0, time.perf_counter()     # the plan until the first measurement
    fraction = DEMO.get("phase1_fraction", 0.0) if loader.phase1 is not None else 0.0
    phase1_end = int(round(fraction * total))
    checks = set()
    while done < total:
        if time.perf_counter() - t0 > 1.25 * budget:
            break
        set_lr(lr * linear_warmup_decay(done, min(int(round(warm * total)), total), total))
        step((loader.phase1 if done < phase1_end else loader).next_batch())
        done += 1
        if done == 5 or done in checks:
            per_step = (time.perf_counter() - t0) / done
            total = done + max(1, int((budget - (time.perf_counter() - t0)) / per_step))
            if done < phase1_end:
                phase1_end = max(done, int(round(fraction * total)))
            checks = {max(6, int(f * total)) for f in RETUNE_AT}
    return {"steps": done, "seconds": time.perf_counter() - t0}


# ============================================================================ the two sides

def run_bertnp(cfg, init, loader, held, budget) -> dict:
    from bertnp.train import evaluate_model
    model = bn.BertForPreTraining(cfg, seed=DEMO["seed"])
    model.load_state_dict(init)
    model.train()
    model.skip_unscored_rows = True    # as bertnp's Trainer: the last layer only where the heads read
    betas = tuple(DEMO.get("betas", (0.9, 0.999)))
    opt = bn.AdamW(model, lr=DEMO["lr"], betas=betas, eps=1e-6, weight_decay=0.01)

    cores = CoreReplicas(model)        # as bertnp's training loop steps it: a share of the rows per core

    def share_step(member, share, counts):
        member(**share, **counts)          # the share's losses over the whole batch's counts
        member.backward()

    def step(batch):
        model.zero_grad()
        counts = {"mlm_denominator": max(1, int((batch["labels"] != -100).sum())),
                  "nsp_denominator": len(batch["input_ids"])}
        cores.run(batch, lambda member, share: share_step(member, share, counts))
        clip_grad_norm(model.grads, 1.0)
        opt.step()

    def set_lr(value):
        opt.lr = value
    run = timed_training(step, loader, budget, set_lr)
    ev = evaluate_model(model, held)
    return {**run, "mlm_acc": ev["mlm_acc"], "nsp_acc": ev["nsp_acc"], "mlm_loss": ev["mlm_loss"]}


def run_hf(cfg, init, loader, held, budget) -> dict:
    import torch
    import transformers
    torch.set_num_threads(THREADS)
    hf_cfg = transformers.BertConfig(**{k: v for k, v in cfg.to_dict().items()
                                        if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(hf_cfg)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in init.items()}
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if "decoder" not in k and "position_ids" not in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"weights did not carry over to HF: {missing} {result.unexpected_keys}")
    model.tie_weights()
    model.train()
    names = [(n, p) for n, p in model.named_parameters()]
    no_decay = [p for n, p in names if n.endswith(".bias") or "LayerNorm" in n]
    decay = [p for n, p in names if not (n.endswith(".bias") or "LayerNorm" in n)]
    betas = tuple(DEMO.get("betas", (0.9, 0.999)))
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=DEMO["lr"], betas=betas, eps=1e-6)

    def step(batch):
        t = {k: torch.from_numpy(v) for k, v in batch.items()}
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                    token_type_ids=t["token_type_ids"], labels=t["labels"], next_sentence_label=t["next_sentence_label"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def set_lr(value):
        for group in opt.param_groups:
            group["lr"] = value
    run = timed_training(step, loader, budget, set_lr)
    model.eval()
    mlm_hits = mlm_n = nsp_hits = nsp_n = 0
    mlm_loss = 0.0
    with torch.inference_mode():
        for batch in held:
            t = {k: torch.from_numpy(v) for k, v in batch.items()}
            out = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                        token_type_ids=t["token_type_ids"])
            where = t["labels"] != -100
            logits = out.prediction_logits[where]                              # (N, V) row-major
            targets = t["labels"][where]
            mlm_hits += int((logits.argmax(-1) == targets).sum())
            mlm_loss += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            mlm_n += int(targets.numel())
            nsp_hits += int((out.seq_relationship_logits.argmax(-1) == t["next_sentence_label"]).sum())
            nsp_n += int(t["next_sentence_label"].numel())
    return {**run, "mlm_acc": mlm_hits / mlm_n, "nsp_acc": nsp_hits / nsp_n, "mlm_loss": mlm_loss / mlm_n,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "attn_implementation": getattr(model.config, "_attn_implementation", "?")}


# ============================================================================ the report

def render(r: dict) -> str:
    b, h = r["bertnp"], r["hf"]
    rows = [("bertnp (NumPy, MLM decoder at the masked positions)", b),
            (f"Hugging Face BertForPreTraining (torch {h['torch']}, transformers {h['transformers']}, "
             f"eager mode, attention '{h['attn_implementation']}', decoder at every position)", h)]
    lines = [SECTION, "",
             f"`{r['command']}` on {r['date']}: the demo's recipe ({r['recipe']}), the same data, masks, "
             f"initial weights, optimizer, schedule and BLAS threads ({r['threads']}), and {r['budget']:.0f} s "
             "of training each, one after the other in one process; held-out = the whole bundled held-out "
             f"split ({r['heldout_pairs']} pairs, {r['heldout_tokens']} masked tokens), as `bertnp eval` "
             f"computes it. Load average (1 min): {r['load_before']:.2f} before, {r['load_between']:.2f} "
             f"between, {r['load_after']:.2f} after.", "",
             "| implementation | steps in the budget | s/step | held-out MLM accuracy | held-out MLM loss | held-out NSP accuracy |",
             "|---|---|---|---|---|---|"]
    for name, x in rows:
        lines.append(f"| {name} | {x['steps']:,} | {x['seconds'] / x['steps']:.3f} | {x['mlm_acc']:.3f} | "
                     f"{x['mlm_loss']:.3f} | {x['nsp_acc']:.3f} |")
    lines += ["", f"Unigram baseline (always '{r['baseline_token']}'): MLM accuracy {r['baseline_mlm_acc']:.3f}; "
              "NSP chance 0.5.", ""]
    return "\n".join(lines)


def write_section(text: str, path: Path = RESULTS, section: str = SECTION) -> None:
    """Replace the section headed ``section`` of RESULTS.md (or append it), keep the rest."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == section), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "".join(lines[:start]) + text + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    path.write_text(new, encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=None, help="training seconds for each side (default: "
                   "the demo's training time, its budget less setup and evaluations)")
    p.add_argument("--threads", type=int, default=THREADS, help="BLAS threads for both (2)")
    p.add_argument("--wait-idle", type=float, default=0, metavar="S", help="first wait up to S s for load < 0.5")
    p.add_argument("--cache", default="runs/demo_recipe/cache")
    p.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if args.wait_idle and not wait_idle(args.wait_idle):
        print(f"note: the machine did not become idle (load {loadavg():.2f}); measuring anyway")
    budget = args.budget if args.budget is not None else DEMO.get("train_seconds", 440.0)
    # glibc keeps freed memory for reuse, as bertnp's training loop (which the demo runs) asks; process-
    # wide, so both sides get it. Without it each bertnp step page-faults its activations back in.
    bn.backend.retain_freed_host_memory()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    tok, loader, held, cfg = build_data(cache)
    init = bn.BertForPreTraining(cfg, seed=DEMO["seed"]).state_dict()
    from bertnp.train import unigram_baseline
    specials = [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.unk_token_id]
    top, base = unigram_baseline(loader.dataset.documents, held, specials)
    result = {"command": "python benchmarks/demo_vs_hf.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": time.strftime("%Y-%m-%d"), "threads": THREADS, "budget": budget,
              "recipe": f"{DEMO['preset']} {cfg.num_hidden_layers}x{cfg.hidden_size}, batch {DEMO['batch_size']} x "
                        f"{DEMO['max_seq_length']}, lr {DEMO['lr']:g}, warmup {DEMO['warmup']:g}"
                        + (f", the first {DEMO['phase1_fraction']:.0%} of the steps on sequences of "
                           f"{DEMO['phase1_seq_length']}" if DEMO.get("phase1_seq_length") else ""),
              "heldout_pairs": sum(len(b["input_ids"]) for b in held),
              "heldout_tokens": int(sum((b["labels"] != -100).sum() for b in held)),
              "baseline_token": tok.ids_to_tokens[top], "baseline_mlm_acc": base, "load_before": loadavg()}
    print(f"budget {budget:.0f} s each, {THREADS} threads, load {result['load_before']:.2f}", flush=True)
    result["bertnp"] = run_bertnp(cfg, init, loader, held, budget)
    print("bertnp:", json.dumps(result["bertnp"]), flush=True)
    result["load_between"] = loadavg()
    result["hf"] = run_hf(cfg, init, loader, held, budget)
    print("hf:    ", json.dumps(result["hf"]), flush=True)
    result["load_after"] = loadavg()
    text = render(result)
    print("\n" + text)
    if args.write:
        write_section(text)
        print(f"wrote the section '{SECTION[3:]}' of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
