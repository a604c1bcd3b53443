"""``bertnp course grade SUBMISSION``: the gradient-check suite as the grader.

For every task:

1. the task's package is the submission's ``bertnp/`` (and ``kernels/``) with every OTHER task's
   regions replaced by the instructor's solution (:func:`bertnp.course.markers.splice`), so a task
   is graded on its own regions alone: one bug costs one task, a fresh handout scores 0 everywhere,
   and no task passes because another one was solved;
2. its public and hidden tests -- the instructor's copies, never the submission's -- run in a fresh
   ``python -I`` process (:mod:`bertnp.course._runner`) with a clean environment, its own working
   folder, a wall-clock limit (the whole process group is killed), a cap on the output it can
   write, and no plugin, conftest or ini file of the submission;
3. the process writes its result, with a random nonce, only when pytest's session ends: a missing,
   late or foreign result (os._exit, sys.exit, a crash, a timeout) is a failure, and a change to
   the grading tests during the run voids the task.

A task scores its points when all its tests pass, 0 otherwise. The results print as a table and
can be written as Gradescope's ``results.json``; a folder of submissions gives one CSV.
"""
from __future__ import annotations

import concurrent.futures
import csv
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bertnp.course import manifest as manifest_mod
from bertnp.course.markers import regions_of, replace_regions, splice, stub_lines

PACKAGE_DIRS = ("bertnp", "kernels")        # what a task's process imports from a submission
SKIP_NAMES = {"__pycache__", ".git", ".pytest_cache", ".ipynb_checkpoints", ".hypothesis"}
MAX_SUBMISSION_BYTES = 200 * 2 ** 20
OUTPUT_LIMIT = 32 * 2 ** 20                 # bytes a task process may write to any file
FEEDBACK_LIMIT = 6000                       # characters of feedback per task
RUNNER = Path(__file__).with_name("_runner.py")
_NOT_DONE = re.compile(r"NotImplementedError: (task (\d+\.\d+) ([\w.]+)[^\n]*)")


@dataclass
class TaskResult:
    id: str
    name: str
    title: str
    points: float
    score: float = 0.0
    status: str = "failed"            # passed | failed | timeout | crashed | not graded
    feedback: str = ""
    seconds: float = 0.0
    cached: bool = False

    @property
    def graded(self) -> bool:
        return self.status != "not graded"


@dataclass
class GradeReport:
    submission: str
    tasks: list[TaskResult] = field(default_factory=list)
    lessons: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(t.score for t in self.tasks) + sum(item["score"] for item in self.lessons)

    @property
    def max_score(self) -> float:
        return sum(t.points for t in self.tasks if t.graded) + sum(item["max_score"] for item in self.lessons)

    def by_id(self) -> dict[str, TaskResult]:
        return {t.id: t for t in self.tasks}

    def table(self) -> str:
        rows = [f"{'task':<5} {'points':>6} {'score':>6}  {'status':<10} what failed"]
        for t in self.tasks:
            first = next((line.strip() for line in t.feedback.split("\n") if line.strip()), "")
            shown = "" if t.status == "passed" else first[:110]
            rows.append(f"{t.id:<5} {t.points:>6g} {t.score:>6g}  {t.status:<10} {shown}")
        for item in self.lessons:
            rows.append(f"{'nb':<5} {item['max_score']:>6g} {item['score']:>6g}  "
                        f"{'passed' if item['score'] else 'failed':<10} {item['name']}")
        rows.append(f"{'total':<5} {self.max_score:>6g} {self.score:>6g}")
        return "\n".join(rows)

    def gradescope(self) -> dict:
        """Gradescope's autograder results.json."""
        tests = []
        for t in self.tasks:
            output = t.feedback or ("all tests passed" if t.status == "passed" else t.status)
            tests.append({"name": f"task {t.id} {t.title}", "score": t.score,
                          "max_score": t.points if t.graded else 0.0, "output": output,
                          "visibility": "visible"})
        for item in self.lessons:
            tests.append({"name": item["name"], "score": item["score"], "max_score": item["max_score"],
                          "output": item["output"], "visibility": "visible"})
        return {"score": self.score, "output": f"bertnp course grade: {self.score:g} of {self.max_score:g}",
                "tests": tests}


