"""
The fixed harness, as a template sees it: the active dataset's constants, the
tokenizer, the dataloader and the one metric. FIXED: experiments never edit
this file, so every val_bpb is measured the same way.

    python prepare.py --dataset classics          # embedded, offline, seconds
    python prepare.py --dataset tinystories       # downloads one parquet file
    python prepare.py                             # climbmix, 10 train shards + the val shard
    python prepare.py --dataset local:~/corpus    # your own .txt/.jsonl/.parquet
    python prepare.py --dataset classics --verify # is the cache complete and intact?

Each dataset gets its own cache, ~/.cache/autoresearch/<name>/ (the base
follows AUTORESEARCH_CACHE): parquet files, tokenizer.pkl (a tiktoken Encoding
trained with rustbpe), token_bytes.npy and manifest.json (settings, sizes,
sha256). Re-running is safe: whatever is complete and verified is kept.
dataset_cache.py builds and checks the cache; data_sources.py says where each
dataset's text comes from.

The templates import this module. It is framework-neutral (NumPy only): the
dataloader yields int32 arrays and evaluate_bpb takes a callable, so a val_bpb
from PyTorch and one from MLX are computed by the same code on the same tokens.
The active dataset and time budget come from AUTORESEARCH_DATASET and
AUTORESEARCH_TIME_BUDGET, so a harness can run every experiment identically.
"""

import argparse
import bisect
import math
import os
import pickle
import random
import sys

import numpy as np

import data_sources
import dataset_cache
from dataset_cache import DataError

# ---------------------------------------------------------------------------
# Constants of the active dataset (fixed for a session)
# ---------------------------------------------------------------------------

DEFAULT_DATASET = "climbmix"
DATASET = os.environ.get("AUTORESEARCH_DATASET") or DEFAULT_DATASET
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET") or 300)  # seconds of training

try:
    SOURCE = data_sources.get_source(DATASET)
except ValueError as e:
    raise DataError(f"AUTORESEARCH_DATASET: {e}") from None

MAX_SEQ_LEN = SOURCE.max_seq_len
VOCAB_SIZE = SOURCE.vocab_size
EVAL_TOKENS = SOURCE.eval_tokens
if SOURCE.is_local:  # a local corpus's eval size depends on its validation split: its manifest records it
    EVAL_TOKENS = int((dataset_cache.read_manifest(SOURCE) or {}).get("settings", {}).get("eval_tokens", EVAL_TOKENS))

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


class Tokenizer:
    """The dataset's tiktoken encoding with its BOS token."""

    def __init__(self, enc, manifest, source=None):
        self.enc = enc
        self.manifest = manifest  # verified by load(); the dataloader reads its splits
        self.source = source or SOURCE
        self.bos_token_id = enc.encode_single_token(dataset_cache.BOS_TOKEN)
        self.vocab_size = enc.n_vocab

    @classmethod
    def load(cls, dataset=None):
        """The verified tokenizer of `dataset` (default: the active one)."""
        source = data_sources.get_source(dataset) if dataset else SOURCE
        manifest = dataset_cache.load_manifest(source)
        with open(os.path.join(dataset_cache.cache_dir(source), "tokenizer.pkl"), "rb") as f:
            return cls(pickle.load(f), manifest, source)

    def encode(self, text, prepend=None, num_threads=4):
        """str -> list of ids; list of str -> list of lists. `prepend` adds a token id first."""
        if isinstance(text, str):
            ids = self.enc.encode_ordinary(text)
            return ids if prepend is None else [prepend] + ids
        rows = self.enc.encode_ordinary_batch(list(text), num_threads=num_threads)
        return rows if prepend is None else [[prepend] + r for r in rows]

    def decode(self, ids):
        return self.enc.decode(list(ids))


def get_token_bytes(dataset=None):
    """int32 array: UTF-8 byte length of each token id (0 for special tokens)."""
    source = data_sources.get_source(dataset) if dataset else SOURCE
    dataset_cache.load_manifest(source)
    return np.load(os.path.join(dataset_cache.cache_dir(source), "token_bytes.npy"))


# ---------------------------------------------------------------------------
# Dataloader: BOS-aligned rows, best-fit packing, no padding
# ---------------------------------------------------------------------------


def _document_batches(tokenizer, slices, shuffle_seed, batch_docs=256):
    """Lists of tokenized documents (each starting with BOS), forever, with None after
    each full pass. Train order is shuffled per pass; val order never changes."""
    epoch = 0
    while True:
        order = list(slices)
        if shuffle_seed is not None:
            random.Random(shuffle_seed * 1_000_003 + epoch).shuffle(order)
        for file, first, stop in order:
            texts = dataset_cache.read_texts(tokenizer.source, file, first, stop)
            if shuffle_seed is not None:
                random.Random(f"{shuffle_seed}:{epoch}:{file}").shuffle(texts)
            for k in range(0, len(texts), batch_docs):
                yield tokenizer.encode(texts[k:k + batch_docs], prepend=tokenizer.bos_token_id)
        yield None
        epoch += 1


