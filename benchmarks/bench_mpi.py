"""Data parallelism on one machine: 1 process x 2 BLAS threads against 2 MPI ranks x 1 thread.

    python benchmarks/bench_mpi.py                         # tiny and mini, 3 rounds -> RESULTS.md
    python benchmarks/bench_mpi.py --configs tiny --rounds 1 --steps 3 --no-write      # a quick look
    python benchmarks/bench_mpi.py --base-step             # also one BERT-base step (README's scaling model)
    python benchmarks/bench_mpi.py --configs --sweep 2 4   # only the all-reduce against size and ranks

Every variant trains the same update -- 32 sequences x 128 tokens of the bundled corpus, BERT's
30522-token vocabulary, float32, dropout 0.1 -- with :class:`bertnp.train.Trainer`:

    1 x 2                 one process, OpenBLAS with 2 threads
    2 x 1                 mpiexec -n 2, one thread each: 16 sequences per rank, one all-reduce per step
    2 x 1, overlap        the same, each layer's all-reduce started as soon as backward finished it
    2 x 1, overlap+async  the same with MPICH's progress thread (MPIR_CVAR_ASYNC_PROGRESS=1)

Each variant runs in fresh processes (mpiexec or python), warms up, then times ``--steps`` steps;
the rounds interleave the variants in a rotated order, so a busy neighbour on this shared machine
hits them alike. Reported per variant: ms per step and tokens/s (32 x 128 positions per step, as
bench_cpu.py counts), median (min-max) over the rounds of each launch's median; for the ranks also
the time a step spent waiting in the gradient all-reduce and in the count all-reduce, and the
all-reduce of the flat gradient buffer timed alone (after a barrier: pure communication) with its
bus bandwidth 2(N-1)/N x bytes / time. Then (``--sweep``) MPI_Allreduce alone, timed against the
buffer's size (1 KiB .. 64 MiB) on 2, 3 and 4 ranks. The load average is recorded at the start and the end.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Several processes (MPI)"
VOCAB = ROOT / "bertnp" / "corpus" / "bert-base-uncased-vocab.txt"
THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
VARIANTS = {                     # name: (ranks, threads per rank, overlap, extra environment)
    "1 x 2": (1, 2, False, {}),
    "2 x 1": (2, 1, False, {}),
    "2 x 1, overlap": (2, 1, True, {}),
    "2 x 1, overlap+async": (2, 1, True, {"MPIR_CVAR_ASYNC_PROGRESS": "1"}),
}


# ============================================================================ one launch (every rank)

def worker(args) -> None:
    from bertnp.distributed import DataParallel
    from bertnp.train import TrainConfig, Trainer

    dp = DataParallel.from_environment(overlap=args.overlap)
    config = TrainConfig(preset=args.config, vocab=str(VOCAB), steps=1000, batch_size=args.batch,
                         max_seq_length=args.seq, dropout=0.1, eval_batches=0, eval_every=10 ** 6,
                         checkpoint_every=10 ** 6, log_every=10 ** 6, progress=False, out_dir=args.out, overwrite=True)
    trainer = Trainer(config, log=lambda *_: None, parallel=dp)
    waits = {"data": 0.0, "counts": 0.0}
    next_update, global_totals = trainer._next_update, trainer._global_totals

    def timed(key, fn):
        def call(*a):
            t0 = time.perf_counter()
            result = fn(*a)
            waits[key] += time.perf_counter() - t0
            return result
        return call
    trainer._next_update = timed("data", next_update)
    trainer._global_totals = timed("counts", global_totals)
    for _ in range(args.warmup):
        trainer.train_step()
    trainer.read_pending()
    times, data, counts, grads = [], [], [], []
    for _ in range(args.steps):
        before = dict(waits, grad=dp.timings["gradient_wait_s"] if dp else 0.0)
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
        data.append(waits["data"] - before["data"])
        counts.append(waits["counts"] - before["counts"])
        grads.append((dp.timings["gradient_wait_s"] if dp else 0.0) - before["grad"])
    trainer.read_pending()
    result = {"ms": 1e3 * statistics.median(times), "data_ms": 1e3 * statistics.median(data),
              "counts_ms": 1e3 * statistics.median(counts), "grad_wait_ms": 1e3 * statistics.median(grads),
              "params": trainer.model.num_parameters(), "ranks": dp.size if dp else 1}
    if dp is not None:                 # the flat buffer's all-reduce alone: every rank ready, pure communication
        alone = []
        for _ in range(5):
            dp.comm.barrier("the benchmark's barrier")
            t0 = time.perf_counter()
            handle = dp.reducer.start(dp.flat.flat)
            dp.comm.wait(lambda: dp.reducer.done(handle), "the benchmark's all-reduce")
            alone.append(time.perf_counter() - t0)
        result.update(allreduce_ms=1e3 * statistics.median(alone), bytes=dp.flat.nbytes,
                      started_in_backward=dp.timings["buckets_started_in_backward"])
    if dp is None or dp.is_writer:
        print("RESULT " + json.dumps(result), flush=True)


def sweep_worker(args) -> None:
    """Every rank: Allreduce (sum, in place) of float32 buffers of each size, timed after a barrier."""
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rows = []
    for nbytes in args.sizes:
        buffer = np.ones(max(nbytes // 4, 1), dtype=np.float32)
        times = []
        for i in range(args.repeats + 1):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            elapsed = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)   # the slowest rank's time
            if i:                                                             # the first call warms up
                times.append(elapsed)
        rows.append({"bytes": buffer.nbytes, "ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)})
    if comm.rank == 0:
        print("RESULT " + json.dumps({"ranks": comm.size, "rows": rows}), flush=True)


def sweep(args) -> dict:
    """All-reduce time against the buffer's size, for each number of ranks (one BLAS-free process per rank)."""
    from bertnp.distributed import mpiexec_command
    env = dict(os.environ, **{v: "1" for v in THREADS})
    results = {}
    for ranks in args.sweep:
        command = mpiexec_command(ranks, str(Path(__file__).resolve()), "--sweep-worker", "--repeats",
                                  str(args.repeats), "--sizes", *map(str, args.sizes))
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"sweep on {ranks} ranks failed ({done.returncode}):\n{done.stderr[-3000:]}")
        results[ranks] = json.loads(lines[-1][len("RESULT "):])["rows"]
        for row in results[ranks]:
            print(f"sweep {ranks} ranks {row['bytes']:>10d} B {row['ms']:9.3f} ms  load {loadavg()}", flush=True)
    return results


