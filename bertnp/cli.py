"""The ``bertnp`` command line (also ``python -m bertnp``).

    bertnp pretrain --steps 2000 --out runs/mini        pretrain (bundled corpus, 8k WordPiece vocab)
    bertnp pretrain --out runs/mini --resume            continue a run exactly where it stopped
    bertnp tokenizer train --corpus my.txt --vocab-size 8000 --out vocab/
    bertnp fill-mask --model runs/mini/model "The [MASK] of the king."
    bertnp nsp --model runs/mini/model "He went home." "He slept."
    bertnp eval --model runs/mini/model                 held-out MLM / NSP accuracy
    bertnp finetune --model runs/demo/model --train task.tsv   sequence classification (finetune.py)
    bertnp demo                                         the 8-minute demo (make demo; bertnp/demo.py)

Every command has ``--help``. Errors are one line, ``bertnp: error: ...``, exit status 2.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

PROG = "bertnp"

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
    from bertnp.train import TrainConfig
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
    groups = _add_run_options(p, TrainConfig)
    groups["model"].add_argument("--preset", choices=sorted(PRESETS), help="model size (default mini)")
    groups["model"].add_argument("--config", metavar="FILE", help="a config.json instead of a preset")
    train = groups["training"]
    train.add_argument("--grad-accum", type=_positive_int, metavar="K",
                       help="micro-batches per update (1); the update's batch is B x K, its losses exactly "
                       "those of one batch of B x K")
    groups["length"].add_argument("--time-budget", type=_duration, metavar="TIME",
                       help="train for about this long (480, 8m, 1h): the steps are estimated from the speed")
    train.add_argument("--phase1-seq-length", type=_positive_int, metavar="T1",
                       help="BERT's two phases: train the first --phase1-fraction of the steps on sequences of T1 "
                       "tokens (batches scaled to keep the tokens a step), then on --seq-length")
    train.add_argument("--phase1-fraction", type=_float_in(0, 1, low_open=True, high_open=True), metavar="F",
                       help="the share of the steps in phase 1 (with --phase1-seq-length; e.g. 0.6)")
    train.add_argument("--google-adam", action="store_true", default=None,
                       help="Google BERT's AdamW (no bias correction) instead of PyTorch's")
    groups["run"].add_argument("--eval-batches", type=_nonneg_int, metavar="N",
                               help="held-out batches per evaluation (20)")
    from bertnp.distributed import DEFAULT_CHECK_EVERY, DEFAULT_TIMEOUT
    mpi = p.add_argument_group("several processes ('mpiexec -n N bertnp pretrain ...' or srun; bertnp[mpi])",
                               "Each update's batch (--batch-size x --grad-accum) is shared by the ranks: the "
                               "run is the same on any number of them. --out must be a folder every rank sees.")
    mpi.add_argument("--mpi-timeout", type=_float_in(0, low_open=True), default=DEFAULT_TIMEOUT, metavar="SECONDS",
                     help=f"longest wait in one collective before the missing rank is named and the run "
                     f"stops ({DEFAULT_TIMEOUT:g})")
    mpi.add_argument("--check-weights-every", type=_positive_int, default=DEFAULT_CHECK_EVERY, metavar="K",
                     help=f"compare the ranks' weight checksums every K steps ({DEFAULT_CHECK_EVERY})")
    mpi.add_argument("--overlap-allreduce", action="store_true",
                     help="start each layer's gradient all-reduce while backward works on the layer below "
                     "(measured: no gain on CPUs, see benchmarks/RESULTS.md)")
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
    from bertnp.demo import DEMO
    d = sub.add_parser("demo", help="pretrain a small BERT in 8 minutes and show what it learned",
                       description="Train a WordPiece vocabulary and a BERT-tiny-sized model on the bundled corpus "
                       "within 8 minutes (vocabulary, data, training and evaluation all included), then show "
                       "fill-mask predictions on held-out sentences, held-out MLM / NSP accuracy against the "
                       "baselines, a figure, and where the files are (bertnp/demo.py).")
    d.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (runs/demo; replaced)")
    d.add_argument("--time-budget", type=_duration, default=DEMO["time_budget"], metavar="TIME",
                   help=f"the whole run's wall time (default {DEMO['time_budget']:.0f}s = "
                   f"{DEMO['time_budget'] / 60:.0f}m)")
    d.add_argument("--vocab", metavar="PATH", help="use this vocab.txt instead of training one")
    d.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    d.add_argument("--threads", type=_positive_int, metavar="N",
                   help="threads for BLAS and bertnp's CPU operations (default: one per core the load average says is free; "
                   "OPENBLAS_NUM_THREADS set by you wins)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)

    # ---- finetune
    add_finetune_parser(sub)

    # ---- course (bertnp/course/cli.py: release, check, grade)
    from bertnp.course.cli import add_course_parser
    add_course_parser(sub)
    return parser


def _defaults(config_class) -> dict:
    import dataclasses
    return {f.name: f.default for f in dataclasses.fields(config_class)}


def _add_run_options(p, config_class) -> dict:
    """The options every training command has (pretrain and finetune: one loop, one set of flags).
    Their argparse default is None: a fresh run takes the config's default (shown in the help),
    a --resume the run's saved value."""
    d = _defaults(config_class)
    model = p.add_argument_group("model")
    model.add_argument("--dropout", type=_float_in(0, 1, high_open=True), metavar="P",
                       help="dropout probability (default: the model config's, 0.1)")
    model.add_argument("--dtype", choices=("float32", "float64"), help=f"({d['dtype']})")
    train = p.add_argument_group("training")
    train.add_argument("--seq-length", "--max-seq-length", dest="seq_length", type=_positive_int, metavar="T",
                       help=f"tokens per sequence ({d['max_seq_length']})")
    train.add_argument("--batch-size", type=_positive_int, metavar="B", help=f"sequences per batch ({d['batch_size']})")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, metavar="N", help="number of updates")
    train.add_argument("--lr", type=_float_in(0, low_open=True), help=f"peak learning rate ({d['lr']:g})")
    train.add_argument("--warmup", type=_float_in(0), metavar="W",
                       help=f"warmup steps (>= 1) or fraction of the steps (< 1); default {d['warmup']:g}")
    train.add_argument("--weight-decay", type=_float_in(0), metavar="WD",
                       help=f"decoupled weight decay ({d['weight_decay']:g})")
    train.add_argument("--max-grad-norm", type=_float_in(0, low_open=True), metavar="C",
                       help=f"clip the global gradient norm ({d['max_grad_norm']:g})")
    train.add_argument("--seed", type=_nonneg_int, help="seed of data, init and dropout (0)")
    run = p.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", default=d["out_dir"], help=f"output folder ({d['out_dir']})")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its last checkpoint; --lr, --warmup, --max-grad-norm "
                     "and --steps may change from there")
    run.add_argument("--overwrite", action="store_true", help="replace a finished or stopped run in --out")
    run.add_argument("--backend", choices=("numpy", "cupy"), help="numpy (CPU) or cupy (GPU)")
    run.add_argument("--use-kernels", action="store_true", default=None,
                     help="on cupy: the hand-written CUDA kernels of kernels/ for LayerNorm, GELU, attention "
                     "softmax, cross-entropy and AdamW (off by default; no effect on numpy)")
    every = "each epoch" if d["eval_every"] is None else d["eval_every"]
    run.add_argument("--eval-every", type=_positive_int, metavar="N", help=f"evaluate every N steps ({every})")
    run.add_argument("--checkpoint-every", type=_positive_int, metavar="N",
                     help=f"checkpoint every N steps ({d['checkpoint_every'] or 'as --eval-every'})")
    run.add_argument("--log-every", type=_positive_int, metavar="N", help=f"metrics line every N steps ({d['log_every']})")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return {"model": model, "training": train, "length": length, "run": run}


