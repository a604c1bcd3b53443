# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 15 — Speed, memory and the GPU
#
# Lessons 1–14 made BERT *correct*. This one asks what it *costs*: how much arithmetic a training step is,
# how close to the machine's speed we run, where the time goes, what the memory holds, and what changes on a
# GPU. Every number here is counted, or measured on the machine you run it on. In this
# lesson you will
#
# 1. **count the FLOPs** of an encoder layer, forward and backward, from the shapes alone (exercise), and
#    check the count against every matrix product the library actually executes;
# 2. measure the **matmul peak** of this machine and the **MFU** (model FLOPs utilisation) of a training step;
# 3. **profile** a step: which operations take the time, and why the elementwise ones matter more than their FLOPs;
# 4. count the **activation memory** — what the backward's caches hold, layer by layer — and check it against
#    what Python's `tracemalloc` measures;
# 5. see why training runs in **float32** (speed measured; the precision training needs vs what a gradient check
#    needs) and why the MLM logits are computed **only at the masked positions** (FLOPs and time);
# 6. run the same code on **CuPy** when a GPU is present, and follow **one CUDA kernel**, LayerNorm forward, from
#    its simplest version (a thread per row) to a faster one (a warp per row, with shuffle reductions): emulated
#    in NumPy, thread by thread, and — with a GPU — run, checked and timed for real. You will write the warp's
#    butterfly sum (exercise).
#
# **Prerequisites:** lessons 1 (forward/backward pairs, the linear layer's backward, gradient checks in
# float64), 6 (multi-head attention), 7 (GELU, dropout), 8 (the gathered MLM decoder), 9 (the whole model and
# `model.backward()`), and 4 or 10 (a training step with AdamW). Math: the cost of a matrix product; what a
# floating-point number can represent. No GPU and no CUDA knowledge needed: section 7 explains threads and
# warps from the start.
#
# **Time:** about 80 minutes (the GPU part takes longer if you have a GPU and experiment with it).

# %%
# %matplotlib inline
import contextlib
import cProfile
import dataclasses
import inspect
import math
import os
import pstats
import sys
import threading
import time
import tracemalloc
from collections import defaultdict

import numpy as np
import matplotlib.pyplot as plt
import bertnp as bn
from bertnp import teach

bn.set_backend("numpy")                       # the lessons run on the CPU (section 6 switches, if it can)
np.set_printoptions(precision=4, suppress=True, linewidth=110)
rng = np.random.default_rng(0)                # every random number below comes from this seed
from bertnp import kernels
from bertnp.ops import layernorm as layernorm_module
from bertnp.ops.layernorm import layernorm_forward
from bertnp.ops.linear import linear_forward
from bertnp.ops.losses import cross_entropy_forward

from threadpoolctl import threadpool_info, threadpool_limits

# One BLAS thread, as in lesson 4, unless you set OPENBLAS_NUM_THREADS yourself: a step of a small model is
# many small matrix products, and several threads pay a synchronisation per product -- on a machine busy with
# other programs, many times over. Section 2 says why it also gives steadier measurements.
if "OPENBLAS_NUM_THREADS" not in os.environ:
    threadpool_limits(limits=1, user_api="blas")          # from here on, for this kernel
blas_threads = max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
clock = time.process_time if blas_threads == 1 else time.perf_counter    # see section 2
print(f"BLAS threads: {blas_threads};  {os.cpu_count()} CPUs;  fast mode: {teach.FAST};  "
      f"timing with {clock.__name__}")

# %% [markdown]
# ## 1. Counting FLOPs
#
# A **FLOP** is one floating-point operation. A matrix product $(m \times k) \cdot (k \times n)$ computes
# $m n$ outputs, each a sum of $k$ products: $m n k$ multiply-adds, which by convention count as
# **$2mnk$ FLOPs** (a multiply and an add). In a transformer nearly all the arithmetic is in matrix products:
# the elementwise work — softmax, GELU, LayerNorm, dropout, the bias adds — is a few operations per *element*
# of an activation, while a product does $k$ multiply-adds per output element, with $k$ the width $C$ or more.
# So we count the matrix products only (the convention MFU uses) and check later, with a profiler, what that
# leaves out.
#
# **How to count without trusting anyone's formula.** NumPy lets an array subclass intercept every *ufunc*
# applied to it through `__array_ufunc__`, and the `@` operator is the ufunc `np.matmul`. The subclass below
# records the shapes and FLOPs of every product it takes part in. To make *every* array of a model such an
# array, we hand the library an array module whose functions return them: the library asks
# `bn.backend.xp()` for its array module at every call (section 6 says more), and `bn.backend.using(...)`
# swaps in another one. PyTorch's `FlopCounterMode` works the same way, one level down.

# %%
class CountedArray(np.ndarray):
    """A NumPy array that records every matrix product it takes part in (shapes and FLOPs)."""
    products = None                       # the list being recorded into, while counting_matmuls() is open

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [a.view(np.ndarray) if isinstance(a, CountedArray) else a for a in inputs]
        outs = kwargs.get("out")
        if outs:
            kwargs["out"] = tuple(a.view(np.ndarray) if isinstance(a, CountedArray) else a for a in outs)
        if ufunc is np.matmul and method == "__call__" and CountedArray.products is not None:
            a, b = np.shape(plain[0]), np.shape(plain[1])
            m, k = (a[-2:] if len(a) > 1 else (1,) + a)      # a vector is one row
            n = b[-1] if len(b) > 1 else 1                   # ... or one column
            stack = math.prod(np.broadcast_shapes(a[:-2], b[:-2]))   # batched products: (..., m, k) @ (..., k, n)
            CountedArray.products.append((a, b, 2 * stack * m * n * k))   # list.append is thread-safe
        result = getattr(ufunc, method)(*plain, **kwargs)
        return outs[0] if outs and len(outs) == 1 else as_counted(result)


def as_counted(result):
    if isinstance(result, tuple):
        return tuple(as_counted(r) for r in result)
    if isinstance(result, np.ndarray) and not isinstance(result, CountedArray):
        return result.view(CountedArray)
    return result


class CountingNumPy:
    """NumPy, except that every array its functions return is a CountedArray (the module backend.xp() hands out)."""
    ndarray = CountedArray

    def __getattr__(self, name):
        attr = getattr(np, name)
        if callable(attr) and not isinstance(attr, (type, np.ufunc)):
            return lambda *args, **kwargs: as_counted(attr(*args, **kwargs))
        return attr                       # dtypes, constants, submodules, ufuncs (they dispatch by themselves)


@contextlib.contextmanager
def counting_matmuls():
    """Within the block, the library's arrays are CountedArrays; yields the list of (a.shape, b.shape, FLOPs)."""
    products = []
    CountedArray.products = products
    try:
        with bn.backend.using(CountingNumPy(), "numpy, counting"):
            yield products
    finally:
        CountedArray.products = None


# one linear layer, forward: N rows of width `in` times a (out, in) weight -> 2 * N * in * out
with counting_matmuls() as products:
    xp = bn.backend.xp()
    x = xp.ones((6, 5))                                   # (N, in)
    out, _ = linear_forward(x, xp.ones((7, 5)), xp.ones(7))   # weight (out, in) = (7, 5)
print("products:", products)
teach.check_equal("FLOPs of a (6, 5) @ (5, 7) product", products[0][2], 2 * 6 * 5 * 7)

# %% [markdown]
# ### Exercise: the FLOPs of one encoder layer, forward and backward
#
# Write a function that returns the matrix-product FLOPs of **one** BERT encoder layer (lesson 9's post-LN
# layer: self-attention with `num_heads` heads, the output projection, the feed-forward block $C \to I \to C$,
# two LayerNorms) for a batch of $B$ sequences of $T$ tokens of width $C$: its forward pass, and its backward
# pass (every gradient the layer's backward computes: for its input and for all its weights).
#
# * A multiply-add is 2 FLOPs. Count matrix products only; no padding.
# * Method: list the matrix products of the layer's forward with their shapes — lessons 6 and 7 have all of
#   them, including the two that multiply *activations by activations* — then ask what the backward of one
#   product $Y = A B$ must compute, and how big those products are (lesson 1).
#
# The check counts the products the library executes (a 2-layer `BertModel` minus a 1-layer one, so that the
# embeddings and the pooler cancel) for three different sizes and compares, FLOP for FLOP.

# %% tags=["exercise"]
# EXERCISE: the matrix-product FLOPs of one encoder layer's forward and backward
def my_encoder_layer_flops(B, T, C, I, num_heads):
    '''B sequences of T tokens, hidden size C, intermediate size I, num_heads heads.
    Returns (forward FLOPs, backward FLOPs) of one encoder layer's matrix products, as ints.'''
    ### BEGIN SOLUTION
    tokens = B * T
    weights = 2 * tokens * (C * 3 * C + C * C + C * I + I * C)   # Q, K, V; output; FFN up and down
    head_size = C // num_heads
    scores = 2 * B * num_heads * T * T * head_size                # Q K^T per head: (T, hs) @ (hs, T)
    context = 2 * B * num_heads * T * head_size * T               # P V per head:   (T, T) @ (T, hs)
    forward = weights + scores + context
    backward = 2 * forward                                        # dA = dY B^T and dB = A^T dY per product
    ### END SOLUTION
    return forward, backward


# %% tags=["check"]
def count_encoder_layer(B, T, C, I, num_heads):
    """(forward FLOPs, backward FLOPs, the forward's products) of one encoder layer, as counted
    from the library's matrix products: a 2-layer BertModel minus a 1-layer one."""
    counted = {}
    for layers in (1, 2):
        config = bn.BertConfig(vocab_size=50, hidden_size=C, num_hidden_layers=layers, num_attention_heads=num_heads,
                               intermediate_size=I, max_position_embeddings=T)
        ids = np.random.default_rng(layers).integers(0, 50, size=(B, T))
        with counting_matmuls() as products:
            model = bn.BertModel(config, dtype="float64").eval()
            model(input_ids=ids)
            n_forward = len(products)
            model.backward(dlast_hidden_state=bn.backend.xp().ones((B, T, C)))
        counted[layers] = products[:n_forward], products[n_forward:]
    layer_products = counted[2][0][:len(counted[2][0]) - len(counted[1][0])]   # layer 0's, before layer 1 and the pooler
    forward = sum(f for *_, f in counted[2][0]) - sum(f for *_, f in counted[1][0])
    backward = sum(f for *_, f in counted[2][1]) - sum(f for *_, f in counted[1][1])
    return forward, backward, layer_products


