"""The training loop: parity with PyTorch's trajectory, overfitting one batch, exact resume, atomic
checkpoints, the NaN guard, metrics/figure/final model. Tiny models and a tiny corpus: fast."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bertnp import checkpoint
from bertnp.config import BertConfig
from bertnp.model import BertForPreTraining
from bertnp.optim import AdamW, LinearWarmupDecay, clip_grad_norm
from bertnp.inference import fill_mask, next_sentence_probability
from bertnp.train import NonFiniteLossError, Trainer, latest_checkpoint
from conftest import host
from tiny_world import make_world, quiet, tiny_config

FIXTURE = Path(__file__).resolve().parent / "reference" / "adamw_trajectory_f64.npz"



# ----------------------------------------------------------------------------- a tiny world

@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A 14-document corpus in BERT's format, its vocab.txt and a tiny model config.json."""
    return make_world(tmp_path_factory.mktemp("world"))


# ----------------------------------------------------------------------------- parity with PyTorch

def test_trajectory_matches_torch_adamw_fixture():
    """12 steps of bn.AdamW + schedule + clipping on the fixture's float64 model (dropout off)
    follow torch.optim.AdamW on HF's BertForPreTraining: losses <= 1e-8 relative, same weights."""
    ref = np.load(FIXTURE)
    cfg = BertConfig.from_dict(json.loads(str(ref["config_json"])))
    names = [k[len("param/"):] for k in ref.files if k.startswith("param/")]
    model = BertForPreTraining(cfg, dtype="float64").eval()
    model.load_state_dict({n: ref[f"param/{n}"] for n in names})
    schedule = json.loads(str(ref["schedule_json"]))
    opt = AdamW(model, lr=schedule["lr"], betas=tuple(schedule["betas"]), eps=schedule["eps"],
                weight_decay=schedule["weight_decay"])
    sched = LinearWarmupDecay(opt, schedule["warmup_steps"], schedule["total_steps"])
    batch = {k: ref[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label")}
    losses, norms, lrs = [], [], []
    for _ in range(schedule["total_steps"]):
        model.zero_grad()
        out = model(**batch)
        losses.append(float(out.loss))
        model.backward()
        norms.append(clip_grad_norm(model.grads, schedule["clip_grad_norm"]))
        lrs.append(opt.lr)
        opt.step()
        sched.step()
    final_loss = float(model(**batch).loss)

    rel = np.abs(np.array(losses) - ref["losses"]) / np.abs(ref["losses"])
    assert rel.max() <= 1e-8, rel.max()
    assert abs(final_loss - float(ref["final_loss"])) / float(ref["final_loss"]) <= 1e-8
    assert losses[1] == losses[0]                                  # the first update has lr 0
    np.testing.assert_allclose(norms, ref["grad_norms"], rtol=1e-8)
    np.testing.assert_allclose(lrs, ref["lrs"], rtol=1e-15)
    params = {n: host(p) for n, p in model.parameters().items()}
    opt_m, opt_v = ({n: host(a) for n, a in state.items()} for state in (opt.exp_avg, opt.exp_avg_sq))
    for n in names:   # weights ~0.02-1; moments: same state as torch's
        np.testing.assert_allclose(params[n], ref[f"final/{n}"], rtol=0, atol=1e-12, err_msg=n)
        np.testing.assert_allclose(opt_m[n], ref[f"exp_avg/{n}"], rtol=1e-6, atol=1e-14, err_msg=n)
        np.testing.assert_allclose(opt_v[n], ref[f"exp_avg_sq/{n}"], rtol=1e-6, atol=1e-18, err_msg=n)
    moved = max(float(np.abs(params[n] - ref[f"param/{n}"]).max()) for n in names)
    assert moved > 1e-3                                            # the comparison is not vacuous


# ----------------------------------------------------------------------------- overfit one batch

def test_tiny_model_memorises_one_batch():
    """A tiny model drives MLM accuracy on one fixed batch to ~1 (and NSP to 1) in a few hundred steps."""
    cfg = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(cfg, seed=0)
    rng = np.random.default_rng(0)
    B, T = 8, 16
    ids = rng.integers(5, 40, size=(B, T))
    labels = np.full((B, T), -100)
    for b in range(B):
        pos = rng.choice(np.arange(1, T), size=3, replace=False)
        labels[b, pos] = ids[b, pos]
        ids[b, pos] = 4                                            # [MASK]
    batch = dict(input_ids=ids, attention_mask=np.ones((B, T), dtype=np.int64),
                 token_type_ids=(np.arange(T) >= T // 2).astype(np.int64)[None].repeat(B, 0),
                 labels=labels, next_sentence_label=rng.integers(0, 2, size=B))
    opt = AdamW(model, lr=3e-3, weight_decay=0.0)
    sched = LinearWarmupDecay(opt, warmup_steps=20, total_steps=10_000)
    first = None
    for step in range(400):
        model.zero_grad()
        out = model(**batch)
        first = float(out.loss) if first is None else first
        model.backward()
        clip_grad_norm(model.grads, 1.0)
        opt.step()
        sched.step()
        acc = float((host(out.prediction_logits).argmax(-1) == labels[labels != -100]).mean())
        if acc == 1.0 and step > 50:
            break
    nsp_acc = float((host(out.seq_relationship_logits).argmax(-1) == batch["next_sentence_label"]).mean())
    assert acc >= 0.95, (step, acc)
    assert nsp_acc == 1.0
    assert float(out.loss) < 0.2 * first


# ----------------------------------------------------------------------------- resume

def test_resume_is_bit_identical(tiny_world, tmp_path):
    """8 steps straight == 4 steps, a fresh process-like restart with --resume, 4 more (dropout on)."""
    straight = Trainer(tiny_config(tiny_world, tmp_path / "straight", dropout=0.1), log=quiet)
    straight.train()

    first = Trainer(tiny_config(tiny_world, tmp_path / "paused", dropout=0.1), log=quiet)
    summary = first.train(stop_at=4)
    assert summary["step"] == 4 and not summary["complete"] and "model_dir" not in summary
    del first
    resumed = Trainer(tiny_config(tiny_world, tmp_path / "paused", resume=True), log=quiet)
    assert resumed.step == 4 and resumed.model.forward_count > 0
    resumed.train()

    a, b = straight.model.parameters(), resumed.model.parameters()
    assert a.keys() == b.keys()
    for n in a:
        assert np.array_equal(a[n], b[n]), n
        assert np.array_equal(straight.optimizer.exp_avg_sq[n], resumed.optimizer.exp_avg_sq[n]), n
    assert straight.model.forward_count == resumed.model.forward_count
    assert straight.loader.state_dict() == resumed.loader.state_dict()

    def losses(run):
        recs = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(r["split"], r["step"], r["loss"]) for r in recs]
    assert losses("straight") == losses("paused")                   # the log is continued, not restarted


def test_resume_needs_a_checkpoint_and_fresh_runs_need_an_empty_folder(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(tiny_config(tiny_world, tmp_path / "none", resume=True), log=quiet)
    Trainer(tiny_config(tiny_world, tmp_path / "run", steps=2), log=quiet).train()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny_config(tiny_world, tmp_path / "run", steps=2), log=quiet)
    Trainer(tiny_config(tiny_world, tmp_path / "run", steps=2, overwrite=True), log=quiet)


# ----------------------------------------------------------------------------- atomic checkpoints

def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tiny_world, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", steps=8), log=quiet)
    trainer.train(stop_at=4)
    good = latest_checkpoint(tmp_path / "run")
    assert good.name == "step-000004"
    before = checkpoint.load_tensors(good / "model.safetensors")
    trainer.train_step()

    import safetensors.numpy as stnp
    real_save = stnp.save_file

    def crash_halfway(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])          # half the bytes are on disk...
        raise OSError("simulated crash: disk pulled out")          # ...when the process dies

    monkeypatch.setattr(stnp, "save_file", crash_halfway)
    with pytest.raises(OSError, match="simulated crash"):
        trainer.save_checkpoint()
    monkeypatch.undo()

    ckdir = tmp_path / "run" / "checkpoints"
    assert latest_checkpoint(tmp_path / "run") == good
    assert checkpoint.read_json(ckdir / "latest.json")["dir"] == "step-000004"
    assert not [p for p in ckdir.iterdir() if p.name.startswith(".")]        # no half-written leftovers
    after = checkpoint.load_tensors(good / "model.safetensors")
    assert all(np.array_equal(before[k], after[k]) for k in before)

    # a hard kill leaves a temporary folder behind: readers ignore it, and resume works
    (ckdir / ".step-000006.abc.tmp").mkdir()
    (ckdir / ".step-000006.abc.tmp" / "model.safetensors").write_bytes(b"\x00" * 10)
    resumed = Trainer(tiny_config(tiny_world, tmp_path / "run", resume=True), log=quiet)
    assert resumed.step == 4


def test_atomic_write_of_one_file_keeps_the_old_file(tmp_path):
    path = checkpoint.write_json(tmp_path / "state.json", {"step": 1})

    def half_then_crash(tmp):
        Path(tmp).write_text('{"step": 2, "trunc', encoding="utf-8")
        raise KeyboardInterrupt                                     # killed mid-write
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_write(path, half_then_crash)
    assert checkpoint.read_json(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# ----------------------------------------------------------------------------- NaN guard

def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_world, tmp_path):
    trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", steps=8), log=quiet)
    trainer.train(stop_at=4)
    good = latest_checkpoint(tmp_path / "run")
    name = "bert.encoder.layer.0.attention.output.dense.weight"
    trainer.model.parameters()[name][0, 0] = np.nan                  # something went badly wrong
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5.*step-000004"):
        trainer.train()
    # the loss is read on the host every log_every (2) steps, not each step (a GPU would stall):
    # step 5 is found bad when step 6 is read, and neither is saved
    assert trainer.step == 6
    with pytest.raises(NonFiniteLossError, match="step 5"):
        trainer.save_checkpoint()                                   # refused: the steps are still bad
    assert latest_checkpoint(tmp_path / "run") == good
    weights = checkpoint.load_tensors(good / "model.safetensors")
    assert all(np.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "run" / "model").exists()                # no "final" model from a broken run


# ----------------------------------------------------------------------------- outputs

def test_outputs_metrics_figure_and_hf_layout(tiny_world, tmp_path):
    summary = Trainer(tiny_config(tiny_world, tmp_path / "run"), log=quiet).train()
    out = tmp_path / "run"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["split"] == "train"]
    ev = [r for r in recs if r["split"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6, 8] and [r["step"] for r in ev] == [4, 8]
    for key in ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "grad_norm", "tokens_per_s"):
        assert math.isfinite(train[-1][key]), key
    assert 0 <= ev[-1]["mlm_acc"] <= 1 and 0 <= ev[-1]["baseline_mlm_acc"] <= 1
    pytest.importorskip("matplotlib")
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model_dir = Path(summary["model_dir"])
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in model_dir.iterdir()}
    assert len(list((out / "checkpoints").glob("step-*"))) == 2              # keep_checkpoints
    model = BertForPreTraining.from_pretrained(model_dir)
    ref = checkpoint.load_tensors(latest_checkpoint(out) / "model.safetensors")
    assert all(np.array_equal(model.parameters()[k], ref[k]) for k in ref)

    from bertnp.tokenizer import BertTokenizer
    tok = BertTokenizer.from_pretrained(model_dir)
    preds = fill_mask(model, tok, "The old [MASK] saw the river.", top_k=3)
    assert len(preds) == 3 and all(0 <= p["score"] <= 1 for p in preds)
    assert 0 <= next_sentence_probability(model, tok, "The king.", "The dog.") <= 1

    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    hf = transformers.BertForPreTraining.from_pretrained(str(model_dir)).eval()
    ids = np.array([[2, 10, 11, 4, 12, 3]])
    with torch.no_grad():
        hf_out = hf(input_ids=torch.from_numpy(ids))
    ours = model(input_ids=ids)
    np.testing.assert_allclose(ours.prediction_logits, hf_out.prediction_logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.seq_relationship_logits, hf_out.seq_relationship_logits.numpy(),
                               rtol=1e-4, atol=1e-4)


