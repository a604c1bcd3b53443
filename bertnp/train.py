"""The training loop -- shared by pretraining (here) and fine-tuning (:mod:`bertnp.finetune`) --
and pretraining itself: progress, evaluation, metrics, checkpoints, exact resume.

    from bertnp.train import TrainConfig, Trainer
    trainer = Trainer(TrainConfig(preset="mini", steps=1000, out_dir="runs/mini"))
    summary = trainer.train()          # or, from a shell: bertnp pretrain --steps 1000 --out runs/mini

One update (:meth:`TrainingLoop.train_step`)::

    zero grads -> count the update's loss denominators on the host (labelled tokens, sequences)
    -> for each of grad_accum micro-batches: forward (its summed losses / the update's counts), backward
    -> clip the global norm (1.0) -> AdamW at the schedule's lr -> lr step

The micro-batches' losses and gradients add up to exactly those of the whole update batch: MLM
normalised by the update's labelled-token count, NSP by its sequence count (not the mean of the
micro-batches' means, Hugging Face Trainer's bug before transformers PR #34191). Nothing is read
from the device during a step: the loss, the accuracy counts and the gradient norm are read
together every ``log_every`` steps, and a non-finite loss or norm stops the run there
(:class:`NonFiniteLossError`) without saving the bad steps.

What a pretraining run writes in ``out_dir``::

    run.json                 the resolved TrainConfig (what --resume reuses)
    vocab.txt                the tokenizer's vocabulary (trained on the corpus unless one is given)
    metrics.jsonl            one JSON object a line: {"split": "train" | "eval", "step": ..., ...}
    training.png             loss and accuracy curves (matplotlib, drawn at each evaluation)
    checkpoints/step-000400/ model.safetensors + config.json, optimizer.safetensors, trainer_state.json
    checkpoints/latest.json  {"step": 400, "dir": "step-000400"}: written last, atomically
    model/                   the final model in Hugging Face's layout (config.json,
                             model.safetensors, vocab.txt): bn.BertForPreTraining.from_pretrained

Exact resume (:mod:`bertnp.checkpoint`): a run killed at any moment leaves its previous checkpoint
whole. A checkpoint holds everything the trajectory depends on: weights, AdamW's moments and step,
the schedule's step, the loader's position (epoch, index; masks and order are pure functions of the
seed) and the model's dropout counter. On NumPy, N steps + resume + N steps give bit-identical
weights to 2N steps straight, even when the first run is killed with SIGKILL at random moments
(``tests/test_faults.py``). Ctrl-C or SIGTERM lets the step in progress finish, writes a checkpoint
of it, and stops; ``--resume`` continues from there. A resume may change the learning rate, the
warmup, the clipping and the number of steps (``changes=``, or the command-line flags).
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from bertnp import backend, checkpoint
from bertnp.checkpoint import latest_checkpoint
from bertnp.cores import CoreReplicas
from bertnp.distributed import DataParallel
from bertnp.optim import AdamW, LinearWarmupDecay, clip_grad_norm

__all__ = ["RunConfig", "TrainConfig", "TrainingLoop", "Trainer", "NonFiniteLossError", "TrainingInterrupted",
           "pretrain", "evaluate_model", "unigram_baseline", "latest_checkpoint"]

IGNORE_INDEX = -100
SAME_ON_EVERY_RANK = ("grad_norm",)   # logged values computed from reduced gradients: not summed over ranks
OVERTIME = 1.25     # a time-budget run stops at 1.25 x its budget even if the step estimate was too low
RETUNE_AT = (0.1, 0.25, 0.5, 0.75, 0.9)   # a time-budget run re-plans at these fractions of its steps
RETUNE_TOLERANCE = 0.05                    # ... when the steps that fit differ by more than 5%


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite; the run stopped without saving."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped training after a completed step, saved in ``checkpoint``."""

    def __init__(self, message: str, signal_name: str, step: int, checkpoint):
        super().__init__(message)
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


# ============================================================================ configuration

def _is_int(v, low: int) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low


def _is_number(v, low: float, low_open: bool = False) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (v > low if low_open else v >= low))


