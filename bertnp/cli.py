"""The ``bertnp`` command line (also ``python -m bertnp``).

    bertnp pretrain --steps 2000 --out runs/mini        pretrain (bundled corpus, 8k WordPiece vocab)
    bertnp pretrain --out runs/mini --resume            continue a run exactly where it stopped
    bertnp tokenizer train --corpus my.txt --vocab-size 8000 --out vocab/
    bertnp fill-mask --model runs/mini/model "The [MASK] of the king."
    bertnp nsp --model runs/mini/model "He went home." "He slept."
    bertnp eval --model runs/mini/model                 held-out MLM / NSP accuracy
    bertnp finetune --model runs/demo/model --train task.tsv   sequence classification (finetune.py)
    bertnp demo                                         the ~10-minute demo (make demo)

Every command has ``--help``. Errors are one line, ``bertnp: error: ...``, exit status 2.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from pathlib import Path

PROG = "bertnp"

# The demo's run, chosen to learn the most in ~8 minutes of a 2-core CPU (measured on the bundled
# corpus, 8k vocabulary, batches of 32 x 128, no dropout):
#   BERT-mini (L4 H256, dropout .1), 200 s: ~200 updates, still at the unigram baseline (MLM acc 0.056)
#   L4 H128, 480 s, lr 2e-3:          ~1350 updates, still at the unigram baseline (0.067)
#   BERT-tiny (L2 H128), lr 5e-3:     stuck at the unigram baseline; lr 2e-3 learns
#   BERT-tiny, 480 s, lr 2e-3:        ~2500 updates, MLM acc 0.156 (baseline 0.067), NSP acc 0.76
#   tiny with sequences of 64 in batches of 64 learned more slowly per second than 32 x 128.
# No dropout: the run sees each pair a few times, there is little to regularise yet.
DEMO = dict(preset="tiny", vocab_size=8000, max_seq_length=128, batch_size=32, lr=2e-3, warmup=0.1,
            dropout=0.0, time_budget=480.0, eval_every=200, eval_batches=16, checkpoint_every=200,
            log_every=10, seed=0)


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with errors on one line: ``bertnp: error: <what> (see '<command> --help')``."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# ------------------------------------------------------------------------------------- value types

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _float_in(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) \
            and (value < high if high_open else value <= high)
        if not ok:
            lo = "(" if low_open else "["
            hi = ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"expected a number in {lo}{low:g}, {high:g}{hi}, got {text!r}")
        return value
    return parse


def _duration(text: str) -> float:
    """Seconds from '480', '480s', '8m', '1.5h'."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 480, 480s, 8m or 1h, got {text!r}")
    value = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return value


# ------------------------------------------------------------------------------------- the parser

