"""The loop in a person's own repository: a toy project that prints val_acc and runs
with `uv run`, and a clone shaped like karpathy/autoresearch (its file layout, its
summary block, its cache folder; a stand-in for its data, no download)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugin_helpers import SCRIPTS, commit_all, git, new_repo, ok, recommendation, records, script, set_constant, tsv_rows

UV_DIR = str(Path(sys.executable).parent)          # uv is a dev dependency, beside python

TOY_TARGET = '''\
"""A toy training script: deterministic, its own seed, its own budget."""
import random

random.seed(0)
ACC = 0.80
noise = random.random() * 1e-3
print("epoch 1 | loss 0.52")
print("---")
print(f"val_acc:      {ACC + noise:.6f}")
print("peak_vram_mb: 512.0")
'''

TOY_PYPROJECT = '''\
[project]
name = "toy"
version = "0.1.0"
requires-python = ">=3.10"
dependencies = []

[tool.uv]
package = false
'''


def env_with_uv(**extra):
    return {"PATH": UV_DIR + os.pathsep + os.environ["PATH"], "UV_OFFLINE": "1", **extra}


def toy_project(path: Path) -> Path:
    new_repo(path)
    (path / "train.py").write_text(TOY_TARGET)
    (path / "pyproject.toml").write_text(TOY_PYPROJECT)
    (path / ".gitignore").write_text(".venv/\nuv.lock\n")
    (path / "progress.png").write_bytes(b"\x89PNG the person's own plot")
    commit_all(path)
    return path


def run_and_log(p, env, description, status=None):
    """One run, logged as its recommendation says (or as `status`)."""
    out = script(p, "run-experiment", env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    decision = recommendation(out).split()[1].rstrip(":")
    ok(script(p, "log-experiment", "--status", status or decision, "--description", description,
              env=env))
    return out.stdout, decision


def test_an_own_project_maximises_val_acc_run_with_uv(tmp_path):
    p = toy_project(tmp_path / "toy")
    env = env_with_uv()
    out = ok(script(p, "setup-session", "--tag", "acc1", "--metric", "val_acc", "--budget", "30",
                    env=env)).stdout
    assert "project    your own training repository" in out
    assert "run        uv run train.py" in out
    assert "val_acc, higher is better" in out                      # guessed from the name
    assert "enforced by the script itself" in out and "does not read AUTORESEARCH_TIME_BUDGET" in out
    assert "seeds      not varied (the script sets its own)" in out
    assert "off" in out and "bench.py" in out
    config = records(p)[0]
    assert config["project"] == "own" and config["run"] == "uv run train.py"
    assert config["baseline_runs"] == 1 and config["seeds"] is False
    assert config["plot"] == "autoresearch-progress.png"           # theirs is tracked

    first, decision = run_and_log(p, env, "baseline")
    assert decision == "keep" and "METRIC val_acc=0.80" in first
    set_constant(p, "ACC", 0.85)
    second, decision = run_and_log(p, env, "more epochs")
    assert decision == "keep" and "one run: the script sets its own seed" in second
    set_constant(p, "ACC", 0.70)
    _, decision = run_and_log(p, env, "smaller model")
    assert decision == "discard"

    assert tsv_rows(p)[0][:3] == ["commit", "val_acc", "memory_gb"]
    assert [r[4] for r in tsv_rows(p)[1:]] == ["keep", "keep", "discard"]
    assert tsv_rows(p)[1][2] == "0.5"                              # peak_vram_mb, in GB
    ok(script(p, "summarize", "--html", env=env))
    summary = (p / "autoresearch-summary.md").read_text()
    assert "val_acc (higher is better)" in (p / "autoresearch-summary.html").read_text()
    assert "your own training repository" in summary and "uv run train.py" in summary
    assert "higher is better" in summary and "climbmix" not in summary
    assert (p / "autoresearch-progress.png").stat().st_size > 10_000
    assert (p / "progress.png").read_bytes() == b"\x89PNG the person's own plot"
    assert git(p, "status", "--porcelain", "--untracked-files=no") == ""
    ok(script(p, "end-session", env=env))
    message = ok(script(p, "finalize", env=env)).stdout
    assert "climbmix" not in message and "val_acc" in message


def test_a_setup_that_fails_leaves_no_branch_and_can_run_again(tmp_path):
    """The scripts' interpreter lacks jsonschema and may not switch (the case of a
    person's venv made by `uv sync`): setup stops before it changes anything."""
    p = toy_project(tmp_path / "toy")
    bare = tmp_path / "python3"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    proc = subprocess.run([str(bare), str(SCRIPTS / "setup-session"), "--tag", "t", "--metric",
                           "val_acc"], cwd=p, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env_with_uv(AUTORESEARCH_NO_REEXEC="1")})
    assert proc.returncode != 0
    assert git(p, "branch", "--list", "autoresearch/*") == ""
    assert not (p / "autoresearch.jsonl").exists()
    ok(script(p, "setup-session", "--tag", "t", "--metric", "val_acc", env=env_with_uv()))


