"""Shared fixtures for the plugin tests: a real project in a temporary git repo, a
stand-in training script, and a runner for the plugin's scripts and hooks.

The stand-in `train.py` behaves like the real templates where the plugin can tell:
it reads AUTORESEARCH_DATASET and AUTORESEARCH_TIME_BUDGET, prints the summary block
and exits 0, or fails the way a real run fails (exception, NaN, hang with a child
process). Tests change its behaviour by editing the constants at its top, exactly as
an agent edits the real template.
"""
from __future__ import annotations

import atexit
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core import common, git as core_git, records as core_records

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "experiment-plugin"
SCRIPTS = PLUGIN / "scripts"
HOOKS = PLUGIN / "hooks"

STAND_IN_TARGET = '''\
"""Stand-in for train.py: prints a summary block like the real template."""
import json, os, subprocess, sys, time

VAL_BPB = 1.000000
MODE = "ok"          # ok | crash | nan | hang | nometric
TOK_SEC = 1000000

budget = float(os.environ["AUTORESEARCH_TIME_BUDGET"])
dataset = os.environ["AUTORESEARCH_DATASET"]
print(f"dataset {dataset}, budget {budget:g}s", flush=True)
print("step 00001 | loss 4.1234", flush=True)
if MODE == "crash":
    raise RuntimeError("shape mismatch in attention")
if MODE == "nan":
    print("FAIL: loss is NaN at step 12", flush=True)
    sys.exit(1)
if MODE == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", os.getcwd()])
    os.makedirs("data", exist_ok=True)
    with open("data/hang_child.pid", "w") as f:
        f.write(str(child.pid))
    time.sleep(600)
if MODE != "nometric":
    print("---")
    print(f"val_bpb:          {VAL_BPB:.6f}")
    print("training_seconds: 1.0")
    print("total_seconds:    1.2")
    print("peak_memory_mb:   2048.0")
    print("mfu_percent:      n/a")
    print(f"avg_tok_sec:      {TOK_SEC:,}")
    print("total_tokens_M:   1.0")
    print("num_steps:        10")
    print("num_params_M:     0.1")
    print("depth:            2")
'''

STUB_PREPARE = '''\
"""Stand-in for the fixed harness: only `--dataset NAME --verify` matters here."""
import argparse, os, sys
p = argparse.ArgumentParser()
p.add_argument("--dataset")
p.add_argument("--verify", action="store_true")
a = p.parse_args()
if a.verify and a.dataset in os.environ.get("MISSING_DATASETS", "").split(","):
    print(f"error: dataset {a.dataset!r} is not prepared (no manifest); "
          f"run `python prepare.py --dataset {a.dataset}`")
    sys.exit(1)
'''


