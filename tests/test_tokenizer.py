"""BertTokenizer, BasicTokenizer, WordpieceTokenizer (bertnp/tokenizer.py).

1. Google's published test vectors (google-research/bert tokenization_test.py).
2. Exact agreement with Hugging Face's BertTokenizerLegacy on the real all-MiniLM-L6-v2 vocabulary,
   from committed fixtures (tests/fixtures/tokenizer/, made by tests/reference/make_tokenizer_fixtures.py).
3. The fast cached path equals the reference path (hypothesis).
4. Model input format, save / load, and bad input.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bertnp.tokenizer import (BasicTokenizer, BertTokenizer, WordpieceTokenizer, is_cjk_char, is_control,
                              is_punctuation, is_whitespace)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tokenizer"
VOCAB = FIXTURES / "vocab.txt"
sys.path.insert(0, str(Path(__file__).resolve().parent / "reference"))
from make_tokenizer_fixtures import sweep_text  # noqa: E402  (standard library only at import)


@lru_cache(maxsize=None)
def hf_fixture() -> dict:
    return json.loads((FIXTURES / "hf_legacy_minilm.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def minilm(**kwargs) -> BertTokenizer:
    return BertTokenizer(VOCAB, **kwargs)


# Google's test vocabulary, plus [PAD] and [MASK] at the end (BertTokenizer requires them; the
# ids of Google's 11 tokens are unchanged).
GOOGLE_VOCAB = ["[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un", "runn", "##ing", ","]


@pytest.fixture
def google_tok(tmp_path) -> BertTokenizer:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(GOOGLE_VOCAB + ["[PAD]", "[MASK]"]) + "\n", encoding="utf-8")
    return BertTokenizer(path)


# ---------------------------------------------------------------------------------------------
# 1. Google's vectors
# ---------------------------------------------------------------------------------------------


def test_google_full_tokenizer(google_tok):
    tokens = google_tok.tokenize("UNwant\u00e9d,running")
    assert tokens == ["un", "##want", "##ed", ",", "runn", "##ing"]
    assert google_tok.convert_tokens_to_ids(tokens) == [7, 4, 5, 10, 8, 9]
    assert google_tok.tokenize("unwantedX running") == ["[UNK]", "runn", "##ing"]


def test_google_basic_tokenizer():
    assert BasicTokenizer().tokenize(" \tHeLLo!how  \n Are yoU?  ") == ["hello", "!", "how", "are", "you", "?"]
    assert BasicTokenizer().tokenize("H\u00e9llo") == ["hello"]
    assert BasicTokenizer(do_lower_case=False).tokenize(" \tHeLLo!how  \n Are yoU?  ") == \
        ["HeLLo", "!", "how", "Are", "yoU", "?"]
    assert BasicTokenizer().tokenize("ah\u535a\u63a8zz") == ["ah", "\u535a", "\u63a8", "zz"]


def test_google_wordpiece_tokenizer():
    vocab = {t: i for i, t in enumerate(GOOGLE_VOCAB)}
    wp = WordpieceTokenizer(vocab, unk_token="[UNK]")
    assert wp.tokenize("") == []
    assert wp.tokenize("unwanted running") == ["un", "##want", "##ed", "runn", "##ing"]
    assert wp.tokenize("unwantedX running") == ["[UNK]", "runn", "##ing"]


def test_google_character_classes():
    for c in [" ", "\t", "\r", "\n", "\u00a0"]:
        assert is_whitespace(c), repr(c)
    for c in ["A", "-"]:
        assert not is_whitespace(c)
    assert is_control("\u0005")
    for c in ["A", " ", "\t", "\r", "\U0001f4a9"]:
        assert not is_control(c), repr(c)
    for c in ["-", "$", "`", "."]:
        assert is_punctuation(c)
    for c in ["A", " "]:
        assert not is_punctuation(c)
    assert is_cjk_char("\u535a") and is_cjk_char("\U00020000") and not is_cjk_char("\u3042")  # hiragana is not


def test_whitespace_pattern_is_exactly_bert_whitespace():
    """The cached path splits at a hard-coded set of code points: it must be BERT's whitespace set
    in this Python's Unicode tables (rule: \\t \\n \\r space + category Zs)."""
    from bertnp.tokenizer import _WHITESPACE_RUN
    bert_ws = {cp for cp in range(0x110000) if (0xD800 > cp or cp > 0xDFFF) and is_whitespace(chr(cp))}
    pattern_ws = {cp for cp in range(0x110000) if (0xD800 > cp or cp > 0xDFFF) and _WHITESPACE_RUN.fullmatch(chr(cp))}
    assert pattern_ws == bert_ws


