"""Write bert_pretraining_f64.npz and bert_seqcls_f64.npz: Hugging Face BERT in float64, the
independent reference that bertnp's forward and backward are compared against (llm.c style).

    pip install torch==2.13.0 transformers      # CPU wheels are enough
    HF_HUB_OFFLINE=1 python tests/reference/make_model_fixtures.py

Model: the tiny config of fixture_common.TINY (V=99, H=24, L=2, nh=3, hs=8, I=40, P=20), built
with torch.manual_seed(0), cast with .double(), put in eval() mode (dropout off), eager attention,
and then every parameter re-randomized so nothing is trivially 0 or 1:
    weights (Linear and embeddings) N(0, 0.2), biases N(0, 0.1),
    LayerNorm weights 1 + N(0, 0.1), LayerNorm biases N(0, 0.1)
(torch.Generator seeded 0 for pretraining, 1 for sequence classification, drawn in
model.named_parameters() order).

Layout of bert_pretraining_f64.npz (names are HF state-dict names; Linear weights (out, in)):
    config_json, versions           0-d unicode arrays holding JSON
    tied_names                      JSON list of HF names that are tied duplicates (not stored)
    tied_to                         JSON object duplicate name -> stored name
    param/<name>                    every unique parameter (float64); tied duplicates and buffers
                                    (bert.embeddings.position_ids / token_type_ids) left out
    input_ids, attention_mask, token_type_ids, labels (B, T) int64; next_sentence_label (B,) int64
    prediction_logits (B, T, V)     forward WITHOUT labels: every position, padding included
    labelled_prediction_logits (N, V)   prediction_logits[labels != -100], row-major order
    seq_relationship_logits (B, 2)
    loss, mlm_loss, nsp_loss        0-d; loss is HF's own (with labels), mlm/nsp recomputed with
                                    torch.nn.functional.cross_entropy(ignore_index=-100)
    last_hidden_state (B, T, H), pooler_output (B, H)    from model.bert
    hidden_states (L+1, B, T, H)    embeddings output, then each layer's output
    attentions (L, B, nh, T, T)     softmax probabilities per layer
    grad/<name>                     d loss / d param for every param/<name> (the total loss,
                                    mlm + nsp, from the forward WITH labels)

bert_seqcls_f64.npz: BertForSequenceClassification(num_labels=3), same inputs without MLM
labels, labels (B,) in {0, 1, 2}; keys config_json, versions, tied_names ([]), param/<name>,
input_ids, attention_mask, token_type_ids, labels, logits (B, 3), loss, last_hidden_state,
pooler_output, grad/<name>.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertForPreTraining, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import (B, T, TIED_PRETRAINING, config_json, make_inputs, rerandomize_,  # noqa: E402
                            tiny_config, to_np, versions_json)

HERE = Path(__file__).resolve().parent


def unique_state(model: torch.nn.Module, tied: dict[str, str]) -> dict[str, torch.Tensor]:
    """model.state_dict() minus tied duplicates; checks it is exactly model.named_parameters()."""
    sd = model.state_dict()
    for dup, orig in tied.items():
        assert sd[dup].data_ptr() == sd[orig].data_ptr(), f"{dup} is not tied to {orig}"
    out = {k: v for k, v in sd.items() if k not in tied}
    params = dict(model.named_parameters())
    assert list(out) == list(params), (set(out) ^ set(params))
    return out


def pretraining() -> dict[str, np.ndarray]:
    cfg = tiny_config()
    torch.manual_seed(0)
    model = BertForPreTraining(cfg).double().eval()
    rerandomize_(model, seed=0, weight_std=0.2, bias_std=0.1, ln_std=0.1)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias

    ids, mask, types, labels = (torch.from_numpy(a) for a in make_inputs())
    nsp = torch.tensor([0, 1, 0], dtype=torch.int64)  # 0 = IsNext, 1 = random; both present

    out = {}
    out["config_json"] = np.array(config_json(cfg))
    out["versions"] = np.array(versions_json())
    out["tied_names"] = np.array(json.dumps(sorted(TIED_PRETRAINING)))
    out["tied_to"] = np.array(json.dumps(TIED_PRETRAINING, sort_keys=True))
    params = unique_state(model, TIED_PRETRAINING)
    for k, v in params.items():
        out[f"param/{k}"] = to_np(v)
    out["input_ids"], out["attention_mask"], out["token_type_ids"] = to_np(ids), to_np(mask), to_np(types)
    out["labels"], out["next_sentence_label"] = to_np(labels), to_np(nsp)

    with torch.no_grad():  # forward without labels: logits at every position
        o = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        h = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types,
                       output_hidden_states=True, output_attentions=True)
    out["prediction_logits"] = to_np(o.prediction_logits)
    out["labelled_prediction_logits"] = to_np(o.prediction_logits[labels != -100])
    out["seq_relationship_logits"] = to_np(o.seq_relationship_logits)
    out["last_hidden_state"] = to_np(h.last_hidden_state)
    out["pooler_output"] = to_np(h.pooler_output)
    out["hidden_states"] = to_np(torch.stack(h.hidden_states))
    out["attentions"] = to_np(torch.stack(h.attentions))

    model.zero_grad(set_to_none=True)
    o = model(input_ids=ids, attention_mask=mask, token_type_ids=types,
              labels=labels, next_sentence_label=nsp)
    mlm = F.cross_entropy(o.prediction_logits.reshape(-1, cfg.vocab_size), labels.reshape(-1),
                          ignore_index=-100)
    nsp_loss = F.cross_entropy(o.seq_relationship_logits, nsp)
    print(f"pretraining: HF loss {o.loss.item():.17g} = mlm {mlm.item():.17g} + nsp "
          f"{nsp_loss.item():.17g} (bit-exact: {torch.equal(o.loss, mlm + nsp_loss)})")
    assert torch.equal(o.loss, mlm + nsp_loss), "HF's loss is not mlm + nsp"
    assert torch.equal(o.prediction_logits.detach(), torch.from_numpy(out["prediction_logits"]))
    o.loss.backward()
    out["loss"], out["mlm_loss"], out["nsp_loss"] = to_np(o.loss), to_np(mlm), to_np(nsp_loss)
    # The tied word embedding appears once in named_parameters(); autograd sums both of its uses
    # (embedding lookup + transposed MLM decoder) into this one .grad, exactly what bertnp must do.
    for k, p in model.named_parameters():
        out[f"grad/{k}"] = to_np(p.grad)
    return out


def seqcls() -> dict[str, np.ndarray]:
    cfg = tiny_config(num_labels=3)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).double().eval()
    rerandomize_(model, seed=1, weight_std=0.2, bias_std=0.1, ln_std=0.1)
    ids, mask, types, _ = (torch.from_numpy(a) for a in make_inputs())
    y = torch.tensor([2, 0, 1], dtype=torch.int64)

    out = {}
    out["config_json"] = np.array(config_json(cfg))
    out["versions"] = np.array(versions_json())
    out["tied_names"] = np.array(json.dumps([]))
    for k, v in unique_state(model, {}).items():
        out[f"param/{k}"] = to_np(v)
    out["input_ids"], out["attention_mask"], out["token_type_ids"] = to_np(ids), to_np(mask), to_np(types)
    out["labels"] = to_np(y)

    with torch.no_grad():
        h = model.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
    out["last_hidden_state"] = to_np(h.last_hidden_state)
    out["pooler_output"] = to_np(h.pooler_output)

    model.zero_grad(set_to_none=True)
    o = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=y)
    assert torch.equal(o.loss, F.cross_entropy(o.logits, y))
    o.loss.backward()
    out["logits"], out["loss"] = to_np(o.logits), to_np(o.loss)
    for k, p in model.named_parameters():
        out[f"grad/{k}"] = to_np(p.grad)
    print(f"seqcls: loss {o.loss.item():.17g}")
    return out


def save(name: str, arrays: dict[str, np.ndarray]) -> None:
    for k, v in arrays.items():
        assert v.dtype.kind in "fiU", (k, v.dtype)
        assert v.dtype.kind != "f" or v.dtype == np.float64, (k, v.dtype)
    path = HERE / name
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB, {len(arrays)} arrays)")


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    save("bert_pretraining_f64.npz", pretraining())
    save("bert_seqcls_f64.npz", seqcls())
