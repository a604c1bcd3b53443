"""Run NumPy work on every core: a small persistent thread pool and the three ways bertnp uses it.

NumPy releases the GIL inside its loops and inside BLAS, so Python threads that each run NumPy on
their own block of an array do run at the same time. The operations in :mod:`bertnp.ops` keep
their mathematics in plain functions of whole arrays; this module cuts the arrays into blocks and
runs those functions on the blocks, on every core::

    out, cdf = parallel.elementwise(gelu_math, (x,), "none")     # any elementwise body, on blocks of x
    out, xhat, rstd = parallel.map_rows(layernorm_math, (x,), gamma, beta, eps)   # rows independent
    dx, dgamma, dbeta = parallel.map_rows(layernorm_backward_math, (dout, xhat, rstd), gamma, sums=2)
    y = parallel.matmul(a, b)                                     # a @ b on every core (OpenBLAS's threads)
    parallel.run(fn, count)                                       # fn(0), ..., fn(count - 1)
    parallel.run_blocks(n, block, fn)                             # fn(slice(0, block)), fn(slice(block, 2 block)), ...

A body written for whole arrays gives the same numbers on a block of rows (each row, or each
element, is computed from its own inputs only), so a simple version of an operation plugs in as it
is. A block is ~262k elements (1 MB of float32): small enough that the ~10-25 passes of an operation
find it in the (L3) cache, large enough that the ~10 small (rows, 1) statistics a row-wise body
computes per block, and the pool's hand-off, cost little. Measured in a BERT-mini step, each block
size in alternate steps of one process: GELU 40.2 -> 25.3 ms, LayerNorm 32.9 -> 21.7 ms, softmax
14.1 -> 9.7 ms going from 65k-element blocks (256 KB an array: a few fill a core's 1 MB L2 cache)
to 262k; 131k and 524k were within a millisecond or two of 262k.

**Determinism.** The blocks depend on the arrays' sizes only, never on the number of threads, and
per-block partial sums are added in block order: for everything the pool computes, one thread and
eight give the same bits. The one exception is a 2-D matrix product, which OpenBLAS threads itself
(below): OpenBLAS may block a long sum differently for another thread count (measured: the 30k-way
decoder's ``dx``, a sum of 30,522 terms, differs in the last bit or two between 1 and 2 threads;
the encoder's products came out equal). Same thread count, same bits, always.

**The thread count** is ``OPENBLAS_NUM_THREADS``, else ``OMP_NUM_THREADS``, else the CPUs this
process may run on (read when first needed; :func:`set_num_threads` changes it, for the pool and
for the matrix products). With 1 thread everything runs in the calling thread (``make test`` runs
two workers with one BLAS thread each, so the suite's workers are not slowed by extra threads).

**Matrix products run on OpenBLAS's threads, which are told to sleep.** OpenBLAS threads a GEMM
better than slices of it can be (its threads share the packed panels of the operands; a slice
packs the whole weight again): in a BERT-mini step the linear layers ran at 160-174 GFLOP/s on
OpenBLAS's two threads against 110-139 as eight single-threaded slices on the pool. But after each
call OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) waiting for the next one, and an
elementwise pass run on the second core meanwhile shares it with the spinner (measured: a
(2048, 1024) float32 GELU took 3.6 ms on two threads, 6.6 ms right after a GEMM). OpenBLAS reads
how long to spin, ``OPENBLAS_THREAD_TIMEOUT`` (2^n cycles), when it starts its threads; so when
this module is imported and the variable is not set, it sets it to 14 (2^14 cycles, ~6 us) and
restarts OpenBLAS's idle threads to read it (:func:`_short_blas_spin`). A user's own setting is
left alone. Stacks of small matrices (the attention's per-head products, ~2 MFLOP each) are still
cut by the pool, whole matrices per slice with BLAS in one thread: as fast as OpenBLAS's threads
there (measured, a whole step either way), and the same bits for any thread count.

**A busy machine.** The pool cuts its work into more blocks than threads, and every thread (the
caller included) takes the next block as soon as it is free: a thread that the OS keeps waiting
simply does fewer blocks. OpenBLAS splits a product statically, so a product waits for its slower
half. Measured with a one-core busy loop beside a BERT-mini step on two cores, three runs each of
10 steps: 0.99-1.27 s a step (the middle run 1.01 s), against 0.96-1.14 s (1.03 s) with
commit 4f54db9, which sliced every product on the pool; 0.54-0.58 s against 0.66-0.68 s quiet.
(Medians of 10-step runs.) Where the cores stay busy, use fewer threads (``OPENBLAS_NUM_THREADS``,
:func:`set_num_threads`; ``bertnp demo`` chooses them from the load average). Nested calls, and
calls from a pool thread, run inline; after ``fork`` the child starts with a fresh pool.

Only the NumPy backend is blocked and threaded; on CuPy (or any other array module) each body runs
once on the whole arrays.

**The training loop goes one step further** (:mod:`bertnp.cores`): it gives each core a share of a
batch's rows and runs the whole forward and backward of that share in one thread, on a replica of
the model; every call of this module made inside runs inline, BLAS in one thread.
"""
from __future__ import annotations

