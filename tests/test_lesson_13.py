"""Lesson 13's check must reject the plausible wrong poolings and similarities and accept the right ones."""
from lesson_runner import exercise_tests

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


namespace, test_solution_passes, test_mutant_fails_with_a_pointed_message, \
    test_blank_solution_fails_in_the_check = exercise_tests("13", "mean_pooling", MUTANTS, regions=2)
