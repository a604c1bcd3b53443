"""Fault injection: ``bertnp pretrain`` killed with SIGKILL at random moments -- while it starts,
trains, writes a checkpoint or the final model -- and resumed each time, ends bit for bit where
a run never interrupted ends; and Ctrl-C / SIGTERM stop it with advice that works.

Real processes and real signals: nothing is mocked. The kill points are chosen by progress (the
step the run has logged, plus a random 0-40 ms to land inside the checkpoint write that follows),
not by wall-clock time, so the test means the same on a fast and on a loaded machine.
``BERTNP_FAULT_SEED`` picks another random schedule (the default is fixed)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bertnp import checkpoint
from tiny_world import make_world

STEPS = 16


def command(world, out, steps=STEPS, *extra):
    return [sys.executable, "-m", "bertnp", "pretrain", "--corpus", world["corpus"], "--vocab", world["vocab"],
            "--config", world["config"], "--seq-length", "24", "--batch-size", "4", "--steps", str(steps),
            "--checkpoint-every", "1", "--log-every", "1", "--eval-every", "5", "--eval-batches", "1",
            "--dropout", "0.1", "--seed", "5", "--no-progress", "--out", str(out), *extra]


ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def logged_step(out: Path) -> int:
    """The last training step in metrics.jsonl (-1 before training starts)."""
    try:
        records = checkpoint.read_jsonl(out / "metrics.jsonl")
    except OSError:
        return -1
    steps = [r["step"] for r in records if r.get("split") == "train"]
    return max(steps) if steps else -1


def run_to_the_end(cmd) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def final_state(out: Path) -> dict:
    """Everything the trajectory produced: final weights, the last checkpoint's optimizer state and
    trainer state (times aside), and every logged loss and accuracy."""
    state = {f"model/{k}": v for k, v in checkpoint.load_tensors(out / "model" / "model.safetensors").items()}
    last = checkpoint.latest_checkpoint(out)
    state.update({f"optimizer/{k}": v for k, v in checkpoint.load_tensors(last / "optimizer.safetensors").items()})
    trainer_state = json.loads((last / "trainer_state.json").read_text())
    for key in ("train_time", "backend"):
        trainer_state.pop(key)
    state["trainer_state"] = trainer_state
    state["metrics"] = [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")}
                        for r in checkpoint.read_jsonl(out / "metrics.jsonl")]
    return state


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    run_to_the_end(command(world, out))
    return final_state(out)


def test_kill_9_at_random_moments_then_resume_is_bit_exact(world, reference, tmp_path):
    rng = random.Random(int(os.environ.get("BERTNP_FAULT_SEED", "0")))
    out = tmp_path / "run"
    # where to kill: once while starting up, then after random logged steps (sorted, so that the
    # run makes progress between kills), each plus 0-40 ms: often inside the checkpoint write
    targets = [None] + sorted(rng.sample(range(1, STEPS), 5))
    kills = []
    for target in targets:
        resume = ["--resume"] if (out / "run.json").is_file() else []
        proc = subprocess.Popen(command(world, out, STEPS, *resume), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        if target is None:
            time.sleep(rng.uniform(0.05, 0.6))                # still importing or building the data
        else:
            while logged_step(out) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.04))
        if proc.poll() is not None:                          # it got there first: the run is complete
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        leftovers = [p.name for d in (out, out / "checkpoints") if d.is_dir() for p in d.iterdir()
                     if p.name.endswith(".tmp")]
        kills.append((target, logged_step(out), leftovers))
    done = run_to_the_end(command(world, out, STEPS, *(["--resume"] if (out / "run.json").is_file() else [])))
    assert "Traceback" not in done.stderr
    assert len(kills) >= 4, kills
    print("kills (target step, logged step, temporary leftovers):", kills)
    assert_same(final_state(out), reference)
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]


LONG = 100         # steps of the run a signal stops (it must still be running when the signal comes)


@pytest.fixture(scope="module")
def long_reference(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("long_reference") / "run"
    run_to_the_end(command(world, out, LONG, "--checkpoint-every", "1000"))
    return final_state(out)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_with_advice_that_works(world, long_reference, tmp_path, signum):
    """Stopped long before its first periodic checkpoint, a run saves its last completed step and
    says how to continue; that command ends where an uninterrupted run ends."""
    steps = LONG
    out = tmp_path / "run"
    proc = subprocess.Popen(command(world, out, steps, "--checkpoint-every", "1000"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while logged_step(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signum)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, err
    name = signal.Signals(signum).name
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith(f"bertnp: {name} at step ") and f"continue with 'bertnp pretrain --out {out} --resume'" \
        in last, err
    stopped_at = int(last.split(" at step ")[1].split(":")[0])
    assert 3 <= stopped_at < steps
    assert checkpoint.latest_checkpoint(out).name == f"step-{stopped_at:06d}"
    run_to_the_end(command(world, out, steps, "--checkpoint-every", "1000", "--resume"))
    assert_same(final_state(out), long_reference)