def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def new_repo(path: Path) -> Path:
    """An empty git repository on branch main, with a committer identity."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "test@example.com")
    git(path, "config", "user.name", "Test")
    return path


def commit_all(path: Path, message: str = "project") -> None:
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message)


def _build_project(path: Path) -> None:
    new_repo(path)
    (path / "prepare.py").write_text(STUB_PREPARE)
    (path / "data_sources.py").write_text("DATASETS = {'classics': {}}\n")
    (path / "datasets" / "classics").mkdir(parents=True)
    (path / "datasets" / "classics" / "book.txt").write_text("It was a dark and stormy night.\n")
    (path / "train.py").write_text(STAND_IN_TARGET)
    (path / "train_mlx.py").write_text(STAND_IN_TARGET)
    (path / ".gitignore").write_text("hang_child.pid\ndata/\n")
    commit_all(path)



# Building a project (a git repository and its first commit) and setting up a session in
# it (a subprocess) cost a few tenths of a second each; a few hundred tests need one. Each
# is built once per test process and copied into the test's own directory: a copy is the
# same files and the same git repository, independent of every other copy.
_BUILT: dict[str, Path] = {}
_BUILD_DIR: list[str] = []


def _copy_of(key: str, build, path: Path) -> Path:
    if key not in _BUILT:
        if not _BUILD_DIR:
            _BUILD_DIR.append(tempfile.mkdtemp(prefix="plugin-tests-"))
            atexit.register(shutil.rmtree, _BUILD_DIR[0], True)
        built = Path(_BUILD_DIR[0]) / str(len(_BUILT)) / path.name
        build(built)
        _BUILT[key] = built
    shutil.copytree(_BUILT[key], path, symlinks=True, dirs_exist_ok=True)
    copies = core_records.copies_dir(str(_BUILT[key]))      # the records' copies outside it, too
    if os.path.isdir(copies):
        shutil.copytree(copies, core_records.copies_dir(str(path)), dirs_exist_ok=True)
    return path


def make_project(path: Path) -> Path:
    """A committed project: fixed harness stand-ins, embedded data, the stand-in target."""
    return _copy_of("project", _build_project, path)


def set_up_project(path: Path, *args: str, env=None) -> Path:
    """A project in which `setup-session ARGS` has run (with `env` added), as if it had
    just been run there."""
    def build(built):
        _build_project(built)
        ok(script(built, "setup-session", *args, env=env))
    return _copy_of(json.dumps(["setup-session", args, env]), build, path)


def edit_target(project: Path, name: str = "train.py", **constants) -> None:
    """Change VAL_BPB / MODE / TOK_SEC at the top of the stand-in target."""
    path = project / name
    text = path.read_text()
    for key, value in constants.items():
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", text, count=1, flags=re.M)
        assert n == 1, key
    path.write_text(text)


def script(project: Path, name: str, *args: str, cwd: Path | None = None, env=None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    """Run one plugin script the way the agent does: by path, from inside the project.
    Outside any Claude Code conversation unless `env` names one (CLAUDE_CODE_SESSION_ID)."""
    base = {k: v for k, v in os.environ.items() if k != "CLAUDE_CODE_SESSION_ID"}
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], cwd=cwd or project,
                          capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})})


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def hook(name: str, payload: dict, env=None, timeout: float = 10) -> subprocess.CompletedProcess:
    """Feed a hook the JSON Claude Code sends it on stdin."""
    return subprocess.run([sys.executable, str(HOOKS / name)], input=json.dumps(payload),
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def records(project: Path) -> list[dict]:
    lines = (project / "autoresearch.jsonl").read_text().splitlines()
    return [json.loads(l) for l in lines if l.strip()]


def tsv_rows(project: Path) -> list[list[str]]:
    return [l.split("\t") for l in (project / "results.tsv").read_text().splitlines()]


def claude_bin() -> str | None:
    """The Claude Code CLI: $CLAUDE_BIN, the copy dev.sh installs, or PATH."""
    for candidate in (os.environ.get("CLAUDE_BIN"),
                      str(REPO / ".tools" / "claude" / "node_modules" / ".bin" / "claude"),
                      shutil.which("claude")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def require_claude():
    """The CLI or a skip; in CI (CI=true) a missing CLI is a failure, not a skip."""
    import pytest
    path = claude_bin()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Claude Code CLI not found (bash dev.sh test installs it into .tools/claude)")
        pytest.skip("Claude Code CLI not installed (bash dev.sh test installs it)")
    return path


def fill_log(project: Path, n: int) -> None:
    """n run records, as log-experiment writes them, in one go."""
    config = core_records.read_log(str(project)).config
    commit = core_git.head(str(project))
    rng = random.Random(0)
    runs, best = [], 1.0
    for i in range(1, n + 1):
        status = rng.choice(["keep", "discard", "discard", "discard", "crash"])
        metric = None if status == "crash" else round(best + rng.gauss(0.002, 0.01), 6)
        if status == "keep" and metric is not None:
            best = min(best, metric)
        runs.append({"type": "run", "run": i, "commit": commit[:7], "commit_sha": commit,
                     "status": status, "metric": metric,
                     "metrics": {"peak_memory_mb": 2048.0, "avg_tok_sec": 1000000},
                     "description": f"experiment {i}: change something\twith a tab",
                     "timestamp": 1772748000 + 300 * i, "segment": 0, "confidence": None,
                     "run_status": "ok" if metric else "crash", "seconds": 300.0,
                     "asi": {"hypothesis": "x" * 80, "category": rng.choice(["optimizer", "architecture"])}})
    with open(project / common.LOG, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in runs)
    core_records.back_up_log(str(project), config["tag"])     # its copies, as the scripts keep them
    core_records.write_results(str(project), config, runs)


# ----------------------------------------------------------- sessions and verdicts

def strict_session(tmp_path):
    """A session whose every verdict comes from one run (Karpathy's rule), for tests of
    what happens around a verdict rather than of the verdict itself."""
    return set_up_project(tmp_path / "proj", "--tag", "t1", "--dataset", "classics", "--budget", "1",
                          "--policy", "strict")


def run_and_log(p, status, description, **constants):
    if constants:
        edit_target(p, **constants)
    run = script(p, "run-experiment")
    log = script(p, "log-experiment", "--status", status, "--description", description)
    return run, ok(log)


def recommendation(proc):
    return next(l for l in proc.stdout.splitlines() if l.startswith("recommend: "))


def set_constant(p, name, value):
    text = (p / "train.py").read_text()
    text = "\n".join(f"{name} = {value!r}" if line.startswith(f"{name} = ") else line
                     for line in text.splitlines()) + "\n"
    (p / "train.py").write_text(text)


# ------------------------------------------------------------------------- waves

WAVE_TARGET = '''\
"""Stand-in for train.py in a wave: the gains of two ideas add up."""
import os, subprocess, sys, time

GAIN_A = 0.0         # the first idea's line
MODE = "ok"          # ok | crash | hang | nan | tamper

print("cores", sorted(os.sched_getaffinity(0)), "threads", os.environ.get("OMP_NUM_THREADS"),
      "cuda", os.environ.get("CUDA_VISIBLE_DEVICES"), "seed", os.environ["AUTORESEARCH_SEED"], flush=True)
budget = float(os.environ["AUTORESEARCH_TIME_BUDGET"])
dataset = os.environ["AUTORESEARCH_DATASET"]

# (far enough from the first idea's line that the two edits merge)
GAIN_B = 0.0         # the second idea's line
SLEEP = 0.0
time.sleep(SLEEP)
while os.path.exists("slow.flag"):
    time.sleep(0.2)
if MODE == "crash":
    raise RuntimeError("shape mismatch in attention")
if MODE == "tamper":
    with open("prepare.py", "a") as f:
        f.write("EVAL_TOKENS = 1024  # a smaller eval looks better\\n")
if MODE == "nan":
    print("FAIL: loss is NaN at step 12", flush=True)
    sys.exit(1)
if MODE == "hang":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", os.getcwd()])
    os.makedirs("data", exist_ok=True)
    with open("data/hang_child.pid", "w") as f:
        f.write(str(child.pid))
    time.sleep(600)
print("---")
print(f"val_bpb:          {1.0 - GAIN_A - GAIN_B:.6f}")
print("training_seconds: 1.0")
print("peak_memory_mb:   100.0")
'''


def stop_workers(p: Path):
    """Leave no worker behind a test (each is its own process group)."""
    for f in (p / ".autoresearch" / "wave").glob("worker-*.pid"):
        try:
            os.killpg(int(f.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    for f in (p / ".autoresearch" / "wave").glob("*.running"):
        try:
            os.killpg(json.loads(f.read_text())["pgid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


def hang_children(tree: Path) -> list[int]:
    """The process ids, on this machine, of the children a hanging stand-in started in
    `tree`. In the run's sandbox (its own PID namespace) the number the stand-in writes
    to data/hang_child.pid is another one: the child is found by its command line,
    which names the tree."""
    wanted = ["-c", "import time; time.sleep(600)", str(tree)]
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")[:-1]
            with open(f"/proc/{name}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if name.isdigit() and args[1:] == wanted and not zombie:
            found.append(int(name))
    return found


def hang_child(tree: Path, timeout: float = 20) -> int:
    """The child a hanging stand-in started in `tree`, once it has (see hang_children)."""
    deadline = time.monotonic() + timeout
    while True:
        pid_file = tree / "data" / "hang_child.pid"
        found = hang_children(tree) if pid_file.exists() and pid_file.read_text() else []
        if found:
            return found[0]
        assert time.monotonic() < deadline, "the stand-in's child never started"
        time.sleep(0.1)


def gone_now(pid: int) -> bool:
    """No such process, or only its zombie (killed, waiting for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait(p, timeout=60, env=None) -> str:
    return ok(script(p, "wait-wave", "--timeout", str(timeout), timeout=timeout + 30, env=env)).stdout


def log_as_told(p, out: str, env=None) -> str:
    """Run the log-experiment line wait-wave printed."""
    line = re.search(r"^next: (log-experiment .*)$", out, re.M)
    assert line, out
    return ok(script(p, *shlex.split(line.group(1)), env=env)).stdout


def runs(p):
    return [r for r in records(p) if r["type"] == "run"]
