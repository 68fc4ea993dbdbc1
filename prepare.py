"""
The fixed harness, as a template sees it: the active dataset's constants, the
tokenizer, the dataloader, the one metric, and the run's report (the summary
block and data/last_run.json). FIXED: experiments never edit this file, so every
val_bpb is measured, and every run reported, the same way.

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

What a template cannot change
-----------------------------
A template runs in this process, so nothing here is sealed against it; what it
does is made hard, and what it still manages is made visible outside:

- Every name of this module is fixed: `prepare.EVAL_TOKENS = 2048` or
  `prepare.evaluate_bpb = ...` raises AttributeError.
- evaluate_bpb and the report read private copies of the settings taken at
  import, so rebinding a public name behind the module's back (vars(prepare))
  changes what the template reads, not what is measured.
- The result goes to the runner on its own channel (below), not only to stdout,
  and says what was evaluated (token and byte counts, a digest of the token ids)
  and how many validation tokens the template's own loaders served. A runner
  compares those with values pinned before the session (`--eval-fingerprint`).

The result channel
------------------
A runner that wants the result it can trust sets AUTORESEARCH_RESULT_FD to the
number of a writable file descriptor it passes to the child (a pipe's write end,
or a file; subprocess's pass_fds). Where that descriptor is a socket, the runner
also serves the evaluation over it (see "The served evaluation" below): the
template never reads validation data, and the runner computes the value. At import this module takes the number, removes
the variable from the environment and makes the descriptor non-inheritable, so a
process the template starts gets neither. RunReport.finish (or fail) writes
exactly one JSON document to it, then closes it; a run that dies first writes
none, and a reader must treat "no document" as a failed run. Version 1:

    version          1
    status           "ok" (finish) or "failed" (fail: loss NaN or exploded)
    error            fail's message, else null
    val_bpb          the value evaluate_bpb itself last returned in this process;
                     null when it never ran (then nothing here was measured)
    template_val_bpb the number the template passed to finish (null on failure)
    val_bpb_source   "harness" when that number is the harness's own value,
                     "template" when it differs or evaluate_bpb never ran;
                     null on failure
    eval             null when evaluate_bpb never ran, else the last evaluation:
        tokens       target tokens fed to the model (rows x MAX_SEQ_LEN)
        bytes        UTF-8 bytes of those targets (the bpb denominator)
        rows         validation rows evaluated
        batches      batches of batch_size rows
        batch_size   the batch size the template asked for
        digest       sha256 hex of the token ids evaluated: per row, in order,
                     x's ids then y's, as little-endian int32
        calls        how many times evaluate_bpb ran (an honest run: 1)
        probe        {tokens, nats, floor}: per_token_loss on rows whose second
                     half is uniformly random tokens; any model's mean there is
                     at least floor = ln(VOCAB_SIZE) (see _probe), so less means
                     the loss was not the model's cross-entropy
    served           tokens that make_dataloader yielded to the template, per
                     split: {"train": n, "val": n}; evaluate_bpb's own reading
                     of the validation data is not counted, so an honest run
                     has val == 0
    harness          the settings this process measured with: dataset,
                     eval_tokens, max_seq_len, vocab_size, time_budget_s, seed
    template         the template's file name
    and the summary numbers (null on failure, except num_steps):
    training_seconds, total_seconds, eval_seconds, train_peak_mb,
    peak_memory_mb, mfu_percent, avg_tok_sec, total_tokens, num_steps,
    num_params, depth, dmodel_scale, final_train_loss

A run is trustworthy when status is ok, val_bpb_source is harness, served.val is
0, eval.calls is 1, eval.probe.nats is near or above its floor, harness matches
the session, and eval's tokens, bytes, rows
and digest equal `python prepare.py --dataset D --eval-fingerprint
--batch-size B` computed beforehand (see eval_fingerprint: any batch size that
divides EVAL_TOKENS // MAX_SEQ_LEN gives the same values).
"""

import argparse
import bisect
import collections
import datetime
import fcntl
import hashlib
import itertools
import json
import math
import os
import pickle
import random
import sys
import tempfile
import time
import types

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
# The run's random seed. run-experiment gives each repeat of identical code a new one
# (so repeats measure the seed-to-seed spread a real change must beat); 42 otherwise.
SEED = int(os.environ.get("AUTORESEARCH_SEED") or 42)

try:
    SOURCE = data_sources.get_source(DATASET)
except ValueError as e:
    raise DataError(f"AUTORESEARCH_DATASET: {e}") from None


def _eval_tokens_of(source):
    """The validation tokens evaluate_bpb reads for `source`.

    A local corpus's eval size depends on its validation split: its manifest
    records it. AUTORESEARCH_EVAL_TOKENS lowers it (never raises it), for tests on
    a backend too slow to evaluate the full set (MLX on a CPU); such a val_bpb is
    not comparable with a full one, and the result channel says which it was.
    """
    tokens = source.eval_tokens
    if source.is_local:
        tokens = int((dataset_cache.read_manifest(source) or {}).get("settings", {}).get("eval_tokens", tokens))
    fewer = os.environ.get("AUTORESEARCH_EVAL_TOKENS")
    if fewer:
        if not fewer.isdigit() or int(fewer) < 1:
            raise DataError(f"AUTORESEARCH_EVAL_TOKENS={fewer}: give a positive number of tokens, or unset it")
        tokens = min(tokens, int(fewer))
    return tokens


