"""BertForPreTraining.skip_unscored_rows: the last layer's dense sublayers only at the rows the heads
read (the labelled positions and each [CLS]) -- the same losses, logits and gradients as the whole
layer, with dropout on, padding, through the core shares and the Trainer."""
import numpy as np
import pytest

import bertnp as bn
from bertnp.cores import CoreReplicas
from conftest import host, on_numpy

IGNORE = -100


def tiny_config(**overrides):
    settings = dict(vocab_size=70, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=40, max_position_embeddings=16, hidden_dropout_prob=0.1,
                    attention_probs_dropout_prob=0.1)
    settings.update(overrides)
    return bn.BertConfig(**settings)


def make_batch(rows: int = 4, seq_len: int = 12, vocab: int = 70, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(rows, seq_len))
    mask = np.ones((rows, seq_len), dtype=np.int64)
    mask[1, -4:] = 0                                             # padding
    labels = np.full((rows, seq_len), IGNORE)
    picked = rng.random((rows, seq_len)) < 0.25
    picked[:, 0] = False
    picked[0, 3] = True
    labels[picked] = ids[picked]
    types = np.zeros((rows, seq_len), dtype=np.int64)
    types[:, seq_len // 2:] = 1
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels,
                next_sentence_label=rng.integers(0, 2, size=rows))


def step(model, batch, **counts):
    out = model(**batch, **counts)
    grads = {name: host(g).copy() for name, g in model.backward().items()}
    return out, grads


def worst_gradient(grads, expected) -> tuple:
    """(largest relative difference, its tensor). Relative to the tensor's largest entry, at least
    1e-3: the attention key biases' true gradient is exactly 0 (softmax ignores a shift shared by a
    query's scores), so theirs are rounding noise (~1e-17), which only an absolute floor can judge."""
    return max((float(np.abs(grads[n] - expected[n]).max() / max(float(np.abs(expected[n]).max()), 1e-3)), n)
               for n in expected)


def both_ways(batch, dtype: str, seed: int) -> list:
    """[(output, gradients)] of a training step with the whole last layer, then skipping."""
    results = []
    for skip in (False, True):
        model = bn.BertForPreTraining(tiny_config(), seed=seed, dtype=dtype).train()
        model.skip_unscored_rows = skip
        results.append(step(model, batch))
    return results


def assert_same(a, b, rtol):
    (out_a, grads_a), (out_b, grads_b) = a, b
    for field in ("loss", "mlm_loss", "nsp_loss", "prediction_logits", "seq_relationship_logits", "pooler_output"):
        if getattr(out_a, field) is None:
            assert getattr(out_b, field) is None, field
            continue
        np.testing.assert_allclose(host(getattr(out_b, field)), host(getattr(out_a, field)), rtol=rtol, atol=0,
                                   err_msg=field)
    worst = worst_gradient(grads_b, grads_a)
    assert worst[0] <= rtol, f"largest relative gradient difference {worst[0]:.2e} in {worst[1]}"


@pytest.mark.parametrize("labels", ["mlm+nsp", "mlm only"])
def test_skipping_the_unscored_rows_changes_no_loss_and_no_gradient(labels):
    """float64, dropout on, a padded row: every loss, logit and gradient as with the whole last layer."""
    batch = make_batch()
    if labels == "mlm only":
        del batch["next_sentence_label"]
    results = both_ways(batch, "float64", seed=3)
    assert_same(*results, rtol=1e-12)
    assert results[0][0].last_hidden_state is not None and results[1][0].last_hidden_state is None


def test_it_does_skip_the_work():
    """The last layer's three dense sublayers see only the scored rows (labelled + [CLS])."""
    import bertnp.model as model_module
    batch = make_batch()
    scored = int((batch["labels"] != IGNORE).sum()) + len(batch["input_ids"])
    seen = []
    original = model_module.linear_rows_forward

    def spy(x, weight, bias, rows):
        seen.append(len(rows))
        return original(x, weight, bias, rows)

    model = bn.BertForPreTraining(tiny_config(), seed=3, dtype="float64").train()
    model.skip_unscored_rows = True
    model_module.linear_rows_forward = spy
    try:
        model(**batch)
    finally:
        model_module.linear_rows_forward = original
    assert seen == [scored] * 3
    assert scored < batch["input_ids"].size


