"""Loaders for the data of lessons 11-14.

    from bertnp.lesson_data.lessons_11_14 import load_l12, l13_reference, which_book
    run = load_l12()                    # lesson 12: the longer run's snapshots, metrics, attention maps
    ref = l13_reference()               # lesson 13: Hugging Face's MiniLM outputs (float64), a slice
    train = which_book("train")         # lesson 14: the path of the task's TSV (.gz), for read_examples

Files and how they were made: README.md in this folder.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["load_l12", "l13_reference", "which_book"]

# the installed all-MiniLM-L6-v2 folder is found by bertnp.teach.minilm_dir (lessons 05-07, 13, 14)

HERE = Path(__file__).resolve().parent


def _file(name: str) -> Path:
    path = HERE / name
    if not path.is_file():
        raise FileNotFoundError(f"lesson data file missing: '{path}' (is bertnp installed with its package "
                                "data? see bertnp/lesson_data/README.md for how it is made)")
    return path


# ------------------------------------------------------------------------------------------- lesson 12

def load_l12() -> dict:
    """Lesson 12's longer run: ``l12_run.json`` (config, command, baselines, ``snapshots``) plus
    ``metrics`` (the Trainer's metrics.jsonl records) and ``attention`` (``maps`` (S, L, H, T, T)
    float32, ``steps`` (S,), ``tokens`` (T,))."""
    run = json.loads(_file("l12_run.json").read_text(encoding="utf-8"))
    run["metrics"] = [json.loads(line) for line in _file("l12_metrics.jsonl").read_text(encoding="utf-8").splitlines()
                      if line.strip()]
    with np.load(_file("l12_attention.npz")) as z:
        run["attention"] = {"maps": z["attentions"].astype(np.float32), "steps": z["steps"].tolist(),
                            "tokens": z["tokens"].tolist()}
    return run


# ------------------------------------------------------------------------------------------- lesson 13

def l13_reference() -> dict:
    """Hugging Face's outputs of all-MiniLM-L6-v2 (float64 run) for 8 sentences: ``sentences``,
    ``input_ids``/``attention_mask``/``token_type_ids`` (8, 26) int64, ``hidden_dims`` (16,) and
    ``last_hidden_state`` (8, 26, 16) -- those dimensions of the last hidden state --,
    ``mean_embeddings`` (8, 384), ``cosine_similarity`` (8, 8), ``versions`` (dict)."""
    with np.load(_file("l13_minilm_reference.npz")) as z:
        ref = {k: z[k] for k in z.files}
    ref["sentences"] = json.loads(str(ref.pop("sentences_json")))
    ref["versions"] = json.loads(str(ref["versions"]))
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        ref[k] = ref[k].astype(np.int64)
    return ref


def _make_l13(source: Path) -> Path:
    """Write l13_minilm_reference.npz from tests/reference/minilm_outputs.npz (maintainers only)."""
    with np.load(source) as z:
        dims = np.arange(0, z["last_hidden_state_f64"].shape[-1], 24)
        out = {"sentences_json": z["sentences_json"], "versions": z["versions"],
               "input_ids": z["input_ids"].astype(np.int32), "attention_mask": z["attention_mask"].astype(np.int8),
               "token_type_ids": z["token_type_ids"].astype(np.int8), "hidden_dims": dims,
               "last_hidden_state": z["last_hidden_state_f64"][:, :, dims],
               "mean_embeddings": z["mean_embeddings_f64"], "cosine_similarity": z["cosine_similarity_f64"]}
    target = HERE / "l13_minilm_reference.npz"
    np.savez_compressed(target, **out)
    return target


# ------------------------------------------------------------------------------------------- lesson 14

def which_book(split: str = "train") -> Path:
    """Path of the "which book?" task's ``split`` ("train": 900 sentences, "dev": 450), a gzip'd TSV
    with header ``sentence<TAB>label``; read it with :func:`bertnp.finetune.read_examples`."""
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    return _file(f"l14_which_book_{split}.tsv.gz")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make-l13":
        print(_make_l13(Path(sys.argv[2])))
    else:
        print("usage: python -m bertnp.lesson_data.lessons_11_14 --make-l13 tests/reference/minilm_outputs.npz")
        sys.exit(2)