MAX_SEQ_LEN = SOURCE.max_seq_len
VOCAB_SIZE = SOURCE.vocab_size
EVAL_TOKENS = _eval_tokens_of(SOURCE)

# ---------------------------------------------------------------------------
# The harness's private state: what evaluate_bpb and the report read, and what
# the result channel reports. A template reads the public names above; these
# are copies, so a public name rebound behind the module's back does not change
# what is measured.
# ---------------------------------------------------------------------------

RESULT_FD_ENV = "AUTORESEARCH_RESULT_FD"   # the result channel's file descriptor (see the docstring)
RESULT_VERSION = 1

_Settings = collections.namedtuple("_Settings", "dataset eval_tokens max_seq_len vocab_size time_budget_s seed")
_FIXED = _Settings(DATASET, EVAL_TOKENS, MAX_SEQ_LEN, VOCAB_SIZE, TIME_BUDGET, SEED)


def _claim_result_fd():
    """The result channel's descriptor, or None when the runner asked for none.

    The variable leaves the environment and the descriptor is made non-inheritable,
    so a process the template starts can neither find nor write the channel.
    """
    value = os.environ.pop(RESULT_FD_ENV, None)
    if not value:
        return None
    try:
        fd = int(value)
        writable = (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
    except (ValueError, OSError):
        writable = False
    if not writable:
        print(f"warning: {RESULT_FD_ENV}={value} is not an open, writable file descriptor: "
              "this run writes no result channel", file=sys.stderr, flush=True)
        return None
    os.set_inheritable(fd, False)
    return fd


class _Ledger:
    """What this process's harness served and measured: validation and training
    tokens yielded by make_dataloader, and evaluate_bpb's last value and trace."""

    def __init__(self, result_fd):
        self.result_fd = result_fd
        self.served = {"train": 0, "val": 0}
        self.val_bpb, self.eval, self.eval_calls = None, None, 0


# Kept across importlib.reload(prepare): a reload neither forgets what was served
# nor loses the channel (the variable that named it is gone by then).
_LEDGER = globals().get("_LEDGER") or _Ledger(_claim_result_fd())

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
    `seed`; `val` always yields the same batches in the same order, and the rows
    do not depend on B (row k is the same row whatever the batch size).

    The tokens yielded are counted per split for the result channel (`served`):
    a template that trains on `val` scores well by having seen the answers, so a
    runner refuses a run that was served any. The count is taken in the packing
    itself, whoever asks for it (this function or a private one); evaluate_bpb
    and eval_fingerprint take back exactly the validation tokens they read.
    """
    if split == "test":
        raise ValueError("the 'test' split is sealed: no run reads it; a session's end scores its "
                         "baseline and final state on it. Train on 'train'")
    yield from _packed_rows(tokenizer, B, T, split, seed, buffer_size)


def _packed_rows(tokenizer, B, T, split, seed=0, buffer_size=1000):
    """make_dataloader's batches: the packing itself, each batch counted in `served`
    as it is yielded. The held-out splits (val, test) yield fixed rows in a fixed order."""
    served = _LEDGER.served
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    if split not in tokenizer.manifest["splits"]:
        # A sandboxed run sees the training split only: the runner serves the evaluation.
        raise ValueError(f"the {split!r} split is not in this run's view of the data: "
                         "train on 'train'; the runner serves the evaluation")
    slices = [tuple(s) for s in tokenizer.manifest["splits"][split]]
    batches = _document_batches(tokenizer, slices, seed if split == "train" else None)
    held_out = split != "train"

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
                pass_over = held_out
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
        served[split] = served.get(split, 0) + B * T
        yield np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])


# ---------------------------------------------------------------------------
# The metric (DO NOT CHANGE: this is what every experiment is judged by)
# ---------------------------------------------------------------------------


class _EvalTrace:
    """What an evaluation fed the model: rows, target tokens, their bytes, batches,
    and a sha256 of the token ids. The digest runs over rows (x's ids, then y's, as
    little-endian int32), not over batches, so how the same rows are grouped into
    batches does not change it."""

    def __init__(self):
        self.sha = hashlib.sha256()
        self.rows = self.tokens = self.bytes = self.batches = 0

    def add(self, x, y, nbytes):
        self.sha.update(np.concatenate([x, y], axis=1).astype("<i4", copy=False).tobytes())
        self.rows += x.shape[0]
        self.tokens += y.size
        self.bytes += int(nbytes.sum())
        self.batches += 1

    def summary(self, batch_size):
        return dict(tokens=self.tokens, bytes=self.bytes, rows=self.rows, batches=self.batches,
                    batch_size=batch_size, digest=self.sha.hexdigest())


def _eval_batches(dataset, batch_size, eval_tokens, seq_len, split="val"):
    """The fixed validation batches evaluate_bpb reads: (x, y, byte length of each
    target), eval_tokens // (batch_size * seq_len) of them, always the same. The
    runner's end-of-session scoring reads the test split the same way."""
    tokenizer = Tokenizer.load(dataset)
    token_bytes = get_token_bytes(dataset)
    steps = eval_tokens // (batch_size * seq_len)
    if steps < 1:
        raise ValueError(f"batch_size {batch_size} x MAX_SEQ_LEN {seq_len} exceeds EVAL_TOKENS {eval_tokens}")
    loader = _packed_rows(tokenizer, batch_size, seq_len, split)
    for _ in range(steps):
        x, y = next(loader)
        yield x, y, token_bytes[y]


def _bits_per_byte(batches, per_token_loss, trace):
    """The arithmetic of the metric, on (x, y, target bytes) batches; `trace` records them."""
    total_nats = 0.0
    for x, y, nbytes in batches:
        nats = np.asarray(per_token_loss(x, y), dtype=np.float64).reshape(y.shape)
        total_nats += float(nats[nbytes > 0].sum())
        trace.add(x, y, nbytes)
    return total_nats / (math.log(2) * trace.bytes)


def evaluate_bpb(per_token_loss, batch_size):
    """Bits per byte on EVAL_TOKENS validation tokens.

    per_token_loss(x, y) gets int32 arrays (batch_size, MAX_SEQ_LEN) and returns
    the cross-entropy of each target in nats, shape (batch_size, MAX_SEQ_LEN),
    as anything np.asarray accepts. bpb = sum of nats over targets that are
    real text (byte length > 0) / (ln 2 * sum of their byte lengths): special
    tokens count in neither sum, and the vocabulary size does not matter.

    The eval size and context length are the private copies taken at import.
    The value and what was evaluated (the trace) are kept for the run's report.

    Under a runner (a result channel is open) the validation rows are not read
    here at all: the runner serves them, mixed with probe rows, scores the losses
    this process returns and sends back the value (see _served_bpb).
    """
    if _LEDGER.result_fd is not None and _is_socket(_LEDGER.result_fd):
        return _served_bpb(per_token_loss, batch_size)
    trace = _EvalTrace()
    first = []   # the first batch's inputs, for the probe

    def batches():
        for x, y, nbytes in _eval_batches(_FIXED.dataset, batch_size, _FIXED.eval_tokens, _FIXED.max_seq_len):
            first[:] = first or [x]
            yield x, y, nbytes

    bpb = _bits_per_byte(batches(), per_token_loss, trace)
    _LEDGER.served["val"] -= trace.tokens           # the evaluation's own reading
    _LEDGER.val_bpb, _LEDGER.eval = bpb, dict(trace.summary(batch_size), probe=_probe(per_token_loss, first[0]))
    _LEDGER.eval_calls += 1
    return bpb


def _probe(per_token_loss, x):
    """A check that per_token_loss is a model's cross-entropy, not a number made up
    from the targets it is handed.

    The rows of one validation batch, with their second half replaced by uniformly
    random tokens (the targets shifted along, as in every row). From there on the
    next token is uniform and independent of everything before it, so for ANY
    model the expected loss is at least ln(VOCAB_SIZE): for a distribution p over
    the vocabulary, the mean of -log p(u) over all u is at least ln V (Jensen), and
    equal only when p is uniform. A loss that looks at its targets (returns 0, or
    puts the mass on y), or scales the loss down, gives much less. The runner
    compares `nats` with `floor`; the value is never part of val_bpb.
    """
    rng = np.random.default_rng(0)
    rows, width = x.shape
    half = width // 2
    seq = np.concatenate([x, x[:, -1:]], axis=1)
    seq[:, half:] = rng.integers(0, _FIXED.vocab_size, size=(rows, width + 1 - half))
    px, py = np.ascontiguousarray(seq[:, :-1], dtype=np.int32), np.ascontiguousarray(seq[:, 1:], dtype=np.int32)
    nats = np.asarray(per_token_loss(px, py), dtype=np.float64).reshape(py.shape)[:, half - 1:]
    return dict(tokens=int(nats.size), nats=round(float(nats.mean()), 4), floor=round(math.log(_FIXED.vocab_size), 4))


# ---------------------------------------------------------------------------
# The served evaluation: the metric computed outside the template's process
#
# A runner that measures a run opens a socket to it (the result channel). When the
# template calls evaluate_bpb, this process asks the runner for the evaluation; the
# runner's clock stops the training there. A fresh process of the runner's, which
# loads this file from verified bytes and never runs template code (serve_evaluation
# below), then sends batches of rows and receives per-token losses; it does the
# arithmetic with its own byte counts. Among the validation rows it mixes probe rows
# at positions it draws for each run, in the same shapes:
#
# - random rows: a real row whose tail, from a random cut, is uniformly random
#   tokens. For ANY model p and a uniform u independent of the context,
#   E[V * p(u)] = sum_u p(u) = 1 exactly, so Z = mean(V * exp(-nats)) over those
#   targets estimates 1 for the model's true cross-entropy. Losses scaled down by s
#   give sum_u p(u)**s > 1 (and a shift by -c gives e**c): Z above 1 by more than
#   its own sampling error means the numbers are not the model's cross-entropy.
#   The mean of those nats must also be near or above ln V (Jensen), as before.
# - replays: a real row served a second time, later. A model that does not change
#   while it is evaluated gives the same losses; one that learns from the rows it
#   is shown (test-time training on validation text) gives lower ones.
# ---------------------------------------------------------------------------

PROBE_FRACTION = 0.03        # random rows, as a share of the validation rows
PROBE_MIN_ROWS = 16
REPLAY_ROWS = 2
PROBE_SIGMAS = 4.0           # Z may exceed 1 by this many of its standard errors...
PROBE_SLACK = 0.02           # ...plus this much (low-precision kernels), and no more
REPLAY_SLACK = 0.01          # nats per token a replayed row may differ by (batch-dependent kernels)
_HEADER_LIMIT = 1 << 16


def _is_socket(fd):
    """A runner that serves the evaluation opens a socket; a pipe is a result channel only."""
    import stat

    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _send_message(fd, header, payload=b""):
    data = (json.dumps(header) + "\n").encode() + payload
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd, n):
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            raise EOFError("the evaluation channel closed")
        got += k
    return buf