def build_parser() -> argparse.ArgumentParser:
    from bertnp import __version__
    from bertnp.config import PRESETS

    parser = _Parser(prog=PROG, description="BERT pretraining (masked LM + next-sentence prediction) "
                     "written from scratch in NumPy.",
                     epilog="Run 'bertnp COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"bertnp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # ---- pretrain
    p = sub.add_parser("pretrain", help="pretrain a BERT (MLM + NSP) on a corpus",
                       description="Pretrain BertForPreTraining with AdamW, linear warmup/decay and gradient "
                       "clipping. Writes checkpoints, metrics.jsonl, training.png and the final model "
                       "(Hugging Face layout) to --out.")
    data = p.add_argument_group("data and tokenizer")
    data.add_argument("--corpus", nargs="+", metavar="FILE",
                      help="corpus files: one sentence a line, a blank line between documents (.gz allowed); "
                      "default: the bundled English corpus")
    data.add_argument("--eval-corpus", nargs="+", metavar="FILE",
                      help="held-out files (default: the bundled held-out split, or every 20th document)")
    data.add_argument("--format", choices=("bert", "plain"), default=None,
                      help="'bert' (sentence per line) or 'plain' (running text, split into sentences)")
    data.add_argument("--vocab", metavar="PATH", help="vocab.txt (or a folder with one); default: train one")
    data.add_argument("--vocab-size", type=_positive_int, metavar="N", help="size of the trained vocabulary (8000)")
    data.add_argument("--cased", action="store_true", default=None, help="keep case and accents")
    model = p.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), help="model size (default mini)")
    model.add_argument("--config", metavar="FILE", help="a config.json instead of a preset")
    model.add_argument("--dropout", type=_float_in(0, 1, high_open=True), metavar="P",
                       help="dropout probability (default: the config's, 0.1)")
    model.add_argument("--dtype", choices=("float32", "float64"))
    train = p.add_argument_group("training")
    train.add_argument("--seq-length", type=_positive_int, metavar="T", help="tokens per pair (128)")
    train.add_argument("--batch-size", type=_positive_int, metavar="B", help="pairs per micro-batch (32)")
    train.add_argument("--grad-accum", type=_positive_int, metavar="K",
                       help="micro-batches per update (1); the update's batch is B x K")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, metavar="N", help="number of updates")
    length.add_argument("--time-budget", type=_duration, metavar="TIME",
                        help="train for about this long (480, 8m, 1h): the steps are estimated from the speed")
    train.add_argument("--lr", type=_float_in(0, low_open=True), help="peak learning rate (1e-3)")
    train.add_argument("--warmup", type=_float_in(0), metavar="W",
                       help="warmup steps (>= 1) or fraction of the steps (< 1); default 0.1")
    train.add_argument("--weight-decay", type=_float_in(0), metavar="WD", help="decoupled weight decay (0.01)")
    train.add_argument("--max-grad-norm", type=_float_in(0, low_open=True), metavar="C",
                       help="clip the global gradient norm (1.0)")
    train.add_argument("--google-adam", action="store_true", default=None,
                       help="Google BERT's AdamW (no bias correction) instead of PyTorch's")
    train.add_argument("--seed", type=_nonneg_int, help="seed of data, masks, init and dropout (0)")
    run = p.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", default="runs/pretrain", help="output folder (runs/pretrain)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace a finished or stopped run in --out")
    run.add_argument("--backend", choices=("numpy", "cupy"), help="numpy (CPU) or cupy (GPU)")
    run.add_argument("--use-kernels", action="store_true", default=None,
                     help="on cupy: the hand-written CUDA kernels of kernels/ for LayerNorm, GELU, attention "
                     "softmax, cross-entropy and AdamW (off by default; no effect on numpy)")
    run.add_argument("--eval-every", type=_positive_int, metavar="N", help="evaluate every N steps (100)")
    run.add_argument("--eval-batches", type=_nonneg_int, metavar="N", help="held-out batches per evaluation (20)")
    run.add_argument("--checkpoint-every", type=_positive_int, metavar="N", help="checkpoint every N steps (200)")
    run.add_argument("--log-every", type=_positive_int, metavar="N", help="metrics line every N steps (10)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    # ---- tokenizer train
    t = sub.add_parser("tokenizer", help="tokenizer tools ('tokenizer train')",
                       description="Tokenizer tools.")
    tsub = t.add_subparsers(dest="tokenizer_command", metavar="ACTION", parser_class=_Parser)
    tt = tsub.add_parser("train", help="train a WordPiece vocabulary on a corpus",
                         description="Train a WordPiece vocabulary (vocab.txt with [PAD] [UNK] [CLS] [SEP] [MASK]).")
    tt.add_argument("--corpus", nargs="+", metavar="FILE", help="corpus files (default: the bundled corpus)")
    tt.add_argument("--format", choices=("bert", "plain"), default="bert")
    tt.add_argument("--vocab-size", type=_positive_int, default=8000, metavar="N")
    tt.add_argument("--cased", action="store_true", help="keep case and accents")
    tt.add_argument("--out", required=True, metavar="PATH", help="a folder (vocab.txt is written in it) or a .txt file")
    tt.set_defaults(func=cmd_tokenizer_train)
    t.set_defaults(func=lambda args: _missing_action(t))

    # ---- fill-mask
    f = sub.add_parser("fill-mask", help="top-k predictions for each [MASK] in a sentence",
                       description="Predict the tokens behind each [MASK] with a pretrained model.")
    f.add_argument("--model", required=True, metavar="DIR", help="a model folder (config.json, model.safetensors, vocab.txt)")
    f.add_argument("text", help="a sentence with one or more [MASK]")
    f.add_argument("--top-k", type=_positive_int, default=5, metavar="K")
    f.set_defaults(func=cmd_fill_mask)

    # ---- nsp
    n = sub.add_parser("nsp", help="probability that sentence B follows sentence A",
                       description="Next-sentence prediction with a pretrained model.")
    n.add_argument("--model", required=True, metavar="DIR")
    n.add_argument("sentence_a", metavar="A")
    n.add_argument("sentence_b", metavar="B")
    n.set_defaults(func=cmd_nsp)

    # ---- eval
    e = sub.add_parser("eval", help="held-out MLM and NSP loss and accuracy of a model",
                       description="Evaluate a pretrained model on held-out pairs built like the training data "
                       "(static masks, fixed seed). The unigram baseline predicts the most frequent token of the "
                       "evaluation corpus itself.")
    e.add_argument("--model", required=True, metavar="DIR")
    e.add_argument("--corpus", nargs="+", metavar="FILE", help="held-out files (default: the bundled held-out split)")
    e.add_argument("--format", choices=("bert", "plain"), default="bert")
    e.add_argument("--seq-length", type=_positive_int, default=128, metavar="T")
    e.add_argument("--batch-size", type=_positive_int, default=32, metavar="B")
    e.add_argument("--max-batches", type=_positive_int, default=None, metavar="N")
    e.add_argument("--seed", type=_nonneg_int, default=1)
    e.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    e.set_defaults(func=cmd_eval)

    # ---- demo
    d = sub.add_parser("demo", help="pretrain a small BERT in ~10 minutes and show what it learned",
                       description="Train a WordPiece vocabulary and a BERT-tiny-sized model on the bundled corpus "
                       "for about 8 minutes, then show fill-mask predictions on held-out sentences, held-out "
                       "MLM / NSP accuracy against the unigram baseline, and where the files are.")
    d.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (runs/demo; replaced)")
    d.add_argument("--time-budget", type=_duration, default=DEMO["time_budget"], metavar="TIME",
                   help=f"training time (default {DEMO['time_budget']:.0f}s)")
    d.add_argument("--vocab", metavar="PATH", help="use this vocab.txt instead of training one")
    d.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)

    # ---- finetune (bertnp/finetune.py defines its options and runs it)
    from bertnp.finetune import add_finetune_parser
    add_finetune_parser(sub)

    # ---- course (bertnp/course/cli.py: release, check, grade)
    from bertnp.course.cli import add_course_parser
    add_course_parser(sub)
    return parser


