"""The fixed harness: the metric, the packing dataloader, datasets, downloads, bad input."""

import dataclasses
import hashlib
import http.server
import importlib
import io
import json
import math
import os
import shutil
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, run_prepare

# ---------------------------------------------------------------------------
# The metric


def test_bpb_exact_on_a_hand_built_toy(harness):
    """Two batches of 1 x 4 targets; special tokens (0 bytes) are in neither sum."""
    BOS = 3
    token_bytes = np.array([1, 2, 3, 0, 9, 4], dtype=np.int32)  # id 3 is the special BOS
    batches = [
        (np.array([[3, 5, 1, 3]], dtype=np.int32), np.array([[5, 1, 3, 2]], dtype=np.int32)),
        (np.array([[2, 1, 1, 2]], dtype=np.int32), np.array([[1, 1, 2, 3]], dtype=np.int32)),
    ]
    # Loss 1 nat per target, except 100 nats on every BOS target: those must not count.
    losses = {5: 1.0, 1: 2.0, 2: 0.5, BOS: 100.0}

    def per_token_loss(x, y):
        assert x.shape == y.shape == (1, 4)
        return [[losses[int(t)] for t in row] for row in y]  # a plain list: np.asarray accepts it

    # The metric's arithmetic, on these batches (evaluate_bpb feeds it the fixed val batches).
    trace = harness._EvalTrace()
    bpb = harness._bits_per_byte(((x, y, token_bytes[y]) for x, y in batches), per_token_loss, trace)
    # Targets with bytes > 0: 5,1,2 | 1,1,2 -> nats 1+2+0.5 + 2+2+0.5 = 8.0; bytes 4+2+3 + 2+2+3 = 16
    assert bpb == pytest.approx(8.0 / (math.log(2) * 16), rel=1e-12)
    rows = b"".join(np.concatenate([x, y], axis=1).astype("<i4").tobytes() for x, y in batches)
    assert trace.summary(1) == dict(tokens=8, bytes=16, rows=2, batches=2, batch_size=1,
                                    digest=hashlib.sha256(rows).hexdigest())


