"""Assignment 4 (public): WordPiece, Google's pretraining instances, BERT's masking rule."""
import random

import numpy as np

from referee import CheckFailed, check

import bertnp as bn
from bertnp.data import MaskingVocab, create_instances_from_document, create_masked_lm_predictions, num_to_predict
from bertnp.tokenizer import WordpieceTokenizer

CLS, SEP = 1, 2


def test_wordpiece():
    """Task 4.1: greedy longest-match-first; one unmatchable piece makes the whole word [UNK]
    (Google's test vocabulary and vectors)."""
    long_vocab = {t: i for i, t in enumerate("[UNK] a ##a aa ##aa aaa".split())}
    check_wordpiece(WordpieceTokenizer(long_vocab), "aaaaaa", ["aaa", "##aa", "##a"],
                    " (the LONGEST match first, with a, aa, aaa, ##a, ##aa)")
    both = {t: i for i, t in enumerate("[UNK] un want ##want ed ##ed".split())}
    check_wordpiece(WordpieceTokenizer(both), "unwanted", ["un", "##want", "##ed"],
                    " (with both 'want' and '##want', 'ed' and '##ed' in the vocabulary)")
    vocab = {t: i for i, t in enumerate("[UNK] [CLS] [SEP] want ##want ##ed wa un runn ##ing ,".split())}
    wp = WordpieceTokenizer(vocab)
    for word, expected in [("unwanted", ["un", "##want", "##ed"]), ("running", ["runn", "##ing"]),
                           ("unwantedX", ["[UNK]"]), ("wa", ["wa"]), ("want", ["want"]), (",", [","])]:
        check_wordpiece(wp, word, expected)
    short = WordpieceTokenizer(vocab, max_input_chars_per_word=8)
    check_wordpiece(short, "unwanted", ["un", "##want", "##ed"],
                    " with max_input_chars_per_word=8 (exactly 8 characters: only a LONGER word is [UNK])")
    check_wordpiece(short, "unwanteded", ["[UNK]"], " with max_input_chars_per_word=8 (10 characters)")


def check_wordpiece(wp, word: str, expected: list, where: str = "") -> None:
    """tokenize_word(word) == expected, or a message naming the usual mistake its output shows."""
    got = wp.tokenize_word(word)
    if got == expected:
        return
    bare = lambda pieces: [p[2:] if p.startswith("##") else p for p in pieces]       # noqa: E731
    hint = ""
    if wp.unk_token in got and len(got) > 1:
        hint = "one unmatchable part makes the WHOLE word [UNK], not just that part"
    elif bare(got) == bare(expected) or any(not p.startswith("##") for p in got[1:]):
        hint = ("every piece after the first is looked up (and returned) WITH the '##' continuation prefix, "
                "the first piece without it")
    elif "".join(bare(got)) == "".join(bare(expected)) and len(got) > len(expected):
        hint = ("greedy LONGEST match first: at each step take the longest candidate that is in the vocabulary, "
                "not the first (shortest) one found")
    raise CheckFailed(f"WordPiece of {word!r}{where}: got {got}, expected {expected}" + (f"\n  hint: {hint}" if hint else ""))


def _documents(n_docs=12, seed=0):
    """Token ids that say where they come from: 1000 * (doc + 1) + 10 * sentence + position."""
    r = random.Random(seed)
    return [[[1000 * (d + 1) + 10 * s + k for k in range(r.randint(2, 7))] for s in range(r.randint(2, 8))]
            for d in range(n_docs)]


def _origin(token):
    return token // 1000 - 1, (token % 1000) // 10, token % 10


