"""Run a lesson's exercises with other answers in them: the proof that the checks catch mistakes.

The one harness of the lesson tests. A lesson's exercise cell (tag ``exercise``) defines a function
whose body sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (a cell may hold several such
regions, one per function); the check cells (tag ``check``) after it, up to the next exercise, call
it. The whole API::

    lesson = Lesson.get("01")          # by number, file stem ("01_backprop_by_hand") or path
    lesson.exercises                   # {first function of each exercise cell: Exercise}

    lesson.run("my_linear_backward")   # the solution, then the checks: passes (returns a Run)
    lesson.assert_fails("my_linear_backward", r"weight: your gradient has shape",   # a wrong answer:
                        replace=[("dout2d.T @ x2d", "x2d.T @ dout2d")])            # CheckFailed, message matches
    lesson.assert_blank_fails("my_linear_backward")   # blanked as a handout: the check raises its NotImplementedError
    lesson.assert_blanked_fails_only_its_checks()     # every exercise blanked: all else runs, every check fails

How a wrong answer is given (``run`` and ``assert_fails``):

* ``replace=[(old, new), ...]``: substitutions inside the solution region(s); each ``old`` must occur
  exactly once there (else the mutant is stale -- the solution changed -- and the test says so);
* ``body``: new text for the region(s), indented like the ``### BEGIN SOLUTION`` line: a string (the
  first region), a sequence with one entry per region (None keeps that region's solution), or a dict
  ``{region index: text}``.

``run(..., blank_library=[(module, "attribute"), ...])`` makes library functions raise
NotImplementedError while the checks run, as a course handout blanks the library's own solution:
a check that leans on it fails.

Everything runs as ``make test`` runs a lesson: ``teach.FAST`` on, matplotlib drawing into nothing
(Agg), IPython magics commented out, stdout captured. The cells before an exercise run once per
process and lesson; each run starts from a copy of that namespace in which the random generators
(the lesson's and NumPy's and Python's global ones) stand where they stood after those cells, so a
check draws the same numbers whichever runs came before it. Other objects (models, corpora) are
shared: a check must not depend on what an earlier run changed in them (the lessons' checks build
what they change).

Who uses it: tests/test_lesson_exercises.py (every exercise of every lesson: solution passes, blank
fails, blanked lesson runs) and each lesson's wrong answers (tests/test_lessons_01_04.py,
tests/test_lesson_NN.py).
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import random
import re
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")        # figures are drawn into nothing

import jupytext
import numpy as np

from bertnp import teach

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
# one solution region: the BEGIN line (its indent in group 1), the region (group 2), the END line
_REGION = re.compile(r"(?ms)^([ \t]*)### BEGIN SOLUTION[^\n]*\n(.*?)^[ \t]*### END SOLUTION")
_DEF = re.compile(r"(?m)^[ \t]*def (\w+)\(")
_GENERATORS = (np.random.Generator, np.random.RandomState, random.Random)


@dataclass(frozen=True)
class Exercise:
    name: str                    # the first function the exercise cell defines
    functions: tuple[str, ...]   # every function it defines (any of them names the exercise)
    cell: int                    # index of the exercise cell
    checks: tuple[int, ...]      # its check cells, before the next exercise
    regions: tuple[str, ...]     # for each solution region, the function it sits in


@dataclass
class Run:
    namespace: dict              # the lesson's namespace after the last check cell
    output: str                  # what the exercise and check cells printed


class Lesson:
    _cache: dict[Path, "Lesson"] = {}

    @classmethod
    def get(cls, key) -> "Lesson":
        """The lesson (one object per process, so the cells before each exercise run once):
        ``key`` is its number ("05"), file stem or a path."""
        path = Path(key)
        if not path.is_absolute() and not path.exists():
            stem = path.name.removesuffix(".py").removesuffix(".ipynb")
            matches = sorted(LESSONS.glob(f"{stem}.py")) or sorted(LESSONS.glob(f"{stem}_*.py"))
            if len(matches) != 1:
                raise LookupError(f"no single lesson source lessons/{stem}[_*].py: {[m.name for m in matches]}")
            path = matches[0]
        path = path.resolve()
        if path not in cls._cache:
            cls._cache[path] = cls(path)
        return cls._cache[path]

    def __init__(self, path):
        self.path = Path(path)
        self.cells = jupytext.read(self.path, fmt="py:percent").cells
        tags = [set(c.metadata.get("tags", [])) for c in self.cells]
        self._check_cells = [i for i, t in enumerate(tags) if "check" in t]
        starts = [i for i, t in enumerate(tags) if "exercise" in t]
        self.exercises: dict[str, Exercise] = {}
        for k, i in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(self.cells)
            source = self.cells[i].source
            functions = tuple(_DEF.findall(source))
            regions = tuple(_enclosing_function(source, m.start()) for m in _REGION.finditer(source))
            checks = tuple(j for j in self._check_cells if i < j < end)
            if not (functions and regions and checks):
                raise LookupError(f"{self.path.name} cell {i}: an exercise needs a def, a solution region and "
                                  f"a check cell before the next exercise (found {functions}, {len(regions)}, {checks})")
            self.exercises[functions[0]] = Exercise(functions[0], functions, i, checks, regions)
        self._prefixes: dict[int, tuple[dict, tuple]] = {}

    def __repr__(self):
        return f"Lesson({self.path.name})"

    # ------------------------------------------------------------------ the API
    def run(self, function: str, replace=(), body=None, blank_library=()) -> Run:
        """Run the exercise that defines ``function`` (its solution changed as asked, see the module
        docstring) and the code cells up to its last check. Raises whatever a check raises."""
        return self._run(function, self._variant(function, replace, body), blank_library)

    def assert_fails(self, function: str, message: str, replace=(), body=None) -> teach.CheckFailed:
        """The exercise's checks reject this answer with a :class:`teach.CheckFailed` (not a bare
        assert, not a crash) whose message matches the regex ``message`` (``.`` matches newlines)."""
        source = self._variant(function, replace, body)      # a stale mutant raises here, unwrapped
        try:
            self._run(function, source)
        except teach.CheckFailed as failure:
            assert re.search(message, str(failure), re.S), \
                (f"{self.path.name}, {function}: the check failed, but its message does not match "
                 f"{message!r}:\n{failure}")
            return failure
        except Exception as other:      # noqa: BLE001 -- a crash is not a check that says what is wrong
            raise AssertionError(f"{self.path.name}, {function}: a wrong answer made the check raise "
                                 f"{type(other).__name__}, not teach.CheckFailed: {other}") from other
        raise AssertionError(f"{self.path.name}, {function}: the check passed a wrong answer "
                             f"(expected a failure matching {message!r})")

    def assert_blank_fails(self, function: str) -> None:
        """Blanked as a handout has it, the exercise cell still runs and its check fails with the
        NotImplementedError that names the function to write."""
        names = self._exercise(function).functions
        try:
            self._run(function, self._blank(function))
        except NotImplementedError as exc:
            assert any(f"EXERCISE: write {name}" in str(exc) for name in names), \
                f"{self.path.name}, {function}: the check failed with another NotImplementedError: {exc}"
        else:
            raise AssertionError(f"{self.path.name}, {function}: the check passed with the solution blanked")

    def assert_blanked_fails_only_its_checks(self) -> None:
        """The whole lesson as a course handout gives it (every solution region raises
        NotImplementedError): every cell that is not a check runs -- the rest of a lesson uses the
        library, never the student's code -- and every check cell fails with the NotImplementedError
        that says which exercise to write."""
        blanked = {ex.cell: self._blank(name) for name, ex in self.exercises.items()}
        namespace: dict = {"__name__": "__lesson__"}
        failed: dict[int, BaseException] = {}
        with _fast_mode(), contextlib.redirect_stdout(io.StringIO()):
            for i, cell in enumerate(self.cells):
                if cell.cell_type != "code":
                    continue
                try:
                    self._exec(blanked.get(i, cell.source), f"cell {i}", namespace)
                except Exception as exc:      # noqa: BLE001 -- a check cell may fail; nothing else may
                    if i not in self._check_cells:
                        raise AssertionError(f"{self.path.name} cell {i} (not a check) fails with the solutions "
                                             f"blanked: {type(exc).__name__}: {exc}") from exc
                    failed[i] = exc
        assert self._check_cells, f"{self.path.name}: no check cells"
        passed = [i for i in self._check_cells if i not in failed]
        assert not passed, f"{self.path.name}: check cells {passed} pass with every exercise blanked"
        for cell, exc in failed.items():
            assert isinstance(exc, NotImplementedError) and "EXERCISE: write" in str(exc), \
                f"{self.path.name} check cell {cell} with every exercise blanked: {type(exc).__name__}: {exc}"

    # ------------------------------------------------------------------ the exercise's text
    def _exercise(self, function: str) -> Exercise:
        for exercise in self.exercises.values():
            if function in exercise.functions:
                return exercise
        raise LookupError(f"{self.path.name}: no exercise cell defines {function}() "
                          f"(exercises: {sorted(self.exercises)})")

    def _variant(self, function: str, replace=(), body=None) -> str:
        """The exercise cell with its solution region(s) changed (see the module docstring)."""
        source = self.cells[self._exercise(function).cell].source
        matches = list(_REGION.finditer(source))
        regions = [m.group(2) for m in matches]
        if body is not None:
            if isinstance(body, str):
                body = {0: body}
            elif not isinstance(body, dict):
                body = list(body)
                if len(body) != len(regions):
                    raise LookupError(f"{self.path.name}, {function}: the exercise has {len(regions)} solution "
                                      f"regions, {len(body)} bodies given")
                body = {k: text for k, text in enumerate(body) if text is not None}
            for k, text in body.items():
                regions[k] = textwrap.indent(textwrap.dedent(text).strip("\n"), matches[k].group(1)) + "\n"
        for old, new in replace:
            count = sum(region.count(old) for region in regions)
            if count != 1:
                raise AssertionError(f"{self.path.name}, {function}: the mutant's text {old!r} occurs {count} times "
                                     "in the solution, not once (the solution changed? update the mutant)")
            regions = [region.replace(old, new) for region in regions]
        pieces, end = [], 0
        for match, region in zip(matches, regions):
            pieces += [source[end:match.start(2)], region]
            end = match.end(2)
        return "".join(pieces) + source[end:]

    def _blank(self, function: str) -> str:
        """The exercise cell as a course handout has it: each region raises NotImplementedError
        naming its function."""
        exercise = self._exercise(function)
        return self._variant(function, body=[f'raise NotImplementedError("EXERCISE: write {name}")'
                                             for name in exercise.regions])

    # ------------------------------------------------------------------ running
    def _exec(self, source: str, where: str, namespace: dict):
        try:
            exec(compile(_python(source), f"{self.path.name}[{where}]", "exec"), namespace)
        finally:
            import matplotlib.pyplot as plt
            plt.close("all")

    def _prefix(self, exercise: Exercise) -> tuple[dict, tuple]:
        """The namespace after every code cell before the exercise and the global generators' state
        then (run once per process and lesson)."""
        if exercise.cell not in self._prefixes:
            namespace: dict = {"__name__": "__lesson__"}
            with _fast_mode(), contextlib.redirect_stdout(io.StringIO()):
                for i in range(exercise.cell):
                    if self.cells[i].cell_type == "code":
                        self._exec(self.cells[i].source, f"cell {i}", namespace)
            self._prefixes[exercise.cell] = namespace, (np.random.get_state(), random.getstate())
        return self._prefixes[exercise.cell]

    def _run(self, function: str, cell_source: str, blank_library=()) -> Run:
        exercise = self._exercise(function)
        prefix, (numpy_state, python_state) = self._prefix(exercise)
        namespace = _fresh_copy(prefix)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        out = io.StringIO()
        with contextlib.ExitStack() as stack:
            for module, attribute in blank_library:
                stack.enter_context(_blanked(module, attribute, namespace))
            with _fast_mode(), contextlib.redirect_stdout(out):
                self._exec(cell_source, f"exercise {function}", namespace)
                for i in range(exercise.cell + 1, exercise.checks[-1] + 1):
                    if self.cells[i].cell_type == "code":
                        self._exec(self.cells[i].source, f"cell {i}", namespace)
        return Run(namespace, out.getvalue())


# ---------------------------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def _fast_mode():
    """Run with ``teach.FAST`` on, as ``make test`` does, whatever the environment says."""
    saved = teach.FAST
    teach.FAST = True
    try:
        yield
    finally:
        teach.FAST = saved


def _python(source: str) -> str:
    """A code cell as Python: IPython magics (``%matplotlib``, ``!pip``) commented out."""
    return re.sub(r"(?m)^(\s*)([%!])", r"\1#\2", source)


def _enclosing_function(source: str, position: int) -> str:
    defs = _DEF.findall(source[:position])
    return defs[-1] if defs else "the exercise"


def _fresh_copy(namespace: dict) -> dict:
    """A copy of a lesson's namespace for one run: the random generators in it are copies (so each run
    draws what the first would), the functions the lesson defined are rebound to the copy (so they
    read its generators); everything else is shared, as a deep copy of models and corpora costs
    seconds."""
    fresh = dict(namespace)
    for key, value in namespace.items():
        if isinstance(value, _GENERATORS):
            fresh[key] = copy.deepcopy(value)
        elif isinstance(value, types.FunctionType) and value.__globals__ is namespace:
            rebound = types.FunctionType(value.__code__, fresh, value.__name__, value.__defaults__, value.__closure__)
            rebound.__kwdefaults__, rebound.__qualname__ = value.__kwdefaults__, value.__qualname__
            rebound.__dict__.update(value.__dict__)
            fresh[key] = rebound
    return fresh


@contextlib.contextmanager
def _blanked(module, attribute: str, namespace: dict):
    """``module.attribute`` (a function, or a method written "Class.method") raises
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
        for k in held:
            namespace[k] = original
