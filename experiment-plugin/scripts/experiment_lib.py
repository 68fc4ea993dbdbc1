"""The one module the plugin's scripts and hooks share.

Each command in this folder (`log-experiment`, ...) is a small executable that runs
its module (`log_experiment.py`), a thin command line over the functions here, so
each rule lives in exactly one place:

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
COMPILE_CACHE = os.path.join(STATE_DIR, "compile-cache")   # <tag>/: one session's torch.compile cache
# Parallel runs (waves): each candidate's state file, and its own git worktree.
WAVE_DIR = os.path.join(STATE_DIR, "wave")
WORKTREES = os.path.join(STATE_DIR, "worktrees")

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


def code_hash(root: str, config: dict, ref: str | None = None) -> str:
    """What identifies the code a run measured: the target's sha256, or with --scope
    files one hash over all of them (runs of identical code are repeats). From the work
    tree, or as committed at `ref` (a file missing there hashes as "-")."""
    import subprocess
    files, hashes = editable_files(config), []
    for f in files:
        if ref is None:
            path = os.path.join(root, f)
            hashes.append(hash_file(path) if os.path.isfile(path) else "-")
            continue
        proc = subprocess.run(["git", "show", f"{ref}:{f}"], cwd=root, capture_output=True)
        hashes.append(hashlib.sha256(proc.stdout).hexdigest() if proc.returncode == 0 else "-")
    if len(files) == 1:
        return hashes[0]
    return hashlib.sha256(" ".join(f"{f}:{h}" for f, h in zip(files, hashes)).encode()).hexdigest()


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

def compile_cache_env(root: str, config: dict) -> dict:
    """The environment that gives a run the session's own torch.compile cache.

    torch keeps compiled graphs and kernels in TORCHINDUCTOR_CACHE_DIR (and Triton's
    under it, in triton/, unless TRITON_CACHE_DIR is set); by default that is
    /tmp/torchinductor_<user>, which a container, a batch job's private /tmp or a tmp
    cleaner does not keep between runs, so each run would compile from scratch. In
    the session's folder every run finds what earlier runs compiled: a repeat of the
    same code, or a change the compiled model does not see (the optimizer, the
    schedule), compiles nothing; another change recompiles only what changed. A
    folder the user chose is kept."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return {}
    return {"TORCHINDUCTOR_CACHE_DIR": os.path.join(root, COMPILE_CACHE, config["tag"])}


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


def experiments(runs: list[dict]) -> int:
    """Runs that tried something: what --max-iterations counts. A record that undoes
    a keep (log-experiment writes it after a discard) is not one."""
    return sum(1 for r in runs if not r.get("reverts"))


def runs_since_keep(runs: list[dict]) -> int:
    """Runs since the last keep that stands (a keep undone later counts as a run, the
    record undoing it as none)."""
    undone, n = undone_runs(runs), 0
    for r in reversed(runs):
        if r.get("reverts"):
            continue
        if r["status"] == "keep" and r["run"] not in undone:
            break
        n += 1
    return n


def loop_end_reason(root: str, config: dict, runs: list[dict]) -> str | None:
    """Why the loop is over (the stop file, the cap, the target value, a plateau), or
    None while it should go on."""
    if os.path.exists(stop_file(root)):
        return f"{stop_file(root)} was found"
    cap, done = config.get("max_iterations"), experiments(runs)
    if cap and done >= cap:
        return f"the iteration cap was reached ({done} of {cap} runs)"
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
    learned, label = lesson(r), "learned" if asi(r).get("learned") or asi(r).get("lesson") else "hypothesis"
    return (f"run {r['run']:>3} {r['status']:<7} {shown:>10}  {text}"
            + (f" ({label}: {learned[:120]})" if learned else ""))


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
        f"{experiments(runs)}{f' of {cap}' if cap else ''} runs logged; {best_line(config, runs)}.",
    ]
    if runs:
        lines.append("Last runs:")
        lines += ["  " + run_line(config, r) for r in runs[-5:]]
    if not owned:
        lines.append("The loop is not running in this conversation: /experiment:resume "
                     "continues it here, /experiment:end closes the session.")
    elif wave_line(root):
        lines.append(f"Waves: {wave_line(root)}. Next: wait-wave for the next result, log it "
                     "(log-experiment --candidate NAME), refill free workers (new-candidate, "
                     "submit-wave).")
    elif pending:
        lines.append(f"Next: a finished run waits: log it with log-experiment, then run {nxt + 1}.")
    else:
        lines.append(f"Next: run {nxt}: pick the next idea (read autoresearch.md), edit "
                     f"{config['target']}, run-experiment, log-experiment. Do not stop or ask.")
    return "\n".join(lines)


PROGRESS_EVERY = 10         # runs between progress reports (setup --progress-every)
PROGRESS_BEGIN = "<!-- progress: rewritten by log-experiment; edit anything outside it -->"
PROGRESS_END = "<!-- /progress -->"


def progress_report(root: str, config: dict, runs: list[dict], every: int) -> str:
    """Where the session stands, every few runs: runs and keeps, the best and its
    distance from the baseline, the noise, the last runs' outcomes, and the next ideas
    (the top of the Ideas queue in autoresearch.md)."""
    base, best = baseline_run(runs), best_run(runs, config["direction"])
    keeps = len(standing_keeps(runs))
    done = experiments(runs)
    lines = [f"## Progress after {done} runs", "",
             f"- {done} runs, {keeps} kept; {best_line(config, runs)}"]
    if base and best:
        delta = improvement(best["metric"], base["metric"], config["direction"])
        pct = 100 * delta / abs(base["metric"]) if base["metric"] else 0.0
        lines.append(f"- best against the baseline: {delta:+.6f} ({pct:+.2f}%)")
    lines.append(f"- {noise_line(runs)}")
    flying = wave_line(root)
    if flying:
        lines.append(f"- {flying}")
    lines.append(f"- the last {min(every, len(runs))} runs:")
    lines += [f"  - {run_line(config, r)}" for r in runs[-every:]]
    queue = ideas_queue(root)
    lines.append("- next: " + ("; ".join(queue[:3]) if queue else
                               "(the Ideas queue in autoresearch.md is empty: fill it)"))
    return "\n".join(lines)


