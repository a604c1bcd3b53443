"""Fine-tuning for sequence classification (bertnp.finetune): TSV / CSV / JSONL parsing and its
errors (file and line named), the train/dev split, accuracy and macro F1, a tiny model learning a
tiny separable task quickly, checkpoints and exact resume, saved label names, the CLI wiring, and
the example data set's derivation."""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from bertnp.finetune import (Example, FinetuneConfig, Finetuner, accuracy, add_finetune_parser, build_labels,
                             confusion_matrix, encode_examples, f1_macro, finetune, make_batches, read_examples,
                             run_finetune, train_dev_split)
from bertnp.model import BertForSequenceClassification
from bertnp.tokenizer import BertTokenizer
from conftest import host

ROOT = Path(__file__).resolve().parents[1]

GOOD = "sunny bright happy calm warm gentle kind sweet lovely joyful".split()
BAD = "stormy dark angry cold harsh cruel bitter grim awful gloomy".split()
NEUTRAL = "the day was and it felt very quite so a".split()


def write(path: Path, text: str, encoding="utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# ============================================================================ a tiny separable task

def sentence(rng, words) -> str:
    out = []
    for _ in range(int(rng.integers(4, 9))):
        pool = words if rng.random() < 0.5 else NEUTRAL
        out.append(pool[int(rng.integers(len(pool)))])
    if not any(w in words for w in out):
        out[0] = words[int(rng.integers(len(words)))]
    return " ".join(out)


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """vocab.txt, a tiny config.json and train/dev TSVs of a two-class task a bag of words solves."""
    root = tmp_path_factory.mktemp("task")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + GOOD + BAD + NEUTRAL
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    cfg = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)
    (root / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    rng = np.random.default_rng(0)
    for name, n in (("train", 240), ("dev", 60)):
        lines = ["text\tlabel"]
        for i in range(n):
            label = "positive" if i % 2 == 0 else "negative"
            lines.append(f"{sentence(rng, GOOD if label == 'positive' else BAD)}\t{label}")
        (root / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def tiny_config(task: Path, out: Path, **overrides) -> FinetuneConfig:
    options = dict(train=str(task / "train.tsv"), dev=str(task / "dev.tsv"), init="scratch",
                   vocab=str(task / "vocab.txt"), model_config=str(task / "config.json"), out_dir=str(out),
                   max_seq_length=16, batch_size=16, epochs=4, lr=3e-3, warmup=0.1, seed=0, progress=False,
                   dtype="float32")
    options.update(overrides)
    return FinetuneConfig(**options)


def test_tiny_model_learns_separable_task_quickly(tiny_task, tmp_path):
    logs = []
    summary = finetune(tiny_config(tiny_task, tmp_path / "run"), log=logs.append)
    assert summary["complete"] and summary["step"] == 60            # 240 / 16 = 15 steps x 4 epochs
    assert summary["labels"] == ["negative", "positive"]
    assert summary["dev"]["accuracy"] >= 0.95, summary["dev"]
    assert summary["dev"]["f1_macro"] >= 0.95
    assert summary["best"]["accuracy"] >= summary["dev"]["accuracy"]
    # the run's files: metrics, checkpoints, best and final models (HF layout with the tokenizer)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in records if r["split"] == "dev"]
    assert [r["step"] for r in dev] == [15, 30, 45, 60]              # once per epoch
    assert dev[-1]["accuracy"] == summary["dev"]["accuracy"]
    assert dev[0]["loss"] > dev[-1]["loss"]
    assert (run / "checkpoints" / "latest.json").is_file()
    assert len(list((run / "checkpoints").glob("step-*"))) == 2     # keep_checkpoints
    for name in ("model", "best"):
        assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in (run / name).iterdir()}
    model = BertForSequenceClassification.from_pretrained(run / "model")
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    from bertnp.inference import classify
    tok = BertTokenizer.from_pretrained(run / "model")
    preds = classify(model, tok, ["sunny happy warm day", "dark angry cold day"])
    assert [p["label"] for p in preds] == ["positive", "negative"]
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-9 for p in preds)