# ------------------------------------------------------------------------------- the submission

def _copy_package(source: Path, target: Path) -> int:
    """Copy the package folders of a submission (no symlinks, caches or compiled files)."""
    total = 0
    for name in PACKAGE_DIRS:
        src = source / name
        if not src.is_dir() or src.is_symlink():
            continue
        for folder, dirs, files in os.walk(src, followlinks=False):
            dirs[:] = [d for d in dirs if d not in SKIP_NAMES and not os.path.islink(os.path.join(folder, d))]
            rel = Path(folder).relative_to(source)
            (target / rel).mkdir(parents=True, exist_ok=True)
            for f in files:
                path = Path(folder) / f
                if path.is_symlink() or f.endswith((".pyc", ".pyo")):
                    continue
                total += path.stat().st_size
                if total > MAX_SUBMISSION_BYTES:
                    raise ValueError(f"{source}: the submission's package is larger than "
                                     f"{MAX_SUBMISSION_BYTES >> 20} MiB")
                shutil.copyfile(path, target / rel / f)
    return total


def _instructor_region_files(root: Path) -> dict[str, str]:
    """{path: text} of the instructor's package files that hold TASK regions."""
    files = {}
    for name in PACKAGE_DIRS:
        for path in sorted((root / name).rglob("*")):
            if path.suffix in (".py", ".cu", ".cuh") and "__pycache__" not in path.parts and path.is_file():
                text = path.read_text(encoding="utf-8")
                rel = path.relative_to(root).as_posix()
                if "TASK " in text and regions_of(rel, text):      # malformed markers raise MarkerError
                    files[rel] = text
    return files


def task_sources(task, submission_copy: Path, instructor_files: dict) -> tuple[dict, list[str]]:
    """The files of a task's package that differ from the submission: {path: text}, with every
    other task's regions from the instructor. Returns (files, warnings)."""
    own_by_file: dict[str, set] = {}
    for address in task.regions:
        path, _, name = address.rpartition(":")
        own_by_file.setdefault(path, set()).add(name)
    changed, warnings = {}, []
    for path, instructor_text in instructor_files.items():
        file = submission_copy / path
        keep = own_by_file.get(path, set())
        if not file.is_file():
            # the submission lacks the file: the instructor's, with this task's regions blank
            regions = {r.name: r for r in regions_of(path, instructor_text)}
            stubs = {n: stub_lines(regions[n], task.stub_message(n)) for n in keep if n in regions}
            changed[path] = replace_regions(instructor_text, stubs, path) if stubs else instructor_text
            if keep:
                warnings.append(f"{path} is missing from the submission")
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            warnings.append(f"{path} is not UTF-8 text; graded as submitted")
            continue
        spliced, file_warnings = splice(text, instructor_text, path, keep=keep)
        if spliced != text:
            changed[path] = spliced
        warnings += [w for w in file_warnings if not any(w.startswith(f"{path}: the markers of region {n} ") for n in keep)]
    return changed, warnings


def build_task_package(submission_copy: Path, target: Path, changed: dict) -> None:
    """Materialise a task's package: the submission's copy with the spliced files written over it."""
    shutil.copytree(submission_copy, target)
    for path, text in changed.items():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_text(text, encoding="utf-8")


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def _package_digest(file_hashes: dict, changed: dict) -> str:
    """The hash of a task's package, from the submission's file hashes and the spliced files."""
    merged = dict(file_hashes)
    merged.update({path: hashlib.sha256(text.encode("utf-8")).hexdigest() for path, text in changed.items()})
    digest = hashlib.sha256()
    for path in sorted(merged):
        digest.update(path.encode() + b"\0" + merged[path].encode())
    return digest.hexdigest()


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


# ------------------------------------------------------------------------------- one task process

