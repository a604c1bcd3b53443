"""A training run's folder under faults and hostile files (the hardening issue): damaged metadata,
leftovers of killed writes, a full disk, file modes and permissions, a read-only --out, advice
after a NaN that works, Ctrl-C / SIGTERM, and what a resume may change. Each error is one line
naming the file (or folder) and the field."""
from __future__ import annotations

import errno
import json
import os
import re
import shlex
import signal
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest

from bertnp import checkpoint
from bertnp.cli import main
from bertnp.train import NonFiniteLossError, Trainer, TrainingInterrupted, latest_checkpoint
from conftest import on_numpy
from tiny_world import make_world, quiet, tiny_config



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("run_folder"))


@pytest.fixture(scope="module")
def paused(world, tmp_path_factory):
    """A run of 8 steps paused at step 4 (checkpoints at 4), to copy and damage."""
    out = tmp_path_factory.mktemp("paused") / "run"
    with on_numpy():      # a Trainer switches the backend: inside a module fixture nothing else restores it
        Trainer(tiny_config(world, out), log=quiet).train(stop_at=4)
    return out


def copy_run(paused, tmp_path) -> Path:
    import shutil
    out = tmp_path / "run"
    shutil.copytree(paused, out)
    return out


def resume(world, out, **kw):
    return Trainer(tiny_config(world, out, resume=True), log=quiet, **kw)


def cli_error(capsys, argv) -> str:
    """The one line ``bertnp`` prints for an error (exit status 2)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bertnp: error: "), err
    return lines[0]


def cli_args(world, out, *extra):
    return ["pretrain", "--corpus", world["corpus"], "--vocab", world["vocab"], "--config", world["config"],
            "--seq-length", "24", "--batch-size", "4", "--eval-every", "4", "--eval-batches", "2",
            "--checkpoint-every", "4", "--log-every", "2", "--no-progress", "--out", str(out), *extra]


# ----------------------------------------------------------------------------- damaged metadata

@pytest.mark.parametrize("pointer, match", [
    ({}, r"latest\.json: field 'step' is missing"),
    ({"step": 4}, r"latest\.json: field 'dir' is missing"),
    ({"step": 4, "dir": 5}, r"latest\.json: field 'dir' must name a step-NNNNNN folder"),
    ({"step": 4, "dir": "../../other/checkpoints/step-000004"}, r"latest\.json: field 'dir' must name"),
    ({"step": 4, "dir": "/tmp/step-000004"}, r"latest\.json: field 'dir' must name"),
    ({"step": 5, "dir": "step-000004"}, r"latest\.json: field 'step' must be the integer 4"),
    ([1, 2], r"latest\.json: expected a JSON object"),
])
def test_damaged_latest_json_is_named(world, paused, tmp_path, capsys, pointer, match):
    out = copy_run(paused, tmp_path)
    (out / "checkpoints" / "latest.json").write_text(json.dumps(pointer), encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        resume(world, out)
    assert re.search(match, cli_error(capsys, cli_args(world, out, "--resume")))


def test_a_pointer_may_not_leave_the_run_folder(world, paused, tmp_path):
    """Even a complete checkpoint of another run is refused: never resume from another run's folder."""
    other = copy_run(paused, tmp_path / "other")
    out = copy_run(paused, tmp_path)
    rel = os.path.relpath(other / "checkpoints" / "step-000004", out / "checkpoints")
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"step": 4, "dir": rel}), encoding="utf-8")
    with pytest.raises(ValueError, match="field 'dir' must name a step-NNNNNN folder inside"):
        resume(world, out)


@pytest.mark.parametrize("damage, match", [
    (lambda s: s.pop("schedule"), r"trainer_state\.json: field 'schedule' is missing"),
    (lambda s: s.pop("loader"), r"trainer_state\.json: field 'loader' is missing"),
    (lambda s: s.pop("model_rng"), r"trainer_state\.json: field 'model_rng' is missing"),
    (lambda s: s.update(step=1e9), r"trainer_state\.json: field 'step' must be an integer"),
    (lambda s: s.update(step=10 ** 9), r"trainer_state\.json: field 'step' is 1000000000, but the folder"),
    (lambda s: s.update(step="4"), r"trainer_state\.json: field 'step' must be an integer"),
    (lambda s: s["schedule"].update(last_step=7), r"trainer_state\.json: field 'schedule\.last_step' is 7"),
    (lambda s: s["model_rng"].update(forward_count=-1), r"field 'forward_count' must be an integer >= 0"),
    (lambda s: s.update(tokens_seen=None), r"trainer_state\.json: field 'tokens_seen' must be"),
    (lambda s: s.update(version=99), r"trainer_state\.json: field 'version' must be 1"),
])
def test_damaged_trainer_state_is_named(world, paused, tmp_path, capsys, damage, match):
    out = copy_run(paused, tmp_path)
    path = out / "checkpoints" / "step-000004" / "trainer_state.json"
    state = json.loads(path.read_text(encoding="utf-8"))
    damage(state)
    path.write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        resume(world, out)
    assert re.search(match, cli_error(capsys, cli_args(world, out, "--resume")))


