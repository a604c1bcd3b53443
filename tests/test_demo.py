"""`make demo` and the newcomer's first hour: threads for the machine found, a budget that covers the
whole run, notes on their own line, a finished run that says so, the demo's figures equal to
`bertnp eval`'s, examples chosen before training, and the small things a newcomer sees first."""
from __future__ import annotations

import io
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest

import bertnp as bn
from bertnp import demo
from bertnp.train import TrainConfig, Trainer
from conftest import host

from test_train import tiny_world  # noqa: F401  (the tiny corpus fixture)
from tiny_world import WORDS, quiet, tiny_config


# ----------------------------------------------------------------------------- threads for the machine

@pytest.mark.parametrize("cores, load, threads", [(2, 0.1, 2), (2, 0.45, 2), (2, 0.8, 1), (2, 1.6, 1),
                                                  (2, 7.0, 1), (8, 3.2, 5), (1, 0.0, 1)])
def test_threads_follow_the_free_cores(cores, load, threads):
    chosen, why = demo.choose_threads(cores=cores, load=load)
    assert chosen == threads
    assert f"{load:.2f}" in why and (("fewer threads" in why) == (threads < cores))


def test_threads_set_by_the_user_win(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    _, line = demo.blas_threads()
    assert "1" in line and "OPENBLAS_NUM_THREADS set by you" in line
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    limit, line = demo.blas_threads(requested=1)
    assert line == "threads: 1 (--threads)"
    from threadpoolctl import threadpool_info
    from bertnp import parallel
    before = parallel.num_threads()
    with parallel.threads(2), limit:                # bertnp's own CPU operations follow the choice too
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
        assert parallel.num_threads() == 1
    assert parallel.num_threads() == before


# ----------------------------------------------------------------------------- the budget and the notes

def test_time_budget_covers_setup_and_evaluations(tiny_world, tmp_path, monkeypatch):
    """The budget is wall time from the Trainer's creation: a slow setup leaves fewer steps."""
    real = Trainer._build

    def slow_build(self):
        real(self)
        time.sleep(1.0)                           # as if the vocabulary and the data took 1 s
    monkeypatch.setattr(Trainer, "_build", slow_build)
    t0 = time.perf_counter()
    trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", steps=None, time_budget=2.0, eval_every=2,
                                  plot=False), log=quiet)
    summary = trainer.train()
    wall = time.perf_counter() - t0
    # the run is cut at 1.25 x the budget at the latest; one step, the last evaluation and the final
    # save may follow (a tiny model: milliseconds each, a second on a very busy machine)
    assert wall < 2.0 * 1.25 + 1.0
    assert summary["step"] >= 1


def test_notes_during_training_get_their_own_line(tiny_world, tmp_path, monkeypatch, capsys):
    """With a progress bar on screen, a note is written above it (tqdm.write), not onto it."""
    trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", steps=4, progress=True))
    trainer.adaptive_steps = True

    def retune(self):
        if self.step == 2:
            self.log("note: the machine is slow")
        return False
    monkeypatch.setattr(Trainer, "_retune_steps", retune)
    trainer.train()
    out = capsys.readouterr().out
    assert re.search(r"(^|\n)note: the machine is slow\n", out)
    assert trainer.log is print                                     # restored after training


def test_resuming_a_complete_run_says_so_and_how_to_extend_it(tiny_world, tmp_path):
    Trainer(tiny_config(tiny_world, tmp_path / "run", steps=4), log=quiet).train()
    notes = []
    trainer = Trainer(tiny_config(tiny_world, tmp_path / "run", steps=None, resume=True), log=notes.append)
    said = " ".join(notes)
    assert "complete run" in said and "step 4 of 4" in said
    assert f"bertnp pretrain --out {tmp_path / 'run'} --resume --steps N" in said
    assert trainer.train()["step"] == 4


