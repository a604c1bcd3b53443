"""bertnp.distributed's pieces, in one process: how a batch is shared, the flat gradient buffer, the
weights' checksum, the checks that refuse a run N ranks cannot share, the supervisor that names a
killed rank, and the command line outside pretraining. (Real ranks: tests/test_distributed_mpi.py.)"""
from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

from bertnp import backend, distributed
from bertnp.config import BertConfig
from bertnp.distributed import DataParallel, FlatGradients, shard_batch, shard_rows, weights_checksum
from bertnp.model import BertForPreTraining
from bertnp.train import TrainConfig
from conftest import host


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_shares_are_disjoint_contiguous_and_cover_the_batch(size):
    for n in range(0, 13):
        shares = [shard_rows(n, r, size) for r in range(size)]
        rows = [i for s in shares for i in range(n)[s]]
        assert rows == list(range(n))                                    # disjoint, in order, all rows
        lengths = [len(range(n)[s]) for s in shares]
        assert max(lengths) - min(lengths) <= 1                           # as even as it gets
    assert shard_rows(5, 0, 2) == slice(0, 2) and shard_rows(5, 1, 2) == slice(2, 5)


def test_bad_shares_are_refused():
    with pytest.raises(ValueError, match="rank"):
        shard_rows(4, 2, 2)
    with pytest.raises(ValueError, match="same number of rows"):
        shard_batch({"input_ids": np.zeros((4, 3)), "labels": np.zeros((3, 3))}, 0, 2)
    batch = {"input_ids": np.arange(12).reshape(4, 3), "next_sentence_label": np.arange(4)}
    share = shard_batch(batch, 1, 2)
    assert share["input_ids"].tolist() == [[6, 7, 8], [9, 10, 11]] and share["next_sentence_label"].tolist() == [2, 3]


def tiny_model(layers=2, dtype="float64"):
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=12, max_position_embeddings=12, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForPreTraining(cfg, seed=1, dtype=dtype)


def batch(seed=0):
    r = np.random.default_rng(seed)
    labels = np.full((3, 10), -100)
    labels[:, 2] = r.integers(5, 30, 3)
    return dict(input_ids=r.integers(5, 30, (3, 10)), labels=labels, next_sentence_label=np.array([0, 1, 0]))


def test_flat_buffer_holds_every_gradient_as_a_view_through_backward_and_zero_grad():
    """One array, every gradient a view into it: what backward adds lands in the buffer, so one
    all-reduce call moves them all. Laid out heads, layer 1, layer 0, embeddings: the order backward
    finishes them."""
    model, reference = tiny_model(), tiny_model()
    flat = FlatGradients(model)
    assert flat.size == model.num_parameters() and flat.nbytes == 8 * model.num_parameters()
    assert [b for b, _, _ in flat.buckets] == ["heads", "layer 1", "layer 0", "embeddings"]
    assert flat.buckets[0][1] == 0 and flat.buckets[-1][2] == flat.size
    assert all(a[2] == b[1] for a, b in zip(flat.buckets, flat.buckets[1:]))     # contiguous ranges
    assert flat.bucket_names["embeddings"][-1].endswith("LayerNorm.bias") or \
        "bert.embeddings.word_embeddings.weight" in flat.bucket_names["embeddings"]
    for _ in range(2):                                   # accumulate twice, zero, once more
        for m in (model, reference):
            m(**batch())
            m.backward()
    for m in (model, reference):
        m.zero_grad()
        m(**batch(1))
        m.backward()
    assert flat.is_live(model)
    for name, g in reference.grads.items():
        np.testing.assert_array_equal(host(model.grads[name]), host(g), err_msg=name)
    flat.flat *= 2.0                                     # what the all-reduce does to the buffer ...
    for name, g in reference.grads.items():              # ... every gradient sees: each is a view into it
        np.testing.assert_array_equal(host(model.grads[name]), 2 * host(g), err_msg=name)


