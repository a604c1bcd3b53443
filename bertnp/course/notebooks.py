"""Lesson notebooks in a course: blanked with nbgrader's preprocessors, graded by running them.

Why nbgrader (and not otter-grader): ``pip install nbgrader`` adds five small packages to a
Jupyter environment (SQLAlchemy, alembic, Mako, RapidFuzz and itself) and changes none of the
installed ones; otter-grader brings 28, among them pandas, Sphinx, a Docker wrapper and Playwright
(a browser). We use nbgrader's preprocessors only -- ClearSolutions blanks the ``### BEGIN/END
SOLUTION`` regions, ClearOutput strips outputs, Execute runs a notebook -- not its database or
its course folder layout: the lessons already carry the regions, and the grading tests live in
course/tests.

Grading a lesson (``bertnp course grade SUBMISSION --lessons 05``) follows nbgrader's rule that a
student's edits outside their answers are ignored: the instructor's notebook is run with only the
student's *exercise cells* put in (found by the function they define), so an edited check cell
changes nothing. Each check cell after an exercise is one graded item.
"""
from __future__ import annotations

import re
from pathlib import Path

from bertnp.course.markers import DEF, LESSON_BEGIN


def _clear_solutions(lesson_number: str):
    """nbgrader's ClearSolutions for one lesson: code cells only (a Markdown cell may quote the
    delimiters), the stub names the lesson."""
    from nbgrader.preprocessors import ClearSolutions

    class LessonClearSolutions(ClearSolutions):
        def preprocess_cell(self, cell, resources, cell_index):
            if cell.cell_type != "code" or not any(LESSON_BEGIN.match(line) for line in cell.source.split("\n")):
                return cell, resources
            return super().preprocess_cell(cell, resources, cell_index)

    message = f"lesson {lesson_number} exercise: write your code here (between the function's signature and its return)"
    return LessonClearSolutions(enforce_metadata=False, begin_solution_delimeter="### BEGIN SOLUTION",
                                end_solution_delimeter="### END SOLUTION",
                                code_stub={"python": f"# YOUR CODE HERE\nraise NotImplementedError({message!r})"})


def blank_lesson_source(text: str, lesson_number: str) -> str:
    """A lesson source (jupytext percent format) with every solution region blanked by nbgrader."""
    import jupytext
    from nbgrader.preprocessors import ClearOutput
    nb = jupytext.reads(text, fmt="py:percent")
    resources: dict = {}
    nb, resources = _clear_solutions(lesson_number).preprocess(nb, resources)
    nb, resources = ClearOutput().preprocess(nb, resources)
    return jupytext.writes(nb, fmt="py:percent")


def blank_cell(source: str, lesson_number: str) -> str:
    """One exercise cell's source with its solution regions blanked (as in the handout)."""
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"language": "python", "name": "python3", "display_name": "Python 3"}
    nb, _ = _clear_solutions(lesson_number).preprocess(nb, {})
    return nb.cells[0].source


def exercise_functions(source: str) -> list[str]:
    """Names of the functions defined at the top of an exercise cell."""
    return [m["name"] for m in (DEF.match(line) for line in source.split("\n")) if m and not m["indent"]]


def _is_tagged(cell, tag: str) -> bool:
    return tag in cell.get("metadata", {}).get("tags", [])


def _read_notebook(path: Path):
    """A lesson as a notebook: the .ipynb if present, else its jupytext .py source."""
    import jupytext
    import nbformat
    if path.suffix == ".ipynb":
        return nbformat.read(str(path), as_version=4)
    return jupytext.read(str(path), fmt="py:percent")


def student_exercises(submission: Path, stem: str) -> dict[str, str]:
    """The student's exercise cells of lesson ``stem``, by the function they define."""
    cells: dict[str, str] = {}
    for candidate in (submission / "lessons" / f"{stem}.ipynb", submission / "lessons" / f"{stem}.py"):
        if candidate.is_file():
            try:
                nb = _read_notebook(candidate)
            except Exception:        # an unreadable notebook: try the other form
                continue
            for cell in nb.cells:
                if cell.cell_type == "code":
                    for name in exercise_functions(cell.source):
                        cells.setdefault(name, cell.source)
            if cells:
                return cells
    return cells


def grade_lesson(instructor_source: Path, submission: Path, timeout: float, workdir: Path) -> list[dict]:
    """Run the instructor's lesson with the student's exercise cells; one result per check cell.

    Returns [{"name", "passed", "output"}]: a check cell passes when it runs without an error."""
    import os
    from nbclient.exceptions import CellExecutionError, DeadKernelError
    from nbgrader.preprocessors import Execute
    nb = _read_notebook(instructor_source)
    stem = instructor_source.stem
    theirs = student_exercises(submission, stem)
    checks: list[tuple[int, str]] = []     # (cell index, item name)
    last_exercise = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if _is_tagged(cell, "exercise"):
            names = exercise_functions(cell.source)
            last_exercise = names[0] if names else f"cell{i}"
            replaced = [theirs[n] for n in names if n in theirs]
            if replaced:
                cell.source = replaced[0]
            else:                                    # nothing submitted: the blank exercise
                cell.source = blank_cell(cell.source, stem[:2])
        elif _is_tagged(cell, "check"):
            checks.append((i, f"lesson {stem[:2]} check after {last_exercise or 'the setup'}"))
            # a check cell's error must not stop the rest of the notebook: catch it, show it, go on
            cell.source = ("try:\n" + "\n".join("    " + line for line in cell.source.split("\n"))
                           + "\nexcept Exception as _check_error:\n"
                           "    import traceback as _tb\n"
                           "    print('CHECK FAILED: ' + ''.join(_tb.format_exception_only(type(_check_error), _check_error)).strip())\n")
    workdir.mkdir(parents=True, exist_ok=True)
    env_backup = os.environ.get("BERTNP_LESSONS_FAST")
    os.environ["BERTNP_LESSONS_FAST"] = "1"
    executor = Execute(timeout=int(timeout), allow_errors=True, interrupt_on_timeout=True, kernel_name="python3")
    crashed = ""
    try:
        executor.preprocess(nb, {"metadata": {"path": str(workdir)}})
    except (CellExecutionError, DeadKernelError, TimeoutError, RuntimeError) as exc:
        crashed = f"the notebook stopped: {type(exc).__name__}: {str(exc)[:500]}"
    finally:
        if env_backup is None:
            os.environ.pop("BERTNP_LESSONS_FAST", None)
        else:
            os.environ["BERTNP_LESSONS_FAST"] = env_backup
    results = []
    for index, name in checks:
        cell = nb.cells[index]
        text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        ran = cell.get("execution_count") is not None
        failed = "CHECK FAILED" in text or bool(errors) or not ran
        if not ran:
            text = crashed or "this check did not run (an earlier cell failed or the time ran out)"
        elif errors:
            text += "\n".join(f"{e.get('ename')}: {e.get('evalue')}" for e in errors)
        results.append({"name": name, "passed": not failed, "output": _tail(text, 3000)})
    return results


def _tail(text: str, limit: int) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return text if len(text) <= limit else "...\n" + text[-limit:]
