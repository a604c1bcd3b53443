"""Assignment 7 (hidden): mean pooling against sentence-transformers' embeddings of
all-MiniLM-L6-v2 (Hugging Face's recorded outputs), and naive Bayes on the "which book?" task."""
import numpy as np

from referee import check, close, trusted_file

REFERENCE = "lesson_data/l13_minilm_reference.npz"


def test_mean_pooling_hidden():
    from bertnp.inference import cosine_similarity, mean_pooling
    ref = np.load(trusted_file(REFERENCE))
    # 8 sentences of 9 to 26 tokens in one batch padded to 26; hidden states recorded for 16 of 384 dims
    pooled = mean_pooling(ref["last_hidden_state"], ref["attention_mask"])
    close("mean pooling of MiniLM's recorded hidden states = sentence-transformers' embeddings (16 dims)",
          pooled, ref["mean_embeddings"][:, ref["hidden_dims"]], rtol=1e-12, atol=1e-14)
    close("cosine similarities of the 8 sentence embeddings = Hugging Face's", cosine_similarity(ref["mean_embeddings"]),
          ref["cosine_similarity"], rtol=1e-12, atol=1e-13)
    pooled32 = mean_pooling(ref["last_hidden_state"].astype(np.float32), ref["attention_mask"])
    close("mean pooling of float32 hidden states", np.asarray(pooled32, dtype=np.float64),
          ref["mean_embeddings"][:, ref["hidden_dims"]], rtol=1e-5, atol=1e-6)


def test_naive_bayes_hidden():
    """900 training / 450 dev sentences from three books, WordPiece tokens of BERT-base's vocabulary:
    379 of 450 right (examples/finetune_example.py's baseline); token ids work as tokens too."""
    from bertnp.baselines import fit_naive_bayes, predict_naive_bayes
    from bertnp.finetune import read_examples
    from bertnp.tokenizer import BertTokenizer
    tokenizer = BertTokenizer(str(trusted_file("corpus/bert-base-uncased-vocab.txt")))
    train = read_examples(trusted_file("lesson_data/l14_which_book_train.tsv.gz"))
    dev = read_examples(trusted_file("lesson_data/l14_which_book_dev.tsv.gz"))
    classes = sorted({e.label for e in train})
    train_y = [classes.index(e.label) for e in train]
    dev_y = np.array([classes.index(e.label) for e in dev])
    train_tokens = [tokenizer.tokenize(e.text) for e in train]
    dev_tokens = [tokenizer.tokenize(e.text) for e in dev]
    log_prior, log_likelihood = fit_naive_bayes(train_tokens, train_y, len(classes))
    right = int((np.asarray(predict_naive_bayes(dev_tokens, log_prior, log_likelihood)) == dev_y).sum())
    check(right == 379, "dev sentences classified right by naive Bayes (of 450)", right, 379)
    # the same with token ids, and an unbalanced subset where the prior matters
    ids = [tokenizer.convert_tokens_to_ids(t) for t in train_tokens]
    keep = [i for i, y in enumerate(train_y) if y != 0 or i % 5 == 0]
    log_prior, log_likelihood = fit_naive_bayes([ids[i] for i in keep], [train_y[i] for i in keep], len(classes))
    shares = np.bincount([train_y[i] for i in keep], minlength=len(classes)) / len(keep)
    close("log P(class) on an unbalanced training set", np.asarray(log_prior, dtype=np.float64), np.log(shares), rtol=1e-12)
    dev_ids = [tokenizer.convert_tokens_to_ids(t) for t in dev_tokens]
    predicted = np.asarray(predict_naive_bayes(dev_ids, log_prior, log_likelihood))
    K = len(classes)
    expected = [int(np.argmax(np.asarray(log_prior) + sum((log_likelihood[t] for t in doc if t in log_likelihood),
                                                          np.zeros(K)))) for doc in dev_ids]
    check(predicted.tolist() == expected, "predictions on the unbalanced set: argmax of log P(c) + sum log P(t | c) "
          f"({int((predicted != np.array(expected)).sum())} of {len(dev)} differ)", predicted.tolist()[:10], expected[:10])
