"""What holds for every exercise of every lesson (found in lessons/NN_*.py, so a new lesson is covered
without an edit here): its solution passes its checks; blanked as a course handout has it, its
check fails with the NotImplementedError that names the function to write, and no cell but a check
calls it; and with every exercise of a lesson blanked, every cell that is not a check still runs
and every check cell fails so. Each lesson's wrong answers are in tests/test_lesson_NN.py (lessons
01-04: tests/test_lessons_01_04.py); the harness is tests/lesson_exercises.py."""
from __future__ import annotations

import pytest

from lesson_exercises import LESSONS, Lesson

SOURCES = sorted(p for p in LESSONS.glob("[0-9][0-9]_*.py"))
EXERCISES = [(source.stem, name) for source in SOURCES for name in Lesson.get(source).exercises]


def test_every_lesson_has_an_exercise():
    assert SOURCES, "no lessons found"
    without = [s.name for s in SOURCES if not Lesson.get(s).exercises]
    assert not without, f"lessons without an exercise cell: {without}"


@pytest.mark.parametrize("lesson,function", EXERCISES, ids=[f"{s[:2]}-{name}" for s, name in EXERCISES])
def test_the_solution_passes_its_checks(lesson, function):
    output = Lesson.get(lesson).run(function).output
    assert output.strip(), f"{lesson}, {function}: the checks printed nothing (a check says what it verified)"


@pytest.mark.parametrize("lesson,function", EXERCISES, ids=[f"{s[:2]}-{name}" for s, name in EXERCISES])
def test_a_blank_exercise_fails_its_check(lesson, function):
    Lesson.get(lesson).assert_blank_fails(function)


@pytest.mark.parametrize("lesson", [s.stem for s in SOURCES], ids=[s.name[:2] for s in SOURCES])
def test_with_every_exercise_blank_only_the_checks_fail(lesson):
    Lesson.get(lesson).assert_blanked_fails_only_its_checks()


# ---------------------------------------------------------------------------- the harness itself
# (on lesson 02's softmax backward: its cells before the exercise run in about a second)
SOFTMAX = "my_softmax_backward"
SIGN_ERROR = [("probs * (dprobs - dot)", "probs * (dot - dprobs)")]


def test_harness_passes_a_mutant_that_the_check_rejects_with_the_message():
    failure = Lesson.get("02").assert_fails(SOFTMAX, r"sign error", replace=SIGN_ERROR)
    assert "sign error" in str(failure)


def test_harness_fails_when_the_check_passes_the_answer():
    # a "mutant" that is the solution: the harness must not call it caught
    with pytest.raises(AssertionError, match="the check passed a wrong answer"):
        Lesson.get("02").assert_fails(SOFTMAX, r"sign error", replace=[("(dprobs - dot)", "(dprobs - dot)")])


def test_harness_fails_when_the_message_does_not_say_what_is_wrong():
    with pytest.raises(AssertionError, match="its message does not match"):
        Lesson.get("02").assert_fails(SOFTMAX, r"a message no check prints", replace=SIGN_ERROR)


def test_harness_fails_when_the_check_crashes_instead_of_saying_what_is_wrong():
    with pytest.raises(AssertionError, match="not teach.CheckFailed"):
        Lesson.get("02").assert_fails(SOFTMAX, r".", body="dscores = undefined_name")


def test_harness_says_when_a_mutant_is_stale():
    # the mutant's text must occur exactly once in the solution (else the solution changed under it)
    with pytest.raises(AssertionError, match="occurs 0 times"):
        Lesson.get("02").assert_fails(SOFTMAX, r".", replace=[("text the solution lost", "x")])
    with pytest.raises(AssertionError, match="occurs 2 times"):
        Lesson.get("02").assert_fails(SOFTMAX, r".", replace=[("dprobs", "-dprobs")])


def test_harness_blank_body_and_library_blanking():
    lesson = Lesson.get("02")
    with pytest.raises(NotImplementedError, match=f"EXERCISE: write {SOFTMAX}"):
        lesson.run(SOFTMAX, body=f'raise NotImplementedError("EXERCISE: write {SOFTMAX}")')
    with pytest.raises(LookupError, match="1 solution regions, 2 bodies given"):
        lesson.run(SOFTMAX, body=["pass", "pass"])
    # a check that calls a blanked library function fails: the stub raises wherever the lesson holds it
    import bertnp.ops.softmax as softmax_ops
    with pytest.raises(NotImplementedError, match="is blanked"):
        lesson.run(SOFTMAX, body="from bertnp.ops.softmax import softmax_backward\n"
                                 "dscores = softmax_backward(dprobs, cache)",
                   blank_library=[(softmax_ops, "softmax_backward")])


TINY_LESSON = '''# %%
import numpy as np

# %% tags=["exercise"]
# EXERCISE: double
def my_double(x):
    ### BEGIN SOLUTION
    y = 2 * x
    ### END SOLUTION
    return y

# %% tags=["check"]
from bertnp import teach
teach.check_close("my_double(3)", my_double(np.array(3.0)), np.array(6.0))

# %%
later = {later}
'''


@pytest.mark.parametrize("later,error", [
    ("1.0", None),                                                       # the rest uses no student code: fine
    ("my_double(1.0)", "cell 3 \\(not a check\\) fails with the solutions blanked"),   # a later cell calls it
])
def test_harness_blanked_lesson_lets_only_check_cells_fail(tmp_path, later, error):
    path = tmp_path / "99_tiny.py"
    path.write_text(TINY_LESSON.format(later=later), encoding="utf-8")
    lesson = Lesson.get(path)
    lesson.run("my_double")
    lesson.assert_blank_fails("my_double")
    lesson.assert_fails("my_double", r"my_double\(3\)", replace=[("2 * x", "3 * x")])
    if error is None:
        lesson.assert_blanked_fails_only_its_checks()
    else:
        with pytest.raises(AssertionError, match=error):
            lesson.assert_blanked_fails_only_its_checks()
