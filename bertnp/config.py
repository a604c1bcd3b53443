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
from dataclasses import dataclass, field
from pathlib import Path

PRESETS = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128),
    "mini": dict(num_hidden_layers=4, hidden_size=256),
    "small": dict(num_hidden_layers=4, hidden_size=512),
    "medium": dict(num_hidden_layers=8, hidden_size=512),
    "base": dict(num_hidden_layers=12, hidden_size=768),
}

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


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
    # kept so a config round-trips through HF; not used by the math
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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int) \
                or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id must be an id in [0, vocab_size={self.vocab_size}), "
                             f"got {self.pad_token_id!r}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

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
        """Build from an HF config dict; unknown keys are kept in ``extra`` and otherwise ignored."""
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
