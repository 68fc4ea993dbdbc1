"""
The fixed harness: data, tokenizer, dataloader and the one metric. FIXED:
experiments never edit this file, so every val_bpb is measured the same way.

    python prepare.py --dataset classics          # embedded, offline, seconds
    python prepare.py --dataset tinystories       # downloads one parquet file
    python prepare.py                             # climbmix, 10 train shards + the val shard
    python prepare.py --dataset local:~/corpus    # your own .txt/.jsonl/.parquet
    python prepare.py --dataset classics --verify # is the cache complete and intact?

Each dataset gets its own cache, ~/.cache/autoresearch/<name>/ (the base
follows AUTORESEARCH_CACHE): parquet files, tokenizer.pkl (a tiktoken Encoding
trained with rustbpe), token_bytes.npy and manifest.json (settings, sizes,
sha256). Re-running is safe: whatever is complete and verified is kept.

The templates import this module. It is framework-neutral (NumPy only): the
dataloader yields int32 arrays and evaluate_bpb takes a callable, so a val_bpb
from PyTorch and one from MLX are computed by the same code on the same tokens.
The active dataset and time budget come from AUTORESEARCH_DATASET and
AUTORESEARCH_TIME_BUDGET, so a harness can run every experiment identically.
"""

import argparse
import bisect
import hashlib
import json
import math
import os
import pickle
import random
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import data_sources

# ---------------------------------------------------------------------------
# Constants of the active dataset (fixed for a session)
# ---------------------------------------------------------------------------

DEFAULT_DATASET = "climbmix"
DATASET = os.environ.get("AUTORESEARCH_DATASET") or DEFAULT_DATASET
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET") or 300)  # seconds of training

CACHE_BASE = os.path.expanduser(os.environ.get("AUTORESEARCH_CACHE") or "~/.cache/autoresearch")

# BPE split pattern (GPT-4 style, numbers in groups of at most two digits).
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]
MANIFEST_FORMAT = 1


class DataError(RuntimeError):
    """A problem with the data, phrased as one line that says how to fix it."""


def _prepare_command(name):
    return f"python prepare.py --dataset {name}"


try:
    SOURCE = data_sources.get_source(DATASET)
except ValueError as e:
    raise DataError(f"AUTORESEARCH_DATASET: {e}") from None


def cache_dir(source=None):
    return os.path.join(CACHE_BASE, (source or SOURCE).name)


def _recorded_manifest(source):
    """The manifest as written, even when the files no longer match it (or None)."""
    try:
        with open(os.path.join(cache_dir(source), "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# A local corpus's eval size depends on its validation split: prepare.py records it.
_settings = (_recorded_manifest(SOURCE) or {}).get("settings", {}) if SOURCE.is_local else {}
MAX_SEQ_LEN = SOURCE.max_seq_len
VOCAB_SIZE = SOURCE.vocab_size
EVAL_TOKENS = int(_settings.get("eval_tokens", SOURCE.eval_tokens))

# ---------------------------------------------------------------------------
# Small file utilities
# ---------------------------------------------------------------------------


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path, data):
    """Write bytes to path via a temporary file and rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _file_record(path):
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def _progress(total, desc, unit):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
                disable=os.environ.get("AUTORESEARCH_QUIET") == "1", leave=False)


# ---------------------------------------------------------------------------
# Downloads: concurrent, resumable, retried with backoff, atomic, verified
# ---------------------------------------------------------------------------

DOWNLOAD_ATTEMPTS = 6
DOWNLOAD_TIMEOUT = 60  # seconds without a byte before a read gives up
BACKOFF_BASE = float(os.environ.get("AUTORESEARCH_BACKOFF", "1.0"))  # seconds; doubles per attempt


def _expected_sha256(headers):
    """The hub sends a file's sha256 as its (linked) ETag for LFS files; use it when present."""
    for key in ("X-Linked-Etag", "ETag"):
        value = (headers.get(key) or "").strip().removeprefix("W/").strip('"')
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower()):
            return value.lower()
    return None


