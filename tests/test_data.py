"""Tests of bertnp.data: reading, instance generation (Google's create_pretraining_data.py), masking.

Statistical tests run on a fixed synthetic corpus with fixed seeds, so they are deterministic;
their tolerances are still stated in standard deviations of the binomial count they check, so
that a change of seed keeps passing and a wrong probability (0.7 instead of 0.8) fails.
"""

from __future__ import annotations

import gzip
import math
import random
import warnings

import numpy as np
import pytest

from bertnp.data import (
    MaskingVocab,
    PretrainingDataset,
    TrainingInstance,
    create_masked_lm_predictions,
    create_training_instances,
    documents_from_text,
    num_to_predict,
    read_corpus,
    split_sentences,
    tokenize_documents,
    truncate_seq_pair,
)
from test_data_helpers import MiniTokenizer, make_tokenizer, synthetic_documents, synthetic_vocab

MAX_LEN = 64


def within(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    """|count - n p| <= sigmas * sqrt(n p (1 - p)): a binomial count near its expectation."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(synthetic_vocab(), tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="module")
def docs():
    return synthetic_documents(60, seed=1)


@pytest.fixture(scope="module")
def static_instances(tok, docs):
    """Google's static pipeline: 10 copies with masks, ~3.5k instances of at most 64 tokens."""
    ds = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, masking="static", dupe_factor=10, seed=3)
    return ds, ds.instances


def specials(tok):
    return {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id, tok.unk_token_id}


# ------------------------------------------------------------------ reading


def test_split_sentences_rules():
    text = ('In the beginning God created the heavens. Mr. Smith met Dr. Jones, e.g. at St. Paul\'s! '
            'Did he? "Yes," said J. R. Tolkien. It is I. Then 3 men came.\n'
            'A wrapped\nline.\n\n   New paragraph without a full stop\n\nlast one? ok')
    assert split_sentences(text) == [
        "In the beginning God created the heavens.",
        "Mr. Smith met Dr. Jones, e.g. at St. Paul's!",
        "Did he?",
        '"Yes," said J. R. Tolkien.',
        "It is I.",
        "Then 3 men came.",
        "A wrapped line.",
        "New paragraph without a full stop",
        "last one? ok",  # no split before a lower-case word
    ]
    assert split_sentences('He said, "Stop." Then he left.') == ['He said, "Stop."', "Then he left."]
    assert split_sentences(" \n\n ") == []
    assert split_sentences("1. Non-interactive. Born in 1980. Then 2. More.") == [
        "1. Non-interactive.", "Born in 1980.", "Then 2.", "More."]  # a list number only at the start


def test_bert_format_documents():
    text = "s1\n  s2  \n\n\n\ns3\n \t \ns4\ns5\n"
    assert documents_from_text(text, "bert") == [["s1", "s2"], ["s3"], ["s4", "s5"]]
    assert documents_from_text("One. Two.\n\nThree.", "plain") == [["One.", "Two.", "Three."]]


