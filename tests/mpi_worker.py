"""What tests/test_distributed_mpi.py runs on every rank under ``mpiexec -n 2``.

    mpiexec -n 2 python tests/mpi_worker.py WORLD_DIR OUT_DIR SCENARIO [SCENARIO ...]

Each training scenario runs 5 AdamW updates of 8 sequences (float64, dropout off) on the tiny world
of tests/tiny_world.py; rank 0 writes ``OUT_DIR/SCENARIO.npz`` (losses, accuracies' counts, weights,
each rank's labelled tokens per step) for the test to compare with one process. The ``cli-*``
scenarios run ``bertnp pretrain`` in this process (BERTNP_MPI_SUPERVISOR=0) with a fault injected.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bertnp import backend, distributed                          # noqa: E402
from bertnp.optim import scale_grads                             # noqa: E402
from bertnp.train import Trainer                                 # noqa: E402
from tiny_world import quiet, tiny_config                        # noqa: E402

STEPS = 5


class PerRankMean(Trainer):
    """The bug the exact normalisation prevents: each rank's own mean losses, gradients averaged."""

    def _forward_backward(self, batch, totals, model=None):
        model = self.model if model is None else model
        out = model(**batch)                         # this rank's own means
        model.backward()
        n = self.parallel.size
        return {"loss": out.loss / n, "mlm_loss": out.mlm_loss / n, "nsp_loss": out.nsp_loss / n,
                "mlm_correct": 0, "nsp_correct": 0}

    def _reduce_gradients(self, grads):
        super()._reduce_gradients(grads)
        scale_grads(grads, 1.0 / self.parallel.size)


def train_five_steps(world, out, dp, trainer_class=Trainer, **options):
    """Run 5 updates; returns (per-step records, weights, this rank's labelled tokens per step)."""
    settings = dict(dtype="float64", dropout=0.0, batch_size=8, grad_accum=1, steps=STEPS, warmup=0, lr=5e-3,
                    eval_batches=0, log_every=1)
    settings.update(options)
    trainer = trainer_class(tiny_config(world, out, **settings), log=quiet, parallel=dp)
    local_counts = []
    global_totals = trainer._global_totals

    def record(totals):
        local_counts.append(totals["mlm_total"])
        return global_totals(totals)
    trainer._global_totals = record
    for _ in range(STEPS):
        trainer.train_step()
    trainer.read_pending()
    steps = trainer.take_read_steps()
    weights = {k: np.array(backend.to_host(v)) for k, v in trainer.model.parameters().items()}
    return trainer, steps, weights, local_counts


def save(out: Path, name: str, dp, steps, weights, local_counts, **extra) -> None:
    counts = dp.comm.allgather_json(local_counts, "the test's counts")          # every rank's, on every rank
    if dp.rank == 0:
        keys = ("loss", "mlm_loss", "nsp_loss", "mlm_correct", "nsp_correct", "mlm_total", "nsp_total")
        arrays = {f"steps/{k}": np.array([s[k] for s in steps], dtype=np.float64) for k in keys}
        arrays.update({f"weights/{k}": v for k, v in weights.items()})
        arrays["rank_mlm_tokens"] = np.array(counts)                              # (ranks, steps)
        np.savez(out / f"{name}.npz", **arrays)
        (out / f"{name}.json").write_text(json.dumps(extra))


# ----------------------------------------------------------------------------- a stand-in for NCCL

class FakeCuda:
    """cupy.cuda's stream and event, as much as bertnp.distributed uses."""

    class Stream:
        ptr = 0

    @staticmethod
    def get_current_stream():
        return FakeCuda.Stream()

    class Event:
        done = False

        def record(self, stream):
            self.done = True           # the fake reduction is complete when it returns


class FakeNccl:
    """cupy.cuda.nccl on the host: allReduce takes raw pointers, as the real one does, and reduces
    the memory behind them through MPI -- so the pointers, counts and types bertnp passes are checked."""
    NCCL_SUM, NCCL_FLOAT32, NCCL_FLOAT64 = 0, 7, 8
    available = True
    calls: list = []

    @staticmethod
    def get_unique_id():
        return tuple(range(128))

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank):
            from mpi4py import MPI
            assert (ndev, rank) == (MPI.COMM_WORLD.size, MPI.COMM_WORLD.rank) and tuple(commId) == tuple(range(128))
            self.comm = MPI.COMM_WORLD.Dup()

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            from mpi4py import MPI
            assert op == FakeNccl.NCCL_SUM and sendbuf == recvbuf
            c_type = {FakeNccl.NCCL_FLOAT32: ctypes.c_float, FakeNccl.NCCL_FLOAT64: ctypes.c_double}[datatype]
            memory = np.ctypeslib.as_array(ctypes.cast(recvbuf, ctypes.POINTER(c_type)), shape=(count,))
            self.comm.Allreduce(MPI.IN_PLACE, memory, op=MPI.SUM)
            FakeNccl.calls.append(count)


