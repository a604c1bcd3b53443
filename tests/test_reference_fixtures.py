"""Self-checks of the committed reference fixtures in tests/reference/ (NumPy only).

The fixtures are written by tests/reference/make_*.py with torch + transformers; the rest of the
suite compares bertnp against them. These tests need neither torch nor bertnp: they check that
each file is complete and internally consistent (keys, shapes implied by config_json, dtypes,
losses recomputed from the stored logits, the first AdamW steps recomputed from the stored
gradient), so a stale or hand-edited fixture is caught before it misleads a parity test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REF = Path(__file__).resolve().parent / "reference"
TIED = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias"}


def load(name: str):
    path = REF / name
    if not path.is_file():
        pytest.skip(f"fixture {path} is absent: regenerate it with tests/reference/make_*.py")
    return np.load(path)  # no allow_pickle: strings are stored as unicode arrays


@pytest.fixture(scope="module")
def pre():
    return load("bert_pretraining_f64.npz")


@pytest.fixture(scope="module")
def cls():
    return load("bert_seqcls_f64.npz")


@pytest.fixture(scope="module")
def adamw():
    return load("adamw_trajectory_f64.npz")


@pytest.fixture(scope="module")
def minilm():
    return load("minilm_outputs.npz")


# ---------------------------------------------------------------- helpers (NumPy references)

def cross_entropy(logits, targets, ignore_index=-100):
    """Mean cross-entropy over rows whose target != ignore_index (torch's default reduction)."""
    logits = logits.reshape(-1, logits.shape[-1])         # (..., K) -> (N, K)
    targets = targets.reshape(-1)
    keep = targets != ignore_index
    z = logits[keep]
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(keep.sum()), targets[keep]].mean()


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def expected_shapes(cfg: dict, head: str, num_labels: int | None = None) -> dict[str, tuple]:
    """HF state-dict names -> shapes for a BERT config; Linear weights are (out, in)."""
    V, H, I = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"]
    P, TV, L = cfg["max_position_embeddings"], cfg["type_vocab_size"], cfg["num_hidden_layers"]
    s = {"bert.embeddings.word_embeddings.weight": (V, H),
         "bert.embeddings.position_embeddings.weight": (P, H),
         "bert.embeddings.token_type_embeddings.weight": (TV, H),
         "bert.embeddings.LayerNorm.weight": (H,), "bert.embeddings.LayerNorm.bias": (H,)}
    for i in range(L):
        p = f"bert.encoder.layer.{i}."
        for m in ("attention.self.query", "attention.self.key", "attention.self.value",
                  "attention.output.dense"):
            s[p + m + ".weight"], s[p + m + ".bias"] = (H, H), (H,)
        s[p + "intermediate.dense.weight"], s[p + "intermediate.dense.bias"] = (I, H), (I,)
        s[p + "output.dense.weight"], s[p + "output.dense.bias"] = (H, I), (H,)
        for m in ("attention.output.LayerNorm", "output.LayerNorm"):
            s[p + m + ".weight"], s[p + m + ".bias"] = (H,), (H,)
    s["bert.pooler.dense.weight"], s["bert.pooler.dense.bias"] = (H, H), (H,)
    if head == "pretraining":
        s.update({"cls.predictions.bias": (V,),
                  "cls.predictions.transform.dense.weight": (H, H),
                  "cls.predictions.transform.dense.bias": (H,),
                  "cls.predictions.transform.LayerNorm.weight": (H,),
                  "cls.predictions.transform.LayerNorm.bias": (H,),
                  "cls.seq_relationship.weight": (2, H), "cls.seq_relationship.bias": (2,)})
    else:
        s["classifier.weight"], s["classifier.bias"] = (num_labels, H), (num_labels,)
    return s


def prefixed(d, prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: d[k] for k in d.files if k.startswith(prefix)}


def check_inputs(d, cfg):
    ids, mask, types = d["input_ids"], d["attention_mask"], d["token_type_ids"]
    for a in (ids, mask, types):
        assert a.dtype == np.int64 and a.shape == ids.shape
    assert ids.ndim == 2 and ids.shape[1] <= cfg["max_position_embeddings"]
    assert ids.min() >= 0 and ids.max() < cfg["vocab_size"]
    assert set(np.unique(mask)) <= {0, 1} and set(np.unique(types)) <= {0, 1}
    assert (mask[:, 0] == 1).all() and (mask == 0).any(), "padded rows expected"
    assert (np.diff(mask, axis=1) <= 0).all(), "padding is at the end of each row"
    assert (types[mask == 0] == 0).all() and (ids[mask == 0] == 0).all()
    return ids.shape