def test_a_damaged_metrics_log_never_blocks_resuming(world, paused, tmp_path):
    """Non-UTF-8 bytes, a line cut short, a non-object: dropped with a note; the weights resume."""
    out = copy_run(paused, tmp_path)
    good = (out / "metrics.jsonl").read_bytes()
    (out / "metrics.jsonl").write_bytes(good + b'{"split": "train", "step": 3, "loss": \xff\xfe}\n[1, 2]\n{"split": "tr')
    notes = []
    trainer = Trainer(tiny_config(world, out, resume=True), log=notes.append)
    assert trainer.step == 4
    assert any("metrics.jsonl: dropped 3 damaged line(s)" in n for n in notes), notes
    assert (out / "metrics.jsonl").read_bytes() == good
    trainer.train()
    from bertnp.viz import read_metrics
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "eval"] == [4, 8]


def test_a_damaged_run_json_is_named(world, paused, tmp_path, capsys):
    out = copy_run(paused, tmp_path)
    saved = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps(dict(saved, do_lower_case="no")), encoding="utf-8")
    with pytest.raises(ValueError, match=r"run\.json: do_lower_case must be true or false, got 'no'"):
        resume(world, out)
    (out / "run.json").write_text(json.dumps(dict(saved, lr="fast")), encoding="utf-8")
    assert "run.json: lr must be a number > 0" in cli_error(capsys, cli_args(world, out, "--resume"))


# ----------------------------------------------------------------------------- leftovers of killed writes

def test_leftover_temporary_files_are_removed_at_the_next_start(world, paused, tmp_path):
    out = copy_run(paused, tmp_path)
    ck = out / "checkpoints"
    leftovers = [ck / ".step-000006.a1b2c3.tmp", ck / ".step-000004.old.1234.tmp", out / ".model.x9y8.tmp"]
    for folder in leftovers:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    (ck / ".latest.json.q1w2e3.tmp").write_text('{"step": 6, "di')
    (out / ".run.json.zz.tmp").write_text("{")
    trainer = resume(world, out)
    assert trainer.step == 4
    assert not [p.name for p in list(ck.iterdir()) + list(out.iterdir()) if p.name.endswith(".tmp")]
    assert sorted(p.name for p in ck.iterdir()) == ["latest.json", "step-000004"]


# ----------------------------------------------------------------------------- a full disk

def test_a_full_disk_is_one_line_naming_the_folder_and_the_space(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(world, out), log=quiet)
    trainer.train(stop_at=4)
    good = latest_checkpoint(out)
    before = checkpoint.load_tensors(good / "model.safetensors")
    trainer.train_step()

    import safetensors.numpy as stnp
    real_save = stnp.save_file

    def disk_fills_up(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 3)             # a third of the bytes made it
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(stnp, "save_file", disk_fills_up)
    with pytest.raises(checkpoint.DiskFullError) as info:
        trainer.save_checkpoint()
    message = str(info.value)
    assert "\n" not in message and str(out / "checkpoints") in message
    need = sum(p.nbytes for p in trainer.model.parameters().values()) * 3 / 2**20
    assert re.search(r"needs about (\d+\.\d) MB, [\d.]+ MB are free", message)
    assert float(re.search(r"needs about (\d+\.\d) MB", message).group(1)) >= round(need, 1) - 0.05
    ck = out / "checkpoints"
    assert not [p.name for p in ck.iterdir() if p.name.startswith(".")]          # temp files removed
    assert latest_checkpoint(out) == good                                        # the last good one intact
    after = checkpoint.load_tensors(good / "model.safetensors")
    assert all(np.array_equal(before[k], after[k]) for k in before)

    # through the command line: one line, exit status 2
    monkeypatch.setattr(Trainer, "train_step", lambda self: (_ for _ in ()).throw(
        checkpoint.DiskFullError(f"no space left on the disk of '{ck}'")))
    assert "no space left on the disk of" in cli_error(capsys, cli_args(world, tmp_path / "cli", "--steps", "2"))


# ----------------------------------------------------------------------------- file modes and permissions

