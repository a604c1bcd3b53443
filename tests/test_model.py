"""The BERT model: agreement with Hugging Face transformers (committed float64 fixtures made by
tests/reference/make_model_fixtures.py), a whole-model finite-difference check, regression tests
for the known bugs of earlier BERT implementations, and bad input through the public API."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

import bertnp as bn
from bertnp.gradcheck import check_model, rel_error
from conftest import dev, host

REF = Path(__file__).parent / "reference"
PARITY = 1e-9          # relative, as the issue requires


def _load(name):
    return np.load(REF / name)


def _rel(a, b):
    """max |a - b| / max |b|: relative agreement of a whole tensor."""
    a, b = host(a).astype(np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def _model_from_fixture(fx, cls, **kwargs):
    cfg = bn.BertConfig.from_dict(json.loads(str(fx["config_json"])))
    model = cls(cfg, dtype="float64", **kwargs).eval()
    params = {k[len("param/"):]: fx[k] for k in fx.files if k.startswith("param/")}
    model.load_state_dict(params, strict=True)
    return model


def _inputs(fx, labels=True):
    inputs = dict(input_ids=fx["input_ids"], attention_mask=fx["attention_mask"],
                  token_type_ids=fx["token_type_ids"])
    if labels:
        inputs.update(labels=fx["labels"], next_sentence_label=fx["next_sentence_label"])
    return inputs


# ----------------------------------------------------------------------------- parity with HF

def test_pretraining_outputs_match_hf():
    fx = _load("bert_pretraining_f64.npz")
    model = _model_from_fixture(fx, bn.BertForPreTraining)
    out = model(**_inputs(fx, labels=False))
    assert out.prediction_logits.dtype == np.float64
    assert _rel(out.prediction_logits, fx["prediction_logits"]) <= PARITY
    assert _rel(out.seq_relationship_logits, fx["seq_relationship_logits"]) <= PARITY
    assert _rel(out.last_hidden_state, fx["last_hidden_state"]) <= PARITY
    assert _rel(out.pooler_output, fx["pooler_output"]) <= PARITY
    assert out.loss is None


def test_pretraining_loss_and_every_gradient_match_hf():
    fx = _load("bert_pretraining_f64.npz")
    model = _model_from_fixture(fx, bn.BertForPreTraining)
    out = model(**_inputs(fx))
    # with labels the MLM logits exist only at the labelled positions, in row-major order
    assert out.prediction_logits.shape == fx["labelled_prediction_logits"].shape
    assert _rel(out.prediction_logits, fx["labelled_prediction_logits"]) <= PARITY
    for key in ("loss", "mlm_loss", "nsp_loss"):
        assert abs(float(getattr(out, key)) - float(fx[key])) <= PARITY * abs(float(fx[key])), key
    assert all(getattr(out, k).dtype == np.float64 for k in ("loss", "mlm_loss", "nsp_loss",
                                                              "prediction_logits", "seq_relationship_logits"))
    grads = model.backward()
    expected = {k[len("grad/"):]: fx[k] for k in fx.files if k.startswith("grad/")}
    assert set(grads) == set(expected) == set(model.state_dict())
    _assert_grads_match(grads, expected)


def _assert_grads_match(grads, expected):
    """Every gradient within PARITY of HF's, relative to the tensor's largest entry."""
    grads = {name: host(g) for name, g in grads.items()}
    for name, ref in expected.items():
        assert grads[name].dtype == np.float64 and grads[name].shape == ref.shape, name
        if "attention.self.key.bias" in name:
            # the true gradient is exactly 0 (softmax is shift-invariant per query), so a relative
            # comparison would compare two roundings of zero: both must be ~1e-17 instead.
            assert np.abs(grads[name]).max() < 1e-12 and np.abs(ref).max() < 1e-12, name
            continue
        assert _rel(grads[name], ref) <= PARITY, name


def test_sequence_classification_matches_hf():
    fx = _load("bert_seqcls_f64.npz")
    num_labels = fx["logits"].shape[1]
    model = _model_from_fixture(fx, bn.BertForSequenceClassification, num_labels=num_labels)
    out = model(input_ids=fx["input_ids"], attention_mask=fx["attention_mask"],
                token_type_ids=fx["token_type_ids"], labels=fx["labels"])
    assert _rel(out.logits, fx["logits"]) <= PARITY
    assert abs(float(out.loss) - float(fx["loss"])) <= PARITY * float(fx["loss"])
    grads = model.backward()
    expected = {k[len("grad/"):]: fx[k] for k in fx.files if k.startswith("grad/")}
    assert set(grads) == set(expected) == set(model.state_dict())
    _assert_grads_match(grads, expected)


def test_load_full_hf_state_dict_with_tied_duplicates():
    fx = _load("bert_pretraining_f64.npz")
    params = {k[len("param/"):]: fx[k] for k in fx.files if k.startswith("param/")}
    full = dict(params)
    for dup, original in json.loads(str(fx["tied_to"])).items():
        full[dup] = params[original]
    full["bert.embeddings.position_ids"] = np.arange(20)[None]          # an int64 buffer: skipped
    cfg = bn.BertConfig.from_dict(json.loads(str(fx["config_json"])))
    model = bn.BertForPreTraining(cfg, dtype="float64")
    model.load_state_dict(full, strict=True)
    np.testing.assert_array_equal(host(model.state_dict()["bert.embeddings.word_embeddings.weight"]),
                                  params["bert.embeddings.word_embeddings.weight"])
    full["cls.predictions.decoder.weight"] = params["bert.embeddings.word_embeddings.weight"] + 1
    with pytest.raises(ValueError, match="cls.predictions.decoder.weight"):
        model.load_state_dict(full)


# ----------------------------------------------------------------------------- finite differences

def _tiny_model(seed=3, **cfg_overrides):
    cfg = bn.BertConfig(vocab_size=23, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=20, max_position_embeddings=9, **cfg_overrides)
    model = bn.BertForPreTraining(cfg, seed=seed, dtype="float64").eval()
    r = np.random.default_rng(seed)
    for name, p in model.parameters().items():   # larger than BERT's init so every nonlinearity bends
        p[...] = dev(r.normal(0, 0.3, p.shape) + (1.0 if "LayerNorm.weight" in name else 0.0))
    return model


def _tiny_batch():
    r = np.random.default_rng(0)
    ids = r.integers(1, 23, (2, 7))
    mask = np.ones((2, 7), dtype=np.int64)
    mask[1, 5:] = 0
    ids[1, 5:] = 0                                 # [PAD] only at padded positions, as real batches
    types = np.zeros((2, 7), dtype=np.int64)
    types[:, 4:] = 1
    labels = np.full((2, 7), -100)
    labels[0, [1, 3]] = [5, 6]
    labels[1, 2] = 7
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels,
                next_sentence_label=np.array([0, 1]))


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_whole_model_gradcheck(hidden_act):
    """Every parameter tensor, every entry, float64, dropout off: relative error <= 1e-6.
    Order-4 stencil with h = 1e-3 (bertnp.gradcheck explains why); entries with |a| + |n| below
    1e-5 are measured against that floor, i.e. held to |a - n| <= 1e-11, ten times the stencil's
    rounding noise (the attention key bias, whose true gradient is 0, is such an entry). ReLU has
    its own test below."""
    model = _tiny_model(hidden_act=hidden_act)
    errors = check_model(model, _tiny_batch(), floor=1e-5)
    assert len(errors) == len(model.state_dict())
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-6, (worst, errors[worst])


def test_whole_model_gradcheck_relu():
    """hidden_act="relu": ReLU has a kink at 0, where no finite difference is a derivative, so
    the stencil must not straddle it: h = 1e-4 (order 4 reaches +-2e-4), and the test first
    asserts that every FFN pre-activation of this fixed batch lies at least 1e-3 from 0."""
    from bertnp.ops.linear import linear_forward
    model = _tiny_model(hidden_act="relu")
    batch = _tiny_batch()
    model(**batch)
    P = model.parameters()
    for i, layer in enumerate(model._cache["layers"]):
        name = f"bert.encoder.layer.{i}.intermediate.dense"
        pre, _ = linear_forward(layer["ffn1"].x, P[name + ".weight"], P[name + ".bias"])   # (B, T, I)
        assert np.abs(host(pre)).min() > 1e-3, (i, np.abs(host(pre)).min())
    errors = check_model(model, batch, h=1e-4, order=4, floor=1e-5)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-6, (worst, errors[worst])


def test_hidden_act_names():
    """HF's names: "gelu" is the erf form, "gelu_new" and "gelu_pytorch_tanh" the same tanh form."""
    batch = dict(input_ids=_tiny_batch()["input_ids"])
    logits = {act: host(_tiny_model(hidden_act=act)(**batch).prediction_logits)
              for act in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")}
    np.testing.assert_array_equal(logits["gelu_new"], logits["gelu_pytorch_tanh"])
    assert 0 < np.abs(logits["gelu_new"] - logits["gelu"]).max() < 1e-2      # the forms differ by <= 5e-4
    assert np.abs(logits["relu"] - logits["gelu"]).max() > 1e-2


def test_sequence_classifier_gradcheck():
    cfg = bn.BertConfig(vocab_size=17, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=10, max_position_embeddings=6)
    model = bn.BertForSequenceClassification(cfg, num_labels=3, seed=1, dtype="float64").eval()
    r = np.random.default_rng(1)
    for name, p in model.parameters().items():
        p[...] = dev(r.normal(0, 0.3, p.shape) + (1.0 if "LayerNorm.weight" in name else 0.0))
    batch = dict(input_ids=r.integers(1, 17, (3, 5)), labels=np.array([0, 2, 1]))
    errors = check_model(model, batch, floor=1e-5)
    assert len(errors) == len(model.state_dict())
    assert max(errors.values()) <= 1e-6, max(errors.items(), key=lambda kv: kv[1])


# ----------------------------------------------------------------------------- the anchors' bugs

def test_padded_and_ignored_positions_cannot_change_mlm_loss():
    """d2l averaged the MLM loss before masking, so padded slots counted. Here a position labelled
    -100 has no say: change its token (and so its hidden state and logits) and the loss stays."""
    model = _tiny_model()
    batch = _tiny_batch()
    base = float(model(**batch).mlm_loss)
    changed = dict(batch)
    ids = batch["input_ids"].copy()
    ids[1, 5:] = [3, 4]                   # padded positions: new tokens, still masked out as keys
    changed["input_ids"] = ids
    assert float(model(**changed).mlm_loss) == pytest.approx(base, rel=1e-13)
    # and the loss is the mean over exactly the labelled positions
    out = model(**batch)
    logits, targets = host(out.prediction_logits), batch["labels"][batch["labels"] != -100]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(out.mlm_loss) == pytest.approx(-logp[np.arange(3), targets].mean(), rel=1e-12)


def test_not_next_examples_count_in_nsp_loss():
    """codertimo used ignore_index=0 for NSP, silently skipping every IsNext (label 0) example."""
    model = _tiny_model()
    batch = _tiny_batch()
    out = model(**batch)
    logits = host(out.seq_relationship_logits)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(logp[0, 0] + logp[1, 1]) / 2          # both examples, labels 0 and 1
    assert float(out.nsp_loss) == pytest.approx(expected, rel=1e-12)


def test_tied_embedding_gets_the_sum_of_both_gradients():
    model = _tiny_model()
    batch = _tiny_batch()
    name = "bert.embeddings.word_embeddings.weight"
    model.zero_grad()
    model(**batch)
    total = host(model.backward()[name]).copy()
    # the decoder's share alone: freeze the lookup path by measuring it with finite differences
    # is slow, so instead recompute with an untied copy: gradient of loss w.r.t. the decoder use.
    from bertnp.ops.linear import linear_backward
    model.zero_grad()
    model(**batch)
    head = model._head_cache
    from bertnp.ops.losses import cross_entropy_backward
    decoder_share = host(linear_backward(cross_entropy_backward(1.0, head["mlm_ce"]), head["decoder"])[1])
    lookup_share = total - decoder_share
    assert np.abs(decoder_share).max() > 1e-3 and np.abs(lookup_share).max() > 1e-3
    # and the whole is right: finite differences agree with the sum
    errors = check_model(model, batch, names=[name], floor=1e-5)
    assert errors[name] <= 1e-6


def test_batch_without_any_mlm_label_gives_zero_mlm_loss():
    """Every label -100 (a batch of short rows with nothing masked): MLM loss 0 and no MLM
    gradient, not the 0/0 = NaN of a mean over nothing; the NSP loss still trains the model."""
    model = _tiny_model()
    batch = dict(_tiny_batch(), labels=np.full((2, 7), -100))
    out = model(**batch)
    assert float(out.mlm_loss) == 0.0 and out.prediction_logits.shape == (0, 23)
    assert float(out.loss) == float(out.nsp_loss) > 0
    model.zero_grad()
    grads = {name: host(g) for name, g in model.backward().items()}
    assert all(np.isfinite(g).all() for g in grads.values())
    assert not grads["cls.predictions.bias"].any() and not grads["cls.predictions.transform.dense.weight"].any()
    assert grads["bert.pooler.dense.weight"].any()


def test_gradients_accumulate_until_zero_grad():
    model = _tiny_model()
    batch = _tiny_batch()
    model(**batch)
    first = {k: host(v).copy() for k, v in model.backward().items()}
    model(**batch)
    second = {k: host(v) for k, v in model.backward().items()}
    for name in first:
        np.testing.assert_allclose(second[name], 2 * first[name], rtol=1e-12, atol=1e-300)
    model.zero_grad()
    assert all(not host(g).any() for g in model.grads.values())


def test_backward_without_loss_is_an_error():
    model = _tiny_model()
    batch = _tiny_batch()
    model(input_ids=batch["input_ids"])
    with pytest.raises(RuntimeError, match="labels"):
        model.backward()


def test_initial_losses_are_ln_vocab_and_ln_2():
    cfg = bn.BertConfig.preset("tiny", vocab_size=1000, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    model = bn.BertForPreTraining(cfg, seed=0, dtype="float32")
    r = np.random.default_rng(0)
    labels = np.where(r.random((4, 32)) < 0.15, r.integers(5, 1000, (4, 32)), -100)
    out = model(input_ids=r.integers(5, 1000, (4, 32)), labels=labels,
                next_sentence_label=np.array([0, 1, 0, 1]))
    assert float(out.mlm_loss) == pytest.approx(math.log(1000), abs=0.1)
    assert float(out.nsp_loss) == pytest.approx(math.log(2), abs=0.05)
    assert out.loss.dtype == np.float32 and out.prediction_logits.dtype == np.float32


def test_init_statistics_and_dtype():
    cfg = bn.BertConfig.preset("tiny", vocab_size=500)
    model = bn.BertForPreTraining(cfg, seed=0, dtype="float64")
    sd = {k: host(v) for k, v in model.state_dict().items()}
    w = sd["bert.encoder.layer.0.intermediate.dense.weight"]
    assert w.shape == (512, 128) and w.dtype == np.float64
    assert abs(w.std() - 0.02) < 0.001 and abs(w.mean()) < 0.001
    assert not sd["bert.encoder.layer.0.intermediate.dense.bias"].any()
    assert (sd["bert.embeddings.LayerNorm.weight"] == 1).all()
    assert not sd["bert.embeddings.word_embeddings.weight"][0].any()          # [PAD] row
    assert "cls.predictions.decoder.weight" not in sd                         # tied: listed once
    same = bn.BertForPreTraining(cfg, seed=0, dtype="float64").state_dict()
    assert all(np.array_equal(sd[k], host(same[k])) for k in sd)              # seeded
    with pytest.raises(TypeError, match="dtype"):
        bn.BertForPreTraining(cfg, dtype="int32")


def test_train_mode_dropout_is_seeded_and_eval_is_deterministic():
    cfg = bn.BertConfig.preset("tiny", vocab_size=100)
    batch = dict(input_ids=np.arange(1, 17).reshape(2, 8))
    a = bn.BertForPreTraining(cfg, seed=5)
    b = bn.BertForPreTraining(cfg, seed=5)
    nsp = lambda model: host(model(**batch).seq_relationship_logits)  # noqa: E731
    out_a1, out_a2 = nsp(a), nsp(a)
    assert not np.array_equal(out_a1, out_a2)                 # fresh masks every forward
    np.testing.assert_array_equal(out_a1, nsp(b))             # same seed, same masks
    a.eval()
    np.testing.assert_array_equal(nsp(a), nsp(a))


def test_attention_maps_on_request():
    model = _tiny_model()
    batch = _tiny_batch()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 3, 7, 7)
    np.testing.assert_allclose(host(out.attentions[0]).sum(-1), 1.0, rtol=1e-12)
    assert np.abs(host(out.attentions[1])[1, :, :, 5:]).max() == 0.0      # padded keys get no attention


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def small_model():
    return bn.BertForPreTraining(bn.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=12,
                                               max_position_embeddings=10))


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(input_ids=[[1, 30]]), ValueError, r"input_ids must lie in \[0, 30\)"),
    (dict(input_ids=[[1, -1]]), ValueError, "input_ids must lie"),
    (dict(input_ids=[[1.0, 2.0]]), TypeError, "input_ids must hold integers"),
    (dict(input_ids=[[1, 2], [3]]), ValueError, "input_ids must be a rectangular"),
    (dict(input_ids=np.zeros((0, 4), dtype=int)), ValueError, "input_ids is an empty batch"),
    (dict(input_ids=np.zeros((2, 0), dtype=int)), ValueError, "zero-length"),
    (dict(input_ids=[1, 2, 3]), ValueError, "input_ids must be 2-D"),
    (dict(input_ids=np.ones((1, 11), dtype=int)), ValueError, "max_position_embeddings"),
    (dict(input_ids=[[1, 2]], attention_mask=[[1, 1, 1]]), ValueError, "attention_mask has shape"),
    (dict(input_ids=[[1, 2]], attention_mask=[[1, 2]]), ValueError, "attention_mask must lie"),
    (dict(input_ids=[[1, 2]], token_type_ids=[[0, 2]]), ValueError, "token_type_ids must lie"),
    (dict(input_ids=[[1, 2]], token_type_ids=[[0]]), ValueError, "token_type_ids has shape"),
    (dict(input_ids=[[1, 2]], labels=[[-100, 30]]), ValueError, "labels must lie"),
    (dict(input_ids=[[1, 2]], labels=[[-1, 3]]), ValueError, "labels must lie"),
    (dict(input_ids=[[1, 2]], labels=[[3]]), ValueError, "labels has shape"),
    (dict(input_ids=[[1, 2]], next_sentence_label=[2]), ValueError, "next_sentence_label must lie"),
    (dict(input_ids=[[1, 2]], next_sentence_label=[0, 1]), ValueError, "next_sentence_label has shape"),
    (dict(input_ids="hello"), TypeError, "input_ids must be an array of integers"),
    (dict(input_ids=[[True, False]]), TypeError, "input_ids must hold integers"),
    (dict(input_ids=[[1, 2], [3, 4]], attention_mask=[[1, 1], [1]]), ValueError, "attention_mask must be a rectangular"),
    (dict(input_ids=[[1, 2]], attention_mask=[[1, -1]]), ValueError, "attention_mask must lie"),
    (dict(input_ids=[[1, 2]], attention_mask=[[1.0, 0.5]]), TypeError, "attention_mask must hold integers"),
    (dict(input_ids=[[1, 2]], token_type_ids=[[0, -1]]), ValueError, "token_type_ids must lie"),
    (dict(input_ids=[[1, 2]], token_type_ids=[[0.0, 1.0]]), TypeError, "token_type_ids must hold integers"),
    (dict(input_ids=[[1, 2]], labels=[[0.0, 3.0]]), TypeError, "labels must hold integers"),
    (dict(input_ids=[[1, 2]], next_sentence_label=[-1]), ValueError, "next_sentence_label must lie"),
    (dict(input_ids=[[1, 2]], next_sentence_label=[-100]), ValueError, "next_sentence_label must lie"),
    (dict(input_ids=[[1, 2]], next_sentence_label=[0.0]), TypeError, "next_sentence_label must hold integers"),
])
def test_bad_model_input(small_model, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        small_model(**kwargs)


@pytest.mark.parametrize("cls", ["BertModel", "BertForSequenceClassification"])
@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(input_ids=[[1, 30]]), ValueError, r"input_ids must lie in \[0, 30\)"),
    (dict(input_ids=np.ones((1, 11), dtype=int)), ValueError, "max_position_embeddings"),
    (dict(input_ids=np.zeros((0, 4), dtype=int)), ValueError, "input_ids is an empty batch"),
    (dict(input_ids=[[1, 2]], attention_mask=[[1, 1, 1]]), ValueError, "attention_mask has shape"),
    (dict(input_ids=[[1, 2]], token_type_ids=[[0, 2]]), ValueError, "token_type_ids must lie"),
])
def test_bad_input_to_the_other_models(cls, kwargs, error, pattern):
    cfg = bn.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=10)
    with pytest.raises(error, match=pattern):
        getattr(bn, cls)(cfg)(**kwargs)