def download_file(url, path, progress=None):
    """Fetch url to path. Partial data survives in path + '.part' and is resumed with Range.

    The final file appears only after its size matches the server's and, when
    the server gives a sha256, the hash matches: a truncated body or a dropped
    connection is retried, never renamed into place.
    """
    part = path + ".part"
    last_error = None
    for attempt in range(DOWNLOAD_ATTEMPTS):
        if attempt:
            time.sleep(BACKOFF_BASE * 2 ** (attempt - 1))
        have = os.path.getsize(part) if os.path.exists(part) else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
                if response.status == 206:
                    total = int(response.headers["Content-Range"].rsplit("/", 1)[1])
                else:  # the server ignored Range: start over
                    have, total = 0, int(response.headers.get("Content-Length") or -1)
                expected = _expected_sha256(response.headers)
                with open(part, "ab" if have else "wb") as f:
                    while block := response.read(1 << 20):
                        f.write(block)
                        if progress is not None:
                            progress.update(len(block))
            size = os.path.getsize(part)
            if total >= 0 and size != total:
                raise OSError(f"got {size} of {total} bytes")
            if expected and sha256_file(part) != expected:
                os.unlink(part)  # corrupt: resuming it would never help
                raise OSError("sha256 does not match the server's")
            os.replace(part, path)
            return
        except urllib.error.HTTPError as e:
            last_error = f"HTTP {e.code}"
            if e.code == 416:  # our partial file is longer than the file: start over
                os.unlink(part)
            elif e.code in (401, 403, 404):
                break  # retrying will not help
        except (OSError, ValueError) as e:  # URLError, timeouts, resets, IncompleteRead, bad sizes
            last_error = str(getattr(e, "reason", None) or e)
    raise DataError(f"download of {url} failed ({last_error})")


def download_all(source, files, workers):
    """Download the files not yet in the cache, several at a time."""
    directory = cache_dir(source)
    missing = [f for f in files if not os.path.exists(os.path.join(directory, f))]
    if not missing:
        return
    print(f"Data: downloading {len(missing)} file(s) from {source.url('')}")
    errors = []
    with _progress(None, "download", "B") as bar, ThreadPoolExecutor(max(1, min(workers, len(missing)))) as pool:
        futures = {pool.submit(download_file, source.url(f), os.path.join(directory, f), bar): f for f in missing}
        for future, f in futures.items():
            try:
                future.result()
            except DataError as e:
                errors.append(str(e))
    if errors:
        raise DataError(f"{len(errors)} download(s) failed, first: {errors[0]}; check the network (or "
                        f"HF_ENDPOINT); finished files are kept: re-run "
                        f"`{_prepare_command(source_label(source))}` to resume")


def source_label(source):
    """The name a person types for this dataset (local corpora by their path)."""
    return f"local:{source.local_path}" if source.is_local else source.name


# ---------------------------------------------------------------------------
# Local corpora: .txt / .jsonl / .parquet -> parquet shards in the cache
# ---------------------------------------------------------------------------

LOCAL_SHARD_DOCS = 50_000


def _local_files(path):
    exts = (".txt", ".jsonl", ".parquet")
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"local corpus {path} does not exist; pass a file or folder of .txt/.jsonl/.parquet")
    found = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, n) for n in sorted(names) if n.endswith(exts)]
    return found


def _local_documents(source):
    """Every document of the corpus, long ones chunked at paragraph boundaries."""
    import pyarrow.parquet as pq

    max_chars = 4 * source.max_seq_len  # ~4 characters per token: a document ~ one row
    for path in _local_files(source.local_path):
        if path.endswith(".txt"):
            with open(path, encoding="utf-8", errors="replace") as f:
                texts = [f.read()]
        elif path.endswith(".jsonl"):
            texts = []
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            texts.append(json.loads(line)["text"])
                        except (ValueError, KeyError, TypeError):
                            raise DataError(f"{path}:{n}: each .jsonl line needs a JSON object with a "
                                            f"\"text\" field; fix or remove that line") from None
        else:
            table = pq.read_table(path)
            if "text" not in table.column_names:
                raise DataError(f"{path} has no 'text' column (columns: {', '.join(table.column_names)})")
            texts = table.column("text").to_pylist()
        for text in texts:
            if text and text.strip():
                yield from data_sources.chunk_paragraphs(text, max_chars)