def test_time_budget_sets_the_number_of_steps(tiny_world, tmp_path):
    trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", steps=None, time_budget=1.0), log=quiet)
    assert trainer.config.steps >= 1
    assert trainer.model.forward_count == 0 and trainer.loader.state_dict()["index"] == 0   # probe undone
    assert not any(g.any() for g in trainer.model.grads.values())
    saved = checkpoint.read_json(tmp_path / "run" / "run.json")
    assert saved["steps"] == trainer.config.steps                  # resume uses the same schedule


@pytest.mark.parametrize("kw, match", [
    (dict(steps=None), "steps or time_budget"), (dict(batch_size=0), "batch_size"),
    (dict(lr=-1.0), "lr"), (dict(max_seq_length=4), "max_seq_length"), (dict(dropout=1.0), "dropout"),
    (dict(max_seq_length=64), "max_position_embeddings"),
])
def test_bad_options(tiny_world, tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        Trainer(tiny_config(tiny_world, tmp_path / "run", **kw), log=quiet)


def test_missing_corpus_is_named(tiny_world, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        Trainer(tiny_config(tiny_world, tmp_path / "run", corpus=[str(tmp_path / "nope.txt")]), log=quiet)


def test_time_budget_is_a_hard_limit_on_a_busy_machine(tiny_world, tmp_path):
    """If the steps estimated from the budget take far longer (a busy machine), the run stops at
    1.25 x the budget, with a checkpoint and a final model, and says so."""
    notes = []
    trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", steps=50, time_budget=1e-4), log=notes.append)
    summary = trainer.train()
    assert summary["truncated"] and summary["step"] < 50
    assert any("exceeded" in n for n in notes)
    assert latest_checkpoint(tmp_path / "run").name == f"step-{summary['step']:06d}"
    assert (Path(summary["model_dir"]) / "model.safetensors").is_file()


def test_time_budget_run_retunes_its_length_from_the_measured_speed(tiny_world, tmp_path):
    trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", steps=None, time_budget=10.0, warmup=0.1),
                      log=quiet)
    assert trainer.adaptive_steps
    trainer.config.steps = trainer.schedule.total_steps = 100       # as if the probe said 100 steps
    trainer.step = trainer.schedule.last_step = 10                  # 10% of the way...
    trainer._setup_time = 0.0
    trainer._budget_elapsed = lambda: 5.0                           # ...but half the budget is gone
    assert trainer._retune_steps()
    assert trainer.config.steps == trainer.schedule.total_steps == 10 + int(5.0 / (0.5 * 1.02))
    assert checkpoint.read_json(tmp_path / "run" / "run.json")["steps"] == trainer.config.steps
    assert trainer.optimizer.lr == trainer.schedule.lr_at(10)
    trainer.step = trainer.schedule.last_step = 11
    assert not trainer._retune_steps()                              # only at 10%, 25%, 50%, 75%, 90%


def test_time_budget_run_keeps_reserve_steps_for_after_training(tiny_world, tmp_path):
    """reserve_steps: time for the caller's work after training (bertnp demo's whole held-out
    evaluation), counted in steps at the measured speed, so a slower machine keeps more seconds."""
    trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", steps=None, time_budget=10.0, reserve_steps=10.0),
                      log=quiet)
    trainer.config.steps = trainer.schedule.total_steps = 100       # as if the probe said 100 steps
    trainer.step = trainer.schedule.last_step = 75                  # 75% of the way...
    trainer._setup_time = 0.0
    trainer._budget_elapsed = lambda: 7.5                           # ...at 0.1 s a step
    per_step = 0.1 * 1.02
    assert trainer._retune_steps()
    assert trainer.config.steps == 75 + int((10.0 - 7.5 - 10.0 * per_step) / per_step)   # 10 steps kept
    # the first estimate keeps it too: a reserve longer than the budget leaves a single step
    short = Trainer(tiny_config(tiny_world, tmp_path / "short", steps=None, time_budget=10.0, reserve_steps=1e9),
                    log=quiet)
    assert short.config.steps == 1
    with pytest.raises(ValueError, match="reserve_steps"):
        Trainer(tiny_config(tiny_world, tmp_path / "bad", steps=None, time_budget=10.0, reserve_steps=-1), log=quiet)


