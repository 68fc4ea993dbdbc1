"""run-experiment (core/runner): a run's compact report, its failure statuses, the
timeout and stop signals that take the whole process group down, the compile cache,
the fixed-file and data checks, and the target's --checks."""

import os
import signal
import subprocess
import sys
import time

import pytest

from plugin_helpers import SCRIPTS, edit_target, hang_child, hang_children, make_project, ok, records, run_and_log, script


def test_run_ok_prints_compact_metrics_and_status(project):
    proc = ok(script(project, "run-experiment"))
    lines = proc.stdout.splitlines()
    assert lines[0] == "METRIC val_bpb=1.0"
    assert "METRIC avg_tok_sec=1000000" in lines
    assert any(l.startswith("status: ok run 1") and "seed 42" in l for l in lines)
    # noise-aware measures the baseline 3 times (on new seeds) before any change
    assert "recommend: rerun: baseline sample 1 of 3" in proc.stdout
    assert len(lines) <= 10 and "step 00001" not in proc.stdout      # never the log itself
    assert "dataset classics, budget 1s" in (project / "run.log").read_text()


@pytest.mark.parametrize("mode,status", [("crash", "crash"), ("nan", "nan"), ("nometric", "crash")])
def test_run_failures_have_their_own_status_and_show_the_log_tail(project, mode, status):
    edit_target(project, MODE=mode)
    proc = script(project, "run-experiment")
    assert proc.returncode == 1
    assert f"status: {status} run 1" in proc.stdout
    assert "last" in proc.stdout and "lines of run.log" in proc.stdout
    if mode == "crash":
        assert "shape mismatch in attention" in proc.stdout
    if mode == "nan":
        assert "FAIL: loss is NaN at step 12" in proc.stdout


def gone(pid, wait=5.0):
    """True once `pid` has exited (a zombie waiting for a reaper counts as exited);
    a survivor is killed so the test leaves nothing behind."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if not os.path.isdir("/proc"):          # no procfs (macOS): ask the kernel
                os.kill(pid, 0)
            else:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return False


def test_run_timeout_kills_the_whole_process_group(project):
    edit_target(project, MODE="hang")
    start = time.monotonic()
    proc = script(project, "run-experiment", "--timeout", "2")
    assert proc.returncode == 1 and "status: timeout" in proc.stdout
    assert "process group killed" in proc.stdout
    assert time.monotonic() - start < 20
    assert (project / "data" / "hang_child.pid").exists()
    assert hang_children(project) == [], "the target's child process survived the timeout"


COMPILE_PROBE = """
if os.environ.get("PROBE_COMPILE"):
    import torch
    torch.compile(lambda x: x * 2 + 1)(torch.ones(8))   # a real compile: it fills the cache
