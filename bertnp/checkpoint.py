"""Saving and loading tensors and JSON, safely.

* Tensors are stored with safetensors (a flat, documented format: a JSON header and raw bytes),
  never pickle -- loading a checkpoint cannot run code.
* Every write is atomic: the bytes go to a temporary file in the same folder, are flushed to disk,
  and the temporary file is renamed over the target. A run killed mid-write leaves the previous
  file intact (rename is atomic on POSIX and Windows).
* Errors name the file: a missing file is a FileNotFoundError, a corrupt one a ValueError.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from bertnp import backend


def atomic_write(path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then atomically move it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:   # make sure the bytes are on disk before the rename
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save_tensors(path, tensors: Mapping[str, object], metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``{name: array}`` (any backend) to a safetensors file, atomically.

    ``metadata`` defaults to ``{"format": "pt"}``, which Hugging Face transformers expects."""
    from safetensors.numpy import save_file

    host = {}
    for name, array in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got {name!r}")
        host[name] = np.ascontiguousarray(backend.to_host(array))
    meta = {"format": "pt"} if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    return atomic_write(path, lambda tmp: save_file(host, tmp, metadata=meta))


def load_tensors(path) -> dict:
    """Read a safetensors file into ``{name: numpy array}`` with errors that name the file."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError / OSError on bad headers or sizes
        raise ValueError(f"{path}: not a valid safetensors file ({exc})") from exc


def tensors_metadata(path) -> dict:
    """The ``__metadata__`` strings of a safetensors file (empty dict if none)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:
        raise ValueError(f"{path}: not a valid safetensors file ({exc})") from exc


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
    return atomic_write(path, write)


def read_json(path) -> dict:
    """Read a JSON file; FileNotFoundError or ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
