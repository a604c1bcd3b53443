"""What dropout's random numbers cost in a training step: the previous scheme against the current.

    python benchmarks/bench_dropout.py                     # NumPy, BERT-mini sites, 15 rounds
    python benchmarks/bench_dropout.py --preset base --batch 32
    python benchmarks/bench_dropout.py --backend cupy      # on a GPU (CUDA events), BERT-base sizes
    python benchmarks/bench_dropout.py --json out.json

A BERT training step has 1 + 3 L dropout sites (embeddings; per layer the attention probabilities
(B, nh, T, T), the attention output and the FFN output (B, T, C)). For every site this times the
forward and the backward of

  previous  the scheme used until this benchmark was written, transcribed here: a generator per site
            per step, seeded from (seed, step, site) through a SeedSequence (NumPy: PCG64; CuPy:
            cupy.random.default_rng, XORWOW, a cuRAND state per thread initialised with skip-ahead),
            one float32 uniform per element, a float32 scale array kept for the backward;
  current   bertnp.ops.dropout: counter-based Philox4x64-10 bits keyed on (seed, step, site), 16
            bits per element compared with a threshold, a 1-byte mask kept for the backward (NumPy:
            NumPy's Philox on the host; CuPy: one kernel per site, kernels/dropout.cu).

Rounds alternate the two (previous, current, previous, ...) so that a busy neighbour slows both
alike; the medians over the rounds are reported, with the machine's load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without install

import bertnp as bn                      # noqa: E402
from bertnp import backend, ops          # noqa: E402


# ----------------------------------------------------------------------------- the previous scheme


def previous_seed(*keys: int) -> int:
    """backend.seed_from as it was: (seed, step, site) mixed by a SeedSequence into a 63-bit seed."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFF for k in keys]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def previous_forward(x, p, key):
    """ops.dropout_forward as it was: a new default_rng per call, a float32 uniform per element,
    turned in place into the float scale array that the backward multiplies by."""
    xp = backend.xp()
    rng = xp.random.default_rng(previous_seed(*key))
    scale = rng.random(x.shape, dtype=x.dtype)                   # (...) uniform in [0, 1)
    keep = scale >= p
    xp.multiply(keep, x.dtype.type(1.0 / (1.0 - p)), out=scale)  # (...) 0 or 1/(1-p)
    return x * scale, scale


def previous_backward(dout, scale):
    return dout * scale


def current_forward(x, p, key):
    return ops.dropout_forward(x, p, rng=key)


def current_backward(dout, cache):
    return ops.dropout_backward(dout, cache)


SCHEMES = {"previous": (previous_forward, previous_backward), "current": (current_forward, current_backward)}


# ----------------------------------------------------------------------------- the sites of one step


def dropout_sites(cfg, batch: int, seq: int) -> list:
    """[(name, shape)] of every dropout of a BertForPreTraining training step."""
    B, T, C, nh = batch, seq, cfg.hidden_size, cfg.num_attention_heads
    sites = [("embeddings", (B, T, C))]
    for i in range(cfg.num_hidden_layers):
        sites += [(f"layer {i} attention probs", (B, nh, T, T)), (f"layer {i} attention output", (B, T, C)),
                  (f"layer {i} ffn output", (B, T, C))]
    return sites


def make_timer(device: bool):
    """A function (fn) -> seconds: CUDA events around fn on a GPU, perf_counter on the CPU."""
    if not device:
        def wall(fn):
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        return wall
    xp = backend.xp()

    def events(fn):
        start, end = xp.cuda.Event(), xp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return xp.cuda.get_elapsed_time(start, end) / 1e3
    return events


def run(args) -> dict:
    cfg = bn.BertConfig.preset(args.preset)
    sites = dropout_sites(cfg, args.batch, args.seq)
    rng = np.random.default_rng(0)
    data = [(name, backend.to_device(rng.standard_normal(shape).astype(np.float32)),
             backend.to_device(rng.standard_normal(shape).astype(np.float32))) for name, shape in sites]
    timer = make_timer(backend.get_backend() == "cupy")
    step = [0]

    def one_step(scheme: str):
        """Forward and backward of every site, keyed as the model keys them (a new step each call)."""
        forward, backward_fn = SCHEMES[scheme]
        step[0] += 1
        for site, (_, x, dout) in enumerate(data):
            out, cache = forward(x, args.p, (0, step[0], site))
            backward_fn(dout, cache)
    for scheme in SCHEMES:                            # warm-up: allocator, kernels compiled
        for _ in range(2):
            one_step(scheme)
    times = {scheme: [] for scheme in SCHEMES}
    for _ in range(args.rounds):
        for scheme in SCHEMES:
            times[scheme].append(timer(lambda: one_step(scheme)))
    elements = sum(int(np.prod(shape)) for _, shape in sites)
    result = {"backend": backend.get_backend(), "preset": args.preset, "batch": args.batch, "seq": args.seq,
              "p": args.p, "sites": len(sites), "elements_per_step": elements, "rounds": args.rounds,
              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    for scheme, samples in times.items():
        median = statistics.median(samples)
        result[scheme] = {"ms_per_step": 1e3 * median, "ns_per_element": 1e9 * median / elements,
                          "min_ms": 1e3 * min(samples), "max_ms": 1e3 * max(samples)}
    result["speedup"] = result["previous"]["ms_per_step"] / result["current"]["ms_per_step"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    parser.add_argument("--preset", default=None, help="BertConfig preset (default: mini on numpy, base on cupy)")
    parser.add_argument("--batch", type=int, default=None, help="sequences (default 16 on numpy, 32 on cupy)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--p", type=float, default=0.1, help="dropout probability (0.1)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    gpu = args.backend == "cupy"
    args.preset = args.preset or ("base" if gpu else "mini")
    args.batch = args.batch or (32 if gpu else 16)
    bn.set_backend(args.backend)
    result = run(args)
    print(f"dropout, {result['backend']}: preset {args.preset}, batch {args.batch} x seq {args.seq}, "
          f"p = {args.p}: {result['sites']} sites, {result['elements_per_step'] / 1e6:.1f}M elements per step, "
          f"forward + backward, median of {args.rounds} alternating rounds "
          f"(load average {result['load_average'][0]:.2f})" if result["load_average"] else "")
    for scheme in SCHEMES:
        r = result[scheme]
        print(f"  {scheme:9s} {r['ms_per_step']:8.2f} ms/step  ({r['min_ms']:.2f} - {r['max_ms']:.2f})  "
              f"{r['ns_per_element']:6.2f} ns/element")
    print(f"  current is {result['speedup']:.2f}x faster")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
