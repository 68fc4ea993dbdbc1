"""Fixtures shared by the plugin tests (tests/plugin/test_<module or command>.py).

The helpers they are built from (a stand-in project, running a script, reading the
log) are in tests/plugin_helpers.py, importable from any test."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from plugin_helpers import REPO, make_project, ok, script, set_up_project


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node Slurm cluster (munged, slurmctld, slurmd) of two one-CPU job slots,
    started once for the test process and stopped after (tests/slurm_cluster.py).
    Where Slurm is not installed the tests that need it fail, saying how to install it."""
    from slurm_cluster import INSTALL, missing_programs, SlurmCluster
    missing = missing_programs()
    if missing:
        pytest.fail(f"Slurm is not installed here (missing {', '.join(missing)}): {INSTALL}")
    cluster = SlurmCluster(slots=2).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def project(tmp_path):
    """A project with a session set up: tag t1, classics, 1 s budget, the default policy."""
    return set_up_project(tmp_path / "proj", "--tag", "t1", "--dataset", "classics", "--budget", "1")


# A stand-in whose metric depends on the seed it is given, as a real run's does.
SEEDED_TARGET = '''\
import os, random, time
VAL_BPB = 1.0
BUSY = 0.0        # seconds of computing, so that the machine's load can be read
seed = int(os.environ["AUTORESEARCH_SEED"])
end = time.monotonic() + BUSY
while time.monotonic() < end:
    pass
print("---")
print(f"val_bpb:          {VAL_BPB + 0.01 * random.Random(seed).gauss(0, 1):.6f}")
print("avg_tok_sec:      1,000")
'''


@pytest.fixture
def session(tmp_path):
    p = make_project(tmp_path / "proj")
    (p / "train.py").write_text(SEEDED_TARGET)
    subprocess.run(["git", "commit", "-qam", "seeded stand-in"], cwd=p, check=True)
    ok(script(p, "setup-session", "--tag", "s", "--dataset", "classics", "--budget", "1"))
    return p


class Night:
    """The project clone, and the agent's only ways to act on it."""

    def __init__(self, root, env):
        self.root, self.env = root, env
        self.scripts = os.path.join(root, "experiment-plugin", "scripts")

    def git(self, *args):
        return subprocess.run(["git", *args], cwd=self.root, check=True, capture_output=True, text=True).stdout.strip()

    def script(self, name, *args, ok=True, timeout=600):
        """Run a plugin script the way the skill writes it; returns (exit code, stdout)."""
        proc = subprocess.run([os.path.join(self.scripts, name), *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if ok:
            assert proc.returncode == 0, f"{name} {args} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.returncode, proc.stdout + proc.stderr

    def read(self, path):
        with open(os.path.join(self.root, path)) as f:
            return f.read()

    def write(self, path, text):
        with open(os.path.join(self.root, path), "w") as f:
            f.write(text)

    def edit(self, old, new, path="train.py"):
        """What the agent's Edit tool does: replace one exact, unique string."""
        text = self.read(path)
        assert text.count(old) == 1, f"{old!r} is not unique in {path}"
        self.write(path, text.replace(old, new))

    def set_constant(self, name, value):
        text = self.read("train.py")
        new, n = re.subn(rf"^({name}\s*=\s*)[^#\n]*?(\s*(#.*)?)$", rf"\g<1>{value}\g<2>", text, count=1, flags=re.M)
        assert n == 1, f"no constant {name} in train.py"
        self.write("train.py", new)

    def records(self):
        with open(os.path.join(self.root, "autoresearch.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]

    def runs(self):
        return [r for r in self.records() if r["type"] == "run"]

    def tsv(self):
        with open(os.path.join(self.root, "results.tsv")) as f:
            header, *rows = [line.rstrip("\n").split("\t") for line in f]
        return header, rows

    def head(self):
        return self.git("rev-parse", "HEAD")

    def experiment(self, description, asi=None):
        """One iteration after the edit: run, follow the recommendation, log. Returns the status."""
        code, out = self.script("run-experiment", ok=False)
        for _ in range(4):      # baseline repeats, confirmations, disturbed runs: same code again
            if "recommend: rerun" not in out:
                break
            code, out = self.script("run-experiment", ok=False)
        status = re.search(r"^status: (\w+)", out, re.M).group(1)
        decision = re.search(r"^recommend: (\w+)", out, re.M).group(1) if status == "ok" else "crash"
        assert (code == 0) == (status == "ok"), out
        args = ["--status", decision, "--description", description]
        if asi:
            args += ["--asi", json.dumps(asi)]
        self.script("log-experiment", *args)
        return status, decision, out


@pytest.fixture
def night(tmp_path, classics_cache):
    root = str(tmp_path / "project")
    subprocess.run(["git", "clone", "-q", REPO, root], check=True)
    for key, value in (("user.name", "Night Test"), ("user.email", "night@example.com")):
        subprocess.run(["git", "config", key, value], cwd=root, check=True)
    # The disturbed-run check is off: on a shared test machine another suite's load
    # would turn a step into a rerun the script cannot predict (tests/plugin/test_monitor.py
    # covers the check itself).
    # A smaller eval set than the default 65,536 tokens (setup pins what the caller sets):
    # it still separates the runs the tests judge by far more than its noise, in a
    # quarter of the time.
    env = {**os.environ, **classics_cache, "AUTORESEARCH_QUIET": "1", "AUTORESEARCH_LOAD_CHECK": "0",
           "AUTORESEARCH_EVAL_TOKENS": "16384",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    n = Night(root, env)
    # A small CPU model with small steps: dozens of steps in a 5 s budget give a clear
    # learning signal, and the evaluation takes a second.
    n.edit("    DEPTH, WIDTH, HEAD_DIM = 2, 256, 64\n", "    DEPTH, WIDTH, HEAD_DIM = 2, 128, 64\n")
    n.edit("    TOTAL_BATCH_TOKENS = 2**12\n", "    TOTAL_BATCH_TOKENS = 2**11\n")
    # The template starts from learning rates 20x too small: restoring them later is a
    # change known beforehand to help, so the keep step does not depend on luck.
    for name in ("MATRIX_LR", "EMBEDDING_LR", "UNEMBEDDING_LR", "SCALAR_LR"):
        value = float(re.search(rf"^{name}\s*=\s*([0-9.e-]+)", n.read("train.py"), re.M).group(1))
        n.set_constant(name, repr(value / 20))
    n.git("commit", "-qam", "A small CPU model, from detuned learning rates")
    yield n
    shutil.rmtree(root, ignore_errors=True)