def test_read_corpus_gzip_bom_and_file_boundaries(tmp_path):
    (tmp_path / "a.txt").write_text("\ufeffa one\na two\n\nb one\n", encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("c one\nc two")  # no final blank line: still a new document in the next file
    (tmp_path / "c.txt").write_text("d one\n", encoding="utf-8")
    docs = read_corpus([tmp_path / "a.txt", str(tmp_path / "b.txt.gz"), tmp_path / "c.txt"])
    assert docs == [["a one", "a two"], ["b one"], ["c one", "c two"], ["d one"]]
    # gzip detected by content, not by name
    (tmp_path / "renamed.txt").write_bytes((tmp_path / "b.txt.gz").read_bytes())
    assert read_corpus(tmp_path / "renamed.txt") == [["c one", "c two"]]


def test_read_corpus_plain_format(tmp_path):
    (tmp_path / "p1.txt").write_text("First sentence here. Second\none wrapped.\n\nNew paragraph.", "utf-8")
    (tmp_path / "p2.txt").write_text("Other file.", "utf-8")
    docs = read_corpus([tmp_path / "p1.txt", tmp_path / "p2.txt"], format="plain")
    assert docs == [["First sentence here.", "Second one wrapped.", "New paragraph."], ["Other file."]]


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nope" / "corpus.txt"
    with pytest.raises(FileNotFoundError, match="corpus.txt"):
        read_corpus(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        PretrainingDataset.from_files([missing], MiniTokenizer(synthetic_vocab()))
    with pytest.raises(FileNotFoundError, match="is a folder"):
        read_corpus(tmp_path)


def test_non_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("good line\nanother\ncaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt', line 3: not valid UTF-8"):
        read_corpus(path)
    gz = tmp_path / "latin1.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(ValueError, match=r"latin1\.txt\.gz', line 3"):
        read_corpus(gz)


def test_empty_corpus_and_bad_format(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n\n", "utf-8")
    with pytest.raises(ValueError, match="empty"):
        read_corpus(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="paths"):
        read_corpus([])
    with pytest.raises(ValueError, match="format"):
        read_corpus(tmp_path / "empty.txt", format="jsonl")
    with pytest.raises(ValueError, match="empty"):
        PretrainingDataset([[], []], MiniTokenizer(synthetic_vocab()))


# ------------------------------------------------------------------ tokenizing


@pytest.mark.parametrize("which", ["fixture", "stand-in"])
def test_tokenize_documents_matches_whole_line_and_guards_specials(tok, which):
    # "fixture": the real BertTokenizer when present (its own encode_words_cached);
    # "stand-in": a tokenizer without that method (data.py's own word cache).
    tok = tok if which == "fixture" else MiniTokenizer(synthetic_vocab())
    docs = [["The unbreakable word,  rethinking it!", "  ", "...and [SEP] to [MASK] it."], ["", "?"], []]
    ids = tokenize_documents(docs, tok)
    whole = tok.convert_tokens_to_ids(tok.tokenize(docs[0][0]))
    assert ids[0][0] == whole and len(whole) == 11 # word-cached tokenizing == the whole line
    assert len(ids) == 2 and len(ids[0]) == 2  # empty sentence and empty document dropped
    # a literal special token in the text becomes [UNK]: text cannot forge a [SEP] or a [MASK]
    assert tok.sep_token_id not in ids[0][1] and tok.mask_token_id not in ids[0][1]
    assert ids[0][1].count(tok.unk_token_id) == 2


# ------------------------------------------------------------------ pairs


def test_instance_structure_lengths_and_segments(static_instances, tok):
    ds, instances = static_instances
    assert len(instances) > 2000
    for x in instances:
        n = len(x.tokens)
        assert 5 <= n <= MAX_LEN
        assert len(x.input_ids) == len(x.segment_ids) == n
        seps = [i for i, t in enumerate(x.tokens) if t == tok.sep_token_id]
        assert x.tokens[0] == tok.cls_token_id and len(seps) == 2 and seps[1] == n - 1
        assert tok.cls_token_id not in x.tokens[1:]
        a_len, b_len = seps[0] - 1, n - seps[0] - 2
        assert a_len >= 1 and b_len >= 1
        assert x.segment_ids == [0] * (a_len + 2) + [1] * (b_len + 1)


def test_segments_come_from_the_right_documents(static_instances):
    """IsNext: A and B are contiguous runs of one document; random next: B from another one."""
    ds, instances = static_instances
    streams = [sum(d, []) for d in ds.documents]

    def contains(stream, part):
        k = len(part)
        return any(stream[i:i + k] == part for i in range(len(stream) - k + 1))

    n_random = 0
    for x in instances[:600]:
        sep = x.tokens.index(ds.vocab.sep_id)
        a, b = x.tokens[1:sep], x.tokens[sep + 1:-1]
        assert contains(streams[x.doc_a], a)
        assert contains(streams[x.doc_b], b)
        if x.is_random_next:
            n_random += 1
            assert x.doc_b != x.doc_a
        else:
            assert x.doc_b == x.doc_a
            assert contains(streams[x.doc_a], a + b) or len(a) + len(b) == MAX_LEN - 3  # unless truncated
    assert 0 < n_random < 600


def test_random_next_never_from_same_document_even_with_two_documents(tok):
    """Google's script draws the 'random' next from the same document when 10 tries fail:
    1 in 1024 random pairs with two documents, so ~6 of the ~6,000 pairs here (P(none) ~ 0.3%).
    Here: never. (Sentences of one word and max_seq_length 5 make every chunk one sentence,
    so every pair is a random next.)"""
    docs = synthetic_documents(2, seed=5, min_sent=60, max_sent=60, min_words=1, max_words=1)
    ds = PretrainingDataset(docs, tok, max_seq_length=5, masking="dynamic", dupe_factor=50, seed=1)
    random_pairs = [x for x in ds.instances if x.is_random_next]
    assert len(random_pairs) > 5000
    assert all(x.doc_a != x.doc_b for x in random_pairs)
    assert all(x.doc_a == x.doc_b for x in ds.instances if not x.is_random_next)


def test_nsp_is_fifty_fifty_where_google_flips_a_coin(static_instances):
    """Google flips a fair coin for chunks of >= 2 sentences; a 1-sentence chunk is always a random
    next, and putting back unused sentences makes extra chunks, so overall a bit more than half
    of the labels are 1. Labels: 0 = IsNext, 1 = random."""
    ds, instances = static_instances
    coin = [x.is_random_next for x in instances if x.chunk_sentences >= 2]
    assert len(coin) > 1500
    assert within(sum(coin), len(coin), 0.5)
    assert all(x.is_random_next for x in instances if x.chunk_sentences == 1)
    overall = np.mean([x.is_random_next for x in instances])
    assert 0.5 <= overall <= 0.65
    assert {x.next_sentence_label for x in instances} == {0, 1}  # NotNext pairs really occur


def test_truncate_seq_pair_unit():
    rng = random.Random(0)
    a, b = list(range(10)), list(range(100, 104))
    truncate_seq_pair(a, b, 8, rng)
    assert len(a) + len(b) == 8 and len(b) == 4  # only the longer one loses tokens
    fronts = backs = 0
    for seed in range(200):
        a, b = list(range(6)), list(range(100, 106))
        truncate_seq_pair(a, b, 11, random.Random(seed))
        assert a == list(range(6))  # a tie truncates B
        fronts += b == list(range(101, 106))
        backs += b == list(range(100, 105))
    assert fronts + backs == 200 and within(fronts, 200, 0.5)


def test_pairs_over_the_length_are_truncated_not_dropped(tok):
    """HF's NSP dataset left pairs longer than the block size. Sentences of ~100 words with
    max_seq_length 32: every document still gives instances, all of exactly 32 tokens."""
    docs = synthetic_documents(10, seed=2, min_sent=2, max_sent=4, min_words=90, max_words=110)
    ds = PretrainingDataset(docs, tok, max_seq_length=32, short_seq_prob=0.0, seed=0)
    assert {x.doc_a for x in ds.instances} == set(range(10))
    assert all(len(x.tokens) == 32 for x in ds.instances)


def test_short_seq_prob_makes_shorter_targets(tok, docs):
    full = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, short_seq_prob=0.0, seed=0)
    short = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, short_seq_prob=1.0, seed=0)
    mean_full = np.mean([len(x.tokens) for x in full.instances])
    mean_short = np.mean([len(x.tokens) for x in short.instances])
    assert mean_full > 0.85 * MAX_LEN
    assert mean_short < 0.75 * MAX_LEN


def test_one_document_or_one_sentence_corpus(tok):
    with pytest.raises(ValueError, match="single document"):
        PretrainingDataset([["only one document.", "with two sentences."]], tok)
    with pytest.raises(ValueError, match="single document"):
        PretrainingDataset([["one sentence in all."]], tok)
    # Documented: documents of one sentence each make every pair a random next (with a warning).
    with pytest.warns(UserWarning, match="single sentence"):
        ds = PretrainingDataset([["first doc."], ["second doc."], ["third doc."]], tok, seed=0)
    assert len(ds) == 3 and all(x.is_random_next and x.doc_a != x.doc_b for x in ds.instances)


@pytest.mark.parametrize("arg,value", [
    ("max_seq_length", 4), ("max_seq_length", 128.0), ("short_seq_prob", 1.5), ("short_seq_prob", -0.1),
    ("short_seq_prob", True), ("short_seq_prob", "0.1"),
    ("masked_lm_prob", 0.0), ("masked_lm_prob", 1.0), ("max_predictions_per_seq", 0),
    ("dupe_factor", 0), ("masking", "sometimes"), ("seed", "x"), ("seed", -1), ("whole_word_mask", "yes"),
    ("random_token_excludes_special", None),
])
def test_bad_options_name_the_argument(tok, docs, arg, value):
    with pytest.raises(ValueError, match=arg):
        PretrainingDataset(docs[:3], tok, **{arg: value})


# ------------------------------------------------------------------ masking


def test_exact_mask_count_and_fifteen_percent(static_instances):
    ds, instances = static_instances
    total_tokens = total_masked = 0
    for x in instances:
        assert len(x.masked_positions) == num_to_predict(len(x.tokens), 0.15, 20)
        assert x.masked_positions == sorted(set(x.masked_positions))
        assert x.masked_labels == [x.tokens[p] for p in x.masked_positions]
        total_tokens += len(x.tokens)
        total_masked += len(x.masked_positions)
    # round(0.15 * n) per sequence: the overall rate is 15% up to rounding (|err| <= 0.5 / n)
    assert abs(total_masked / total_tokens - 0.15) < 0.005
    assert num_to_predict(128) == 19 and num_to_predict(512) == 20 and num_to_predict(3) == 1


def test_num_to_predict_rounds_half_to_even():
    """Google's ``int(round(len * 0.15))`` under Python 3: halves go to the even neighbour.
    len * 0.15 is exactly k + 0.5 for len = 10, 30, 50, ...; Python 2's round (half away from
    zero) would give 5, 11, 17 for 30, 70, 110."""
    halves = [n for n in range(1, 140) if n * 0.15 == int(n * 0.15) + 0.5]
    assert halves == [10, 30, 50, 70, 90, 110, 130]
    assert [num_to_predict(n, 0.15, 100) for n in halves] == [2, 4, 8, 10, 14, 16, 20]
    assert num_to_predict(30) == 4 and num_to_predict(70) == 10 and num_to_predict(110) == 16
    assert num_to_predict(130) == 20 and num_to_predict(130, max_predictions_per_seq=19) == 19  # the cap
    assert num_to_predict(2) == 1 and num_to_predict(5) == 1  # round(0.3), round(0.75): at least 1


def test_exact_mask_count_with_dynamic_masking(tok, docs):
    """Dynamic masks (fresh per epoch) follow the same formula, for every instance and epoch."""
    ds = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, seed=8)
    total_tokens = total_masked = 0
    for epoch in range(3):
        for i in range(len(ds)):
            x = ds.instance(i, epoch)
            assert len(x.masked_positions) == num_to_predict(len(x.tokens), 0.15, 20)
            assert x.masked_labels == [x.tokens[p] for p in x.masked_positions]
            total_tokens += len(x.tokens)
            total_masked += len(x.masked_positions)
    assert abs(total_masked / total_tokens - 0.15) < 0.005


