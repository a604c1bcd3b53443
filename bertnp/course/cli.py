"""``bertnp course release | check | grade``: the command line of the course (see course/README.md)."""
from __future__ import annotations

import sys
from pathlib import Path


def add_course_parser(sub) -> None:
    """Register ``bertnp course ...`` on the main parser's subcommands."""
    c = sub.add_parser("course", help="course assignments: release a handout, self-check, grade",
                       description="Course assignments generated from the library (course/course.toml): "
                       "'release' writes a student handout, 'check' runs a task's public tests inside a "
                       "handout, 'grade' grades a submission (or a folder of them).")
    csub = c.add_subparsers(dest="course_command", metavar="ACTION")

    r = csub.add_parser("release", help="write the student handout to OUT",
                        description="Write the handout: the project's tracked files with every solution region "
                        "of the chosen assignments replaced by a stub, the lessons blanked (nbgrader), the "
                        "public tests; no hidden tests, no solutions (checked before it returns).")
    r.add_argument("out", metavar="OUT", help="folder to write (must not exist, or be empty; see --force)")
    r.add_argument("--assignment", type=int, action="append", metavar="N",
                   help="blank only assignment N's tasks (repeatable; default: every assignment)")
    r.add_argument("--root", default=".", metavar="DIR", help="the instructor's project tree (default: here)")
    r.add_argument("--force", action="store_true", help="replace OUT if it exists")
    r.set_defaults(func=cmd_release)

    k = csub.add_parser("check", help="run a task's public tests (inside a handout)",
                        description="The self-check: the public tests of TASK (or of every task), each task in "
                        "its own process, with what failed and why. The grader also runs hidden tests.")
    k.add_argument("tasks", nargs="*", metavar="TASK", help="task ids such as 1.3 (default: all)")
    k.add_argument("--root", default=".", metavar="DIR", help="the handout's folder (default: here)")
    k.add_argument("--jobs", type=int, default=2, metavar="N", help="tasks run side by side (default 2)")
    k.set_defaults(func=cmd_check)

    g = csub.add_parser("grade", help="grade a submission, or a folder of submissions",
                        description="Grade SUBMISSION (a student's tree) with the instructor's public and hidden "
                        "tests, each task in its own process with a time limit. Given a folder holding one "
                        "submission per sub-folder, write one CSV of scores.")
    g.add_argument("submission", metavar="SUBMISSION", help="a student's project tree, or a folder of them")
    g.add_argument("--json", metavar="PATH", help="write Gradescope's results.json here (one submission)")
    g.add_argument("--csv", metavar="PATH", default="scores.csv", help="the CSV for a folder (default scores.csv)")
    g.add_argument("--task", action="append", metavar="ID", help="grade only this task (repeatable)")
    g.add_argument("--assignment", type=int, action="append", metavar="N", help="grade only assignment N")
    g.add_argument("--lessons", nargs="*", metavar="NN", default=(),
                   help="also grade these lessons' exercise notebooks (e.g. 05 06, or all)")
    g.add_argument("--root", default=".", metavar="DIR", help="the instructor's project tree (default: here)")
    g.add_argument("--jobs", type=int, default=2, metavar="N", help="task processes side by side (default 2)")
    g.add_argument("--cache", metavar="DIR", help="reuse results of byte-identical task packages (re-grading)")
    g.set_defaults(func=cmd_grade)
    c.set_defaults(func=lambda args: (c.print_help(), 2)[1])


def _fail(message: str) -> int:
    print(f"bertnp course: error: {message}", file=sys.stderr)
    return 2


def cmd_release(args) -> int:
    from bertnp.course.release import ReleaseError, release
    try:
        release(args.out, root=args.root, assignments=args.assignment, force=args.force)
    except ReleaseError as exc:
        return _fail(str(exc))
    return 0


def cmd_check(args) -> int:
    from bertnp.course.check import check
    results = check(args.tasks, root=args.root, jobs=args.jobs)
    return 0 if all(r.status in ("passed", "not graded") for r in results) else 1


def cmd_grade(args) -> int:
    from bertnp.course.grade import grade, grade_folder, is_submission, write_json
    folder = Path(args.submission)
    options = dict(tasks=args.task, assignments=args.assignment, jobs=args.jobs, cache=args.cache,
                   lessons=tuple(args.lessons or ()))
    if folder.is_dir() and not is_submission(folder):
        if args.json:
            return _fail("--json is for one submission; a folder of submissions gives --csv")
        grade_folder(folder, args.csv, root=args.root, **options)
        return 0
    report = grade(folder, root=args.root, log=print, **options)
    print(report.table())
    for warning in report.warnings:
        print(f"warning: {warning}")
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0
