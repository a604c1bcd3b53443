"""Lesson 05's exercise check catches the plausible wrong embedding backwards, and says what is wrong."""
from __future__ import annotations

import pytest

from lesson_exercises import Lesson

LESSON, EXERCISE = Lesson.get("05"), "my_embedding_backward"

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
    """), r"(?s)word \(7, 4\): relative error.*only rows \[(\d+, ){3}\d+\] of 7 and columns"),
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


def test_the_tests_copy_of_the_solution_passes():
    LESSON.run(EXERCISE, body=_body())     # the mutants above are edits of it


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_check_fails_for_mutant(mutant):
    body, message = MUTANTS[mutant]
    LESSON.assert_fails(EXERCISE, message, body=body)
