"""Lesson 8's exercises: the checks pass the solutions and fail, pointing at the bug, for the
plausible wrong answers a student writes (see tests/lesson_exercises.py; the solutions and blanks
of every lesson: tests/test_lesson_exercises.py)."""
import pytest

from lesson_exercises import Lesson


@pytest.fixture(scope="module")
def lesson():
    return Lesson.get("08")


CROSS_ENTROPY_MUTANTS = {
    # d2l's bug: the mean over every row, ignored ones included (a factor |S| / N = 5/7 on scored rows)
    "mean over all rows": ([("(dloss / count)", "(dloss / len(targets))")], r"constant 0\.714"),
    "no one-hot subtracted": ([("dlogits[rows, targets[rows]] -= 1.0", "pass")], r"dlogits \(7, 5\): relative error"),
    "no division by the count": ([("(dloss / count)", "dloss")], r"constant 5 x"),
    "dloss ignored": ([("(dloss / count)", "(1.0 / count)")], r"constant 1\.429"),
    # one-hot subtracted at a 'safe' target 0 in the ignored rows, and those rows kept
    "ignored rows get gradient": ([("rows = np.flatnonzero(valid)", "rows = np.arange(len(targets))"),
                                   ("dlogits[rows, targets[rows]]", "dlogits[rows, np.where(valid, targets, 0)]"),
                                   ("* valid[:, None]", "")], r"only rows \[1, 4\] of 7"),
    # no guard for an all-ignored batch: 0/0
    "divides by zero when all are ignored": ([("count = max(int(valid.sum()), 1)", "count = valid.sum()")],
                                             r"not finite"),
}

TIED_MUTANTS = {
    "decoder share only": ([("np.add.at(dE, ids.reshape(-1), dembedded.reshape(-1, C))", "pass")],
                           r"only rows \[0, 1, 2, 4, 7, 9\] of 11"),
    "lookup share only": ([("dE += dlogits.T @ head_output", "pass")], r"never looked up"),
    "lookup overwrites the decoder's rows": ([("np.add.at(dE, ids.reshape(-1), dembedded.reshape(-1, C))",
                                               "dE[ids.reshape(-1)] = dembedded.reshape(-1, C)")], r"rows"),
    "second use overwrites the first": ([("dE += dlogits.T @ head_output", "dE = dlogits.T @ head_output"),
                                         ("np.add.at(dE, ids.reshape(-1), dembedded.reshape(-1, C))",
                                          "dE = np.zeros_like(dE); np.add.at(dE, ids.reshape(-1), dembedded.reshape(-1, C))")],
                                        r"never looked up"),
    # fancy-index += applies a repeated id once: ids 4 (x3), 1 (x2), 0 (x2) lose updates
    "dE[ids] += (repeats lost)": ([("np.add.at(dE, ids.reshape(-1), dembedded.reshape(-1, C))",
                                   "dE[ids.reshape(-1)] += dembedded.reshape(-1, C)")], r"only rows \[0, 1, 4\] of 11"),
    "transposed decoder gradient": ([("dlogits.T @ head_output", "head_output.T @ dlogits")], r"shape"),
}


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("mutant", CROSS_ENTROPY_MUTANTS)
def test_cross_entropy_check_catches(lesson, mutant):
    replacements, message = CROSS_ENTROPY_MUTANTS[mutant]
    lesson.assert_fails("my_cross_entropy_backward", message, replace=replacements)


@pytest.mark.parametrize("mutant", TIED_MUTANTS)
def test_tied_gradient_check_catches(lesson, mutant):
    replacements, message = TIED_MUTANTS[mutant]
    lesson.assert_fails("my_tied_embedding_backward", message, replace=replacements)
