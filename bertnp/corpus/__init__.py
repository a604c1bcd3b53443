"""The bundled corpus: public-domain English prose in BERT's format, gzip-compressed.

    from bertnp.corpus import bundled_corpus
    from bertnp.data import read_corpus
    docs = read_corpus(bundled_corpus("train"))      # list of documents, each a list of sentences

``train``: 1,180 documents (World English Bible chapters; The Devil's Dictionary and the Jargon
File's lexicon, one document per initial letter); ``heldout``: 62 other documents (every 20th
in source order). Provenance, licence, sizes and how
to rebuild it (``scripts/build_corpus.py``): README.md in this folder.

Also bundled: BERT-base's uncased WordPiece vocabulary (30,522 tokens; Apache-2.0, the
vocabulary of all-MiniLM-L6-v2), so lessons and examples can tokenize like BERT from any folder::

    tok = bn.BertTokenizer(bert_base_uncased_vocab(), do_lower_case=True)
"""

from pathlib import Path

__all__ = ["bundled_corpus", "bert_base_uncased_vocab", "CORPUS_NAME", "SPLITS"]

CORPUS_NAME = "english"
SPLITS = ("train", "heldout")
_HERE = Path(__file__).resolve().parent


def bundled_corpus(split: str = "train") -> Path:
    """Path of the bundled corpus file for ``split`` ("train" or "heldout")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = _HERE / f"{CORPUS_NAME}.{split}.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"bundled corpus file missing: '{path}' (is the package installed with its "
                                "package data? rebuild with scripts/build_corpus.py)")
    return path


def bert_base_uncased_vocab() -> Path:
    """Path of the bundled 30,522-token uncased BERT-base vocabulary (``vocab.txt`` format)."""
    path = _HERE / "bert-base-uncased-vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"bundled vocabulary missing: '{path}' (is the package installed with "
                                "its package data?)")
    return path
