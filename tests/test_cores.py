"""bertnp.cores: a batch's rows shared out over the cores, one model replica each, adds up to the
whole batch's step -- the same losses, the same dropout masks, the same gradients (to rounding)."""
import numpy as np
import pytest

import bertnp as bn
from bertnp import parallel
from bertnp.cores import CoreReplicas
from bertnp.ops.dropout import dropout_forward
from bertnp.train import Trainer
from conftest import host, on_numpy
from tiny_world import make_world, quiet, tiny_config as run_config

IGNORE = -100


@pytest.fixture(autouse=True)
def _numpy_backend():
    """Shares are a CPU thing: on another array module CoreReplicas runs the whole batch once."""
    with on_numpy():
        yield


def tiny_config(**overrides):
    settings = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.1,
                    attention_probs_dropout_prob=0.1)
    settings.update(overrides)
    return bn.BertConfig(**settings)


def make_batch(rows: int, seq_len: int = 8, vocab: int = 60, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(rows, seq_len))
    mask = np.ones((rows, seq_len), dtype=np.int64)
    mask[1, -3:] = 0                                            # some padding
    labels = np.full((rows, seq_len), IGNORE)
    picked = rng.random((rows, seq_len)) < 0.3
    picked[:, 0] = False
    picked[0, 2] = True                                         # at least one labelled token
    labels[picked] = rng.integers(5, vocab, size=picked.sum())
    labels[1, -3:] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
            "labels": labels, "next_sentence_label": rng.integers(0, 2, size=rows)}


def whole_step(model, batch):
    model.zero_grad()
    out = model(**batch)
    model.backward()
    return out


def shared_step(replicas, batch):
    """What the training loop does: every share's losses over the whole batch's counts."""
    counts = {"mlm_denominator": int((batch["labels"] != IGNORE).sum()),
              "nsp_denominator": len(batch["input_ids"])}

    def forward_backward(model, share):
        out = model(**share, **counts)
        model.backward()
        return out

    replicas.model.zero_grad()
    return replicas.run(batch, forward_backward)


@pytest.mark.parametrize("rows, count", [(6, 2), (7, 3), (5, 5)])
def test_the_shares_add_up_to_the_whole_batch(rows, count):
    """float64: losses and every gradient equal the whole batch's, dropout on, to 1e-12 -- which
    fails if a share's dropout mask were not the whole batch's rows, if a loss were divided by the
    share's own counts, or if a replica's gradients were lost or added twice."""
    config, batch = tiny_config(), make_batch(rows)
    whole = bn.BertForPreTraining(config, seed=3, dtype="float64").train()
    shared = bn.BertForPreTraining(config, seed=3, dtype="float64").train()
    replicas = CoreReplicas(shared, count=count)
    want = whole_step(whole, batch)
    outs = shared_step(replicas, batch)
    assert len(outs) == count
    assert [o.seq_relationship_logits.shape[0] for o in outs] == [s.stop - s.start for s in replicas.shares(rows)]
    np.testing.assert_allclose(sum(o.loss for o in outs), want.loss, rtol=1e-12)
    np.testing.assert_allclose(sum(o.mlm_loss for o in outs), want.mlm_loss, rtol=1e-12)
    for name, grad in whole.grads.items():
        np.testing.assert_allclose(shared.grads[name], grad, rtol=1e-10, atol=1e-13, err_msg=name)
    assert shared.forward_count == whole.forward_count == 1        # one forward of the batch, as one model
    assert shared.dropout_row == 0


def test_a_second_step_starts_from_zero_replica_gradients():
    """The replicas' buffers are zeroed each run: two steps on the same weights give the same gradients."""
    config, batch = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), make_batch(6)
    model = bn.BertForPreTraining(config, seed=1, dtype="float64").train()
    replicas = CoreReplicas(model, count=2)
    shared_step(replicas, batch)
    first = {k: v.copy() for k, v in model.grads.items()}
    shared_step(replicas, batch)
    for name, grad in first.items():
        np.testing.assert_array_equal(model.grads[name], grad, err_msg=name)


def test_a_failed_run_leaves_nothing_behind_for_the_next():
    """A share that fails after its backward: the error reaches the caller, and the next run's
    gradients are still exactly the whole batch's (the replica's leftovers are cleared)."""
    config, batch = tiny_config(), make_batch(6)
    whole = bn.BertForPreTraining(config, seed=4, dtype="float64").train()
    whole_step(whole, batch)
    model = bn.BertForPreTraining(config, seed=4, dtype="float64").train()
    replicas = CoreReplicas(model, count=2)

    def fails_on_a_replica(member, share):
        member(**share)
        member.backward()
        if member is not model:
            raise RuntimeError("share failed")

    with pytest.raises(RuntimeError, match="share failed"):
        replicas.run(batch, fails_on_a_replica)
    model.forward_count = 0
    shared_step(replicas, batch)
    for name, grad in whole.grads.items():
        np.testing.assert_allclose(model.grads[name], grad, rtol=1e-10, atol=1e-13, err_msg=name)


def test_float32_shares_match_the_whole_batch_and_repeat_bit_for_bit():
    config, batch = tiny_config(), make_batch(8)
    whole = bn.BertForPreTraining(config, seed=2, dtype="float32").train()
    whole_step(whole, batch)
    runs = []
    for _ in range(2):
        model = bn.BertForPreTraining(config, seed=2, dtype="float32").train()
        with parallel.threads(2):                              # count None: one share per thread
            shared_step(CoreReplicas(model), batch)
        runs.append(model.grads)
    for name, grad in whole.grads.items():
        np.testing.assert_allclose(runs[0][name], grad, rtol=2e-4, atol=2e-6, err_msg=name)
        np.testing.assert_array_equal(runs[1][name], runs[0][name], err_msg=name)


