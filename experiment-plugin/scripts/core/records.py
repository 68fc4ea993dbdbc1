"""The session log `autoresearch.jsonl` and its views: the JSON Schema every record
is checked against, reading the log (tolerating a torn last line), appending under the
lock, and `results.tsv`.
"""
from __future__ import annotations

import json
import os
import re
import sys

from .common import find_root, LOG, RESULTS, SCHEMA_PATH, STATE_DIR, UserError, write_atomic
from .git import blob_at, current_branch, drop_ref, store_blob
from .parsing import memory_mb


def read_config(root: str) -> dict | None:
    """The session config alone (the log's first line): what a hook needs, read without
    parsing a long log."""
    try:
        with open(os.path.join(root, LOG), encoding="utf-8") as f:
            config = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("type") == "config" else None


def asi(record: dict) -> dict:
    """What the agent wrote down with a run (hypothesis, what it learned, ...): stored as
    `asi`, as seed 001 names it; logs of the first format called it `notes`."""
    value = record.get("asi", record.get("notes"))
    return value if isinstance(value, dict) else {}


def lesson(record: dict) -> str:
    """The one line worth remembering from a run: what it taught, else its hypothesis."""
    a = asi(record)
    for key in ("learned", "lesson", "hypothesis"):
        if a.get(key):
            return " ".join(str(a[key]).split())
    return ""


_SCHEMA_CACHE: dict = {}


def load_schema() -> dict:
    if "schema" not in _SCHEMA_CACHE:
        with open(SCHEMA_PATH, encoding="utf-8") as f:
            _SCHEMA_CACHE["schema"] = json.load(f)
    return _SCHEMA_CACHE["schema"]


def validate(instance, schema: dict | None = None, where: str = "record") -> None:
    """Check `instance` against the plugin's JSON Schema; raise UserError naming the
    first violation, in one line.

    `jsonschema` is imported here, not at the top: the hooks import this module on
    every tool call and never validate, and the import costs ~150 ms.
    """
    import jsonschema

    root = schema if schema is not None else load_schema()
    validator = jsonschema.validators.validator_for(root)(root)
    error = next(iter(validator.iter_errors(instance)), None)
    while error is not None and error.context:
        # oneOf (a config line or a run line): name what is wrong with the form the
        # instance comes closest to, the one with the fewest violations.
        forms: dict = {}
        for e in error.context:
            forms.setdefault(e.relative_schema_path[0], []).append(e)
        error = min(forms.values(), key=len)[0]
    if error is not None:
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        message = " ".join(error.message.split())
        raise UserError(f"invalid {where}{field}: {message[:200]}")


class SessionLog:
    """autoresearch.jsonl, parsed: the config record, the run records, the session's
    events (end, resume), and warnings about lines that could not be read (reported,
    never dropped from the file). A resume event's max_iterations replaces the
    config's: the config line itself is never rewritten."""

    def __init__(self, config: dict | None, runs: list[dict], events: list[dict],
                 warnings: list[str]):
        self.runs, self.events, self.warnings = runs, events, warnings
        self.config = config
        for e in events:
            if config is not None and e.get("max_iterations") is not None:
                self.config = {**self.config, "max_iterations": e["max_iterations"]}


