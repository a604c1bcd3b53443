"""BertConfig: the model's hyper-parameters, with Hugging Face ``config.json`` field names.

Presets follow the published BERT sizes (Turc et al. 2019, "Well-Read Students Learn Better",
and Devlin et al. 2018): heads = hidden / 64, intermediate = 4 x hidden.

    name    layers  hidden  heads  intermediate
    tiny       2     128      2       512
    mini       4     256      4      1024
    small      4     512      8      2048
    medium     8     512      8      2048
    base      12     768     12      3072
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

PRESETS = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128),
    "mini": dict(num_hidden_layers=4, hidden_size=256),
    "small": dict(num_hidden_layers=4, hidden_size=512),
    "medium": dict(num_hidden_layers=8, hidden_size=512),
    "base": dict(num_hidden_layers=12, hidden_size=768),
}

# the HF hidden_act names bertnp.ops.activation_forward computes
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh")

# the size fields, with BERT-base's values (to say which one makes a model too large)
SIZE_FIELDS = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "intermediate_size": 3072,
               "max_position_embeddings": 512, "type_vocab_size": 2}


@dataclass
class BertConfig:
    """Hyper-parameters of a BERT model. Field names and defaults are Hugging Face's (BERT-base)."""
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    # the few other HF keys bertnp reads and writes back: architectures and a classifier's
    # num_labels / id2label / label2id (every other unknown key is dropped); not used by the math
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError/TypeError naming the first bad field."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {', '.join(ACTIVATIONS)}, got {self.hidden_act!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is None and name == "classifier_dropout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        for name in ("initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not value > 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int) \
                or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id must be an id in [0, vocab_size={self.vocab_size}), "
                             f"got {self.pad_token_id!r}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ------------------------------------------------------------------ sizes
    def num_parameters(self) -> int:
        """Parameters of a BertForPreTraining of this config (a classifier or the bare encoder has
        a few thousand fewer): embeddings, layers, pooler, MLM and NSP heads."""
        V, H, L, I = self.vocab_size, self.hidden_size, self.num_hidden_layers, self.intermediate_size
        embeddings = (V + self.max_position_embeddings + self.type_vocab_size) * H + 2 * H
        layer = 4 * (H * H + H) + (I * H + I) + (H * I + H) + 2 * 2 * H   # Q K V O, FFN, 2 LayerNorms
        heads = (H * H + H) + (H * H + H) + 2 * H + V + (2 * H + 2)        # pooler, MLM transform + bias, NSP
        return embeddings + L * layer + heads

    def check_fits_in_memory(self, dtype="float32", memory_bytes: int | None = None) -> None:
        """ValueError naming the culprit field when the weights and their gradients alone would
        not fit in this machine's memory (a config.json asking for hidden_size 10**9 must fail at
        once, not after minutes of allocation)."""
        import numpy as np
        itemsize = np.dtype(dtype).itemsize
        memory = _physical_memory() if memory_bytes is None else memory_bytes
        need = 2 * self.num_parameters() * itemsize                      # weights + gradients
        if memory is None or need <= memory:
            return
        culprit = max(SIZE_FIELDS, key=lambda name: getattr(self, name) / SIZE_FIELDS[name])
        raise ValueError(f"{culprit}={getattr(self, culprit)} is too large: this config has "
                         f"{self.num_parameters():.3g} parameters, {need / 2**30:.3g} GiB for weights and "
                         f"gradients in {np.dtype(dtype).name}, more than this machine's "
                         f"{memory / 2**30:.3g} GiB of memory")

    def check_tensor_shapes(self, shapes: dict, source="the checkpoint") -> None:
        """Check a checkpoint's tensor shapes (``{name: shape}``, read from the file's header)
        against this config before any model is allocated: ValueError naming the field and the file."""
        found = {}                                # field -> (value in the file, tensor it comes from)
        layers = set()
        for name, shape in shapes.items():
            key = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            shape = tuple(int(d) for d in shape)
            match = re.search(r"(?:^|\.)encoder\.layer\.(\d+)\.", key)
            if match:
                layers.add(int(match.group(1)))
            for suffix, fields in _SHAPE_FIELDS.items():
                if key == suffix or key.endswith("." + suffix):
                    if len(shape) != len(fields):
                        raise ValueError(f"{source}: tensor {name!r} has shape {shape}, expected "
                                         f"{len(fields)} dimensions ({', '.join(fields)})")
                    for field_name, value in zip(fields, shape):
                        found.setdefault(field_name, (value, name))
        if layers:
            found["num_hidden_layers"] = (max(layers) + 1, f"encoder.layer.{max(layers)}")
        for field_name, (value, name) in found.items():
            if getattr(self, field_name) != value:
                raise ValueError(f"{source}: config.json has {field_name}={getattr(self, field_name)}, but the "
                                 f"file's tensors have {value} ({name})")

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides) -> "BertConfig":
        """A published BERT size: tiny | mini | small | medium | base. Keyword overrides win."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
        size = dict(PRESETS[name])
        hidden = size["hidden_size"]
        size.update(num_attention_heads=hidden // 64, intermediate_size=4 * hidden)
        size.update(overrides)
        return cls(**size)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """HF-style config dict (what ``config.json`` holds)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out = {"architectures": ["BertForPreTraining"], "model_type": "bert"}
        out.update(self.extra)
        out.update(data)
        out["model_type"] = "bert"
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "BertConfig":
        """Build from an HF config dict. Of the keys that are not fields, ``architectures``,
        ``id2label``, ``label2id`` and ``num_labels`` are kept in ``extra``; the rest are ignored."""
        if not isinstance(data, dict):
            raise TypeError(f"config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k in ("architectures", "id2label",
                                                                             "label2id", "num_labels")}
        return cls(**known, extra=extra)

    def to_json_file(self, path) -> Path:
        from bertnp.checkpoint import write_json
        return write_json(path, self.to_dict())

    @classmethod
    def from_json_file(cls, path) -> "BertConfig":
        """Read an HF ``config.json``. Errors name the file."""
        from bertnp.checkpoint import read_json
        data = read_json(path)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{path}: {exc}") from exc

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# tensor name suffix -> the config fields its dimensions must equal (the HF layout: Linear weights (out, in))
_SHAPE_FIELDS = {
    "embeddings.word_embeddings.weight": ("vocab_size", "hidden_size"),
    "embeddings.position_embeddings.weight": ("max_position_embeddings", "hidden_size"),
    "embeddings.token_type_embeddings.weight": ("type_vocab_size", "hidden_size"),
    "attention.self.query.weight": ("hidden_size", "hidden_size"),
    "intermediate.dense.weight": ("intermediate_size", "hidden_size"),
    "output.dense.bias": ("hidden_size",),
}


def _physical_memory() -> int | None:
    """Bytes of physical memory (POSIX), or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
