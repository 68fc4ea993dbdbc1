"""Build a held-out corpus for checking tuned defaults against overfitting.

The defaults in train.py's CPU branch are tuned on `classics` (Jane Austen). To
see whether they only fit Austen, they are compared on other public-domain
English prose: Herman Melville's *Moby Dick* (1851), as packaged in Debian's
`r-cran-tokenizers` (its `mobydick` data set, the Project Gutenberg text #2701).
The Project Gutenberg header and license are cut off; what is left is the novel.

    python benchmarks/heldout_corpus.py --out ~/heldout      # needs apt-get (Debian/Ubuntu)
    python prepare.py --dataset local:~/heldout
    AUTORESEARCH_DATASET=local:~/heldout python train.py

It writes one file, `mobydick.txt` (~1.2 MB). As `local:<path>` it is split into
train and validation documents by the harness (vocab 4096, rows of 512 tokens).
"""
import argparse
import gzip
import os
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write mobydick.txt into")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp()
    try:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=work, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"apt-get download {PACKAGE} failed ({e}); run this on Debian or Ubuntu with apt sources")
    deb = next(f for f in os.listdir(work) if f.endswith(".deb"))
    subprocess.run(["dpkg-deb", "-x", deb, "x"], cwd=work, check=True)
    data = os.path.join(work, "x", DATA_DIR)
    index = RReader(gzip.decompress(open(os.path.join(data, "Rdata.rdx"), "rb").read())).item()
    rdb = open(os.path.join(data, "Rdata.rdb"), "rb").read()
    value = read_rdb_object(rdb, *index["variables"]["mobydick"])
    raw = next(iter(value.values())) if isinstance(value, dict) else value[0]
    text = novel_text(raw.lstrip("\ufeff"))
    out = os.path.abspath(os.path.expanduser(args.out))
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "mobydick.txt")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    print(f"{path}: {len(text) / 1e6:.2f} M characters; use it as --dataset local:{out}")


if __name__ == "__main__":
    sys.exit(main())
