"""Per-operation profile of one bertnp training step: where the time goes, forward and backward.

    python benchmarks/profile_step.py                  # BERT-mini, the benchmark's batch, 5 steps
    python benchmarks/profile_step.py --config tiny --steps 3
    python benchmarks/profile_step.py --json after.json --before before.json   # side by side with a saved run

``--json`` saves a run; ``--before`` prints the ten largest rows of a saved run (e.g. of an older
commit: ``PYTHONPATH=/path/to/old/checkout python benchmarks/profile_step.py --json before.json``)
next to this one's. ``bench_cpu.py --profile-before before.json`` puts that table in RESULTS.md.

Every operation the model calls (``linear_forward``, ``layernorm_backward``, ...) is wrapped with a
timer where the model and the attention op look it up (the modules that import them by name, and
the ``bertnp.ops`` package the model's operation table is copied from), so the step runs unchanged. Times are
*exclusive*: ``attention_forward``'s own time excludes the linear, softmax and dropout ops it calls
(what remains is its batched Q K^T and P V products and the head reshapes). Linear layers are
split by shape, so the 30k-way decoder shows on its own row. What no op covers -- residual adds,
the padding mask, gathering the labelled rows, ``grads += ...`` -- is the "model code" row; AdamW
and ``zero_grad`` are timed as wholes.

Wrapping costs ~1 us a call (~200 calls a step): negligible next to a step. The step profiled is
the whole batch on one model (the last layer at the scored rows only, ``skip_unscored_rows``, as the
Trainer steps it), each operation threaded by :mod:`bertnp.parallel`; the training
loop's shares of the rows on the cores (:mod:`bertnp.cores`) run the same operations in one thread
each, at the same time, which these timers (one stack of open calls) cannot attribute.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    import os
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _threads = "2"                           # as bench_cpu: set before NumPy loads, this process only
    for _i, _arg in enumerate(sys.argv):
        if _arg == "--threads" and _i + 1 < len(sys.argv):
            _threads = sys.argv[_i + 1]
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

import bertnp as bn  # noqa: E402
import bertnp.model  # noqa: E402
import bertnp.ops  # noqa: E402
import bertnp.ops.activations  # noqa: E402
import bertnp.ops.attention  # noqa: E402

# where the model looks its operations up: modules that imported them by name, and the bertnp.ops
# package, from which a model copies its operation table (``model.F``) when it is built -- so build
# the model inside ``with OpTimer():``
_NAMESPACES = (bertnp.ops, bertnp.model, bertnp.ops.attention, bertnp.ops.activations)


class OpTimer:
    """Wraps op functions with exclusive timers; ``with OpTimer() as t: ...`` then ``t.totals``."""

    def __init__(self):
        self.totals = collections.defaultdict(float)     # (op, "forward" | "backward") -> seconds
        self.calls = collections.defaultdict(int)
        self.flops = collections.defaultdict(float)      # matmul FLOPs of the op's own (exclusive) work
        self._stack = []                                 # time spent in children of each open call
        self._saved = []

    @staticmethod
    def _label(name: str, args, kwargs) -> tuple:
        """(row, direction, FLOPs of the op's own matmuls) for a call of op function ``name``."""
        op, _, direction = name.rpartition("_")
        flops = 0.0
        if op in ("linear", "linear_rows"):
            # the weight (out, in) names the layer's shape: forward gets it as an argument, backward in
            # its cache (a RowsLinearCache holds the selected rows' cache: those rows are the work)
            cache = None if direction == "forward" else getattr(args[1], "inner", args[1])
            weight = args[1] if direction == "forward" else cache.weight
            out_features, in_features = weight.shape
            if direction == "backward":
                rows = cache.x.size // in_features
            elif op == "linear_rows":
                rows = len(kwargs["rows"] if "rows" in kwargs else args[3])
            else:
                rows = args[0].size // in_features
            flops = 2.0 * rows * in_features * out_features * (1 if direction == "forward" else 2)
            op = f"linear {in_features}->{out_features}"
        elif op == "attention":
            # its own matmuls: Q K^T and P V (forward); two products for each (backward)
            batch, seq_len, channels = (args[0] if direction == "forward" else args[0]).shape
            flops = 4.0 * batch * seq_len * seq_len * channels * (1 if direction == "forward" else 2)
        return op, direction, flops

    def _wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            self._stack.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                children = self._stack.pop()
                op, direction, flops = self._label(name, args, kwargs)
                self.totals[(op, direction)] += elapsed - children
                self.calls[(op, direction)] += 1
                self.flops[(op, direction)] += flops
                if self._stack:
                    self._stack[-1] += elapsed
        timed.__wrapped__ = fn
        return timed

    def __enter__(self):
        for module in _NAMESPACES:
            for name, fn in vars(module).copy().items():
                if callable(fn) and name.endswith(("_forward", "_backward")) and not name.startswith("_"):
                    self._saved.append((module, name, fn))
                    setattr(module, name, self._wrap(name, fn))
        original = bertnp.model._BertBase._accumulate
        self._saved.append((bertnp.model._BertBase, "_accumulate", original))
        timer = self

        def accumulate(model, name, grad):
            start = time.perf_counter()
            original(model, name, grad)
            timer.totals[("grads += (accumulate)", "backward")] += time.perf_counter() - start
            timer.calls[("grads += (accumulate)", "backward")] += 1
        bertnp.model._BertBase._accumulate = accumulate
        return self

    def __exit__(self, *exc):
        for module, name, fn in reversed(self._saved):
            setattr(module, name, fn)
        self._saved.clear()
        return False

    def reset(self):
        self.totals.clear()
        self.calls.clear()
        self.flops.clear()


def profile(config, batch: dict, steps: int = 5, warmup: int = 2, seed: int = 0) -> dict:
    """Profile ``steps`` training steps (after ``warmup``). Every number is the median over the steps
    of that op's time in one step (a busy neighbour spoils a step, not the table)."""
    per_step = []                                    # one {row: {column: seconds}} per timed step
    with OpTimer() as timer:
        model = bn.BertForPreTraining(config, seed=seed, dtype="float32").train()   # its op table: timed
        model.skip_unscored_rows = True              # as the Trainer (and bench_cpu's variant A) step it
        opt = bn.AdamW(model, lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
        for i in range(warmup + steps):
            timer.reset()
            t0 = time.perf_counter()
            model.zero_grad()
            t1 = time.perf_counter()
            model(**batch)
            t2 = time.perf_counter()
            model.backward()
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            if i < warmup:
                continue
            rows = collections.defaultdict(dict)
            for (op, direction), seconds in timer.totals.items():
                rows[op][direction] = seconds
                rows[op]["calls"] = max(rows[op].get("calls", 0), timer.calls[(op, direction)])
                if timer.flops[(op, direction)]:
                    rows[op]["flops"] = rows[op].get("flops", 0.0) + timer.flops[(op, direction)]
            for direction, elapsed in (("forward", t2 - t1), ("backward", t3 - t2)):
                covered = sum(v.get(direction, 0.0) for v in rows.values())   # what no op covers
                rows["model code (residuals, masks, gathers)"][direction] = max(0.0, elapsed - covered)
            rows["AdamW step"]["other"] = t4 - t3
            rows["zero_grad"]["other"] = t1 - t0
            rows["(phases)"] = {"zero_grad": t1 - t0, "forward": t2 - t1, "backward": t3 - t2,
                                "AdamW": t4 - t3, "step": t4 - t0}
            per_step.append(rows)
    median = {}
    for row in {r for step in per_step for r in step}:
        columns = {c for step in per_step for c in step.get(row, {})}
        median[row] = {c: statistics.median(step.get(row, {}).get(c, 0.0) for step in per_step) for c in columns}
    phases = median.pop("(phases)")
    return {"step": phases.pop("step"), "phases": phases, "ops": median, "steps": steps}


def render(result: dict, top: int | None = None) -> list:
    """Markdown lines: ops sorted by total time, with forward / backward split and share of the step."""
    step, phases = result["step"], result["phases"]
    rows = sorted(result["ops"].items(),
                  key=lambda kv: -(kv[1].get("forward", 0) + kv[1].get("backward", 0) + kv[1].get("other", 0)))
    if top:
        rows = rows[:top]
    lines = ["### Per-operation profile of the bertnp step", "",
             f"`python benchmarks/profile_step.py`: median over {result['steps']} steps of the exclusive time per step "
             f"(step {step * 1e3:.0f} ms = forward {phases['forward'] * 1e3:.0f} + backward "
             f"{phases['backward'] * 1e3:.0f} + AdamW {phases['AdamW'] * 1e3:.0f} + zero_grad "
             f"{phases['zero_grad'] * 1e3:.1f}; measured in its own steps, after the rounds above, with ~1 us "
             "of timer per op call). The whole batch on one model, each operation on every core "
             "(bertnp.parallel): the training loop (and variant A above) runs these same operations in "
             "one thread per share of the batch's rows instead (bertnp.cores), which an op-by-op timer "
             "cannot split.", "",
             "| operation | forward ms | backward ms | total ms | share of step | calls / step | matmul GFLOP/s |",
             "|---|---|---|---|---|---|---|"]
    for op, v in rows:
        total = v.get("forward", 0) + v.get("backward", 0) + v.get("other", 0)
        fwd = v.get("forward", 0) * 1e3
        bwd = v.get("backward", 0) * 1e3
        if "other" in v:
            fwd_s, bwd_s = "", ""
        else:
            fwd_s, bwd_s = f"{fwd:.1f}", f"{bwd:.1f}"
        calls = round(v["calls"]) if v.get("calls") else ""
        rate = f"{v['flops'] / total / 1e9:.0f}" if v.get("flops") and total > 0 else ""
        lines.append(f"| {op} | {fwd_s} | {bwd_s} | {total * 1e3:.1f} | {100 * total / step:.1f}% | {calls} | {rate} |")
    lines.append("")
    return lines


def _total(v: dict) -> float:
    return v.get("forward", 0) + v.get("backward", 0) + v.get("other", 0)


def render_comparison(before: dict, after: dict, top: int = 12, before_label: str = "before",
                      after_label: str = "after") -> list:
    """Markdown lines: the ``top`` largest rows of two profiles side by side, and the steps."""
    def ranked(result):
        return sorted(result["ops"].items(), key=lambda kv: -_total(kv[1]))[:top]
    left, right = ranked(before), ranked(after)
    lines = [f"| {before_label}: operation | total ms | share | | {after_label}: operation | total ms | share |",
             "|---|---|---|---|---|---|---|"]
    for i in range(max(len(left), len(right))):
        cells = []
        for result, rows in ((before, left), (after, right)):
            if i < len(rows):
                op, v = rows[i]
                cells += [op, f"{_total(v) * 1e3:.1f}", f"{100 * _total(v) / result['step']:.1f}%"]
            else:
                cells += ["", "", ""]
        lines.append("| " + " | ".join(cells[:3]) + " | | " + " | ".join(cells[3:]) + " |")
    lines.append(f"| **step** | **{before['step'] * 1e3:.0f}** | | | **step** | **{after['step'] * 1e3:.0f}** | |")
    lines.append("")
    return lines


def main(argv=None) -> int:
    import json
    import bench_cpu
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="mini")
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--predictions", type=int, default=20)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=bench_cpu.THREADS_DEFAULT)
    p.add_argument("--top", type=int, help="show only the N most expensive rows")
    p.add_argument("--json", type=Path, help="also save this profile here")
    p.add_argument("--before", type=Path, help="a saved profile (--json) to show side by side")
    args = p.parse_args(argv)
    bn.backend.retain_freed_host_memory()          # as the training loop and bench_cpu.py do
    config = bench_cpu.make_config(args.config, vocab_size=args.vocab)
    batch = bench_cpu.make_batch(config, args.batch, args.seq, args.predictions)
    result = profile(config, batch, steps=args.steps, warmup=args.warmup)
    result["bertnp"] = str(Path(bn.__file__).resolve().parent)
    print("\n".join(render(result, args.top)))
    if args.before:
        print("\n".join(render_comparison(json.loads(args.before.read_text()), result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