# flags -> config fields, for both training commands (the command's own flags are added to these)
_RUN_FIELDS = dict(dropout="dropout", dtype="dtype", seq_length="max_seq_length", batch_size="batch_size",
                   steps="steps", lr="lr", warmup="warmup", weight_decay="weight_decay",
                   max_grad_norm="max_grad_norm", seed="seed", backend="backend", use_kernels="use_kernels",
                   eval_every="eval_every", checkpoint_every="checkpoint_every", log_every="log_every")


def _run_training(loop_class, args, options: dict, parallel=None):
    """Build the loop from the given options (``--resume``: from the run's saved configuration,
    with the changes a resume may make) and train. Returns (loop, summary). ``parallel``: the
    ranks of a data-parallel run (:class:`bertnp.distributed.DataParallel`), None for one process."""
    from bertnp import checkpoint
    config_class = loop_class.config_class
    runtime = dict(out_dir=args.out, progress=not args.no_progress, overwrite=args.overwrite, resume=args.resume)
    quiet = parallel is not None and not parallel.is_writer
    if not args.resume:
        return _train(loop_class(config_class(**options, **runtime), parallel=parallel))
    run_json = Path(args.out) / "run.json"
    saved = loop_class.saved_options(checkpoint.read_json(run_json)) if run_json.is_file() else {}
    kept = {k: v for k, v in saved.items() if k in config_class.RUNTIME_ONLY}
    kept.update({k: v for k, v in options.items() if k in config_class.RUNTIME_ONLY})
    changes = {k: v for k, v in options.items() if k in config_class.RESUME_CHANGES}
    for key, value in options.items():
        if key not in config_class.RUNTIME_ONLY and key not in changes and key in saved and saved[key] != value \
                and not quiet:
            print(f"note: --resume continues the run as it was started: {key} stays {saved[key]!r} "
                  f"(ignoring {value!r}); a resume may change --lr, --warmup, --max-grad-norm and --steps")
    return _train(loop_class(config_class(**{**kept, **runtime}), changes=changes, parallel=parallel))


