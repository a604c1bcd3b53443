"""Solution regions: where they are, how they are blanked, how a submission's are spliced.

Library sources mark each region a student writes with two comment lines that read naturally
(shown here behind a bar, so that this docstring holds no marker itself)::

    | def layernorm_backward(dout, cache):
    |     '''dout: (..., C) -> (dx, dgamma, dbeta).'''
    |     # TASK 1.3 layernorm_backward: dx, dgamma, dbeta (lesson 01)
    |     ...the solution...
    |     # END TASK 1.3

(``//`` instead of ``#`` in CUDA sources). The name after the task id tells two regions of one
task apart; the text after the colon is for the reader. Lesson sources use nbgrader's delimiters,
``### BEGIN SOLUTION`` / ``### END SOLUTION``, inside an exercise cell's function; such a region is
named after that function (``lessons/05_embeddings_residuals.py:my_embedding_backward``).

A region is addressed as ``path:name``. The release replaces a library region's body by a stub at
the marker's indentation and keeps the two marker lines, so the student writes between them and
the grader can later take the student's body out again (:func:`splice`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# '# TASK 1.3 layernorm_backward: free text'   and   '# END TASK 1.3' (optionally the name again)
START = re.compile(r"^(?P<indent>[ \t]*)(?P<comment>#|//) TASK (?P<task>\d+\.\d+) (?P<name>[A-Za-z_][\w.]*)(?::.*)?$")
END = re.compile(r"^[ \t]*(?:#|//) END TASK (?P<task>\d+\.\d+)(?: (?P<name>[A-Za-z_][\w.]*))?[ \t]*$")
LESSON_BEGIN = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION\b")
LESSON_END = re.compile(r"^[ \t]*### END SOLUTION\b")
DEF = re.compile(r"^(?P<indent>[ \t]*)def (?P<name>[A-Za-z_]\w*)\s*\(")
LIBRARY_SUFFIXES = (".py", ".cu", ".cuh")


class MarkerError(ValueError):
    """Markers that do not pair up, nest, or repeat a region's address."""


@dataclass(frozen=True)
class Region:
    path: str          # relative to the tree's root, with '/'
    name: str          # the name after the task id (library) or the enclosing function (lessons)
    task: str | None   # '1.3' for library markers; None for a lesson region (the manifest maps it)
    start: int         # 0-based index of the opening marker line
    end: int           # 0-based index of the closing marker line
    indent: str        # the opening marker's indentation: the stub's
    comment: str       # '#' or '//'

    @property
    def address(self) -> str:
        return f"{self.path}:{self.name}"

    def body(self, lines: list[str]) -> list[str]:
        """The region's lines between its two markers."""
        return lines[self.start + 1:self.end]


def library_regions(path: str, text: str) -> list[Region]:
    """The ``TASK`` regions of one library source, in order."""
    regions, open_region = [], None
    for i, line in enumerate(text.split("\n")):
        start, end = START.match(line), END.match(line)
        if start:
            if open_region is not None:
                raise MarkerError(f"{path}:{i + 1}: TASK {start['task']} opens inside TASK "
                                  f"{open_region['task']} (line {open_region['line'] + 1}); regions do not nest")
            open_region = {**start.groupdict(), "line": i}
        elif end:
            if open_region is None:
                raise MarkerError(f"{path}:{i + 1}: END TASK {end['task']} without an opening TASK line")
            if end["task"] != open_region["task"] or end["name"] not in (None, open_region["name"]):
                raise MarkerError(f"{path}:{i + 1}: END TASK {end['task']} closes TASK "
                                  f"{open_region['task']} {open_region['name']} (line {open_region['line'] + 1})")
            regions.append(Region(path, open_region["name"], open_region["task"], open_region["line"], i,
                                  open_region["indent"], open_region["comment"]))
            open_region = None
    if open_region is not None:
        raise MarkerError(f"{path}:{open_region['line'] + 1}: TASK {open_region['task']} "
                          f"{open_region['name']} is never closed (END TASK {open_region['task']})")
    _no_repeats(path, regions)
    return regions


