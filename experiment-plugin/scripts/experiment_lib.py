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

SESSION_FILES = (LOG, RESULTS, RUN_LOG, PLOT, SUMMARY, NOTES, STOP_FILE, STATE_DIR + "/")
# Of those, the ones no tool but a script may write (the guard hook enforces this).
SCRIPT_ONLY_FILES = (LOG, RESULTS, RUN_LOG, PLOT, STATE_DIR)

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


def session_paths(root: str) -> dict:
    return {name: os.path.join(root, name) for name in
            (LOG, RESULTS, RUN_LOG, PLOT, SUMMARY, NOTES, STOP_FILE, STATE_DIR)}


def fixed_file_list(root: str) -> list[str]:
    """Relative paths of every fixed file present: FIXED_FILES, then datasets/**."""
    found = [f for f in FIXED_FILES if os.path.isfile(os.path.join(root, f))]
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


def hash_fixed_files(root: str) -> dict:
    return {rel: hash_file(os.path.join(root, rel)) for rel in fixed_file_list(root)}


def changed_fixed_files(root: str, recorded: dict) -> list[str]:
    """Fixed files whose content differs from the hashes recorded at setup (or that
    appeared or vanished since)."""
    now = hash_fixed_files(root)
    return sorted(p for p in set(now) | set(recorded) if now.get(p) != recorded.get(p))


# --------------------------------------------------------------------- small io

def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


# ------------------------------------------------------------- state (hooks read it)

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
    """autoresearch.jsonl, parsed: the config record, the run records, and warnings
    about lines that could not be read (reported, never dropped from the file)."""

    def __init__(self, config: dict | None, runs: list[dict], warnings: list[str]):
        self.config, self.runs, self.warnings = config, runs, warnings


def read_log(root: str, required: bool = True) -> SessionLog:
    path = os.path.join(root, LOG)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if required:
            raise UserError(f"no session here ({LOG} not found in {root}): start one with "
                            "setup-session (or /experiment:model <tag>)")
        return SessionLog(None, [], [])
    config, runs, warnings = None, [], []
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
    if required and config is None:
        raise UserError(f"{LOG} has no config record as its first line: move it aside and "
                        "run setup-session again")
    return SessionLog(config, runs, warnings)


def append_record(root: str, record: dict) -> None:
    """Append one line to the log. Call with the Lock held. A partial last line left by
    a killed writer is moved to .autoresearch/salvaged.jsonl first, so the new record
    starts on its own line and the fragment is kept for inspection."""
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


def commit_target(root: str, target: str, message: str) -> str | None:
    """Commit the target if it differs from HEAD; return the new commit, else None."""
    if not git(root, "status", "--porcelain", "--", target):
        return None
    git(root, "add", "--", target)
    git(root, "commit", "--no-verify", "-q", "-m", message, "--", target,
        env=git_identity_env(root))
    return head(root)


def save_ref(root: str, tag: str, name: str, commit: str) -> str:
    ref = f"refs/autoresearch/{tag}/{name}"
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
    names = [n.rstrip("/") for n in SESSION_FILES]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=root,
                          capture_output=True, text=True)
    ignored = set(proc.stdout.split())
    missing = [n for n in names if n not in ignored]
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