# ----------------------------------------------------------------------------- the CuPy path, on a CPU

def test_training_steps_never_read_the_device_between_log_intervals(tiny_world, tmp_path, monkeypatch):
    """On CuPy every read of a device value on the host (float(loss), int(count), .get()) makes the
    host wait for the GPU. The whole loop -- steps, logging, evaluation, checkpoints, resume -- runs
    here on the strict stand-in for CuPy (tests/strict_xp.py), and a training step reads nothing:
    the values are read together, once per log interval (read_pending)."""
    from bertnp import backend
    from strict_xp import STRICT, HostReadWatch, StrictArray
    watch = HostReadWatch(monkeypatch)
    real_step, real_read = Trainer.train_step, Trainer.read_pending
    syncs = []

    def step_armed(self):
        watch.armed = True
        try:
            return real_step(self)
        finally:
            watch.armed = False

    def read_counted(self):
        if self._pending:
            syncs.append(self.step)
        return real_read(self)
    monkeypatch.setattr(Trainer, "train_step", step_armed)
    monkeypatch.setattr(Trainer, "read_pending", read_counted)
    monkeypatch.setattr(backend, "set_backend", lambda name: None)    # stay on the stand-in

    with backend.using(STRICT, "strict"):
        options = dict(steps=12, log_every=4, eval_every=6, checkpoint_every=6)
        trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", **options), log=quiet)
        assert isinstance(trainer.model.parameters()["bert.pooler.dense.weight"], StrictArray)
        trainer.train(stop_at=6)
        resumed = Trainer(tiny_config(tiny_world, tmp_path / "run", resume=True, **options), log=quiet)
        summary = resumed.train()
        final = {k: p.get() for k, p in resumed.model.parameters().items()}
    assert not watch.reads, f"a training step read device values on the host: {watch.reads}"
    assert syncs == [4, 6, 8, 12], syncs             # log steps 4, 8, 12; the pause (and checkpoint) at 6
    assert summary["complete"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [4, 6, 8, 12]
    assert all(math.isfinite(r["loss"]) and 0 <= r["mlm_acc"] <= 1 for r in train_records)

    # plain NumPy, one thread: the whole batch at once, as the stand-in (a NumPy backend with several
    # threads shares the rows out over the cores, bertnp.cores: the same step up to rounding)
    from bertnp import parallel
    with parallel.threads(1):
        straight = Trainer(tiny_config(tiny_world, tmp_path / "numpy", **options), log=quiet)
        straight.train()
    for k, p in straight.model.parameters().items():
        np.testing.assert_array_equal(final[k], host(p), err_msg=k)   # the stand-in computes NumPy's numbers


# ----------------------------------------------------------------------------- BERT's two phases

def _shapes_seen(trainer) -> list:
    """Run ``trainer`` to the end and return each update's input shape, in order."""
    seen, draw = [], trainer._next_update

    def recording():
        batches = draw()
        seen.append(batches[0]["input_ids"].shape)
        return batches
    trainer._next_update = recording
    trainer.train()
    return seen


def test_phase1_trains_the_first_steps_on_short_sequences(tiny_world, tmp_path):
    """phase1_fraction 0.5 of 8 steps: 4 updates of (4 x 24 / 12) x 12 tokens, then 4 of 4 x 24 --
    the same tokens a step, the batch scaled; the held-out evaluation stays at 24."""
    trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", phase1_seq_length=12, phase1_fraction=0.5),
                      log=quiet)
    assert trainer.phase1_end == 4
    assert _shapes_seen(trainer) == [(8, 12)] * 4 + [(4, 24)] * 4
    assert all(b["input_ids"].shape[1] == 24 for b in trainer.eval_batches)
    masked = [int((b["labels"] != -100).sum(axis=1).max()) for b in [trainer.phase1_loader.next_batch()]]
    assert masked[0] <= trainer.phase1_loader.dataset.max_predictions_per_seq <= 2   # 15% of 12 tokens


