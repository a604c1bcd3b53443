"""Model paths no other test reached (the hardening issue): attention probabilities against the
committed Hugging Face fixture, regression mode (num_labels=1, MSE), the bare encoder's backward
checked numerically, hidden_act="tanh"; and configs that must be refused before anything is
allocated (sizes that cannot fit in memory, a config.json that contradicts its weights, infinite
numbers)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bertnp as bn
from bertnp.gradcheck import check_model, rel_error
from bertnp.ops.activations import TanhCache

REF = Path(__file__).parent / "reference"


def tiny_config(**kw) -> bn.BertConfig:
    return bn.BertConfig(**dict(dict(vocab_size=23, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                                     intermediate_size=20, max_position_embeddings=9), **kw))


def bend(model, seed=3):
    """Weights of scale 0.3, so that every nonlinearity bends (a gradient check on BERT's 0.02
    init would see an almost linear model)."""
    r = np.random.default_rng(seed)
    for name, p in model.parameters().items():
        p[...] = r.normal(0, 0.3, p.shape) + (1.0 if "LayerNorm.weight" in name else 0.0)
    return model


def padded_batch(seed=3):
    r = np.random.default_rng(seed)
    ids = r.integers(5, 23, (2, 7))
    mask = np.ones((2, 7), dtype=np.int64)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    types = np.zeros((2, 7), dtype=np.int64)
    types[:, 4:] = 1
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


# ----------------------------------------------------------------------------- attention probabilities

def test_attention_probabilities_match_hf():
    """The fixture stores HF's per-layer softmax probabilities (eager attention, float64, padding):
    bertnp's output_attentions must equal them, padded keys at exactly 0."""
    fx = np.load(REF / "bert_pretraining_f64.npz")
    cfg = bn.BertConfig.from_dict(json.loads(str(fx["config_json"])))
    params = {k[len("param/"):]: fx[k] for k in fx.files if k.startswith("param/")}
    inputs = dict(input_ids=fx["input_ids"], attention_mask=fx["attention_mask"],
                  token_type_ids=fx["token_type_ids"])
    expected = fx["attentions"]                                       # (L, B, nh, T, T)
    assert (fx["attention_mask"] == 0).any()                          # the fixture has padding
    for cls in (bn.BertForPreTraining, bn.BertModel):
        model = cls(cfg, dtype="float64").eval()
        model.load_state_dict(params, strict=cls is bn.BertForPreTraining)     # BertModel: no heads
        got = model(**inputs, output_attentions=True).attentions
        assert len(got) == cfg.num_hidden_layers
        for layer, probs in enumerate(got):
            assert probs.shape == expected[layer].shape and probs.dtype == np.float64
            assert np.abs(probs - expected[layer]).max() <= 1e-12, (cls.__name__, layer)
        padded_keys = fx["attention_mask"][:, None, None, :] == 0     # (B, 1, 1, T)
        assert all(np.all(probs[np.broadcast_to(padded_keys, probs.shape)] == 0) for probs in got)


# ----------------------------------------------------------------------------- regression (num_labels = 1)

def test_regression_mode_is_mse_with_its_gradient():
    """num_labels=1: the loss is HF's MSE, mean((logit - y)^2), integer labels are read as numbers,
    and every gradient passes the finite-difference check."""
    model = bend(bn.BertForSequenceClassification(tiny_config(), num_labels=1, seed=1, dtype="float64").eval())
    batch = dict(padded_batch(), labels=np.array([0.7, -1.3]))
    out = model(**batch)
    assert out.logits.shape == (2, 1)
    expected = np.mean((out.logits[:, 0] - batch["labels"]) ** 2)
    assert float(out.loss) == pytest.approx(expected, rel=1e-14)
    as_ints = model(**dict(batch, labels=np.array([1, -2])))
    assert float(as_ints.loss) == pytest.approx(np.mean((out.logits[:, 0] - [1.0, -2.0]) ** 2), rel=1e-14)
    errors = check_model(model, batch, floor=1e-5, max_entries=12)     # 12 random entries of every tensor
    assert len(errors) == len(model.state_dict())
    assert max(errors.values()) <= 1e-6, max(errors.items(), key=lambda kv: kv[1])
    with pytest.raises(ValueError, match="labels has shape"):
        model(**dict(batch, labels=np.array([0.5])))


