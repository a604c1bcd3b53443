"""Lesson 9's exercise (the encoder layer's backward): the check passes the solution and fails,
naming the wrong gradients, for the plausible wrong compositions (see tests/lesson_harness.py)."""
import pytest

from bertnp import teach
from lesson_harness import Lesson

FUNCTION = "my_encoder_layer_backward"

MUTANTS = {
    # forgetting a residual: the gradient that skips a sub-block is lost
    "no residual gradient at h (FFN block)": ([("dh = dh + dsum2", "dh = dh")], r"first wrong one is attention\.output\.LayerNorm\.weight"),
    "no residual gradient at x (attention block)": ([("dx = g.x + dsum1", "dx = g.x")], r"down to attention\.self\.query\.bias is right, the first wrong one is x\b"),
    # each LayerNorm's backward must use its own statistics
    "the two LayerNorm backwards swapped": ([('cache["ln2"]', 'cache["LN_TMP"]'), ('cache["ln1"]', 'cache["ln2"]'),
                                             ('cache["LN_TMP"]', 'cache["ln1"]')], r"already the first one, output\.LayerNorm\.weight, is wrong"),
    # the pre-LN picture: the skip connection adds dL/dy, as if it bypassed LN2
    "residual added after the LayerNorm": ([("dh = dh + dsum2", "dh = dh + dy")], r"first wrong one is attention\.output\.LayerNorm\.weight"),
    "no GELU backward": ([('dpre = gelu_backward(dgelu, cache["gelu"])', "dpre = dgelu")], r"first wrong one is intermediate\.dense\.weight"),
}


@pytest.fixture(scope="module")
def lesson():
    return Lesson("09_whole_model.py")


def test_solution_passes(lesson):
    lesson.run_check(FUNCTION)


@pytest.mark.parametrize("mutant", MUTANTS)
def test_check_catches(lesson, mutant):
    replacements, message = MUTANTS[mutant]
    with pytest.raises(teach.CheckFailed, match=f"(?s){message}"):
        lesson.run_check(FUNCTION, replacements)


def test_blanked_exercise(lesson):
    lesson.check_blanked(FUNCTION)


def test_lesson_data_is_the_fixture_subset():
    """bertnp.lesson_data's files hold bit-identical copies of the test fixtures' arrays."""
    import json
    from pathlib import Path

    import numpy as np

    from bertnp.lesson_data.lessons_09_10 import load_l09, load_l10

    reference = Path(__file__).resolve().parent / "reference"
    for loaded, fixture in ((load_l09(), "bert_pretraining_f64.npz"), (load_l10(), "adamw_trajectory_f64.npz")):
        with np.load(reference / fixture) as fx:
            assert any(k.startswith("param/") for k in loaded), fixture
            for key, value in loaded.items():
                expected = fx[key]
                if isinstance(value, dict):
                    assert value == json.loads(str(expected)), (fixture, key)
                else:
                    assert value.dtype == expected.dtype and np.array_equal(value, expected), (fixture, key)