@pytest.mark.parametrize("case,args,expected", [
    ("metric", ["--metric", "val_f1"], "train.py never prints val_f1: print `val_f1: <value>`"),
    ("budget", ["--metric", "val_acc", "--budget-via", "env"],
     "train.py never reads AUTORESEARCH_TIME_BUDGET"),
    ("uv", ["--metric", "val_acc"], "uv not found (from --run 'uv run train.py'): install uv, or "
                                    "pass --run 'python train.py'"),
    ("dirty", ["--metric", "val_acc"], "uncommitted changes in train.py: commit or stash them"),
    ("data", ["--metric", "val_acc", "--data-check", "test -d data/"],
     "the data check `test -d data/` failed"),
])
def test_every_setup_error_is_one_line_that_says_what_to_do(tmp_path, case, args, expected):
    p = toy_project(tmp_path / "toy")
    env = env_with_uv()
    if case == "uv":
        env["PATH"] = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                                      if not os.path.exists(os.path.join(d, "uv")))
    if case == "dirty":
        (p / "train.py").write_text(TOY_TARGET + "# edited\n")
    proc = script(p, "setup-session", "--tag", "t", *args, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert git(p, "branch", "--list", "autoresearch/*") == ""


def test_a_directory_that_is_not_a_repository_says_so(tmp_path):
    (tmp_path / "plain").mkdir()
    proc = script(tmp_path / "plain", "setup-session", "--tag", "t")
    assert proc.returncode == 2 and "is not inside a git repository" in proc.stderr
    assert "git init" in proc.stderr


# --- karpathy/autoresearch, as its clone is laid out ---------------------------------

K_PREPARE = '''\
"""One-time data preparation for autoresearch experiments (clone-shaped stand-in)."""
import os

MAX_SEQ_LEN = 2048       # context length
TIME_BUDGET = 300        # training time budget in seconds (5 minutes)
EVAL_TOKENS = 40 * 524288

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")
DATA_DIR = os.path.join(CACHE_DIR, "data")
TOKENIZER_DIR = os.path.join(CACHE_DIR, "tokenizer")


def evaluate_bpb(model, tokenizer, batch_size):
    return model


if __name__ == "__main__":
    os.makedirs(DATA_DIR, exist_ok=True)
    os.makedirs(TOKENIZER_DIR, exist_ok=True)
    open(os.path.join(DATA_DIR, "shard_06542.parquet"), "wb").close()
    open(os.path.join(TOKENIZER_DIR, "tokenizer.pkl"), "wb").close()
    print("Done! Ready to train.")
'''

K_TRAIN = '''\
"""Autoresearch pretraining script (clone-shaped stand-in): the summary block as the
original prints it; the training itself is skipped."""
from prepare import MAX_SEQ_LEN, TIME_BUDGET, evaluate_bpb

VAL_BPB = 0.997900
val_bpb = evaluate_bpb(VAL_BPB, None, 1)
print("---")
print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {TIME_BUDGET:.1f}")
print("total_seconds:    325.9")
print("peak_vram_mb:     45060.2")
print("mfu_percent:      39.80")
print("total_tokens_M:   499.6")
print("num_steps:        953")
print("num_params_M:     50.3")
print("depth:            8")
'''

K_PYPROJECT = '''\
[project]
name = "autoresearch"
version = "0.1.0"
requires-python = ">=3.10"
dependencies = []
'''


def karpathy_clone(path: Path) -> Path:
    new_repo(path)
    (path / "prepare.py").write_text(K_PREPARE)
    (path / "train.py").write_text(K_TRAIN)
    (path / "program.md").write_text("# autoresearch\n\nThe agent edits train.py only.\n")
    (path / "pyproject.toml").write_text(K_PYPROJECT)
    (path / "progress.png").write_bytes(b"\x89PNG committed by the clone")
    (path / ".gitignore").write_text(".venv/\n__pycache__/\n")
    subprocess.run(["uv", "lock", "--offline", "-q"], cwd=path, check=True,
                   env={**os.environ, **env_with_uv()})
    commit_all(path, "clone")
    return path


def test_a_karpathy_clone_is_recognised_and_runs_as_it_is(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    p = karpathy_clone(tmp_path / "autoresearch")
    env = env_with_uv(HOME=str(home))
    missing = script(p, "setup-session", "--tag", "k1", env=env)
    assert missing.returncode == 2
    assert "prepare the data with: uv run prepare.py" in missing.stderr
    ok(subprocess.run(["uv", "run", "prepare.py"], cwd=p, capture_output=True, text=True,
                      env={**os.environ, **env}))
    out = ok(script(p, "setup-session", "--tag", "k1", "--budget", "60", env=env)).stdout
    assert "project    a karpathy/autoresearch clone" in out
    assert "run        uv run train.py" in out and "val_bpb, lower is better" in out
    assert ".cache/autoresearch/tokenizer/tokenizer.pkl" in out             # its data check
    assert "300 s per run (killed after 720 s), enforced by the script itself" in out
    assert "--budget 60 cannot reach it: runs get 300 s" in out
    assert "  read-only  prepare.py\n" in out                               # its fixed file, named
    assert "test split none: this prepare.py holds out validation only" in " ".join(out.split())
    config = records(p)[0]
    assert config["project"] == "karpathy" and "prepare.py" in config["fixed_files"]
    assert config["measure"] == "output" and config["plot"] == "autoresearch-progress.png"
    first, decision = run_and_log(p, env, "baseline")
    assert "METRIC peak_vram_mb=45060.2" in first
    assert tsv_rows(p)[1][1:3] == ["0.997900", "44.0"]
    ok(script(p, "summarize", env=env))
    summary = (p / "autoresearch-summary.md").read_text()
    assert "a karpathy/autoresearch clone" in summary
    assert "Not scored: this session's harness has no test split" in summary
    assert (p / "progress.png").read_bytes() == b"\x89PNG committed by the clone"
