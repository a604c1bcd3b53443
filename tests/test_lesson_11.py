"""Lesson 11's check must reject the plausible wrong accumulations and accept the right one."""
import pytest

from bertnp import teach
from lesson_runner import exercise_index, lesson_cells, run_cells, run_exercise

CELLS = lesson_cells("11")

PLAIN_AVERAGE = """
    K = len(micro_batches)
    for mb in micro_batches:
        model.zero_grad()
        out = model(**mb)
        loss += float(out.loss) / K
        for name, g in model.backward().items():
            grads[name] += g / K
"""

# the solution with a different weight for one of the two losses
WEIGHTED = """
    n_tokens = sum(int((mb["labels"] != -100).sum()) for mb in micro_batches)
    n_sequences = sum(len(mb["next_sentence_label"]) for mb in micro_batches)
    for mb in micro_batches:
        inputs = {{k: mb[k] for k in ("input_ids", "attention_mask", "token_type_ids")}}
        n_k, b_k = int((mb["labels"] != -100).sum()), len(mb["next_sentence_label"])
        for label_name, weight in (("labels", {mlm}), ("next_sentence_label", {nsp})):
            {zero}
            out = model(**inputs, **{{label_name: mb[label_name]}})
            loss += {loss} * float(out.loss)
            for name, g in model.backward().items():
                grads[name] += weight * g
"""

MUTANTS = {
    "plain 1/K average": (PLAIN_AVERAGE, "plain average over micro-batches"),
    "MLM normalised by sequences": (WEIGHTED.format(mlm="b_k / n_sequences", nsp="b_k / n_sequences",
                                                    zero="model.zero_grad()", loss="weight"), "share of SEQUENCES"),
    "NSP normalised by tokens": (WEIGHTED.format(mlm="n_k / n_tokens", nsp="n_k / n_tokens",
                                                 zero="model.zero_grad()", loss="weight"), "share of labelled TOKENS"),
    "no zero_grad between passes": (WEIGHTED.format(mlm="n_k / n_tokens", nsp="b_k / n_sequences", zero="pass", loss="weight"),
                                    "did you zero the gradients"),
    "loss logged as the average of micro-batch means": (WEIGHTED.format(
        mlm="n_k / n_tokens", nsp="b_k / n_sequences", zero="model.zero_grad()", loss="1 / len(micro_batches)"),
        "your gradient is right, your loss is not"),
}


@pytest.fixture(scope="module")
def namespace():
    return run_cells(CELLS, exercise_index(CELLS, "accumulate"))


def test_solution_passes(namespace):
    run_exercise(CELLS, dict(namespace), "accumulate")


@pytest.mark.parametrize("name", MUTANTS)
def test_mutant_fails_with_a_pointed_message(namespace, name):
    body, message = MUTANTS[name]
    with pytest.raises(teach.CheckFailed, match=message):
        run_exercise(CELLS, dict(namespace), "accumulate", body)


def test_blank_solution_fails_in_the_check():
    with pytest.raises(NotImplementedError):
        run_exercise(CELLS, run_cells(CELLS, exercise_index(CELLS, "accumulate")), "accumulate",
                     "raise NotImplementedError('accumulate')")