def check_params_and_grads(d, cfg, head, num_labels=None):
    shapes = expected_shapes(cfg, head, num_labels)
    params, grads = prefixed(d, "param/"), prefixed(d, "grad/")
    assert set(params) == set(shapes), set(params) ^ set(shapes)
    assert set(grads) == set(shapes), set(grads) ^ set(shapes)
    for k, shape in shapes.items():
        assert params[k].shape == shape and params[k].dtype == np.float64, k
        assert grads[k].shape == shape and grads[k].dtype == np.float64, k
        assert np.isfinite(grads[k]).all(), k
    return params, grads


def encoder_tail_consistent(d, params, cfg):
    """pooler_output = tanh(W h[:, 0] + b) from the stored last_hidden_state and parameters."""
    B, T = d["input_ids"].shape
    h = d["last_hidden_state"]
    assert h.shape == (B, T, cfg["hidden_size"]) and h.dtype == np.float64
    pooled = np.tanh(h[:, 0] @ params["bert.pooler.dense.weight"].T + params["bert.pooler.dense.bias"])
    np.testing.assert_allclose(d["pooler_output"], pooled, rtol=0, atol=1e-13)
    # Softmax is shift-invariant per query, so the key bias has an exactly zero gradient: the
    # stored values are rounding noise (~1e-17), and parity tests must compare it with an atol.
    for i in range(cfg["num_hidden_layers"]):
        g = d[f"grad/bert.encoder.layer.{i}.attention.self.key.bias"]
        assert np.abs(g).max() < 1e-12
    return pooled


# ---------------------------------------------------------------- BertForPreTraining

def test_pretraining_keys_shapes_dtypes(pre):
    cfg = json.loads(str(pre["config_json"]))
    versions = json.loads(str(pre["versions"]))
    assert {"torch", "transformers"} <= set(versions)
    assert cfg["hidden_act"] == "gelu" and cfg["layer_norm_eps"] == 1e-12
    B, T = check_inputs(pre, cfg)
    V, H, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    nh = cfg["num_attention_heads"]
    check_params_and_grads(pre, cfg, "pretraining")
    want = {"prediction_logits": (B, T, V), "seq_relationship_logits": (B, 2),
            "last_hidden_state": (B, T, H), "pooler_output": (B, H),
            "hidden_states": (L + 1, B, T, H), "attentions": (L, B, nh, T, T),
            "loss": (), "mlm_loss": (), "nsp_loss": (),
            "labelled_prediction_logits": ((pre["labels"] != -100).sum(), V)}
    for k, shape in want.items():
        assert pre[k].shape == shape and pre[k].dtype == np.float64, k
        assert np.isfinite(pre[k]).all(), k
    assert pre["labels"].shape == (B, T) and pre["labels"].dtype == np.int64
    assert pre["next_sentence_label"].shape == (B,) and pre["next_sentence_label"].dtype == np.int64


def test_pretraining_tied_names(pre):
    tied = json.loads(str(pre["tied_names"]))
    assert sorted(tied) == sorted(TIED)
    assert json.loads(str(pre["tied_to"])) == TIED
    for name in tied:  # stored once, under the original's name
        assert f"param/{name}" not in pre.files and f"grad/{name}" not in pre.files
    assert "param/bert.embeddings.position_ids" not in pre.files  # buffers are not parameters


def test_pretraining_labels(pre):
    labels, mask = pre["labels"], pre["attention_mask"]
    assert (labels[mask == 0] == -100).all(), "a padded position is labelled"
    assert (labels[:, 0] == -100).all()
    assert ((labels != -100).sum(axis=1) >= 1).all()
    assert (labels == 0).any(), "a label equal to 0 catches ignore_index=0 bugs"
    assert set(pre["next_sentence_label"].tolist()) == {0, 1}
    np.testing.assert_array_equal(pre["labelled_prediction_logits"],
                                  pre["prediction_logits"][labels != -100])


def test_pretraining_losses(pre):
    mlm = cross_entropy(pre["prediction_logits"], pre["labels"])
    nsp = cross_entropy(pre["seq_relationship_logits"], pre["next_sentence_label"])
    assert abs(float(pre["mlm_loss"]) - mlm) < 1e-12
    assert abs(float(pre["nsp_loss"]) - nsp) < 1e-12
    assert abs(float(pre["loss"]) - (float(pre["mlm_loss"]) + float(pre["nsp_loss"]))) < 1e-12


