"""Run a lesson's exercise with another body, as a student would, and then its check cell.

    ns = run_exercise("05_embeddings_residuals", "my_embedding_backward", body=None)   # the solution
    run_exercise("05_embeddings_residuals", "my_embedding_backward", body=BUGGY)      # -> CheckFailed

The lesson's code cells before the exercise run once per (lesson, exercise) in fast mode, with
matplotlib drawing nowhere; each call then copies that namespace, runs the exercise cell with the
region between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` replaced by ``body`` (re-indented to
the markers' indentation), and runs the check cell that follows. The mutant tests use it to prove
that a check fails for the plausible wrong answers, and passes for the solution.
"""
from __future__ import annotations

import functools
import re
import textwrap
from pathlib import Path

import jupytext

from bertnp import teach

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
_SOLUTION = re.compile(r"(?ms)^([ \t]*)### BEGIN SOLUTION[^\n]*\n.*?^[ \t]*### END SOLUTION[^\n]*$")


def _code(source: str) -> str:
    """A cell's source with IPython magics commented out."""
    return re.sub(r"(?m)^(\s*)([%!])", r"\1#\2", source)


def _cells(stem: str):
    return jupytext.read(LESSONS / f"{stem}.py", fmt="py:percent").cells


def _locate(stem: str, function: str):
    """(code cells before the exercise, exercise source, check source) for the exercise defining function."""
    cells = _cells(stem)
    for i, cell in enumerate(cells):
        tags = cell.metadata.get("tags", [])
        if "exercise" in tags and re.search(rf"(?m)^def {re.escape(function)}\(", cell.source):
            check = next(c for c in cells[i + 1:] if "check" in c.metadata.get("tags", []))
            before = [c.source for c in cells[:i] if c.cell_type == "code"]
            return before, cell.source, check.source
    raise LookupError(f"{stem}: no exercise cell defines {function}()")


@functools.lru_cache(maxsize=None)
def _prefix_namespace(stem: str, function: str) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    before, _, _ = _locate(stem, function)
    namespace: dict = {"__name__": f"lesson_{stem}"}
    fast, teach.FAST = teach.FAST, True
    try:
        for source in before:
            exec(compile(_code(source), f"{stem}.py", "exec"), namespace)
            plt.close("all")
    finally:
        teach.FAST = fast
    return namespace


def replace_solution(exercise_source: str, body) -> str:
    """The exercise cell with its solution regions replaced: ``body`` is one string for a cell with
    one region, or a sequence with one entry per region in order (None keeps that region's solution)."""
    bodies = [body] if isinstance(body, str) else list(body)
    matches = list(_SOLUTION.finditer(exercise_source))
    if len(matches) != len(bodies):
        raise LookupError(f"the exercise has {len(matches)} solution regions, {len(bodies)} bodies given")
    pieces, end = [], 0
    for match, new in zip(matches, bodies):
        pieces.append(exercise_source[end:match.start()])
        if new is None:
            pieces.append(exercise_source[match.start():match.end() + 1])
        else:
            pieces.append(textwrap.indent(textwrap.dedent(new).strip("\n"), match.group(1)) + "\n")
        end = match.end() + 1
    return "".join(pieces) + exercise_source[end:]


def run_exercise(stem: str, function: str, body=None) -> dict:
    """Run the exercise (with ``body`` instead of the solution, if given: see replace_solution)
    and its check cell. Returns the namespace; the check's CheckFailed / AssertionError propagates."""
    import matplotlib.pyplot as plt
    _, exercise, check = _locate(stem, function)
    if body is not None:
        exercise = replace_solution(exercise, body)
    namespace = dict(_prefix_namespace(stem, function))
    fast, teach.FAST = teach.FAST, True
    try:
        exec(compile(_code(exercise), f"{stem}.py:exercise", "exec"), namespace)
        exec(compile(_code(check), f"{stem}.py:check", "exec"), namespace)
    finally:
        teach.FAST = fast
        plt.close("all")
    return namespace


def run_blanked(stem: str) -> dict:
    """Run the whole lesson (fast mode) as a course handout would give it: every solution region
    replaced by ``raise NotImplementedError``. Check cells may fail; any other cell that fails
    raises. Returns {check cell index: the exception it raised, or None if it passed}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    namespace: dict = {"__name__": f"lesson_{stem}"}
    outcomes = {}
    fast, teach.FAST = teach.FAST, True
    try:
        for i, cell in enumerate(_cells(stem)):
            if cell.cell_type != "code":
                continue
            tags = cell.metadata.get("tags", [])
            source = cell.source
            if "exercise" in tags:
                regions = len(_SOLUTION.findall(source))
                source = replace_solution(source, ["raise NotImplementedError('blanked')"] * regions)
            try:
                exec(compile(_code(source), f"{stem}.py:cell {i}", "exec"), namespace)
                if "check" in tags:
                    outcomes[i] = None
            except Exception as exc:       # noqa: BLE001 - a check cell may fail; nothing else may
                if "check" not in tags:
                    raise AssertionError(f"{stem} cell {i} (not a check) fails with the solutions blanked: "
                                         f"{type(exc).__name__}: {exc}") from exc
                outcomes[i] = exc
            finally:
                plt.close("all")
    finally:
        teach.FAST = fast
    return outcomes


def assert_blanked_lesson_fails_only_its_checks(stem: str) -> None:
    """With the solutions blanked (a course handout), every check cell fails with the stub's
    NotImplementedError, and every other cell runs."""
    outcomes = run_blanked(stem)
    assert outcomes, f"{stem}: no check cells ran"
    for cell, exc in outcomes.items():
        assert isinstance(exc, NotImplementedError), f"{stem} check cell {cell} with a blanked exercise: {exc!r}"


def assert_check_fails(stem: str, function: str, body, message: str) -> None:
    """The exercise's check cell rejects ``body`` with a CheckFailed whose message matches ``message``."""
    import pytest
    with pytest.raises(teach.CheckFailed, match=message):
        run_exercise(stem, function, body)