def check_instances(documents, instances, max_seq_length):
    """The properties every instance of create_instances_from_document must have."""
    for n, inst in enumerate(instances):
        t = inst.tokens
        where = f"instance {n} (doc_a {inst.doc_a}, is_random_next={inst.is_random_next})"
        check(len(t) <= max_seq_length, f"{where}: length <= max_seq_length", len(t), f"<= {max_seq_length}")
        seps = [i for i, x in enumerate(t) if x == SEP]
        check(t[0] == CLS and len(seps) == 2 and seps[1] == len(t) - 1,
              f"{where}: [CLS] A [SEP] B [SEP]", t, "[CLS] ... [SEP] ... [SEP]")
        a, b = t[1:seps[0]], t[seps[0] + 1:-1]
        check(len(a) >= 1 and len(b) >= 1, f"{where}: A and B are not empty", (len(a), len(b)), ">= 1 each")
        expected_segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        check(list(inst.segment_ids) == expected_segments, f"{where}: segment ids", list(inst.segment_ids),
              expected_segments)
        doc_a = {_origin(x)[0] for x in a}
        check(doc_a == {inst.doc_a}, f"{where}: every token of A comes from doc_a", sorted(doc_a), [inst.doc_a])
        doc_b = {_origin(x)[0] for x in b}
        if inst.is_random_next:
            check(inst.doc_a not in doc_b, f"{where}: a RANDOM next sentence comes from another document "
                  "(is the NSP label the right way round?)", sorted(doc_b), f"not {inst.doc_a}")
        else:
            check(doc_b == {inst.doc_a}, f"{where}: the ACTUAL next sentence comes from the same document "
                  "(is the NSP label the right way round?)", sorted(doc_b), [inst.doc_a])
            last_a, first_b = _origin(a[-1])[1:], _origin(b[0])[1:]
            check(first_b > last_a, f"{where}: B follows A in the document", (last_a, first_b), "B after A")


def test_create_instances():
    """Task 4.2: chunks of whole sentences, a random A/B split, B random (label 1) half the time,
    pairs truncated to max_seq_length."""
    documents = _documents()
    instances = []
    rng = random.Random(1)
    for max_len in (12, 24):
        for d in range(len(documents)):
            instances += create_instances_from_document(documents, d, max_len, 0.1, rng, CLS, SEP)
            check_instances(documents, instances[-1:], max_len)
    check(len(instances) > 40, "instances made from 12 documents, twice", len(instances), "> 40")
    multi = [i for i in instances if i.chunk_sentences >= 2]
    share = np.mean([i.is_random_next for i in multi])
    check(0.3 < share < 0.7, f"share of random-next pairs among the {len(multi)} chunks of 2+ sentences",
          float(share), "about 0.5")
    for n, inst in enumerate(instances):
        check_instances(documents, [inst], 24)


def _tokenizer(tmp_path):
    words = [f"w{i}" for i in range(40)] + [f"##s{i}" for i in range(10)]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words) + "\n")
    return bn.BertTokenizer(str(path))


def test_masking(tmp_path):
    """Task 4.3: exactly num_to_predict positions (never [CLS]/[SEP]); of them 80% become [MASK],
    10% a random token, 10% stay."""
    tok = _tokenizer(tmp_path)
    vocab = MaskingVocab(tok)
    rng = random.Random(3)
    data = np.random.default_rng(4)
    counts = {"mask": 0, "random": 0, "kept": 0}
    for n in range(600):
        length = int(data.integers(4, 60))
        body = list(data.integers(5, 45, size=length))
        tokens = [vocab.cls_id] + body[:length // 2] + [vocab.sep_id] + body[length // 2:] + [vocab.sep_id]
        out, positions, labels = create_masked_lm_predictions(tokens, vocab, rng, 0.15, 20)
        expected = num_to_predict(len(tokens), 0.15, 20)
        if len(positions) != expected:
            raise CheckFailed(f"sequence of {len(tokens)} tokens: {len(positions)} positions masked, expected "
                              f"exactly {expected} = min(20, max(1, round(0.15 * {len(tokens)}))) -- BERT masks an "
                              "exact count of positions, not each token independently with probability 0.15")
        check(positions == sorted(set(positions)), "masked positions are distinct and sorted", positions, "sorted")
        specials = [p for p in positions if tokens[p] in (vocab.cls_id, vocab.sep_id)]
        check(not specials, "[CLS] and [SEP] are never masked", specials, [])
        check(list(labels) == [tokens[p] for p in positions], "labels are the original tokens", list(labels),
              [tokens[p] for p in positions])
        unchanged = [i for i in range(len(tokens)) if i not in set(positions) and out[i] != tokens[i]]
        check(not unchanged, "positions that are not chosen stay as they were", unchanged, [])
        for p in positions:
            if out[p] == vocab.mask_id:
                counts["mask"] += 1
            elif out[p] == tokens[p]:
                counts["kept"] += 1
            else:
                counts["random"] += 1
    total = sum(counts.values())
    for kind, share in (("mask", 0.8), ("random", 0.1), ("kept", 0.1)):
        got = counts[kind] / total
        sigma = np.sqrt(share * (1 - share) / total)
        # a random draw that happens to be the original token counts as kept: up to 0.1/40 of the total
        check(abs(got - share) < 5 * sigma + 0.005, f"share of chosen positions that are {kind}", round(got, 4),
              f"{share} +- {5 * sigma + 0.005:.3f} ({total} positions)")
