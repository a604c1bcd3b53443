"""The course (issue 13): the handout, the grader, and the grader proven against mutants.

One handout is released per test session and every grading shares one result cache: a task's
result is reused only when its package (the submission with the instructor's solution in every
other task), its tests and the runner are byte-identical, so each distinct piece of work runs once.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bertnp.course import manifest
from bertnp.course.manifest import tomllib
from bertnp.course.grade import grade, grade_folder, write_json
from bertnp.course.markers import regions_of, replace_regions
from bertnp.course.release import find_leaks, release, solution_needles

ROOT = Path(__file__).resolve().parents[1]
COURSE = manifest.load(ROOT)
MUTANTS = tomllib.loads((ROOT / "course" / "mutants.toml").read_text())["mutant"]
GRADED = [t for t in COURSE.tasks if not t.gpu]            # the GPU task is "not graded" without a GPU


def _git_tracked(path: str) -> bool:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--error-unmatch", path], capture_output=True)
    return out.returncode == 0


@pytest.fixture(scope="session")
def handout(tmp_path_factory):
    out = tmp_path_factory.mktemp("handout") / "h"
    release(out, root=ROOT, log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One result cache for the session, shared by pytest-xdist's workers (they then wait for each
    other's results instead of computing them twice: the grader locks each key)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run:
        shared = tmp_path_factory.getbasetemp().parent / f"course-grade-cache-{run}"
        shared.mkdir(exist_ok=True)
        return shared
    return tmp_path_factory.mktemp("grade-cache")


@pytest.fixture(scope="session")
def repo_report(cache):
    return grade(ROOT, root=ROOT, cache=cache)


@pytest.fixture(scope="session")
def handout_report(handout, cache):
    return grade(handout, root=ROOT, cache=cache)


def _package_copy(source: Path, target: Path) -> Path:
    """A submission made of a tree's package folders."""
    for name in ("bertnp", "kernels"):
        shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


# ------------------------------------------------------------------------------------ the grading

def test_the_repository_grades_full_marks(repo_report):
    by_id = repo_report.by_id()
    failed = {t.id: t.feedback[:300] for t in repo_report.tasks if t.status not in ("passed", "not graded")}
    assert not failed, f"the solution itself fails: {failed}"
    assert all(by_id[t.id].score == t.points for t in GRADED)
    assert repo_report.score == repo_report.max_score == sum(t.points for t in GRADED)


def test_a_fresh_handout_grades_zero_each_task_with_its_own_message(handout_report):
    for task in GRADED:
        result = handout_report.by_id()[task.id]
        assert result.score == 0, f"task {task.id} scores {result.score} in a blank handout"
        first = result.feedback.split("\n", 1)[0]
        assert first.startswith(f"not written yet: task {task.id} "), \
            f"task {task.id} fails for another reason than its own stub: {result.feedback[:400]}"
        # each task is graded with the solution of every other task: nothing is ever blocked
        assert "blocked by" not in result.feedback, result.feedback[:400]
    assert handout_report.score == 0


def test_putting_one_tasks_solution_back_gives_exactly_its_points(handout, cache, tmp_path):
    for task in GRADED:
        submission = _package_copy(handout, tmp_path / task.id)
        _restore(submission, task)
        report = grade(submission, root=ROOT, cache=cache)
        scores = {t.id: t.score for t in report.tasks if t.graded}
        assert scores.pop(task.id) == task.points, f"task {task.id} put back: {report.by_id()[task.id].feedback[:400]}"
        assert not any(scores.values()), f"task {task.id} put back also scores {scores}"


def _restore(submission: Path, task) -> None:
    """Put the instructor's code back into a handout's regions of ``task``."""
    for address in task.regions:
        path, _, name = address.rpartition(":")
        if path.startswith("lessons/") or not (submission / path).is_file():
            continue
        ours = (ROOT / path).read_text(encoding="utf-8")
        region = {r.name: r for r in regions_of(path, ours)}[name]
        target = submission / path
        target.write_text(replace_regions(target.read_text(encoding="utf-8"),
                                          {name: region.body(ours.split("\n"))}, path), encoding="utf-8")


