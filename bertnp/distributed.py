"""Data parallelism over MPI: N processes train one model exactly as one process would on the whole batch.

    mpiexec -n 2 bertnp pretrain --steps 1000 --batch-size 32 --out runs/dp     # 2 ranks x 16 sequences
    srun --mpi=pmi2 -n 8 bertnp pretrain ...                                     # under Slurm

One update with N ranks (every rank runs the same :class:`bertnp.train.TrainingLoop`)::

    every rank draws the same update batch (same loader, seed and position) and keeps its share:
        rows [r*B//N, (r+1)*B//N) of every micro-batch           disjoint, deterministic, any N
    all-reduce the update's counts (labelled tokens, sequences)  every rank divides by the same counts
    forward + backward on the share (grad_accum micro-batches)   each rank: sum of its losses / counts
    all-reduce (sum) the gradients: one flat buffer              the model's gradients are views into it
    clip + AdamW                                                 same gradients -> same weights everywhere

Why the counts go round first: the loss is the mean MLM cross-entropy over the update's labelled
tokens plus the mean NSP cross-entropy over its sequences. A rank that divided by its *own* counts
and then averaged with the others would weigh a token on a sparsely masked rank more than one on a
densely masked rank: the mean of means, not the mean (Hugging Face Trainer's gradient-accumulation
bug until transformers PR #34191). Dividing every share's *sum* by the global count makes the shares
simply add up, across ranks and micro-batches alike, so the all-reduce is a plain sum.

Rank 0 alone writes (checkpoints, metrics.jsonl, figures, the progress bar); ``--out`` must be a
folder every rank sees (it is checked at the start). Every ``check_every`` steps the ranks compare a
checksum of the weights' bits (:class:`DivergenceError` if they differ). Every collective waits at
most ``timeout`` seconds: a rank that died or hangs is named by its right-hand neighbour in a ring
of tiny "I got here" messages, and the run stops (MPI_Abort) instead of hanging. Under ``bertnp``'s
command line each rank's work runs in a child of the process the launcher started (:func:`supervise`),
so a rank killed outright (``kill -9``, the OOM killer) is still named: mpiexec's own message can name
another process of the job.

Arrays: NumPy gradients go through MPI. CuPy gradients go through NCCL (``cupy.cuda.nccl``, via
:func:`bertnp.backend.nccl`) when it is there, through MPI itself when MPI is CUDA-aware, else through
the host (copy, MPI, copy back). Everything else the ranks exchange is small and on the host.

For notebooks and scripts::

    from bertnp import distributed
    distributed.launch(2, "-m", "bertnp", "pretrain", "--steps", "20", "--out", "runs/dp")   # waits; returns
    distributed.mpiexec_command(2, "my_script.py")        # the command line, to run yourself

and inside a script started by mpiexec: ``dp = distributed.DataParallel.from_environment()``, then
``Trainer(config, parallel=dp)``; or the pieces by themselves: :func:`shard_rows`, :class:`Communicator`
(``allreduce_``, ``allreduce_counts``), :class:`FlatGradients`, :func:`weights_checksum`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from bertnp import backend

__all__ = ["DataParallel", "Communicator", "FlatGradients", "DivergenceError",
           "shard_rows", "shard_batch", "weights_checksum", "launched_by_mpi", "environment_rank_size",
           "supervise", "mpiexec_command", "launch", "find_mpiexec"]

DEFAULT_TIMEOUT = 600.0       # seconds a rank waits in one collective before it names the missing rank
DEFAULT_CHECK_EVERY = 100     # steps between two comparisons of the weights' checksums
_CHILD_FLAG = "BERTNP_RANK_CHILD"      # set in the environment of a supervised rank (see supervise)


class DivergenceError(RuntimeError):
    """The ranks' weights are no longer identical: they do not train one model any more."""


# ============================================================================ sharing a batch

