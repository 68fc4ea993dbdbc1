"""The sealed test split, end to end: sessions on a clone of this repository whose target
is a bigram model counted from the training stream (fast, deterministic per seed, a
proper distribution, so every check of the served evaluation passes), run by the
plugin's scripts as the agent runs them, then scored on `test` once they have ended.

One session gains for real (more training text): the gain carries over to the test
split. One plants a validation leak by a route no check of a run sees (validation text
copied into a file of the project, its continuations remembered): a large val gain,
none on test, and the report says it did not carry over.
"""

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from browser import Browser
from conftest import REPO
from plugin_helpers import PLUGIN

pytestmark = pytest.mark.xdist_group("holdout")

BIGRAM = '''"""A bigram model: counts of (token, next token) over the training rows it reads,
and, where LEAK names a file, the continuations of every three-token context in it,
remembered word for word."""
import numpy as np

import prepare
from prepare import MAX_SEQ_LEN, SEED, VOCAB_SIZE

TRAIN_ROWS = 64          # rows of training text counted
SMOOTHING = 0.05         # added to every count: no token is impossible
LEAK = ""                # a file of extra text whose continuations are remembered
MEMO = 0.9               # the weight of a remembered continuation, where its context was seen

V = VOCAB_SIZE
tokenizer = prepare.Tokenizer.load()
report = prepare.RunReport(
    __file__, "numpy", dict(device_type="cpu", device_name="test", memory_gb=None, peak_flops=None),
    model=dict(depth=1, width=1, num_params=V ** 2, vocab_size=V, seq_len=MAX_SEQ_LEN),
    training=dict(compiled=False, dtype="fp64", device_batch_size=8, grad_accum_steps=1,
                  tokens_per_step=8 * MAX_SEQ_LEN),
    loss_limit=100.0)
counts = np.zeros((V, V))
loader = prepare.make_dataloader(tokenizer, 8, MAX_SEQ_LEN, "train", seed=SEED)
for step in range(TRAIN_ROWS // 8):
    x, y = next(loader)
    np.add.at(counts, (x.ravel(), y.ravel()), 1)
    report.step(step, 0.01, 5.0, True, 0.01 * (step + 1), 1.0)
bigram = (counts + SMOOTHING) / (counts + SMOOTHING).sum(axis=1, keepdims=True)

memo = None
if LEAK:
    with open(LEAK, encoding="utf-8") as f:
        ids = np.concatenate([tokenizer.encode(line.strip(), prepend=tokenizer.bos_token_id)
                              for line in f if line.strip()]).astype(np.int64)
    context = (ids[:-3] * V + ids[1:-2]) * V + ids[2:-1]
    memo = (np.unique(context, return_counts=True), np.unique(context * V + ids[3:], return_counts=True))


def seen(table, keys):
    values, n = table
    i = np.clip(np.searchsorted(values, keys), 0, len(values) - 1)
    return np.where(values[i] == keys, n[i], 0)


def per_token_loss(x, y):
    x, y = x.astype(np.int64), y.astype(np.int64)
    p = bigram[x, y]
    if memo is not None:     # a proper distribution still: MEMO * (remembered) + (1 - MEMO) * bigram
        context = (x[:, :-2] * V + x[:, 1:-1]) * V + x[:, 2:]
        n_context, n_next = seen(memo[0], context), seen(memo[1], context * V + y[:, 2:])
        p[:, 2:] = np.where(n_context > 0, MEMO * n_next / np.maximum(n_context, 1) + (1 - MEMO) * p[:, 2:],
                            p[:, 2:])
    return -np.log(p)


val_bpb = prepare.evaluate_bpb(per_token_loss, 8)
report.finish(val_bpb, training_seconds=0.1, train_peak_mb=1.0, peak_memory_mb=1.0)
'''