def _mutate(submission: Path, mutant: dict) -> None:
    path = submission / mutant["file"]
    text = path.read_text(encoding="utf-8")
    regions = [r for r in regions_of(mutant["file"], text) if r.task == mutant["task"]]
    for old, new in mutant["replace"]:
        assert text.count(old) == 1, f"mutant {mutant['id']}: {old!r} must occur once in {mutant['file']}"
        line = text[:text.index(old)].count("\n")
        assert any(r.start < line < r.end for r in regions), \
            f"mutant {mutant['id']}: the patch at line {line + 1} is outside task {mutant['task']}'s regions"
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")


def test_there_are_at_least_12_mutants_over_the_issues_list():
    assert len(MUTANTS) >= 12
    ids = {m["id"] for m in MUTANTS}
    for required in ("layernorm-no-mean-term", "softmax-backward-sign", "attention-mask-after-softmax",
                     "gelu-tanh-approximation", "embedding-fancy-index-add", "cross-entropy-mean-over-all-rows",
                     "nsp-labels-flipped", "bernoulli-masking", "adamw-decays-layernorm-and-biases",
                     "weight-decay-inside-adam-moments", "clipping-per-tensor", "train-step-without-zero-grad"):
        assert required in ids


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m["id"] for m in MUTANTS])
def test_each_mutant_loses_exactly_its_tasks_points(mutant, cache, tmp_path, repo_report):
    submission = _package_copy(ROOT, tmp_path / "sub")
    _mutate(submission, mutant)
    report = grade(submission, root=ROOT, cache=cache)
    lost = {t.id: t.points - t.score for t in report.tasks if t.graded and t.score < t.points}
    assert set(lost) == {mutant["task"]}, f"mutant {mutant['id']} lost points in tasks {lost}"
    feedback = report.by_id()[mutant["task"]].feedback
    assert mutant["expect"] in feedback, f"mutant {mutant['id']}: the feedback does not point at the bug:\n{feedback}"


def test_a_mutant_graded_without_the_cache_loses_exactly_its_task(tmp_path):
    """The cache is an optimisation: grading every task afresh gives the same verdict."""
    mutant = next(m for m in MUTANTS if m["id"] == "layernorm-no-mean-term")
    submission = _package_copy(ROOT, tmp_path / "sub")
    _mutate(submission, mutant)
    report = grade(submission, root=ROOT, tasks=[t.id for t in COURSE.tasks if t.assignment in (1, 2)], jobs=2)
    assert {t.id for t in report.tasks if t.score < t.points} == {"1.3"}
    assert all(not t.cached for t in report.tasks)


# ------------------------------------------------------------------------------------ hostile code

def _hostile(tmp_path, file: str, old: str, new: str) -> Path:
    submission = _package_copy(ROOT, tmp_path / "sub")
    path = submission / file
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1
    path.write_text(text.replace(old, new), encoding="utf-8")
    return submission


def test_an_endless_loop_is_stopped_at_the_time_limit(tmp_path):
    import time
    submission = _hostile(tmp_path, "bertnp/ops/layernorm.py", "    dx -= dxhat_mean\n",
                          "    while True:\n        pass\n")
    start = time.monotonic()
    report = grade(submission, root=ROOT, tasks=["1.3", "1.2"], time_limit=8)
    took = time.monotonic() - start
    result = report.by_id()["1.3"]
    assert result.score == 0 and result.status == "timeout", result.feedback
    assert "time limit of 8 s" in result.feedback
    assert report.by_id()["1.2"].score == 2                      # the other task is unaffected
    assert took < 8 + 30, f"grading took {took:.0f} s with an 8 s limit"


