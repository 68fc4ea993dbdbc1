"""What every part of the plugin shares: where a project is, its session files,
the one error type, atomic writes and the log lock, small helpers.

The bottom layer: it imports only the standard library, and every other module in
`core` may import it. A hook imports this and little else, so it answers well
within 150 ms.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import subprocess
import sys

# This file is experiment-plugin/scripts/core/common.py.
PLUGIN_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS_DIR = os.path.join(PLUGIN_ROOT, "scripts")

SCHEMA_PATH = os.path.join(PLUGIN_ROOT, "schema", "autoresearch-record.schema.json")

# Files only the scripts write. They live in the project root and are git-ignored, so
# a `git reset --hard` never touches them.
LOG = "autoresearch.jsonl"          # source of truth: config record, then one per run
RESULTS = "results.tsv"             # the classic tab-separated view, rebuilt from LOG
RUN_LOG = "run.log"                 # output of the latest run
PLOT = "progress.png"
PLOT_TRACKED = "autoresearch-progress.png"   # the plot, where the project tracks a progress.png of its own
TEST_PLOT = "progress-test.png"     # the kept states on val and on the sealed test split
SUMMARY = "autoresearch-summary.md"
HTML_SUMMARY = "autoresearch-summary.html"   # the same report as one self-contained page
NOTES = "autoresearch.md"           # the living session document (the agent edits it)
STOP_FILE = "autoresearch.stop"     # create it to end the loop at the next stop
STATE_DIR = ".autoresearch"         # lock, pending run, guard/loop switch, archives
COMPILE_CACHE = os.path.join(STATE_DIR, "compile-cache")   # <tag>/: one session's torch.compile cache
# Parallel runs (waves): each candidate's state file, and its own git worktree.
WAVE_DIR = os.path.join(STATE_DIR, "wave")
WORKTREES = os.path.join(STATE_DIR, "worktrees")

# Every session file, with who writes it. "scripts" files are written by nothing else
# (the guard hook enforces it); the summary and notes are the agent's to finish, the
# stop file is the person's.
SESSION_FILES = {LOG: "scripts", RESULTS: "scripts", RUN_LOG: "scripts", PLOT: "scripts",
                 PLOT_TRACKED: "scripts", TEST_PLOT: "scripts", HTML_SUMMARY: "scripts",
                 STATE_DIR: "scripts", SUMMARY: "agent", NOTES: "agent", STOP_FILE: "person"}

SCRIPT_ONLY_FILES = tuple(n for n, writer in SESSION_FILES.items() if writer == "scripts")


class UserError(Exception):
    """A problem the user (or the agent) can fix; printed as one line, exit status 2."""


def find_root(start: str | None = None) -> str:
    """The project root: the nearest directory at or above `start` holding `.git`."""
    path = os.path.abspath(start or os.getcwd())
    while True:
        if os.path.exists(os.path.join(path, ".git")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            raise UserError(f"{start or os.getcwd()} is not inside a git repository: "
                            "run this from the project (cd into it, or `git init` first)")
        path = parent


# What the plugin's scripts import beyond the standard library (the hooks need none;
# only the summary and the dashboard draw charts).
SCRIPT_NEEDS = ("jsonschema",)
PLOT_NEEDS = ("jsonschema", "matplotlib", "plotly")


def has_modules(needs, python: str | None = None) -> bool:
    """Whether `python` (default: this interpreter) can import `needs`. Another
    interpreter is asked by looking into its site-packages, without starting it."""
    if python is None:
        import importlib.util
        return all(importlib.util.find_spec(m) is not None for m in needs)
    import glob
    prefix = os.path.dirname(os.path.dirname(python))
    return os.path.exists(python) and all(
        glob.glob(os.path.join(prefix, "lib", "python3*", "*-packages", m)) for m in needs)


def plugin_env() -> str:
    """The plugin's own small environment, made once where Claude Code keeps a
    plugin's data (CLAUDE_PLUGIN_DATA), else in the user's cache."""
    base = os.environ.get("CLAUDE_PLUGIN_DATA") or os.path.join(
        os.path.expanduser("~"), ".cache", "autoresearch-plugin")
    return os.path.join(base, "venv")


def use_project_python(root: str, needs=SCRIPT_NEEDS) -> None:
    """Re-run this script under an interpreter that has the scripts' own dependencies.

    The agent calls the scripts by path, which starts whatever `python3` is first on
    PATH; that one may lack jsonschema or matplotlib. Training runs on the session's
    interpreter or run command, never on this one, so any interpreter that has them
    will do: this one, else the project's `.venv`, else the session's interpreter,
    else the plugin's own environment, made once (a person's project need not list
    the plugin's dependencies).
    """
    if os.environ.get("AUTORESEARCH_NO_REEXEC") or has_modules(needs):
        return
    tried = [os.path.join(root, ".venv", "bin", "python")]
    try:
        with open(os.path.join(root, LOG), encoding="utf-8") as f:
            tried.append(json.loads(f.readline()).get("python") or "")
    except (OSError, ValueError, AttributeError):
        pass
    wanted = next((p for p in tried if p and has_modules(needs, p)), None)
    if wanted is None:
        wanted = os.path.join(plugin_env(), "bin", "python")
        if not has_modules(PLOT_NEEDS, wanted):
            make_plugin_env(plugin_env())
    os.environ["AUTORESEARCH_NO_REEXEC"] = "1"
    os.execv(wanted, [wanted] + sys.argv)


def make_plugin_env(path: str) -> None:
    import subprocess
    print(f"setting up the plugin's own environment in {path} (once: {', '.join(PLOT_NEEDS)})",
          file=sys.stderr)
    base = getattr(sys, "_base_executable", None) or sys.executable
    steps = [[base, "-m", "venv", path],
             [os.path.join(path, "bin", "python"), "-m", "pip", "install", "-q", *PLOT_NEEDS]]
    for step in steps:
        if subprocess.run(step, stdout=sys.stderr).returncode != 0:
            raise UserError(f"could not make the plugin's environment in {path}: install "
                            f"{' '.join(PLOT_NEEDS)} into the python3 on PATH "
                            f"(python3 -m pip install {' '.join(PLOT_NEEDS)}), then run this again")


def project_python(root: str) -> str:
    """The interpreter that trains, unless the session says otherwise: the project's
    .venv where it has one, else the one running this script."""
    venv = os.path.join(root, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def when(record: dict) -> "_dt.datetime | None":
    """A record's time as a UTC datetime: epoch seconds (seed 001's format) or the ISO
    text logs of the first format hold."""
    t = record.get("timestamp")
    try:
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            return _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
        return _dt.datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


# A write in progress: a hidden file beside its destination (a rename is atomic only
# within one file system). Git ignores the pattern (ensure_ignored) and resume-session
# removes any a killed writer left behind.
TEMP_PATTERN = ".*.tmp-*"


def temp_path(path: str, suffix: str = "") -> str:
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.tmp-{os.getpid()}{suffix}")


def remove_stale_temps(root: str) -> list[str]:
    """Delete the half-written temporary files of writers that were killed."""
    import glob
    found = glob.glob(os.path.join(root, TEMP_PATTERN)) + \
        glob.glob(os.path.join(root, STATE_DIR, TEMP_PATTERN))
    for path in found:
        os.unlink(path)
    return found


def write_atomic(path: str, data: str | bytes) -> None:
    """Write to a temporary file next to `path`, flush it to disk, then rename: a reader
    sees the old file or the new one, never half of one."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Lock:
    """An exclusive `flock` on .autoresearch/lock, held for a whole transaction (git
    operations included), so concurrent writers take turns and none is lost."""

    def __init__(self, root: str):
        os.makedirs(os.path.join(root, STATE_DIR), exist_ok=True)
        self.path = os.path.join(root, STATE_DIR, "lock")

    def __enter__(self):
        import fcntl
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def read_json(path: str, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({e}); move it aside and retry")


def editable_files(config: dict) -> list[str]:
    """What a session changes: the target, and the --scope files beside it."""
    return [config["target"], *config.get("scope", [])]


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def run_main(main) -> None:
    """Run a script's main(); a UserError becomes one line on stderr and exit 2."""
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def fmt(x, digits: int = 6) -> str:
    return f"{x:.{digits}f}" if finite(x) else str(x)


def cannot_start(command: list[str], timeout: float) -> str | None:
    """Why a sandbox program cannot start here (its error's last line), or None when it
    runs: installed is not enough, a container may forbid the namespaces it needs."""
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:120]
    return None
