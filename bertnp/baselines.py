"""Baselines without a network: what a classifier must beat before its accuracy means anything.

Multinomial naive Bayes over tokens with add-one (Laplace) smoothing, the bag-of-words baseline of
``examples/finetune_example.py`` and lesson 14 (whose exercise writes the same two functions):

    log_prior, log_likelihood = fit_naive_bayes(train_tokens, train_labels, num_classes)
    predicted = predict_naive_bayes(dev_tokens, log_prior, log_likelihood)       # (n,) class ids

A document is any sequence of hashable tokens (WordPiece strings, token ids). The model scores a
document of tokens t_1..t_n in class c as log P(c) + sum_i log P(t_i | c) and predicts the
highest score (the first class on a tie); tokens never seen in training are skipped.
(Jurafsky & Martin, *Speech and Language Processing*, ch. 4, derives it.)
"""
from __future__ import annotations

from collections import Counter

import numpy as np

__all__ = ["fit_naive_bayes", "predict_naive_bayes"]


def _check_labels(labels, n_documents: int, num_classes) -> np.ndarray:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    labels = np.asarray(labels)
    if labels.shape != (n_documents,):
        raise ValueError(f"labels must hold one class id per document: shape {labels.shape}, "
                         f"expected ({n_documents},)")
    if n_documents == 0:
        raise ValueError("documents is empty: nothing to fit")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be integer class ids in [0, {num_classes}), got {labels[:5].tolist()} ...")
    return labels


def fit_naive_bayes(documents, labels, num_classes: int) -> tuple[np.ndarray, dict]:
    """Fit multinomial naive Bayes with add-one smoothing.

    ``documents``: a list of token sequences; ``labels``: one class id in [0, num_classes) per
    document. Returns ``(log_prior, log_likelihood)``: ``log_prior`` a (num_classes,) array of
    log P(c) (the share of training documents in class c); ``log_likelihood`` a dict
    {token: (num_classes,) array of log P(token | c)} over the tokens seen in training, where every
    occurrence counts and each of the V seen tokens gets one extra count in every class."""
    documents = list(documents)
    labels = _check_labels(labels, len(documents), num_classes)
    # TASK 7.2 fit_naive_bayes: priors and add-one smoothed token likelihoods (lesson 14)
    counts = [Counter() for _ in range(num_classes)]                  # token occurrences per class
    for tokens, c in zip(documents, labels):
        counts[c].update(tokens)
    vocabulary = sorted(set().union(*counts), key=str)                # V: every token seen in training
    class_sizes = np.bincount(labels, minlength=num_classes)          # (num_classes,) documents per class
    with np.errstate(divide="ignore"):                                # a class without documents: log 0
        log_prior = np.log(class_sizes / len(labels))
    denominators = np.array([sum(counts[c].values()) for c in range(num_classes)]) + len(vocabulary)
    log_likelihood = {t: np.log(np.array([counts[c][t] + 1 for c in range(num_classes)]) / denominators)
                      for t in vocabulary}
    # END TASK 7.2
    return log_prior, log_likelihood


def predict_naive_bayes(documents, log_prior, log_likelihood: dict) -> np.ndarray:
    """The most likely class of each document under :func:`fit_naive_bayes`'s model: a
    (len(documents),) int array. Tokens that are not in ``log_likelihood`` are skipped."""
    log_prior = np.asarray(log_prior, dtype=np.float64)
    if log_prior.ndim != 1:
        raise ValueError(f"log_prior must be a (num_classes,) array, got shape {log_prior.shape}")
    predictions = []
    # TASK 7.2 predict_naive_bayes: log P(c) + the log-likelihoods of the known tokens, argmax (lesson 14)
    for tokens in documents:
        score = log_prior.copy()                                      # (num_classes,)
        for t in tokens:
            if t in log_likelihood:                                   # never seen in training: no evidence
                score += log_likelihood[t]
        predictions.append(int(np.argmax(score)))
    # END TASK 7.2
    return np.array(predictions, dtype=np.int64)
