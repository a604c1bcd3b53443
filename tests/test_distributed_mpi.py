"""Data parallelism with real processes: ``mpiexec -n 2`` (the mpich wheel's hydra) on the tiny world.

* Equality: 2 ranks == 1 process with the same update batch == 1 process with grad_accum 2 and half
  the micro-batch, for 5 AdamW steps in float64 with dropout off, to 1e-12 relative on the losses and
  on every weight -- with the ranks holding unequal numbers of labelled tokens. Averaging the ranks'
  own mean losses (the per-rank-mean bug) misses by far more. The same holds on the CuPy path (the
  strict stand-in with a stand-in for NCCL), and with the all-reduce overlapped with backward.
* The command line: ``mpiexec -n 2 bertnp pretrain`` trains the model one process trains; rank 0
  alone writes; a stop (SIGTERM to one rank) is agreed by every rank and a resume on ONE process
  continues it; ``kill -9`` of one rank stops the run at once, naming it, and a resume is bit-exact;
  a hung rank (SIGSTOP) is named within --mpi-timeout; an error on one rank, or weights that drift
  apart, stop every rank with a message instead of a hang.

Each rank uses one BLAS thread (the CI machine has 2 cores)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="needs the mpi extra: pip install -e '.[mpi]'")

from bertnp import checkpoint, distributed                                  # noqa: E402
from bertnp.train import Trainer                                            # noqa: E402
from test_faults import assert_same, final_state, logged_step              # noqa: E402
from tiny_world import make_world, quiet, tiny_config                      # noqa: E402
from conftest import on_numpy                                             # noqa: E402

WORKER = Path(__file__).with_name("mpi_worker.py")
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
ENV.pop("BERTNP_MPI", None)
SCENARIOS = ("exact", "accumulate", "per-rank-mean", "overlap", "strict-nccl")


def mpiexec(*python_args) -> list[str]:
    return distributed.mpiexec_command(2, *python_args)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("dp_world"), n_docs=24)


@pytest.fixture(scope="module")
def ranks(world, tmp_path_factory):
    """Every scenario of tests/mpi_worker.py, run once on 2 ranks: {scenario: (npz, json)}."""
    out = tmp_path_factory.mktemp("dp_runs")
    done = subprocess.run(mpiexec(str(WORKER), str(world["root"]), str(out), *SCENARIOS), env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return {s: (dict(np.load(out / f"{s}.npz")), json.loads((out / f"{s}.json").read_text())) for s in SCENARIOS}


def one_process(world, out, batch_size, grad_accum):
    """The same 5 updates of 8 sequences on one process: per-step values and final weights."""
    trainer = Trainer(tiny_config(world, out, dtype="float64", dropout=0.0, batch_size=batch_size,
                                  grad_accum=grad_accum, steps=5, warmup=0, lr=5e-3, eval_batches=0,
                                  log_every=1), log=quiet)
    assert len(trainer.dataset) >= 5 * 8                  # no epoch boundary inside an update
    for _ in range(5):
        trainer.train_step()
    trainer.read_pending()
    steps = trainer.take_read_steps()
    keys = ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "nsp_correct", "mlm_total", "nsp_total")
    values = {f"steps/{k}": np.array([s[k] for s in steps], dtype=np.float64) for k in keys}
    values.update({f"weights/{k}": np.array(v) for k, v in trainer.model.parameters().items()})
    return values


@pytest.fixture(scope="module")
def single(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("dp_single")
    # a Trainer switches the backend to its config's (NumPy here); inside a module fixture no test
    # fixture restores it, and later modules on this worker would build their models on NumPy
    with on_numpy():
        return {"big batch": one_process(world, root / "big", 8, 1),
                "accumulated": one_process(world, root / "acc", 4, 2)}


def relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def differences(run: dict, reference: dict) -> tuple[float, float]:
    """(largest relative difference of the losses, of any weight). The attention key bias has an
    exactly zero gradient (softmax ignores a shift of a row's scores): it stays at rounding noise
    (~1e-18), where a relative comparison means nothing, and is held to an absolute 1e-15 instead."""
    losses = max(relative(run[f"steps/{k}"], reference[f"steps/{k}"]) for k in ("loss", "mlm_loss", "nsp_loss"))
    noise = [k for k in reference if k.endswith("attention.self.key.bias")]
    assert all(np.abs(run[k] - reference[k]).max() <= 1e-15 for k in noise)
    weights = max(relative(run[k], reference[k]) for k in reference if k.startswith("weights/") and k not in noise)
    return losses, weights


# ----------------------------------------------------------------------------- equality

def test_two_ranks_equal_one_process_and_grad_accumulation(ranks, single):
    """2 ranks x 4 sequences == 1 process x 8 == 1 process x 4 x grad_accum 2 (and 2 ranks x 2 x
    grad_accum 2), to 1e-12 relative on losses and weights over 5 AdamW steps; the counts of correct
    predictions are identical. The ranks hold unequal numbers of labelled tokens (else any weighting
    of the ranks would agree)."""
    two, info = ranks["exact"]
    tokens = two["rank_mlm_tokens"]                                     # (2 ranks, 5 steps)
    assert (tokens[0] != tokens[1]).sum() >= 3, tokens
    for name, reference in single.items():
        losses, weights = differences(two, reference)
        assert losses <= 1e-12 and weights <= 1e-12, (name, losses, weights)
        for key in ("mlm_correct", "nsp_correct", "mlm_total", "nsp_total"):
            assert np.array_equal(two[f"steps/{key}"], reference[f"steps/{key}"]), (name, key)
    assert np.array_equal(tokens.sum(axis=0), two["steps/mlm_total"])   # the shares add up to the update
    losses, weights = differences(ranks["accumulate"][0], single["big batch"])
    assert losses <= 1e-12 and weights <= 1e-12, ("2 ranks x grad_accum 2", losses, weights)
    # one all-reduce of one flat buffer holding every gradient, per update
    n_params = sum(v.size for k, v in two.items() if k.startswith("weights/"))
    assert (info["flat_size"], info["reductions"], info["started_in_backward"]) == (n_params, 5, 0)
    assert two["steps/loss"][-1] < two["steps/loss"][0]                   # it does train


def test_averaging_the_ranks_own_means_is_not_the_big_batch(ranks, single):
    """The regression test: each rank's own mean losses, gradients averaged over the ranks (the
    per-rank version of Hugging Face Trainer's accumulation bug) misses by far more than 1e-12."""
    losses, weights = differences(ranks["per-rank-mean"][0], single["big batch"])
    assert losses > 1e-6 and weights > 1e-6, (losses, weights)


def test_overlapped_all_reduce_gives_the_same_bits(ranks):
    """Starting each layer's all-reduce during backward changes when the sums are made, not what they are."""
    plain, (overlap, info) = ranks["exact"][0], ranks["overlap"]
    # the heads' and the layer's buckets started inside backward, every step; the embeddings' after it
    assert info["buckets"] == ["heads", "layer 0", "embeddings"] and info["started_in_backward"] == 2 * 5, info
    for key in plain:
        if key.startswith("weights/"):
            assert np.array_equal(plain[key], overlap[key]), key


def test_cupy_path_with_nccl_on_the_strict_stand_in(ranks, single):
    """The GPU path on the CPU: device-like arrays (tests/strict_xp.py), the gradients all-reduced by
    a stand-in for cupy.cuda.nccl that reduces the memory behind the pointers it is given -- one call
    per update over the whole flat buffer -- the same numbers as one process, and no device value
    read on the host during a step."""
    run, info = ranks["strict-nccl"]
    losses, weights = differences(run, single["big batch"])
    assert losses <= 1e-12 and weights <= 1e-12, (losses, weights)
    assert info["reducer"] == "nccl"
    assert info["calls"] == [info["flat_size"]] * 5
    assert info["reads"] == []


# ----------------------------------------------------------------------------- the command line

def cli(world, out, *extra, steps=6) -> list[str]:
    return ["-m", "bertnp", "pretrain", "--corpus", world["corpus"], "--vocab", world["vocab"],
            "--config", world["config"], "--seq-length", "24", "--batch-size", "4", "--steps", str(steps),
            "--log-every", "1", "--eval-every", "3", "--eval-batches", "2", "--checkpoint-every", "3",
            "--no-progress", "--out", str(out), *extra]


def run_ok(command, timeout=300) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def same_run(a: Path, b: Path, tolerance: float) -> None:
    """Final models equal to ``tolerance`` relative (0: bit for bit); the same metrics lines."""
    wa = checkpoint.load_tensors(a / "model" / "model.safetensors")
    wb = checkpoint.load_tensors(b / "model" / "model.safetensors")
    for k in wa:
        if tolerance == 0:
            assert np.array_equal(wa[k], wb[k]), k
        elif not k.endswith("key.bias"):
            assert relative(wa[k], wb[k]) <= tolerance, k
    ma, mb = checkpoint.read_jsonl(a / "metrics.jsonl"), checkpoint.read_jsonl(b / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in ma] == [(r["split"], r["step"]) for r in mb]
    for ra, rb in zip(ma, mb):
        assert abs(ra["loss"] - rb["loss"]) <= 1e-12 * abs(rb["loss"]), (ra, rb)
        assert ra["mlm_acc"] == rb["mlm_acc"] and ra["nsp_acc"] == rb["nsp_acc"]


def test_mpiexec_pretrain_trains_the_one_process_model_and_rank_0_alone_writes(world, tmp_path):
    exact = ("--dtype", "float64", "--dropout", "0")
    two = run_ok(mpiexec(*cli(world, tmp_path / "two", *exact)))
    run_ok([sys.executable, *cli(world, tmp_path / "one", *exact)])
    same_run(tmp_path / "two", tmp_path / "one", 1e-12)
    assert two.stdout.count("trained 6 steps") == 1 and two.stdout.count("held-out:") == 1
    assert re.search(r"data parallel over 2 ranks \(rank 0 pid \d+ on \S+, rank 1 pid \d+ on \S+\)", two.stdout)
    assert "error" not in two.stderr
    state = json.loads((checkpoint.latest_checkpoint(tmp_path / "two") / "trainer_state.json").read_text())
    assert state["world_size"] == 2


def rank_pid(stdout_file: Path, rank: int, deadline: float) -> int:
    """Rank ``rank``'s process id, from the table rank 0 prints when the run starts."""
    while time.monotonic() < deadline:
        found = re.search(rf"rank {rank} pid (\d+) on", stdout_file.read_text())
        if found:
            return int(found.group(1))
        time.sleep(0.01)
    raise AssertionError(f"no table of ranks in {stdout_file.read_text()!r}")


def start(command, tmp_path, name):
    stdout = tmp_path / f"{name}.out"
    with open(stdout, "w") as handle:
        proc = subprocess.Popen(command, env=ENV, stdout=handle, stderr=subprocess.PIPE, text=True)
    return proc, stdout


def wait_for_step(proc, out: Path, step: int, deadline: float) -> None:
    while logged_step(out) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the run ended before the fault: " + proc.stderr.read()[-2000:]


def test_sigterm_to_one_rank_stops_every_rank_and_one_process_resumes(world, tmp_path):
    """SIGTERM reaches one rank only: it travels with the next step's counts, every rank stops after
    that same step, rank 0 saves it and says how to continue. Resumed on ONE process (another N), the
    run ends where a one-process run ends (float64, dropout off: to 1e-12)."""
    exact = ("--dtype", "float64", "--dropout", "0", "--checkpoint-every", "1000", "--eval-every", "1000")
    out = tmp_path / "run"
    proc, stdout = start(mpiexec(*cli(world, out, *exact, "--mpi-timeout", "60", steps=100)), tmp_path, "stop")
    deadline = time.monotonic() + 300
    victim = rank_pid(stdout, 1, deadline)
    wait_for_step(proc, out, 3, deadline)
    os.kill(victim, signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("bertnp: a signal to another rank at step ") and "--resume" in last, err
    stopped_at = int(last.split(" at step ")[1].split(":")[0])
    assert checkpoint.latest_checkpoint(out).name == f"step-{stopped_at:06d}"
    assert err.count("bertnp:") == 1, err                                 # rank 0 alone speaks
    resumed = run_ok([sys.executable, *cli(world, out, *exact, "--resume", steps=100)])
    assert "written by 2 process(es), this run has 1" in resumed.stdout
    run_ok([sys.executable, *cli(world, tmp_path / "one", *exact, steps=100)])
    same_run(out, tmp_path / "one", 1e-12)


def test_kill_9_of_one_rank_stops_the_run_naming_it_and_resume_is_bit_exact(world, tmp_path):
    """kill -9 of rank 1 mid-run (dropout on, checkpoints every step): mpiexec ends the job at once,
    the message names rank 1 (mpiexec's own names some process of the job), and a resume on 2 ranks
    ends bit for bit where an uninterrupted 2-rank run ends."""
    faults = ("--checkpoint-every", "1", "--eval-every", "5", "--eval-batches", "1", "--dropout", "0.1",
              "--seed", "5")
    run_ok(mpiexec(*cli(world, tmp_path / "straight", *faults, steps=12)))
    out = tmp_path / "run"
    proc, stdout = start(mpiexec(*cli(world, out, *faults, steps=12)), tmp_path, "kill")
    deadline = time.monotonic() + 300
    victim = rank_pid(stdout, 1, deadline)
    wait_for_step(proc, out, 4, deadline)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    err = proc.communicate(timeout=60)[1]
    stopped_in = time.monotonic() - t0
    assert proc.returncode != 0 and stopped_in < 30, (proc.returncode, stopped_in)
    assert re.search(rf"bertnp: error: rank 1 of 2 \(pid {victim} on \S+\) was killed by SIGKILL", err), err
    run_ok(mpiexec(*cli(world, out, *faults, "--resume", steps=12)))
    assert_same(final_state(out), final_state(tmp_path / "straight"))


def test_a_hung_rank_is_named_within_the_timeout(world, tmp_path):
    """A rank that stops answering (SIGSTOP: alive, not dead, so mpiexec sees nothing) is named by its
    neighbour when a collective has waited --mpi-timeout seconds, and every rank ends (MPI_Abort)."""
    out = tmp_path / "run"
    command = mpiexec(*cli(world, out, "--checkpoint-every", "1000", "--eval-every", "1000", "--mpi-timeout", "3",
                           steps=100))
    proc, stdout = start(command, tmp_path, "hang")
    deadline = time.monotonic() + 300
    victim = rank_pid(stdout, 1, deadline)
    wait_for_step(proc, out, 2, deadline)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    try:
        err = proc.communicate(timeout=120)[1]
    finally:
        try:
            os.kill(victim, signal.SIGKILL)                    # never leave a stopped process behind
        except ProcessLookupError:
            pass
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    # rank 1 stopped before the collective (did not reach it) or inside it (after its heartbeat went out)
    assert re.search(r"bertnp: error \(rank 0 of 2\): rank 1 (did not reach the \S+ .*within 3 s:|stopped inside the "
                     r"\S+ .*within 3.75 s;) it died or hangs", err), err


def test_an_error_on_one_rank_ends_every_rank(world, tmp_path):
    """An exception on rank 1 alone: it says so, with its rank, and MPI_Abort ends rank 0 too (rank 0
    would otherwise wait for it in the next all-reduce)."""
    env = dict(ENV, BERTNP_MPI_SUPERVISOR="0")
    done = subprocess.run(mpiexec(str(WORKER), str(world["root"]), str(tmp_path), "cli-raise"), env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "bertnp: error (rank 1 of 2): injected failure on rank 1" in done.stderr, done.stderr


def test_weights_that_drift_apart_stop_every_rank(world, tmp_path):
    """One weight of rank 1 nudged by 1e-12 after step 2: the checksum comparison at step 2 (every
    2 steps here) stops both ranks with a message naming rank 1 and the tensor, printed once."""
    env = dict(ENV, BERTNP_MPI_SUPERVISOR="0")
    done = subprocess.run(mpiexec(str(WORKER), str(world["root"]), str(tmp_path), "cli-diverge"), env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("the ranks' weights differ at step 2: rank 1") == 1, done.stderr
    assert "bert.encoder.layer.0.output.dense.bias" in done.stderr


def test_launch_runs_python_on_n_ranks_for_a_notebook():
    """What a notebook calls: ``distributed.launch(2, ...)`` runs Python on 2 ranks with one BLAS
    thread each and waits."""
    # rank 0 prints every rank's line: two ranks printing at once may interleave their characters
    program = ("import os; from mpi4py import MPI; c = MPI.COMM_WORLD; "
               "line = f\"{c.rank} {c.size} {c.allreduce(c.rank + 1)} {os.environ['OPENBLAS_NUM_THREADS']}\"; "
               "lines = c.gather(line); c.rank == 0 and print(*lines, sep='\\n')")
    done = distributed.launch(2, "-c", program, threads_per_rank=1, capture_output=True, timeout=120, env=ENV)
    assert done.stdout.split("\n")[:2] == ["0 2 3 1", "1 2 3 1"], done.stdout


def test_rank_0_alone_writes_every_checkpoint_once(world, tmp_path):
    """Every file and folder created under --out (seen by an audit hook on each rank: opens for
    writing, renames, mkdirs): rank 1 writes none; rank 0 publishes each checkpoint folder once."""
    env = dict(ENV, BERTNP_MPI_SUPERVISOR="0")
    run = subprocess.run(mpiexec(str(WORKER), str(world["root"]), str(tmp_path), "cli-writes"), env=env,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rank0 = json.loads((tmp_path / "writes-rank0.json").read_text())
    rank1 = json.loads((tmp_path / "writes-rank1.json").read_text())
    assert rank1 == [], rank1
    published = [path for event, path in rank0 if event == "os.rename" and path.startswith("checkpoints/step-")]
    assert published == ["checkpoints/step-000004", "checkpoints/step-000008"], json.dumps(rank0)
    assert ["open", "metrics.jsonl"] in rank0 and ["os.rename", "model"] in rank0, json.dumps(rank0)
    on_disk = sorted(p.name for p in (tmp_path / "cli-writes" / "checkpoints").glob("step-*"))
    assert on_disk == ["step-000004", "step-000008"], on_disk