def test_checkpoint_files_get_the_usual_mode(world, tmp_path):
    """safetensors writes its file anew: after atomic_write's chmod it would be 0600."""
    old = os.umask(0o022)
    try:
        Trainer(tiny_config(world, tmp_path / "run", steps=4), log=quiet).train()
    finally:
        os.umask(old)
    ck = latest_checkpoint(tmp_path / "run")
    for path in (ck / "model.safetensors", ck / "optimizer.safetensors", ck / "trainer_state.json",
                 tmp_path / "run" / "model" / "model.safetensors", tmp_path / "run" / "run.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(ck.stat().st_mode) == 0o755


def as_unprivileged(fn) -> str:
    """``fn()`` (which returns a string) run by a user whom file permissions stop: the caller
    itself, or -- when the tests run as root, whom they do not stop -- a forked child that became
    'nobody' (uid 65534). Everything ``fn`` needs must be imported before (the interpreter's own
    files may be out of nobody's reach)."""
    if os.geteuid() != 0:
        return fn()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                               # the child: drop root, run, report
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = fn()
        except BaseException as exc:                           # noqa: BLE001 -- reported to the parent
            result = f"child failed: {type(exc).__name__}: {exc}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        result = pipe.read().decode()
    os.waitpid(pid, 0)
    return result


@pytest.fixture
def open_folder():
    """A folder every user can enter (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="bertnp-perm-"))
    folder.chmod(0o777)
    yield folder
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


def test_an_unreadable_file_says_permission_denied(open_folder):
    path = open_folder / "model.safetensors"
    checkpoint.save_tensors(path, {"w": np.ones(3, dtype=np.float32)})
    path.chmod(0o000)

    def read_all():
        lines = []
        for read in (checkpoint.load_tensors, checkpoint.tensor_shapes, checkpoint.read_json):
            try:
                read(path)
                lines.append("read")
            except PermissionError as exc:
                lines.append(str(exc))
        return "\n".join(lines)
    assert as_unprivileged(read_all).splitlines() == \
        [f"{path}: permission denied: the file cannot be read by this user"] * 3


def test_a_read_only_out_folder_fails_before_any_work(open_folder, monkeypatch):
    world = make_world(open_folder / "world")
    out = open_folder / "readonly"
    out.mkdir()
    out.chmod(0o555)
    from bertnp import train
    calls = []
    real = train.read_documents
    monkeypatch.setattr(train, "read_documents", lambda *a, **k: calls.append(1) or real(*a, **k))

    def start():
        try:
            Trainer(tiny_config(world, out), log=quiet)
            return "started"
        except PermissionError as exc:
            return f"{exc} | corpus read: {bool(calls)}"
    assert as_unprivileged(start) == f"out_dir: cannot write to '{out}' (Permission denied) | corpus read: False"


# ----------------------------------------------------------------------------- after a NaN, the advice works

def test_the_advice_after_a_nan_works(world, tmp_path, capsys):
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(world, out), log=quiet)
    trainer.train(stop_at=4)
    trainer.model.parameters()["bert.pooler.dense.weight"][0, 0] = np.nan
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    command = re.search(r"'(bertnp pretrain --out .* --resume --lr ([0-9.e-]+))'", message)
    assert command, message
    assert float(command.group(2)) == pytest.approx(5e-3 / 4)
    argv = shlex.split(command.group(1))[1:]
    assert argv[:3] == ["pretrain", "--out", str(out)]
    assert main(argv + ["--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "note: resuming with lr=0.00125 instead of 0.005 from step 4 on" in printed
    assert "trained 8 steps" in printed
    saved = json.loads((out / "run.json").read_text())
    assert saved["lr"] == 0.00125                                    # a later resume keeps it
    state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
    assert state["schedule"]["base_lr"] == 0.00125
    lrs = [r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if r["split"] == "train" and r["step"] > 4]
    # the schedule (warmup 2 of 8 steps, linear decay) goes on from step 4 at the new peak
    assert lrs == pytest.approx([0.00125 * (8 - s) / 6 for s in (5, 7)])


def test_resume_changes_and_their_notes(world, paused, tmp_path):
    out = copy_run(paused, tmp_path)
    notes = []
    trainer = Trainer(tiny_config(world, out, resume=True), log=notes.append,
                      changes={"lr": 1e-3, "warmup": 6, "max_grad_norm": 0.5, "steps": 10})
    assert trainer.schedule.base_lr == 1e-3 and trainer.schedule.warmup_steps == 6
    assert trainer.schedule.total_steps == trainer.total_steps == 10 and trainer.config.max_grad_norm == 0.5
    assert trainer.optimizer.lr == pytest.approx(1e-3 * 4 / 6)             # still warming up at step 4
    changed = {n.split("=")[0].split()[-1] for n in notes if n.startswith("note: resuming with")}
    assert changed == {"lr", "warmup", "max_grad_norm", "steps"}
    assert trainer.train()["step"] == 10
    with pytest.raises(ValueError, match="may change lr, warmup, max_grad_norm, steps, not 'batch_size'"):
        Trainer(tiny_config(world, out, resume=True), log=quiet, changes={"batch_size": 8})
    with pytest.raises(ValueError, match="only a resumed run"):
        Trainer(tiny_config(world, tmp_path / "new"), log=quiet, changes={"lr": 1e-3})


# ----------------------------------------------------------------------------- Ctrl-C and SIGTERM

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_last_completed_step_before_the_first_checkpoint(world, tmp_path, signum, monkeypatch):
    """Ctrl-C / SIGTERM at step 3 (the first periodic checkpoint is at 4): the step completes, is
    saved atomically, and --resume then gives bit-identical weights to a run never stopped."""
    handler_before = signal.getsignal(signal.SIGINT)    # Python's default, or SIG_IGN in a background job
    straight = Trainer(tiny_config(world, tmp_path / "straight", dropout=0.1), log=quiet)
    straight.train()

    out = tmp_path / "stopped"
    real_step = Trainer.train_step

    def signalled(self):
        record = real_step(self)
        if self.step == 3:
            os.kill(os.getpid(), signum)            # arrives while the loop runs (not between steps)
        return record
    monkeypatch.setattr(Trainer, "train_step", signalled)
    with pytest.raises(TrainingInterrupted) as info:
        Trainer(tiny_config(world, out, dropout=0.1), log=quiet).train()
    monkeypatch.undo()
    assert info.value.step == 3 and info.value.signal_name == signal.Signals(signum).name
    assert latest_checkpoint(out).name == "step-000003"
    assert signal.getsignal(signal.SIGINT) is handler_before                  # handlers restored
    resumed = resume(world, out)
    assert resumed.step == 3
    resumed.train()
    for name, value in straight.model.parameters().items():
        assert np.array_equal(resumed.model.parameters()[name], value), name


def test_ctrl_c_before_training_starts_leaves_a_command_that_works(world, tmp_path, monkeypatch, capsys):
    """Interrupted while setting up (here: reading the corpus): nothing saved, and the same command
    runs; interrupted after run.json but before any checkpoint: --resume starts from step 0."""
    from bertnp import train
    real = train.read_documents
    monkeypatch.setattr(train, "read_documents", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "run"
    assert main(cli_args(world, out, "--steps", "4")) == 130
    assert "nothing was saved: run the same command again" in capsys.readouterr().err
    monkeypatch.setattr(train, "read_documents", real)
    assert main(cli_args(world, out, "--steps", "4")) == 0

    out2 = tmp_path / "run2"
    Trainer(tiny_config(world, out2), log=quiet)                     # set up, never trained
    notes = []
    trainer = Trainer(tiny_config(world, out2, resume=True), log=notes.append)
    assert trainer.step == 0 and any("no checkpoint yet" in n for n in notes)
    assert trainer.train()["complete"]


# ----------------------------------------------------------------------------- memory

def test_memory_error_in_training_is_one_line_saying_what_to_reduce(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "train_step", lambda self: (_ for _ in ()).throw(MemoryError()))
    line = cli_error(capsys, cli_args(world, tmp_path / "run", "--steps", "2"))
    assert line == ("bertnp: error: out of memory during pretrain: reduce --batch-size (now 4), --seq-length "
                    "(now 24) or the model (--preset / --config); --grad-accum K keeps the update's batch "
                    "with a K times smaller --batch-size")


# ----------------------------------------------------------------------------- switches are booleans

def test_do_lower_case_no_is_not_true(world, tmp_path):
    """"no" (or 0) for do_lower_case was read as true; every switch takes a boolean only."""
    from bertnp.finetune import FinetuneConfig
    from bertnp.tokenizer import BertTokenizer
    with pytest.raises(TypeError, match="do_lower_case must be true or false, got 'no'"):
        BertTokenizer(world["vocab"], do_lower_case="no")
    folder = tmp_path / "tok"
    BertTokenizer(world["vocab"]).save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(config, do_lower_case="no")))
    with pytest.raises(TypeError, match=r"tokenizer_config\.json'?: do_lower_case must be true or false, got 'no'"):
        BertTokenizer.from_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(config, tokenize_chinese_chars=0)))
    with pytest.raises(TypeError, match="tokenize_chinese_chars must be true or false, got 0"):
        BertTokenizer.from_pretrained(folder)
    with pytest.raises(ValueError, match="do_lower_case must be true or false"):
        tiny_config(world, tmp_path / "run", do_lower_case="no").validate()
    with pytest.raises(ValueError, match="do_lower_case must be true, false or null"):
        FinetuneConfig(train="x.tsv", model="m", do_lower_case="no").validate()