@dataclass
class RunConfig:
    """The options every training run has (saved in ``run.json``; plain JSON types).
    :class:`TrainConfig` (pretraining) and :class:`bertnp.finetune.FinetuneConfig` add their own.

    ``warmup``: a number of steps (>= 1) or a fraction of the steps (< 1). ``dropout`` None keeps
    the model config's. ``eval_every`` / ``checkpoint_every``: steps."""
    max_seq_length: int = 128
    batch_size: int = 32
    steps: int | None = None
    lr: float = 1e-3
    warmup: float = 0.1
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-6
    max_grad_norm: float | None = 1.0
    dropout: float | None = None
    seed: int = 0
    dtype: str = "float32"
    backend: str = "numpy"
    use_kernels: bool = False                       # CUDA kernels (kernels/*.cu) on cupy; same maths
    out_dir: str = "runs/pretrain"
    eval_every: int | None = 100
    checkpoint_every: int | None = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    resume: bool = False
    overwrite: bool = False

    # options that may differ on resume without changing the trajectory
    RUNTIME_ONLY = ("out_dir", "progress", "resume", "overwrite", "backend", "use_kernels", "eval_every",
                    "checkpoint_every", "keep_checkpoints", "log_every")
    # options a resume may change (the trajectory goes on differently from the checkpoint on)
    RESUME_CHANGES = ("lr", "warmup", "max_grad_norm", "steps")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict, source="run.json") -> "RunConfig":
        """Build from a dict (``run.json``): ValueError naming ``source`` and the option."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object of options, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{source}: unknown option '{unknown[0]}'")
        cfg = cls(**data)
        if isinstance(cfg.betas, list):
            cfg.betas = tuple(cfg.betas)
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        for name in ("batch_size", "keep_checkpoints", "log_every"):
            if not _is_int(getattr(self, name), 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("steps", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and not _is_int(value, 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _is_int(self.max_seq_length, 8):
            raise ValueError(f"max_seq_length must be an integer of at least 8, got {self.max_seq_length!r}")
        if not _is_int(self.seed, 0):
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        for name in ("lr", "eps"):
            if not _is_number(getattr(self, name), 0.0, low_open=True):
                raise ValueError(f"{name} must be a number > 0, got {getattr(self, name)!r}")
        for name in ("warmup", "weight_decay"):
            if not _is_number(getattr(self, name), 0.0):
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        if self.max_grad_norm is not None and not _is_number(self.max_grad_norm, 0.0, low_open=True):
            raise ValueError(f"max_grad_norm must be > 0 (or None: no clipping), got {self.max_grad_norm!r}")
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                and all(_is_number(b, 0.0) and b < 1 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.dropout is not None and not (_is_number(self.dropout, 0.0) and self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.backend not in ("numpy", "cupy"):
            raise ValueError(f"backend must be 'numpy' or 'cupy', got {self.backend!r}")
        for name in ("use_kernels", "progress", "resume", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.out_dir, (str, os.PathLike)):
            raise ValueError(f"out_dir must be a folder name, got {self.out_dir!r}")

    def warmup_steps(self, total: int) -> int:
        return int(round(self.warmup * total)) if self.warmup < 1 else min(int(self.warmup), total)


@dataclass
class TrainConfig(RunConfig):
    """Everything that defines a pretraining run (saved as ``run.json``; plain JSON types).

    Data: ``corpus`` files in BERT's format (one sentence a line, blank line between documents;
    ``corpus_format="plain"`` splits running text into sentences); ``None`` is the bundled corpus.
    ``eval_corpus``: held-out files; ``None`` is the bundled held-out split for the bundled corpus,
    else every 20th document of ``corpus`` is held out (none if it has fewer than 10).
    Tokenizer: ``vocab`` (a vocab.txt or a folder with one) or, when None, a WordPiece vocabulary of
    ``vocab_size`` trained on the corpus. Model: ``model_config`` (a config.json) or ``preset``.
    Length: ``steps`` updates, or ``time_budget`` seconds (the number of steps is then estimated
    from the speed of the first steps, so that the schedule ends on time). ``reserve_steps``: a
    time-budget run stops training early enough to leave this many steps' worth of time, at the
    speed measured while training, for work its caller does afterwards (``bertnp demo``: the whole
    held-out evaluation and the figure) -- on a slow or busy machine that work is slow too. The
    update's batch is ``batch_size`` x ``grad_accum`` sequences.
    """
    corpus: list | None = None
    eval_corpus: list | None = None
    corpus_format: str = "bert"
    vocab: str | None = None
    vocab_size: int = 8000
    do_lower_case: bool = True
    preset: str = "mini"
    model_config: str | None = None
    max_predictions_per_seq: int | None = None     # default: round(masked_lm_prob * max_seq_length)
    masked_lm_prob: float = 0.15                    # training masks only; held-out pairs keep BERT's 0.15
    masking: str = "dynamic"
    dupe_factor: int = 1
    grad_accum: int = 1
    time_budget: float | None = None
    reserve_steps: float = 0.0                      # time kept after training, in steps at the measured speed
    correct_bias: bool = True
    # BERT's two phases (the paper: 90% of the steps on sequences of 128, then 512): the first
    # ``phase1_fraction`` of the steps on sequences of ``phase1_seq_length`` tokens, in batches
    # scaled to keep the tokens a step (batch_size x max_seq_length / phase1_seq_length sequences).
    # A short context makes each neighbour a larger share of what attention averages, so the model
    # learns to look at its neighbours early (benchmarks/RESULTS.md, "The demo's recipe").
    phase1_seq_length: int | None = None
    phase1_fraction: float = 0.0
    eval_batches: int = 20
    plot: bool = True                               # redraw training.png at each evaluation (matplotlib)

    RUNTIME_ONLY = RunConfig.RUNTIME_ONLY + ("eval_batches", "plot")

    def validate(self) -> None:
        super().validate()
        for name in ("grad_accum", "dupe_factor", "vocab_size", "eval_every", "checkpoint_every"):
            if not _is_int(getattr(self, name), 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.max_predictions_per_seq is not None and not _is_int(self.max_predictions_per_seq, 1):
            raise ValueError(f"max_predictions_per_seq must be a positive integer, got {self.max_predictions_per_seq!r}")
        if not _is_int(self.eval_batches, 0):
            raise ValueError(f"eval_batches must be an integer >= 0, got {self.eval_batches!r}")
        if not (_is_number(self.masked_lm_prob, 0.0, low_open=True) and self.masked_lm_prob < 1):
            raise ValueError(f"masked_lm_prob must be a number in (0, 1), got {self.masked_lm_prob!r}")
        if self.vocab is None and self.vocab_size < 50:
            raise ValueError(f"vocab_size must be at least 50, got {self.vocab_size}")
        if self.steps is None and self.time_budget is None:
            raise ValueError("give the run's length: steps or time_budget")
        if self.time_budget is not None and not _is_number(self.time_budget, 0.0, low_open=True):
            raise ValueError(f"time_budget must be a positive number of seconds, got {self.time_budget!r}")
        if not _is_number(self.reserve_steps, 0.0):
            raise ValueError(f"reserve_steps must be a number >= 0, got {self.reserve_steps!r}")
        for name in ("do_lower_case", "correct_bias", "plot"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.corpus_format not in ("bert", "plain"):
            raise ValueError(f"corpus_format must be 'bert' or 'plain', got {self.corpus_format!r}")
        if self.masking not in ("static", "dynamic"):
            raise ValueError(f"masking must be 'static' or 'dynamic', got {self.masking!r}")
        for name in ("corpus", "eval_corpus"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple))):
                raise ValueError(f"{name} must be a list of file names, got {value!r}")
        if self.phase1_seq_length is not None:
            if not (_is_int(self.phase1_seq_length, 8) and self.phase1_seq_length < self.max_seq_length):
                raise ValueError(f"phase1_seq_length must be an integer from 8 to max_seq_length - 1 "
                                 f"({self.max_seq_length - 1}), got {self.phase1_seq_length!r}")
            if not (_is_number(self.phase1_fraction, 0.0, low_open=True) and self.phase1_fraction < 1):
                raise ValueError(f"phase1_fraction must be a number in (0, 1) with phase1_seq_length, "
                                 f"got {self.phase1_fraction!r}")
        elif self.phase1_fraction != 0:
            raise ValueError(f"phase1_fraction is {self.phase1_fraction!r} but phase1_seq_length is not given")

# ============================================================================ helpers

def _corpus_paths(paths, what: str) -> list[Path]:
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise FileNotFoundError(f"{what} file not found: '{path}'")
        if not path.is_file():
            raise ValueError(f"{what} is not a file: '{path}'")
        if not os.access(path, os.R_OK):
            raise PermissionError(f"{what} file is not readable: '{path}'")
        out.append(path)
    return out


def read_documents(config: TrainConfig, log: Callable = print) -> tuple[list, list]:
    """(train documents, held-out documents), each a list of lists of sentences."""
    from bertnp.data import read_corpus
    if config.corpus is None:
        from bertnp.corpus import bundled_corpus
        train = read_corpus([bundled_corpus("train")])
        heldout = read_corpus([bundled_corpus("heldout")]) if config.eval_corpus is None else None
    else:
        train = read_corpus(_corpus_paths(config.corpus, "corpus"), config.corpus_format)
        heldout = None
    if config.eval_corpus is not None:
        heldout = read_corpus(_corpus_paths(config.eval_corpus, "eval corpus"), config.corpus_format)
    elif heldout is None:
        if len(train) >= 10:     # every 20th document, at least 2 (NSP needs two documents)
            picked = set(range(19, len(train), 20)) or {len(train) - 1}
            if len(picked) < 2:
                picked = {len(train) - 2, len(train) - 1}
            heldout = [d for i, d in enumerate(train) if i in picked]
            train = [d for i, d in enumerate(train) if i not in picked]
        else:
            log(f"note: the corpus has only {len(train)} documents: no held-out evaluation "
                "(give --eval-corpus)")
            heldout = []
    if len(train) < 2:
        raise ValueError(f"corpus: need at least 2 documents (blank line between documents), got {len(train)}")
    return train, heldout


def train_vocab(documents, vocab_size: int, path, do_lower_case: bool = True, log: Callable = print,
                show_progress: bool = True) -> Path:
    """Train a WordPiece vocabulary (:func:`bertnp.wordpiece_trainer.train_wordpiece`) on the
    documents' sentences and write it to ``path`` atomically."""
    from bertnp.wordpiece_trainer import train_wordpiece
    text = "\n".join(s for doc in documents for s in doc)    # one text: no sentence is taken for a file name
    t0 = time.perf_counter()
    tokens = train_wordpiece(text, vocab_size=vocab_size, do_lower_case=do_lower_case,
                             show_progress=show_progress)
    path = Path(path)
    body = "".join(t + "\n" for t in tokens)
    checkpoint.atomic_write(path, lambda tmp: Path(tmp).write_text(body, encoding="utf-8"))
    log(f"trained a WordPiece vocabulary of {len(tokens)} tokens in {time.perf_counter() - t0:.1f} s -> {path}")
    return path


def load_tokenizer(vocab, do_lower_case: bool = True):
    """A BertTokenizer from a vocab.txt file or a folder holding one."""
    from bertnp.tokenizer import BertTokenizer
    path = Path(vocab)
    if path.is_dir():
        return BertTokenizer.from_pretrained(path)
    if not path.exists():
        raise FileNotFoundError(f"vocab file not found: '{path}'")
    return BertTokenizer(str(path), do_lower_case=do_lower_case)


