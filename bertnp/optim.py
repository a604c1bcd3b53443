"""AdamW, the learning-rate schedule, global-norm gradient clipping and gradient accumulation.

One optimizer step of BERT pretraining, in the order the training loop calls it::

    model.zero_grad()
    for micro_batch in micro_batches:            # gradient accumulation: grads add up in backward()
        model(**micro_batch, mlm_denominator=N, nsp_denominator=B).loss; model.backward()
                                                 # N, B: the whole update's labelled tokens, sequences
    norm = clip_grad_norm(model.grads, 1.0)      # global norm over ALL tensors, before clipping
    opt.step()                                   # AdamW with the learning rate of this update
    schedule.step()                              # sets opt.lr for the next update

AdamW (the default is exactly ``torch.optim.AdamW``; ``t`` counts updates from 1)::

    p  = p * (1 - lr * wd)                      # decoupled weight decay, on the OLD weights, first
    m  = b1 * m + (1 - b1) * g                  # first moment   (written m += (1 - b1) * (g - m))
    v  = b2 * v + (1 - b2) * g * g              # second moment
    p  = p - lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)   # eps AFTER bias correction

With ``correct_bias=False`` it is Google BERT's ``AdamWeightDecayOptimizer`` instead: no bias
correction, ``p = p - lr * (m / (sqrt(v) + eps) + wd * p)``. The two differ visibly in the first
tens of steps (without correction, m is ~10x too small at t = 1).

Weight decay skips every tensor whose name ends in ``.bias`` or contains ``LayerNorm`` (BERT's
rule; ``cls.predictions.bias`` included). The embedding tables are decayed.

Memory: ``m`` and ``v`` are allocated once, when the optimizer is built; every step works in place
(``out=``) through one preallocated scratch buffer per dtype, so a step allocates no
parameter-sized array (``tests/test_optim.py`` checks this with tracemalloc). The same code runs
on CuPy: it only uses the backend's array module.
"""
from __future__ import annotations

import math
import threading
from typing import Callable, Mapping

import numpy as np

from bertnp import backend, parallel

__all__ = [
    "AdamW",
    "default_no_decay",
    "clip_grad_norm",
    "global_grad_norm",
    "scale_grads",
    "linear_warmup_decay",
    "LinearWarmupDecay",
]


def default_no_decay(name: str) -> bool:
    """BERT's rule: no weight decay on biases and LayerNorm parameters."""
    # TASK 5.1 no_decay: which tensors are not decayed (lesson 10)
    return name.endswith(".bias") or "LayerNorm" in name
    # END TASK 5.1


