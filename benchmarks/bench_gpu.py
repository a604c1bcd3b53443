"""GPU benchmark: the CUDA kernels of kernels/*.cu against plain CuPy, and a whole training step.

    python benchmarks/bench_gpu.py                      # kernel micro-benchmarks (BERT-base sizes)
    python benchmarks/bench_gpu.py --step               # + one bertnp training step, kernels off/on
    python benchmarks/bench_gpu.py --step --torch       # + HF BertForPreTraining, eager CUDA
    python benchmarks/bench_gpu.py --step --torch --find-batch   # each at the largest batch that fits
    python benchmarks/bench_gpu.py --tf32 ...           # float32 matmuls on TF32 tensor cores (both sides)
    python benchmarks/bench_gpu.py --json out.json      # also write every number as JSON

Per kernel (llm.c's way): each version is first checked against the plain CuPy version of the same
operation (bertnp.ops running on CuPy), then timed: K launches back to back between ONE pair of
CUDA events (no synchronisation between them), so the GPU runs them end to end while Python queues
the next, and the time per launch is the GPU's, not Python's launch overhead (timing each call
between its own events puts that overhead inside every measurement, a large share of a kernel of a
few tens of microseconds). A kernel whose
launches cannot be queued faster than it runs is flagged "launch-bound": its figure is then the
Python launch rate, not the kernel. The achieved bandwidth is compulsory bytes / time -- every input
read once, every output written once -- reported as a percentage of a measured device-to-device
copy (the practical ceiling) and of the card's nominal HBM bandwidth (H100 SXM 3.35 TB/s, H200
4.8 TB/s, ... from NVIDIA's datasheets; else 2 x memory clock x bus width from the device
attributes). These operations are memory-bound, so GB/s, not FLOP/s, says how close to the
hardware a kernel is. Dropout is timed against the scheme it replaced (a cupy.random generator per
site per step) and checked bit for bit against NumPy's mask for the same key.

Without CuPy or a GPU it says so and exits 0, or 3 with ``--require-gpu`` (``--help`` works anywhere).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install

import bertnp as bn                      # noqa: E402
from bertnp import backend, kernels, ops  # noqa: E402

# ----------------------------------------------------------------------------- the device


def gpu_unavailable_reason():
    """None when the CuPy backend can run here, else a sentence saying why not."""
    try:
        backend._import_cupy()
    except RuntimeError as exc:
        return str(exc)
    return None


def device_info(xp) -> dict:
    """Name, SM count and theoretical peak memory bandwidth from the device attributes."""
    runtime = xp.cuda.runtime
    dev = xp.cuda.Device().id
    props = runtime.getDeviceProperties(dev)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    # CUDA 13 dropped these two from cudaDeviceProp; the attribute query still answers.
    clock_khz = props.get("memoryClockRate") or runtime.deviceGetAttribute(36, dev)   # cudaDevAttrMemoryClockRate
    bus_bits = props.get("memoryBusWidth") or runtime.deviceGetAttribute(37, dev)     # ...GlobalMemoryBusWidth
    peak = 2.0 * clock_khz * 1e3 * bus_bits / 8.0          # double data rate: 2 transfers per clock
    nominal = nominal_hbm_gbs(name)
    return {"name": name, "sms": props["multiProcessorCount"], "memory_clock_khz": clock_khz,
            "bus_width_bits": bus_bits, "attribute_peak_gbs": peak / 1e9,
            "nominal_gbs": nominal if nominal is not None else peak / 1e9,
            "nominal_source": "NVIDIA datasheet" if nominal is not None else "device attributes",
            "total_memory_gib": props["totalGlobalMem"] / 2 ** 30}


# Nominal HBM bandwidth (TB/s) from NVIDIA's datasheets, by a substring of the device name; the
# first match wins (so the specific "H100 NVL" and "H100 PCIe" come before the SXM "H100").
NOMINAL_HBM_TBS = (("H200", 4.8), ("H100 NVL", 3.9), ("H100 PCIe", 2.0), ("H100", 3.35),
                   ("A100-SXM4-80GB", 2.039), ("A100 80GB PCIe", 1.935), ("A100", 1.555))


def nominal_hbm_gbs(name: str):
    """The datasheet memory bandwidth of the named device in GB/s, or None when not in the table."""
    for key, tbs in NOMINAL_HBM_TBS:
        if key.lower() in name.lower():
            return tbs * 1000.0
    return None


class Timing(NamedTuple):
    gpu_s: float              # GPU time per call (the best of the rounds)
    issue_s: float            # host time to queue one call (Python + launch)

    @property
    def launch_bound(self) -> bool:
        """Queuing a call takes about as long as running it: the GPU waited for Python."""
        return self.issue_s >= 0.8 * self.gpu_s


def time_launches(fn, n_repeat: int, n_warmup: int = 5, rounds: int = 3) -> Timing:
    """fn() n_repeat times back to back between one pair of CUDA events, best of ``rounds``."""
    xp = backend.xp()
    for _ in range(n_warmup):
        fn()
    xp.cuda.Stream.null.synchronize()
    best_gpu, best_issue = float("inf"), float("inf")
    for _ in range(rounds):
        start, end = xp.cuda.Event(), xp.cuda.Event()
        start.record()
        t0 = time.perf_counter()
        for _ in range(n_repeat):
            fn()
        issued = time.perf_counter() - t0
        end.record()
        end.synchronize()
        best_gpu = min(best_gpu, xp.cuda.get_elapsed_time(start, end) / 1e3 / n_repeat)
        best_issue = min(best_issue, issued / n_repeat)
    return Timing(best_gpu, best_issue)


def gpu_time(fn, n_repeat: int, n_warmup: int = 5) -> float:
    """GPU seconds per call of fn(), n_repeat calls back to back between one pair of events."""
    return time_launches(fn, n_repeat, n_warmup, rounds=1).gpu_s


def configure_tf32(xp, enabled: bool) -> str:
    """Set CuPy's float32 matmul compute type (cuBLAS TF32 tensor cores, or plain FP32) and say
    which one is in force; torch is set to the same in bench_torch. The default is off: float32."""
    try:
        from cupy._core import _routines_linalg as linalg      # CuPy's switch (CUPY_TF32=1 sets it too)
        if enabled:
            linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32)
        mode = linalg.compute_type_to_str(linalg.get_compute_type(np.float32))
    except (ImportError, AttributeError) as exc:                # another CuPy: report, do not guess
        return f"unknown ({exc})"
    return f"TF32 on (CuPy compute type {mode})" if enabled else f"TF32 off, plain FP32 (CuPy compute type {mode})"


def is_out_of_memory(exc: BaseException) -> bool:
    """CuPy's OutOfMemoryError is a MemoryError; torch's says 'out of memory'; cuBLAS's workspace
    failure is CUBLAS_STATUS_ALLOC_FAILED."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "alloc_failed" in text


