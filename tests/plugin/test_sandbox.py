"""The run in its sandbox (core/sandbox.py, bubblewrap here): what a template that
attacks from inside its run can reach, and what an honest run gets.

Real bubblewrap, real runs of edited templates started by run-experiment, real git.
A machine without a working bubblewrap fails these tests; they never skip.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO
from plugin_helpers import PLUGIN, SCRIPTS, edit_target, hang_child, hang_children, ok, script
from test_integrity import Project

sys.path.insert(0, str(PLUGIN / "scripts"))
from core import sandbox  # noqa: E402

# One session per fixture, shared by the module's tests: in one test process.
pytestmark = pytest.mark.xdist_group("sandbox")

TAG = "boxed"
MARKER = "autoresearch-sandbox-test-daemon"


@pytest.fixture(scope="module", autouse=True)
def bubblewrap():
    kind, why = sandbox.available()
    if kind != sandbox.BWRAP:
        pytest.fail(f"bubblewrap must run here for these tests ({why}): apt-get install bubblewrap")


def session(base, classics_cache, hidden):
    """A clone on the real template with a small CPU model and a private copy of the
    cache, set up on classics. `hidden`: its harness takes the validation rows from the
    runner (the name prepare.py declares it with), so the sandbox hides the files."""
    root = str(base / "project")
    subprocess.run(["git", "clone", "-q", REPO, root], check=True)
    for key, value in (("user.name", "Sandbox Test"), ("user.email", "sandbox@example.com")):
        subprocess.run(["git", "config", key, value], cwd=root, check=True)
    cache = str(base / "cache")
    shutil.copytree(classics_cache["AUTORESEARCH_CACHE"], cache)
    env = {**os.environ, "AUTORESEARCH_DATASET": "classics", "AUTORESEARCH_CACHE": cache,
           "AUTORESEARCH_QUIET": "1", "AUTORESEARCH_LOAD_CHECK": "0", "AUTORESEARCH_EVAL_TOKENS": "8192",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    p = Project(root, env)
    text = p.read("train.py")
    # A clock that counts 0.25 s a step: the same 4 steps in every run, so that two runs
    # of one seed can be compared number for number.
    for old, new in (("    DEPTH, WIDTH, HEAD_DIM = 2, 256, 64\n", "    DEPTH, WIDTH, HEAD_DIM = 2, 64, 32\n"),
                     ("    TOTAL_BATCH_TOKENS = 2**12\n", "    TOTAL_BATCH_TOKENS = 2**11\n"),
                     ("        dt = time.time() - t0\n", "        dt = 0.25\n")):
        assert text.count(old) == 1
        text = text.replace(old, new)
    p.write("train.py", text)
    if hidden and sandbox.SERVED_VALIDATION not in p.read("prepare.py"):
        p.write("prepare.py", p.read("prepare.py") + f"\n# {sandbox.SERVED_VALIDATION}\n")
    p.git("commit", "-qam", "A small CPU model")
    proc = p.script("setup-session", "--tag", TAG, "--dataset", "classics", "--budget", "1", "--policy", "strict")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    p.setup_output, p.cache = proc.stdout, os.path.join(cache, "classics")
    p.manifest = json.load(open(os.path.join(p.cache, "manifest.json")))
    return p


# ------------------------------------------------ a template that attacks from inside

ATTACK = '''\
"""Not a training run: every way this template knows to reach what it must not."""
import errno, hashlib, json, os, signal, socket, subprocess, sys
import prepare, dataset_cache
import pyarrow.parquet as pq

VAL_FILE, VAL_SLICES, PORT, DEFAULT_COPY = {val_file!r}, {val_slices!r}, {port}, {default_copy!r}
found = {{"pid": os.getpid(), "cache_base": dataset_cache.CACHE_BASE,
          "env": {{k: os.environ.get(k) for k in ("PYTHONPATH", "LD_PRELOAD", "AUTORESEARCH_CACHE")}},
          "sitecustomize": bool(getattr(sys.modules.get("sitecustomize"), "PLANTED", False))}}


def attempt(name, action):
    try:
        found[name] = action()
    except BaseException as e:
        found[name] = f"{{type(e).__name__}}: {{getattr(e, 'errno', '')}}"


directory = dataset_cache.cache_dir(prepare.SOURCE)
attempt("pyarrow", lambda: len(pq.read_table(os.path.join(directory, VAL_FILE)).column("text")))
attempt("read_texts", lambda: len(dataset_cache.read_texts(prepare.SOURCE, VAL_FILE, 0, None)))
attempt("tree_copy", lambda: len(pq.read_table(os.path.join("datasets", "classics", VAL_FILE)).column("text")))
attempt("default_copy", lambda: len(pq.read_table(os.path.join(DEFAULT_COPY, VAL_FILE)).column("text")))
attempt("git_blob", lambda: subprocess.run(["git", "cat-file", "-s", "HEAD:datasets/classics/" + VAL_FILE],
                                           capture_output=True, text=True).stdout.strip() or "none")
tokenizer = prepare.Tokenizer.load()
found["splits"] = sorted(tokenizer.manifest["splits"])


def rewritten():
    tokenizer.manifest["splits"]["train"] = VAL_SLICES
    return next(prepare.make_dataloader(tokenizer, 2, 64, "train"))[0].shape[0]


attempt("rewrite", rewritten)
tokenizer = prepare.Tokenizer.load()
loader, digest = prepare.make_dataloader(tokenizer, 4, 64, "train", seed=7), hashlib.sha256()
for _ in range(3):
    digest.update(next(loader)[0].tobytes())
found["train_digest"] = digest.hexdigest()
for name in (".git/forged", "autoresearch.jsonl", "prepare.py", ".autoresearch/forged", "train.py",
             os.path.expanduser("~/forged")):
    def write(name=name):
        with open(name, "a") as f:
            f.write("")
        return "written"
    attempt("write " + name, write)


def connect():
    socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
    return "connected"


attempt("network", connect)
print("FOUND " + json.dumps(found), flush=True)
'''


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, classics_cache):
    """One run, by run-experiment, of the attacking template in a session whose
    validation files are hidden, started from a hostile shell: PYTHONPATH with a
    sitecustomize, LD_PRELOAD, AUTORESEARCH_CACHE naming a copy whose manifest trains
    on the validation split, and a `bwrap` first on PATH that runs no sandbox."""
    base = tmp_path_factory.mktemp("attacked")
    p = session(base, classics_cache, hidden=True)
    val_file = p.manifest["splits"]["val"][0][0]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    default_copy = os.path.expanduser("~/.cache/autoresearch/classics")
    planted = base / "planted"
    planted.mkdir()
    (planted / "sitecustomize.py").write_text("PLANTED = True\n")
    (planted / "bwrap").write_text('#!/bin/sh\nwhile [ "$1" != "--" ]; do shift; done; shift; exec "$@"\n')
    (planted / "bwrap").chmod(0o755)
    fake = base / "fake-cache"
    shutil.copytree(p.cache, fake / "classics")
    manifest = json.load(open(fake / "classics" / "manifest.json"))
    manifest["splits"]["train"] = manifest["splits"]["val"]
    (fake / "classics" / "manifest.json").write_text(json.dumps(manifest))
    p.write("train.py", ATTACK.format(val_file=val_file, val_slices=p.manifest["splits"]["val"], port=port,
                                      default_copy=default_copy))
    p.env = {**p.env, "PYTHONPATH": str(planted), "LD_PRELOAD": str(planted / "missing.so"),
             "AUTORESEARCH_CACHE": str(fake), "PATH": f"{planted}:{p.env['PATH']}"}
    try:
        proc = p.script("run-experiment")
    finally:
        server.close()
    log = p.read("run.log")
    line = next((l for l in log.splitlines() if l.startswith("FOUND ")), None)
    assert line, proc.stdout + log
    return p, json.loads(line[len("FOUND "):]), proc


def test_the_validation_parquet_is_not_in_the_runs_view(attacked):
    p, found, proc = attacked
    assert "status: tampered" not in proc.stdout, proc.stdout       # the view leaves the cache untouched
    assert found["pyarrow"].startswith("FileNotFoundError"), found
    assert found["read_texts"].startswith("DataError"), found


def test_the_validation_text_has_no_other_way_in(attacked):
    """The template's own tree holds the embedded dataset and its git history; a
    default cache may hold a second copy. None of them gives the validation text."""
    p, found, _ = attacked
    assert not isinstance(found["tree_copy"], int) and not isinstance(found["default_copy"], int), found
    assert not found["git_blob"].isdigit(), found


def test_a_manifest_rewritten_in_memory_finds_no_validation_text(attacked):
    p, found, _ = attacked
    assert found["splits"] == ["train"]
    assert not isinstance(found["rewrite"], int), found


def test_the_training_view_serves_the_same_training_batches(attacked):
    """The same seed's first batches, inside the sandbox from the view, and here from
    the full cache: training is unchanged."""
    p, found, _ = attacked
    code = ("import hashlib, prepare; t = prepare.Tokenizer.load(); "
            "l = prepare.make_dataloader(t, 4, 64, 'train', seed=7); h = hashlib.sha256()\n"
            "for _ in range(3): h.update(next(l)[0].tobytes())\nprint(h.hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], cwd=p.root, capture_output=True, text=True,
                         env={**os.environ, "AUTORESEARCH_CACHE": os.path.dirname(p.cache),
                              "AUTORESEARCH_DATASET": "classics"})
    assert out.stdout.strip() == found["train_digest"], out.stderr


def test_the_cache_comes_from_the_session_never_the_callers_environment(attacked):
    p, found, _ = attacked
    assert found["cache_base"] == os.path.dirname(p.cache)
    assert found["env"]["AUTORESEARCH_CACHE"] == os.path.dirname(p.cache)


def test_code_from_the_callers_environment_never_reaches_the_run(attacked):
    p, found, _ = attacked
    assert found["env"]["PYTHONPATH"] is None and found["env"]["LD_PRELOAD"] is None, found
    assert found["sitecustomize"] is False
    assert "preloaded" not in p.read("run.log")        # ld.so's warning for a missing library


def test_a_bwrap_on_the_callers_path_does_not_turn_the_sandbox_off(attacked):
    p, found, _ = attacked
    assert found["pid"] <= 3, "the run is in a PID namespace of its own"


def test_the_run_cannot_write_the_project_the_records_or_home(attacked):
    p, found, _ = attacked
    for name in (".git/forged", "autoresearch.jsonl", "prepare.py", ".autoresearch/forged", "train.py",
                 os.path.expanduser("~/forged")):
        assert found["write " + name] == f"OSError: {30}", (name, found)    # EROFS
    assert not os.path.exists(p.path(".git/forged")) and not os.path.exists(p.path(".autoresearch/forged"))


def test_the_run_has_no_network(attacked):
    p, found, _ = attacked
    assert found["network"] != "connected" and found["network"].startswith(("ConnectionRefusedError", "OSError")), found


# ----------------------------------------------------- processes: the PID namespace

DAEMON = f'''\
import os, signal, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        sys.argv[0] = "{MARKER}"
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", "{MARKER}"])
    os._exit(0)
time.sleep(0.5)
# Then the runner itself, found by its command line, is killed: nothing cleans up after.
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if b"run-experiment" in open(f"/proc/{{pid}}/cmdline", "rb").read():
            os.kill(int(pid), signal.SIGKILL)
    except OSError:
        pass
time.sleep(2)
'''


def daemons():
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if MARKER.encode() in open(f"/proc/{pid}/cmdline", "rb").read() and \
                    open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(int(pid))
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def in_view(tmp_path_factory, classics_cache):
    """A session with the validation files in view (today's harness evaluates in the
    run), and its honest baseline logged."""
    p = session(tmp_path_factory.mktemp("in-view"), classics_cache, hidden=False)
    assert "sandbox    bubblewrap (own PID namespace, no network" in p.setup_output, p.setup_output
    return p


def test_a_setsid_daemon_dies_with_its_run(in_view):
    p = in_view
    p.write("train.py", DAEMON)
    try:
        p.script("run-experiment")
        time.sleep(0.3)
        left = daemons()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert left == [], "a daemon of the run outlived it"
    finally:
        p.git("checkout", "--", "train.py")


def test_a_forged_running_file_gets_no_other_process_killed(in_view):
    """running.json naming a process group that is not a run, with its true start time
    and a command line that names the target, as the old check wanted."""
    p = in_view
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "train.py"],
                              start_new_session=True)
    try:
        time.sleep(0.2)
        start = open(f"/proc/{victim.pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[19].decode()
        forged = {"pid": victim.pid, "pgid": victim.pid, "start": start, "target": "train.py",
                  "token": hashlib.sha256(b"guess").hexdigest(), "sandbox": "bwrap"}
        p.write(".autoresearch/running.json", json.dumps(forged))
        p.write("train.py", "print('a short run')\n")
        p.script("run-experiment")
        assert victim.poll() is None, "the process the forged file named was killed"
    finally:
        victim.kill()
        victim.wait()
        p.git("checkout", "--", "train.py")


# ------------------------------------------------------------------ honest runs

DRIVER = '''\
import json, sys
sys.path.insert(0, {scripts!r})
from core import records, runner, sandbox
config = records.read_config({root!r})
wrapped = []
bwrap_command = sandbox.bwrap_command
sandbox.bwrap_command = lambda *a, **k: wrapped.append(1) or bwrap_command(*a, **k)
if sys.argv[1] == "none":
    config["sandbox"] = dict(config["sandbox"], kind="none")
results = []
code, seconds, reading = runner.run_target({root!r}, config, 120, 42, results=results)
status, detail, metrics = runner.verdict(config, code, open({log!r}).read(), results)
print(json.dumps({{"status": status, "val_bpb": metrics.get("val_bpb"), "sandboxed": bool(wrapped)}}))
'''


def honest(p, kind, env=None):
    driver = DRIVER.format(scripts=str(PLUGIN / "scripts"), root=p.root, log=p.path("run.log"))
    proc = subprocess.run([sys.executable, "-c", driver, kind], cwd=p.root, capture_output=True, text=True,
                          env=env or p.env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_an_honest_run_measures_the_same_in_the_sandbox_and_out(in_view, tmp_path):
    """The same seed, the same val_bpb; and a copy of the cache whose manifest trains
    on the validation split, named by the caller's AUTORESEARCH_CACHE, changes nothing."""
    p = in_view
    boxed, bare = honest(p, "bwrap"), honest(p, "none")
    assert boxed["status"] == bare["status"] == "ok", (boxed, bare)
    assert boxed["sandboxed"] and not bare["sandboxed"]
    assert boxed["val_bpb"] == bare["val_bpb"]
    fake = tmp_path / "fake-cache"
    shutil.copytree(p.cache, fake / "classics")
    manifest = json.load(open(fake / "classics" / "manifest.json"))
    manifest["splits"]["train"] = manifest["splits"]["val"]
    (fake / "classics" / "manifest.json").write_text(json.dumps(manifest))
    steered = honest(p, "bwrap", env={**p.env, "AUTORESEARCH_CACHE": str(fake)})
    assert steered == boxed


