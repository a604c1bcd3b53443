"""BERT (Devlin et al. 2018) composed from the hand-written operations in :mod:`bertnp.ops`.

Read it like the paper. For a batch of B sequences of T token ids:

    x   = LayerNorm(word_emb[ids] + pos_emb[0..T-1] + type_emb[types]);  x = dropout(x)   (B, T, C)
    for each of L encoder layers (post-LN, as in the original Transformer):
        a = SelfAttention(x, padding mask)                                              (B, T, C)
        h = LayerNorm(x + dropout(a Wo^T + bo))
        f = gelu(h W1^T + b1) W2^T + b2                                                 (B, T, 4C) -> (B, T, C)
        x = LayerNorm(h + dropout(f))
    pooled = tanh(x[:, 0] Wp^T + bp)                  the [CLS] vector                  (B, C)

    BertForPreTraining adds two heads:
    MLM:  logits = LayerNorm(gelu(x Wt^T + bt)) word_emb^T + bias    (decoder tied to the embeddings)
    NSP:  logits = pooled Wsr^T + bsr                                 (0 = IsNext, 1 = random)

Parameters live in one dict under Hugging Face's state-dict names, Linear weights in HF layout
(out, in), so weights move both ways between bertnp and transformers. Each forward stores the
caches the backward needs; ``backward()`` walks the same steps in reverse and *accumulates* every
gradient into ``model.grads`` (as PyTorch accumulates ``.grad``) until ``zero_grad()``.
"""
from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertnp import backend
from bertnp.config import BertConfig
from bertnp.ops.activations import tanh_backward, tanh_forward
from bertnp.ops.attention import attention_backward, attention_forward
from bertnp.ops.dropout import dropout_backward, dropout_forward
from bertnp.ops.embedding import embedding_backward, embedding_forward
from bertnp.ops.linear import linear_backward, linear_forward, linear_rows_forward
# LayerNorm, the activations, softmax and cross-entropy are reached through the op table self.F
# (bertnp.ops, or the CUDA kernels behind the same signatures)

IGNORE_INDEX = -100

# the tied duplicates Hugging Face lists under a second name: (duplicate, original)
TIED_DUPLICATES = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


# ============================================================================ outputs

@dataclass
class BaseModelOutput:
    last_hidden_state: object            # (B, T, C)
    pooler_output: object = None         # (B, C) or None without a pooler
    attentions: list | None = None       # per layer (B, nh, T, T), when output_attentions=True


@dataclass
class PreTrainingOutput:
    loss: object = None                  # () mlm_loss + nsp_loss (those that were given labels)
    mlm_loss: object = None              # () mean cross-entropy over labelled positions
    nsp_loss: object = None              # () mean cross-entropy over the batch
    prediction_logits: object = None     # (N, V) at labelled positions, or (B, T, V) without labels
    seq_relationship_logits: object = None   # (B, 2)
    last_hidden_state: object = None     # (B, T, C)
    pooler_output: object = None         # (B, C)
    attentions: list | None = None


@dataclass
class SequenceClassifierOutput:
    loss: object = None                  # () cross-entropy (or MSE when num_labels == 1)
    logits: object = None                # (B, num_labels)
    last_hidden_state: object = None
    pooler_output: object = None
    attentions: list | None = None


# ============================================================================ input checks (host side)

