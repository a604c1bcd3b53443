"""Lesson 14: its check must reject the plausible wrong naive Bayes classifiers; its data (package
data of bertnp.lesson_data) must be the examples' task files."""
import gzip
from pathlib import Path

import pytest

from bertnp.lesson_data.lessons_11_14 import which_book
from lesson_runner import exercise_tests

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data" / "corpus_source"

FIT = """
    labels = np.asarray(labels)
    counts = [Counter() for _ in range(num_classes)]
    for tokens, c in zip(documents, labels):
        counts[c].update({count_what})
    vocabulary = sorted(set().union(*counts))
    log_prior = {prior}
    totals = np.array([sum(counts[c].values()) for c in range(num_classes)])
    denominators = totals + {extra}
    log_likelihood = {{t: np.log(np.array([counts[c][t] + {add} for c in range(num_classes)]) / denominators)
                      for t in vocabulary}}
"""
RIGHT = dict(count_what="tokens", prior="np.log(np.bincount(labels, minlength=num_classes) / len(labels))",
             extra="len(vocabulary)", add="1")
PREDICT_WITHOUT_PRIOR = """
    predictions = []
    for tokens in documents:
        score = np.zeros_like(log_prior)
        for t in tokens:
            if t in log_likelihood:
                score += log_likelihood[t]
        predictions.append(int(np.argmax(score)))
"""
PREDICT_UNSEEN = """
    predictions = [int(np.argmax(log_prior + sum(log_likelihood[t] for t in tokens))) for tokens in documents]
"""

MUTANTS = {
    "no smoothing (log 0)": ({0: FIT.format(**{**RIGHT, "extra": "0", "add": "0"})}, "smoothing"),
    "smoothing without |V| in the denominator": ({0: FIT.format(**{**RIGHT, "extra": "0"})}, r"log P\(token"),
    "no class prior": ({0: FIT.format(**{**RIGHT, "prior": "np.zeros(num_classes)"})}, r"log P\(class\)"),
    "prior fitted but not used": ({1: PREDICT_WITHOUT_PRIOR}, "predictions for"),
    "documents counted instead of tokens": ({0: FIT.format(**{**RIGHT, "count_what": "set(tokens)"})},
                                            "once per document"),
    "unseen tokens not skipped": ({1: PREDICT_UNSEEN}, "never seen in training"),
}


namespace, test_solution_passes, test_mutant_fails_with_a_pointed_message, \
    test_blank_solution_fails_in_the_check = exercise_tests("14", "fit_naive_bayes", MUTANTS, regions=2)


@pytest.mark.parametrize("split", ["train", "dev"])
def test_lesson_data_is_the_examples_task(split):
    assert gzip.decompress(which_book(split).read_bytes()) == (EXAMPLES / f"{split}.tsv").read_bytes(), \
        f"bertnp/lesson_data/l14_which_book_{split}.tsv.gz differs from examples/data/corpus_source/{split}.tsv: " \
        "regenerate it (bertnp/lesson_data/README.md)"


def test_which_book_rejects_a_bad_split():
    with pytest.raises(ValueError, match="split"):
        which_book("test")
