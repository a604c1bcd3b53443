"""Lesson 06's exercise check catches the plausible wrong attention backwards, and says what is wrong."""
from __future__ import annotations

import pytest

from lesson_exercises import assert_blanked_lesson_fails_only_its_checks, assert_check_fails, run_exercise

LESSON, EXERCISE = "06_multihead_attention", "my_attention_backward"

SOLUTION = """
B, T, C = x.shape
dcontext = split_heads(dout, num_heads)
dprobs = dcontext @ v.swapaxes(-1, -2)
dv = probs.swapaxes(-1, -2) @ dcontext
row_dot = (dprobs * probs).sum(axis=-1, keepdims=True)
dscores = probs * (dprobs - row_dot)
dq = (dscores @ k) * scale
dk = (dscores.swapaxes(-1, -2) @ q) * scale
grads = {}
dx = np.zeros_like(x)
x_rows = x.reshape(-1, C)
for name, d_heads in (("query", dq), ("key", dk), ("value", dv)):
    d = merge_heads(d_heads)
    d_rows = d.reshape(-1, C)
    grads[name + "_weight"] = d_rows.T @ x_rows
    grads[name + "_bias"] = d_rows.sum(axis=0)
    dx += d @ params[name + "_weight"]
grads["x"] = dx
"""


def mutant(old: str, new: str) -> str:
    assert SOLUTION.count(old) == 1, old
    return SOLUTION.replace(old, new)


MUTANTS = {
    # the probabilities recomputed in the backward with the mask applied after the softmax
    "mask_after_softmax": (mutant(
        "dprobs = dcontext @ v.swapaxes(-1, -2)\n",
        "dprobs = dcontext @ v.swapaxes(-1, -2)\n"
        "raw = (q @ k.swapaxes(-1, -2)) * scale\n"
        "probs = np.exp(raw - raw.max(axis=-1, keepdims=True))\n"
        "probs = probs / probs.sum(axis=-1, keepdims=True)\n"
        "probs = probs * (additive_mask == 0)\n"), r"(?s)gradients are wrong.*value_weight \(6, 6\): relative error"),
    "missing_scale_in_backward": (mutant(
        "dq = (dscores @ k) * scale\ndk = (dscores.swapaxes(-1, -2) @ q) * scale\n",
        "dq = dscores @ k\ndk = dscores.swapaxes(-1, -2) @ q\n"), r"(?s)query_weight \(6, 6\).*constant 1.732 x"),
    "heads_merged_in_wrong_axis_order": (mutant(
        "d = merge_heads(d_heads)\n", "d = d_heads.reshape(B, T, C)\n"),
        r"(?s)query_weight \(6, 6\): relative error.*value_weight \(6, 6\): relative error"),
    "dout_split_in_wrong_axis_order": (mutant(
        "dcontext = split_heads(dout, num_heads)\n", "dcontext = dout.reshape(B, num_heads, T, C // num_heads)\n"),
        r"(?s)value_weight \(6, 6\): relative error"),
    "value_path_forgotten_in_dx": (mutant(
        "    dx += d @ params[name + \"_weight\"]\n",
        "    if name != \"value\":\n        dx += d @ params[name + \"_weight\"]\n"),
        r"(?s)1 of 7 gradients are wrong.*x \(2, 4, 6\): relative error"),
    "key_path_forgotten_in_dx": (mutant(
        "    dx += d @ params[name + \"_weight\"]\n",
        "    if name != \"key\":\n        dx += d @ params[name + \"_weight\"]\n"),
        r"(?s)1 of 7 gradients are wrong.*x \(2, 4, 6\): relative error"),
    "softmax_backward_sign_error": (mutant(
        "dscores = probs * (dprobs - row_dot)\n", "dscores = probs * (dprobs + row_dot)\n"),
        r"(?s)query_weight \(6, 6\): relative error"),
    "softmax_backward_without_the_row_term": (mutant(
        "dscores = probs * (dprobs - row_dot)\n", "dscores = probs * dprobs\n"),
        r"(?s)key_bias \(6,\): relative error"),
    "weight_gradient_transposed": (mutant(
        "grads[name + \"_weight\"] = d_rows.T @ x_rows\n", "grads[name + \"_weight\"] = x_rows.T @ d_rows\n"),
        r"(?s)query_weight \(6, 6\): relative error.*value_weight \(6, 6\): relative error"),
}


def test_solution_passes():
    run_exercise(LESSON, EXERCISE, SOLUTION)     # the test's copy of the solution is the lesson's
    run_exercise(LESSON, EXERCISE)


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_check_fails_for_mutant(name):
    assert_check_fails(LESSON, EXERCISE, *MUTANTS[name])


def test_blanked_lesson_runs_and_every_check_fails():
    assert_blanked_lesson_fails_only_its_checks(LESSON)