def strict_with_fake_nccl(world, out, dp_factory):
    """The CuPy path on the strict stand-in: device-like arrays, NCCL for the gradients; and a
    training step reads nothing from the device."""
    from strict_xp import HOST_READS, STRICT, StrictArray
    StrictArray.__cuda_array_interface__ = property(lambda a: {
        "data": (a.__array_interface__["data"][0], False), "shape": a.shape, "typestr": a.dtype.str, "version": 3})
    reads = []
    armed = [False]
    for name in HOST_READS:
        original = getattr(StrictArray, name)

        def guarded(array, *args, _name=name, _original=original, **kwargs):
            if armed[0]:
                reads.append(_name)
            return _original(array, *args, **kwargs)
        setattr(StrictArray, name, guarded)
    backend.set_backend = lambda name: None          # stay on the stand-in
    backend.nccl = lambda: (FakeNccl, FakeCuda)
    real_step = Trainer.train_step

    def step_armed(self):
        armed[0] = True
        try:
            return real_step(self)
        finally:
            armed[0] = False
    Trainer.train_step = step_armed
    with backend.using(STRICT, "strict"):
        dp = dp_factory()
        trainer, steps, weights, counts = train_five_steps(world, out, dp)
        reducer = trainer.parallel.reducer.name
        flat = trainer.parallel.flat.size
    Trainer.train_step = real_step
    return dp, steps, weights, counts, {"reducer": reducer, "calls": FakeNccl.calls, "flat_size": flat,
                                        "reads": reads}


# ----------------------------------------------------------------------------- the command line, with a fault

def cli_with_fault(world, out, scenario) -> int:
    from bertnp import cli
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.rank
    real_step = Trainer.train_step

    def faulty(self):
        record = real_step(self)
        if scenario == "cli-raise" and rank == 1 and self.step == 3:
            raise RuntimeError("injected failure on rank 1")
        if scenario == "cli-diverge" and rank == 1 and self.step == 2:
            self.model.parameters()["bert.encoder.layer.0.output.dense.bias"][0] += 1e-12
        return record
    Trainer.train_step = faulty
    if scenario == "cli-writes":                     # every file or folder this rank creates, renames or opens to write
        import json
        target, writes = str(out / scenario), []

        def audit(event, args):
            if event in ("open", "os.rename", "os.mkdir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
                path = os.fsdecode(args[-3] if event == "os.rename" else args[0])
                mode = args[1] if event == "open" else "w"
                destination = os.fsdecode(args[1]) if event == "os.rename" else path
                if destination.startswith(target) and isinstance(mode, str) and any(c in mode for c in "wax+"):
                    writes.append([event, os.path.relpath(destination, target)])
        sys.addaudithook(audit)
        code = cli.main(["pretrain", "--corpus", world["corpus"], "--vocab", world["vocab"], "--config", world["config"],
                         "--seq-length", "24", "--batch-size", "4", "--steps", "8", "--log-every", "1",
                         "--eval-every", "4", "--eval-batches", "1", "--checkpoint-every", "4", "--no-progress",
                         "--out", target])
        (out / f"writes-rank{rank}.json").write_text(json.dumps(writes))
        return code
    argv = ["pretrain", "--corpus", world["corpus"], "--vocab", world["vocab"], "--config", world["config"],
            "--seq-length", "24", "--batch-size", "4", "--steps", "8", "--log-every", "1", "--eval-every", "100",
            "--checkpoint-every", "100", "--check-weights-every", "2", "--dtype", "float64", "--dropout", "0",
            "--no-progress", "--out", str(out / scenario)]
    return cli.main(argv)


def main(argv):
    world_dir, out = Path(argv[0]), Path(argv[1])
    world = {"corpus": str(world_dir / "corpus.txt"), "vocab": str(world_dir / "vocab.txt"),
             "config": str(world_dir / "config.json"), "root": world_dir}
    for scenario in argv[2:]:
        if scenario.startswith("cli-"):
            sys.exit(cli_with_fault(world, out, scenario))
        run = out / f"run-{scenario}"
        if scenario == "strict-nccl":
            dp, steps, weights, counts, extra = strict_with_fake_nccl(
                world, run, lambda: distributed.DataParallel.from_environment(timeout=60))
            save(out, scenario, dp, steps, weights, counts, **extra)
            continue
        dp = distributed.DataParallel.from_environment(timeout=60, overlap=(scenario == "overlap"))
        options, trainer_class = {}, Trainer
        if scenario == "accumulate":
            options = dict(batch_size=4, grad_accum=2)
        elif scenario == "per-rank-mean":
            trainer_class = PerRankMean
        trainer, steps, weights, counts = train_five_steps(world, run, dp, trainer_class, **options)
        save(out, scenario, dp, steps, weights, counts, flat_size=trainer.parallel.flat.size,
             reductions=trainer.parallel.timings["gradient_reductions"],
             started_in_backward=trainer.parallel.timings["buckets_started_in_backward"],
             buckets=[b for b, _, _ in trainer.parallel.flat.buckets])


if __name__ == "__main__":
    main(sys.argv[1:])