@pytest.mark.parametrize("labels, error, pattern", [
    ([3], ValueError, r"labels must lie in \[0, 3\)"),
    ([-1], ValueError, "labels must lie"),
    ([0, 1], ValueError, "labels has shape"),
    ([[0]], ValueError, "labels must be 1-D"),
    ([0.0], TypeError, "labels must hold integers"),
])
def test_bad_classification_labels(labels, error, pattern):
    cfg = bn.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=10)
    with pytest.raises(error, match=pattern):
        bn.BertForSequenceClassification(cfg, num_labels=3)(input_ids=[[1, 2]], labels=labels)


def test_bad_state_dicts(small_model):
    sd = {k: v.copy() for k, v in small_model.state_dict().items()}
    before = {k: host(v).copy() for k, v in sd.items()}
    missing = dict(sd)
    del missing["bert.pooler.dense.weight"]
    with pytest.raises(ValueError, match="missing keys: bert.pooler.dense.weight"):
        small_model.load_state_dict(missing)
    extra = dict(sd, **{"bert.encoder.layer.7.output.dense.weight": np.zeros((8, 12))})
    with pytest.raises(ValueError, match="unexpected keys: bert.encoder.layer.7"):
        small_model.load_state_dict(extra)
    # every other tensor changed too: a load that fails on one tensor must not have copied the rest
    wrong = {k: v + 1.0 for k, v in sd.items()}
    wrong["bert.pooler.dense.weight"] = np.zeros((8, 9))
    with pytest.raises(ValueError, match=r"bert.pooler.dense.weight.*\(8, 9\)"):
        small_model.load_state_dict(wrong)
    nan = dict(sd, **{"cls.predictions.bias": np.full(30, np.nan)})
    with pytest.raises(ValueError, match="cls.predictions.bias.*NaN"):
        small_model.load_state_dict(nan)
    ints = dict(sd, **{"cls.predictions.bias": np.zeros(30, dtype=np.int64)})
    with pytest.raises(TypeError, match="cls.predictions.bias"):
        small_model.load_state_dict(ints)
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        small_model.load_state_dict([("bert.pooler.dense.bias", np.zeros(8))])
    after = small_model.state_dict()
    assert all(np.array_equal(before[k], host(after[k])) for k in before)     # failed loads changed nothing
    report = small_model.load_state_dict(missing, strict=False)          # non-strict: reported, not raised
    assert report["missing_keys"] == ["bert.pooler.dense.weight"]


