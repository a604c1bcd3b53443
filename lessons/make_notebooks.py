"""Make the lesson notebooks from their text sources.

Each lesson is written and reviewed as one text file, ``lessons/NN_name.py`` in jupytext's
percent format (``# %%`` starts a code cell, ``# %% [markdown]`` a Markdown cell, tags as in
``# %% tags=["exercise"]``). The ``.ipynb`` next to it is generated from it -- without outputs,
with stable cell ids and minimal metadata -- so a review diff shows only real changes::

    python lessons/make_notebooks.py            # rewrite every notebook from its source
    python lessons/make_notebooks.py 05 06      # only lessons whose file name starts so
    python lessons/make_notebooks.py --check    # exit 1 if a notebook differs from its source

Edit the ``.py``, never the ``.ipynb`` (or, in Jupyter with jupytext installed, open the pair and
let jupytext update the ``.py``; then run this script before committing).
``tests/test_lessons.py`` fails when a notebook and its source disagree.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
LESSON_NAME = re.compile(r"^\d\d_[a-z0-9_]+\.py$")

# The notebook's metadata: a plain Python 3 kernel, and the pairing that lets jupytext (if
# installed in Jupyter) keep the .py source in step when the notebook is edited and saved.
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
JUPYTEXT = {"formats": "ipynb,py:percent"}


def lesson_sources(prefixes=()) -> list[Path]:
    """The lesson sources ``NN_name.py`` in this folder, in order (optionally filtered)."""
    sources = sorted(p for p in HERE.glob("*.py") if LESSON_NAME.match(p.name))
    if prefixes:
        sources = [p for p in sources if p.name.startswith(tuple(prefixes))]
    return sources


def build_notebook(source: Path) -> str:
    """The notebook text generated from one source: no outputs, ids ``NN-iii``, stable metadata."""
    nb = jupytext.read(source, fmt="py:percent")
    lesson = source.name[:2]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{lesson}-{i:03d}"
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell["metadata"] = {k: v for k, v in cell["metadata"].items() if k == "tags"}
    nb.metadata = {"jupytext": dict(JUPYTEXT), "kernelspec": dict(KERNELSPEC),
                   "language_info": {"name": "python"}}
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", help="file-name prefixes, e.g. 05 06 (default: all)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args(argv)
    sources = lesson_sources(args.lessons)
    if not sources:
        print(f"no lesson sources match {args.lessons}", file=sys.stderr)
        return 2
    stale = []
    for source in sources:
        notebook = source.with_suffix(".ipynb")
        text = build_notebook(source)
        current = notebook.read_text(encoding="utf-8") if notebook.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(notebook.name)
        else:
            notebook.write_text(text, encoding="utf-8")
            print(f"wrote {notebook.relative_to(HERE.parent)}")
    if stale:
        print("out of date (run python lessons/make_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