def test_never_masks_special_tokens(static_instances, tok):
    ds, instances = static_instances
    sp = specials(tok)
    for x in instances:
        seps = {i for i, t in enumerate(x.tokens) if t == tok.sep_token_id}
        assert 0 not in x.masked_positions and not seps & set(x.masked_positions)
        assert not sp & set(x.masked_labels)
        # outside the masked positions the input is the original
        unmasked = set(range(len(x.tokens))) - set(x.masked_positions)
        assert all(x.input_ids[i] == x.tokens[i] for i in unmasked)


def _kinds(instances, mask_id):
    mask = kept = rand = 0
    for x in instances:
        for p in x.masked_positions:
            if x.input_ids[p] == mask_id:
                mask += 1
            elif x.input_ids[p] == x.tokens[p]:
                kept += 1
            else:
                rand += 1
    return mask, kept, rand


def test_80_10_10(static_instances, tok):
    ds, instances = static_instances
    mask, kept, rand = _kinds(instances, tok.mask_token_id)
    n = mask + kept + rand
    assert n > 20000
    assert within(mask, n, 0.8)
    # a random draw equal to the original counts as "kept": p = 0.1 + 0.1 / |random ids|
    p_same = 0.1 / len(ds.vocab.random_ids)
    assert within(kept, n, 0.1 + p_same)
    assert within(rand, n, 0.1 - p_same)