def _missing_action(parser):
    raise CliError(f"'{parser.prog}' needs an action (see '{parser.prog} --help')")


# ------------------------------------------------------------------------------------- commands

def _train_config_from_args(args):
    from bertnp.train import TrainConfig
    mapping = dict(corpus="corpus", eval_corpus="eval_corpus", format="corpus_format", vocab="vocab",
                   vocab_size="vocab_size", preset="preset", config="model_config", dropout="dropout",
                   dtype="dtype", seq_length="max_seq_length", batch_size="batch_size", grad_accum="grad_accum",
                   steps="steps", time_budget="time_budget", lr="lr", warmup="warmup",
                   weight_decay="weight_decay", max_grad_norm="max_grad_norm", seed="seed",
                   backend="backend", use_kernels="use_kernels", eval_every="eval_every", eval_batches="eval_batches",
                   checkpoint_every="checkpoint_every", log_every="log_every")
    options = {field: getattr(args, arg) for arg, field in mapping.items() if getattr(args, arg) is not None}
    if args.cased:
        options["do_lower_case"] = False
    if args.google_adam:
        options["correct_bias"] = False
    if args.config is not None and args.preset is not None:
        raise CliError("give --preset or --config, not both")
    if args.config is not None and not Path(args.config).is_file():
        raise CliError(f"--config: file not found: '{args.config}'")
    options.update(out_dir=args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if not args.resume and "steps" not in options and "time_budget" not in options:
        raise CliError("give the length of the run: --steps N or --time-budget TIME")
    if args.resume and "steps" not in options:
        options["steps"] = None
    return TrainConfig(**options)


def cmd_pretrain(args) -> int:
    from bertnp import checkpoint
    from bertnp.train import TrainConfig, Trainer
    config = _train_config_from_args(args)
    if args.resume and (Path(args.out) / "run.json").is_file():
        saved = checkpoint.read_json(Path(args.out) / "run.json")
        given = {k: v for k, v in config.to_dict().items() if k not in TrainConfig.RUNTIME_ONLY
                 and k != "steps" and v != TrainConfig.__dataclass_fields__[k].default}
        for key, value in given.items():
            if key in saved and saved[key] != value:
                print(f"note: --resume continues the run as it was started: {key} stays {saved[key]!r} "
                      f"(ignoring {value!r})")
    trainer = Trainer(config)
    summary = trainer.train()
    _print_summary(summary, trainer)
    return 0


def _print_summary(summary: dict, trainer) -> None:
    ev = summary.get("eval")
    print(f"trained {summary['step']} steps in {summary['train_time']:.0f} s "
          f"({summary['tokens_seen'] / max(summary['train_time'], 1e-9):.0f} tokens/s)")
    if ev:
        print(f"held-out: loss {ev['loss']:.3f}  MLM accuracy {ev['mlm_acc']:.3f} "
              f"(unigram baseline {summary['baseline_mlm_acc']:.3f})  NSP accuracy {ev['nsp_acc']:.3f}")
    if summary.get("model_dir"):
        print(f"model:      {summary['model_dir']}")
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"metrics:    {summary['metrics']}")
    if Path(summary["figure"]).is_file():
        print(f"figure:     {summary['figure']}")


