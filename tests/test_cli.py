"""The command line: --help everywhere, one-line errors with exit status 2, and a tiny run end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bertnp.cli import main
from bertnp.config import BertConfig

WORDS = ("the a old young red blue king queen man woman dog cat bird horse house river city tree "
         "saw found took gave loved built near under over with and but then").split()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_world")
    rng = np.random.default_rng(1)
    docs = []
    for _ in range(12):
        sents = [" ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=int(rng.integers(4, 8))))
                 .capitalize() + "." for _ in range(int(rng.integers(4, 8)))]
        docs.append("\n".join(sents))
    (root / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + WORDS) + "\n",
                                    encoding="utf-8")
    BertConfig(vocab_size=len(WORDS) + 6, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=24, max_position_embeddings=32).to_json_file(root / "config.json")
    return root


def tiny_args(world, out, *extra):
    return ["pretrain", "--corpus", str(world / "corpus.txt"), "--vocab", str(world / "vocab.txt"),
            "--config", str(world / "config.json"), "--seq-length", "24", "--batch-size", "4",
            "--eval-every", "2", "--eval-batches", "2", "--checkpoint-every", "2", "--log-every", "1",
            "--no-progress", "--out", str(out), *extra]


def run_cli(capsys, argv):
    """(exit status, stdout, stderr) of main(argv), whether it returns or raises SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("bertnp: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ----------------------------------------------------------------------------- help

@pytest.mark.parametrize("command", [[], ["pretrain"], ["tokenizer"], ["tokenizer", "train"], ["fill-mask"],
                                     ["nsp"], ["eval"], ["demo"], ["finetune"]])
def test_help_on_every_command(capsys, command):
    code, out, _ = run_cli(capsys, command + ["--help"])
    assert code == 0
    assert out.startswith("usage: bertnp")


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "bertnp", "--help"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "BERTNP_BACKEND": "numpy"})
    assert result.returncode == 0, result.stderr
    for command in ("pretrain", "tokenizer", "fill-mask", "nsp", "eval", "demo", "finetune"):
        assert command in result.stdout


def test_no_command_prints_help(capsys):
    code, out, _ = run_cli(capsys, [])
    assert code == 2 and "usage: bertnp" in out


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("extra, fragments", [
    (["--steps", "0"], ["--steps", "positive integer"]),
    (["--steps", "abc"], ["--steps", "'abc'"]),
    (["--steps", "2", "--lr", "-1"], ["--lr"]),
    (["--steps", "2", "--lr", "nan"], ["--lr"]),
    (["--steps", "2", "--batch-size", "0"], ["--batch-size"]),
    (["--steps", "2", "--seq-length", "4"], ["max_seq_length"]),
    (["--steps", "2", "--seq-length", "64"], ["max_position_embeddings"]),
    (["--time-budget", "soon"], ["--time-budget", "duration"]),
    (["--steps", "2", "--time-budget", "8m"], ["not allowed with"]),
    ([], ["--steps N or --time-budget"]),
    (["--steps", "2", "--backend", "tpu"], ["--backend", "tpu"]),
    (["--steps", "2", "--warmup", "-1"], ["--warmup"]),
    (["--steps", "2", "--dropout", "1.5"], ["--dropout"]),
    (["--steps", "2", "--bogus"], ["unrecognized arguments: --bogus"]),
])
def test_bad_flag_values(capsys, world, tmp_path, extra, fragments):
    code, _, err = run_cli(capsys, tiny_args(world, tmp_path / "run", *extra))
    assert_one_line_error(code, err, *fragments)