def test_random_replacement_excludes_specials_by_default(tok, docs):
    sp = specials(tok) | {tok.vocab["[unused0]"]}
    default = MaskingVocab(tok)
    assert not sp & set(default.random_ids)
    assert len(default.random_ids) == len(tok) - len(sp)
    everything = MaskingVocab(tok, random_token_excludes_special=False)
    assert everything.random_ids == list(range(len(tok)))

    # Over many draws: with the default never a special, with the option they do occur.
    for excludes, expect_specials in [(True, False), (False, True)]:
        ds = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, masked_lm_prob=0.5,
                                max_predictions_per_seq=40, random_token_excludes_special=excludes, seed=0)
        drawn = set()
        for epoch in range(6):
            for i in range(len(ds)):
                x = ds.instance(i, epoch)
                drawn.update(x.input_ids[p] for p in x.masked_positions
                             if x.input_ids[p] not in (x.tokens[p], tok.mask_token_id))
        assert bool(drawn & sp) == expect_specials


def test_whole_word_masking(tok):
    docs = synthetic_documents(40, seed=4)
    ds = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, whole_word_mask=True, masking="static",
                            dupe_factor=2, seed=0)
    vocab = ds.vocab
    words_masked = multi_piece = 0
    for x in ds.instances:
        # group positions into words: a piece plus its ## continuations
        words, cur = [], []
        for i, t in enumerate(x.tokens):
            if t in (vocab.cls_id, vocab.sep_id):
                words.append(cur); cur = []
            elif vocab.is_subword[t] and cur:
                cur.append(i)
            else:
                words.append(cur); cur = [i]
        words.append(cur)
        masked = set(x.masked_positions)
        for w in filter(None, words):
            hit = masked & set(w)
            assert not hit or hit == set(w)  # a word is masked whole or not at all
            if hit:
                words_masked += 1
                kinds = {"mask" if x.input_ids[p] == vocab.mask_id else
                         "kept" if x.input_ids[p] == x.tokens[p] else "rand" for p in w}
                if len(w) > 1:
                    multi_piece += 1
                    # 80/10/10 once per word: never half [MASK] and half original
                    assert not ({"mask", "kept"} <= kinds)
        target = num_to_predict(len(x.tokens), 0.15, 20)
        assert target - 2 <= len(x.masked_positions) <= target  # words of <= 3 pieces may not fit
    assert multi_piece > 50 and words_masked > 1000