def test_phase1_resume_inside_phase1_is_bit_identical(tiny_world, tmp_path):
    """Stopped inside phase 1 and resumed: the short loader's position and the phase's end come
    back from the checkpoint, so the run is the uninterrupted one bit for bit."""
    kw = dict(phase1_seq_length=12, phase1_fraction=0.75)
    straight = Trainer(tiny_config(tiny_world, tmp_path / "straight", **kw), log=quiet)
    straight.train()
    first = Trainer(tiny_config(tiny_world, tmp_path / "paused", **kw), log=quiet)
    first.train(stop_at=4)
    resumed = Trainer(tiny_config(tiny_world, tmp_path / "paused", resume=True), log=quiet)
    assert resumed.step == 4 and resumed.phase1_end == 6
    assert resumed.phase1_loader.state_dict() == first.phase1_loader.state_dict()
    resumed.train()
    a, b = straight.model.parameters(), resumed.model.parameters()
    for n in a:
        assert np.array_equal(a[n], b[n]), n


def test_phase1_checkpoint_without_its_state_is_refused(tiny_world, tmp_path):
    first = Trainer(tiny_config(tiny_world, tmp_path / "run", phase1_seq_length=12, phase1_fraction=0.5), log=quiet)
    first.train(stop_at=4)
    state_file = latest_checkpoint(tmp_path / "run") / checkpoint.STATE_FILE
    state = json.loads(state_file.read_text())
    del state["phase1"]
    state_file.write_text(json.dumps(state))
    with pytest.raises(ValueError, match="phase1"):
        Trainer(tiny_config(tiny_world, tmp_path / "run", resume=True), log=quiet)


