#!/usr/bin/env python3
"""Take an ended session's kept changes into the branch it started from, on your word.

Without --yes it changes nothing: it prints the plan and the exact git commands.
With --yes it runs exactly those commands. It never pushes and never rewrites an
existing commit; the session branch and its refs stay as they are.

  squash (default)  the kept changes as one reviewed commit on the starting branch:
                    git checkout <start>; git merge --squash autoresearch/<tag>;
                    git commit (the message lists every kept change with its gain)
  --split           one branch per kept change, autoresearch/<tag>-run<N>, each the
                    session's base commit plus that change alone, for every change
                    that applies to the base by itself; a change that needs an
                    earlier one is named, and stays in the squash.

First it scores the baseline and the final kept state on the dataset's sealed test
split (each trained again on fresh seeds; see summarize --test), unless they are scored
already or --no-test says not to, and shows the val and test gains side by side: a
gain that did not carry over to text no run has seen is said before anything merges.

The session must have ended (the cap, autoresearch.stop, or end-session) and the
work tree must be clean.
"""
import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, git, holdout, project, records, stats, session  # noqa: E402


def kept_changes(root, config, runs):
    """(run, commit, parent, gain) for each kept run that changed the code and stands,
    in order. A keep undone later and the record that undoes it cancel out: neither
    is a change to take (git's history still has both)."""
    out, best, previous = [], None, config["base_commit"]
    undone = stats.undone_runs(runs)
    for r in runs:
        if r["status"] != "keep":
            continue
        if r["run"] in undone or r.get("reverts"):
            previous = git.commit_of(r)
            continue
        gain = stats.improvement(r["metric"], best, config["direction"]) if best is not None else None
        if best is None or stats.better(r["metric"], best, config["direction"]):
            best = r["metric"]
        if git.commit_of(r) != previous:
            # A wave's candidate was made on the kept state it started from, which a
            # sibling kept meanwhile may have replaced: its own parent is its base.
            parent = git.git(root, "rev-parse", f"{git.commit_of(r)}^") if r.get("candidate") else previous
            out.append((r, git.commit_of(r), parent, gain))
        previous = git.commit_of(r)
    return out


def message(config, runs, changes, events=()):
    base, best = stats.baseline_run(runs), stats.best_run(runs, config["direction"])
    name = config["metric"]
    pct = 100 * (best["metric"] - base["metric"]) / abs(base["metric"]) if base["metric"] else 0.0
    lines = [f"autoresearch {config['tag']}: {name} {common.fmt(base['metric'])} -> "
             f"{common.fmt(best['metric'])} ({pct:+.2f}%), {len(changes)} kept changes", ""]
    for r, _, _, gain in changes:
        shown = f"{gain:+.6f}" if gain is not None else "baseline"
        lines.append(f"- run {r['run']} ({shown}): {' '.join(r['description'].split())}")
    data = config["dataset"] + (" data" if config["dataset"].endswith("own") else "")
    budget = ("the script's own budget per run" if config.get("budget_via") == "script"
              else f"{project.budget_text(config)} per run")
    t = holdout.table(config, runs, list(events))
    if t and t["test_gain"]:
        g = t["test_gain"]
        shown = f"{g['gain']:+.6f}" + (f" [{g['lo']:+.6f}, {g['hi']:+.6f}]" if g["lo"] is not None else "")
        lines += ["", f"On the sealed test split: {name} gain {shown}"
                      + ("" if t["carried"] else " (did not carry over)") + "."]
    lines += ["", f"Measured on {data}, {budget}, keep policy "
                  f"{config['policy']}; every run is in autoresearch.jsonl of session "
                  f"{config['tag']} (branch {config['branch']})."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="finalize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", action="store_true", help="one branch per kept change instead of one commit")
    p.add_argument("--onto", help="the branch to squash onto (default: the one setup started from)")
    p.add_argument("--yes", action="store_true", help="run the printed commands (default: only print them)")
    p.add_argument("--no-test", action="store_true", help="do not score the sealed test split first")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    root = common.find_root()
    common.use_project_python(root)
    root, log = records.load_session(root)
    config, runs = log.config, log.runs
    if session.read_state(root).get("active"):
        raise common.UserError("the session is still active: end it first (/experiment:end, or "
                            "end-session), then finalize")
    branch, base = config["branch"], config["base_commit"]
    if git.git(root, "rev-parse", branch) != git.last_kept_commit(config, runs):
        raise common.UserError(f"{branch} is not on its last kept commit: run resume-session, "
                            "end-session, then finalize")
    changes = kept_changes(root, config, runs)
    if not changes:
        why = " (every keep was undone)" if stats.undone_runs(runs) else ""
        raise common.UserError(f"no kept change beyond the baseline{why}: nothing to finalize; "
                               f"{branch} holds the code the session started from")
    if git.tracked_changes(root):
        raise common.UserError("the work tree has uncommitted changes: commit or stash them first")
    if not a.no_test and holdout.why_not(config) is None:
        holdout.score(root, log)
        root, log = records.load_session(root)
        print("\n".join(holdout.lines(config, runs, log.events)) + "\n")
    here = git.current_branch(root)

    if a.split:
        commands, dependent = [], []
        for r, commit, parent, _ in changes:
            if not git.applies_cleanly(root, base, parent, commit):
                dependent.append(r)
                continue
            name = f"{branch}-run{r['run']}"
            if git.branch_exists(root, name):
                raise common.UserError(f"branch {name} already exists: delete it or finalize without --split")
            commands += [["git", "branch", name, base], ["git", "checkout", "-q", name],
                         ["git", "cherry-pick", commit]]
        commands.append(["git", "checkout", "-q", here])
        plan = [f"one branch per kept change, each from {base[:7]}:"]
        plan += [f"  {branch}-run{r['run']}: {' '.join(r['description'].split())[:70]}"
                 for r, *_ in changes if r not in dependent]
        plan += [f"  (run {r['run']} needs an earlier change; it is only in the squash)"
                 for r in dependent]
    else:
        onto = a.onto or config.get("start_branch")
        if not onto:
            raise common.UserError("the session does not record the branch it started from: "
                                "pass --onto BRANCH")
        if not git.branch_exists(root, onto):
            raise common.UserError(f"branch {onto} not found: pass --onto BRANCH")
        if not git.applies_cleanly(root, onto, base, branch):
            raise common.UserError(f"{onto} has changed since the session started and the kept "
                                f"changes do not apply to it cleanly: merge {branch} by hand, "
                                "or finalize --split")
        note = os.path.join(root, common.STATE_DIR, "finalize-message.txt")
        common.write_atomic(note, message(config, runs, changes, log.events))
        commands = [["git", "checkout", "-q", onto], ["git", "merge", "--squash", branch],
                    ["git", "commit", "-q", "-F", os.path.relpath(note, root)]]
        plan = [f"the {len(changes)} kept changes as one commit on {onto}; its message "
                f"({os.path.relpath(note, root)}):", ""]
        plan += ["  " + line for line in message(config, runs, changes, log.events).splitlines()]

    print("\n".join(plan))
    print("\ncommands:" if a.yes else "\ncommands (run finalize again with --yes to run them):")
    for c in commands:
        print("  " + " ".join(shlex.quote(w) for w in c))
    if not a.yes:
        return 0
    for c in commands:
        git.git(root, *c[1:], env=git.git_identity_env(root))
    print("done; nothing was pushed")
    return 0


if __name__ == "__main__":
    common.run_main(main)