def test_one_thread_runs_the_whole_batch_on_the_model_itself():
    model = bn.BertForPreTraining(tiny_config(), seed=0, dtype="float64")
    seen = []
    with parallel.threads(1):
        CoreReplicas(model).run(make_batch(4), lambda m, share: seen.append((m, len(share["input_ids"]))))
    assert seen == [(model, 4)]
    assert CoreReplicas(model, count=4).shares(3) == [slice(0, 1), slice(1, 2), slice(2, 3)]   # at most one a row


def test_a_share_draws_the_whole_batchs_dropout_mask_for_its_rows():
    x = np.random.default_rng(0).standard_normal((5, 3, 7)).astype(np.float32)   # 21 a row: not a multiple of 16
    whole, _ = dropout_forward(x, 0.3, (4, 2, 1))
    for first in (1, 3):
        part, _ = dropout_forward(x[first:], 0.3, (4, 2, 1, first))
        np.testing.assert_array_equal(part, whole[first:])


@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_a_bad_count_is_refused(count):
    model = bn.BertForPreTraining(tiny_config(), seed=0, dtype="float64")
    with pytest.raises(ValueError, match="count"):
        CoreReplicas(model, count=count)


def test_a_batch_that_is_not_a_dict_of_arrays_with_equal_rows_is_refused():
    model = bn.BertForPreTraining(tiny_config(), seed=0, dtype="float64")
    with pytest.raises(TypeError, match="batch"):
        CoreReplicas(model, count=2).run([1, 2], lambda m, share: None)
    batch = make_batch(4)
    batch["labels"] = batch["labels"][:3]
    with pytest.raises(ValueError, match="labels"):
        CoreReplicas(model, count=2).run(batch, lambda m, share: None)


def test_the_training_loop_on_two_cores_follows_one_thread_and_resumes_exactly(tmp_path):
    """Trainer on two threads shares each micro-batch's rows out (dropout on, gradient accumulation,
    float64): its weights after 6 steps are the one-thread run's to rounding, and 3 steps + resume +
    3 steps give the 6-step run's weights bit for bit."""
    world = make_world(tmp_path / "world")
    options = dict(dtype="float64", steps=6, grad_accum=2, checkpoint_every=3, eval_every=3)
    weights = {}
    for threads in (1, 2):
        with parallel.threads(threads):
            trainer = Trainer(run_config(world, tmp_path / f"threads{threads}", **options), log=quiet)
            trainer.train()
        weights[threads] = {k: host(p) for k, p in trainer.model.parameters().items()}
    assert len(trainer.cores._replicas) == 1                          # two threads: two shares
    for name, value in weights[1].items():
        np.testing.assert_allclose(weights[2][name], value, rtol=1e-9, atol=1e-12, err_msg=name)
    with parallel.threads(2):
        Trainer(run_config(world, tmp_path / "resumed", **options), log=quiet).train(stop_at=3)
        resumed = Trainer(run_config(world, tmp_path / "resumed", resume=True, **options), log=quiet)
        resumed.train()
    for name, p in resumed.model.parameters().items():
        np.testing.assert_array_equal(host(p), weights[2][name], err_msg=name)


def test_every_share_follows_the_callers_numpy_error_handling():
    """The training loop silences NumPy's overflow warnings around a step (a non-finite loss is
    reported later, once); a share run on a pool thread must be silenced too."""
    import threading
    import warnings
    model = bn.BertForPreTraining(tiny_config(), seed=0, dtype="float64")
    both_running = threading.Barrier(2, timeout=30)      # so that one share runs on the pool's thread

    def overflows(member, share):
        both_running.wait()
        return np.exp(np.full(3, 1000.0)), threading.current_thread()   # inf: a warning unless silenced

    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # a warning in any thread raises there
        with np.errstate(over="ignore"), parallel.threads(2):
            results = CoreReplicas(model, count=2).run(make_batch(4), overflows)
    assert all(np.isinf(values).all() for values, _ in results)
    assert len({thread for _, thread in results}) == 2


def test_an_evaluation_in_shares_equals_the_whole_batches_and_touches_no_gradient():
    """evaluate_model with the cores: the same losses and accuracies as the batches whole (float64),
    and a forward-only run neither adds to the model's gradients nor leaves any in a replica."""
    from bertnp.train import evaluate_model
    batches = [make_batch(5, seed=1), make_batch(4, seed=2), make_batch(2, seed=3)]
    model = bn.BertForPreTraining(tiny_config(), seed=7, dtype="float64")
    model.skip_unscored_rows = True
    whole_step(model, batches[0])                     # gradients the evaluation must leave alone
    before = {name: g.copy() for name, g in model.grads.items()}
    replicas = CoreReplicas(model, count=3)
    expected = evaluate_model(model, batches)
    shared = evaluate_model(model, batches, replicas)
    for key, value in expected.items():
        assert shared[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert len(replicas._replicas) == 2                # the batches did run as three shares
    assert model.training                              # back in training mode, as it was
    for name, grad in model.grads.items():
        np.testing.assert_array_equal(grad, before[name], err_msg=name)
    for replica in replicas._replicas:
        assert all(not np.any(g) for g in replica.grads.values())
