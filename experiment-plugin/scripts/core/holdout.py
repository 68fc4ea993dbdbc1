"""The sealed test split: the night's gain measured on text no run has seen, once, at
the end.

A session selects about a hundred times on one validation set, so part of what it
keeps is fitted to that set (the winner's curse over a whole night), and a change that
games validation by a route no check sees still gains nothing on other text. So, once
the session has ended, the baseline and the final kept state (optionally every keep)
are trained again and scored on the dataset's `test` split, on the same fresh seeds:

- on this project's harness the runner deals the test rows in among the validation
  rows of the run's served evaluation (the template cannot tell them apart) and scores
  both; each run gives a fresh val_bpb and a test_bpb of the same trained model;
- on a project of the person's own, the session's --holdout command runs instead of
  its run command and prints the metric on data the loop never saw.

Each score is a `test` event in autoresearch.jsonl. The keep rule never reads events,
and nothing here runs while the session is active: the agent never sees a test number.
"""
from __future__ import annotations

import math
import os

from . import git, project, records, runner, stats
from .common import fmt, Lock, now_iso, STATE_DIR, UserError, WORKTREES
from .session import is_active

TEST_SEED = 1000        # fresh seeds, shared by every state scored: the comparison is paired
MIN_SEEDS, MAX_SEEDS = 2, 5
DEFAULT_SEEDS = 3       # where the session measured no noise
Z = 2.0                 # intervals are +/- Z standard errors (about 95 %)


def why_not(config: dict) -> str | None:
    """Why this session's states cannot be scored on a test split, or None."""
    if config.get("measure") == "harness" or config.get("holdout"):
        return None
    if config.get("project") == "karpathy":
        return ("this session's harness has no test split (a karpathy clone's prepare.py scores "
                "validation only): hold out a shard no run reads, and set up the next session with "
                "--holdout \"CMD\", a command that prints val_bpb on it")
    return ("this session has no test split: set one up with --holdout \"CMD\", a command that "
            "prints the metric on data the loop never sees")


def scores(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("event") == "test"]


def states(config: dict, runs: list[dict], every_keep: bool = False) -> list[dict]:
    """The states to score: the baseline, [every keep,] the final kept state; each
    {role, run, commit}, in the session's order."""
    base = stats.baseline_run(runs)
    if base is None:
        raise UserError("the session has no baseline run: there is nothing to score")
    out = [{"role": "baseline", "run": base["run"], "commit": git.commit_of(base)}]
    kept = stats.kept_state(config, runs)
    final = kept["run"] if kept else base
    if every_keep:
        out += [{"role": "keep", "run": r["run"], "commit": git.commit_of(r)}
                for r in stats.standing_keeps(runs) if r["run"] not in (base["run"], final["run"])]
    if final["run"] != base["run"]:
        out.append({"role": "final", "run": final["run"], "commit": git.commit_of(final)})
    return out


def seeds_needed(config: dict, runs: list[dict]) -> int:
    """As many seeds as the session's noise calls for: enough that the gain the loop
    claims would stand at 2 standard errors on the test split, if it carries over.
    With sigma the noise of one run and n seeds a state, a gain g has a standard error
    of sigma * sqrt(2 / n): n >= 8 sigma^2 / g^2."""
    sigma, _ = stats.noise(runs)
    gain = val_gain(config, runs)
    if not sigma or not gain or gain["gain"] <= 0:
        return DEFAULT_SEEDS
    return max(MIN_SEEDS, min(MAX_SEEDS, math.ceil(8 * sigma ** 2 / gain["gain"] ** 2)))


