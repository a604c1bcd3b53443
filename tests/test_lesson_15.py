"""Lesson 15's exercise checks (the FLOPs of an encoder layer; the scored rows; the warp's butterfly sum) pass the
solutions and fail, saying what is wrong, for the plausible wrong answers (see tests/lesson_exercises.py;
the solutions and blanks of every lesson: tests/test_lesson_exercises.py)."""
from __future__ import annotations

import pytest

from lesson_exercises import Lesson

LESSON = Lesson.get("15")

LAYER = """
tokens = B * T
weights = 2 * tokens * (C * 3 * C + C * C + C * I + I * C)
head_size = C // num_heads
scores = 2 * B * num_heads * T * T * head_size
context = 2 * B * num_heads * T * head_size * T
forward = weights + scores + context
backward = 2 * forward
"""

FLOP_MUTANTS = {
    # the backward computes dA and dB for every product: 2x the forward, not 1x
    "backward_equals_forward": (LAYER.replace("backward = 2 * forward", "backward = forward"),
                                r"backward FLOPs differ.*TWO products in the backward"),
    # Q K^T and P V have no weights: a count from the parameters misses them
    "attention_products_forgotten": (LAYER.replace("forward = weights + scores + context", "forward = weights"),
                                     r"forward FLOPs differ.*misses exactly the 73,728 FLOPs of the products between activations"),
    "multiply_add_counted_as_one": (LAYER.replace("2 * ", "").replace("backward = forward", "backward = 2 * forward"),
                                    r"forward FLOPs differ.*half the count: a multiply-add is 2 FLOPs"),
    # per head with the full width C instead of C / num_heads
    "attention_times_the_heads": (LAYER.replace("head_size = C // num_heads", "head_size = C"),
                                  r"forward FLOPs differ.*multiplied the attention by the number of heads"),
    "output_projection_forgotten": (LAYER.replace("C * 3 * C + C * C", "C * 3 * C"),
                                    r"forward FLOPs differ.*the layer's forward products.*\(48, 16\) @ \(16, 16\).*compare your list"),
    "one_ffn_product_only": (LAYER.replace(" + I * C)", ")"), r"forward FLOPs differ.*compare your list"),
}

ROWS_MUTANTS = {
    # the MLM head's rows only: the pooler reads each [CLS] too (sequence 2's is labelled: not missed)
    "cls_forgotten": ("""
        return np.flatnonzero(labels.reshape(-1) != ignore_index)
    """, r"missing: 0 \(\[CLS\] of sequence 0\), 6 \(\[CLS\] of sequence 1\)$"),
    # every row: nothing saved
    "every_row": ("""
        return np.arange(labels.size)
    """, r"extra: \[1, 3, 4, 7,"),
    # positions within each sequence instead of flat rows of (B*T, C)
    "positions_not_flat_rows": ("""
        return np.union1d(np.nonzero(labels != ignore_index)[1], [0])
    """, r"missing: 6 \(\[CLS\] of sequence 1\), 12 \(\[CLS\] and label \(2, 0\)\), 13 \(label \(2, 1\)\)"
         r" -- extra: \[1\]"),
    # the [CLS] rows spaced T - 1 apart
    "cls_off_by_one": ("""
        batch, seq_len = labels.shape
        return np.union1d(np.flatnonzero(labels.reshape(-1) != ignore_index), np.arange(batch) * (seq_len - 1))
    """, r"missing: 6 \(\[CLS\] of sequence 1\) -- extra: \[10\]"),
    # labelled rows and [CLS] rows put together and sorted: a labelled [CLS] comes twice
    "repeated_row": ("""
        batch, seq_len = labels.shape
        return np.sort(np.concatenate([np.flatnonzero(labels.reshape(-1) != ignore_index),
                                       np.arange(batch) * seq_len]))
    """, r"each row once -- repeated: \[12\]"),
    # the right rows, but the [CLS] rows first: not sorted
    "not_sorted": ("""
        batch, seq_len = labels.shape
        cls_rows = np.arange(batch) * seq_len
        return np.concatenate([cls_rows, np.setdiff1d(np.flatnonzero(labels.reshape(-1) != ignore_index), cls_rows)])
    """, r"the rows, sorted: 4 of 6 entries differ"),
    # a mask of the rows instead of their indices
    "boolean_mask": ("""
        read = labels.reshape(-1) != ignore_index
        read[::labels.shape[1]] = True
        return read
    """, r"1-D array of integer row indices -- it is bool of shape \(18,\); a mask\? np.flatnonzero"),
    # (sequence, position) pairs instead of flat rows
    "pairs": ("""
        batch, seq_len = labels.shape
        pairs = {(int(b), int(t)) for b, t in zip(*np.nonzero(labels != ignore_index))}
        return sorted(pairs | {(b, 0) for b in range(batch)})
    """, r"it is int64 of shape \(6, 2\); a flat index is one number a row: b \* T \+ t"),
    # np.nonzero's tuple of index arrays, returned as is
    "nonzero_tuple": ("""
        read = labels != ignore_index
        read[:, 0] = True
        return np.nonzero(read.reshape(-1))
    """, r"it is int64 of shape \(1, 6\)"),
    # float row numbers (cannot index an array)
    "float_rows": ("""
        batch, seq_len = labels.shape
        return np.union1d(np.flatnonzero(labels.reshape(-1) != ignore_index), np.arange(batch) * seq_len * 1.0)
    """, r"it is float64 of shape \(6,\)"),
}