# ----------------------------------------------------------------------------- the bare encoder's backward

class EncoderLoss:
    """BertModel with the scalar L = sum(h * dh) + sum(pooled * dp), for check_model: its gradient
    is BertModel.backward(dh, dp)."""

    def __init__(self, model, dh, dp):
        self.model, self.dh, self.dp = model, dh, dp

    def __call__(self, **inputs):
        out = self.model(**inputs)
        loss = 0.0
        if self.dh is not None:
            loss += float((out.last_hidden_state * np.asarray(self.dh)).sum())
        if self.dp is not None:
            loss += float((out.pooler_output * np.asarray(self.dp)).sum())
        out.loss = loss
        return out

    def backward(self):
        return self.model.backward(dlast_hidden_state=self.dh, dpooler_output=self.dp)

    def parameters(self):
        return self.model.parameters()

    def zero_grad(self):
        self.model.zero_grad()


@pytest.mark.parametrize("which", ["both", "hidden", "pooled"])
def test_bert_model_backward_matches_finite_differences(which):
    model = bend(bn.BertModel(tiny_config(), seed=2, dtype="float64").eval())
    batch = padded_batch()
    r = np.random.default_rng(7)
    # a loss reads no padded position: the [PAD] embedding row gets no gradient by design (HF's
    # padding_idx), though the padded positions' own outputs do depend on it
    real = batch["attention_mask"][:, :, None]                        # (B, T, 1)
    dh = r.standard_normal((2, 7, 12)) * real if which in ("both", "hidden") else None
    dp = r.standard_normal((2, 12)) if which in ("both", "pooled") else None
    errors = check_model(EncoderLoss(model, dh, dp), batch, floor=1e-5, max_entries=12)   # 12 of every tensor
    assert set(errors) == set(model.state_dict())
    assert max(errors.values()) <= 1e-6, max(errors.items(), key=lambda kv: kv[1])


def test_bert_model_backward_takes_lists_and_names_bad_gradients():
    model = bn.BertModel(tiny_config(), dtype="float64").eval()
    batch = padded_batch()
    dh = np.random.default_rng(0).standard_normal((2, 7, 12))
    model(**batch)
    want = {k: v.copy() for k, v in model.backward(dlast_hidden_state=dh).items()}
    model.zero_grad()
    model(**batch)
    got = model.backward(dlast_hidden_state=dh.tolist())              # a list: converted, not AttributeError
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    model(**batch)
    with pytest.raises(ValueError, match=r"dlast_hidden_state has shape \(2, 7\), expected \(2, 7, 12\)"):
        model.backward(dlast_hidden_state=dh[..., 0])
    with pytest.raises(TypeError, match="dpooler_output must be an array, got str"):
        model.backward(dpooler_output="zeros")
    with pytest.raises(TypeError, match="dpooler_output must hold floating-point"):
        model.backward(dpooler_output=np.zeros((2, 12), dtype=np.int64))


def test_a_list_as_gradient_is_a_type_error_naming_it():
    from bertnp.optim import AdamW, clip_grad_norm
    with pytest.raises(TypeError, match="gradient 'w' must be a floating-point array"):
        clip_grad_norm({"w": [1.0, 2.0]}, 1.0)
    with pytest.raises(TypeError, match="gradient 'w' must be a floating-point array"):
        AdamW({"w": np.ones(2)}, grads={"w": [1.0, 2.0]}).step()


# ----------------------------------------------------------------------------- hidden_act = "tanh"

def test_tanh_hidden_act_is_accepted_and_computed():
    """HF's hidden_act names include "tanh" and bertnp.ops computes it: the config accepts it."""
    model = bend(bn.BertForPreTraining(tiny_config(hidden_act="tanh"), seed=4, dtype="float64").eval())
    batch = dict(padded_batch(), labels=np.where(np.arange(7) % 3 == 1, 6, -100)[None].repeat(2, 0),
                 next_sentence_label=np.array([0, 1]))
    model(**batch)
    act = model._cache["layers"][0]["act"]
    assert isinstance(act, TanhCache)
    errors = check_model(model, batch, floor=1e-5, max_entries=8)
    assert max(errors.values()) <= 1e-6, max(errors.items(), key=lambda kv: kv[1])
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        tiny_config(hidden_act="swish")