def shard_rows(n: int, rank: int, size: int) -> slice:
    """The rows of an ``n``-row batch that ``rank`` of ``size`` takes: ``[rank*n//size, (rank+1)*n//size)``.

    Contiguous, disjoint, covering all ``n`` rows, and a pure function of (n, rank, size): no
    random number, so every rank knows every other rank's share. With ``n`` not a multiple of
    ``size`` the shares differ by one row (``n=5, size=2``: 2 and 3 rows); with ``n < size`` some
    shares are empty."""
    if not (isinstance(size, (int, np.integer)) and size >= 1 and 0 <= rank < size):
        raise ValueError(f"rank must be in [0, size) and size >= 1, got rank={rank!r}, size={size!r}")
    return slice(rank * n // size, (rank + 1) * n // size)


def shard_batch(batch: dict, rank: int, size: int) -> dict:
    """``rank``'s share of a host batch ``{name: array with the batch on axis 0}``."""
    lengths = {len(v) for v in batch.values()}
    if len(lengths) != 1:
        raise ValueError(f"batch: every array needs the same number of rows, got {sorted(lengths)}")
    rows = shard_rows(lengths.pop(), rank, size)
    return {k: v[rows] for k, v in batch.items()}


def _rows(batch: dict) -> int:
    return len(next(iter(batch.values())))


# ============================================================================ who launched us

_RANK_SIZE_VARS = (("PMI_RANK", "PMI_SIZE"),                              # MPICH's hydra, srun --mpi=pmi2
                   ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),      # Open MPI's mpirun
                   ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"),        # MVAPICH
                   ("PMIX_RANK", None))                                   # PMIx (size known after MPI_Init)


def environment_rank_size() -> tuple[int, int] | None:
    """(rank, size) as the launcher's environment says, without starting MPI; None outside a launcher.
    Size 0 means "launched, size unknown until MPI starts" (PMIx)."""
    if os.environ.get("BERTNP_MPI", "").strip().lower() in ("0", "off", "no", "false"):
        return None
    for rank_var, size_var in _RANK_SIZE_VARS:
        if rank_var in os.environ:
            try:
                rank = int(os.environ[rank_var])
                size = int(os.environ[size_var]) if size_var and size_var in os.environ else 0
            except ValueError:
                continue
            return rank, size
    return None


def launched_by_mpi() -> bool:
    """True when a launcher (mpiexec, mpirun, srun with an MPI plugin) started this process as one of several."""
    found = environment_rank_size()
    return found is not None and found[1] != 1


def _local_ranks() -> int:
    """How many ranks share this machine, as the launcher says (1 if it does not)."""
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        try:
            return max(1, int(os.environ[name].split("(")[0]))
        except (KeyError, ValueError):
            continue
    return 1


# ============================================================================ the communicator