def test_exiting_the_process_does_not_pass(tmp_path):
    submission = _hostile(tmp_path, "bertnp/ops/linear.py", "    x, weight, has_bias = cache\n",
                          "    import os\n    os._exit(0)\n")
    report = grade(submission, root=ROOT, tasks=["1.2"])
    assert report.by_id()["1.2"].score == 0
    assert "ended without reporting" in report.by_id()["1.2"].feedback
    # sys.exit(0) at import time of a module: every test of the task errors
    submission = _hostile(tmp_path / "b", "bertnp/ops/softmax.py", "class SoftmaxCache(NamedTuple):",
                          "import sys\nsys.exit(0)\n\n\nclass SoftmaxCache(NamedTuple):")
    report = grade(submission, root=ROOT, tasks=["1.5"])
    assert report.by_id()["1.5"].score == 0


def test_megabytes_of_output_neither_stall_nor_change_the_grade(tmp_path):
    submission = _hostile(tmp_path, "bertnp/ops/softmax.py", "    dscores = xp.empty_like(dprobs)",
                          "    print('x' * 2_000_000)\n    dscores = xp.empty_like(dprobs)")
    report = grade(submission, root=ROOT, tasks=["1.5"])
    result = report.by_id()["1.5"]
    assert result.score == 2, result.feedback[:500]             # right answers, loud: still right
    wrong = _hostile(tmp_path / "w", "bertnp/ops/softmax.py", "xp.subtract(dprobs, dot, out=dscores)",
                     "print('y' * 3_000_000); xp.subtract(dot, dprobs, out=dscores)")
    result = grade(wrong, root=ROOT, tasks=["1.5"]).by_id()["1.5"]
    assert result.score == 0 and "sign error" in result.feedback
    assert len(result.feedback) < 10_000


def test_edited_tests_conftest_and_ini_files_change_nothing(handout, tmp_path):
    submission = tmp_path / "sub"
    shutil.copytree(handout, submission)
    for test_file in (submission / "course" / "tests" / "public").glob("test_*.py"):
        test_file.write_text("def test_everything():\n    pass\n")
    for folder in (submission, submission / "course" / "tests", submission / "bertnp"):
        (folder / "conftest.py").write_text(
            "import pytest\n@pytest.hookimpl(tryfirst=True)\ndef pytest_runtest_call(item):\n    pass\n")
    (submission / "pytest.ini").write_text("[pytest]\naddopts = -p no:python\n")
    (submission / "sitecustomize.py").write_text("import os\nos._exit(0)\n")
    report = grade(submission, root=ROOT, tasks=["1.3", "4.1"])
    assert report.score == 0
    assert all(t.feedback.startswith(f"not written yet: task {t.id}") for t in report.tasks)


def test_a_result_file_written_by_the_submission_counts_for_nothing(tmp_path):
    fake = ('{"nonce": "guess", "finished": true, "exitstatus": 0, "package": "", "tests": '
            '[{"nodeid": "public/test_a1_ops.py::test_linear_backward", "outcome": "passed", "text": ""}]}')
    submission = _hostile(tmp_path, "bertnp/ops/linear.py", "class LinearCache(NamedTuple):",
                          "import os as _os, pathlib as _p\n"
                          "for _name in ('result.json', 'results.json', 'result-0.json'):\n"
                          f"    (_p.Path.cwd().parent / _name).write_text({fake!r})\n"
                          "_os._exit(0)\n\n\nclass LinearCache(NamedTuple):")
    result = grade(submission, root=ROOT, tasks=["1.2"]).by_id()["1.2"]
    assert result.score == 0 and "ended without reporting" in result.feedback


def test_changing_the_grading_tests_while_they_run_voids_the_task(tmp_path):
    # the grading tests sit at ../../tests from the task's working folder: overwrite one at import time
    submission = _hostile(tmp_path, "bertnp/ops/layernorm.py", "class LayerNormCache(NamedTuple):",
                          "import pathlib as _p\n"
                          "for _f in (_p.Path.cwd().parent.parent / 'tests').rglob('test_*.py'):\n"
                          "    _f.write_text('def test_ok():\\n    pass\\n')\n\n\n"
                          "class LayerNormCache(NamedTuple):")
    report = grade(submission, root=ROOT, tasks=["1.3"])
    result = report.by_id()["1.3"]
    assert result.score == 0 and "modified" in result.feedback, result.feedback[:300]