def test_whole_word_80_10_10_per_word(tok):
    """With whole-word masking the 80/10/10 choice is made once per word: over many words,
    80% are all [MASK], and no multi-piece word mixes [MASK] with unmasked pieces (tolerance:
    4 binomial standard deviations on the per-word count)."""
    docs = synthetic_documents(60, seed=9)
    ds = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, whole_word_mask=True, seed=1)
    vocab = ds.vocab
    n_words = all_mask = 0
    for epoch in range(3):
        for i in range(len(ds)):
            x = ds.instance(i, epoch)
            masked = set(x.masked_positions)
            p = 0
            while p < len(x.tokens):
                q = p + 1
                while q < len(x.tokens) and vocab.is_subword[x.tokens[q]] and x.tokens[q - 1] not in (
                        vocab.cls_id, vocab.sep_id):
                    q += 1
                word = range(p, q)
                if masked & set(word):
                    n_words += 1
                    is_mask = [x.input_ids[k] == vocab.mask_id for k in word]
                    assert all(is_mask) or not any(is_mask)  # never half [MASK]
                    all_mask += all(is_mask)
                p = q
    assert n_words > 5000
    assert within(all_mask, n_words, 0.8)


def test_whole_word_never_spans_a_sep():
    """B truncated at the front may start with a "##" piece: it starts a word of its own, not
    glued to the last word of A across the [SEP]. (Google's candidate loop makes the 3-piece
    "word" {b, ##c, ##c} here, which never fits 2 predictions: "##c" would never be masked.)"""
    tok = MiniTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "##c"])
    vocab = MaskingVocab(tok)
    tokens = [2, 5, 6, 3, 7, 7, 5, 3]  # [CLS] a b [SEP] ##c ##c a [SEP]; round(8 * 0.25) = 2
    seen = set()
    for seed in range(300):
        _, pos, _ = create_masked_lm_predictions(tokens, vocab, random.Random(seed), masked_lm_prob=0.25,
                                                 max_predictions_per_seq=20, whole_word_mask=True)
        assert len(pos) == 2
        assert (4 in pos) == (5 in pos)  # the two pieces after [SEP] are one word
        seen.add(tuple(pos))
    assert seen == {(1, 2), (1, 6), (2, 6), (4, 5)}