def test_dev_split_from_train_when_no_dev_file(tiny_task, tmp_path):
    f = Finetuner(tiny_config(tiny_task, tmp_path / "run", dev=None, dev_fraction=0.25, steps=2),
                  log=lambda m: None)
    assert f.n_train + f.n_dev == 240 and f.n_dev == 60
    assert np.bincount(f.dev_data["labels"]).tolist() == [30, 30]   # stratified


def test_exact_resume(tiny_task, tmp_path):
    """6 steps straight == 3 steps, stop, resume, 3 more: bit-identical weights and optimizer state."""
    straight = Finetuner(tiny_config(tiny_task, tmp_path / "a", steps=6, checkpoint_every=3, eval_every=3,
                                     dropout=0.1), log=lambda m: None)
    straight.train()
    first = Finetuner(tiny_config(tiny_task, tmp_path / "b", steps=6, checkpoint_every=3, eval_every=3,
                                  dropout=0.1), log=lambda m: None)
    first.train(stop_at=3)
    assert first.step == 3
    again = Finetuner(FinetuneConfig(out_dir=str(tmp_path / "b"), resume=True, progress=False), log=lambda m: None)
    assert again.step == 3 and again.config.dropout == 0.1
    summary = again.train()
    assert summary["complete"]
    for name, value in straight.model.state_dict().items():
        np.testing.assert_array_equal(again.model.state_dict()[name], value, err_msg=name)
    for name, value in straight.optimizer.exp_avg.items():
        np.testing.assert_array_equal(again.optimizer.exp_avg[name], value, err_msg=name)
    assert again.model.forward_count == straight.model.forward_count
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "dev"]
    assert steps == [3, 6]


def test_run_folder_is_not_overwritten_by_accident(tiny_task, tmp_path):
    finetune(tiny_config(tiny_task, tmp_path / "run", steps=1), log=lambda m: None)
    with pytest.raises(FileExistsError, match="already holds a run"):
        Finetuner(tiny_config(tiny_task, tmp_path / "run", steps=1), log=lambda m: None)
    Finetuner(tiny_config(tiny_task, tmp_path / "run", steps=1, overwrite=True), log=lambda m: None)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Finetuner(FinetuneConfig(out_dir=str(tmp_path / "empty"), resume=True), log=lambda m: None)


def test_pretrained_start_keeps_encoder_and_adds_classifier(tiny_task, tmp_path):
    """init='pretrained' loads the encoder from a folder (here a bertnp pretraining checkpoint) and
    notes the new classifier; init='scratch' with the same folder has the same shapes, new values."""
    from bertnp.config import BertConfig
    from bertnp.model import BertForPreTraining
    cfg = BertConfig.from_json_file(tiny_task / "config.json")
    src = BertForPreTraining(cfg, seed=7)
    src.save_pretrained(tmp_path / "pre")
    BertTokenizer(tiny_task / "vocab.txt").save_pretrained(tmp_path / "pre")
    logs = []
    f = Finetuner(tiny_config(tiny_task, tmp_path / "run", init="pretrained", model=str(tmp_path / "pre"),
                              vocab=None, model_config=None, steps=1), log=logs.append)
    assert any("classifier.weight" in m and "newly initialised" in m for m in logs)
    assert any("not used" in m and "cls.predictions" in m for m in logs)
    np.testing.assert_array_equal(host(f.model.state_dict()["bert.encoder.layer.1.output.dense.weight"]),
                                  host(src.state_dict()["bert.encoder.layer.1.output.dense.weight"]))
    g = Finetuner(tiny_config(tiny_task, tmp_path / "run2", init="scratch", model=str(tmp_path / "pre"),
                              vocab=None, model_config=None, steps=1), log=lambda m: None)
    w = host(g.model.state_dict()["bert.encoder.layer.1.output.dense.weight"])
    assert w.shape == src.state_dict()["bert.encoder.layer.1.output.dense.weight"].shape
    assert not np.array_equal(w, host(src.state_dict()["bert.encoder.layer.1.output.dense.weight"]))


