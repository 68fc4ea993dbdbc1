"""Build a held-out corpus for checking tuned defaults against overfitting.

The defaults in train.py's CPU branch are tuned on `classics` (Jane Austen). To
see whether they only fit Austen, they are compared on other public-domain
English prose, taken from Debian packages:

  * mobydick.txt: Herman Melville's *Moby Dick* (1851), as packaged in
    `r-cran-tokenizers` (its `mobydick` data set, the Project Gutenberg text
    #2701), without Project Gutenberg's header and license (~1.2 M characters);
  * kjv.txt: the King James Bible (1611), from `bible-kjv-text`, printed by the
    `bible` program of `bible-kjv` (the text ships in that program's own
    compressed format), a paragraph per chapter (~4.3 M characters).

Together they are about the size of `classics` (Moby Dick alone is a quarter of
it, so a 2-minute run sees it several times over).

    python benchmarks/heldout_corpus.py --out ~/heldout      # needs apt-get (Debian/Ubuntu)
    python prepare.py --dataset local:~/heldout
    AUTORESEARCH_DATASET=local:~/heldout python train.py

As `local:<path>` the files are split into train and validation documents by the
harness (vocab 4096, rows of 512 tokens).
"""
import argparse
import gzip
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "datasets", "classics"))
from build import RReader, read_rdb_object  # noqa: E402  (R's lazy-load format, no R needed)

PACKAGE = "r-cran-tokenizers"
DATA_DIR = "usr/lib/R/site-library/tokenizers/data"
START = "*** START OF THIS PROJECT GUTENBERG EBOOK"
END = "End of Project Gutenberg"


def novel_text(raw):
    """The book without Project Gutenberg's header and license."""
    start = raw.index(START)
    start = raw.index("\n", start) + 1
    end = raw.find(END, start)
    text = raw[start:end if end > 0 else len(raw)].replace("\r\n", "\n").strip()
    return text + "\n"


def download(package, work):
    """apt-get download PACKAGE into work and unpack it; returns the unpacked root."""
    try:
        subprocess.run(["apt-get", "download", package], cwd=work, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"apt-get download {package} failed ({e}); run this on Debian or Ubuntu with apt sources")
    deb = next(f for f in os.listdir(work) if f.startswith(package + "_") and f.endswith(".deb"))
    subprocess.run(["dpkg-deb", "-x", deb, "x"], cwd=work, check=True)
    return os.path.join(work, "x")


def mobydick(work):
    data = os.path.join(download(PACKAGE, work), DATA_DIR)
    index = RReader(gzip.decompress(open(os.path.join(data, "Rdata.rdx"), "rb").read())).item()
    rdb = open(os.path.join(data, "Rdata.rdb"), "rb").read()
    value = read_rdb_object(rdb, *index["variables"]["mobydick"])
    raw = next(iter(value.values())) if isinstance(value, dict) else value[0]
    return novel_text(raw.lstrip("\ufeff"))


VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def bible_paragraphs(lines):
    """`bible -f` prints a verse a line ("Ge1:1 In the beginning..."); the book
    and chapter go, and each chapter becomes one paragraph."""
    chapters, key = [], None
    for line in lines:
        m = VERSE.match(line.rstrip("\n"))
        if not m:
            continue
        if (m.group(1), m.group(2)) != key:
            key = (m.group(1), m.group(2))
            chapters.append([])
        chapters[-1].append(m.group(4).strip())
    return "\n\n".join(" ".join(c) for c in chapters) + "\n"


def kjv(work):
    root = download("bible-kjv-text", work)
    download("bible-kjv", work)
    out = subprocess.run([os.path.join(root, "usr", "bin", "bible"), "-p", os.path.join(root, "usr", "lib"),
                          "-f", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, check=True)
    return bible_paragraphs(out.stdout.splitlines())


BOOKS = {"mobydick": mobydick, "kjv": kjv}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write the books into")
    ap.add_argument("--books", default="mobydick,kjv", help="comma-separated, from: " + ", ".join(BOOKS))
    args = ap.parse_args(argv)
    books = [b.strip() for b in args.books.split(",") if b.strip()]
    unknown = [b for b in books if b not in BOOKS]
    if unknown or not books:
        sys.exit(f"--books {args.books}: choose from {', '.join(BOOKS)}")
    out = os.path.abspath(os.path.expanduser(args.out))
    os.makedirs(out, exist_ok=True)
    for book in books:
        with tempfile.TemporaryDirectory() as work:
            text = BOOKS[book](work)
        path = os.path.join(out, book + ".txt")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        print(f"{path}: {len(text) / 1e6:.2f} M characters")
    print(f"use it as --dataset local:{out}")


if __name__ == "__main__":
    sys.exit(main())
