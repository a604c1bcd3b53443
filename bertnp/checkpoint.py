"""Saving and loading tensors and JSON, safely.

* Tensors are stored with safetensors (a flat, documented format: a JSON header and raw bytes),
  never pickle -- loading a checkpoint cannot run code.
* Every write is atomic: the bytes go to a temporary file in the same folder, are flushed to disk,
  and the temporary file is renamed over the target. A run killed mid-write leaves the previous
  file intact (rename is atomic on POSIX and Windows).
* Errors name the file: a missing file is a FileNotFoundError, an unreadable one a
  PermissionError, a corrupt one a ValueError.

The second half is a training run's checkpoints, shared by pretraining (``bertnp.train``) and
fine-tuning (``bertnp.finetune``)::

    checkpoints/step-000400/   model.safetensors + config.json, optimizer.safetensors, trainer_state.json
    checkpoints/latest.json    {"step": 400, "dir": "step-000400"}: written last, atomically

A checkpoint folder is written under a temporary name and renamed when complete, and
``latest.json`` is replaced atomically after it, so a run killed at any moment leaves the previous
checkpoint whole; the temporary leftovers of a killed write are removed at the next start.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
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
        # mkstemp makes 0600 files, and a writer may replace the file (safetensors does): give the
        # finished file the usual permissions, those of open() under the process's umask
        os.chmod(tmp, 0o666 & ~_umask())
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

    path = _readable(path)
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


def _readable(path) -> Path:
    """``path`` as a Path, or FileNotFoundError / PermissionError naming it (safetensors would
    call an unreadable file "not valid")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, "rb"):
            pass
    except PermissionError as exc:
        raise PermissionError(f"{path}: permission denied: the file cannot be read by this user") from exc
    return path