def test_bad_runs(tiny_task, tmp_path):
    with pytest.raises(ValueError, match="train"):
        FinetuneConfig(out_dir=str(tmp_path)).validate()
    with pytest.raises(ValueError, match="model"):
        FinetuneConfig(train="x.tsv").validate()
    with pytest.raises(ValueError, match="vocab"):
        FinetuneConfig(train="x.tsv", init="scratch").validate()
    with pytest.raises(ValueError, match="lr"):
        tiny_config(tiny_task, tmp_path, lr=0).validate()
    one = write(tmp_path / "one.tsv", "a day\tpositive\nthe day\tpositive\n")
    with pytest.raises(ValueError, match="at least 2 labels"):
        Finetuner(tiny_config(tiny_task, tmp_path / "r1", train=str(one), dev=None), log=lambda m: None)
    dev = write(tmp_path / "dev.tsv", "a day\tpositive\nthe day\tneutral\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:2: label 'neutral' does not occur in the training data"):
        Finetuner(tiny_config(tiny_task, tmp_path / "r2", dev=str(dev)), log=lambda m: None)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        Finetuner(tiny_config(tiny_task, tmp_path / "r3", max_seq_length=64), log=lambda m: None)


# ============================================================================ the CLI wiring

def parser():
    p = argparse.ArgumentParser(prog="bertnp")
    sub = p.add_subparsers(dest="command")
    add_finetune_parser(sub)
    return p


def test_cli_finetune(tiny_task, tmp_path, capsys):
    args = parser().parse_args([
        "finetune", "--train", str(tiny_task / "train.tsv"), "--dev", str(tiny_task / "dev.tsv"), "--scratch",
        "--vocab", str(tiny_task / "vocab.txt"), "--config", str(tiny_task / "config.json"),
        "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "16", "--max-seq-length", "16",
        "--lr", "3e-3", "--no-progress"])
    assert args.func is run_finetune
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "dev (final):  accuracy" in out and "model:" in out
    # --resume of a finished run: nothing left to do, same summary
    args = parser().parse_args(["finetune", "--out", str(tmp_path / "run"), "--resume", "--no-progress"])
    assert run_finetune(args) == 0
    assert "trained 30 steps" in capsys.readouterr().out


def test_cli_finetune_errors(tmp_path):
    with pytest.raises(ValueError, match="--train"):
        run_finetune(parser().parse_args(["finetune", "--out", str(tmp_path)]))
    with pytest.raises(ValueError, match="--model"):
        run_finetune(parser().parse_args(["finetune", "--train", "x.tsv", "--out", str(tmp_path)]))
    with pytest.raises(SystemExit):
        parser().parse_args(["finetune", "--epochs", "0"])


# ============================================================================ file formats

def test_tsv_without_header(tmp_path):
    p = write(tmp_path / "a.tsv", "good movie\tpos\nbad movie\tneg\n\nfine film\tpos\n")
    ex = read_examples(p)
    assert [(e.text, e.text_pair, e.label) for e in ex] == [
        ("good movie", None, "pos"), ("bad movie", None, "neg"), ("fine film", None, "pos")]
    assert ex[2].where.endswith("a.tsv:4")
    pairs = read_examples(write(tmp_path / "b.tsv", "A man.\tA person.\tentail\r\nA cat.\tA car.\tneutral\r\n"))
    assert [(e.text, e.text_pair, e.label) for e in pairs] == [("A man.", "A person.", "entail"),
                                                               ("A cat.", "A car.", "neutral")]


