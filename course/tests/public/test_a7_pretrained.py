"""Assignment 7 (public): using a pretrained BERT -- sentence vectors by mean pooling over the
attention mask and their cosine similarities; the naive-Bayes baseline a fine-tuned classifier
must beat."""
import math

import numpy as np

from referee import CheckFailed, check, close

# a tiny example by hand: sentences of 2, 3 and 1 real tokens, padded to 4 with large garbage
HIDDEN = np.array([[[1.0, 2.0], [3.0, 6.0], [90.0, -90.0], [55.0, 55.0]],
                   [[0.0, 3.0], [6.0, 0.0], [3.0, 3.0], [-70.0, 70.0]],
                   [[4.0, -4.0], [80.0, 80.0], [80.0, 80.0], [80.0, 80.0]]])        # (3, 4, 2)
MASK = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])
POOLED = np.array([[2.0, 4.0], [3.0, 2.0], [4.0, -4.0]])


def test_mean_pooling():
    """Task 7.1: the mean of the hidden states over the REAL tokens (mask 1), padding ignored;
    cosine similarity of every row with every row."""
    from bertnp.inference import cosine_similarity, mean_pooling
    pooled = np.asarray(mean_pooling(HIDDEN, MASK), dtype=np.float64)
    check(pooled.shape == (3, 2), "mean_pooling's shape: (B, T, C), (B, T) -> (B, C)", pooled.shape, (3, 2))
    if not np.allclose(pooled, POOLED, rtol=1e-12):
        hint = ""
        if np.allclose(pooled, (HIDDEN * MASK[:, :, None]).sum(1) / HIDDEN.shape[1]):
            hint = "\n  hint: you divided by all T = 4 positions, padding included: divide by each row's number of REAL tokens"
        elif np.allclose(pooled, HIDDEN.mean(axis=1)):
            hint = "\n  hint: the padding positions entered the mean: weigh each position by its mask"
        raise CheckFailed(f"mean_pooling of 3 sentences with 2, 3 and 1 real tokens (padding full of garbage):\n"
                          f"  got {pooled.tolist()}\n  expected {POOLED.tolist()}{hint}")
    # padding changes nothing: the same first sentence padded to 6 with other garbage
    longer = np.concatenate([HIDDEN[:1], np.full((1, 2, 2), 1e3)], axis=1)
    close("a sentence padded further (more garbage)", mean_pooling(longer, np.array([[1, 1, 0, 0, 0, 0]])),
          POOLED[:1], rtol=1e-12)
    try:
        mean_pooling(HIDDEN[:1], np.zeros((1, 4), dtype=np.int64))
    except ValueError:
        pass
    else:
        raise CheckFailed("mean_pooling of a row whose mask is all 0 must raise ValueError (nothing to average), "
                          "not return NaN")
    # cosine similarity: rows scaled to length 1, then every dot product
    vectors = np.array([[1.0, 0.0], [3.0, 3.0], [0.0, -0.5]])
    r = 1 / math.sqrt(2)
    expected = np.array([[1.0, r, 0.0], [r, 1.0, -r], [0.0, -r, 1.0]])
    sim = np.asarray(cosine_similarity(vectors), dtype=np.float64)
    if sim.shape == (3, 3) and np.allclose(sim, vectors @ vectors.T):
        raise CheckFailed("cosine_similarity returned plain dot products: scale each row to length 1 first")
    close("cosine_similarity of [1, 0], [3, 3], [0, -0.5] (the angles 0, 45, 90, 135 degrees)", sim, expected,
          rtol=1e-12, atol=1e-15)
    close("cosine_similarity(a, b): every row of a with every row of b, (3, 1)", cosine_similarity(vectors, vectors[1:2] * 7),
          expected[:, 1:2], rtol=1e-12, atol=1e-15)


def test_naive_bayes():
    """Task 7.2: multinomial naive Bayes -- priors from the class shares, token likelihoods with
    add-one smoothing over the training vocabulary, unseen tokens skipped, argmax of the log score."""
    from bertnp.baselines import fit_naive_bayes, predict_naive_bayes
    # class 0: "a b b", "b c", "a" (3 documents, tokens a a b b b c: 6); class 1: "c c d" (1 document, 3 tokens)
    documents = [["a", "b", "b"], ["b", "c"], ["c", "c", "d"], ["a"]]
    log_prior, log_likelihood = fit_naive_bayes(documents, [0, 0, 1, 0], 2)
    check(set(log_likelihood) == {"a", "b", "c", "d"}, "log_likelihood's tokens: the training vocabulary V",
          sorted(log_likelihood), ["a", "b", "c", "d"])
    table = np.array([log_likelihood[t] for t in "abcd"], dtype=np.float64)          # (4 tokens, 2 classes)
    if not np.all(np.isfinite(table)):
        raise CheckFailed(f"log P(token | class) is not finite:\n{table}\n  hint: 'a' never occurs in class 1 and "
                          "'d' never in class 0: log 0 = -inf vetoes a class -- that is what add-one smoothing is for")
    # P(t | c) = (count + 1) / (tokens of c + |V|): class 0 over 6 + 4, class 1 over 3 + 4
    expected = np.log(np.array([[3 / 10, 1 / 7], [4 / 10, 1 / 7], [2 / 10, 3 / 7], [1 / 10, 2 / 7]]))
    close("log P(token | class) of a, b, c, d (rows) in classes 0, 1 (columns)", table, expected, rtol=1e-12)
    close("log P(class): the share of training documents in each class", np.asarray(log_prior, dtype=np.float64),
          np.log([3 / 4, 1 / 4]), rtol=1e-12)
    # "c" alone: its likelihood favours class 1 (3/7 > 2/10), the prior 3/4 : 1/4 tips it to class 0
    documents = [["c"], ["d", "d"], ["zzz", "a"], []]
    try:
        predicted = np.asarray(predict_naive_bayes(documents, log_prior, log_likelihood))
    except KeyError as exc:
        raise CheckFailed(f"predict_naive_bayes raised KeyError {exc} for a token never seen in training: skip "
                          "such tokens (they are evidence for no class)") from None
    if predicted.tolist() == [1, 1, 0, 0]:
        raise CheckFailed("predict_naive_bayes(['c']) gives class 1: the likelihood alone favours it, but the score "
                          "is log P(c) + sum of log P(t | c) -- the prior 3/4 : 1/4 makes it class 0")
    check(predicted.tolist() == [0, 1, 0, 0], "predictions for ['c'], ['d', 'd'], ['zzz' (never seen), 'a'] and an "
          "empty document (the prior decides)", predicted.tolist(), [0, 1, 0, 0])
