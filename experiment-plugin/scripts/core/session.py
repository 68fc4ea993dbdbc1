"""A session's lifecycle: active or not, which conversation owns the loop, when the
loop ends, and the messages and reports people and the agent read (the research
config, the state block after a compaction, the progress report).
"""
from __future__ import annotations

import json
import os
import shutil

from .common import (editable_files, find_root, finite, fmt, Lock, LOG, NOTES, now_iso, PLUGIN_ROOT,
    read_json, SESSION_FILES, STATE_DIR, STOP_FILE, UserError, WORKTREES, write_atomic)
from .git import current_branch, git, head, leave_branch, remove_worktree, tracked_changes
from .copies import PENDING, drop_copies
from .project import budget_env, budget_text, budget_unit, HARNESS, KIND_NAMES, plot_of
from .records import append_record, asi, lesson, log_copy, read_config, read_log, session_tag
from .stats import (baseline_run, best_run, better, experiments, improvement, noise_line,
    standing_keeps, undone_runs)
from .candidates import wave_line


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
            ("project", KIND_NAMES.get(config.get("project", HARNESS), "")),
            ("run", config.get("run") or ""),
            ("dataset", config["dataset"]),
            ("data check", (config.get("data_check") or "none") if "data_check" in config else ""),
            ("budget", f"{budget_text(config)} per run (killed after {config['timeout']:g} s)"
             + (", enforced by the script itself" if config.get("budget_via") == "script" else "")
             + (f", through {budget_env(config)}: speed is not rewarded, a faster change gains nothing"
                if budget_unit(config) != "seconds" else "")),
            ("load check", "off: runs are judged whatever else the machine runs (shared)"
             if config.get("load_check") is False else ""),
            ("seeds", "" if config.get("seeds", True) else
             "not varied (the script sets its own): each change is judged on one run"),
            ("metric", f"{config['metric']}, {config['direction']} is better"
             + (f", read by the pattern {config['metric_pattern']}" if config.get("metric_pattern") else "")),
            ("target", ", ".join(editable_files(config))),
            ("read-only", fixed_row(config)),
            ("policy", config["policy"]),
            ("checks", config.get("checks") or "none"),
            ("test split", test_row(config)),
            ("stops at", "; ".join(stops)),
            ("off", "; ".join(config.get("off") or []))]
    return "research config:\n" + "\n".join(f"  {k:<10} {v}" for k, v in rows if v)


def test_row(config: dict) -> str:
    """Where the night's gain is checked on data the loop never sees, or what to add."""
    if config.get("measure") == "harness":
        pin = (config.get("eval") or {}).get("test_split")
        return ("sealed" + (f" (digest {pin[:12]})" if pin else "") + ": no run reads it; the baseline and "
                "the final state are scored on it once the session has ended (summarize --test, finalize)")
    if config.get("holdout"):
        return (f"{config['holdout']} (its files read-only), run once the session has ended "
                "(summarize --test, finalize)")
    if config.get("project") == "karpathy":
        return ("none: this prepare.py holds out validation only, and a night fits part of its gain to "
                "that set; hold out a shard no run reads and pass --holdout CMD, a command that prints "
                "val_bpb on it")
    return ("none: pass --holdout CMD, a command that prints the metric on data the loop never sees, "
            "to check the night's gain on it at the end")


def fixed_row(config: dict) -> str:
    """What the session holds fixed: the harness here; elsewhere the files it hashed
    (a karpathy/autoresearch clone's prepare.py, --read-only files), or nothing."""
    if config.get("project", HARNESS) == HARNESS:
        return ", ".join(config.get("read_only") or []) or "the harness only"
    return (", ".join(config.get("fixed_files") or {})
            or "nothing but the session's records (--read-only FILES holds files fixed)")


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
    """For a hook: the project root when a session is active there. The project is
    Claude Code's (CLAUDE_PROJECT_DIR), not the tool call's cwd: a `cd` into a folder
    that holds its own .git (a candidate's worktree) must not leave the session."""
    starts = [os.environ.get("CLAUDE_PROJECT_DIR"), payload.get("cwd") or os.getcwd()]
    for start in filter(None, starts):
        try:
            root = find_root(start)
        except UserError:
            continue
        outer = root.split(os.sep + WORKTREES + os.sep)[0]   # a candidate's worktree: its project
        for candidate in dict.fromkeys((outer, root)):
            if is_active(candidate):
                return candidate
    return None


