"""CPU benchmark: a bertnp training step against PyTorch, in one process, in alternating rounds.

    python benchmarks/bench_cpu.py                    # BERT-mini, all variants, memory, profile -> RESULTS.md
    python benchmarks/bench_cpu.py --rounds 5 --no-memory --no-write
    python benchmarks/bench_cpu.py --config tiny --no-torch --rounds 2      # bertnp only (what the test runs)
    python benchmarks/bench_cpu.py --json out.json    # also every number as JSON

What is timed (same config, same batch, same initial weights, same thread count for NumPy and torch):

    A  bertnp, float32: model(...labels...) -> model.backward() -> AdamW.step()   (MLM logits at the
       labelled positions only, as bertnp always does when given labels), the forward and backward
       run as bertnp's training loop runs them: the batch's rows shared out over the cores, a model
       replica each (bertnp.cores), and the last layer's dense sublayers only at the rows the heads
       read (``skip_unscored_rows``, as the Trainer sets it: the same losses and gradients)
    A0 A with the last layer at every row, as B, C and D compute it (the same work as C and D)
    B  Hugging Face BertForPreTraining, eager PyTorch CPU, torch.optim.AdamW: HF computes the MLM
       logits at every position (B*T rows of the 30k-way decoder) -- what users of HF run
    C  PyTorch, the fair best: HF's encoder and heads, but the MLM head applied only at the labelled
       positions (the same work as A), then the same AdamW
    D  the best eager PyTorch we know: C with SDPA attention (named explicitly) and
       torch.optim.AdamW(fused=True)
    P  a NumPy float32 matmul (2048^3), the peak that MFU is measured against

Each round runs one training step and one inference (eval mode, no dropout, no gradient: the
pretraining loss of the batch; bertnp's as its evaluation runs, a share of the rows per core) of every variant and one peak matmul, in an order rotated every
round (so slow drift or a busy neighbour hits all of them alike), after warm-up calls. Reported:
median and min-max over the rounds, tokens/s, and GFLOP/s counted analytically for the masked-only
step with the last layer at the scored rows only, what A executes (:func:`step_flops`; every other
variant is credited with the same *useful* FLOPs, though it executes more); MFU against the best
peak of the run.

Peak memory: each variant runs again in a fresh subprocess (build, warm up, a few steps) and
reports its peak resident set size (Linux VmHWM): the whole process, and the part above the RSS
measured just before the model is built (interpreter, libraries and the batch excluded): the
model, its gradients, the optimizer state and the activations of a step. See README.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

THREADS_DEFAULT = 2
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _threads_from_argv(argv) -> int:
    """Read --threads before NumPy is imported (BLAS reads its thread count once, at load)."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return THREADS_DEFAULT


if __name__ == "__main__":
    for _var in _THREAD_VARIABLES:          # this process only: the machine's settings are left alone
        os.environ[_var] = str(_threads_from_argv(sys.argv))

import numpy as np  # noqa: E402  (after the thread count is set)

ROOT = Path(__file__).resolve().parents[1]
try:
    import bertnp as bn
except ImportError:                          # run from a checkout without installing
    sys.path.insert(0, str(ROOT))
    import bertnp as bn
from bertnp.cores import CoreReplicas  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
GPU_PLACEHOLDER = "## GPU\n\nNot measured yet: no GPU was available to this session.\n"
PEAK_SIZE = 2048

VARIANTS = {
    "A": "bertnp (NumPy, float32)",
    "A0": "bertnp, the last layer at every row (as B, C and D compute it)",
    "B": "HF BertForPreTraining, eager PyTorch (MLM at all positions)",
    "C": "PyTorch, MLM at the labelled positions only",
    "D": "PyTorch, masked-only MLM, SDPA attention, AdamW(fused=True)",
}
TORCH_VARIANTS = {          # name: (MLM only at the labelled rows, attention implementation, fused AdamW)
    "B": (False, None, False),
    "C": (True, None, False),
    "D": (True, "sdpa", True),
}


# ============================================================================ setup

