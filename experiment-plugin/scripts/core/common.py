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
                 STATE_DIR: "scripts", SUMMARY: "agent", NOTES: "agent", STOP_FILE: "person",
                 HTML_SUMMARY: "scripts"}

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


def use_project_python(root: str) -> None:
    """Re-run this script under the session's interpreter when started by another one.

    The agent calls the scripts by path, which starts whatever `python3` is first on
    PATH; that one may lack matplotlib, or differ from the one that trains. The
    session's interpreter is the project's `.venv` when there is one, else the one
    recorded in the session config at setup. Hop over to it once, here.
    """
    if os.environ.get("AUTORESEARCH_NO_REEXEC"):
        return
    wanted = os.path.join(root, ".venv", "bin", "python")
    if not os.path.exists(wanted):
        try:
            with open(os.path.join(root, LOG), encoding="utf-8") as f:
                wanted = json.loads(f.readline()).get("python") or ""
        except (OSError, ValueError, AttributeError):
            return
    if wanted and os.path.exists(wanted) and os.path.abspath(sys.executable) != wanted:
        os.environ["AUTORESEARCH_NO_REEXEC"] = "1"
        os.execv(wanted, [wanted] + sys.argv)


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