# ------------------------------------------------------------------------------------ the handout

def test_no_solution_leaks_into_the_handout(handout):
    lesson_regions = [r.address for p in sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))
                      for r in regions_of(f"lessons/{p.name}", p.read_text(encoding="utf-8"))]
    addresses = sorted({a for t in COURSE.tasks for a in t.regions} | set(lesson_regions))
    needles = solution_needles(ROOT, addresses, generic=COURSE.generic_lines)
    assert sum(len(n) for n in needles.values()) > 300          # the check has something to find
    assert find_leaks(handout, needles) == []
    assert not (handout / "course" / "tests" / "hidden").exists()
    assert not (handout / "course" / "mutants.toml").exists()
    assert not (handout / "tests").exists() and not (handout / ".git").exists()
    handout_manifest = tomllib.loads((handout / "course" / "course.toml").read_text())
    assert all("hidden" not in t for a in handout_manifest["assignment"] for t in a["task"])
    # every region is a stub: the solution is not there
    for task in COURSE.tasks:
        for address in task.regions:
            path, _, name = address.rpartition(":")
            if path.startswith("lessons/"):
                continue
            text = (handout / path).read_text(encoding="utf-8")
            body = "\n".join({r.name: r for r in regions_of(path, text)}[name].body(text.split("\n")))
            assert f"task {task.id} {name}" in body or "numerical_gradient(f, x, h=h)" in body, body


def test_the_leak_check_finds_a_solution_line_and_a_cache_folder(handout, tmp_path):
    copy = tmp_path / "h"
    shutil.copytree(handout, copy)
    (copy / "notes.md").write_text("    scratch = xhat * dxhat_xhat_mean  # found it\n")
    (copy / "bertnp" / "__pycache__").mkdir()
    needles = solution_needles(ROOT, ["bertnp/ops/layernorm.py:layernorm_backward"])
    leaks = find_leaks(copy, needles)
    assert ("notes.md:1", "scratch = xhat * dxhat_xhat_mean") in leaks
    assert any(where == "bertnp/__pycache__" for where, _ in leaks)