def test_token_id_documents_are_checked(tok):
    """Documents given as token ids: an id outside the vocabulary is an error naming where it
    is; a literal [SEP] / [MASK] id becomes [UNK], as it does for text."""
    n = len(tok)
    good = [[[10, 11, 12], [13, 14]], [[15, 16, 17], [18]]]
    with pytest.raises(ValueError, match=r"documents\[1\]\[0\].*token id"):
        PretrainingDataset([good[0], [[15, n]]], tok, max_seq_length=16)
    with pytest.raises(ValueError, match="token id -1"):
        PretrainingDataset([good[0], [[-1, 15]]], tok, max_seq_length=16)
    ds = PretrainingDataset([[[10, tok.sep_token_id, 11], [12, tok.mask_token_id]], good[1]], tok,
                            max_seq_length=16)
    assert ds.documents[0] == [[10, tok.unk_token_id, 11], [12, tok.unk_token_id]]
    for x in ds.instances:
        assert x.tokens.count(tok.sep_token_id) == 2


def test_dynamic_masks_change_per_epoch_static_do_not(tok, docs):
    dyn = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, seed=11)
    a, b, a2 = dyn.instance(5, 0), dyn.instance(5, 1), dyn.instance(5, 0)
    assert a.tokens == b.tokens and a.is_random_next == b.is_random_next  # same pair ...
    assert a.masked_positions != b.masked_positions  # ... fresh masks each epoch
    assert (a.input_ids, a.masked_positions) == (a2.input_ids, a2.masked_positions)  # pure function
    changed = sum(dyn.instance(i, 0).masked_positions != dyn.instance(i, 1).masked_positions
                  for i in range(len(dyn)))
    assert changed > 0.95 * len(dyn)
    stat = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, masking="static", seed=11)
    assert stat.instance(5, 0) is stat.instance(5, 3)


