"""
A dataset's cache on disk: building it, and checking it. FIXED: experiments never
edit this file.

prepare.py is what a template sees (constants, tokenizer, dataloader, metric);
this module is the pipeline behind `python prepare.py --dataset NAME`:

  1. bring the text into the cache: download it (resumable, retried, verified),
     copy the embedded shards, or split a person's own corpus into parquet shards;
  2. train the BPE tokenizer on the training split (rustbpe -> tiktoken);
  3. write manifest.json: settings, splits, every file's size and sha256.

Every load goes through load_manifest(), which checks the files against the
manifest, so a damaged cache is found before training starts, with one line
that says how to repair it (re-running the same command fetches only what is
missing or damaged).
"""

import hashlib
import io
import json
import os
import pickle
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import data_sources

CACHE_BASE = os.path.expanduser(os.environ.get("AUTORESEARCH_CACHE") or "~/.cache/autoresearch")

# BPE split pattern (GPT-4 style, numbers in groups of at most two digits).
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = [f"<|reserved_{i}|>" for i in range(4)]
BOS_TOKEN = SPECIAL_TOKENS[0]
MANIFEST_FORMAT = 1


class DataError(RuntimeError):
    """A problem with the data, phrased as one line that says how to fix it."""


def cache_dir(source):
    return os.path.join(CACHE_BASE, source.name)


def source_label(source):
    """The name a person types for this dataset (local corpora by their path)."""
    return f"local:{source.local_path}" if source.is_local else source.name


def prepare_command(source):
    return f"python prepare.py --dataset {source_label(source)}"


