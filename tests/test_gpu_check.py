"""benchmarks/gpu_check.sh, the one command for a lent GPU machine, run whole on the CPU
(--cpu: toy budgets): train.py, bench.py and a three-run session through the plugin's
scripts end in one table with a number in every column; a missing piece of what must
be carried is a one-line error before anything runs."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.sh")
COLUMNS = ["step", "val_bpb", "tok/s", "MFU %", "peak MB", "compile s", "wall s",
           "run-experiment overhead s", "log-experiment s"]
NUMBER = re.compile(r"^-?[0-9][0-9,]*(\.[0-9]+)?$")

pytestmark = pytest.mark.xdist_group("gpucheck")


def gpu_check(args, carry, tmp_path, timeout=240):
    env = {**os.environ, "GPU_CHECK_PYTHON": sys.executable, "GPU_CHECK_DIR": str(carry),
           "TMPDIR": str(tmp_path)}
    env.pop("AUTORESEARCH_CACHE", None)
    return subprocess.run(["bash", SCRIPT, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def carry(tmp_path, classics_cache):
    """What --prepare leaves for the GPU machine, less the wheels (this interpreter has
    jsonschema): the prepared classics cache under cache/."""
    folder = tmp_path / "carried"
    shutil.copytree(classics_cache["AUTORESEARCH_CACHE"], folder / "cache")
    return folder


def table(stdout):
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    header, rule, *rows = lines
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    return cells(header), {cells(row)[0]: dict(zip(cells(header), cells(row))) for row in rows}


def test_the_whole_check_runs_on_the_cpu_and_prints_one_table(carry, tmp_path):
    out = tmp_path / "out"
    result = gpu_check(["--cpu", "--out", str(out)], carry, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    header, rows = table(result.stdout)
    assert header == COLUMNS
    runs = [name for name in rows if name.startswith("session run ")]
    trains = [name for name in rows if name.startswith("train.py ")]
    assert len(runs) == 3 and len(trains) == 1
    # Every training run has a number in every column; MFU is n/a only because a CPU's
    # peak is unknown (on the GPU machine it is a number), and train.py on its own has
    # no plugin script around it.
    for name in runs + trains:
        for column in COLUMNS[1:]:
            value = rows[name][column]
            if name in trains and column in COLUMNS[-2:]:
                assert value == "-"
            elif column == "MFU %":
                assert value == "n/a"
            else:
                assert NUMBER.match(value), (name, column, value)
    for name in runs:
        assert 2.0 < float(rows[name]["val_bpb"]) < 13.0       # bits per byte of a barely trained model
        assert float(rows[name]["run-experiment overhead s"]) >= 0
        assert float(rows[name]["log-experiment s"]) > 0
    bench = next(rows[n] for n in rows if n.startswith("bench.py"))
    assert NUMBER.match(bench["tok/s"]) and NUMBER.match(bench["compile s"])
    assert "whole check:" in result.stdout
    # --out: the same table, and the steps' logs in one file (the session's runs in it).
    assert (out / "gpu_check.md").read_text() in result.stdout
    log = (out / "gpu_check.log").read_text()
    assert "===== run3.log" in log and "status: ok" in log
    # The throwaway folder is gone.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("gpu_check.")]


def test_what_is_not_carried_is_a_one_line_error(tmp_path):
    empty = tmp_path / "nothing-carried"
    result = gpu_check(["--cpu"], empty, tmp_path, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no prepared classics cache" in result.stderr and "--prepare" in result.stderr


def test_bad_arguments_say_what_to_do(tmp_path):
    result = gpu_check(["--fast"], tmp_path, tmp_path, timeout=30)
    assert result.returncode == 1 and "unknown argument '--fast'" in result.stderr and "--help" in result.stderr
    budget = subprocess.run(["bash", SCRIPT, "--cpu"], env={**os.environ, "GPU_CHECK_RUN_BUDGET": "soon"},
                            capture_output=True, text=True, timeout=30)
    assert budget.returncode == 1 and "GPU_CHECK_RUN_BUDGET=soon" in budget.stderr
    helped = subprocess.run(["bash", SCRIPT, "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--prepare" in helped.stdout and "--cpu" in helped.stdout