def test_control_and_zero_width_are_removed_not_spaced():
    b = BasicTokenizer()
    assert b.tokenize("a\x0bb\x0cc") == ["abc"]  # reference.md: \x0b and \x0c are removed
    assert b.tokenize("zero\u200bwidth soft\u00adhyphen") == ["zerowidth", "softhyphen"]
    assert b.tokenize("a\x00b\ufffdc") == ["abc"]
    assert b.tokenize("no\u00a0break ideo\u3000space") == ["no", "break", "ideo", "space"]


def test_max_input_chars_per_word_is_configurable():
    vocab = {"[UNK]": 0, "a": 1, "##a": 2}
    assert WordpieceTokenizer(vocab).tokenize_word("a" * 100) == ["a"] + ["##a"] * 99
    assert WordpieceTokenizer(vocab).tokenize_word("a" * 101) == ["[UNK]"]  # HF's default limit: 100
    assert WordpieceTokenizer(vocab, max_input_chars_per_word=200).tokenize_word("a" * 101)[0] == "a"
    assert WordpieceTokenizer(vocab, max_input_chars_per_word=3).tokenize_word("aaaa") == ["[UNK]"]
    assert len(minilm(max_input_chars_per_word=200).tokenize("a" * 150)) > 1
    with pytest.raises(ValueError, match="max_input_chars_per_word"):
        WordpieceTokenizer(vocab, max_input_chars_per_word=0)


# ---------------------------------------------------------------------------------------------
# 2. Agreement with Hugging Face (committed fixtures)
# ---------------------------------------------------------------------------------------------


def test_fixture_vocab_is_the_one_hf_used():
    meta = hf_fixture()["meta"]
    assert hashlib.sha256(VOCAB.read_bytes()).hexdigest() == meta["vocab_sha256"]
    assert meta["reference"].startswith("transformers.BertTokenizerLegacy")


@pytest.mark.parametrize("config", ["uncased", "cased", "uncased_keep_accents", "cased_strip_accents", "no_cjk_split"])
def test_tokenize_matches_hf(config):
    """tokenize() and the cached ids path, on curated text (accents, scripts, CJK, emoji, control
    and zero-width characters, odd spaces, long words, numbers, URLs, code), real English and
    random strings."""
    fx = hf_fixture()
    tok = BertTokenizer(VOCAB, **fx["meta"]["configs"][config])
    cases = fx["tokenize"][config]
    assert len(cases) > 100
    wrong = [(c["text"], tok.tokenize(c["text"]), c["tokens"]) for c in cases if tok.tokenize(c["text"]) != c["tokens"]]
    assert not wrong, f"{len(wrong)} mismatches, first: {wrong[:3]}"
    wrong_ids = [c["text"] for c in cases if tok.encode_words_cached(c["text"]) != c["ids"]]
    assert not wrong_ids, f"cached ids differ on {wrong_ids[:3]}"


