"""Fine-tuning BERT for sequence classification: data files, metrics, and the classifier's side of
the training loop (:class:`bertnp.train.TrainingLoop`, which pretraining runs too).

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
(seeded). The loop is the pretraining loop itself: AdamW (no decay on biases and LayerNorm), linear
warmup then linear decay, global-norm clipping at 1.0, tqdm progress, nothing read from the device
during a step, evaluation (loss, accuracy, macro F1) every ``eval_every`` steps (default: each
epoch), ``metrics.jsonl``, atomic checkpoints (``bertnp.checkpoint``), exact resume, and a
checkpoint on Ctrl-C / SIGTERM. What a run writes in ``out_dir``::

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

import csv
import dataclasses
import gzip
import io
import json
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bertnp import backend
from bertnp.optim import AdamW, LinearWarmupDecay
from bertnp.train import RunConfig, TrainingLoop, _is_int, _is_number

__all__ = ["Example", "FinetuneConfig", "Finetuner", "finetune", "read_examples", "build_labels",
           "train_dev_split", "encode_examples", "make_batches", "evaluate_classifier", "accuracy",
           "f1_macro", "confusion_matrix", "add_finetune_parser", "run_finetune"]

FORMATS = ("tsv", "csv", "jsonl")
TEXT_NAMES = ("text", "sentence", "sentence1", "text_a")
PAIR_NAMES = ("text_pair", "sentence2", "text_b")
LABEL_NAMES = ("label",)


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
class FinetuneConfig(RunConfig):
    """Everything that defines a fine-tuning run (saved in ``run.json``); the options every run has
    are :class:`bertnp.train.RunConfig`'s.

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
    epochs: float = 3.0
    eval_batch_size: int = 64
    save_best: bool = True
    # RunConfig's options with fine-tuning's defaults
    lr: float = 5e-5
    out_dir: str = "runs/finetune"
    eval_every: int | None = None
    checkpoint_every: int | None = None

    RUNTIME_ONLY = RunConfig.RUNTIME_ONLY + ("eval_batch_size", "save_best")

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if self.train is None:
            raise ValueError("train: give the training file (TSV, CSV or JSONL)")
        super().validate()
        if not _is_int(self.eval_batch_size, 1):
            raise ValueError(f"eval_batch_size must be a positive integer, got {self.eval_batch_size!r}")
        if not _is_number(self.epochs, 0.0, low_open=True):
            raise ValueError(f"epochs must be a number > 0, got {self.epochs!r}")
        if not (_is_number(self.dev_fraction, 0.0, low_open=True) and self.dev_fraction < 1):
            raise ValueError(f"dev_fraction must be in (0, 1), got {self.dev_fraction!r}")
        if self.do_lower_case is not None and not isinstance(self.do_lower_case, bool):
            raise ValueError(f"do_lower_case must be true, false or null (the tokenizer's), got {self.do_lower_case!r}")
        if not isinstance(self.save_best, bool):
            raise ValueError(f"save_best must be true or false, got {self.save_best!r}")
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


# ============================================================================ the fine-tuning loop