def sweep_section(results: dict) -> list[str]:
    """Markdown: time per all-reduce and bus bandwidth 2(N-1)/N x bytes / time, per size and rank count."""
    cores = os.cpu_count()
    ranks = list(results)
    lines = ["### All-reduce alone: time against size and ranks", "",
             "`MPI_Allreduce` (sum, in place) of one float32 buffer, the slowest rank's time, median of "
             f"the repeats after a barrier; bus GB/s = 2(N-1)/N x bytes / time (the ring cost model's "
             f"bandwidth). This machine has {cores} cores: "
             + ", ".join(f"{n} ranks" for n in ranks if n > cores) +
             (" share them (more ranks than cores: MPICH's waiting ranks spin, so those times show an "
              "overloaded machine, not a network)." if any(n > cores for n in ranks) else "."), "",
             "| bytes | " + " | ".join(f"{n} ranks: ms | GB/s" for n in ranks) + " |",
             "|---|" + "---|---|" * len(ranks)]
    for i, row in enumerate(results[ranks[0]]):
        cells = [f"{row['bytes']:,}"]
        for n in ranks:
            r = results[n][i]
            bus = 2 * (n - 1) / n * r["bytes"] / (r["ms"] / 1e3) / 1e9
            cells += [f"{r['ms']:.3f}", f"{bus:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def base_step(args) -> None:
    """One process x 2 threads: BERT-base training steps (batch 8 x 128, float32) on this CPU."""
    import numpy as np
    import bertnp as bn
    from bertnp.optim import AdamW
    bn.backend.retain_freed_host_memory()
    cfg = bn.BertConfig.preset("base", vocab_size=30522, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = bn.BertForPreTraining(cfg, seed=0, dtype="float32")
    opt = AdamW(model, lr=1e-4)
    rng = np.random.default_rng(0)
    B, T = 8, 128
    ids = rng.integers(1000, 30522, (B, T))
    labels = np.full((B, T), -100)
    for row in range(B):
        spots = rng.choice(np.arange(1, T - 1), 20, replace=False)
        labels[row, spots] = ids[row, spots]
    batch = dict(input_ids=ids, attention_mask=np.ones((B, T), dtype=np.int64), token_type_ids=np.zeros((B, T), dtype=np.int64),
                 labels=labels, next_sentence_label=rng.integers(0, 2, B))
    times = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        model.zero_grad()
        model(**batch)
        model.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    print("RESULT " + json.dumps({"ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
                                  "params": model.num_parameters(), "batch": B, "seq": T}), flush=True)


# ============================================================================ the driver

def launch(variant: str, config: str, args, out: Path) -> dict:
    from bertnp.distributed import mpiexec_command
    ranks, threads, overlap, extra = VARIANTS[variant]
    env = dict(os.environ, **{v: str(threads) for v in THREADS}, **extra)
    flags = [str(Path(__file__).resolve()), "--worker", "--config", config, "--batch", str(args.batch),
             "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup), "--out", str(out)]
    if overlap:
        flags.append("--overlap")
    command = mpiexec_command(ranks, *flags) if ranks > 1 else [sys.executable, *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} / {config} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def wait_idle(seconds: float, below: float) -> str:
    """Wait (at most ``seconds``) until the 1-minute load average is under ``below``; say what happened."""
    deadline = time.monotonic() + seconds
    while os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(10)
    return loadavg()


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def run(args) -> dict:
    started, load_start = datetime.datetime.now(datetime.timezone.utc), loadavg()
    results = {c: {v: [] for v in args.variants} for c in args.configs}
    with tempfile.TemporaryDirectory(prefix="bench_mpi_") as tmp:
        for r in range(args.rounds):
            if args.wait_idle:
                print(f"round {r + 1}: load {wait_idle(args.wait_idle, args.idle_load)}", flush=True)
            order = args.variants[r % len(args.variants):] + args.variants[:r % len(args.variants)]
            for config in args.configs:
                for variant in order:
                    result = launch(variant, config, args, Path(tmp) / f"{config}-{r}-{len(results)}")
                    results[config][variant].append(result)
                    print(f"round {r + 1} {config:5s} {variant:22s} {result['ms']:8.1f} ms/step  "
                          f"grad wait {result['grad_wait_ms']:6.1f} ms  load {loadavg()}", flush=True)
    swept = sweep(args) if args.sweep else None
    base = None
    if args.base_step:
        command = [sys.executable, str(Path(__file__).resolve()), "--base-step-worker", "--steps", "3"]
        env = dict(os.environ, **{v: "2" for v in THREADS})
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        base = json.loads([x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])
        print(f"BERT-base step, 1 x 2, batch 8 x 128: {base['ms']:.0f} ms ({base['params']} parameters)")
    return {"started": started, "load_start": load_start, "load_end": loadavg(), "results": results, "base": base, "sweep": swept,
            "args": vars(args)}


def section(data: dict) -> str:
    args = data["args"]
    tokens = args["batch"] * args["seq"]
    import numpy
    import mpi4py
    from mpi4py import MPI
    lines = [SECTION, "",
             f"Generated by `benchmarks/bench_mpi.py` on {data['started']:%Y-%m-%d %H:%M} UTC; re-run it to replace this section.",
             "",
             f"- Command: `python benchmarks/bench_mpi.py {' '.join(sys.argv[1:])}`".rstrip() + "",
             f"- Machine: {os.cpu_count()} CPUs, {platform.platform()}; load average (1, 5, 15 min) at the start "
             f"{data['load_start']}, at the end {data['load_end']} (the machine was shared with other work: "
             "the rounds interleave the variants so that it hits them alike)",
             f"- Software: Python {platform.python_version()}, NumPy {numpy.__version__}, mpi4py {mpi4py.__version__}, "
             f"{MPI.Get_library_version().splitlines()[0].strip()} (the `mpich` wheel), shared-memory transport",
             f"- Work: one update of {args['batch']} sequences x {args['seq']} tokens (the same in every variant: 2 ranks "
             f"take 16 each), bundled corpus, vocabulary 30522, float32, dropout 0.1; tokens/s = {tokens} / step time",
             f"- Rounds: {args['rounds']}, each launching every variant afresh in a rotated order; per launch "
             f"{args['warmup']} warm-up steps, then the median of {args['steps']} timed steps; shown: median (min-max) "
             "over the rounds", ""]
    for config, variants in data["results"].items():
        first = next(iter(variants.values()))[0]
        lines += [f"### {config} ({first['params'] / 1e6:.2f}M parameters)", "",
                  "| variant | ms / step | tokens/s | time vs 1 x 2 | gradient all-reduce: wait in the step, ms | "
                  "alone, ms | bus GB/s | count all-reduce, ms |", "|---|---|---|---|---|---|---|---|"]
        reference = statistics.median(r["ms"] for r in variants["1 x 2"]) if "1 x 2" in variants else None
        for name, runs in variants.items():
            ms = [r["ms"] for r in runs]
            row = [name, summary(ms), f"{tokens / (statistics.median(ms) / 1e3):,.0f}",
                   f"{statistics.median(ms) / reference:.2f}" if reference else ""]
            if runs[0]["ranks"] > 1:
                alone = statistics.median(r["allreduce_ms"] for r in runs)
                ranks = runs[0]["ranks"]
                bus = 2 * (ranks - 1) / ranks * runs[0]["bytes"] / (alone / 1e3) / 1e9
                row += [f"{statistics.median(r['grad_wait_ms'] for r in runs):.1f}", f"{alone:.1f}", f"{bus:.1f}",
                        f"{statistics.median(r['counts_ms'] for r in runs):.2f}"]
            else:
                row += ["", "", "", ""]
            lines.append("| " + " | ".join(row) + " |")
        flat = next((r[0] for r in variants.values() if r[0]["ranks"] > 1), None)
        if flat:
            lines += ["", f"Gradient buffer: {flat['bytes'] / 2**20:.1f} MiB (float32) all-reduced once per step."]
        lines.append("")
    if data.get("sweep"):
        lines += sweep_section(data["sweep"])
    if data["base"]:
        b = data["base"]
        lines += [f"BERT-base ({b['params'] / 1e6:.1f}M parameters), one process x 2 threads, batch {b['batch']} x "
                  f"{b['seq']}: {b['ms']:.0f} ms per training step ({b['batch'] * b['seq'] / (b['ms'] / 1e3):,.0f} "
                  "tokens/s): the per-machine speed of README.md's scaling model.", ""]
    return "\n".join(lines)


# ============================================================================ the scaling model (README.md)

def bert_parameters(preset: str, vocab: int = 30522) -> int:
    """Parameters of BertForPreTraining for a preset, from its shapes (no model is built)."""
    import bertnp as bn
    c = bn.BertConfig.preset(preset, vocab_size=vocab)
    H, L, I, V, P = c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size, c.max_position_embeddings
    embeddings = V * H + P * H + c.type_vocab_size * H + 2 * H
    layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
    heads = (H * H + H) + (H * H + H + 2 * H + V) + (2 * H + 2)      # pooler; MLM transform + bias; NSP
    return embeddings + L * layer + heads


def ring_allreduce_seconds(nbytes: float, ranks: int, bandwidth: float, latency: float = 0.0) -> float:
    """Ring all-reduce: reduce-scatter then all-gather, 2(N-1) steps each moving bytes/N per link:
    2(N-1)/N * bytes / bandwidth (+ 2(N-1) latencies)."""
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def scaling_table(tokens_per_s: float, bandwidths_gbit, ranks=(1, 2, 4, 8, 16, 64), preset="base",
                  tokens_per_step=256 * 128) -> str:
    """Markdown: time per step and efficiency for N machines sharing one update of ``tokens_per_step``
    tokens, each machine computing at ``tokens_per_s``, gradients (float32) all-reduced by a ring at
    each bandwidth, without overlap: efficiency = compute / (compute + communication)."""
    nbytes = 4 * bert_parameters(preset)
    head = "| machines N | compute, s/step | " + " | ".join(
        f"all-reduce at {b:g} Gb/s, s | efficiency | speed-up" for b in bandwidths_gbit) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(bandwidths_gbit))]
    for n in ranks:
        compute = tokens_per_step / (n * tokens_per_s)
        row = [str(n), f"{compute:.3g}"]
        for b in bandwidths_gbit:
            comm = ring_allreduce_seconds(nbytes, n, b * 1e9 / 8)
            efficiency = compute / (compute + comm)
            row += [f"{comm:.3g}", f"{efficiency:.0%}", f"{n * efficiency:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_results(text: str, path: Path = RESULTS) -> None:
    """Replace this harness's section of RESULTS.md (append it if absent); keep everything else."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else ["# bertnp benchmarks", ""]
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        lines += [""] + text.splitlines()
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = text.splitlines()
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="*", default=["tiny", "mini"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="timed steps per launch")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--base-step", action="store_true", help="also time a BERT-base step (1 x 2)")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="before each round, wait up to SECONDS for the 1-minute load to fall under --idle-load")
    p.add_argument("--idle-load", type=float, default=1.0)
    p.add_argument("--no-write", dest="write", action="store_false")
    p.add_argument("--json", type=Path, help="also every number as JSON")
    p.add_argument("--scaling", type=float, nargs="+", metavar="TOKENS_PER_S",
                   help="print the scaling model's tables for machines of these speeds (BERT-base tokens/s) and exit")
    p.add_argument("--sweep", type=int, nargs="*", default=[2, 3, 4], metavar="N",
                   help="all-reduce alone, timed for each of these numbers of ranks and each of --sizes (none: skip)")
    p.add_argument("--sizes", type=int, nargs="+", default=[4 ** k for k in range(5, 14)], metavar="BYTES")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sweep-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--base-step-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--overlap", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.sweep_worker:
        return sweep_worker(args)
    if args.base_step_worker:
        return base_step(args)
    if args.scaling:
        params = bert_parameters("base")
        print(f"BERT-base: {params:,} parameters -> {4 * params / 1e6:.1f} MB of float32 gradients per step")
        for speed in args.scaling:
            print(f"\nper-machine speed {speed:,.0f} tokens/s, update of 256 x 128 tokens\n")
            print(scaling_table(speed, (10, 100)))
        return None
    data = run(args)
    text = section(data)
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps({**data, "started": str(data["started"])}, indent=1, default=str))
    if args.write:
        write_results(text)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