def test_a_notebook_output_that_shows_a_solution_is_a_leak(handout, tmp_path):
    copy = tmp_path / "h"
    shutil.copytree(handout, copy)
    notebook = copy / "lessons" / "05_embeddings_residuals.ipynb"
    nb = json.loads(notebook.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code["outputs"] = [{"output_type": "stream", "name": "stdout",
                        "text": ["    dx -= dxhat_mean\n", "    scratch = xhat * dxhat_xhat_mean\n"]}]
    notebook.write_text(json.dumps(nb))
    leaks = find_leaks(copy, solution_needles(ROOT, ["bertnp/ops/layernorm.py:layernorm_backward"]))
    assert any(where.startswith("lessons/05_embeddings_residuals.ipynb") for where, _ in leaks)


def test_the_handout_installs_and_imports(handout, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(handout)], check=True, capture_output=True)
    code = ("import bertnp, bertnp.model, bertnp.course.cli, bertnp.train; from bertnp.ops import layernorm; "
            "import sys; assert 'site' in bertnp.__file__, bertnp.__file__; print(bertnp.__version__)")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # in place (what `pip install -e .` gives): from the handout's folder, wherever it is
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(handout)!r}); "
                          "import bertnp, bertnp.data, bertnp.course.check; assert bertnp.__file__.startswith("
                          f"{str(handout)!r}), bertnp.__file__"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # its lessons: no solution between the markers, and the notebooks match their sources
    for source in sorted((handout / "lessons").glob("[0-9][0-9]_*.py")):
        text = source.read_text()
        # (a lesson's prose may *name* the markers; no line may *be* one)
        assert not re.search(r"(?m)^\s*#* *### (BEGIN|END) SOLUTION", text) and "YOUR CODE HERE" in text, source.name
    out = subprocess.run([sys.executable, str(handout / "lessons" / "make_notebooks.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_self_check_in_a_handout_names_the_task_and_its_blocking_dependency(handout, tmp_path):
    from bertnp.course.check import check
    lines = []
    results = check(["1.3"], root=handout, log=lines.append)
    assert results[0].status == "failed" and "not written yet: task 1.3" in results[0].feedback
    student = tmp_path / "student"
    shutil.copytree(handout, student)
    _restore(student, COURSE.task("2.2"))               # attention backward written, its forward not yet
    results = check(["2.2"], root=student, log=lines.append)
    assert "blocked by task 2.1" in results[0].feedback, results[0].feedback[:500]
    # the self-check uses the student's own versions of the tasks 2.2 depends on (the referee is 1.1)
    for dependency in COURSE.task("2.2").depends_on:
        _restore(student, COURSE.task(dependency))
    results = check(["2.1", "2.2"], root=student, log=lines.append)
    assert [r.status for r in results] == ["passed", "passed"], [r.feedback[:300] for r in results]


# ------------------------------------------------------------------------------------ exports

def test_gradescope_results_and_a_class_csv(handout, cache, tmp_path, handout_report, repo_report):
    path = tmp_path / "results.json"
    write_json(repo_report, path)
    data = json.loads(path.read_text())
    assert data["score"] == sum(t.points for t in GRADED)
    assert {"name", "score", "max_score", "output", "visibility"} <= set(data["tests"][0])
    assert len(data["tests"]) == len(COURSE.tasks)
    klass = tmp_path / "class"
    _package_copy(ROOT, klass / "ada")
    _package_copy(handout, klass / "bob")
    (klass / "carol").mkdir()                           # submitted nothing
    csv_path = tmp_path / "scores.csv"
    grade_folder(klass, csv_path, root=ROOT, cache=cache, log=lambda *a: None)
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("student,score,max_score,task 1.1")
    assert rows[1].startswith(f"ada,{sum(t.points for t in GRADED):g},")
    assert rows[2].startswith("bob,0,") and rows[3].startswith("carol,0,")


def test_the_command_line(handout, tmp_path, cache, monkeypatch, capsys):
    from bertnp.cli import main
    out = tmp_path / "h"
    assert main(["course", "release", str(out), "--assignment", "4", "--root", str(ROOT)]) == 0
    text = (out / "bertnp" / "data.py").read_text()
    assert "task 4.3 masking: see lessons/03_bert_data" in text
    with monkeypatch.context() as m:                 # what a student types, in the handout's folder
        m.chdir(out)
        capsys.readouterr()
        assert main(["course", "check", "4.1"]) == 1
        assert "not written yet: task 4.1 wordpiece: see lessons/03_bert_data" in capsys.readouterr().out
    assert "raise NotImplementedError('task 1.3" not in (out / "bertnp" / "ops" / "layernorm.py").read_text()
    assert main(["course", "release", str(out), "--root", str(ROOT)]) == 2          # not empty: refused
    json_path = tmp_path / "r.json"
    assert main(["course", "grade", str(out), "--task", "4.1", "--task", "1.3", "--root", str(ROOT),
                 "--cache", str(cache), "--json", str(json_path)]) == 0
    scores = {t["name"].split()[1]: t["score"] for t in json.loads(json_path.read_text())["tests"]}
    assert scores == {"1.3": 3.0, "4.1": 0.0}            # assignment 4 released: 1.3 is still the solution


def test_the_readme_worked_example_runs_as_written():
    readme = (ROOT / "course" / "README.md").read_text()
    after = readme.split("<!-- worked-example -->", 1)[1]
    script = after.split("```sh\n", 1)[1].split("```", 1)[0]
    expected = after.split("```text\n", 1)[1].split("```", 1)[0].strip().splitlines()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = out.stdout.splitlines()
    for line in expected:
        assert line in printed, f"the README promises {line!r}; the example printed:\n{out.stdout[-3000:]}"


def test_lesson_notebooks_are_graded_with_the_instructors_checks(handout, tmp_path):
    """nbgrader's way: the instructor's notebook runs with only the student's exercise cells in it."""
    from bertnp.course.grade import grade_lessons
    solved = grade_lessons(COURSE, ROOT, ROOT, ["07"], tmp_path / "solved")
    assert len(solved) >= 2 and all(item["score"] == item["max_score"] > 0 for item in solved), solved
    student = tmp_path / "student"
    shutil.copytree(handout / "lessons", student / "lessons")
    notebook = student / "lessons" / "07_gelu_ffn_dropout.ipynb"
    nb = json.loads(notebook.read_text())
    for cell in nb["cells"]:                          # a student who "fixes" the checks instead
        if "check" in cell["metadata"].get("tags", []):
            cell["source"] = "pass\n"
    notebook.write_text(json.dumps(nb))
    blank = grade_lessons(COURSE, ROOT, student, ["07"], tmp_path / "blank")
    assert [item["name"] for item in blank] == [item["name"] for item in solved]
    failed = [item for item in blank if item["score"] == 0]
    assert len(failed) == len(solved), blank
    assert all("NotImplementedError" in item["output"] or "CHECK FAILED" in item["output"] for item in failed), failed


def test_a_handout_lesson_runs_from_anywhere_up_to_its_own_exercises(tmp_path):
    """In a handout (assignment 5 released), lesson 07 runs from another folder with the handout's
    package: every cell runs except its check cells, which fail on the blank exercises."""
    import nbformat
    from nbgrader.preprocessors import Execute
    handout = tmp_path / "handout"
    release(handout, root=ROOT, assignments=[5], log=lambda *a: None)
    nb = nbformat.read(str(handout / "lessons" / "07_gelu_ffn_dropout.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import bertnp\nprint('PACKAGE', bertnp.__file__)"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "BERTNP_LESSONS_FAST")}
    os.environ.update(PYTHONPATH=str(handout), BERTNP_LESSONS_FAST="1")
    try:
        Execute(timeout=300, allow_errors=True, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(elsewhere)}})
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    failed = {i: [o for o in c.get("outputs", []) if o.get("output_type") == "error"] for i, c in enumerate(nb.cells)
              if c.cell_type == "code"}
    failed = {i: errors for i, errors in failed.items() if errors}
    checks = {i for i, c in enumerate(nb.cells) if "check" in c.get("metadata", {}).get("tags", [])}
    assert failed and set(failed) <= checks, {i: e[0]["ename"] + ": " + e[0]["evalue"][:200] for i, e in failed.items()}
    for errors in failed.values():
        assert "lesson 07 exercise" in errors[0]["evalue"], errors[0]["evalue"]
    printed = "".join(o.get("text", "") for o in nb.cells[-1]["outputs"])
    assert f"PACKAGE {handout}" in printed, printed


def test_the_self_checks_dependencies_are_declared_and_sufficient(handout, tmp_path):
    """In a student's own tree a task's public tests can stop at another task's stub: that task is
    in its depends_on, and with the task and its depends_on written, its self-check passes."""
    import concurrent.futures
    import re
    from bertnp.course.check import check
    for result in check(root=handout, log=lambda *a: None):
        blockers = set(re.findall(r"blocked by task (\d+\.\d+)", result.feedback))
        assert blockers <= set(COURSE.task(result.id).depends_on), (result.id, blockers, result.feedback[:300])
        assert result.status in ("failed", "not graded")

    def written(task):                       # 5.5 needs every other task: the full-marks test covers it
        tree = tmp_path / task.id
        shutil.copytree(handout, tree, ignore=shutil.ignore_patterns("lessons"))
        for t in [task] + [COURSE.task(d) for d in task.depends_on]:
            _restore(tree, t)
        return check([task.id], root=tree, jobs=1, log=lambda *a: None)[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(written, [t for t in GRADED if t.id != "5.5"]))
    failing = {r.id: r.feedback[:300] for r in results if r.status != "passed"}
    assert not failing, failing