def test_one_text_gets_no_reading_progress_bar(capsys):
    from bertnp.wordpiece_trainer import count_words
    count_words("the cat sat on the mat", show_progress=True)
    assert "reading" not in capsys.readouterr().err
    count_words(["the cat", "the dog"], show_progress=True)
    assert "reading" in capsys.readouterr().err


# ----------------------------------------------------------------------------- what a newcomer sees

def test_a_model_prints_its_config_and_size():
    cfg = bn.BertConfig.preset("tiny", vocab_size=1000)
    model = bn.BertForPreTraining(cfg)
    text = repr(model)
    assert text.startswith("BertForPreTraining(L2 H128 A2 I512 V1000")
    assert f"{model.num_parameters() / 1e6:.2f}M parameters" in text and "float32" in text and "train" in text
    assert "eval" in repr(model.eval())
    clf = bn.BertForSequenceClassification(cfg, num_labels=3, dtype="float64")
    assert "num_labels=3" in repr(clf) and "float64" in repr(clf)


def test_unigram_cross_entropy_is_the_frequency_models_loss():
    docs = [[[5, 5, 6], [7]], [[5]]]
    labels = np.full((1, 4), -100)
    labels[0, :3] = [5, 6, 9]
    ce = demo.unigram_cross_entropy(docs, [{"labels": labels}], vocab_size=10, special_ids=[0, 1])
    counts = np.ones(10)
    counts[[5, 6, 7]] += [3, 1, 1]
    counts[[0, 1]] = 0
    p = counts / counts.sum()
    assert ce == pytest.approx(-np.mean(np.log(p[[5, 6, 9]])), rel=1e-12)


def test_nsp_examples_follow_a_rule_fixed_before_training():
    """No model goes in: the pairs cannot be picked after training. Even ones are true next pairs
    (consecutive sentences of one held-out document), odd ones come from another document."""
    from bertnp.corpus import bundled_corpus
    from bertnp.data import read_corpus
    pairs = demo.nsp_examples(6)
    assert pairs == demo.nsp_examples(6)
    assert [is_next for _, _, is_next in pairs] == [True, False] * 3
    docs = read_corpus([bundled_corpus("heldout")])
    for a, b, is_next in pairs:
        home = [d for d in docs if a in d][0]
        assert (b in home and home.index(b) == home.index(a) + 1) == is_next


def test_is_word():
    assert demo.is_word("light") and demo.is_word("##ing")
    assert not any(demo.is_word(t) for t in (",", ".", "[UNK]", "12", "'"))


# ----------------------------------------------------------------------------- the demo end to end

@pytest.mark.slow
def test_demo_and_eval_report_the_same_heldout_figures(tmp_path, capsys):
    """A short demo: the figures it prints equal `bertnp eval`'s on the model it saved; its figure
    is drawn; the try-it line names the model; it reports its total time against the budget.
    (Whether the budget holds is test_time_budget_covers_setup_and_evaluations's question: here,
    on a busy machine, the vocabulary and the data alone can take longer than 25 s.)"""
    from bertnp.cli import main
    result = demo.run_demo(out=str(tmp_path / "demo"), time_budget=25.0, progress=False, threads=1)
    out = capsys.readouterr().out
    assert "threads: 1 (--threads)" in out
    assert Path(result["figure"]).is_file() and result["steps"] >= 1
    assert f"total {result['total_time']:.0f} s of a 25 s budget" in out
    assert "spent on vocabulary and data" in out
    assert main(["eval", "--model", result["model_dir"]]) == 0
    evaluated = capsys.readouterr().out
    ev = result["heldout"]
    assert f"MLM accuracy {ev['mlm_acc']:.4f}" in evaluated
    assert f"NSP accuracy {ev['nsp_acc']:.4f}" in evaluated
    assert f"held-out MLM accuracy:  {ev['mlm_acc']:.3f}" in out
    assert f"bertnp fill-mask --model {result['model_dir']}" in out
    assert math.isfinite(result["unigram_cross_entropy"]) and result["unigram_cross_entropy"] > 3
    assert "Two phases, as BERT was trained: the first 30% of the steps on sequences of 16" in out
    assert "What the attention heads read" in out and "layer 2 head 2:" in out
    assert np.asarray(result["attention_by_offset"]).shape == (2, 2, 7)