def _import_mpi():
    """mpi4py's MPI module (MPI_Init happens here), or an ImportError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("data parallelism needs mpi4py and an MPI library: pip install 'bertnp[mpi]' "
                          f"(mpi4py and the mpich wheel) ({exc})") from exc
    return MPI


class Communicator:
    """MPI collectives that cannot hang: every wait is bounded by ``timeout`` seconds.

    ``comm``: an mpi4py communicator (default ``MPI.COMM_WORLD``). Every rank must call the same
    collectives in the same order (as with MPI itself). Each collective is started non-blocking and
    polled with ``Test`` (the polling is what makes MPI progress, as a blocking call would), and
    before it each rank sends a tiny "I reached collective k" message to its right-hand neighbour
    ``(rank + 1) % size`` on a separate communicator. If the collective has not completed after
    ``timeout`` seconds, a rank that has not heard from its left-hand neighbour knows *that* rank
    never got there: it prints which one and calls MPI_Abort, which ends every rank. (Ranks whose
    neighbour did arrive wait a little longer for that message, then abort too.)
    """

    def __init__(self, comm=None, timeout: float = DEFAULT_TIMEOUT, log: Callable[[str], None] | None = None):
        MPI = _import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.host = MPI.Get_processor_name()
        self.collectives = 0                      # collectives started so far: the same on every rank
        self._heartbeats = self.comm.Dup()        # the "I got here" messages never mix with the collectives
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))

    # ------------------------------------------------------------------ waiting, with a deadline
    def wait(self, is_done: Callable[[], bool], what: str) -> None:
        """Poll ``is_done()`` until it is True; after ``timeout`` seconds, name the missing rank and abort."""
        k = self.collectives
        self.collectives += 1
        if self.size == 1:
            while not is_done():
                pass
            return
        left, right = (self.rank - 1) % self.size, (self.rank + 1) % self.size
        sent, arrived = np.array([k], dtype=np.int64), np.empty(1, dtype=np.int64)
        beats = [self._heartbeats.Irecv(arrived, source=left, tag=0),
                 self._heartbeats.Isend(sent, dest=right, tag=0)]
        deadline = time.monotonic() + self.timeout
        while not is_done():
            if time.monotonic() > deadline:
                self._timed_out(is_done, beats, left, what)
                break
        # the collective is complete, so the left neighbour took part: its message is here or a moment away
        while not self.MPI.Request.Testall(beats):
            if time.monotonic() > deadline:
                self.abort(f"rank {left} took part in {what} but sent no word after it within {self.timeout:g} s: "
                           "it died or hangs; stopping every rank")
        if int(arrived[0]) != k:
            self.abort(f"rank {left} reached collective #{arrived[0]} where this rank reached #{k} ({what}): "
                       "the ranks do not run the same sequence of steps")

    def _timed_out(self, is_done, beats, left: int, what: str) -> None:
        if not beats[0].Test():
            self.abort(f"rank {left} did not reach {what} within {self.timeout:g} s: it died or hangs "
                       f"(this is rank {self.rank} of {self.size} on {self.host}); stopping every rank")
        # the left neighbour got here: the missing rank is further round the ring, and the rank to its
        # right names it. Give that rank time to speak (its deadline is at most a step's skew away).
        grace = min(30.0, 0.25 * self.timeout)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if is_done():
                return                            # only slow after all
        if self.size == 2:                        # the left neighbour is the only other rank: it stopped inside
            self.abort(f"rank {left} stopped inside {what}: it did not complete within {self.timeout + grace:g} s; "
                       f"it died or hangs (this is rank {self.rank} of {self.size} on {self.host}); stopping every rank")
        self.abort(f"{what} did not complete within {self.timeout + grace:g} s: another rank died or hangs "
                   "(its right-hand neighbour names it unless it stopped inside the collective); stopping every rank")

    def abort(self, message: str, code: int = 3) -> None:
        """Print ``message`` (naming this rank) and end every rank of the job (MPI_Abort)."""
        self.log(f"bertnp: error (rank {self.rank} of {self.size}): {message}")
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            # the launcher forwards a rank's output from a pipe; MPI_Abort has it kill the ranks and
            # exit, and on a busy machine the message could be lost on the way (seen once in make test)
            time.sleep(0.2)
        finally:
            self.comm.Abort(code)

    # ------------------------------------------------------------------ the collectives
    def allreduce_(self, array, what: str = "an all-reduce", op: str = "sum"):
        """In place: ``array`` becomes the element-wise sum (or "max", "min") over every rank.
        ``array``: a contiguous host (NumPy) array, or a device array when MPI is CUDA-aware."""
        mpi_op = {"sum": self.MPI.SUM, "max": self.MPI.MAX, "min": self.MPI.MIN}[op]
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, array, op=mpi_op)
        self.wait(request.Test, what)
        return array

    def allreduce_counts(self, counts: dict, what: str = "the counts") -> dict:
        """``{name: int}`` summed over every rank (one all-reduce of an int64 vector)."""
        names = sorted(counts)
        values = np.array([int(counts[n]) for n in names], dtype=np.int64)
        self.allreduce_(values, what)
        return {n: int(v) for n, v in zip(names, values)}

    def allgather_json(self, obj, what: str = "an exchange") -> list:
        """Every rank's ``obj`` (anything JSON can hold), in rank order, on every rank."""
        data = np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)
        lengths = np.zeros(self.size, dtype=np.int64)
        lengths[self.rank] = data.size
        self.allreduce_(lengths, what)
        gathered = np.empty(int(lengths.sum()), dtype=np.uint8)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        request = self.comm.Iallgatherv(data, [gathered, (lengths, offsets), self.MPI.BYTE])
        self.wait(request.Test, what)
        return [json.loads(bytes(gathered[o:o + n]).decode("utf-8")) for o, n in zip(offsets, lengths)]

    def bcast_json(self, obj, root: int = 0, what: str = "a broadcast"):
        """Rank ``root``'s ``obj`` on every rank."""
        return self.allgather_json(obj if self.rank == root else None, what)[root]

    def barrier(self, what: str = "a barrier") -> None:
        request = self.comm.Ibarrier()
        self.wait(request.Test, what)


# ============================================================================ gradients in one flat buffer

def _bucket_of(name: str) -> str:
    """Which all-reduce bucket a parameter belongs to: the order in which backward finishes them
    is heads (MLM, NSP, pooler), layer L-1, ..., layer 0, embeddings (the tied word embedding last)."""
    marker = "encoder.layer."
    if marker in name:
        return "layer " + name.split(marker, 1)[1].split(".", 1)[0]
    if ".embeddings." in name or name.startswith("embeddings."):
        return "embeddings"
    return "heads"


def _bucket_order(bucket: str) -> tuple:
    if bucket == "heads":
        return (0, 0)
    if bucket == "embeddings":
        return (2, 0)
    return (1, -int(bucket.split()[1]))           # "layer 3" before "layer 2"


