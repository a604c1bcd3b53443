"""Fine-tuning BERT for sequence classification: data files, the training loop, metrics, CLI.

    from bertnp.finetune import FinetuneConfig, finetune
    summary = finetune(FinetuneConfig(train="data/train.tsv", dev="data/dev.tsv",
                                      model="runs/demo/model", out_dir="runs/clf", epochs=3, lr=5e-5))
    summary["best"]      # {'step': 84, 'accuracy': 0.93, 'f1_macro': 0.93, ...}

    # or: bertnp finetune --train data/train.tsv --dev data/dev.tsv --model runs/demo/model --out runs/clf

Data: one example a line in TSV, CSV or JSONL (format from the extension, ``.gz`` allowed):

    TSV / CSV   text<TAB>label   or   text<TAB>text_pair<TAB>label      (no header), or a header
                row naming the columns: text (or sentence, sentence1, text_a), text_pair (or
                sentence2, text_b) and label; other columns are ignored. TSV has no quoting
                (GLUE's files); CSV follows RFC 4180 (quotes, embedded commas and newlines).
    JSONL       {"text": "...", "text_pair": "...", "label": "pos"}       (text_pair optional)

Labels are strings (JSONL also takes integers and booleans); the classes are the sorted set of the
training labels (numerically sorted when all are integers) and are saved as the model config's
``id2label``. Every bad line is a ValueError naming the file and the line.

Without a ``dev`` file, ``dev_fraction`` of the training examples is held out, stratified by label
(seeded). The loop is the pretraining loop's: AdamW (no decay on biases and LayerNorm), linear
warmup then linear decay, global-norm clipping at 1.0, tqdm progress, evaluation (loss, accuracy,
macro F1) every ``eval_every`` steps (default: each epoch), ``metrics.jsonl``, atomic checkpoints
(``bertnp.checkpoint``) and exact resume. What a run writes in ``out_dir``::

    run.json                  the resolved FinetuneConfig, plus the label names
    metrics.jsonl             {"split": "train" | "dev", "step": ..., ...} one a line
    checkpoints/step-000100/  model (HF layout), optimizer.safetensors, trainer_state.json
    best/                     the model with the best dev accuracy so far, with its tokenizer
    model/                    the final model with its tokenizer: BertForSequenceClassification.from_pretrained

Start from a pretrained checkpoint (``model=DIR``: config.json + model.safetensors + vocab.txt; the
classifier is new, the MLM/NSP heads are dropped), or from scratch (``init="scratch"``: random
weights with ``model``'s config and vocabulary, or a ``preset`` / ``model_config`` with ``vocab``).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import io
import json
import math
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bertnp import backend, checkpoint

__all__ = ["Example", "FinetuneConfig", "Finetuner", "finetune", "read_examples", "build_labels",
           "train_dev_split", "encode_examples", "make_batches", "evaluate_classifier", "accuracy",
           "f1_macro", "confusion_matrix", "add_finetune_parser", "run_finetune"]

FORMATS = ("tsv", "csv", "jsonl")
TEXT_NAMES = ("text", "sentence", "sentence1", "text_a")
PAIR_NAMES = ("text_pair", "sentence2", "text_b")
LABEL_NAMES = ("label",)
STATE_VERSION = 1


# ============================================================================ reading data files

@dataclass(frozen=True)
class Example:
    """One labelled example; ``where`` is ``file:line`` for error messages."""
    text: str
    text_pair: str | None
    label: str
    where: str = ""


def _detect_format(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        return format
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    found = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
             ".json": "jsonl"}.get(ext)
    if found is None:
        raise ValueError(f"{path}: cannot tell the format from the extension {ext or '(none)'!r}; "
                         f"name it .tsv, .csv or .jsonl, or pass format= (one of {', '.join(FORMATS)})")
    return found


def _read_lines(path: Path) -> list[str]:
    """The file's lines (UTF-8, a BOM dropped, .gz transparently); errors name file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix.lower() == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: cannot read the file ({exc})") from exc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    out = []
    for number, line in enumerate(lines, 1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if out and out[-1] == "":
        out.pop()                                            # the final newline
    return out


def _pick(names: Sequence[str], header: list[str], given: str | None, what: str, where: str,
          required: bool = True) -> int | None:
    lowered = [h.strip().lower() for h in header]
    if given is not None:
        if given.strip().lower() not in lowered:
            raise ValueError(f"{where}: the header has no column {given!r} for the {what} "
                             f"(columns: {', '.join(header)})")
        return lowered.index(given.strip().lower())
    for name in names:
        if name in lowered:
            return lowered.index(name)
    if required:
        raise ValueError(f"{where}: the header has no {what} column (expected one of {', '.join(names)}; "
                         f"columns: {', '.join(header)})")
    return None


def _check_fields(text, pair, label, where):
    if not text.strip():
        raise ValueError(f"{where}: empty text")
    if pair is not None and not pair.strip():
        raise ValueError(f"{where}: empty text_pair")
    if not label.strip():
        raise ValueError(f"{where}: empty label")


def _read_delimited(path: Path, lines: list[str], delimiter: str, text_column, pair_column,
                    label_column) -> list[Example]:
    name = "tab-separated" if delimiter == "\t" else "comma-separated"
    if delimiter == "\t":
        rows = [(i, line.split("\t")) for i, line in enumerate(lines, 1) if line.strip()]
    else:
        reader = csv.reader(io.StringIO("\n".join(lines) + "\n"), strict=True)
        rows = []
        try:
            for row in reader:
                if any(field.strip() for field in row):
                    rows.append((reader.line_num, row))
        except csv.Error as exc:
            raise ValueError(f"{path}:{reader.line_num}: bad CSV ({exc})") from None
    if not rows:
        raise ValueError(f"{path}: no examples (the file is empty)")
    first_line, first = rows[0]
    lowered = [f.strip().lower() for f in first]
    explicit = any(c is not None for c in (text_column, pair_column, label_column))
    # a header names its columns: the label's (or the text's: then a missing label column is an
    # error, not a header row silently read as an example)
    has_header = explicit or any(n in lowered for n in LABEL_NAMES + TEXT_NAMES)
    if has_header:
        where = f"{path}:{first_line}"
        t = _pick(TEXT_NAMES, first, text_column, "text", where)
        p = _pick(PAIR_NAMES, first, pair_column, "text_pair", where, required=pair_column is not None)
        lab = _pick(LABEL_NAMES, first, label_column, "label", where)
        width = len(first)
        body = rows[1:]
    else:
        width = len(first)
        if width == 2:
            t, p, lab = 0, None, 1
        elif width == 3:
            t, p, lab = 0, 1, 2
        else:
            raise ValueError(f"{path}:{first_line}: expected 2 {name} fields (text, label) or 3 (text, "
                             f"text_pair, label), or a header row naming the columns; got {width} fields")
        body = rows
    examples = []
    for number, row in body:
        where = f"{path}:{number}"
        if len(row) != width:
            raise ValueError(f"{where}: expected {width} {name} fields like line {first_line}, got {len(row)}")
        text, label = row[t], row[lab].strip()
        pair = row[p] if p is not None else None
        _check_fields(text, pair, label, where)
        examples.append(Example(text, pair, label, where))
    return examples


def _read_jsonl(path: Path, lines: list[str], text_column, pair_column, label_column) -> list[Example]:
    text_keys = (text_column,) if text_column else TEXT_NAMES
    pair_keys = (pair_column,) if pair_column else PAIR_NAMES
    label_keys = (label_column,) if label_column else LABEL_NAMES
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object {{\"text\": ..., \"label\": ...}}, "
                             f"got {type(obj).__name__}")

        def get(keys, what, required=True):
            for k in keys:
                if k in obj:
                    return obj[k]
            if required:
                raise ValueError(f"{where}: no {what!r} key (expected one of {', '.join(keys)}; "
                                 f"keys: {', '.join(map(str, obj)) or 'none'})")
            return None
        text = get(text_keys, "text")
        pair = get(pair_keys, "text_pair", required=pair_column is not None)
        label = get(label_keys, "label")
        if not isinstance(text, str):
            raise ValueError(f"{where}: text must be a string, got {type(text).__name__}")
        if pair is not None and not isinstance(pair, str):
            raise ValueError(f"{where}: text_pair must be a string, got {type(pair).__name__}")
        if isinstance(label, bool):
            label = str(label).lower()
        elif isinstance(label, int):
            label = str(label)
        elif not isinstance(label, str):
            raise ValueError(f"{where}: label must be a string or an integer, got {json.dumps(label)}")
        label = label.strip()
        _check_fields(text, pair, label, where)
        examples.append(Example(text, pair, label, where))
    if not examples:
        raise ValueError(f"{path}: no examples (the file is empty)")
    return examples


def read_examples(path, format: str | None = None, text_column: str | None = None,
                  text_pair_column: str | None = None, label_column: str | None = None) -> list[Example]:
    """Read labelled examples from a TSV, CSV or JSONL file (see the module docstring).

    ``format`` overrides the extension; the ``*_column`` names pick header columns / JSON keys.
    Raises FileNotFoundError or ValueError naming ``file:line``."""
    path = Path(path)
    fmt = _detect_format(path, format)
    lines = _read_lines(path)
    if fmt == "jsonl":
        return _read_jsonl(path, lines, text_column, text_pair_column, label_column)
    return _read_delimited(path, lines, "\t" if fmt == "tsv" else ",", text_column, text_pair_column, label_column)


def build_labels(examples: Sequence[Example]) -> list[str]:
    """The sorted class names (numerically when every name is an integer)."""
    names = {e.label for e in examples}
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def train_dev_split(examples: Sequence[Example], dev_fraction: float = 0.1, seed: int = 0):
    """Hold out ``dev_fraction`` of each label's examples (at least one of a label with two or
    more). Seeded, deterministic; both parts keep the file's order."""
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    rng = np.random.default_rng(seed)
    dev_index = set()
    for label in build_labels(examples):
        idx = [i for i, e in enumerate(examples) if e.label == label]
        k = int(round(len(idx) * dev_fraction))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        for j in rng.permutation(len(idx))[:k]:
            dev_index.add(idx[int(j)])
    train = [e for i, e in enumerate(examples) if i not in dev_index]
    dev = [e for i, e in enumerate(examples) if i in dev_index]
    return train, dev


# ============================================================================ encoding and batches

def encode_examples(examples: Sequence[Example], tokenizer, label2id: dict, max_seq_length: int,
                    what: str = "examples") -> dict:
    """Tokenize once: ``{"input_ids": [list], "token_type_ids": [list], "labels": (N,) int64}``,
    each row ``[CLS] A [SEP] (B [SEP])`` truncated to ``max_seq_length`` (longest first)."""
    ids, types, labels = [], [], []
    for e in examples:
        if e.label not in label2id:
            raise ValueError(f"{e.where}: label {e.label!r} does not occur in the training data "
                             f"(classes: {', '.join(label2id)})")
        enc = tokenizer(e.text, e.text_pair, truncation=True, max_length=max_seq_length)
        ids.append(enc["input_ids"])
        types.append(enc["token_type_ids"])
        labels.append(label2id[e.label])
    return {"input_ids": ids, "token_type_ids": types, "labels": np.asarray(labels, dtype=np.int64)}


def make_batches(encoded: dict, order: Sequence[int], batch_size: int, pad_id: int) -> list[dict]:
    """Pad each batch of ``order``'s rows to its longest row: (B, T) int64 arrays + labels (B,)."""
    batches = []
    for start in range(0, len(order), batch_size):
        rows = [int(i) for i in order[start:start + batch_size]]
        width = max(len(encoded["input_ids"][i]) for i in rows)
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, i in enumerate(rows):
            n = len(encoded["input_ids"][i])
            ids[r, :n] = encoded["input_ids"][i]
            types[r, :n] = encoded["token_type_ids"][i]
            mask[r, :n] = 1
        batches.append({"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
                        "labels": encoded["labels"][rows], "rows": np.asarray(rows)})
    return batches


# ============================================================================ metrics

def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"y_true and y_pred must be equally long and non-empty, got {y_true.shape}, {y_pred.shape}")
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true, y_pred, num_labels: int) -> np.ndarray:
    """``m[i, j]`` = number of examples of class i predicted as j."""
    m = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def f1_macro(y_true, y_pred, num_labels: int | None = None) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN), over the classes that occur in
    ``y_true`` or ``y_pred`` (scikit-learn's ``f1_score(average="macro")``)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"y_true and y_pred must be equally long and non-empty, got {y_true.shape}, {y_pred.shape}")
    n = int(max(y_true.max(), y_pred.max()) + 1) if num_labels is None else num_labels
    m = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(m).astype(np.float64)
    fp = m.sum(axis=0) - tp
    fn = m.sum(axis=1) - tp
    present = (m.sum(axis=0) + m.sum(axis=1)) > 0
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(f1.mean())


def evaluate_classifier(model, batches: Sequence[dict]) -> dict:
    """Loss, accuracy, macro F1 and confusion matrix over ``batches`` (dropout off; the model's
    mode and dropout counter are restored)."""
    was_training, count = model.training, model.forward_count
    model.eval()
    total_loss, n, truth, preds = 0.0, 0, [], []
    try:
        for b in batches:
            out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                        token_type_ids=b["token_type_ids"], labels=b["labels"])
            logits = backend.to_host(out.logits)
            total_loss += float(out.loss) * len(b["labels"])
            n += len(b["labels"])
            truth.append(b["labels"])
            preds.append(np.argmax(logits, axis=1))
    finally:
        model.train(was_training)
        model.forward_count = count
        model._cache = None                                  # no backward follows an evaluation
    y, p = np.concatenate(truth), np.concatenate(preds)
    k = model.num_labels
    return {"loss": total_loss / max(n, 1), "accuracy": accuracy(y, p), "f1_macro": f1_macro(y, p, k),
            "n": n, "confusion": confusion_matrix(y, p, k).tolist()}