def cmd_tokenizer_train(args) -> int:
    from bertnp.data import read_corpus
    from bertnp.train import _corpus_paths, train_vocab
    if args.corpus is None:
        from bertnp.corpus import bundled_corpus
        docs = read_corpus([bundled_corpus("train")])
    else:
        docs = read_corpus(_corpus_paths(args.corpus, "corpus"), args.format)
    out = Path(args.out)
    path = out if out.suffix == ".txt" else out / "vocab.txt"
    train_vocab(docs, args.vocab_size, path, do_lower_case=not args.cased)
    return 0


def _load_model_and_tokenizer(directory):
    from bertnp.model import BertForPreTraining
    from bertnp.tokenizer import BertTokenizer
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--model: no such folder: '{directory}'")
    model = BertForPreTraining.from_pretrained(directory)
    tokenizer = BertTokenizer.from_pretrained(directory)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"{directory}: vocab.txt has {tokenizer.vocab_size} tokens but the model's "
                         f"vocab_size is {model.config.vocab_size}")
    return model, tokenizer


def cmd_fill_mask(args) -> int:
    from bertnp.inference import fill_mask
    model, tok = _load_model_and_tokenizer(args.model)
    if tok.mask_token not in args.text:
        raise CliError(f"the text must contain {tok.mask_token}, e.g. \"The [MASK] of the king.\"")
    for i, preds in enumerate(fill_mask(model, tok, args.text, top_k=args.top_k), 1):
        print(f"[MASK] #{i}:")
        for pred in preds:
            print(f"  {pred['score']:6.3f}  {pred['token_str']}")
    return 0


def cmd_nsp(args) -> int:
    from bertnp.inference import next_sentence_probability
    model, tok = _load_model_and_tokenizer(args.model)
    p = next_sentence_probability(model, tok, args.sentence_a, args.sentence_b)
    print(f"P(B follows A) = {p:.3f}")
    return 0


def cmd_eval(args) -> int:
    from bertnp import backend
    from bertnp.data import PretrainingDataset, PretrainingLoader, read_corpus
    from bertnp.train import _corpus_paths, evaluate_model, unigram_baseline
    backend.set_backend(args.backend)
    model, tok = _load_model_and_tokenizer(args.model)
    if args.seq_length > model.config.max_position_embeddings:
        raise CliError(f"--seq-length {args.seq_length} is longer than the model's "
                       f"max_position_embeddings {model.config.max_position_embeddings}")
    if args.corpus is None:
        from bertnp.corpus import bundled_corpus
        docs = read_corpus([bundled_corpus("heldout")])
    else:
        docs = read_corpus(_corpus_paths(args.corpus, "corpus"), args.format)
    ds = PretrainingDataset(docs, tok, max_seq_length=args.seq_length,
                            max_predictions_per_seq=max(1, round(0.15 * args.seq_length)),
                            masking="static", seed=args.seed)
    loader = PretrainingLoader(ds, args.batch_size, shuffle=False)
    n = len(loader) if args.max_batches is None else min(args.max_batches, len(loader))
    batches = [loader.next_batch() for _ in range(n)]
    t0 = time.perf_counter()
    ev = evaluate_model(model, batches)
    specials = [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.unk_token_id]
    top, base = unigram_baseline(ds.documents, batches, specials)
    print(f"{ev['sequences']} pairs, {ev['mlm_tokens']} masked tokens ({time.perf_counter() - t0:.1f} s)")
    print(f"loss {ev['loss']:.4f} (MLM {ev['mlm_loss']:.4f}, NSP {ev['nsp_loss']:.4f})")
    print(f"MLM accuracy {ev['mlm_acc']:.4f}   unigram baseline {base:.4f} (always '{tok.ids_to_tokens[top]}')")
    print(f"NSP accuracy {ev['nsp_acc']:.4f}   (chance 0.5)")
    return 0


