"""The READMEs run as written: every code block of README.md, examples/README.md and
lessons/README.md is executed, in order, the way a reader runs it.

Parsing and namespaces are Sybil's (https://sybil.readthedocs.io): its Markdown lexers find the
fenced blocks and the ``<!-- ... -->`` directives, and Python blocks of one file share a namespace
as they would in one interpreter session. Sybil was chosen over pytest-markdown-docs because the
READMEs are mostly shell commands: Sybil takes a parser per block language (the shell evaluator
below is eight lines), and its documents can be evaluated from an ordinary test function, so each
file's blocks run in order in one pytest-xdist worker; pytest-markdown-docs runs Python fences only.

How a block is run (the convention README.md describes under "How the READMEs are tested"):

* Each file runs in a fresh copy of the repository (the files git tracks; the copy's ``.venv`` is
  a link to this checkout's), as a fresh clone after ``make test`` / ``make demo`` would be.
* ``python`` blocks run in one namespace per file, with the copy as the working directory.
* ``bash`` / ``sh`` blocks run in ``bash`` from the copy's root, after ``source .venv/bin/activate``
  -- what README.md tells the reader to do first -- with this process's own environment stripped of
  any virtual environment (so a command that only works with the test's interpreter fails here).
  ``set -euo pipefail``: any failing line fails the block.
* ``<!-- test-cheaply: OLD => NEW; ... -->`` just before a block replaces each ``OLD`` (literal
  text, which must occur in the block) by ``NEW`` for the test: a shorter time budget, fewer steps,
  a version check instead of a server. Nothing is skipped: the cheap form runs.
* ``text`` blocks are shown, not run. A fence without a language, or in any other language, fails
  the test, so a new block cannot be left unrun by accident.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, FencedCodeBlockLexer

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "examples/README.md", "lessons/README.md"]
RUN = ("python", "bash", "sh")
SHOW = ("text",)
BLOCK_TIMEOUT = 600                          # seconds a block may take (its cheap form: far less)
CHEAP_KEY = "_test_cheaply"                  # the namespace slot a directive leaves for the next block


# ============================================================================ the parsers

def _apply_cheap_form(example) -> str:
    """The block's source with the pending ``test-cheaply`` replacements made (each must match)."""
    source = str(example.parsed)
    for old, new in example.namespace.pop(CHEAP_KEY, []):
        if old not in source:
            raise AssertionError(f"{example.path}, line {example.line}: 'test-cheaply' replaces {old!r}, "
                                 "which the block does not contain")
        source = source.replace(old, new)
    return source


def _run_python(example) -> None:
    source = _apply_cheap_form(example)
    # blank lines in front: a traceback names the README's own line numbers
    exec(compile("\n" * example.line + source, example.path, "exec"), example.namespace)