WARP_MUTANTS = {
    # __shfl_down_sync: lane l reads lane l + off (its own value past the end): only lane 0 gets the total
    "shfl_down_instead_of_xor": ("""
        lane_ids = np.arange(32)
        v = lanes.copy()
        for off in (16, 8, 4, 2, 1):
            v = v + v[..., np.where(lane_ids + off < 32, lane_ids + off, lane_ids)]
    """, r"every lane holds the same total, but in warp 0 lanes"),
    # one lane after another, in place: later lanes read partners that were already updated
    "lanes_updated_one_at_a_time": ("""
        v = lanes.copy()
        for off in (16, 8, 4, 2, 1):
            for lane in range(32):
                v[..., lane] += v[..., lane ^ off]
    """, r"(lane 0 of warp \d+ holds|every lane holds the same total)"),
    "masks_in_the_other_order": ("""
        lane_ids = np.arange(32)
        v = lanes.copy()
        for off in (1, 2, 4, 8, 16):
            v = v + v[..., lane_ids ^ off]
    """, r"right to float32 rounding, but \d+ of 500 warps differ"),
    "only_half_the_lanes": ("""
        lane_ids = np.arange(32)
        v = lanes.copy()
        for off in (8, 4, 2, 1):
            v = v + v[..., lane_ids ^ off]
    """, r"lane 0 of warp \d+ holds .* are all 32 lanes' values in it, each once"),
    "numpy_sum_broadcast": ("""
        v = np.repeat(lanes.sum(axis=-1, keepdims=True), 32, axis=-1)
    """, r"right to float32 rounding, but \d+ of 500 warps differ"),
    "input_modified_in_place": ("""
        lane_ids = np.arange(32)
        v = lanes
        for off in (16, 8, 4, 2, 1):
            v += v[..., lane_ids ^ off]
    """, r"leaves its input unchanged"),
    "summed_in_float64": ("""
        lane_ids = np.arange(32)
        v = lanes.astype(np.float64)
        for off in (16, 8, 4, 2, 1):
            v = v + v[..., lane_ids ^ off]
    """, r"stay float32"),
}


def test_the_tests_copy_of_the_solution_passes():
    LESSON.run("my_encoder_layer_flops", body=LAYER)          # the FLOP mutants are edits of it


@pytest.mark.parametrize("name", sorted(FLOP_MUTANTS))
def test_flop_check_fails_for_mutant(name):
    body, message = FLOP_MUTANTS[name]
    LESSON.assert_fails("my_encoder_layer_flops", message, body=body)


@pytest.mark.parametrize("name", sorted(ROWS_MUTANTS))
def test_scored_rows_check_fails_for_mutant(name):
    body, message = ROWS_MUTANTS[name]
    LESSON.assert_fails("my_scored_rows", message, body=body)


@pytest.mark.parametrize("name", sorted(WARP_MUTANTS))
def test_warp_sum_check_fails_for_mutant(name):
    body, message = WARP_MUTANTS[name]
    LESSON.assert_fails("my_warp_sum", message, body=body)
