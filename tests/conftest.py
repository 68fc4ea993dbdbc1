"""Shared fixtures: a prepared `classics` cache in a temporary directory, built once."""

import importlib
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable

# The plugin's scripts keep a copy of each session's records outside the project, in
# the user's cache; the tests' sessions keep theirs in a temporary folder instead.
if "AUTORESEARCH_SESSIONS" not in os.environ:
    import atexit
    import shutil
    import tempfile
    os.environ["AUTORESEARCH_SESSIONS"] = tempfile.mkdtemp(prefix="autoresearch-sessions-")
    atexit.register(shutil.rmtree, os.environ["AUTORESEARCH_SESSIONS"], True)


def run_prepare(args, env, timeout=300):
    """Run `python prepare.py ARGS` from the repo with `env` added; returns CompletedProcess."""
    return subprocess.run([PYTHON, os.path.join(REPO, "prepare.py"), *args], cwd=REPO,
                          env={**os.environ, "AUTORESEARCH_QUIET": "1", **env},
                          capture_output=True, text=True, timeout=timeout)


QUIET_PHASE = "AUTORESEARCH_QUIET_TESTS"   # `later`: leave the quiet tests out; `only`: run just them


def pytest_collection_modifyitems(config, items):
    """`bash dev.sh test` runs the suite in two processes, then the tests marked `quiet`
    alone: beside a second worker's load they could only skip."""
    phase = os.environ.get(QUIET_PHASE)
    if phase not in ("later", "only"):
        return
    keep = [item for item in items if (item.get_closest_marker("quiet") is not None) == (phase == "only")]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


@pytest.fixture(scope="session")
def classics_cache(tmp_path_factory):
    """Env vars that point the harness at a freshly prepared classics cache.

    Use it as `subprocess.run(..., env={**os.environ, **classics_cache})`.
    """
    cache = tmp_path_factory.mktemp("cache")
    env = {"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_DATASET": "classics"}
    result = run_prepare(["--dataset", "classics"], env)
    assert result.returncode == 0, result.stderr
    return env


@pytest.fixture
def harness(classics_cache, monkeypatch):
    """The prepare module, imported with the classics cache active (the cache
    pipeline behind it is `harness.dataset_cache`)."""
    for key, value in classics_cache.items():
        monkeypatch.setenv(key, value)
    sys.path.insert(0, REPO)
    import dataset_cache
    import prepare

    importlib.reload(dataset_cache)  # it reads AUTORESEARCH_CACHE when imported
    yield importlib.reload(prepare)
    sys.path.remove(REPO)
