"""The one module the plugin's scripts and hooks share.

Every script in this folder is a thin command line over the functions here, so each
rule lives in exactly one place:

  * where the project is and which files belong to a session   (paths)
  * the session log `autoresearch.jsonl`: read, validate, append (log)
  * THE metric parser: summary block, METRIC lines, last_run.json (parse_metrics)
  * statistics: best, noise floor (MAD), confidence, keep policy (stats)
  * every git operation the loop performs                       (git)

It imports only the standard library at the top, and the slower parts (subprocess,
jsonschema) only where needed, so every hook answers well within 150 ms. The scripts run
under the project's interpreter (see `use_project_python`), the one that also runs
training.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import sys

# --------------------------------------------------------------------------- paths

PLUGIN_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_PATH = os.path.join(PLUGIN_ROOT, "schema", "autoresearch-record.schema.json")

# Files only the scripts write. They live in the project root and are git-ignored, so
# a `git reset --hard` never touches them.
LOG = "autoresearch.jsonl"          # source of truth: config record, then one per run
RESULTS = "results.tsv"             # the classic tab-separated view, rebuilt from LOG
RUN_LOG = "run.log"                 # output of the latest run
PLOT = "progress.png"
SUMMARY = "autoresearch-summary.md"
NOTES = "autoresearch.md"           # the living session document (the agent edits it)
STOP_FILE = "autoresearch.stop"     # create it to end the loop at the next stop
STATE_DIR = ".autoresearch"         # lock, pending run, guard/loop switch, archives

# Every session file, with who writes it. "scripts" files are written by nothing else
# (the guard hook enforces it); the summary and notes are the agent's to finish, the
# stop file is the person's.
SESSION_FILES = {LOG: "scripts", RESULTS: "scripts", RUN_LOG: "scripts", PLOT: "scripts",
                 STATE_DIR: "scripts", SUMMARY: "agent", NOTES: "agent", STOP_FILE: "person"}
SCRIPT_ONLY_FILES = tuple(n for n, writer in SESSION_FILES.items() if writer == "scripts")

# The fixed harness: hashed at setup, verified around every run, guarded by the hook.
FIXED_FILES = ("prepare.py", "dataset_cache.py", "data_sources.py")
FIXED_DIRS = ("datasets",)
# Changing these would change the dependencies, which a session must not do.
DEPENDENCY_FILES = ("pyproject.toml", "uv.lock", "requirements.txt", "setup.py", "setup.cfg")


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


def fixed_file_list(root: str, extra: list[str] | tuple = ()) -> list[str]:
    """Relative paths of every fixed file present: FIXED_FILES, datasets/**, and a
    session's --read-only files (`extra`)."""
    found = [f for f in (*FIXED_FILES, *extra) if os.path.isfile(os.path.join(root, f))]
    for d in FIXED_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, d)):
            dirnames[:] = sorted(n for n in dirnames if n != "__pycache__")
            for name in sorted(filenames):
                if not name.endswith(".pyc"):
                    found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hash_fixed_files(root: str, extra: list[str] | tuple = ()) -> dict:
    return {rel: hash_file(os.path.join(root, rel)) for rel in fixed_file_list(root, extra)}


def changed_fixed_files(root: str, recorded: dict) -> list[str]:
    """Fixed files whose content differs from the hashes recorded at setup (or that
    appeared or vanished since). Recorded names beyond the harness are the session's
    read-only files: they are checked the same way."""
    extra = [p for p in recorded if p not in FIXED_FILES and p.split("/")[0] not in FIXED_DIRS]
    now = hash_fixed_files(root, extra)
    return sorted(p for p in set(now) | set(recorded) if now.get(p) != recorded.get(p))


# --------------------------------------------------------------------- small io

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


def write_atomic(path: str, data: str | bytes) -> None:
    """Write to a temporary file next to `path`, flush it to disk, then rename: a reader
    sees the old file or the new one, never half of one."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    tmp = f"{path}.tmp-{os.getpid()}"
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


def read_config(root: str) -> dict | None:
    """The session config alone (the log's first line): what a hook needs, read without
    parsing a long log."""
    try:
        with open(os.path.join(root, LOG), encoding="utf-8") as f:
            config = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and config.get("type") == "config" else None


def editable_files(config: dict) -> list[str]:
    """What a session changes: the target, and the --scope files beside it."""
    return [config["target"], *config.get("scope", [])]


def platform_info(python: str, target: str) -> dict:
    """Where the runs happen, for the record: OS, device, memory, framework. Read
    without importing the framework (setup stays fast): nvidia-smi for NVIDIA GPUs,
    the CPU's name otherwise, the framework's installed version."""
    import platform
    import shutil
    import subprocess
    info = {"os": f"{platform.system()} {platform.release()} {platform.machine()}"}
    gpus = ""
    if shutil.which("nvidia-smi"):
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip()
    if gpus:
        names = gpus.splitlines()
        info["device"] = f"cuda: {len(names)} x {names[0]}"
    elif sys.platform == "darwin" and platform.machine() == "arm64":
        chip = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                              text=True).stdout.strip()
        info["device"] = f"mps/metal: {chip or 'Apple Silicon'}"
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), name)
        except OSError:
            pass
        info["device"] = f"cpu: {name} ({os.cpu_count()} cores)"
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    framework = "mlx" if "mlx" in target else "torch"
    version = subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version('{framework}'))"],
                             capture_output=True, text=True).stdout.strip()
    info["framework"] = f"{framework} {version or '(not installed)'}"
    return info


def research_config(config: dict) -> str:
    """The research configuration, as setup prints it and the summary repeats it."""
    p = config.get("platform") or {}
    cap = config.get("max_iterations")
    stops = [f"{cap} runs" if cap else "no run cap"]
    if config.get("target_value") is not None:
        stops.append(f"best reaches {config['target_value']:g}")
    if config.get("plateau"):
        stops.append(f"{config['plateau']} runs in a row without a keep")
    rows = [("platform", ", ".join(str(p[k]) for k in ("os", "device") if k in p)
             + (f", {p['memory_gb']:g} GB" if "memory_gb" in p else "")
             + (f", {p['framework']}" if "framework" in p else "")),
            ("dataset", config["dataset"]),
            ("budget", f"{config['budget']:g} s per run (killed after {config['timeout']:g} s)"),
            ("metric", f"{config['metric']}, {config['direction']} is better"),
            ("target", ", ".join(editable_files(config))),
            ("read-only", ", ".join(config.get("read_only") or []) or "the harness only"),
            ("policy", config["policy"]),
            ("checks", config.get("checks") or "none"),
            ("stops at", "; ".join(stops))]
    return "research config:\n" + "\n".join(f"  {k:<10} {v}" for k, v in rows if v)


# ---------------------------------------------------------------- the session's lifecycle
# A session is *active* from setup-session until it ends: the guard protects the
# harness and the Stop hook keeps the loop going. The loop belongs to one Claude Code
# conversation, the one whose Bash ran setup-session or resume-session (Claude Code
# exports its id as CLAUDE_CODE_SESSION_ID; it is recorded as the *owner*). Only there
# does a stop become "continue with run N+1": any other conversation in the project
# (the morning's /experiment:summary, an ordinary question) stops as usual, and
# /experiment:summary typed into the owner's conversation releases the loop too.
# The session ends (guard and loop off, an "end" event in the log, the stop file
# consumed) at the iteration cap, when autoresearch.stop appears, or by end-session.
# .autoresearch/state.json holds only what the log cannot: {"active", "owner"}.

CONVERSATION_ENV = "CLAUDE_CODE_SESSION_ID"


def state_path(root: str) -> str:
    return os.path.join(root, STATE_DIR, "state.json")


def read_state(root: str) -> dict:
    return read_json(state_path(root), default={}) or {}


def active_root(payload: dict) -> str | None:
    """For a hook: the project root of the tool call's cwd when a session is active there."""
    try:
        root = find_root(payload.get("cwd") or os.getcwd())
    except UserError:
        return None
    return root if read_state(root).get("active") else None


def write_state(root: str, **changes) -> dict:
    os.makedirs(os.path.join(root, STATE_DIR), exist_ok=True)
    state = read_state(root)
    state.update(changes)
    write_atomic(state_path(root), json.dumps(state, indent=2) + "\n")
    return state


def start_loop(root: str) -> None:
    """Switch guard and loop on, owned by the Claude Code conversation running this
    script (none when it runs outside Claude Code: then no conversation is kept looping)."""
    write_state(root, active=True, owner=os.environ.get(CONVERSATION_ENV) or None)


def owns_loop(root: str, payload: dict) -> bool:
    owner = read_state(root).get("owner")
    return bool(owner) and owner == payload.get("session_id")


def stop_file(root: str) -> str:
    return os.path.join(root, STOP_FILE)


# After this many runs in a row without a keep, the session ends; at half of it the
# agent is told to change category. With one idea in five a real gain (the decision
# benchmark's model), 20 misses in a row happen by chance about 1% of the time
# (0.8^20): the current line of ideas is spent. 10 in a row (11%) is a hint, not proof.
PLATEAU_DEFAULT = 20


def runs_since_keep(runs: list[dict]) -> int:
    n = 0
    for r in reversed(runs):
        if r["status"] == "keep":
            break
        n += 1
    return n


def loop_end_reason(root: str, config: dict, runs: list[dict]) -> str | None:
    """Why the loop is over (the stop file, the cap, the target value, a plateau), or
    None while it should go on."""
    if os.path.exists(stop_file(root)):
        return f"{stop_file(root)} was found"
    cap = config.get("max_iterations")
    if cap and len(runs) >= cap:
        return f"the iteration cap was reached ({len(runs)} of {cap} runs)"
    goal, best = config.get("target_value"), best_run(runs, config["direction"])
    if goal is not None and best and not better(goal, best["metric"], config["direction"]):
        return f"the best {config['metric']} {fmt(best['metric'])} reached the target {goal:g}"
    plateau = config.get("plateau")
    if plateau and runs_since_keep(runs) >= plateau:
        return f"no run was kept in the last {plateau} (the plateau limit)"
    return None


def plateau_hint(config: dict, runs: list[dict]) -> str:
    """Past half the plateau limit: tell the agent to change the kind of idea, naming
    the categories tried so far (from each run's asi "category")."""
    plateau, misses = config.get("plateau"), runs_since_keep(runs)
    if not plateau or misses < max(1, plateau // 2):
        return ""
    counts: dict = {}
    for r in runs[1:]:          # the baseline tried no idea
        c = str(asi(r).get("category") or "uncategorised")
        counts[c] = counts.get(c, 0) + 1
    tried = ", ".join(f"{c} ({n})" for c, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f" No keep in the last {misses} runs (the session ends at {plateau}): change "
            f"category. Tried so far: {tried}. Pick a kind of idea you have not tried, or "
            "one that kept before, and say its category in --asi.")


def end_session(root: str, reason: str) -> None:
    """End the session: an "end" event in the log, the stop file consumed, guard and
    loop off. Takes the log lock. The branch, log and results stay as they are."""
    with Lock(root):
        log = read_log(root)
        # Built here, not from input, and hooks run under any python3: append unchecked.
        append_record(root, {"type": "event", "event": "end", "reason": reason,
                             "runs": len(log.runs), "timestamp": now_iso()}, check=False)
        if os.path.exists(stop_file(root)):
            os.unlink(stop_file(root))
        write_state(root, active=False, owner=None)


def best_line(config: dict, runs: list[dict]) -> str:
    """"best val_bpb 0.981234 (run 17, commit abc1234), baseline 0.997900" or what
    stands in for it."""
    best, base = best_run(runs, config["direction"]), baseline_run(runs)
    if best is None:
        return "no kept result yet"
    text = f"best {config['metric']} {fmt(best['metric'])} (run {best['run']}, commit {best['commit'][:7]})"
    return text + (f", baseline {fmt(base['metric'])}" if base and base is not best else "")


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


def run_line(config: dict, r: dict, width: int = 70) -> str:
    """`run 12 discard 0.990100  wider MLP (learned: ...)`, for recaps."""
    shown = fmt(r["metric"]) if finite(r.get("metric")) else "-"
    text = " ".join(r["description"].split())[:width]
    learned = lesson(r)
    return (f"run {r['run']:>3} {r['status']:<7} {shown:>10}  {text}"
            + (f" (learned: {learned[:120]})" if learned else ""))


def state_block(root: str, config: dict, runs: list[dict], owned: bool) -> str:
    """The session's state in a few lines, for a context that lost it (compaction, a
    resumed conversation): where the protocol is, the setup, where the loop stands,
    the last runs with what they taught, and the next step."""
    cap = config.get("max_iterations")
    pending = os.path.exists(os.path.join(root, STATE_DIR, "pending.json"))
    nxt = len(runs) + 1
    lines = [
        f"autoresearch session {config['tag']} is active in this project ({root}).",
        f"Protocol: {os.path.join(PLUGIN_ROOT, 'skills', 'autoresearch', 'SKILL.md')} (read it "
        f"again now); scripts: {os.path.join(PLUGIN_ROOT, 'scripts')}.",
        f"Target {config['target']}, dataset {config['dataset']}, {config['budget']:g} s per run, "
        f"policy {config['policy']}; {config['metric']}, {config['direction']} is better.",
        f"{len(runs)}{f' of {cap}' if cap else ''} runs logged; {best_line(config, runs)}.",
    ]
    if runs:
        lines.append("Last runs:")
        lines += ["  " + run_line(config, r) for r in runs[-5:]]
    if not owned:
        lines.append("The loop is not running in this conversation: /experiment:resume "
                     "continues it here, /experiment:end closes the session.")
    elif pending:
        lines.append(f"Next: a finished run waits: log it with log-experiment, then run {nxt + 1}.")
    else:
        lines.append(f"Next: run {nxt}: pick the next idea (read autoresearch.md), edit "
                     f"{config['target']}, run-experiment, log-experiment. Do not stop or ask.")
    return "\n".join(lines)


def ended_message(config: dict, runs: list[dict], reason: str) -> str:
    """What the person reads when a session ends: what happened, and what next."""
    n = len(runs)
    return (f"autoresearch session {config['tag']} has ended: {reason}. {n} runs, "
            f"{best_line(config, runs)}. The guard and the loop are off. Next: "
            f"/experiment:summary writes the report and progress.png; "
            f"/experiment:resume --max-iterations {max(n, config.get('max_iterations') or 0) + 20} "
            f"continues with 20 more runs; {os.path.join(PLUGIN_ROOT, 'scripts', 'finalize')} "
            f"shows how the kept changes on branch {config['branch']} would go into "
            f"{config.get('start_branch') or 'your branch'} (it changes nothing without --yes).")


def open_elsewhere_note(config: dict) -> str:
    """For a conversation that does not run the loop of an active session."""
    return (f"autoresearch session {config['tag']} is open in this project but not running "
            f"in this conversation (the guard still protects the harness): /experiment:resume "
            f"continues it here, /experiment:end closes it.")


# The repair for changed fixed files. resume-session restores the last kept commit;
# a checkout of single files would leave the branch wherever it had been moved.
TAMPER_REPAIR = ("run resume-session (it saves the work tree under refs/autoresearch/, "
                 "restores the last kept commit and checks the fixed files again)")


def stop_leftover_run(root: str) -> str | None:
    """Kill a training run left behind by a run-experiment that was itself killed
    outright (SIGKILL cannot be caught, and the run lives in its own process group).
    run-experiment records the group in .autoresearch/running.json while it runs."""
    import signal
    path = os.path.join(root, STATE_DIR, "running.json")
    info = read_json(path, default=None)
    if not info:
        return None
    os.unlink(path)
    try:
        pgid = int(info["pgid"])
        # Make sure the number still names that run, not a process that reused the id:
        # it must lead its own group and (where /proc exists) be running the target.
        if os.getpgid(pgid) != pgid:
            return None
        if os.path.isdir("/proc"):
            with open(f"/proc/{pgid}/cmdline", "rb") as f:
                if os.path.basename(info.get("target", "")).encode() not in f.read():
                    return None
        os.killpg(pgid, signal.SIGKILL)
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return f"stopped a leftover run (process group {info['pgid']}) from an interrupted run-experiment"


# ------------------------------------------------------------------------- schema

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


# ---------------------------------------------------------------------------- log

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


def read_log(root: str, required: bool = True) -> SessionLog:
    path = os.path.join(root, LOG)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
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
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, max(0, size - 65536), os.SEEK_SET)
            tail = os.read(fd, 65536)
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                fragment = tail[cut + 1:]
                try:
                    json.loads(fragment)            # a whole record missing its newline
                    line = b"\n" + line
                except ValueError:
                    salvage = os.path.join(root, STATE_DIR, "salvaged.jsonl")
                    with open(salvage, "ab") as s:
                        s.write(fragment + b"\n")
                    os.ftruncate(fd, size - len(fragment))
                    print(f"note: moved a truncated last line of {LOG} ({len(fragment)} bytes) "
                          f"to {STATE_DIR}/salvaged.jsonl", file=sys.stderr)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


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
        mem = m.get("peak_memory_mb")
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


# ------------------------------------------------------------------ parse_metrics

# last_run.json keys -> the summary block's names for the same numbers, so a run reads
# the same from either source. Files written before the keys followed the original
# autoresearch said tok_per_sec (and num_steps, already the summary's name).
_RECORD_ALIASES = {"total_steps": "num_steps", "tok_per_sec": "avg_tok_sec",
                   "training_peak_mb": "train_peak_mb"}
_METRIC_LINE = re.compile(r"^METRIC\s+([A-Za-z_][\w.\-]*)\s*=\s*(\S+)\s*$")
_SUMMARY_LINE = re.compile(r"^([A-Za-z_][\w.\-]*):\s+(\S.*?)\s*$")


def _value(text: str):
    """'1,660,000' -> 1660000, '0.9979' -> 0.9979, 'nan' -> nan, 'n/a' -> 'n/a'."""
    t = text.strip().replace(",", "").replace("_", "")
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return text.strip()


def parse_metrics(text: str) -> dict:
    """THE metric parser: every script that needs numbers from a run calls this.

    Accepts, in one string:
      * the template's summary block: a line `---` then `name:   value` lines (the
        last block wins, so a log with several runs reports the latest);
      * `METRIC name=value` lines anywhere (they override the block);
      * a `last_run.json` document: its `result` section, then `training` for keys
        `result` lacks; `total_steps`, `avg_tok_sec` (`tok_per_sec` in older files) and
        `training_peak_mb` also appear under the summary block's names.
    Values become int or float where they parse ('1,660,000' included); 'nan' stays a
    float NaN; anything else ('n/a') stays a string.
    """
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(stripped)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            out = {}
            for section in ("training", "result"):
                for k, v in (doc.get(section) or {}).items():
                    if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                        out[k] = _value(v) if isinstance(v, str) else v
            for k, v in (doc.get("metrics") or {}).items():
                out.setdefault(k, v)
            for k, alias in _RECORD_ALIASES.items():
                if k in out:
                    out.setdefault(alias, out[k])
            return out
    metrics: dict = {}          # from METRIC lines, anywhere
    last_block: dict = {}       # the most recent complete summary block
    block: dict | None = None   # the block being read, after a `---` line
    for line in text.splitlines():
        s = line.strip()
        m = _METRIC_LINE.match(s)
        if m:
            metrics[m.group(1)] = _value(m.group(2))
            continue
        if s == "---":
            block = {}
            continue
        if block is not None:
            m = _SUMMARY_LINE.match(s)
            if m:
                block[m.group(1)] = _value(m.group(2))
                last_block = block
            else:
                block = None    # the block ended; a later `---` may start another
    return {**last_block, **metrics}


def parse_metrics_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_metrics(f.read())
    except FileNotFoundError:
        raise UserError(f"{path} not found: give a run log or last_run.json")


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def json_safe(metrics: dict) -> dict:
    """JSON has no NaN: non-finite numbers are stored as the strings 'nan'/'inf'."""
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
            for k, v in metrics.items()}


# -------------------------------------------------------------------------- stats

def better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "lower" else a > b


def improvement(new: float, old: float, direction: str) -> float:
    """Positive when `new` is better than `old`."""
    return old - new if direction == "lower" else new - old


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def measured(runs: list[dict]) -> list[dict]:
    """Runs that finished with a usable metric (kept or discarded)."""
    return [r for r in runs if r["status"] in ("keep", "discard") and finite(r.get("metric"))]


def noise_floor(runs: list[dict]) -> float | None:
    """Median absolute deviation of every recorded metric: a robust spread that one
    outlier (or one real breakthrough) barely moves. None with fewer than 3 runs."""
    xs = [r["metric"] for r in measured(runs)]
    if len(xs) < 3:
        return None
    m = median(xs)
    return median([abs(x - m) for x in xs])


def baseline_run(runs: list[dict]) -> dict | None:
    return next(iter(measured(runs)), None)


def best_run(runs: list[dict], direction: str) -> dict | None:
    best = None
    for r in runs:
        if r["status"] == "keep" and finite(r.get("metric")):
            if best is None or better(r["metric"], best["metric"], direction):
                best = r
    return best


def verdict(ratio: float | None) -> str:
    if ratio is None:
        return "unknown (fewer than 3 measured runs)"
    if ratio >= 2:
        return "likely real"
    if ratio >= 1:
        return "marginal"
    return "noise"


def confidence(runs: list[dict], direction: str) -> dict:
    base, best = baseline_run(runs), best_run(runs, direction)
    mad = noise_floor(runs)
    gain = improvement(best["metric"], base["metric"], direction) if base and best else None
    if gain is None or mad is None:
        ratio = None
    elif mad == 0:
        ratio = math.inf if gain else 0.0
    else:
        ratio = abs(gain) / mad
    return {"baseline": base, "best": best, "improvement": gain, "noise_floor": mad,
            "confidence": ratio, "verdict": verdict(ratio)}


POLICIES = ("strict", "balanced", "noise-aware")


def recommend(config: dict, runs: list[dict], metrics: dict, samples: list[float]) -> tuple[str, str]:
    """keep / discard / rerun for a finished run, by the session's keep policy.

    strict       keep any improvement over the best kept run.
    balanced     quality and speed together: keep an improvement unless throughput
                 (avg_tok_sec) fell more than 10%; also keep a metric within 0.1% of
                 the best when throughput rose 5% or more (same quality, more steps).
    noise-aware  (default) the improvement must beat the noise floor: >= 2x MAD keep,
                 1-2x rerun once to confirm (the mean of both runs then needs >= 1x),
                 < 1x discard. Until 3 runs give a noise floor it acts as strict.
    """
    name, direction = config["metric"], config["direction"]
    value = sum(samples) / len(samples)
    best = best_run(runs, direction)
    if best is None:
        return "keep", "first measured run: it is the baseline"
    gain = improvement(value, best["metric"], direction)
    shown = f"{name} {value:.6f} vs best {best['metric']:.6f} (run {best['run']})"
    policy = config.get("policy", "noise-aware")
    if policy == "balanced":
        old_tok = (best.get("metrics") or {}).get("avg_tok_sec")
        new_tok = metrics.get("avg_tok_sec")
        speed = (new_tok / old_tok - 1) if finite(old_tok) and finite(new_tok) and old_tok else 0.0
        rel = gain / abs(best["metric"]) if best["metric"] else gain
        if gain > 0 and speed >= -0.10:
            return "keep", f"{shown}: better, throughput {speed:+.0%}"
        if gain > 0:
            return "discard", f"{shown}: better but throughput {speed:+.0%} (over -10%)"
        if abs(rel) <= 0.001 and speed >= 0.05:
            return "keep", f"{shown}: same quality, throughput {speed:+.0%}"
        return "discard", f"{shown}: not better"
    if gain <= 0:
        return "discard", f"{shown}: not better"
    mad = noise_floor(runs)
    if policy == "strict" or mad is None:
        return "keep", f"{shown}: better"
    ratio = math.inf if mad == 0 else gain / mad
    detail = f"{shown}: {ratio:.1f}x noise floor {mad:.6f}"
    if ratio >= 2 or (len(samples) > 1 and ratio >= 1):
        return "keep", detail
    if ratio >= 1:
        return "rerun", detail + " (marginal: run-experiment again, unchanged, to confirm)"
    return "discard", detail + " (within noise)"


# ---------------------------------------------------------------------------- git
# Every git command the loop runs goes through here. The policy, in one place:
#   * setup-session creates branch autoresearch/<tag> at the current commit;
#   * log-experiment commits the target file for every run that changed it, so the
#     record's commit is exactly the code that was measured;
#   * keep leaves the branch on that commit; discard and crash move the branch back
#     to the last kept commit (`git reset --hard`) and keep the tried commit
#     reachable as refs/autoresearch/<tag>/run-<n>;
#   * resume-session saves a dirty work tree as refs/autoresearch/<tag>/interrupted-<n>
#     and resets to the last kept commit.
# Session files are git-ignored, so none of this ever touches them.

def git(root: str, *args: str, check: bool = True, env: dict | None = None) -> str:
    import subprocess
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise UserError(f"git {' '.join(args[:3])} failed: "
                        f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return proc.stdout.strip()


def git_identity_env(root: str) -> dict:
    """A committer identity for machines without one (fresh CI, containers)."""
    if git(root, "config", "user.email", check=False):
        return {}
    return {"GIT_AUTHOR_NAME": "autoresearch", "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
            "GIT_COMMITTER_NAME": "autoresearch", "GIT_COMMITTER_EMAIL": "autoresearch@localhost"}


def head(root: str) -> str:
    return git(root, "rev-parse", "HEAD")


def current_branch(root: str) -> str:
    try:        # read .git/HEAD directly: no process to start (a worktree falls through)
        with open(os.path.join(root, ".git", "HEAD"), encoding="utf-8") as f:
            ref = f.read().strip()
        if ref.startswith("ref: refs/heads/"):
            return ref[len("ref: refs/heads/"):]
    except OSError:
        pass
    return git(root, "rev-parse", "--abbrev-ref", "HEAD", check=False)


def branch_exists(root: str, branch: str) -> bool:
    import subprocess
    return subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
                          cwd=root, capture_output=True).returncode == 0


def tracked_changes(root: str) -> list[str]:
    import subprocess
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                         capture_output=True, text=True).stdout   # unstripped: XY columns
    return [line[3:] for line in out.splitlines() if line.strip()]


def commit_target(root: str, paths: list[str], message: str) -> str | None:
    """Commit the session's files (the target and its scope) if they differ from HEAD;
    return the new commit, else None."""
    if not git(root, "status", "--porcelain", "--", *paths):
        return None
    git(root, "add", "-A", "--", *paths)
    git(root, "commit", "--no-verify", "-q", "-m", message, "--", *paths,
        env=git_identity_env(root))
    return head(root)


def save_ref(root: str, tag: str, name: str, commit: str) -> str:
    """Keep `commit` reachable as refs/autoresearch/<tag>/<name>; a name already taken
    by another commit (two saves in one second) gets a suffix, never overwritten."""
    ref, n = f"refs/autoresearch/{tag}/{name}", 1
    while git(root, "rev-parse", "--verify", "--quiet", ref, check=False) not in ("", commit):
        n += 1
        ref = f"refs/autoresearch/{tag}/{name}-{n}"
    git(root, "update-ref", ref, commit)
    return ref


def reset_to(root: str, commit: str) -> None:
    git(root, "reset", "--hard", "-q", commit)


def last_kept_commit(config: dict, runs: list[dict]) -> str:
    for r in reversed(runs):
        if r["status"] == "keep":
            return r["commit"]
    return config["base_commit"]


def ensure_ignored(root: str) -> list[str]:
    """Make sure git ignores the session files (so reset/clean never touch them), by
    adding any missing ones to .git/info/exclude; the project's .gitignore is left
    alone. Returns the names added."""
    import subprocess
    # The state folder is asked about as a folder ("name/"), so that a directory-only
    # pattern such as `.autoresearch/` in the project's .gitignore counts as covering it.
    names = [n + "/" if n == STATE_DIR else n for n in SESSION_FILES]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=root,
                          capture_output=True, text=True)
    ignored = {n.rstrip("/") for n in proc.stdout.split()}
    missing = [n.rstrip("/") for n in names if n.rstrip("/") not in ignored]
    if missing:
        info = git(root, "rev-parse", "--git-path", "info/exclude")
        path = info if os.path.isabs(info) else os.path.join(root, info)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n# autoresearch session files\n" + "".join(f"/{n}\n" for n in missing))
    return missing


# ------------------------------------------------------------------ cli plumbing

def run_main(main) -> None:
    """Run a script's main(); a UserError becomes one line on stderr and exit 2."""
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def load_session(start: str | None = None) -> tuple[str, SessionLog]:
    root = find_root(start)
    log = read_log(root)
    for w in log.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return root, log


def fmt(x, digits: int = 6) -> str:
    return f"{x:.{digits}f}" if finite(x) else str(x)
