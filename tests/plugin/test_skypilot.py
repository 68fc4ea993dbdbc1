"""The SkyPilot backend without a cloud: the task YAML through SkyPilot's own loader
(skipped where SkyPilot is not installed), and the backend's command lines and their
parsing against a fake `sky` first on PATH that runs each job on this machine. The
real `sky` is never called: it would start an API server and want credentials."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from plugin_helpers import (PLUGIN, WAVE_TARGET, edit_target, git, log_as_told, make_project, ok,
                            records, runs, script, stop_workers, wait)


TASK = PLUGIN / "skypilot" / "candidate.yaml"


FAKE_SKY = r'''#!PYTHON
"""A stand-in for the sky CLI: records every call, runs each job here when its
logs are asked for, and answers as the real one does (job ids, --status codes).
Workers call it side by side: each job has its own file, ids come under a lock."""
import fcntl, json, os, subprocess, sys
HERE = os.path.dirname(os.path.abspath(__file__))
args = sys.argv[1:]
with open(os.path.join(HERE, "sky-calls.log"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.write(json.dumps(args) + "\n")

def job_file(job):
    return os.path.join(HERE, f"sky-job-{job}.json")

def option(name):
    return args[args.index(name) + 1] if name in args else None

if args[:1] in (["launch"], ["exec"]) or args[:2] == ["jobs", "launch"]:
    envs = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--env")
    with open(os.path.join(HERE, "sky-ids"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        job = str(len(f.read().split()) + 1)
        f.write(job + "\n")
    json.dump({"workdir": option("--workdir"), "envs": envs}, open(job_file(job), "w"))
    print("Considered resources ...")
    print(f"Job submitted, ID: {job}")
elif args[:1] == ["logs"] and "--status" in args:
    code = json.load(open(job_file(args[-1]))).get("code")
    print("SUCCEEDED" if code == 0 else "FAILED")
    sys.exit(0 if code == 0 else 100)
elif args[:1] == ["logs"] or args[:2] == ["jobs", "logs"]:
    job = json.load(open(job_file(args[-1])))
    proc = subprocess.run([sys.executable, job["envs"]["AUTORESEARCH_TARGET"]], cwd=job["workdir"],
                          env={**os.environ, **job["envs"]})
    job["code"] = proc.returncode
    json.dump(job, open(job_file(args[-1]), "w"))
    sys.exit(0 if proc.returncode == 0 else 100)
elif args[:1] in (["cancel"], ["down"]) or args[:2] == ["jobs", "cancel"]:
    print("ok")
else:
    print(f"fake sky: unexpected {args}", file=sys.stderr)
    sys.exit(2)
'''


def test_the_task_yaml_validates_with_skypilots_loader(tmp_path):
    sky = pytest.importorskip("sky")
    task = sky.Task.from_yaml(str(TASK))
    assert task.name == "autoresearch-candidate" and task.run and task.setup
    assert "prepare.py" in task.setup and "AUTORESEARCH_TARGET" in task.run
    assert set(task.envs) >= {"AUTORESEARCH_DATASET", "AUTORESEARCH_TIME_BUDGET",
                              "AUTORESEARCH_SEED", "AUTORESEARCH_TARGET"}
    # The loader really checks: a misspelt field is refused.
    bad = tmp_path / "bad.yaml"
    bad.write_text(TASK.read_text().replace("\nsetup:", "\nsteup:"))
    with pytest.raises(Exception, match="steup"):
        sky.Task.from_yaml(str(bad))


@pytest.fixture
def sky_project(tmp_path):
    p = make_project(tmp_path / "project")
    (p / "train.py").write_text(WAVE_TARGET)
    git(p, "commit", "-qam", "wave stand-in")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "sky"
    fake.write_text(FAKE_SKY.replace("PYTHON", sys.executable))
    fake.chmod(0o755)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    yield p, env, bindir
    stop_workers(p)


def calls(bindir: Path) -> list[list[str]]:
    path = bindir / "sky-calls.log"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def test_candidates_run_as_skypilot_jobs_on_a_reused_pool(sky_project):
    p, env, bindir = sky_project

    def run(*args, **kw):
        return ok(script(p, *args, env=env, **kw)).stdout

    out = run("setup-session", "--tag", "sky1", "--dataset", "classics", "--budget", "1",
              "--policy", "strict", "--workers", "2", "--backend", "skypilot",
              "--accelerators", "H100:1", "--timeout", "30")
    assert "2 worker(s) on skypilot (ar-sky1-0, ar-sky1-1)" in out
    config = records(p)[0]
    assert config["backend"] == "skypilot" and config["skypilot"] == {
        "prefix": "ar-sky1", "clusters": 2, "accelerators": "H100:1", "managed": False}
    r = script(p, "run-experiment", env=env)
    assert r.returncode == 2 and "runs on SkyPilot" in r.stderr and "new-candidate --unchanged" in r.stderr
    # The baseline, as a candidate of the unchanged code, on the pool.
    run("new-candidate", "--unchanged", "--description", "baseline")
    run("submit-wave")
    first = wait(p, 60, env)
    assert "recommend: keep: baseline" in first and "on ar-sky1-0" in first, first
    log_as_told(p, first, env)
    base = runs(p)[0]
    assert base["backend"] == "skypilot" and base["worker"] == "ar-sky1-0"
    assert base["commit_sha"] == config["base_commit"]
    names = []
    for gain in ("GAIN_A", "GAIN_B"):
        out = run("new-candidate", "--description", f"{gain} up")
        names.append(re.search(r"candidate (c\d+)", out).group(1))
        edit_target(p / ".autoresearch" / "worktrees" / names[-1], **{gain: 0.1})
    run("submit-wave")
    for _ in range(3):                  # two results, and the loser re-based on the winner
        log_as_told(p, wait(p, 60, env), env)
    assert runs(p)[-1]["metric"] == pytest.approx(0.8) and runs(p)[-1]["rebased_from"] in names

    submitted = [c for c in calls(bindir) if c[0] in ("launch", "exec")]
    launches = [c for c in submitted if c[0] == "launch"]
    # One `sky launch` per pool cluster (setup runs there once), `sky exec` after that.
    assert sorted(c[c.index("-c") + 1] for c in launches) == ["ar-sky1-0", "ar-sky1-1"]
    assert len(submitted) == 4 and {c[1] for c in submitted if c[0] == "exec"} <= {"ar-sky1-0", "ar-sky1-1"}
    for c in launches:
        assert c[c.index("--gpus") + 1] == "H100:1" and "--down" in c and "-d" in c
        assert c[c.index("-i") + 1] == "10" and str(TASK) in c
    for c in submitted:
        workdir = c[c.index("--workdir") + 1]
        assert workdir.startswith(str(p / ".autoresearch" / "worktrees" / "c"))
        envs = dict(c[i + 1].split("=", 1) for i, a in enumerate(c) if a == "--env")
        assert envs["AUTORESEARCH_TIME_BUDGET"] == "1" and envs["AUTORESEARCH_TARGET"] == "train.py"
        assert envs["AUTORESEARCH_DATASET"] == "classics" and envs["AUTORESEARCH_SEED"].isdigit()
    assert any(c[:2] == ["logs", "--status"] for c in calls(bindir))

    out = run("end-session")
    downs = [c for c in calls(bindir) if c[0] == "down"]
    assert sorted(c[-1] for c in downs) == ["ar-sky1-0", "ar-sky1-1"] and all("-y" in c for c in downs)
    assert re.search(r"SkyPilot: 2 cluster\(s\) torn down; GPU-hours used: \d+\.\d\d", out), out


def test_a_failed_job_is_a_crash_and_a_missing_sky_says_what_to_install(sky_project, tmp_path):
    p, env, bindir = sky_project
    bare = {"PATH": "/usr/bin:/bin"}            # git, and no sky
    if shutil.which("sky", path=bare["PATH"]) is None:
        r = script(p, "setup-session", "--tag", "s", "--backend", "skypilot", env=bare)
        assert r.returncode == 2 and "pip install 'autoresearch[skypilot]'" in r.stderr
    r = script(p, "setup-session", "--tag", "s", "--clusters", "2")
    assert r.returncode == 2 and "are for --backend skypilot" in r.stderr
    ok(script(p, "setup-session", "--tag", "s2", "--dataset", "classics", "--budget", "1",
              "--policy", "strict", "--backend", "skypilot", "--managed", env=env))
    ok(script(p, "new-candidate", "--unchanged", "--description", "baseline", env=env))
    ok(script(p, "submit-wave", env=env))
    log_as_told(p, wait(p, 60, env), env)
    out = ok(script(p, "new-candidate", "--description", "breaks", env=env)).stdout
    name = re.search(r"candidate (c\d+)", out).group(1)
    edit_target(p / ".autoresearch" / "worktrees" / name, MODE="crash")
    ok(script(p, "submit-wave", env=env))
    out = wait(p, 60, env)
    assert "status: crash" in out and "shape mismatch in attention" in out, out
    managed = [c for c in calls(bindir) if c[:2] == ["jobs", "launch"]]
    assert len(managed) == 2 and all(c[c.index("-n") + 1].startswith("s2-c") for c in managed)
    assert [c for c in calls(bindir) if c[:2] == ["jobs", "logs"]], "logs come back through sky jobs logs"