def _run_shell(example) -> None:
    source = _apply_cheap_form(example)
    workspace = example.namespace["__workspace__"]
    script = "source .venv/bin/activate\nset -euo pipefail\n" + source
    done = subprocess.run(["bash", "-c", script], cwd=workspace, env=_reader_environment(),
                          capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    if done.returncode != 0:
        raise AssertionError(f"{example.path}, line {example.line}: the block exited with {done.returncode}\n"
                             f"--- block as run ---\n{source}\n--- stdout (end) ---\n{done.stdout[-3000:]}\n"
                             f"--- stderr (end) ---\n{done.stderr[-3000:]}")


def _cheap_directive(document):
    """``<!-- test-cheaply: OLD => NEW; OLD2 => NEW2 -->``: remember the replacements for the next block."""
    for region in DirectiveInHTMLCommentLexer(directive="test-cheaply", arguments=".+?")(document):
        pairs = []
        for part in region.lexemes["arguments"].split(";"):
            old, sep, new = part.partition("=>")
            if not sep or not old.strip():
                raise ValueError(f"{document.path}: 'test-cheaply' needs 'OLD => NEW', got {part!r}")
            pairs.append((old.strip(), new.strip()))

        def remember(example, pairs=pairs):
            if example.namespace.get(CHEAP_KEY):
                raise AssertionError(f"{example.path}, line {example.line}: a 'test-cheaply' directive "
                                     "without a block after it")
            example.namespace[CHEAP_KEY] = pairs
        region.parsed, region.evaluator = pairs, remember
        yield region


SYBIL = Sybil(parsers=[CodeBlockParser("python", _run_python), CodeBlockParser("bash", _run_shell),
                       CodeBlockParser("sh", _run_shell), _cheap_directive])


# ============================================================================ the reader's machine

def _reader_environment() -> dict:
    """This process's environment less any virtual environment: the block activates the copy's."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not p.rstrip("/").endswith(("/.venv/bin", venv_bin)))
    env["MPLBACKEND"] = "Agg"
    return env


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        return [f for f in out.stdout.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):              # not a git checkout: everything
        skip = {".venv", "runs", ".git", ".pytest_cache", ".hypothesis"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not (set(p.relative_to(ROOT).parts) & skip) and "__pycache__" not in p.parts]


def _fresh_clone(target: Path) -> Path:
    """The tracked files copied (modification times kept, so `make` sees the install as fresh) and
    ``.venv`` linked to this checkout's."""
    for name in _tracked_files():
        src = ROOT / name
        if src.is_file():
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    (target / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    return target


# ============================================================================ the tests

def _fences(path: Path):
    """(line, language) of every fenced block in the file, Sybil's lexer's view."""
    from sybil import Document
    document = Document(path.read_text(encoding="utf-8"), str(path))
    for region in FencedCodeBlockLexer(language=r"[^\n]*")(document):
        yield document.text.count("\n", 0, region.start) + 1, region.lexemes["language"].strip()


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_block_is_run_or_marked_text(name):
    unknown = [(line, lang) for line, lang in _fences(ROOT / name) if lang not in RUN + SHOW]
    assert not unknown, (f"{name}: fenced blocks at lines {unknown} have no language this test runs "
                         f"({', '.join(RUN)}) or shows ({', '.join(SHOW)}): label each one")


@pytest.mark.slow
@pytest.mark.parametrize("name", DOCUMENTS)
def test_readme_runs_as_written(name, tmp_path, monkeypatch):
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        pytest.fail("no .venv in the checkout: the READMEs' commands run in it (make install)")
    stamp = ROOT / ".venv" / ".bertnp-installed"
    newest = max((ROOT / f).stat().st_mtime for f in ("setup.cfg", "pyproject.toml"))
    if not stamp.is_file() or stamp.stat().st_mtime < newest:
        pytest.fail("the .venv install is older than setup.cfg: run `make install` first "
                    "(a copy's `make` would otherwise reinstall the package from the copy)")
    workspace = _fresh_clone(tmp_path / "clone")
    monkeypatch.chdir(workspace)
    document = SYBIL.parse(workspace / name)
    document.namespace["__workspace__"] = workspace
    examples = list(document)
    assert any(e.region.evaluator in (_run_python, _run_shell) for e in examples), f"{name}: no code block found"
    for example in examples:
        example.evaluate()
    assert not document.namespace.get(CHEAP_KEY), f"{name}: a 'test-cheaply' directive at the end, with no block"


def test_cheap_form_must_match_its_block(tmp_path):
    """A directive whose OLD text is not in the block fails, rather than running the long form."""
    md = tmp_path / "x.md"
    md.write_text("<!-- test-cheaply: --steps 1000 => --steps 2 -->\n```python\nx = 1\n```\n", encoding="utf-8")
    document = SYBIL.parse(md)
    document.namespace["__workspace__"] = tmp_path
    examples = list(document)
    assert len(examples) == 2
    examples[0].evaluate()
    with pytest.raises(AssertionError, match="does not contain"):
        examples[1].evaluate()


def test_unlabelled_fence_is_reported(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n\n```\nbertnp pretrain\n```\n\n```console\n$ ls\n```\n", encoding="utf-8")
    assert [lang for _, lang in _fences(md)] == ["", "console"]


def test_shell_block_runs_in_the_activated_venv(tmp_path):
    """A shell block sees the copy's .venv first on PATH, not the test's own interpreter."""
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    md = clone / "x.md"
    md.write_text("```bash\ncommand -v bertnp > where.txt\nfalse_command_that_does_not_exist\n```\n",
                  encoding="utf-8")
    document = SYBIL.parse(md)
    document.namespace["__workspace__"] = clone
    with pytest.raises(AssertionError, match="exited with 127"):
        for example in document:
            example.evaluate()
    assert re.search(r"\.venv/bin/bertnp$", (clone / "where.txt").read_text().strip())