def tensor_shapes(path) -> dict:
    """``{name: shape}`` of a safetensors file, from its header alone (no tensor is read)."""
    from safetensors import safe_open

    path = _readable(path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as exc:
        raise ValueError(f"{path}: not a valid safetensors file ({exc})") from exc


def tensors_metadata(path) -> dict:
    """The ``__metadata__`` strings of a safetensors file (empty dict if none)."""
    from safetensors import safe_open

    path = _readable(path)
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
    """Read a JSON file; FileNotFoundError, PermissionError or ValueError naming the file."""
    path = _readable(path)
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


# ----------------------------------------------------------------------------- a training run's checkpoints

STATE_VERSION = 1
POINTER = "latest.json"
STATE_FILE = "trainer_state.json"
_STEP_FOLDER = re.compile(r"step-(\d{6,})")


class DiskFullError(OSError):
    """A checkpoint did not fit on the disk (the previous checkpoint is intact)."""


def step_folder_name(step: int) -> str:
    return f"step-{step:06d}"


def remove_temporary(folder) -> list:
    """Delete what a killed atomic write leaves in ``folder``: the ``.NAME.XXXXXXXX.tmp`` files
    and folders of :func:`atomic_write` / :func:`atomic_directory` (a checkpoint's
    ``.step-000400.*.tmp``) and the ``.NAME.old.PID.tmp`` folder a replacement moves aside.
    Returns the names removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def latest_checkpoint(out_dir) -> Path | None:
    """The newest complete checkpoint folder of a run, or None when there is none.

    ``checkpoints/latest.json`` names it; without a pointer (or when the folder it names is gone)
    the highest complete ``step-*`` folder. A damaged pointer is a ValueError naming the file and
    the field; it may only name a ``step-NNNNNN`` folder of this run's ``checkpoints/``."""
    ckdir = Path(out_dir) / "checkpoints"
    pointer = ckdir / POINTER
    if pointer.is_file():
        info = read_json(pointer)
        if not isinstance(info, dict):
            raise ValueError(f"{pointer}: expected a JSON object {{\"step\": N, \"dir\": \"step-NNNNNN\"}}, "
                             f"got {type(info).__name__}")
        for key in ("step", "dir"):
            if key not in info:
                raise ValueError(f"{pointer}: field '{key}' is missing")
        name, step = info["dir"], info["step"]
        if not isinstance(name, str) or not _STEP_FOLDER.fullmatch(name):
            raise ValueError(f"{pointer}: field 'dir' must name a step-NNNNNN folder inside '{ckdir}', "
                             f"got {name!r}")
        if isinstance(step, bool) or not isinstance(step, int) or step != int(name[5:]):
            raise ValueError(f"{pointer}: field 'step' must be the integer {int(name[5:])} of folder "
                             f"'{name}', got {step!r}")
        if _complete(ckdir / name):
            return ckdir / name
    # no pointer (or it names a folder that is gone): the highest complete step folder
    done = sorted(p for p in ckdir.glob("step-*") if _STEP_FOLDER.fullmatch(p.name) and _complete(p))
    return done[-1] if done else None


def checkpoint_step(path) -> int:
    """The step of a ``step-NNNNNN`` checkpoint folder."""
    match = _STEP_FOLDER.fullmatch(Path(path).name)
    if not match:
        raise ValueError(f"'{path}' is not a step-NNNNNN checkpoint folder")
    return int(match.group(1))


def save_checkpoint(out_dir, step: int, model, optimizer, state: dict, keep: int = 2) -> Path:
    """Write ``checkpoints/step-NNNNNN`` (model in HF layout, optimizer, ``trainer_state.json``
    holding ``state``) atomically, point ``latest.json`` at it, and delete the step folders
    beyond the newest ``keep``. A full disk is a one-line :class:`DiskFullError` naming the
    folder and the space needed; the previous checkpoint is left intact and the partial files
    removed."""
    ckdir = Path(out_dir) / "checkpoints"
    name = step_folder_name(step)

    def write(tmp: Path):
        model.save_pretrained(tmp)
        save_optimizer(tmp / "optimizer.safetensors", optimizer)
        write_json(tmp / STATE_FILE, state)
    try:
        path = atomic_directory(ckdir / name, write)
        write_json(ckdir / POINTER, {"step": step, "dir": name})
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise
        remove_temporary(ckdir)
        need = _checkpoint_bytes(model, optimizer)
        free = shutil.disk_usage(ckdir).free if ckdir.is_dir() else 0
        error = DiskFullError(f"no space left on the disk of '{ckdir}' for the checkpoint of step {step}: "
                              f"it needs about {_megabytes(need)}, {_megabytes(free)} are free "
                              "(free some space, or give another --out)")
        error.errno = exc.errno
        raise error from None
    done = sorted(p for p in ckdir.glob("step-*") if p.is_dir() and _STEP_FOLDER.fullmatch(p.name))
    for old in done[:-keep]:
        if old != path:
            shutil.rmtree(old, ignore_errors=True)
    return path


def _checkpoint_bytes(model, optimizer) -> int:
    weights = sum(int(p.nbytes) for p in model.parameters().values())
    moments = sum(int(a.nbytes) for key in ("exp_avg", "exp_avg_sq") for a in getattr(optimizer, key).values())
    return weights + moments + 64 * 1024


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def _require(data: dict, where, key: str, check: Callable[[object], bool], what: str):
    if key not in data:
        raise ValueError(f"{where}: field '{key}' is missing")
    value = data[key]
    if not check(value):
        raise ValueError(f"{where}: field '{key}' must be {what}, got {json.dumps(value)[:60]}")
    return value


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def read_trainer_state(path, required: Mapping[str, str] = ()) -> dict:
    """``trainer_state.json`` of checkpoint folder ``path``, checked: ValueError naming the file and
    the field. Every state has ``version``, ``step`` (the folder's), ``schedule`` (whose
    ``last_step`` is that step), ``model_rng`` and ``train_time``; ``required`` adds the loop's own
    fields: ``{name: "count" | "number" | "object" | "object or null"}``."""
    where = Path(path) / STATE_FILE
    state = read_json(where)
    if not isinstance(state, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(state).__name__}")
    version = _require(state, where, "version", lambda v: v == STATE_VERSION, f"{STATE_VERSION}")
    del version
    step = _require(state, where, "step", _count, "an integer >= 0")
    if step != checkpoint_step(path):
        raise ValueError(f"{where}: field 'step' is {step}, but the folder is '{Path(path).name}'")
    schedule = _require(state, where, "schedule", lambda v: isinstance(v, dict), "an object")
    for key in ("last_step", "warmup_steps", "total_steps"):
        _require(schedule, f"{where} (schedule)", key, _count, "an integer >= 0")
    _require(schedule, f"{where} (schedule)", "base_lr", _number, "a number >= 0")
    if schedule["last_step"] != step:
        raise ValueError(f"{where}: field 'schedule.last_step' is {schedule['last_step']}, not the step {step}")
    rng = _require(state, where, "model_rng", lambda v: isinstance(v, dict), "an object")
    for key in ("dropout_seed", "forward_count"):
        _require(rng, f"{where} (model_rng)", key, _count, "an integer >= 0")
    _require(state, where, "train_time", _number, "a number of seconds >= 0")
    checks = {"count": (_count, "an integer >= 0"), "number": (_number, "a number >= 0"),
              "object": (lambda v: isinstance(v, dict), "an object"),
              "object or null": (lambda v: v is None or isinstance(v, dict), "an object or null")}
    for key, kind in dict(required).items():
        _require(state, where, key, *checks[kind])
    return state


def load_checkpoint(path, model, optimizer, required: Mapping[str, str] = ()) -> dict:
    """Restore ``model`` and ``optimizer`` from checkpoint folder ``path``; returns its checked
    trainer state (see :func:`read_trainer_state`). Errors name the file."""
    path = Path(path)
    state = read_trainer_state(path, required)
    weights = load_tensors(path / "model.safetensors")
    try:
        model.load_state_dict(weights, strict=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path / 'model.safetensors'}: {exc}") from exc
    load_optimizer(path / "optimizer.safetensors", optimizer)
    model.dropout_seed = state["model_rng"]["dropout_seed"]
    model.forward_count = state["model_rng"]["forward_count"]
    return state


def truncate_metrics(path, step: int) -> int:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (a resumed run continues the log where
    its checkpoint was taken). Damaged lines -- cut short by a kill, not JSON, not UTF-8 -- are
    dropped, never an error: the log must not block resuming the weights. Returns their number."""
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")
        return 0
    kept, damaged = [], 0
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            damaged += 1
            continue
        if not isinstance(record, dict) or not _number(record.get("step", 0)):
            damaged += 1
            continue
        if record.get("step", 0) <= step:
            kept.append(raw.decode("utf-8") + "\n")
    body = "".join(kept)
    atomic_write(path, lambda tmp: Path(tmp).write_text(body, encoding="utf-8"))
    return damaged


def read_jsonl(path) -> list:
    """The JSON objects of a ``.jsonl`` file, one a line; a damaged line (cut short by a crash,
    not UTF-8) is skipped."""
    records = []
    for raw in Path(path).read_bytes().split(b"\n"):
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def check_writable(folder, what: str = "out_dir") -> Path:
    """Create ``folder`` if needed and prove it writable by writing a file in it: PermissionError
    naming ``what`` and the folder otherwise, before any work is done."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise PermissionError(f"{what}: cannot write to '{folder}' ({exc.strerror or exc})") from None
    return folder