def test_bad_preset_and_missing_files(capsys, world, tmp_path):
    code, _, err = run_cli(capsys, ["pretrain", "--preset", "huge", "--steps", "1"])
    assert_one_line_error(code, err, "--preset", "huge")
    missing = str(tmp_path / "missing.txt")
    args = tiny_args(world, tmp_path / "run", "--steps", "2")
    code, _, err = run_cli(capsys, [missing if a == str(world / "corpus.txt") else a for a in args])
    assert_one_line_error(code, err, "missing.txt")
    code, _, err = run_cli(capsys, [missing if a == str(world / "vocab.txt") else a for a in args])
    assert_one_line_error(code, err, "missing.txt")
    code, _, err = run_cli(capsys, [missing if a == str(world / "config.json") else a for a in args])
    assert_one_line_error(code, err, "--config", "missing.txt")
    code, _, err = run_cli(capsys, [str(tmp_path) if a == str(world / "corpus.txt") else a for a in args])
    assert_one_line_error(code, err, "not a file")


def test_unreadable_and_garbled_files(capsys, world, tmp_path):
    args = tiny_args(world, tmp_path / "run", "--steps", "2")
    garbled = tmp_path / "garbled.txt"
    garbled.write_bytes(b"\xff\xfe\x00\x81 not text \xc3\x28\n\n" * 20)
    code, _, err = run_cli(capsys, [str(garbled) if a == str(world / "corpus.txt") else a for a in args])
    assert_one_line_error(code, err, "garbled.txt")
    bad_config = tmp_path / "config.json"
    bad_config.write_text("{not json", encoding="utf-8")
    code, _, err = run_cli(capsys, [str(bad_config) if a == str(world / "config.json") else a for a in args])
    assert_one_line_error(code, err, "config.json")
    if os.geteuid() != 0:                                   # root reads files whatever their mode
        locked = tmp_path / "locked.txt"
        locked.write_text("x\n", encoding="utf-8")
        locked.chmod(0)
        code, _, err = run_cli(capsys, [str(locked) if a == str(world / "corpus.txt") else a for a in args])
        assert_one_line_error(code, err, "locked.txt")


def test_inference_commands_bad_input(capsys, tmp_path):
    code, _, err = run_cli(capsys, ["fill-mask", "--model", str(tmp_path / "nope"), "The [MASK]."])
    assert_one_line_error(code, err, "nope")
    code, _, err = run_cli(capsys, ["nsp", "--model", str(tmp_path / "nope"), "A.", "B."])
    assert_one_line_error(code, err, "nope")
    code, _, err = run_cli(capsys, ["eval", "--model", str(tmp_path / "nope")])
    assert_one_line_error(code, err, "nope")
    code, _, err = run_cli(capsys, ["fill-mask", "The [MASK]."])
    assert_one_line_error(code, err, "--model")
    code, _, err = run_cli(capsys, ["frobnicate"])
    assert_one_line_error(code, err, "frobnicate")
    code, _, err = run_cli(capsys, ["tokenizer"])
    assert_one_line_error(code, err, "action")


# ----------------------------------------------------------------------------- end to end

def test_pretrain_resume_and_use_the_model(capsys, world, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, tiny_args(world, out, "--steps", "4"))
    assert code == 0, err
    assert "held-out" in stdout and "MLM accuracy" in stdout
    model_dir = out / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "vocab.txt").is_file()

    code, _, err = run_cli(capsys, tiny_args(world, out, "--steps", "4"))
    assert_one_line_error(code, err, "--resume")
    code, stdout, err = run_cli(capsys, tiny_args(world, out, "--resume", "--steps", "6"))
    assert code == 0, err
    assert "trained 6 steps" in stdout

    code, stdout, err = run_cli(capsys, ["fill-mask", "--model", str(model_dir), "The old [MASK] saw a dog.",
                                         "--top-k", "3"])
    assert code == 0, err
    assert stdout.count("\n") == 4 and "[MASK] #1" in stdout
    code, _, err = run_cli(capsys, ["fill-mask", "--model", str(model_dir), "No mask here."])
    assert_one_line_error(code, err, "[MASK]")
    code, stdout, err = run_cli(capsys, ["nsp", "--model", str(model_dir), "The king saw a dog.", "The dog left."])
    assert code == 0 and stdout.startswith("P(B follows A) = "), err
    code, stdout, err = run_cli(capsys, ["eval", "--model", str(model_dir), "--corpus", str(world / "corpus.txt"),
                                         "--seq-length", "24", "--batch-size", "8"])
    assert code == 0, err
    assert "MLM accuracy" in stdout and "unigram baseline" in stdout and "NSP accuracy" in stdout
    code, _, err = run_cli(capsys, ["eval", "--model", str(model_dir), "--seq-length", "64"])
    assert_one_line_error(code, err, "max_position_embeddings")


