"""The course website's configuration (`make book`; building it is not part of `make test`): the
Jupyter Book config and table of contents parse, the table of contents takes every lesson, and the
intro page's include of lessons/README.md finds its markers."""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
LESSON_SOURCES = sorted(p for p in (ROOT / "lessons").glob("*.py") if re.match(r"^\d\d_[a-z0-9_]+\.py$", p.name))


def _load(name: str) -> dict:
    loaded = yaml.safe_load((BOOK / name).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), f"book/{name} is not a YAML mapping: {loaded!r}"
    return loaded


def _toc_entries(node) -> tuple[list[str], list[str]]:
    """(files, globs) anywhere in a jb-book table of contents (parts, chapters, sections)."""
    files, globs = [], []
    if isinstance(node, dict):
        if "file" in node:
            files.append(str(node["file"]))
        if "glob" in node:
            globs.append(str(node["glob"]))
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []):
                f, g = _toc_entries(child)
                files += f
                globs += g
    return files, globs


def _listed(docname: str, files: list[str], globs: list[str]) -> bool:
    """Whether the table of contents takes the document (Sphinx's glob: `*` stops at a `/`)."""
    return docname in files or any(fnmatch.fnmatchcase(docname, g) and docname.count("/") == g.count("/")
                                   for g in globs)


def test_config_parses_and_builds_from_the_executed_lessons():
    config = _load("_config.yml")
    assert config["title"], "book/_config.yml needs a title"
    # make book executes each lesson in full mode (with a time limit) before jupyter-book runs: the
    # book must not execute them again (in its own mode, with its 30 s per-cell default timeout)
    assert config["execute"]["execute_notebooks"] == "off", config["execute"]
    assert config["only_build_toc_files"] is True, "pages outside the table of contents must not be built"


def test_table_of_contents_takes_every_lesson():
    toc = _load("_toc.yml")
    assert toc["format"] == "jb-book", toc
    assert (BOOK / f"{toc['root']}.md").is_file(), f"the root page book/{toc['root']}.md is missing"
    files, globs = _toc_entries(toc)
    assert LESSON_SOURCES, "no lesson sources found"
    # make book executes lessons/NN_name.ipynb (generated from NN_name.py) into book/lessons/
    missing = [p.name for p in LESSON_SOURCES if not _listed(f"lessons/{p.stem}", files, globs)]
    assert not missing, f"book/_toc.yml does not take the lessons {missing} (as book/lessons/NN_name.ipynb)"
    # and nothing else: the intro page is not a lesson, a helper script is not a page
    assert not _listed("lessons/make_notebooks", files, globs) and not _listed("lessons/README", files, globs)


def test_table_of_contents_check_would_catch_a_forgotten_lesson():
    """The check above fails for a table of contents that lists files one by one and misses one."""
    files = [f"lessons/{p.stem}" for p in LESSON_SOURCES[:-1]]
    assert not _listed(f"lessons/{LESSON_SOURCES[-1].stem}", files, [])
    assert not _listed("lessons/16_data_parallelism", [], ["lessons/0[0-9]_*"])


def test_makefile_executes_into_the_folder_the_toc_reads():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"(?m)^book:", makefile), "the Makefile has no `book` target"
    assert "book/lessons/%.ipynb: lessons/%.ipynb" in makefile, "make book no longer executes into book/lessons/"
    assert "env -u BERTNP_LESSONS_FAST" in makefile, "make book must execute the lessons in full mode"


def test_intro_includes_the_lessons_readme_overview():
    intro = (BOOK / "intro.md").read_text(encoding="utf-8")
    include = re.search(r"```\{include\} (\S+)\n((?::\S+: .*\n)*)```", intro)
    assert include, "book/intro.md no longer includes lessons/README.md's overview"
    readme = (BOOK / include.group(1)).resolve()
    assert readme == ROOT / "lessons" / "README.md", readme
    text = readme.read_text(encoding="utf-8")
    for marker in re.findall(r':end-before: "(.+)"', include.group(2)):
        assert marker in text, f"lessons/README.md lost the heading {marker!r} that book/intro.md's include stops at"