def _as_host_int(name: str, value, ndim: int | None = None, allow_bool: bool = False):
    """Turn a list / NumPy / device array into a host integer array, or raise naming ``name``."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an array of integers, got {type(value).__name__}")
    try:
        array = backend.to_host(value) if hasattr(value, "dtype") else np.asarray(value)
    except ValueError as exc:   # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array; {exc}") from None
    if array.dtype == object:
        raise ValueError(f"{name} must be a rectangular array of integers (got ragged or mixed input)")
    if array.dtype.kind == "b" and allow_bool:
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    return array.astype(np.int64, copy=False)


def _check_range(name: str, array, low: int, high: int, allowed_extra: tuple = ()) -> None:
    """Raise ValueError unless every value lies in [low, high) or in ``allowed_extra``."""
    if array.size == 0:
        return
    bad = (array < low) | (array >= high)
    for extra in allowed_extra:
        bad &= array != extra
    if bad.any():
        value = int(array[bad][0])
        also = f" (or {', '.join(map(str, allowed_extra))})" if allowed_extra else ""
        raise ValueError(f"{name} must lie in [{low}, {high}){also}; found {value}")


def _loss_share(name: str, denominator, count: int) -> float | None:
    """The weight of this batch's MEAN loss (over its ``count`` items) in a loss averaged over a
    larger whole of ``denominator`` items -- an update's micro-batches together (None: no
    denominator given, the batch is the whole). The forward multiplies the batch's mean by it; the
    backward hands it down as dL/d(mean)."""
    if denominator is None:
        return None
    if isinstance(denominator, bool) or not isinstance(denominator, (int, np.integer)) or denominator < 1:
        raise ValueError(f"{name} must be a positive integer (the update's count), got {denominator!r}")
    if denominator < count:
        raise ValueError(f"{name} is {denominator}, fewer than this batch's own {count}")
    # TASK 5.6 loss_share: what this batch's mean loss weighs in the mean over the whole update (lesson 11)
    share = count / int(denominator)          # mean * count / denominator = (this batch's sum) / denominator
    # END TASK 5.6
    return share


def _parse_dtype(dtype) -> np.dtype:
    try:
        parsed = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if parsed not in (np.float32, np.float64):
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return parsed


# ============================================================================ the shared machinery

class _BertBase:
    """Parameter storage, state dicts, gradients, train/eval and the encoder's forward/backward.

    Subclasses set ``prefix`` ("bert." for models with heads, "" for the bare BertModel) and add heads.
    """
    prefix = "bert."
    has_pooler = True

    def __init__(self, config: BertConfig, seed: int = 0, dtype="float32", use_kernels: bool = False):
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig, got {type(config).__name__}")
        config.validate()
        config.check_fits_in_memory(_parse_dtype(dtype))    # a clear error, not minutes of allocation
        self.config = config
        # the operation table: bertnp.ops (the reference), or the CUDA kernels of kernels/ behind the
        # same signatures (used on CuPy in float32; everywhere else they fall back to bertnp.ops)
        self.use_kernels = bool(use_kernels)
        from bertnp import kernels
        self.F = kernels.ops(self.use_kernels)
        self.dtype = _parse_dtype(dtype)
        self.seed = int(seed)
        self.training = True
        self.dropout_seed = int(seed)      # dropout masks derive from (dropout_seed, forward_count, site)
        self.forward_count = 0
        self.dropout_row = 0               # the whole batch's row that this forward's first row is (bertnp.cores)
        self._params: dict = {}
        self._grads: dict = {}
        self._cache = None
        self._init_rng = np.random.default_rng(self.seed)
        self._build_encoder()

    # ------------------------------------------------------------------ parameters
    def _add(self, name: str, shape: tuple, init: str) -> None:
        """Create parameter ``name``: init 'normal' (N(0, initializer_range)), 'zeros' or 'ones'."""
        if init == "normal":
            host = self._init_rng.normal(0.0, self.config.initializer_range, size=shape)
        elif init == "zeros":
            host = np.zeros(shape)
        elif init == "ones":
            host = np.ones(shape)
        else:
            raise ValueError(init)
        self._params[name] = backend.to_device(host.astype(self.dtype))
        self._grads[name] = backend.xp().zeros(shape, dtype=self.dtype)

    def _add_linear(self, name: str, out_features: int, in_features: int) -> None:
        self._add(name + ".weight", (out_features, in_features), "normal")   # HF layout (out, in)
        self._add(name + ".bias", (out_features,), "zeros")

    def _add_layernorm(self, name: str, size: int) -> None:
        self._add(name + ".weight", (size,), "ones")
        self._add(name + ".bias", (size,), "zeros")

    def _build_encoder(self) -> None:
        c, p = self.config, self.prefix
        H = c.hidden_size
        self._add(p + "embeddings.word_embeddings.weight", (c.vocab_size, H), "normal")
        # the [PAD] row starts at zero, as in HF (torch.nn.Embedding with padding_idx)
        self._params[p + "embeddings.word_embeddings.weight"][c.pad_token_id] = 0.0
        self._add(p + "embeddings.position_embeddings.weight", (c.max_position_embeddings, H), "normal")
        self._add(p + "embeddings.token_type_embeddings.weight", (c.type_vocab_size, H), "normal")
        self._add_layernorm(p + "embeddings.LayerNorm", H)
        for i in range(c.num_hidden_layers):
            layer = f"{p}encoder.layer.{i}."
            for proj in ("query", "key", "value"):
                self._add_linear(layer + "attention.self." + proj, H, H)
            self._add_linear(layer + "attention.output.dense", H, H)
            self._add_layernorm(layer + "attention.output.LayerNorm", H)
            self._add_linear(layer + "intermediate.dense", c.intermediate_size, H)
            self._add_linear(layer + "output.dense", H, c.intermediate_size)
            self._add_layernorm(layer + "output.LayerNorm", H)
        if self.has_pooler:
            self._add_linear(p + "pooler.dense", H, H)

    def parameters(self) -> dict:
        """``{HF name: array}`` of every trainable tensor, once each. Live arrays: update in place."""
        return dict(self._params)

    @property
    def grads(self) -> dict:
        """``{HF name: gradient}``, accumulated by ``backward()`` until ``zero_grad()``."""
        return dict(self._grads)

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self._params.values()))

    def __repr__(self) -> str:
        """``BertForPreTraining(L2 H128 A2 I512 V8000, 1.47M parameters, float32, eval)``."""
        c = self.config
        extra = f", num_labels={self.num_labels}" if hasattr(self, "num_labels") else ""
        return (f"{type(self).__name__}(L{c.num_hidden_layers} H{c.hidden_size} A{c.num_attention_heads} "
                f"I{c.intermediate_size} V{c.vocab_size}{extra}, {self.num_parameters() / 1e6:.2f}M parameters, "
                f"{self.dtype.name}, {'train' if self.training else 'eval'})")

    def zero_grad(self) -> None:
        for grad in self._grads.values():
            grad.fill(0)

    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # ------------------------------------------------------------------ state dicts
    def state_dict(self) -> dict:
        """``{HF name: array}``, each tensor once (tied duplicates are not repeated)."""
        return dict(self._params)

    def _normalise_key(self, key: str) -> str:
        """Map the spellings real checkpoints use onto ours: LayerNorm gamma/beta, and the
        ``bert.`` prefix added or removed."""
        if "LayerNorm.gamma" in key:
            key = key.replace("LayerNorm.gamma", "LayerNorm.weight")
        if "LayerNorm.beta" in key:
            key = key.replace("LayerNorm.beta", "LayerNorm.bias")
        if key in self._params or key in TIED_DUPLICATES:
            return key
        if self.prefix and not key.startswith(self.prefix) and (self.prefix + key) in self._params:
            return self.prefix + key
        if not self.prefix and key.startswith("bert.") and key[5:] in self._params:
            return key[5:]
        return key

    def load_state_dict(self, state_dict, strict: bool = True) -> dict:
        """Copy tensors into the model (in place, cast to the model's dtype and backend).

        Accepts HF's full state dict: the tied duplicates must equal their originals, and integer
        buffers such as ``embeddings.position_ids`` are skipped. With ``strict`` a missing or
        unexpected key is a ValueError naming it. Returns ``{"missing_keys": [...],
        "unexpected_keys": [...]}`` (non-strict use).
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
        incoming, duplicates, unexpected = {}, {}, []
        for raw_key, value in state_dict.items():
            if not isinstance(raw_key, str):
                raise TypeError(f"state_dict keys must be strings, got {raw_key!r}")
            if raw_key.endswith("position_ids") or raw_key.endswith("token_type_ids"):
                continue                                  # HF buffers, not parameters
            key = self._normalise_key(raw_key)
            if key in TIED_DUPLICATES and TIED_DUPLICATES[key] in self._params:
                duplicates[key] = value
            elif key in self._params:
                if key in incoming:
                    raise ValueError(f"state_dict gives {key!r} twice (as {raw_key!r})")
                incoming[key] = value
            else:
                unexpected.append(raw_key)
        missing = [k for k in self._params if k not in incoming]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
            if unexpected:
                parts.append(f"unexpected keys: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
            raise ValueError("load_state_dict: " + "; ".join(parts))
        # check everything before changing anything: a failed load leaves the model as it was
        converted = {}
        for key, value in incoming.items():
            host = backend.to_host(value) if hasattr(value, "dtype") else np.asarray(value)
            if host.dtype.kind != "f":
                raise TypeError(f"tensor {key!r} must be floating point, got dtype {host.dtype}")
            want = tuple(self._params[key].shape)
            if tuple(host.shape) != want:
                raise ValueError(f"tensor {key!r} has shape {tuple(host.shape)}, but the model "
                                 f"(config) expects {want}")
            if not np.all(np.isfinite(host)):
                raise ValueError(f"tensor {key!r} contains NaN or infinite values")
            converted[key] = host
        for dup, original in TIED_DUPLICATES.items():
            if dup in duplicates and original in converted:
                dup_host = backend.to_host(duplicates[dup]) if hasattr(duplicates[dup], "dtype") \
                    else np.asarray(duplicates[dup])
                if dup_host.shape != converted[original].shape or \
                        not np.array_equal(dup_host, converted[original]):
                    raise ValueError(f"tied tensor {dup!r} differs from {original!r}: they must be "
                                     "equal (the MLM decoder shares the word embeddings)")
        for key, host in converted.items():
            self._params[key][...] = backend.to_device(host.astype(self.dtype, copy=False))
        return {"missing_keys": missing, "unexpected_keys": unexpected}

    # ------------------------------------------------------------------ inputs
    def _prepare_inputs(self, input_ids, attention_mask, token_type_ids):
        """Validate on the host (clear errors, no GPU syncs later) and move to the backend once."""
        c = self.config
        ids = _as_host_int("input_ids", input_ids)
        if ids is None:
            raise ValueError("input_ids is required")
        if ids.ndim == 1:
            raise ValueError(f"input_ids must be 2-D (batch, seq_len), got shape {ids.shape}; "
                             "for one sequence use input_ids[None]")
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be 2-D (batch, seq_len), got shape {ids.shape}")
        batch, seq_len = ids.shape
        if batch == 0:
            raise ValueError("input_ids is an empty batch (batch size 0)")
        if seq_len == 0:
            raise ValueError("input_ids has zero-length sequences (seq_len 0)")
        if seq_len > c.max_position_embeddings:
            raise ValueError(f"input_ids has seq_len {seq_len}, longer than max_position_embeddings "
                             f"{c.max_position_embeddings}")
        _check_range("input_ids", ids, 0, c.vocab_size)
        mask = _as_host_int("attention_mask", attention_mask, allow_bool=True)
        if mask is None:
            mask = np.ones_like(ids)
        elif mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, expected {ids.shape} like input_ids")
        _check_range("attention_mask", mask, 0, 2)
        types = _as_host_int("token_type_ids", token_type_ids)
        if types is None:
            types = np.zeros_like(ids)
        elif types.shape != ids.shape:
            raise ValueError(f"token_type_ids has shape {types.shape}, expected {ids.shape} like input_ids")
        _check_range("token_type_ids", types, 0, c.type_vocab_size)
        return ids, mask, types

    # ------------------------------------------------------------------ dropout randomness
    def _dropout_rng(self, site: int):
        """The dropout key of site ``site`` in the current forward: (dropout_seed, forward_count, site),
        which fixes the mask (counter-based random bits), so saving forward_count is enough to resume exactly.
        A replica running a share of a batch's rows (bertnp.cores) adds the share's first row: its
        masks are then the whole batch's masks for those rows."""
        key = (self.dropout_seed, self.forward_count, site)
        return key + (self.dropout_row,) if self.dropout_row else key

    def _core_replica(self):
        """A model that shares this one's weights (the same arrays) and has its own gradients and
        activations: one per extra CPU core in bertnp.cores. Not for use on its own."""
        replica = copy.copy(self)
        replica._grads = {name: backend.xp().zeros_like(grad) for name, grad in self._grads.items()}
        replica._cache = replica._head_cache = replica._loss_parts = None     # its own activations
        return replica

    # ------------------------------------------------------------------ encoder forward / backward
    def _encoder_forward(self, ids, mask, types, output_attentions=False, last_layer_rows=None):
        """Host int arrays (B, T) -> (hidden (B, T, C), pooled (B, C) or None, attentions). Caches in self._cache.
        ``last_layer_rows``: None, or the rows of (B*T, C) that anything reads after the encoder
        (sorted, host ints): the last layer's three dense sublayers are then computed at those rows
        only, and the other rows of ``hidden`` are meaningless (BertForPreTraining.skip_unscored_rows)."""
        c, p, P = self.config, self.prefix, self._params
        training = self.training
        p_hidden, p_attn = c.hidden_dropout_prob, c.attention_probs_dropout_prob
        if training and (p_hidden > 0 or p_attn > 0):
            self.forward_count += 1
        batch, seq_len = ids.shape
        ids_d, types_d = backend.to_device(ids), backend.to_device(types)     # the one host -> device move
        cache = {"shape": (batch, seq_len)}

        # --- embeddings: word + position + token type, then LayerNorm and dropout
        word, cache["word"] = embedding_forward(ids_d, P[p + "embeddings.word_embeddings.weight"],
                                                check_range=False, padding_idx=c.pad_token_id)  # (B, T, C)
        token_type, cache["type"] = embedding_forward(types_d, P[p + "embeddings.token_type_embeddings.weight"],
                                                      check_range=False)                          # (B, T, C)
        position = P[p + "embeddings.position_embeddings.weight"][:seq_len]                       # (T, C)
        x = word + token_type + position                                                         # (B, T, C)
        x, cache["emb_ln"] = self.F.layernorm_forward(x, P[p + "embeddings.LayerNorm.weight"],
                                               P[p + "embeddings.LayerNorm.bias"], c.layer_norm_eps)
        x, cache["emb_drop"] = dropout_forward(x, p_hidden, self._dropout_rng(0) if training and p_hidden else None,
                                               training)

        # --- the padding mask: 0 for real keys, the dtype's minimum for padding (as HF), (B, T) -> (B, 1, 1, T);
        # None when nothing is padded (adding zeros to every score would be a wasted pass over (B, nh, T, T))
        additive = None
        if not mask.all():                                                  # host array: no device sync
            additive = (1.0 - mask.astype(self.dtype)) * np.finfo(self.dtype).min
            additive = backend.to_device(additive[:, None, None, :])

        # --- encoder layers
        layers, attentions = [], []
        for i in range(c.num_hidden_layers):
            L = f"{p}encoder.layer.{i}."
            lc = {}
            dense = linear_forward                          # the layer's position-wise dense sublayers
            if last_layer_rows is not None and i == c.num_hidden_layers - 1:
                # the last layer: keys and values need every position, but after the attention each
                # row is on its own, and only the rows the heads read matter. Its dense sublayers
                # (the attention output and the FFN, ~70% of a BERT-mini layer's FLOPs) run at those
                # rows; the other rows get 0 there, and the LayerNorms, dropouts and GELU run on every
                # row as usual (cheap), so the masks and the backward are the same code.
                dense = functools.partial(linear_rows_forward, rows=last_layer_rows)
            site = 1 + 3 * i
            attn, lc["attn"] = attention_forward(
                x, P[L + "attention.self.query.weight"], P[L + "attention.self.query.bias"],
                P[L + "attention.self.key.weight"], P[L + "attention.self.key.bias"],
                P[L + "attention.self.value.weight"], P[L + "attention.self.value.bias"],
                c.num_attention_heads, additive, p_attn,
                self._dropout_rng(site) if training and p_attn else None, training,
                softmax_fns=(self.F.softmax_forward, self.F.softmax_backward))            # (B, T, C)
            if output_attentions:
                attentions.append(lc["attn"].softmax_cache.probs)                              # (B, nh, T, T)
            a, lc["attn_out"] = dense(attn, P[L + "attention.output.dense.weight"],
                                      P[L + "attention.output.dense.bias"])                     # (B, T, C)
            a, lc["attn_drop"] = dropout_forward(a, p_hidden, self._dropout_rng(site + 1)
                                                 if training and p_hidden else None, training)
            h, lc["ln1"] = self.F.layernorm_forward(x + a, P[L + "attention.output.LayerNorm.weight"],
                                             P[L + "attention.output.LayerNorm.bias"], c.layer_norm_eps)
            f, lc["ffn1"] = dense(h, P[L + "intermediate.dense.weight"],
                                  P[L + "intermediate.dense.bias"])                             # (B, T, 4C)
            f, lc["act"] = self.F.activation_forward(f, c.hidden_act)
            f, lc["ffn2"] = dense(f, P[L + "output.dense.weight"], P[L + "output.dense.bias"])  # (B, T, C)
            f, lc["ffn_drop"] = dropout_forward(f, p_hidden, self._dropout_rng(site + 2)
                                                if training and p_hidden else None, training)
            x, lc["ln2"] = self.F.layernorm_forward(h + f, P[L + "output.LayerNorm.weight"],
                                             P[L + "output.LayerNorm.bias"], c.layer_norm_eps)
            layers.append(lc)
        cache["layers"] = layers

        pooled = None
        if self.has_pooler:
            first = x[:, 0]                                                                     # (B, T, C) -> (B, C) the [CLS] vectors
            pooled, cache["pool_dense"] = linear_forward(first, P[p + "pooler.dense.weight"], P[p + "pooler.dense.bias"])
            pooled, cache["pool_tanh"] = tanh_forward(pooled)                                   # (B, C)
        self._cache = cache
        return x, pooled, (attentions if output_attentions else None)

    def _accumulate(self, name: str, grad) -> None:
        self._grads[name] += grad

    def _encoder_backward(self, dhidden, dpooled) -> None:
        """Back through pooler, layers and embeddings, accumulating into self._grads."""
        c, p, cache = self.config, self.prefix, self._cache
        acc = self._accumulate
        dx = dhidden                                                                            # (B, T, C)
        if self.has_pooler and dpooled is not None:
            # TASK 3.4 pooler_backward: the pooler's gradient lands on [CLS] (lesson 08)
            dpooled = tanh_backward(dpooled, cache["pool_tanh"])
            dfirst, dW, db = linear_backward(dpooled, cache["pool_dense"])
            acc(p + "pooler.dense.weight", dW)
            acc(p + "pooler.dense.bias", db)
            dx = dx.copy() if dx is not None else backend.xp().zeros(
                cache["shape"] + (c.hidden_size,), dtype=self.dtype)
            dx[:, 0] += dfirst                             # pooled read x[:, 0] only: its gradient lands there
            # END TASK 3.4
        for i in reversed(range(c.num_hidden_layers)):
            # TASK 3.2 encoder_layer_backward: one post-LN layer in reverse (lesson 09)
            L = f"{p}encoder.layer.{i}."
            lc = cache["layers"][i]
            # x_out = LN2(h + f): the residual sends the same gradient to h and to the FFN branch
            dsum, dg, db = self.F.layernorm_backward(dx, lc["ln2"])
            acc(L + "output.LayerNorm.weight", dg)
            acc(L + "output.LayerNorm.bias", db)
            df = dropout_backward(dsum, lc["ffn_drop"])
            df, dW, db = linear_backward(df, lc["ffn2"])
            acc(L + "output.dense.weight", dW)
            acc(L + "output.dense.bias", db)
            df = self.F.activation_backward(df, lc["act"])
            dh_ffn, dW, db = linear_backward(df, lc["ffn1"])
            acc(L + "intermediate.dense.weight", dW)
            acc(L + "intermediate.dense.bias", db)
            dh_ffn += dsum                                 # h fed both the residual and the FFN: sum, in place
            dh = dh_ffn
            # h = LN1(x + a): again the residual splits the gradient between x and the attention branch
            dsum, dg, db = self.F.layernorm_backward(dh, lc["ln1"])
            acc(L + "attention.output.LayerNorm.weight", dg)
            acc(L + "attention.output.LayerNorm.bias", db)
            da = dropout_backward(dsum, lc["attn_drop"])
            da, dW, db = linear_backward(da, lc["attn_out"])
            acc(L + "attention.output.dense.weight", dW)
            acc(L + "attention.output.dense.bias", db)
            g = attention_backward(da, lc["attn"])
            for proj in ("query", "key", "value"):
                acc(L + f"attention.self.{proj}.weight", getattr(g, proj + "_weight"))
                acc(L + f"attention.self.{proj}.bias", getattr(g, proj + "_bias"))
            dx = g.x                                       # x fed both the residual and the attention:
            dx += dsum                                     # sum the two, in place (g.x is a fresh array)
            # END TASK 3.2
        # embeddings: back through dropout and LayerNorm, then to the three tables (x was their sum)
        # TASK 3.1 embeddings_backward: to the three tables (lesson 05)
        dx = dropout_backward(dx, cache["emb_drop"])
        dx, dg, db = self.F.layernorm_backward(dx, cache["emb_ln"])
        acc(p + "embeddings.LayerNorm.weight", dg)
        acc(p + "embeddings.LayerNorm.bias", db)
        # the word table is (V, C) = 30k rows: add the looked-up rows straight into its gradient
        embedding_backward(dx, cache["word"], out=self._grads[p + "embeddings.word_embeddings.weight"])
        acc(p + "embeddings.token_type_embeddings.weight", embedding_backward(dx, cache["type"]))
        seq_len = cache["shape"][1]
        # position t was added to every sequence of the batch: its gradient sums over the batch axis
        self._grads[p + "embeddings.position_embeddings.weight"][:seq_len] += dx.sum(axis=0)   # (B, T, C) -> (T, C)
        # END TASK 3.1

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory) -> Path:
        """Write ``config.json`` + ``model.safetensors`` in Hugging Face's layout."""
        from bertnp.checkpoint import save_tensors
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = self.config.to_dict()
        data["architectures"] = [type(self).__name__]
        data.update(self._extra_config())
        from bertnp.checkpoint import write_json
        write_json(directory / "config.json", data)
        save_tensors(directory / "model.safetensors", self._params, metadata={"format": "pt"})
        return directory

    def _extra_config(self) -> dict:
        return {}

    @classmethod
    def _from_pretrained_config(cls, directory):
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such directory")
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: no config.json in {directory}")
        from bertnp.checkpoint import read_json
        data = read_json(config_path)
        try:
            config = BertConfig.from_dict(data)
            config.check_fits_in_memory()
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{config_path}: {exc}") from exc
        # variants bertnp does not compute: refuse them rather than give silently wrong outputs
        kind = data.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"{config_path}: position_embedding_type {kind!r} is not supported "
                             "(bertnp implements BERT's learned absolute positions only)")
        if data.get("is_decoder") or data.get("add_cross_attention"):
            raise ValueError(f"{config_path}: decoder / cross-attention BERT variants are not supported")
        return directory, data, config

    @staticmethod
    def _weights_path(directory: Path) -> Path:
        path = directory / "model.safetensors"
        if not path.is_file() and (directory / "model.safetensors.index.json").is_file():
            raise FileNotFoundError(f"{path}: {directory} holds a sharded checkpoint "
                                    "(model.safetensors.index.json), which bertnp does not read; save it "
                                    "unsharded (HF: save_pretrained(dir, max_shard_size='100GB'))")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no model.safetensors in {directory} "
                                    "(only the safetensors format is read; never pickle)")
        return path

    def _load_pretrained_weights(self, weights: dict, path_label: str) -> None:
        """Load weights non-strictly: missing head tensors keep their fresh init, with a warning."""
        try:
            result = self.load_state_dict(weights, strict=False)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{path_label}: {exc}") from exc
        missing = result["missing_keys"]
        encoder_missing = [k for k in missing if k.startswith(self.prefix + "embeddings")
                           or k.startswith(self.prefix + "encoder")] if self.prefix else \
            [k for k in missing if k.startswith(("embeddings", "encoder"))]
        if encoder_missing:
            raise ValueError(f"{path_label}: missing encoder tensors {', '.join(encoder_missing[:5])}"
                             + (f" (and {len(encoder_missing) - 5} more)" if len(encoder_missing) > 5 else "")
                             + (f"; the file's tensors are named like {result['unexpected_keys'][0]!r}"
                                if result["unexpected_keys"] else ""))
        if missing:
            warnings.warn(f"{path_label}: newly initialised (not in the checkpoint): {', '.join(missing)}",
                          stacklevel=3)
        unused = result["unexpected_keys"]
        if unused:     # e.g. the MLM/NSP heads when a pretraining checkpoint starts a classifier
            warnings.warn(f"{path_label}: not used by {type(self).__name__}: {', '.join(unused[:8])}"
                          + (f" (and {len(unused) - 8} more)" if len(unused) > 8 else ""), stacklevel=3)

    @classmethod
    def from_pretrained(cls, directory, dtype="float32", **kwargs):
        """Load an HF-layout directory (``config.json`` + ``model.safetensors``). Returns the model
        in eval mode, as Hugging Face does. Tensors the checkpoint lacks (a head) are initialised
        fresh with a warning naming them."""
        from bertnp.checkpoint import load_tensors, tensor_shapes
        directory, data, config = cls._from_pretrained_config(directory)
        path = cls._weights_path(directory)
        config.check_tensor_shapes(tensor_shapes(path), path)     # the file's header, before allocating
        model = cls._new_from_config(config, data, dtype=dtype, **kwargs)
        model._load_pretrained_weights(load_tensors(path), str(path))
        return model.eval()

    @classmethod
    def _new_from_config(cls, config, data, dtype, **kwargs):
        return cls(config, dtype=dtype, **kwargs)

    def _check_backward_ready(self):
        if self._cache is None or self._loss_parts is None:
            raise RuntimeError("backward() needs a forward pass with labels first (call model(..., labels=...))")