def test_flat_buffer_refuses_mixed_dtypes():
    model = tiny_model()
    model._grads["cls.predictions.bias"] = model._grads["cls.predictions.bias"].astype(np.float32)
    with pytest.raises(ValueError, match="one dtype"):
        FlatGradients(model)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_checksum_sees_one_flipped_bit_in_any_tensor(dtype):
    model = tiny_model(layers=1, dtype=dtype)
    params = {k: v.copy() for k, v in model.parameters().items()}
    base = weights_checksum(params)
    assert base.dtype == np.uint64 and base.shape == (len(params),)
    assert np.array_equal(base, weights_checksum({k: v.copy() for k, v in params.items()}))
    names = sorted(params)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(names), 6, replace=False):
        flipped = {k: v.copy() for k, v in params.items()}
        bits = flipped[names[i]].reshape(-1).view(np.uint32 if dtype == "float32" else np.uint64)
        bits[int(rng.integers(bits.size))] ^= 1                          # the lowest mantissa bit
        changed = weights_checksum(flipped) != base
        assert changed.tolist() == [j == i for j in range(len(names))], names[i]


def test_one_process_is_rank_0_of_1_and_changes_nothing():
    dp = DataParallel(None)
    assert (dp.rank, dp.size, dp.is_writer, dp.active) == (0, 1, True, False)
    b = batch()
    assert dp.share(b) is b
    assert dp.allreduce_counts({"mlm_total": 3}, "x") == {"mlm_total": 3}
    values = np.array([[1.0, 2.0]])
    assert dp.global_values(values, [True, False], 1) is values
    dp.check_config(TrainConfig(steps=None, time_budget=60, batch_size=1), resumed=False)   # nothing to refuse


class _Ranks(DataParallel):
    """A DataParallel that believes it has ``size`` ranks (for the checks that need no messages)."""

    def __init__(self, size):
        super().__init__(None)
        self.size = size


def test_a_run_that_n_ranks_cannot_share_is_refused_saying_why():
    with pytest.raises(ValueError, match="time_budget: a run on several ranks needs --steps"):
        _Ranks(2).check_config(TrainConfig(steps=None, time_budget=60), resumed=False)
    with pytest.raises(ValueError, match=r"batch_size 4 cannot be shared by 8 ranks.*--batch-size >= the number"):
        _Ranks(8).check_config(TrainConfig(steps=10, batch_size=4), resumed=False)
    with pytest.raises(ValueError, match=r"batch_size 4 cannot be shared by 8 ranks.*resume it on fewer ranks"):
        _Ranks(8).check_config(TrainConfig(steps=10, batch_size=4), resumed=True)
    _Ranks(4).check_config(TrainConfig(steps=10, batch_size=4), resumed=True)


def test_dropout_seeds_differ_by_rank_and_rank_0_keeps_the_runs():
    seeds = []
    for rank in range(3):
        dp = _Ranks(3)
        dp.rank = rank
        model = tiny_model(layers=1)
        dp.prepare_model(model)
        seeds.append(model.dropout_seed)
    assert seeds[0] == 1 and len(set(seeds)) == 3


def test_the_launcher_is_read_from_the_environment(monkeypatch):
    for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK",
                 "MV2_COMM_WORLD_RANK", "BERTNP_MPI"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.environment_rank_size() is None and not distributed.launched_by_mpi()
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "4")
    assert distributed.environment_rank_size() == (1, 4) and distributed.launched_by_mpi()
    monkeypatch.setenv("PMI_SIZE", "1")                                  # mpiexec -n 1: one process
    assert not distributed.launched_by_mpi()
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("BERTNP_MPI", "off")
    assert not distributed.launched_by_mpi()