def _limits():                                        # runs in the child before exec
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT, OUTPUT_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _environment(home: Path, gpu: bool) -> dict:
    keep = ("PATH", "LANG", "LC_ALL", "CUDA_PATH", "CUDA_HOME", "LD_LIBRARY_PATH", "CUPY_CACHE_DIR",
            "NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(HOME=str(home), TMPDIR=str(home), PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0",
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", MPLBACKEND="Agg", OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", BERTNP_BACKEND="numpy",
               BERTNP_LESSONS_FAST="1", PYTHONIOENCODING="utf-8")
    return env


def run_task_process(task, package_root: Path, tests_root: Path, referee_teach: Path, workdir: Path,
                     time_limit: float) -> dict:
    """Run one task's tests in a fresh process; returns {status, tests, output, seconds}."""
    import importlib.util
    if importlib.util.find_spec("pytest") is None:
        raise RuntimeError("the course's tests need pytest: pip install -e '.[course]'")
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    result_path = workdir / f"result-{secrets.token_hex(8)}.json"
    nonce = secrets.token_hex(16)
    job = {"package_root": str(package_root), "tests_root": str(tests_root), "node_ids": list(task.tests),
           "result": str(result_path), "nonce": nonce, "referee_teach": str(referee_teach), "task": task.id}
    runner = workdir / "runner.py"
    shutil.copyfile(RUNNER, runner)
    tests_before = _tree_hash(tests_root)
    output_path = workdir / "output.txt"
    start = time.monotonic()
    with open(output_path, "wb") as output:
        process = subprocess.Popen([sys.executable, "-I", str(runner)], stdin=subprocess.PIPE, stdout=output,
                                   stderr=subprocess.STDOUT, cwd=str(home), env=_environment(home, task.gpu),
                                   start_new_session=True, preexec_fn=_limits)
        timed_out = False
        try:
            process.stdin.write(json.dumps(job).encode())
            process.stdin.close()
        except BrokenPipeError:
            pass
        try:
            process.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:                              # the whole group: whatever the tests started, too
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
    seconds = time.monotonic() - start
    output_text = _read_tail(output_path)
    if timed_out:
        return {"status": "timeout", "tests": [], "seconds": seconds,
                "output": f"time limit of {time_limit:g} s exceeded: the process was stopped (an endless "
                          f"loop, or far too slow?)\n{output_text}"}
    if _tree_hash(tests_root) != tests_before:
        return {"status": "crashed", "tests": [], "seconds": seconds,
                "output": "the grading tests were modified while they ran: this task scores 0"}
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = None
    if not isinstance(result, dict) or result.get("nonce") != nonce or result.get("finished") is not True:
        return {"status": "crashed", "tests": [], "seconds": seconds,
                "output": f"the test process ended without reporting its results (exit code "
                          f"{process.returncode}): did the code exit the process (sys.exit, os._exit) "
                          f"or crash?\n{output_text}"}
    if os.path.abspath(str(result.get("package", ""))) != os.path.abspath(str(package_root)):
        return {"status": "crashed", "tests": result.get("tests", []), "seconds": seconds,
                "output": f"bertnp was not imported from the graded copy ({result.get('package')})\n{output_text}"}
    return {"status": "ran", "tests": result["tests"], "seconds": seconds, "output": output_text}


def _read_tail(path: Path, limit: int = 3000) -> str:
    size = path.stat().st_size if path.exists() else 0
    with open(path, "rb") as f:
        if size > limit:
            f.seek(size - limit)
        text = f.read().decode("utf-8", errors="replace")
    return ("[... output cut ...]\n" if size > limit else "") + text.strip()


