"""``bertnp course release OUT``: the student handout, generated from the library itself.

The handout is the project tree (the instructor's *tracked* files only: never caches, build
folders, virtual environments, run folders or version-control history) with

* every library region of the chosen assignments replaced by a stub that raises
  ``NotImplementedError("task 1.3 layernorm_backward: see lessons/01_backprop_by_hand")``, its two
  marker lines kept so the student knows where to write and the grader can find the answer;
* every lesson's ``### BEGIN/END SOLUTION`` regions blanked by nbgrader's ClearSolutions, the
  notebooks regenerated from the blanked sources (no outputs);
* the public grading tests (course/tests/public) and a manifest without the hidden tests;
* none of: course/tests/hidden, course/mutants.toml, the instructor's tests/ and benchmarks/
  (they hold reference implementations), or anything else course.toml's [release] exclude lists.

Before it returns, the release checks its own output: every chosen region is blank and no
non-trivial line of any solution region appears anywhere in the handout (:func:`find_leaks`).
"""
from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

from bertnp.course import manifest as manifest_mod
from bertnp.course.markers import is_lesson, regions_of, replace_regions, stub_lines

ALWAYS_EXCLUDED = ("course/tests/hidden/", "course/mutants.toml")
FORBIDDEN_PARTS = {".git", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".venv", "build", "dist",
                   ".hypothesis", "runs", ".mypy_cache"}


class ReleaseError(RuntimeError):
    """The handout could not be made, or it would leak a solution."""


def tracked_files(root: Path) -> list[str]:
    """The files git tracks in ``root`` (relative paths with '/'), that exist in the work tree."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached"], check=True,
                             capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ReleaseError(f"{root}: not a git work tree (a release copies only tracked files): {exc}") from None
    paths = [p for p in out.decode("utf-8").split("\0") if p]
    return sorted(p for p in paths if (root / p).is_file() and not (root / p).is_symlink())


def _excluded(path: str, patterns) -> bool:
    for pattern in tuple(patterns) + ALWAYS_EXCLUDED:
        if pattern.endswith("/") and path.startswith(pattern):
            return True
        if path == pattern:
            return True
    return False


def lesson_number(path: str) -> str:
    return Path(path).name[:2]


def _load_make_notebooks(root: Path):
    """lessons/make_notebooks.py of the instructor's tree (how every lesson notebook is made)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_bertnp_make_notebooks", root / "lessons" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def handout_manifest(course) -> str:
    """course.toml for students: no hidden tests, no regions' handout code."""
    import tomli_w
    data = json.loads(json.dumps(course.raw))          # a deep copy of plain TOML types
    for assignment in data.get("assignment", []):
        for task in assignment.get("task", []):
            task.pop("hidden", None)
    data.get("release", {}).pop("handout", None)
    header = ("# The course manifest of this handout (made by `bertnp course release`).\n"
              "# `bertnp course check [TASK]` runs a task's public tests; the grader has more.\n\n")
    return header + tomli_w.dumps(data)


def tasks_table(course, tasks, found: dict) -> str:
    """course/TASKS.md: what to write, where, and where it is taught."""
    lines = [f"# {course.title or 'Course'}: your tasks", "",
             "Write each task between its two marker lines (`# TASK ...` and `# END TASK ...`), where",
             "the stub `raise NotImplementedError(...)` stands now. Check yourself with",
             "`bertnp course check TASK` (the public tests; the grader also runs hidden ones).", "",
             "| task | points | what | where to write | taught in |", "|---|---|---|---|---|"]
    for t in tasks:
        where = ", ".join(f"`{a}` (line {found[a].start + 1})" for a in t.regions
                          if a in found and not is_lesson(a.rpartition(":")[0]) and a not in course.handout_code)
        lines.append(f"| {t.id} | {t.points:g} | {t.title} | {where} | {t.lesson} |")
    return "\n".join(lines) + "\n"


