"""Every plugin command as a program: its --help, its runner, what it says outside a
session, from a subdirectory, and under the session's interpreter."""

import os
import subprocess
import sys

import pytest

from plugin_helpers import SCRIPTS, make_project, ok, records, script, set_up_project


ALL_SCRIPTS = ["setup-session", "run-experiment", "log-experiment", "parse-metrics",
               "confidence", "summarize", "resume-session", "end-session", "finalize"]


@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_every_script_has_help_and_is_executable(name):
    path = SCRIPTS / name
    assert os.access(path, os.X_OK), f"{name} is not executable"
    proc = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and f"usage: {name}" in proc.stdout
    # The command is a thin runner; its code is a module that tools can read.
    assert (SCRIPTS / (name.replace("-", "_") + ".py")).is_file()


def test_scripts_outside_a_session_say_how_to_start_one(tmp_path):
    p = make_project(tmp_path / "p")
    for name in ("run-experiment", "confidence", "summarize", "resume-session"):
        proc = script(p, name)
        assert proc.returncode == 2
        assert "setup-session" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_scripts_work_from_a_subdirectory(project):
    sub = project / "datasets" / "classics"
    proc = ok(script(project, "run-experiment", cwd=sub))
    assert "status: ok" in proc.stdout
    ok(script(project, "log-experiment", "--status", "keep", "--description", "baseline", cwd=sub))
    assert len(records(project)) == 2


def test_runs_use_the_session_interpreter_and_the_scripts_any_that_has_their_needs(tmp_path):
    """The session's interpreter checks the data and trains; the scripts themselves
    run on whatever interpreter has jsonschema, here the one that started them."""
    p = make_project(tmp_path / "p")
    wrapper = tmp_path / "session-python"
    # Each call is noted in a file and on stderr: the run's sandbox cannot write the
    # file, but its stderr goes to run.log.
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls" 2>/dev/null\necho "called with: $@" >&2\n'
                       f'exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics", "--budget", "1",
              "--python", str(wrapper)))
    ok(script(p, "run-experiment"))               # the run itself uses the session interpreter
    ok(script(p, "summarize", "--no-plot"))
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "prepare.py --dataset classics --verify"      # setup's data check
    assert "importlib.metadata" in calls[1] and calls[1].endswith(" torch")   # its framework, recorded
    assert len(calls) == 2                                            # summarize: not the wrapper
    assert "called with: train.py" in (p / "run.log").read_text()


def test_a_python3_without_the_scripts_needs_hands_over_to_one_that_has_them(tmp_path):
    """Started by a python3 that cannot import matplotlib (here: site-packages off), the
    summary re-runs itself under the session's interpreter; told not to, it fails."""
    p = set_up_project(tmp_path / "p", "--tag", "t", "--dataset", "classics", "--budget", "1")
    bare = tmp_path / "python3"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "AUTORESEARCH_NO_REEXEC"}
    proc = subprocess.run([str(bare), str(SCRIPTS / "summarize")], cwd=p, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (p / "progress.png").is_file()
    (p / "progress.png").unlink()
    stuck = subprocess.run([str(bare), str(SCRIPTS / "summarize")], cwd=p,
                           env={**env, "AUTORESEARCH_NO_REEXEC": "1"}, capture_output=True, text=True,
                           timeout=60)
    assert stuck.returncode != 0 and "matplotlib" in stuck.stderr
