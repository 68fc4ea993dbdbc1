"""The session log `autoresearch.jsonl` and its views: the JSON Schema every record
is checked against, reading the log, appending under the lock, `results.tsv`; and the
copies of every file only the scripts write (the log, the waiting run, a set-aside
result), one outside the project and one in git, which each such file must equal.
"""
from __future__ import annotations

import json
import os
import re
import sys

from .common import find_root, LOG, RESULTS, SCHEMA_PATH, STATE_DIR, UserError, write_atomic
from .git import current_branch
# The copies, and the waiting run and set-aside results they guard (re-exported: the
# scripts know them as records.*).
from .copies import (copy_of, COPIES_ENV, copies_dir, drop_untrusted_ref, keep_copies,  # noqa: F401
                     repair_git_copy, _ref, clear_pending, pending_path, pending_ref, read_pending,
                     set_aside_pending, write_pending, drop_unlogged, take_unlogged, write_unlogged)
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


# ---------------------------------------------------------------- the log and its copies
# The log must equal its copy (core/copies.py says where the copies live and why): a
# last record cut short by a killed writer is completed from it; anything else is
# refused, and resume-session sets the foreign lines aside and restores the copy.

def log_ref(tag: str) -> str:
    return _ref(tag, LOG)


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


def log_copy(root: str, tag: str | None) -> tuple[bytes | None, str]:
    return copy_of(root, tag, LOG)


def back_up_log(root: str, tag: str, data: bytes | None = None) -> None:
    keep_copies(root, tag, LOG, log_bytes(root) if data is None else data)


def cut_short(data: bytes, copy: bytes) -> bool:
    """Whether `data` is `copy` less (part of) its last line: what a writer killed
    after its copies and before the file leaves."""
    return len(data) < len(copy) and copy.startswith(data) and copy.count(b"\n", len(data)) <= 1


def foreign_lines(data: bytes, copy: bytes) -> list[bytes]:
    """The lines of `data` that its copy does not hold (in order, each as often as it
    is extra)."""
    from collections import Counter
    have = Counter(copy.splitlines())
    extra = []
    for line in data.splitlines():
        if have[line] > 0:
            have[line] -= 1
        elif line.strip():
            extra.append(line)
    return extra


def check_log(root: str, data: bytes | None, tag: str | None) -> bytes | None:
    """The log as the scripts recorded it: `data` when it equals its copy (or there is
    no copy), the copy when `data` is only cut short; refused otherwise."""
    copy, where = log_copy(root, tag)
    if copy is None or data == copy:
        return data
    if data is None:
        raise UserError(f"{LOG} is gone, but its copy is kept ({where}): run resume-session, "
                        "which restores it")
    if cut_short(data, copy):
        return copy
    extra, missing = len(foreign_lines(data, copy)), len(foreign_lines(copy, data))
    said = ", ".join(x for x in (f"{extra} line(s) the scripts did not write" if extra else "",
                                 f"{missing} of theirs missing or changed" if missing else "") if x)
    raise UserError(f"{LOG} is not the log the scripts wrote ({said or 'rewritten'}; their copy "
                    f"is {where}): run resume-session, which sets the foreign lines aside and "
                    "restores the recorded log; nothing was recorded")


def restore_log(root: str, label: str) -> str | None:
    """Put the recorded log back where the file differs from its copy: a missing file
    or a cut-short last record restored, foreign lines moved to
    .autoresearch/set-aside-<label>.jsonl; the git copy made good again. Returns what
    was done, or None. Call with the lock held."""
    path = os.path.join(root, LOG)
    data = log_bytes(root)
    tag = session_tag(root, data)
    dropped = drop_untrusted_ref(root, tag, LOG)
    copy, where = log_copy(root, tag)
    if copy is None:
        return dropped
    tag = tag_of(copy) or tag
    notes = [dropped] if dropped else []
    if data != copy:
        note = f"restored {LOG} from its copy ({len(copy.splitlines())} lines)"
        if data is not None and cut_short(data, copy):
            note += ": its last record had been cut short by an interrupted write"
        elif data is not None:
            extra = foreign_lines(data, copy)
            if extra:
                aside = os.path.join(STATE_DIR, f"set-aside-{label}.jsonl")
                os.makedirs(os.path.join(root, STATE_DIR), exist_ok=True)
                write_atomic(os.path.join(root, aside), b"\n".join(extra) + b"\n")
                note += f"; set aside {len(extra)} line(s) the scripts did not write, in {aside}"
            else:
                note += "; the file had lost or reordered lines"
        write_atomic(path, copy)
        notes.append(note)
    repaired = repair_git_copy(root, tag, LOG, copy, where)
    if repaired:
        notes.append(repaired)
    return "; ".join(notes) or None