def test_call_matches_hf():
    """__call__ on single texts, pairs and batches, for max_length 1..13 and 20 with every
    truncation and padding setting (odd and even truncation budgets), every spelling of them
    ("longest", "do_not_pad", "do_not_truncate"), add_special_tokens=False and return_tensors="np"."""
    tok = minilm(model_max_length=None)  # HF's tokenizer built from a vocab file has no length limit
    n_checked = n_raised = n_arrays = n_ragged = 0
    for case in hf_fixture()["call"]:
        expected, kwargs, where = case["expected"], case["kwargs"], (case["text"], case["text_pair"], case["kwargs"])
        assert "hf_error" not in expected  # HF never raised on these inputs
        if "hf_overlong" in expected:
            # HF returns a sequence longer than max_length (logging an error); bertnp refuses.
            with pytest.raises(ValueError, match="max_length"):
                tok(case["text"], case["text_pair"], **kwargs)
            n_raised += 1
            continue
        if "hf_ragged" in expected:
            # return_tensors="np" on rows of different lengths: HF makes an object array; bertnp refuses.
            with pytest.raises(ValueError, match="padding"):
                tok(case["text"], case["text_pair"], **kwargs)
            n_ragged += 1
            continue
        got = tok(case["text"], case["text_pair"], **kwargs)
        if "np_shape" in expected:
            assert set(got) == {"input_ids", "token_type_ids", "attention_mask"}, where
            for key, array in got.items():
                assert isinstance(array, np.ndarray) and array.dtype.name == expected["np_dtype"], where
                assert list(array.shape) == expected["np_shape"] and array.tolist() == expected[key], (key, where)
            n_arrays += 1
        else:
            assert got == expected, where
        n_checked += 1
    assert n_checked > 2000 and n_raised > 100 and n_arrays > 300 and n_ragged > 50


def test_decode_matches_hf():
    tok = minilm()
    for case in hf_fixture()["decode"]:
        assert tok.decode(case["ids"], skip_special_tokens=case["skip_special_tokens"]) == case["text"], case


def sweep_blocks_to_check() -> tuple[list, int]:
    """(the sweep blocks this Python can compare with HF's ids, the number it cannot).

    On the fixture's Unicode version: every block. On another one (another Python), the blocks whose
    characters have exactly the properties the tokenizer reads as on the fixture's version
    (tests/fixtures/tokenizer/unicode_blocks.json, made by tests/reference/make_unicode_fingerprints.py);
    a block with a newly assigned or changed character cannot be compared."""
    blocks = hf_fixture()["sweep"]
    if unicodedata.unidata_version == hf_fixture()["meta"]["unidata_version"]:
        return blocks, 0
    from make_unicode_fingerprints import block_fingerprint
    prints = json.loads((FIXTURES / "unicode_blocks.json").read_text(encoding="utf-8"))
    assert prints["unidata_version"] == hf_fixture()["meta"]["unidata_version"]
    same = {(b["lo"], b["hi"]) for b in prints["blocks"] if block_fingerprint(b["lo"], b["hi"]) == b["sha256"]}
    kept = [b for b in blocks if (b["lo"], b["hi"]) in same]
    return kept, len(blocks) - len(kept)


def test_every_code_point_matches_hf():
    """U+0000..U+2FFFF (no surrogates) and parts of planes 14-15: each code point alone and inside a
    word, one SHA-256 of the ids per block of 256 code points. On a Python with another Unicode
    version than the fixture's, the blocks whose characters changed are left out (95-98% remain:
    3.10, 3.12 and 3.13 were checked)."""
    blocks, changed = sweep_blocks_to_check()
    assert len(blocks) >= 0.9 * len(hf_fixture()["sweep"]), (len(blocks), changed)
    tok = minilm()
    bad = []
    for block in blocks:
        ids = tok.convert_tokens_to_ids(tok.tokenize(sweep_text(block["lo"], block["hi"])))
        if hashlib.sha256(json.dumps(ids).encode()).hexdigest() != block["sha256"]:
            bad.append(f"U+{block['lo']:04X}-U+{block['hi'] - 1:04X} ({len(ids)} ids, HF {block['n_ids']})")
    assert not bad, f"blocks differing from Hugging Face: {bad[:10]}"