def _check_number(name: str, value, low: float, high: float = math.inf, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"({low}" if low_open else f"[{low}"
        raise ValueError(f"{name} must be in {bound}, {high}], got {value}")
    return value


class AdamW:
    """AdamW with decoupled weight decay, updating a model's parameters in place.

    ``params``: a model (anything with ``parameters()`` and ``grads``, e.g.
    :class:`bertnp.BertForPreTraining`), or a dict ``{name: array}`` of live arrays together with
    ``grads={name: array}``. ``no_decay(name) -> bool`` picks the tensors without weight decay.

        opt = bn.AdamW(model, lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
        opt.step()              # one update from the current gradients, at opt.lr
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, *, correct_bias: bool = True,
                 no_decay: Callable[[str], bool] = default_no_decay, grads: Mapping | None = None,
                 use_kernels: bool | None = None):
        # use_kernels: one CUDA launch per tensor (kernels/adamw.cu) on CuPy float32; by default
        # follows the model's own use_kernels. Off CuPy the kernel path falls back to NumPy.
        self.use_kernels = bool(use_kernels if use_kernels is not None else getattr(params, "use_kernels", False))
        if hasattr(params, "parameters") and hasattr(params, "grads"):
            if grads is not None:
                raise ValueError("grads: pass either a model or a parameter dict with grads, not both")
            self._model = params
            self.params = dict(params.parameters())
        elif isinstance(params, Mapping):
            if grads is None:
                raise ValueError("grads: a parameter dict needs grads={name: array} (or pass the model)")
            self._model = None
            self.params = dict(params)
        else:
            raise TypeError(f"params must be a model or a dict of arrays, got {type(params).__name__}")
        if not self.params:
            raise ValueError("params: no parameters to optimize")
        self._grads = grads
        for name, p in self.params.items():
            if getattr(getattr(p, "dtype", None), "kind", None) != "f":
                raise TypeError(f"parameter {name} must be a floating-point array")
        self.lr = _check_number("lr", lr, 0.0)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_number("betas[0]", betas[0], 0.0, 1.0), _check_number("betas[1]", betas[1], 0.0, 1.0))
        if self.betas[0] >= 1.0 or self.betas[1] >= 1.0:
            raise ValueError(f"betas must be in [0, 1), got {tuple(betas)}")
        self.eps = _check_number("eps", eps, 0.0, low_open=True)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0)
        self.correct_bias = bool(correct_bias)
        # per-tensor decay: 0 for biases and LayerNorm, weight_decay for the rest
        self.decay = {name: (0.0 if no_decay(name) else 1.0) for name in self.params}
        self.step_count = 0                      # updates done so far (t of the last update)
        xp = backend.xp()
        self.exp_avg = {n: xp.zeros_like(p) for n, p in self.params.items()}      # m
        self.exp_avg_sq = {n: xp.zeros_like(p) for n, p in self.params.items()}   # v
        # one flat scratch buffer per dtype, as large as the largest tensor; a step takes views of it
        largest: dict = {}
        for p in self.params.values():
            largest[p.dtype] = max(largest.get(p.dtype, 0), p.size)
        self._scratch = {dt: xp.empty(n, dtype=dt) for dt, n in largest.items()}
        self._thread_scratch: dict = {}          # {thread id: {dtype: buffer}} for bertnp.parallel's threads

    # ------------------------------------------------------------------ gradients
    @property
    def grads(self) -> dict:
        """The gradients the next step uses (the model's live ``grads``)."""
        grads = self._model.grads if self._model is not None else self._grads
        missing = [n for n in self.params if n not in grads]
        if missing:
            raise ValueError(f"grads: no gradient for parameter {missing[0]}")
        _check_grads(grads)
        return grads

    def zero_grad(self) -> None:
        """Set every gradient to 0 in place (``model.zero_grad()`` when built from a model)."""
        if self._model is not None:
            self._model.zero_grad()
        else:
            for g in self._grads.values():
                g.fill(0)

    def weight_decay_of(self, name: str) -> float:
        """The weight decay applied to tensor ``name`` (0.0 for biases and LayerNorm)."""
        return self.weight_decay * self.decay[name]

    # ------------------------------------------------------------------ the update
    def step(self) -> None:
        """One AdamW update of every parameter, in place, at the current ``self.lr``."""
        grads = self.grads
        self.step_count += 1
        t = self.step_count
        b1, b2 = self.betas
        lr, eps = self.lr, self.eps
        step_size = bc2_sqrt = None                       # (used only with the bias correction)
        if self.correct_bias:
            # TASK 5.1 bias_correction: (lesson 10)
            step_size = lr / (1.0 - b1 ** t)              # lr / (1 - b1^t)
            bc2_sqrt = math.sqrt(1.0 - b2 ** t)           # sqrt(1 - b2^t)
            # END TASK 5.1
        # On the CPU the ~14 elementwise passes of an update run over blocks of BLOCK entries, so
        # that the block of p, g, m, v stays in the cache between passes instead of streaming
        # every pass through memory (its time: the AdamW row of python benchmarks/profile_step.py),
        # and the blocks of all tensors are shared out over the CPU cores (bertnp.parallel.run).
        # Elementwise, so the result is bit-identical. On a GPU: whole tensors (or one kernel).
        blocked = backend.get_backend() == "numpy"
        tasks = []                                        # (p, g, m, v, wd) of a tensor or a block of one
        for name, p in self.params.items():
            g, m, v = grads[name], self.exp_avg[name], self.exp_avg_sq[name]
            if g.shape != p.shape:
                raise ValueError(f"grads: {name} has shape {tuple(g.shape)}, expected {tuple(p.shape)}")
            wd = self.weight_decay * self.decay[name]
            if self.use_kernels:
                from bertnp import kernels
                kernels.adamw_step(p, g, m, v, lr=lr, step=t, beta1=b1, beta2=b2, eps=eps,
                                   weight_decay=wd, correct_bias=self.correct_bias)
                continue
            if not (blocked and p.size > self.BLOCK and all(a.flags.c_contiguous for a in (p, g, m, v))):
                tasks.append((p, g, m, v, wd))
                continue
            p1, g1, m1, v1 = (a.reshape(-1) for a in (p, g, m, v))    # (...) -> (n,), views
            for start in range(0, p.size, self.BLOCK):
                stop = min(start + self.BLOCK, p.size)
                tasks.append((p1[start:stop], g1[start:stop], m1[start:stop], v1[start:stop], wd))

        def update(index: int) -> None:
            p, g, m, v, wd = tasks[index]
            self._update(p, g, m, v, self._scratch_for(p), lr, wd, step_size, bc2_sqrt)

        if blocked:
            parallel.run(update, len(tasks))
        else:
            for index in range(len(tasks)):
                update(index)

    def _scratch_for(self, p):
        """A view of scratch space shaped like ``p``: the flat buffer of this thread and dtype (no
        allocation after the first step: each CPU thread keeps its own, the caller the big one)."""
        if threading.current_thread() is threading.main_thread() or backend.get_backend() != "numpy":
            buffer = self._scratch[p.dtype]
        else:
            mine = self._thread_scratch.setdefault(threading.get_ident(), {})
            buffer = mine.get(p.dtype)
            if buffer is None or buffer.size < p.size:
                buffer = mine[p.dtype] = backend.xp().empty(max(p.size, self.BLOCK), dtype=p.dtype)
        return buffer[:p.size].reshape(p.shape)                       # a view: no allocation

    BLOCK = 262144       # entries per block on the CPU (1 MB of float32 per array): measured in a BERT-mini
                         # step, 17.7 -> 14.7 ms from 65k entries (the ~14 NumPy calls a block costs
                         # outweighed the L2-cache fit); 16k 39.5 ms, 524k 16.0, 1M 17.0

    def _update(self, p, g, m, v, s, lr, wd, step_size, bc2_sqrt) -> None:
        """The AdamW update of one tensor (or one block of it), in place; ``s`` is scratch space."""
        xp = backend.xp()
        b1, b2 = self.betas
        eps = self.eps
        if self.correct_bias:
            # TASK 5.1 adamw_update: decoupled decay, the moments, the update (lesson 10)
            if wd:
                p *= 1.0 - lr * wd                    # decoupled decay on the old weights
            xp.subtract(g, m, out=s)                  # m += (1 - b1) (g - m)  (torch's lerp)
            s *= 1.0 - b1
            m += s
            xp.multiply(g, g, out=s)                  # v = b2 v + (1 - b2) g^2
            s *= 1.0 - b2
            v *= b2
            v += s
            xp.sqrt(v, out=s)                         # denom = sqrt(v) / sqrt(1 - b2^t) + eps
            s /= bc2_sqrt
            s += eps
            xp.divide(m, s, out=s)                    # p -= step_size * m / denom
            s *= step_size
            p -= s
            # END TASK 5.1
        else:                                         # Google BERT's AdamWeightDecayOptimizer
            m *= b1                                   # m = b1 m + (1 - b1) g
            xp.multiply(g, 1.0 - b1, out=s)
            m += s
            v *= b2                                   # v = b2 v + (1 - b2) g^2
            xp.multiply(g, g, out=s)
            s *= 1.0 - b2
            v += s
            xp.sqrt(v, out=s)                         # update = m / (sqrt(v) + eps) + wd p
            s += eps
            xp.divide(m, s, out=s)
            if wd:
                p *= 1.0 - lr * wd                    # (p - lr wd p, the decay term of the update)
            s *= lr
            p -= s

    # ------------------------------------------------------------------ checkpoints
    def hyperparameters(self) -> dict:
        """The settings that define the update (plain JSON types)."""
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay, "correct_bias": self.correct_bias}

    def state_dict(self) -> dict:
        """``{"step": t, "hyperparameters": {...}, "exp_avg": {name: m}, "exp_avg_sq": {name: v}}``.

        The arrays are the live state (as in PyTorch): copy them or save them right away.
        :func:`bertnp.checkpoint.save_optimizer` writes this to safetensors + JSON."""
        return {"step": self.step_count, "hyperparameters": self.hyperparameters(),
                "exp_avg": dict(self.exp_avg), "exp_avg_sq": dict(self.exp_avg_sq)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` (copies into the existing buffers; checks names and shapes).

        The moments are copied; ``lr`` and the other hyperparameters are restored too."""
        for key in ("step", "exp_avg", "exp_avg_sq"):
            if key not in state:
                raise ValueError(f"optimizer state: missing key '{key}'")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"optimizer state: 'step' must be an integer >= 0, got {step!r}")
        xp = backend.xp()
        for key, mine in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            theirs = state[key]
            extra = sorted(set(theirs) - set(mine))
            missing = sorted(set(mine) - set(theirs))
            if missing or extra:
                what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
                raise ValueError(f"optimizer state '{key}': {what}")
            for name, buf in mine.items():
                arr = theirs[name]
                if tuple(arr.shape) != tuple(buf.shape):
                    raise ValueError(f"optimizer state '{key}': {name} has shape {tuple(arr.shape)}, "
                                     f"expected {tuple(buf.shape)}")
                buf[...] = xp.asarray(arr, dtype=buf.dtype)
        hp = state.get("hyperparameters")
        if hp:
            self.lr = _check_number("lr", hp.get("lr", self.lr), 0.0)
            self.betas = tuple(float(b) for b in hp.get("betas", self.betas))
            self.eps = float(hp.get("eps", self.eps))
            self.weight_decay = float(hp.get("weight_decay", self.weight_decay))
            self.correct_bias = bool(hp.get("correct_bias", self.correct_bias))
        self.step_count = int(step)


# ---------------------------------------------------------------------------------- gradients

def _check_grads(grads) -> None:
    """TypeError naming the first gradient that is not an array (a list has no in-place ops)."""
    if not hasattr(grads, "items"):
        raise TypeError(f"grads must be a mapping of names to arrays, got {type(grads).__name__}")
    for name, g in grads.items():
        if not (hasattr(g, "dtype") and hasattr(g, "reshape")) or getattr(g.dtype, "kind", None) != "f":
            raise TypeError(f"gradient {name!r} must be a floating-point array of the backend, "
                            f"got {type(g).__name__}")


def global_grad_norm(grads: Mapping, sync: bool = True):
    """``sqrt(sum over all tensors of sum(g * g))`` (inf/nan if any entry is).

    ``sync=True``: a Python float (on CuPy one host synchronisation). ``sync=False``: a 0-d
    float64 array of the backend, never read on the host (the training loop reads it later,
    together with the loss, at its logging interval)."""
    _check_grads(grads)
    # TASK 5.3 global_grad_norm: (lesson 10)
    xp = backend.xp()
    total = None
    for g in grads.values():
        flat = g.reshape(-1)                              # a view of a contiguous array
        sq = xp.vdot(flat, flat)                          # sum(g * g) without a temporary
        total = sq if total is None else total + sq       # stays on the device
    if not sync:
        if total is None:
            return xp.zeros((), dtype=xp.float64)
        return xp.sqrt(xp.asarray(total, dtype=xp.float64))   # the same float64 sqrt as below
    total = float(total) if total is not None else 0.0    # the one host synchronisation
    return math.sqrt(total) if math.isfinite(total) else total
    # END TASK 5.3


def clip_grad_norm(grads: Mapping, max_norm: float, eps: float = 1e-6, sync: bool = True):
    """Scale all gradients in place so that their global norm is at most ``max_norm``.

    Exactly ``torch.nn.utils.clip_grad_norm_``: ``g *= min(1, max_norm / (norm + 1e-6))``.
    Returns the norm *before* clipping (log it: it is the best early warning of divergence).

    ``sync=True`` (default): the norm is read on the host; a non-finite norm is returned as is and
    the gradients are left untouched. ``sync=False``: nothing is read on the host (no GPU stall
    per step): the coefficient is computed and applied on the device, and the norm is returned as
    a 0-d device array. The result is bit-identical (multiplying by a coefficient of 1.0 changes
    nothing); a non-finite norm makes the gradients non-finite, so check the returned norm before
    trusting the update.
    """
    max_norm = _check_number("max_norm", max_norm, 0.0, low_open=True)
    # TASK 5.3 clip_grad_norm: one coefficient for all tensors (lesson 10)
    norm = global_grad_norm(grads, sync=sync)
    if not sync:
        xp = backend.xp()
        coef = xp.minimum(max_norm / (norm + eps), 1.0)   # 0-d float64, on the device
        coef_of = {}                                      # the coefficient in each gradient's dtype,
        for g in grads.values():                          # as torch casts it (and as a Python float
            if g.dtype not in coef_of:                    # coefficient would be rounded)
                coef_of[g.dtype] = coef.astype(g.dtype)
            g *= coef_of[g.dtype]
        return norm
    if not math.isfinite(norm):
        return norm
    coef = max_norm / (norm + eps)
    if coef < 1.0:
        scale_grads(grads, coef)
    return norm
    # END TASK 5.3


def scale_grads(grads: Mapping, factor: float) -> None:
    """``g *= factor`` for every gradient, in place."""
    _check_grads(grads)
    if factor == 1.0:
        return
    for g in grads.values():
        g *= factor


# ---------------------------------------------------------------------------------- schedule

def linear_warmup_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate for the update that follows ``step`` completed updates.

    Linear warmup from 0 over ``warmup_steps`` updates, then linear decay to 0 at ``total_steps``
    (``transformers.get_linear_schedule_with_warmup``; the very first update has lr 0)::

        step / warmup_steps                                      if step < warmup_steps
        max(0, (total_steps - step) / (total_steps - warmup_steps))   otherwise
    """
    # TASK 5.2 linear_warmup_decay: (lesson 10)
    if step < warmup_steps:
        return step / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    # END TASK 5.2


class LinearWarmupDecay:
    """Sets ``optimizer.lr`` to ``base_lr * linear_warmup_decay(step, ...)``; call :meth:`step`
    after each ``optimizer.step()`` (PyTorch's ``LambdaLR`` protocol).

        schedule = LinearWarmupDecay(opt, warmup_steps=100, total_steps=1000)
        ...; opt.step(); schedule.step()
    """

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, base_lr: float | None = None):
        for name, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if warmup_steps > total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})")
        self.optimizer = optimizer
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.base_lr = float(optimizer.lr if base_lr is None else base_lr)
        self.last_step = 0                       # completed updates
        self.optimizer.lr = self.lr_at(0)

    def lr_at(self, step: int) -> float:
        """The learning rate of the update that follows ``step`` completed updates."""
        return self.base_lr * linear_warmup_decay(step, self.warmup_steps, self.total_steps)

    @property
    def lr(self) -> float:
        """The learning rate of the next update."""
        return self.lr_at(self.last_step)

    def step(self) -> None:
        self.last_step += 1
        self.optimizer.lr = self.lr_at(self.last_step)

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "base_lr": self.base_lr}

    def load_state_dict(self, state: Mapping) -> None:
        for key in ("last_step", "warmup_steps", "total_steps", "base_lr"):
            if key not in state:
                raise ValueError(f"schedule state: missing key '{key}'")
        self.warmup_steps = int(state["warmup_steps"])
        self.total_steps = int(state["total_steps"])
        self.base_lr = float(state["base_lr"])
        self.last_step = int(state["last_step"])
        self.optimizer.lr = self.lr_at(self.last_step)