def test_reproducible_for_a_seed(tok, docs):
    def snapshot(ds, epoch):
        return [(x.input_ids, x.masked_positions, x.is_random_next)
                for x in (ds.instance(i, epoch) for i in range(len(ds)))]

    for masking in ("static", "dynamic"):
        one = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, masking=masking, seed=5)
        two = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, masking=masking, seed=5)
        other = PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, masking=masking, seed=6)
        assert snapshot(one, 2) == snapshot(two, 2)
        assert snapshot(one, 2) != snapshot(other, 2)
        assert one.fingerprint() == two.fingerprint() != other.fingerprint()
    # the global RNGs are neither used nor disturbed
    random.seed(0); np.random.seed(0)
    r0, n0 = random.random(), np.random.rand()
    random.seed(0); np.random.seed(0)
    PretrainingDataset(docs, tok, max_seq_length=MAX_LEN, seed=5).instance(0, 1)
    assert (random.random(), np.random.rand()) == (r0, n0)


# ------------------------------------------------------------------ exactly Google's random stream

# Token-id documents and the instances Google's create_pretraining_data.py makes from them with
# random.Random(7), max_seq_length 16, dupe_factor 2, short_seq_prob 0.3, masked_lm_prob 0.15,
# max_predictions_per_seq 3 and vocab_words = the 30 tokens below (ids 0..29). The expected rows
# are printed by tests/reference/google_pretraining_data.py, Google's functions written out on
# their own (standard library only, no bertnp), run on the same documents as token strings; each
# row is (number of segment-1 tokens, masked input ids, masked positions, labels, is_random_next).
GOLDEN_DOCS = [
    [[28, 23, 14], [28, 18, 29, 27], [22, 12, 25, 28, 20], [18, 21, 28, 24, 11, 14]],
    [[21, 7, 28, 29, 11, 27], [27, 25, 9, 22, 11, 18, 6, 29], [25, 18, 19, 8, 28, 28], [29, 15, 17],
     [16, 11, 15, 18, 18, 15]],
    [[18, 12, 11, 6], [29, 5, 13, 21], [29, 23, 27, 18, 24, 8], [25, 24, 29, 12, 12, 19], [9, 11, 16, 20, 24, 25]],
    [[17, 24, 15, 15, 27], [10, 26, 27, 29, 9, 15, 11, 23]],
    [[10, 5]],
]
GOLDEN = [
    (7, [2, 12, 11, 6, 29, 5, 4, 21, 3, 29, 4, 27, 18, 24, 8, 3], [6, 10], [13, 23], 0),
    (3, [2, 4, 4, 28, 29, 11, 27, 3, 10, 5, 3], [1, 2], [21, 7], 1),
    (8, [2, 16, 11, 15, 18, 18, 15, 3, 19, 9, 4, 16, 20, 24, 2, 3], [10, 14], [11, 25], 1),
    (7, [2, 25, 24, 29, 12, 4, 19, 3, 16, 11, 4, 18, 18, 15, 3], [5, 10], [12, 15], 1),
    (8, [2, 4, 4, 29, 12, 12, 19, 3, 15, 15, 27, 10, 26, 27, 29, 3], [1, 2], [25, 24], 1),
    (8, [2, 25, 18, 19, 8, 28, 28, 3, 27, 4, 26, 4, 29, 9, 15, 3], [9, 11], [10, 27], 1),
    (9, [2, 17, 24, 15, 15, 4, 3, 10, 26, 27, 29, 9, 15, 11, 23, 3], [5, 11], [27, 9], 0),
    (7, [2, 21, 4, 28, 29, 11, 27, 3, 29, 4, 27, 18, 24, 8, 3], [2, 9], [7, 23], 1),
    (11, [2, 28, 23, 14, 3, 29, 27, 22, 12, 25, 4, 20, 18, 21, 4, 3], [10, 14], [28, 28], 0),
    (11, [2, 29, 15, 17, 3, 4, 5, 13, 21, 29, 23, 27, 21, 24, 8, 3], [5, 12], [29, 18], 1),
    (8, [2, 9, 11, 16, 20, 24, 25, 3, 10, 4, 27, 29, 8, 15, 11, 3], [9, 12], [26, 9], 1),
    (7, [2, 10, 5, 3, 18, 21, 4, 24, 4, 14, 3], [6, 8], [28, 11], 1),
    (7, [2, 28, 23, 4, 4, 18, 29, 27, 3, 28, 20, 18, 21, 28, 24, 3], [3, 4], [14, 28], 0),
    (12, [2, 10, 5, 3, 4, 15, 15, 27, 10, 4, 27, 29, 9, 15, 11, 3], [4, 9], [24, 26], 1),
    (3, [2, 27, 25, 9, 22, 11, 18, 4, 29, 3, 4, 5, 3], [7, 10], [6, 10], 1),
    (9, [2, 17, 24, 15, 15, 27, 3, 10, 4, 27, 29, 9, 15, 11, 23, 3], [8, 13], [26, 11], 0),
    (8, [2, 9, 11, 16, 20, 4, 25, 3, 28, 18, 29, 27, 22, 12, 25, 3], [2, 5], [11, 24], 1),
    (3, [2, 27, 25, 9, 22, 4, 4, 6, 29, 3, 10, 5, 3], [5, 6], [11, 18], 1),
    (10, [2, 18, 12, 11, 6, 3, 5, 13, 21, 4, 23, 27, 18, 4, 8, 3], [9, 13], [29, 24], 0),
    (7, [2, 25, 18, 19, 8, 28, 28, 3, 25, 24, 29, 12, 12, 4, 3], [5, 13], [28, 19], 1),
    (7, [2, 4, 15, 17, 3, 16, 11, 15, 18, 18, 15, 3], [1, 7], [29, 15], 0),
]


