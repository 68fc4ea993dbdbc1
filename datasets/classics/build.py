"""Rebuild the embedded `classics` dataset from its Debian source package.

    python datasets/classics/build.py            # needs apt-get (Debian/Ubuntu)

The text is Jane Austen's six completed novels (public domain), as packaged for
Debian in `r-cran-janeaustenr`. That package stores each novel as an R character
vector (one element per printed line) inside R's lazy-load database
(`data/Rdata.rdb` + `Rdata.rdx`). R is not needed: the format is small enough
to read here (R serialization, XDR, version 2/3).

Validation and test hold out whole chapters (two different sixths), so no passage
is split across train, val and test. Documents are runs of whole paragraphs of about one training row
(MAX_DOC_CHARS ~ 4 characters per token x 256 tokens): the dataloader crops a
document longer than what is left of a row, so chapter-sized documents would
waste most of the text.
"""

import bz2
import gzip
import lzma
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from dataset_cache import chunk_paragraphs  # noqa: E402
PACKAGE = "r-cran-janeaustenr"
DATA_DIR = "usr/lib/R/site-library/janeaustenr/data"
NOVELS = (  # R object names, in publication order
    "sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion",
)
NUM_TRAIN_SHARDS = 4        # train shards; shard_00004 is validation, shard_00005 test
HELD_EVERY = 6              # of every 6 chapters of a novel,
VAL_AT = 5                  # the 6th goes to validation (~17% of the text)
TEST_AT = 2                 # and the 3rd to test (~17%), sealed until a session's end
MAX_DOC_CHARS = 1024


# ---------------------------------------------------------------------------
# R serialization (only what character vectors and the index need)

class RReader:
    NILVALUE, SYMSXP, LISTSXP, CHARSXP, INTSXP, REALSXP, STRSXP, VECSXP = 254, 1, 2, 9, 13, 14, 16, 19
    REFSXP, LGLSXP = 255, 10

    def __init__(self, data):
        assert data[:2] == b"X\n", "only XDR-serialized R objects are supported"
        self.b, self.i, self.refs = data, 2, []
        version = self.int()
        self.int(), self.int()  # writer R version, minimal reader version
        if version == 3:
            encoding_length = self.int()  # followed by the native encoding name
            self.i += encoding_length

    def int(self):
        (v,) = struct.unpack_from(">i", self.b, self.i)
        self.i += 4
        return v

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == self.NILVALUE:
            return None
        if kind == self.REFSXP:
            return self.refs[(flags >> 8) - 1]
        if kind == self.SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == self.LISTSXP:  # pairlist: returned as a dict tag -> value
            out = {}
            while kind == self.LISTSXP:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else len(out)
                out[tag] = self.item()
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
            return out
        if kind == self.CHARSXP:
            n = self.int()
            if n == -1:
                return None
            s = self.b[self.i:self.i + n].decode("utf-8", errors="replace")
            self.i += n
            return s
        if kind in (self.INTSXP, self.LGLSXP):
            n = self.int()
            v = list(struct.unpack_from(f">{n}i", self.b, self.i))
            self.i += 4 * n
        elif kind == self.REALSXP:
            n = self.int()
            v = list(struct.unpack_from(f">{n}d", self.b, self.i))
            self.i += 8 * n
        elif kind in (self.STRSXP, self.VECSXP):
            n = self.int()
            v = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"unsupported R type {kind}")
        if has_attr:
            attrs = self.item()
            if attrs and "names" in attrs:
                v = dict(zip(attrs["names"], v))
        return v


def read_rdb_object(rdb, offset, length):
    """One object of a lazy-load database: 4-byte size, optional codec byte, payload."""
    block = rdb[offset:offset + length]
    codec = block[4:5]
    if codec in (b"Z", b"2", b"X", b"0"):
        payload = block[5:]
        raw = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}[codec](payload)
    else:
        raw = zlib.decompress(block[4:])
    return RReader(raw).item()


def load_novels(data_dir):
    index = RReader(gzip.decompress(open(os.path.join(data_dir, "Rdata.rdx"), "rb").read())).item()
    rdb = open(os.path.join(data_dir, "Rdata.rdb"), "rb").read()
    return {name: read_rdb_object(rdb, *index["variables"][name]) for name in NOVELS}


# ---------------------------------------------------------------------------
# Lines -> chapters -> shards

CHAPTER = re.compile(r"^\s*(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?\s*$")


def chapters(lines):
    """Split a novel's lines into chapters: one string each, a paragraph per line pair."""
    out, current = [], []
    for line in lines:
        line = (line or "").rstrip()
        if CHAPTER.match(line):
            if current:
                out.append(current)
            current = [line.strip()]
        elif current or line:
            current.append(line)
    if current:
        out.append(current)
    texts = []
    for chapter in out:
        paragraphs = " \n".join(chapter).split(" \n \n")
        text = "\n\n".join(" ".join(p.replace(" \n", " ").split()) for p in paragraphs if p.strip())
        if len(text) > 200:  # drop title pages and stray headings
            texts.append(text)
    return texts


def main():
    work = tempfile.mkdtemp()
    subprocess.run(["apt-get", "download", PACKAGE], cwd=work, check=True)
    deb = next(f for f in os.listdir(work) if f.endswith(".deb"))
    subprocess.run(["dpkg-deb", "-x", deb, "x"], cwd=work, check=True)
    novels = load_novels(os.path.join(work, "x", DATA_DIR))
    train, val, test = [], [], []
    for name in NOVELS:
        for i, chapter in enumerate(chapters(novels[name])):
            docs = chunk_paragraphs(chapter, MAX_DOC_CHARS)
            {VAL_AT: val, TEST_AT: test}.get(i % HELD_EVERY, train).extend(docs)
    shards = [train[k::NUM_TRAIN_SHARDS] for k in range(NUM_TRAIN_SHARDS)] + [val, test]
    for k, docs in enumerate(shards):
        path = os.path.join(HERE, f"shard_{k:05d}.parquet")
        pq.write_table(pa.table({"text": docs}), path, compression="zstd", compression_level=19)
    total = sum(len(d) for d in train + val + test)
    print(f"{len(train)} train + {len(val)} val + {len(test)} test documents, {total / 1e6:.2f} M characters, {len(shards)} shards")


if __name__ == "__main__":
    sys.exit(main())