def test_pretraining_heads_and_bias_grads(pre):
    cfg = json.loads(str(pre["config_json"]))
    params = prefixed(pre, "param/")
    pooled = encoder_tail_consistent(pre, params, cfg)
    nsp_logits = pooled @ params["cls.seq_relationship.weight"].T + params["cls.seq_relationship.bias"]
    np.testing.assert_allclose(pre["seq_relationship_logits"], nsp_logits, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(pre["hidden_states"][-1], pre["last_hidden_state"])
    # Attention rows are distributions that put exactly no weight on padded keys.
    att, mask = pre["attentions"], pre["attention_mask"]
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=0, atol=1e-13)
    pad_keys = np.broadcast_to(mask[None, :, None, None, :] == 0, att.shape)
    assert np.abs(att[pad_keys]).max() < 1e-300
    # d loss / d output bias = mean over labelled positions of (softmax - onehot): both biases.
    labels = pre["labels"]
    z = pre["prediction_logits"][labels != -100]                 # (N, V)
    y = np.eye(cfg["vocab_size"])[labels[labels != -100]]
    np.testing.assert_allclose(pre["grad/cls.predictions.bias"], (softmax(z) - y).mean(0),
                               rtol=0, atol=1e-14)
    y2 = np.eye(2)[pre["next_sentence_label"]]
    np.testing.assert_allclose(pre["grad/cls.seq_relationship.bias"],
                               (softmax(pre["seq_relationship_logits"]) - y2).mean(0),
                               rtol=0, atol=1e-14)


# ---------------------------------------------------------------- BertForSequenceClassification

def test_seqcls(cls):
    cfg = json.loads(str(cls["config_json"]))
    K = cfg["num_labels"]
    assert K == 3
    B, T = check_inputs(cls, cfg)
    params, _ = check_params_and_grads(cls, cfg, "seqcls", K)
    assert json.loads(str(cls["tied_names"])) == []
    y = cls["labels"]
    assert y.shape == (B,) and y.dtype == np.int64 and set(y.tolist()) <= set(range(K))
    for k, shape in {"logits": (B, K), "loss": (), "pooler_output": (B, cfg["hidden_size"])}.items():
        assert cls[k].shape == shape and cls[k].dtype == np.float64, k
    pooled = encoder_tail_consistent(cls, params, cfg)
    logits = pooled @ params["classifier.weight"].T + params["classifier.bias"]
    np.testing.assert_allclose(cls["logits"], logits, rtol=0, atol=1e-13)
    assert abs(float(cls["loss"]) - cross_entropy(cls["logits"], y)) < 1e-12
    np.testing.assert_allclose(cls["grad/classifier.bias"],
                               (softmax(cls["logits"]) - np.eye(K)[y]).mean(0), rtol=0, atol=1e-14)


# ---------------------------------------------------------------- AdamW trajectory

def test_adamw_trajectory(adamw):
    cfg = json.loads(str(adamw["config_json"]))
    sched = json.loads(str(adamw["schedule_json"]))
    N, W, lr = sched["total_steps"], sched["warmup_steps"], sched["lr"]
    assert (N, W, lr) == (12, 3, 1e-3)
    check_inputs(adamw, cfg)
    shapes = expected_shapes(cfg, "pretraining")
    for prefix in ("param/", "grad0/", "step2/", "final/", "exp_avg/", "exp_avg_sq/",
                   "weight_decay/"):
        got = prefixed(adamw, prefix)
        assert set(got) == set(shapes), (prefix, set(got) ^ set(shapes))
        for k, v in got.items():
            assert v.dtype == np.float64, (prefix, k)
            assert v.shape == (() if prefix == "weight_decay/" else shapes[k]), (prefix, k)
    for k in ("losses", "mlm_losses", "nsp_losses", "grad_norms", "clip_coefs", "lrs"):
        assert adamw[k].shape == (N,) and adamw[k].dtype == np.float64, k
    # Schedule: the update after s completed updates uses lr * f(s).
    s = np.arange(N)
    f = np.where(s < W, s / W, np.maximum(0.0, (N - s) / (N - W)))
    np.testing.assert_allclose(adamw["lrs"], lr * f, rtol=1e-15, atol=0)
    # No decay on biases and LayerNorm parameters; everything else (embeddings too) 0.01.
    for k, wd in prefixed(adamw, "weight_decay/").items():
        nodecay = k.endswith(".bias") or ".LayerNorm." in k
        assert float(wd) == (0.0 if nodecay else sched["weight_decay"]), k
    losses = adamw["losses"]
    np.testing.assert_allclose(losses, adamw["mlm_losses"] + adamw["nsp_losses"], rtol=0, atol=1e-12)
    assert losses[1] == losses[0], "the first update has lr 0 and must not move the weights"
    assert (np.diff(losses[1:]) < 0).all() and float(adamw["final_loss"]) < losses[-1]
    assert losses[-1] < losses[0] - 0.3
    # Clipping: torch's coef = min(1, max_norm / (norm + 1e-6)).
    np.testing.assert_allclose(adamw["clip_coefs"],
                               np.minimum(1.0, 1.0 / (adamw["grad_norms"] + 1e-6)), rtol=1e-14)