def _read_header(fd):
    line = bytearray()
    while not line.endswith(b"\n"):
        b = os.read(fd, 1)
        if not b:
            raise EOFError("the evaluation channel closed")
        line += b
        if len(line) > _HEADER_LIMIT:
            raise ValueError("the evaluation channel sent an oversized header")
    return json.loads(line)


def _served_bpb(per_token_loss, batch_size):
    """evaluate_bpb under a runner: ask for the evaluation, answer each batch with
    per_token_loss, and return the value the runner computed."""
    if _LEDGER.eval_calls:
        raise RuntimeError("evaluate_bpb runs once in a measured run: the runner served its evaluation already")
    _LEDGER.eval_calls += 1
    fd = _LEDGER.result_fd
    _send_message(fd, {"op": "eval", "batch_size": int(batch_size)})
    while True:
        header = _read_header(fd)
        if header.get("op") != "batch":
            break
        rows, cols = int(header["rows"]), int(header["cols"])
        data = _read_exact(fd, 2 * rows * cols * 4)
        xy = np.frombuffer(data, dtype="<i4").reshape(2, rows, cols).astype(np.int32)
        nats = np.asarray(per_token_loss(np.ascontiguousarray(xy[0]), np.ascontiguousarray(xy[1])),
                          dtype="<f8").reshape(rows, cols)
        _send_message(fd, {"op": "nats"}, nats.tobytes())
    if header.get("op") != "done":
        raise RuntimeError(f"the runner refused the evaluation: {header.get('error', header)}")
    _LEDGER.val_bpb = header.get("val_bpb")
    _LEDGER.eval = dict(served_by="runner", batch_size=int(batch_size))
    return _LEDGER.val_bpb