def make_dataloader(tokenizer, B, T, split, seed=0, buffer_size=1000):
    """Yield (x, y): int32 arrays of shape (B, T), y shifted by one token.

    Each row holds T+1 tokens of whole documents, each beginning with BOS.
    To fill a row, take the largest buffered document that fits what is left;
    when none fits, crop the shortest one to fill the row exactly. No padding,
    every token of a row is used. `train` is infinite and its order depends on
    `seed`; `val` always yields the same batches in the same order.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    slices = [tuple(s) for s in tokenizer.manifest["splits"][split]]
    batches = _document_batches(tokenizer, slices, seed if split == "train" else None)

    # The buffer is kept sorted by length, so "largest that fits" is a binary search.
    lengths, docs = [], []
    pass_over = False  # val: the last pass has been read; use it up before repeating documents

    def refill():
        nonlocal pass_over
        while len(docs) < buffer_size:
            if pass_over:
                if docs:
                    return
                pass_over = False
            batch = next(batches)
            if batch is None:
                pass_over = split == "val"
                continue
            for doc in batch:
                i = bisect.bisect_left(lengths, len(doc))
                lengths.insert(i, len(doc))
                docs.insert(i, doc)

    width = T + 1
    while True:
        rows = np.empty((B, width), dtype=np.int32)
        for r in range(B):
            pos = 0
            while pos < width:
                refill()
                room = width - pos
                i = bisect.bisect_right(lengths, room) - 1
                if i >= 0:
                    doc = docs.pop(i)
                    lengths.pop(i)
                    rows[r, pos:pos + len(doc)] = doc
                    pos += len(doc)
                else:  # nothing fits: crop the shortest to fill the row
                    doc = docs.pop(0)
                    lengths.pop(0)
                    rows[r, pos:] = doc[:room]
                    pos = width
        yield np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])


# ---------------------------------------------------------------------------
# The metric (DO NOT CHANGE: this is what every experiment is judged by)
# ---------------------------------------------------------------------------


def evaluate_bpb(per_token_loss, batch_size):
    """Bits per byte on EVAL_TOKENS validation tokens.

    per_token_loss(x, y) gets int32 arrays (batch_size, MAX_SEQ_LEN) and returns
    the cross-entropy of each target in nats, shape (batch_size, MAX_SEQ_LEN),
    as anything np.asarray accepts. bpb = sum of nats over targets that are
    real text (byte length > 0) / (ln 2 * sum of their byte lengths): special
    tokens count in neither sum, and the vocabulary size does not matter.
    """
    tokenizer = Tokenizer.load()
    token_bytes = get_token_bytes()
    steps = EVAL_TOKENS // (batch_size * MAX_SEQ_LEN)
    if steps < 1:
        raise ValueError(f"batch_size {batch_size} x MAX_SEQ_LEN {MAX_SEQ_LEN} exceeds EVAL_TOKENS {EVAL_TOKENS}")
    loader = make_dataloader(tokenizer, batch_size, MAX_SEQ_LEN, "val")
    total_nats, total_bytes = 0.0, 0
    for _ in range(steps):
        x, y = next(loader)
        nats = np.asarray(per_token_loss(x, y), dtype=np.float64).reshape(y.shape)
        nbytes = token_bytes[y]
        total_nats += float(nats[nbytes > 0].sum())
        total_bytes += int(nbytes.sum())
    return total_nats / (math.log(2) * total_bytes)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare (download, tokenize, verify) a dataset for autoresearch.")
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help="climbmix (default), tinystories, classics, or local:<path>")
    parser.add_argument("--num-shards", type=int, default=None,
                        help="climbmix: training shards to download (-1 = all); the val shard is always included")
    parser.add_argument("--download-workers", type=int, default=8, help="parallel downloads")
    parser.add_argument("--verify", action="store_true",
                        help="only check the cache: exit 0 if complete and intact, else print the fix")
    args = parser.parse_args(argv)
    try:
        source = data_sources.get_source(args.dataset)
        if args.verify:
            manifest = dataset_cache.load_manifest(source, full=True)
            print(f"ok: {dataset_cache.source_label(source)} verified ({len(manifest['files'])} files) "
                  f"in {dataset_cache.cache_dir(source)}")
            return 0
        num_shards = source.val_shard if args.num_shards == -1 else args.num_shards
        dataset_cache.build(args.dataset, num_shards, args.download_workers)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume; finished files are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