class Session:
    def __init__(self, root, env):
        self.root, self.env = root, env

    def script(self, name, *args):
        return subprocess.run([str(PLUGIN / "scripts" / name), *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=600)

    def ok(self, name, *args):
        proc = self.script(name, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def edit(self, **constants):
        path = os.path.join(self.root, "train.py")
        text = open(path, encoding="utf-8").read()
        for name, value in constants.items():
            old = next(line for line in text.splitlines() if line.startswith(f"{name} = "))
            text = text.replace(old, f"{name} = {value!r}", 1)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    def run_and_keep(self, description, **constants):
        self.edit(**constants)
        out = self.ok("run-experiment")
        assert "status: ok" in out, out
        self.ok("log-experiment", "--status", "keep", "--description", description)

    def events(self):
        with open(os.path.join(self.root, "autoresearch.jsonl"), encoding="utf-8") as f:
            return [r for r in map(json.loads, f) if r.get("event") == "test"]


def session(base, classics_cache, tag, leak=False):
    root = str(base / tag)
    subprocess.run(["git", "clone", "-q", REPO, root], check=True)
    for key, value in (("user.name", "Holdout Test"), ("user.email", "holdout@example.com")):
        subprocess.run(["git", "config", key, value], cwd=root, check=True)
    cache = str(base / f"cache-{tag}")
    shutil.copytree(classics_cache["AUTORESEARCH_CACHE"], cache)
    with open(os.path.join(root, "train.py"), "w", encoding="utf-8") as f:
        f.write(BIGRAM)
    if leak:   # the planted leak: the validation documents, as a file of the project's
        texts = pq.read_table(os.path.join(cache, "classics", "shard_00004.parquet")).column("text").to_pylist()
        with open(os.path.join(root, "notes.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(" ".join(t.split()) for t in texts) + "\n")
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "A bigram model"], cwd=root, check=True)
    env = {**os.environ, **classics_cache, "AUTORESEARCH_CACHE": cache, "AUTORESEARCH_QUIET": "1",
           "AUTORESEARCH_LOAD_CHECK": "0", "AUTORESEARCH_EVAL_TOKENS": "16384",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    s = Session(root, env)
    s.ok("setup-session", "--tag", tag, "--dataset", "classics", "--budget", "2", "--policy", "strict")
    s.run_and_keep("baseline")
    return s


@pytest.fixture(scope="module")
def sessions(tmp_path_factory, classics_cache):
    base = tmp_path_factory.mktemp("holdout")
    real = session(base, classics_cache, "real")
    real.run_and_keep("count 4x the training rows", TRAIN_ROWS=256)
    real.run_and_keep("count 16x the training rows", TRAIN_ROWS=1024)
    leaky = session(base, classics_cache, "leaky", leak=True)
    leaky.run_and_keep("also remember the notes file", LEAK="notes.txt")
    return real, leaky


def test_the_test_split_is_refused_while_the_session_is_active(sessions):
    real, _ = sessions
    proc = real.script("summarize", "--test")
    assert proc.returncode == 2 and "the session is still active" in proc.stderr
    assert not real.events()


def test_a_real_gain_carries_over_to_the_test_split(sessions):
    real, _ = sessions
    real.ok("end-session")
    out = real.ok("summarize", "--test", "--every-keep", "--seeds", "2")
    assert "scoring on the test split: 6 run(s) (2 seed(s) a state)" in out
    events = real.events()
    assert [(e["role"], e["state"], e["seed"]) for e in events] == [
        ("baseline", 1, 1000), ("baseline", 1, 1001), ("keep", 2, 1000), ("keep", 2, 1001),
        ("final", 3, 1000), ("final", 3, 1001)]
    assert all(e["status"] == "ok" and e["test"] > 0 and e["val"] > 0 for e in events)
    by_role = {role: sum(e["test"] for e in events if e["role"] == role) / 2 for role in ("baseline", "final")}
    assert by_role["final"] < by_role["baseline"] - 0.05
    summary = open(os.path.join(real.root, "autoresearch-summary.md"), encoding="utf-8").read()
    assert "Carried over: the gain holds on text no run had seen." in summary
    assert "Did not carry over" not in summary
    assert os.path.exists(os.path.join(real.root, "progress-test.png")), "every keep scored: the two frontiers"
    # Scored once: asking again runs nothing more.
    assert "scoring on the test split" not in real.ok("summarize", "--test", "--every-keep", "--seeds", "2")
    assert len(real.events()) == 6


def test_a_planted_validation_leak_shows_no_test_gain(sessions):
    _, leaky = sessions
    loop = [json.loads(line) for line in open(os.path.join(leaky.root, "autoresearch.jsonl"), encoding="utf-8")]
    runs = [r for r in loop if r.get("type") == "run"]
    assert [r["status"] for r in runs] == ["keep", "keep"], "the leak passes every check of a run"
    val_gain = runs[0]["metric"] - runs[1]["metric"]
    assert val_gain > 0.3
    leaky.ok("end-session")
    out = leaky.ok("summarize", "--test", "--seeds", "2")
    events = leaky.events()
    test = {role: sum(e["test"] for e in events if e["role"] == role) / 2 for role in ("baseline", "final")}
    val = {role: sum(e["val"] for e in events if e["role"] == role) / 2 for role in ("baseline", "final")}
    assert val["baseline"] - val["final"] > 0.3, "re-run on fresh seeds, the val gain is still there"
    assert test["baseline"] - test["final"] < 0.1 * val_gain, "and none of it is on test"
    summary = open(os.path.join(leaky.root, "autoresearch-summary.md"), encoding="utf-8").read()
    assert "**Did not carry over**" in summary, out
    # The HTML report, opened offline in Chromium, says it too.
    leaky.ok("summarize", "--html")
    with Browser(offline=True) as page:
        page.goto("file://" + os.path.join(leaky.root, "autoresearch-summary.html"))
        page.wait_for("document.body.dataset.runs === '2'")
        assert page.eval("document.getElementById('test-section').hidden") is False
        shown = page.eval("document.getElementById('test-section').innerText")
        assert "Did not carry over" in shown and "final (run 2)" in shown
    # finalize says it before anything merges, without scoring again.
    plan = leaky.ok("finalize")
    assert "Did not carry over" in plan and "scoring on the test split" not in plan
    assert "(did not carry over)" in plan
