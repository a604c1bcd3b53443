"""Run a lesson's exercises with other answers in them: the proof that the checks catch mistakes.

Two interfaces over the same idea: the class :class:`Lesson` (lessons 01-04) and the functions
:func:`run_exercise` / :func:`run_blanked` / :func:`assert_check_fails` (lessons 05-07).

A lesson's exercise cell holds a function whose body sits between ``### BEGIN SOLUTION`` and
``### END SOLUTION``. :class:`Lesson` executes the lesson (in fast mode, figures off) up to an
exercise, then runs the exercise with its region replaced -- by a plausible wrong answer, by
``raise NotImplementedError`` (a course handout), or left as it is -- followed by the cells up to
the exercise's last check cell, and lets whatever the checks raise propagate::

    lesson = Lesson(LESSONS / "01_backprop_by_hand.py")
    lesson.run("my_linear_backward")                                   # the solution: passes
    lesson.run("my_linear_backward", replace=[("dout2d.T @ x2d", "x2d.T @ dout2d")])   # must raise

The cells before an exercise run once per lesson and process; each variant runs in a shallow copy
of that namespace, so the lesson's checks must not depend on state that an earlier variant changed
(they draw from their own seeded generators).
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")        # figures are drawn into nothing

import jupytext

from bertnp import teach

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


@contextlib.contextmanager
def fast_mode():
    """Run with ``teach.FAST`` on, as ``make test`` does, whatever the environment says."""
    saved = teach.FAST
    teach.FAST = True
    try:
        yield
    finally:
        teach.FAST = saved


def _code(source: str) -> str:
    """A code cell as Python: IPython magics (``%matplotlib``, ``!pip``) commented out."""
    return re.sub(r"(?m)^(\s*)([%!])", r"\1#\2", source)


@dataclass
class Exercise:
    name: str            # the function the exercise defines (the first ``def``)
    cell: int            # index of the exercise cell
    last_check: int      # index of the last check cell before the next exercise


@contextlib.contextmanager
def _blanked(module, attribute: str, namespace: dict):
    """``module.attribute`` (a function, or ``Class.method`` written as "Class.method") raises
    NotImplementedError, in the module and wherever ``namespace`` holds it."""
    owner = module
    *path, last = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, last)

    def stub(*args, **kwargs):
        raise NotImplementedError(f"the library's {attribute} is blanked (a handout): a check called it")

    held = [k for k, v in namespace.items() if v is original]
    setattr(owner, last, stub)
    for k in held:
        namespace[k] = stub
    try:
        yield
    finally:
        setattr(owner, last, original)


class Lesson:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.cells = jupytext.read(self.path, fmt="py:percent").cells
        tags = [set(c.metadata.get("tags", [])) for c in self.cells]
        starts = [i for i, t in enumerate(tags) if "exercise" in t]
        self.exercises: dict[str, Exercise] = {}
        for k, i in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(self.cells)
            checks = [j for j in range(i + 1, end) if "check" in tags[j]]
            name = re.search(r"(?m)^def (\w+)", self.cells[i].source).group(1)
            self.exercises[name] = Exercise(name, i, checks[-1])
        self._prefix: dict[int, dict] = {}

    # ------------------------------------------------------------------ the exercise's text
    def solution(self, name: str) -> str:
        """The solution region of an exercise (the lines between the markers)."""
        source = self.cells[self.exercises[name].cell].source
        return source[source.index(BEGIN):source.index(END)].split("\n", 1)[1]

    def variant(self, name: str, replace=(), body: str | None = None) -> str:
        """The exercise cell with its solution region changed: ``replace`` = [(old, new), ...]
        substitutions inside the region (each must occur), or ``body`` = a whole new region."""
        source = self.cells[self.exercises[name].cell].source
        start = source.index("\n", source.index(BEGIN)) + 1
        stop = source.rindex("\n", 0, source.index(END)) + 1
        region = source[start:stop]
        begin_line = source[source.rindex("\n", 0, source.index(BEGIN)) + 1:source.index(BEGIN)]
        indent = begin_line if begin_line.isspace() else ""
        if body is not None:
            region = textwrap.indent(textwrap.dedent(body).strip("\n"), indent) + "\n"
        for old, new in replace:
            if old not in region:
                raise AssertionError(f"{self.path.name}, {name}: the mutant's text {old!r} is not in the solution "
                                     "(the solution changed: update the mutant)")
            region = region.replace(old, new)
        return source[:start] + region + source[stop:]

    def blank(self, name: str) -> str:
        """The exercise cell as a course handout has it: the region only raises NotImplementedError."""
        return self.variant(name, body=f'raise NotImplementedError("EXERCISE: write {name}")')

    # ------------------------------------------------------------------ running
    def _run_cells(self, indices, namespace):
        for i in indices:
            if self.cells[i].cell_type == "code":
                exec(compile(_code(self.cells[i].source), f"{self.path.name}[cell {i}]", "exec"), namespace)

    def prefix(self, name: str) -> dict:
        """The namespace after every cell before the exercise (computed once per lesson and process)."""
        cell = self.exercises[name].cell
        if cell not in self._prefix:
            import matplotlib.pyplot as plt
            namespace: dict = {"__name__": "__lesson__"}
            with fast_mode(), contextlib.redirect_stdout(io.StringIO()):
                self._run_cells(range(cell), namespace)
            plt.close("all")
            self._prefix[cell] = namespace
        return self._prefix[cell]

    def run(self, name: str, replace=(), body: str | None = None, source: str | None = None,
            blank_library=()) -> str:
        """Run the exercise (changed as asked) and the cells up to its last check; return their output.
        Raises whatever a check raises. ``blank_library``: ``(module, attribute)`` pairs that raise
        while the checks run, wherever the lesson holds them (as in a handout, which blanks the
        library's own solution of the task)."""
        exercise = self.exercises[name]
        cell_source = source if source is not None else self.variant(name, replace, body)
        namespace = dict(self.prefix(name))
        with contextlib.ExitStack() as stack:
            for module, attribute in blank_library:
                stack.enter_context(_blanked(module, attribute, namespace))
            return self._run_exercise(exercise, cell_source, namespace)

    def _run_exercise(self, exercise, cell_source, namespace) -> str:
        import matplotlib.pyplot as plt
        name = exercise.name
        out = io.StringIO()
        try:
            with fast_mode(), contextlib.redirect_stdout(out):
                exec(compile(_code(cell_source), f"{self.path.name}[exercise {name}]", "exec"), namespace)
                self._run_cells(range(exercise.cell + 1, exercise.last_check + 1), namespace)
        finally:
            plt.close("all")
        return out.getvalue()

    def run_blanked(self) -> dict[int, BaseException]:
        """Run the whole lesson with every exercise blanked. Check cells may fail (their exceptions
        are collected by cell index); any other cell failing raises."""
        import matplotlib.pyplot as plt
        blanked = {ex.cell: self.blank(name) for name, ex in self.exercises.items()}
        checks = {i for i, c in enumerate(self.cells) if "check" in c.metadata.get("tags", [])}
        namespace: dict = {"__name__": "__lesson__"}
        failures = {}
        with fast_mode(), contextlib.redirect_stdout(io.StringIO()):
            for i, cell in enumerate(self.cells):
                if cell.cell_type != "code":
                    continue
                code = compile(_code(blanked.get(i, cell.source)), f"{self.path.name}[cell {i}]", "exec")
                if i in checks:
                    try:
                        exec(code, namespace)
                    except Exception as exc:      # noqa: BLE001 -- a check is allowed to fail here
                        failures[i] = exc
                else:
                    exec(code, namespace)
        plt.close("all")
        return failures


# ---------------------------------------------------------------------------------------------
# The function-style interface (lessons 05-07): run_exercise(stem, function, body) and friends.
# ---------------------------------------------------------------------------------------------

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
_SOLUTION = re.compile(r"(?ms)^([ \t]*)### BEGIN SOLUTION[^\n]*\n.*?^[ \t]*### END SOLUTION[^\n]*$")


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