class FlatGradients:
    """The model's gradients as views into one flat array, so one all-reduce call moves them all.

    The tensors are laid out in the order backward completes them (heads, the layers from the top
    down, the embeddings) and grouped into buckets (``buckets``: ``[(name, start, stop), ...]``) so
    that a bucket could be reduced while backward still works on the layers below it. The model adds
    to its gradients in place (``+=``, ``fill(0)``, ``out=``) and never rebinds them, so rebinding
    its gradient dictionary to views once is enough (``tests/test_distributed.py`` checks the views
    survive backward and zero_grad).
    """

    def __init__(self, model):
        xp = backend.xp()
        grads = model.grads
        dtypes = {g.dtype for g in grads.values()}
        if len(dtypes) != 1:
            raise ValueError(f"model gradients: one dtype needed for one flat buffer, got {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop()
        # heads first, then the layers from the top down, the embeddings last; model order inside a bucket
        names = sorted(grads, key=lambda n: _bucket_order(_bucket_of(n)))
        self.names = names
        self.size = int(sum(grads[n].size for n in names))
        self.flat = xp.zeros(self.size, dtype=self.dtype)                 # (P,) every gradient, end to end
        self.views, self.buckets, offset = {}, [], 0
        for name in names:
            g = grads[name]
            view = self.flat[offset:offset + g.size].reshape(g.shape)     # (n,) -> the tensor's shape: a view
            view[...] = g
            self.views[name] = view
            bucket = _bucket_of(name)
            if self.buckets and self.buckets[-1][0] == bucket:
                self.buckets[-1] = (bucket, self.buckets[-1][1], offset + g.size)
            else:
                self.buckets.append((bucket, offset, offset + g.size))
            offset += g.size
        _rebind_gradients(model, self.views)
        self.bucket_names = {b: [n for n in names if _bucket_of(n) == b] for b, _, _ in self.buckets}

    @property
    def nbytes(self) -> int:
        return int(self.size * self.dtype.itemsize)

    def is_live(self, model) -> bool:
        """True while every model gradient is still a view into ``flat`` (nothing rebound them)."""
        return all(model.grads[n] is v for n, v in self.views.items())


def _rebind_gradients(model, views: dict) -> None:
    """Point the model's gradient arrays at ``views``. The model keeps them in ``_grads`` and only
    ever adds into them, so this is the one place that needs to know the attribute's name."""
    missing = set(model.grads) - set(views)
    if missing:
        raise ValueError(f"FlatGradients: no view for gradient {sorted(missing)[0]}")
    model._grads.update(views)


# ============================================================================ moving gradients between ranks

class _MPIReduce:
    """All-reduce through MPI: NumPy arrays, or device arrays when the MPI library is CUDA-aware."""
    name = "mpi"

    def __init__(self, comm: Communicator):
        self.comm = comm

    def start(self, array):
        return self.comm.comm.Iallreduce(self.comm.MPI.IN_PLACE, array, op=self.comm.MPI.SUM)

    @staticmethod
    def done(handle) -> bool:
        return handle.Test()


class _HostStagedReduce(_MPIReduce):
    """Device arrays through the host: copy down, all-reduce with MPI, copy back (any MPI, slower)."""
    name = "mpi via host"

    def start(self, array):
        host = backend.to_host(array)                   # waits for the GPU: the gradients are complete
        request = super().start(host)
        return (request, host, array)

    def done(self, handle) -> bool:
        request, host, array = handle
        if not request.Test():
            return False
        array[...] = backend.to_device(host)
        return True


class _NCCLReduce:
    """All-reduce of device arrays with NCCL (``cupy.cuda.nccl``) on the current CUDA stream.

    The NCCL communicator is made from a unique id that rank 0 creates and MPI broadcasts; the
    reduction is queued on the stream after backward, and clipping and AdamW queue after it, so
    the host never waits. ``done`` asks a CUDA event recorded after the reduction (the watchdog's
    deadline still applies)."""
    name = "nccl"

    def __init__(self, comm: Communicator, nccl, cuda):
        self.nccl_module, self.cuda = nccl, cuda
        uid = nccl.get_unique_id() if comm.rank == 0 else None
        uid = comm.bcast_json(list(uid) if uid is not None else None, what="the NCCL unique id")
        self.nccl = nccl.NcclCommunicator(comm.size, tuple(uid), comm.rank)
        self.types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def start(self, array):
        stream = self.cuda.get_current_stream()
        pointer = array.__cuda_array_interface__["data"][0]
        self.nccl.allReduce(pointer, pointer, array.size, self.types[np.dtype(array.dtype)],
                            self.nccl_module.NCCL_SUM, stream.ptr)
        event = self.cuda.Event()
        event.record(stream)
        return event

    @staticmethod
    def done(event) -> bool:
        return event.done


def _device_reducer(comm: Communicator, log):
    """How this run moves gradients: NCCL or CUDA-aware MPI for CuPy arrays, else MPI (through the host)."""
    if backend.get_backend() == "numpy":
        return _MPIReduce(comm)
    try:
        nccl, cuda = backend.nccl()
    except RuntimeError as exc:
        reason = str(exc)
    else:
        return _NCCLReduce(comm, nccl, cuda)
    query = getattr(comm.MPI, "Query_cuda_support", None)
    cuda_aware = os.environ.get("BERTNP_MPI_CUDA_AWARE") == "1" or bool(query and query())
    if cuda_aware:
        return _MPIReduce(comm)
    if comm.rank == 0:
        log(f"note: gradients go through the host ({reason}; MPI is not CUDA-aware): slower than NCCL")
    return _HostStagedReduce(comm)


# ============================================================================ the weights' checksum

def weights_checksum(parameters: dict) -> np.ndarray:
    """One uint64 per tensor (sorted by name): the sum of the tensor's raw bits, modulo 2**64.

    Any single changed bit changes its tensor's sum (by 2**k): identical weights give identical
    checksums and a rank whose weights drifted by one rounding shows. Computed on the device, one
    small array read back."""
    xp = backend.xp()
    sums = []
    for name in sorted(parameters):
        p = parameters[name]
        bits = p.reshape(-1).view({2: xp.uint16, 4: xp.uint32, 8: xp.uint64}[p.dtype.itemsize])  # (n,) same bytes, as integers
        sums.append(bits.sum(dtype=xp.uint64))          # wraps around modulo 2**64
    return backend.to_host(xp.stack(sums)).astype(np.uint64)


# ============================================================================ what the training loop uses

class DataParallel:
    """Data parallelism for :class:`bertnp.train.TrainingLoop` (``TrainingLoop(config, parallel=dp)``).

    ``DataParallel(None)`` is one process (every method does nothing and the loop runs as before);
    ``DataParallel.from_environment()`` is the launcher's ranks (None outside a launcher).

    ``timeout``: seconds any collective may wait (default 600: longer than rank 0 alone writing a
    checkpoint or training the vocabulary); ``check_every``: steps between weight checksums;
    ``overlap``: start each layer's all-reduce as soon as backward has finished that layer
    (measured in benchmarks/RESULTS.md; off by default).
    """

    def __init__(self, communicator: Communicator | None, check_every: int = DEFAULT_CHECK_EVERY,
                 overlap: bool = False):
        self.comm = communicator
        self.rank = communicator.rank if communicator else 0
        self.size = communicator.size if communicator else 1
        if not (isinstance(check_every, int) and check_every >= 1):
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
        self.check_every = check_every
        self.overlap = bool(overlap)
        self.flat: FlatGradients | None = None
        self.reducer = None
        self.timings = Counter()           # seconds waiting for gradient all-reduces, and how many
        self._pending: list = []           # overlap: (bucket, handle) started during backward
        self._expected: dict = {}          # overlap: bucket -> accumulate calls that complete it
        self._seen: Counter = Counter()
        self.log: Callable[[str], None] = lambda message: None

    @classmethod
    def from_environment(cls, timeout: float = DEFAULT_TIMEOUT, check_every: int = DEFAULT_CHECK_EVERY,
                         overlap: bool = False) -> "DataParallel | None":
        """The ranks a launcher started (MPI_Init happens here), or None for a single process."""
        if environment_rank_size() is None:
            return None
        comm = Communicator(timeout=timeout)
        if comm.size == 1:
            steps = os.environ.get("SLURM_STEP_NUM_TASKS")
            if steps and steps.isdigit() and int(steps) > 1:
                raise RuntimeError(f"srun started {steps} tasks but MPI sees each as alone: they would all train "
                                   "and write the same --out; use 'srun --mpi=pmi2' (or mpiexec inside the "
                                   "allocation), or set BERTNP_MPI=off for independent runs")
            return None
        _install_excepthook(comm)
        return cls(comm, check_every=check_every, overlap=overlap)

    # ------------------------------------------------------------------ who does what
    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the run's files and prints; the others only compute."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def describe(self) -> str:
        table = self.comm.allgather_json([os.getpid(), self.comm.host], "the table of ranks")
        ranks = ", ".join(f"rank {r} pid {pid} on {host}" for r, (pid, host) in enumerate(table))
        return f"data parallel over {self.size} ranks ({ranks})"

    # ------------------------------------------------------------------ set-up
    def check_config(self, config, resumed: bool) -> None:
        """ValueError when the run cannot be shared by ``size`` ranks, saying exactly why."""
        if not self.active:
            return
        if getattr(config, "time_budget", None) is not None:
            raise ValueError("time_budget: a run on several ranks needs --steps (each rank would time its own "
                             "steps and choose another length)")
        if config.batch_size < self.size:
            fixed = " (fixed when the run started: resume it on fewer ranks)" if resumed else \
                " (give --batch-size >= the number of ranks; --grad-accum keeps the update's size)"
            raise ValueError(f"batch_size {config.batch_size} cannot be shared by {self.size} ranks: every rank "
                             f"needs at least one sequence of each micro-batch{fixed}")

    def share_folder(self, out: Path, prepare: Callable[[], None]) -> None:
        """Rank 0 runs ``prepare()`` (creates ``out``, clears it ...) and leaves a marker in it; every
        rank must see the marker: the run's folder has to be shared (rank 0 writes what all read)."""
        if not self.active:
            prepare()
            return
        failure, error, token = None, None, uuid.uuid4().hex
        if self.is_writer:
            try:
                prepare()
                (Path(out) / f".shared-check.{token}.tmp").write_text(token, encoding="utf-8")
            except Exception as exc:            # every rank must hear it, or they wait in the next collective
                failure, error = exc, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        error, token = self.comm.bcast_json([error, token], what="rank 0 preparing the run's folder")
        if failure is not None:
            raise failure
        if error is not None:
            raise RuntimeError(f"rank 0 could not prepare '{out}': {error}")
        marker = Path(out) / f".shared-check.{token}.tmp"
        try:
            seen = marker.read_text(encoding="utf-8") == token
        except OSError:
            seen = False
        seen_by = self.comm.allgather_json([seen, self.comm.host], "the check of the shared folder")
        if self.is_writer:
            marker.unlink(missing_ok=True)
        blind = [(r, host) for r, (ok, host) in enumerate(seen_by) if not ok]
        if blind:
            r, host = blind[0]
            raise ValueError(f"out_dir: '{out}' must be a folder every rank sees (a shared filesystem): rank {r} "
                             f"on {host} cannot see what rank 0 wrote there")

    def barrier(self, what: str) -> None:
        if self.active:
            self.comm.barrier(what)

    def setup_device(self) -> None:
        """On CuPy: one GPU per rank on a machine (local rank modulo the GPUs), before any allocation."""
        if self.active and backend.get_backend() == "cupy":
            local = self.comm.comm.Split_type(self.comm.MPI.COMM_TYPE_SHARED).Get_rank()
            backend.use_device(local)

    def attach(self, model) -> None:
        """Put the model's gradients into one flat buffer and choose how it is reduced."""
        if not self.active:
            return
        self.flat = FlatGradients(model)
        self.reducer = _device_reducer(self.comm, self.log)
        if self.overlap:
            self._install_overlap(model)

    def prepare_model(self, model) -> None:
        """Each rank its own dropout masks: rank r > 0 derives its dropout seed from the run's (rank 0
        keeps it, so one process is unchanged). Called after building and after loading a checkpoint."""
        if self.active and self.rank > 0:
            # the dropout key's seed (backend.philox_bits16) mixed from (run seed, a tag, rank): 63 bits
            mixed = np.random.SeedSequence([model.seed & 0xFFFFFFFFFFFF, 0x5EED, self.rank]).generate_state(2, np.uint64)
            model.dropout_seed = int(mixed[0] >> np.uint64(1))

    # ------------------------------------------------------------------ one update
    def share(self, batch: dict) -> dict:
        """This rank's rows of a host batch."""
        return shard_batch(batch, self.rank, self.size) if self.active else batch

    def allreduce_counts(self, counts: dict, what: str) -> dict:
        return self.comm.allreduce_counts(counts, what) if self.active else counts

    def begin_update(self, micro_batches: int) -> None:
        """Overlap: backward on the last of ``micro_batches`` completes the buckets."""
        if self.active and self.overlap:
            self._seen.clear()
            self._pending = []
            self._expected = {b: micro_batches * len(names) for b, names in self.flat.bucket_names.items()
                              if b != "embeddings"}

    def reduce_gradients(self, step: int) -> None:
        """Sum every rank's gradients, in place (each is already divided by the update's global counts)."""
        if not self.active:
            return
        t0 = time.perf_counter()
        started = {bucket for bucket, _ in self._pending}
        self.timings["buckets_started_in_backward"] += len(started)
        handles = [h for _, h in self._pending]
        if not self.overlap:
            handles.append(self.reducer.start(self.flat.flat))           # one call: the whole buffer
        else:
            for bucket, start, stop in self.flat.buckets:
                if bucket not in started:
                    handles.append(self.reducer.start(self.flat.flat[start:stop]))
        self._pending = []
        remaining = list(handles)

        def all_done() -> bool:
            remaining[:] = [h for h in remaining if not self.reducer.done(h)]
            return not remaining
        self.comm.wait(all_done, f"the gradient all-reduce of step {step}")
        self.timings["gradient_wait_s"] += time.perf_counter() - t0
        self.timings["gradient_reductions"] += 1

    def _install_overlap(self, model) -> None:
        """Start a bucket's all-reduce as soon as backward has added the last gradient to it: wrap the
        model's ``_accumulate(name, grad)`` (every head and layer gradient passes through it once per
        backward; the embeddings, finished last, are started after backward)."""
        accumulate = model._accumulate
        bucket_of = {n: _bucket_of(n) for n in self.flat.names}
        ranges = {b: (start, stop) for b, start, stop in self.flat.buckets}

        def accumulate_and_start(name, grad):
            accumulate(name, grad)
            bucket = bucket_of.get(name)
            if bucket not in self._expected:
                return
            self._seen[bucket] += 1
            if self._seen[bucket] == self._expected[bucket]:
                start, stop = ranges[bucket]
                self._pending.append((bucket, self.reducer.start(self.flat.flat[start:stop])))
            for _, handle in self._pending:                # let MPI move the started buckets along
                self.reducer.done(handle)
        model._accumulate = accumulate_and_start

    def global_values(self, values: np.ndarray, summed: list[bool], step: int) -> np.ndarray:
        """The logged per-step values (rows: steps, columns: keys) summed over ranks where ``summed``
        (loss shares, correct counts); the others (the gradient norm) are the same on every rank."""
        if not self.active:
            return values
        mask = np.array(summed, dtype=bool)
        total = np.ascontiguousarray(np.where(mask, values, 0.0), dtype=np.float64)
        self.comm.allreduce_(total, f"the logged values up to step {step}")
        return np.where(mask, total, values)

    def combine_evaluation(self, result: dict, step: int) -> dict:
        """Held-out means over every rank's share: sums and counts all-reduced, then divided."""
        if not self.active:
            return result
        mlm_n, nsp_n = result.get("mlm_tokens", 0), result.get("sequences", 0)
        sums = np.array([result.get("mlm_loss", 0.0) * mlm_n, result.get("nsp_loss", 0.0) * nsp_n,
                         round(result.get("mlm_acc", 0.0) * mlm_n), round(result.get("nsp_acc", 0.0) * nsp_n),
                         mlm_n, nsp_n], dtype=np.float64)
        self.comm.allreduce_(sums, f"the evaluation at step {step}")
        mlm_loss_sum, nsp_loss_sum, mlm_correct, nsp_correct, mlm_n, nsp_n = sums.tolist()
        mlm, nsp = max(mlm_n, 1), max(nsp_n, 1)
        return {"loss": mlm_loss_sum / mlm + nsp_loss_sum / nsp, "mlm_loss": mlm_loss_sum / mlm,
                "nsp_loss": nsp_loss_sum / nsp, "mlm_acc": mlm_correct / mlm, "nsp_acc": nsp_correct / nsp,
                "mlm_tokens": int(mlm_n), "sequences": int(nsp_n)}

    # ------------------------------------------------------------------ the divergence guard
    def check_weights(self, parameters: dict, step: int) -> None:
        """Compare the weights' checksums of every rank; DivergenceError (on every rank) if any differ."""
        if not self.active:
            return
        mine = weights_checksum(parameters)
        every = np.array(self.comm.allgather_json([str(int(x)) for x in mine], f"the weights check at step {step}"),
                         dtype=object)
        reference = every[0]
        differ = [r for r in range(self.size) if list(every[r]) != list(reference)]
        if differ:
            names = sorted(parameters)
            r = differ[0]
            tensors = [names[i] for i in range(len(names)) if every[r][i] != reference[i]]
            raise DivergenceError(
                f"the ranks' weights differ at step {step}: rank {r} (of {len(differ)} rank(s) that differ from "
                f"rank 0) has other values in {len(tensors)} tensor(s), first {tensors[0]}. They no longer train "
                "one model (a reduction that is not bit-identical on every rank, a rank that loaded other "
                "weights, or faulty memory); training stopped. Resume from the last checkpoint (rank 0's "
                "weights) with --resume")


# ============================================================================ failures

def _install_excepthook(comm: Communicator) -> None:
    """An uncaught exception on one rank ends every rank (MPI_Abort) instead of leaving the others
    waiting in their next collective (the same as ``python -m mpi4py``)."""
    previous = sys.excepthook

    def abort_all(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, value, tb)
        else:
            text = "".join(traceback.format_exception(kind, value, tb))
            sys.stderr.write(f"bertnp: rank {comm.rank} of {comm.size} failed:\n{text}")
        sys.stderr.flush()
        comm.comm.Abort(1)
    sys.excepthook = abort_all


def supervise(command: list[str]) -> int:
    """Run ``command`` (this rank's real work) as a child, wait, and say how it ended.

    The process an MPI launcher starts is this supervisor; the child inherits its environment (the
    launcher's PMI connection included) and does the work. If the child dies of a signal -- ``kill -9``,
    the kernel's out-of-memory killer -- the supervisor prints which rank it was, with its process id
    and machine, and exits with status 128 + signal; mpiexec (hydra) then stops the other ranks,
    and under srun their collectives time out and name it too. (Without this, mpiexec reports "BAD
    TERMINATION" of *some* process of the job: measured here, 1 time in 6 one it had killed itself
    while cleaning up, not the one that died.) Ctrl-C and SIGTERM reach the child directly (the
    launcher signals the rank's process group); the supervisor ignores them and waits.

    When the environment sets no BLAS thread count, the child gets one: the cores this process may
    use divided by the ranks on this machine (N ranks each with all cores fight over them)."""
    env = dict(os.environ, **{_CHILD_FLAG: "1"})
    found = environment_rank_size() or (0, 0)
    rank, size = found
    thread_vars = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    if not any(v in os.environ for v in thread_vars):
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        shared = cores == (os.cpu_count() or cores)         # not pinned to a subset by the launcher
        threads = max(1, cores // _local_ranks()) if shared else cores
        env.update({v: str(threads) for v in thread_vars})
    # the child gets its own copy of Ctrl-C / SIGTERM from the launcher; here they are ignored with a
    # handler, not SIG_IGN, which the child would inherit
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        child = subprocess.Popen(command, env=env, close_fds=False)   # close_fds=False: the PMI socket too
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status >= 0:
        return status
    signum = -status
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hint = " (the kernel's out-of-memory killer sends SIGKILL too)" if signum == signal.SIGKILL else ""
    print(f"bertnp: error: rank {rank} of {size or '?'} (pid {child.pid} on {socket.gethostname()}) was killed by "
          f"{name}{hint}; the other ranks are being stopped. The last checkpoint is whole: continue with "
          "the same command and --resume", file=sys.stderr, flush=True)
    return 128 + signum


def is_supervised_child() -> bool:
    return os.environ.get(_CHILD_FLAG) == "1"


def should_supervise() -> bool:
    """True in the process a launcher started as one of several ranks (and not yet supervised)."""
    return (launched_by_mpi() and not is_supervised_child()
            and os.environ.get("BERTNP_MPI_SUPERVISOR", "1") != "0")


# ============================================================================ launching, for notebooks and tests

def find_mpiexec() -> str:
    """The ``mpiexec`` next to this Python (the mpich wheel's), else the one on PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        found = shutil.which("mpiexec", path=folder)
        if found:
            return found
    found = shutil.which("mpiexec")
    if found is None:
        raise FileNotFoundError("mpiexec not found: pip install 'bertnp[mpi]' (the mpich wheel provides it)")
    return found


def mpiexec_command(n: int, *python_args: str, python: str | None = None) -> list[str]:
    """``mpiexec -n N python ARGS...``: e.g. ``mpiexec_command(2, "-m", "bertnp", "pretrain", ...)``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of ranks, got {n!r}")
    return [find_mpiexec(), "-n", str(n), python or sys.executable, *map(str, python_args)]


def launch(n: int, *python_args: str, threads_per_rank: int | None = None, timeout: float | None = None,
           check: bool = True, capture_output: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS...`` on ``n`` ranks with mpiexec and wait (from a notebook or a script).

    ``threads_per_rank``: BLAS threads of each rank (default: the machine's cores divided by ``n``).
    ``check``: CalledProcessError if it fails. Returns the CompletedProcess (``.stdout`` with
    ``capture_output=True``)."""
    threads = threads_per_rank or max(1, (os.cpu_count() or 1) // n)
    run_env = dict(os.environ if env is None else env)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        run_env[name] = str(threads)
    return subprocess.run(mpiexec_command(n, *python_args), env=run_env, timeout=timeout, check=check,
                          capture_output=capture_output, text=True)
