"""Google BERT's instance generation, written out on its own, as the source of the golden rows
of ``tests/test_data.py::test_same_random_stream_as_google``.

This follows the functions of google-research/bert's ``create_pretraining_data.py`` (Apache-2.0)
step for step and draw for draw -- ``create_training_instances``, ``create_instances_from_document``,
``create_masked_lm_predictions`` (``do_whole_word_mask=False``) and ``truncate_seq_pair`` -- on
token *strings*, with Python's ``random.Random`` as Google's ``rng``. It imports nothing from
bertnp and only the standard library, so it checks bertnp's ``bertnp.data`` from the outside:

    python tests/reference/google_pretraining_data.py      # prints the rows test_data.py holds

Google's script reads text files and tokenizes them; here the documents are given already split
into sentences of tokens (``w5`` ... ``w29``, the strings of ids 5..29), the rest is unchanged.
Its TF-example writer is left out: a row is (number of segment-B tokens, masked input ids,
masked positions, labels, is_random_next), the ids being the tokens' indices in ``VOCAB``.
"""
from __future__ import annotations

import random

# the vocabulary of the golden test: ids 0..29; Google's vocab_words is list(vocab.keys()), specials included
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, 30)]

# the token-id documents of the golden test (sentences of ids)
DOCUMENTS = [
    [[28, 23, 14], [28, 18, 29, 27], [22, 12, 25, 28, 20], [18, 21, 28, 24, 11, 14]],
    [[21, 7, 28, 29, 11, 27], [27, 25, 9, 22, 11, 18, 6, 29], [25, 18, 19, 8, 28, 28], [29, 15, 17],
     [16, 11, 15, 18, 18, 15]],
    [[18, 12, 11, 6], [29, 5, 13, 21], [29, 23, 27, 18, 24, 8], [25, 24, 29, 12, 12, 19], [9, 11, 16, 20, 24, 25]],
    [[17, 24, 15, 15, 27], [10, 26, 27, 29, 9, 15, 11, 23]],
    [[10, 5]],
]
# the options of the golden test
OPTIONS = dict(max_seq_length=16, dupe_factor=2, short_seq_prob=0.3, masked_lm_prob=0.15,
               max_predictions_per_seq=3, seed=7)


class TrainingInstance:
    def __init__(self, tokens, segment_ids, masked_lm_positions, masked_lm_labels, is_random_next):
        self.tokens = tokens
        self.segment_ids = segment_ids
        self.masked_lm_positions = masked_lm_positions
        self.masked_lm_labels = masked_lm_labels
        self.is_random_next = is_random_next


def create_training_instances(all_documents, vocab_words, max_seq_length, dupe_factor, short_seq_prob,
                              masked_lm_prob, max_predictions_per_seq, rng):
    """Google's function after reading its files: drop empty documents, shuffle the documents,
    ``dupe_factor`` passes over them, shuffle the instances."""
    all_documents = [d for d in all_documents if d]
    rng.shuffle(all_documents)
    instances = []
    for _ in range(dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(create_instances_from_document(
                all_documents, document_index, max_seq_length, short_seq_prob, masked_lm_prob,
                max_predictions_per_seq, vocab_words, rng))
    rng.shuffle(instances)
    return instances


def create_instances_from_document(all_documents, document_index, max_seq_length, short_seq_prob,
                                   masked_lm_prob, max_predictions_per_seq, vocab_words, rng):
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3                     # [CLS] A [SEP] B [SEP]
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:                       # once per document
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    current_chunk = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1                                   # sentences of the chunk that go into A
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])
                tokens_b = []
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):                     # another document, 10 tries
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    i -= len(current_chunk) - a_end         # put the unused sentences back
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                assert len(tokens_a) >= 1 and len(tokens_b) >= 1
                tokens = ["[CLS]"] + tokens_a + ["[SEP]"] + tokens_b + ["[SEP]"]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                tokens, positions, labels = create_masked_lm_predictions(
                    tokens, masked_lm_prob, max_predictions_per_seq, vocab_words, rng)
                instances.append(TrainingInstance(tokens, segment_ids, positions, labels, is_random_next))
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def create_masked_lm_predictions(tokens, masked_lm_prob, max_predictions_per_seq, vocab_words, rng):
    """Google's masking without whole-word masking: shuffle the candidates (every position but
    [CLS] and [SEP], one list each), take them in turn, 80% [MASK], 10% kept, 10% a random word
    of the whole vocabulary."""
    cand_indexes = [[i] for i, token in enumerate(tokens) if token not in ("[CLS]", "[SEP]")]
    rng.shuffle(cand_indexes)
    output_tokens = list(tokens)
    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
    masked = []                                             # (index, label)
    covered = set()
    for index_set in cand_indexes:
        if len(masked) >= num_to_predict:
            break
        if len(masked) + len(index_set) > num_to_predict:
            continue
        if any(index in covered for index in index_set):
            continue
        for index in index_set:
            covered.add(index)
            if rng.random() < 0.8:
                masked_token = "[MASK]"
            elif rng.random() < 0.5:
                masked_token = tokens[index]
            else:
                masked_token = vocab_words[rng.randint(0, len(vocab_words) - 1)]
            output_tokens[index] = masked_token
            masked.append((index, tokens[index]))
    masked.sort(key=lambda pair: pair[0])
    return output_tokens, [index for index, _ in masked], [label for _, label in masked]


def truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng):
    """Remove one token at a time from the longer of A and B (B on a tie), from the front or the
    back with probability 1/2 each."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc_tokens) >= 1
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


def golden_rows(documents=DOCUMENTS, seed=OPTIONS["seed"]) -> list:
    """The rows of the golden test: Google's instances from the token-id ``documents``."""
    as_strings = [[[VOCAB[t] for t in sentence] for sentence in doc] for doc in documents]
    ids = {token: i for i, token in enumerate(VOCAB)}
    options = {k: v for k, v in OPTIONS.items() if k != "seed"}
    instances = create_training_instances(as_strings, list(VOCAB), rng=random.Random(seed), **options)
    return [(sum(x.segment_ids), [ids[t] for t in x.tokens], x.masked_lm_positions,
             [ids[t] for t in x.masked_lm_labels], int(x.is_random_next)) for x in instances]


if __name__ == "__main__":
    for row in golden_rows():
        print(f"    {row},")