def test_tsv_with_header_picks_named_columns(tmp_path):
    p = write(tmp_path / "glue.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA b.\tC d.\t1\n1\tE f.\tG h.\t0\n")
    ex = read_examples(p)
    assert [(e.text, e.text_pair, e.label) for e in ex] == [("A b.", "C d.", "1"), ("E f.", "G h.", "0")]
    ex = read_examples(p, text_column="sentence2", label_column="index")
    assert [(e.text, e.label) for e in ex] == [("C d.", "0"), ("G h.", "1")]
    with pytest.raises(ValueError, match=r"glue\.tsv:1: the header has no column 'review'"):
        read_examples(p, text_column="review")


def test_csv_quotes_commas_and_newlines(tmp_path):
    p = write(tmp_path / "a.csv", 'text,label\n"Hello, world",greeting\n"two\nlines ""quoted""",other\nplain,other\n')
    ex = read_examples(p)
    assert [(e.text, e.label) for e in ex] == [("Hello, world", "greeting"), ('two\nlines "quoted"', "other"),
                                              ("plain", "other")]
    assert ex[2].where.endswith("a.csv:5")
    headerless = read_examples(write(tmp_path / "b.csv", "x y,1\nz w,0\n"))
    assert [(e.text, e.label) for e in headerless] == [("x y", "1"), ("z w", "0")]


def test_jsonl_and_gzip(tmp_path):
    lines = ['{"text": "a b", "label": 1}', "", '{"text": "c d", "text_pair": "e", "label": "x"}',
             '{"sentence": "f g", "label": true}']
    ex = read_examples(write(tmp_path / "a.jsonl", "\n".join(lines) + "\n"))
    assert [(e.text, e.text_pair, e.label) for e in ex] == [("a b", None, "1"), ("c d", "e", "x"), ("f g", None, "true")]
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress("\n".join(lines).encode()))
    assert read_examples(gz) == [Example(e.text, e.text_pair, e.label, e.where.replace("a.jsonl", "a.jsonl.gz"))
                                 for e in ex]
    assert read_examples(write(tmp_path / "data.txt", "x\ty\n"), format="tsv")[0].label == "y"
    bom = read_examples(write(tmp_path / "bom.tsv", "\ufefftext\tlabel\nx\ty\n"))
    assert [(e.text, e.label) for e in bom] == [("x", "y")]