class Finetuner(TrainingLoop):
    """Builds data, tokenizer, classifier, AdamW and schedule from a :class:`FinetuneConfig`, and
    trains with :class:`bertnp.train.TrainingLoop` (the pretraining loop). ``resume=True``
    continues the run in ``out_dir`` exactly (same batches, dropout masks, optimizer state) from
    its latest checkpoint."""
    config_class = FinetuneConfig
    command = "finetune"
    description = "finetune"
    eval_split = "dev"
    OUTPUTS = ("checkpoints", "best", "model", "metrics.jsonl", "run.json")
    STATE_FIELDS = {"best": "object or null"}
    DEVICE_KEYS = ("loss", "correct", "grad_norm")
    COUNT_KEYS = ("correct",)

    # ------------------------------------------------------------------ run.json: the config and the labels
    @classmethod
    def saved_options(cls, record) -> dict:
        config = record.get("config") if isinstance(record, dict) else None
        return config if isinstance(config, dict) else {}

    def _config_from_run_record(self, data, path) -> FinetuneConfig:
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ValueError(f"{path}: field 'config' is missing or not an object")
        labels = data.get("labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"{path}: field 'labels' must be a list of label names, got {labels!r}")
        self._saved_labels = labels
        return FinetuneConfig.from_dict(data["config"], source=path)

    def _run_record(self) -> dict:
        return {"config": self.config.to_dict(), "labels": self.labels}

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        from bertnp.config import BertConfig
        from bertnp.model import BertForSequenceClassification
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
        saved_labels = getattr(self, "_saved_labels", None)
        if c.resume and saved_labels is not None and saved_labels != self.labels:
            raise ValueError(f"{c.train}: the labels changed since the run started "
                             f"({saved_labels} -> {self.labels}): the data is not the same")
        self.label2id = {name: i for i, name in enumerate(self.labels)}

        # --- tokenizer and model
        tok_kwargs = {} if c.do_lower_case is None else {"do_lower_case": c.do_lower_case}
        if c.model is not None:
            mdir = Path(c.model)
            if not mdir.is_dir():
                raise FileNotFoundError(f"model: no such folder: '{mdir}'")
            vocab_dir = Path(c.vocab) if c.vocab is not None else mdir
        else:
            vocab_dir = Path(c.vocab)
        self.tokenizer = (BertTokenizer.from_pretrained(vocab_dir, **tok_kwargs) if vocab_dir.is_dir()
                          else BertTokenizer(vocab_dir, **tok_kwargs))
        tok = self.tokenizer
        id2label = {str(i): name for i, name in enumerate(self.labels)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if c.init == "pretrained":
                model = BertForSequenceClassification.from_pretrained(c.model, dtype=c.dtype, use_kernels=c.use_kernels,
                                                                       num_labels=len(self.labels))
                source = f"pretrained '{c.model}'"
            else:
                if c.model is not None:
                    mcfg = BertConfig.from_json_file(Path(c.model) / "config.json")
                elif c.model_config is not None:
                    mcfg = BertConfig.from_json_file(c.model_config)
                else:
                    mcfg = BertConfig.preset(c.preset, vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id)
                model = BertForSequenceClassification(mcfg, num_labels=len(self.labels), seed=c.seed, dtype=c.dtype,
                                                      use_kernels=c.use_kernels)
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
        model.skip_unscored_rows = True      # the last layer's dense sublayers at [CLS] only: the same step, less work
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
        self.best: dict | None = None
        counts = np.bincount(self.train_data["labels"], minlength=len(self.labels))
        log(f"data: {self.n_train} training examples ({', '.join(f'{n} {k}' for k, n in zip(self.labels, counts))}), "
            f"{self.n_dev} dev examples ({'from ' + str(c.dev) if c.dev else f'{c.dev_fraction:.0%} held out'}); "
            f"tokenized in {time.perf_counter() - t0:.1f} s")
        log(f"model: {source}, L{mcfg.num_hidden_layers} H{mcfg.hidden_size} A{mcfg.num_attention_heads} "
            f"V{mcfg.vocab_size}, {model.num_parameters() / 1e6:.2f}M parameters, {c.dtype} on {c.backend}; "
            f"{self.total_steps} steps of {c.batch_size} ({self.total_steps / self.steps_per_epoch:.2f} epochs), "
            f"lr {c.lr:g}, warmup {self.schedule.warmup_steps}")

    # ------------------------------------------------------------------ one update
    def batch_at(self, step: int) -> dict:
        """The training batch of update ``step`` (0-based): a pure function of (seed, step), so a
        resumed run sees exactly the batches of an uninterrupted one."""
        epoch, index = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(self.n_train)
        bs = self.config.batch_size
        rows = order[index * bs:(index + 1) * bs]
        return make_batches(self.train_data, rows, bs, self.tokenizer.pad_token_id)[0]

    def _next_update(self) -> list:
        return [self.batch_at(self.step)]        # one batch an update (the classifier's loss is its mean)

    def _update_totals(self, batches) -> dict:
        return {"n_examples": int(sum(len(b["labels"]) for b in batches))}

    def _forward_backward(self, batch, totals, model=None) -> dict:
        model = self.model if model is None else model
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"], labels=batch["labels"])
        model.backward()
        correct = (out.logits.argmax(axis=-1) == backend.to_device(batch["labels"])).sum()   # stays on the device
        return {"loss": out.loss, "correct": correct}

    # ------------------------------------------------------------------ evaluation and metrics
    def _can_evaluate(self) -> bool:
        return bool(self.dev_batches)

    def evaluate(self) -> dict:
        if not self.dev_batches:
            return {}
        result = evaluate_classifier(self.model, self.dev_batches)
        self.last_eval = {"step": self.step, **result}
        return result

    def _eval_record(self, result: dict) -> dict:
        return {"epoch": self.step / self.steps_per_epoch, **result}

    def _after_evaluation(self, ev: dict, say) -> None:
        msg = (f"step {self.step} (epoch {self.step / self.steps_per_epoch:.2f}): dev loss {ev['loss']:.4f}  "
               f"accuracy {ev['accuracy']:.4f}  macro F1 {ev['f1_macro']:.4f}")
        if self.best is None or ev["accuracy"] > self.best["accuracy"]:
            self.best = {"step": self.step, "accuracy": ev["accuracy"], "f1_macro": ev["f1_macro"], "loss": ev["loss"]}
            if self.config.save_best:
                self._save_model_dir("best")
            msg += "  (best so far)"
        say(msg)

    def _window_record(self, w: Counter, lr: float) -> dict:
        k = max(w["n"], 1)
        return {"split": "train", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                "loss": w["loss"] / k, "accuracy": w["correct"] / max(w["n_examples"], 1), "lr": lr,
                "grad_norm": w["grad_norm"] / k, "examples_per_s": w["n_examples"] / max(w["time"], 1e-9),
                "elapsed_s": self.train_time}

    def _postfix(self, rec: dict) -> dict:
        return {"loss": f"{rec['loss']:.3f}", "acc": f"{rec['accuracy']:.3f}", "lr": f"{rec['lr']:.2g}"}

    # ------------------------------------------------------------------ checkpoints and summary
    def _extra_state(self) -> dict:
        return {"best": self.best}

    def _load_extra_state(self, state: dict, path: Path) -> None:
        self.best = state["best"]

    def _summary(self) -> dict:
        summary = {"epochs": self.step / self.steps_per_epoch, "train_examples": self.n_train,
                   "dev_examples": self.n_dev, "labels": list(self.labels), "dev": self.last_eval, "best": self.best}
        if self.best is not None and self.config.save_best:
            summary["best_dir"] = str(self.out / "best")
        return summary


def finetune(config: FinetuneConfig | None = None, log: Callable = print, **options) -> dict:
    """Build a :class:`Finetuner` from ``config`` (or keyword options) and train; returns its summary."""
    if config is None:
        config = FinetuneConfig(**options)
    elif options:
        config = dataclasses.replace(config, **options)
    return Finetuner(config, log=log).train()


# the command line (``bertnp finetune``) lives with the other commands in bertnp.cli
from bertnp.cli import add_finetune_parser, run_finetune  # noqa: E402