def judge(task, run: dict) -> TaskResult:
    """Points and feedback from one task process's outcome."""
    result = TaskResult(task.id, task.name, task.title, task.points, seconds=run["seconds"])
    if run["status"] != "ran":
        result.status = "timeout" if run["status"] == "timeout" else "crashed"
        result.feedback = _cut(run["output"])
        return result
    tests = run["tests"]
    missing = [n for n in task.tests if not any(t["nodeid"] == n or t["nodeid"].startswith(n + "[")
                                                for t in tests)]
    failed = [t for t in tests if t["outcome"] in ("failed", "error")]
    skipped = [t for t in tests if t["outcome"] == "skipped"]
    if task.gpu and skipped and not failed and len(skipped) == len(tests):
        result.status, result.points = "not graded", 0.0
        result.feedback = "not graded: " + skipped[0]["text"].strip()
        return result
    if failed or skipped or missing or not tests:
        parts, seen = [], {}
        for t in failed:                     # the same message from several tests: once, with their names
            seen.setdefault(_explain(task, t["text"]), []).append(t["nodeid"].split("/")[-1])
        for text, names in seen.items():
            parts.append(f"{text}\n  [{'test' if len(names) == 1 else 'tests'} {', '.join(names)}]")
        for t in skipped:
            parts.append(f"{t['nodeid'].split('/')[-1]} was skipped: {t['text'].strip()}")
        for n in missing:
            parts.append(f"{n} did not run")
        if not tests:
            parts.append("no test ran")
        result.feedback = _cut("\n\n".join(parts))
        return result
    result.status, result.score = "passed", task.points
    result.feedback = f"{len(tests)} test(s) passed"
    return result


def _explain(task, text: str) -> str:
    """A failure's message, led by a line saying whether the task (or another one) is still a stub."""
    text = re.sub(r"(\.\./)+package/", "", text)
    text = re.sub(r"(\.\./)+tests/", "course/tests/", text)
    match = _NOT_DONE.search(text)
    if match:
        other = match.group(2)
        if other == task.id:
            return f"not written yet: {match.group(1).strip()}"
        return f"blocked by task {other} ({match.group(3)} is not written yet)\n{text}"
    return text