@pytest.mark.parametrize("name, content, message", [
    ("a.tsv", "good\tpos\nbad movie\n", r"a\.tsv:2: expected 2 tab-separated fields like line 1, got 1"),
    ("a.tsv", "one\ttwo\tthree\tfour\n", r"a\.tsv:1: expected 2 tab-separated fields \(text, label\) or 3"),
    ("a.tsv", "good\tpos\n \tneg\n", r"a\.tsv:2: empty text"),
    ("a.tsv", "good\tpos\nbad\t \n", r"a\.tsv:2: empty label"),
    ("a.tsv", "text\tlabel\nx\ty\nz\n", r"a\.tsv:3: expected 2"),
    ("a.tsv", "sentence\tclass\nx\ty\n", r"a\.tsv:1: the header has no label column"),
    ("a.tsv", "", r"a\.tsv: no examples"),
    ("a.tsv", "\n\n", r"a\.tsv: no examples"),
    ("a.csv", 'text,label\n"unclosed,x\n', r"a\.csv:\d+: bad CSV"),
    ("a.csv", "text,label\nx,y,z\n", r"a\.csv:2: expected 2 comma-separated fields"),
    ("a.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n', r"a\.jsonl:2: not valid JSON"),
    ("a.jsonl", '["a", "x"]\n', r"a\.jsonl:1: expected a JSON object"),
    ("a.jsonl", '{"text": "a"}\n', r"a\.jsonl:1: no 'label' key"),
    ("a.jsonl", '{"label": "a"}\n', r"a\.jsonl:1: no 'text' key"),
    ("a.jsonl", '{"text": "a", "label": 0.5}\n', r"a\.jsonl:1: label must be a string or an integer, got 0.5"),
    ("a.jsonl", '{"text": "a", "label": null}\n', r"a\.jsonl:1: label must be a string or an integer"),
    ("a.jsonl", '{"text": 3, "label": "x"}\n', r"a\.jsonl:1: text must be a string"),
    ("a.jsonl", '{"text": "", "label": "x"}\n', r"a\.jsonl:1: empty text"),
    ("a.xlsx", "x\ty\n", r"a\.xlsx: cannot tell the format"),
])
def test_bad_files_name_file_and_line(tmp_path, name, content, message):
    with pytest.raises(ValueError, match=message):
        read_examples(write(tmp_path / name, content))


def test_bad_encoding_and_missing_file(tmp_path):
    p = tmp_path / "latin1.tsv"
    p.write_bytes("ok\tpos\ncaf\u00e9\tneg\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.tsv:2: not valid UTF-8"):
        read_examples(p)
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        read_examples(tmp_path / "nope.tsv")
    bad_gz = tmp_path / "x.tsv.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"x\.tsv\.gz: cannot read"):
        read_examples(bad_gz)
    with pytest.raises(ValueError, match="format must be one of"):
        read_examples(p, format="xml")


# ============================================================================ labels, split, batches, metrics

def test_labels_split_and_batches(tiny_task):
    ex = [Example(f"w{i}", None, lab) for i, lab in enumerate(["10", "9", "2", "9", "10", "2", "9", "9"])]
    assert build_labels(ex) == ["2", "9", "10"]                     # numeric order when all are integers
    assert build_labels([Example("a", None, "b"), Example("a", None, "B")]) == ["B", "b"]
    train, dev = train_dev_split(ex, 0.25, seed=0)
    assert sorted(e.text for e in train + dev) == sorted(e.text for e in ex) and not set(train) & set(dev)
    assert sorted(e.label for e in dev) == ["10", "2", "9"]          # one of each (rounded, at least one)
    assert train_dev_split(ex, 0.25, seed=0) == (train, dev)         # deterministic
    with pytest.raises(ValueError, match="dev_fraction"):
        train_dev_split(ex, 1.0)
    tok = BertTokenizer(tiny_task / "vocab.txt")
    enc = encode_examples([Example("sunny day", "dark day", "a"), Example("calm", None, "b")], tok,
                          {"a": 0, "b": 1}, max_seq_length=8)
    assert enc["input_ids"][0] == tok("sunny day", "dark day")["input_ids"]
    assert enc["token_type_ids"][0] == [0, 0, 0, 0, 1, 1, 1]
    (batch,) = make_batches(enc, [1, 0], 4, tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 7)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0], [1] * 7]
    assert batch["labels"].tolist() == [1, 0]