def _demo_examples(tokenizer, n: int = 6, seed: int = 0):
    """Held-out sentences with one whole word (a single WordPiece token) replaced by [MASK]."""
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


def cmd_demo(args) -> int:
    from bertnp.inference import fill_mask, next_sentence_probability
    from bertnp.train import TrainConfig, Trainer
    t_start = time.perf_counter()
    print(f"bertnp demo: a WordPiece vocabulary ({DEMO['vocab_size']}) and a BERT-{DEMO['preset']} "
          f"trained on the bundled corpus for ~{args.time_budget / 60:.0f} min, "
          f"sequences of {DEMO['max_seq_length']}, batches of {DEMO['batch_size']}, in '{args.out}'")
    options = dict(DEMO)
    options.update(time_budget=args.time_budget, out_dir=args.out, overwrite=True, backend=args.backend,
                   progress=not args.no_progress, vocab=args.vocab)
    trainer = Trainer(TrainConfig(**options))
    summary = trainer.train()
    model, tok = trainer.model, trainer.tokenizer
    model.eval()

    print("\nFill-mask on held-out sentences (never seen in training):")
    for text, truth in _demo_examples(tok):
        preds = [(p["token_str"], p["score"]) for p in fill_mask(model, tok, text, top_k=5)[0]]
        mark = "ok" if preds[0][0] == truth else ("top5" if truth in [t for t, _ in preds] else "")
        print(f"  {text}\n    true: {truth:<12} predicted: " +
              ", ".join(f"{t} ({p:.2f})" for t, p in preds) + (f"   [{mark}]" if mark else ""))

    from bertnp.corpus import bundled_corpus
    from bertnp.data import read_corpus
    held = [d for d in read_corpus([bundled_corpus("heldout")]) if len(d) >= 4]
    a, b = held[0][1], held[0][2]
    other = held[len(held) // 2][3]
    print("\nNext-sentence prediction on held-out text:")
    print(f"  A: {a}\n  B: {b}\n    P(B follows A) = {next_sentence_probability(model, tok, a, b):.3f}  (true next)")
    print(f"  B: {other}\n    P(B follows A) = {next_sentence_probability(model, tok, a, other):.3f}  (random)")

    ev = summary.get("eval") or {}
    train_recs = [r for r in _read_jsonl(trainer.metrics_path) if r.get("split") == "train"]
    print("\nResults")
    if train_recs:
        print(f"  training loss:          {train_recs[0]['loss']:.3f} (first {trainer.config.log_every} steps) "
              f"-> {train_recs[-1]['loss']:.3f} (last)")
    if ev:
        print(f"  held-out MLM accuracy:  {ev['mlm_acc']:.3f}   (unigram baseline, always "
              f"'{tok.ids_to_tokens[trainer.baseline_token]}': {trainer.baseline_acc:.3f})")
        print(f"  held-out NSP accuracy:  {ev['nsp_acc']:.3f}   (chance 0.5)")
        print(f"  held-out loss:          {ev['loss']:.3f} (MLM {ev['mlm_loss']:.3f}, NSP {ev['nsp_loss']:.3f})")
    print(f"  {summary['step']} steps, {summary['tokens_seen']:,} tokens, training {summary['train_time']:.0f} s, "
          f"total {time.perf_counter() - t_start:.0f} s")
    print("\nFiles")
    print(f"  model (Hugging Face layout): {summary.get('model_dir')}")
    print(f"  last checkpoint:             {summary['checkpoint']}")
    print(f"  figure:                      {summary['figure']}")
    print(f"  metrics:                     {summary['metrics']}")
    print(f"\nTry: bertnp fill-mask --model {summary.get('model_dir')} \"And God said, let there be [MASK].\"")
    return 0


def _read_jsonl(path):
    import json
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


# ------------------------------------------------------------------------------------- entry point

def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from bertnp.train import NonFiniteLossError
    if os.environ.get("BERTNP_DEBUG"):          # full tracebacks for developers
        return args.func(args) or 0
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = f"; continue with 'bertnp pretrain --out {out} --resume'" if args.command == "pretrain" else ""
        print(f"\n{PROG}: interrupted{hint}", file=sys.stderr)
        return 130
    except NonFiniteLossError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (CliError, ValueError, TypeError, OSError, RuntimeError, ImportError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, FileNotFoundError) and not str(exc).strip().startswith(("'", "/")) \
                and exc.filename and str(exc.filename) not in message:
            message = f"{message}: '{exc.filename}'"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
