"""Lesson 13's check must reject the plausible wrong poolings and similarities and accept the right ones."""
import pytest

from bertnp import teach
from lesson_runner import exercise_index, lesson_cells, run_cells, run_exercise

CELLS = lesson_cells("13")
NAME = "mean_pooling"

MUTANTS = {   # {solution region: body}, the expected words of the hint
    "padding in the mean": ({0: "pooled = last_hidden_state.mean(axis=1)"}, "the padding is in it"),
    "masked sum over the full length": (
        {0: "pooled = (last_hidden_state * attention_mask[:, :, None]).sum(axis=1) / last_hidden_state.shape[1]"},
        "divide by each sentence's own count"),
    "[CLS] vector instead of the mean": ({0: "pooled = last_hidden_state[:, 0]"}, "mean_pooling, tiny example"),
    "dot products, not normalised": ({1: "similarity = embeddings @ embeddings.T"}, "normalise first"),
    "normalised on one side only": (
        {1: "similarity = embeddings @ embeddings.T / np.linalg.norm(embeddings, axis=1, keepdims=True)"},
        "cosine similarity, tiny example"),
}


@pytest.fixture(scope="module")
def namespace():
    return run_cells(CELLS, exercise_index(CELLS, NAME))


def test_solution_passes(namespace):
    run_exercise(CELLS, dict(namespace), NAME)


@pytest.mark.parametrize("name", MUTANTS)
def test_mutant_fails_with_a_pointed_message(namespace, name):
    bodies, message = MUTANTS[name]
    with pytest.raises(teach.CheckFailed, match=message):
        run_exercise(CELLS, dict(namespace), NAME, bodies)


def test_blank_solution_fails_in_the_check(namespace):
    with pytest.raises(NotImplementedError):
        run_exercise(CELLS, dict(namespace), NAME, {0: "raise NotImplementedError('mean_pooling')",
                                                     1: "raise NotImplementedError('cosine_similarity_matrix')"})