def append_record(root: str, record: dict, check: bool = True) -> None:
    """Append one line to the log, its copies first. Call with the Lock held. The log
    must be the one the scripts wrote (check_log); a last record cut short by a killed
    writer is completed from the copy first. A log with no copy at all (a session from
    before copies) that ends in a partial line has the fragment moved to
    .autoresearch/salvaged.jsonl, so the new record starts on its own line."""
    if check:
        validate(record)
    path = os.path.join(root, LOG)
    line = (json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    on_disk = log_bytes(root)
    tag = (tag_of(on_disk) if on_disk else None) or record.get("tag") or session_tag(root, on_disk)
    copy, _ = log_copy(root, tag)
    before = check_log(root, on_disk, tag) if copy is not None else (on_disk or b"")
    if copy is not None:
        tag = tag_of(copy) or tag
        if before != on_disk:
            print(f"note: completed the last record of {LOG} from its copy (a write had been "
                  "cut short)", file=sys.stderr)
    elif before and not before.endswith(b"\n"):
        fragment = before[before.rfind(b"\n") + 1:]
        try:
            json.loads(fragment)            # a whole record missing its newline
            before += b"\n"
        except ValueError:
            with open(os.path.join(root, STATE_DIR, "salvaged.jsonl"), "ab") as s:
                s.write(fragment + b"\n")
            before = before[:len(before) - len(fragment)]
            print(f"note: moved a truncated last line of {LOG} ({len(fragment)} bytes) "
                  f"to {STATE_DIR}/salvaged.jsonl", file=sys.stderr)
    if tag:
        keep_copies(root, tag, LOG, before + line)
    if before == on_disk:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        write_atomic(path, before + line)


def tsv_field(text: str) -> str:
    """results.tsv is one row per run: tabs and line breaks in a description would
    split it, so they become spaces here (the exact text stays in the jsonl)."""
    return re.sub(r"[\t\r\n]+", " ", text).strip()


def results_tsv(config: dict, runs: list[dict]) -> str:
    rows = ["\t".join(["commit", config.get("metric", "val_bpb"), "memory_gb", "avg_tok_sec",
                       "status", "description"])]
    # Seed 000's rows write 0.0 and 0 where a crash measured nothing; a script of one's
    # own may never print memory or throughput, and a column of zeros would read as a
    # measurement: there they stay empty.
    own = config.get("project", "harness") == "own"
    for r in runs:
        m = r.get("metrics") or {}
        metric = r.get("metric")
        mem = memory_mb(m)
        tok = m.get("avg_tok_sec")
        rows.append("\t".join([
            r.get("commit", "")[:7],
            f"{metric:.6f}" if isinstance(metric, (int, float)) else "0.000000",
            f"{mem / 1024:.1f}" if isinstance(mem, (int, float)) else "" if own else "0.0",
            f"{tok:.0f}" if isinstance(tok, (int, float)) else "" if own else "0",
            r["status"],
            tsv_field(r["description"]),
        ]))
    return "\n".join(rows) + "\n"


def write_results(root: str, config: dict, runs: list[dict]) -> None:
    write_atomic(os.path.join(root, RESULTS), results_tsv(config, runs))


def load_session(start: str | None = None) -> tuple[str, SessionLog]:
    """The project root and its session log, refused when the log is not the one the
    scripts wrote (see check_log) or is gone while its copy is not. Reads no git
    object where the copy outside the project is there."""
    root = find_root(start)
    data = log_bytes(root)          # before the copy: a writer writes the copy first
    data = check_log(root, data, session_tag(root, data))
    log = read_log(root, data=data)
    for w in log.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return root, log
