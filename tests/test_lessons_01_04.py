"""The exercises of lessons 01-04 against plausible wrong answers.

For every exercise: the lesson's own solution passes its checks; a handout's blank
(``raise NotImplementedError``) fails them; and each mutant below -- a mistake students make --
fails them with a message that points at the mistake (the regex). Blanking every exercise of a
lesson leaves every cell that is not a check running. See tests/lesson_exercises.py.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from lesson_exercises import Lesson

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
_lessons: dict[str, Lesson] = {}


def lesson(number: str) -> Lesson:
    if number not in _lessons:
        _lessons[number] = Lesson(next(LESSONS.glob(f"{number}_*.py")))
    return _lessons[number]


# (lesson, exercise, mutant id, change, regex the failure message must match)
# change: {"replace": [(old, new), ...]} inside the solution region, or {"body": "..."} for all of it.
MUTANTS = [
    # ---- lesson 01: the numerical gradient
    ("01", "my_numerical_gradient", "one-sided difference",
     {"replace": [("x[i] = saved - h\n", "x[i] = saved\n"), ("/ (2 * h)", "/ h")]},
     r"yours vs the exact derivative.*relative error"),
    ("01", "my_numerical_gradient", "divided by h, not 2h", {"replace": [("/ (2 * h)", "/ h")]},
     r"constant 2 x"),
    ("01", "my_numerical_gradient", "x not restored",
     {"replace": [("x[i] = saved                   # restore", "pass  # forgot to restore")]},
     r"put every entry back.*got 1e-05, expected 0"),
    ("01", "my_numerical_gradient", "perturbs x.reshape(-1), a copy for a transposed x", {"body": """
        flat, gflat = x.reshape(-1), grad.reshape(-1)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + h
            f_plus = f()
            flat[i] = saved - h
            f_minus = f()
            flat[i] = saved
            gflat[i] = (f_plus - f_minus) / (2 * h)
        """}, r"(?s)transposed view.*all zeros"),
    ("01", "my_numerical_gradient", "perturbs a copy of x", {"replace": [("    for i in", "    x = x.copy()\n    for i in")]},
     r"all zeros"),
    # ---- lesson 01: linear backward
    ("01", "my_linear_backward", "dweight transposed", {"replace": [("dout2d.T @ x2d", "x2d.T @ dout2d")]},
     r"weight: your gradient has shape \(4, 5\), but weight has shape \(5, 4\)"),
    ("01", "my_linear_backward", "dbias summed over the batch axis only",
     {"replace": [("dout2d.sum(axis=0)", "dout.sum(axis=0)")]}, r"bias: your gradient has shape \(3, 5\)"),
    ("01", "my_linear_backward", "dweight averaged over the rows",
     {"replace": [("dout2d.T @ x2d", "dout2d.T @ x2d / len(x2d)")]}, r"weight.*constant 0.1667 x"),
    ("01", "my_linear_backward", "dx left flat", {"replace": [("dout @ weight", "dout2d @ weight")]},
     r"x: your gradient has shape \(6, 4\)"),
    ("01", "my_linear_backward", "dbias without a bias", {"replace": [(" if has_bias else None", "")]},
     r"dbias of a layer without bias: got 'an array of shape \(5,\)'"),
    # ---- lesson 01: LayerNorm backward
    ("01", "my_layernorm_backward", "forgot the path through the variance",
     {"replace": [("g - g_mean - xhat * gx_mean", "g - g_mean")]}, r"orthogonal to xhat"),
    ("01", "my_layernorm_backward", "forgot the path through the mean",
     {"replace": [("g - g_mean - xhat * gx_mean", "g - xhat * gx_mean")]}, r"each row of dx sums to 0"),
    ("01", "my_layernorm_backward", "sign of the variance term",
     {"replace": [("g - g_mean - xhat * gx_mean", "g - g_mean + xhat * gx_mean")]}, r"orthogonal to xhat"),
    ("01", "my_layernorm_backward", "forgot gamma in dL/dxhat", {"replace": [("g = dout * gamma", "g = dout")]},
     r"x \(2, 3, 5\): relative error"),
    ("01", "my_layernorm_backward", "dgamma without xhat",
     {"replace": [("(dout * xhat).reshape(-1, C)", "dout.reshape(-1, C)")]}, r"gamma \(5,\): relative error"),
    ("01", "my_layernorm_backward", "dbeta over the first axis only",
     {"replace": [("dout.reshape(-1, C).sum(axis=0)", "dout.sum(axis=0)")]}, r"beta: your gradient has shape \(3, 5\)"),
    # ---- lesson 02: softmax backward
    ("02", "my_softmax_backward", "sign error", {"replace": [("probs * (dprobs - dot)", "probs * (dot - dprobs)")]},
     r"sign error"),
    ("02", "my_softmax_backward", "missing the dot product term", {"replace": [("probs * (dprobs - dot)", "probs * dprobs")]},
     r"sum of a row of dscores"),
    ("02", "my_softmax_backward", "sum without keepdims on square scores",
     {"replace": [("sum(axis=-1, keepdims=True)", "sum(axis=-1)")]}, r"sum of a row of dscores"),
    ("02", "my_softmax_backward", "diagonal of the Jacobian only",
     {"replace": [("probs * (dprobs - dot)", "probs * (1 - probs) * dprobs")]}, r"sum of a row of dscores"),
    ("02", "my_softmax_backward", "dot product over the query axis",
     {"replace": [("sum(axis=-1, keepdims=True)", "sum(axis=-2, keepdims=True)")]}, r"sum of a row of dscores"),
    # ---- lesson 03: WordPiece
    ("03", "my_wordpiece", "shortest match first",
     {"replace": [("end = len(word)\n", "end = start + 1\n"), ("while end > start:", "while end <= len(word):"),
                  ("end -= 1", "end += 1")]}, r"my_wordpiece\('want'\): got \['\[UNK\]'\], expected \['want'\]"),
    ("03", "my_wordpiece", "no ## on continuation pieces",
     {"replace": [('word[start:end] if start == 0 else "##" + word[start:end]', "word[start:end]")]},
     r"my_wordpiece\('unwanted'\): got \['\[UNK\]'\], expected \['un', '##want', '##ed'\]"),
    ("03", "my_wordpiece", "## on the first piece too",
     {"replace": [('word[start:end] if start == 0 else "##" + word[start:end]', '"##" + word[start:end]')]},
     r"my_wordpiece\('unwanted'\): got \['\[UNK\]'\]"),
    ("03", "my_wordpiece", "[UNK] for the unmatched rest only",
     {"replace": [("return [unk_token]\n        pieces.append", "pieces.append(unk_token)\n            break\n        pieces.append")]},
     r"my_wordpiece\('unwantedx'\): got \['un', '##want', '##ed', '\[UNK\]'\], expected \['\[UNK\]'\]"),
    ("03", "my_wordpiece", "no length limit", {"replace": [("if len(word) > max_chars:", "if False:")]},
     r"'aaaaaaaa.*got \['aaa'.*expected \['\[UNK\]'\]"),
    ("03", "my_wordpiece", "never tries the whole rest", {"replace": [("end = len(word)\n", "end = len(word) - 1\n")]},
     r"my_wordpiece\('unwanted'\): got \['\[UNK\]'\], expected \['un', '##want', '##ed'\]"),
    # ---- lesson 03: masking
    ("03", "my_mask_tokens", "Bernoulli(0.15) per token instead of the exact count",
     {"replace": [("positions = sorted(candidates[:n_predict])", "positions = sorted(p for p in candidates if rng.random() < masked_lm_prob)")]},
     r"number of predictions, min\(7, max\(1, round\(0.15"),
    ("03", "my_mask_tokens", "[CLS]/[SEP] among the candidates",
     {"replace": [("candidates = [i for i, t in enumerate(tokens) if t not in (vocab.cls_id, vocab.sep_id)]",
                   "candidates = list(range(len(tokens)))")]}, r"positions chosen at \[CLS\]/\[SEP\]"),
    ("03", "my_mask_tokens", "80/2/18: the random branch decided with 0.1", {"body": """
        candidates = [i for i, t in enumerate(tokens) if t not in (vocab.cls_id, vocab.sep_id)]
        rng.shuffle(candidates)
        n_predict = min(max_predictions, max(1, round(len(tokens) * masked_lm_prob)))
        positions = sorted(candidates[:n_predict])
        input_ids = list(tokens)
        for p in positions:
            if rng.random() < 0.8:
                input_ids[p] = vocab.mask_id
            elif rng.random() < 0.1:
                input_ids[p] = rng.choice(vocab.random_ids)
        labels = [tokens[p] for p in positions]
        """}, r"share of random tokens among predictions.*got 0.0"),
    ("03", "my_mask_tokens", "one random number for both decisions: never kept",
     {"replace": [("if rng.random() < 0.8:", "r = rng.random()\n        if r < 0.8:"),
                  ("elif rng.random() < 0.5:", "elif r < 0.5:")]}, r"share of random tokens among predictions.*got 0.2"),
    ("03", "my_mask_tokens", "80/10/10 decided once per sequence",
     {"replace": [("input_ids = list(tokens)\n", "input_ids = list(tokens)\n    first, second = rng.random(), rng.random()\n"),
                  ("if rng.random() < 0.8:", "if first < 0.8:"), ("elif rng.random() < 0.5:", "elif second < 0.5:")]},
     r"first two predictions are both \[MASK\]"),
    ("03", "my_mask_tokens", "no shuffle: always the first candidates", {"replace": [("rng.shuffle(candidates)", "pass")]},
     r"mean relative rank of the chosen positions"),
    ("03", "my_mask_tokens", "int() instead of round()",
     {"replace": [("round(len(tokens) * masked_lm_prob)", "int(len(tokens) * masked_lm_prob)")]}, r"number of predictions"),
    ("03", "my_mask_tokens", "no cap at max_predictions",
     {"replace": [("min(max_predictions, max(1, round(len(tokens) * masked_lm_prob)))",
                   "max(1, round(len(tokens) * masked_lm_prob))")]}, r"\(5\d tokens\): number of predictions, min\(7, max\(1, round\(0.15 \* 5\d\)\)\): got 8, expected 7"),
    ("03", "my_mask_tokens", "the global random module instead of rng",
     {"replace": [("rng.shuffle(candidates)", "__import__('random').shuffle(candidates)")]}, r"same seed"),
    ("03", "my_mask_tokens", "labels read after masking",
     {"replace": [("labels = [tokens[p] for p in positions]", "labels = [input_ids[p] for p in positions]")]},
     r"labels \(the ORIGINAL tokens\)"),
    # ---- lesson 04: the training step
    ("04", "train_step", "no zero_grad", {"replace": [("model.zero_grad()", "pass")]},
     r"step 2 .*PLUS the gradient left in model.grads"),
    ("04", "train_step", "no clipping", {"replace": [("if norm > max_grad_norm:", "if False:")]},
     r"step 1 .*unclipped gradients .*clip them, in place"),
    ("04", "train_step", "clipping per tensor", {"replace": [
        ("if norm > max_grad_norm:\n        for g in grads.values():\n            g *= max_grad_norm / (norm + 1e-6)",
         "for g in grads.values():\n        n = math.sqrt(float((g * g).sum()))\n        if n > max_grad_norm:\n            g *= max_grad_norm / (n + 1e-6)")]},
     r"each tensor was clipped .* on its own: clip by the GLOBAL norm"),
    ("04", "train_step", "optimizer step before clipping", {"replace": [
        ("    optimizer.step()\n", ""), ("grads = model.grads\n", "grads = model.grads\n    optimizer.step()\n")]},
     r"clipped only afterwards: clip BEFORE optimizer.step\(\)"),
    ("04", "train_step", "backward before the forward pass", {"replace": [
        ("out = model(**batch)\n    model.backward()", "model.backward()\n    out = model(**batch)")]},
     r"step 1 .*train_step raised RuntimeError: backward\(\) needs a forward pass"),
    ("04", "train_step", "stale gradients: optimizer step before backward", {"body": """
        out = model(**batch)
        optimizer.step()
        model.zero_grad()
        model.backward()
        return float(out.mlm_loss), float(out.nsp_loss)
        """}, r"step 1 .*all zero: the optimizer ran before backward\(\)"),
    ("04", "train_step", "clipped a copy, not model.grads", {"replace": [
        ("for g in grads.values():\n            g *= max_grad_norm / (norm + 1e-6)",
         "grads = {n: g * (max_grad_norm / (norm + 1e-6)) for n, g in grads.items()}")]},
     r"step 1 .*unclipped gradients .*clip them, in place"),
    ("04", "train_step", "scaled to max_grad_norm even below it", {"replace": [("if norm > max_grad_norm:", "if True:")]},
     r"step 3 .*scaled although their global norm .* was below max_grad_norm"),
    ("04", "train_step", "the loss read after the update", {"replace": [
        ("return float(out.mlm_loss), float(out.nsp_loss)", "out = model(**batch)\n    return float(out.mlm_loss), float(out.nsp_loss)")]},
     r"step 1 .*the losses of THIS step's forward pass, before the update"),
    ("04", "train_step", "the loss not read as floats", {"replace": [
        ("return float(out.mlm_loss), float(out.nsp_loss)", "return out.mlm_loss, out.nsp_loss")]},
     r"what train_step returns: got 'tuple of float64, float64', expected 'a tuple of two Python floats"),
    ("04", "train_step", "a fixed max norm of 1.0", {"replace": [("max_grad_norm / (norm + 1e-6)", "1.0 / (norm + 1e-6)"),
                                                              ("if norm > max_grad_norm:", "if norm > 1.0:")]},
     r"step 1 .*the gradients optimizer.step\(\) used are not this batch's clipped gradient: got 'global norm 1"),
]

EXERCISES = [("01", "my_numerical_gradient"), ("01", "my_linear_backward"), ("01", "my_layernorm_backward"),
             ("02", "my_softmax_backward"), ("03", "my_wordpiece"), ("03", "my_mask_tokens"), ("04", "train_step")]


# what each exercise re-implements: a course handout blanks it in the library too, so a check that
# called it would fail there with NotImplementedError instead of judging the student's answer
LIBRARY_SOLUTIONS = {
    "my_numerical_gradient": [("bertnp.gradcheck", "numerical_gradient")],
    "my_linear_backward": [("bertnp.ops.linear", "linear_backward")],
    "my_layernorm_backward": [("bertnp.ops.layernorm", "layernorm_backward")],
    "my_softmax_backward": [("bertnp.ops.softmax", "softmax_backward")],
    "my_wordpiece": [("bertnp.tokenizer", "WordpieceTokenizer.tokenize_word")],
    "my_mask_tokens": [("bertnp.data", "create_masked_lm_predictions"), ("bertnp.data", "num_to_predict")],
    "train_step": [("bertnp.optim", "clip_grad_norm"), ("bertnp.optim", "global_grad_norm"),
                   ("bertnp.train", "Trainer.train")],
}


def test_every_exercise_is_listed_and_has_three_mutants():
    found = [(n, name) for n in ("01", "02", "03", "04") for name in lesson(n).exercises]
    assert sorted(found) == sorted(EXERCISES), f"exercises in the lessons {found} vs listed here {EXERCISES}"
    for key in EXERCISES:
        count = sum((m[0], m[1]) == key for m in MUTANTS)
        assert count >= 3, f"{key}: {count} mutants, at least 3 plausible wrong answers per exercise"


@pytest.mark.parametrize("number,name", EXERCISES, ids=[f"{n}-{e}" for n, e in EXERCISES])
def test_the_solution_passes_its_checks(number, name):
    output = lesson(number).run(name)
    assert "ok" in output, f"lesson {number}, {name}: the checks printed nothing:\n{output}"


@pytest.mark.parametrize("number,name", EXERCISES, ids=[f"{n}-{e}" for n, e in EXERCISES])
def test_the_checks_do_not_call_the_library_solution(number, name):
    import importlib
    blank = [(importlib.import_module(module), attribute) for module, attribute in LIBRARY_SOLUTIONS[name]]
    lesson(number).run(name, blank_library=blank)


@pytest.mark.parametrize("number,name", EXERCISES, ids=[f"{n}-{e}" for n, e in EXERCISES])
def test_a_blank_exercise_fails_its_check(number, name):
    with pytest.raises(NotImplementedError, match=f"write {name}"):
        lesson(number).run(name, source=lesson(number).blank(name))


@pytest.mark.parametrize("number,name,bug,change,message", MUTANTS,
                         ids=[f"{m[0]}-{m[1]}-{m[2]}" for m in MUTANTS])
def test_a_wrong_answer_fails_with_a_message_that_points_at_it(number, name, bug, change, message):
    with pytest.raises(AssertionError) as failure:         # teach.CheckFailed is an AssertionError
        lesson(number).run(name, **change)
    assert failure.type.__name__ == "CheckFailed", f"{bug}: a bare {failure.type.__name__}: {failure.value}"
    assert re.search(message, str(failure.value), re.S), \
        f"lesson {number}, {name}, mutant '{bug}': the check failed, but its message does not say so:\n{failure.value}"


@pytest.mark.parametrize("number", ["01", "02", "03", "04"])
def test_with_every_exercise_blank_only_the_checks_fail(number):
    """A course handout: the solutions blanked, every cell that is not a check still runs (the rest
    of a lesson uses the library), and every check cell fails, saying which exercise to write."""
    current = lesson(number)
    failures = current.run_blanked()            # raises if a cell that is not a check fails
    checks = [i for i, c in enumerate(current.cells) if "check" in c.metadata.get("tags", [])]
    assert sorted(failures) == checks, f"lesson {number}: check cells that did not fail: {sorted(set(checks) - set(failures))}"
    for i, exc in failures.items():
        assert isinstance(exc, NotImplementedError) and "EXERCISE: write" in str(exc), \
            f"lesson {number}, check cell {i}: {type(exc).__name__}: {exc}"