def _local_fingerprint(source):
    """Paths, sizes and mtimes of the corpus: a changed corpus is prepared again."""
    h = hashlib.sha256()
    for path in _local_files(source.local_path):
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def build_local_shards(source):
    """Split a local corpus deterministically and write it as parquet shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    train, val = [], []
    for doc in _local_documents(source):
        (val if data_sources.is_validation(doc) else train).append(doc)
    if not train and not val:
        raise DataError(f"no text found in {source.local_path} (looked for .txt, .jsonl with a "
                        f"\"text\" field, .parquet with a 'text' column)")
    if not val or not train:  # a tiny corpus: still hold something out
        docs = train + val
        if len(docs) < 2:
            raise DataError(f"{source.local_path} holds a single short document; add more text "
                            f"(validation needs its own documents)")
        cut = max(1, len(docs) // 10)
        train, val = docs[cut:], docs[:cut]
    directory = cache_dir(source)
    splits = {"train": [], "val": []}
    for split, docs in (("train", train), ("val", val)):
        for k in range(0, len(docs), LOCAL_SHARD_DOCS):
            name = f"{split}_{k // LOCAL_SHARD_DOCS:05d}.parquet"
            path = os.path.join(directory, name)
            pq.write_table(pa.table({"text": docs[k:k + LOCAL_SHARD_DOCS]}), path + ".tmp")
            os.replace(path + ".tmp", path)
            splits[split].append((name, 0, None))
    return splits


# ---------------------------------------------------------------------------
# Reading documents
# ---------------------------------------------------------------------------


def _read_texts(directory, file, first, stop):
    """The `text` column of one split slice, with a clear error for a damaged file."""
    import pyarrow.parquet as pq

    path = os.path.join(directory, file)
    try:
        column = pq.read_table(path, columns=["text"]).column("text")
    except Exception as e:  # ArrowInvalid, OSError, ...: all mean the same to a person
        raise DataError(f"{path} is unreadable ({type(e).__name__}); re-run "
                        f"`{_prepare_command(_label_of(directory))}` to fetch it again") from None
    return column.slice(first, None if stop is None else stop - first).to_pylist()


def _label_of(directory):
    name = os.path.basename(directory)
    if name.startswith("local-"):
        try:
            with open(os.path.join(directory, "manifest.json")) as f:
                return f"local:{json.load(f)['source']}"
        except (OSError, ValueError, KeyError):
            pass
    return name


def iter_documents(directory, slices, max_chars=None):
    for file, first, stop in slices:
        for text in _read_texts(directory, file, first, stop):
            if text:
                yield text if max_chars is None else text[:max_chars]


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


def train_tokenizer(source, directory, train_slices):
    """Train a byte-level BPE with rustbpe on the training split; save a tiktoken Encoding."""
    import rustbpe
    import tiktoken

    budget = source.tokenizer_max_chars
    bar = _progress(budget, "tokenizer", "char")

    def texts():
        seen = 0
        for text in iter_documents(directory, train_slices, max_chars=10_000):
            seen += len(text)
            bar.update(len(text))
            yield text
            if seen >= budget:
                return

    t0 = time.time()
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(texts(), source.vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    bar.close()
    ranks = {bytes(k): v for k, v in bpe.get_mergeable_ranks()}
    enc = tiktoken.Encoding(
        name=f"autoresearch-{source.name}",
        pat_str=bpe.get_pattern(),
        mergeable_ranks=ranks,
        special_tokens={tok: len(ranks) + i for i, tok in enumerate(SPECIAL_TOKENS)},
    )
    sample = "Hello world! 123 \u00e9t\u00e9 \u4f60\u597d"
    assert enc.decode(enc.encode_ordinary(sample)) == sample, "tokenizer round trip failed"
    # Bytes per token for bits-per-byte; special tokens have 0 bytes and are excluded from the metric.
    token_bytes = np.array([len(enc.decode_single_token_bytes(i)) for i in range(len(ranks))]
                           + [0] * len(SPECIAL_TOKENS), dtype=np.int32)
    _atomic_write(os.path.join(directory, "tokenizer.pkl"), pickle.dumps(enc))
    buf = _npy_bytes(token_bytes)
    _atomic_write(os.path.join(directory, "token_bytes.npy"), buf)
    print(f"Tokenizer: vocab {enc.n_vocab} trained in {time.time() - t0:.1f}s")
    if enc.n_vocab < source.vocab_size:  # too little distinct text for all the merges asked for
        print(f"Tokenizer: note: the text supports only {enc.n_vocab} of {source.vocab_size} tokens; "
              f"the model keeps VOCAB_SIZE rows, the extra ones are never used")


def _npy_bytes(array):
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


class Tokenizer:
    """The dataset's tiktoken encoding with its BOS token."""

    def __init__(self, enc, manifest, source=None):
        self.enc = enc
        self.manifest = manifest  # verified by load(); the dataloader reads its splits
        self.source = source or SOURCE
        self.name = self.source.name
        self.bos_token_id = enc.encode_single_token(BOS_TOKEN)
        self.vocab_size = enc.n_vocab

    @classmethod
    def load(cls, dataset=None):
        """The verified tokenizer of `dataset` (default: the active one)."""
        source = data_sources.get_source(dataset) if dataset else SOURCE
        manifest = load_manifest(source)
        with open(os.path.join(manifest["_dir"], "tokenizer.pkl"), "rb") as f:
            return cls(pickle.load(f), manifest, source)

    def get_vocab_size(self):
        return self.vocab_size

    def get_bos_token_id(self):
        return self.bos_token_id

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
    return np.load(os.path.join(load_manifest(source)["_dir"], "token_bytes.npy"))


