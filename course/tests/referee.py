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
import math
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
                   floor: float = 0.0, seed: int = 0, h: float = 1e-5, factors=None, **params) -> dict:
    """``backward``'s gradients of L = sum(out * dout) (dout random, never all ones) against
    centered differences of ``forward``; raises CheckFailed naming the op, the tensor and entries.
    ``factors``: {value: what it means} for the constant factors a usual mistake leaves on a
    gradient (a scale forgotten or applied twice): a tensor off by one of them is named with it."""
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
        named = [f"{what}: d{n} is {r:.4g} x the numerical gradient: {factors[r]}"
                 for n in wrt for r in [_known_factor(grads[n], numerical[n], factors or {})] if r is not None]
        raise CheckFailed("\n".join(named + [str(exc)])) from None      # the named mistake first


def _known_factor(analytic, numerical, factors: dict):
    """The key of ``factors`` that analytic / numerical equals everywhere it is measurable, or None."""
    a, n = np.asarray(analytic, dtype=np.float64), np.asarray(numerical, dtype=np.float64)
    big = np.abs(n) > 1e-6 * max(float(np.abs(n).max()) if n.size else 0.0, 1e-300)
    if big.sum() < 2:
        return None
    ratio = a[big] / n[big]
    for factor in factors:
        if np.allclose(ratio, factor, rtol=1e-4):
            return factor
    return None


def close(what: str, actual, expected, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    teach.check_close(what, actual, expected, rtol=rtol, atol=atol)


def check_inverted_dropout(where: str, x, p: float, out, dout, dx) -> None:
    """Inverted dropout, forward and backward, judged against the forward's OWN mask (whatever
    random bits drew it): kept entries are x / (1 - p), dropped ones 0, and the backward passes
    dout through the same mask and the same single 1/(1-p). Names the usual mistakes."""
    x, out, dout, dx = (np.asarray(a, dtype=np.float64) for a in (x, out, dout, dx))
    kept = out != 0                                  # x has no exact zeros: a zero was dropped
    scale = 1.0 / (1.0 - p)
    ratio = out[kept] / x[kept]
    if ratio.size and not np.allclose(ratio, scale, rtol=1e-10):
        r = float(np.median(ratio))
        why = ("the 1/(1-p) scaling is missing: without it the output's expected value is (1-p) x, so the "
               "network would see smaller activations in training than in eval mode, which does not scale"
               if np.isclose(r, 1.0) else "scale the kept entries by 1/(1-p) exactly once")
        raise CheckFailed(f"{where} (p={p}): the kept entries are {r:.6g} times x, expected 1/(1-p) = {scale:.6g} times x: {why}")
    leaks, lost = int(((dx != 0) & ~kept).sum()), int(((dx == 0) & kept & (dout != 0)).sum())
    if leaks or lost:
        raise CheckFailed(f"{where} (p={p}): dropout_backward's zeros are not where the forward dropped: {leaks} "
                          f"entries the forward dropped get a gradient, {lost} it kept get none -- use the "
                          "forward's mask from the cache, never draw a new one")
    ratio = dx[kept] / dout[kept]
    if ratio.size and not np.allclose(ratio, scale, rtol=1e-10):
        r = float(np.median(ratio))
        if np.isclose(r, scale * scale):
            why = "the 1/(1-p) scale is applied twice (the mask in the cache may already hold it)"
        elif np.isclose(r, 1.0):
            why = "the backward forgets the 1/(1-p) scale: out = x * mask / (1-p), so dx = dout * mask / (1-p)"
        else:
            why = "out = x * mask / (1-p), so dx = dout * mask / (1-p)"
        raise CheckFailed(f"{where} (p={p}): dropout_backward's kept entries are {r:.6g} times dout, expected "
                          f"1/(1-p) = {scale:.6g} times dout: {why}")


def _shown(value) -> str:
    """A value as a student reads it: 0.705239, not np.float64(0.7052390134); arrays short."""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    if isinstance(value, (np.integer, np.bool_)):
        return str(value.item())
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=6, threshold=20)
    return repr(value)                     # strings quoted, so that '' and ' ' show