# ============================================================================ configuration

@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run (saved as ``run.json``).

    ``epochs`` (may be fractional) or ``steps`` sets the length; ``warmup`` is a fraction of the
    steps (< 1) or a number of steps. ``eval_every`` / ``checkpoint_every``: steps (None: once per
    epoch). ``dropout`` None keeps the checkpoint's.
    """
    train: str | None = None
    dev: str | None = None
    dev_fraction: float = 0.1
    format: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    model: str | None = None
    init: str = "pretrained"             # "pretrained" | "scratch"
    vocab: str | None = None
    preset: str = "mini"
    model_config: str | None = None
    do_lower_case: bool | None = None
    max_seq_length: int = 128
    batch_size: int = 32
    epochs: float = 3.0
    steps: int | None = None
    lr: float = 5e-5
    warmup: float = 0.1
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-6
    max_grad_norm: float | None = 1.0
    dropout: float | None = None
    seed: int = 0
    dtype: str = "float32"
    backend: str = "numpy"
    out_dir: str = "runs/finetune"
    eval_every: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_batch_size: int = 64
    save_best: bool = True
    progress: bool = True
    resume: bool = False
    overwrite: bool = False

    RUNTIME_ONLY = ("out_dir", "progress", "resume", "overwrite", "backend", "eval_every",
                    "checkpoint_every", "keep_checkpoints", "log_every", "eval_batch_size", "save_best")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "FinetuneConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown fine-tuning option {unknown[0]!r}")
        cfg = cls(**data)
        cfg.betas = tuple(cfg.betas)
        return cfg

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        def integer(name, low=1, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")

        def number(name, low=0.0, low_open=False, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or (v <= low if low_open else v < low):
                raise ValueError(f"{name} must be a number {'>' if low_open else '>='} {low}, got {v!r}")
        if self.train is None:
            raise ValueError("train: give the training file (TSV, CSV or JSONL)")
        for name in ("batch_size", "keep_checkpoints", "log_every", "eval_batch_size"):
            integer(name)
        integer("max_seq_length", low=8)
        for name in ("steps", "eval_every", "checkpoint_every"):
            integer(name, allow_none=True)
        integer("seed", low=0)
        number("epochs", low_open=True)
        number("lr", low_open=True)
        number("warmup")
        number("weight_decay")
        number("eps", low_open=True)
        number("max_grad_norm", low_open=True, allow_none=True)
        if not 0 < self.dev_fraction < 1:
            raise ValueError(f"dev_fraction must be in (0, 1), got {self.dev_fraction!r}")
        if self.dropout is not None and not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in ("pretrained", "scratch"):
            raise ValueError(f"init must be 'pretrained' or 'scratch', got {self.init!r}")
        if self.init == "pretrained" and self.model is None:
            raise ValueError("model: give a pretrained model folder (config.json, model.safetensors, vocab.txt), "
                             "or init='scratch' (--scratch) with a vocabulary")
        if self.init == "scratch" and self.model is None and self.vocab is None:
            raise ValueError("vocab: training from scratch needs a vocabulary (vocab.txt) or a model folder "
                             "whose config and vocabulary to use")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.backend not in ("numpy", "cupy"):
            raise ValueError(f"backend must be 'numpy' or 'cupy', got {self.backend!r}")

    def warmup_steps(self, total: int) -> int:
        return int(round(self.warmup * total)) if self.warmup < 1 else min(int(self.warmup), total)


def _latest_checkpoint(out: Path) -> Path | None:
    ckdir = out / "checkpoints"
    pointer = ckdir / "latest.json"
    if pointer.is_file():
        path = ckdir / checkpoint.read_json(pointer)["dir"]
        if (path / "trainer_state.json").is_file():
            return path
    done = sorted(p for p in ckdir.glob("step-*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


# ============================================================================ the fine-tuning loop

class Finetuner:
    """Builds data, tokenizer, classifier, AdamW and schedule from a :class:`FinetuneConfig`, and
    trains. ``resume=True`` continues the run in ``out_dir`` exactly (same batches, dropout masks,
    optimizer state) from its latest checkpoint."""

    def __init__(self, config: FinetuneConfig, log: Callable[[str], None] = print):
        self.log = log
        config = dataclasses.replace(config)
        out = Path(config.out_dir)
        self.resumed_from = None
        if config.resume:
            ck = _latest_checkpoint(out)
            if ck is None:
                raise FileNotFoundError(f"resume: no checkpoint in '{out / 'checkpoints'}'")
            saved = checkpoint.read_json(out / "run.json")
            saved_cfg = FinetuneConfig.from_dict(saved["config"])
            for name in FinetuneConfig.RUNTIME_ONLY:
                setattr(saved_cfg, name, getattr(config, name))
            saved_cfg.resume = True
            config, self.resumed_from = saved_cfg, ck
            self._saved_labels = saved["labels"]
        else:
            if (out / "checkpoints").exists() or (out / "run.json").exists():
                if not config.overwrite:
                    raise FileExistsError(f"'{out}' already holds a run: use resume to continue it, "
                                          "overwrite to start again, or another out_dir")
                for name in ("checkpoints", "best", "model", "metrics.jsonl", "run.json"):
                    target = out / name
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
        config.validate()
        self.config, self.out = config, out
        backend.set_backend(config.backend)
        if config.backend == "numpy":
            backend.retain_freed_host_memory()     # no page faults re-allocating activations each step
        self._build()
        out.mkdir(parents=True, exist_ok=True)
        if self.resumed_from is not None:
            self._load_checkpoint(self.resumed_from)
        else:
            checkpoint.write_json(out / "run.json", {"config": config.to_dict(), "labels": self.labels})
            (out / "metrics.jsonl").write_text("", encoding="utf-8")

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        from bertnp.config import BertConfig
        from bertnp.model import BertForSequenceClassification
        from bertnp.optim import AdamW, LinearWarmupDecay
        from bertnp.tokenizer import BertTokenizer
        c, log = self.config, self.log

        # --- data
        columns = dict(format=c.format, text_column=c.text_column, text_pair_column=c.text_pair_column,
                       label_column=c.label_column)
        examples = read_examples(c.train, **columns)
        if c.dev is not None:
            train, dev = examples, read_examples(c.dev, **columns)
        else:
            train, dev = train_dev_split(examples, c.dev_fraction, c.seed)
        self.labels = build_labels(train)
        if len(self.labels) < 2:
            raise ValueError(f"{c.train}: a classifier needs at least 2 labels, found only {self.labels!r}")
        if self.resumed_from is not None and self._saved_labels != self.labels:
            raise ValueError(f"{c.train}: the labels changed since the run started "
                             f"({self._saved_labels} -> {self.labels}): the data is not the same")
        self.label2id = {name: i for i, name in enumerate(self.labels)}

        # --- tokenizer and model
        tok_kwargs = {} if c.do_lower_case is None else {"do_lower_case": c.do_lower_case}
        if c.model is not None:
            mdir = Path(c.model)
            if not mdir.is_dir():
                raise FileNotFoundError(f"model: no such folder: '{mdir}'")
            vocab_dir = Path(c.vocab) if c.vocab is not None else mdir
            self.tokenizer = (BertTokenizer.from_pretrained(vocab_dir, **tok_kwargs) if vocab_dir.is_dir()
                              else BertTokenizer(vocab_dir, **tok_kwargs))
        else:
            vpath = Path(c.vocab)
            self.tokenizer = (BertTokenizer.from_pretrained(vpath, **tok_kwargs) if vpath.is_dir()
                              else BertTokenizer(vpath, **tok_kwargs))
        tok = self.tokenizer
        id2label = {str(i): name for i, name in enumerate(self.labels)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if c.init == "pretrained":
                model = BertForSequenceClassification.from_pretrained(c.model, dtype=c.dtype,
                                                                       num_labels=len(self.labels))
                source = f"pretrained '{c.model}'"
            else:
                if c.model is not None:
                    mcfg = BertConfig.from_json_file(Path(c.model) / "config.json")
                elif c.model_config is not None:
                    mcfg = BertConfig.from_json_file(c.model_config)
                else:
                    mcfg = BertConfig.preset(c.preset, vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id)
                model = BertForSequenceClassification(mcfg, num_labels=len(self.labels), seed=c.seed, dtype=c.dtype)
                source = "scratch (random weights)"
        for w in caught:
            log(f"note: {w.message}")
        mcfg = model.config
        if tok.vocab_size > mcfg.vocab_size:
            raise ValueError(f"the vocabulary has {tok.vocab_size} tokens but the model's vocab_size is "
                             f"{mcfg.vocab_size}: they do not belong together")
        if c.max_seq_length > mcfg.max_position_embeddings:
            raise ValueError(f"max_seq_length {c.max_seq_length} is longer than the model's "
                             f"max_position_embeddings {mcfg.max_position_embeddings}")
        if c.dropout is not None:
            mcfg.hidden_dropout_prob = mcfg.attention_probs_dropout_prob = float(c.dropout)
        mcfg.extra.pop("architectures", None)
        mcfg.extra.update(id2label=id2label, label2id=dict(self.label2id))
        model.dropout_seed = c.seed
        model.train()
        self.model = model

        # --- encoded data and schedule
        t0 = time.perf_counter()
        self.train_data = encode_examples(train, tok, self.label2id, c.max_seq_length)
        self.dev_data = encode_examples(dev, tok, self.label2id, c.max_seq_length) if dev else None
        by_length = sorted(range(len(dev)), key=lambda i: len(self.dev_data["input_ids"][i])) if dev else []
        self.dev_batches = make_batches(self.dev_data, by_length, c.eval_batch_size, tok.pad_token_id) if dev else []
        self.n_train, self.n_dev = len(train), len(dev)
        self.steps_per_epoch = math.ceil(self.n_train / c.batch_size)
        self.total_steps = c.steps if c.steps is not None else max(1, math.ceil(c.epochs * self.steps_per_epoch))
        self.eval_every = c.eval_every or self.steps_per_epoch
        self.checkpoint_every = c.checkpoint_every or self.eval_every
        self.optimizer = AdamW(model, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)
        self.schedule = LinearWarmupDecay(self.optimizer, c.warmup_steps(self.total_steps), self.total_steps)
        self.step, self.train_time = 0, 0.0
        self.best: dict | None = None
        self.last_eval: dict | None = None
        self.last_checkpoint: Path | None = None
        counts = np.bincount(self.train_data["labels"], minlength=len(self.labels))
        log(f"data: {self.n_train} training examples ({', '.join(f'{n} {k}' for k, n in zip(self.labels, counts))}), "
            f"{self.n_dev} dev examples ({'from ' + str(c.dev) if c.dev else f'{c.dev_fraction:.0%} held out'}); "
            f"tokenized in {time.perf_counter() - t0:.1f} s")
        log(f"model: {source}, L{mcfg.num_hidden_layers} H{mcfg.hidden_size} A{mcfg.num_attention_heads} "
            f"V{mcfg.vocab_size}, {model.num_parameters() / 1e6:.2f}M parameters, {c.dtype} on {c.backend}; "
            f"{self.total_steps} steps of {c.batch_size} ({self.total_steps / self.steps_per_epoch:.2f} epochs), "
            f"lr {c.lr:g}, warmup {self.schedule.warmup_steps}")

    # ------------------------------------------------------------------ batches
    def batch_at(self, step: int) -> dict:
        """The training batch of update ``step`` (0-based): a pure function of (seed, step), so a
        resumed run sees exactly the batches of an uninterrupted one."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(self.n_train)
        bs = self.config.batch_size
        rows = order[index * bs:(index + 1) * bs]
        return make_batches(self.train_data, rows, bs, self.tokenizer.pad_token_id)[0]

    # ------------------------------------------------------------------ one update
    def train_step(self) -> dict:
        from bertnp.optim import clip_grad_norm
        from bertnp.train import NonFiniteLossError
        c, model = self.config, self.model
        batch = self.batch_at(self.step)
        model.train()
        model.zero_grad()
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        token_type_ids=batch["token_type_ids"], labels=batch["labels"])
            loss = float(out.loss)
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"loss is {loss} at step {self.step + 1} (lr {self.optimizer.lr:.3g}); "
                                         f"last checkpoint: {self.last_checkpoint or 'none'}: lower the lr, then resume")
            model.backward()
            norm = clip_grad_norm(model.grads, c.max_grad_norm) if c.max_grad_norm else None
        if norm is not None and not math.isfinite(norm):
            raise NonFiniteLossError(f"gradient norm is {norm} at step {self.step + 1}; "
                                     f"last checkpoint: {self.last_checkpoint or 'none'}")
        lr = self.optimizer.lr
        self.optimizer.step()
        self.schedule.step()
        self.step += 1
        pred = np.argmax(backend.to_host(out.logits), axis=1)
        return {"loss": loss, "correct": int((pred == batch["labels"]).sum()), "n": len(batch["labels"]),
                "lr": lr, "grad_norm": norm}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        if not self.dev_batches:
            return {}
        result = evaluate_classifier(self.model, self.dev_batches)
        self.last_eval = {"step": self.step, **result}
        return result

    def _write_metrics(self, record: dict) -> None:
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ saving
    def _save_model_dir(self, name: str) -> Path:
        def write(tmp: Path):
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        return checkpoint.atomic_directory(self.out / name, write)

    def save_checkpoint(self) -> Path:
        ckdir = self.out / "checkpoints"
        name = f"step-{self.step:06d}"
        state = {"version": STATE_VERSION, "step": self.step, "schedule": self.schedule.state_dict(),
                 "model_rng": {"dropout_seed": self.model.dropout_seed, "forward_count": self.model.forward_count},
                 "train_time": self.train_time, "best": self.best, "last_eval": self.last_eval,
                 "backend": backend.get_backend()}

        def write(tmp: Path):
            self.model.save_pretrained(tmp)
            checkpoint.save_optimizer(tmp / "optimizer.safetensors", self.optimizer)
            checkpoint.write_json(tmp / "trainer_state.json", state)
        path = checkpoint.atomic_directory(ckdir / name, write)
        checkpoint.write_json(ckdir / "latest.json", {"step": self.step, "dir": name})
        self.last_checkpoint = path
        for old in sorted(p for p in ckdir.glob("step-*") if p.is_dir())[:-self.config.keep_checkpoints]:
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
        self.model.dropout_seed = int(state["model_rng"]["dropout_seed"])
        self.model.forward_count = int(state["model_rng"]["forward_count"])
        self.step, self.train_time = int(state["step"]), float(state["train_time"])
        self.best, self.last_eval, self.last_checkpoint = state.get("best"), state.get("last_eval"), path
        metrics = self.out / "metrics.jsonl"
        kept = []
        if metrics.is_file():
            for line in metrics.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        kept.append(line + "\n")
                except json.JSONDecodeError:
                    continue
        metrics.write_text("".join(kept), encoding="utf-8")
        self.log(f"resumed from '{path}' at step {self.step} of {self.total_steps}")

    # ------------------------------------------------------------------ the loop
    def train(self, stop_at: int | None = None) -> dict:
        """Train to ``total_steps`` (or pause at ``stop_at``), evaluating and checkpointing on the
        way; a complete run writes ``model/`` (final) and returns a summary."""
        c = self.config
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        bar = None
        if c.progress and self.step < end:
            from tqdm.auto import tqdm
            bar = tqdm(total=end, initial=self.step, desc="finetune", unit="step", dynamic_ncols=True,
                       file=sys.stderr)
        def fresh():
            return {"loss": 0.0, "correct": 0, "n": 0, "steps": 0, "time": 0.0, "grad_norm": 0.0}
        window = fresh()
        try:
            while self.step < end:
                t0 = time.perf_counter()
                m = self.train_step()
                dt = time.perf_counter() - t0
                self.train_time += dt
                for key in ("loss", "correct", "n"):
                    window[key] += m[key]
                window["grad_norm"] += m["grad_norm"] or 0.0
                window["steps"] += 1
                window["time"] += dt
                if bar is not None:
                    bar.update(1)
                last = self.step == self.total_steps
                if self.step % c.log_every == 0 or last or self.step == end:
                    k = max(window["steps"], 1)
                    rec = {"split": "train", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                           "loss": window["loss"] / k, "accuracy": window["correct"] / max(window["n"], 1),
                           "lr": m["lr"], "grad_norm": window["grad_norm"] / k,
                           "examples_per_s": window["n"] / max(window["time"], 1e-9), "elapsed_s": self.train_time}
                    self._write_metrics(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['accuracy']:.3f}", lr=f"{m['lr']:.2g}")
                    window = fresh()
                if self.dev_batches and (self.step % self.eval_every == 0 or last):
                    ev = self.evaluate()
                    self._write_metrics({"split": "dev", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                                         **{k: v for k, v in ev.items()}})
                    msg = (f"step {self.step} (epoch {self.step / self.steps_per_epoch:.2f}): dev loss {ev['loss']:.4f}  "
                           f"accuracy {ev['accuracy']:.4f}  macro F1 {ev['f1_macro']:.4f}")
                    if self.best is None or ev["accuracy"] > self.best["accuracy"]:
                        self.best = {"step": self.step, "accuracy": ev["accuracy"], "f1_macro": ev["f1_macro"],
                                     "loss": ev["loss"]}
                        if c.save_best:
                            self._save_model_dir("best")
                        msg += "  (best so far)"
                    (bar.write if bar is not None else self.log)(msg)
                if self.step % self.checkpoint_every == 0 or last:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        summary = {"step": self.step, "total_steps": self.total_steps, "complete": self.step >= self.total_steps,
                   "epochs": self.step / self.steps_per_epoch, "train_examples": self.n_train,
                   "dev_examples": self.n_dev, "labels": list(self.labels), "train_time": self.train_time,
                   "dev": self.last_eval, "best": self.best,
                   "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                   "metrics": str(self.out / "metrics.jsonl")}
        if self.best is not None and c.save_best:
            summary["best_dir"] = str(self.out / "best")
        if summary["complete"]:
            summary["model_dir"] = str(self._save_model_dir("model"))
        return summary


def finetune(config: FinetuneConfig | None = None, log: Callable = print, **options) -> dict:
    """Build a :class:`Finetuner` from ``config`` (or keyword options) and train; returns its summary."""
    if config is None:
        config = FinetuneConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    return Finetuner(config, log=log).train()


# ============================================================================ command line

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _nonneg_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def add_finetune_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``finetune`` command to an argparse sub-parser collection (``bertnp finetune``)."""
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
    data.add_argument("--dev-fraction", type=_positive_float, default=0.1, metavar="F",
                      help="share of --train held out when there is no --dev (0.1, stratified)")
    data.add_argument("--format", choices=FORMATS, help="file format (default: from the extension)")
    data.add_argument("--text-column", metavar="NAME", help="header column / JSON key of the text")
    data.add_argument("--text-pair-column", metavar="NAME", help="... of the second text (pair tasks)")
    data.add_argument("--label-column", metavar="NAME", help="... of the label")
    model = p.add_argument_group("model")
    model.add_argument("--model", metavar="DIR", help="pretrained model folder (config.json, model.safetensors, "
                       "vocab.txt), e.g. runs/demo/model or an all-MiniLM-L6-v2 folder")
    model.add_argument("--scratch", action="store_true", help="random weights instead of --model's "
                       "(its config and vocabulary are kept; without --model give --vocab and --preset)")
    model.add_argument("--vocab", metavar="PATH", help="vocab.txt (or a folder with one): default --model's")
    model.add_argument("--preset", default="mini", help="model size from scratch without --model (mini)")
    model.add_argument("--config", metavar="FILE", help="config.json for a model from scratch")
    model.add_argument("--cased", action="store_true", help="keep case and accents (default: the tokenizer's)")
    model.add_argument("--dropout", type=_nonneg_float, metavar="P", help="dropout (default: the config's)")
    model.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    opt = p.add_argument_group("training")
    opt.add_argument("--epochs", type=_positive_float, default=3.0, metavar="N", help="passes over --train (3)")
    opt.add_argument("--steps", type=_positive_int, metavar="N", help="number of updates (overrides --epochs)")
    opt.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="(32)")
    opt.add_argument("--max-seq-length", type=_positive_int, default=128, metavar="N", help="(128)")
    opt.add_argument("--lr", type=_positive_float, default=5e-5, help="peak learning rate (5e-5)")
    opt.add_argument("--warmup", type=_nonneg_float, default=0.1, help="warmup: fraction of the steps (< 1) or steps (0.1)")
    opt.add_argument("--weight-decay", type=_nonneg_float, default=0.01, help="(0.01)")
    opt.add_argument("--max-grad-norm", type=_positive_float, default=1.0, help="global-norm clipping (1.0)")
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    run = p.add_argument_group("run")
    run.add_argument("--out", default="runs/finetune", metavar="DIR", help="output folder (runs/finetune)")
    run.add_argument("--eval-every", type=_positive_int, metavar="STEPS", help="dev evaluation period (each epoch)")
    run.add_argument("--checkpoint-every", type=_positive_int, metavar="STEPS", help="(as --eval-every)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_finetune)
    return p


def run_finetune(args) -> int:
    """Run ``bertnp finetune`` from parsed arguments; prints the summary; returns 0. Bad options
    raise ValueError / FileNotFoundError (the CLI prints them as one line)."""
    if args.resume:
        config = FinetuneConfig(out_dir=args.out, resume=True,            # the rest comes from run.json
                                progress=not args.no_progress, backend=args.backend,
                                eval_every=args.eval_every, checkpoint_every=args.checkpoint_every)
    else:
        if args.train is None:
            raise ValueError("finetune: give --train FILE (or --resume)")
        if args.model is None and not args.scratch:
            raise ValueError("finetune: give --model DIR (a pretrained start), or --scratch with --vocab")
        if args.config is not None and args.model is not None and args.scratch:
            raise ValueError("finetune: give --model or --config for a model from scratch, not both")
        config = FinetuneConfig(
            train=args.train, dev=args.dev, dev_fraction=args.dev_fraction, format=args.format,
            text_column=args.text_column, text_pair_column=args.text_pair_column, label_column=args.label_column,
            model=args.model, init="scratch" if args.scratch else "pretrained", vocab=args.vocab,
            preset=args.preset, model_config=args.config, do_lower_case=False if args.cased else None,
            max_seq_length=args.max_seq_length, batch_size=args.batch_size, epochs=args.epochs, steps=args.steps,
            lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
            dropout=args.dropout, seed=args.seed, dtype=args.dtype, backend=args.backend, out_dir=args.out,
            eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
            progress=not args.no_progress, overwrite=args.overwrite)
    summary = Finetuner(config).train()
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