def test_adamw_first_two_steps_recomputed(adamw):
    """Steps 1 and 2 see the same gradient (step 1 has lr 0), so step2/ follows from grad0/."""
    p0, g0 = prefixed(adamw, "param/"), prefixed(adamw, "grad0/")
    norm = np.sqrt(sum((g * g).sum() for g in g0.values()))
    np.testing.assert_allclose(adamw["grad_norms"][:2], norm, rtol=1e-13)
    coef = min(1.0, 1.0 / (norm + 1e-6))
    b1, b2, eps = 0.9, 0.999, 1e-6
    lrs = adamw["lrs"]
    for k, p in p0.items():
        g = g0[k] * coef
        wd = float(adamw[f"weight_decay/{k}"])
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        for t in (1, 2):
            p = p * (1 - lrs[t - 1] * wd)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            p = p - lrs[t - 1] / (1 - b1 ** t) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)
        np.testing.assert_allclose(adamw[f"step2/{k}"], p, rtol=0, atol=1e-15, err_msg=k)
    moved = max(np.abs(adamw[f"final/{k}"] - p0[k]).max() for k in p0)
    assert 1e-3 < moved < 0.1
    assert all((adamw[f"exp_avg_sq/{k}"] >= 0).all() for k in p0)


# ---------------------------------------------------------------- all-MiniLM-L6-v2 outputs

def test_minilm_outputs(minilm):
    sentences = json.loads(str(minilm["sentences_json"]))
    ck = json.loads(str(minilm["checkpoint_json"]))
    H = ck["config"]["hidden_size"]
    ids, mask, types = minilm["input_ids"], minilm["attention_mask"], minilm["token_type_ids"]
    S, T = ids.shape
    assert S == len(sentences) >= 6 and H == 384
    for a in (ids, mask, types):
        assert a.dtype == np.int64 and a.shape == (S, T)
    assert (types == 0).all() and (ids[:, 0] == 101).all()            # [CLS]
    lengths = mask.sum(1)
    assert (ids[np.arange(S), lengths - 1] == 102).all()               # [SEP] closes each row
    assert (ids[mask == 0] == 0).all() and lengths.min() < T == lengths.max()
    for suffix, dt, tol in (("", np.float32, 1e-5), ("_f64", np.float64, 1e-12)):
        h = minilm["last_hidden_state" + suffix]
        assert h.shape == (S, T, H) and h.dtype == dt
        for k, shape in (("pooler_output", (S, H)), ("mean_embeddings", (S, H)),
                         ("cls_embeddings", (S, H)), ("cosine_similarity", (S, S))):
            assert minilm[k + suffix].shape == shape and minilm[k + suffix].dtype == dt, k
        h = h.astype(np.float64)
        m = mask[:, :, None].astype(np.float64)
        mean = (h * m).sum(1) / m.sum(1)
        np.testing.assert_allclose(minilm["mean_embeddings" + suffix], mean, rtol=0, atol=tol)
        np.testing.assert_array_equal(minilm["cls_embeddings" + suffix], minilm["last_hidden_state" + suffix][:, 0])
        unit = mean / np.linalg.norm(mean, axis=1, keepdims=True)
        cos = minilm["cosine_similarity" + suffix]
        np.testing.assert_allclose(cos, unit @ unit.T, rtol=0, atol=tol)
        np.testing.assert_allclose(np.diag(cos), 1.0, atol=tol)
    # float32 and float64 runs of the same checkpoint agree to float32 accuracy.
    np.testing.assert_allclose(minilm["last_hidden_state"], minilm["last_hidden_state_f64"], atol=1e-4)
    # Pairs (0,1), (2,3), (4,5) were written to mean the same thing; each beats every other pairing.
    cos = minilm["cosine_similarity_f64"]
    for i, j in ((0, 1), (2, 3), (4, 5)):
        others = [cos[i, k] for k in range(S) if k not in (i, j)]
        assert cos[i, j] > max(others) + 0.2


def test_minilm_path_helper():
    """minilm_path imports with the standard library alone and returns a folder or None."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("minilm_path", REF / "minilm_path.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    d = mod.find_minilm_dir()
    if d is not None:
        for f in ("config.json", "model.safetensors", "vocab.txt"):
            assert (d / f).is_file()
