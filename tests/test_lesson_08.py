"""Lesson 8's exercises: the checks pass the solutions and fail, pointing at the bug, for the
plausible wrong answers a student writes (see tests/lesson_harness.py)."""
import pytest

from bertnp import teach
from lesson_harness import Lesson


@pytest.fixture(scope="module")
def lesson():
    return Lesson("08_heads_and_losses.py")


CROSS_ENTROPY_MUTANTS = {
    # d2l's bug: the mean over every row, ignored ones included (a factor |S| / N = 5/7 on scored rows)
    "mean over all rows": ([("(dloss / count)", "(dloss / len(targets))")], r"constant 0\.714"),
    "no one-hot subtracted": ([("dlogits[rows, targets[rows]] -= 1.0", "pass")], r"dlogits \(7, 5\): relative error"),
    "no division by the count": ([("(dloss / count)", "dloss")], r"constant 5 x"),
    "dloss ignored": ([("(dloss / count)", "(1.0 / count)")], r"constant 1\.429"),
    # one-hot subtracted at a 'safe' target 0 in the ignored rows, and those rows kept
    "ignored rows get gradient": ([("rows = np.flatnonzero(valid)", "rows = np.arange(len(targets))"),
                                   ("dlogits[rows, targets[rows]]", "dlogits[rows, np.where(valid, targets, 0)]"),
                                   ("* valid[:, None]", "")], r"only 2 of 7 rows"),
    # no guard for an all-ignored batch: 0/0
    "divides by zero when all are ignored": ([("count = max(int(valid.sum()), 1)", "count = valid.sum()")],
                                             r"not finite"),
}

TIED_MUTANTS = {
    "decoder share only": ([("np.add.at(dE, ids.reshape(-1), dembedded.reshape(-1, C))", "pass")],
                           r"only 6 of 11 rows"),
    "lookup share only": ([("dE += dlogits.T @ head_output", "pass")], r"never looked up"),
    "lookup overwrites the decoder's rows": ([("np.add.at(dE, ids.reshape(-1), dembedded.reshape(-1, C))",
                                               "dE[ids.reshape(-1)] = dembedded.reshape(-1, C)")], r"rows"),
    "second use overwrites the first": ([("dE += dlogits.T @ head_output", "dE = dlogits.T @ head_output"),
                                         ("np.add.at(dE, ids.reshape(-1), dembedded.reshape(-1, C))",
                                          "dE = np.zeros_like(dE); np.add.at(dE, ids.reshape(-1), dembedded.reshape(-1, C))")],
                                        r"never looked up"),
    # fancy-index += applies a repeated id once: ids 4 (x3), 1 (x2), 0 (x2) lose updates
    "dE[ids] += (repeats lost)": ([("np.add.at(dE, ids.reshape(-1), dembedded.reshape(-1, C))",
                                   "dE[ids.reshape(-1)] += dembedded.reshape(-1, C)")], r"only 3 of 11 rows"),
    "transposed decoder gradient": ([("dlogits.T @ head_output", "head_output.T @ dlogits")], r"shape"),
}


def test_solutions_pass(lesson):
    lesson.run_check("my_cross_entropy_backward")
    lesson.run_check("my_tied_embedding_backward")


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("mutant", CROSS_ENTROPY_MUTANTS)
def test_cross_entropy_check_catches(lesson, mutant):
    replacements, message = CROSS_ENTROPY_MUTANTS[mutant]
    with pytest.raises(teach.CheckFailed, match=message):
        lesson.run_check("my_cross_entropy_backward", replacements)


@pytest.mark.parametrize("mutant", TIED_MUTANTS)
def test_tied_gradient_check_catches(lesson, mutant):
    replacements, message = TIED_MUTANTS[mutant]
    with pytest.raises(teach.CheckFailed, match=message):
        lesson.run_check("my_tied_embedding_backward", replacements)


@pytest.mark.parametrize("function", ["my_cross_entropy_backward", "my_tied_embedding_backward"])
def test_blanked_exercise(lesson, function):
    lesson.check_blanked(function)