def check(condition, what: str, actual=None, expected=None) -> None:
    """A condition that, when false, says what was expected and what came (silent when true)."""
    if not bool(condition):
        shown = what if actual is None and expected is None else \
            f"{what}: got {_shown(actual)}, expected {_shown(expected)}"
        raise CheckFailed(shown)


# ---------------------------------------------------------------------------------- whole model

def tiny_model(seed: int = 0, layers: int = 2, dropout: float = 0.0):
    """A float64 BERT small enough to difference: vocabulary 13, width 8, 2 heads, no dropout (or
    ``dropout`` on the hidden states and the attention probabilities, for a check in training mode)."""
    import bertnp as bn
    cfg = bn.BertConfig(vocab_size=13, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=8, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
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
    parts of the parameters: {name: index expression (a basic slice, so a view is perturbed)}.
    A model in training mode draws the same dropout masks in every forward (they derive from
    ``forward_count``, reset before each), so the differences see one function."""
    params = model.parameters()
    count = model.forward_count

    def forward():
        model.forward_count = count
        return model(**batch)

    model.zero_grad()
    forward()
    grads = {name: np.asarray(g).copy() for name, g in model.backward().items()}

    def loss() -> float:
        return float(forward().loss)

    analytic, numerical = {}, {}
    for name, part in parts.items():
        if name not in params:
            raise CheckFailed(f"{what}: the model has no parameter {name}")
        view = params[name][part]
        label = f"{what}: {name}" + ("" if part == slice(None) else f"[{_show(part)}]")
        numerical[label] = numeric(loss, view)
        analytic[label] = grads[name][part]
    return teach.check_gradients(analytic, numerical, threshold, floor)


def check_gradients_accumulate(what: str, model, batch: dict, names) -> None:
    """Two forward/backward pairs without zero_grad(): each named gradient is twice one pair's.
    Gradients accumulate until zeroed, as in PyTorch (gradient accumulation relies on it), which a
    gradient check after zero_grad() cannot see."""
    model.zero_grad()
    model(**batch)
    grads = model.backward()
    once = {n: np.array(grads[n], copy=True) for n in names}
    model(**batch)
    twice = model.backward()
    for n in names:
        if not np.allclose(np.asarray(twice[n]), 2 * once[n], rtol=1e-12, atol=0.0):
            raise CheckFailed(f"{what}: {n} after two backward() calls without zero_grad() is not twice one call's "
                              "gradient: gradients accumulate until zeroed, as in PyTorch, so ADD into the "
                              "gradient (+=, acc(...), out=), never assign it")
    model.zero_grad()


def positions_reached(model, batch: dict) -> list:
    """The positions t whose row of the position table gets a gradient from ``model.backward()``,
    with every layer's attention made unable to mix positions: value weights zeroed, each
    position's context is the value bias alone, so no gradient crosses from one position to
    another and the loss's gradient stays where the heads put it. (Changes ``model``.)"""
    params = model.parameters()
    for i in range(model.config.num_hidden_layers):
        params[f"bert.encoder.layer.{i}.attention.self.value.weight"][...] = 0.0
    model.zero_grad()
    model(**batch)
    rows = np.abs(np.asarray(model.backward()["bert.embeddings.position_embeddings.weight"])).sum(axis=1)
    return [int(t) for t in np.flatnonzero(rows > 1e-9 * max(float(rows.max()), 1e-300))]


def _show(part) -> str:
    parts = part if isinstance(part, tuple) else (part,)
    return ", ".join(f"{p.start or 0}:{p.stop}" if isinstance(p, slice) else str(p) for p in parts)


# ---------------------------------------------------------------------------------- accumulation

def accumulation_batch(seed: int = 0) -> dict:
    """Five sequences of 6 tokens (vocabulary 13), padded to different lengths, with 3, 1, 2, 0 and 1
    labelled tokens: cut into micro-batches, their token and sequence counts differ."""
    r = np.random.default_rng(seed)
    lengths, labelled = [6, 6, 4, 3, 5], [3, 1, 2, 0, 1]
    ids = np.zeros((5, 6), dtype=np.int64)
    labels = np.full((5, 6), -100)
    types = np.zeros((5, 6), dtype=np.int64)
    for row, (n, k) in enumerate(zip(lengths, labelled)):
        ids[row, :n] = r.integers(5, 13, size=n)
        ids[row, 0], ids[row, n - 1] = 1, 2                      # [CLS] ... [SEP]
        types[row, n // 2:n] = 1
        positions = r.choice(np.arange(1, n - 1), size=k, replace=False)
        labels[row, positions] = r.integers(5, 13, size=k)
        ids[row, positions[:1]] = 4                              # a [MASK] in the input
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64), "token_type_ids": types,
            "labels": labels, "next_sentence_label": np.array([1, 0, 0, 1, 0])[:5]}