import contextlib
import math
import os
import queue
import threading

import numpy as np

from bertnp import backend

__all__ = ["num_threads", "set_num_threads", "threads", "run", "run_blocks", "map_rows", "elementwise", "matmul",
           "BLOCK_ELEMENTS"]

_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
BLOCK_ELEMENTS = 262144           # elements per block of map_rows / elementwise (1 MB of float32; docstring)
MATMUL_MIN_FLOPS = 8_000_000      # below this, a stack of products is not split (the dispatch would cost more)
MATMUL_PIECES = 8                 # slices per stack: more than threads, so that a busy core costs less

_num_threads = None               # None: not read from the environment yet
_pool = None                      # the _Pool for the current thread count (created when first needed)
_pool_lock = threading.Lock()
_local = threading.local()        # .inside: True in pool threads and inside a running job's caller


# ----------------------------------------------------------------------------- the thread count

def _threads_from_environment() -> int:
    for variable in _THREAD_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value:
            try:
                count = int(value.split(",")[0])      # OMP_NUM_THREADS may be a list: "4,2"
            except ValueError:
                continue
            if count >= 1:
                return count
    try:
        return len(os.sched_getaffinity(0))           # the CPUs this process may run on
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def num_threads() -> int:
    """How many threads bertnp's CPU operations use (the caller included)."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _threads_from_environment()
    return _num_threads


def set_num_threads(count: int | None) -> None:
    """Use ``count`` threads from now on; ``None`` reads the environment again."""
    global _num_threads
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be a positive integer or None, got {count!r}")
    _num_threads = count


@contextlib.contextmanager
def threads(count: int | None):
    """``with parallel.threads(1): ...`` runs the block with ``count`` threads, then restores."""
    global _num_threads
    saved = _num_threads
    set_num_threads(count)
    try:
        yield
    finally:
        _num_threads = saved


# ----------------------------------------------------------------------------- the pool

class _Job:
    """``fn(0) .. fn(count - 1)``, each index taken once by whichever thread asks next."""

    def __init__(self, fn, count: int):
        self.fn, self.count = fn, count
        self.next_index = 0
        self.done = 0
        self.error = None
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def work(self) -> None:
        while True:
            with self.lock:
                index = self.next_index
                self.next_index += 1
            if index >= self.count:
                return
            try:
                if self.error is None:
                    self.fn(index)
            except BaseException as exc:  # handed to the caller, which re-raises it
                self.error = self.error or exc
            with self.lock:
                self.done += 1
                if self.done == self.count:
                    self.finished.set()


class _Pool:
    """``workers`` daemon threads that take jobs from one queue (the caller is the extra thread)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.jobs = queue.SimpleQueue()
        for i in range(workers):
            threading.Thread(target=self._serve, name=f"bertnp-parallel-{i}", daemon=True).start()

    def _serve(self) -> None:
        _local.inside = True
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job.work()

    def close(self) -> None:
        for _ in range(self.workers):
            self.jobs.put(None)


