"""Lesson 10's exercises (the AdamW step, global-norm clipping): the checks pass the solutions and
fail, pointing at the bug, for the plausible wrong answers (see tests/lesson_harness.py)."""
import pytest

from bertnp import teach
from lesson_harness import Lesson

DECAY = "        p *= 1.0 - lr * decay                          # decoupled: shrink the OLD weights, outside m and v\n"
UPDATE = "        p -= lr * m_hat / (np.sqrt(v_hat) + eps)       # eps after the correction (PyTorch)\n"

ADAMW_MUTANTS = {
    "decays LayerNorm and biases": ([('decay = 0.0 if (name.endswith(".bias") or "LayerNorm" in name) else weight_decay',
                                      "decay = weight_decay")], r"layer\.dense\.bias after one step with g = 0 \(never decayed\)"),
    # weight decay as an L2 term inside the moments: 1 - lr * 1 = 0.9 instead of 0.95
    "decay inside the Adam moments (L2)": ([(DECAY, "        g = g + decay * p                              # L2\n")],
                                           r"layer\.dense\.weight after one step with g = 0 \(decayed\).*yours  9\.0"),
    "eps inside the square root": ([("(np.sqrt(v_hat) + eps)", "np.sqrt(v_hat + eps)")], r"first step"),
    "eps before the bias correction": ([("(np.sqrt(v_hat) + eps)", "((np.sqrt(v) + eps) / np.sqrt(1.0 - beta2 ** t))")],
                                       r"first step"),
    "no bias correction": ([("m / (1.0 - beta1 ** t)", "m"), ("v / (1.0 - beta2 ** t)", "v")], r"first step"),
    "decay applied after the update": ([(DECAY, ""), (UPDATE, UPDATE + DECAY)], r"only tensors that torch decays differ"),
    # rebinding m and v instead of updating them in place: the state never remembers
    "moments not kept in the state": ([("m *= beta1\n", "m = beta1 * m\n"), ("v *= beta2\n", "v = beta2 * v\n")],
                                      r"differ from torch\.optim\.AdamW.*do m and v keep"),
}

CLIP_BODY_PER_TENSOR = """
norm = float(np.sqrt(sum(float((g * g).sum()) for g in grads.values())))
for g in grads.values():
    coef = max_norm / (float(np.sqrt((g * g).sum())) + 1e-6)
    if coef < 1.0:
        g *= coef
"""
CLIP_MUTANTS = {
    "clips each tensor by its own norm": (dict(body=CLIP_BODY_PER_TENSOR), r"clipped gradients differ from torch"),
    "always rescales to max_norm": (dict(replacements=[("    if coef < 1.0:\n        for g", "    if True:\n        for g")]),
                                    r"norm 0\.51 < 1 is not changed"),
    "not in place": (dict(replacements=[("g *= coef", "g = g * coef")]), r"were not changed: scale the arrays"),
    "no square root": (dict(replacements=[("float(np.sqrt(sum(float((g * g).sum()) for g in grads.values())))",
                                           "float(sum(float((g * g).sum()) for g in grads.values()))")]),
                       r"norm returned \(before clipping\) vs torch"),
}


@pytest.fixture(scope="module")
def lesson():
    return Lesson("10_optimization.py")


def test_solutions_pass(lesson):
    lesson.run_check("my_adamw_step")
    lesson.run_check("my_clip_grad_norm")


@pytest.mark.parametrize("mutant", ADAMW_MUTANTS)
def test_adamw_check_catches(lesson, mutant):
    replacements, message = ADAMW_MUTANTS[mutant]
    with pytest.raises(teach.CheckFailed, match=f"(?s){message}"):
        lesson.run_check("my_adamw_step", replacements)


@pytest.mark.parametrize("mutant", CLIP_MUTANTS)
def test_clipping_check_catches(lesson, mutant):
    edit, message = CLIP_MUTANTS[mutant]
    with pytest.raises(teach.CheckFailed, match=f"(?s){message}"):
        lesson.run_check("my_clip_grad_norm", **edit)


@pytest.mark.parametrize("function", ["my_adamw_step", "my_clip_grad_norm"])
def test_blanked_exercise(lesson, function):
    lesson.check_blanked(function)