def test_supervisor_names_the_rank_whose_process_was_killed(monkeypatch, capfd):
    """The process mpiexec starts runs the rank's work in a child; if the child dies of a signal,
    the supervisor says which rank it was, with its pid and machine, and exits 128 + signal."""
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "2")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    status = distributed.supervise([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert status == 128 + signal.SIGKILL
    err = capfd.readouterr().err
    assert "bertnp: error: rank 1 of 2 (pid " in err and "was killed by SIGKILL" in err and "--resume" in err
    assert {s: signal.getsignal(s) for s in handlers} == handlers          # its handlers are undone
    assert distributed.supervise([sys.executable, "-c", "raise SystemExit(7)"]) == 7


def test_supervisor_gives_each_rank_its_share_of_the_cores(monkeypatch, capfd):
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    show = "import os; print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['BERTNP_RANK_CHILD'])"
    assert distributed.supervise([sys.executable, "-c", show]) == 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    expected = max(1, cores // 2) if cores == os.cpu_count() else cores
    assert capfd.readouterr().out.split() == [str(expected), "1"]
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")                     # the user's choice is kept
    assert distributed.supervise([sys.executable, "-c", show]) == 0
    assert capfd.readouterr().out.split()[0] == "3"


def test_only_pretrain_runs_on_several_ranks(monkeypatch, capsys, tmp_path):
    from bertnp.cli import main
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setenv("PMI_SIZE", "2")
    assert main(["finetune", "--train", str(tmp_path / "x.tsv"), "--scratch", "--out", str(tmp_path)]) == 2
    assert "'finetune' runs on one process; only 'pretrain' runs on several" in capsys.readouterr().err
    monkeypatch.setenv("PMI_RANK", "1")                                  # said once, by rank 0
    assert main(["finetune", "--train", str(tmp_path / "x.tsv"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ""


def test_a_loop_that_cannot_share_its_batches_refuses_ranks(tmp_path):
    from bertnp.finetune import FinetuneConfig, Finetuner
    with pytest.raises(ValueError, match="finetune runs on one process"):
        Finetuner(FinetuneConfig(out_dir=str(tmp_path)), parallel=_Ranks(2))


def test_mpiexec_command_for_notebooks():
    pytest.importorskip("mpi4py", reason="needs the mpi extra")
    command = distributed.mpiexec_command(2, "-m", "bertnp", "pretrain", "--steps", 3)
    assert os.path.basename(command[0]) == "mpiexec" and command[1:5] == ["-n", "2", sys.executable, "-m"]
    assert command[-1] == "3"
    with pytest.raises(ValueError, match="positive number of ranks"):
        distributed.mpiexec_command(0, "x.py")


def test_backend_has_no_nccl_on_numpy():
    with pytest.raises(RuntimeError, match="NCCL needs the cupy backend"):
        backend.nccl()
    assert backend.use_device(3) == 0


# ----------------------------------------------------------------------------- benchmarks/bench_mpi.py

@pytest.fixture(scope="module")
def bench_mpi():
    import importlib
    from pathlib import Path
    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        yield importlib.import_module("bench_mpi")
    finally:
        sys.path.remove(folder)


def test_scaling_model_counts_the_parameters_and_the_ring(bench_mpi):
    """The README's scaling model: BERT's parameter count from its shapes (checked against built
    models), and the ring all-reduce's 2(N-1)/N * bytes / bandwidth."""
    for preset in ("tiny", "mini"):
        cfg = BertConfig.preset(preset, vocab_size=30522)
        assert bench_mpi.bert_parameters(preset) == BertForPreTraining(cfg).num_parameters(), preset
    assert bench_mpi.bert_parameters("base") == 110_106_428
    assert bench_mpi.ring_allreduce_seconds(1e9, 1, 1e9) == 0
    assert bench_mpi.ring_allreduce_seconds(1e9, 2, 1e9) == pytest.approx(1.0)
    assert bench_mpi.ring_allreduce_seconds(1e9, 4, 1e9, latency=1e-3) == pytest.approx(1.5 + 6e-3)
    table = bench_mpi.scaling_table(20000, (10, 100), ranks=(1, 2))
    row = table.splitlines()[3].split(" | ")                 # N = 2: 1.64 s / 2 compute, 0.352 s at 10 Gb/s
    assert row[1] == "0.819" and row[2] == "0.352" and row[3] == "70%"


def test_bench_mpi_replaces_only_its_own_section(bench_mpi, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# bertnp benchmarks\n\n## CPU\n\ncpu table\n\n## GPU\n\ngpu text\n")
    bench_mpi.write_results(bench_mpi.SECTION + "\n\nfirst\n", results)
    bench_mpi.write_results(bench_mpi.SECTION + "\n\nsecond\n", results)
    text = results.read_text()
    assert "cpu table" in text and "gpu text" in text and "second" in text and "first" not in text
    assert text.count(bench_mpi.SECTION) == 1


@pytest.mark.parametrize("flag, value, message", [
    ("--mpi-timeout", "0", "argument --mpi-timeout"),
    ("--mpi-timeout", "soon", "argument --mpi-timeout"),
    ("--check-weights-every", "0", "argument --check-weights-every"),
    ("--check-weights-every", "2.5", "argument --check-weights-every"),
])
def test_bad_mpi_flags_are_refused_naming_the_flag(flag, value, message, capsys, tmp_path):
    from bertnp.cli import main
    with pytest.raises(SystemExit) as stop:
        main(["pretrain", "--steps", "1", "--out", str(tmp_path), flag, value])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_parallel_settings_are_refused_naming_them():
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds, got -1"):
        distributed.Communicator(timeout=-1)
    with pytest.raises(ValueError, match="check_every must be a positive integer, got 0"):
        DataParallel(None, check_every=0)