def test_golden_rows_come_from_the_transcription_of_googles_functions():
    """The rows below are not hand-made: the committed transcription of Google's functions
    (tests/reference/google_pretraining_data.py) prints exactly them from these documents."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parent / "reference" / "google_pretraining_data.py"
    spec = importlib.util.spec_from_file_location("google_pretraining_data", path)
    google = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(google)
    assert google.DOCUMENTS == GOLDEN_DOCS
    assert google.VOCAB == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, 30)]
    assert google.golden_rows() == GOLDEN


def test_same_random_stream_as_google():
    """Static masking, specials allowed in random replacement, no whole-word masking: the
    instances are Google's, draw for draw (a regression test for the exact algorithm)."""
    tok = MiniTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(5, 30)])
    vocab = MaskingVocab(tok, random_token_excludes_special=False)
    instances = create_training_instances(GOLDEN_DOCS, vocab, max_seq_length=16, dupe_factor=2,
                                          short_seq_prob=0.3, masked_lm_prob=0.15, max_predictions_per_seq=3,
                                          rng=random.Random(7))
    got = [(sum(x.segment_ids), x.input_ids, x.masked_positions, x.masked_labels, int(x.is_random_next))
           for x in instances]
    assert got == GOLDEN


def test_create_masked_lm_predictions_unit():
    tok = MiniTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "##c"])
    vocab = MaskingVocab(tok)
    assert vocab.random_ids == [5, 6, 7]
    tokens = [2] + [5, 6, 7] * 9 + [3, 5, 6, 3]  # 33 tokens -> round(4.95) = 5 predictions
    out, pos, lab = create_masked_lm_predictions(tokens, vocab, random.Random(0))
    assert len(pos) == 5 and lab == [tokens[p] for p in pos] and len(out) == len(tokens)
    assert isinstance(TrainingInstance([2, 5, 3, 6, 3], [0, 0, 0, 1, 1], True, 0, 1).next_sentence_label, int)