def val_gain(config: dict, runs: list[dict]) -> dict | None:
    """The gain the loop measured on validation: the kept state's samples against the
    baseline's, {gain, se} in metric units (positive: better)."""
    base, kept = stats.baseline_run(runs), stats.kept_state(config, runs)
    if base is None or kept is None:
        return None
    b, k = stats.code_samples(runs, base), kept["samples"]
    sigma, _ = stats.noise(runs)
    gain = stats.improvement(sum(k) / len(k), sum(b) / len(b), config["direction"])
    return {"gain": gain, "se": sigma * math.sqrt(1 / len(b) + 1 / len(k)) if sigma else None,
            "base": sum(b) / len(b), "final": sum(k) / len(k)}


def score(root: str, log, every_keep: bool = False, seeds: int | None = None, say=print) -> list[dict]:
    """Score what is not scored yet; returns every test event of the session. Each run
    trains the state again from its commit, in a work tree of its own."""
    config, runs = log.config, log.runs
    if is_active(root):
        raise UserError("the session is still active: the test split is scored once, after it "
                        "ends (end-session, then run this again)")
    why = why_not(config)
    if why:
        raise UserError(why)
    have = {(e["commit"], e["seed"]) for e in scores(log.events) if e.get("status") == "ok"}
    wanted = states(config, runs, every_keep)
    if len(wanted) < 2:
        say("no kept change beyond the baseline: nothing to compare on the test split")
        return scores(log.events)
    if seeds is None and all(any(c == s["commit"] for c, _ in have) for s in wanted):
        return scores(log.events)           # scored already: ask for --seeds N to add more
    n = seeds or seeds_needed(config, runs)
    todo = [(s, TEST_SEED + k) for s in wanted for k in range(n) if (s["commit"], TEST_SEED + k) not in have]
    if todo:
        budget = len(todo) * (config.get("budget", 0) if project.budget_unit(config) == "seconds" else 0)
        say(f"scoring on the test split: {len(todo)} run(s) ({n} seed(s) a state)"
            + (f", about {budget / 60:.0f} min of training" if budget >= 120 else
               f", about {budget:.0f} s of training" if budget else ""))
    events = list(scores(log.events))
    for state, seed in todo:
        event = run_one(root, config, state, seed)
        with Lock(root):
            records.append_record(root, {**event, "runs": len(runs)})
        events.append(event)
        shown = "  ".join(f"{k} {fmt(event[k])}" for k in ("val", "test") if event.get(k) is not None)
        say(f"  {state['role']} (run {state['run']}), seed {seed}: {event['status']}"
            + (f"  {shown}" if shown else f" ({event.get('detail', '')})"))
    return events


def run_one(root: str, config: dict, state: dict, seed: int) -> dict:
    """Train `state` again with `seed` and score it on the test split: one event."""
    tree = os.path.join(root, WORKTREES, f"test-{state['commit'][:12]}")
    git.remove_worktree(root, tree)
    git.add_worktree(root, tree, state["commit"])
    log_path = os.path.join(root, STATE_DIR, f"test-{state['run']}-{seed}.log")
    own = config.get("measure") != "harness"
    setting = {**config, "run": config["holdout"]} if own else config
    results: list = []
    try:
        code, _, _ = runner.run_target(root, setting, config["timeout"], seed, cwd=tree, log_path=log_path,
                                       running=os.path.join(root, STATE_DIR, "running-test.json"),
                                       results=results, test=not own)
    finally:
        git.remove_worktree(root, tree)
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    status, detail, metrics = runner.verdict(setting, code, text, results)
    event = {"type": "event", "event": "test", "timestamp": now_iso(), "role": state["role"],
             "state": state["run"], "commit": state["commit"], "seed": seed, "status": status}
    evaluation = getattr(results[0], "evaluation", None) if results else None
    if status == "ok" and own:
        event["test"] = metrics[config["metric"]]
    elif status == "ok":
        event.update(val=evaluation["val_bpb"], test=evaluation["test_bpb"])
    else:
        event["detail"] = (detail or f"see {os.path.relpath(log_path, root)}")[:300]
    return event