def _get_pool(count: int) -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.workers != count - 1:
            if _pool is not None:
                _pool.close()
            _pool = _Pool(count - 1)
        return _pool


def _forget_pool_after_fork() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()   # the parent's threads do not exist in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def run(fn, count: int) -> None:
    """Call ``fn(i)`` for i in 0 .. count-1, spread over the threads; return when all are done.

    The calls must be independent (any order, any thread). The first exception is re-raised."""
    threads_now = num_threads()
    if count <= 1 or threads_now <= 1 or getattr(_local, "inside", False):
        for index in range(count):
            fn(index)
        return
    pool = _get_pool(threads_now)
    job = _Job(fn, count)
    for _ in range(min(pool.workers, count - 1)):
        pool.jobs.put(job)
    _local.inside = True                  # a parallel call made by fn in this thread runs inline
    try:
        job.work()                        # the caller takes blocks too
    finally:
        _local.inside = False
    job.finished.wait()                   # blocks still being finished by pool threads
    if job.error is not None:
        raise job.error


def run_blocks(extent: int, block: int, fn) -> None:
    """``fn(part)`` for the slices ``part`` = [0, block), [block, 2 block), ... covering range(extent)
    (the last one shorter), spread over the threads as :func:`run` does: for work that writes its
    block of a preallocated output itself."""
    run(lambda i: fn(slice(i * block, min(extent, (i + 1) * block))), -(-extent // block))


# ----------------------------------------------------------------------------- blocks of rows

def _threaded_backend(arrays) -> bool:
    """True when the arrays are NumPy arrays on the NumPy backend (only those are blocked)."""
    return backend.get_backend() == "numpy" and all(
        a is None or type(a) is np.ndarray for a in arrays)


def map_rows(body, arrays: tuple, *args, sums: int = 0, block: int | None = None):
    """``body(*arrays, *args)`` computed on blocks of rows of ``arrays`` and put back together.

    ``arrays`` are split along axis 0 into the same blocks of rows, about ``block`` elements each
    (an array whose axis 0 does not have the rows' length -- None, or a length-1 axis 0 that
    broadcasts over the rows, like a (1, 1, 1, T) mask against (B, nh, T, T) scores -- goes to every
    block whole; ``block`` defaults to ``BLOCK_ELEMENTS``). ``body`` returns an array or a tuple of arrays: the last ``sums`` of them
    are partial sums over the block's rows (e.g. a bias gradient), added up in block order; the
    others have one row per input row and are written into arrays for all the rows (None stays
    None). Returns what ``body`` returns for the whole arrays.
    """
    block = block or BLOCK_ELEMENTS
    first = arrays[0]
    rows = first.shape[0] if first.ndim else 0
    row_size = max(1, first.size // rows) if rows else 1
    rows_per_block = max(1, block // row_size)
    blocks = -(-rows // rows_per_block) if rows else 0
    if blocks <= 1 or not _threaded_backend(arrays):
        return body(*arrays, *args)

    def split(start: int, stop: int) -> tuple:
        return tuple(a[start:stop] if a is not None and a.ndim and a.shape[0] == rows else a for a in arrays)

    # the body on zero rows tells the outputs' dtypes and shapes at no cost (a body that cannot take
    # zero rows is run on the first block instead, in this thread, before the others start)
    try:
        with np.errstate(all="ignore"):
            probe = body(*split(0, 0), *args)
        first_done = False
    except Exception:
        probe = body(*split(0, min(rows, rows_per_block)), *args)
        first_done = True
    single = not isinstance(probe, tuple)
    probe = (probe,) if single else probe
    if not 0 <= sums <= len(probe):
        raise ValueError(f"sums={sums}, but the body returned {len(probe)} outputs")
    n_rows_out = len(probe) - sums
    name = getattr(body, "__name__", "body")
    outputs = [None if r is None else np.empty((rows,) + tuple(r.shape[1:]), dtype=r.dtype)
               for r in probe[:n_rows_out]]
    partials = [None] * blocks

    def keep(index: int, start: int, stop: int, result) -> None:
        result = (result,) if single else result
        for j, (out, r) in enumerate(zip(outputs, result[:n_rows_out])):
            if out is None:
                continue
            if r is None or r.shape != (stop - start,) + out.shape[1:]:
                raise ValueError(f"map_rows: output {j} of {name} has shape {getattr(r, 'shape', None)} "
                                 f"for a block of {stop - start} rows; pass sums= for partial sums")
            out[start:stop] = r
        partials[index] = result[n_rows_out:]

    def one_block(index: int) -> None:
        start, stop = index * rows_per_block, min(rows, (index + 1) * rows_per_block)
        keep(index, start, stop, body(*split(start, stop), *args))

    if first_done:
        keep(0, 0, min(rows, rows_per_block), probe[0] if single else probe)
        run(lambda i: one_block(i + 1), blocks - 1)
    else:
        run(one_block, blocks)
    totals = []
    for j in range(sums):
        total = partials[0][j].copy()
        for part in partials[1:]:
            total += part[j]                  # in block order: the same bits for any thread count
        totals.append(total)
    full = tuple(outputs) + tuple(totals)
    return full[0] if single else full


def elementwise(body, arrays: tuple, *args, block: int | None = None):
    """``body(*arrays, *args)`` for an elementwise body: arrays of one shape (or None), computed on
    blocks of their flattened elements. Outputs come back in the arrays' shape."""
    block = block or BLOCK_ELEMENTS
    shape = arrays[0].shape
    contiguous = all(a is None or (a.shape == shape and a.flags.c_contiguous) for a in arrays)
    if not contiguous or not _threaded_backend(arrays) or arrays[0].size <= block:
        return body(*arrays, *args)
    flat = tuple(None if a is None else a.reshape(-1) for a in arrays)       # (...) -> (n,), views
    result = map_rows(body, flat, *args, block=block)
    if isinstance(result, tuple):
        return tuple(None if r is None else r.reshape(shape) for r in result)   # (n,) -> (...)
    return result.reshape(shape)


# ----------------------------------------------------------------------------- matrix products

_blas_lock = threading.Lock()
_blas_depth = 0
_blas_saved: list = []
_blas_libraries = None            # threadpoolctl controllers of the loaded BLAS libraries ([] if none)


def _blas_controllers() -> list:
    global _blas_libraries
    if _blas_libraries is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas_libraries = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:             # threadpoolctl missing or failing: leave BLAS as it is
            _blas_libraries = []
    return _blas_libraries


@contextlib.contextmanager
def _blas_threads(count: int):
    """BLAS runs on ``count`` threads inside; its own setting is restored on the way out."""
    global _blas_depth
    with _blas_lock:
        if _blas_depth == 0:
            _blas_saved[:] = [(lib, lib.get_num_threads(), count) for lib in _blas_controllers()]
            for lib, before, wanted in _blas_saved:
                if before != wanted:
                    lib.set_num_threads(wanted)
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for lib, before, wanted in _blas_saved:
                    if before != wanted:
                        lib.set_num_threads(before)


BLAS_SPIN_EXPONENT = 14           # OpenBLAS's idle threads sleep after 2^14 cycles (~6 us), not 2^28


def _short_blas_spin() -> bool:
    """Make OpenBLAS's idle threads sleep after 2^BLAS_SPIN_EXPONENT cycles instead of spinning
    for ~0.1 s after every call (module docstring). OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` when
    it starts its threads: set the variable, have OpenBLAS read its variables again
    (``openblas_read_env``) and stop its idle threads (``blas_thread_shutdown_``, what OpenBLAS
    itself calls after a fork); its next threaded call starts them anew with the new timeout.
    Returns True if done; False when the user set the variable (OpenBLAS already follows it) or no
    OpenBLAS with those two functions is loaded (nothing changes)."""
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return False
    import ctypes
    done = False
    for lib in _blas_controllers():
        if getattr(lib, "internal_api", None) != "openblas":
            continue
        try:
            library = ctypes.CDLL(lib.filepath)
            read_env, shutdown = library.openblas_read_env, library.blas_thread_shutdown_
        except (OSError, AttributeError, TypeError):
            continue
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(BLAS_SPIN_EXPONENT)
        read_env()
        shutdown()
        done = True
    return done


def _slices(extent: int, pieces: int) -> list:
    """``pieces`` (or fewer) equal slices covering range(extent)."""
    step = -(-extent // pieces)
    return [slice(start, min(extent, start + step)) for start in range(0, extent, step)]


def matmul(a, b, bias=None, out=None):
    """``a @ b`` (NumPy's rules), plus ``bias`` (a vector over the output's last axis) if given,
    on every core; written into ``out`` when given (an array or a view of the output's shape, e.g.
    the heads of an attention output laid side by side: no copy afterwards).

    2-D: one BLAS call on :func:`num_threads` of OpenBLAS's threads (the module docstring says why
    not slices), then the bias added to blocks of rows on the pool. Stacks of matrices (the
    attention's heads): the leading axis split into slices of whole matrices, computed by the pool
    with BLAS in one thread, each slice adding its bias while in the cache; the slices depend on
    the shapes only, so a stack's product is the same, to the bit, for any thread count. Small
    stacks and other array modules: ``xp.matmul``."""
    def plain():
        result = backend.xp().matmul(a, b, out=out)
        if bias is not None:
            result += bias
        return result

    if (getattr(_local, "inside", False) or not _threaded_backend((a, b, bias, out))
            or a.ndim < 2 or b.ndim < 2 or a.dtype != b.dtype or a.dtype.kind != "f"
            or (bias is not None and (bias.ndim != 1 or bias.dtype != a.dtype))):
        return plain()
    m, k = a.shape[-2:]
    n = b.shape[-1]
    batch = a.shape[:-2]
    if b.shape[-2] != k or b.shape[:-2] != batch:          # broadcasting or a bad shape: NumPy's way
        return plain()
    if out is not None and (out.shape != batch + (m, n) or out.dtype != a.dtype):
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}, expected "
                         f"{batch + (m, n)} and {a.dtype}")
    if not batch:
        with _blas_threads(num_threads()):
            out = np.matmul(a, b, out=out)                  # (m, k) @ (k, n) -> (m, n)
        if bias is not None and out.size:                   # out += bias, blocks of rows on every core
            run_blocks(m, max(1, BLOCK_ELEMENTS // n), lambda rows: np.add(out[rows], bias, out=out[rows]))
        return out
    if 2 * math.prod(batch) * m * n * k < MATMUL_MIN_FLOPS:
        return plain()
    if out is None:
        out = np.empty(batch + (m, n), dtype=a.dtype)
    parts = _slices(batch[0], min(MATMUL_PIECES, batch[0]))
    tasks = [(a[s], b[s], out[s]) for s in parts]          # whole matrices of the stack

    def one_slice(index: int) -> None:
        a_part, b_part, out_part = tasks[index]
        np.matmul(a_part, b_part, out=out_part)
        if bias is not None:
            out_part += bias

    with _blas_threads(1):
        run(one_slice, len(tasks))
    return out


_short_blas_spin()