def unigram_baseline(train_documents, batches, special_ids=()) -> tuple[int, float]:
    """(most frequent training token id, accuracy of always predicting it on the batches' labels).

    ``train_documents``: token-id documents (``PretrainingDataset.documents``)."""
    # TASK 5.7 unigram_baseline: the most frequent token of the training text, scored on the labelled positions (lesson 12)
    counts = Counter()
    for doc in train_documents:
        for sentence in doc:
            counts.update(sentence)
    for s in special_ids:
        counts.pop(s, None)
    top = counts.most_common(1)[0][0] if counts else 0
    hits = total = 0
    for b in batches:
        labels = b["labels"][b["labels"] != IGNORE_INDEX]
        hits += int((labels == top).sum())
        total += labels.size
    # END TASK 5.7
    return int(top), hits / max(total, 1)


def _quiet(*_):
    pass


def _rows(batch: dict) -> int:
    """Sequences in a host batch (its arrays share axis 0)."""
    return len(next(iter(batch.values())))


def _batch_counts(out, batch) -> dict:
    """Correct / total MLM and NSP predictions of one forward (host integers)."""
    counts = _device_counts(out, batch)
    return {k: int(backend.to_host(v)) if k.endswith("_correct") else v for k, v in counts.items()}


def _device_counts(out, batch) -> dict:
    """Like :func:`_batch_counts`, but the correct counts stay 0-d arrays on the device (reading
    them would make the host wait for the GPU); the totals come from the host batch."""
    labels = batch["labels"]
    targets = labels.reshape(-1)[labels.reshape(-1) != IGNORE_INDEX]             # (N,) row-major, as the logits
    mlm_correct = (out.prediction_logits.argmax(axis=-1) == backend.to_device(targets)).sum()
    nsp_correct = (out.seq_relationship_logits.argmax(axis=-1)
                   == backend.to_device(batch["next_sentence_label"])).sum()
    return {"mlm_correct": mlm_correct, "mlm_total": int(targets.size),
            "nsp_correct": nsp_correct, "nsp_total": int(batch["next_sentence_label"].size)}


def evaluate_model(model, batches, cores=None) -> dict:
    """Mean loss, MLM and NSP loss, MLM and NSP accuracy of ``model`` (eval mode) on ``batches``.
    ``cores``: a :class:`bertnp.cores.CoreReplicas` of ``model``, to run each batch as a share of its
    rows per core (the sums below add the shares up exactly as they add the batches up)."""

    def one(member, batch) -> tuple:
        out = member(**batch)
        c = _batch_counts(out, batch)
        # the batch's (or share's) mean losses back to sums: the means are over all predicted tokens
        return c, float(out.mlm_loss) * c["mlm_total"], float(out.nsp_loss) * c["nsp_total"]

    was_training = model.training
    model.eval()
    sums = Counter()
    try:
        for b in batches:
            parts = cores.run(b, one, gradients=False) if cores is not None else [one(model, b)]
            for counts, mlm_sum, nsp_sum in parts:
                sums.update(counts)
                sums["mlm_loss"] += mlm_sum
                sums["nsp_loss"] += nsp_sum
    finally:
        model.train(was_training)
    mlm_n, nsp_n = max(sums["mlm_total"], 1), max(sums["nsp_total"], 1)
    mlm_loss, nsp_loss = sums["mlm_loss"] / mlm_n, sums["nsp_loss"] / nsp_n
    return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
            "mlm_acc": sums["mlm_correct"] / mlm_n, "nsp_acc": sums["nsp_correct"] / nsp_n,
            "mlm_tokens": sums["mlm_total"], "sequences": sums["nsp_total"]}




# ============================================================================ the loop both kinds of training share