def table(config: dict, runs: list[dict], events: list[dict]) -> dict | None:
    """The val and test gains side by side: {rows: [{role, run, val, test, n}], val_gain,
    test_gain (each {gain, se, lo, hi}), carried: True / False, verdict}; None when
    nothing was scored."""
    ok = [e for e in scores(events) if e.get("status") == "ok" and e.get("test") is not None]
    if not ok:
        return None
    by_state: dict = {}
    for e in ok:
        by_state.setdefault(e["state"], []).append(e)
    rows = []
    for number, group in by_state.items():
        tests = [e["test"] for e in group]
        vals = [e["val"] for e in group if e.get("val") is not None]
        rows.append({"role": group[0]["role"], "run": number, "n": len(group),
                     "test": sum(tests) / len(tests), "val": sum(vals) / len(vals) if vals else None,
                     "tests": tests})
    rows.sort(key=lambda r: r["run"])
    base = next((r for r in rows if r["role"] == "baseline"), None)
    final = next((r for r in rows if r["role"] == "final"), None)
    loop = val_gain(config, runs)
    out = {"rows": rows, "val_gain": interval(loop["gain"], loop["se"]) if loop else None,
           "test_gain": None, "carried": None}
    if base and final:
        gain = stats.improvement(final["test"], base["test"], config["direction"])
        out["test_gain"] = interval(gain, test_se(runs, [base, final]))
        lo = out["test_gain"]["lo"]
        out["carried"] = lo is not None and lo > 0
    return out


def test_se(runs: list[dict], rows: list[dict]) -> float | None:
    """The standard error of a difference of two states' test means: the spread of
    one run pooled from the test runs' own seeds and the session's repeats."""
    ss = sum(sum((x - sum(r["tests"]) / len(r["tests"])) ** 2 for x in r["tests"]) for r in rows)
    dof = sum(len(r["tests"]) - 1 for r in rows)
    sigma, session_dof = stats.noise(runs)
    if sigma:
        ss, dof = ss + sigma ** 2 * session_dof, dof + session_dof
    if not dof or ss <= 0:
        return None
    spread = math.sqrt(ss / dof)
    return spread * math.sqrt(sum(1 / len(r["tests"]) for r in rows))


def interval(gain: float, se: float | None) -> dict:
    return {"gain": gain, "se": se, "lo": gain - Z * se if se else None, "hi": gain + Z * se if se else None}


def lines(config: dict, runs: list[dict], events: list[dict]) -> list[str]:
    """The morning's table, as Markdown lines (empty when nothing was scored)."""
    t = table(config, runs, events)
    if t is None:
        return []
    metric = config["metric"]
    out = ["| state | runs | val, as the loop measured it | val, re-run | test |", "|---|---|---|---|---|"]
    loop = val_gain(config, runs) or {}
    for r in t["rows"]:
        looped = loop.get("base") if r["role"] == "baseline" else loop.get("final") if r["role"] == "final" else None
        out.append(f"| {r['role']} (run {r['run']}) | {r['n']} | {fmt(looped) if looped is not None else '-'} "
                   f"| {fmt(r['val']) if r['val'] is not None else '-'} | {fmt(r['test'])} |")

    def shown(g):
        if g is None:
            return "-"
        return f"{g['gain']:+.4f}" + (f" [{g['lo']:+.4f}, {g['hi']:+.4f}]" if g["lo"] is not None else "")

    out += ["", f"- gain on val (the loop's): {shown(t['val_gain'])}",
            f"- gain on test (sealed, same seeds for both states): {shown(t['test_gain'])}"]
    if t["carried"] is False:
        out.append(f"- **Did not carry over**: the test split does not support the {metric} gain "
                   "the loop measured on validation (part of it is fitted to the validation set, "
                   "or noise).")
    elif t["carried"]:
        out.append("- Carried over: the gain holds on text no run had seen.")
    out.append(f"- gains are improvements in {metric} (positive: better), +/- {Z:g} standard errors.")
    return out