def _train(loop):
    return loop, loop.train()


def _missing_action(parser):
    raise CliError(f"'{parser.prog}' needs an action (see '{parser.prog} --help')")


# ------------------------------------------------------------------------------------- commands

def cmd_pretrain(args) -> int:
    from bertnp.distributed import DataParallel
    from bertnp.train import Trainer
    options = _pretrain_options(args)
    # under mpiexec / srun: the ranks (MPI starts here); else None, one process
    parallel = DataParallel.from_environment(timeout=args.mpi_timeout, check_every=args.check_weights_every,
                                             overlap=args.overlap_allreduce)
    args.parallel = parallel
    trainer, summary = _run_training(Trainer, args, options, parallel=parallel)
    if parallel is None or parallel.is_writer:
        _print_summary(summary, trainer)
    return 0


def _pretrain_options(args) -> dict:
    """The TrainConfig options the command line gives (only those given)."""
    options = {field: getattr(args, arg) for arg, field in dict(
        _RUN_FIELDS, corpus="corpus", eval_corpus="eval_corpus", format="corpus_format", vocab="vocab",
        vocab_size="vocab_size", preset="preset", config="model_config", grad_accum="grad_accum",
        time_budget="time_budget", eval_batches="eval_batches", phase1_seq_length="phase1_seq_length",
        phase1_fraction="phase1_fraction").items() if getattr(args, arg) is not None}
    if args.cased:
        options["do_lower_case"] = False
    if args.google_adam:
        options["correct_bias"] = False
    if args.config is not None and args.preset is not None:
        raise CliError("give --preset or --config, not both")
    if args.config is not None and not Path(args.config).is_file():
        raise CliError(f"--config: file not found: '{args.config}'")
    if not args.resume and "steps" not in options and "time_budget" not in options:
        raise CliError("give the length of the run: --steps N or --time-budget TIME")
    return options


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
    result = fill_mask(model, tok, args.text, top_k=args.top_k)
    per_mask = result if isinstance(result[0], list) else [result]      # one [MASK]: a flat list
    for i, preds in enumerate(per_mask, 1):
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
    from bertnp.data import read_corpus
    from bertnp.demo import heldout_evaluation
    from bertnp.train import _corpus_paths
    backend.set_backend(args.backend)
    model, tok = _load_model_and_tokenizer(args.model)
    if args.seq_length > model.config.max_position_embeddings:
        raise CliError(f"--seq-length {args.seq_length} is longer than the model's "
                       f"max_position_embeddings {model.config.max_position_embeddings}")
    docs = None if args.corpus is None else read_corpus(_corpus_paths(args.corpus, "corpus"), args.format)
    # the same function the demo reports with: the same model gives the same figures
    ev = heldout_evaluation(model, tok, docs, seq_length=args.seq_length, batch_size=args.batch_size,
                            seed=args.seed, max_batches=args.max_batches)
    print(f"{ev['sequences']} pairs, {ev['mlm_tokens']} masked tokens ({ev['seconds']:.1f} s)")
    print(f"loss {ev['loss']:.4f} (MLM {ev['mlm_loss']:.4f}, NSP {ev['nsp_loss']:.4f})")
    print(f"MLM accuracy {ev['mlm_acc']:.4f}   unigram baseline {ev['baseline_mlm_acc']:.4f} "
          f"(always '{tok.ids_to_tokens[ev['baseline_token']]}')")
    print(f"NSP accuracy {ev['nsp_acc']:.4f}   (chance 0.5)")
    return 0