def largest_batch(fits: Callable[[int], bool], start: int = 8, limit: int = 4096):
    """The largest batch start * 2^k <= limit with fits(batch) True, or None if start does not fit."""
    best, batch = None, start
    while batch <= limit and fits(batch):
        best, batch = batch, 2 * batch
    return best


def measured_copy_gbs(xp, n_repeat: int) -> float:
    """Device-to-device copy of 1 GiB: read + write bytes / time (the practical bandwidth ceiling)."""
    a = xp.ones(2 ** 28, dtype=xp.float32)
    b = xp.empty_like(a)
    t = gpu_time(lambda: xp.copyto(b, a), n_repeat)
    return 2 * a.nbytes / t / 1e9


# ----------------------------------------------------------------------------- kernel micro-benchmarks


class Case(NamedTuple):
    name: str                 # operation and shape
    nbytes: int               # compulsory bytes: inputs read once + outputs written once
    reference: Callable       # plain CuPy (bertnp.ops on the cupy backend) -> array to compare
    versions: dict            # {"v1": fn, ...} -> array to compare
    atol: float
    expected: Callable = None  # what the versions must give, when not the reference's output


def kernel_cases(xp, a) -> list:
    """The hot operations at BERT-training sizes: B x T tokens, H hidden, I intermediate, V vocab,
    P predicted positions (HF's masked-only MLM head)."""
    B, T, H, nh, I, V = a.batch, a.seq, a.hidden, a.heads, a.intermediate, a.vocab
    P = a.batch * a.preds
    rng = np.random.default_rng(0)                   # data made on the host, then copied over
    f = lambda *shape: backend.to_device(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    cases = []

    scores = f(B, nh, T, T)
    keep = rng.random((B, T)) < 0.9
    mask = backend.to_device(((1 - keep) * np.finfo(np.float32).min).astype(np.float32).reshape(B, 1, 1, T))
    n = scores.size
    probs, sm_cache = ops.softmax_forward(scores, mask)
    dprobs = f(B, nh, T, T)
    cases.append(Case(f"softmax+mask fwd {tuple(scores.shape)}", 2 * 4 * n,
                      lambda: ops.softmax_forward(scores, mask)[0],
                      {f"v{v}": (lambda v=v: kernels.softmax_forward(scores, mask, version=v)[0])
                       for v in kernels.VERSIONS["softmax_forward"]}, 1e-6))
    cases.append(Case(f"softmax bwd {tuple(scores.shape)}", 3 * 4 * n,
                      lambda: ops.softmax_backward(dprobs, sm_cache),
                      {f"v{v}": (lambda v=v: kernels.softmax_backward(dprobs, sm_cache, version=v))
                       for v in kernels.VERSIONS["softmax_backward"]}, 2e-6))

    x, gamma, beta = f(B * T, H), 1 + 0.1 * f(H), 0.1 * f(H)
    _, ln_cache = ops.layernorm_forward(x, gamma, beta, 1e-12)
    dout = f(B * T, H)
    cases.append(Case(f"layernorm fwd {tuple(x.shape)}", 4 * (3 * x.size + 2 * H + B * T),
                      lambda: ops.layernorm_forward(x, gamma, beta, 1e-12)[0],
                      {f"v{v}": (lambda v=v: kernels.layernorm_forward(x, gamma, beta, 1e-12, version=v)[0])
                       for v in kernels.VERSIONS["layernorm_forward"]}, 5e-6))
    ln_bwd = {f"v{v}/p{pv}": (lambda v=v, pv=pv: kernels.layernorm_backward(dout, ln_cache, version=v,
                                                                          param_version=pv)[1])
              for v in kernels.VERSIONS["layernorm_backward"] if v < 3
              for pv in kernels.VERSIONS["layernorm_param_grad"]}
    ln_bwd["v3 fused"] = lambda: kernels.layernorm_backward(dout, ln_cache, version=3)[1]
    cases.append(Case(f"layernorm bwd {tuple(x.shape)}", 4 * (3 * x.size + 3 * H + B * T),
                      lambda: ops.layernorm_backward(dout, ln_cache)[1], ln_bwd, 1e-3))

    h = f(B * T, I)
    _, gelu_cache = ops.gelu_forward(h)
    dh = f(B * T, I)
    cases.append(Case(f"gelu fwd {tuple(h.shape)}", 2 * 4 * h.size, lambda: ops.gelu_forward(h)[0],
                      {f"v{v}": (lambda v=v: kernels.gelu_forward(h, version=v)[0])
                       for v in kernels.VERSIONS["gelu"]}, 1e-6))
    cases.append(Case(f"gelu bwd {tuple(h.shape)}", 3 * 4 * h.size,
                      lambda: ops.gelu_backward(dh, gelu_cache),
                      {f"v{v}": (lambda v=v: kernels.gelu_backward(dh, gelu_cache, version=v))
                       for v in kernels.VERSIONS["gelu"]}, 1e-6))

    logits = 3 * f(P, V)
    targets = rng.integers(0, V, P)
    targets[::7] = -100
    targets = backend.to_device(targets)
    _, ce_cache = ops.cross_entropy_forward(logits, targets, check_range=False)
    cases.append(Case(f"cross-entropy fwd {tuple(logits.shape)}", 2 * 4 * logits.size,
                      lambda: ops.cross_entropy_forward(logits, targets, check_range=False)[1].probs,
                      {f"v{v}": (lambda v=v: kernels.cross_entropy_forward(
                          logits, targets, check_range=False, version=v)[1].probs)
                       for v in kernels.VERSIONS["cross_entropy_forward"]}, 1e-8))
    cases.append(Case(f"cross-entropy bwd {tuple(logits.shape)}", 2 * 4 * logits.size,
                      lambda: ops.cross_entropy_backward(1.0, ce_cache),
                      {f"v{v}": (lambda v=v: kernels.cross_entropy_backward(1.0, ce_cache, version=v))
                       for v in kernels.VERSIONS["cross_entropy_backward"]}, 1e-8))

    cases += dropout_cases(xp, scores, dprobs)

    n = V * H                                         # the word-embedding matrix, the largest tensor
    p0, g = f(n), 0.01 * f(n)
    state = {}

    def adam(fn, key, **kw):
        if key not in state:                          # fresh copies per implementation
            state[key] = (p0.copy(), xp.zeros_like(p0), xp.zeros_like(p0))
        p, m, v = state[key]
        fn(p, g, m, v, lr=1e-4, step=1, weight_decay=0.01, **kw)
        return p

    first = {}                                        # the correctness check compares ONE step

    def once(key, fn):
        def run():
            out = fn()
            if key not in first:
                first[key] = out.copy()
            return first[key]
        return run

    cases.append(Case(f"adamw ({n},)", 4 * 7 * n,
                      once("ref", lambda: adam(kernels.adamw_step_reference, "ref")),
                      {f"v{v}": once(f"v{v}", lambda v=v: adam(kernels.adamw_step, f"v{v}", version=v))
                       for v in kernels.VERSIONS["adamw"]}, 1e-6))
    return cases


def previous_dropout(xp, x, p, key):
    """The dropout scheme the Philox kernel replaced (kept here to time against): a cupy.random
    generator per site per step -- XORWOW, a cuRAND state per thread with skip-ahead -- seeded from
    (seed, step, site) through a SeedSequence, one float32 uniform per element, a float scale array."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint64)
    rng = xp.random.default_rng(int(state[0] >> np.uint64(1)))
    scale = rng.random(x.shape, dtype=x.dtype)
    keep = scale >= p
    xp.multiply(keep, x.dtype.type(1.0 / (1.0 - p)), out=scale)
    return x * scale, scale


def dropout_cases(xp, x, dout) -> list:
    """Dropout on the attention probabilities (the largest site): the kernel against the scheme it
    replaced, for time; against NumPy's mask for the same key (bertnp.backend.philox_bits16), for
    correctness (bit for bit: atol 0)."""
    from bertnp.ops import dropout as dropout_module
    p, key, n = 0.1, (0, 1, 1), x.size
    step = [0]

    def expected():                                   # the host path: NumPy's Philox, then a copy up
        with_host = dropout_module._device_kernels
        dropout_module._device_kernels = lambda: None
        try:
            return ops.dropout_forward(x, p, rng=key)[0]
        finally:
            dropout_module._device_kernels = with_host

    def previous():
        step[0] += 1                                  # a new generator each call, as each step had
        return previous_dropout(xp, x, p, (key[0], step[0], key[2]))[0]
    out, cache = ops.dropout_forward(x, p, rng=key)
    _, scale = previous_dropout(xp, x, p, key)
    return [
        Case(f"dropout fwd {tuple(x.shape)}", 9 * n, previous,
             {"philox": lambda: ops.dropout_forward(x, p, rng=key)[0]}, 0.0, expected),
        Case(f"dropout bwd {tuple(x.shape)}", 9 * n, lambda: dout * scale,
             {"mask": lambda: ops.dropout_backward(dout, cache)}, 0.0,
             lambda: expected_backward(dout, cache)),
    ]


def expected_backward(dout, cache):
    """dout * scale * mask, as the host path computes it."""
    dx = dout * dout.dtype.type(cache.scale)
    dx *= cache.mask
    return dx


def check(got, ref, atol) -> str:
    g, r = backend.to_host(got).astype(np.float64), backend.to_host(ref).astype(np.float64)
    err = np.abs(g - r)
    if atol == 0:                                     # bit for bit (NaN in the same places counts)
        return "ok (bitwise)" if np.array_equal(g, r, equal_nan=True) else f"MISMATCH ({int((err > 0).sum())} entries)"
    ok = bool(np.all(err <= atol + 1e-5 * np.abs(r)))
    return "ok" if ok else f"MISMATCH (max |x-ref| {err.max():.2e})"


def run_kernel_benchmarks(xp, args, info) -> list:
    """Every case: the reference and each version, checked, then timed; one row each."""
    rows = []
    print(f"\n{'operation':40s} {'impl':9s} {'time us':>9s} {'GB/s':>7s} {'% copy':>7s} {'% HBM':>6s} "
          f"{'vs CuPy':>8s}  check")
    for case in kernel_cases(xp, args):
        ref_out = case.reference()
        want = case.expected() if case.expected is not None else ref_out
        t_ref = time_launches(case.reference, args.repeat)
        impls = [("cupy", t_ref, "reference")]
        for label, fn in case.versions.items():
            verdict = check(fn(), want, case.atol)
            impls.append((label, time_launches(fn, args.repeat), verdict))
        for label, timing, verdict in impls:
            t = timing.gpu_s
            gbs = case.nbytes / t / 1e9
            row = {"op": case.name, "impl": label, "time_us": t * 1e6, "issue_us": timing.issue_s * 1e6,
                   "launch_bound": timing.launch_bound, "gbs": gbs,
                   "pct_copy": 100 * gbs / info["copy_gbs"], "pct_nominal": 100 * gbs / info["nominal_gbs"],
                   "speedup_vs_cupy": t_ref.gpu_s / t, "check": verdict, "bytes": case.nbytes}
            rows.append(row)
            flag = "  launch-bound" if timing.launch_bound else ""
            print(f"{case.name:40s} {label:9s} {t * 1e6:9.1f} {gbs:7.0f} {row['pct_copy']:6.1f}% "
                  f"{row['pct_nominal']:5.1f}% {t_ref.gpu_s / t:7.2f}x  {verdict}{flag}")
    return rows


# ----------------------------------------------------------------------------- a whole training step


def make_batch(cfg, batch: int, seq: int, preds: int, seed: int = 0) -> dict:
    """Host arrays in HF's names: ~10% padding, `preds` labelled positions per sequence."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, cfg.vocab_size, (batch, seq))
    lengths = rng.integers(int(0.8 * seq), seq + 1, batch)
    attention_mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    token_type_ids = (np.arange(seq)[None, :] >= lengths[:, None] // 2).astype(np.int64) * attention_mask
    labels = np.full((batch, seq), -100, dtype=np.int64)
    for b in range(batch):
        pos = rng.choice(np.arange(1, lengths[b] - 1), size=min(preds, lengths[b] - 2), replace=False)
        labels[b, pos] = ids[b, pos]
    return {"input_ids": ids * attention_mask, "attention_mask": attention_mask,
            "token_type_ids": token_type_ids, "labels": labels,
            "next_sentence_label": rng.integers(0, 2, batch)}


def bench_training_step(model_factory: Callable, batch: dict, steps: int = 10, warmup: int = 3,
                        lr: float = 1e-4) -> dict:
    """Time forward + backward + AdamW + zero_grad of ``model_factory()`` (a bertnp model on the
    active backend); returns seconds per step (GPU time), the loss and the memory pool's peak."""
    xp = backend.xp()
    model = model_factory()
    model.train()
    opt = bn.AdamW(model, lr=lr)

    def step():
        out = model(**batch)
        model.backward()
        opt.step()
        model.zero_grad()
        return out

    out = step()
    t = gpu_time(step, n_repeat=steps, n_warmup=warmup)
    pool = getattr(xp, "get_default_memory_pool", None)        # CuPy's allocator (absent on NumPy)
    pool_gib = pool().total_bytes() / 2 ** 30 if pool else 0.0
    return {"s_per_step": t, "loss": float(backend.to_host(out.loss)), "pool_gib": pool_gib}


def default_model_factory(cfg, use_kernels: bool):
    """A factory for bn.BertForPreTraining, or None when this bertnp has no kernel switch yet.

    Tries, in order: BertForPreTraining(cfg, ..., use_kernels=...), then a ``use_kernels`` field of
    the config. (The switch is wired by the model's owner; this only finds it.)"""
    def plain():
        return bn.BertForPreTraining(cfg, seed=0, dtype="float32")
    if not use_kernels:
        return plain

    def by_argument():
        return bn.BertForPreTraining(cfg, seed=0, dtype="float32", use_kernels=True)
    try:
        by_argument()
        return by_argument
    except TypeError:
        pass
    if hasattr(cfg, "use_kernels"):
        import dataclasses
        cfg_k = dataclasses.replace(cfg, use_kernels=True) if dataclasses.is_dataclass(cfg) else cfg
        return lambda: bn.BertForPreTraining(cfg_k, seed=0, dtype="float32")
    return None


def bench_torch(cfg, batch: dict, steps: int, warmup: int, masked_only: bool, device: str = "cuda",
                tf32: bool = False):
    """HF BertForPreTraining, eager attention, float32: all positions (HF's own loss) or the MLM
    head at the labelled positions only (bertnp's way). None when torch (or CUDA) is missing.
    ``device="cpu"`` runs the same code on the CPU (a dry run for the tests)."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        print(f"  torch side skipped: {exc}")
        return None
    if device == "cuda" and not torch.cuda.is_available():
        print("  torch side skipped: torch.cuda.is_available() is False")
        return None
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = tf32          # the same float32 matmul mode as CuPy's
    torch.backends.cudnn.allow_tf32 = tf32
    hf_cfg = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act, hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps)
    try:
        hf_cfg._attn_implementation = "eager"
    except Exception:  # noqa: BLE001 (older/newer transformers spell it differently)
        pass
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(hf_cfg).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, eps=1e-6, weight_decay=0.01)
    t = {k: torch.as_tensor(v, device=dev) for k, v in batch.items()}
    flat_pos = torch.as_tensor(np.flatnonzero(batch["labels"].reshape(-1) != -100), device=dev)
    flat_labels = t["labels"].reshape(-1)[flat_pos]
    ce = torch.nn.functional.cross_entropy

    def step():
        if masked_only:                      # gather first: no (B, T, V) logits, no host sync
            seq_out, pooled = model.bert(t["input_ids"], attention_mask=t["attention_mask"],
                                         token_type_ids=t["token_type_ids"], return_dict=False)[:2]
            h = seq_out.reshape(-1, seq_out.shape[-1])[flat_pos]
            loss = ce(model.cls.predictions(h), flat_labels) + \
                ce(model.cls.seq_relationship(pooled), t["next_sentence_label"])
        else:
            loss = model(**t).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    if not cuda:
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        return {"s_per_step": (time.perf_counter() - start) / steps, "loss": loss.item(), "peak_gib": 0.0}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        loss = step()
    end.record()
    torch.cuda.synchronize()
    return {"s_per_step": start.elapsed_time(end) / 1e3 / steps, "loss": loss.item(),
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}


def torch_unavailable_reason(device: str = "cuda"):
    """None when torch, transformers and (for "cuda") a CUDA device are there, else why not."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        return str(exc)
    if device == "cuda" and not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return None


def _free_device_memory():
    pool = getattr(backend.xp(), "get_default_memory_pool", None)
    if pool is not None:
        pool().free_all_blocks()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _fits(run: Callable[[], object]) -> bool:
    """True when run() finishes, False when it runs out of device memory (then frees the pools)."""
    try:
        run()
        return True
    except Exception as exc:  # noqa: BLE001 (only out-of-memory is an answer; anything else is raised)
        if not is_out_of_memory(exc):
            raise
        return False
    finally:
        _free_device_memory()


def run_step_benchmarks(args) -> list:
    """Each implementation at --batch, or (--find-batch) at the largest power-of-two batch that fits
    on this card; tokens/s is the figure to compare."""
    cfg = bn.BertConfig.preset(args.preset, vocab_size=args.vocab)
    size = "the largest batch that fits (powers of two)" if args.find_batch else f"batch {args.batch}"
    print(f"\ntraining step: preset {args.preset} (H{cfg.hidden_size}, L{cfg.num_hidden_layers}, "
          f"V{cfg.vocab_size}), {size} x seq {args.seq}, {args.preds} predictions/seq, float32, "
          f"{getattr(args, 'tf32_mode', 'TF32 not configured')}")
    impls = []
    for use_kernels in (False, True):
        factory = default_model_factory(cfg, use_kernels)
        label = "bertnp cupy + kernels" if use_kernels else "bertnp cupy (plain)"
        if factory is None:
            print(f"  {label:34s} skipped: BertForPreTraining has no use_kernels switch yet")
            continue
        impls.append((label, lambda b, steps, warmup, f=factory: bench_training_step(
            f, make_batch(cfg, b, args.seq, args.preds), steps=steps, warmup=warmup)))
    missing = torch_unavailable_reason() if args.torch else None
    if missing:
        print(f"  torch side skipped: {missing}")
    elif args.torch:
        for masked_only in (False, True):
            label = "torch eager, " + ("masked-only MLM" if masked_only else "all positions (HF)")
            impls.append((label, lambda b, steps, warmup, m=masked_only: bench_torch(
                cfg, make_batch(cfg, b, args.seq, args.preds), steps, warmup, m, tf32=args.tf32)))
    rows = []
    for label, run in impls:
        batch = args.batch
        if args.find_batch:
            batch = largest_batch(lambda b: _fits(lambda: run(b, 1, 1)), start=8, limit=args.max_batch)
            if batch is None:
                print(f"  {label:34s} skipped: batch 8 does not fit")
                continue
        r = run(batch, args.steps, args.warmup)
        tokens = batch * args.seq
        rows.append({"impl": label, "batch": batch, "tokens_per_s": tokens / r["s_per_step"], **r})
        memory = f"pool {r['pool_gib']:.1f} GiB" if "pool_gib" in r else f"peak {r['peak_gib']:.1f} GiB"
        print(f"  {label:34s} batch {batch:4d} {r['s_per_step'] * 1e3:9.1f} ms/step  "
              f"{tokens / r['s_per_step']:10.0f} tok/s  loss {r['loss']:.3f}  {memory}")
    return rows


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-kernels", action="store_true", help="skip the kernel micro-benchmarks")
    p.add_argument("--step", action="store_true", help="time a whole bertnp training step, kernels off and on")
    p.add_argument("--torch", action="store_true", help="with --step: also HF BertForPreTraining, eager CUDA")
    p.add_argument("--preset", default="base", help="BertConfig preset for --step (default base)")
    p.add_argument("--batch", type=int, default=32, help="sequences per batch (default 32)")
    p.add_argument("--find-batch", action="store_true",
                   help="with --step: run each implementation at the largest batch (8, 16, 32, ...) that fits")
    p.add_argument("--max-batch", type=int, default=4096, help="with --find-batch: the largest batch tried")
    p.add_argument("--tf32", action="store_true",
                   help="float32 matmuls on TF32 tensor cores, for CuPy and torch alike (default: off, FP32)")
    p.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    p.add_argument("--preds", type=int, default=20, help="masked positions per sequence (default 20)")
    p.add_argument("--hidden", type=int, default=768, help="micro-benchmarks: hidden size (768)")
    p.add_argument("--heads", type=int, default=12, help="micro-benchmarks: attention heads (12)")
    p.add_argument("--intermediate", type=int, default=3072, help="micro-benchmarks: FFN size (3072)")
    p.add_argument("--vocab", type=int, default=30522, help="vocabulary size (30522)")
    p.add_argument("--repeat", type=int, default=50, help="timed repetitions per kernel (50)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps (10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (3)")
    p.add_argument("--json", type=Path, help="write all results to this JSON file")
    p.add_argument("--require-gpu", action="store_true",
                   help="exit with status 3 (not 0) when there is no GPU to benchmark on")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = gpu_unavailable_reason()
    if reason is not None:
        print(f"bench_gpu: no GPU to benchmark on, nothing measured ({reason})")
        return 3 if args.require_gpu else 0
    bn.set_backend("cupy")
    xp = backend.xp()
    info = device_info(xp)
    info["tf32"] = args.tf32_mode = configure_tf32(xp, args.tf32)
    info["copy_gbs"] = measured_copy_gbs(xp, args.repeat)
    print(f"{info['name']}: {info['sms']} SMs, {info['total_memory_gib']:.0f} GiB; nominal memory bandwidth "
          f"{info['nominal_gbs']:.0f} GB/s ({info['nominal_source']}; device attributes: 2 x "
          f"{info['memory_clock_khz'] / 1e3:.0f} MHz x {info['bus_width_bits']} bit = "
          f"{info['attribute_peak_gbs']:.0f} GB/s), measured device copy {info['copy_gbs']:.0f} GB/s "
          f"({100 * info['copy_gbs'] / info['nominal_gbs']:.0f}% of nominal); float32 matmuls: {info['tf32']}")
    print(f"kernels from {kernels.kernel_dir()}; compiled {len(kernels.compile_all())} kernels "
          f"(NVRTC, {' '.join(kernels.COMPILE_OPTIONS)})")
    results = {"device": info, "args": {k: str(v) for k, v in vars(args).items()},
               "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.no_kernels:
        results["kernels"] = run_kernel_benchmarks(xp, args, info)
    if args.step:
        results["step"] = run_step_benchmarks(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
        print(f"\nwrote {args.json}")
    if any(not r.get("check", "ok").startswith(("ok", "reference")) for r in results.get("kernels", [])):
        print("\nbench_gpu: some kernel did not match the CuPy reference (see 'check' above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
