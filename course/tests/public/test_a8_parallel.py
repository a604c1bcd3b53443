"""Assignment 8 (public): the ring all-reduce, simulated in NumPy -- what MPI's all-reduce does
with a large buffer over N machines (lesson 16)."""
from referee import check_ring


def test_ring_allreduce():
    """Task 8.1: every buffer ends as the element-wise sum of all N, through 2 (N - 1) exchanges of
    one chunk each; lengths that N does not divide."""
    for n, length in [(2, 6), (3, 10), (4, 4), (5, 13), (1, 3)]:
        check_ring(n, length)
