"""The referee of the grading tests: the checks and the numerical gradient come from a trusted copy.

`bertnp course grade` points BERTNP_COURSE_REFEREE_TEACH at the instructor's bertnp/teach.py and
this module loads that file by path, so a submission's own bertnp.teach or bertnp.gradcheck never
judges it. In a handout (`bertnp course check`) it is the handout's teach.py, whose numerical
gradient is the student's task 1.1 -- as in minitorch, the first task is the referee of the rest.

Every check raises teach.CheckFailed with the values: which tensor, which entries, the relative
error against the threshold, and a hint when the pattern suggests one (a sign, a factor, a
missing term, a few rows only).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np


def _load_teach():
    path = os.environ.get("BERTNP_COURSE_REFEREE_TEACH", "")
    if path and Path(path).is_file():
        spec = importlib.util.spec_from_file_location("_bertnp_course_referee_teach", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    from bertnp import teach as module          # run by hand with pytest: the installed teach
    return module


teach = _load_teach()
CheckFailed = teach.CheckFailed


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def numeric(f, x, h: float = 1e-5) -> np.ndarray:
    """Centered differences of the scalar f() with respect to x (perturbed in place, restored)."""
    return teach.finite_differences(f, x, h=h)


def as_dict(grads, names) -> dict:
    if isinstance(grads, dict):
        return grads
    if not isinstance(grads, tuple):
        grads = (grads,)
    return dict(zip(names, grads))


def gradient_check(what: str, forward, backward, inputs: dict, wrt, names=None, *, threshold: float = 1e-7,
                   floor: float = 0.0, seed: int = 0, h: float = 1e-5, **params) -> dict:
    """``backward``'s gradients of L = sum(out * dout) (dout random, never all ones) against
    centered differences of ``forward``; raises CheckFailed naming the op, the tensor and entries."""
    out, cache = forward(**inputs, **params)
    dout = rng(seed + 100).standard_normal(np.shape(out))
    grads = as_dict(backward(dout, cache), list(names or wrt))

    def loss() -> float:
        return float((np.asarray(forward(**inputs, **params)[0]) * dout).sum())

    numerical = {}
    for name in wrt:
        if grads.get(name) is None:
            raise CheckFailed(f"{what}: no gradient returned for {name}")
        numerical[name] = numeric(loss, inputs[name], h=h)
    try:
        return teach.check_gradients({f"{what}: d{n}": grads[n] for n in wrt},
                                     {f"{what}: d{n}": numerical[n] for n in wrt}, threshold, floor)
    except CheckFailed as exc:
        raise CheckFailed(str(exc)) from None


def close(what: str, actual, expected, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    teach.check_close(what, actual, expected, rtol=rtol, atol=atol)


def check(condition, what: str, actual=None, expected=None) -> None:
    """A condition that, when false, says what was expected and what came (silent when true)."""
    if not bool(condition):
        shown = what if actual is None and expected is None else f"{what}: got {actual!r}, expected {expected!r}"
        raise CheckFailed(shown)


# ---------------------------------------------------------------------------------- whole model

def tiny_model(seed: int = 0, layers: int = 2):
    """A float64 BERT small enough to difference: vocabulary 13, width 8, 2 heads, no dropout."""
    import bertnp as bn
    cfg = bn.BertConfig(vocab_size=13, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=8, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = bn.BertForPreTraining(cfg, seed=seed, dtype="float64").eval()
    r = rng(seed + 7)
    for name, p in model.parameters().items():      # weights large enough to bend every nonlinearity
        p[...] = r.standard_normal(p.shape) * (0.5 if p.ndim == 2 else 0.2) + (1.0 if name.endswith("LayerNorm.weight") else 0.0)
    return model


def tiny_batch(with_mlm: bool = True, with_nsp: bool = True) -> dict:
    """Two sequences of 6 tokens; the second ends in 2 [PAD]s; labels at scattered positions."""
    ids = np.array([[1, 5, 7, 2, 9, 2], [1, 4, 4, 2, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64),
             "token_type_ids": np.array([[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]])}
    if with_mlm:
        labels = np.full(ids.shape, -100)
        labels[0, [1, 4]] = [5, 9]
        labels[1, 2] = 11                      # 11 appears nowhere in the input: its row of the
        batch["labels"] = labels               # tied matrix gets a gradient from the decoder only
    if with_nsp:
        batch["next_sentence_label"] = np.array([1, 0])
    return batch


def model_gradient_check(what: str, model, batch: dict, parts: dict, *, threshold: float = 1e-5,
                         floor: float = 1e-7) -> dict:
    """``model.backward()`` against centered differences of ``model(**batch).loss`` for the given
    parts of the parameters: {name: index expression (a basic slice, so a view is perturbed)}."""
    params = model.parameters()
    model.zero_grad()
    model(**batch)
    grads = {name: np.asarray(g).copy() for name, g in model.backward().items()}

    def loss() -> float:
        return float(model(**batch).loss)

    analytic, numerical = {}, {}
    for name, part in parts.items():
        if name not in params:
            raise CheckFailed(f"{what}: the model has no parameter {name}")
        view = params[name][part]
        label = f"{what}: {name}" + ("" if part == slice(None) else f"[{_show(part)}]")
        numerical[label] = numeric(loss, view)
        analytic[label] = grads[name][part]
    return teach.check_gradients(analytic, numerical, threshold, floor)


def _show(part) -> str:
    parts = part if isinstance(part, tuple) else (part,)
    return ", ".join(f"{p.start or 0}:{p.stop}" if isinstance(p, slice) else str(p) for p in parts)