def is_active(root: str) -> bool:
    """Whether a session is active in `root`. state.json says so; where it is gone or
    says otherwise, the log decides (a session is active from its config line until
    an "end" event), and where the log is gone too, its copy (outside the project, or
    in git under the session branch's tag): deleting a file never switches the guard off."""
    if read_state(root).get("active"):
        return True
    try:
        with open(os.path.join(root, LOG), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read()
    except OSError:
        tail = None
    if tail is None:
        tag = session_tag(root, None)
        try:
            return log_copy(root, tag)[0] is not None
        except UserError:           # a copy in git that is not a plain ref: someone was here
            return True
    for line in reversed(tail.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("type") == "event" and record.get("event") in ("end", "resume"):
            return record["event"] == "resume"
        if isinstance(record, dict) and record.get("type") == "config":
            return True
    return read_config(root) is not None


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


def archive_files(root: str) -> str | None:
    """Move an earlier session's files aside (nothing is ever overwritten). A file
    of that name that the project tracks in git is the person's, not a session's: it
    stays where it is."""
    log = read_log(root, required=False)
    present = [n for n in SESSION_FILES
               if n != STATE_DIR and os.path.exists(os.path.join(root, n))
               and not git(root, "ls-files", "--", n)]
    if not present:
        return None
    name = (log.config or {}).get("tag", "untitled") + "-" + now_iso().replace(":", "")
    dest = os.path.join(root, STATE_DIR, "archive", name)
    os.makedirs(dest, exist_ok=True)
    for n in present:
        shutil.move(os.path.join(root, n), os.path.join(dest, n))
    for n in ("pending.json", "wave"):
        if os.path.exists(os.path.join(root, STATE_DIR, n)):
            shutil.move(os.path.join(root, STATE_DIR, n), os.path.join(dest, n))
    # The earlier session's candidate worktrees (their commits stay under
    # refs/autoresearch/<tag>/cand-*).
    folder = os.path.join(root, WORKTREES)
    for name in (os.listdir(folder) if os.path.isdir(folder) else []):
        remove_worktree(root, os.path.join(folder, name))
    return os.path.relpath(dest, root)


def discard_unstarted(root: str) -> tuple[str, str]:
    """Throw away a session that has logged no run, so that a wrong --run, --budget-via
    or seed setting costs nothing: guard and loop off, back on the branch the session
    started from, its branch deleted, its files moved aside (archive_files). Nothing
    measured is lost: a session with a logged or a waiting run is refused. Returns
    (where the files went, the branch now checked out)."""
    with Lock(root):
        log = read_log(root)
        config = log.config
        tag, branch = config["tag"], config["branch"]
        if log.runs or os.path.exists(os.path.join(root, STATE_DIR, PENDING)):
            raise UserError(f"session {tag} has runs recorded: it is kept as it is; end it with "
                            "end-session (and finalize takes its kept changes)")
        if current_branch(root) != branch:
            raise UserError(f"not on {branch}: check it out first, or delete the branch by hand")
        if head(root) != config["base_commit"]:
            raise UserError(f"{branch} has commits since setup: nothing is thrown away; "
                            "end the session with end-session instead")
        dirty = tracked_changes(root)
        if dirty:
            raise UserError(f"uncommitted changes in {', '.join(dirty[:5])}: commit or stash "
                            "them first")
        write_state(root, active=False, owner=None)
        back_to = config.get("start_branch") or config["base_commit"]
        leave_branch(root, branch, back_to)
        for name in (LOG, PENDING):
            drop_copies(root, tag, name)
    return archive_files(root), back_to


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
        f"Target {config['target']}, dataset {config['dataset']}, {budget_text(config)} per run, "
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
    n, cap = experiments(runs), config.get("max_iterations") or 0
    # Under the cap, resuming simply goes on to it; at the cap, it needs a higher one.
    more = (f"/experiment:resume continues to the cap of {cap} ({cap - n} more run"
            f"{'s' if cap - n != 1 else ''})" if n < cap else
            f"/experiment:resume --max-iterations {n + 20} continues with 20 more runs")
    return (f"autoresearch session {config['tag']} has ended: {reason}. {n} run"
            f"{'s' if n != 1 else ''}, {best_line(config, runs)}. The guard and the loop are off. "
            f"Next: /experiment:summary writes the report and {plot_of(config)}; "
            f"{more}; {os.path.join(PLUGIN_ROOT, 'scripts', 'finalize')} "
            f"shows how the kept changes on branch {config['branch']} would go into "
            f"{config.get('start_branch') or 'your branch'} (it changes nothing without --yes).")


def open_elsewhere_note(config: dict) -> str:
    """For a conversation that does not run the loop of an active session."""
    return (f"autoresearch session {config.get('tag', '(its log is missing)')} is open in this project but not running "
            f"in this conversation (the guard still protects the harness): /experiment:resume "
            f"continues it here, /experiment:end closes it.")
