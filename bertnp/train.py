"""The pretraining loop: progress, evaluation, metrics, checkpoints, exact resume.

    from bertnp.train import TrainConfig, Trainer
    trainer = Trainer(TrainConfig(preset="mini", steps=1000, out_dir="runs/mini"))
    summary = trainer.train()          # or, from a shell: bertnp pretrain --steps 1000 --out runs/mini

One update (``Trainer.train_step``)::

    zero grads -> for each of grad_accum micro-batches: forward, check the loss is finite, backward
    -> scale by 1/grad_accum -> clip the global norm (1.0) -> AdamW at the schedule's lr -> lr step

What a run writes in ``out_dir``::

    run.json                 the resolved TrainConfig (what --resume reuses)
    vocab.txt                the tokenizer's vocabulary (trained on the corpus unless one is given)
    metrics.jsonl            one JSON object a line: {"split": "train" | "eval", "step": ..., ...}
    training.png             loss and accuracy curves (matplotlib, drawn at each evaluation)
    checkpoints/step-000400/ model.safetensors + config.json, optimizer.safetensors, trainer_state.json
    checkpoints/latest.json  {"step": 400, "dir": "step-000400"}: written last, atomically
    model/                   the final model in Hugging Face's layout (config.json,
                             model.safetensors, vocab.txt): bn.BertForPreTraining.from_pretrained

Exact resume: a checkpoint folder is written under a temporary name and renamed when complete, and
``latest.json`` is replaced atomically after it, so a run killed at any moment leaves the previous
checkpoint whole. It holds everything the trajectory depends on: weights, AdamW's moments and step,
the schedule's step, the loader's position (epoch, index; masks and order are pure functions of the
seed) and the model's dropout counter. On NumPy, N steps + resume + N steps give bit-identical
weights to 2N steps straight (``tests/test_train.py``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bertnp import backend, checkpoint
from bertnp.optim import AdamW, LinearWarmupDecay, clip_grad_norm, scale_grads

__all__ = ["TrainConfig", "Trainer", "NonFiniteLossError", "pretrain", "evaluate_model",
           "unigram_baseline", "latest_checkpoint"]

IGNORE_INDEX = -100
STATE_VERSION = 1
OVERTIME = 1.25     # a time-budget run stops at 1.25 x its budget even if the step estimate was too low


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN or infinite; the run stopped without saving."""