# ---------------------------------------------------------------------------
# Small file utilities
# ---------------------------------------------------------------------------


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path, data):
    """Write bytes to path via a temporary file and rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
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


def _progress(total, desc, unit):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
                disable=os.environ.get("AUTORESEARCH_QUIET") == "1", leave=False)


# ---------------------------------------------------------------------------
# The manifest: what a complete cache holds, checked by every load
# ---------------------------------------------------------------------------


def settings_of(source):
    """What the tokenizer and the metric depend on: a cache made with others is rebuilt."""
    return {"vocab_size": source.vocab_size, "max_seq_len": source.max_seq_len,
            "split_pattern": SPLIT_PATTERN, "special_tokens": SPECIAL_TOKENS}


def read_manifest(source):
    """manifest.json as recorded, whether or not the files still match it; None when
    it is missing or unreadable. The one place that reads the file."""
    try:
        with open(os.path.join(cache_dir(source), "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def load_manifest(source, full=False):
    """The cache's manifest after checking it matches the files on disk.

    A normal load checks settings, every file's size and the tokenizer's hashes:
    cheap enough for every training run. `full=True` (prepare.py --verify and
    re-runs) also hashes every data file.
    """
    directory = cache_dir(source)
    fix = f"run `{prepare_command(source)}`"
    path = os.path.join(directory, "manifest.json")
    manifest = read_manifest(source)
    if manifest is None:
        if os.path.exists(path):
            raise DataError(f"{path} is damaged; {fix} to rebuild it")
        raise DataError(f"dataset {source_label(source)!r} is not prepared (no {path}); {fix}")
    if any(manifest.get("settings", {}).get(k) != v for k, v in settings_of(source).items()):
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
    return manifest


def split_digest(slices, files):
    """A split's own digest: its slices and the sha256 of every file they read, so a
    split that reads other text (or a file changed under it) has another digest."""
    h = hashlib.sha256()
    for file, first, stop in slices:
        h.update(f"{file}\0{first}\0{stop}\0{files[file]['sha256']}\n".encode())
    return h.hexdigest()


def _write_manifest(source, splits, settings):
    directory = cache_dir(source)
    files = sorted({f for split in splits.values() for f, _, _ in split} | {"tokenizer.pkl", "token_bytes.npy"})
    records = {f: {"size": os.path.getsize(os.path.join(directory, f)),
                   "sha256": sha256_file(os.path.join(directory, f))} for f in files}
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": source.name,
        "source": source.local_path or source.hub_repo or "datasets/classics",
        "settings": {**settings_of(source), **settings},
        "splits": {k: [list(s) for s in v] for k, v in splits.items()},
        "split_digests": {k: split_digest(v, records) for k, v in splits.items()},
        "files": records,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write(os.path.join(directory, "manifest.json"), json.dumps(manifest, indent=2).encode())
    return manifest


# ---------------------------------------------------------------------------
# Reading documents: every split is (file, first_row, stop_row) slices of parquet
# ---------------------------------------------------------------------------


def read_texts(source, file, first, stop):
    """The `text` column of one split slice, with a clear error for a damaged file."""
    import pyarrow.parquet as pq

    path = os.path.join(cache_dir(source), file)
    try:
        column = pq.read_table(path, columns=["text"]).column("text")
    except Exception as e:  # ArrowInvalid, OSError, ...: all mean the same to a person
        raise DataError(f"{path} is unreadable ({type(e).__name__}); re-run "
                        f"`{prepare_command(source)}` to fetch it again") from None
    return column.slice(first, None if stop is None else stop - first).to_pylist()


def train_view(source, dest, link=True):
    """Write into `dest` a cache of `source` that holds only its training split, and
    return its manifest.

    A sandboxed run sees this folder in place of the cache while it trains, so the
    validation (and any test) text is not there to read, whatever the run does: the
    manifest's splits hold only `train`, and only the files train reads are present.
    A file that only train reads is hard-linked (copied across file systems), or with
    link=False left as an empty file of its name, for whoever shows the view to bind
    the cache's own file over (a hard link changes the cache file's ctime, which a
    runner watching the cache takes for a change); a file that mixes splits
    (tinystories: one file, val its first rows) is written again with only its train
    rows, under the same name, each slice moved to its new rows.
    Training reads exactly the same texts in the same order as from the full cache:
    the dataloader's shuffle is seeded by the file name and the slice list, and both
    are kept. The manifest records the view's own sizes and sha256, so load_manifest
    verifies the view as it verifies a cache. `dest` is written whole or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shutil

    directory = cache_dir(source)
    manifest = load_manifest(source)
    train = [list(s) for s in manifest["splits"]["train"]]
    others = {f for name, split in manifest["splits"].items() if name != "train" for f, _, _ in split}
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(dest)), prefix=".view-")
    try:
        files, slices, rewritten = {}, [], {}
        for file, first, stop in train:
            if file not in others:
                slices.append([file, first, stop])
                continue
            rows = rewritten.setdefault(file, [])
            start = sum(len(r) for r in rows)
            texts = read_texts(source, file, first, stop)
            rows.append(texts)
            slices.append([file, start, start + len(texts)])
        for file in sorted({f for f, _, _ in slices} | {"tokenizer.pkl", "token_bytes.npy"}):
            path = os.path.join(tmp, file)
            if file in rewritten:
                pq.write_table(pa.table({"text": [t for rows in rewritten[file] for t in rows]}), path)
                files[file] = {"size": os.path.getsize(path), "sha256": sha256_file(path)}
                continue
            files[file] = dict(manifest["files"][file])
            if not link:
                open(path, "wb").close()
                continue
            try:
                os.link(os.path.join(directory, file), path)
            except OSError:
                shutil.copyfile(os.path.join(directory, file), path)
            if os.path.getsize(path) != files[file]["size"]:
                raise DataError(f"{os.path.join(directory, file)} changed while its view was made; "
                                f"run `{prepare_command(source)}`")
        view = {**manifest, "splits": {"train": slices}, "files": files,
                "split_digests": {"train": split_digest(slices, files)},
                "view_of": {"cache": directory, "bind": [] if link else sorted(set(files) - set(rewritten)),
                            "manifest_sha256": hashlib.sha256(
                    json.dumps(manifest, sort_keys=True).encode()).hexdigest()}}
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(view, f, indent=2)
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return view


def iter_documents(source, slices, max_chars=None):
    for file, first, stop in slices:
        for text in read_texts(source, file, first, stop):
            if text:
                yield text if max_chars is None else text[:max_chars]


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
                        f"HF_ENDPOINT); finished files are kept: re-run `{prepare_command(source)}` to resume")


