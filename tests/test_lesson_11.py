"""Lesson 11's check must reject the plausible wrong accumulations and accept the right one."""
from lesson_runner import exercise_tests

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


namespace, test_solution_passes, test_mutant_fails_with_a_pointed_message, \
    test_blank_solution_fails_in_the_check = exercise_tests("11", "accumulate", MUTANTS)
