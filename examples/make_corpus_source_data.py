"""Build the example classification task "which book is this sentence from?" from bertnp's bundled
corpus (public-domain text, bertnp/corpus/README.md), and write it as TSV files:

    examples/data/corpus_source/train.tsv    900 sentences, 300 per class
    examples/data/corpus_source/dev.tsv      450 sentences, 150 per class

    python examples/make_corpus_source_data.py            # rewrites both files (deterministic)
    python examples/make_corpus_source_data.py --check    # exit 1 unless the files match a rebuild

Each line is ``sentence<TAB>label`` after a header row ``sentence<TAB>label``; the three labels:

    bible               World English Bible (1,189 chapters)
    devils_dictionary   Ambrose Bierce, The Devil's Dictionary (1911; preface + 26 letters)
    jargon_file         The Jargon File 4.4.7 lexicon (2003; 27 letters)

How the labels are derived (no guessing: the corpus build, scripts/build_corpus.py, writes the
documents as ``web + devil + jargon`` in source order and holds out every 20th one, index % 20 ==
19, so a document's position in either split tells its source):

* train split: documents 0-1129 are WEB, 1130-1154 Devil's Dictionary, 1155-1179 Jargon File;
  held-out split: 0-58 WEB, 59 Devil's Dictionary, 60-61 Jargon File. Asserted below against the
  documents' first sentences and the README's counts.
* The two splits are pooled per source (train documents first), and every 5th pooled document
  (index % 5 == 4) is a *dev document*; the rest are training documents. Train and dev sentences
  therefore never come from the same chapter or dictionary letter: the dev score measures
  generalisation to unseen text of the same source, not memorised neighbours.
* Sentences of 6 to 40 words only (this drops the dictionaries' head-word lines such as
  "ABASEMENT, n." or "daemon, n.", which would give the answer away by their form, and very long
  verses); exact duplicates are dropped; tabs become spaces.
* 300 training and 150 dev sentences per class, drawn with numpy's default_rng(0) from each
  class's pool, then shuffled.

A caveat for "pretrained by bertnp" starts: bertnp's own pretraining reads the corpus's train
split, which includes (unlabelled) the dev documents of this task that lie in that split. That is
unsupervised exposure to the dev text, not to its labels; MiniLM never saw this corpus.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bertnp.corpus import bundled_corpus
from bertnp.data import read_corpus

OUT = Path(__file__).resolve().parent / "data" / "corpus_source"
LABELS = ("bible", "devils_dictionary", "jargon_file")
TRAIN_PER_CLASS, DEV_PER_CLASS = 300, 150
MIN_WORDS, MAX_WORDS = 6, 40
SEED = 0
# documents per source in each split (bertnp/corpus/README.md: 1,189 + 26 + 27, every 20th held out)
COUNTS = {"train": (1130, 25, 25), "heldout": (59, 1, 2)}


def documents_by_source() -> dict[str, list[list[str]]]:
    """{label: documents}, train-split documents first, then the held-out ones."""
    pooled = {label: [] for label in LABELS}
    for split in ("train", "heldout"):
        docs = read_corpus(bundled_corpus(split))
        web, devil, jargon = COUNTS[split]
        assert len(docs) == web + devil + jargon, (split, len(docs))
        parts = (docs[:web], docs[web:web + devil], docs[web + devil:])
        for label, part in zip(LABELS, parts):
            pooled[label].extend(part)
    # spot checks that the boundaries fall where the build script puts them
    assert pooled["devils_dictionary"][0][0].startswith("The Devil's Dictionary was begun"), pooled["devils_dictionary"][0][0]
    assert pooled["jargon_file"][0][0].startswith("/dev/null"), pooled["jargon_file"][0][0]
    assert pooled["bible"][0][0].startswith("In the beginning"), pooled["bible"][0][0]
    assert all(d[0].isupper() or "," in d[0] for d in pooled["devils_dictionary"][1:3])
    return pooled


def build() -> dict[str, list[tuple[str, str]]]:
    rng = np.random.default_rng(SEED)
    rows = {"train": [], "dev": []}
    seen = set()
    for label, docs in documents_by_source().items():
        pools = {"train": [], "dev": []}
        for i, doc in enumerate(docs):
            part = "dev" if i % 5 == 4 else "train"
            for sentence in doc:
                s = " ".join(sentence.replace("\t", " ").split())
                if MIN_WORDS <= len(s.split()) <= MAX_WORDS and s not in seen:
                    seen.add(s)
                    pools[part].append(s)
        for part, k in (("train", TRAIN_PER_CLASS), ("dev", DEV_PER_CLASS)):
            pool = pools[part]
            assert len(pool) >= k, (label, part, len(pool))
            pick = rng.choice(len(pool), size=k, replace=False)
            rows[part].extend((pool[int(j)], label) for j in sorted(pick))
    for part in rows:
        order = rng.permutation(len(rows[part]))
        rows[part] = [rows[part][int(j)] for j in order]
    return rows


def render(rows: list[tuple[str, str]]) -> str:
    return "sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = ap.parse_args(argv)
    rows = build()
    ok = True
    for part, data in rows.items():
        path = OUT / f"{part}.tsv"
        text = render(data)
        if args.check:
            same = path.is_file() and path.read_text(encoding="utf-8") == text
            print(f"{path}: {'matches the rebuild' if same else 'DIFFERS from the rebuild'}")
            ok &= same
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}: {len(data)} sentences")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
