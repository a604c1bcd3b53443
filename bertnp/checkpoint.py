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
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes 0600 files: give the usual permissions
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    """Read a safetensors file into ``{name: numpy array}`` with errors that name the file.

    NumPy has no bfloat16, so safetensors' NumPy API cannot return the BF16 tensors that some
    published checkpoints hold: those are widened to float32 here (exactly: a bfloat16 is the top
    16 bits of a float32)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:   # safe_open checks the header: valid JSON, offsets inside the file and covering it
        with safe_open(str(path), framework="numpy") as handle:
            out, bf16 = {}, []
            for name in handle.keys():
                if handle.get_slice(name).get_dtype() == "BF16":
                    bf16.append(name)
                else:
                    out[name] = handle.get_tensor(name)
    except Exception as exc:  # safetensors raises SafetensorError / OSError on bad headers or sizes
        raise ValueError(f"{path}: not a valid safetensors file ({exc})") from exc
    if bf16:
        out.update(_read_bf16_as_float32(path, bf16))
    return out


def _read_bf16_as_float32(path: Path, names) -> dict:
    """The BF16 tensors ``names`` of a safetensors file (already validated by safe_open), as float32."""
    with open(path, "rb") as handle:
        (header_len,) = np.frombuffer(handle.read(8), dtype="<u8")
        header = json.loads(handle.read(int(header_len)))
        base = 8 + int(header_len)
        out = {}
        for name in names:
            info = header[name]
            start, end = info["data_offsets"]
            handle.seek(base + start)
            bits = np.frombuffer(handle.read(end - start), dtype="<u2")          # (n,) raw bfloat16
            wide = (bits.astype(np.uint32) << 16).view(np.float32)              # the float32 with those top bits
            out[name] = wide.reshape(info["shape"])
    return out


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


# ----------------------------------------------------------------------------- whole directories

def atomic_directory(path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` to fill a fresh temporary folder, then rename it to ``path``.

    A checkpoint is several files (model, optimizer, trainer state) that must belong together:
    each file written atomically is not enough, since a crash between two files would mix an old
    optimizer with a new model. The folder appears under its final name only once every file in
    it is complete and on disk; a crash before that leaves a ``.name.*.tmp`` folder (removed
    here on errors, ignored by readers) and the previous checkpoints untouched. An existing
    ``path`` is replaced (moved aside first, then deleted).
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())     # mkdtemp makes 0700 folders
        write(tmp)
        for child in tmp.rglob("*"):          # every byte on disk before the folder is published
            if child.is_file():
                with open(child, "rb+") as handle:
                    os.fsync(handle.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old.{os.getpid()}.tmp"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _fsync_dir(path) -> None:
    """Flush a folder's entries (the rename) to disk where the OS allows it (POSIX)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- optimizer state

def save_optimizer(path, optimizer) -> Path:
    """Write an optimizer's ``state_dict()`` to one safetensors file, atomically.

    Tensors are stored as ``exp_avg/<name>`` and ``exp_avg_sq/<name>``; the step count and the
    hyperparameters go into the file's metadata as JSON (no pickle anywhere)."""
    state = optimizer.state_dict()
    tensors = {}
    for key in ("exp_avg", "exp_avg_sq"):
        for name, array in state[key].items():
            tensors[f"{key}/{name}"] = array
    meta = {"format": "bertnp-optimizer",
            "state": json.dumps({k: v for k, v in state.items() if k not in ("exp_avg", "exp_avg_sq")})}
    return save_tensors(path, tensors, metadata=meta)


def load_optimizer(path, optimizer) -> None:
    """Restore an optimizer from :func:`save_optimizer`'s file (errors name the file)."""
    path = Path(path)
    tensors = load_tensors(path)
    meta = tensors_metadata(path)
    try:
        state = json.loads(meta["state"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a bertnp optimizer file (no valid 'state' metadata)") from exc
    for key in ("exp_avg", "exp_avg_sq"):
        state[key] = {name[len(key) + 1:]: array for name, array in tensors.items()
                      if name.startswith(key + "/")}
    try:
        optimizer.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