def cut(batch: dict, sizes) -> list:
    """The batch's rows cut into consecutive micro-batches of the given numbers of sequences."""
    bounds = np.cumsum([0] + list(sizes))
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(bounds[:-1], bounds[1:])]


def whole_batch(model, batch) -> tuple:
    """The referee: the whole batch in one forward and backward."""
    model.zero_grad()
    out = model(**batch)
    grads = {k: np.array(v, copy=True) for k, v in model.backward().items()}
    losses = (float(out.mlm_loss), float(out.nsp_loss))
    return losses + (grads,)


def accumulate_with_the_trainer(model, micro: list) -> tuple:
    """One update as bertnp's Trainer does it: the update's totals first, then each micro-batch's
    forward and backward. (Trainer's two methods use nothing of the trainer but its model.)"""
    from types import SimpleNamespace
    from bertnp.train import Trainer
    stand_in = SimpleNamespace(model=model)
    totals = Trainer._update_totals(stand_in, micro)
    model.zero_grad()
    parts = [Trainer._forward_backward(stand_in, mb, totals) for mb in micro]
    mlm = sum(float(p["mlm_loss"]) for p in parts)
    nsp = sum(float(p["nsp_loss"]) for p in parts)
    return totals, mlm, nsp, {k: np.array(v, copy=True) for k, v in model.grads.items()}


def diagnose_accumulation(model, micro: list, mlm: float, nsp: float) -> str:
    """Which known wrong weighting of the micro-batches' mean losses gives these totals?"""
    means = []
    for mb in micro:
        out = model(**mb)                                        # this micro-batch's own means
        means.append((float(out.mlm_loss), float(out.nsp_loss),
                      int((mb["labels"] != -100).sum()), len(mb["next_sentence_label"])))
    K, N, B = len(means), sum(m[2] for m in means), sum(m[3] for m in means)
    known = [
        (sum(m for m, _, _, _ in means) / K, sum(s for _, s, _, _ in means) / K,
         "the plain average of the micro-batches' mean losses (each weighs 1/K): then a labelled token in a "
         "micro-batch with few of them weighs more than one in a micro-batch with many. Divide each micro-batch's "
         "SUMMED loss by the whole update's count (Hugging Face Trainer's bug, fixed in transformers PR #34191)"),
        (sum(m * n / N for m, _, n, _ in means), sum(s * b / N for _, s, _, b in means),
         "NSP divided by the update's labelled-token count: NSP is a mean over the update's SEQUENCES"),
        (sum(m * n / B for m, _, n, _ in means), sum(s * b / B for _, s, _, b in means),
         "MLM divided by the update's sequence count: MLM is a mean over the update's LABELLED TOKENS"),
        (sum(m for m, _, _, _ in means), sum(s for _, s, _, _ in means),
         "the sum of the micro-batches' mean losses: weigh each mean by its share of the update's count"),
    ]
    for want_mlm, want_nsp, what in known:
        if math.isclose(mlm, want_mlm, rel_tol=1e-9) and math.isclose(nsp, want_nsp, rel_tol=1e-9):
            return f"your accumulation is {what}"
    return "none of the usual weightings: compare each micro-batch's out.mlm_loss with its mean * N_k / N"