# ------------------------------------------------------- the training view itself

BATCHES = '''\
import hashlib, json, os, sys
import prepare


def batches():
    """A digest of the first training batches for seed 7."""
    tokenizer = prepare.Tokenizer.load()
    loader, digest = prepare.make_dataloader(tokenizer, 4, 64, "train", seed=7), hashlib.sha256()
    for _ in range(5):
        digest.update(next(loader)[0].tobytes())
    return digest.hexdigest()
'''

VIEW_CHECK = BATCHES + '''
import data_sources, dataset_cache
import pyarrow.parquet as pq

full = batches()
view = dataset_cache.train_view(data_sources.get_source("classics"), sys.argv[1])
print(json.dumps({"full": full, "splits": sorted(view["splits"]), "slices": view["splits"]["train"],
                  "texts": pq.read_table(os.path.join(sys.argv[1], "mixed.parquet")).column("text").to_pylist(),
                  "files": sorted(os.listdir(sys.argv[1]))}))
'''


def test_a_file_that_mixes_splits_keeps_only_its_training_rows(tmp_path, classics_cache):
    """tinystories keeps validation in the first rows of its one file: by file alone
    nothing could be hidden. The view writes that file again with its training rows
    only, under the same name; the training batches are the same, and the view passes
    the harness's own verification."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    real = os.path.join(classics_cache["AUTORESEARCH_CACHE"], "classics")
    manifest = json.load(open(os.path.join(real, "manifest.json")))
    texts = lambda f: pq.read_table(os.path.join(real, f)).column("text").to_pylist()   # noqa: E731
    val, test = texts(manifest["splits"]["val"][0][0]), ["a test document, held out for the end"] * 3
    train = [t for f, _, _ in manifest["splits"]["train"] for t in texts(f)]
    mixed = tmp_path / "mixed" / "classics"
    mixed.mkdir(parents=True)
    pq.write_table(pa.table({"text": val + test + train}), mixed / "mixed.parquet")
    for name in ("tokenizer.pkl", "token_bytes.npy"):
        shutil.copy(os.path.join(real, name), mixed / name)
    manifest["splits"] = {"val": [["mixed.parquet", 0, len(val)]],
                          "test": [["mixed.parquet", len(val), len(val) + 3]],
                          "train": [["mixed.parquet", len(val) + 3, len(val) + 3 + 100],
                                    ["mixed.parquet", len(val) + 3 + 100, None]]}
    manifest["files"] = {f: {"size": os.path.getsize(mixed / f),
                             "sha256": hashlib.sha256((mixed / f).read_bytes()).hexdigest()}
                         for f in ("mixed.parquet", "tokenizer.pkl", "token_bytes.npy")}
    (mixed / "manifest.json").write_text(json.dumps(manifest))
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "mixed"), "AUTORESEARCH_DATASET": "classics"}
    view = tmp_path / "view" / "classics"
    view.parent.mkdir()
    proc = subprocess.run([sys.executable, "-c", VIEW_CHECK, str(view)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout)
    assert made["splits"] == ["train"] and made["texts"] == train
    assert made["slices"] == [["mixed.parquet", 0, 100], ["mixed.parquet", 100, len(train)]]
    assert made["files"] == ["manifest.json", "mixed.parquet", "token_bytes.npy", "tokenizer.pkl"]
    env["AUTORESEARCH_CACHE"] = str(view.parent)
    again = subprocess.run([sys.executable, "-c", BATCHES + "print(batches())"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.stdout.strip() == made["full"], again.stderr
    verify = subprocess.run([sys.executable, "prepare.py", "--dataset", "classics", "--verify"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and "verified" in verify.stdout, verify.stdout + verify.stderr


# ------------------------------------------ where no sandbox runs: leftovers on proof

LEFT_BEHIND = '''\
import sys
sys.path.insert(0, {scripts!r})
from core import records, runner, sandbox
config = records.read_config({root!r})
config["sandbox"] = dict(sandbox.setting(config), kind="none")
runner.run_target({root!r}, config, 120, 1)
'''


def test_unsandboxed_a_run_left_by_a_killed_runner_is_stopped_on_proof(project):
    """With no sandbox the run outlives a SIGKILLed runner; the next run-experiment
    stops it, because the running file's process is the one that holds its token."""
    edit_target(project, MODE="hang")
    driver = subprocess.Popen([sys.executable, "-c", LEFT_BEHIND.format(scripts=str(SCRIPTS), root=str(project))],
                              cwd=project)
    child = hang_child(project)
    driver.kill()
    driver.wait()
    try:
        assert hang_children(project) == [child], "unsandboxed, the run outlived its runner"
        info = json.loads((project / ".autoresearch" / "running.json").read_text())
        assert info["sandbox"] == "none" and len(info["token"]) == 64 and "start" in info
        edit_target(project, MODE="ok")
        proc = ok(script(project, "run-experiment"))
        assert f"stopped a leftover run (process group {info['pid']})" in proc.stdout
        time.sleep(0.3)
        assert hang_children(project) == []
    finally:
        for pid in hang_children(project):
            os.kill(pid, signal.SIGKILL)


def test_where_no_sandbox_runs_setup_says_so_and_a_sandboxed_session_refuses(monkeypatch):
    """No bubblewrap: available() says why and the research config says what is left
    open; a session that was set up with bubblewrap then refuses to run rather than
    run unsandboxed. A `bwrap` on PATH is never taken for it."""
    monkeypatch.setattr(sandbox, "BWRAP_PATHS", ("/nonexistent/bwrap",))
    monkeypatch.setenv("PATH", str(PLUGIN))
    sandbox.available.cache_clear()
    try:
        kind, why = sandbox.available()
        assert kind is None and "bubblewrap is not installed" in why
        setting = sandbox.session_setting("harness")
        assert sandbox.describe(setting) == (f"none ({why}): the run can read the validation data and "
                                             "write the project")
        with pytest.raises(sandbox.UserError, match="runs in bwrap, which cannot run here now"):
            sandbox.check({"kind": "bwrap"})
    finally:
        sandbox.available.cache_clear()
