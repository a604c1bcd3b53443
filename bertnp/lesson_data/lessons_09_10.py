"""Reference numbers for lessons 9 and 10, made by Hugging Face transformers and PyTorch.

The lessons reach committed data through the package, so they run from any folder (a course
handout included). The two files here are small subsets of the test suite's fixtures in
``tests/reference/`` (see that folder's README for how torch and transformers wrote them):

    l09_hf_pretraining.npz   from bert_pretraining_f64.npz: a tiny float64 BertForPreTraining
                             (V=99, H=24, 2 layers, 3 heads) -- its parameters, one batch, and
                             what HF computed: logits at the labelled positions, NSP logits, the
                             losses, every layer's hidden states, and every parameter's gradient
    l10_torch_adamw.npz      from adamw_trajectory_f64.npz: the same model at a standard init, the
                             gradient there, the parameters after two torch.optim.AdamW updates,
                             and the losses, learning rates, gradient norms and clipping
                             coefficients of a 12-update run

Read them with :func:`load_l09` / :func:`load_l10` (plain dicts of NumPy arrays; JSON strings
are decoded). Regenerate them from the fixtures (bit-identical copies of the arrays) with::

    python -m bertnp.lesson_data.lessons_09_10 tests/reference
"""
from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["load_l09", "load_l10", "L09_FILE", "L10_FILE"]

L09_FILE = "l09_hf_pretraining.npz"
L10_FILE = "l10_torch_adamw.npz"

# which arrays of which fixture each lesson needs ("prefix/" keeps every array under it)
_SUBSETS = {
    L09_FILE: ("bert_pretraining_f64.npz",
               ["param/", "grad/", "input_ids", "attention_mask", "token_type_ids", "labels",
                "next_sentence_label", "labelled_prediction_logits", "seq_relationship_logits",
                "loss", "mlm_loss", "nsp_loss", "last_hidden_state", "pooler_output", "hidden_states",
                "config_json", "versions", "tied_to"]),
    L10_FILE: ("adamw_trajectory_f64.npz",
               ["param/", "grad0/", "step2/", "weight_decay/", "input_ids", "attention_mask",
                "token_type_ids", "labels", "next_sentence_label", "losses", "mlm_losses", "nsp_losses",
                "grad_norms", "clip_coefs", "lrs", "final_loss", "config_json", "versions",
                "schedule_json"]),
}
_JSON_KEYS = ("config_json", "versions", "tied_to", "schedule_json")


def _load(name: str) -> dict:
    path = resources.files("bertnp.lesson_data") / name
    if not path.is_file():
        raise FileNotFoundError(f"{name}: not found in the installed bertnp package "
                                f"({path}); reinstall bertnp (pip install -e .)")
    with resources.as_file(path) as real, np.load(real) as data:   # no pickles: plain arrays only
        out = {key: data[key] for key in data.files}
    for key in _JSON_KEYS:
        if key in out:
            out[key] = json.loads(str(out[key]))
    return out


def load_l09() -> dict:
    """Hugging Face's float64 numbers for a tiny BertForPreTraining (lesson 9).

    Keys: ``param/<HF name>`` and ``grad/<HF name>`` (46 each), the batch (``input_ids``,
    ``attention_mask``, ``token_type_ids``, ``labels``, ``next_sentence_label``),
    ``labelled_prediction_logits`` (N, V), ``seq_relationship_logits`` (B, 2), ``loss``,
    ``mlm_loss``, ``nsp_loss``, ``last_hidden_state``, ``pooler_output``, ``hidden_states``
    (L + 1, B, T, H), and the dicts ``config_json`` (HF's config.json), ``versions``, ``tied_to``."""
    return _load(L09_FILE)


def load_l10() -> dict:
    """torch.optim.AdamW's float64 numbers for the same tiny model at a standard init (lesson 10).

    Keys: ``param/``, ``grad0/`` (the unclipped gradient at ``param/``), ``step2/`` (after two
    updates with that gradient, clipped: the first at lr 0, the second at lr 1e-3 / 3),
    ``weight_decay/`` (0-d: 0.01 or 0.0 per tensor), the batch, and for the 12-update run
    ``losses``, ``mlm_losses``, ``nsp_losses``, ``grad_norms`` (before clipping), ``clip_coefs``,
    ``lrs``, ``final_loss``; the dicts ``config_json``, ``versions``, ``schedule_json``."""
    return _load(L10_FILE)


def make(fixture_dir, out_dir=None) -> list[Path]:
    """Write the lesson files from the test fixtures in ``fixture_dir`` (bit-identical arrays)."""
    fixture_dir = Path(fixture_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parent
    written = []
    for name, (source, wanted) in _SUBSETS.items():
        with np.load(fixture_dir / source) as fx:
            keys = [k for k in fx.files if any(k == w or (w.endswith("/") and k.startswith(w)) for w in wanted)]
            missing = [w for w in wanted if not any(k == w or k.startswith(w) for k in keys)]
            if missing:
                raise ValueError(f"{source}: no arrays for {missing}")
            np.savez_compressed(out_dir / name, **{k: fx[k] for k in keys})
        written.append(out_dir / name)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bertnp.lesson_data.lessons_09_10 FIXTURE_DIR   (e.g. tests/reference)")
    for path in make(sys.argv[1]):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