for case in [dict(B=2, T=24, C=16, I=40, num_heads=4), dict(B=3, T=10, C=12, I=20, num_heads=2),
             dict(B=2, T=24, C=16, I=40, num_heads=1)]:
    forward, backward, layer_products = count_encoder_layer(**case)
    yours = my_encoder_layer_flops(**case)
    listing = "\n".join(f"      {str(a):>16} @ {str(b):<16} {f:>9,} FLOPs" for a, b, f in layer_products)
    shown = (f"{case}: yours (forward {yours[0]:,}, backward {yours[1]:,}), "
             f"counted (forward {forward:,}, backward {backward:,})")
    if int(yours[0]) != forward:
        batched = sum(f for a, b, f in layer_products if len(a) > 2)   # activation @ activation, per head
        heads = case["num_heads"]
        if 2 * int(yours[0]) == forward:
            hint = "half the count: a multiply-add is 2 FLOPs"
        elif int(yours[0]) == forward - batched:
            hint = f"yours misses exactly the {batched:,} FLOPs of the products between activations (the 4-D ones)"
        elif heads > 1 and int(yours[0]) == forward + (heads - 1) * batched:
            hint = "you multiplied the attention by the number of heads: each head works on C / num_heads of the width"
        else:
            hint = "compare your list of products with the counted one"
        raise teach.CheckFailed(f"forward FLOPs differ. {shown}\n  the layer's forward products "
                                f"(Q, K and V are one product with a stacked (3C, C) weight):\n{listing}\n  hint: {hint}")
    if int(yours[1]) != backward:
        hint = ("each forward product Y = A B has TWO products in the backward, dA and dB, each as big as Y's"
                if int(yours[1]) == forward else "compare your backward with the forward: what does each product's backward compute?")
        raise teach.CheckFailed(f"backward FLOPs differ. {shown}\n  hint: {hint}")
    print(f"  {shown}  ok")

# %% [markdown]
# ### Solution notes
#
# The forward of one layer has six products with weights — Q, K, V and the output projection, each
# $(BT \times C)\cdot(C \times C)$, and the feed-forward pair $(BT \times C)\cdot(C \times I)$,
# $(BT \times I)\cdot(I \times C)$ — which make $2BT(4C^2 + 2CI)$. And two products between activations, for
# each of the $h$ heads of size $d = C/h$: the scores $Q K^\top$, $(T \times d)\cdot(d \times T)$, and the
# context $P V$, $(T \times T)\cdot(T \times d)$: $2 \cdot 2BhT^2 d = 4BT^2C$. The number of heads cancels.
#
# The backward of $Y = AB$ needs $\partial A = \partial Y\, B^\top$ and $\partial B = A^\top \partial Y$: two
# products, each with the same $m n k$ as the forward. In an encoder layer both are always needed (the weights
# want their gradients, the layer below wants its input's), so **backward = 2 × forward** and a training step
# is **3 × the forward**. Per token, the forward is $\approx 2 \times$ (the layer's parameters) $+ 4TC$: the
# famous "6 × parameters × tokens" for a step, plus the attention's $T^2$ term, which at $T = 128$ and
# $C = 768$ is $4TC / (24C^2) = 3\%$ of the layer, and at $T = 512$, $11\%$.
#
# The plausible mistakes and what the check says: forgetting the backward's factor 2, forgetting $QK^\top$ and
# $PV$ (they have no weights, so they hide from a count of parameters), counting a multiply-add as 1 FLOP,
# and multiplying the attention by the number of heads.
#
# ## 2. The peak, and the MFU of a training step
#
# A count becomes a speed with a clock. The **peak** is what this machine's BLAS reaches on a large float32
# product — the best any step built from matrix products could hope for. We time a square product (best of a
# few tries: whatever else the machine is doing only ever makes a run slower).
#
# *Which clock.* On a busy machine even the best of a few runs can be disturbed, because every run is shared
# with other programs. With **one** BLAS thread (the setup cell asked for it), the CPU time of this process,
# `time.process_time()`, is the time the work itself took, whatever else runs: on an idle machine it equals the
# wall clock. So the lesson times with it then, and with the wall clock, `time.perf_counter()`, when you gave
# NumPy several threads (CPU time would add up the threads). The peak is then the peak of one core, and the
# step below runs on one core too, so their ratio, the MFU, compares like with like.

# %%
def best_seconds(fn, repeats):
    """The fastest of `repeats` timed calls (noise from other programs only ever adds time)."""
    best = math.inf
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def matmul_peak(n, dtype=np.float32, repeats=5):
    """GFLOP/s of an (n, n) @ (n, n) product in dtype (best of `repeats`)."""
    peak_rng = np.random.default_rng(15)
    a = peak_rng.standard_normal((n, n)).astype(dtype)
    b = peak_rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    np.matmul(a, b, out=out)                                   # warm up (threads, caches)
    return 2 * n ** 3 / best_seconds(lambda: np.matmul(a, b, out=out), repeats) / 1e9


peak_size = teach.pick(2048, 1024)
peak = matmul_peak(peak_size)
print(f"float32 matmul peak ({peak_size}^3): {peak:.1f} GFLOP/s")

# %% [markdown]
# Now the model. A training step of `BertForPreTraining`: forward with labels (MLM at the labelled ~15% of the
# positions, NSP), backward, AdamW. Its FLOPs, from section 1's reasoning plus the heads: per layer
# $3 \times$ forward; the MLM head (dense $C \times C$ and the tied decoder $C \times V$) at the $N$ labelled
# positions only; the pooler and NSP head on the $B$ `[CLS]` vectors. We write it as a formula and check the
# formula against the counter on a small model — then apply it to the model we time.

# %%
def pretraining_step_flops(B, T, C, I, L, V, N):
    """Matrix-product FLOPs of one BertForPreTraining training step (forward + backward), N labelled positions."""
    layer_forward = 2 * B * T * (4 * C * C + 2 * C * I) + 4 * B * T * T * C
    heads_forward = 2 * N * (C * C + C * V) + 2 * B * (C * C + C * 2)      # MLM dense + decoder; pooler + NSP
    return 3 * (L * layer_forward + heads_forward)