def release(out, root=None, assignments=None, force: bool = False, log=print) -> dict:
    """Write the handout to ``out``; returns a summary {files, regions, lessons, tasks}."""
    root = Path(root) if root is not None else Path.cwd()
    course = manifest_mod.load(root)
    out = Path(out)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ReleaseError(f"{out}: the handout must be written outside the project tree {root}")
    if out.exists():
        if not force and any(out.iterdir()):
            raise ReleaseError(f"{out} exists and is not empty (use --force to replace it)")
        shutil.rmtree(out)
    chosen = course.select(assignments=assignments)
    owner = course.region_owner()
    blank = {a: owner[a] for t in chosen for a in t.regions}        # region address -> its task
    files = [p for p in tracked_files(root) if not _excluded(p, course.exclude)]
    make_notebooks = _load_make_notebooks(root)
    lesson_sources = [p for p in files if is_lesson(p)]
    found: dict = {}
    blanked_regions, written = [], 0
    for path in files:
        source, target = root / path, out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path == str(manifest_mod.MANIFEST):
            target.write_text(handout_manifest(course), encoding="utf-8")
        elif is_lesson(path):
            text = source.read_text(encoding="utf-8")
            for region in regions_of(path, text):
                found[region.address] = region
                blanked_regions.append(region.address)
            from bertnp.course.notebooks import blank_lesson_source
            target.write_text(blank_lesson_source(text, lesson_number(path)), encoding="utf-8")
        elif path.endswith(".ipynb") and f"{path[:-6]}.py" in lesson_sources:
            continue                      # written from the blanked source below
        elif path.endswith((".py", ".cu", ".cuh")):
            text = source.read_text(encoding="utf-8")
            regions = regions_of(path, text)
            replacements = {}
            for region in regions:
                found[region.address] = region
                task = blank.get(region.address)
                if task is None:
                    continue
                replacements[region.name] = stub_lines(region, task.stub_message(region.name),
                                                       course.handout_code.get(region.address))
                blanked_regions.append(region.address)
            target.write_text(replace_regions(text, replacements, path) if replacements else text, encoding="utf-8")
        else:
            shutil.copyfile(source, target)
        written += 1
    for path in lesson_sources:
        blanked = out / path
        (out / path).with_suffix(".ipynb").write_text(make_notebooks.build_notebook(blanked), encoding="utf-8")
    (out / "course").mkdir(exist_ok=True)
    (out / "course" / "TASKS.md").write_text(tasks_table(course, chosen, found), encoding="utf-8")
    missing = sorted(a for a in blank if a not in found)
    if missing:
        raise ReleaseError(f"course.toml names regions that the sources do not mark: {missing}")
    # lines that the instructor hands out on purpose (the regions of the assignments not released
    # now: the library's working code) are no leak, even where a blanked lesson region shares them
    given = {a for t in course.tasks if t not in chosen for a in t.regions if a in found and not is_lesson(a.rpartition(":")[0])}
    handed_out = [n for lines in solution_needles(root, sorted(given)).values() for n in lines]
    needles = {address: [n for n in lines if not any(n in line for line in handed_out)]
               for address, lines in solution_needles(root, blanked_regions, generic=course.generic_lines).items()}
    leaks = find_leaks(out, needles)
    if leaks:
        shown = "\n".join(f"  {where}: {line}" for where, line in leaks[:20])
        raise ReleaseError(
            f"the handout in {out} would leak {len(leaks)} solution line(s):\n{shown}\n"
            "Mark each copy of a solution as a region of its task in course.toml (so it is blanked too); "
            "a line that is mere scaffolding (a loop header, a reshape) can be listed under "
            "[release] generic_lines instead.")
    log(f"handout written to {out}: {written} files, {len(blanked_regions)} solution regions blanked "
        f"({len(chosen)} tasks of assignment(s) {sorted({t.assignment for t in chosen})}, "
        f"{len(lesson_sources)} lessons)")
    return {"files": written, "regions": blanked_regions, "lessons": lesson_sources,
            "tasks": [t.id for t in chosen]}


# ------------------------------------------------------------------------------------ leak check

_PURE_NAMES = re.compile(r"^(return\s+)?[\w.]+(\s*,\s*[\w.]+)*\s*,?$")             # return a, b
_UNPACK = re.compile(r"^[\w.]+(\s*,\s*[\w.]+)*\s*=\s*[\w.]+$")                     # a, b = cache
MIN_NEEDLE = 20


