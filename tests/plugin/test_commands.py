"""Every plugin command as a program: its --help, its runner, what it says outside a
session, from a subdirectory, and under the session's interpreter."""

import os
import subprocess
import sys

import pytest

from plugin_helpers import SCRIPTS, make_project, ok, records, script


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


def test_scripts_switch_to_the_session_interpreter(tmp_path):
    """Called by a bare `python3`, the scripts re-run under the interpreter the session
    was set up with (the one that has matplotlib and trains)."""
    p = make_project(tmp_path / "p")
    wrapper = tmp_path / "session-python"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics", "--budget", "1",
              "--python", str(wrapper)))
    ok(script(p, "run-experiment"))               # the run itself uses the session interpreter
    ok(script(p, "summarize", "--no-plot"))
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "prepare.py --dataset classics --verify"      # setup's data check
    assert "m.version('torch')" in calls[1]                           # its framework, recorded
    assert calls[2].endswith("run-experiment") and calls[3] == "train.py"
    assert calls[4].endswith("summarize --no-plot") and len(calls) == 5