@dataclass
class TrainConfig:
    """Everything that defines a pretraining run (saved as ``run.json``; plain JSON types).

    Data: ``corpus`` files in BERT's format (one sentence a line, blank line between documents;
    ``corpus_format="plain"`` splits running text into sentences); ``None`` is the bundled corpus.
    ``eval_corpus``: held-out files; ``None`` is the bundled held-out split for the bundled corpus,
    else every 20th document of ``corpus`` is held out (none if it has fewer than 10).
    Tokenizer: ``vocab`` (a vocab.txt or a folder with one) or, when None, a WordPiece vocabulary of
    ``vocab_size`` trained on the corpus. Model: ``model_config`` (a config.json) or ``preset``.
    Length: ``steps`` updates, or ``time_budget`` seconds (the number of steps is then estimated
    from the speed of the first steps, so that the schedule ends on time). ``warmup``: a number of
    steps (>= 1) or a fraction of the steps (< 1).
    """
    corpus: list | None = None
    eval_corpus: list | None = None
    corpus_format: str = "bert"
    vocab: str | None = None
    vocab_size: int = 8000
    do_lower_case: bool = True
    preset: str = "mini"
    model_config: str | None = None
    max_seq_length: int = 128
    max_predictions_per_seq: int | None = None     # default: round(masked_lm_prob * max_seq_length)
    masked_lm_prob: float = 0.15                    # training masks only; held-out pairs keep 0.15
    masking: str = "dynamic"
    dupe_factor: int = 1
    batch_size: int = 32
    grad_accum: int = 1
    steps: int | None = None
    time_budget: float | None = None
    lr: float = 1e-3
    warmup: float = 0.1
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-6
    max_grad_norm: float = 1.0
    correct_bias: bool = True
    dropout: float | None = None                    # None: the config's (0.1)
    seed: int = 0
    dtype: str = "float32"
    backend: str = "numpy"
    use_kernels: bool = False                       # CUDA kernels (kernels/*.cu) on cupy; same maths
    out_dir: str = "runs/pretrain"
    eval_every: int = 100
    eval_batches: int = 20
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    plot: bool = True                               # redraw training.png at each evaluation (matplotlib)
    resume: bool = False
    overwrite: bool = False

    # options that may differ on resume without changing the trajectory
    RUNTIME_ONLY = ("out_dir", "progress", "plot", "resume", "overwrite", "backend", "use_kernels", "eval_every",
                    "eval_batches", "checkpoint_every", "keep_checkpoints", "log_every")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training option '{unknown[0]}'")
        cfg = cls(**data)
        cfg.betas = tuple(cfg.betas)
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        def positive_int(name, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("max_seq_length", "batch_size", "grad_accum", "eval_every", "checkpoint_every",
                     "log_every", "keep_checkpoints", "dupe_factor", "vocab_size"):
            positive_int(name)
        positive_int("steps", allow_none=True)
        positive_int("max_predictions_per_seq", allow_none=True)
        if self.eval_batches < 0:
            raise ValueError(f"eval_batches must be >= 0, got {self.eval_batches}")
        if self.max_seq_length < 8:
            raise ValueError(f"max_seq_length must be at least 8, got {self.max_seq_length}")
        if self.vocab is None and self.vocab_size < 50:
            raise ValueError(f"vocab_size must be at least 50, got {self.vocab_size}")
        if self.steps is None and self.time_budget is None:
            raise ValueError("give the run's length: steps or time_budget")
        if self.time_budget is not None and not (isinstance(self.time_budget, (int, float))
                                                 and math.isfinite(self.time_budget) and self.time_budget > 0):
            raise ValueError(f"time_budget must be a positive number of seconds, got {self.time_budget!r}")
        for name in ("lr", "weight_decay", "warmup"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.backend not in ("numpy", "cupy"):
            raise ValueError(f"backend must be 'numpy' or 'cupy', got {self.backend!r}")
        if not isinstance(self.use_kernels, bool):
            raise ValueError(f"use_kernels must be True or False, got {self.use_kernels!r}")
        if self.corpus_format not in ("bert", "plain"):
            raise ValueError(f"corpus_format must be 'bert' or 'plain', got {self.corpus_format!r}")

    def warmup_steps(self, total: int) -> int:
        return int(round(self.warmup * total)) if self.warmup < 1 else min(int(self.warmup), total)


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
    return int(top), hits / max(total, 1)


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


def evaluate_model(model, batches) -> dict:
    """Mean loss, MLM and NSP loss, MLM and NSP accuracy of ``model`` (eval mode) on ``batches``."""
    was_training = model.training
    model.eval()
    sums = Counter()
    try:
        for b in batches:
            out = model(**b)
            c = _batch_counts(out, b)
            sums.update(c)
            sums["mlm_loss"] += float(out.mlm_loss) * c["mlm_total"]   # mean over all predicted tokens
            sums["nsp_loss"] += float(out.nsp_loss) * c["nsp_total"]
    finally:
        model.train(was_training)
    mlm_n, nsp_n = max(sums["mlm_total"], 1), max(sums["nsp_total"], 1)
    mlm_loss, nsp_loss = sums["mlm_loss"] / mlm_n, sums["nsp_loss"] / nsp_n
    return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
            "mlm_acc": sums["mlm_correct"] / mlm_n, "nsp_acc": sums["nsp_correct"] / nsp_n,
            "mlm_tokens": sums["mlm_total"], "sequences": sums["nsp_total"]}


def latest_checkpoint(out_dir) -> Path | None:
    """The newest complete checkpoint folder of a run (``checkpoints/latest.json``), or None."""
    ckdir = Path(out_dir) / "checkpoints"
    pointer = ckdir / "latest.json"
    if pointer.is_file():
        info = checkpoint.read_json(pointer)
        path = ckdir / info["dir"]
        if (path / "trainer_state.json").is_file():
            return path
    # no pointer (or it points nowhere): the highest complete step folder
    done = sorted(p for p in ckdir.glob("step-*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


# ============================================================================ the trainer

class Trainer:
    """Builds tokenizer, data, model, optimizer and schedule from a :class:`TrainConfig`, and runs
    the loop. ``config.resume=True`` continues the run in ``config.out_dir`` from its latest
    checkpoint, with the configuration saved there (``run.json``)."""

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print):
        self.log = log
        # a time budget covers the whole run: vocabulary, data, evaluations and checkpoints included
        self._wall_start = time.perf_counter()
        config = dataclasses.replace(config)
        out = Path(config.out_dir)
        self.resumed_from = None
        if config.resume:
            ck = latest_checkpoint(out)
            if ck is None:
                raise FileNotFoundError(f"--resume: no checkpoint in '{out / 'checkpoints'}'")
            saved = TrainConfig.from_dict(checkpoint.read_json(out / "run.json"))
            for name in TrainConfig.RUNTIME_ONLY:
                setattr(saved, name, getattr(config, name))
            if config.steps is not None and config.steps != saved.steps:
                log(f"note: resuming with steps={config.steps} instead of {saved.steps}: "
                    "the learning-rate schedule is stretched to the new length")
                saved.steps = config.steps
            config, self.resumed_from = saved, ck
        else:
            if (out / "checkpoints").exists() or (out / "run.json").exists():
                if not config.overwrite:
                    raise FileExistsError(f"'{out}' already holds a run: use --resume to continue it, "
                                          "--overwrite to start again, or another --out")
                for name in ("checkpoints", "model", "metrics.jsonl", "run.json", "training.png"):
                    target = out / name
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
        config.validate()
        self.config = config
        self.out = out
        backend.set_backend(config.backend)
        if config.backend == "numpy":
            backend.retain_freed_host_memory()     # no page faults re-allocating activations each step
        out.mkdir(parents=True, exist_ok=True)
        self._build()
        if self.resumed_from is not None:
            self._load_checkpoint(self.resumed_from)
        else:
            self._metrics_reset()

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        from bertnp.config import BertConfig
        from bertnp.data import PretrainingDataset, PretrainingLoader
        from bertnp.model import BertForPreTraining
        c, log = self.config, self.log

        train_docs, heldout_docs = read_documents(c, log)
        vocab_path = self.out / "vocab.txt"
        if self.resumed_from is not None:                 # the run's own copy
            self.tokenizer = load_tokenizer(vocab_path, c.do_lower_case)
        elif c.vocab is not None:
            self.tokenizer = load_tokenizer(c.vocab, c.do_lower_case)
            self.tokenizer.save_vocabulary(self.out)
        else:
            train_vocab(train_docs, c.vocab_size, vocab_path, c.do_lower_case, log, show_progress=c.progress)
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
        self.model_config = mcfg

        max_pred = c.max_predictions_per_seq or max(1, round(c.masked_lm_prob * c.max_seq_length))
        eval_max_pred = max(1, round(0.15 * c.max_seq_length))    # held-out masks: always BERT's 15%
        t0 = time.perf_counter()
        self.dataset = PretrainingDataset(train_docs, tok, max_seq_length=c.max_seq_length,
                                          masked_lm_prob=c.masked_lm_prob,
                                          max_predictions_per_seq=max_pred, masking=c.masking,
                                          dupe_factor=c.dupe_factor, seed=c.seed)
        self.loader = PretrainingLoader(self.dataset, c.batch_size, seed=c.seed)
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
        self.model.train()
        self.optimizer = AdamW(self.model, lr=c.lr, betas=tuple(c.betas), eps=c.eps,
                               weight_decay=c.weight_decay, correct_bias=c.correct_bias)
        self.step = 0
        self.tokens_seen = 0
        self.train_time = 0.0
        self.last_eval: dict | None = None
        self.last_checkpoint: Path | None = None
        self._pending: list[dict] = []            # steps whose device values are not read yet
        self._read_steps: list[dict] = []         # steps read, not yet in the metrics
        self.truncated = False                    # stopped by the time budget's hard limit
        self._setup_time = None                   # seconds before the first step (vocabulary, data)
        self.adaptive_steps = False               # steps estimated from a time budget: re-checked while training
        if c.steps is None:
            self._estimate_steps()
            self.adaptive_steps = True
        self.schedule = LinearWarmupDecay(self.optimizer, c.warmup_steps(c.steps), c.steps)
        if self.resumed_from is None:
            checkpoint.write_json(self.out / "run.json", c.to_dict())
        log(f"model: {c.preset if c.model_config is None else c.model_config} "
            f"(L{mcfg.num_hidden_layers} H{mcfg.hidden_size} A{mcfg.num_attention_heads} "
            f"V{mcfg.vocab_size}), {self.model.num_parameters() / 1e6:.2f}M parameters, {c.dtype} on {c.backend}; "
            f"{c.steps} steps of {c.batch_size * c.grad_accum} x {c.max_seq_length}, "
            f"lr {c.lr:g}, warmup {self.schedule.warmup_steps}")

    def _estimate_steps(self) -> None:
        """Turn the time budget into a number of steps: time a few forward/backward passes (then
        undo every side effect: gradients, loader position, dropout counter)."""
        c = self.config
        loader_state, count = self.loader.state_dict(), self.model.forward_count
        batch = self.loader.next_batch()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.model.zero_grad()
            for _ in range(c.grad_accum):
                self.model(**batch)
                self.model.backward()
            backend.synchronize()
            times.append(time.perf_counter() - t0)
        per_step = min(times[1:]) * 1.04 + 0.002          # + the optimizer and bookkeeping
        t0 = time.perf_counter()
        if self.eval_batches:
            evaluate_model(self.model, self.eval_batches[:2])
        per_eval = (time.perf_counter() - t0) / min(2, len(self.eval_batches) or 1) * len(self.eval_batches)
        self.model.zero_grad()
        self.model.forward_count = count
        self.loader.load_state_dict(loader_state)
        per_step_all = per_step + per_eval / c.eval_every
        spent = time.perf_counter() - self._wall_start        # vocabulary, data, model: inside the budget
        left = c.time_budget - spent - per_eval                # the final evaluation too
        c.steps = max(1, int(left / per_step_all))
        self.log(f"time budget {c.time_budget:.0f} s: {spent:.0f} s spent on vocabulary and data; the rest at "
                 f"~{per_step:.3f} s/step (evaluations included: {per_step_all:.3f}) -> {c.steps} steps")

    def _retune_steps(self) -> bool:
        """A time-budget run re-estimates its length at 10%, 25% and 50% of the planned steps from
        the measured speed (the first estimate is only a few steps long, and a shared machine's speed
        changes): if the steps that fit the rest of the budget differ by more than 10%, the
        schedule's end moves there (run.json is rewritten, so a resume follows the new plan)."""
        c = self.config
        if self.step not in {max(1, int(f * c.steps)) for f in (0.1, 0.25, 0.5)} or self.step >= c.steps:
            return False
        elapsed = self._budget_elapsed()
        per_step = (elapsed - self._setup_time) / self.step * 1.02     # wall clock: evaluations included
        total = self.step + max(1, int((c.time_budget - elapsed) / per_step))
        total = max(total, self.step + 1)
        if abs(total - c.steps) <= 0.1 * c.steps:
            return False
        warmup = self.schedule.warmup_steps
        if self.step < warmup and c.warmup < 1:         # still warming up: keep the warmup fraction
            warmup = max(self.step, c.warmup_steps(total))
        self.schedule.warmup_steps = min(warmup, total)
        slower = total < c.steps
        self.log(f"note: {per_step:.3f} s/step so far ({'slower' if slower else 'faster'} than estimated"
                 f"{': a busy or slower machine' if slower else ''}): the time budget fits {total} steps, "
                 f"not {c.steps}; the learning-rate decay now ends there")
        c.steps = total
        self.schedule.total_steps = total
        self.optimizer.lr = self.schedule.lr_at(self.schedule.last_step)
        checkpoint.write_json(self.out / "run.json", c.to_dict())
        return True

    # ------------------------------------------------------------------ one update
    def train_step(self) -> dict:
        """One optimizer update (``grad_accum`` micro-batches).

        Nothing is read from the device here: on CuPy every such read (``float(loss)``) makes the
        host wait for the GPU, and one between forward and backward would stall it every step.
        The loss, its parts, the correct-prediction counts and the gradient norm come back as 0-d
        device arrays; :meth:`read_pending` reads them, all at once, every ``log_every`` steps
        (and before an evaluation or a checkpoint), and raises NonFiniteLossError there."""
        c, model = self.config, self.model
        model.train()
        model.zero_grad()
        device = {"loss": 0.0, "mlm_loss": 0.0, "nsp_loss": 0.0, "mlm_correct": 0, "nsp_correct": 0}
        mlm_total = nsp_total = tokens = 0
        # a non-finite loss is found later, in read_pending: NumPy must not warn about it meanwhile
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for _ in range(c.grad_accum):
                batch = self.loader.next_batch()
                out = model(**batch)
                model.backward()
                counts = _device_counts(out, batch)
                device["loss"] = device["loss"] + out.loss           # device arithmetic, no read
                device["mlm_loss"] = device["mlm_loss"] + out.mlm_loss
                device["nsp_loss"] = device["nsp_loss"] + out.nsp_loss
                device["mlm_correct"] = device["mlm_correct"] + counts["mlm_correct"]
                device["nsp_correct"] = device["nsp_correct"] + counts["nsp_correct"]
                mlm_total += counts["mlm_total"]
                nsp_total += counts["nsp_total"]
                tokens += int(batch["attention_mask"].sum())           # host batch: no device read
            grads = model.grads
            scale_grads(grads, 1.0 / c.grad_accum)
            norm = clip_grad_norm(grads, c.max_grad_norm, sync=False) if c.max_grad_norm else None
            lr = self.optimizer.lr
            self.optimizer.step()
        self.schedule.step()
        self.step += 1
        self.tokens_seen += tokens
        k = c.grad_accum
        record = {"step": self.step, "loss": device["loss"] / k, "mlm_loss": device["mlm_loss"] / k,
                  "nsp_loss": device["nsp_loss"] / k, "mlm_correct": device["mlm_correct"],
                  "nsp_correct": device["nsp_correct"], "grad_norm": norm,
                  "mlm_total": mlm_total, "nsp_total": nsp_total, "lr": lr, "tokens": tokens}
        self._pending.append(record)
        return record

    # the values of a step that live on the device until read_pending reads them
    DEVICE_KEYS = ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "nsp_correct", "grad_norm")

    def read_pending(self) -> None:
        """Read the device values of the steps not read yet, in one transfer (one host
        synchronisation), into host records for :meth:`take_read_steps`. NonFiniteLossError at
        the first step whose loss or gradient norm is not finite: that step and the ones after
        it stay unread, so a later save_checkpoint is refused too (their weights are not trusted)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        xp = backend.xp()
        keys = [k for k in self.DEVICE_KEYS if pending[0][k] is not None]
        stacked = xp.stack([xp.asarray(m[k], dtype=xp.float64) for m in pending for k in keys])
        values = backend.to_host(stacked).reshape(len(pending), len(keys))   # the one sync
        for i, (m, row) in enumerate(zip(pending, values)):
            host = dict(m, **{k: float(v) for k, v in zip(keys, row)})
            host["mlm_correct"], host["nsp_correct"] = int(host["mlm_correct"]), int(host["nsp_correct"])
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
        where = (f"the last good checkpoint is '{self.last_checkpoint}' (step {self._checkpoint_step()}); "
                 "lower --lr, check the data, then --resume" if self.last_checkpoint is not None
                 else "no checkpoint was written yet")
        raise NonFiniteLossError(f"{what} is {value} at step {step} (lr {lr:.3g}): "
                                 f"training stopped, nothing saved after step {self._checkpoint_step()}; {where}")

    def _checkpoint_step(self) -> int:
        return int(self.last_checkpoint.name.split("-")[-1]) if self.last_checkpoint is not None else 0

    # ------------------------------------------------------------------ evaluation and metrics
    def evaluate(self) -> dict:
        """Held-out loss and accuracies (dropout off; the dropout counter is not touched)."""
        if not self.eval_batches:
            return {}
        count = self.model.forward_count
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            result = evaluate_model(self.model, self.eval_batches)
        self.model.forward_count = count
        result["baseline_mlm_acc"] = self.baseline_acc
        self.last_eval = result
        return result

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def _metrics_reset(self) -> None:
        self.metrics_path.write_text("", encoding="utf-8")

    def _write_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self) -> Path | None:
        """Redraw ``training.png`` from ``metrics.jsonl`` (skipped quietly without matplotlib, or
        with ``config.plot=False``: drawing takes a second or two of the time budget each time)."""
        if not self.config.plot:
            return None
        try:
            from bertnp.viz import plot_training
            return plot_training(self.metrics_path, self.out / "training.png")
        except ImportError:
            return None

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-NNNNNN`` atomically, then point ``latest.json`` at it, then
        delete checkpoints beyond ``keep_checkpoints``. Refuses (NonFiniteLossError) when a step
        since the last read had a non-finite loss: a broken model is never saved."""
        self.read_pending()
        ckdir = self.out / "checkpoints"
        name = f"step-{self.step:06d}"
        state = {
            "version": STATE_VERSION, "step": self.step, "schedule": self.schedule.state_dict(),
            "loader": self.loader.state_dict(),
            "model_rng": {"dropout_seed": self.model.dropout_seed, "forward_count": self.model.forward_count},
            "tokens_seen": self.tokens_seen, "train_time": self.train_time, "last_eval": self.last_eval,
            "backend": backend.get_backend(),
        }

        def write(tmp: Path):
            self.model.save_pretrained(tmp)
            checkpoint.save_optimizer(tmp / "optimizer.safetensors", self.optimizer)
            checkpoint.write_json(tmp / "trainer_state.json", state)
        path = checkpoint.atomic_directory(ckdir / name, write)
        checkpoint.write_json(ckdir / "latest.json", {"step": self.step, "dir": name})
        self.last_checkpoint = path
        done = sorted(p for p in ckdir.glob("step-*") if p.is_dir())
        for old in done[:-self.config.keep_checkpoints]:
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def _load_checkpoint(self, path: Path) -> None:
        state = checkpoint.read_json(path / "trainer_state.json")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{path / 'trainer_state.json'}: unknown version {state.get('version')!r}")
        weights = checkpoint.load_tensors(path / "model.safetensors")
        try:
            self.model.load_state_dict(weights, strict=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path / 'model.safetensors'}: {exc}") from exc
        checkpoint.load_optimizer(path / "optimizer.safetensors", self.optimizer)
        self.schedule.load_state_dict(state["schedule"])
        try:
            self.loader.load_state_dict(state["loader"])
        except ValueError as exc:
            raise ValueError(f"{path / 'trainer_state.json'}: {exc}") from exc
        self.model.dropout_seed = int(state["model_rng"]["dropout_seed"])
        self.model.forward_count = int(state["model_rng"]["forward_count"])
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.train_time = float(state["train_time"])
        self.last_eval = state.get("last_eval")
        self.last_checkpoint = path
        # drop metric lines written after this checkpoint (by the run that died)
        kept = []
        if self.metrics_path.is_file():
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue                       # a line cut short by the crash
                if rec.get("step", 0) <= self.step:
                    kept.append(line + "\n")
        self.metrics_path.write_text("".join(kept), encoding="utf-8")
        if self.step >= self.config.steps:
            self.log(f"'{self.out}' is a complete run: step {self.step} of {self.config.steps} "
                     f"(model in '{self.out / 'model'}'). To train it further, give a longer run: "
                     f"bertnp pretrain --out {self.out} --resume --steps N, with N > {self.step} "
                     "(the learning-rate schedule is stretched to N steps)")
        else:
            self.log(f"resumed from '{path}' at step {self.step} of {self.config.steps}")

    # ------------------------------------------------------------------ the loop
    def train(self, stop_at: int | None = None) -> dict:
        """Train until ``config.steps`` (or ``stop_at``, for a run that pauses), evaluating,
        logging and checkpointing on the way; save the final model when the run is complete."""
        c = self.config
        end = c.steps if stop_at is None else min(stop_at, c.steps)
        bar = None
        log = self.log
        if c.progress and self.step < end:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=self.step, desc="pretrain", unit="step", dynamic_ncols=True,
                       file=sys.stderr)
            if log is print:                    # notes on their own line, not squeezed onto the bar
                self.log = lambda message: bar.write(str(message), file=sys.stdout)
        if self._setup_time is None:
            self._setup_time = self._budget_elapsed() - self.train_time
        window = Counter()
        try:
            while self.step < end:
                t0 = time.perf_counter()
                self.train_step()
                dt = time.perf_counter() - t0
                self.train_time += dt
                window["time"] += dt
                if bar is not None:
                    bar.update(1)
                if self.adaptive_steps and stop_at is None and self._retune_steps():
                    end = c.steps
                    if bar is not None:
                        bar.total = end
                        bar.refresh()
                last = self.step == end
                log_now = self.step % c.log_every == 0 or last
                eval_now = bool(self.eval_batches) and (self.step % c.eval_every == 0 or last)
                over = c.time_budget is not None and self._budget_elapsed() > OVERTIME * c.time_budget and not last
                save_now = self.step % c.checkpoint_every == 0 or last or over
                if not (log_now or eval_now or save_now):
                    continue                            # the device values wait: no synchronisation
                t0 = time.perf_counter()
                self.read_pending()                     # one host sync; raises if a loss was not finite
                steps = self.take_read_steps()
                dt = time.perf_counter() - t0           # the wait for the GPU belongs to the steps
                self.train_time += dt
                window["time"] += dt
                for m in steps:
                    for key in ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "mlm_total", "nsp_correct",
                                "nsp_total", "tokens"):
                        window[key] += m[key]
                    window["grad_norm"] += m["grad_norm"] or 0.0
                    window["n"] += 1
                if log_now:
                    rec = self._window_record(window, steps[-1]["lr"])
                    self._write_metrics(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", mlm=f"{rec['mlm_acc']:.3f}",
                                        nsp=f"{rec['nsp_acc']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                    window = Counter()
                if eval_now:
                    ev = self.evaluate()
                    self._write_metrics({"split": "eval", "step": self.step, **ev})
                    self.plot()
                    if bar is not None:
                        bar.write(f"step {self.step}: held-out loss {ev['loss']:.3f}  MLM acc {ev['mlm_acc']:.3f}"
                                  f"  NSP acc {ev['nsp_acc']:.3f}")
                if over:
                    self.log(f"note: the time budget ({c.time_budget:.0f} s) is exceeded by "
                             f"{100 * (OVERTIME - 1):.0f}% (a busy or slower machine): stopping at step "
                             f"{self.step} of {c.steps}")
                    self.truncated = True
                    if self.eval_batches and not eval_now:
                        ev = self.evaluate()
                        self._write_metrics({"split": "eval", "step": self.step, **ev})
                if save_now:
                    self.save_checkpoint()
                if self.truncated:
                    break
        finally:
            if bar is not None:
                bar.close()
            self.log = log
        self.plot()
        summary = {"step": self.step, "steps": c.steps, "complete": self.step >= c.steps,
                   "train_time": self.train_time, "tokens_seen": self.tokens_seen,
                   "eval": self.last_eval, "baseline_mlm_acc": self.baseline_acc,
                   "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                   "metrics": str(self.metrics_path), "figure": str(self.out / "training.png")}
        if self.step >= c.steps or self.truncated:
            summary["model_dir"] = str(self.save_final())
        summary["truncated"] = self.truncated
        return summary

    def _budget_elapsed(self) -> float:
        """Seconds counted against the time budget: the wall clock since the Trainer was made (a
        resumed run, whose setup was paid before: its training time)."""
        if self.resumed_from is not None:
            return self.train_time
        return time.perf_counter() - self._wall_start

    def _window_record(self, w: Counter, lr: float) -> dict:
        n = max(w["n"], 1)
        return {"split": "train", "step": self.step, "loss": w["loss"] / n, "mlm_loss": w["mlm_loss"] / n,
                "nsp_loss": w["nsp_loss"] / n, "mlm_acc": w["mlm_correct"] / max(w["mlm_total"], 1),
                "nsp_acc": w["nsp_correct"] / max(w["nsp_total"], 1), "lr": lr,
                "grad_norm": w["grad_norm"] / n, "tokens_per_s": w["tokens"] / max(w["time"], 1e-9),
                "elapsed_s": self.train_time}

    def save_final(self) -> Path:
        """The trained model in Hugging Face's layout, with the tokenizer: ``out_dir/model``."""
        target = self.out / "model"

        def write(tmp: Path):
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        return checkpoint.atomic_directory(target, write)


def pretrain(config: TrainConfig | None = None, log: Callable = print, **options) -> dict:
    """Build a :class:`Trainer` from ``config`` (or keyword options) and train. Returns a summary."""
    if config is None:
        config = TrainConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    return Trainer(config, log=log).train()