def test_config_validation_and_presets(tmp_path):
    with pytest.raises(ValueError, match="divisible by num_attention_heads"):
        bn.BertConfig(hidden_size=10, num_attention_heads=3)
    with pytest.raises(ValueError, match="vocab_size must be positive"):
        bn.BertConfig(vocab_size=0)
    with pytest.raises(ValueError, match="hidden_dropout_prob"):
        bn.BertConfig(hidden_dropout_prob=1.0)
    with pytest.raises(ValueError, match="hidden_act"):
        bn.BertConfig(hidden_act="swish")
    with pytest.raises(ValueError, match="unknown preset"):
        bn.BertConfig.preset("huge")
    with pytest.raises(ValueError, match="num_hidden_layers must be positive"):
        bn.BertConfig(num_hidden_layers=-1)
    with pytest.raises(ValueError, match="attention_probs_dropout_prob"):
        bn.BertConfig(attention_probs_dropout_prob=-0.1)
    with pytest.raises(ValueError, match="layer_norm_eps"):
        bn.BertConfig(layer_norm_eps=0.0)
    with pytest.raises(TypeError, match="hidden_size must be an integer"):
        bn.BertConfig(hidden_size="768")
    with pytest.raises(ValueError, match="pad_token_id"):
        bn.BertConfig(vocab_size=10, pad_token_id=10)
    assert bn.BertConfig.preset("mini", vocab_size=8000).vocab_size == 8000   # overrides win
    sizes = {name: bn.BertConfig.preset(name) for name in ("tiny", "mini", "small", "medium", "base")}
    assert [(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size)
            for c in sizes.values()] == [(2, 128, 2, 512), (4, 256, 4, 1024), (4, 512, 8, 2048),
                                         (8, 512, 8, 2048), (12, 768, 12, 3072)]
    path = sizes["mini"].to_json_file(tmp_path / "config.json")
    assert bn.BertConfig.from_json_file(path) == sizes["mini"]
    data = json.loads(path.read_text())
    data["some_future_key"] = 1
    path.write_text(json.dumps(data))
    assert bn.BertConfig.from_json_file(path).hidden_size == 256         # unknown keys ignored
    path.write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        bn.BertConfig.from_json_file(path)
