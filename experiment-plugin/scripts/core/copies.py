"""The copies of the files only the scripts write (the log, the run waiting to be
logged, a result set aside): one outside the project, one in git, written before the
file itself; and the waiting run and a set-aside result, read only when they equal
their copies. Above `git`; the log itself is core/records.py's.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys

from .common import LOG, STATE_DIR, UserError, write_atomic
from .git import drop_ref, ref_blob, store_blob

# ------------------------------------------------------------------ the copies
# Three files are written by the scripts alone: the log, the run waiting to be logged
# (.autoresearch/pending.json, written by run-experiment) and a result resume-session
# set aside (.autoresearch/unlogged-run-<time>.json). Each is kept twice more, and the
# copies are written BEFORE the file itself:
#   * outside the project, in the user's cache (copies_dir): out of reach of git, of
#     the project's own commands and, where Claude Code's sandbox is on, of the agent's
#     Bash. This is the copy that decides.
#   * as a git object under refs/autoresearch/<tag>/<name>, out of reach of `git clean`,
#     `rm` and a target that truncates files: what a session older than the outside
#     copy (or a cleared cache) falls back on, read only through a plain ref.
# A file must equal its copy exactly. The one difference a writer killed between its
# copies and the file leaves, the log's last record missing (whole or in part), is
# completed from the copy. Anything else (a line added, changed or removed, a file
# rewritten together with its git copy) is refused, and resume-session sets the
# foreign content aside and puts the copy back.

COPIES_ENV = "AUTORESEARCH_SESSIONS"     # where the outside copies live (tests point it elsewhere)
PENDING = "pending.json"


def copies_dir(root: str) -> str:
    """The project's folder of outside copies: ~/.cache/autoresearch/sessions/<name>-<id>,
    one per project (its log names the session it holds). Hooks get CLAUDE_PLUGIN_DATA
    and the agent's Bash does not, so that variable would put two writers' copies in
    two places; the user's cache is the same for both."""
    real = os.path.realpath(root)
    base = os.environ.get(COPIES_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "autoresearch", "sessions")
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(base, f"{os.path.basename(real) or 'root'}-{digest}")


def _outside(root: str, tag: str | None, name: str) -> str:
    # The log is one per project; a session's other files are kept under its tag, so
    # that a new session never finds an earlier one's waiting run.
    return os.path.join(copies_dir(root), name if name == LOG else os.path.join(str(tag), name))


def _ref(tag: str, name: str) -> str:
    leaf = {LOG: "log", PENDING: "pending"}.get(name, name[:-5] if name.endswith(".json") else name)
    return f"refs/autoresearch/{tag}/{leaf}"


def keep_copies(root: str, tag: str | None, name: str, data: bytes) -> None:
    """Write both copies of a scripts-only file (call before writing the file itself)."""
    path = _outside(root, tag, name)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, data)
    except OSError as e:
        raise UserError(f"cannot keep the copy of {name} in {os.path.dirname(path)} "
                        f"({e.strerror or e}): make that folder writable (or set {COPIES_ENV} "
                        "to a folder that is); nothing was recorded") from None
    if tag:
        try:
            store_blob(root, _ref(tag, name), data)
        except UserError as e:      # the outside copy stands; resume-session writes it again
            print(f"warning: the copy of {name} in git ({_ref(tag, name)}) was not written: {e}",
                  file=sys.stderr)


def copy_of(root: str, tag: str | None, name: str) -> tuple[bytes | None, str]:
    """The recorded copy of a scripts-only file, and where it was found: outside the
    project, else in git (a plain ref only); (None, "") where there is none."""
    path = _outside(root, tag, name)
    try:
        with open(path, "rb") as f:
            return f.read(), path
    except FileNotFoundError:
        pass
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}): make it readable again") from None
    if tag:
        data, why = ref_blob(root, _ref(tag, name))
        if data is not None:
            return data, _ref(tag, name)
        if why != "missing":
            raise UserError(f"{_ref(tag, name)} is {why}, not the plain ref the scripts write: "
                            "run resume-session, which removes it; nothing was recorded")
    return None, ""


def drop_untrusted_ref(root: str, tag: str | None, name: str) -> str | None:
    """With no outside copy, remove a git copy that is not a plain ref to a blob (a
    symbolic ref, a commit): its content is someone else's. Returns what was done."""
    if not tag or os.path.exists(_outside(root, tag, name)):
        return None
    _, why = ref_blob(root, _ref(tag, name))
    if why in ("", "missing"):
        return None
    drop_ref(root, _ref(tag, name))
    return f"removed {_ref(tag, name)}, {why} rather than the scripts' copy"


def drop_copies(root: str, tag: str | None, name: str) -> None:
    try:
        os.unlink(_outside(root, tag, name))
    except FileNotFoundError:
        pass
    if tag:
        drop_ref(root, _ref(tag, name))


def repair_git_copy(root: str, tag: str | None, name: str, copy: bytes, where: str) -> str | None:
    """Make the git copy equal the outside one again (after a `git fetch --prune`, a
    `git replace`, a symbolic ref or a forged blob), or make a missing outside copy from
    the git one; returns what was done, or None. Call with the lock held."""
    if not tag:
        return None
    ref = _ref(tag, name)
    if where == ref:                # only the git copy: keep it outside the project too
        keep_copies(root, tag, name, copy)
        return None
    found, why = ref_blob(root, ref)
    if found == copy:
        return None
    store_blob(root, ref, copy)
    return (f"wrote {ref} again from the copy outside the project (it was "
            f"{why or 'different'})")