print("compile cache:", os.environ.get("TORCHINDUCTOR_CACHE_DIR"), flush=True)
"""


def test_runs_compile_into_the_session_cache(project, tmp_path):
    """torch.compile's cache is the session's (.autoresearch/compile-cache/<tag>/), so it
    lasts between runs wherever /tmp does not; in the sandbox it is the one folder of
    .autoresearch the run may write, and a TORCHINDUCTOR_CACHE_DIR in the caller's
    environment does not move it; the next session starts without the old cache."""
    pytest.importorskip("torch")
    with open(project / "train.py", "a") as f:
        f.write(COMPILE_PROBE)
    cache = project / ".autoresearch" / "compile-cache" / "t1"
    ok(script(project, "run-experiment", env={"PROBE_COMPILE": "1"}, timeout=300))
    assert f"compile cache: {cache}" in (project / "run.log").read_text()
    assert list(cache.glob("fxgraph/**/*")), "the run's compiled graph is in the session's cache"
    mine = tmp_path / "my-cache"
    ok(script(project, "run-experiment", env={"TORCHINDUCTOR_CACHE_DIR": str(mine)}))
    assert f"compile cache: {cache}" in (project / "run.log").read_text()
    assert not mine.exists()
    ok(script(project, "log-experiment", "--status", "keep", "--description", "baseline"))
    proc = ok(script(project, "setup-session", "--tag", "t2", "--dataset", "classics", "--budget", "1"))
    assert "deleted the earlier sessions' compile cache" in proc.stdout
    assert not (project / ".autoresearch" / "compile-cache").exists()
    ok(script(project, "run-experiment"))
    assert f"compile cache: {project / '.autoresearch' / 'compile-cache' / 't2'}" in \
        (project / "run.log").read_text()


def test_run_refuses_when_a_fixed_file_changed(project):
    with open(project / "prepare.py", "a") as f:
        f.write("# tweak the evaluation\n")
    proc = script(project, "run-experiment")
    assert proc.returncode == 3
    assert "status: tampered (prepare.py changed since setup)" in proc.stdout
    assert "repair: run resume-session" in proc.stdout
    assert not (project / "run.log").exists()        # it did not even run
    proc = script(project, "log-experiment", "--status", "keep", "--description", "x",
                  "--metric", "0.5")
    assert proc.returncode == 2 and "nothing was recorded" in proc.stderr
    assert len(records(project)) == 1
    ok(script(project, "resume-session"))            # the repair it names works
    assert "tweak the evaluation" not in (project / "prepare.py").read_text()
    assert script(project, "run-experiment").returncode == 0


def test_a_run_cannot_tamper_with_data(project):
    """The project is read-only in the run's sandbox: the write fails, and a run
    that failed is never recorded as a result."""
    before = (project / "datasets/classics/book.txt").read_text()
    (project / "train.py").write_text((project / "train.py").read_text().replace(
        'if MODE == "crash":',
        'open("datasets/classics/book.txt", "a").write("more")\nif MODE == "crash":'))
    proc = script(project, "run-experiment")
    assert proc.returncode == 1 and "status: crash" in proc.stdout
    assert "Read-only file system" in proc.stdout
    assert (project / "datasets/classics/book.txt").read_text() == before
    proc = script(project, "log-experiment", "--status", "keep", "--description", "x")
    assert proc.returncode == 2 and "nothing was recorded" in proc.stderr
    assert len(records(project)) == 1


def start_hanging_run(project):
    """run-experiment on a target that hangs with a child; returns (runner, child pid)."""
    edit_target(project, MODE="hang")
    runner = subprocess.Popen([sys.executable, str(SCRIPTS / "run-experiment")], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return runner, hang_child(project)


def test_stopping_run_experiment_takes_the_run_down_with_it(project):
    """The caller's own timeout (the Bash tool's, say) must not leave training behind."""
    runner, child = start_hanging_run(project)
    runner.send_signal(signal.SIGTERM)
    runner.communicate(timeout=20)
    assert runner.returncode == 128 + signal.SIGTERM
    assert gone(child), "the run's child process outlived run-experiment"


def test_a_stop_signal_inside_the_wait_still_takes_the_run_down(project):
    """The signal can land while Popen.wait holds its lock (between its waitpid and its
    release). A handler that waited on the run there would wait for that lock forever."""
    edit_target(project, MODE="hang")
    driver = f"""
import os, signal, subprocess, sys
sys.path.insert(0, {str(SCRIPTS)!r})
from core import records, runner
try_wait, calls = subprocess.Popen._try_wait, []
def signalled_inside(self, flags):
    calls.append(flags)
    if len(calls) == 20:                     # the run is going by now: stop, lock held
        os.kill(os.getpid(), signal.SIGTERM)
    return try_wait(self, flags)
subprocess.Popen._try_wait = signalled_inside
config = records.read_config({str(project)!r})
runner.run_target({str(project)!r}, config, 60, 1)
"""
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    child = hang_child(project)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert gone(child)


def test_a_run_dies_with_a_killed_runner(project):
    """SIGKILL cannot be caught, but the sandbox dies with the runner that started it
    (bubblewrap's --die-with-parent), and every process of the run with it."""
    runner, child = start_hanging_run(project)
    runner.kill()
    runner.communicate(timeout=20)
    assert gone(child, wait=2), "the run outlived its killed runner"
    edit_target(project, MODE="ok")
    proc = ok(script(project, "run-experiment"))
    assert "stopped a leftover run" not in proc.stdout       # there was none left


def test_a_run_that_fails_its_checks_is_never_kept(tmp_path):
    p = make_project(tmp_path / "p")
    ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics", "--budget", "1",
              "--policy", "strict", "--checks", "grep -q 'VAL_BPB = 1' train.py || "
              "(echo 'test_model: expected the checked value' && exit 3)"))
    run_and_log(p, "keep", "baseline")
    edit_target(p, VAL_BPB=0.5)                          # better, but the checks fail
    proc = script(p, "run-experiment")
    assert proc.returncode == 1 and "status: checks_failed" in proc.stdout
    assert "exited 3" in proc.stdout and "test_model: expected the checked value" in proc.stdout
    refused = script(p, "log-experiment", "--status", "keep", "--description", "x")
    assert refused.returncode == 2 and "--status checks_failed" in refused.stderr
    ok(script(p, "log-experiment", "--status", "checks_failed", "--description", "half the loss"))
    r = records(p)[-1]
    assert r["status"] == "checks_failed" and r["metric"] == 0.5
    assert "VAL_BPB = 1.0" in (p / "train.py").read_text()           # reverted
    ok(script(p, "summarize", "--no-plot"))
    assert "**failed its checks (never kept)**: 1" in (p / "autoresearch-summary.md").read_text()