# ============================================================================ the bare encoder

class BertModel(_BertBase):
    """The encoder alone: embeddings, L layers, pooler. State-dict names have no ``bert.`` prefix."""
    prefix = ""

    def __init__(self, config: BertConfig, seed: int = 0, dtype="float32", add_pooling_layer: bool = True,
                 use_kernels: bool = False):
        self.has_pooler = bool(add_pooling_layer)
        super().__init__(config, seed=seed, dtype=dtype, use_kernels=use_kernels)
        self._loss_parts = None

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, output_attentions=False):
        ids, mask, types = self._prepare_inputs(input_ids, attention_mask, token_type_ids)
        hidden, pooled, attentions = self._encoder_forward(ids, mask, types, output_attentions)
        return BaseModelOutput(hidden, pooled, attentions)

    forward = __call__

    def backward(self, dlast_hidden_state=None, dpooler_output=None) -> dict:
        """Accumulate gradients given upstream gradients of the outputs; returns ``grads``."""
        if self._cache is None:
            raise RuntimeError("backward() needs a forward pass first")
        if dlast_hidden_state is None and dpooler_output is None:
            raise ValueError("give dlast_hidden_state and/or dpooler_output")
        batch, seq_len = self._cache["shape"]
        H = self.config.hidden_size
        dlast_hidden_state = self._upstream("dlast_hidden_state", dlast_hidden_state, (batch, seq_len, H))
        dpooler_output = self._upstream("dpooler_output", dpooler_output, (batch, H))
        if dpooler_output is not None and not self.has_pooler:
            raise ValueError("dpooler_output: this model has no pooler (add_pooling_layer=False)")
        self._encoder_backward(dlast_hidden_state, dpooler_output)
        return self.grads

    def _upstream(self, name: str, grad, shape: tuple):
        """An upstream gradient as an array of the model's dtype on its backend (lists and host
        arrays are converted), or TypeError / ValueError naming it."""
        if grad is None:
            return None
        if isinstance(grad, (str, bytes)) or not (hasattr(grad, "shape") or isinstance(grad, (list, tuple))):
            raise TypeError(f"{name} must be an array, got {type(grad).__name__}")
        if not hasattr(grad, "shape"):
            try:
                grad = np.asarray(grad, dtype=self.dtype)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{name} must be a rectangular array of numbers ({exc})") from None
        if tuple(grad.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(grad.shape)}, expected {shape} like the last forward's output")
        if getattr(grad, "dtype", None) is None or grad.dtype.kind != "f":
            raise TypeError(f"{name} must hold floating-point numbers, got dtype {getattr(grad, 'dtype', None)}")
        return backend.to_device(grad, dtype=self.dtype)