def _probe_rows(rng, base_rows, count, vocab_size):
    """`count` random rows: each a copy of a real row (x and y of T tokens) whose
    tail, from a cut drawn per row, is uniform random tokens. Returns (x, y, cuts):
    y[r, t] is random for every t >= cuts[r]."""
    rows, width = base_rows.shape
    picks = rng.integers(0, rows, size=count)
    seq = base_rows[picks].copy()
    cuts = rng.integers(width // 4, (3 * width) // 4, size=count)
    for r, c in enumerate(cuts):
        seq[r, c + 1:] = rng.integers(0, vocab_size, size=width - c - 1)
    return seq[:, :-1], seq[:, 1:], cuts - 0


def serve_evaluation(fd, batch_size, seed=None, test=False):
    """The runner's side of evaluate_bpb, in a process of the runner's: serve the
    validation rows and the probe rows to the template over `fd`, score what it
    returns, and return the result (val_bpb, the trace, the probe's statistics).

    The validation rows are all EVAL_TOKENS // MAX_SEQ_LEN of them, in their fixed
    order, whatever the batch size; probe rows fill the last batch. The value is
    the same arithmetic as the in-process evaluate_bpb on the same rows.

    With test=True (only at a session's end: the sealed split is scored once) as
    many test rows are dealt in among the validation rows, at drawn places and in
    the same shapes, and scored apart: the result adds test_bpb and its trace. The
    template cannot tell a test row from a validation row.
    """
    T, V = _FIXED.max_seq_len, _FIXED.vocab_size
    B = int(batch_size)
    x_val, y_val, b_val = (np.concatenate(a) for a in zip(*_eval_batches(_FIXED.dataset, 1, _FIXED.eval_tokens, T)))
    R = x_val.shape[0]
    if test:
        x_test, y_test, b_test = (np.concatenate(a) for a in zip(*_eval_batches(
            _FIXED.dataset, 1, _FIXED.eval_tokens, T, split="test")))
    if not 1 <= B <= max(R, 1):
        _send_message(fd, {"op": "error", "error": f"batch_size {B}: give 1 to {R} rows"})
        raise ValueError(f"batch_size {B} outside 1..{R}")
    rng = np.random.default_rng(seed if seed is not None else int.from_bytes(os.urandom(16), "little"))
    replays = min(REPLAY_ROWS, R // 2)
    probes = max(PROBE_MIN_ROWS, math.ceil(R * PROBE_FRACTION))
    probes += (-(R + probes + replays)) % B                       # fill the last batch
    full = np.concatenate([x_val, y_val[:, -1:]], axis=1)
    px, py, cuts = _probe_rows(rng, full, probes, V)
    # The schedule: validation rows in order, probe rows and replays at drawn places
    # (a replay after its original, which comes from the first half).
    order = [("val", i) for i in range(R)]
    if test:   # both in their own order, dealt together at drawn places
        n = R + x_test.shape[0]
        is_test = np.zeros(n, dtype=bool)
        is_test[rng.choice(n, size=x_test.shape[0], replace=False)] = True
        counts = {False: iter(range(R)), True: iter(range(x_test.shape[0]))}
        order = [("test" if t else "val", next(counts[bool(t)])) for t in is_test]
    for j in range(probes):
        order.insert(int(rng.integers(0, len(order) + 1)), ("probe", j))
    replayed = sorted(rng.choice(max(R // 2, 1), size=replays, replace=False).tolist()) if replays else []
    for i in replayed:
        at = order.index(("val", i)) + 1
        order.insert(int(rng.integers(at, len(order) + 1)), ("replay", i))
    trace, total_nats, test_trace, test_nats = _EvalTrace(), 0.0, _EvalTrace(), 0.0
    probe_nats, first_seen, replay_diffs = [], {}, []
    for k in range(0, len(order), B):
        items = order[k:k + B]
        xs = np.stack([px[i] if kind == "probe" else x_test[i] if kind == "test" else x_val[i] for kind, i in items])
        ys = np.stack([py[i] if kind == "probe" else y_test[i] if kind == "test" else y_val[i] for kind, i in items])
        _send_message(fd, {"op": "batch", "rows": len(items), "cols": T},
                      np.stack([xs, ys]).astype("<i4").tobytes())
        header = _read_header(fd)
        if header.get("op") != "nats":
            raise ValueError("the template answered a batch with something else than its losses")
        nats = np.frombuffer(_read_exact(fd, len(items) * T * 8), dtype="<f8").reshape(len(items), T)
        for r, (kind, i) in enumerate(items):
            if kind == "val":
                nbytes = b_val[i]
                total_nats += float(nats[r][nbytes > 0].sum())
                trace.add(x_val[i:i + 1], y_val[i:i + 1], nbytes)
                if i in replayed:
                    first_seen[i] = float(nats[r].mean())
            elif kind == "test":
                test_nats += float(nats[r][b_test[i] > 0].sum())
                test_trace.add(x_test[i:i + 1], y_test[i:i + 1], b_test[i])
            elif kind == "probe":
                probe_nats.append(nats[r, cuts[i]:])
            else:
                replay_diffs.append(first_seen.get(i, math.nan) - float(nats[r].mean()))
    bpb = total_nats / (math.log(2) * trace.bytes)
    _send_message(fd, {"op": "done", "val_bpb": bpb})
    n = np.concatenate(probe_nats) if probe_nats else np.zeros(0)
    w = V * np.exp(-n)
    sealed = dict(test_bpb=test_nats / (math.log(2) * test_trace.bytes),
                  test=test_trace.summary(B)) if test else {}
    return dict(version=2, val_bpb=bpb, **sealed, harness=_FIXED._asdict(),
                eval=dict(trace.summary(B), served_rows=len(order), probe=dict(
                    rows=probes, tokens=int(n.size), nats=round(float(n.mean()), 4) if n.size else None,
                    nats_se=round(float(n.std() / math.sqrt(n.size)), 4) if n.size else None,
                    floor=round(math.log(V), 4), z=round(float(w.mean()), 4) if n.size else None,
                    z_se=round(float(w.std() / math.sqrt(n.size)), 4) if n.size else None),
                    replay=dict(rows=replays, max_diff=round(max((abs(d) for d in replay_diffs), default=0.0), 5)
                                if all(d == d for d in replay_diffs) else None)))


def probe_verdict(probe, replay):
    """Why the losses of a served evaluation are not the model's cross-entropy, or
    None when the probes agree with it (the thresholds are the constants above)."""
    z, z_se, nats, nats_se, floor = (probe.get(k) for k in ("z", "z_se", "nats", "nats_se", "floor"))
    if z is None or not math.isfinite(z) or nats is None:
        return "the probe rows were not scored"
    if z > 1 + PROBE_SIGMAS * z_se + PROBE_SLACK:
        return (f"on random next tokens the losses give mean(V*exp(-nats)) = {z:.3f} +/- {z_se:.3f}, "
                "where any model's cross-entropy gives 1: the losses are lowered")
    if nats < floor - PROBE_SIGMAS * nats_se - PROBE_SLACK:
        return (f"on random next tokens the losses average {nats:.3f} nats, below ln(vocab) = {floor:.3f}, "
                "which no model can")
    diff = (replay or {}).get("max_diff")
    if diff is None or diff > REPLAY_SLACK:
        return (f"a validation row served twice got losses {diff} nats apart: the model changed while "
                "it was evaluated (it learned from validation rows)")
    return None


def eval_fingerprint(dataset=None, batch_size=1):
    """What an honest evaluate_bpb(..., batch_size) on `dataset` (default: the active
    one) evaluates, from the validation data alone (no model): a dict of dataset,
    eval_tokens, max_seq_len, vocab_size, cache_dir (the folder the data is read
    from, for a runner to watch) and the trace (tokens, bytes, rows,
    batches, batch_size, digest), as the result channel's `eval` reports it.

    How it depends on the batch size: the validation rows come in a fixed order
    whatever the batch size, and the digest runs over rows, so only the number of
    rows can differ: rows = (EVAL_TOKENS // (batch_size * MAX_SEQ_LEN)) * batch_size.
    Every batch size that divides EVAL_TOKENS // MAX_SEQ_LEN (1, the default,
    always does) evaluates all of them and gets the same tokens, bytes, rows and
    digest; only batches (= rows / batch_size) differs. A batch size that does not
    divide it evaluates fewer rows, a different fingerprint: ask for that one.
    """
    source = data_sources.get_source(dataset) if dataset else SOURCE
    name = dataset or _FIXED.dataset
    eval_tokens = _eval_tokens_of(source) if dataset else _FIXED.eval_tokens
    trace = _EvalTrace()
    for x, y, nbytes in _eval_batches(name, batch_size, eval_tokens, source.max_seq_len):
        trace.add(x, y, nbytes)
    _LEDGER.served["val"] -= trace.tokens
    digests = (dataset_cache.read_manifest(source) or {}).get("split_digests") or {}
    return dict(dataset=name, eval_tokens=eval_tokens, max_seq_len=source.max_seq_len,
                vocab_size=source.vocab_size, cache_dir=dataset_cache.cache_dir(source),
                test_split=digests.get("test"), **trace.summary(batch_size))


# ---------------------------------------------------------------------------
# The run's report: progress lines, the FAIL: line, the summary block and
# data/last_run.json. This is the contract with the plugin's parser (and with
# tools written for the original autoresearch), so it lives here, fixed, and
# every template reports through it in exactly the same format.
# ---------------------------------------------------------------------------

RECORD_DIR = "data"          # under the working directory: last_run.json and run_*.json
TIMING_SAMPLES = 100         # steps kept in the record's timing_sample
LOG_EVERY = 10.0             # seconds between progress lines (the first 3 steps always print)


def host_info():
    """The machine, for templates on a CPU or Apple chip: processor name and memory (GB)."""
    import platform
    import subprocess

    name = platform.processor() or platform.machine()
    try:
        if sys.platform == "darwin":
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or name
        else:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    return dict(device_name=name, memory_gb=mem_gb)


def peak_rss_mb():
    """The process's peak resident memory in MB: the peak memory of a CPU run."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class RunReport:
    """What a training run tells the world, in the one format the plugin reads.

        report = prepare.RunReport(__file__, framework, hardware, model, training, LOSS_LIMIT)
        report.step(step, dt, loss, counted, training_time, lrm)   # after every optimizer step
        report.finish(val_bpb, training_time, train_peak_mb, peak_mb)  # after evaluate_bpb

    step() ends the run (a `FAIL:` line, the record with status failed, exit 1)
    when the loss is NaN, infinite or above loss_limit: a diverged run cannot
    recover, so the rest of the budget would be wasted. finish() writes
    data/last_run.json (see schemas/last_run.schema.json), a copy
    data/run_YYYYMMDD_HHMMSS.json, and prints the summary block. Both write the
    result channel's one document when the runner opened one (see the module
    docstring): there val_bpb is the harness's own value, whatever was passed.
    """

    def __init__(self, template, framework, hardware, model, training, loss_limit, start_time=None):
        self.start_time = start_time or time.time()
        self.loss_limit = loss_limit
        self.steps = self.counted_steps = 0
        self.last_loss, self.last_log = None, 0.0
        self.train_start = self.train_end = None  # the training loop, as seen by step()
        self.record = dict(
            schema_version=1, template=os.path.basename(template), framework=framework,
            started_at=datetime.datetime.fromtimestamp(self.start_time).astimezone().isoformat(timespec="seconds"),
            hardware=hardware, model=model,
            data=dict(dataset=_FIXED.dataset, tokenizer=SOURCE.name, vocab_size=_FIXED.vocab_size,
                      max_seq_len=_FIXED.max_seq_len, eval_tokens=_FIXED.eval_tokens),
            training=dict(time_budget_s=_FIXED.time_budget_s, **training),
            timing_sample=[],
        )
        t = self.record["training"]
        blas = f", BLAS: {hardware['blas']}" if hardware.get("blas") else ""
        print(f"device: {hardware['device_name']} ({hardware['device_type']}{blas}) | dataset: {_FIXED.dataset} | "
              f"params: {model['num_params'] / 1e6:.2f}M | depth {model['depth']} width {model['width']} | "
              f"batch {t['tokens_per_step']:,} tokens ({t['device_batch_size']}x{_FIXED.max_seq_len}"
              f"x{t['grad_accum_steps']}) | budget {_FIXED.time_budget_s:g}s | compile {t['compiled']}", flush=True)

    def step(self, step, dt, loss, counted, training_time, lrm):
        """One optimizer step done: check the loss, keep a timing sample, print progress now and then."""
        if not math.isfinite(loss):
            self.fail(f"loss is {'NaN' if math.isnan(loss) else 'inf'} at step {step}")
        if loss > self.loss_limit:
            self.fail(f"loss exploded to {loss:.2f} at step {step} (limit {self.loss_limit:.2f})")
        now = time.time()
        self.train_start = self.train_start or now - dt
        self.steps, self.last_loss, self.train_end = step + 1, loss, now
        self.counted_steps += bool(counted)
        samples = self.record["timing_sample"]
        if len(samples) < TIMING_SAMPLES and (step < 5 or step % 25 == 0):
            samples.append(dict(step=step, ms=round(dt * 1000, 2), loss=round(loss, 4), counted=bool(counted)))
        if step < 3 or now - self.last_log >= LOG_EVERY:
            self.last_log = now
            tokens = self.record["training"]["tokens_per_step"]
            tok_s = self.counted_steps * tokens / training_time if training_time else tokens / dt
            budget = _FIXED.time_budget_s
            print(f"step {step + 1:05d} ({100 * min(training_time / budget, 1.0):.1f}%) | loss {loss:.4f} | "
                  f"lrm {lrm:.2f} | dt {dt * 1000:.0f}ms | tok/s {tok_s:,.0f} | "
                  f"remaining {max(0, budget - training_time):.0f}s", flush=True)

    def fail(self, message):
        """End the run now: a `FAIL:` line, the record with status failed, exit status 1."""
        print(f"FAIL: {message}", flush=True)
        self.record["training"]["total_steps"] = self.steps
        self.record["result"] = dict(status="failed", val_bpb=None, error=message)
        self._add_measurements(None)
        write_run_record(self.record)
        _send_result(self._result_document("failed", None, message))
        sys.exit(1)

    def finish(self, val_bpb, training_seconds, train_peak_mb, peak_memory_mb):
        """Record and print the finished run: the metric, the seconds of training that
        counted, and peak memory in MB after training and at the end (evaluation included)."""
        end, train_start, train_end = time.time(), self.train_start, self.train_end
        t, model = self.record["training"], self.record["model"]
        avg_tok_sec = self.counted_steps * t["tokens_per_step"] / training_seconds
        peak_flops = self.record["hardware"].get("peak_flops")
        flops = model.get("flops_per_token")
        mfu = 100 * flops * avg_tok_sec / peak_flops if peak_flops and flops else None
        t.update(
            training_seconds=round(training_seconds, 2), total_seconds=round(end - self.start_time, 2),
            startup_seconds=round(train_start - self.start_time, 2),
            untimed_seconds=round(train_end - train_start - training_seconds, 2),
            eval_seconds=round(end - train_end, 2), total_steps=self.steps,
            total_tokens=self.steps * t["tokens_per_step"], avg_tok_sec=round(avg_tok_sec, 1),
            training_peak_mb=round(train_peak_mb, 1), peak_memory_mb=round(peak_memory_mb, 1),
            mfu_percent=round(mfu, 2) if mfu is not None else None, final_train_loss=round(self.last_loss, 4))
        self.record["result"] = dict(status="ok", val_bpb=val_bpb)
        self._add_measurements(val_bpb)
        write_run_record(self.record)
        _send_result(self._result_document("ok", val_bpb))
        # The summary block: `key: value`, one per line, values in one column. Keys and
        # formats are fixed: parse-metrics and tools written for the original read them.
        # dmodel_scale is (WIDTH / 768) ** -0.5, the factor on the AdamW learning rates.
        print("---")
        print(f"val_bpb:          {val_bpb:.6f}")
        print(f"training_seconds: {training_seconds:.1f}")
        print(f"total_seconds:    {end - self.start_time:.1f}")
        print(f"eval_seconds:     {end - train_end:.1f}")
        print(f"train_peak_mb:    {train_peak_mb:.1f}")
        print(f"peak_memory_mb:   {peak_memory_mb:.1f}")
        print(f"mfu_percent:      {mfu:.2f}" if mfu is not None else "mfu_percent:      n/a")
        print(f"avg_tok_sec:      {avg_tok_sec:,.0f}")
        print(f"total_tokens_M:   {t['total_tokens'] / 1e6:.1f}")
        print(f"num_steps:        {self.steps}")
        print(f"num_params_M:     {model['num_params'] / 1e6:.1f}")
        print(f"depth:            {model['depth']}")
        scale = t.get("dmodel_scale")
        print(f"dmodel_scale:     {scale:.4f}" if scale is not None else "dmodel_scale:     n/a", flush=True)

    def _add_measurements(self, val_bpb):
        """The record's copy of what the harness measured: the last evaluation (with the
        harness's own value, and whether the template reported that value) and the
        tokens its loaders served."""
        if _LEDGER.eval is not None:
            self.record["eval"] = dict(_LEDGER.eval, calls=_LEDGER.eval_calls, val_bpb=_LEDGER.val_bpb,
                                       val_bpb_source=_val_bpb_source(val_bpb))
        self.record["served"] = dict(_LEDGER.served)

    def _result_document(self, status, val_bpb, error=None):
        """The result channel's document (its fields are described in the module docstring)."""
        t, model = self.record["training"], self.record["model"]
        ok = status == "ok"
        summary = dict(
            training_seconds=t.get("training_seconds"), total_seconds=t.get("total_seconds"),
            eval_seconds=t.get("eval_seconds"), train_peak_mb=t.get("training_peak_mb"),
            peak_memory_mb=t.get("peak_memory_mb"), mfu_percent=t.get("mfu_percent"),
            avg_tok_sec=t.get("avg_tok_sec"), total_tokens=t.get("total_tokens"), num_steps=self.steps,
            num_params=model.get("num_params") if ok else None, depth=model.get("depth") if ok else None,
            dmodel_scale=t.get("dmodel_scale") if ok else None, final_train_loss=t.get("final_train_loss"))
        evaluated = None if _LEDGER.eval is None else dict(_LEDGER.eval, calls=_LEDGER.eval_calls)
        return dict(op="report", version=RESULT_VERSION, status=status, error=error, val_bpb=_LEDGER.val_bpb,
                    template_val_bpb=val_bpb, val_bpb_source=_val_bpb_source(val_bpb),
                    eval=evaluated, served=dict(_LEDGER.served), harness=_FIXED._asdict(),
                    template=self.record["template"], **summary)


def _val_bpb_source(val_bpb):
    """"harness" when the number a template reported is the one evaluate_bpb last
    returned here, "template" when it is not (or evaluate_bpb never ran), None
    when it reported none (a failed run)."""
    if val_bpb is None:
        return None
    return "harness" if _LEDGER.val_bpb is not None and val_bpb == _LEDGER.val_bpb else "template"


def _send_result(document):
    """Write the result channel's one document and close the channel; later calls,
    and runs whose runner opened no channel, write nothing. A channel that cannot
    be written costs a warning, not the run: the runner sees no document."""
    fd, _LEDGER.result_fd = _LEDGER.result_fd, None
    if fd is None:
        return
    data = (json.dumps(document) + "\n").encode()
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError as e:
        print(f"warning: the result channel ({RESULT_FD_ENV}) could not be written: {e}", file=sys.stderr, flush=True)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def write_run_record(record):
    """data/last_run.json, and the same record as data/run_YYYYMMDD_HHMMSS.json.

    Both appear whole (temporary file, then link or rename). The archive name is
    claimed with a hard link, which fails rather than overwrite: two runs that end
    in the same second get run_..._2.json, run_..._3.json, and none is lost.
    """
    os.makedirs(RECORD_DIR, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=RECORD_DIR, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
        os.chmod(tmp, 0o644)
        stamp = time.strftime("%Y%m%d_%H%M%S")
        for n in itertools.count(1):
            try:
                os.link(tmp, os.path.join(RECORD_DIR, f"run_{stamp}.json" if n == 1 else f"run_{stamp}_{n}.json"))
                break
            except FileExistsError:
                continue
        os.replace(tmp, os.path.join(RECORD_DIR, "last_run.json"))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------
# Fixed names. A template that sets a harness name (to evaluate fewer tokens, to
# swap the metric, to move the budget) gets an error that says so at once, instead
# of a result that looks real. The check is on the module object: the module's own
# code, and importlib.reload, write its namespace directly and are not affected.
# ---------------------------------------------------------------------------

# The attributes the import system sets on a module (importlib.reload sets them again).
_IMPORT_ATTRIBUTES = frozenset({"__name__", "__loader__", "__package__", "__spec__", "__path__", "__file__",
                                "__cached__", "__doc__"})


class _FixedModule(types.ModuleType):
    """This module's type: its names can be read, never set or deleted from outside."""

    def __setattr__(self, name, value):
        if name not in _IMPORT_ATTRIBUTES:
            raise AttributeError(_fixed_message(name))
        super().__setattr__(name, value)

    def __delattr__(self, name):
        raise AttributeError(_fixed_message(name))


def _fixed_message(name):
    return (f"prepare.{name} is fixed by the harness; a template reads it and never sets it "
            "(the dataset, budget and seed come from AUTORESEARCH_* variables set by whoever starts the run)")


types.ModuleType.__setattr__(sys.modules[__name__], "__class__", _FixedModule)  # past our own __setattr__

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
    parser.add_argument("--eval-fingerprint", action="store_true",
                        help="print, as one JSON line, what an honest evaluate_bpb evaluates on this dataset "
                             "(tokens, bytes, rows, batches, digest): the values a run's result must match")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="with --eval-fingerprint: the template's evaluation batch size (default 1: the same "
                             "fingerprint as every batch size that divides EVAL_TOKENS // MAX_SEQ_LEN)")
    args = parser.parse_args(argv)
    try:
        source = data_sources.get_source(args.dataset)
        if args.eval_fingerprint:
            if args.batch_size < 1:
                raise ValueError(f"--batch-size {args.batch_size}: give a positive number of rows")
            print(json.dumps(eval_fingerprint(args.dataset, args.batch_size)))
            return 0
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