def ideas_queue(root: str) -> list[str]:
    """The items under "## Ideas queue" in autoresearch.md, in order."""
    try:
        with open(os.path.join(root, NOTES), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    if "## Ideas queue" not in text:
        return []
    section = text.split("## Ideas queue", 1)[1].split("\n## ", 1)[0]
    items = []
    for line in section.splitlines():
        s = line.strip()
        if not s:
            continue
        if line[:1].isspace() and items:          # a wrapped item goes on: one idea, whole
            items[-1] += " " + s
        elif s.startswith(("-", "*")) or s[:1].isdigit():
            items.append(s.lstrip("-*0123456789. ").strip())
    return items


def write_progress(root: str, report: str) -> None:
    """Put the report into autoresearch.md between its markers (replacing the last one),
    or at the end the first time; the rest of the agent's document is left as it is."""
    path = os.path.join(root, NOTES)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    block = f"{PROGRESS_BEGIN}\n{report}\n{PROGRESS_END}"
    if PROGRESS_BEGIN in text and PROGRESS_END in text:
        head, rest = text.split(PROGRESS_BEGIN, 1)
        text = head + block + rest.split(PROGRESS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_atomic(path, text)


def ended_message(config: dict, runs: list[dict], reason: str) -> str:
    """What the person reads when a session ends: what happened, and what next."""
    n = experiments(runs)
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


def stop_leftover_run(root: str, path: str | None = None) -> str | None:
    """Kill a training run left behind by a run-experiment that was itself killed
    outright (SIGKILL cannot be caught, and the run lives in its own process group).
    run-experiment records the group in .autoresearch/running.json while it runs (a
    wave's worker, in the candidate's own `path`)."""
    import signal
    path = path or os.path.join(root, STATE_DIR, "running.json")
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


# -------------------------------------------------------------------------- waves
# With --workers W, up to W candidates run at once (scripts/waves.py has the
# machinery). A candidate is one commit on the kept state in its own git worktree
# under .autoresearch/worktrees/<name>/; its state lives in .autoresearch/wave/<name>.json:
#   prepared  worktree made, waiting for the edit      queued   committed, waiting for a worker
#   running   on a worker                              done     finished, not yet shown
#   decided   shown by wait-wave with a recommendation lost     its run was killed (resume)
# Logging a candidate removes both. What the hooks and reports need is read here.

IN_FLIGHT = ("queued", "running")


def candidates(root: str) -> list[dict]:
    """Every candidate not yet logged, oldest first."""
    folder = os.path.join(root, WAVE_DIR)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and n[0] == "c")
    except OSError:
        return []
    out = []
    for n in names:
        data = read_json(os.path.join(folder, n), default=None)
        if isinstance(data, dict) and data.get("name"):
            out.append(data)
    return sorted(out, key=lambda c: int(c["name"][1:]) if c["name"][1:].isdigit() else 0)


def wave_line(root: str) -> str:
    """'2 candidates in flight (c3 running on cpu0, c4 queued), 1 finished waiting for
    wait-wave' or "" when no candidate is open."""
    cands = candidates(root)
    if not cands:
        return ""
    flying = [c for c in cands if c.get("state") in IN_FLIGHT]
    parts = [f"{c['name']} {c['state']}" + (f" on {c['worker']}" if c.get("state") == "running"
                                            and c.get("worker") else "") for c in flying]
    text = f"{len(flying)} candidate(s) in flight" + (f" ({', '.join(parts)})" if parts else "")
    waiting = [c["name"] for c in cands if c.get("state") in ("done", "decided")]
    if waiting:
        text += f", {len(waiting)} finished waiting to be logged ({', '.join(waiting)})"
    other = [c["name"] for c in cands if c.get("state") in ("prepared", "lost")]
    if other:
        text += f", {len(other)} prepared or lost, not submitted ({', '.join(other)})"
    return text


def candidate_root(root: str, rel: str) -> tuple[str, str] | None:
    """For a path (relative to the project root) inside a candidate's worktree: that
    worktree's root and the path inside it, so the guard judges it like the project."""
    parts = rel.split(os.sep)
    base = WORKTREES.split(os.sep)
    if len(parts) > len(base) + 1 and parts[:len(base)] == base:
        return os.path.join(root, *parts[:len(base) + 1]), os.path.join(*parts[len(base) + 1:])
    return None


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


# --------------------------------------------------------------------------- load
# A run that other work on the machine slowed down fits fewer steps into its budget
# and scores worse for reasons that have nothing to do with its code. On a 2-core
# CPU another process starting beside a 120 s run cut it from 45 steps to 28, a
# larger change than most real gains. run-experiment therefore reads the machine's
# counters before and after every run (nothing runs beside the training except, on
# a GPU machine, a poll of nvidia-smi every few seconds) and a run over a threshold
# is "disturbed": the recommendation becomes a rerun, and its sample never enters
# the noise estimate.
#
# The thresholds are shares of the machine's whole CPU capacity (cpus x seconds),
# measured on a 2-core VM shared with other VMs (research log 2026-11-24): a quiet
# run reads 0-2% for others and 0-8% for steal; a run with a one-core hog beside it
# reads about 45%.
DISTURBED_OTHERS = 0.10     # CPU time of processes other than the run
DISTURBED_STEAL = 0.15      # time the hypervisor gave to other machines (VM steal)
# Shorter runs are not judged: over a second or two the counters say more about a
# passing daemon than about the run (and a stand-in target that prints a number
# has nothing to disturb).
DISTURBED_MIN_SECONDS = 5.0
DISTURBED_BUSY = 3          # disturbed runs of one code before the advice changes
GPU_POLL_SECONDS = 5.0


def read_proc_stat(path: str = "/proc/stat", cpus: list[int] | None = None) -> dict | None:
    """The first line of /proc/stat in seconds: busy (user, nice, system, irq,
    softirq; guest time is already inside user), idle (idle, iowait) and steal.
    With `cpus`, the sum of those cores' own lines instead: a wave's worker pinned to
    some cores is disturbed by what runs there, not by its siblings on the others."""
    try:
        with open(path, encoding="ascii") as f:
            if cpus is None:
                rows = [f.readline().split()]
                if not rows[0] or rows[0][0] != "cpu":
                    return None
            else:
                names = {f"cpu{c}" for c in cpus}
                rows = [p for p in (line.split() for line in f) if p and p[0] in names]
                if len(rows) != len(names):
                    return None
        v = [0] * 8
        for parts in rows:
            for i, x in enumerate(parts[1:9]):
                v[i] += int(x)
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return {"busy": (user + nice + system + irq + softirq) / tick,
            "idle": (idle + iowait) / tick, "steal": steal / tick}


def parse_cputime(text: str) -> float | None:
    """ps's cumulative CPU time: '0:01.23', '12:03.45', '1:02:03', '2-03:04:05'."""
    try:
        days, _, rest = text.strip().rpartition("-")
        seconds = 0.0
        for part in rest.split(":"):
            seconds = seconds * 60 + float(part)
        return seconds + (int(days) * 86400 if days else 0)
    except ValueError:
        return None


def parse_ps_cputimes(text: str) -> dict:
    """`ps -A -o pid=,pgid=,time=` -> {pid: (pgid, cpu seconds)} (macOS has no /proc)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            pid, pgid = int(parts[0]), int(parts[1])
        except ValueError:
            continue
        seconds = parse_cputime(parts[2])
        if seconds is not None:
            out[pid] = (pgid, seconds)
    return out


def parse_gpu_pids(text: str) -> list[int]:
    """`nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`
    -> the pids using the GPU. Lines it cannot read ('[N/A]', 'No running processes
    found', a driver message) are skipped."""
    pids = []
    for line in text.splitlines():
        first = line.split(",")[0].strip()
        if first.isdigit():
            pids.append(int(first))
    return pids


class LoadMonitor:
    """What other work did to the machine while one run ran; see `disturbed`.

    Linux: others' CPU = all busy time in /proc/stat minus the run's own CPU time
    (its rusage, children included, once it has been waited for) minus this
    process's own. macOS: the growth of every other process's CPU time in `ps`.
    GPU (where nvidia-smi exists): processes outside the run's process group that
    hold the device, polled from a daemon thread. Every reading is best effort: a
    failure leaves a field out, never stops or slows the run.
    """

    def __init__(self, pgid: int, cpus: list[int] | None = None, siblings=None):
        # A wave's worker: `cpus` are the cores it is pinned to (only they are read);
        # `siblings()` gives the process groups of the other candidates running now,
        # which are not "other load" on a GPU.
        self.pgid, self.cpus, self.siblings = pgid, cpus, siblings
        self.gpu_others: set[int] = set()
        self.gpu_polls = 0
        self._thread = None

    @staticmethod
    def _own_cpu() -> float:
        import resource
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime

    def _ps(self) -> dict | None:
        if sys.platform != "darwin":
            return None
        import subprocess
        try:
            out = subprocess.run(["ps", "-A", "-o", "pid=,pgid=,time="], capture_output=True,
                                 text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return parse_ps_cputimes(out)

    def start(self) -> "LoadMonitor":
        import time
        try:
            self.t0 = time.monotonic()
            self.stat0 = read_proc_stat(cpus=self.cpus)
            self.self0, self.child0 = self._own_cpu()
            self.ps0 = None if self.stat0 else self._ps()
            import shutil
            if shutil.which("nvidia-smi"):
                import threading
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._poll_gpu, daemon=True)
                self._thread.start()
        except Exception:       # a reading must never stop the run
            self.t0 = None
        return self

    def _poll_gpu(self) -> None:
        import subprocess
        while not self._stop.wait(GPU_POLL_SECONDS if self.gpu_polls else 2.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                return
            self.gpu_polls += 1
            mine = {self.pgid} | (set(self.siblings()) if self.siblings else set())
            for pid in parse_gpu_pids(out):
                try:
                    if os.getpgid(pid) not in mine:
                        self.gpu_others.add(pid)
                except OSError:
                    # Not visible here (another PID namespace, or gone): it cannot be
                    # told apart from the run itself, so it is not counted.
                    pass

    def stop(self) -> dict:
        """Call after the run was waited for. Returns the reading (see `disturbed`)."""
        import time
        if self._thread:
            self._stop.set()
            self._thread.join(timeout=12)
        if getattr(self, "t0", None) is None:
            return {}
        try:
            wall = time.monotonic() - self.t0
            cpus = len(self.cpus) if self.cpus else (os.cpu_count() or 1)
            capacity = cpus * wall
            reading = {"seconds": round(wall, 1), "cpus": cpus}
            if capacity <= 0:
                return reading
            self1, child1 = self._own_cpu()
            ours = (self1 - self.self0) + (child1 - self.child0)
            stat1 = read_proc_stat(cpus=self.cpus) if self.stat0 else None
            if stat1:
                others = (stat1["busy"] - self.stat0["busy"]) - ours
                reading["others"] = round(max(0.0, others) / capacity, 3)
                reading["steal"] = round((stat1["steal"] - self.stat0["steal"]) / capacity, 3)
            elif self.ps0 is not None:
                ps1 = self._ps() or {}
                others = sum(sec - (self.ps0.get(pid, (0, 0.0))[1])
                             for pid, (pgid, sec) in ps1.items()
                             if pgid != self.pgid and pid != os.getpid())
                reading["others"] = round(max(0.0, others) / capacity, 3)
            if self.gpu_polls:
                reading["gpu_others"] = len(self.gpu_others)
            return reading
        except Exception:
            return {}


def add_sample(value: float, seed: int, why: str | None, samples: list, seeds: list,
               disturbed_runs: list) -> None:
    """File a finished run's metric: a sample of its code (with its seed), or, when
    other load disturbed the run (`why`), set apart where it never counts."""
    if why:
        disturbed_runs.append({"metric": value, "seed": seed, "why": why})
    else:
        samples.append(value)
        seeds.append(seed)


def disturbed(reading: dict | None) -> str | None:
    """Why a run counts as disturbed (one short phrase), or None for a quiet one."""
    reading = reading or {}
    if os.environ.get("AUTORESEARCH_LOAD_CHECK") == "0" \
            or not finite(reading.get("seconds")) or reading["seconds"] < DISTURBED_MIN_SECONDS:
        return None
    why = []
    if finite(reading.get("others")) and reading["others"] > DISTURBED_OTHERS:
        why.append(f"other processes used {reading['others']:.0%} of the CPUs")
    if finite(reading.get("steal")) and reading["steal"] > DISTURBED_STEAL:
        why.append(f"VM steal {reading['steal']:.0%}")
    if reading.get("gpu_others"):
        why.append(f"{reading['gpu_others']} other process(es) on the GPU")
    return "; ".join(why) or None


# ------------------------------------------------------------ noise from repeats
# The noise a change must beat is the spread between runs of IDENTICAL code: a new
# seed each time (run-experiment sees to that) and whatever timing jitter the budget
# adds. Repeats come from the baseline (--baseline-runs), confirmation reruns and
# re-measures of the kept state. Samples are grouped by the hash of the target file,
# so a re-measure logged much later still joins its group; the within-group variance
# is pooled over every group. A run that other load disturbed is never a sample.

def run_samples(record: dict) -> list[float]:
    """The undisturbed samples a logged run stands for. Logs written before samples
    were recorded for every run count a measured run as one sample."""
    if isinstance(record.get("samples"), list):
        return [x for x in record["samples"] if finite(x)]
    if record.get("status") in ("keep", "discard") and finite(record.get("metric")) \
            and not record.get("disturbed"):
        return [record["metric"]]
    return []


def code_groups(runs: list[dict], candidate: dict | None = None) -> dict:
    """{target hash: [samples]} over the log, plus the waiting candidate's samples.
    Runs without a target hash (older logs) each form a group of their own."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(r.get("target_sha") or f"run-{r.get('run')}", []).extend(run_samples(r))
    if candidate:
        groups.setdefault(candidate["target_sha"], []).extend(candidate.get("samples", []))
    return groups


def pooled_noise(groups: dict) -> tuple[float | None, int]:
    """(sigma, degrees of freedom): the pooled within-code standard deviation of one
    run. sigma is None until some code has been measured twice."""
    ss, dof = 0.0, 0
    for xs in groups.values():
        if len(xs) > 1:
            m = sum(xs) / len(xs)
            ss += sum((x - m) ** 2 for x in xs)
            dof += len(xs) - 1
    return (math.sqrt(ss / dof) if dof else None), dof


def noise(runs: list[dict], candidate: dict | None = None) -> tuple[float | None, int]:
    return pooled_noise(code_groups(runs, candidate))


def noise_line(runs: list[dict], digits: int = 4) -> str:
    """One line for people: 'noise sigma 0.0061 from 5 repeats (4 dof)', or how to get one."""
    groups = code_groups(runs)
    sigma, dof = pooled_noise(groups)
    if sigma is None:
        return "noise sigma unknown: no code measured twice yet (rerun the kept state to measure it)"
    repeats = sum(len(xs) for xs in groups.values() if len(xs) > 1)
    return f"noise sigma {sigma:.{digits}f} from {repeats} repeats of identical code ({dof} dof)"


def next_seed(runs: list[dict], target_sha: str, pending: dict | None = None) -> int:
    """42 for the first run of some code (today's baseline stays reproducible); each
    further run of the same code (same target hash) gets the next seed, so repeats
    measure the seed-to-seed spread a real change must beat, not only timing jitter."""
    earlier = sum(len(r.get("seeds") or run_samples(r)) + len(r.get("disturbed") or [])
                  for r in runs if r.get("target_sha") == target_sha)
    if pending and pending.get("target_sha") == target_sha:
        earlier += len(pending.get("seeds") or []) + len(pending.get("disturbed") or [])
    return 42 + earlier


def code_samples(runs: list[dict], record: dict) -> list[float]:
    """Every sample in the log of the code a keep record stands for. A keep made on
    disturbed runs alone has no samples: its metric stands in."""
    sha = record.get("target_sha")
    return (code_groups(runs)[sha] if sha else run_samples(record)) or [record["metric"]]


def kept_state(config: dict, runs: list[dict]) -> dict | None:
    """The code the branch stands on: its target hash, every sample of that code in
    the log (the keep, its confirmations, later re-measures) and their mean."""
    last = next((r for r in reversed(runs) if r["status"] == "keep" and finite(r.get("metric"))),
                None)
    if last is None:
        return None
    if last.get("reverts"):     # undoing a keep: the state is the keep it went back to
        last = next((r for r in reversed(standing_keeps(runs))
                     if r.get("target_sha") == last.get("target_sha")), last)
    sha = last.get("target_sha")
    samples = code_samples(runs, last)
    return {"run": last, "target_sha": sha, "samples": samples,
            "mean": sum(samples) / len(samples), "metrics": last.get("metrics") or {}}


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
    """Median absolute deviation of every recorded metric (the MAD confidence kept for
    compatibility). It is the spread between DIFFERENT ideas, harmful ones included,
    so it grows with their variety: reported, never used to decide. None with fewer
    than 3 runs."""
    xs = [r["metric"] for r in measured(runs)]
    if len(xs) < 3:
        return None
    m = median(xs)
    return median([abs(x - m) for x in xs])


def baseline_run(runs: list[dict]) -> dict | None:
    return next(iter(measured(runs)), None)


def undone_runs(runs: list[dict]) -> set:
    """The run numbers of keeps undone later (see revert_due)."""
    return {r["reverts"] for r in runs if r.get("reverts")}


def standing_keeps(runs: list[dict]) -> list[dict]:
    """The keeps that stand: not undone later, and not the records that undo them."""
    undone = undone_runs(runs)
    return [r for r in runs if r["status"] == "keep" and r["run"] not in undone
            and not r.get("reverts")]


def best_run(runs: list[dict], direction: str) -> dict | None:
    """The best kept run, leaving out keeps undone later (see standing_keeps)."""
    best = None
    for r in standing_keeps(runs):
        if finite(r.get("metric")):
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
    sigma, dof = noise(runs)
    return {"baseline": base, "best": best, "improvement": gain, "noise_floor": mad,
            "confidence": ratio, "verdict": verdict(ratio), "sigma": sigma, "dof": dof}


# ------------------------------------------------------------------- keep policies

POLICIES = ("noise-aware", "strict", "quality-speed")
# Configs written before the quality+speed rule was named keep working.
POLICY_ALIASES = {"balanced": "quality-speed"}
DEFAULT_POLICY = "noise-aware"
DEFAULT_BASELINE_RUNS = 3


def policy_name(config: dict) -> str:
    name = config.get("policy") or DEFAULT_POLICY
    name = POLICY_ALIASES.get(name, name)
    if name not in POLICIES:
        raise UserError(f"unknown keep policy {name!r}: use one of {', '.join(POLICIES)}")
    return name


# The noise-aware rule judges a candidate by how likely it is to be a real gain,
# given everything measured so far, under a stated model of proposals. In units of
# sigma (one run's noise), the true effect d of an edit on the kept state is
#     null     d = 0                     half of all edits
#     harmful  d > 0, half-normal(3)     30%
#     helpful  d < 0, exponential        20%, an equal mixture of means 0.5, 1, 2, 4, 8
# (most ideas do nothing or hurt; a few help, at every scale; no one size is assumed).
# The model gives two things a threshold on a difference cannot:
#   * P(helpful) for the candidate, judged against the kept state's *estimated* value
#     with its uncertainty (not a lucky draw);
#   * the kept state's value after a keep: the posterior mean of (old value + d),
#     which shrinks the luck a marginal keep was kept on (the winner's curse) instead
#     of carrying it into every later comparison;
#   * more of that value from runs already made: a discarded edit that was probably
#     null is nearly a re-measure of the kept state, at no extra cost.
# Everything is closed form (a point mass, a half-normal and exponentials against a
# normal likelihood), so a 1,000-run log is replayed in milliseconds.
PRIOR_NULL, PRIOR_HARMFUL, PRIOR_HELPFUL = 0.5, 0.3, 0.2
HARMFUL_SCALE = 3.0
HELPFUL_MEANS = (0.5, 1.0, 2.0, 4.0, 8.0)

# The decision, from P = P(helpful) and the expected gain it carries:
#   * first run: keep at P >= keep[0]; discard under `drop`; in between the result is
#     marginal, and it gets one confirming run on a new seed, unless its expected
#     gain is worth less than a new idea has been worth in this session (at G = 4
#     sigma a confirming run costs more than most marginal results return);
#   * after the confirming run: keep at P >= keep[1]. That bar looks low, but what
#     reaches it is mostly small real gains, few null or harmful edits get this far,
#     and a kept null edit costs nothing in the metric;
#   * a keep is provisional: once `undo_after` runs were built on it, when its own
#     samples and what those runs say about it (each is nearly a re-measure, as far
#     as it was a null edit) put P(helpful) under `undo_below`, it is undone
#     (revert_due). That is what lets the first-run bar sit below one half: a lucky
#     keep costs a run or two, not the rest of the night.
# Chosen on benchmarks/bench_decisions.py (research log 2026-11-24 and 2026-11-29).
NOISE_AWARE = {"keep": (0.45, 0.25), "drop": 0.2, "max_samples": 2,
               "rerun_worth": 1.0, "worth_floor": 0.05, "undo_below": 0.3, "undo_after": 1}

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _log_phi(x: float) -> float:
    return -0.5 * x * x - _LOG_SQRT_2PI


def _log_cdf(x: float) -> float:
    """log of the standard normal CDF, accurate far into the lower tail."""
    if x > -8:
        return math.log(0.5 * math.erfc(-x / _SQRT2))
    x2 = x * x
    return _log_phi(x) - math.log(-x) + math.log1p(-1 / x2 + 3 / x2 ** 2 - 15 / x2 ** 3)


def _mills(b: float) -> float:
    """phi(b) / Phi(b)."""
    return math.exp(_log_phi(b) - _log_cdf(b))


def effect_posterior(diff: float, spread: float) -> dict:
    """The posterior of a candidate's true effect d (sigma units, negative is better)
    given diff = observed minus kept estimate and spread = the sd of that difference,
    both in sigma units. Returns {p_helpful, p_null, p_harmful, mean, var}."""
    s2 = spread * spread
    parts = []   # (log weight, mean of d, variance of d, kind)
    parts.append((math.log(PRIOR_NULL) + _log_phi(diff / spread) - math.log(spread),
                  0.0, 0.0, "null"))
    h2 = HARMFUL_SCALE ** 2
    v = h2 * s2 / (h2 + s2)
    m, sd = diff * h2 / (h2 + s2), math.sqrt(v)
    b = m / sd
    r = _mills(b)
    lw = (math.log(2 * PRIOR_HARMFUL) + _log_phi(diff / math.sqrt(h2 + s2))
          - 0.5 * math.log(h2 + s2) + _log_cdf(b))
    parts.append((lw, m + sd * r, max(v * (1 - r * (r + b)), 0.0), "harmful"))
    for mean in HELPFUL_MEANS:
        lam = 1 / mean
        a = diff + lam * s2
        b = -a / spread
        r = _mills(b)
        lw = (math.log(PRIOR_HELPFUL / len(HELPFUL_MEANS)) + math.log(lam) + lam * diff
              + lam * lam * s2 / 2 + _log_cdf(b))
        parts.append((lw, a - spread * r, max(s2 * (1 - b * r - r * r), 0.0), "helpful"))
    top = max(p[0] for p in parts)
    ws = [math.exp(p[0] - top) for p in parts]
    total = sum(ws)
    ws = [w / total for w in ws]
    mean = sum(w * p[1] for w, p in zip(ws, parts))
    var = sum(w * (p[2] + p[1] ** 2) for w, p in zip(ws, parts)) - mean ** 2
    out = {"p_null": 0.0, "p_harmful": 0.0, "p_helpful": 0.0, "mean": mean, "var": max(var, 0.0),
           "gain_helpful": 0.0}
    for w, p in zip(ws, parts):
        out["p_" + p[3]] += w
        if p[3] == "helpful":
            out["gain_helpful"] -= w * p[1]
    return out


def _oriented(x: float, direction: str) -> float:
    """Metric values turned so that lower is better."""
    return x if direction == "lower" else -x


def kept_estimate(config: dict, runs: list[dict], sigma: float | None = None) -> dict | None:
    """The kept state's estimated value: {mean, sd, samples, held} in metric units, by
    replaying the log's keeps under the model above. The baseline and re-measures
    add their samples (a normal update); each keep of new code moves the estimate
    to the posterior of (old value + d) given the candidate's samples; a revert (a
    keep record with "reverts") puts back the estimate from before the keep it undoes.
    Without a noise estimate it is the plain mean of the kept code's samples, sd None.

    `held`, after a keep of new code: whether that keep still holds up, judged on
    everything measured since (see revert_due), as {run, record, since, p, prev}: the
    run kept and its record, the runs logged on top of it, P(it was a real gain), and
    the keep record of the state it replaced."""
    direction = config["direction"]
    if sigma is None:
        sigma, _ = noise(runs)
    kept = kept_state(config, runs)
    if kept is None:
        return None
    if not sigma:
        return {"mean": kept["mean"], "sd": None, "samples": len(kept["samples"]), "held": None}
    mu = var = None
    sha = None
    last_keep = None    # the keep record the branch stands on
    prov = None         # the latest keep of new code, while it can still be undone
    left = {}           # commit: (mu, var, sha, keep record) of each kept state moved on from
    for r in runs:
        if r["status"] == "keep" and r.get("reverts") and prov and prov["run"] == r["reverts"]:
            left[commit_of(last_keep)] = (mu, var, sha, last_keep)
            mu, var, sha = prov["before"]
            last_keep, prov = prov["prev"], None
            continue
        if r["status"] not in ("keep", "discard") or not finite(r.get("metric")):
            continue
        base, here = r.get("base"), commit_of(last_keep) if last_keep else None
        if base and here and base[:len(here)] != here:
            # A wave's candidate built on a state the branch has since left (another
            # candidate was kept, or that keep was undone, while it ran): it measured
            # that state plus its change, which says nothing about this one...
            if r["status"] != "keep" or base not in left:
                continue
            # ...unless it was kept in place of the change made since: then the new
            # state is that state plus its change.
            left[commit_of(last_keep)] = (mu, var, sha, last_keep)
            mu, var, sha, last_keep = left[base]
            prov = None
        xs = [_oriented(x, direction) for x in run_samples(r)]
        if not xs:
            if r["status"] != "keep":
                continue
            xs = [_oriented(r["metric"], direction)]
        n, xbar = len(xs), sum(xs) / len(xs)
        if mu is None or (r.get("target_sha") and r.get("target_sha") == sha):
            # The baseline, or the kept code measured again: a plain normal update.
            if mu is None:
                mu, var = xbar, sigma ** 2 / n
            else:
                prec = 1 / var + n / sigma ** 2
                mu, var = (mu / var + n * xbar / sigma ** 2) / prec, 1 / prec
            sha = sha or r.get("target_sha")
            if r["status"] == "keep":
                last_keep = r
            if prov:
                prov["prec"] += n / sigma ** 2
                prov["sum"] += n * xbar / sigma ** 2
            continue
        # Other code: xbar = V_kept + d + noise. The posterior of d, given how far
        # xbar is from the estimate, says how much these samples tell about the kept
        # value (a likely null edit is nearly a re-measure; a clear change, nothing)
        # and, after a keep, where the new state stands.
        s2 = sigma ** 2 / n
        post = effect_posterior((xbar - mu) / sigma, math.sqrt(var + s2) / sigma)
        v = var * s2 / (var + s2)
        a = (mu * s2 + xbar * var) / (var + s2)
        if r["status"] == "keep":           # the new state: V_kept + d
            left[commit_of(last_keep)] = (mu, var, sha, last_keep)
            prov = {"run": r["run"], "record": r, "before": (mu, var, sha), "prev": last_keep,
                    "prec": n / sigma ** 2, "sum": n * xbar / sigma ** 2, "since": 0}
            b = s2 / (var + s2)
            mu, var = a + b * sigma * post["mean"], v + b * b * sigma ** 2 * post["var"]
            sha, last_keep = r.get("target_sha"), r
        else:                               # still the old state: V_kept
            c = var / (var + s2)
            mu, var = a - c * sigma * post["mean"], v + c * c * sigma ** 2 * post["var"]
            if prov:
                # A discard built on the kept code re-measures it, as far as it was null.
                prov["prec"] += post["p_null"] / s2
                prov["sum"] += post["p_null"] * xbar / s2
                prov["since"] += 1
    held = None
    if prov:
        # The keep judged again, on its own samples and on what the runs since said
        # about the code it left, against the state it replaced (known apart from it).
        before_mu, before_var, _ = prov["before"]
        own = prov["sum"] / prov["prec"]
        p = effect_posterior((own - before_mu) / sigma,
                             math.sqrt(1 / prov["prec"] + before_var) / sigma)["p_helpful"]
        held = {"run": prov["run"], "record": prov["record"], "since": prov["since"], "p": p,
                "prev": prov["prev"]}
    return {"mean": _oriented(mu, direction), "sd": math.sqrt(var), "samples": len(kept["samples"]),
            "held": held}


def estimate_line(config: dict, runs: list[dict]) -> str | None:
    """One line for people: where the kept state stands, as estimated (the value the
    noise-aware rule judges against), beside the plain mean of its samples."""
    est, kept, base = kept_estimate(config, runs), kept_state(config, runs), baseline_run(runs)
    if not est or est["sd"] is None or not base:
        return None
    sigma, _ = noise(runs)
    raw = sum(kept["samples"]) / len(kept["samples"])
    gain = improvement(est["mean"], base["metric"], config["direction"])
    return (f"kept state (run {kept['run']['run']}): estimated {config['metric']} "
            f"{est['mean']:.6f} +- {est['sd']:.6f}, {gain / sigma:+.1f} sigma from the baseline "
            f"(its own {len(kept['samples'])} sample(s) average {raw:.6f}; the estimate takes "
            "out the luck it was kept on)")


# sigma itself is estimated, from few degrees of freedom early in a session (the
# baseline's 3 runs give 2). A sigma that happens to come out small would make noise
# look like gains, so the decision averages P(helpful) over the values of sigma the
# repeats allow: five equally likely ones, at the 10/30/50/70/90% points of the
# scaled chi-square the pooled variance follows.
_QUANTILES_Z = (-1.2816, -0.5244, 0.0, 0.5244, 1.2816)


def sigma_draws(sigma: float, dof: int) -> list[float]:
    """Five equally weighted values of the true sigma given the pooled estimate and
    its degrees of freedom (Wilson-Hilferty quantiles of chi-square)."""
    out = []
    for z in _QUANTILES_Z:
        q = dof * max(1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof)), 0.05) ** 3
        out.append(sigma * math.sqrt(dof / q))
    return out


def idea_worth(config: dict, runs: list[dict], est: dict, sigma: float) -> float:
    """What a new idea has been worth in this session so far, in sigma: the estimated
    gain of the kept state over the baseline per run since the baseline (at least
    NOISE_AWARE["worth_floor"]). A confirming run is one idea not tried: it is run
    only when the marginal candidate's expected gain is worth more than that."""
    base = baseline_run(runs)
    xs = run_samples(base) or [base["metric"]]
    gain = improvement(est["mean"], sum(xs) / len(xs), config["direction"]) / sigma
    return max(gain / max(1, len(runs) - 1), NOISE_AWARE["worth_floor"])


def recommend(config: dict, runs: list[dict], candidate: dict) -> tuple[str, str]:
    """keep / discard / rerun for the code just run, by the session's keep policy.

    `candidate`: {"target_sha", "samples": [undisturbed metric values of this code
    since the last log], "metrics": the latest run's metrics, "disturbed": why the
    latest run does not count, or absent}.
    """
    name, direction = config["metric"], config["direction"]
    if candidate.get("disturbed_now"):
        busy = candidate.get("disturbed_runs", 1) >= DISTURBED_BUSY
        return "rerun", (f"disturbed: {candidate['disturbed_now']}; run-experiment again "
                         "unchanged (this run is not counted)"
                         + (f". {candidate['disturbed_runs']} runs of this code were disturbed: "
                            "the machine is busy. Find the other load (top) and stop it, or "
                            "`sleep 300` before the next run; AUTORESEARCH_LOAD_CHECK=0 judges "
                            "disturbed runs anyway" if busy else ""))
    samples = candidate["samples"]
    value = sum(samples) / len(samples)
    n_c = len(samples)
    policy = policy_name(config)
    kept = kept_state(config, runs)
    if kept is None:
        wanted = config.get("baseline_runs") or 1
        if policy == "noise-aware" and n_c < wanted:
            return "rerun", (f"baseline sample {n_c} of {wanted} (measuring the noise): "
                             "run-experiment again unchanged, on a new seed")
        sigma, dof = noise(runs, candidate)
        extra = f"; noise sigma {sigma:.6f} ({dof} dof)" if sigma is not None else ""
        return "keep", f"baseline: {name} {value:.6f} (mean of {n_c}){extra}"
    if kept["target_sha"] and kept["target_sha"] == candidate["target_sha"]:
        return "keep", (f"re-measure of the kept state: {name} {value:.6f}; it now has "
                        f"{len(kept['samples']) + n_c} samples (log it with --status keep)")
    kept_mean = kept["mean"]
    gain = improvement(value, kept_mean, direction)

    def versus(kept_value: float, how: str) -> str:
        return (f"{name} {value:.6f}" + (f" (mean of {n_c})" if n_c > 1 else "")
                + f" vs kept {kept_value:.6f} ({how}, run {kept['run']['run']})")

    shown = versus(kept_mean, f"mean of {len(kept['samples'])}")
    if policy == "strict":
        best = best_run(runs, direction)
        gain = improvement(samples[-1], best["metric"], direction)
        shown = f"{name} {samples[-1]:.6f} vs best {best['metric']:.6f} (run {best['run']})"
        return ("keep", f"{shown}: better") if gain > 0 else ("discard", f"{shown}: not better")
    if policy == "quality-speed":
        return quality_speed(gain, candidate.get("metrics") or {}, kept["metrics"], n_c, shown)
    sigma, dof = noise(runs, candidate)
    if sigma is None or sigma == 0:
        # No code measured twice yet: nothing to judge a difference by. An apparent
        # gain is confirmed on a new seed, which is also the first repeat.
        if gain > 0 and n_c == 1:
            return "rerun", f"{shown}: better, but the noise is not measured yet: confirm it on a new seed"
        return ("keep", f"{shown}: better on {n_c} seeds") if gain > 0 else \
            ("discard", f"{shown}: not better")
    est = kept_estimate(config, runs, sigma)
    diff = improvement(est["mean"], value, direction)      # negative when better
    draws = sigma_draws(sigma, dof)
    p = worth = 0.0     # P(real gain); expected gain from it, in sigma
    for s in draws:
        # The kept estimate's own sd scales with sigma too.
        k = s / sigma
        spread = math.sqrt((k * est["sd"]) ** 2 + s ** 2 / n_c)
        post = effect_posterior(diff / s, spread / s)
        p += post["p_helpful"] / len(draws)
        worth += post["gain_helpful"] / len(draws)
    stage = min(n_c, NOISE_AWARE["max_samples"]) - 1
    keep_bar = NOISE_AWARE["keep"][stage]
    detail = (f"{versus(est['mean'], 'estimated')}: P(real gain) {p:.2f} "
              f"(noise sigma {sigma:.6f}, {dof} dof)")
    if p >= keep_bar:
        return "keep", detail
    if (n_c == 1 and p < NOISE_AWARE["drop"]) or n_c >= NOISE_AWARE["max_samples"]:
        return "discard", detail + (" (within noise)" if gain > 0 else "")
    if n_c == 1 and NOISE_AWARE["rerun_worth"] and \
            worth < NOISE_AWARE["rerun_worth"] * idea_worth(config, runs, est, sigma):
        return "discard", detail + (f" (marginal, and its expected gain {worth:.2f} sigma is "
                                    "worth less than trying a new idea)")
    return "rerun", detail + (f" (marginal, needs {keep_bar:.2f}: run-experiment again "
                              "unchanged to confirm on a new seed)")


def revert_due(config: dict, runs: list[dict]) -> dict | None:
    """The keep to undo now, or None. A keep on one or two runs is provisional: every
    later run built on it that changed nothing re-measures it. When those say it was
    probably not a real gain (P under NOISE_AWARE["undo_below"], after at least
    NOISE_AWARE["undo_after"] runs on top), the branch goes back to the state it
    replaced. Only the latest keep can be undone, and only under noise-aware."""
    if policy_name(config) != "noise-aware":
        return None
    est = kept_estimate(config, runs)
    held = (est or {}).get("held")
    if not held or held["prev"] is None or held["since"] < NOISE_AWARE["undo_after"] \
            or held["p"] >= NOISE_AWARE["undo_below"]:
        return None
    return held


def revert_record(config: dict, runs: list[dict], held: dict, number: int) -> dict:
    """The record that undoes a keep: a keep of the code it replaced (so every reader
    of the log finds the kept state where git has it), with `reverts` naming the run
    undone and no samples of its own."""
    prev = held["prev"]
    samples = code_samples(runs, prev)
    metric = sum(samples) / len(samples)
    record = {"type": "run", "run": number, "commit": prev["commit"], "status": "keep",
              "metric": metric, "metrics": prev.get("metrics") or {},
              "description": (f"revert run {held['run']}: the {held['since']} runs since did "
                              f"not bear it out (P(real gain) {held['p']:.2f}); back to run "
                              f"{prev['run']}'s code"),
              "timestamp": int(_dt.datetime.now().timestamp()), "segment": 0, "confidence": None,
              "samples": [], "seeds": [], "reverts": held["run"]}
    for key in ("commit_sha", "target_sha"):
        if prev.get(key):
            record[key] = prev[key]
    return record


def quality_speed(gain: float, metrics: dict, kept_metrics: dict, n_c: int, shown: str):
    """Seed 000's rule for quality and throughput together (gain in metric units,
    positive is better; throughput is avg_tok_sec). Keep when
      * the metric improved and throughput fell by no more than 15%;
      * the metric is within 0.001 and throughput rose more than 10%;
      * the metric regressed by less than 0.003 and throughput rose more than 25%;
    a gain of 0.005 or more is kept even when slower. Throughput varies 3-5%
    between identical runs, so a first run whose verdict would flip within 4% of
    its throughput is run again once."""
    old, new = kept_metrics.get("avg_tok_sec"), metrics.get("avg_tok_sec")
    speed = (new / old - 1) if finite(old) and finite(new) and old else 0.0

    def rule(s):
        if gain > 0 and s >= -0.15:
            return "keep", f"better, throughput {speed:+.0%}"
        if abs(gain) <= 0.001 and s > 0.10:
            return "keep", f"same quality, throughput {speed:+.0%}"
        if -0.003 < gain and s > 0.25:
            return "keep", f"slightly worse, throughput {speed:+.0%}"
        if gain >= 0.005:
            return "keep", f"better by {gain:.4f}, worth throughput {speed:+.0%}"
        if gain > 0:
            return "discard", f"better by under 0.005 but throughput {speed:+.0%} (over -15%)"
        return "discard", f"not better, throughput {speed:+.0%}"

    decision, why = rule(speed)
    if n_c == 1 and speed and {rule(speed - 0.04)[0], rule(speed + 0.04)[0]} != {decision}:
        return "rerun", f"{shown}: {why}, within throughput jitter of a threshold: run it again"
    return decision, f"{shown}: {why}"


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


def add_worktree(root: str, path: str, commit: str) -> None:
    """A candidate's own work tree at `commit` (detached: the session branch moves only
    through log-experiment)."""
    git(root, "worktree", "add", "--detach", "-q", path, commit)


def remove_worktree(root: str, path: str) -> None:
    if os.path.isdir(path):
        git(root, "worktree", "remove", "--force", path, check=False)
    git(root, "worktree", "prune", check=False)


def apply_change(worktree: str, old: str, new: str, paths: list[str]) -> bool:
    """Apply the change from commit `old` to `new` (the session's files only) to the
    work tree at `worktree`, merging where they overlap; False (tree untouched) on a
    conflict. How a winner is re-based onto a kept state that moved."""
    import subprocess
    diff = subprocess.run(["git", "diff", "--binary", old, new, "--", *paths], cwd=worktree,
                          capture_output=True).stdout
    if not diff:
        return True
    proc = subprocess.run(["git", "apply", "--3way", "--index"], cwd=worktree, input=diff,
                          capture_output=True)
    if proc.returncode != 0:
        git(worktree, "reset", "--hard", "-q", check=False)
        return False
    git(worktree, "reset", "-q", check=False)        # keep it as a work-tree edit
    return True


def commit_of(record: dict) -> str:
    """The full hash of a run's commit. Seed 001's `commit` is the short hash; the
    full one is kept beside it as `commit_sha` (logs of the first format held the full
    hash in `commit`)."""
    return record.get("commit_sha") or record["commit"]


def last_kept_commit(config: dict, runs: list[dict]) -> str:
    for r in reversed(runs):
        if r["status"] == "keep":
            return commit_of(r)
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
    probe = temp_path(os.path.join(root, LOG))         # a name the pattern must cover
    if subprocess.run(["git", "check-ignore", "--no-index", "-q", os.path.basename(probe)],
                      cwd=root).returncode != 0:
        missing.append(TEMP_PATTERN)
    if missing:
        info = git(root, "rev-parse", "--git-path", "info/exclude")
        path = info if os.path.isabs(info) else os.path.join(root, info)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n# autoresearch session files\n" +
                    "".join(f"/{n}\n" if n != TEMP_PATTERN else f"{n}\n" for n in missing))
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