def test_unicode_fingerprints_describe_this_unicode(monkeypatch):
    """On the fixture's own Unicode every block's fingerprint matches (else the file is stale); and
    the other-Python path picks blocks by fingerprint: pretending to be another version, a block
    whose fingerprint is spoiled is left out, the rest kept."""
    if unicodedata.unidata_version != hf_fixture()["meta"]["unidata_version"]:
        pytest.skip("checks the fingerprint file on the Unicode version it describes")
    from make_unicode_fingerprints import block_fingerprint
    prints = json.loads((FIXTURES / "unicode_blocks.json").read_text(encoding="utf-8"))
    assert [(b["lo"], b["hi"]) for b in prints["blocks"]] == [(b["lo"], b["hi"]) for b in hf_fixture()["sweep"]]
    for b in prints["blocks"][:40] + prints["blocks"][-5:]:
        assert block_fingerprint(b["lo"], b["hi"]) == b["sha256"], b
    import make_unicode_fingerprints
    monkeypatch.setattr(unicodedata, "unidata_version", "0.0.0")
    real = make_unicode_fingerprints.block_fingerprint
    monkeypatch.setattr(make_unicode_fingerprints, "block_fingerprint",
                        lambda lo, hi: "changed" if lo == 0x0300 else real(lo, hi) if lo < 0x2000 else
                        next(b["sha256"] for b in prints["blocks"] if b["lo"] == lo))
    blocks, changed = sweep_blocks_to_check()
    assert changed == 1 and 0x0300 not in [b["lo"] for b in blocks] and len(blocks) == len(prints["blocks"]) - 1


def test_known_hf_rust_vs_legacy_cases():
    """The cases where transformers' Rust BertTokenizer differs and we follow the legacy one."""
    tok = minilm()
    assert tok.tokenize("\u039f\u0394\u039f\u03a3") == ["\u03bf", "##\u03b4", "##\u03bf\u03c2"]  # final sigma
    assert tok.tokenize("unassigned\u0378x") == ["una", "##ssi", "##gned", "##x"]  # Cn is dropped
    a, b = "a b c", "d e f"  # surplus 1 on equal lengths: B loses it (Google's truncate_seq_pair)
    assert tok.convert_ids_to_tokens(tok(a, b, max_length=8, truncation=True)["input_ids"]) == \
        ["[CLS]", "a", "b", "c", "[SEP]", "d", "e", "[SEP]"]


# ---------------------------------------------------------------------------------------------
# 3. The cached path is the reference path
# ---------------------------------------------------------------------------------------------

_INTERESTING = st.sampled_from(list(" \t\n\r\x0b\x0c\x1c\x1f\x85\u00a0\u2028\u3000\u200b\u0301\u03a3\u00e9.,'!-$")
                               + ["[MASK]", "[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MA", "SK]", "\u535a", "\U0001f600"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.characters(exclude_categories=("Cs",)), _INTERESTING), max_size=40).map("".join))
def test_cached_path_equals_reference_path(text):
    tok = minilm()
    assert tok.encode_words_cached(text) == tok.convert_tokens_to_ids(tok.tokenize(text))


def test_cache_is_bounded_and_still_exact():
    tok = BertTokenizer(VOCAB, max_cache_size=3)
    text = "one two three four five six, one two"
    assert tok.encode_words_cached(text) == tok.convert_tokens_to_ids(tok.tokenize(text))
    assert len(tok._cache) == 3
    tok.clear_cache()
    assert len(tok._cache) == 0
    assert tok.encode_words_cached(["a b", "c"]) == [[1037, 1038], [1039]]