# ---------------------------------------------------------------------------
# Manifest: what a complete cache holds, checked by every load
# ---------------------------------------------------------------------------


def _settings_of(source):
    return {"vocab_size": source.vocab_size, "max_seq_len": source.max_seq_len,
            "split_pattern": SPLIT_PATTERN, "special_tokens": SPECIAL_TOKENS}


def load_manifest(source=None, full=False):
    """The cache's manifest after checking it matches the files on disk.

    A normal load checks settings, every file's size and the tokenizer's hashes:
    cheap enough for every training run. `full=True` (prepare.py --verify and
    re-runs) also hashes every data file.
    """
    source = source or SOURCE
    directory = cache_dir(source)
    fix = f"run `{_prepare_command(source_label(source))}`"
    path = os.path.join(directory, "manifest.json")
    if not os.path.exists(path):
        raise DataError(f"dataset {source_label(source)!r} is not prepared (no {path}); {fix}")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except ValueError:
        raise DataError(f"{path} is damaged; {fix} to rebuild it") from None
    expected = _settings_of(source)
    if any(manifest.get("settings", {}).get(k) != v for k, v in expected.items()):
        raise DataError(f"the cache in {directory} was prepared with other settings; {fix}")
    for name, record in manifest["files"].items():
        file = os.path.join(directory, name)
        if not os.path.exists(file):
            raise DataError(f"{file} is missing; {fix}")
        if os.path.getsize(file) != record["size"]:
            raise DataError(f"{file} is truncated or changed (size {os.path.getsize(file)}, "
                            f"expected {record['size']}); {fix}")
        if (full or not name.endswith(".parquet")) and sha256_file(file) != record["sha256"]:
            raise DataError(f"{file} is corrupt (sha256 mismatch); {fix}")
    manifest["_dir"] = directory
    return manifest


def _write_manifest(source, splits, extra):
    directory = cache_dir(source)
    files = sorted({f for split in splits.values() for f, _, _ in split} | {"tokenizer.pkl", "token_bytes.npy"})
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": source.name,
        "source": source.local_path or source.hub_repo or "datasets/classics",
        "settings": {**_settings_of(source), **extra},
        "splits": {k: [list(s) for s in v] for k, v in splits.items()},
        "files": {f: _file_record(os.path.join(directory, f)) for f in files},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_write(os.path.join(directory, "manifest.json"), json.dumps(manifest, indent=2).encode())
    return manifest


# ---------------------------------------------------------------------------
# prepare(): the whole pipeline, safe to re-run
# ---------------------------------------------------------------------------


def _verified_or_none(source):
    try:
        return load_manifest(source, full=True)
    except DataError:
        return None


def _count_val_tokens(directory, val_slices, enc, limit):
    """Tokens the val split offers (stopping once past `limit`)."""
    count = 0
    for text in iter_documents(directory, val_slices):
        count += len(enc.encode_ordinary(text)) + 1
        if count > limit:
            break
    return count


# Packing crops documents that do not fit a row and drops their tails, so one pass
# over the val split must offer well over EVAL_TOKENS for the metric never to see
# a document twice.
VAL_SLACK = 1.5