def _code_part(line: str, comment: str = "#") -> str:
    """The code of a line without its trailing comment (quotes respected), whitespace collapsed."""
    quote = None
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif line.startswith(comment, i):
            line = line[:i]
            break
        i += 1
    return " ".join(line.split())


def needles_of(lines, comment: str = "#") -> list[str]:
    """The non-trivial code lines of a solution region, normalised (whitespace collapsed).

    Trivial: shorter than 20 characters, a pure return of names (`return dx, dgamma, dbeta`, which
    a lesson keeps outside its region) or a pure unpacking (`x, w, b = cache`)."""
    needles = []
    for line in lines:
        code = _code_part(line, comment)
        if len(code) < MIN_NEEDLE or _PURE_NAMES.match(code) or _UNPACK.match(code):
            continue
        needles.append(code)
    return needles


def solution_needles(root: Path, addresses, generic=()) -> dict[str, list[str]]:
    """{region address: its non-trivial lines} for the given regions of the instructor's tree
    (less the ``generic`` lines: scaffolding that course.toml's [release] generic_lines lists)."""
    generic = set(generic)
    by_file: dict[str, list[str]] = {}
    for address in addresses:
        path, _, name = address.rpartition(":")
        by_file.setdefault(path, []).append(name)
    needles = {}
    for path, names in by_file.items():
        text = (Path(root) / path).read_text(encoding="utf-8")
        lines = text.split("\n")
        regions = {r.name: r for r in regions_of(path, text)}
        for name in names:
            region = regions[name]
            needles[f"{path}:{name}"] = [n for n in needles_of(region.body(lines), region.comment) if n not in generic]
    return needles


def _texts(file: Path):
    """The text(s) a file holds: decompressed if gzip, every string of a notebook's JSON."""
    data = file.read_bytes()
    if file.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except OSError:
            pass
    text = data.decode("utf-8", errors="replace")
    yield text
    if file.suffix == ".ipynb":
        try:
            nb = json.loads(text)
        except ValueError:
            return
        strings: list[str] = []

        def walk(node):
            if isinstance(node, str):
                strings.append(node)
            elif isinstance(node, list):
                for item in node:
                    walk(item)
            elif isinstance(node, dict):
                for key, value in node.items():
                    strings.append(str(key))
                    walk(value)
        walk(nb)
        yield "\n".join(strings)


def find_leaks(handout: Path, needles: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Where a solution line, or a forbidden file, appears in ``handout``: [(file[:line], what)].

    Every file is read (notebooks' JSON strings: sources, outputs, metadata; .gz decompressed);
    a needle matches a whole normalised line anywhere, and also inside a longer line in files
    under 2 MB. Forbidden files: version-control folders, caches, build folders, compiled Python,
    the hidden tests and the mutants."""
    handout = Path(handout)
    leaks: list[tuple[str, str]] = []
    all_needles = {n for lines in needles.values() for n in lines}
    for file in sorted(handout.rglob("*")):
        rel = file.relative_to(handout).as_posix()
        parts = set(rel.split("/"))
        if parts & FORBIDDEN_PARTS or rel.endswith((".pyc", ".pyo")) or ".egg-info" in rel:
            leaks.append((rel, "a file that must not be in a handout (version control, cache or build output)"))
            continue
        if any(rel == p.rstrip("/") or rel.startswith(p) for p in ALWAYS_EXCLUDED):
            leaks.append((rel, "instructor-only material (hidden tests or mutants)"))
            continue
        if not file.is_file() or file.is_symlink():
            continue
        for text in _texts(file):
            lines = [" ".join(line.split()) for line in text.split("\n")]
            line_set = set(lines)
            small = len(text) < 2_000_000
            joined = "\n".join(lines) if small else ""
            for needle in all_needles:
                if needle in line_set or (small and needle in joined):
                    number = next((i + 1 for i, line in enumerate(lines) if needle in line), 0)
                    leaks.append((f"{rel}:{number}", needle))
    return sorted(set(leaks))
