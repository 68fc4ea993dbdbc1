"""The machine-load monitor (core/monitor): a run beside other load is disturbed and not
a sample; a quiet run is not; recorded readings parse."""

import json
import os
import subprocess
import sys
import time

import pytest

from core import monitor
from plugin_helpers import make_project, ok, recommendation, script, set_constant

from .conftest import SEEDED_TARGET


HOG = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass\n"


def machine_busy(seconds=1.0):
    """Share of the CPUs busy over a short look, before a test that needs quiet."""
    a = monitor.read_proc_stat()
    time.sleep(seconds)
    b = monitor.read_proc_stat()
    return (b["busy"] - a["busy"] + b["steal"] - a["steal"]) / ((os.cpu_count() or 1) * seconds)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_a_run_beside_a_cpu_hog_is_disturbed_and_not_a_sample(session):
    set_constant(session, "BUSY", 6.0)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 1)]
    try:
        proc = ok(script(session, "run-experiment", timeout=120))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert "machine: DISTURBED" in proc.stdout
    assert recommendation(proc).startswith("recommend: rerun: disturbed: other processes used")
    pending = json.loads((session / ".autoresearch" / "pending.json").read_text())
    assert pending["samples"] == [] and pending["disturbed"][0]["seed"] == 42
    assert pending["load"]["others"] > monitor.DISTURBED_OTHERS


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_a_session_on_a_shared_machine_judges_every_run(tmp_path):
    """setup-session --no-load-check: the setting is the session's (no variable on each
    call), the research config says so, and a run beside a CPU hog is a sample whose
    status does not call the machine quiet."""
    p = make_project(tmp_path / "proj")
    (p / "train.py").write_text(SEEDED_TARGET)
    subprocess.run(["git", "commit", "-qam", "seeded stand-in"], cwd=p, check=True)
    env = {"AUTORESEARCH_LOAD_CHECK": ""}        # the suite's own switch, off here
    out = ok(script(p, "setup-session", "--tag", "s", "--dataset", "classics", "--budget", "1",
                    "--no-load-check", env=env)).stdout
    assert "load check off: runs are judged whatever else the machine runs" in out
    set_constant(p, "BUSY", 6.0)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 1)]
    try:
        proc = ok(script(p, "run-experiment", timeout=120, env=env))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert "machine: load not checked (other processes" in proc.stdout, proc.stdout
    assert "machine: quiet" not in proc.stdout and "DISTURBED" not in proc.stdout
    assert "disturbed" not in recommendation(proc)
    pending = json.loads((p / ".autoresearch" / "pending.json").read_text())
    assert len(pending["samples"]) == 1 and pending["disturbed"] == []


@pytest.mark.quiet
@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_a_quiet_run_is_not_disturbed(session):
    if machine_busy() > monitor.DISTURBED_OTHERS / 2:
        pytest.skip("the machine is busy with other work; a quiet run cannot be shown now")
    set_constant(session, "BUSY", 6.0)
    proc = ok(script(session, "run-experiment", timeout=120))
    assert "machine: quiet" in proc.stdout, proc.stdout


def test_gpu_and_ps_readings_parse_recorded_output():
    smi = "12345, 1024\n23456, 20480\n"
    assert monitor.parse_gpu_pids(smi) == [12345, 23456]
    assert monitor.parse_gpu_pids("No running processes found\n[N/A], [N/A]\n") == []
    ps = "    1     1   0:01.50\n  812   812  12:03.25\n  900   812 1-02:03:04\n bad line\n"
    assert monitor.parse_ps_cputimes(ps) == {1: (1, 1.5), 812: (812, 723.25), 900: (812, 93784.0)}