def test_without_labels_every_row_is_computed():
    """No labels: the MLM head reads every position, so nothing is skipped and last_hidden_state is there."""
    batch = make_batch()
    del batch["labels"]
    outs = []
    for skip in (False, True):
        model = bn.BertForPreTraining(tiny_config(), seed=3, dtype="float64").eval()
        model.skip_unscored_rows = skip
        outs.append(model(**batch))
    np.testing.assert_array_equal(host(outs[1].last_hidden_state), host(outs[0].last_hidden_state))
    np.testing.assert_array_equal(host(outs[1].prediction_logits), host(outs[0].prediction_logits))


def test_core_shares_with_skipping_equal_one_model_without():
    """Three core shares, each skipping its own unscored rows, add up to one model's whole-layer step."""
    batch = make_batch(rows=5)
    counts = {"mlm_denominator": int((batch["labels"] != IGNORE).sum()), "nsp_denominator": 5}
    with on_numpy():
        whole = bn.BertForPreTraining(tiny_config(), seed=4, dtype="float64").train()
        expected = step(whole, batch)
        shared = bn.BertForPreTraining(tiny_config(), seed=4, dtype="float64").train()
        shared.skip_unscored_rows = True

        def forward_backward(member, share):
            out = member(**share, **counts)
            member.backward()
            return out

        outs = CoreReplicas(shared, count=3).run(batch, forward_backward)
        loss = sum(float(host(o.loss)) for o in outs)
        grads = {name: host(g) for name, g in shared.grads.items()}
    assert loss == pytest.approx(float(host(expected[0].loss)), rel=1e-12)
    worst = worst_gradient(grads, expected[1])
    assert worst[0] <= 1e-12, worst


def test_float32_skipping_stays_within_rounding():
    assert_same(*both_ways(make_batch(seed=1), "float32", seed=5), rtol=2e-5)


def test_the_pretraining_trainer_skips_and_a_new_model_does_not(tmp_path):
    from tiny_world import make_world, quiet, tiny_config as run_config
    from bertnp.train import Trainer
    assert bn.BertForPreTraining(tiny_config()).skip_unscored_rows is False      # as Hugging Face: every row
    world = make_world(tmp_path / "world")
    trainer = Trainer(run_config(world, tmp_path / "run", steps=1), log=quiet)
    assert trainer.model.skip_unscored_rows is True


@pytest.mark.parametrize("turned", ["on", "off"])
def test_core_shares_follow_the_switch_turned_after_their_first_run(turned):
    """The core replicas are made at the first run: turning skip_unscored_rows on or off afterwards
    must reach every share, not only the model's own (the rows skipped, last_hidden_state there or not)."""
    batch = make_batch(rows=4)
    with on_numpy():
        model = bn.BertForPreTraining(tiny_config(), seed=4, dtype="float64").train()
        model.skip_unscored_rows = turned == "off"
        cores = CoreReplicas(model, count=2)

        def forward_backward(member, share):
            out = member(**share, mlm_denominator=int((batch["labels"] != IGNORE).sum()), nsp_denominator=4)
            member.backward()
            return out

        cores.run(batch, forward_backward)                     # the replica is made here
        model.skip_unscored_rows = turned == "on"
        outs = cores.run(batch, forward_backward)
    assert len(outs) == 2
    hidden = ["computed" if out.last_hidden_state is not None else "skipped" for out in outs]
    assert hidden == ["skipped" if turned == "on" else "computed"] * 2, hidden