# ============================================================================ pretraining: MLM + NSP

class BertForPreTraining(_BertBase):
    """BERT with the masked-LM head (decoder tied to the word embeddings) and the NSP head."""
    prefix = "bert."

    def __init__(self, config: BertConfig, seed: int = 0, dtype="float32", use_kernels: bool = False):
        super().__init__(config, seed=seed, dtype=dtype, use_kernels=use_kernels)
        H = config.hidden_size
        self._add_linear("cls.predictions.transform.dense", H, H)
        self._add_layernorm("cls.predictions.transform.LayerNorm", H)
        self._add("cls.predictions.bias", (config.vocab_size,), "zeros")     # the decoder's own bias
        self._add_linear("cls.seq_relationship", 2, H)
        self._loss_parts = None
        # True: a forward with labels computes the last layer's dense sublayers only at the rows the
        # heads read -- the labelled positions and each [CLS] -- and returns no last_hidden_state
        # (its other rows are not computed). The losses and every gradient are the same; a BERT-mini
        # training step is ~7% faster (benchmarks/README.md). bertnp's pretraining Trainer sets it; off by default, as in HF.
        self.skip_unscored_rows = False

    @property
    def word_embeddings(self):
        return self._params["bert.embeddings.word_embeddings.weight"]

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                 next_sentence_label=None, output_attentions=False, *, mlm_denominator=None,
                 nsp_denominator=None) -> PreTrainingOutput:
        """HF's forward. ``mlm_denominator`` / ``nsp_denominator`` (keyword only) divide the summed
        MLM / NSP cross-entropies instead of this batch's own counts (labelled tokens, sequences):
        give the counts of a whole update, and the losses (and gradients) of its micro-batches --
        or of its data-parallel shares -- simply add up to the update's exact mean losses."""
        c, P = self.config, self._params
        ids, mask, types = self._prepare_inputs(input_ids, attention_mask, token_type_ids)
        labels = _as_host_int("labels", labels)
        if labels is not None:
            if labels.shape != ids.shape:
                raise ValueError(f"labels has shape {labels.shape}, expected {ids.shape} like input_ids")
            _check_range("labels", labels, 0, c.vocab_size, allowed_extra=(IGNORE_INDEX,))
        mlm_count = int((labels != IGNORE_INDEX).sum()) if labels is not None else 0
        share = {"mlm": _loss_share("mlm_denominator", mlm_denominator, mlm_count),
                 "nsp": _loss_share("nsp_denominator", nsp_denominator, ids.shape[0])}
        nsp_labels = _as_host_int("next_sentence_label", next_sentence_label)
        if nsp_labels is not None:
            if nsp_labels.shape != (ids.shape[0],):
                raise ValueError(f"next_sentence_label has shape {nsp_labels.shape}, "
                                 f"expected ({ids.shape[0]},): one label per sequence")
            _check_range("next_sentence_label", nsp_labels, 0, 2)

        scored_rows = None                    # the rows of (B*T, C) the heads read, when only those are computed
        if self.skip_unscored_rows and labels is not None:
            batch, seq_len = ids.shape
            scored_rows = np.union1d(np.flatnonzero(labels.reshape(-1) != IGNORE_INDEX),
                                     np.arange(batch) * seq_len)                   # labelled positions and each [CLS]
        hidden, pooled, attentions = self._encoder_forward(ids, mask, types, output_attentions,
                                                           last_layer_rows=scored_rows)  # (B, T, C), (B, C)
        batch, seq_len, H = hidden.shape
        head = {}
        if labels is not None:
            # MLM only where it is scored: gather the N labelled positions (row-major) -- the 30k-way
            # decoder is most of BERT's FLOPs, and ~85% of positions would be thrown away.
            # TASK 3.5 gather_labelled: the MLM loss is scored at the labelled positions only (lesson 08)
            flat_positions = np.flatnonzero(labels.reshape(-1) != IGNORE_INDEX)     # (N,) on the host
            head["positions"] = backend.to_device(flat_positions)
            selected = hidden.reshape(batch * seq_len, H)[head["positions"]]        # (B, T, C) -> (B*T, C) -> (N, C)
            mlm_targets = backend.to_device(labels.reshape(-1)[flat_positions])     # (N,)
            # END TASK 3.5
        else:
            selected = hidden                                                       # (B, T, C): every position
        t, head["dense"] = linear_forward(selected, P["cls.predictions.transform.dense.weight"],
                                          P["cls.predictions.transform.dense.bias"])
        t, head["act"] = self.F.activation_forward(t, c.hidden_act)
        t, head["ln"] = self.F.layernorm_forward(t, P["cls.predictions.transform.LayerNorm.weight"],
                                          P["cls.predictions.transform.LayerNorm.bias"], c.layer_norm_eps)
        # the decoder is the word-embedding matrix (V, C) used as a Linear weight in HF layout
        prediction_logits, head["decoder"] = linear_forward(t, self.word_embeddings, P["cls.predictions.bias"])  # (N, V) or (B, T, V)
        nsp_logits, head["nsp"] = linear_forward(pooled, P["cls.seq_relationship.weight"],
                                                 P["cls.seq_relationship.bias"])        # (B, 2)

        out = PreTrainingOutput(prediction_logits=prediction_logits, seq_relationship_logits=nsp_logits,
                                last_hidden_state=hidden if scored_rows is None else None,
                                pooler_output=pooled, attentions=attentions)
        losses = []
        # a loss share s = count / denominator turns this batch's mean into sum / denominator
        if labels is not None:
            out.mlm_loss, head["mlm_ce"] = self.F.cross_entropy_forward(prediction_logits, mlm_targets,
                                                                  IGNORE_INDEX, check_range=False)
            if share["mlm"] is not None:
                out.mlm_loss = out.mlm_loss * share["mlm"]
            losses.append(out.mlm_loss)
        if nsp_labels is not None:
            out.nsp_loss, head["nsp_ce"] = self.F.cross_entropy_forward(nsp_logits, backend.to_device(nsp_labels),
                                                                  IGNORE_INDEX, check_range=False)
            if share["nsp"] is not None:
                out.nsp_loss = out.nsp_loss * share["nsp"]
            losses.append(out.nsp_loss)
        head["share"] = share
        if losses:
            out.loss = losses[0] if len(losses) == 1 else losses[0] + losses[1]
        self._head_cache = head
        self._loss_parts = (labels is not None, nsp_labels is not None) if losses else None
        return out

    forward = __call__

    def backward(self) -> dict:
        """Gradients of the last forward's ``loss`` for every tensor, accumulated into ``grads``."""
        self._check_backward_ready()
        xp = backend.xp()
        c, head = self.config, self._head_cache
        has_mlm, has_nsp = self._loss_parts
        batch, seq_len = self._cache["shape"]
        H = c.hidden_size
        acc = self._accumulate
        # dL/d(batch mean) is 1 (the loss is the sum of the two means), or the loss share
        # count / denominator when an update's denominators were given
        dmlm, dnsp = (self.dtype.type(1.0 if s is None else s) for s in (head["share"]["mlm"], head["share"]["nsp"]))

        dhidden = None
        if has_mlm:
            # walk the MLM head in reverse: loss <- logits <- LayerNorm <- GELU <- dense <- gathered rows
            # TASK 3.3 mlm_head_backward: the MLM head in reverse; the decoder is tied (lesson 08)
            dlogits = self.F.cross_entropy_backward(dmlm, head["mlm_ce"])               # (N, V) (softmax - onehot) / N
            # logits = t @ E^T + bias: a Linear whose weight is the word embedding E (V, C)
            dt, dW, db = linear_backward(dlogits, head["decoder"])                      # (N, C), (V, C), (V,)
            acc("bert.embeddings.word_embeddings.weight", dW)   # tied: the decoder's share (+= the lookup's below)
            acc("cls.predictions.bias", db)
            dt, dg, db = self.F.layernorm_backward(dt, head["ln"])                      # t = LN(gelu(dense))
            acc("cls.predictions.transform.LayerNorm.weight", dg)
            acc("cls.predictions.transform.LayerNorm.bias", db)
            dt = self.F.activation_backward(dt, head["act"])                            # gelu(dense): elementwise
            dselected, dW, db = linear_backward(dt, head["dense"])                      # (N, C) to the gathered rows
            acc("cls.predictions.transform.dense.weight", dW)
            acc("cls.predictions.transform.dense.bias", db)
            # END TASK 3.3
            # scatter the N gathered rows back to their positions; positions are distinct, so = is exact
            # TASK 3.5 scatter_labelled: back to the positions they were gathered from (lesson 08)
            dhidden = xp.zeros((batch * seq_len, H), dtype=self.dtype)                  # (B*T, C)
            dhidden[head["positions"]] = dselected
            dhidden = dhidden.reshape(batch, seq_len, H)                                # (B*T, C) -> (B, T, C)
            # END TASK 3.5
        dpooled = None
        if has_nsp:
            # TASK 3.4 nsp_head_backward: (lesson 08)
            dnsp_logits = self.F.cross_entropy_backward(dnsp, head["nsp_ce"])           # (B, 2) (softmax - onehot) / B
            dpooled, dW, db = linear_backward(dnsp_logits, head["nsp"])                 # nsp_logits = pooled Wsr^T + bsr: (B, C)
            acc("cls.seq_relationship.weight", dW)
            acc("cls.seq_relationship.bias", db)
            # END TASK 3.4
        if dhidden is None:                  # NSP only: the hidden states reach the loss through the pooler alone
            dhidden = xp.zeros((batch, seq_len, H), dtype=self.dtype)
        self._encoder_backward(dhidden, dpooled)
        self._cache = self._head_cache = self._loss_parts = None    # free the activations
        return self.grads