def cmd_demo(args) -> int:
    from bertnp.demo import run_demo
    run_demo(out=args.out, time_budget=args.time_budget, vocab=args.vocab, backend=args.backend,
             progress=not args.no_progress, threads=args.threads)
    return 0


# ------------------------------------------------------------------------------------- finetune

def add_finetune_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``finetune`` command to an argparse sub-parser collection (``bertnp finetune``)."""
    from bertnp.finetune import FORMATS, FinetuneConfig
    p = subparsers.add_parser(
        "finetune", help="fine-tune a BERT for text (or text-pair) classification",
        description="Fine-tune BertForSequenceClassification on a TSV, CSV or JSONL file of (text[, text_pair], "
        "label) with AdamW, linear warmup/decay and clipping; reports dev accuracy and macro F1, writes "
        "checkpoints, metrics.jsonl and the model (Hugging Face layout) to --out.",
        epilog="TSV/CSV: 'text<TAB>label' or 'text<TAB>text_pair<TAB>label', or a header row naming the columns "
        "(text/sentence, text_pair/sentence2, label). JSONL: {\"text\": ..., \"text_pair\": ..., \"label\": ...}.")
    data = p.add_argument_group("data")
    data.add_argument("--train", metavar="FILE", help="training examples (.tsv, .csv, .jsonl; .gz allowed)")
    data.add_argument("--dev", metavar="FILE", help="dev examples (default: hold out --dev-fraction of --train)")
    data.add_argument("--dev-fraction", type=_float_in(0, 1, low_open=True, high_open=True), metavar="F",
                      help="share of --train held out when there is no --dev (0.1, stratified)")
    data.add_argument("--format", choices=FORMATS, help="file format (default: from the extension)")
    data.add_argument("--text-column", metavar="NAME", help="header column / JSON key of the text")
    data.add_argument("--text-pair-column", metavar="NAME", help="... of the second text (pair tasks)")
    data.add_argument("--label-column", metavar="NAME", help="... of the label")
    groups = _add_run_options(p, FinetuneConfig)
    model = groups["model"]
    model.add_argument("--model", metavar="DIR", help="pretrained model folder (config.json, model.safetensors, "
                       "vocab.txt), e.g. runs/demo/model or an all-MiniLM-L6-v2 folder")
    model.add_argument("--scratch", action="store_true", help="random weights instead of --model's "
                       "(its config and vocabulary are kept; without --model give --vocab and --preset)")
    model.add_argument("--vocab", metavar="PATH", help="vocab.txt (or a folder with one): default --model's")
    model.add_argument("--preset", help="model size from scratch without --model (mini)")
    model.add_argument("--config", metavar="FILE", help="config.json for a model from scratch")
    model.add_argument("--cased", action="store_true", help="keep case and accents (default: the tokenizer's)")
    groups["training"].add_argument("--epochs", type=_float_in(0, low_open=True), metavar="N",
                                    help="passes over --train (3); --steps overrides it")
    p.set_defaults(func=run_finetune)
    return p


def run_finetune(args) -> int:
    """Run ``bertnp finetune`` from parsed arguments; prints the summary; returns 0. Bad options
    raise ValueError / FileNotFoundError (the CLI prints them as one line)."""
    from bertnp.finetune import Finetuner
    options = {field: getattr(args, arg) for arg, field in dict(
        _RUN_FIELDS, train="train", dev="dev", dev_fraction="dev_fraction", format="format",
        text_column="text_column", text_pair_column="text_pair_column", label_column="label_column",
        model="model", vocab="vocab", preset="preset", config="model_config", epochs="epochs").items()
        if getattr(args, arg) is not None}
    if args.cased:
        options["do_lower_case"] = False
    if args.scratch:
        options["init"] = "scratch"
    if not args.resume:
        if args.train is None:
            raise ValueError("finetune: give --train FILE (or --resume)")
        if args.model is None and not args.scratch:
            raise ValueError("finetune: give --model DIR (a pretrained start), or --scratch with --vocab")
        if args.config is not None and args.model is not None and args.scratch:
            raise ValueError("finetune: give --model or --config for a model from scratch, not both")
    _, summary = _run_training(Finetuner, args, options)
    best, dev = summary.get("best"), summary.get("dev")
    print(f"trained {summary['step']} steps ({summary['epochs']:.2f} epochs) in {summary['train_time']:.0f} s")
    if dev:
        print(f"dev (final):  accuracy {dev['accuracy']:.4f}  macro F1 {dev['f1_macro']:.4f}  loss {dev['loss']:.4f}"
              f"  ({summary['dev_examples']} examples, {len(summary['labels'])} classes)")
    if best:
        print(f"dev (best):   accuracy {best['accuracy']:.4f}  macro F1 {best['f1_macro']:.4f} at step {best['step']}"
              + (f"  -> {summary['best_dir']}" if summary.get("best_dir") else ""))
    if summary.get("model_dir"):
        print(f"model:        {summary['model_dir']}")
    print(f"metrics:      {summary['metrics']}")
    return 0


# ------------------------------------------------------------------------------------- entry point

def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 error, 130 interrupted)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from bertnp import distributed
    if distributed.launched_by_mpi():
        if args.command != "pretrain":
            found = distributed.environment_rank_size()
            if found and found[0] == 0:
                print(f"{PROG}: error: '{args.command}' runs on one process; only 'pretrain' runs on several "
                      "(mpiexec -n N bertnp pretrain ...)", file=sys.stderr)
            return 2
        if distributed.should_supervise():      # this process watches the rank's real work, in a child
            return distributed.supervise([sys.executable, "-m", "bertnp", *argv])
    from bertnp.train import NonFiniteLossError, TrainingInterrupted
    if os.environ.get("BERTNP_DEBUG"):          # full tracebacks for developers
        return args.func(args) or 0
    try:
        return args.func(args) or 0
    except TrainingInterrupted as exc:
        return _fail(args, 130, f"\n{PROG}: {exc}; continue with '{_resume_command(args)}'", every_rank=True)
    except KeyboardInterrupt:
        return _fail(args, 130, f"\n{PROG}: interrupted{_interrupted_hint(args)}")
    except MemoryError:
        return _fail(args, 2, f"{PROG}: error: out of memory{_memory_hint(args)}")
    except (NonFiniteLossError, distributed.DivergenceError) as exc:
        return _fail(args, 2, f"{PROG}: error: {exc}", every_rank=True)
    except (CliError, ValueError, TypeError, OSError, RuntimeError, ImportError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, FileNotFoundError) and not str(exc).strip().startswith(("'", "/")) \
                and exc.filename and str(exc.filename) not in message:
            message = f"{message}: '{exc.filename}'"
        return _fail(args, 2, f"{PROG}: error: {message}")


def _fail(args, status: int, message: str, every_rank: bool = False) -> int:
    """Print ``message`` and return ``status``. Several ranks: an error ``every_rank`` meets at the
    same step (a stop everyone agreed on, a non-finite loss, diverged weights) lets them all finish
    together and rank 0 speaks; any other error is this rank's alone: it says so and ends every rank
    (MPI_Abort), so that none waits for it in a collective."""
    parallel = getattr(args, "parallel", None)
    if parallel is None or not parallel.active:
        print(message, file=sys.stderr)
        return status
    if every_rank:
        parallel.barrier("the other ranks stopping")     # rank 0 may still be writing the checkpoint
        if parallel.is_writer:
            print(message, file=sys.stderr, flush=True)
        return status
    parallel.comm.abort(message.strip().replace(f"{PROG}: error: ", "", 1), code=status)
    return status


def _resume_command(args) -> str:
    import shlex
    return f"bertnp {args.command} --out {shlex.quote(str(args.out))} --resume"


def _interrupted_hint(args) -> str:
    """What to do after Ctrl-C outside the loop's own handling (while the run was being set up)."""
    if args.command not in ("pretrain", "finetune"):
        return ""
    from bertnp.checkpoint import latest_checkpoint
    out = Path(args.out)
    try:
        resumable = (out / "run.json").is_file() or latest_checkpoint(out) is not None
    except (OSError, ValueError):
        resumable = False
    if resumable:
        return f"; continue with '{_resume_command(args)}'"
    return "; nothing was saved: run the same command again"


def _memory_hint(args) -> str:
    """One line on what to make smaller, with the run's values where the command line gave them."""
    if args.command not in ("pretrain", "finetune"):
        return " (a smaller model or input needs less)"
    def now(value):
        return f" (now {value})" if value is not None else ""
    model = "--preset / --config" if args.command == "pretrain" else "--model / --config"
    hint = (f" during {args.command}: reduce --batch-size{now(args.batch_size)}, --seq-length{now(args.seq_length)} "
            f"or the model ({model})")
    if args.command == "pretrain":
        hint += "; --grad-accum K keeps the update's batch with a K times smaller --batch-size"
    return hint


if __name__ == "__main__":
    sys.exit(main())