def test_metrics():
    y = [0, 0, 1, 1, 2, 2]
    p = [0, 1, 1, 1, 2, 0]
    assert accuracy(y, p) == pytest.approx(4 / 6)
    assert confusion_matrix(y, p, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # per class F1 = 2TP / (2TP + FP + FN): class 0: 2/(2+1+1), class 1: 4/(4+1+0), class 2: 2/(2+0+1)
    assert f1_macro(y, p) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert f1_macro([0, 0], [0, 0], num_labels=3) == 1.0           # absent classes do not count (sklearn)
    assert f1_macro([0, 1], [1, 0]) == 0.0
    with pytest.raises(ValueError):
        accuracy([], [])


# ============================================================================ the example data set

def test_example_data_matches_its_derivation():
    """examples/data/corpus_source/*.tsv are exactly what examples/make_corpus_source_data.py
    derives from the bundled corpus; document-disjoint, balanced, readable by read_examples."""
    spec = importlib.util.spec_from_file_location("make_corpus_source_data",
                                                  ROOT / "examples" / "make_corpus_source_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.build()
    for part, n in (("train", 900), ("dev", 450)):
        path = ROOT / "examples" / "data" / "corpus_source" / f"{part}.tsv"
        assert path.read_text(encoding="utf-8") == mod.render(rows[part]), f"{path} differs from its rebuild"
        ex = read_examples(path)
        assert len(ex) == n
        assert sorted(set(e.label for e in ex)) == ["bible", "devils_dictionary", "jargon_file"]
        assert np.unique([e.label for e in ex], return_counts=True)[1].tolist() == [n // 3] * 3
    assert not {s for s, _ in rows["train"]} & {s for s, _ in rows["dev"]}


# ============================================================================ one loop with pretraining

def test_a_fine_tuning_step_reads_nothing_from_the_device(tiny_task, tmp_path, monkeypatch):
    """Fine-tuning runs pretraining's loop (bertnp.train.TrainingLoop): on the strict stand-in for
    CuPy a step reads no device value on the host (the old fine-tuning loop read the loss, the
    gradient norm and the predictions every step); the values are read once per log interval,
    a checkpoint resumes exactly, and the numbers are NumPy's."""
    from bertnp import backend
    from bertnp.train import TrainingLoop
    from strict_xp import STRICT, HostReadWatch, StrictArray
    assert issubclass(Finetuner, TrainingLoop)
    watch = HostReadWatch(monkeypatch)
    real_step = Finetuner.train_step

    def step_armed(self):
        watch.armed = True
        try:
            return real_step(self)
        finally:
            watch.armed = False
    monkeypatch.setattr(Finetuner, "train_step", step_armed)
    monkeypatch.setattr(backend, "set_backend", lambda name: None)   # stay on the stand-in
    options = dict(steps=8, log_every=4, eval_every=4, checkpoint_every=4, dropout=0.1)
    with backend.using(STRICT, "strict"):
        run = Finetuner(tiny_config(tiny_task, tmp_path / "run", **options), log=lambda m: None)
        assert isinstance(run.model.parameters()["classifier.weight"], StrictArray)
        run.train(stop_at=4)
        resumed = Finetuner(tiny_config(tiny_task, tmp_path / "run", resume=True, **options), log=lambda m: None)
        summary = resumed.train()
        final = {k: p.get() for k, p in resumed.model.parameters().items()}
    assert not watch.reads, f"a fine-tuning step read device values on the host: {watch.reads}"
    assert summary["complete"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [4, 8]
    assert all(0 <= r["accuracy"] <= 1 for r in records if r["split"] == "train")
    straight = Finetuner(tiny_config(tiny_task, tmp_path / "numpy", **options), log=lambda m: None)
    straight.train()
    for k, p in straight.model.parameters().items():
        np.testing.assert_array_equal(final[k], p, err_msg=k)


def test_fine_tuning_takes_use_kernels_and_the_shared_flags(tiny_task, tmp_path, capsys):
    """The drift the copies had: fine-tuning had no --use-kernels (and no --log-every); now both
    commands take the same run flags, and --resume may change the lr here too."""
    args = parser().parse_args([
        "finetune", "--train", str(tiny_task / "train.tsv"), "--dev", str(tiny_task / "dev.tsv"), "--scratch",
        "--vocab", str(tiny_task / "vocab.txt"), "--config", str(tiny_task / "config.json"),
        "--out", str(tmp_path / "run"), "--steps", "4", "--batch-size", "16", "--max-seq-length", "16",
        "--use-kernels", "--log-every", "2", "--checkpoint-every", "2", "--no-progress"])
    assert args.use_kernels is True and args.log_every == 2
    assert run_finetune(args) == 0
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert saved["use_kernels"] is True and saved["log_every"] == 2
    args = parser().parse_args(["finetune", "--out", str(tmp_path / "run"), "--resume", "--steps", "6",
                                "--lr", "1e-3", "--no-progress"])
    assert run_finetune(args) == 0
    out = capsys.readouterr().out
    assert "note: resuming with lr=0.001" in out and "trained 6 steps" in out