# ============================================================================ fine-tuning: classification

class BertForSequenceClassification(_BertBase):
    """BERT + dropout + Linear(C, num_labels) on the pooled [CLS] vector (HF's names: ``classifier``)."""
    prefix = "bert."

    def __init__(self, config: BertConfig, num_labels: int = 2, seed: int = 0, dtype="float32",
                 use_kernels: bool = False):
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
        super().__init__(config, seed=seed, dtype=dtype, use_kernels=use_kernels)
        self.num_labels = num_labels
        self._add_linear("classifier", num_labels, config.hidden_size)
        self._loss_parts = None
        # True: the last layer's dense sublayers only at each [CLS] row, the one row the classifier
        # reads (through the pooler); no last_hidden_state is returned. The same logits, loss and
        # gradients (tested). bertnp's fine-tuning sets it; off by default, as in HF.
        self.skip_unscored_rows = False

    def _extra_config(self) -> dict:
        """num_labels, id2label and label2id for config.json: the config's own label names when
        it has one for every class (fine-tuning sets them), else HF's ``LABEL_i``."""
        given = self.config.extra.get("id2label") or {}
        names = [given.get(str(i), given.get(i)) if isinstance(given, dict) else None
                 for i in range(self.num_labels)]
        if any(n is None for n in names) or len(set(map(str, names))) != self.num_labels:
            names = [f"LABEL_{i}" for i in range(self.num_labels)]
        return {"num_labels": self.num_labels,
                "id2label": {str(i): str(n) for i, n in enumerate(names)},
                "label2id": {str(n): i for i, n in enumerate(names)}}

    @classmethod
    def _new_from_config(cls, config, data, dtype, num_labels=None, **kwargs):
        if num_labels is None:
            num_labels = int(data.get("num_labels", len(data.get("id2label", {})) or 2))
        return cls(config, num_labels=num_labels, dtype=dtype, **kwargs)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                 output_attentions=False) -> SequenceClassifierOutput:
        c, P = self.config, self._params
        ids, mask, types = self._prepare_inputs(input_ids, attention_mask, token_type_ids)
        regression = self.num_labels == 1
        if labels is not None and not regression:
            labels = _as_host_int("labels", labels, ndim=1)
            if labels.shape != (ids.shape[0],):
                raise ValueError(f"labels has shape {labels.shape}, expected ({ids.shape[0]},)")
            _check_range("labels", labels, 0, self.num_labels)
        elif labels is not None:
            labels = np.asarray(backend.to_host(labels) if hasattr(labels, "dtype") else labels, dtype=np.float64)
            if labels.shape != (ids.shape[0],):
                raise ValueError(f"labels has shape {labels.shape}, expected ({ids.shape[0]},)")
        batch, seq_len = ids.shape
        pooled_rows = np.arange(batch) * seq_len if self.skip_unscored_rows else None   # (B,) [CLS] rows of (B*T, C)
        hidden, pooled, attentions = self._encoder_forward(ids, mask, types, output_attentions,
                                                           last_layer_rows=pooled_rows)
        p_drop = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        site = 1 + 3 * c.num_hidden_layers
        dropped, drop_cache = dropout_forward(pooled, p_drop, self._dropout_rng(site)
                                              if self.training and p_drop else None, self.training)
        logits, lin_cache = linear_forward(dropped, P["classifier.weight"], P["classifier.bias"])   # (B, num_labels)
        out = SequenceClassifierOutput(logits=logits, last_hidden_state=hidden if pooled_rows is None else None,
                                       pooler_output=pooled, attentions=attentions)
        self._head_cache = {"drop": drop_cache, "lin": lin_cache}
        self._loss_parts = None
        if labels is not None:
            if regression:
                target = backend.to_device(labels.astype(self.dtype))
                diff = logits[:, 0] - target                                   # (B,)
                out.loss = (diff * diff).mean()                               # MSE, as HF's regression
                self._head_cache["mse_diff"] = diff
            else:
                out.loss, self._head_cache["ce"] = self.F.cross_entropy_forward(
                    logits, backend.to_device(labels), IGNORE_INDEX, check_range=False)
            self._loss_parts = True
        return out

    forward = __call__

    def backward(self) -> dict:
        self._check_backward_ready()
        head = self._head_cache
        one = self.dtype.type(1.0)
        if "mse_diff" in head:
            diff = head["mse_diff"]
            dlogits = (2.0 / diff.shape[0]) * diff[:, None]                  # d mean(d^2) / d logit
        else:
            dlogits = self.F.cross_entropy_backward(one, head["ce"])
        ddropped, dW, db = linear_backward(dlogits, head["lin"])          # logits = dropped W^T + b: (B, C)
        self._accumulate("classifier.weight", dW)
        self._accumulate("classifier.bias", db)
        dpooled = dropout_backward(ddropped, head["drop"])                # the same mask scales the gradient
        # only the pooled [CLS] vector reaches the loss: the hidden states get their gradient through it
        batch, seq_len = self._cache["shape"]
        dhidden = backend.xp().zeros((batch, seq_len, self.config.hidden_size), dtype=self.dtype)
        self._encoder_backward(dhidden, dpooled)
        self._cache = self._head_cache = self._loss_parts = None
        return self.grads
