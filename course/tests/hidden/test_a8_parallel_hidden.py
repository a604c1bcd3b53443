"""Assignment 8 (hidden): more ranks than numbers (empty chunks), large rings, float data."""
import numpy as np

from referee import check, check_ring, close


def test_ring_allreduce_hidden():
    for n, length, seed in [(7, 3, 1), (6, 6, 2), (8, 101, 3), (3, 1, 4), (2, 1, 5)]:
        check_ring(n, length, seed)
    from bertnp.course.ring import Ring, ring_allreduce
    r = np.random.default_rng(9)
    originals = [r.standard_normal(57) for _ in range(6)]
    buffers = [b.copy() for b in originals]
    ring_allreduce(buffers, Ring(6))
    for rank, b in enumerate(buffers):
        close(f"rank {rank} of 6, 57 float64 numbers", b, np.sum(originals, axis=0), rtol=1e-12, atol=1e-12)
    check(all(b is not buffers[0] for b in buffers[1:]), "every rank keeps its own buffer (in place)", True, True)
