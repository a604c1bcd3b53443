"""Assignment 4 (hidden): more WordPiece cases, other corpora and lengths, whole-word masking."""
import random

import numpy as np

import bertnp as bn
from bertnp.data import MaskingVocab, create_instances_from_document, create_masked_lm_predictions, num_to_predict
from bertnp.tokenizer import WordpieceTokenizer

from referee import check

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_public_a4", Path(__file__).parents[1] / "public" / "test_a4_data.py")
public = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(public)


def test_wordpiece_hidden():
    vocab = {t: i for i, t in enumerate("[UNK] th ##e the ##re ##r ##ere he ##y".split())}
    wp = WordpieceTokenizer(vocab, max_input_chars_per_word=8)
    for word, expected in [("there", ["the", "##re"]), ("they", ["the", "##y"]), ("thx", ["[UNK]"]),
                           ("the", ["the"]), ("thereree", ["the", "##re", "##re", "##e"]),
                           ("thereeeee", ["[UNK]"]), ("h", ["[UNK]"])]:
        public.check_wordpiece(wp, word, expected, " with max_input_chars_per_word=8")


def test_create_instances_hidden():
    documents = public._documents(n_docs=5, seed=9)
    rng = random.Random(5)
    instances = []
    for d in range(len(documents)):
        instances += create_instances_from_document(documents, d, 10, 0.5, rng, public.CLS, public.SEP)
    public.check_instances(documents, instances, 10)
    two = [[[1000, 1001], [1010, 1011], [1020]], [[2000, 2001, 2002], [2010]]]
    for d in range(2):
        made = create_instances_from_document(two, d, 9, 0.0, random.Random(d), public.CLS, public.SEP)
        public.check_instances(two, made, 9)


def test_masking_hidden(tmp_path):
    tok = public._tokenizer(tmp_path)
    vocab = MaskingVocab(tok)
    rng = random.Random(8)
    for length in (3, 10, 30, 128, 200):
        tokens = [vocab.cls_id] + [7 + (i % 30) for i in range(length - 2)] + [vocab.sep_id]
        out, positions, labels = create_masked_lm_predictions(tokens, vocab, rng, 0.15, 20)
        check(len(positions) == num_to_predict(len(tokens), 0.15, 20), f"masked count for length {length}",
              len(positions), num_to_predict(len(tokens), 0.15, 20))
    # whole-word masking: a word (a piece and its ## continuations) is masked whole
    words = [vocab.cls_id]
    for i in range(30):
        words += [5 + i % 40] + [45 + (i % 10)] * (i % 3)          # ids >= 45 are the ##s pieces
    words.append(vocab.sep_id)
    for _ in range(50):
        out, positions, labels = create_masked_lm_predictions(words, vocab, rng, 0.15, 20, whole_word_mask=True)
        chosen = set(positions)
        for p in positions:
            if vocab.is_subword[words[p]]:
                check(p - 1 in chosen, "whole-word masking never masks a ## piece without its word", p, "its word too")