@pytest.mark.slow
def test_encoding_a_corpus_goes_through_the_word_cache():
    """The whole bundled corpus (5.4 MB) is encoded through the word cache: each distinct
    whitespace-separated chunk goes through the slow reference path (``tokenize``) exactly once,
    however often it occurs, which is what makes encoding a corpus take seconds (the speed itself is
    a benchmark's business, not a test's); and the ids equal the reference path's on a sample."""
    import gzip
    from collections import Counter

    from bertnp.corpus import bundled_corpus
    from bertnp.tokenizer import _WHITESPACE_RUN

    with gzip.open(bundled_corpus("train"), "rt", encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line]
    tok = BertTokenizer(VOCAB)
    reference, calls = tok.tokenize, Counter()

    def counting_tokenize(text):
        calls[text] += 1
        return reference(text)

    tok.tokenize = counting_tokenize           # the instance attribute shadows the method
    ids = tok.encode_words_cached(lines)
    tok.tokenize = reference
    chunks = sum(len(_WHITESPACE_RUN.split(line)) for line in lines)
    assert sum(map(len, ids)) > 1_000_000
    repeated = [c for c, n in calls.items() if n > 1]
    assert not repeated, f"{len(repeated)} chunks went through tokenize() more than once, e.g. {repeated[:3]}"
    assert len(calls) < chunks / 10, (f"{len(calls)} distinct chunks of {chunks}: the cache should spare "
                                      "more than 90% of the reference path's work on this corpus")
    sample = lines[::50]
    assert tok.encode_words_cached(sample) == [tok.convert_tokens_to_ids(tok.tokenize(t)) for t in sample]


# ---------------------------------------------------------------------------------------------
# 4. Vocabulary, model inputs, decode
# ---------------------------------------------------------------------------------------------


def test_vocabulary_attributes():
    tok = minilm()
    assert len(tok) == tok.vocab_size == 30522
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == \
        (0, 100, 101, 102, 103)
    assert tok.all_special_ids == [100, 102, 0, 101, 103]  # HF's order: unk, sep, pad, cls, mask
    assert tok.vocab["hello"] == 7592 and tok.ids_to_tokens[7592] == "hello"
    assert tok.convert_tokens_to_ids("not-a-token") == 100
    assert tok.convert_ids_to_tokens(np.int64(101)) == "[CLS]"
    assert tok.convert_ids_to_tokens(np.array([101, 7592, 102]), skip_special_tokens=True) == ["hello"]


def test_pair_layout_and_padding():
    tok = minilm()
    enc = tok("He bought milk.", "It was sour", max_length=12, padding="max_length")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "he", "bought", "milk", ".", "[SEP]", "it", "was", "sour", "[SEP]", "[PAD]", "[PAD]"]
    assert enc["token_type_ids"] == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert enc["attention_mask"] == [1] * 10 + [0, 0]


def test_return_tensors_np():
    tok = minilm()
    one = tok("a b c", return_tensors="np")
    assert one["input_ids"].shape == (1, 5) and one["input_ids"].dtype == np.int64  # batch axis added, as HF
    batch = tok(["a b c", "d"], ["x", "y z"], padding=True, return_tensors="np")
    assert {k: v.shape for k, v in batch.items()} == {k: (2, 7) for k in ("input_ids", "token_type_ids", "attention_mask")}
    assert batch["attention_mask"].sum(axis=1).tolist() == [7, 6]
    with pytest.raises(ValueError, match="padding"):
        tok(["a b c", "d"], return_tensors="np")


def test_hf_defaults_for_max_length():
    tok = minilm()
    assert tok("a b c d e f", max_length=4)["input_ids"] == [101, 1037, 1038, 102]  # max_length alone truncates
    assert len(tok("a b c d e f", max_length=4, padding="max_length")["input_ids"]) == 8  # ...unless padding is on
    assert len(tok("a b c d e f", max_length=4, padding="do_not_pad")["input_ids"]) == 8  # HF: only padding=False
    assert len(tok("a", padding="max_length")["input_ids"]) == 512  # model_max_length
    assert len(tok("word " * 600, truncation=True)["input_ids"]) == 512
    assert tok.encode("a", "b") == [101, 1037, 102, 1038, 102]
    # A lone empty encoding is padded like any row (HF leaves it empty alone, pads it in a batch).
    assert tok("", add_special_tokens=False, padding="max_length", max_length=3)["input_ids"] == [0, 0, 0]
    assert tok(["", "a"], add_special_tokens=False, padding="max_length", max_length=3)["input_ids"] == \
        [[0, 0, 0], [1037, 0, 0]]


