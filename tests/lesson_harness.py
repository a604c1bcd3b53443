"""Run a lesson's exercise with a student's body in place of its solution, then its check cell.

The lesson tests (tests/test_lesson_NN.py) use this to show that each exercise's check passes the
reference solution and FAILS, with a message that points at the bug, for plausible wrong answers
(mutants), and that a blanked solution (``raise NotImplementedError``) makes only its check fail::

    lesson = Lesson("08_heads_and_losses.py")
    lesson.run_check("my_cross_entropy_backward")                                    # the solution: passes
    lesson.run_check("my_cross_entropy_backward", [("/ count", "/ len(targets)")])   # a mutant: raises

The code cells before the exercise run once per lesson (in one namespace, IPython magics skipped);
each run then executes the edited exercise cell and its check cell in a copy of that namespace.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import jupytext

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def _code(source: str) -> str:
    """A cell's source with IPython magics (% and ! lines) commented out."""
    return re.sub(r"(?m)^(\s*)([%!])", r"\1#\2", source)


class Lesson:
    def __init__(self, filename: str):
        import matplotlib
        matplotlib.use("Agg")                     # figures are drawn, never shown
        self.path = LESSONS / filename
        self.cells = jupytext.read(self.path, fmt="py:percent").cells
        self._namespaces: dict[int, dict] = {}

    def _tags(self, i: int) -> set:
        return set(self.cells[i].metadata.get("tags", []))

    def exercise_index(self, function: str) -> int:
        found = [i for i, c in enumerate(self.cells)
                 if "exercise" in self._tags(i) and re.search(rf"\bdef {function}\(", c.source)]
        assert len(found) == 1, f"{self.path.name}: expected one exercise cell defining {function}, found {found}"
        return found[0]

    def check_index(self, exercise: int) -> int:
        following = [j for j in range(exercise + 1, len(self.cells)) if "check" in self._tags(j)]
        assert following, f"{self.path.name}: the exercise in cell {exercise} has no check cell"
        return following[0]

    def _prefix(self, exercise: int) -> dict:
        """The namespace after every code cell before the exercise (computed once per exercise)."""
        if exercise not in self._namespaces:
            namespace = {"__name__": f"lesson_{self.path.stem}"}
            for cell in self.cells[:exercise]:
                if cell.cell_type == "code":
                    exec(compile(_code(cell.source), f"{self.path.name}", "exec"), namespace)
            self._namespaces[exercise] = namespace
        return self._namespaces[exercise]

    def solution(self, function: str) -> tuple[str, str, str]:
        """(text before the solution region, the region, text after) of the function's exercise cell."""
        source = self.cells[self.exercise_index(function)].source
        start, stop = source.index(BEGIN), source.index(END)
        start = source.index("\n", start) + 1
        stop = source.rindex("\n", 0, stop) + 1
        return source[:start], source[start:stop], source[stop:]

    def edited(self, function: str, replacements=(), body: str | None = None) -> str:
        """The exercise cell with its solution region edited: ``body`` replaces the region (indented
        like it), or each (old, new) replacement is applied in turn (each ``old`` must occur exactly once)."""
        before, region, after = self.solution(function)
        indent = re.match(r"\s*", region).group(0)
        if body is not None:
            region = textwrap.indent(textwrap.dedent(body).strip("\n") + "\n", indent)
        for old, new in replacements:
            count = region.count(old)
            assert count == 1, f"{function}: {old!r} occurs {count} times in the solution (edit the mutant)"
            region = region.replace(old, new)
        return before + region + after

    def run_check(self, function: str, replacements=(), body: str | None = None) -> None:
        """Run the (edited) exercise cell, then its check cell; raises whatever the check raises."""
        exercise = self.exercise_index(function)
        namespace = dict(self._prefix(exercise))
        exec(compile(_code(self.edited(function, replacements, body)), f"{self.path.name}:exercise", "exec"), namespace)
        check = self.cells[self.check_index(exercise)].source
        exec(compile(_code(check), f"{self.path.name}:check", "exec"), namespace)

    def check_blanked(self, function: str) -> None:
        """Blanked (as a handout is), the exercise cell still runs, its check fails with the
        NotImplementedError that names the function, and no other cell calls the function."""
        try:
            self.run_check(function, body=f'raise NotImplementedError("{function}: your code here")')
        except NotImplementedError as exc:
            assert function in str(exc), f"the check failed with another NotImplementedError: {exc}"
        else:
            raise AssertionError(f"{function}: the check passed with the solution blanked")
        exercise = self.exercise_index(function)
        users = [i for i, c in enumerate(self.cells) if c.cell_type == "code" and function in c.source
                 and i not in (exercise, self.check_index(exercise))]
        assert not users, f"{self.path.name}: cells {users} call {function}: only its check cell may"
