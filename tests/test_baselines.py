"""bertnp.baselines: multinomial naive Bayes with add-one smoothing (the baseline of fine-tuning)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bertnp.baselines import fit_naive_bayes, predict_naive_bayes


def test_naive_bayes_by_hand():
    # class 0: "a b b", "b c" (tokens a b b b c: 5); class 1: "c c d" (3); V = {a, b, c, d}
    log_prior, log_lik = fit_naive_bayes([["a", "b", "b"], ["b", "c"], ["c", "c", "d"]], [0, 0, 1], 2)
    np.testing.assert_allclose(log_prior, np.log([2 / 3, 1 / 3]), rtol=1e-15)
    expected = {"a": [2 / 9, 1 / 7], "b": [4 / 9, 1 / 7], "c": [2 / 9, 3 / 7], "d": [1 / 9, 2 / 7]}
    assert sorted(log_lik) == ["a", "b", "c", "d"]
    for token, probabilities in expected.items():
        np.testing.assert_allclose(log_lik[token], np.log(probabilities), rtol=1e-15)
        # every class's likelihoods sum to 1 over V
    assert all(math.isclose(sum(math.exp(log_lik[t][c]) for t in log_lik), 1.0) for c in (0, 1))
    # "c": 2/9 vs 3/7 favours class 1, the prior 2/3 vs 1/3 tips it to 0; unknown tokens are skipped
    assert predict_naive_bayes([["c"], ["d", "d"], ["zzz", "a"], []], log_prior, log_lik).tolist() == [0, 1, 0, 0]


def test_naive_bayes_on_the_which_book_task_matches_the_example():
    """examples/finetune_example.py's baseline: 379 of 450 dev sentences (WordPiece tokens of
    BERT-base's uncased vocabulary, which all-MiniLM-L6-v2 shares)."""
    from bertnp.corpus import bert_base_uncased_vocab
    from bertnp.finetune import read_examples
    from bertnp.lesson_data.lessons_11_14 import which_book
    from bertnp.tokenizer import BertTokenizer
    tok = BertTokenizer(str(bert_base_uncased_vocab()))
    train, dev = read_examples(which_book("train")), read_examples(which_book("dev"))
    classes = sorted({e.label for e in train})
    model = fit_naive_bayes([tok.tokenize(e.text) for e in train], [classes.index(e.label) for e in train], 3)
    predicted = predict_naive_bayes([tok.tokenize(e.text) for e in dev], *model)
    assert int((predicted == np.array([classes.index(e.label) for e in dev])).sum()) == 379


@pytest.mark.parametrize("labels, num_classes, match", [
    ([0, 1], 2, r"one class id per document: shape \(2,\), expected \(3,\)"),
    ([0, 1, 2], 2, r"integer class ids in \[0, 2\)"),
    ([0, -1, 1], 2, r"integer class ids in \[0, 2\)"),
    ([0.0, 1.0, 1.0], 2, r"integer class ids"),
    ([0, 1, 1], 0, "num_classes must be a positive integer"),
    ([0, 1, 1], True, "num_classes must be a positive integer"),
])
def test_naive_bayes_bad_input_is_named(labels, num_classes, match):
    with pytest.raises(ValueError, match=match):
        fit_naive_bayes([["a"], ["b"], ["c"]], labels, num_classes)


def test_naive_bayes_empty_and_bad_prior():
    with pytest.raises(ValueError, match="documents is empty"):
        fit_naive_bayes([], [], 2)
    with pytest.raises(ValueError, match=r"log_prior must be a \(num_classes,\) array"):
        predict_naive_bayes([["a"]], np.zeros((2, 2)), {})