def _cut(text: str) -> str:
    return text if len(text) <= FEEDBACK_LIMIT else text[:FEEDBACK_LIMIT // 3] + "\n[...]\n" + text[-(2 * FEEDBACK_LIMIT) // 3:]


# ------------------------------------------------------------------------------- grading

def _cache_key(task, package_digest: str, tests_hash: str) -> str:
    digest = hashlib.sha256()
    for part in (task.id, ",".join(task.tests), str(task.time_limit), tests_hash, package_digest,
                 hashlib.sha256(RUNNER.read_bytes()).hexdigest(), sys.version):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def grade(submission, root=None, tasks=None, assignments=None, jobs: int = 2, cache=None,
          workdir=None, keep: bool = False, log=None, lessons=(), time_limit=None) -> GradeReport:
    """Grade one submission folder (a student's tree with bertnp/). Returns a GradeReport.

    ``time_limit`` (seconds) caps every task's own limit; ``cache`` is a folder where results are
    kept by a hash of the task's package, tests and runner (re-grading skips identical work)."""
    root = Path(root) if root is not None else Path.cwd()
    submission = Path(submission)
    if not submission.is_dir():
        raise FileNotFoundError(f"{submission}: no such folder (a submission is a student's project tree)")
    if not (submission / "bertnp").is_dir():
        raise FileNotFoundError(f"{submission}: no bertnp/ folder in it: is it a student's project tree?")
    course = manifest_mod.load(root)
    chosen = course.select(assignments=assignments, tasks=tasks)
    own_work = workdir is None
    work = Path(tempfile.mkdtemp(prefix="bertnp-grade-")) if own_work else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    report = GradeReport(str(submission))
    try:
        sub_copy = work / "submission"
        _copy_package(submission, sub_copy)
        instructor_files = _instructor_region_files(root)
        tests_source = root / "course" / "tests"
        tests_hash = _tree_hash(tests_source)
        referee = root / "bertnp" / "teach.py"

        file_hashes = _file_hashes(sub_copy) if cache else {}

        def one(task):
            task_dir = work / f"task-{task.id}"
            package = task_dir / "package"
            changed, warnings = task_sources(task, sub_copy, instructor_files)
            if not cache:
                return run_one(task, task_dir, package, changed), warnings
            key = _cache_key(task, _package_digest(file_hashes, changed), tests_hash)
            Path(cache).mkdir(parents=True, exist_ok=True)
            cached_file = Path(cache) / f"{key}.json"
            # one grader computes a key while others (threads, processes) wait for its result
            with open(Path(cache) / f"{key}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if cached_file.is_file():
                    result = judge(task, json.loads(cached_file.read_text()))
                    result.cached = True
                    return result, warnings
                run = run_one(task, task_dir, package, changed, raw=True)
                if run["status"] == "ran":             # timeouts and crashes are not remembered
                    tmp = cached_file.with_suffix(".tmp")
                    tmp.write_text(json.dumps(run))
                    os.replace(tmp, cached_file)
            return judge(task, run), warnings

        def run_one(task, task_dir, package, changed, raw=False):
            build_task_package(sub_copy, package, changed)
            tests_root = task_dir / "tests"
            shutil.copytree(tests_source, tests_root, ignore=shutil.ignore_patterns("__pycache__"))
            limit = task.time_limit if time_limit is None else min(task.time_limit, float(time_limit))
            run = run_task_process(task, package, tests_root, referee, task_dir / "run", limit)
            # the feedback names files in this temporary folder: say where they are in a tree instead
            run["output"] = run["output"].replace(str(package) + os.sep, "")
            for t in run["tests"]:
                t["text"] = (t["text"].replace(str(package) + os.sep, "").replace(str(tests_root) + os.sep, "course/tests/")
                             .replace(str(root.resolve()) + os.sep, ""))
            return run if raw else judge(task, run)

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
            futures = {task.id: pool.submit(one, task) for task in chosen}
            for task in chosen:
                result, warnings = futures[task.id].result()
                report.tasks.append(result)
                for w in warnings:
                    if w not in report.warnings:
                        report.warnings.append(w)
                if log:
                    log(f"  task {task.id:<4} {result.score:g}/{task.points:g}  {result.status}"
                        + (" (cached)" if result.cached else f" ({result.seconds:.1f} s)"))
        if lessons:
            report.lessons = grade_lessons(course, root, submission, lessons, work / "lessons")
    finally:
        if own_work and not keep:
            shutil.rmtree(work, ignore_errors=True)
    return report


def grade_lessons(course, root: Path, submission: Path, lessons, work: Path) -> list[dict]:
    """Each check cell of the chosen lessons, run with the student's exercise cells."""
    from bertnp.course.notebooks import grade_lesson
    sources = sorted((root / "lessons").glob("[0-9][0-9]_*.py"))
    if "all" not in lessons:
        sources = [s for s in sources if s.name[:2] in {str(x).zfill(2) for x in lessons}]
    items = []
    for source in sources:
        for r in grade_lesson(source, submission, course.notebook_time_limit, work / source.stem):
            points = course.notebook_points
            items.append({"name": r["name"], "score": points if r["passed"] else 0.0, "max_score": points,
                          "output": r["output"] or ("check passed" if r["passed"] else "check failed")})
    return items


def is_submission(folder: Path) -> bool:
    return (folder / "bertnp").is_dir()


def grade_folder(folder, csv_path, root=None, log=print, **options) -> list[GradeReport]:
    """Grade every sub-folder of ``folder`` (one per student) and write one CSV of scores."""
    folder = Path(folder)
    students = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    reports = []
    for student in students:
        if not is_submission(student):
            log(f"{student.name}: no bertnp/ folder: scored 0")
            reports.append(GradeReport(str(student), warnings=["no bertnp/ folder"]))
            continue
        log(f"grading {student.name}")
        reports.append(grade(student, root=root, log=log, **options))
    course = manifest_mod.load(Path(root) if root is not None else Path.cwd())
    chosen = course.select(assignments=options.get("assignments"), tasks=options.get("tasks"))
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "score", "max_score"] + [f"task {t.id}" for t in chosen] + ["notebooks"])
        for student, report in zip(students, reports):
            by_id = report.by_id()
            writer.writerow([student.name, f"{report.score:g}", f"{report.max_score:g}"]
                            + [f"{by_id[t.id].score:g}" if t.id in by_id else "0" for t in chosen]
                            + [f"{sum(i['score'] for i in report.lessons):g}"])
    log(f"wrote {csv_path} ({len(reports)} students)")
    return reports


def write_json(report: GradeReport, path) -> None:
    Path(path).write_text(json.dumps(report.gradescope(), indent=1) + "\n", encoding="utf-8")