class TrainingLoop(abc.ABC):
    """The training loop of :class:`Trainer` (pretraining) and :class:`bertnp.finetune.Finetuner`.

    It owns what every run does the same way: the run folder (``run.json``, ``metrics.jsonl``,
    checkpoints, resume, leftovers of a killed write), one update (:meth:`train_step`: micro-batches,
    exact loss normalisation, clipping, AdamW, schedule; nothing read from the device), the
    deferred reads and the non-finite guard (:meth:`read_pending`), the cadence of logging,
    evaluation and checkpoints, the progress bar, and a clean stop on Ctrl-C / SIGTERM.

    A subclass builds its data, model, optimizer and schedule in :meth:`_build` and says what a
    batch is: :meth:`_next_update` (the update's host micro-batches), :meth:`_update_totals` (its
    loss denominators, counted on the host), :meth:`_forward_backward` (one micro-batch's forward and
    backward; returns the 0-d device values to sum), :meth:`_window_record` (a metrics line),
    :meth:`evaluate`, and its own checkpoint state (:meth:`_extra_state`, :meth:`_load_extra_state`).

    ``config.resume=True`` continues the run in ``config.out_dir`` from its latest checkpoint with
    the configuration saved there (``run.json``); ``changes`` (``{"lr": ..., "warmup": ...,
    "max_grad_norm": ..., "steps": ...}``) changes those settings from the checkpoint on, with a
    note of what changed (a larger ``config.steps`` does the same, as before).
    """
    config_class = RunConfig
    command = "train"                      # the ``bertnp`` command, for the advice in messages
    description = "train"                  # the progress bar's label
    eval_split = "eval"                    # the "split" of evaluation records in metrics.jsonl
    OUTPUTS = ("checkpoints", "model", "metrics.jsonl", "run.json")   # what --overwrite deletes
    STATE_FIELDS: dict = {}                # the subclass's own trainer_state.json fields (see checkpoint)
    DEVICE_KEYS = ("loss", "grad_norm")    # per-step values that stay on the device until read_pending
    COUNT_KEYS: tuple = ()                 # of those, the integer counts

    supports_parallel = False              # a subclass that shares its batches between ranks says so
    cores: CoreReplicas | None = None      # a subclass whose micro-batches' rows go to the CPU cores sets it

    def __init__(self, config: RunConfig, log: Callable[[str], None] = print, *,
                 changes: Mapping | None = None, parallel: DataParallel | None = None):
        # data parallelism (bertnp.distributed): rank 0 alone prints and writes; one process is rank 0 of 1
        self.parallel = parallel if parallel is not None else DataParallel(None)
        if self.parallel.active and not self.supports_parallel:
            raise ValueError(f"bertnp {self.command} runs on one process: only pretraining is data parallel")
        self.writes = self.parallel.is_writer
        self.log = log if self.writes else _quiet
        self.parallel.log = self.log
        # a time budget covers the whole run: vocabulary, data, evaluations and checkpoints included
        self._wall_start = time.perf_counter()
        self._setup_time = None                    # seconds before the first step (vocabulary, data)
        config = dataclasses.replace(config)
        self.out = out = Path(config.out_dir)
        if self.parallel.active:                   # rank 0 makes the folder; every rank must see it
            self.parallel.share_folder(out, lambda: checkpoint.check_writable(out))
        self.resumed_from = None
        self.resume_changes: dict = {}
        if config.resume:
            config = self._resume_config(config, dict(changes or {}))
        elif changes:
            raise ValueError("changes: only a resumed run (resume=True) takes changes")
        config.validate()
        self.parallel.check_config(config, resumed=config.resume)
        self.config = config
        if self.writes:
            checkpoint.check_writable(out)         # a read-only --out fails now, not after the work
            if not config.resume:
                self._clear_folder(config.overwrite)
            for folder in (out, out / "checkpoints"):  # what a write killed mid-way left behind
                checkpoint.remove_temporary(folder)
        backend.set_backend(config.backend)
        self.parallel.setup_device()               # one GPU per rank, before anything is allocated
        if config.backend == "numpy":
            backend.retain_freed_host_memory()     # no page faults re-allocating activations each step
        self.step = 0
        self.train_time = 0.0
        self.last_eval: dict | None = None
        self.last_checkpoint: Path | None = None
        self.truncated = False                     # stopped early (a time budget's hard limit)
        self._pending: list[dict] = []             # steps whose device values are not read yet
        self._read_steps: list[dict] = []          # steps read, not yet in the metrics
        self._stop_signal = None                   # set by Ctrl-C / SIGTERM during train()
        self._stop_agreed = False                  # several ranks: a stop every rank has heard of
        if self.parallel.active:
            self.log(self.parallel.describe())     # a collective: every rank takes part
        self._build()
        self.parallel.attach(self.model)           # several ranks: the gradients become one flat buffer
        self.parallel.prepare_model(self.model)
        if self.resumed_from is not None:
            self._load_checkpoint(self.resumed_from)
        elif self.writes:
            checkpoint.write_json(self.out / "run.json", self._run_record())
            checkpoint.truncate_metrics(self.metrics_path, -1)
        if self.resume_changes and self.writes:
            checkpoint.write_json(self.out / "run.json", self._run_record())   # a later resume keeps them

    # ------------------------------------------------------------------ the run folder
    def _resume_config(self, given: RunConfig, changes: dict) -> RunConfig:
        """The saved configuration, with the runtime options and the requested changes of ``given``."""
        out = self.out
        run_json = out / "run.json"
        if not run_json.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint and no run.json in '{out}': nothing to resume "
                                    "(start the run without --resume)")
        saved = self._config_from_run_record(checkpoint.read_json(run_json), run_json)
        try:
            saved.validate()
        except ValueError as exc:
            raise ValueError(f"{run_json}: {exc}") from None
        for name in saved.RUNTIME_ONLY:
            setattr(saved, name, getattr(given, name))
        saved.resume = True
        if given.steps is not None and "steps" not in changes:
            changes["steps"] = given.steps
        for name, value in changes.items():
            if name not in saved.RESUME_CHANGES:
                raise ValueError(f"changes: a resume may change {', '.join(saved.RESUME_CHANGES)}, not {name!r}")
            if value != getattr(saved, name):
                self.resume_changes[name] = (getattr(saved, name), value)
                setattr(saved, name, value)
        self.resumed_from = checkpoint.latest_checkpoint(out)
        if self.resumed_from is None:
            self.log(f"note: '{out}' has no checkpoint yet: the run starts again from step 0 "
                     "with its saved settings")
            if self.writes:
                self._clear_folder(overwrite=True, keep=("run.json",))
        return saved

    def _clear_folder(self, overwrite: bool, keep=()) -> None:
        """Delete a previous run's outputs (``overwrite``), or refuse to mix two runs in one folder."""
        out = self.out
        if not overwrite and ((out / "checkpoints").exists() or (out / "run.json").exists()):
            raise FileExistsError(f"'{out}' already holds a run: use --resume to continue it, "
                                  "--overwrite to start again, or another --out")
        for name in self.OUTPUTS:
            target = out / name
            if name in keep:
                continue
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    @classmethod
    def saved_options(cls, record) -> dict:
        """The configuration's options in a ``run.json`` record (empty if it holds none)."""
        return record if isinstance(record, dict) else {}

    def _config_from_run_record(self, data, path) -> RunConfig:
        """The configuration in ``run.json`` (pretraining: the config's dict itself)."""
        return self.config_class.from_dict(data, source=path)

    def _run_record(self) -> dict:
        """What ``run.json`` holds."""
        return self.config.to_dict()

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _write_metrics(self, record: dict) -> None:
        if not self.writes:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ what a subclass provides
    total_steps: int

    @abc.abstractmethod
    def _build(self) -> None:
        """Build data, tokenizer, model, optimizer, schedule; set ``total_steps``."""

    @abc.abstractmethod
    def _next_update(self) -> list:
        """The host micro-batches of the next update."""

    @abc.abstractmethod
    def _update_totals(self, batches) -> dict:
        """Host counts of the whole update: its loss denominators and what the metrics count."""

    @abc.abstractmethod
    def _forward_backward(self, batch, totals, model=None) -> dict:
        """Forward and backward of one micro-batch (or of a share of its rows, on ``model``, a core
        replica of ``self.model``), its losses divided by the update's ``totals``; returns the 0-d
        device values the update sums (loss parts, correct counts)."""

    @abc.abstractmethod
    def _window_record(self, window: Counter, lr: float) -> dict:
        """A metrics line from a window of steps' summed values, at learning rate ``lr``."""

    def evaluate(self) -> dict:
        return {}

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict, path: Path) -> None:
        pass

    def _after_evaluation(self, result: dict, say: Callable[[str], None]) -> None:
        pass

    def _postfix(self, record: dict) -> dict:
        return {"loss": f"{record['loss']:.3f}"}

    def _retune(self) -> bool:
        """A subclass may move the run's end while training (a time budget); True if it did."""
        return False

    def _over_budget(self, last: bool) -> bool:
        return False

    def _summary(self) -> dict:
        return {}

    # ------------------------------------------------------------------ hooks for data parallelism
    def _global_totals(self, totals: dict) -> dict:
        """The update's counts over every process. One process: its own. Several: all-reduced here,
        before any forward, so every rank divides by the same counts. A Ctrl-C / SIGTERM travels with
        them: every rank learns of it at the same step, and they all stop after it."""
        if not self.parallel.active:
            return totals
        counts = self.parallel.allreduce_counts(dict(totals, stop_requests=int(self._stop_signal is not None)),
                                                f"the counts of step {self.step + 1}")
        self._stop_agreed = counts.pop("stop_requests") > 0
        return counts

    def _reduce_gradients(self, grads: dict) -> None:
        """Sum the gradients of every process, in place. One process: nothing to do. Several: one
        all-reduce between backward and clipping; each rank's gradients are already divided by the
        global counts, so the sum is the whole update's gradient."""
        self.parallel.reduce_gradients(self.step + 1)

    def _stop_requested(self) -> bool:
        return self._stop_agreed if self.parallel.active else self._stop_signal is not None

    def _skip_micro_batch(self) -> dict:
        """A rank whose share of a micro-batch is empty (an epoch's short last batch): nothing to
        compute, zeros to add. The model counts its training forwards with dropout (the masks' seed
        depends on the count); this rank counts one too, so every rank's count stays the same."""
        model, c = self.model, self.model.config
        if model.training and (c.hidden_dropout_prob > 0 or c.attention_probs_dropout_prob > 0):
            model.forward_count += 1
        xp = backend.xp()
        return {k: xp.zeros((), dtype=xp.float64) for k in self.DEVICE_KEYS if k not in SAME_ON_EVERY_RANK}

    # ------------------------------------------------------------------ one update
    def train_step(self) -> dict:
        """One optimizer update.

        Nothing is read from the device here: on CuPy every such read (``float(loss)``) makes the
        host wait for the GPU, and one between forward and backward would stall it every step.
        The loss, its parts, the correct-prediction counts and the gradient norm come back as 0-d
        device arrays; :meth:`read_pending` reads them, all at once, every ``log_every`` steps
        (and before an evaluation or a checkpoint), and raises NonFiniteLossError there."""
        c, model = self.config, self.model
        model.train()
        model.zero_grad()
        batches = [self.parallel.share(b) for b in self._next_update()]   # this rank's rows (all of them: 1 rank)
        totals = self._global_totals(self._update_totals(batches))     # host integers: no device read
        sums: dict = {}
        self.parallel.begin_update(sum(1 for b in batches if _rows(b)))
        # a non-finite loss is found later, in read_pending: NumPy must not warn about it meanwhile
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for batch in batches:
                if not _rows(batch):
                    contributions = [self._skip_micro_batch()]
                elif self.cores is not None and len(self.cores.shares(_rows(batch))) > 1:
                    # the rows shared out over the CPU cores, a model replica each (bertnp.cores)
                    contributions = self.cores.run(batch, lambda model, share: self._forward_backward(share, totals, model))
                else:
                    contributions = [self._forward_backward(batch, totals)]
                for contribution in contributions:
                    for key, value in contribution.items():
                        sums[key] = value if key not in sums else sums[key] + value   # device arithmetic
            grads = model.grads
            self._reduce_gradients(grads)
            norm = clip_grad_norm(grads, c.max_grad_norm, sync=False) if c.max_grad_norm else None
            lr = self.optimizer.lr
            self.optimizer.step()
        self.schedule.step()
        self.step += 1
        record = {"step": self.step, **sums, "grad_norm": norm, "lr": lr, **totals}
        self._pending.append(record)
        return record

    def read_pending(self) -> None:
        """Read the device values of the steps not read yet, in one transfer (one host
        synchronisation), into host records for :meth:`take_read_steps`. NonFiniteLossError at
        the first step whose loss or gradient norm is not finite: that step and the ones after
        it stay unread, so a later save_checkpoint is refused too (their weights are not trusted)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        xp = backend.xp()
        keys = [k for k in self.DEVICE_KEYS if pending[0].get(k) is not None]
        stacked = xp.stack([xp.asarray(m[k], dtype=xp.float64) for m in pending for k in keys])
        values = backend.to_host(stacked).reshape(len(pending), len(keys))   # the one sync
        # several ranks: each holds its share of the losses and counts; the sums are the update's
        values = self.parallel.global_values(values, [k not in SAME_ON_EVERY_RANK for k in keys], pending[-1]["step"])
        for i, (m, row) in enumerate(zip(pending, values)):
            host = dict(m, **{k: float(v) for k, v in zip(keys, row)})
            for key in self.COUNT_KEYS:
                host[key] = int(host[key])
            for what, key in (("loss", "loss"), ("gradient norm", "grad_norm")):
                if host.get(key) is not None and not math.isfinite(host[key]):
                    self._pending = pending[i:]
                    self._non_finite(what, host[key], host["step"], host["lr"])
            self._read_steps.append(host)

    def take_read_steps(self) -> list[dict]:
        """The host records of the steps read so far, handed over once (to the metrics)."""
        steps, self._read_steps = self._read_steps, []
        return steps

    def _non_finite(self, what: str, value, step: int, lr: float) -> None:
        c = self.config
        lower = f"{c.lr / 4:.3g}"
        out = shlex.quote(str(self.out))
        if self.last_checkpoint is not None:
            advice = (f"the last good checkpoint is '{self.last_checkpoint}' (step {self._checkpoint_step()}); "
                      f"continue from it with a lower learning rate (now {c.lr:g}), e.g. "
                      f"'bertnp {self.command} --out {out} --resume --lr {lower}', and check the data")
        else:
            advice = (f"no checkpoint was written yet: start again with a lower learning rate (now {c.lr:g}), "
                      f"e.g. the same command with '--lr {lower} --overwrite', and check the data")
        raise NonFiniteLossError(f"{what} is {value} at step {step} (lr {lr:.3g}): training stopped, "
                                 f"nothing saved after step {self._checkpoint_step()}; {advice}")

    def _checkpoint_step(self) -> int:
        return checkpoint.checkpoint_step(self.last_checkpoint) if self.last_checkpoint is not None else 0

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-NNNNNN`` atomically, point ``latest.json`` at it, delete the
        checkpoints beyond ``keep_checkpoints``. Refused (NonFiniteLossError) when a step since
        the last read had a non-finite loss: a broken model is never saved."""
        self.read_pending()
        state = {"version": checkpoint.STATE_VERSION, "step": self.step, "schedule": self.schedule.state_dict(),
                 "model_rng": {"dropout_seed": self.model.dropout_seed, "forward_count": self.model.forward_count},
                 "train_time": self.train_time, "last_eval": self.last_eval, "backend": backend.get_backend(),
                 "world_size": self.parallel.size, **self._extra_state()}
        if not self.writes:                       # rank 0 writes it; the others know where
            self.last_checkpoint = self.out / "checkpoints" / checkpoint.step_folder_name(self.step)
            return self.last_checkpoint
        self.last_checkpoint = checkpoint.save_checkpoint(self.out, self.step, self.model, self.optimizer, state,
                                                          keep=self.config.keep_checkpoints)
        return self.last_checkpoint

    def _load_checkpoint(self, path: Path) -> None:
        required = {"last_eval": "object or null", **self.STATE_FIELDS}
        state = checkpoint.load_checkpoint(path, self.model, self.optimizer, required)
        where = path / checkpoint.STATE_FILE
        try:
            self.schedule.load_state_dict(state["schedule"])
            self._load_extra_state(state, path)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        self.step = state["step"]
        if self.step > self.total_steps:
            raise ValueError(f"{where}: field 'step' is {self.step}, beyond the run's {self.total_steps} steps")
        self.train_time = float(state["train_time"])
        self.last_eval = state["last_eval"]
        self.last_checkpoint = path
        if self.writes:
            damaged = checkpoint.truncate_metrics(self.metrics_path, self.step)   # drop what the dead run wrote later
            if damaged:
                self.log(f"note: {self.metrics_path}: dropped {damaged} damaged line(s) (cut short, not JSON or not UTF-8)")
        self.parallel.prepare_model(self.model)    # each rank's own dropout seed again
        saved_size = state.get("world_size", 1)
        if saved_size != self.parallel.size:
            self.log(f"note: the checkpoint was written by {saved_size} process(es), this run has {self.parallel.size}: "
                     "the same update batches and normalisation, so the same gradients up to rounding "
                     "(dropout masks, drawn per rank, differ)")
        self._apply_resume_changes()
        if self.step >= self.total_steps:
            self.log(f"'{self.out}' is a complete run: step {self.step} of {self.total_steps} "
                     f"(model in '{self.out / 'model'}'). To train it further, give a longer run: "
                     f"bertnp {self.command} --out {self.out} --resume --steps N, with N > {self.step} "
                     "(the learning-rate schedule is stretched to N steps)")
        else:
            self.log(f"resumed from '{path}' at step {self.step} of {self.total_steps}")

    def _apply_resume_changes(self) -> None:
        """Set the schedule (and the loop) to the settings a resume changed, and say what changed."""
        c, schedule = self.config, self.schedule
        if "steps" in self.resume_changes:
            self.total_steps = schedule.total_steps = c.steps
        if "warmup" in self.resume_changes or schedule.warmup_steps > schedule.total_steps:
            schedule.warmup_steps = c.warmup_steps(schedule.total_steps)
        if "lr" in self.resume_changes:
            schedule.base_lr = float(c.lr)
        self.optimizer.lr = schedule.lr_at(schedule.last_step)
        for name, (old, new) in self.resume_changes.items():
            what = {"steps": "the learning-rate schedule now ends there",
                    "warmup": f"{schedule.warmup_steps} warmup steps",
                    "lr": f"the next update's lr is {self.optimizer.lr:.3g}",
                    "max_grad_norm": "clipping" if new else "no clipping"}[name]
            self.log(f"note: resuming with {name}={new!r} instead of {old!r} from step {self.step} on ({what})")

    def _save_model_dir(self, name: str) -> Path:
        """The model in Hugging Face's layout with its tokenizer: ``out_dir/name``."""
        def write(tmp: Path):
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        if not self.writes:
            return self.out / name
        return checkpoint.atomic_directory(self.out / name, write)

    def save_final(self) -> Path:
        """The trained model in Hugging Face's layout, with the tokenizer: ``out_dir/model``."""
        return self._save_model_dir("model")

    # ------------------------------------------------------------------ stopping on a signal
    @contextlib.contextmanager
    def _stop_on_signals(self):
        """While training, Ctrl-C (SIGINT) and SIGTERM ask the loop to stop after the step in
        progress (a half-done AdamW update would leave weights no checkpoint can describe); a
        second Ctrl-C stops at once. Only the main thread can receive signals."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._stop_signal = None

        def request_stop(signum, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt             # asked twice: stop now, save nothing
            self._stop_signal = signum
            print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
                  "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        signals = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
        previous = {s: signal.signal(s, request_stop) for s in signals}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop_now(self) -> None:
        """Save a checkpoint of the last completed step (unless there is one), then raise
        TrainingInterrupted: ``--resume`` continues exactly from there."""
        name = signal.Signals(self._stop_signal).name if self._stop_signal is not None else "a signal to another rank"
        self._stop_signal, self._stop_agreed = None, False
        if self.last_checkpoint is None or self._checkpoint_step() != self.step:
            self.save_checkpoint()                # NonFiniteLossError if a step since the last read was bad
        raise TrainingInterrupted(f"{name} at step {self.step}: saved '{self.last_checkpoint}'",
                                  name, self.step, self.last_checkpoint)

    # ------------------------------------------------------------------ the loop
    def train(self, stop_at: int | None = None) -> dict:
        """Train until ``total_steps`` (or ``stop_at``, for a run that pauses), logging,
        evaluating and checkpointing on the way; save the final model when the run is complete."""
        c = self.config
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        bar = None
        if self.parallel.active:                  # every rank starts from the same weights (or says which does not)
            self.parallel.check_weights(self.model.parameters(), self.step)
        if c.progress and self.step < end and self.writes:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=self.step, desc=self.description, unit="step", dynamic_ncols=True,
                       file=sys.stderr)
        say = bar.write if bar is not None else self.log
        log = self.log
        if bar is not None and log is print:        # notes on their own line, not squeezed onto the bar
            self.log = lambda message: bar.write(str(message), file=sys.stdout)
        if self._setup_time is None:
            self._setup_time = self._budget_elapsed() - self.train_time
        window = Counter()
        try:
            with self._stop_on_signals():
                while self.step < end:
                    if self._stop_requested():
                        self._stop_now()
                    t0 = time.perf_counter()
                    self.train_step()
                    if self.parallel.active and self.step % self.parallel.check_every == 0:
                        self.parallel.check_weights(self.model.parameters(), self.step)
                    dt = time.perf_counter() - t0
                    self.train_time += dt
                    window["time"] += dt
                    if bar is not None:
                        bar.update(1)
                    if stop_at is None and self._retune():
                        end = self.total_steps
                        if bar is not None:
                            bar.total = end
                            bar.refresh()
                    last = self.step == end
                    log_now = self.step % c.log_every == 0 or last
                    eval_now = self._can_evaluate() and (self.step % self.eval_every == 0 or last)
                    over = self._over_budget(last)
                    save_now = self.step % self.checkpoint_every == 0 or last or over
                    if not (log_now or eval_now or save_now):
                        continue                            # the device values wait: no synchronisation
                    t0 = time.perf_counter()
                    self.read_pending()                     # one host sync; raises if a loss was not finite
                    steps = self.take_read_steps()
                    dt = time.perf_counter() - t0           # the wait for the GPU belongs to the steps
                    self.train_time += dt
                    window["time"] += dt
                    for m in steps:
                        for key, value in m.items():
                            if key not in ("step", "lr", "grad_norm") and isinstance(value, (int, float)):
                                window[key] += value
                        window["grad_norm"] += m["grad_norm"] or 0.0
                        window["n"] += 1
                    if log_now:
                        rec = self._window_record(window, steps[-1]["lr"])
                        self._write_metrics(rec)
                        if bar is not None:
                            bar.set_postfix(self._postfix(rec))
                        window = Counter()
                    if eval_now:
                        self._evaluate_and_log(say)
                    if over:
                        self.truncated = True
                        if self._can_evaluate() and not eval_now:
                            self._evaluate_and_log(say)
                    if save_now:
                        self.save_checkpoint()
                    if self.truncated:
                        break
                if self._stop_requested():
                    self._stop_now()
        finally:
            if bar is not None:
                bar.close()
            self.log = log
        summary = {"step": self.step, "total_steps": self.total_steps, "complete": self.step >= self.total_steps,
                   "train_time": self.train_time,
                   "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                   "metrics": str(self.metrics_path), **self._summary()}
        if summary["complete"] or self.truncated:
            summary["model_dir"] = str(self.save_final())
        summary["truncated"] = self.truncated
        return summary

    def _can_evaluate(self) -> bool:
        return True

    def _budget_elapsed(self) -> float:
        """Seconds counted against a time budget: the wall clock since the run was made (a resumed
        run, whose setup was paid before: its training time)."""
        if self.resumed_from is not None:
            return self.train_time
        return time.perf_counter() - self._wall_start

    def _evaluate_and_log(self, say) -> dict:
        result = self.evaluate()
        self._write_metrics({"split": self.eval_split, "step": self.step, **self._eval_record(result)})
        self._after_evaluation(result, say)
        return result

    def _eval_record(self, result: dict) -> dict:
        return result


# ============================================================================ pretraining

class Trainer(TrainingLoop):
    """Pretraining: builds tokenizer, data, model, optimizer and schedule from a
    :class:`TrainConfig` and runs :class:`TrainingLoop`'s loop on MLM + NSP batches."""
    config_class = TrainConfig
    command = "pretrain"
    description = "pretrain"
    eval_split = "eval"
    OUTPUTS = ("checkpoints", "model", "metrics.jsonl", "run.json", "training.png")
    STATE_FIELDS = {"loader": "object", "tokens_seen": "count"}
    # the values of a step that live on the device until read_pending reads them
    DEVICE_KEYS = ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "nsp_correct", "grad_norm")
    COUNT_KEYS = ("mlm_correct", "nsp_correct")
    supports_parallel = True

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        from bertnp.config import BertConfig
        from bertnp.data import PretrainingDataset, PretrainingLoader, shorter_sequences
        from bertnp.model import BertForPreTraining
        c, log = self.config, self.log

        train_docs, heldout_docs = read_documents(c, log)
        vocab_path = self.out / "vocab.txt"
        if self.resumed_from is not None:                 # the run's own copy
            self.tokenizer = load_tokenizer(vocab_path, c.do_lower_case)
        elif c.vocab is not None:
            self.tokenizer = load_tokenizer(c.vocab, c.do_lower_case)
            if self.writes:
                self.tokenizer.save_vocabulary(self.out)
        else:
            if self.writes:
                train_vocab(train_docs, c.vocab_size, vocab_path, c.do_lower_case, log, show_progress=c.progress)
            self.parallel.barrier("rank 0 training the WordPiece vocabulary (give --vocab, or a longer "
                                  "--mpi-timeout, when that takes longer)")
            self.tokenizer = load_tokenizer(vocab_path, c.do_lower_case)
        tok = self.tokenizer

        if c.model_config is not None:
            mcfg = BertConfig.from_json_file(c.model_config)
            if mcfg.vocab_size != tok.vocab_size:
                mcfg.vocab_size = tok.vocab_size
        else:
            mcfg = BertConfig.preset(c.preset, vocab_size=tok.vocab_size)
        if c.dropout is not None:
            mcfg.hidden_dropout_prob = mcfg.attention_probs_dropout_prob = float(c.dropout)
        mcfg.pad_token_id = tok.pad_token_id
        if c.max_seq_length > mcfg.max_position_embeddings:
            raise ValueError(f"max_seq_length {c.max_seq_length} is longer than the model's "
                             f"max_position_embeddings {mcfg.max_position_embeddings}")
        mcfg.validate()
        mcfg.check_fits_in_memory(c.dtype)
        self.model_config = mcfg

        max_pred = c.max_predictions_per_seq or max(1, round(c.masked_lm_prob * c.max_seq_length))
        eval_max_pred = max(1, round(0.15 * c.max_seq_length))    # held-out masks: always BERT's 15%
        t0 = time.perf_counter()
        self.dataset = PretrainingDataset(train_docs, tok, max_seq_length=c.max_seq_length,
                                          masked_lm_prob=c.masked_lm_prob,
                                          max_predictions_per_seq=max_pred, masking=c.masking,
                                          dupe_factor=c.dupe_factor, seed=c.seed)
        self.loader = PretrainingLoader(self.dataset, c.batch_size, seed=c.seed)
        self.phase1_loader, self.phase1_end = None, 0
        self.phase1_cost = 1.0                    # a phase-1 step's time over a full-length one's (timed with a budget)
        self._phase2_clock = None                 # the budget's clock when phase 2 began
        if c.phase1_seq_length is not None:       # the same documents (token ids), cut into shorter pairs
            self.phase1_loader = shorter_sequences(self.loader, c.phase1_seq_length)
        self.eval_batches = []
        if heldout_docs and c.eval_batches > 0:
            try:
                heldout = PretrainingDataset(heldout_docs, tok, max_seq_length=c.max_seq_length,
                                             max_predictions_per_seq=eval_max_pred, masking="static",
                                             dupe_factor=1, seed=c.seed + 1)
            except ValueError as exc:
                log(f"note: no held-out evaluation ({exc})")
            else:
                ev = PretrainingLoader(heldout, c.batch_size, shuffle=False)
                self.eval_batches = [ev.next_batch() for _ in range(min(c.eval_batches, len(ev)))]
        specials = [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.unk_token_id]
        self.baseline_token, self.baseline_acc = unigram_baseline(self.dataset.documents, self.eval_batches,
                                                                  specials)
        log(f"data: {len(self.dataset)} training pairs from {len(train_docs)} documents, "
            f"{sum(len(b['input_ids']) for b in self.eval_batches)} held-out pairs "
            f"({time.perf_counter() - t0:.1f} s)")

        self.model = BertForPreTraining(mcfg, seed=c.seed, dtype=c.dtype, use_kernels=c.use_kernels)
        # the last layer's dense sublayers only at the rows the heads read (the labelled positions and
        # [CLS]): the same losses and gradients, ~7% less time a BERT-mini step (BertForPreTraining.__init__)
        self.model.skip_unscored_rows = True
        # a micro-batch's rows shared out over the CPU cores, a model replica each (bertnp.cores):
        # the same step as the whole micro-batch at once, to rounding, and faster on a CPU
        self.cores = CoreReplicas(self.model)
        self.model.train()
        self.optimizer = AdamW(self.model, lr=c.lr, betas=tuple(c.betas), eps=c.eps,
                               weight_decay=c.weight_decay, correct_bias=c.correct_bias)
        self.tokens_seen = 0
        self.eval_every, self.checkpoint_every = c.eval_every, c.checkpoint_every
        self.adaptive_steps = False               # steps estimated from a time budget: re-checked while training
        if c.steps is None:
            self._estimate_steps()
            self.adaptive_steps = True
        self.total_steps = c.steps
        self.phase1_end = self._phase1_steps(c.steps)
        self.schedule = LinearWarmupDecay(self.optimizer, c.warmup_steps(c.steps), c.steps)
        log(f"model: {c.preset if c.model_config is None else c.model_config} "
            f"(L{mcfg.num_hidden_layers} H{mcfg.hidden_size} A{mcfg.num_attention_heads} "
            f"V{mcfg.vocab_size}), {self.model.num_parameters() / 1e6:.2f}M parameters, {c.dtype} on {c.backend}; "
            f"{c.steps} steps of {c.batch_size * c.grad_accum} x {c.max_seq_length}, "
            f"lr {c.lr:g}, warmup {self.schedule.warmup_steps}")
        if self.phase1_loader is not None:
            log(f"phase 1: the first {self.phase1_end} steps on {self.phase1_loader.batch_size} x "
                f"{c.phase1_seq_length} ({len(self.phase1_loader.dataset)} pairs), then {c.max_seq_length}")

    def _phase1_steps(self, total: int) -> int:
        """The steps of phase 1 (short sequences) in a run of ``total`` steps."""
        return int(round(self.config.phase1_fraction * total)) if self.phase1_loader is not None else 0

    def _estimate_steps(self) -> None:
        """Turn the time budget into a number of steps: time a few forward/backward passes (then
        undo every side effect: gradients, loader position, dropout counter)."""
        c = self.config
        loader_state, count = self.loader.state_dict(), self.model.forward_count

        def forward_and_backward(model, share) -> None:
            model(**share)
            model.backward()

        def seconds_a_step(loader) -> float:
            batch = loader.next_batch()
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                self.model.zero_grad()
                for _ in range(c.grad_accum):
                    self.cores.run(batch, forward_and_backward)    # as train_step runs a micro-batch
                backend.synchronize()
                times.append(time.perf_counter() - t0)
            return min(times[1:]) * 1.04 + 0.002          # + the optimizer and bookkeeping
        per_step = full_step = seconds_a_step(self.loader)
        if self.phase1_loader is not None:             # a phase-1 step (short sequences) costs less
            phase1_state = self.phase1_loader.state_dict()
            self.phase1_cost = min(1.0, seconds_a_step(self.phase1_loader) / full_step)
            self.phase1_loader.load_state_dict(phase1_state)
            per_step = full_step * (c.phase1_fraction * self.phase1_cost + 1 - c.phase1_fraction)  # the run's mean
        t0 = time.perf_counter()
        if self.eval_batches:
            evaluate_model(self.model, self.eval_batches[:2], self.cores)
        per_eval = (time.perf_counter() - t0) / min(2, len(self.eval_batches) or 1) * len(self.eval_batches)
        self.model.zero_grad()
        self.model.forward_count = count
        self.loader.load_state_dict(loader_state)
        per_step_all = per_step + per_eval / c.eval_every
        spent = time.perf_counter() - self._wall_start        # vocabulary, data, model: inside the budget
        # the final evaluation too, and the caller's work after training (reserve_steps)
        left = c.time_budget - spent - per_eval - c.reserve_steps * full_step
        c.steps = max(1, int(left / per_step_all))
        kept = f", {c.reserve_steps * full_step:.0f} s kept for after training" if c.reserve_steps else ""
        mean = (f" (the mean of {c.phase1_fraction:.0%} phase-1 steps at {full_step * self.phase1_cost:.3f} s and "
                f"the rest at {full_step:.3f} s)") if self.phase1_loader is not None else ""
        self.log(f"time budget {c.time_budget:.0f} s: {spent:.0f} s spent on vocabulary and data{kept}; the rest at "
                 f"~{per_step:.3f} s/step{mean} (evaluations included: {per_step_all:.3f}) -> {c.steps} steps")

    def _retune(self) -> bool:
        return self.adaptive_steps and self._retune_steps()

    def _retune_steps(self) -> bool:
        """A time-budget run re-estimates its length at 10%, 25%, 50%, 75% and 90% of the planned
        steps from the measured speed (the first estimate is only a few steps long, and a shared
        machine's speed changes): if the steps that fit the rest of the budget (less the
        ``reserve_steps`` kept for after training, at the speed measured now) differ by more than
        RETUNE_TOLERANCE (5%), the schedule's end moves there (run.json is rewritten, so a resume follows
        the new plan). A run in two phases counts phase-1 steps at ``phase1_cost`` of a full-length
        one (the probe's ratio) until phase 2 has run 20 steps, then times phase 2 alone."""
        c = self.config
        if self.step not in {max(1, int(f * c.steps)) for f in RETUNE_AT} or self.step >= c.steps:
            return False
        elapsed = self._budget_elapsed()
        # seconds of a full-length step, wall clock, evaluations included: the steps so far count
        # phase1_cost each while in phase 1 (short sequences), 1 after
        in_phase1 = min(self.step, self.phase1_end)
        r = self.phase1_cost
        if self._phase2_clock is not None and self.step - self.phase1_end >= 20:   # measured in phase 2 itself
            per_step = (elapsed - self._phase2_clock) / (self.step - self.phase1_end) * 1.02
        else:
            per_step = (elapsed - (self._setup_time or 0.0)) / (in_phase1 * r + self.step - in_phase1) * 1.02
        left = (c.time_budget - elapsed - c.reserve_steps * per_step) / per_step     # full-length steps that fit
        if self.step < self.phase1_end:            # still in phase 1: a fraction f of the total N is short,
            f = c.phase1_fraction                  # so left = (f N - step) r + (1 - f) N
            total = int((left + self.step * r) / (f * r + 1 - f))
        else:
            total = self.step + int(left)
        total = max(total, self.step + 1)
        if abs(total - c.steps) <= RETUNE_TOLERANCE * c.steps:
            return False
        warmup = self.schedule.warmup_steps
        if self.step < warmup and c.warmup < 1:         # still warming up: keep the warmup fraction
            warmup = max(self.step, c.warmup_steps(total))
        self.schedule.warmup_steps = min(warmup, total)
        slower = total < c.steps
        self.log(f"note: {per_step:.3f} s/step so far ({'slower' if slower else 'faster'} than estimated"
                 f"{': a busy or slower machine' if slower else ''}): the time budget fits {total} steps, "
                 f"not {c.steps}; the learning-rate decay now ends there")
        c.steps = self.total_steps = total
        self.schedule.total_steps = total
        if self.step < self.phase1_end:                 # still in phase 1: it stays the same fraction
            self.phase1_end = max(self.step, self._phase1_steps(total))
        self.optimizer.lr = self.schedule.lr_at(self.schedule.last_step)
        checkpoint.write_json(self.out / "run.json", c.to_dict())
        return True

    def _over_budget(self, last: bool) -> bool:
        c = self.config
        over = c.time_budget is not None and self._budget_elapsed() > OVERTIME * c.time_budget and not last
        if over:
            self.log(f"note: the time budget ({c.time_budget:.0f} s) is exceeded by "
                     f"{100 * (OVERTIME - 1):.0f}% (a busy or slower machine): stopping at step "
                     f"{self.step} of {c.steps}")
        return over

    # ------------------------------------------------------------------ one update
    def _next_update(self) -> list:
        if self.phase1_loader is not None and self.step == self.phase1_end and self._phase2_clock is None:
            self._phase2_clock = self._budget_elapsed()     # phase 2 starts: its own speed from here
        loader = self.phase1_loader if self.step < self.phase1_end else self.loader
        return [loader.next_batch() for _ in range(self.config.grad_accum)]

    def _update_totals(self, batches) -> dict:
        """Host counts of the whole update, from its host micro-batches: ``mlm_total`` (labelled
        tokens, the MLM loss's denominator), ``nsp_total`` (sequences, NSP's) and ``tokens`` (real
        tokens, for the throughput)."""
        # TASK 5.6 update_totals: count the WHOLE update's labelled tokens and sequences first (lesson 11)
        totals = {"mlm_total": int(sum((b["labels"] != IGNORE_INDEX).sum() for b in batches)),
                  "nsp_total": int(sum(b["next_sentence_label"].size for b in batches))}
        # END TASK 5.6
        totals["tokens"] = int(sum(b["attention_mask"].sum() for b in batches))
        return totals

    def _forward_backward(self, batch, totals, model=None) -> dict:
        model = self.model if model is None else model
        # TASK 5.6 micro_batch_loss: this micro-batch's summed losses over the update's counts (lesson 11)
        out = model(**batch, mlm_denominator=max(totals["mlm_total"], 1), nsp_denominator=totals["nsp_total"])
        # END TASK 5.6
        model.backward()
        counts = _device_counts(out, batch)
        # each micro-batch's losses are its share of the update's means: they add up
        return {"loss": out.loss, "mlm_loss": out.mlm_loss, "nsp_loss": out.nsp_loss,
                "mlm_correct": counts["mlm_correct"], "nsp_correct": counts["nsp_correct"]}

    def train_step(self) -> dict:
        record = super().train_step()
        self.tokens_seen += record["tokens"]
        return record

    # ------------------------------------------------------------------ evaluation and metrics
    def _can_evaluate(self) -> bool:
        return bool(self.eval_batches)

    def evaluate(self) -> dict:
        """Held-out loss and accuracies (dropout off; the dropout counter is not touched). Several
        ranks: each evaluates its share of every batch, and the sums are combined."""
        if not self.eval_batches:
            return {}
        count = self.model.forward_count
        batches = [b for b in map(self.parallel.share, self.eval_batches) if _rows(b)]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result = evaluate_model(self.model, batches, self.cores)
        result = self.parallel.combine_evaluation(result, self.step)
        self.model.forward_count = count
        result["baseline_mlm_acc"] = self.baseline_acc
        self.last_eval = result
        return result

    def _after_evaluation(self, result: dict, say) -> None:
        self.plot()
        if self.config.progress:
            say(f"step {self.step}: held-out loss {result['loss']:.3f}  MLM acc {result['mlm_acc']:.3f}"
                f"  NSP acc {result['nsp_acc']:.3f}")

    def _window_record(self, w: Counter, lr: float) -> dict:
        """A metrics line: per-step losses averaged over the window (each step's loss is already the
        exact mean over its update), accuracies over all the window's predictions."""
        n = max(w["n"], 1)
        return {"split": "train", "step": self.step, "loss": w["loss"] / n, "mlm_loss": w["mlm_loss"] / n,
                "nsp_loss": w["nsp_loss"] / n, "mlm_acc": w["mlm_correct"] / max(w["mlm_total"], 1),
                "nsp_acc": w["nsp_correct"] / max(w["nsp_total"], 1), "lr": lr,
                "grad_norm": w["grad_norm"] / n, "tokens_per_s": w["tokens"] / max(w["time"], 1e-9),
                "elapsed_s": self.train_time}

    def _postfix(self, rec: dict) -> dict:
        return {"loss": f"{rec['loss']:.3f}", "mlm": f"{rec['mlm_acc']:.3f}", "nsp": f"{rec['nsp_acc']:.3f}",
                "tok_s": f"{rec['tokens_per_s']:.0f}"}

    def plot(self) -> Path | None:
        """Redraw ``training.png`` from ``metrics.jsonl`` (skipped quietly without matplotlib, or
        with ``config.plot=False``: drawing takes a second or two of the time budget each time; rank 0 only)."""
        if not (self.writes and self.config.plot):
            return None
        try:
            from bertnp.viz import plot_training
            return plot_training(self.metrics_path, self.out / "training.png")
        except ImportError:
            return None

    # ------------------------------------------------------------------ checkpoints and summary
    def _extra_state(self) -> dict:
        extra = {"loader": self.loader.state_dict(), "tokens_seen": self.tokens_seen}
        if self.phase1_loader is not None:
            extra["phase1"] = {"loader": self.phase1_loader.state_dict(), "end": self.phase1_end}
        return extra

    def _load_extra_state(self, state: dict, path: Path) -> None:
        self.loader.load_state_dict(state["loader"])
        self.tokens_seen = state["tokens_seen"]
        if self.phase1_loader is not None:
            phase1 = state.get("phase1")
            if not (isinstance(phase1, dict) and _is_int(phase1.get("end"), 0) and "loader" in phase1):
                raise ValueError("field 'phase1' (the short-sequence loader's position and the phase's last "
                                 "step) is missing or damaged")
            self.phase1_loader.load_state_dict(phase1["loader"])
            self.phase1_end = phase1["end"]

    def _summary(self) -> dict:
        self.plot()
        return {"steps": self.total_steps, "tokens_seen": self.tokens_seen, "eval": self.last_eval,
                "baseline_mlm_acc": self.baseline_acc, "figure": str(self.out / "training.png")}


def pretrain(config: TrainConfig | None = None, log: Callable = print, parallel: DataParallel | None = None,
             **options) -> dict:
    """Build a :class:`Trainer` from ``config`` (or keyword options) and train. Returns a summary.
    ``parallel``: the ranks to share each update with (:meth:`DataParallel.from_environment`)."""
    if config is None:
        config = TrainConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    return Trainer(config, log=log, parallel=parallel).train()
