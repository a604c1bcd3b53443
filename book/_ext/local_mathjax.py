"""Serve MathJax from the built site itself, so the book's math renders without the internet.

Sphinx loads MathJax 3 from a CDN by default: a book opened from disk on a machine offline then
shows raw TeX. The ``book`` extra installs MathJax 3.2.2 from PyPI (the package django-static-mathjax
holds its distribution files and needs nothing else); this extension copies the part a page loads
(the ``tex-mml-chtml.js`` bundle and the extensions, fonts and speech files it fetches on demand)
into ``_static/mathjax/`` of the HTML output, and ``_config.yml`` points ``mathjax_path`` there.
"""
from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

BUNDLE = "tex-mml-chtml.js"


def _mathjax_es5() -> Path:
    try:
        es5 = Path(str(importlib.resources.files("mathjax"))) / "static" / "mathjax" / "es5"
    except ModuleNotFoundError:
        es5 = None
    if es5 is None or not (es5 / BUNDLE).is_file():
        raise FileNotFoundError("MathJax is not installed: pip install -e '.[book]' (or make book) installs it "
                                "(the PyPI package django-static-mathjax)")
    return es5


def _copy_mathjax(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    es5 = _mathjax_es5()
    target = Path(app.outdir) / "_static" / "mathjax"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(es5 / BUNDLE, target / BUNDLE)
    for folder in (p for p in es5.iterdir() if p.is_dir()):   # input/, output/, a11y/, sre/, ui/, ...
        shutil.copytree(folder, target / folder.name, dirs_exist_ok=True)


def setup(app):
    _mathjax_es5()                       # fail at the start of the build, not after it
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