def test_attention_by_offset_reads_the_right_diagonals():
    """Offset -1 is the attention each query (from the second on) puts on the key just before it:
    the same numbers as a plain loop over the attention maps; the result is averaged over batches."""
    cfg = bn.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    model = bn.BertForPreTraining(cfg, seed=0)
    model.eval()
    rng = np.random.default_rng(0)
    batches = [dict(input_ids=rng.integers(5, 40, size=(3, 10)), attention_mask=np.ones((3, 10), dtype=np.int64),
                    token_type_ids=np.zeros((3, 10), dtype=np.int64)) for _ in range(2)]
    shares = demo.attention_by_offset(model, batches, offsets=[-1, 0, 2])
    expected = np.zeros((2, 2, 3))
    for b in batches:
        maps = model(**b, output_attentions=True).attentions
        for layer, probs in enumerate(maps):
            probs = host(probs)
            for h in range(2):
                expected[layer, h, 0] += np.mean([probs[n, h, i, i - 1] for n in range(3) for i in range(1, 10)]) / 2
                expected[layer, h, 1] += np.mean([probs[n, h, i, i] for n in range(3) for i in range(10)]) / 2
                expected[layer, h, 2] += np.mean([probs[n, h, i, i + 2] for n in range(3) for i in range(8)]) / 2
    np.testing.assert_allclose(shares, expected, rtol=1e-6)


# ----------------------------------------------------------------------------- the whole run fits its budget

def test_the_whole_demo_fits_its_budget_on_a_slow_machine(tmp_path, monkeypatch, capsys):
    """On a slow or busy machine the work after training (the whole held-out evaluation, the
    examples, the figure) is slow too: the demo keeps time for it in proportion to the measured
    speed, so the whole run still fits its budget.

    The slow machine is simulated: a clock that every forward and backward pass advances in
    proportion to its tokens (a training step of 32 x 128 tokens: 1.5 s, a held-out batch 0.5 s)
    -- so the test is deterministic whatever the real load, while the real seconds (vocabulary,
    data, figure) count too. A tiny model on a tiny corpus keeps the real part to a few seconds."""
    import json
    from tiny_world import make_world
    world = make_world(tmp_path / "world", n_docs=400)   # enough pairs for full batches of 32
    simulated = [0.0]
    real_clock = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + simulated[0])
    forward_s = 0.5 / (32 * 128)                   # simulated seconds per token of a forward pass
    Model = bn.BertForPreTraining
    real_call, real_backward = Model.__call__, Model.backward

    def slow_call(self, input_ids, *args, **kw):
        simulated[0] += forward_s * np.asarray(input_ids).size
        return real_call(self, input_ids, *args, **kw)

    def slow_backward(self):
        batch, seq_len = self._cache["shape"]
        simulated[0] += 2 * forward_s * batch * seq_len          # a backward pass: twice a forward
        return real_backward(self)
    monkeypatch.setattr(Model, "__call__", slow_call)
    monkeypatch.setattr(Model, "backward", slow_backward)

    config = json.loads(Path(world["config"]).read_text())
    config["max_position_embeddings"] = 128                        # the demo's sequences of 128
    model_config = tmp_path / "config.json"
    model_config.write_text(json.dumps(config))
    budget = 200.0
    result = demo.run_demo(out=str(tmp_path / "demo"), time_budget=budget, vocab=world["vocab"],
                           progress=False, threads=1,
                           recipe=dict(corpus=[world["corpus"]], model_config=str(model_config)))
    out = capsys.readouterr().out
    assert result["heldout"]["sequences"] > 500                     # the whole held-out split: ~12 s here
    assert result["total_time"] <= budget, out
    assert result["total_time"] > 0.85 * budget, out                # and the budget is used, not wasted
    assert f"of a {budget:.0f} s budget" in out
