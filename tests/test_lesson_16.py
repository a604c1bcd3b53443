"""Lesson 16's exercises (a rank's share of the loss; the ring all-reduce): the checks pass the
solutions and fail, pointing at the bug, for the plausible wrong answers (see tests/lesson_harness.py).
The lesson itself (two MPI ranks equal to one process) runs under nbmake in `make test`."""
import pytest

from bertnp import teach
from lesson_harness import Lesson

SHARE = "my_loss_share"
SHARE_MUTANTS = {
    # each rank's own means, averaged over the ranks: Hugging Face's accumulation bug across processes
    "own means averaged over the ranks": dict(body="share = (np.mean(mlm_token_losses) + np.mean(nsp_sequence_losses)) / n_ranks"),
    "own means, summed": dict(body="share = np.mean(mlm_token_losses) + np.mean(nsp_sequence_losses)"),
    "the rank's own token count (the global count forgotten)": dict(replacements=[("max(total_tokens, 1)", "max(len(mlm_token_losses), 1)")]),
    "one denominator for both losses": dict(replacements=[("/ total_sequences", "/ max(total_tokens, 1)")]),
    "the rank's own mean, weighted by its sequences": dict(
        body="share = (np.mean(mlm_token_losses) if len(mlm_token_losses) else 0.0) * len(nsp_sequence_losses) / total_sequences\n"
             "share += float(np.sum(nsp_sequence_losses)) / total_sequences"),
}

RING = "my_ring_allreduce"
NAIVE_RING = """
total = [b.copy() for b in buffers]
passing = [b.copy() for b in buffers]
for s in range(n - 1):                    # pass whole buffers round the ring, adding as they go by
    passing = ring.exchange(passing)
    for r in range(n):
        total[r] += passing[r]
for r in range(n):
    buffers[r][...] = total[r]
"""
RING_MUTANTS = {
    "averaged instead of summed": (dict(replacements=[("            chunks[r][(r - s) % n][...] = received[r]",
                                                       "            chunks[r][(r - s) % n][...] = received[r] / n")]),
                                   r"rank \d holds .*the sum is"),
    "reduce-scatter adds into the chunk it sent (index off by one)": (
        dict(replacements=[("chunks[r][(r - 1 - s) % n] += received[r]", "chunks[r][(r - s) % n] += received[r]")]),
        r"rank \d holds .*the sum is"),
    "reduce-scatter copies instead of adding": (
        dict(replacements=[("chunks[r][(r - 1 - s) % n] += received[r]", "chunks[r][(r - 1 - s) % n][...] = received[r]")]),
        r"rank \d holds .*the sum is"),
    "all-gather adds instead of copying": (
        dict(replacements=[("chunks[r][(r - s) % n][...] = received[r]", "chunks[r][(r - s) % n][...] += received[r]")]),
        r"rank \d holds .*the sum is"),
    "all-gather starts from the wrong chunk": (
        dict(replacements=[("[chunks[r][(r + 1 - s) % n] for r in range(n)]", "[chunks[r][(r - s) % n] for r in range(n)]")]),
        r"rank \d holds .*the sum is"),
    "whole buffers sent round the ring": (dict(body=NAIVE_RING), r"ring steps: got \d+, expected \d+"),
}


@pytest.fixture(scope="module")
def lesson():
    return Lesson("16_data_parallelism.py")


def test_solutions_pass(lesson):
    lesson.run_check(SHARE)
    lesson.run_check(RING)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")        # the mean of a rank with no labelled token
@pytest.mark.parametrize("mutant", SHARE_MUTANTS)
def test_loss_share_check_catches(lesson, mutant):
    with pytest.raises(teach.CheckFailed, match=r"your shares \[.*\] add up to the big batch's loss: got"):
        lesson.run_check(SHARE, **SHARE_MUTANTS[mutant])


@pytest.mark.parametrize("mutant", RING_MUTANTS)
def test_ring_check_catches(lesson, mutant):
    edit, message = RING_MUTANTS[mutant]
    with pytest.raises(teach.CheckFailed, match=f"(?s){message}"):
        lesson.run_check(RING, **edit)


@pytest.mark.parametrize("function", [SHARE, RING])
def test_blanked_exercise(lesson, function):
    lesson.check_blanked(function)