# The run waiting to be logged (.autoresearch/pending.json).

def pending_path(root: str) -> str:
    return os.path.join(root, STATE_DIR, PENDING)


def pending_ref(tag: str) -> str:
    return _ref(tag, PENDING)


def write_pending(root: str, tag: str, pending: dict) -> None:
    data = (json.dumps(pending, indent=1) + "\n").encode("utf-8")
    keep_copies(root, tag, PENDING, data)
    write_atomic(pending_path(root), data)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_pending(root: str, tag: str) -> dict | None:
    """The waiting run as run-experiment wrote it; a missing file is restored from its
    copy, a changed one (or one with no copy) refused."""
    copy, _ = copy_of(root, tag, PENDING)
    data = _read(pending_path(root))
    if copy is not None and data is None:
        write_atomic(pending_path(root), copy)
        print(f"note: restored {STATE_DIR}/{PENDING} from its copy", file=sys.stderr)
        data = copy
    if data is None:
        return None
    if copy is None or data != copy:
        said = "changed after run-experiment wrote it" if copy is not None else \
            "was not written by run-experiment"
        raise UserError(f"{STATE_DIR}/{PENDING} {said}: run resume-session, which sets it aside "
                        "(and puts back the run's own result, where there is one); nothing was recorded")
    try:
        return json.loads(data)
    except ValueError:
        raise UserError(f"{STATE_DIR}/{PENDING} is not valid JSON: run run-experiment again") from None


def clear_pending(root: str, tag: str) -> None:
    # The copies first: a file left without them is set aside, never logged twice.
    drop_copies(root, tag, PENDING)
    if os.path.exists(pending_path(root)):
        os.unlink(pending_path(root))


def set_aside_pending(root: str, tag: str, label: str) -> str | None:
    """Move a pending.json that run-experiment did not write (changed, or with no copy)
    to .autoresearch/pending-set-aside-<label>.json and put the recorded one back in its
    place, so that the loop goes on; make the git copy good again. Returns what was
    done, or None. Call with the lock held."""
    dropped = drop_untrusted_ref(root, tag, PENDING)
    copy, where = copy_of(root, tag, PENDING)
    if copy is not None:
        try:
            json.loads(copy)
        except ValueError:          # not a result at all: nothing to put back
            drop_copies(root, tag, PENDING)
            copy = None
    data = _read(pending_path(root))
    if data is not None and data != copy:
        aside = os.path.join(STATE_DIR, f"pending-set-aside-{label}.json")
        os.replace(pending_path(root), os.path.join(root, aside))
        note = f"set aside {STATE_DIR}/{PENDING}, which run-experiment did not write, as {aside}"
        note = f"{dropped}; {note}" if dropped else note
        if copy is not None:
            write_atomic(pending_path(root), copy)
            note += "; the run's own result is back in its place"
        return note
    return (repair_git_copy(root, tag, PENDING, copy, where) if copy is not None else None) or dropped


# A result resume-session set aside, recorded later with log-experiment --unlogged.

UNLOGGED = re.compile(r"unlogged-run-[0-9A-Za-z]+(-[0-9]+)?\.json")


def write_unlogged(root: str, tag: str, label: str, result: dict) -> str:
    """Keep `result` as .autoresearch/unlogged-run-<label>.json, with its copies;
    returns the path relative to the project."""
    name = f"unlogged-run-{label}.json"
    data = (json.dumps(result, indent=1) + "\n").encode("utf-8")
    keep_copies(root, tag, name, data)
    write_atomic(os.path.join(root, STATE_DIR, name), data)
    return os.path.join(STATE_DIR, name)


def take_unlogged(root: str, tag: str, path: str) -> dict:
    """The result at `path`, only when resume-session set it aside there and it is
    unchanged."""
    full = os.path.realpath(os.path.join(root, path))
    name = os.path.basename(full)
    if (os.path.dirname(full) != os.path.realpath(os.path.join(root, STATE_DIR))
            or not UNLOGGED.fullmatch(name)):
        raise UserError(f"{path} is not a result resume-session set aside (those are "
                        f"{STATE_DIR}/unlogged-run-*.json, named in what it printed): measure the "
                        "change with run-experiment instead; nothing was recorded")
    data = _read(full)
    if data is None:
        raise UserError(f"{path} not found: pass the file resume-session printed")
    copy, _ = copy_of(root, tag, name)
    if data != copy:
        raise UserError(f"{path} is not the result resume-session set aside (it was changed, or "
                        "never written by it): measure the change again with run-experiment; "
                        "nothing was recorded")
    try:
        result = json.loads(data)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise UserError(f"{path} is not a result: measure the change again with run-experiment")
    return result


def drop_unlogged(root: str, tag: str, path: str) -> None:
    drop_copies(root, tag, os.path.basename(path))
    full = os.path.join(root, path)
    if os.path.exists(full):
        os.unlink(full)