def log_bytes(root: str) -> bytes | None:
    """The log file's bytes, or None when there is none."""
    try:
        with open(os.path.join(root, LOG), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_log(root: str, required: bool = True, data: bytes | None = None) -> SessionLog:
    """The log parsed (from `data` when the caller has read it already)."""
    data = log_bytes(root) if data is None else data
    if data is None:
        if required:
            raise UserError(f"no session here ({LOG} not found in {root}): start one with "
                            "setup-session (or /experiment:model <tag>)")
        return SessionLog(None, [], [], [])
    config, runs, events, warnings = None, [], [], []
    lines = data.split(b"\n")
    complete = data.endswith(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            last = number == len(lines) and not complete
            warnings.append(
                f"{LOG}: line {number} is truncated ({len(raw)} bytes), ignored; the next "
                f"log-experiment moves it to {STATE_DIR}/salvaged.jsonl" if last else
                f"{LOG}: line {number} is not valid JSON, ignored (fix or remove it by hand)")
            continue
        if record.get("type") == "config" and config is None:
            config = record
        elif record.get("type") == "run":
            runs.append(record)
        elif record.get("type") == "event":
            events.append(record)
    if required and config is None:
        raise UserError(f"{LOG} has no config record as its first line: move it aside and "
                        "run setup-session again")
    return SessionLog(config, runs, events, warnings)


# ---------------------------------------------------------------- the log's copy in git
# After every write the whole log is also stored as a git object under
# refs/autoresearch/<tag>/log, out of reach of `git clean`, `rm` and a target that
# truncates files. Every write and every script checks that the log on disk still
# begins with that copy: a line rewritten, removed or truncated is refused, and
# resume-session puts the copy back.

def log_ref(tag: str) -> str:
    return f"refs/autoresearch/{tag}/log"


def tag_of(data: bytes) -> str | None:
    try:
        config = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return None
    return config.get("tag") if isinstance(config, dict) and config.get("type") == "config" else None


def session_tag(root: str, data: bytes | None) -> str | None:
    """The session's tag: the log's own, else the one the branch (autoresearch/<tag>) names."""
    branch = current_branch(root)
    return (tag_of(data) if data else None) or (branch[len("autoresearch/"):]
                                                if branch.startswith("autoresearch/") else None)


def back_up_log(root: str, tag: str, data: bytes | None = None) -> None:
    store_blob(root, log_ref(tag), log_bytes(root) if data is None else data)


def check_intact(root: str, data: bytes, tag: str | None = None) -> None:
    """Refuse a log that no longer begins with its copy in git (it was rewritten,
    shortened or replaced since the scripts last wrote it)."""
    tag = tag or tag_of(data)
    copy = blob_at(root, log_ref(tag)) if tag else None
    if copy is None or data.startswith(copy):
        return
    kept, found = len(copy.splitlines()), len(data.splitlines())
    raise UserError(f"{LOG} is not the log the scripts wrote ({kept} lines recorded in "
                    f"{log_ref(tag)}, {found} here, and they differ): run resume-session, which "
                    "restores the recorded log (this file is kept aside); nothing was recorded")


def restore_log(root: str, label: str) -> str | None:
    """Put the log's copy in git back when the log is gone or no longer begins with
    it (a replaced file is kept aside); returns what was done, or None."""
    path = os.path.join(root, LOG)
    data = log_bytes(root)
    tag = session_tag(root, data)
    copy = blob_at(root, log_ref(tag)) if tag else None
    if copy is None or (data is not None and data.startswith(copy)):
        return None
    note = f"restored {LOG} from {log_ref(tag)} ({len(copy.splitlines())} lines)"
    if data is not None:
        aside = os.path.join(STATE_DIR, f"replaced-{label}.jsonl")
        os.makedirs(os.path.join(root, STATE_DIR), exist_ok=True)
        os.replace(path, os.path.join(root, aside))
        note += f"; the file found there is kept as {aside}"
    write_atomic(path, copy)
    return note


# The run waiting to be logged (.autoresearch/pending.json) has a copy in git too, so
# a process that rewrites it between the run and the log is caught, and a deleted one
# comes back.

def pending_path(root: str) -> str:
    return os.path.join(root, STATE_DIR, "pending.json")


def pending_ref(tag: str) -> str:
    return f"refs/autoresearch/{tag}/pending"


def write_pending(root: str, tag: str, pending: dict) -> None:
    data = json.dumps(pending, indent=1) + "\n"
    write_atomic(pending_path(root), data)
    store_blob(root, pending_ref(tag), data.encode())


def read_pending(root: str, tag: str) -> dict | None:
    """The waiting run as run-experiment wrote it; a missing file is restored from its
    copy, a changed one refused."""
    copy = blob_at(root, pending_ref(tag))
    try:
        with open(pending_path(root), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        data = None
    if copy is not None and data is None:
        write_atomic(pending_path(root), copy)
        print(f"note: restored {STATE_DIR}/pending.json from its copy in git", file=sys.stderr)
        data = copy
    if data is None:
        return None
    if copy is not None and data != copy:
        raise UserError(f"{STATE_DIR}/pending.json changed after run-experiment wrote it: run "
                        "run-experiment again; nothing was recorded")
    try:
        return json.loads(data)
    except ValueError:
        raise UserError(f"{STATE_DIR}/pending.json is not valid JSON: run run-experiment again") from None


def clear_pending(root: str, tag: str) -> None:
    if os.path.exists(pending_path(root)):
        os.unlink(pending_path(root))
    drop_ref(root, pending_ref(tag))


def append_record(root: str, record: dict, check: bool = True) -> None:
    """Append one line to the log. Call with the Lock held. A partial last line left by
    a killed writer is moved to .autoresearch/salvaged.jsonl first, so the new record
    starts on its own line and the fragment is kept for inspection."""
    if check:
        validate(record)
    path = os.path.join(root, LOG)
    line = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        before = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        if before and not before.endswith(b"\n"):
            fragment = before[before.rfind(b"\n") + 1:]
            try:
                json.loads(fragment)            # a whole record missing its newline
                line = b"\n" + line
            except ValueError:
                salvage = os.path.join(root, STATE_DIR, "salvaged.jsonl")
                with open(salvage, "ab") as s:
                    s.write(fragment + b"\n")
                before = before[:len(before) - len(fragment)]
                os.ftruncate(fd, len(before))
                print(f"note: moved a truncated last line of {LOG} ({len(fragment)} bytes) "
                      f"to {STATE_DIR}/salvaged.jsonl", file=sys.stderr)
        check_intact(root, before)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    tag = tag_of(before) or record.get("tag")
    if tag:
        back_up_log(root, tag, before + line)


def tsv_field(text: str) -> str:
    """results.tsv is one row per run: tabs and line breaks in a description would
    split it, so they become spaces here (the exact text stays in the jsonl)."""
    return re.sub(r"[\t\r\n]+", " ", text).strip()


def results_tsv(config: dict, runs: list[dict]) -> str:
    rows = ["\t".join(["commit", config.get("metric", "val_bpb"), "memory_gb", "avg_tok_sec",
                       "status", "description"])]
    for r in runs:
        m = r.get("metrics") or {}
        metric = r.get("metric")
        mem = memory_mb(m)
        tok = m.get("avg_tok_sec")
        rows.append("\t".join([
            r.get("commit", "")[:7],
            f"{metric:.6f}" if isinstance(metric, (int, float)) else "0.000000",
            f"{mem / 1024:.1f}" if isinstance(mem, (int, float)) else "0.0",
            f"{tok:.0f}" if isinstance(tok, (int, float)) else "0",
            r["status"],
            tsv_field(r["description"]),
        ]))
    return "\n".join(rows) + "\n"


def write_results(root: str, config: dict, runs: list[dict]) -> None:
    write_atomic(os.path.join(root, RESULTS), results_tsv(config, runs))


def load_session(start: str | None = None) -> tuple[str, SessionLog]:
    """The project root and its session log, refused when the log is not the one the
    scripts wrote (see check_intact) or is gone while its copy is not."""
    root = find_root(start)
    data = log_bytes(root)
    tag = session_tag(root, data)
    if data is not None and tag:
        check_intact(root, data, tag)
    elif tag and blob_at(root, log_ref(tag)) is not None:
        raise UserError(f"{LOG} is gone, but its copy is in {log_ref(tag)}: run resume-session, "
                        "which restores it")
    log = read_log(root, data=data)
    for w in log.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return root, log
