"""Shared pieces of the fixture generators (make_model_fixtures.py, make_adamw_fixture.py).

Needs torch + transformers; it is imported only by the make_*.py scripts, never by the test suite.
Everything here is deterministic: fixed seeds, float64, CPU, dropout off (eval mode), and the
"eager" attention implementation (the plain softmax(QK^T/sqrt(d) + mask) V that bertnp writes by
hand; transformers 5 would otherwise pick torch's SDPA kernel).
"""

from __future__ import annotations

import json
import platform

import numpy as np
import torch
import transformers
from transformers import BertConfig

# Tiny config with pairwise-distinct sizes, so a swapped axis is a shape error, not a silent bug.
TINY = dict(
    vocab_size=99,
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=3,  # head size 8
    intermediate_size=40,
    max_position_embeddings=20,
    type_vocab_size=2,
    hidden_act="gelu",  # exact erf GELU
    layer_norm_eps=1e-12,
    hidden_dropout_prob=0.1,  # set, but every model here runs in eval() mode
    attention_probs_dropout_prob=0.1,
    initializer_range=0.02,
    pad_token_id=0,
)

B, T = 3, 11
LENGTHS = (11, 8, 5)  # real tokens per row; the rest is padding (attention_mask 0, id 0 = [PAD])
PAD_ID = 0

# Names in HF's full state dict that are the same tensor as another entry (tied duplicates).
TIED_PRETRAINING = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def tiny_config(**extra) -> BertConfig:
    cfg = BertConfig(**TINY, **extra)
    cfg._attn_implementation = "eager"
    return cfg


def config_json(cfg: BertConfig) -> str:
    """The config as HF writes it to config.json (save_pretrained), as one JSON string."""
    d = json.loads(cfg.to_json_string())
    d.pop("attn_implementation", None)
    # num_labels is implied by id2label in HF's JSON; spell it out for NumPy-only readers.
    if "id2label" in d:
        d["num_labels"] = len(d["id2label"])
    return json.dumps(d, sort_keys=True)


def versions_json(**extra) -> str:
    d = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "attn_implementation": "eager",
        "mode": "eval (dropout off)",
    }
    d.update(extra)
    return json.dumps(d, sort_keys=True)


def is_layernorm(name: str) -> bool:
    return ".LayerNorm." in name


def rerandomize_(model: torch.nn.Module, seed: int, weight_std: float, bias_std: float,
                 ln_std: float) -> None:
    """Overwrite every parameter in model.named_parameters() order (tied ones appear once).

    LayerNorm weight: 1 + N(0, ln_std); LayerNorm bias: N(0, ln_std);
    other biases (incl. cls.predictions.bias): N(0, bias_std); every other weight (Linear
    weights and the three embedding tables): N(0, weight_std). A std of 0 gives the exact
    constant (1 for LN weights, 0 otherwise).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = lambda std: torch.randn(p.shape, generator=g, dtype=torch.float64) * std
            if is_layernorm(name) and name.endswith(".weight"):
                p.copy_(1.0 + noise(ln_std))
            elif is_layernorm(name):
                p.copy_(noise(ln_std))
            elif name.endswith(".bias") or name == "cls.predictions.bias":
                p.copy_(noise(bias_std))
            else:
                p.copy_(noise(weight_std))


def make_inputs(seed: int = 1234):
    """input_ids, attention_mask, token_type_ids (B, T) int64 and MLM labels (B, T) int64.

    Real tokens: ids uniform in [0, 99) (position 0 is not forced to a [CLS] id: the model
    does not care); padding: id 0, mask 0, token type 0 (what HF tokenizers emit).
    token_type_ids: 0 for the first half of the real tokens (rounded up), 1 for the rest.
    labels: -100 everywhere except 4 real positions per row (never position 0, the [CLS] slot).
    The positions are drawn from 1..T-1 *without looking at the padding*, as a careless masking
    pass would; a draw that lands on padding is rejected and stays -100 (rows 1 and 2 reject some:
    asserted), so a model or loss that labels padded slots is caught. One kept label is forced to
    0 so that an ignore_index=0 bug (codertimo's) is caught too.
    """
    rng = np.random.default_rng(seed)
    V = TINY["vocab_size"]
    input_ids = np.full((B, T), PAD_ID, dtype=np.int64)
    attention_mask = np.zeros((B, T), dtype=np.int64)
    token_type_ids = np.zeros((B, T), dtype=np.int64)
    labels = np.full((B, T), -100, dtype=np.int64)
    dropped = 0
    for b, n in enumerate(LENGTHS):
        input_ids[b, :n] = rng.integers(0, V, size=n)
        attention_mask[b, :n] = 1
        token_type_ids[b, (n + 1) // 2:n] = 1
        kept_here = 0
        while kept_here < 4:
            p = int(rng.integers(1, T))
            if labels[b, p] != -100:
                continue
            if p >= n:
                dropped += 1  # would have labelled a padded slot: stays -100
                continue
            labels[b, p] = rng.integers(0, V)
            kept_here += 1
    kept = np.argwhere(labels != -100)
    labels[tuple(kept[len(kept) // 2])] = 0
    assert dropped >= 1, "the draw must hit at least one padded position"
    assert (labels[attention_mask == 0] == -100).all()
    assert all((labels[b] != -100).any() for b in range(B))
    return input_ids, attention_mask, token_type_ids, labels


def to_np(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.is_floating_point():
        return t.to(torch.float64).numpy().copy()
    return t.to(torch.int64).numpy().copy()
