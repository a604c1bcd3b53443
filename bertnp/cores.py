"""Data parallelism over the cores of one machine: each core runs the forward and backward of its
own share of the batch's rows, on its own replica of the model.

:mod:`bertnp.parallel` spreads each operation over the cores: a matrix product on OpenBLAS's
threads, an elementwise pass in blocks. But an elementwise pass is limited by memory, not by
arithmetic -- on two cores it runs only 1.3-1.9x as fast as on one -- and every operation waits
for its slowest block. Giving each core a whole share of the batch instead (as data parallelism
gives each GPU its share, lesson 16) lets every operation run in one thread, start to finish,
with no hand-off between operations; the matrix products, each in one BLAS thread, lose nothing
either. Measured on a 2-core machine, BERT-mini, batch 16 x 128: a training step's forward and
backward 455-498 ms as two shares of 8 rows against 483-539 ms with the operations threaded
(three runs, each alternating the two; ``benchmarks/README.md``).

    replicas = CoreReplicas(model)                   # one share per thread (bertnp.parallel.num_threads)
    model.zero_grad()
    results = replicas.run(batch, forward_backward)  # forward_backward(model, share) on every share

How the shares add up to exactly the whole batch's step:

* **losses** -- ``forward_backward`` divides a share's summed losses by the WHOLE batch's counts
  (``mlm_denominator=``, ``nsp_denominator=``, as gradient accumulation does for its micro-batches,
  lesson 11), so the shares' losses and gradients add up to the whole batch's means;
* **dropout** -- a replica's dropout key carries its share's first row, so it draws the whole
  batch's mask for its rows (:mod:`bertnp.ops.dropout`): the same masks as one model on the whole batch;
* **gradients** -- every replica accumulates into its own buffers; they are then added into the
  model's, replica by replica, in blocks on every core.

So the step equals one model's step on the whole batch up to the rounding of those sums (tested).
The shares and their order depend only on the thread count: the same thread count gives the same
bits. One thread, another array module (CuPy: one GPU), or fewer than two rows: ``forward_backward``
runs once, on the model itself, with the whole batch.
"""
from __future__ import annotations

import numpy as np

from bertnp import backend, parallel

__all__ = ["CoreReplicas"]

# a model's settings that every replica follows at each run (skip_unscored_rows: the models with heads)
_SETTINGS = ("training", "dropout_seed", "forward_count", "skip_unscored_rows")


class CoreReplicas:
    """Run ``forward_backward(model, share)`` on a share of a batch's rows per CPU thread."""

    def __init__(self, model, count: int | None = None):
        """``count``: the number of shares (default: :func:`bertnp.parallel.num_threads` at each run)."""
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValueError(f"count must be a positive integer or None, got {count!r}")
        self.model = model
        self.count = count
        self._replicas: list = []      # models sharing self.model's weights, one per extra share
        self._replicas_dirty = False   # True while a replica's gradients may be non-zero (a run under way or failed)

    def shares(self, rows: int) -> list:
        """The slices of ``rows`` rows that the shares take: as equal as possible, in order."""
        count = max(1, min(self.count or parallel.num_threads(), rows))
        if backend.get_backend() != "numpy":
            count = 1
        bounds = [rows * i // count for i in range(count + 1)]
        return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]

    def run(self, batch: dict, forward_backward, *, gradients: bool = True) -> list:
        """``forward_backward(model, share)`` for every share of ``batch`` (a dict of arrays whose
        axis 0 is the batch's rows), each on its own replica and core; the replicas' gradients are
        added into the model's. Returns the calls' results, in the order of the shares' rows.
        ``gradients=False``: forward-only calls (an evaluation): no gradient is read or added."""
        rows = _rows(batch)
        parts = self.shares(rows)
        if len(parts) == 1:
            return [forward_backward(self.model, batch)]
        for key, value in batch.items():
            if getattr(value, "ndim", 0) >= 1 and value.shape[0] != rows:
                first = next(iter(batch))
                raise ValueError(f"batch[{key!r}] has {value.shape[0]} rows, batch[{first!r}] {rows}: "
                                 "every array of a batch has its rows on axis 0")
        model = self.model
        members = [model] + self._replicas_for(len(parts) - 1)
        if gradients:
            if self._replicas_dirty:   # a run that failed left gradients behind (a finished run zeroes them)
                for replica in members[1:]:
                    replica.zero_grad()
            self._replicas_dirty = True
        for member, part in zip(members, parts):
            if member is not model:          # the settings a user may change after the replicas were copied
                for name in _SETTINGS:
                    if hasattr(model, name):
                        setattr(member, name, getattr(model, name))
            member.dropout_row = part.start
        shares = [{key: value[part] if getattr(value, "ndim", 0) >= 1 else value for key, value in batch.items()}
                  for part in parts]
        results = [None] * len(parts)
        errors = np.geterr()           # NumPy's error handling is per thread: the caller's, in every share

        def one_share(index: int) -> None:
            with np.errstate(**errors):
                results[index] = forward_backward(members[index], shares[index])

        try:
            # every share in one thread: operations inside run inline (bertnp.parallel), BLAS in one thread
            with parallel._blas_threads(1):
                parallel.run(one_share, len(parts))
        finally:
            model.dropout_row = 0
        if gradients:
            self._add_gradients(members[1:])
            self._replicas_dirty = False
        return results

    def _replicas_for(self, extra: int) -> list:
        while len(self._replicas) < extra:
            self._replicas.append(self.model._core_replica())     # its gradients start at zero
        return self._replicas[:extra]

    def _add_gradients(self, replicas: list) -> None:
        """model grads += each replica's grads, in replica order, in blocks of every tensor on every
        core; each replica's block is zeroed while it is in the cache, ready for the next run."""
        blocks = []
        for name, grad in self.model._grads.items():
            flat = grad.reshape(-1)                                   # (...) -> (n,), a view
            others = [replica._grads[name].reshape(-1) for replica in replicas]
            for start in range(0, flat.size, parallel.BLOCK_ELEMENTS):
                part = slice(start, start + parallel.BLOCK_ELEMENTS)
                blocks.append((flat[part], [other[part] for other in others]))

        def add(index: int) -> None:
            total, parts = blocks[index]
            for part in parts:
                total += part
                part.fill(0)

        parallel.run(add, len(blocks))


def _rows(batch: dict) -> int:
    if not isinstance(batch, dict) or not batch:
        raise TypeError(f"batch must be a non-empty dict of arrays, got {type(batch).__name__}")
    first = next(iter(batch.values()))
    if getattr(first, "ndim", 0) < 1:
        raise ValueError("batch: its first array must have the batch's rows on axis 0")
    return first.shape[0]
