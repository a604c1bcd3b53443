"""Fingerprints of the Unicode properties the tokenizer reads, per block of the code-point sweep,
so that tests/test_tokenizer.py::test_every_code_point_matches_hf runs on any Python.

The sweep's expected ids (hf_legacy_minilm.json) were made by Hugging Face on one Unicode version
(the fixture's ``unidata_version``, that of the Python that made it). Another Python ships another
Unicode database: newly assigned characters change category, case or decomposition, and with them
the right tokens. A block whose characters have exactly the same properties on both versions must
still give HF's ids; a block whose properties changed cannot be compared. This script records, for
each block, a SHA-256 of every property the tokenizer's path touches -- for each code point c, on
the sweep's text "c ac": its NFC form, lower case, NFD forms, whitespace split, isalnum of the
words, and the Unicode category of every character involved. The test recomputes the digest on
its own Python and compares the blocks whose digest is unchanged.

    python tests/reference/make_unicode_fingerprints.py    # standard library only; must run on a
                                                            # Python whose Unicode is the fixture's
"""
from __future__ import annotations

import hashlib
import json
import sys
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "tokenizer"
OUT = FIXTURES / "unicode_blocks.json"


def sweep_piece(cp: int) -> str:
    """The sweep's text for one code point (make_tokenizer_fixtures.sweep_text joins these)."""
    c = chr(cp)
    return f"{c} a{c}b"


def properties(text: str) -> list:
    """Every Unicode-dependent value the BERT tokenizer computes on ``text``."""
    nfc = unicodedata.normalize("NFC", text)
    low = nfc.lower()
    forms = [nfc, low, unicodedata.normalize("NFD", low), unicodedata.normalize("NFD", nfc)]
    words = [nfc.split(), low.split()]
    alnum = [[w.isalnum() for w in ws] for ws in words]
    chars = sorted(set("".join(forms) + text))
    return [forms, words, alnum, [[ch, unicodedata.category(ch), ch.isspace()] for ch in chars]]


def block_fingerprint(lo: int, hi: int) -> str:
    data = [properties(sweep_piece(cp)) for cp in range(lo, hi)]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def main() -> None:
    fixture = json.loads((FIXTURES / "hf_legacy_minilm.json").read_text(encoding="utf-8"))
    version = fixture["meta"]["unidata_version"]
    if unicodedata.unidata_version != version:
        sys.exit(f"this Python has Unicode {unicodedata.unidata_version}; the sweep was made on {version}: "
                 "run this script on a Python with that Unicode version")
    blocks = [{"lo": b["lo"], "hi": b["hi"], "sha256": block_fingerprint(b["lo"], b["hi"])} for b in fixture["sweep"]]
    OUT.write_text(json.dumps({"unidata_version": version, "python": sys.version.split()[0], "blocks": blocks},
                              indent=0) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(blocks)} blocks, Unicode {version})")


if __name__ == "__main__":
    main()
