"""Lesson 12's check must reject the plausible wrong unigram baselines and accept the right one.

The check also reads the lesson's short training run (fast mode, ~10-20 s), so the cells before the
exercise run once for the module."""
from lesson_runner import exercise_tests

BODY = """
    is_special = np.zeros(vocab_size, dtype=bool)
    is_special[list(special_ids)] = True
    counts = np.zeros(vocab_size)
    for b in train_batches:
        text = {text}
        text = text[b["attention_mask"] == 1]
        {drop_specials}
        counts += np.bincount(text, minlength=vocab_size)
    targets = np.concatenate([{targets} for b in eval_batches])
    probability = {probability}
    accuracy = float({accuracy})
    cross_entropy = float(-np.{log}(probability[targets]).mean())
"""
RIGHT = dict(text='np.where(b["labels"] != -100, b["labels"], b["input_ids"])',
             drop_specials="text = text[~is_special[text]]", targets='b["labels"][b["labels"] != -100]',
             probability="(counts + 1) / (counts.sum() + vocab_size)",
             accuracy="np.mean(targets == np.argmax(counts))", log="log")

MUTANTS = {name: (BODY.format(**dict(RIGHT, **change)), message) for name, (change, message) in {
    "special tokens counted": (dict(drop_specials="pass"), "count only real text"),
    "input ids counted instead of the true tokens": (dict(text='b["input_ids"]'), "the true token is the label"),
    "-100 positions scored": (dict(targets='b["labels"].reshape(-1)'), "-100 is not a token id"),
    "accuracy over every held-out position": (
        dict(accuracy='(targets == np.argmax(counts)).sum() / sum(b["labels"].size for b in eval_batches)'),
        "only the 3 labelled ones count"),
    "no add-one smoothing": (dict(probability="counts / counts.sum()"), "without the \\+1 its probability is 0"),
    "+1 without V in the denominator": (dict(probability="(counts + 1) / counts.sum()"), "N \\+ V, not N"),
    "log2 (bits)": (dict(log="log2"), "nats"),
}.items()}


# the solution written out here too: the mutants above are edits of it
namespace, test_solution_passes, test_mutant_fails_with_a_pointed_message, \
    test_blank_solution_fails_in_the_check = exercise_tests("12", "unigram_baseline", MUTANTS,
                                                            solution=BODY.format(**RIGHT))


def test_committed_run_is_small_and_made_by_its_script():
    """The long run's files: what l12_make.py writes (its docstring says the command), well under 1 MB."""
    from bertnp.lesson_data import l12_make
    from bertnp.lesson_data.lessons_11_14 import HERE, load_l12
    run = load_l12()
    assert run["command"] in l12_make.__doc__, f"l12_make.py's docstring should show {run['command']!r}"
    assert run["probes"] == l12_make.PROBES, "the probes changed since the committed run: remake it"
    steps = l12_make.snapshot_steps(run["config"]["steps"])
    assert [s["step"] for s in run["snapshots"]] == steps, f"snapshots {run['snapshot_steps']} vs {steps}"
    maps = run["attention"]["maps"]                                   # (S, L, H, T, T)
    T = len(run["attention"]["tokens"])
    assert maps.shape == (l12_make.ATTENTION_SNAPSHOTS, 4, 4, T, T), f"attention maps {maps.shape}, T = {T}"
    l12_bytes = sum(f.stat().st_size for f in HERE.glob("l12_*") if f.suffix != ".py")
    l11_14_bytes = sum(f.stat().st_size for f in HERE.glob("l1[1-4]_*") if f.suffix != ".py")
    assert l12_bytes < 300_000 and l11_14_bytes < 400_000, \
        f"lesson data: l12 {l12_bytes} B, lessons 11-14 {l11_14_bytes} B"
