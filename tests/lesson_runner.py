"""Run a lesson's cells outside Jupyter, with an exercise's solution swapped for another body.

The mutant tests of lessons 11-14 (tests/test_lesson_1[1-4].py) use it to show that each check
cell fails for the plausible wrong answers and passes for the solution::

    cells = lesson_cells("11")
    ns = run_cells(cells, upto=exercise_index(cells, "accumulate"))     # everything before the exercise
    run_exercise(cells, ns, "accumulate", body)                         # the exercise with `body`, then its check

Code runs in one namespace per lesson (like a kernel), with IPython magics commented out,
matplotlib on the Agg backend, and bertnp.teach in fast mode.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import jupytext

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def lesson_cells(number: str):
    (source,) = sorted(LESSONS.glob(f"{number}_*.py"))
    return jupytext.read(source, fmt="py:percent").cells


def code_of(cell) -> str:
    """A code cell's source with IPython magics (%matplotlib, !pip) commented out."""
    return re.sub(r"(?m)^(\s*)([%!])", r"\1#\2", cell.source)


def exercise_index(cells, function_name: str) -> int:
    """Index of the exercise cell that defines ``function_name``."""
    for i, cell in enumerate(cells):
        if "exercise" in cell.metadata.get("tags", []) and f"def {function_name}(" in cell.source:
            return i
    raise LookupError(f"no exercise cell defines {function_name}")


def check_index(cells, exercise: int) -> int:
    """Index of the check cell that follows the exercise cell ``exercise``."""
    for j in range(exercise + 1, len(cells)):
        if "check" in cells[j].metadata.get("tags", []):
            return j
    raise LookupError(f"no check cell after cell {exercise}")


def with_body(source: str, body: str, region: int = 0) -> str:
    """``source`` with the lines between the ``region``-th pair of solution markers replaced by
    ``body`` (indented like its BEGIN marker)."""
    lines = source.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    stops = [i for i, line in enumerate(lines) if line.strip() == END]
    start, stop = starts[region], stops[region]
    indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    new = textwrap.indent(textwrap.dedent(body).strip("\n"), indent).splitlines()
    return "\n".join(lines[: start + 1] + new + lines[stop:]) + "\n"


def _prepare():
    import matplotlib
    matplotlib.use("Agg")
    from bertnp import teach
    teach.FAST = True                  # teach.pick reads it at call time


def run_cells(cells, upto: int, namespace: dict | None = None, start: int = 0) -> dict:
    """Execute the code cells ``start .. upto-1`` in ``namespace`` (a fresh one by default)."""
    _prepare()
    import matplotlib.pyplot as plt
    ns = {"__name__": "__lesson__"} if namespace is None else namespace
    for i in range(start, upto):
        if cells[i].cell_type == "code":
            exec(compile(code_of(cells[i]), f"<lesson cell {i}>", "exec"), ns)
            plt.close("all")
    return ns


def run_exercise(cells, namespace: dict, function_name: str, body=None) -> None:
    """Define the exercise and run its check. ``body`` replaces the solution: a string (the first
    solution region) or a dict {region index: body} for an exercise with several functions."""
    ex = exercise_index(cells, function_name)
    source = code_of(cells[ex])
    bodies = {} if body is None else body if isinstance(body, dict) else {0: body}
    for region, text in bodies.items():
        source = with_body(source, text, region)
    exec(compile(source, f"<exercise {function_name}>", "exec"), namespace)
    run_cells(cells, check_index(cells, ex) + 1, namespace, start=check_index(cells, ex))


def exercise_tests(number: str, function_name: str, mutants: dict, regions: int = 1, solution=None):
    """The module fixture and the three tests of a lesson exercise's mutant-test module::

        namespace, test_solution_passes, test_mutant_fails_with_a_pointed_message, \\
            test_blank_solution_fails_in_the_check = exercise_tests("14", "fit_naive_bayes", MUTANTS, regions=2)

    ``mutants``: {name: (body, regex the check's message must match)}, a body as in
    :func:`run_exercise`. ``solution``: a body to run instead of the lesson's own (default: the lesson's).
    The cells before the exercise run once per module (they may train a model)."""
    import pytest

    from bertnp import teach
    cells = lesson_cells(number)

    @pytest.fixture(scope="module")
    def namespace():
        return run_cells(cells, exercise_index(cells, function_name))

    def test_solution_passes(namespace):
        run_exercise(cells, dict(namespace), function_name, solution)

    @pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")     # e.g. a mutant's log(0)
    @pytest.mark.parametrize("mutant", list(mutants))
    def test_mutant_fails_with_a_pointed_message(namespace, mutant):
        body, message = mutants[mutant]
        with pytest.raises(teach.CheckFailed, match=message):
            run_exercise(cells, dict(namespace), function_name, body)

    def test_blank_solution_fails_in_the_check(namespace):
        blank = {r: f"raise NotImplementedError('{function_name}, region {r}')" for r in range(regions)}
        with pytest.raises(NotImplementedError):
            run_exercise(cells, dict(namespace), function_name, blank)

    return namespace, test_solution_passes, test_mutant_fails_with_a_pointed_message, \
        test_blank_solution_fails_in_the_check
