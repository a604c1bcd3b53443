"""``bertnp course check [TASK]``: a student's self-check inside a handout.

Runs the public tests of one task (or of every task) in the student's own tree, each task in its
own process as the grader does, and prints what failed: for a gradient, which tensor, which
entries and the relative error against the threshold; for anything else, the expected and actual
values. A task whose test stops at another task's stub is reported as blocked by that task (the
manifest's ``depends_on`` says which tasks a self-check needs first). The grader runs hidden tests
as well, and grades each task with the reference solution in every other task.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bertnp.course import manifest as manifest_mod
from bertnp.course.grade import TaskResult, judge, run_task_process


def check(tasks=None, root=None, jobs: int = 2, log=print) -> list[TaskResult]:
    """Run the public tests of ``tasks`` (ids; all when empty) in the tree ``root``."""
    import concurrent.futures
    import dataclasses
    root = Path(root).resolve() if root is not None else Path.cwd()     # absolute: the tests run elsewhere
    course = manifest_mod.load(root)
    chosen = course.select(tasks=tasks or None)
    tests_root = root / "course" / "tests"
    if not (tests_root / "public").is_dir():
        raise FileNotFoundError(f"{tests_root / 'public'}: no public tests here (run this in a handout's root)")
    work = Path(tempfile.mkdtemp(prefix="bertnp-check-"))
    results = []
    try:
        def one(task):
            public_only = dataclasses.replace(task, hidden=())
            if not public_only.tests:
                r = TaskResult(task.id, task.name, task.title, task.points, status="not graded",
                               feedback="this task has hidden tests only: the grader runs them")
                return r
            run = run_task_process(public_only, root, tests_root, root / "bertnp" / "teach.py",
                                   work / task.id, task.time_limit)
            return judge(public_only, run)

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for task, result in zip(chosen, pool.map(one, chosen)):
                results.append(result)
                blocked = [d for d in task.depends_on if d in {t.id for t in chosen}]
                log(f"task {task.id} {task.title}: {result.status.upper()}"
                    + (f"  [self-check needs tasks {', '.join(task.depends_on)} first]" if result.status != "passed"
                       and blocked and "blocked by" in result.feedback else ""))
                if result.status != "passed" and result.feedback:
                    log("    " + result.feedback.replace("\n", "\n    "))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    passed = sum(r.status == "passed" for r in results)
    log(f"{passed} of {len(results)} task(s) pass their public tests")
    return results
