"""Lesson 05's exercise check catches the plausible wrong embedding backwards, and says what is wrong."""
from __future__ import annotations

import pytest

from lesson_exercises import assert_blanked_lesson_fails_only_its_checks, assert_check_fails, run_exercise

LESSON, EXERCISE = "05_embeddings_residuals", "my_embedding_backward"

# the solution with one mistake each; the regex is what the check's message must say
CORRECT_PARTS = {
    "head": """
        B, T, C = de.shape
        de_rows = de.reshape(-1, C)
    """,
    "word": """
        dword = np.zeros(word_shape)
        np.add.at(dword, input_ids.reshape(-1), de_rows)
    """,
    "position": """
        dposition = np.zeros(position_shape)
        dposition[:T] = de.sum(axis=0)
    """,
    "type": """
        dtoken_type = np.zeros(token_type_shape)
        np.add.at(dtoken_type, token_type_ids.reshape(-1), de_rows)
    """,
}


def _body(**replaced: str) -> str:
    import textwrap
    parts = {**CORRECT_PARTS, **replaced}
    return "\n".join(textwrap.dedent(parts[k]).strip("\n") for k in ("head", "word", "position", "type"))


MUTANTS = {
    # fancy-index += keeps one occurrence of each repeated id: only the repeated rows are off
    "word_fancy_index_plus_equals": (_body(word="""
        dword = np.zeros(word_shape)
        dword[input_ids.reshape(-1)] += de_rows
    """), r"(?s)word \(7, 4\): relative error.*only 4 of 7 rows"),
    "token_type_fancy_index_plus_equals": (_body(type="""
        dtoken_type = np.zeros(token_type_shape)
        dtoken_type[token_type_ids.reshape(-1)] += de_rows
    """), r"token_type \(2, 4\): relative error"),
    "position_forgotten": (_body(position="""
        dposition = np.zeros(position_shape)
    """), r"(?s)position \(6, 4\).*all zeros"),
    "token_type_forgotten": (_body(type="""
        dtoken_type = np.zeros(token_type_shape)
    """), r"(?s)token_type \(2, 4\).*all zeros"),
    "position_shape_T_not_P": (_body(position="""
        dposition = de.sum(axis=0)
    """), r"position: your gradient has shape \(5, 4\), but position has shape \(6, 4\)"),
    "token_type_transposed": (_body(type="""
        dtoken_type = de_rows.T @ np.eye(token_type_shape[0])[token_type_ids.reshape(-1)]
    """), r"token_type: your gradient has shape \(4, 2\)"),
    "position_mean_over_batch": (_body(position="""
        dposition = np.zeros(position_shape)
        dposition[:T] = de.mean(axis=0)
    """), r"(?s)position \(6, 4\).*constant 0.3333 x"),
}


def test_solution_passes():
    run_exercise(LESSON, EXERCISE)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_check_fails_for_mutant(mutant):
    assert_check_fails(LESSON, EXERCISE, *MUTANTS[mutant])


def test_blanked_lesson_runs_and_every_check_fails():
    assert_blanked_lesson_fails_only_its_checks(LESSON)
