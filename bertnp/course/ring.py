"""The ring all-reduce of course assignment 8, simulated in NumPy (lesson 16).

bertnp's data parallelism (:mod:`bertnp.distributed`) calls MPI's all-reduce, which on large buffers
runs this algorithm over the network. Here the network is :class:`Ring`: N ranks in a ring, each
sending one array to its right-hand neighbour per step::

    buffers = [np.arange(6.0) * (r + 1) for r in range(3)]     # rank r holds buffers[r]
    ring = Ring(3)
    ring_allreduce(buffers, ring)           # every buffer: the element-wise sum of the three
    ring.steps, ring.bytes_sent             # 2 (N - 1) = 4 steps; each rank sent 2 (N-1)/N of a buffer

Each rank sends 2 (N-1)/N of its buffer in all, less than twice the buffer however many ranks
there are: why the ring's time hardly grows with N.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Ring", "ring_allreduce"]


class Ring:
    """N ranks in a ring: at each step every rank r sends one array to rank (r + 1) % N.
    Counts the steps and the bytes each rank sends."""

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"a ring needs a positive number of ranks, got {n!r}")
        self.n, self.steps, self.bytes_sent = int(n), 0, np.zeros(int(n), dtype=np.int64)

    def exchange(self, outgoing) -> list:
        """One step: ``outgoing[r]`` is what rank r sends to rank r + 1. Returns ``received``,
        ``received[r]`` from rank r - 1 (a copy: it came over the wire)."""
        if len(outgoing) != self.n:
            raise ValueError(f"exchange needs one array per rank ({self.n}), got {len(outgoing)}")
        self.steps += 1
        for r, array in enumerate(outgoing):
            self.bytes_sent[r] += np.asarray(array).nbytes
        return [np.array(outgoing[(r - 1) % self.n], copy=True) for r in range(self.n)]


def ring_allreduce(buffers: list, ring: Ring) -> list:
    """In place, every buffer becomes the element-wise sum of all of them; data moves between ranks
    only through ``ring.exchange``, in 2 (N - 1) steps of one chunk each (a reduce-scatter, then an
    all-gather). ``buffers``: N 1-D float arrays of one length (any length: chunks may be unequal,
    or empty). Returns ``buffers``."""
    n = len(buffers)
    if n != ring.n:
        raise ValueError(f"{n} buffers for a ring of {ring.n} ranks")
    if any(np.ndim(b) != 1 or len(b) != len(buffers[0]) for b in buffers):
        raise ValueError(f"buffers must be 1-D and of one length, got shapes {[np.shape(b) for b in buffers]}")
    # TASK 8.1 ring_allreduce: reduce-scatter, then all-gather, one chunk a step (lesson 16)
    chunks = [np.array_split(b, n) for b in buffers]           # chunks[r][c]: a view of rank r's chunk c
    # reduce-scatter: at step s rank r sends its partial sum of chunk (r - s) % n; the receiver, rank
    # r + 1, adds it into its own copy of that chunk. After n - 1 steps rank r holds chunk (r + 1) % n
    # summed over all ranks.
    for s in range(n - 1):
        received = ring.exchange([chunks[r][(r - s) % n] for r in range(n)])
        for r in range(n):
            chunks[r][(r - 1 - s) % n] += received[r]
    # all-gather: at step s rank r passes on its complete chunk (r + 1 - s) % n; the receiver copies it
    for s in range(n - 1):
        received = ring.exchange([chunks[r][(r + 1 - s) % n] for r in range(n)])
        for r in range(n):
            chunks[r][(r - s) % n][...] = received[r]
    # END TASK 8.1
    return buffers