def make_config(name: str = "mini", **overrides) -> "bn.BertConfig":
    """A bertnp config from a preset (vocab 30522, dropout 0.1 unless overridden)."""
    overrides.setdefault("vocab_size", 30522)
    return bn.BertConfig.preset(name, **overrides)


def make_batch(config, batch: int, seq_len: int, predictions: int, seed: int = 0) -> dict:
    """A synthetic pretraining batch: [CLS] A [SEP] B [SEP] with two segments, full attention,
    ``predictions`` labelled positions per sequence (never [CLS]/[SEP]), NSP labels 0/1."""
    if predictions > seq_len - 3:
        raise ValueError(f"predictions ({predictions}) must be at most seq_len - 3 ({seq_len - 3})")
    rng = np.random.default_rng(seed)
    low = min(1000, config.vocab_size // 2)
    ids = rng.integers(low, config.vocab_size, (batch, seq_len))
    cls_id, sep_id, mask_id = 101 % config.vocab_size, 102 % config.vocab_size, 103 % config.vocab_size
    split = seq_len // 2
    ids[:, 0], ids[:, split], ids[:, -1] = cls_id, sep_id, sep_id
    types = np.zeros((batch, seq_len), dtype=np.int64)
    types[:, split + 1:] = 1
    labels = np.full((batch, seq_len), -100, dtype=np.int64)
    candidates = np.array([t for t in range(1, seq_len - 1) if t != split])
    for b in range(batch):
        positions = rng.choice(candidates, predictions, replace=False)
        labels[b, positions] = ids[b, positions]
        ids[b, positions] = mask_id
    return dict(input_ids=ids, attention_mask=np.ones((batch, seq_len), dtype=np.int64),
                token_type_ids=types, labels=labels,
                next_sentence_label=rng.integers(0, 2, batch).astype(np.int64))


def step_flops(config, batch: int, seq_len: int, predictions: int) -> dict:
    """Matmul FLOPs of one masked-only training step and of its forward pass (multiply-add = 2).

    forward, with N = batch * predictions labelled rows, C hidden, I intermediate, V vocab:
        per layer   2BT(3C^2 + C^2 + 2CI)    QKV, attention output, FFN in and out
                  + 4BT^2 C                  scores Q K^T and context P V (all heads)
        MLM head    2N(C^2 + CV)             transform dense + tied decoder, labelled rows only
        NSP         2B(C^2 + 2C)             pooler dense + the 2-way classifier
    step = 3 x forward: the backward of every matmul is two matmuls of the same size (dX and dW).
    Elementwise work (softmax, LayerNorm, GELU, ...) is not counted, as usual for MFU.
    ``all_positions_step`` is what HF executes (the decoder at all B*T rows); ``scored_step`` what
    bertnp's training step executes (``skip_unscored_rows``): the last layer's attention output and
    FFN at the S = N + B rows the heads read only, 2S(C^2 + 2CI) instead of 2BT(C^2 + 2CI)."""
    B, T, C, I, V = batch, seq_len, config.hidden_size, config.intermediate_size, config.vocab_size
    N = batch * predictions
    S = N + B                                          # labelled positions (never [CLS]) and each [CLS]
    layer = 2 * B * T * (4 * C * C + 2 * C * I) + 4 * B * T * T * C
    scored_layer = 2 * B * T * 3 * C * C + 4 * B * T * T * C + 2 * S * (C * C + 2 * C * I)
    encoder = config.num_hidden_layers * layer
    nsp = 2 * B * (C * C + 2 * C)
    forward = encoder + 2 * N * (C * C + C * V) + nsp
    scored = forward - layer + scored_layer
    all_positions = encoder + 2 * B * T * (C * C + C * V) + nsp
    return {"forward": forward, "step": 3 * forward, "all_positions_step": 3 * all_positions,
            "all_positions_forward": all_positions, "scored_forward": scored, "scored_step": 3 * scored}


# ============================================================================ the variants

class BertnpVariant:
    """A: bertnp BertForPreTraining in float32 with bertnp's AdamW, stepped as bertnp's training
    loop steps it: the batch's rows shared out over the CPU cores, a model replica each
    (bertnp.cores; one thread: the whole batch on the model), the last layer at the scored rows
    only. A0 (``every_row``): the last layer at every row."""

    def __init__(self, config, batch, seed: int = 0, every_row: bool = False):
        self.name = "A0" if every_row else "A"
        self.model = bn.BertForPreTraining(config, seed=seed, dtype="float32")
        self.model.skip_unscored_rows = not every_row
        self.cores = CoreReplicas(self.model)
        self.opt = None            # built at the first training step, as torch's AdamW builds its state
        self.batch = batch
        # every share's losses over the whole batch's counts: they add up to the batch's means
        self.counts = {"mlm_denominator": int((batch["labels"] != -100).sum()),
                       "nsp_denominator": int(batch["input_ids"].shape[0])}

    def _forward_backward(self, model, share):
        out = model(**share, **self.counts)
        model.backward()
        return out.loss

    def train_step(self) -> float:
        if self.opt is None:
            self.opt = bn.AdamW(self.model, lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
        self.model.train()
        self.model.zero_grad()
        losses = self.cores.run(self.batch, self._forward_backward)
        self.opt.step()
        return float(sum(losses))

    def infer(self) -> float:
        """The eval-mode loss, a share of the rows per core, as the Trainer's evaluation runs it."""
        self.model.eval()
        losses = self.cores.run(self.batch, lambda model, share: model(**share, **self.counts).loss,
                                gradients=False)
        return float(sum(losses))


class TorchVariant:
    """B: HF BertForPreTraining as is. C: HF's encoder, then its MLM head on the labelled rows
    only. D: C with SDPA attention and the fused AdamW. All start from A's weights."""

    def __init__(self, config, batch, name: str, state_dict=None, threads: int = THREADS_DEFAULT):
        import torch
        import transformers
        torch.set_num_threads(threads)
        self.torch = torch
        self.name = name
        masked_only, attention, fused = TORCH_VARIANTS[name]
        self.masked_only = masked_only
        settings = {k: v for k, v in config.to_dict().items() if k not in ("architectures", "model_type")}
        if attention:
            settings["attn_implementation"] = attention
        hf_config = transformers.BertConfig(**settings)
        torch.manual_seed(0)
        self.model = transformers.BertForPreTraining(hf_config)
        if state_dict is not None:       # the same initial weights as bertnp (HF names, HF layout)
            tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state_dict.items()}
            result = self.model.load_state_dict(tensors, strict=False)
            missing = [k for k in result.missing_keys if "decoder" not in k and "position_ids" not in k]
            if missing or result.unexpected_keys:
                raise RuntimeError(f"weights did not carry over to HF: {missing} {result.unexpected_keys}")
            self.model.tie_weights()
        no_decay = [p for n, p in self.model.named_parameters() if n.endswith(".bias") or "LayerNorm" in n]
        decay = [p for n, p in self.model.named_parameters() if not (n.endswith(".bias") or "LayerNorm" in n)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=1e-4, betas=(0.9, 0.999), eps=1e-6, **({"fused": True} if fused else {}))
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", "?")
        t = {k: torch.from_numpy(v) for k, v in batch.items()}
        self.inputs = dict(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                           token_type_ids=t["token_type_ids"])
        self.labels, self.nsp_labels = t["labels"], t["next_sentence_label"]
        flat = t["labels"].reshape(-1)
        self.positions = torch.nonzero(flat != -100).reshape(-1)      # (N,) row-major, as bertnp
        self.targets = flat[self.positions]

    def loss(self):
        F = self.torch.nn.functional
        if not self.masked_only:
            return self.model(**self.inputs, labels=self.labels, next_sentence_label=self.nsp_labels).loss
        hidden, pooled = self.model.bert(**self.inputs)[:2]                  # (B, T, C), (B, C)
        selected = hidden.reshape(-1, hidden.shape[-1])[self.positions]      # (N, C)
        mlm_logits = self.model.cls.predictions(selected)                    # (N, V)
        nsp_logits = self.model.cls.seq_relationship(pooled)                 # (B, 2)
        return F.cross_entropy(mlm_logits, self.targets) + F.cross_entropy(nsp_logits, self.nsp_labels)

    def train_step(self) -> float:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss()
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def infer(self) -> float:
        self.model.eval()
        with self.torch.inference_mode():
            return float(self.loss())


class PeakVariant:
    """P: one float32 (n x n) @ (n x n) NumPy matmul, the machine's practical peak."""
    name = "P"

    def __init__(self, size: int = PEAK_SIZE):
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((size, size), dtype=np.float32)
        self.b = rng.standard_normal((size, size), dtype=np.float32)
        self.out = np.empty((size, size), dtype=np.float32)
        self.flops = 2 * size ** 3

    def train_step(self) -> float:
        np.matmul(self.a, self.b, out=self.out)
        return 0.0

    infer = train_step


def torch_available() -> str | None:
    """None if torch and transformers import, else why not."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"{type(exc).__name__}: {exc}"
    return None


# ============================================================================ timing

PAUSE_S = 0.2    # before each timed call: OpenBLAS's idle workers spin up to 2^28 cycles (~0.1 s)


def alternate(calls: dict, rounds: int, warmup: int, pause: float = PAUSE_S) -> dict:
    """Time every ``calls[key]()`` once per round, ``rounds`` times, in an order rotated every round,
    after ``warmup`` untimed calls each. Returns {key: [seconds, ...]}."""
    keys = list(calls)
    for key in keys:
        for _ in range(warmup):
            calls[key]()
    times = {key: [] for key in keys}
    for r in range(rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            time.sleep(pause)        # let the previous call's spinning threads go back to sleep
            start = time.perf_counter()
            calls[key]()
            times[key].append(time.perf_counter() - start)
    return times


def summarise(seconds: list) -> dict:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "n": len(seconds)}


# ============================================================================ memory (fresh subprocesses)

def _proc_status() -> dict:
    values = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, rest = line.split(":", 1)
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where it cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_child(variant: str, mode: str, args) -> dict:
    """Run in a fresh process: build one variant, warm up, run steps; report the peak RSS."""
    import resource
    config = make_config(args.config, **_overrides(args))
    batch = make_batch(config, args.batch, args.seq, args.predictions)
    if variant in TORCH_VARIANTS:
        import torch  # noqa: F401  (imported before the baseline: libraries are not the model)
        import transformers  # noqa: F401
    bn.backend.retain_freed_host_memory()
    base = _proc_status().get("VmRSS")
    exact = _reset_peak() and base is not None
    if variant in ("A", "A0"):
        runner = BertnpVariant(config, batch, every_row=variant == "A0")
    else:
        runner = TorchVariant(config, batch, variant, threads=args.threads)
    call = runner.train_step if mode == "train" else runner.infer
    for _ in range(args.memory_steps):
        call()
    status = _proc_status()
    peak = status.get("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "mode": mode, "peak_rss": peak, "baseline_rss": base,
            "above_baseline": (peak - base) if (peak is not None and base is not None) else None,
            "method": "VmHWM after clear_refs" if exact else "ru_maxrss (includes imports)"}


def measure_memory(args, variants, modes=("train", "infer")) -> list:
    """One fresh subprocess per (variant, mode)."""
    results = []
    for mode in modes:
        for variant in variants:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", f"{variant}:{mode}",
                   "--config", args.config, "--batch", str(args.batch), "--seq", str(args.seq),
                   "--predictions", str(args.predictions), "--threads", str(args.threads),
                   "--memory-steps", str(args.memory_steps)]
            for key in ("vocab", "hidden", "layers", "heads", "intermediate", "dropout"):
                value = getattr(args, key)
                if value is not None:
                    cmd += [f"--{key}", str(value)]
            env = dict(os.environ, **{v: str(args.threads) for v in _THREAD_VARIABLES})
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"memory run {variant}:{mode} failed:\n{done.stderr[-2000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


# ============================================================================ the whole run

def _overrides(args) -> dict:
    out = {}
    for key, field in (("vocab", "vocab_size"), ("hidden", "hidden_size"), ("layers", "num_hidden_layers"),
                       ("heads", "num_attention_heads"), ("intermediate", "intermediate_size")):
        if getattr(args, key, None) is not None:
            out[field] = int(getattr(args, key))
    if getattr(args, "hidden", None) is not None:
        out.setdefault("num_attention_heads", max(1, int(args.hidden) // 64))
        out.setdefault("intermediate_size", 4 * int(args.hidden))
    if getattr(args, "dropout", None) is not None:
        out["hidden_dropout_prob"] = out["attention_probs_dropout_prob"] = float(args.dropout)
    return out


def loadavg() -> list:
    try:
        with open("/proc/loadavg") as fh:
            return fh.read().split()[:3]
    except OSError:
        return []


def wait_idle(limit_s: float, threshold: float = 0.5, poll_s: float = 5.0) -> bool:
    """Wait (up to ``limit_s``) until the 1-minute load average is below ``threshold``: timings on
    a machine that another job is using measure that job as much as this one."""
    deadline = time.monotonic() + limit_s
    while True:
        load = loadavg()
        if not load or float(load[0]) < threshold:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def run(args) -> dict:
    """Everything the report needs, as plain data."""
    if args.wait_idle:
        idle = wait_idle(args.wait_idle)
        print(f"machine idle: {idle} (load average {' '.join(loadavg())})", file=sys.stderr)
    load_start = loadavg()
    retained = bn.backend.retain_freed_host_memory()   # as bertnp's training loop does (all variants)
    config = make_config(args.config, **_overrides(args))
    batch = make_batch(config, args.batch, args.seq, args.predictions)
    flops = step_flops(config, args.batch, args.seq, args.predictions)
    variants = {"A": BertnpVariant(config, batch), "A0": BertnpVariant(config, batch, every_row=True)}
    notes = []
    use_torch = not args.no_torch
    torch_version = attn = None
    if use_torch:
        reason = torch_available()
        if reason:
            notes.append(f"PyTorch variants skipped: {reason}")
            use_torch = False
    if use_torch:
        import torch
        import transformers
        torch_version = f"torch {torch.__version__}, transformers {transformers.__version__}"
        state = variants["A"].model.state_dict()
        for name in TORCH_VARIANTS:
            variants[name] = TorchVariant(config, batch, name, state_dict=state, threads=args.threads)
        attn = {name: variants[name].attn_implementation for name in TORCH_VARIANTS}
        torch_threads = torch.get_num_threads()
    else:
        torch_threads = None
    # the three compute the same loss from the same weights and batch (eval mode: no dropout)
    eval_losses = {name: v.infer() for name, v in variants.items()}
    variants["P"] = PeakVariant(args.peak_size)

    # training steps, inference and the peak matmul all share the same rounds: whatever else the
    # machine does during the run falls on every column alike
    calls = {(name, "train"): v.train_step for name, v in variants.items() if name != "P"}
    calls[("P", "peak")] = variants["P"].train_step
    calls.update({(name, "infer"): v.infer for name, v in variants.items() if name != "P"})
    times = alternate(calls, args.rounds, args.warmup)
    train_times = {name: t for (name, mode), t in times.items() if mode == "train"}
    infer_times = {name: t for (name, mode), t in times.items() if mode == "infer"}
    peak = summarise([variants["P"].flops / s for s in times[("P", "peak")]])

    result = {
        "config": {k: v for k, v in config.to_dict().items() if k not in ("architectures", "model_type")},
        "preset": args.config, "batch": args.batch, "seq": args.seq, "predictions": args.predictions,
        "threads": {"numpy_env": {v: os.environ.get(v) for v in _THREAD_VARIABLES}, "torch": torch_threads,
                    "bertnp": bn.parallel.num_threads()},
        "flops": flops, "rounds": args.rounds, "warmup": args.warmup,
        "peak_size": args.peak_size, "peak_flops_per_s": peak,
        "train": {n: summarise(t) for n, t in train_times.items()},
        "infer": {n: summarise(t) for n, t in infer_times.items()},
        "eval_losses": eval_losses, "notes": notes, "torch_version": torch_version,
        "attn_implementation": attn, "machine": machine_info(), "loadavg_start": load_start,
        "retained": retained,
        "command": " ".join(["python benchmarks/bench_cpu.py"] + list(getattr(args, "argv", []))),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if args.memory:
        result["memory"] = measure_memory(args, [n for n in variants if n != "P"])
    if args.profile:
        import profile_step
        result["profile"] = profile_step.profile(config, batch, steps=args.profile_steps, warmup=args.warmup)
        if args.profile_before:
            result["profile_before"] = json.loads(args.profile_before.read_text())
            result["profile_before_file"] = str(args.profile_before)
    return result


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl",
              "avx512_vnni", "avx512_bf16", "amx_tile")


def machine_kind(machine: dict) -> str:
    """The RESULTS.md section this machine's figures go to: one per kind of CPU (issue 18)."""
    return "## CPU, with AVX-512" if machine.get("avx512") else "## CPU, without AVX-512"


def machine_info() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__, "bertnp": bn.__version__,
            "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
        flag_set = set(flags.split(":", 1)[-1].split())
        info["avx512"] = "avx512f" in flag_set
        info["simd_flags"] = [f for f in SIMD_FLAGS if f in flag_set]   # what NumPy's and BLAS's kernels can use
        with open("/proc/loadavg") as fh:
            info["loadavg"] = fh.read().split()[:3]
    except OSError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy: no dict mode
        info["blas"] = "?"
    return info


# ============================================================================ the report

def _ms(x: float) -> str:
    return f"{x * 1e3:.0f}" if x >= 0.1 else f"{x * 1e3:.1f}"


def _mib(nbytes) -> str:
    return "?" if nbytes is None else f"{nbytes / 2 ** 20:.0f}"


def targets(result: dict) -> list:
    """(target, measured, ok) rows for the issue's targets (where the variants were measured)."""
    rows = []
    train = result["train"]
    a = train["A"]["median"]
    peak = result["peak_flops_per_s"]["max"]
    if "D" in train:
        ratio = a / train["D"]["median"]
        rows.append(("A step <= 0.9 x D step", f"{ratio:.2f} x", ratio <= 0.9))
    if "B" in train:
        ratio = a / train["B"]["median"]
        rows.append(("A step <= 0.5 x B step", f"{ratio:.2f} x", ratio <= 0.5))
    mfu = result["flops"]["scored_step"] / a / peak
    rows.append(("A MFU >= 55% of the NumPy matmul peak", f"{100 * mfu:.0f}%", mfu >= 0.55))
    memory = {(m["variant"], m["mode"]): m for m in result.get("memory", [])}
    if ("A", "train") in memory and ("C", "train") in memory:
        ma, mc = memory[("A", "train")]["above_baseline"], memory[("C", "train")]["above_baseline"]
        if ma is not None and mc is not None:
            rows.append(("A peak memory <= C peak memory (above baseline)", f"{_mib(ma)} vs {_mib(mc)} MiB", ma <= mc))
    return rows


def render(result: dict) -> str:
    """The CPU section of RESULTS.md (from its heading up to, not including, the next section)."""
    cfg, fl, m = result["config"], result["flops"], result["machine"]
    tokens = result["batch"] * result["seq"]
    peak = result["peak_flops_per_s"]
    lines = [machine_kind(m), "",
             f"Generated by `benchmarks/bench_cpu.py` on {result['date']}; re-run it to replace this section.", "",
             f"- Command: `{result['command'].strip()}`",
             f"- Machine: {m.get('cpu', '?')}, {m.get('cpus')} CPUs (AVX-512: {m.get('avx512', '?')}; "
             f"SIMD flags: {' '.join(m.get('simd_flags', [])) or '?'}), "
             f"{m.get('platform')}; load average (1, 5, 15 min) at the start {' '.join(result.get('loadavg_start', []))}, "
             f"at the end {' '.join(m.get('loadavg', []))}",
             f"- Software: Python {m['python']}, NumPy {m['numpy']} ({m.get('blas')}), bertnp {m['bertnp']}"
             + (f", {result['torch_version']} (attention: "
                + ", ".join(f"{k} {v}" for k, v in result["attn_implementation"].items()) + ")"
                if result["torch_version"] else ""),
             f"- Threads: NumPy/OpenBLAS {result['threads']['numpy_env'].get('OPENBLAS_NUM_THREADS')}, "
             f"bertnp.parallel {result['threads'].get('bertnp', '?')}"
             + (f", torch {result['threads']['torch']}" if result["threads"]["torch"] else "")
             + " (set for this process only)",
             "- Allocator: " + ("glibc keeps freed memory for reuse in every variant "
                                "(`bertnp.backend.retain_freed_host_memory()`, which bertnp's training loop calls: "
                                "no page faults re-allocating activations each step)" if result.get("retained")
                                else "the C library's defaults"),
             f"- Model: preset `{result['preset']}`: vocab {cfg['vocab_size']}, hidden {cfg['hidden_size']}, "
             f"{cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']} heads, intermediate "
             f"{cfg['intermediate_size']}, dropout {cfg['hidden_dropout_prob']}; batch {result['batch']} x seq "
             f"{result['seq']}, {result['predictions']} predicted positions per sequence",
             f"- Work: {fl['scored_step'] / 1e9:.1f} GFLOP per training step as A executes it (MLM logits at the "
             f"labelled positions, the last layer at the {result['batch'] * (result['predictions'] + 1)} scored rows), "
             f"{fl['scored_forward'] / 1e9:.1f} per forward; A0, C and D execute {fl['step'] / 1e9:.1f} (the last "
             f"layer at every row), B {fl['all_positions_step'] / 1e9:.1f} (the decoder at every position too). "
             "FLOPs are counted analytically (README.md), and every variant is credited with A's count",
             f"- Peak: NumPy float32 {result['peak_size']}^3 matmul, timed in the same rounds: best "
             f"{peak['max'] / 1e9:.0f} GFLOP/s (median {peak['median'] / 1e9:.0f}, worst {peak['min'] / 1e9:.0f}); "
             "MFU = achieved GFLOP/s (at the median time) / the best peak",
             f"- Rounds: {result['rounds']}, each timing one training step, one inference and one peak matmul "
             f"of every variant in a rotated order, after {result['warmup']} warm-up calls each; "
             "times are median (min-max)",
             "- Same initial weights and batch for all: eval-mode losses "
             + ", ".join(f"{k} {v:.5f}" for k, v in result["eval_losses"].items()), ""]
    load = result.get("loadavg_start") or []
    if load and float(load[0]) >= 1.0:
        lines += [f"**Warning: the machine was busy** (load average {load[0]} at the start, {m.get('loadavg', ['?'])[0]} "
                  f"at the end, on {m.get('cpus')} CPUs): other jobs took most of the cores, so these figures "
                  "measure them as much as the variants -- the peak matmul included -- and a static "
                  "thread split (OpenBLAS's, torch's) suffers more from a taken core than bertnp's "
                  "dynamic one. Take the targets below from an idle machine's run.", ""]
    for note in result["notes"]:
        lines += [f"Note: {note}", ""]
    for key, title, work in (("train", "Training step (forward with labels, backward, AdamW)", fl["scored_step"]),
                             ("infer", "Inference (eval mode, forward only: the pretraining loss)", fl["scored_forward"])):
        rows = result[key]
        lines += [f"### {title}", "",
                  "| variant | ms / step, median (min-max) | tokens/s | GFLOP/s | MFU | time vs A |",
                  "|---|---|---|---|---|---|"]
        a = rows["A"]["median"]
        for name, s in rows.items():
            lines.append(f"| {name}: {VARIANTS[name]} | {_ms(s['median'])} ({_ms(s['min'])}-{_ms(s['max'])}) | "
                         f"{tokens / s['median']:,.0f} | {work / s['median'] / 1e9:.0f} | "
                         f"{100 * work / s['median'] / peak['max']:.0f}% | {s['median'] / a:.2f} |")
        lines.append("")
    if result.get("memory"):
        lines += ["### Peak memory (each variant alone in a fresh process)", "",
                  "| variant | mode | peak RSS, MiB | above the pre-model baseline, MiB | baseline, MiB |",
                  "|---|---|---|---|---|"]
        for mem in result["memory"]:
            lines.append(f"| {mem['variant']} | {mem['mode']} | {_mib(mem['peak_rss'])} | "
                         f"{_mib(mem['above_baseline'])} | {_mib(mem['baseline_rss'])} |")
        lines += ["", f"Method: {result['memory'][0]['method']}. The baseline is the process (interpreter, "
                  "NumPy, torch for B, C and D, the batch) just before the model is built; above it: parameters, "
                  "gradients, optimizer state and a step's activations.", ""]
    lines += ["### Targets (issue 18)", "", "| target | measured | met |", "|---|---|---|"]
    for target, measured, ok in targets(result):
        lines.append(f"| {target} | {measured} | {'yes' if ok else 'NO'} |")
    lines.append("")
    if result.get("profile"):
        import profile_step
        lines += profile_step.render(result["profile"])
        if result.get("profile_before"):
            before = result["profile_before"]
            lines += ["### The profile before and after", "",
                      f"The ten largest rows of the profile in `{result['profile_before_file']}` (bertnp "
                      f"from `{before.get('bertnp', '?')}`, {before.get('note', 'saved by profile_step.py --json')}) "
                      "and of the one above, each in its own steps:", ""]
            lines += profile_step.render_comparison(before, result["profile"], top=10)
    return "\n".join(lines).rstrip() + "\n"


HEADER = """# bertnp benchmarks

Speed and memory of a bertnp training step, measured by the harnesses in this folder. Each section
is regenerated by its harness (`python benchmarks/bench_cpu.py` writes the CPU section of its kind of machine); how the numbers
are made, and what they mean, is in [README.md](README.md).

"""


def write_results(section: str, path: Path = RESULTS) -> Path:
    """Replace the section of ``path`` whose heading is the first line of ``section`` (one per kind
    of CPU, e.g. ``## CPU, with AVX-512``), or add it before ``## GPU``; keep the rest (the other
    kind's figures and the GPU section). Creates the file if needed."""
    text = path.read_text() if path.exists() else HEADER
    lines = text.splitlines(keepends=True)
    heading = section.splitlines()[0].rstrip()
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        gpu = next((i for i, line in enumerate(lines) if line.rstrip() == "## GPU"), len(lines))
        before, after = "".join(lines[:gpu]), "".join(lines[gpu:])
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before, after = "".join(lines[:start]), "".join(lines[end:])
    if "## GPU" not in after and "## GPU" not in before:
        after = after + ("\n" if after and not after.endswith("\n\n") else "") + GPU_PLACEHOLDER
    before = before.rstrip("\n") + "\n\n" if before.strip() else before
    new = before + section + ("\n" + after if after else "")
    path.write_text(new)
    return path


# ============================================================================ command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="mini", help="bertnp preset (tiny | mini | small | ...); default mini")
    p.add_argument("--vocab", type=int, help="vocab size (default 30522)")
    p.add_argument("--hidden", type=int, help="override hidden size (heads = hidden/64, intermediate = 4x)")
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--dropout", type=float, help="hidden and attention dropout (default 0.1)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--predictions", type=int, default=20, help="labelled positions per sequence")
    p.add_argument("--threads", type=int, default=THREADS_DEFAULT, help="BLAS / torch threads (default 2)")
    p.add_argument("--rounds", type=int, default=12, help="timed rounds (each: a step of everything)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--peak-size", type=int, default=PEAK_SIZE, help="n of the n^3 peak matmul")
    p.add_argument("--no-torch", action="store_true", help="time bertnp only (no torch needed)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    p.add_argument("--memory-steps", type=int, default=4, help="steps each memory subprocess runs")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the per-op profile")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--profile-before", type=Path, metavar="JSON",
                   help="a profile saved by profile_step.py --json (e.g. of an older commit): "
                        "shown side by side with this run's")
    p.add_argument("--no-write", dest="write", action="store_false", help="do not update RESULTS.md")
    p.add_argument("--results", type=Path, default=RESULTS, help="the RESULTS.md to update")
    p.add_argument("--json", type=Path, help="also write every number here")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="first wait up to SECONDS for the 1-min load average to fall below 0.5")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.memory_child:
        variant, mode = args.memory_child.split(":")
        print(json.dumps(memory_child(variant, mode, args)))
        return 0
    result = run(args)
    section = render(result)
    print(section)
    if args.write:
        print(f"wrote {write_results(section, args.results)}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