def _drop_damaged(source, manifest, files):
    """Before downloading: a file that no longer matches its recorded hash (or cannot be
    read) is moved aside as <name>.bad so it is fetched again. Verified files stay."""
    import pyarrow.parquet as pq

    directory = cache_dir(source)
    recorded = manifest["files"] if manifest else {}
    for file in files:
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
# Local corpora: .txt / .jsonl / .parquet -> parquet shards in the cache
# ---------------------------------------------------------------------------

LOCAL_SHARD_DOCS = 50_000
LOCAL_VAL_PERCENT = 10           # documents whose hash falls below this go to validation,
LOCAL_TEST_PERCENT = 10          # the next ones to test


def chunk_paragraphs(text, max_chars):
    """Split text into documents of whole paragraphs, each at most ~max_chars.

    The dataloader crops a document that does not fit the rest of a row and
    drops its tail, so documents much longer than a row waste data. Runs of
    paragraphs sized near one row keep almost every token in play. A single
    paragraph longer than max_chars stays whole (the loader crops it).
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    docs, current, size = [], [], 0
    for p in paragraphs:
        if current and size + len(p) + 2 > max_chars:
            docs.append("\n\n".join(current))
            current, size = [], 0
        current.append(p)
        size += len(p) + 2
    if current:
        docs.append("\n\n".join(current))
    return docs


def local_split(text):
    """Deterministic train/val/test assignment of a local document, by a hash of its text.

    Independent of file order and of what else is in the corpus, so adding
    files never moves an existing document from one split to another.
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    bucket = int.from_bytes(digest, "little") % 100
    if bucket < LOCAL_VAL_PERCENT:
        return "val"
    return "test" if bucket < LOCAL_VAL_PERCENT + LOCAL_TEST_PERCENT else "train"


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
                yield from chunk_paragraphs(text, max_chars)


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

    parts = {"train": [], "val": [], "test": []}
    for doc in _local_documents(source):
        parts[local_split(doc)].append(doc)
    docs = parts["train"] + parts["val"] + parts["test"]
    if not docs:
        raise DataError(f"no text found in {source.local_path} (looked for .txt, .jsonl with a "
                        f"\"text\" field, .parquet with a 'text' column)")
    if not all(parts.values()):  # a tiny corpus: still hold something out for val and test
        if len(docs) < 3:
            raise DataError(f"{source.local_path} holds {len(docs)} short document(s); add more text "
                            f"(validation and test need documents of their own)")
        cut = max(1, len(docs) // 10)
        parts = {"val": docs[:cut], "test": docs[cut:2 * cut], "train": docs[2 * cut:]}
    directory = cache_dir(source)
    splits = {"train": [], "val": [], "test": []}
    for split, docs in parts.items():
        for k in range(0, len(docs), LOCAL_SHARD_DOCS):
            name = f"{split}_{k // LOCAL_SHARD_DOCS:05d}.parquet"
            path = os.path.join(directory, name)
            pq.write_table(pa.table({"text": docs[k:k + LOCAL_SHARD_DOCS]}), path + ".tmp")
            os.replace(path + ".tmp", path)
            splits[split].append((name, 0, None))
    return splits


# ---------------------------------------------------------------------------
# Tokenizer training
# ---------------------------------------------------------------------------


def train_tokenizer(source, train_slices):
    """Train a byte-level BPE with rustbpe on the training split; save a tiktoken Encoding."""
    import rustbpe
    import tiktoken

    directory = cache_dir(source)
    budget = source.tokenizer_max_chars
    bar = _progress(budget, "tokenizer", "char")

    def texts():
        seen = 0
        for text in iter_documents(source, train_slices, max_chars=10_000):
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
    atomic_write(os.path.join(directory, "tokenizer.pkl"), pickle.dumps(enc))
    buf = io.BytesIO()
    np.save(buf, token_bytes)
    atomic_write(os.path.join(directory, "token_bytes.npy"), buf.getvalue())
    print(f"Tokenizer: vocab {enc.n_vocab} trained in {time.time() - t0:.1f}s")
    if enc.n_vocab < source.vocab_size:  # too little distinct text for all the merges asked for
        print(f"Tokenizer: note: the text supports only {enc.n_vocab} of {source.vocab_size} tokens; "
              f"the model keeps VOCAB_SIZE rows, the extra ones are never used")


def _tokenizer_intact(directory, manifest):
    files = manifest.get("files", {})
    return all(name in files and os.path.exists(os.path.join(directory, name))
               and sha256_file(os.path.join(directory, name)) == files[name]["sha256"]
               for name in ("tokenizer.pkl", "token_bytes.npy"))


# ---------------------------------------------------------------------------
# build(): the whole pipeline, safe to re-run
# ---------------------------------------------------------------------------

# Packing crops documents that do not fit a row and drops their tails, so one pass
# over the val split must offer well over EVAL_TOKENS for the metric never to see
# a document twice.
VAL_SLACK = 1.5


def _verified_or_none(source):
    try:
        return load_manifest(source, full=True)
    except DataError:
        return None


def _count_val_tokens(source, slices, enc, limit):
    """Tokens a held-out split (val or test) offers (stopping once past `limit`)."""
    count = 0
    for text in iter_documents(source, slices):
        count += len(enc.encode_ordinary(text)) + 1
        if count > limit:
            break
    return count


def build(dataset, num_shards=None, workers=8):
    """Bring the cache of `dataset` to a complete, verified state. Returns the manifest."""
    source = data_sources.get_source(dataset)
    directory = cache_dir(source)
    os.makedirs(directory, exist_ok=True)
    t0 = time.time()
    print(f"Dataset {source_label(source)}: {source.description}\nCache: {directory}")

    existing = _verified_or_none(source)
    recorded = read_manifest(source)
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
            for file in sorted({f for split in splits.values() for f, _, _ in split}):
                target = os.path.join(directory, file)
                if not os.path.exists(target) or sha256_file(target) != sha256_file(os.path.join(source.embedded_dir, file)):
                    with open(os.path.join(source.embedded_dir, file), "rb") as f:
                        atomic_write(target, f.read())
        else:
            files = source.downloads(num_shards)
            _drop_damaged(source, recorded, files)
            download_all(source, files, workers)
            for file in files:  # fail now, not in the middle of training
                read_texts(source, file, 0, 0)

    # The tokenizer is kept when it was trained for these settings and, for a local
    # corpus, on the same files (climbmix with more shards later keeps its tokenizer).
    if not (recorded and _tokenizer_intact(directory, recorded)
            and recorded.get("settings", {}).get("fingerprint") == fingerprint):
        train_tokenizer(source, splits["train"])
    with open(os.path.join(directory, "tokenizer.pkl"), "rb") as f:
        enc = pickle.load(f)

    settings = {}
    eval_tokens = source.eval_tokens
    # The test split is scored like validation, on as many tokens: both must offer them.
    offered = {split: _count_val_tokens(source, splits[split], enc, int(eval_tokens * VAL_SLACK))
               for split in ("val", "test")}
    split, available = min(offered.items(), key=lambda kv: kv[1])
    if source.is_local:
        settings["fingerprint"] = fingerprint
        # Evaluate what one pass over the smaller held-out split covers, in whole rows.
        rows = int(available / VAL_SLACK) // source.max_seq_len
        if rows < 1:
            raise DataError(f"{source.local_path} has too little {split} text ({available} tokens); "
                            f"add more documents")
        eval_tokens = min(eval_tokens, rows * source.max_seq_len)
    elif available < eval_tokens * VAL_SLACK:
        raise DataError(f"{split} split of {source.name} has {available} tokens, fewer than "
                        f"{VAL_SLACK} x EVAL_TOKENS={eval_tokens}; the registry entry needs fixing")
    settings["eval_tokens"] = eval_tokens
    manifest = _write_manifest(source, splits, settings)
    load_manifest(source, full=True)
    print(f"Ready: {len(manifest['files'])} files verified, eval {eval_tokens:,} tokens, "
          f"in {time.time() - t0:.1f}s")
    return manifest