def make_batch(B, T, V, batch_rng, masked_share=0.15):
    """Random token ids (a real corpus would not change the speed) with round(0.15 T) labelled positions per row."""
    ids = batch_rng.integers(5, V, size=(B, T))
    labels = np.full((B, T), -100)
    per_row = max(1, round(masked_share * T))
    for row in range(B):
        where = batch_rng.choice(np.arange(1, T), size=per_row, replace=False)   # never position 0 ([CLS])
        labels[row, where] = ids[row, where]
    types = np.zeros((B, T), dtype=np.int64)
    types[:, T // 2:] = 1
    return dict(input_ids=ids, attention_mask=np.ones((B, T), dtype=np.int64), token_type_ids=types,
                labels=labels, next_sentence_label=batch_rng.integers(0, 2, size=B))


def shape_of(config, batch):
    return dict(B=batch["input_ids"].shape[0], T=batch["input_ids"].shape[1], C=config.hidden_size,
                I=config.intermediate_size, L=config.num_hidden_layers, V=config.vocab_size,
                N=int((batch["labels"] != -100).sum()))


small = bn.BertConfig(vocab_size=97, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                      max_position_embeddings=32)
small_batch = make_batch(3, 20, 97, np.random.default_rng(1))
with counting_matmuls() as products:
    small_model = bn.BertForPreTraining(small, dtype="float64")
    small_model(**small_batch)
    small_model.backward()
teach.check_equal("pretraining_step_flops vs the counted products of a small model's step",
                  pretraining_step_flops(**shape_of(small, small_batch)), sum(f for *_, f in products))

# %% [markdown]
# The model we time: BERT-mini's shape in full mode (hidden 256, 4 layers, vocabulary 30,522, 16 sequences
# of 128), a smaller one in fast mode. **MFU**, *model FLOPs utilisation*, is the step's useful FLOPs per
# second divided by the peak: the share of the machine's arithmetic that the step turns into training.
# The peak and the steps run with the same BLAS thread setting; each step is timed on its own and we keep the
# median.

# %%
speed_config = bn.BertConfig(vocab_size=teach.pick(30522, 8000), hidden_size=teach.pick(256, 128),
                             num_hidden_layers=teach.pick(4, 2), num_attention_heads=4,
                             intermediate_size=teach.pick(1024, 512), max_position_embeddings=128)
speed_batch = make_batch(teach.pick(16, 8), teach.pick(128, 64), speed_config.vocab_size, np.random.default_rng(2))
speed_model = bn.BertForPreTraining(speed_config, seed=0, dtype="float32").train()
optimizer = bn.AdamW(speed_model, lr=1e-4, weight_decay=0.01)


def training_step(model, opt, batch):
    model.zero_grad()
    out = model(**batch)
    model.backward()
    opt.step()
    return out


training_step(speed_model, optimizer, speed_batch)                  # warm-up: first-call costs
step_times = []
for _ in range(teach.pick(5, 3)):
    start = clock()
    training_step(speed_model, optimizer, speed_batch)
    step_times.append(clock() - start)
step_seconds = float(np.median(step_times))
step_flops = pretraining_step_flops(**shape_of(speed_config, speed_batch))
achieved = step_flops / step_seconds / 1e9
mfu = achieved / peak
tokens = speed_batch["input_ids"].size
print(f"step: {1e3 * step_seconds:.0f} ms (median of {len(step_times)}), {step_flops / 1e9:.2f} GFLOP, "
      f"{tokens / step_seconds:,.0f} tokens/s")
print(f"achieved {achieved:.1f} GFLOP/s of a {peak:.1f} GFLOP/s peak: MFU {mfu:.0%}")
assert 0.01 < mfu < 1.0, f"an MFU of {mfu:.3f} is not possible: check the FLOP count and the timing"

# %% [markdown]
# An MFU far from 100% has two kinds of causes: the products themselves run below the peak (they are smaller
# and thinner than the peak's square one, and some are batched over heads), and time goes to work that the count
# does not credit — softmax, GELU, LayerNorm, dropout's random numbers, the cross-entropy's exponentials,
# AdamW. A profile says which.
#
# ## 3. Profiling a step
#
# **cProfile**, Python's profiler, is the first tool to reach for. It times every Python function call:

# %%
profiler = cProfile.Profile()
profiler.enable()
training_step(speed_model, optimizer, speed_batch)
profiler.disable()
pstats.Stats(profiler).sort_stats("tottime").print_stats(8);

# %% [markdown]
# Useful, but at the wrong level: its rows are *functions*, not operations. All the linear layers share one
# row (the big decoder hidden among them), NumPy's internals (`reduce`, `reshape`) get rows of their own, and
# a matrix product written `@` has no row at all: its time lands in whichever function wrote it. What we want
# is a row per **operation** of lesson 1's forward/backward pairs, per layer shape. So we
# write our own profiler: wrap every `*_forward` / `*_backward` function of `bertnp.ops` with a timer, in
# every module that holds a reference to it (the model imported some of them by name, and keeps a table of
# others in `model.F`). The times are **exclusive**: attention's row excludes the linear, softmax and dropout
# ops it calls (what remains is its $QK^\top$ and $PV$ products and the head reshapes). Linear layers get a
# row per shape, so the big decoder shows on its own.

# %%
class OpTimer:
    """`with OpTimer(model.F) as timer:` wraps every bertnp.ops *_forward/*_backward function with an exclusive timer."""

    def __init__(self, *tables):
        self.seconds = defaultdict(float)         # (row, "forward" | "backward") -> seconds
        self.calls = defaultdict(int)
        self.flops = defaultdict(float)           # matrix-product FLOPs of the linear layers
        self.tables = tables                      # extra namespaces to patch, e.g. model.F
        self._open = []                           # time spent in nested op calls, per open call
        self._saved = []

    @staticmethod
    def row(name, args):
        """(row name, direction, FLOPs): a linear layer is named by its (out, in) weight, and counted."""
        op, _, direction = name.rpartition("_")
        flops = 0
        if op == "linear":
            weight = args[1] if direction == "forward" else getattr(args[1], "weight", None)
            if weight is not None:
                out_features, in_features = weight.shape
                op = f"linear {in_features}->{out_features}"
                if direction == "forward":        # x (..., in) -> 2 * rows * in * out
                    flops = 2 * args[0].size * out_features
                else:                             # dout (..., out) -> dx and dW: twice that
                    flops = 4 * args[0].size * in_features
        return op, direction, flops

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                return fn(*args, **kwargs)        # a worker thread's call is part of its caller's time
            self._open.append(0.0)
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = clock() - start
                nested = self._open.pop()
                op, direction, flops = self.row(name, args)
                self.seconds[op, direction] += elapsed - nested
                self.calls[op, direction] += 1
                self.flops[op] += flops
                if self._open:
                    self._open[-1] += elapsed
        timed.__wrapped__ = fn
        return timed

    def __enter__(self):
        modules = [m for n, m in list(sys.modules.items()) if n == "bertnp" or n.startswith("bertnp.")]
        for table in modules + list(self.tables):
            for name, fn in list(vars(table).items()):
                if (name.endswith(("_forward", "_backward")) and not name.startswith("_") and callable(fn)
                        and getattr(fn, "__module__", "").startswith("bertnp.ops")):
                    self._saved.append((table, name, fn))
                    setattr(table, name, self.wrap(name, fn))
        return self

    def __exit__(self, *exc):
        for table, name, fn in reversed(self._saved):
            setattr(table, name, fn)
        self._saved.clear()


profile_steps = teach.pick(5, 2)
phase_seconds = defaultdict(float)
with OpTimer(speed_model.F) as timer:
    for _ in range(profile_steps):
        t0 = clock()
        speed_model.zero_grad()
        speed_model(**speed_batch)
        speed_model.backward()
        t1 = clock()
        optimizer.step()
        t2 = clock()
        phase_seconds["forward + backward"] += t1 - t0
        phase_seconds["AdamW"] += t2 - t1
profile = defaultdict(lambda: defaultdict(float))            # row -> {"forward": s, "backward": s} per step
for (op, direction), seconds in timer.seconds.items():
    profile[op][direction] += seconds / profile_steps
covered = sum(sum(v.values()) for v in profile.values())
profile["AdamW"]["other"] = phase_seconds["AdamW"] / profile_steps
profile["model code (residual adds, gathers, masks)"]["other"] = max(
    0.0, phase_seconds["forward + backward"] / profile_steps - covered)
profiled_step = sum(sum(v.values()) for v in profile.values())
order = sorted(profile, key=lambda op: sum(profile[op].values()))
matmul_rows = [op for op in profile if op.startswith("linear") or op == "attention"]
elementwise_rows = [op for op in profile if op in ("gelu", "layernorm", "softmax", "dropout", "cross_entropy", "tanh")]
share = lambda rows: sum(sum(profile[op].values()) for op in rows) / profiled_step
print(f"profiled step: {1e3 * profiled_step:.0f} ms;  ops with matrix products {share(matmul_rows):.0%}, "
      f"elementwise ops {share(elementwise_rows):.0%}, AdamW {share(['AdamW']):.0%}")
for op in order[::-1]:
    seconds = sum(profile[op].values())
    rate = f"  {timer.flops[op] / profile_steps / seconds / 1e9:5.1f} GFLOP/s" if timer.flops.get(op) else ""
    print(f"  {op:<44} {1e3 * seconds:7.1f} ms  {seconds / profiled_step:5.1%}{rate}")
assert covered / (phase_seconds["forward + backward"] / profile_steps) > 0.7, \
    f"the wrapped ops cover only {covered:.3f} s of the step: was an op missed?"
assert share(elementwise_rows) > 0.05, \
    f"elementwise ops take {share(elementwise_rows):.1%} of the step; expected more than 5% for none of the counted FLOPs"

# %%
fig, ax = plt.subplots(figsize=(9, 0.32 * len(order) + 1.2))
left = np.zeros(len(order))
for part, colour, label in (("forward", "tab:blue", "forward"), ("backward", "tab:orange", "backward"),
                             ("other", "tab:gray", "outside the ops (AdamW, model code)")):
    widths = np.array([1e3 * profile[op].get(part, 0.0) for op in order])
    ax.barh(order, widths, left=left, color=colour, label=label)
    left += widths
for y, op in enumerate(order):
    ax.text(left[y], y, f" {sum(profile[op].values()) / profiled_step:.0%}", va="center", fontsize=8)
ax.set_xlim(0, 1.12 * left.max())                                # room for the percentages
ax.set_xlabel("milliseconds per training step (exclusive time)")
ax.set_title(f"Where a training step's {1e3 * profiled_step:.0f} ms go "
             f"(H={speed_config.hidden_size}, L={speed_config.num_hidden_layers}, V={speed_config.vocab_size}, "
             f"{tokens} tokens)")
ax.legend(loc="lower right")
ax.grid(alpha=0.3, axis="x")
fig.tight_layout()
plt.show()

# %% [markdown]
# Read the figure with section 1's count in mind. The linear layers hold nearly all the counted FLOPs and
# take much of the time, at the rates printed above — compare them with the peak: the big, square-ish
# products come closest; the thin ones (a width of 2 for NSP) do not. The elementwise operations — GELU
# (an `erf` per element), dropout (a random number per element), LayerNorm, softmax, the cross-entropy's
# exponentials over the vocabulary — hold *none* of the counted FLOPs and still take a large share: each one
# reads and writes whole activations, so it is limited by **memory bandwidth**, not arithmetic. A product
# does $\sim C$ multiply-adds per element it reads; an elementwise op does one or a few. That ratio,
# FLOPs per byte moved, is called **arithmetic intensity**, and it decides which of the two limits an
# operation hits. It is also why GPU programmers **fuse** elementwise operations into one kernel (one read,
# one write), and why the kernels of section 7 exist.
#
# ## 4. Activation memory: what the backward needs
#
# Parameters, gradients and AdamW's two moments are 4 arrays of the model's size — fixed. What grows with the
# batch is the **activation memory**: everything the forward keeps for the backward, in the caches of lesson 1's
# `(out, cache)` pairs. The model keeps them in `model._cache` (a dict per layer) until `backward()` frees them.
# We can count them exactly: walk the caches, collect every array, and add up the bytes of the distinct
# buffers (a view, like attention's K and V slices of the fused QKV output, shares its base array's memory:
# count the base once). The parameters, which some caches also reference, are not activations: leave them out.

# %%
def named_arrays(obj, path=""):
    """(path, array) for every NumPy array inside nested dicts, lists, (named) tuples and dataclasses."""
    if isinstance(obj, np.ndarray):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from named_arrays(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):                # a NamedTuple cache
        for key in obj._fields:
            yield from named_arrays(getattr(obj, key), f"{path}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from named_arrays(value, f"{path}[{i}]")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            yield from named_arrays(getattr(obj, field.name), f"{path}.{field.name}")


def arrays_in(obj):
    return (array for _, array in named_arrays(obj))


def buffer_of(array):
    """The array that owns the memory a view looks at."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def held_bytes(obj, skip=()):
    """Bytes of the distinct buffers reachable from obj (each buffer once; buffers in `skip` not at all)."""
    skipped = {id(buffer_of(a)) for a in skip}
    buffers = {id(buffer_of(a)): buffer_of(a) for a in arrays_in(obj)}
    return sum(b.nbytes for key, b in buffers.items() if key not in skipped)


parameters = list(speed_model.parameters().values())
speed_model.zero_grad()
tracemalloc.start()                                 # NumPy reports its allocations to tracemalloc
before = tracemalloc.get_traced_memory()[0]
speed_out = speed_model(**speed_batch)
traced = tracemalloc.get_traced_memory()[0] - before
tracemalloc.reset_peak()
caches = (speed_model._cache, speed_model._head_cache, speed_out)
counted_bytes = held_bytes(caches, skip=parameters)
speed_model.backward()                              # frees the caches when done
backward_peak = tracemalloc.get_traced_memory()[1] - before
tracemalloc.stop()
MiB = 2 ** 20
print(f"after the forward, tracemalloc: {traced / MiB:.2f} MiB more;  the caches and outputs hold "
      f"{counted_bytes / MiB:.2f} MiB;  peak during the backward: {backward_peak / MiB:.2f} MiB")
assert abs(counted_bytes - traced) < 0.05 * traced, \
    f"the caches hold {counted_bytes / MiB:.2f} MiB but tracemalloc saw {traced / MiB:.2f} MiB: something is missing"

# %% [markdown]
# The count and the measurement agree: what the forward allocates *is* what the caches hold. (The backward's
# peak is higher: while it runs, the gradients of the activations exist too, and the caches are only dropped
# at its end.) Now one layer, cache by cache — the list the backward of lessons 6, 7 and 9 reads:

# %%
def is_attention_square(array, T):
    return array.ndim == 4 and array.shape[-2:] == (T, T)             # (B, nh, T, T)


B_, T_ = speed_batch["input_ids"].shape
nh = speed_config.num_attention_heads
speed_model(**speed_batch)                                    # a fresh forward: its caches are live again
layer0 = speed_model._cache["layers"][0]
parameter_buffers = {id(buffer_of(p)) for p in parameters}
seen, layer_bytes, square, fixed = set(), 0, 0, []
print(f"layer 0's caches (B={B_}, T={T_}, C={speed_config.hidden_size}, I={speed_config.intermediate_size}, "
      f"heads={nh}), parameters left out:")
for path, array in named_arrays(layer0):
    owner = buffer_of(array)
    if id(owner) in parameter_buffers:
        continue
    if id(owner) in seen:
        print(f"  {path:<30} {str(array.shape):<16}         (shares a buffer listed above)")
        continue
    seen.add(id(owner))
    layer_bytes += owner.nbytes
    square += owner.nbytes if is_attention_square(array, T_) else 0
    if array.shape[0] not in (B_, B_ * T_):
        fixed.append(path)                                       # no batch axis: its size does not depend on the batch
    view = "" if owner.shape == array.shape else f"  (a view of a {owner.shape} buffer)"
    print(f"  {path:<30} {str(array.shape):<16} {str(array.dtype):<8} {owner.nbytes / MiB:5.2f} MiB{view}")
print(f"total {layer_bytes / MiB:.2f} MiB per layer = {layer_bytes / (B_ * T_):,.0f} bytes per token; "
      f"the (B, nh, T, T) arrays: {square / layer_bytes:.0%}")
if fixed:
    print(f"not activations (their size does not depend on the batch): {fixed} -- a copy of weights made by the forward")
_ = speed_model.backward()                                    # (frees them again)

# %% [markdown]
# Most entries are (B, T, C) or (B, T, I) — the input of every linear layer (its weight gradient needs it),
# the normalised $\hat x$ of each LayerNorm, the GELU's input, the dropout masks. But three are **(B, nh, T, T)**:
# the attention probabilities, their dropout mask, and the dropped probabilities that multiplied $V$. They grow
# with $T^2$: double the sequence length and they quadruple. Measured on a small model, per layer, for growing $T$:

# %%
T_values = teach.pick([32, 64, 128, 256, 512], [32, 64, 128, 256])
memory_config = bn.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                              intermediate_size=256, max_position_embeddings=max(T_values))
memory_model = bn.BertModel(memory_config, dtype="float32").train()
memory_parameters = list(memory_model.parameters().values())
per_layer_square, per_layer_rest = [], []
for T in T_values:
    memory_model(input_ids=np.random.default_rng(T).integers(1, 100, size=(2, T)))
    layer = memory_model._cache["layers"][0]
    total = held_bytes(layer, skip=memory_parameters)
    square_arrays = [a for a in arrays_in(layer) if is_attention_square(a, T)]
    per_layer_square.append(held_bytes(square_arrays))
    per_layer_rest.append(total - per_layer_square[-1])
square_share = np.array(per_layer_square) / (np.array(per_layer_square) + np.array(per_layer_rest))
print("T:", T_values, " share of the (B, nh, T, T) arrays:", np.round(square_share, 2))
assert square_share[-1] > 0.5 > square_share[0], \
    f"the T^2 arrays should go from a minority at T={T_values[0]} to the majority at T={T_values[-1]}: {square_share}"
growth = T_values[-1] // T_values[0]
teach.check_equal(f"the (B, nh, T, T) caches at T={T_values[-1]} vs T={T_values[0]} (x {growth}^2)",
                  per_layer_square[-1], per_layer_square[0] * growth ** 2)
assert per_layer_rest[-1] <= per_layer_rest[0] * growth, \
    f"the other caches should grow at most linearly with T: {per_layer_rest}"

fig, ax = plt.subplots(figsize=(7.5, 3.8))
positions = np.arange(len(T_values))
ax.bar(positions, np.array(per_layer_rest) / MiB, label="(B, T, C) and (B, T, I) caches: grow with T")
ax.bar(positions, np.array(per_layer_square) / MiB, bottom=np.array(per_layer_rest) / MiB,
       label="(B, nh, T, T) attention caches: grow with T²")
ax.set_xticks(positions, [str(t) for t in T_values])
ax.set_xlabel("sequence length T")
ax.set_ylabel("activation memory of one layer (MiB)")
ax.set_title(f"What one layer keeps for the backward (B=2, C={memory_config.hidden_size}, "
             f"{memory_config.num_attention_heads} heads)")
ax.legend()
ax.grid(alpha=0.3, axis="y")
fig.tight_layout()
plt.show()

# %% [markdown]
# This is why BERT pretrained 90% of its steps at $T = 128$ and only the last 10% at 512, and why memory, not
# FLOPs, is what long sequences run out of first. The standard remedies each drop something from this list:
# **recomputation** (activation checkpointing) keeps only each layer's input and recomputes the rest during
# the backward, for ~1/3 more FLOPs; **FlashAttention** never stores the (T, T) probabilities — it keeps the
# softmax's row statistics and recomputes the tiles in the backward; dropout masks can be regenerated from a
# seed instead of stored, or stored as 1 byte (or 1 bit) instead of 4.
#
# ## 5. Why float32, and why masked-only logits
#
# **Speed.** A float32 number is 4 bytes, a float64 8: half the memory traffic, and twice as many numbers per
# vector instruction. Measured on a product of the same size, alternating the two:

# %%
precision_size = teach.pick(1024, 512)
rates = {np.float32: [], np.float64: []}
for _ in range(teach.pick(3, 4)):
    for dtype in rates:
        rates[dtype].append(matmul_peak(precision_size, dtype, repeats=3))
f32, f64 = max(rates[np.float32]), max(rates[np.float64])
print(f"({precision_size})^3 product: float32 {f32:.1f} GFLOP/s, float64 {f64:.1f} GFLOP/s: {f32 / f64:.2f}x")
assert f32 / f64 > 1.3, f"float32 should be clearly faster than float64 ({f32:.1f} vs {f64:.1f} GFLOP/s)"

# %% [markdown]
# **Precision.** float32 keeps 24 significant bits: a relative rounding error of $2^{-24} \approx 6 \times 10^{-8}$
# per operation. Is that enough? It depends on what the number is for.
#
# *Training* follows a gradient that is itself noisy: each batch's gradient differs from the next batch's by
# far more than float32 rounding. We compare, on the same tiny model and weights, the float32 gradient with the
# float64 one, and the gradients of two different batches:

# %%
tiny = bn.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=32)
batches = [make_batch(4, 24, 200, np.random.default_rng(seed)) for seed in (10, 11)]
model64 = bn.BertForPreTraining(tiny, seed=3, dtype="float64").eval()        # dropout off: deterministic
model32 = bn.BertForPreTraining(tiny, seed=3, dtype="float32").eval()        # the same weights, rounded


def flat_gradient(model, batch):
    model.zero_grad()
    model(**batch)
    return np.concatenate([np.asarray(g, dtype=np.float64).ravel() for g in model.backward().values()])


def relative_difference(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


g64 = flat_gradient(model64, batches[0])
rounding = relative_difference(flat_gradient(model32, batches[0]), g64)
sampling = relative_difference(flat_gradient(model64, batches[1]), g64)
print(f"gradient, float32 vs float64 (same batch): {rounding:.1e} relative;  "
      f"float64, batch 2 vs batch 1: {sampling:.2f} relative")
assert rounding < 1e-4 and sampling > 0.1, \
    f"float32's rounding ({rounding:.1e}) should be tiny next to the batch-to-batch difference ({sampling:.2f})"

# %% [markdown]
# And over a short run, with AdamW, the float32 model's loss follows the float64 model's:

# %%
steps = teach.pick(40, 20)
losses = {}
for dtype in ("float64", "float32"):
    model = bn.BertForPreTraining(tiny, seed=3, dtype=dtype).eval()
    opt = bn.AdamW(model, lr=3e-3, weight_decay=0.01)
    losses[dtype] = np.array([float(training_step(model, opt, batches[0]).loss) for _ in range(steps)])
gap = np.abs(losses["float32"] - losses["float64"])
print(f"loss {losses['float64'][0]:.4f} -> {losses['float64'][-1]:.4f} (float64); "
      f"largest |float32 - float64| over {steps} steps: {gap.max():.1e}")
assert gap.max() < 1e-3 * losses["float64"].max(), f"float32 drifted from float64 by {gap.max():.2e}"
assert losses["float64"][-1] < 0.5 * losses["float64"][0], "the run should learn (the loss halves on one batch)"

# %% [markdown]
# *A gradient check* is different: it compares an analytic gradient with finite differences
# $\frac{f(x+h) - f(x-h)}{2h}$, which subtract two nearly equal losses. The rounding error of each loss,
# $\sim 6\times 10^{-8} \cdot |f|$, is divided by $2h$: with $f \approx 6$ and $h = 10^{-3}$ that is an error of
# $\sim 2 \times 10^{-4}$ in a gradient entry that may itself be $10^{-2}$ — far too coarse to tell a right backward
# from one with a small mistake. A larger $h$ divides the rounding by more, but the difference quotient then
# drifts from the derivative (its error grows as $h^2$). Lesson 1's threshold of $10^{-7}$ needs float64
# (rounding $10^{-16}$). Here are the two, on the largest entries of one bias's gradient:

# %%
def loss_of(model, batch):
    return float(model(**batch).loss)


name = "bert.encoder.layer.1.output.dense.bias"
model64.zero_grad()
model64(**batches[0])
gradient = model64.backward()[name]                           # float64, analytic: the referee
entries = np.argsort(-np.abs(gradient))[:4]                   # its 4 largest entries
analytic = gradient[entries]
errors = {}
for dtype, h in (("float64", 1e-5), ("float32", 1e-3), ("float32", 1e-2)):
    model = bn.BertForPreTraining(tiny, seed=3, dtype=dtype).eval()
    bias = model.parameters()[name]
    numeric = []
    for e in entries:
        saved = bias[e]
        bias[e] = saved + h
        plus = loss_of(model, batches[0])
        bias[e] = saved - h
        minus = loss_of(model, batches[0])
        bias[e] = saved
        numeric.append((plus - minus) / (2 * h))
    error = teach.rel_error_array(analytic, np.array(numeric)).max()
    errors[dtype] = min(errors.get(dtype, np.inf), error)
    print(f"finite differences in {dtype}, h = {h:g}: largest relative error {error:.1e}   "
          f"(gradient entries ~{np.abs(analytic).min():.0e} to {np.abs(analytic).max():.0e})")
assert errors["float64"] < 1e-7 < 1e-4 < errors["float32"], \
    f"float64 differences should check to 1e-7 ({errors['float64']:.1e}), float32 ones cannot ({errors['float32']:.1e})"

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
ax1.plot(losses["float64"], label="float64")
ax1.plot(losses["float32"], "--", label="float32")
ax1.set_xlabel("AdamW step"); ax1.set_ylabel("loss (MLM + NSP)")
ax1.set_title("the same run in two precisions"); ax1.legend(); ax1.grid(alpha=0.3)
ax2.semilogy(np.maximum(gap, 1e-12), label="|float32 loss - float64 loss|")
ax2.axhline(2.0 ** -24 * losses["float64"].max(), color="k", ls=":", label="one float32 rounding of the loss")
ax2.set_xlabel("AdamW step"); ax2.set_ylabel("difference")
ax2.set_title("float32 follows float64 closely"); ax2.legend(); ax2.grid(alpha=0.3, which="both")
fig.tight_layout()
plt.show()

# %% [markdown]
# So: **float32 for training** (twice the speed, half the memory, rounding far below the gradient's own noise;
# on GPUs even 16-bit formats work, with care), **float64 for checking** (every gradient check of this course).
# `bertnp` models take `dtype="float32"` or `"float64"` for exactly this reason.
#
# **Masked-only logits.** Lesson 8 gathered the ~15% labelled positions before the $C \times V$ decoder and
# timed the product alone. Here is the whole forward pass and its loss, both ways, with BERT's vocabulary of
# 30,522: Hugging Face's (logits at every position, then the loss over the labelled ones) and bertnp's
# (logits only where there is a label). First counted, then timed:

# %%
vocab_config = dataclasses.replace(speed_config, vocab_size=30522)
vocab_model = bn.BertForPreTraining(vocab_config, seed=0, dtype="float32").eval()
vocab_batch = make_batch(teach.pick(16, 8), teach.pick(128, 64), 30522, np.random.default_rng(5))
inputs = {k: vocab_batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def every_position():
    logits = vocab_model(**inputs).prediction_logits                           # (B, T, V): every position
    loss, _ = cross_entropy_forward(logits.reshape(-1, logits.shape[-1]), vocab_batch["labels"].reshape(-1))
    return float(loss)                                                         # (B*T, V) -> mean over the labelled


def masked_only():
    return float(vocab_model(**inputs, labels=vocab_batch["labels"]).mlm_loss)   # (N, V): labelled rows only


teach.check_close("the MLM loss both ways", masked_only(), every_position(), rtol=1e-5)
with counting_matmuls() as counted_every:
    counting_model = bn.BertForPreTraining(vocab_config, dtype="float32").eval()     # built inside: counted arrays
    counting_model(**inputs)
with counting_matmuls() as counted_masked:
    counting_model(**inputs, labels=vocab_batch["labels"])
flops_every = sum(f for *_, f in counted_every)
flops_masked = sum(f for *_, f in counted_masked)
times = {"every position": math.inf, "masked only": math.inf}
for _ in range(teach.pick(3, 3)):                                             # alternate, keep each one's best
    times["every position"] = min(times["every position"], best_seconds(every_position, 1))
    times["masked only"] = min(times["masked only"], best_seconds(masked_only, 1))
speedup = times["every position"] / times["masked only"]
print(f"forward FLOPs: every position {flops_every / 1e9:.2f} G, masked only {flops_masked / 1e9:.2f} G "
      f"({flops_every / flops_masked:.1f}x)")
print(f"forward + loss, timed: every position {1e3 * times['every position']:.0f} ms, "
      f"masked only {1e3 * times['masked only']:.0f} ms: {speedup:.1f}x faster")
assert speedup > 2.0, f"computing the logits at ~15% of the positions should be > 2x faster, measured {speedup:.2f}x"

# %% [markdown]
# The loss is the same (it only ever read the labelled rows); the work is not. The decoder's product shrinks
# by $BT/N \approx 6.7\times$, and with it the cross-entropy's exponentials over $V$ and the (B, T, V) logits
# array — 4 bytes × 30,522 per position, more than all of a BERT-mini layer's caches per token. The backward
# saves the same again.
#
# **The last layer, too.** The same reasoning goes one layer further down. The heads read the last encoder
# layer's output at two kinds of rows only: the labelled positions (the MLM head gathers them) and each
# sequence's `[CLS]` (the pooler reads `x[:, 0]`). Which parts of the last layer may skip the other rows? Not
# its attention: a scored row's query attends to the keys and values of *every* position, so K and V are
# needed everywhere. But after the attention each row is computed on its own — the output projection, the
# LayerNorms, the FFN — and a row nobody reads needs none of them. First: which rows are they, as flat
# indices into the $B \cdot T$ rows of the last hidden state?

# %% tags=["exercise"]
# EXERCISE: the rows of the last layer that the pretraining heads read
def my_scored_rows(labels, ignore_index=-100):
    '''labels: (B, T) ints, ignore_index where a position is not scored. Returns the sorted flat indices
    (into the B*T rows of the last hidden state, row-major) that the MLM head or the pooler reads, each once.'''
    ### BEGIN SOLUTION
    batch, seq_len = labels.shape
    labelled = np.flatnonzero(labels.reshape(-1) != ignore_index)     # the MLM head's rows
    cls_rows = np.arange(batch) * seq_len                             # position 0 of every sequence: the pooler's
    return np.union1d(labelled, cls_rows)                             # sorted, each row once
    ### END SOLUTION


# %% tags=["check"]
check_labels = np.full((3, 6), -100)
check_labels[0, 2], check_labels[0, 5], check_labels[2, 1] = 7, 9, 4     # sequence 1 has no label at all
check_labels[2, 0] = 3           # a label on a [CLS] (BERT's data never masks one, but labels may be anything)
rows_needed = {0: "[CLS] of sequence 0", 2: "label (0, 2)", 5: "label (0, 5)", 6: "[CLS] of sequence 1",
               12: "[CLS] and label (2, 0)", 13: "label (2, 1)"}
mine = np.asarray(my_scored_rows(check_labels))
print(f"labels (3, 6) with 4 labelled positions, one on a [CLS]; your answer: {mine.tolist()}")
teach.check(mine.ndim == 1 and mine.dtype.kind in "iu",
            f"your answer is a 1-D array of integer row indices -- it is {mine.dtype} of shape {mine.shape}"
            + ("; a mask? np.flatnonzero gives the indices of its True entries" if mine.dtype == bool else "")
            + ("; a flat index is one number a row: b * T + t" if mine.ndim > 1 else ""))
missing = [f"{r} ({why})" for r, why in rows_needed.items() if r not in mine.tolist()]
extra = sorted({int(r) for r in mine if int(r) not in rows_needed})
repeated = sorted({int(r) for r in mine if mine.tolist().count(r) > 1})
teach.check(not missing and not extra, "your rows are the rows the heads read, no more"
            + (f" -- missing: {', '.join(missing)}" if missing else "")
            + (f" -- extra: {extra} (computing those is the waste we are removing)" if extra else ""))
teach.check(not repeated, "each row once" + (f" -- repeated: {repeated} (a labelled [CLS] is still one row)"
                                             if repeated else ""))
teach.check_equal("the rows, sorted", mine, sorted(rows_needed))

# %% [markdown]
# bertnp does exactly this when `model.skip_unscored_rows` is True (the pretraining `Trainer` sets it): the last
# layer's attention output and FFN run at those rows only (`bertnp.ops.linear.linear_rows_forward`: the Linear
# at some rows, zero at the others), while its LayerNorms, dropouts and GELU still run on every row — they are
# cheap, and so the dropout masks and the backward stay exactly the code of lesson 9. Below, one training step
# both ways on the same weights, with dropout on: the same losses and gradients, fewer products, less time.

# %%
def model_with(skip, model_config, dtype, seed=0):
    model = bn.BertForPreTraining(model_config, seed=seed, dtype=dtype).train()     # dropout on
    model.skip_unscored_rows = skip
    return model


def forward_backward(model, batch):
    out = model(**batch)
    return out, {name: np.array(g) for name, g in model.backward().items()}


small_train = dataclasses.replace(small, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
(whole_out, whole_grads), (skip_out, skip_grads) = (forward_backward(model_with(skip, small_train, "float64"),
                                                                     small_batch) for skip in (False, True))
teach.check_close("loss, skipping the unscored rows vs the whole last layer (float64)",
                  float(skip_out.loss), float(whole_out.loss), rtol=1e-12)
# each gradient's largest difference, relative to its largest entry (at least 1e-3: the attention key
# biases' true gradient is exactly 0, so theirs is rounding noise)
worst = max(np.abs(skip_grads[n] - whole_grads[n]).max() / max(np.abs(whole_grads[n]).max(), 1e-3)
            for n in whole_grads)
print(f"  largest difference over every gradient, relative to the gradient's size: {worst:.1e}")
assert worst < 1e-12, f"skipping rows nobody reads must not change a gradient ({worst:.1e})"

with counting_matmuls() as counted_skip:
    forward_backward(model_with(True, small_train, "float64"), small_batch)      # built inside: counted
shape = shape_of(small, small_batch)
scored = int((small_batch["labels"] != -100).sum()) + shape["B"]
saved = pretraining_step_flops(**shape) - sum(f for *_, f in counted_skip)
formula = 3 * 2 * (shape["B"] * shape["T"] - scored) * (shape["C"] ** 2 + 2 * shape["C"] * shape["I"])
print(f"{scored} scored rows of {shape['B'] * shape['T']}: {saved:,} matmul FLOPs fewer a step "
      f"= 3 x 2 (BT - S)(C^2 + 2CI) = {formula:,}")
assert saved == formula, f"counted {saved:,} fewer FLOPs, the formula says {formula:,}"

timed_models = {skip: model_with(skip, speed_config, "float32") for skip in (False, True)}
timed = {True: math.inf, False: math.inf}
for _ in range(teach.pick(4, 2)):                                             # alternate, keep each one's best
    for skip, model in timed_models.items():
        timed[skip] = min(timed[skip], best_seconds(lambda: forward_backward(model, speed_batch), 1))
print(f"forward + backward of section 2's model ({speed_config.num_hidden_layers} layers, "
      f"{speed_batch['input_ids'].shape[0]} x {speed_batch['input_ids'].shape[1]}): whole last layer "
      f"{1e3 * timed[False]:.0f} ms, scored rows only {1e3 * timed[True]:.0f} ms")

# %% [markdown]
# The time saved is the last layer's share of the work at the unscored rows: with 4 layers and ~16% of the rows
# scored, about 70% of a layer's products, so up to ~15% of the encoder's — less where the decoder dominates.
# (`benchmarks/README.md` has careful figures: BERT-mini's training step, 16 × 128 with 20 labels a row, 7%
# faster.) Skipping is a choice about what the step returns, not a shortcut in
# the mathematics: with it on, the model no longer returns `last_hidden_state` (most of its rows are not
# computed), so it is off by default, as in Hugging Face.
#
# ## 6. The same code on a GPU
#
# Every operation in `bertnp.ops` starts with `xp = backend.xp()` and then writes `xp.exp`, `xp.empty`,
# `xp.multiply(..., out=...)` — never `np.` on a model array. `backend.xp()` returns the **array module** of the
# active backend: `numpy`, or `cupy` after `bn.set_backend("cupy")`. CuPy implements NumPy's API on the GPU
# (`cupy.exp`, `cupy.matmul`, ... with the same names and semantics), so the same line runs on either; the
# operators (`a @ b`, `a * b`) dispatch on the array's type by themselves. Only `backend.py` imports CuPy; it
# also provides what has no common name (the exact `erf`, a scatter-add, seeded generators), and
# `to_device` / `to_host` for the one copy in each direction. Here are the lines of LayerNorm's forward (the
# body that `bertnp.parallel` runs on blocks of rows) that name the array module; the others are operators on
# the arrays (`x - mean`, `xhat *= rstd`), which CuPy arrays have too:

# %%
source_lines = inspect.getsource(layernorm_module._layernorm_forward_rows).splitlines()
xp_lines = [line for line in source_lines if "xp" in line or line.lstrip().startswith("def ")]
print("\n".join(xp_lines))
assert len(xp_lines) > 3, "LayerNorm's forward should name the array module (xp) on several lines"
print("\nactive backend:", bn.get_backend(), "->", bn.backend.xp().__name__)

# %%
HAS_GPU = bn.backend.is_available("cupy")       # CuPy installed and a GPU answering
if not HAS_GPU:
    print("No GPU here (or CuPy is not installed): SKIPPING the GPU runs of this section and of section 7.\n"
          "With a GPU, this cell would: switch with bn.set_backend('cupy'); load the CPU model's weights into a\n"
          "model built on the GPU; check that its loss equals the CPU's (float32, rtol 1e-4); and time a training\n"
          "step on the GPU (synchronising before reading the clock). Everything else in the lesson runs on the CPU.")
else:
    cpu_loss = float(speed_model.eval()(**speed_batch).loss)            # on the CPU, before switching
    cpu_state = speed_model.state_dict()
    speed_model.train()
    bn.set_backend("cupy")
    cp = bn.backend.xp()
    gpu_name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    print("GPU:", gpu_name.decode() if isinstance(gpu_name, bytes) else gpu_name, " CuPy", cp.__version__)
    try:
        gpu_model = bn.BertForPreTraining(speed_config, dtype="float32").eval()
        gpu_model.load_state_dict(cpu_state)                             # host arrays -> copied to the GPU
        gpu_loss = float(gpu_model(**speed_batch).loss)                 # host inputs: the model copies them
        teach.check_close("loss on the GPU vs on the CPU (float32, dropout off)", gpu_loss, cpu_loss, rtol=1e-4)
        gpu_model.train()
        gpu_optimizer = bn.AdamW(gpu_model, lr=1e-4, weight_decay=0.01)
        training_step(gpu_model, gpu_optimizer, speed_batch)           # warm-up: compiles CuPy's kernels
        bn.backend.synchronize()
        gpu_times = []
        for _ in range(5):
            start = time.perf_counter()
            training_step(gpu_model, gpu_optimizer, speed_batch)
            bn.backend.synchronize()                                    # the GPU runs asynchronously: wait
            gpu_times.append(time.perf_counter() - start)
        gpu_step = float(np.median(gpu_times))
        print(f"training step: CPU {1e3 * step_seconds:.0f} ms, GPU {1e3 * gpu_step:.1f} ms "
              f"({step_flops / gpu_step / 1e12:.2f} TFLOP/s)")
    finally:
        bn.set_backend("numpy")

# %% [markdown]
# On a GPU a small model like this one is limited less by arithmetic than by **launch overhead**: every
# operation is one or more kernel launches of a few microseconds each, issued by Python, and a layer is dozens
# of them. Larger batches and fused kernels are how GPU code fights that.
#
# Two rules keep GPU code fast: nothing is copied back to the host inside a step
# (`float(loss)`, `.item()`, a boolean mask's `nonzero` would each make the CPU wait for the GPU), and arrays
# are allocated through CuPy's memory pool, which reuses freed blocks without asking the driver.
#
# ## 7. One CUDA kernel: LayerNorm forward, from simple to fast
#
# CuPy's own kernels serve every operation, one kernel per NumPy call: LayerNorm's forward is a mean, a
# subtraction, a square, another mean, ... each reading and writing the whole (rows, C) array. A
# hand-written kernel does it in one pass over each row. `kernels/layernorm.cu` holds two versions of the
# forward, and `bertnp/kernels.py` compiles them with `cupy.RawModule` (NVRTC, CUDA's runtime compiler) and
# wraps them as `kernels.layernorm_forward(x, gamma, beta, eps, version=1 or 2)`, with the same signature and
# the same cache as the NumPy op.
#
# **The model, in one paragraph.** A kernel is a function that runs once per *thread*. Threads come in
# *blocks* (here 128 or 256 threads), blocks in a *grid*; each thread finds its work from `blockIdx.x`,
# `blockDim.x` and `threadIdx.x`. The hardware runs threads in groups of 32 called **warps**, in lockstep: one
# instruction, 32 lanes. Two consequences decide a kernel's speed. *Coalescing*: when the 32 lanes of a warp
# load 32 consecutive floats, that is one 128-byte memory transaction; when they load floats $C$ apart, it is
# 32 transactions. And *cooperation*: lanes of a warp can read each other's registers directly with
# `__shfl_xor_sync(mask, value, lane_mask)` — lane $\ell$ receives the value of lane $\ell \oplus$ `lane_mask`
# (bitwise XOR), all lanes at once.
#
# The two versions (from the file, as the GPU compiles it):

# %%
cu_source = kernels.kernel_sources()["layernorm"].read_text(encoding="utf-8")
start = cu_source.index("__device__ __forceinline__ float warp_sum")
stop = cu_source.index("// ----", cu_source.index("layernorm_forward_v2"))
print(cu_source[start:stop].rstrip())

# %% [markdown]
# **v1, one thread per row**: a thread loops over its row's $C$ values, three times (the sum, the squared
# deviations, the output). Simple, and slow twice over: a batch of $BT = 2048$ rows gives only 2048 threads
# (a GPU wants tens of thousands in flight), and at each step of the loop the 32 lanes of a warp read
# addresses $C$ floats apart — uncoalesced.
#
# **v2, one warp per row**: lane $\ell$ takes the channels $\ell, \ell + 32, \ell + 64, \dots$, so at each step
# the warp reads 32 consecutive floats (coalesced), and 32 times as many threads work. Each lane ends with a
# partial sum of its $C/32$ channels; `warp_sum` then combines the 32 partial sums in 5 steps: with
# `lane_mask` 16, 8, 4, 2, 1, every lane adds the value of the lane that differs from it in that one bit. The
# pattern is called a **butterfly**, and after it *every* lane holds the row's total (no lane has to broadcast
# it to the others).
#
# Let us make sure we can predict exactly what the GPU computes. NumPy can play a warp: an array of shape
# (..., 32) is one value per lane, and a lane reading another lane's value is indexing the last axis.
#
# ### Exercise: the warp's butterfly sum
#
# Write `my_warp_sum(lanes)`: `lanes` has shape (..., 32), one float32 value per lane of each warp. Return an
# array of the same shape in which every lane holds what `warp_sum` leaves in that lane: the same additions,
# in the same order, in float32 — so that the result is the GPU's **to the bit**. Do not modify `lanes`.
#
# * All 32 lanes execute each `v += __shfl_xor_sync(...)` at the same time: every lane reads its partner's
#   value *from before* this step.
# * Floating-point addition is not associative: `(a + b) + c` and `a + (b + c)` can differ in the last bit, so
#   "a correct sum" is not enough — the check compares bits.

# %% tags=["exercise"]
# EXERCISE: emulate warp_sum's butterfly (__shfl_xor_sync with lane masks 16, 8, 4, 2, 1) over the last axis
def my_warp_sum(lanes):
    '''lanes: (..., 32) float32, one value per lane. Returns (..., 32): what each lane holds after warp_sum.'''
    ### BEGIN SOLUTION
    lane_ids = np.arange(32)
    v = lanes.copy()
    for lane_mask in (16, 8, 4, 2, 1):
        v = v + v[..., lane_ids ^ lane_mask]          # every lane adds its partner's value from before this step
    ### END SOLUTION
    return v


# %% tags=["check"]
check_rng = np.random.default_rng(1507)
lanes = (check_rng.standard_normal((500, 32)) * 10.0 ** check_rng.uniform(-3, 3, (500, 32))).astype(np.float32)
original = lanes.copy()
mine = np.asarray(my_warp_sum(lanes))
teach.check_equal("my_warp_sum leaves its input unchanged", lanes, original)
teach.check_equal("shape of the result", mine.shape, lanes.shape)
teach.check(mine.dtype == np.float32, "the lanes stay float32 (a GPU register is float32)", str(mine.dtype), "float32")
exact = lanes.astype(np.float64).sum(axis=1)                              # (500,) the true totals
scale = np.abs(lanes).astype(np.float64).sum(axis=1)                      # rounding is relative to this
lane0_error = np.abs(mine[:, 0] - exact) / scale
if lane0_error.max() > 1e-5:
    worst = int(lane0_error.argmax())
    raise teach.CheckFailed(f"lane 0 of warp {worst} holds {mine[worst, 0]:.6g}, but its 32 lanes sum to {exact[worst]:.6g} "
                            f"(relative error {lane0_error.max():.1e}): are all 32 lanes' values in it, each once?")
same = (mine == mine[:, :1]).all(axis=1)
if not same.all():
    warp = int(np.flatnonzero(~same)[0])
    differ = np.flatnonzero(mine[warp] != mine[warp, 0])
    raise teach.CheckFailed(f"after warp_sum every lane holds the same total, but in warp {warp} lanes "
                            f"{differ[:8].tolist()} hold {mine[warp, differ[:3]].tolist()} while lane 0 holds {mine[warp, 0]}: "
                            "with __shfl_xor_sync each lane's partner is lane ^ lane_mask, and it reads the "
                            "partner's value from BEFORE the step")
folded = lanes.copy()                              # the kernel's order, written as halving: lane l + lane l+16, ...
while folded.shape[1] > 1:
    half = folded.shape[1] // 2
    folded = folded[:, :half] + folded[:, half:]
bits_differ = int((mine[:, 0] != folded[:, 0]).sum())
if bits_differ:
    raise teach.CheckFailed(f"your totals are right to float32 rounding, but {bits_differ} of 500 warps differ from the "
                            "kernel's in the last bits: your additions are not in warp_sum's order "
                            "(lane masks 16, 8, 4, 2, 1: lane l first adds lane l ^ 16)")
teach.check_equal("every lane's total, bit for bit, vs the kernel's order of additions", mine,
                  np.repeat(folded, 32, axis=1))

# %% [markdown]
# ### Solution notes
#
# Lane $\ell$'s partner for `lane_mask` $m$ is lane $\ell \oplus m$, so one step of the butterfly is "add the
# array to itself with its last axis permuted by $\ell \mapsto \ell \oplus m$". Written as
# `v = v + v[..., partner]`, NumPy evaluates the whole right-hand side (every partner's *old* value) before
# assigning, exactly like the warp's lockstep. Updating lanes one at a time in a Python loop instead reads
# values some partners have already updated — the check then finds lanes that disagree.
#
# Why does every lane end with *the same bits*? After the step with mask 16, lanes $\ell$ and $\ell \oplus 16$
# both hold $v_\ell + v_{\ell \oplus 16}$ — the same two numbers, and float addition *is* commutative. By
# induction, after the 5 steps all 32 lanes hold the same sum, computed as a balanced tree: lane $\ell$ plus
# lane $\ell+16$, then those pairs 8 apart, and so on — the halving fold of the check. `__shfl_down_sync` (the
# other common pattern) leaves the total in lane 0 only; `np.sum` gives the total in yet another order (NumPy
# sums in blocks of 8 with pairwise steps), right to rounding but not the kernel's bits. And the other order of
# masks, 1, 2, 4, 8, 16, is just as correct — but it is a different tree, hence different bits, and a GPU result
# you could not reproduce.
#
# ### Both kernels, emulated thread by thread
#
# Now the whole forward, both versions, in NumPy, as the launch runs them. The launch configuration is the
# wrapper's: v1 runs blocks of 128 threads, one row each; v2 blocks of 256 threads = 8 warps, one row per warp.
# Each emulation computes every thread's row index from (`blockIdx.x`, `threadIdx.x`) exactly as the kernel
# does, drops the threads whose row is past the end (`if (row >= rows) return;`), and then runs the kernel's
# loops with one array element per thread — all threads in lockstep. The order of every float32 addition is
# the kernel's.

# %%
F32 = np.float32


def shfl_xor(values, lane_mask):
    """__shfl_xor_sync for all warps at once: each lane receives lane (lane XOR lane_mask)'s value."""
    return values[..., np.bitwise_xor(np.arange(32), lane_mask)]


def warp_sum_emulated(values):
    """warp_sum of kernels/layernorm.cu, line by line."""
    for off in (16, 8, 4, 2, 1):                       # for (int off = 16; off > 0; off >>= 1)
        values = values + shfl_xor(values, off)        #     v += __shfl_xor_sync(0xffffffffu, v, off);
    return values


def emulate_layernorm_forward_v1(x, gamma, beta, eps, block=128):
    rows, C = x.shape
    grid = -(-rows // block)                                             # ceil(rows / 128) blocks
    row = (np.arange(grid)[:, None] * block + np.arange(block)).ravel()  # blockIdx.x * blockDim.x + threadIdx.x
    row = row[row < rows]                                                # if (row >= rows) return;
    xr = x[row]                                                          # (threads, C): each thread's row
    total = np.zeros(len(row), F32)
    for c in range(C):                                                   # for (c = 0; c < C; c++) sum += xr[c];
        total += xr[:, c]
    mean = total / F32(C)
    ss = np.zeros(len(row), F32)
    for c in range(C):
        d = xr[:, c] - mean
        ss += d * d
    r = F32(1) / np.sqrt(ss / F32(C) + F32(eps))
    xhat = (xr - mean[:, None]) * r[:, None]
    out = np.empty_like(x)
    out[row] = xhat * gamma + beta
    return out, mean, r


def emulate_layernorm_forward_v2(x, gamma, beta, eps, block=256):
    rows, C = x.shape
    warps_per_block = block // 32
    grid = -(-rows // warps_per_block)                                   # ceil(rows / 8) blocks
    thread = np.arange(grid * block)
    lane = thread % 32                                                   # threadIdx.x % WARP
    warp_row = (thread // block) * warps_per_block + (thread % block) // 32   # blockIdx.x * 8 + threadIdx.x / WARP
    row = warp_row.reshape(-1, 32)[:, 0]                                 # one row per warp
    assert (warp_row.reshape(-1, 32) == row[:, None]).all() and (lane.reshape(-1, 32) == np.arange(32)).all(), \
        "the 32 lanes of a warp share one row"
    row = row[row < rows]                                                # if (row >= rows) return;
    xr = x[row]                                                          # (warps, C)
    steps = -(-C // 32)
    padded = np.zeros((len(row), steps * 32), F32)                       # a lane past the row's end adds nothing
    padded[:, :C] = xr
    strided = padded.reshape(len(row), steps, 32)                        # [warp, step, lane] = channel step*32 + lane
    partial = np.zeros((len(row), 32), F32)
    for s in range(steps):                                               # for (c = lane; c < C; c += WARP) sum += xr[c];
        partial += strided[:, s]
    mean = warp_sum_emulated(partial)[:, 0] / F32(C)                     # every lane holds it; take lane 0's
    deviation = strided - mean[:, None, None]
    squares = np.zeros((len(row), 32), F32)
    for s in range(steps):
        d = deviation[:, s]
        squares += np.where(np.arange(s * 32, s * 32 + 32) < C, d * d, F32(0))
    r = F32(1) / np.sqrt(warp_sum_emulated(squares)[:, 0] / F32(C) + F32(eps))
    xhat = (xr - mean[:, None]) * r[:, None]
    out = np.empty_like(x)
    out[row] = xhat * gamma + beta
    return out, mean, r


ln_rows, ln_C = teach.pick(4096, 1024), 768                            # BERT-base's width
ln_rng = np.random.default_rng(157)
x_ln = (0.5 + ln_rng.standard_normal((ln_rows, ln_C))).astype(F32)
gamma_ln = (1.0 + 0.1 * ln_rng.standard_normal(ln_C)).astype(F32)
beta_ln = (0.1 * ln_rng.standard_normal(ln_C)).astype(F32)
eps = 1e-12
reference, reference_cache = layernorm_forward(x_ln, gamma_ln, beta_ln, eps)        # NumPy, float32
emulated = {1: emulate_layernorm_forward_v1(x_ln, gamma_ln, beta_ln, eps),
            2: emulate_layernorm_forward_v2(x_ln, gamma_ln, beta_ln, eps)}
for version, (out_v, _, rstd_v) in emulated.items():
    teach.check_close(f"emulated v{version} vs NumPy's layernorm_forward (float32)", out_v, reference, rtol=1e-5, atol=5e-6)
    teach.check_close(f"emulated v{version}'s rstd", rstd_v, reference_cache.rstd[:, 0], rtol=1e-5)
print(f"v1 and v2 give bit-identical outputs in {np.mean(emulated[1][0] == emulated[2][0]):.0%} of the entries "
      "(the rest differ in the last bits: two orders of addition)")

# %% [markdown]
# Both agree with NumPy to float32 precision, and not with each other to the bit: they add in different
# orders. Which order is *better*? v1 adds 768 numbers one after another into one running sum; v2 adds 24 per
# lane and then combines them as a tree. When a running sum grows large, each new small term loses its last
# bits to rounding; a tree keeps the operands of each addition of similar size. Measure it on rows whose mean
# is large next to their spread (as in a residual stream), against float64:

# %%
offset_rows = (20.0 + ln_rng.standard_normal((teach.pick(2048, 512), ln_C))).astype(F32)
true_mean = offset_rows.astype(np.float64).mean(axis=1)
mean_error = {}
for version, emulate in ((1, emulate_layernorm_forward_v1), (2, emulate_layernorm_forward_v2)):
    _, mean_v, _ = emulate(offset_rows, np.ones(ln_C, F32), np.zeros(ln_C, F32), eps)
    mean_error[version] = np.abs(mean_v - true_mean)
numpy_mean_error = np.abs(offset_rows.mean(axis=1, dtype=F32) - true_mean)
print(f"median error of the row mean: v1 (sequential) {np.median(mean_error[1]):.1e}, v2 (lanes + butterfly) "
      f"{np.median(mean_error[2]):.1e}, NumPy's float32 mean {np.median(numpy_mean_error):.1e}")
assert np.median(mean_error[1]) > 3 * np.median(mean_error[2]), \
    f"the sequential sum should be clearly less accurate: {np.median(mean_error[1]):.1e} vs {np.median(mean_error[2]):.1e}"

fig, ax = plt.subplots(figsize=(7.5, 3.6))
bins = np.logspace(-9, -3, 40)
for version, label in ((1, "v1: one thread, 768 sequential adds"), (2, "v2: 32 lanes x 24 adds, then the butterfly")):
    ax.hist(np.maximum(mean_error[version], 1e-9), bins=bins, alpha=0.6, label=label)
ax.axvline(2.0 ** -20, color="k", ls=":", label="half a float32 ulp at 20 (the mean's own rounding)")
ax.set_xscale("log")
ax.set_xlabel("|error of the row mean| (float32 kernel vs float64), rows with mean 20 and spread 1")
ax.set_ylabel("rows")
ax.set_title("A warp per row is also the more accurate kernel")
ax.legend(loc="upper right", fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# v1's running sum is several times less accurate. v2's error sits at the floor: float32 can hold a mean of 20 only to
# half a unit in its last place, $2^{-20} \approx 10^{-6}$ (the dotted line) — NumPy's own pairwise mean does no
# better.
#
# **Bytes, not FLOPs.** LayerNorm does ~8 FLOPs per element and must read $x$ and write `out` and $\hat x$
# (the cache): at least 12 bytes per element, 0.7 FLOP per byte. A current GPU's datasheet promises 15–30
# float32 FLOPs for every byte its memory can deliver, so the bytes take far longer than the FLOPs: the kernel
# is **memory-bound**, and its speed is measured in **GB/s** against the best a plain copy achieves (llm.c's
# convention). v2 reads $x$
# twice (once for the mean, once for the rest), but the second read mostly hits the cache.
#
# With a GPU, the next cell runs both versions for real: it compiles them (through `bertnp.kernels`), checks
# them against NumPy and against the emulation, and times them with CUDA events over many back-to-back
# launches (timing one launch would mostly measure Python's launch overhead).

# %%
if not HAS_GPU:
    print("No GPU here: SKIPPING the kernel runs. With a GPU, this cell would compile kernels/layernorm.cu with\n"
          "cupy.RawModule (through bertnp.kernels), run layernorm_forward versions 1 and 2 on a (rows, 768) float32\n"
          "array, check both against NumPy (rtol 1e-5, atol 5e-6) and against the emulation above, and time them\n"
          "with CUDA events: milliseconds, GB/s, and the share of the GB/s of a plain device-to-device copy.")
else:
    gpu_rows = teach.pick(65536, 16384)                     # 16384 x 768 x 4 bytes = 48 MiB per array
    x_host = (0.5 + np.random.default_rng(158).standard_normal((gpu_rows, ln_C))).astype(F32)
    reference_gpu_rows, _ = layernorm_forward(x_host[:2048], gamma_ln, beta_ln, eps)   # on the CPU, before switching
    emulated_gpu_rows = {1: emulate_layernorm_forward_v1(x_host[:512], gamma_ln, beta_ln, eps)[0],
                         2: emulate_layernorm_forward_v2(x_host[:512], gamma_ln, beta_ln, eps)[0]}
    bn.set_backend("cupy")
    cp = bn.backend.xp()
    try:
        x_gpu, gamma_gpu, beta_gpu = (bn.backend.to_device(a) for a in (x_host, gamma_ln, beta_ln))

        def gpu_seconds(fn, launches=50):
            fn()
            cp.cuda.Device().synchronize()
            begin, end = cp.cuda.Event(), cp.cuda.Event()
            begin.record()
            for _ in range(launches):
                fn()
            end.record()
            end.synchronize()
            return cp.cuda.get_elapsed_time(begin, end) / 1e3 / launches

        copy_target = cp.empty_like(x_gpu)
        copy_seconds = gpu_seconds(lambda: cp.copyto(copy_target, x_gpu))
        copy_gbs = 2 * x_gpu.nbytes / copy_seconds / 1e9                       # read + write
        moved = 3 * x_gpu.nbytes + 4 * gpu_rows                                 # read x; write out, xhat; rstd
        kernel_seconds = {}
        for version in (1, 2):
            out_gpu, cache_gpu = kernels.layernorm_forward(x_gpu, gamma_gpu, beta_gpu, eps, version=version)
            out_host = bn.backend.to_host(out_gpu)
            teach.check_close(f"GPU v{version} vs NumPy (first 2048 rows)", out_host[:2048], reference_gpu_rows,
                              rtol=1e-5, atol=5e-6)
            emulated_host = emulated_gpu_rows[version]
            teach.check_close(f"GPU v{version} vs its NumPy emulation (first 512 rows)", out_host[:512], emulated_host,
                              rtol=1e-5, atol=5e-6)
            print(f"    bit-identical to the emulation: {np.mean(out_host[:512] == emulated_host):.0%} of the entries "
                  "(the GPU compiler may fuse a multiply and an add into one rounding: FMA)")
            kernel_seconds[version] = gpu_seconds(
                lambda: kernels.layernorm_forward(x_gpu, gamma_gpu, beta_gpu, eps, version=version))
        for version, seconds in kernel_seconds.items():
            print(f"layernorm_forward v{version}: {1e3 * seconds:.3f} ms, {moved / seconds / 1e9:,.0f} GB/s "
                  f"= {moved / seconds / 1e9 / copy_gbs:.0%} of a copy's {copy_gbs:,.0f} GB/s")
        assert kernel_seconds[1] > 2 * kernel_seconds[2], \
            f"a warp per row (coalesced) should be far faster than a thread per row: {kernel_seconds}"
    finally:
        bn.set_backend("numpy")

# %% [markdown]
# What to look for when it runs: v1 far below the copy's bandwidth (few threads, uncoalesced reads); v2 a
# large fraction of it. The rest of `kernels/` follows the same path for softmax, GELU, the cross-entropy and
# AdamW: numbered versions, each checked against the NumPy op before it is timed, GB/s reported
# (`benchmarks/bench_gpu.py`). The NumPy ops remain the definition: a kernel is right when it matches them.
#
# ## Summary
#
# * **FLOPs**: a product $(m\times k)(k \times n)$ is $2mnk$; its backward is two products of the same size, so a
#   training step is 3 × the forward. An encoder layer's forward: $2BT(4C^2 + 2CI) + 4BT^2C$ — weights plus
#   attention's two activation products. Counted FLOPs can be *checked* by intercepting every product
#   (`__array_ufunc__`).
# * **MFU** = counted FLOPs per second / the measured matmul peak. The gap is thin products and elementwise
#   work: ops with no counted FLOPs take a large share of the step, because they are memory-bound.
# * **Activation memory** is what the caches hold: a handful of (B, T, C)/(B, T, I) arrays per layer, plus three
#   (B, nh, T, T) attention arrays that grow with $T^2$. Counting the caches' buffers matches `tracemalloc`.
# * **float32** trains (about twice the matmul speed, half the memory, rounding ≪ gradient noise); **float64**
#   checks (finite differences need it).
#   **Masked-only logits**: the same loss, several times less work.
# * On a GPU the same code runs through `backend.xp()` = CuPy. A CUDA kernel is written for the warp: v2 of the
#   LayerNorm forward gives each row a warp (coalesced reads, a butterfly `__shfl_xor_sync` sum that leaves the
#   total in every lane) — faster, and, as a tree, more accurate than v1's running sum. NumPy can emulate it bit
#   for bit where the order of additions is known.
#
# Next: lesson 16 spreads one batch over several processes — data parallelism with MPI.
