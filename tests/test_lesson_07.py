"""Lesson 07's exercise checks catch the plausible wrong GELU and dropout code, and say what is wrong."""
from __future__ import annotations

import pytest

from lesson_exercises import assert_blanked_lesson_fails_only_its_checks, assert_check_fails, run_exercise

LESSON = "07_gelu_ffn_dropout"

GELU_MUTANTS = {
    # the derivative of the tanh approximation where the erf form is asked: off by up to 8.7e-4
    "tanh_form_derivative": ("""
        t = np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
        dx = dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x))
    """, r"dx of gelu \(erf form\) \(8, 10\): relative error"),
    "x_pdf_term_forgotten": ("""
        dx = dout * 0.5 * (1.0 + erf(x / math.sqrt(2.0)))
    """, r"dx of gelu \(erf form\) \(8, 10\): relative error"),
    "x_pdf_term_with_the_wrong_sign": ("""
        cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))
        pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        dx = dout * (cdf - x * pdf)
    """, r"dx of gelu \(erf form\) \(8, 10\): relative error"),
    "pdf_without_the_chain_rule_factor": ("""
        cdf = 0.5 * (1.0 + erf(x / math.sqrt(2.0)))
        pdf = np.exp(-0.5 * x * x) / math.sqrt(math.pi)
        dx = dout * (cdf + x * pdf)
    """, r"dx of gelu \(erf form\) \(8, 10\): relative error"),
}

FORWARD = """
if not training or p == 0.0:
    return x, None
keep = rng.random(x.shape) >= p
scale = keep / (1.0 - p)
out = x * scale
cache = scale
"""
BACKWARD = """
if cache is None:
    return dout
dx = dout * cache
"""

DROPOUT_MUTANTS = {
    "not_scaled_by_1_over_1_minus_p": ((FORWARD.replace("scale = keep / (1.0 - p)", "scale = keep * 1.0"), None),
                                       r"p = 0.1: the surviving entries \(x = 1\)"),
    "scaled_in_the_backward_only": ((FORWARD.replace("scale = keep / (1.0 - p)", "scale = keep * 1.0")
                                     .replace("cache = scale", "cache = keep / (1.0 - p)"), None),
                                    r"p = 0.1: the surviving entries \(x = 1\)"),
    "backward_not_scaled": ((FORWARD.replace("cache = scale", "cache = keep * 1.0"), None),
                            r"(?s)dx of dropout \(p = 0.3\).*constant 0.7 x"),
    "new_mask_drawn_in_the_backward": ((FORWARD.replace("cache = scale", "cache = (rng, p)"), """
        if cache is None:
            return dout
        rng, p = cache
        dx = dout * (rng.random(dout.shape) >= p) / (1.0 - p)
    """), r"dx of dropout \(p = 0.3\) \(6, 7\): relative error"),
    "keep_with_probability_p": ((FORWARD.replace("rng.random(x.shape) >= p", "rng.random(x.shape) < p"), None),
                                r"p = 0.1: share of dropped entries: got 0.9"),
    "mask_from_the_global_generator": ((FORWARD.replace("rng.random(x.shape)", "np.random.random(x.shape)"), None),
                                       r"two forwards with equally seeded generators"),
    "eval_mode_scaled_by_1_minus_p": ((FORWARD.replace("return x, None", "return x * (1.0 - p), None"), None),
                                      r"training=False returns x"),
}


def test_solutions_pass():
    run_exercise(LESSON, "my_gelu_backward")
    run_exercise(LESSON, "my_dropout_forward")
    run_exercise(LESSON, "my_dropout_forward", (FORWARD, BACKWARD))   # the test's copy is the lesson's


@pytest.mark.parametrize("name", sorted(GELU_MUTANTS))
def test_gelu_check_fails_for_mutant(name):
    assert_check_fails(LESSON, "my_gelu_backward", *GELU_MUTANTS[name])


@pytest.mark.parametrize("name", sorted(DROPOUT_MUTANTS))
def test_dropout_check_fails_for_mutant(name):
    assert_check_fails(LESSON, "my_dropout_forward", *DROPOUT_MUTANTS[name])


def test_blanked_lesson_runs_and_every_check_fails():
    assert_blanked_lesson_fails_only_its_checks(LESSON)