# ----------------------------------------------------------------------------- configs refused before allocating

@pytest.mark.parametrize("field, value", [("initializer_range", float("inf")), ("layer_norm_eps", float("nan")),
                                          ("initializer_range", -0.02)])
def test_non_finite_numbers_are_refused(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field} must be a positive finite number"):
        tiny_config(**{field: value})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(tiny_config().to_dict(), **{field: value})), encoding="utf-8")
    assert ("Infinity" in path.read_text() or "NaN" in path.read_text() or value < 0)
    with pytest.raises(ValueError, match=rf"config\.json: {field} must be a positive finite number"):
        bn.BertConfig.from_json_file(path)


@pytest.fixture
def saved(tmp_path) -> Path:
    model = bn.BertForPreTraining(tiny_config(), seed=0)
    return model.save_pretrained(tmp_path / "model")


def edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **changes)), encoding="utf-8")


@pytest.mark.parametrize("field, value", [("hidden_size", 10 ** 9), ("num_hidden_layers", 10 ** 9),
                                          ("vocab_size", 10 ** 12), ("intermediate_size", 10 ** 11)])
def test_sizes_that_cannot_fit_in_memory_fail_at_once_naming_the_field(saved, field, value, monkeypatch):
    edit_config(saved, **{field: value, "num_attention_heads": 1})
    monkeypatch.setattr(bn.BertForPreTraining, "_add", lambda *a, **k: pytest.fail("allocated a parameter"))
    with pytest.raises(ValueError, match=rf"config\.json: {field}={value} is too large: .* GiB for weights "
                                         "and gradients in float32, more than this machine's"):
        bn.BertForPreTraining.from_pretrained(saved)      # at once: _add (any parameter) is never reached
    cfg = tiny_config(**{field: value, "num_attention_heads": 1})
    with pytest.raises(ValueError, match=f"{field}={value} is too large"):
        bn.BertForPreTraining(cfg)


def test_the_memory_check_counts_weights_and_gradients():
    base = bn.BertConfig()                                           # BERT-base: 110M parameters
    assert 109e6 < base.num_parameters() < 111e6
    small = tiny_config()
    assert small.num_parameters() == bn.BertForPreTraining(small).num_parameters()
    base.check_fits_in_memory("float32", memory_bytes=2**30)
    with pytest.raises(ValueError, match="num_hidden_layers=48 is too large"):
        bn.BertConfig(num_hidden_layers=48).check_fits_in_memory("float32", memory_bytes=2**30)
    with pytest.raises(ValueError, match="float64, more than this machine's 1 GiB"):
        base.check_fits_in_memory("float64", memory_bytes=2**30)


@pytest.mark.parametrize("change, field", [(dict(num_hidden_layers=3), "num_hidden_layers"),
                                           (dict(hidden_size=24, num_attention_heads=3), "hidden_size"),
                                           (dict(vocab_size=40), "vocab_size"),
                                           (dict(intermediate_size=21), "intermediate_size"),
                                           (dict(max_position_embeddings=10), "max_position_embeddings")])
def test_a_config_that_contradicts_its_weights_fails_before_allocating(saved, change, field, monkeypatch):
    edit_config(saved, **change)
    monkeypatch.setattr(bn.BertForPreTraining, "_add", lambda *a, **k: pytest.fail("allocated a parameter"))
    with pytest.raises(ValueError, match=rf"model\.safetensors: config\.json has {field}=.*, but the file's "
                                         r"tensors have \d+"):
        bn.BertForPreTraining.from_pretrained(saved)


def test_the_command_line_names_the_field(saved, capsys):
    from bertnp.cli import main
    from bertnp.tokenizer import BertTokenizer
    vocab = saved / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(18)]) + "\n")
    edit_config(saved, hidden_size=10 ** 9, num_attention_heads=1)
    assert BertTokenizer.from_pretrained(saved).vocab_size == 23
    assert main(["fill-mask", "--model", str(saved), "a [MASK] b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hidden_size=1000000000 is too large" in err[0], err


def test_rel_error_is_used_on_the_host():                           # (keeps rel_error's import honest)
    assert rel_error(np.ones(2), np.ones(2)) == 0.0