def test_bpb_of_a_uniform_model_is_log2_vocab_over_bytes_per_token(harness):
    tok = harness.Tokenizer.load()
    token_bytes = harness.get_token_bytes()
    uniform = lambda x, y: np.full(y.shape, math.log(tok.vocab_size))  # noqa: E731
    bpb = harness.evaluate_bpb(uniform, batch_size=16)
    # Recompute from the same val batches: log2(V) per counted token / bytes.
    loader = harness.make_dataloader(tok, 16, harness.MAX_SEQ_LEN, "val")
    counted = total_bytes = 0
    for _ in range(harness.EVAL_TOKENS // (16 * harness.MAX_SEQ_LEN)):
        _, y = next(loader)
        counted += int((token_bytes[y] > 0).sum())
        total_bytes += int(token_bytes[y].sum())
    assert bpb == pytest.approx(counted * math.log2(tok.vocab_size) / total_bytes, rel=1e-9)
    assert 2.0 < bpb < 4.5  # ~12 bits per token over ~4 bytes per token


def test_eval_fingerprint_is_what_evaluate_bpb_evaluates_however_rows_are_batched(harness):
    """The fingerprint a plugin pins, from the data alone, equals an evaluation's trace;
    batch sizes that divide the eval rows (256 here) share it, one that does not
    evaluates fewer rows and gets its own."""
    prints = {B: harness.eval_fingerprint(batch_size=B) for B in (1, 8, 16, 3)}
    same = ("tokens", "bytes", "rows", "digest")
    for B in (8, 16):
        assert {k: prints[B][k] for k in same} == {k: prints[1][k] for k in same}
        assert prints[B]["batches"] * B == prints[1]["rows"] == harness.EVAL_TOKENS // harness.MAX_SEQ_LEN
    assert prints[3]["rows"] == 255 and prints[3]["digest"] != prints[1]["digest"]
    harness.evaluate_bpb(lambda x, y: np.zeros(y.shape), batch_size=16)
    trace = {k: v for k, v in prints[16].items()
             if k not in ("dataset", "eval_tokens", "max_seq_len", "vocab_size", "cache_dir", "test_split")}
    assert {k: v for k, v in harness._LEDGER.eval.items() if k != "probe"} == trace


def test_eval_tokens_can_be_lowered_for_tests_but_never_raised(harness, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_EVAL_TOKENS", "4096")
    assert importlib.reload(harness).EVAL_TOKENS == 4096
    monkeypatch.setenv("AUTORESEARCH_EVAL_TOKENS", str(10**9))
    assert importlib.reload(harness).EVAL_TOKENS == 2**16   # the dataset's own size


# ---------------------------------------------------------------------------
# The packing dataloader


@pytest.fixture(scope="module")
def numbered_corpus(tmp_path_factory):
    """A local corpus of 400 distinct documents of very different lengths, prepared."""
    root = tmp_path_factory.mktemp("numbered")
    corpus = root / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    docs = [f"Document {i}: " + " ".join(rng.choice(words, size=int(rng.integers(3, 300))))
            for i in range(400)]
    with open(corpus / "docs.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    cache = root / "cache"
    env = {"AUTORESEARCH_CACHE": str(cache)}
    result = run_prepare(["--dataset", f"local:{corpus}"], env)
    assert result.returncode == 0, result.stderr
    return {"docs": docs, "dataset": f"local:{corpus}", "env": env}


@pytest.fixture
def numbered(numbered_corpus, harness, monkeypatch):
    monkeypatch.setattr(harness.dataset_cache, "CACHE_BASE", numbered_corpus["env"]["AUTORESEARCH_CACHE"])
    tok = harness.Tokenizer.load(numbered_corpus["dataset"])
    return harness, tok, [[tok.bos_token_id] + tok.encode(d) for d in numbered_corpus["docs"]]


def _segments(row, bos):
    starts = [i for i, t in enumerate(row) if t == bos]
    return [row[a:b] for a, b in zip(starts, starts[1:] + [len(row)])]


def test_packing_rows_are_whole_documents_from_bos_with_no_padding(numbered):
    harness, tok, docs = numbered
    prefixes = {tuple(d[:k]) for d in docs for k in range(1, len(d) + 1)}
    whole = {tuple(d) for d in docs}
    B, T = 8, 64
    loader = harness.make_dataloader(tok, B, T, "train", seed=1)
    n_whole = n_cropped = 0
    for _ in range(20):
        x, y = next(loader)
        assert x.dtype == y.dtype == np.int32 and x.shape == y.shape == (B, T)
        assert (x[:, 1:] == y[:, :-1]).all()  # y is x shifted by one
        for r in range(B):
            row = list(x[r]) + [int(y[r, -1])]  # the T+1 tokens of the row
            assert row[0] == tok.bos_token_id, "every row starts with a document's BOS"
            segments = _segments(row, tok.bos_token_id)
            assert sum(map(len, segments)) == T + 1, "every token of the row belongs to a document"
            for k, seg in enumerate(segments):
                assert tuple(seg) in prefixes, "a row holds documents (or a cropped document's start)"
                if tuple(seg) in whole:
                    n_whole += 1
                else:
                    assert k == len(segments) - 1, "only the last document of a row may be cropped"
                    n_cropped += 1
    assert n_whole > n_cropped > 0


def test_packing_is_deterministic_per_seed_and_val_is_fixed(numbered):
    harness, tok, _ = numbered

    def first(split, seed, n=6):
        loader = harness.make_dataloader(tok, 4, 32, split, seed=seed)
        return np.stack([np.concatenate(next(loader)) for _ in range(n)])

    assert (first("train", 7) == first("train", 7)).all()
    assert not (first("train", 7) == first("train", 8)).all()
    assert (first("val", 0) == first("val", 0)).all()
    assert (first("val", 0) == first("val", 99)).all(), "val does not depend on the seed"


def test_val_pass_uses_every_document_before_repeating_one(numbered):
    """One pass over val consumes each document once (whole or cropped) before any repeats."""
    harness, tok, _ = numbered
    manifest = harness.dataset_cache.load_manifest(tok.source)
    val_texts = list(harness.dataset_cache.iter_documents(tok.source, [tuple(s) for s in manifest["splits"]["val"]]))
    val_docs = [tuple([tok.bos_token_id] + tok.encode(t)) for t in val_texts]
    loader = harness.make_dataloader(tok, 2, 64, "val")
    segments = []
    while len(segments) < len(val_docs):
        x, y = next(loader)
        for r in range(2):
            row = [int(t) for t in x[r]] + [int(y[r, -1])]
            segments += [tuple(s) for s in _segments(row, tok.bos_token_id)]
    first_pass = segments[:len(val_docs)]
    assert all(any(d[:len(s)] == s for d in val_docs) for s in first_pass)
    # Eight tokens ("Document N: ...") identify a document; none of those appears twice.
    identified = [s[:8] for s in first_pass if len(s) >= 8]
    assert len(identified) > len(val_docs) // 2
    assert len(set(identified)) == len(identified), "no document repeats within a pass"


def test_train_val_and_test_documents_are_disjoint(numbered):
    harness, tok, _ = numbered
    manifest = harness.dataset_cache.load_manifest(tok.source)
    text = {split: set(harness.dataset_cache.iter_documents(tok.source, [tuple(s) for s in manifest["splits"][split]]))
            for split in ("train", "val", "test")}
    assert text["train"] and text["val"] and text["test"]
    assert not text["train"] & text["val"] and not text["train"] & text["test"] and not text["val"] & text["test"]
    assert len(text["val"]) < len(text["train"]) / 3
    # The sealed split is about the size of validation, and has its own digest.
    assert 0.5 < len(text["test"]) / len(text["val"]) < 2
    digests = manifest["split_digests"]
    assert len({digests["train"], digests["val"], digests["test"]}) == 3


def test_the_dataloader_never_serves_the_test_split(numbered):
    harness, tok, _ = numbered
    with pytest.raises(ValueError, match="'test' split is sealed"):
        next(harness.make_dataloader(tok, 2, 64, "test"))
    assert harness._LEDGER.served.get("test", 0) == 0


def test_the_runner_scores_test_rows_dealt_in_among_validation_rows(harness):
    """serve_evaluation(test=True): the template answers rows it cannot tell apart; the
    runner scores val and test apart, each on exactly its own fixed rows."""
    import socket
    import threading
    a, b = socket.socketpair()
    answered = []

    def template():        # a model that knows one thing: whether a row is one of val's
        val_rows = {r.tobytes() for x, _, _ in harness._eval_batches("classics", 1, harness.EVAL_TOKENS,
                                                                       harness.MAX_SEQ_LEN) for r in x}
        fd = b.fileno()
        while (header := harness._read_header(fd))["op"] == "batch":
            xy = np.frombuffer(harness._read_exact(fd, 2 * header["rows"] * header["cols"] * 4),
                               dtype="<i4").reshape(2, header["rows"], header["cols"])
            nats = np.array([[1.0 if x.tobytes() in val_rows else 2.0] * header["cols"] for x in xy[0]])
            answered.append(len(xy[0]))
            harness._send_message(fd, {"op": "nats"}, nats.astype("<f8").tobytes())

    thread = threading.Thread(target=template)
    thread.start()
    result = harness.serve_evaluation(a.fileno(), 8, seed=3, test=True)
    thread.join()
    val, test = result["eval"], result["test"]
    assert val["rows"] == test["rows"] == harness.EVAL_TOKENS // harness.MAX_SEQ_LEN
    assert result["val_bpb"] == pytest.approx(val["tokens"] / (np.log(2) * val["bytes"]), rel=0.02)
    assert result["test_bpb"] == pytest.approx(2 * test["tokens"] / (np.log(2) * test["bytes"]), rel=0.02)
    # The validation rows are the pinned ones; the test rows come from the test split.
    assert val["digest"] == harness.eval_fingerprint("classics")["digest"] != test["digest"]
    assert sum(answered) == result["eval"]["served_rows"] > 2 * val["rows"]


# ---------------------------------------------------------------------------
# classics and local:, end to end through the command line


def test_classics_prepares_offline_and_verifies(classics_cache):
    cache = classics_cache["AUTORESEARCH_CACHE"]
    manifest = json.load(open(os.path.join(cache, "classics", "manifest.json")))
    assert manifest["settings"]["vocab_size"] == 4096 and manifest["settings"]["eval_tokens"] == 65536
    for name, record in manifest["files"].items():
        path = os.path.join(cache, "classics", name)
        assert hashlib.sha256(open(path, "rb").read()).hexdigest() == record["sha256"]
    again = run_prepare(["--dataset", "classics"], classics_cache)
    assert again.returncode == 0 and "Already prepared and verified" in again.stdout
    verify = run_prepare(["--dataset", "classics", "--verify"], classics_cache)
    assert verify.returncode == 0 and verify.stdout.startswith("ok: classics verified")


def test_a_corrupt_shard_is_detected_and_repaired(classics_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(os.path.join(classics_cache["AUTORESEARCH_CACHE"], "classics"), cache / "classics")
    env = {"AUTORESEARCH_CACHE": str(cache)}
    shard = cache / "classics" / "shard_00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, different content
    shard.write_bytes(bytes(data))
    verify = run_prepare(["--dataset", "classics", "--verify"], env)
    assert verify.returncode == 1
    (line,) = verify.stderr.strip().splitlines()
    assert "shard_00001.parquet is corrupt" in line and "python prepare.py --dataset classics" in line
    # A truncated shard is caught by the cheap check every training run makes.
    shard.write_bytes(bytes(data[: len(data) // 2]))
    code = "import prepare; prepare.Tokenizer.load()"
    import subprocess, sys
    load = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env, "AUTORESEARCH_DATASET": "classics"})
    assert load.returncode != 0 and "truncated or changed" in load.stderr.strip().splitlines()[-1]
    fixed = run_prepare(["--dataset", "classics"], env)
    assert fixed.returncode == 0, fixed.stderr
    assert run_prepare(["--dataset", "classics", "--verify"], env).returncode == 0


def test_local_corpus_of_mixed_files_prepares_deterministically(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    paragraphs = [f"Paragraph {i} tells of the river and the hill, {i * 7} times over." for i in range(3000)]
    (corpus / "book.txt").write_text("\n\n".join(paragraphs[:1500]))
    with open(corpus / "sub" / "notes.jsonl", "w") as f:
        for p in paragraphs[1500:2200]:
            f.write(json.dumps({"text": p, "id": 1}) + "\n")
    pq.write_table(pa.table({"text": paragraphs[2200:]}), corpus / "sub" / "more.parquet")
    (corpus / "ignored.csv").write_text("not,text\n")
    manifests = []
    for run in ("a", "b"):
        env = {"AUTORESEARCH_CACHE": str(tmp_path / run)}
        result = run_prepare(["--dataset", f"local:{corpus}"], env)
        assert result.returncode == 0, result.stderr
        (folder,) = os.listdir(tmp_path / run)
        assert folder.startswith("local-corpus-")
        manifests.append(json.load(open(tmp_path / run / folder / "manifest.json")))
    a, b = manifests
    assert a["splits"] == b["splits"] and a["splits"]["val"]
    assert {k: v["sha256"] for k, v in a["files"].items() if k.endswith(".parquet")} == \
           {k: v["sha256"] for k, v in b["files"].items() if k.endswith(".parquet")}
    assert 0 < a["settings"]["eval_tokens"] <= 2**18 and a["settings"]["eval_tokens"] % 512 == 0
    # The library sees the local corpus's own eval size.
    import subprocess, sys
    out = subprocess.run([sys.executable, "-c", "import prepare; print(prepare.EVAL_TOKENS, prepare.VOCAB_SIZE)"],
                         cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "a"),
                              "AUTORESEARCH_DATASET": f"local:{corpus}"})
    assert out.stdout.split() == [str(a["settings"]["eval_tokens"]), "4096"]


# ---------------------------------------------------------------------------
# Bad input: one clear line, non-zero exit


@pytest.mark.parametrize("args, expected", [
    (["--dataset", "wikipedia"], "unknown dataset 'wikipedia'; choose one of: climbmix, tinystories, classics"),
    (["--dataset", "tinystories", "--verify"], "is not prepared"),
    (["--dataset", "local:{empty}"], "no text found in"),
    (["--dataset", "local:{missing}"], "does not exist"),
    (["--dataset", "local:{badjson}"], "needs a JSON object with a \"text\" field"),
])
def test_bad_input_gets_one_clear_line(tmp_path, args, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("   \n\n")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "a.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    args = [a.format(empty=tmp_path / "empty", missing=tmp_path / "missing", badjson=tmp_path / "badjson")
            for a in args]
    result = run_prepare(args, {"AUTORESEARCH_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    if "is not prepared" in expected:
        assert "run `python prepare.py --dataset tinystories`" in lines[0]


# ---------------------------------------------------------------------------
# Downloads against a local server with faults


class FaultyHub:
    """A tiny hub on 127.0.0.1: serves files with Range support and scripted faults.

    faults[name] is a list consumed one request at a time: "drop" closes the
    connection without a response, "500" answers an error, "truncate" sends
    half the body under a full Content-Length; then the file is served.
    """

    def __init__(self, files):
        self.files, self.faults, self.requests = files, {}, []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                hub.requests.append((name, self.headers.get("Range")))
                fault = hub.faults.get(name, []).pop(0) if hub.faults.get(name) else None
                if name not in hub.files:
                    self.send_error(404)
                    return
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault == "500":
                    self.send_error(500)
                    return
                body = hub.files[name]
                start = int(self.headers["Range"][6:].split("-")[0]) if self.headers.get("Range") else 0
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.end_headers()
                chunk = body[start:]
                if fault == "truncate":
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(chunk)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def _parquet_bytes(texts):
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf)
    return buf.getvalue()


@pytest.fixture
def hub(monkeypatch):
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(2, 9))) for _ in range(3000)]
    texts = [f"Story {i}. " + " ".join(rng.choice(words, size=60)) + "." for i in range(4000)]
    files = {f"shard_{i:05d}.parquet": _parquet_bytes(texts[i::4]) for i in range(4)}
    files["tinystories_gpt4_clean.parquet"] = _parquet_bytes(texts)
    server = FaultyHub(files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("AUTORESEARCH_BACKOFF", "0.01")
    yield server
    server.close()


def test_downloads_survive_drops_errors_and_truncation(harness, hub, tmp_path, monkeypatch):
    cache = harness.dataset_cache
    monkeypatch.setattr(cache, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(cache, "CACHE_BASE", str(tmp_path))
    source = dataclasses.replace(harness.data_sources.REGISTRY["climbmix"], name="fakehub")
    os.makedirs(tmp_path / "fakehub")
    names = [f"shard_{i:05d}.parquet" for i in range(4)]
    hub.faults = {names[0]: ["drop"], names[1]: ["500", "500"], names[2]: ["truncate", "truncate"]}
    cache.download_all(source, names, workers=3)
    for name in names:
        assert (tmp_path / "fakehub" / name).read_bytes() == hub.files[name]
    assert not list((tmp_path / "fakehub").glob("*.part"))
    resumed = [r for n, r in hub.requests if n == names[2] and r]
    assert resumed and resumed[0] == f"bytes={len(hub.files[names[2]]) // 2}-", "a truncated body is resumed"


def test_a_download_that_keeps_failing_keeps_what_finished(harness, hub, tmp_path, monkeypatch):
    cache = harness.dataset_cache
    monkeypatch.setattr(cache, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(cache, "CACHE_BASE", str(tmp_path))
    source = dataclasses.replace(harness.data_sources.REGISTRY["climbmix"], name="fakehub")
    os.makedirs(tmp_path / "fakehub")
    hub.faults = {"shard_00001.parquet": ["500"] * 50}
    with pytest.raises(cache.DataError, match=r"1 download\(s\) failed.*HTTP 500.*finished files are kept"):
        cache.download_all(source, ["shard_00000.parquet", "shard_00001.parquet"], workers=2)
    assert (tmp_path / "fakehub" / "shard_00000.parquet").read_bytes() == hub.files["shard_00000.parquet"]
    assert not (tmp_path / "fakehub" / "shard_00001.parquet").exists()


def test_a_hub_dataset_prepares_end_to_end_through_faults(harness, hub, tmp_path, monkeypatch):
    """tinystories, scaled down, from the local hub: download, tokenizer, manifest, loader."""
    cache = harness.dataset_cache
    monkeypatch.setattr(cache, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(cache, "CACHE_BASE", str(tmp_path))
    small = dataclasses.replace(harness.data_sources.REGISTRY["tinystories"], vocab_size=512, eval_tokens=4096,
                                val_rows=400, test_rows=400)
    monkeypatch.setitem(harness.data_sources.REGISTRY, "tinystories", small)
    hub.faults = {"tinystories_gpt4_clean.parquet": ["truncate", "drop", "500"]}
    manifest = cache.build("tinystories")
    assert manifest["splits"] == {"train": [["tinystories_gpt4_clean.parquet", 800, None]],
                                  "val": [["tinystories_gpt4_clean.parquet", 0, 400]],
                                  "test": [["tinystories_gpt4_clean.parquet", 400, 800]]}
    data = (tmp_path / "tinystories" / "tinystories_gpt4_clean.parquet").read_bytes()
    assert data == hub.files["tinystories_gpt4_clean.parquet"]
    tok = harness.Tokenizer.load("tinystories")
    assert tok.vocab_size == 512
    x, y = next(harness.make_dataloader(tok, 2, 512, "train"))
    assert x.shape == (2, 512)
    # Re-running downloads nothing.
    before = len(hub.requests)
    assert cache.build("tinystories")["files"] == manifest["files"]
    assert len(hub.requests) == before


def test_a_cache_from_before_the_test_split_gains_it_on_repair_without_downloading(harness, hub, tmp_path,
                                                                                 monkeypatch):
    cache = harness.dataset_cache
    monkeypatch.setattr(cache, "CACHE_BASE", str(tmp_path))
    small = dataclasses.replace(harness.data_sources.REGISTRY["tinystories"], vocab_size=512, eval_tokens=4096,
                                val_rows=400, test_rows=400)
    monkeypatch.setitem(harness.data_sources.REGISTRY, "tinystories", small)
    before = cache.build("tinystories")
    path = tmp_path / "tinystories" / "manifest.json"
    recorded = json.loads(path.read_text())          # as such a cache recorded it: train right after val
    recorded["splits"] = {"train": [["tinystories_gpt4_clean.parquet", 400, None]],
                          "val": recorded["splits"]["val"]}
    recorded.pop("split_digests")
    path.write_text(json.dumps(recorded))
    requests = len(hub.requests)
    # Still a whole cache for training: only the end of a session needs the test split.
    assert "test" not in cache.load_manifest(harness.data_sources.get_source("tinystories"))["splits"]
    after = cache.build("tinystories")
    assert after["splits"]["test"] == [["tinystories_gpt4_clean.parquet", 400, 800]]
    assert after["splits"]["train"] == [["tinystories_gpt4_clean.parquet", 800, None]]
    assert after["split_digests"]["val"] == before["split_digests"]["val"]
    assert len(hub.requests) == requests, "nothing was downloaded again"


def test_no_network_gets_one_line_and_a_resume_command(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_prepare(["--dataset", "tinystories"],
                         {"AUTORESEARCH_CACHE": str(tmp_path), "HF_ENDPOINT": f"http://127.0.0.1:{port}",
                          "AUTORESEARCH_BACKOFF": "0.01"})
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: 1 download(s) failed") and "Connection refused" in line
    assert "re-run `python prepare.py --dataset tinystories` to resume" in line