@pytest.mark.parametrize("kw, match", [
    (dict(phase1_seq_length=24, phase1_fraction=0.5), "phase1_seq_length"),
    (dict(phase1_seq_length=4, phase1_fraction=0.5), "phase1_seq_length"),
    (dict(phase1_seq_length=12, phase1_fraction=1.0), "phase1_fraction"),
    (dict(phase1_seq_length=12), "phase1_fraction"),
    (dict(phase1_fraction=0.5), "phase1_seq_length is not given"),
])
def test_phase1_bad_options(tiny_world, tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        Trainer(tiny_config(tiny_world, tmp_path / "run", **kw), log=quiet)


def test_phase1_retune_counts_short_steps_at_their_own_cost(tiny_world, tmp_path):
    """A time-budget run in two phases: phase-1 steps are cheaper, so the speed measured inside
    phase 1 must not be taken for the whole run's (the first demo of the two phases planned 1,848
    steps, re-planned 2,310 from its fast phase-1 steps and ran 5% over its budget)."""
    trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", steps=None, time_budget=100.0, warmup=0.1,
                                  phase1_seq_length=12, phase1_fraction=0.3), log=quiet)
    assert 0 < trainer.phase1_cost <= 1.0                            # timed by the probe
    trainer.phase1_cost = 0.4                                        # a phase-1 step: 0.4 s, a full one 1 s
    trainer.config.steps = trainer.schedule.total_steps = 100        # as if the probe said 100 steps
    trainer.phase1_end = 30
    trainer.step = trainer.schedule.last_step = 10                   # 10% of the way, all in phase 1...
    trainer._setup_time = 0.0
    trainer._budget_elapsed = lambda: 10 * 0.4 * 1.02 ** -1          # ...at 0.4 s a step (1.02: the margin)
    # L = 100 - 3.92 s left at 1 s a full step: N with (0.3 N - 10) 0.4 + 0.7 N = L
    left = 100.0 - 10 * 0.4 / 1.02
    assert trainer._retune_steps()
    assert trainer.config.steps == int((left + 10 * 0.4) / (0.3 * 0.4 + 0.7))
    assert trainer.phase1_end == round(0.3 * trainer.config.steps)
    # taking the phase-1 speed for the whole run would have planned 10 + 96 / 0.4 = 250 steps
    assert trainer.config.steps < 130
    # in phase 2 (20 steps or more) the speed is phase 2's own, whatever the probe's ratio said
    trainer.config.steps = trainer.schedule.total_steps = 100
    trainer.phase1_end, trainer.step, trainer.schedule.last_step = 30, 50, 50
    trainer._phase2_clock = 20.0                                     # phase 2 began at 20 s
    trainer._budget_elapsed = lambda: 20.0 + 20 * 0.5 / 1.02         # 20 steps at 0.5 s each
    assert trainer._retune_steps()
    assert trainer.config.steps == 50 + int((100.0 - trainer._budget_elapsed()) / 0.5)