@pytest.mark.filterwarnings("ignore:train_wordpiece")        # the tiny corpus runs out of pairs to merge
def test_tokenizer_train_and_pretrain_with_a_trained_vocab(capsys, world, tmp_path):
    code, out, err = run_cli(capsys, ["tokenizer", "train", "--corpus", str(world / "corpus.txt"),
                                      "--vocab-size", "400", "--out", str(tmp_path / "tok")])
    assert code == 0, err
    tokens = (tmp_path / "tok" / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and "king" in tokens, tokens[:20]
    code, _, err = run_cli(capsys, ["tokenizer", "train", "--corpus", str(tmp_path / "none.txt"),
                                    "--out", str(tmp_path / "tok2")])
    assert_one_line_error(code, err, "none.txt")

    args = [a for a in tiny_args(world, tmp_path / "run", "--steps", "2", "--vocab-size", "400")]
    i = args.index("--vocab")
    del args[i:i + 2]                                       # no --vocab: one is trained on the corpus
    code, out, err = run_cli(capsys, args)
    assert code == 0, err
    assert (tmp_path / "run" / "vocab.txt").read_text(encoding="utf-8") == \
        (tmp_path / "run" / "model" / "vocab.txt").read_text(encoding="utf-8")


def test_use_kernels_reaches_the_model_and_is_runtime_only(capsys, world, tmp_path):
    """--use-kernels builds the model on the kernel op table (on NumPy the wrappers fall back to
    the reference ops, so the run is the same); a resume may switch it, like --backend."""
    from bertnp.cli import _pretrain_options, build_parser
    from bertnp.train import TrainConfig
    args = build_parser().parse_args(tiny_args(world, tmp_path / "k", "--steps", "2", "--use-kernels"))
    assert _pretrain_options(args)["use_kernels"] is True
    args = build_parser().parse_args(tiny_args(world, tmp_path / "k", "--steps", "2"))
    assert "use_kernels" not in _pretrain_options(args)              # the config's default: off
    assert "use_kernels" in TrainConfig.RUNTIME_ONLY
    code, stdout, err = run_cli(capsys, tiny_args(world, tmp_path / "k", "--steps", "2", "--use-kernels"))
    assert code == 0, err
    assert json.loads((tmp_path / "k" / "run.json").read_text())["use_kernels"] is True
    with pytest.raises(ValueError, match="use_kernels"):
        TrainConfig(steps=1, use_kernels="yes").validate()


def test_pretrain_two_phases_from_the_command_line(capsys, world, tmp_path):
    """--phase1-seq-length / --phase1-fraction reach the run (run.json, the log line); a bad value
    is an argparse error naming the flag."""
    code, stdout, err = run_cli(capsys, tiny_args(world, tmp_path / "p", "--steps", "4", "--phase1-seq-length", "12",
                                                  "--phase1-fraction", "0.5"))
    assert code == 0, err
    saved = json.loads((tmp_path / "p" / "run.json").read_text())
    assert (saved["phase1_seq_length"], saved["phase1_fraction"]) == (12, 0.5)
    assert "phase 1: the first 2 steps" in stdout + err
    code, stdout, err = run_cli(capsys, tiny_args(world, tmp_path / "q", "--steps", "4", "--phase1-seq-length", "12",
                                                  "--phase1-fraction", "1.5"))
    assert code != 0 and "--phase1-fraction" in err