def lesson_regions(path: str, text: str) -> list[Region]:
    """The ``### BEGIN/END SOLUTION`` regions of one lesson source, named by their function."""
    lines = text.split("\n")
    regions, open_line, functions = [], None, []     # functions: stack of (indent, name)
    for i, line in enumerate(lines):
        if LESSON_BEGIN.match(line):
            if open_line is not None:
                raise MarkerError(f"{path}:{i + 1}: BEGIN SOLUTION inside the region of line {open_line + 1}")
            open_line = i
            continue
        if LESSON_END.match(line):
            if open_line is None:
                raise MarkerError(f"{path}:{i + 1}: END SOLUTION without BEGIN SOLUTION")
            indent = LESSON_BEGIN.match(lines[open_line])["indent"]
            owner = [name for def_indent, name in functions if len(def_indent) < len(indent)]
            name = owner[-1] if owner else f"line{open_line + 1}"
            regions.append(Region(path, name, None, open_line, i, indent, "#"))
            open_line = None
            continue
        definition = DEF.match(line)
        if definition and open_line is None:
            depth = len(definition["indent"])
            functions = [(d, n) for d, n in functions if len(d) < depth] + [(definition["indent"], definition["name"])]
    if open_line is not None:
        raise MarkerError(f"{path}:{open_line + 1}: BEGIN SOLUTION is never closed")
    # a function with two regions: name them name, name#2, ...
    seen: dict[str, int] = {}
    named = []
    for r in regions:
        seen[r.name] = seen.get(r.name, 0) + 1
        named.append(r if seen[r.name] == 1 else Region(r.path, f"{r.name}#{seen[r.name]}", None, r.start,
                                                         r.end, r.indent, r.comment))
    return named


def _no_repeats(path: str, regions: list[Region]) -> None:
    names = [r.name for r in regions]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MarkerError(f"{path}: region name(s) {repeated} used more than once")


def is_lesson(path: str) -> bool:
    """A lesson source: ``lessons/NN_name.py``."""
    return re.fullmatch(r"lessons/\d\d_[a-z0-9_]+\.py", path) is not None


def regions_of(path: str, text: str) -> list[Region]:
    """The solution regions of one file (lesson or library), [] for other files."""
    if is_lesson(path):
        return lesson_regions(path, text)
    if path.endswith(LIBRARY_SUFFIXES) and "TASK " in text:
        return library_regions(path, text)
    return []


def scan(root: Path, paths) -> dict[str, Region]:
    """Every region in the given files of ``root``, by address."""
    found: dict[str, Region] = {}
    for path in paths:
        file = Path(root) / path
        if not file.is_file() or not (path.endswith(LIBRARY_SUFFIXES)):
            continue
        for region in regions_of(path, file.read_text(encoding="utf-8")):
            found[region.address] = region
    return found


def stub_lines(region: Region, message: str, handout: str | None = None) -> list[str]:
    """What replaces a region's body in a handout: ``handout`` code if given (a region whose
    handout version delegates to the student's own code), else a stub naming the task."""
    if handout is not None:
        return [region.indent + line if line.strip() else "" for line in handout.strip("\n").split("\n")]
    if region.comment == "//":          # CUDA: the kernel does nothing; the check names the task
        return [f"{region.indent}// {message}"]
    return [f"{region.indent}raise NotImplementedError({message!r})"]


def replace_regions(text: str, replacements: dict[str, list[str]], path: str) -> str:
    """``text`` with the body of each region named in ``replacements`` (by name) replaced."""
    lines = text.split("\n")
    regions = {r.name: r for r in regions_of(path, text)}
    missing = sorted(set(replacements) - set(regions))
    if missing:
        raise MarkerError(f"{path}: no region named {missing} (found {sorted(regions)})")
    for name in sorted(replacements, key=lambda n: regions[n].start, reverse=True):
        region = regions[name]
        lines[region.start + 1:region.end] = replacements[name]
    return "\n".join(lines)


def splice(submission_text: str, instructor_text: str, path: str, keep: set[str]) -> tuple[str, list[str]]:
    """The submission's file with every region whose name is NOT in ``keep`` taken from the
    instructor's file. Returns (text, warnings): a region the submission lost its markers for
    stays as the submission has it, with a warning."""
    instructor_lines = instructor_text.split("\n")
    theirs = {r.name: r for r in regions_of(path, instructor_text)}
    try:
        mine = {r.name: r for r in regions_of(path, submission_text)}
    except MarkerError as exc:
        return submission_text, [f"{exc}: the file is graded as submitted"]
    warnings, replacements = [], {}
    for name, region in theirs.items():
        if name in keep:
            continue
        if name not in mine:
            warnings.append(f"{path}: the markers of region {name} are missing; graded as submitted")
            continue
        replacements[name] = region.body(instructor_lines)
    return (replace_regions(submission_text, replacements, path) if replacements else submission_text), warnings