def test_truncate_pair_lengths_equals_hf_closed_form():
    """Google's loop (remove from the longer, from B on a tie) == HF legacy's closed form."""
    for la in range(12):
        for lb in range(12):
            for budget in range(0, la + lb + 1):
                n = la + lb - budget
                first = min(abs(lb - la), n)
                second = n - first
                if la > lb:
                    hf = (la - first - second // 2, lb - (second - second // 2))
                else:
                    hf = (la - second // 2, lb - first - (second - second // 2))
                assert BertTokenizer.truncate_pair_lengths(la, lb, budget) == hf, (la, lb, budget)


def test_truncation_that_cannot_fit_raises():
    tok = minilm()
    with pytest.raises(ValueError, match="max_length"):
        tok("a", "b c", max_length=2, truncation=True)  # fewer places than special tokens
    with pytest.raises(ValueError, match="only_first"):
        tok("a", "b c d e f", max_length=5, truncation="only_first")
    with pytest.raises(ValueError, match="only_second"):
        tok("a b c d", max_length=3, truncation="only_second")
    assert tok("a", "b c d e f", max_length=5, truncation="only_second")["input_ids"] == [101, 1037, 102, 1038, 102]


def test_decode():
    tok = minilm()
    ids = tok("Tokenization isn't [MASK] hard!")["input_ids"]
    assert tok.decode(ids) == "[CLS] tokenization isn't [MASK] hard! [SEP]"
    assert tok.decode(ids, skip_special_tokens=True) == "tokenization isn't hard!"
    assert tok.decode(ids, clean_up_tokenization_spaces=False) == "[CLS] tokenization isn ' t [MASK] hard ! [SEP]"
    assert tok.batch_decode(np.array([ids[:4], ids[:4]])) == ["[CLS] tokenization isn"] * 2  # token ##ization


def test_special_tokens_never_split_and_never_lowercased():
    tok = minilm()
    assert tok.tokenize("x[MASK]y [SEP][CLS]") == ["x", "[MASK]", "y", "[SEP]", "[CLS]"]
    assert tok.tokenize("[mask]") == ["[", "mask", "]"]  # only the exact spelling is special
    custom = BertTokenizer(VOCAB, never_split=["C++"])
    assert custom.tokenize("I like C++ a lot") == ["i", "like", "C++", "a", "lot"]  # kept whole (as HF)...
    assert custom.encode_words_cached("C++") == [100]  # ...and it is not in the vocabulary
    assert BertTokenizer(VOCAB, do_basic_tokenize=False).tokenize("hello, World") == ["hello", "##,", "[UNK]"]


# ---------------------------------------------------------------------------------------------
# 5. Saving and loading
# ---------------------------------------------------------------------------------------------


def test_from_pretrained_reads_hf_config():
    tok = BertTokenizer.from_pretrained(FIXTURES)  # the checkpoint's vocab.txt + tokenizer_config.json
    assert tok.do_lower_case and tok.model_max_length == 512 and len(tok) == 30522
    assert BertTokenizer.from_pretrained(FIXTURES, do_lower_case=False).tokenize("Hello") == ["[UNK]"]


def test_save_and_load_round_trip(tmp_path):
    tok = BertTokenizer(VOCAB, do_lower_case=False, strip_accents=True, model_max_length=128)
    vocab_path, config_path = tok.save_pretrained(tmp_path / "saved")
    assert Path(vocab_path).read_bytes() == VOCAB.read_bytes()
    back = BertTokenizer.from_pretrained(tmp_path / "saved")
    assert (back.do_lower_case, back.strip_accents, back.model_max_length) == (False, True, 128)
    text = "caf\u00e9 cr\u00e8me Paris, [MASK] \u4e2d\u6587"  # cased, accents stripped: "Paris" unknown
    assert back.tokenize(text) == tok.tokenize(text) == ["cafe", "cr", "##eme", "[UNK]", ",", "[MASK]", "\u4e2d", "\u6587"]
    assert tok.save_vocabulary(tmp_path, filename_prefix="x") == (str(tmp_path / "x-vocab.txt"),)


def test_duplicate_tokens_keep_every_id(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhi\nhi\r\n", encoding="utf-8")
    tok = BertTokenizer(path)
    assert len(tok) == 7 and tok.vocab["hi"] == 6 and tok.convert_ids_to_tokens([5, 6]) == ["hi", "hi"]
    (saved,) = tok.save_vocabulary(tmp_path / ".." / tmp_path.name)
    assert Path(saved).read_text() == "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhi\nhi\n"


# ---------------------------------------------------------------------------------------------
# 6. Bad input
# ---------------------------------------------------------------------------------------------


def test_missing_or_empty_vocab(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        BertTokenizer(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError):
        BertTokenizer(tmp_path)  # a directory
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        BertTokenizer(empty)
    with pytest.raises(TypeError, match="vocab_file"):
        BertTokenizer(None)
    with pytest.raises(FileNotFoundError, match="empty path"):
        BertTokenizer("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n\n")
    with pytest.raises(ValueError, match=r"blank.txt' is empty \(blank lines only\)"):
        BertTokenizer(blank)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe[PAD]\n")
    with pytest.raises(ValueError, match="binary.txt.*UTF-8"):
        BertTokenizer(binary)


def test_vocab_without_special_tokens(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(GOOGLE_VOCAB) + "\n")  # Google's toy vocabulary: no [PAD], no [MASK]
    with pytest.raises(ValueError, match=r"pad_token='\[PAD\]'.*mask_token='\[MASK\]'"):
        BertTokenizer(path)
    with pytest.raises(ValueError, match="unk_token"):
        BertTokenizer(VOCAB, unk_token="[UNK] ")  # the cached path cuts at whitespace: no spaces inside
    with pytest.raises(TypeError, match="mask_token"):
        BertTokenizer(VOCAB, mask_token=None)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        BertTokenizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        BertTokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_bytes(VOCAB.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        BertTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"got the file .*BertTokenizer\(path\)"):
        BertTokenizer.from_pretrained(VOCAB)
    with pytest.raises(TypeError, match="directory"):
        BertTokenizer.from_pretrained(None)


@pytest.mark.parametrize("bad", [None, b"bytes", 3, ["list"]])
def test_tokenize_rejects_non_strings(bad):
    with pytest.raises(TypeError, match="text"):
        minilm().tokenize(bad)
    with pytest.raises(TypeError, match="text"):
        minilm().encode_words_cached(bad if bad != ["list"] else [None])


def test_call_rejects_bad_arguments():
    tok = minilm()
    with pytest.raises(TypeError, match="decode"):
        tok(b"bytes")
    with pytest.raises(TypeError, match=r"text\[1\]"):
        tok(["ok", None])
    with pytest.raises(TypeError, match="text_pair"):
        tok("a", text_pair=5)
    with pytest.raises(ValueError, match="text_pair"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="empty batch"):
        tok([])
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="sideways")
    with pytest.raises(ValueError, match="truncation"):
        tok("a", truncation="middle")
    with pytest.raises(ValueError, match="max_length"):
        tok("a", max_length=0)
    with pytest.raises(TypeError, match="max_length"):
        tok("a", max_length="5")
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="pt")


def test_convert_rejects_non_strings():
    tok = minilm()
    with pytest.raises(TypeError, match="tokens must be a str or a list"):
        tok.convert_tokens_to_ids(5)
    with pytest.raises(TypeError, match="tokens must contain str, got NoneType"):
        tok.convert_tokens_to_ids(["hello", None])
    with pytest.raises(TypeError, match="tokens"):
        tok.convert_tokens_to_ids(b"hello")
    assert tok.convert_tokens_to_ids(iter(["hello", "zzzzqq"])) == [7592, 100]


def test_decode_rejects_bad_ids():
    tok = minilm()
    with pytest.raises(ValueError, match="30522"):
        tok.decode([101, 30522])
    with pytest.raises(ValueError, match="-100"):
        tok.decode([-100])
    with pytest.raises(TypeError, match="ids"):
        tok.decode("hello")
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))


def test_import_needs_neither_torch_nor_transformers():
    code = ("import sys, bertnp.tokenizer, bertnp.wordpiece_trainer; "
            "bad = [m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