def prepare(dataset, num_shards=None, workers=8):
    """Bring the cache of `dataset` to a complete, verified state. Returns the manifest."""
    source = data_sources.get_source(dataset)
    directory = cache_dir(source)
    os.makedirs(directory, exist_ok=True)
    t0 = time.time()
    print(f"Dataset {source_label(source)}: {source.description}\nCache: {directory}")

    existing = _verified_or_none(source)
    recorded = _recorded_manifest(source)
    fingerprint = _local_fingerprint(source) if source.is_local else None
    if source.is_local:
        if existing and existing["settings"].get("fingerprint") == fingerprint:
            print("Already prepared and verified.")
            return existing
        splits = build_local_shards(source)
    else:
        splits = source.splits(num_shards)
        if existing and existing["splits"] == {k: [list(s) for s in v] for k, v in splits.items()}:
            print("Already prepared and verified.")
            return existing
        if source.embedded_dir:
            for file, _, _ in splits["train"] + splits["val"]:
                target = os.path.join(directory, file)
                if not os.path.exists(target) or sha256_file(target) != sha256_file(os.path.join(source.embedded_dir, file)):
                    with open(os.path.join(source.embedded_dir, file), "rb") as f:
                        _atomic_write(target, f.read())
        else:
            _drop_damaged(source, recorded, num_shards)
            download_all(source, source.downloads(num_shards), workers)
            for file in source.downloads(num_shards):  # fail now, not in the middle of training
                _read_texts(directory, file, 0, 0)

    # The tokenizer is kept when it was trained for these settings and, for a local
    # corpus, on the same files (climbmix with more shards later keeps its tokenizer).
    if not (recorded and _tokenizer_intact(directory, recorded)
            and recorded.get("settings", {}).get("fingerprint") == fingerprint):
        train_tokenizer(source, directory, splits["train"])
    with open(os.path.join(directory, "tokenizer.pkl"), "rb") as f:
        enc = pickle.load(f)

    extra = {}
    eval_tokens = source.eval_tokens
    available = _count_val_tokens(directory, splits["val"], enc, int(eval_tokens * VAL_SLACK))
    if source.is_local:
        extra["fingerprint"] = fingerprint
        # Evaluate what one pass over the val split covers, in whole rows.
        rows = int(available / VAL_SLACK) // source.max_seq_len
        if rows < 1:
            raise DataError(f"{source.local_path} has too little validation text ({available} tokens); "
                            f"add more documents")
        eval_tokens = min(eval_tokens, rows * source.max_seq_len)
    elif available < eval_tokens * VAL_SLACK:
        raise DataError(f"validation split of {source.name} has {available} tokens, fewer than "
                        f"{VAL_SLACK} x EVAL_TOKENS={eval_tokens}; the registry entry needs fixing")
    extra["eval_tokens"] = eval_tokens
    manifest = _write_manifest(source, splits, extra)
    load_manifest(source, full=True)
    print(f"Ready: {len(manifest['files'])} files verified, eval {eval_tokens:,} tokens, "
          f"in {time.time() - t0:.1f}s")
    return manifest


def _tokenizer_intact(directory, manifest):
    files = manifest.get("files", {})
    return all(name in files and os.path.exists(os.path.join(directory, name))
               and sha256_file(os.path.join(directory, name)) == files[name]["sha256"]
               for name in ("tokenizer.pkl", "token_bytes.npy"))


def _drop_damaged(source, manifest, num_shards=None):
    """Before downloading: a file that no longer matches its recorded hash (or cannot be
    read) is moved aside as <name>.bad so it is fetched again. Verified files stay."""
    import pyarrow.parquet as pq

    directory = cache_dir(source)
    recorded = manifest["files"] if manifest else {}
    for file in source.downloads(num_shards):
        path = os.path.join(directory, file)
        if not os.path.exists(path):
            continue
        if file in recorded:
            ok = os.path.getsize(path) == recorded[file]["size"] and sha256_file(path) == recorded[file]["sha256"]
        else:
            try:
                pq.ParquetFile(path)
                ok = True
            except Exception:
                ok = False
        if not ok:
            print(f"Data: {file} is damaged; fetching it again")
            os.replace(path, path + ".bad")


# ---------------------------------------------------------------------------
# Dataloader: BOS-aligned rows, best-fit packing, no padding
# ---------------------------------------------------------------------------


def _document_batches(tokenizer, slices, directory, shuffle_seed, batch_docs=256):
    """Lists of tokenized documents (each starting with BOS), forever, with None after
    each full pass. Train order is shuffled per pass; val order never changes."""
    epoch = 0
    while True:
        order = list(slices)
        if shuffle_seed is not None:
            random.Random(shuffle_seed * 1_000_003 + epoch).shuffle(order)
        for file, first, stop in order:
            texts = _read_texts(directory, file, first, stop)
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
    manifest = tokenizer.manifest
    slices = [tuple(s) for s in manifest["splits"][split]]
    batches = _document_batches(tokenizer, slices, manifest["_dir"], seed if split == "train" else None)

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
            manifest = load_manifest(source, full=True)
            print(f"ok: {source_label(source)} verified ({len(manifest['files'])} files) in {cache_dir(source)}")
            return 0
        num_shards = args.num_shards
        if num_shards == -1:
            num_shards = source.extra.get("max_shard", 0)
        prepare(args.dataset, num_shards, args.download_workers)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume; finished files are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