def check_accumulation(model, batch: dict, sizes, rtol: float = 1e-12) -> None:
    mlm_big, nsp_big, grads_big = whole_batch(model, batch)
    micro = cut(batch, sizes)
    counts = [int((mb["labels"] != -100).sum()) for mb in micro]
    where = f"micro-batches of {list(sizes)} sequences and {counts} labelled tokens"
    totals, mlm, nsp, grads = accumulate_with_the_trainer(model, micro)
    check(totals.get("mlm_total") == sum(counts), f"{where}: the update's MLM denominator (labelled tokens of ALL "
          "its micro-batches, counted before any forward)", totals.get("mlm_total"), sum(counts))
    check(totals.get("nsp_total") == len(batch["next_sentence_label"]), f"{where}: the update's NSP denominator "
          "(its sequences)", totals.get("nsp_total"), len(batch["next_sentence_label"]))
    if not (math.isclose(mlm, mlm_big, rel_tol=1e-12) and math.isclose(nsp, nsp_big, rel_tol=1e-12)):
        raise CheckFailed(f"{where}: the micro-batches' losses add up to MLM {mlm:.12f}, NSP {nsp:.12f}; the whole "
                          f"batch's are MLM {mlm_big:.12f}, NSP {nsp_big:.12f}\n  hint: "
                          + diagnose_accumulation(model, micro, mlm, nsp))
    scale = max(float(np.abs(g).max()) for g in grads_big.values())
    errors = {k: float(np.abs(grads[k] - g).max() / max(float(np.abs(g).max()), 1e-3 * scale)) for k, g in grads_big.items()}
    worst = max(errors, key=errors.get)
    if errors[worst] > rtol:
        raise CheckFailed(f"{where}: the accumulated gradients differ from the whole batch's: largest relative error "
                          f"{errors[worst]:.2e} (in {worst}), threshold {rtol:.0e} -- the losses add up, so look at "
                          "what backward() is handed: dL/d(mean) of each micro-batch is its share N_k / N (or B_k / B)")


# ---------------------------------------------------------------------------------- the ring

def ring_case(n: int, length: int, seed: int = 0):
    """N buffers of integers held as float64: their sums are exact, so any wrong chunk shows."""
    r = np.random.default_rng(100 * n + length + seed)
    originals = [r.integers(-50, 50, length).astype(np.float64) for _ in range(n)]
    return originals, [b.copy() for b in originals]


def check_ring(n: int, length: int, seed: int = 0) -> None:
    from bertnp.course.ring import Ring, ring_allreduce
    originals, buffers = ring_case(n, length, seed)
    ring = Ring(n)
    ring_allreduce(buffers, ring)
    expected = np.sum(originals, axis=0)
    where = f"{n} ranks, {length} numbers each"
    for rank, b in enumerate(buffers):
        if not np.array_equal(b, expected):
            wrong = np.flatnonzero(b != expected).tolist()
            if np.allclose(b, expected / n):
                hint = "every rank holds the AVERAGE: an all-reduce sums (the loss shares are already divided by the global counts)"
            elif any(np.allclose(b, expected + k * o) for o in originals for k in (1, -1)):
                hint = "one rank's numbers are counted twice or not at all: a chunk added once too often, or copied instead of added"
            else:
                hint = ("a chunk in the wrong place, or added during the all-gather (which copies), or copied during the "
                        "reduce-scatter (which adds)?")
            raise CheckFailed(f"{where}: after ring_allreduce rank {rank} holds {b.tolist()}, the sum is "
                              f"{expected.tolist()} (wrong at positions {wrong})\n  hint: {hint}")
    check(ring.steps == 2 * (n - 1), f"{where}: ring.exchange calls (a reduce-scatter and an all-gather of N - 1 "
          "steps each)", ring.steps, 2 * (n - 1))
    sent = ring.bytes_sent // 8
    most = 2 * (n - 1) * int(np.ceil(length / n))                  # one chunk (at most ceil(length / N) numbers) a step
    if sent.max() > most:
        raise CheckFailed(f"{where}: the ranks sent {sent.tolist()} numbers; one chunk a step is at most {most} "
                          f"(about 2 (N-1)/N x {length}): send one chunk of the buffer each step, not all of it")


def trusted_file(relative: str) -> Path:
    """``bertnp/<relative>`` of the instructor's package (beside the referee's teach.py): a data file
    a test compares with is never read from the submission. In a handout: the handout's own."""
    path = Path(getattr(teach, "__file__", "")).resolve().parent / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the grading data file is missing")
    return path