def test_linear_rows_names_a_weight_that_does_not_fit_x_by_x_own_shape():
    """A weight of the wrong in_features: the message gives x's shape as the caller passed it,
    not the shape of the gathered rows."""
    from bertnp.ops.linear import linear_rows_forward
    x, weight = np.ones((2, 4, 5)), np.ones((3, 4))
    with pytest.raises(ValueError, match=r"x has shape \(2, 4, 5\).*weight.*\(3, 4\)"):
        linear_rows_forward(x, weight, None, np.array([0, 3]))


def test_trainer_with_gradient_accumulation_trains_the_same_weights_skipping_or_not(tmp_path):
    """Four float64 updates of three micro-batches each, every micro-batch in two core shares,
    with dropout and evaluation: skipping the unscored rows ends at the same weights."""
    from tiny_world import make_world, quiet, tiny_config as run_config
    from bertnp import parallel
    from bertnp.train import Trainer
    world = make_world(tmp_path / "world")
    weights, before = {}, parallel.num_threads()
    parallel.set_num_threads(2)                                   # two core shares, a replica for the second
    try:
        for skip in (False, True):
            config = run_config(world, tmp_path / f"run_{skip}", steps=4, grad_accum=3, dtype="float64",
                                eval_every=2, checkpoint_every=100, plot=False)
            trainer = Trainer(config, log=quiet)
            trainer.model.skip_unscored_rows = skip
            trainer.train()
            weights[skip] = {name: host(p).copy() for name, p in trainer.model.parameters().items()}
    finally:
        parallel.set_num_threads(before)
    worst = max((float(np.abs(weights[True][n] - weights[False][n]).max() / np.abs(weights[False][n]).max()), n)
                for n in weights[False])
    assert worst[0] <= 1e-12, worst

# ----------------------------------------------------------------------------- the classifier: [CLS] only

@pytest.mark.parametrize("num_labels", [3, 1], ids=["classes", "regression"])
def test_the_classifier_skipping_all_but_cls_changes_no_logit_loss_or_gradient(num_labels):
    """Fine-tuning reads the pooled [CLS] vector only: the last layer's dense sublayers at B rows of B*T."""
    batch = make_batch(seed=2)
    labels = np.array([0, 2, 1, 2]) if num_labels > 1 else np.array([0.5, -1.0, 2.0, 0.0])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    results = []
    for skip in (False, True):
        model = bn.BertForSequenceClassification(tiny_config(), num_labels=num_labels, seed=6, dtype="float64").train()
        model.skip_unscored_rows = skip
        out = model(**inputs, labels=labels)
        results.append((out, {name: host(g).copy() for name, g in model.backward().items()}))
    (whole, whole_grads), (skipped, skipped_grads) = results
    np.testing.assert_allclose(host(skipped.logits), host(whole.logits), rtol=1e-12, atol=0)
    assert float(host(skipped.loss)) == pytest.approx(float(host(whole.loss)), rel=1e-12)
    worst = worst_gradient(skipped_grads, whole_grads)
    assert worst[0] <= 1e-12, worst
    assert whole.last_hidden_state is not None and skipped.last_hidden_state is None


def test_finetuning_skips_and_a_new_classifier_does_not(tmp_path):
    from bertnp.finetune import FinetuneConfig, Finetuner
    assert bn.BertForSequenceClassification(tiny_config()).skip_unscored_rows is False
    data = tmp_path / "train.tsv"
    data.write_text("".join(f"{'good fine nice' if i % 2 else 'bad poor awful'} words {i}\t{i % 2}\n"
                            for i in range(12)), encoding="utf-8")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "fine", "nice", "bad",
                                "poor", "awful", "words"] + [str(i) for i in range(12)]) + "\n", encoding="utf-8")
    config = FinetuneConfig(train=str(data), dev=None, dev_fraction=0.25, init="scratch", vocab=str(vocab),
                            preset="tiny", steps=1, out_dir=str(tmp_path / "run"), progress=False)
    tuner = Finetuner(config, log=lambda *_: None)
    assert tuner.model.skip_unscored_rows is True
