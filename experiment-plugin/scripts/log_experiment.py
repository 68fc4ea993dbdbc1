#!/usr/bin/env python3
"""Record the latest run and move git accordingly; the only writer of the log.

Appends one record to autoresearch.jsonl (validated against the plugin's JSON
Schema) and rebuilds results.tsv from the log, under a file lock, so concurrent
writers never lose or tear a record. Then, by status:

  keep     the target's change is committed; the branch stays on it.
  discard  the change is committed, kept reachable as refs/autoresearch/<tag>/run-<n>,
  crash    and the branch is reset to the last kept commit (session files are
           git-ignored, so the reset never touches them).

Under the noise-aware policy a keep is provisional: after a discard (a wave's
candidate too), when the runs built on the latest keep say it was probably noise
(policy.revert_due), a second record undoes it (a keep of the code it replaced, with
"reverts": N) and the branch goes back to that code; the undone commit stays
reachable as refs/autoresearch/<tag>/run-N.

The metrics come from the run that run-experiment just finished (waiting in
.autoresearch/pending.json); --metric / --metrics override or supply them. A run
whose fixed files changed (tampered) is refused: restore the files and run again.
Descriptions may hold any text (tabs, newlines, quotes, $(...)): the jsonl keeps it
exactly; results.tsv shows it on one line.

--candidate NAME records a finished candidate of a wave instead (see wait-wave): keep
moves the branch to its commit, anything else keeps its commit as a ref; the record
names the candidate, its worker and backend (and what it was re-based from), and its
worktree is removed. The description defaults to the candidate's.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, git, harness, parsing, records, stats, policy, candidates, session, waves  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(prog="log-experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--status", required=True, choices=["keep", "discard", "crash", "checks_failed"])
    p.add_argument("--description", help="what this run changed, one sentence (required but "
                                          "with --candidate)")
    p.add_argument("--metric", type=float, help="the session metric, if not from the last run "
                                                "(in a session the harness measures: crashes only)")
    p.add_argument("--reason", help="why a keep goes against the recommendation (recorded as "
                                    "an override; default: the description)")
    p.add_argument("--metrics", help="JSON object of further metrics, e.g. '{\"peak_memory_mb\": 812}'")
    p.add_argument("--unlogged", metavar="FILE",
                   help="record a run that finished but was never logged, as resume-session "
                        "printed it: restores the change it measured, then logs it")
    p.add_argument("--candidate", metavar="NAME",
                   help="record a finished candidate of a wave (as wait-wave printed it)")
    p.add_argument("--asi", help="JSON object of notes kept with the record: hypothesis, "
                                 "what was learned, next ideas")
    return p.parse_args(argv)


def json_object(text, flag):
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise common.UserError(f"{flag} is not valid JSON ({e}); pass an object like '{{\"key\": 1}}'")
    if not isinstance(value, dict):
        raise common.UserError(f"{flag} must be a JSON object like '{{\"key\": 1}}'")
    return value


def restore_unlogged(root, config, runs, path):
    """Put a set-aside result back as the waiting run, with the change it measured
    checked out again from the ref resume-session saved it under."""
    data = records.take_unlogged(root, config["tag"], path)
    ref, files = data.pop("ref", None), common.editable_files(config)
    again = (f"measure it again instead: git checkout {ref} -- {' '.join(files)}, then run-experiment"
             if ref else "its change was not saved; nothing to record")
    if data.pop("after_runs", None) != len(runs):
        raise common.UserError(f"runs were logged after that one, so its recommendation is "
                            f"stale: {again} (nothing was recorded)")
    if not ref:
        raise common.UserError(f"{again} (nothing was recorded)")
    if git.tracked_changes(root):
        raise common.UserError(f"uncommitted changes in {', '.join(git.tracked_changes(root)[:3])}: "
                            "run resume-session first (nothing was recorded)")
    git.git(root, "checkout", ref, "--", *files)
    records.write_pending(root, config["tag"], data)
    records.drop_unlogged(root, config["tag"], path)


def take_pending(root, config, a):
    """The result to record: the waiting run, checked against what is asked."""
    pending = records.read_pending(root, config["tag"])
    if pending is None:
        if a.metric is None and a.status != "crash":
            raise common.UserError("no finished run to log: run run-experiment first "
                                "(or pass --metric VALUE)")
        return {}
    run_status = pending["run_status"]
    if run_status == "tampered":
        raise common.UserError("the last run was tampered (fixed files changed): restore them, "
                            "run again, then log; nothing was recorded")
    if a.metric is None:
        if harness.code_hash(root, config) != pending["target_sha"]:
            raise common.UserError(f"{config['target']} changed since the last run: run "
                                "run-experiment again before logging (nothing was recorded)")
        if a.status == "keep" and run_status == "checks_failed":
            raise common.UserError("the last run failed its checks: log it with --status "
                                "checks_failed (nothing was recorded)")
        if a.status == "keep" and run_status != "ok":
            raise common.UserError(f"the last run ended with status {run_status}: log it with "
                                "--status crash (nothing was recorded)")
        if run_status == "invalid" and a.status != "crash":
            raise common.UserError("the last run's result is invalid (not the fixed evaluation): "
                                "log it with --status crash (nothing was recorded)")
        if a.status in ("crash", "checks_failed") and run_status == "ok":
            raise common.UserError("the last run finished ok: log it as keep or discard "
                                "(nothing was recorded)")
    return pending


def undo_keep(root, config, runs, number):
    """Undo the latest keep when the runs built on it since say it was probably noise
    (policy.revert_due): log the revert and put the branch back on the code it replaced.
    Returns the record, or None."""
    held = policy.revert_due(config, runs)
    if not held:
        return None
    record = policy.revert_record(config, runs, held, number)
    git.save_ref(root, config["tag"], f"run-{held['run']}", git.commit_of(held["record"]))
    records.append_record(root, record)
    records.write_results(root, config, runs + [record])
    git.reset_to(root, git.commit_of(record))
    return record


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    root = common.find_root()
    common.use_project_python(root)
    if not a.candidate and not (a.description or "").strip():
        raise common.UserError("--description must say what the run changed")
    if a.candidate and a.unlogged:
        raise common.UserError("--candidate and --unlogged record different things: pass one")
    extra = json_object(a.metrics, "--metrics")
    notes = json_object(a.asi, "--asi")

    with common.Lock(root):
        root, log = records.load_session(root)
        config = log.config
        changed = harness.changed_fixed_files(root, config["fixed_files"])
        if changed:
            raise common.UserError(f"{', '.join(changed[:5])} changed since setup: "
                                f"{harness.TAMPER_REPAIR}; nothing was recorded")
        if git.current_branch(root) != config["branch"]:
            raise common.UserError(f"not on the session branch {config['branch']}: run "
                                "resume-session first (nothing was recorded)")
        if a.metric is not None and a.status != "crash" and config.get("measure") == "harness":
            raise common.UserError(f"--metric is only for a crash here: the harness measures this "
                                f"session, so a {a.status} records what run-experiment measured "
                                "(run it, then log without --metric); nothing was recorded")
        if a.unlogged:
            restore_unlogged(root, config, log.runs, a.unlogged)
        cand = waves.take_result(root, config, a.candidate, a.status) if a.candidate else None
        pending = waves.pending_of(cand) if cand else take_pending(root, config, a)
        a.description = a.description if (a.description or "").strip() else cand["description"]
        number = max((r["run"] for r in log.runs), default=0) + 1
        metrics = {**pending.get("metrics", {}), **extra}
        metric = a.metric
        if metric is None and pending.get("samples"):
            metric = sum(pending["samples"]) / len(pending["samples"])
        elif metric is None and pending.get("disturbed"):
            # Only disturbed runs of this code: their mean stands as the metric, and
            # no sample enters the noise estimate or the kept state's mean.
            values = [d["metric"] for d in pending["disturbed"]]
            metric = sum(values) / len(values)
        if a.status == "crash":
            metric = None
        elif a.status == "checks_failed":
            # Measured, but its checks failed: the value is kept for the record only.
            value = metrics.get(config["metric"]) if metric is None else metric
            metric = value if common.finite(value) else None
        elif not common.finite(metric):
            raise common.UserError(f"no finite {config['metric']} for a {a.status}: pass --metric "
                                "or log it as crash")

        first_line = " ".join(a.description.split())[:72]
        kept = git.last_kept_commit(config, log.runs)
        if cand:
            commit, moved, wave_lines = waves.move_git(root, config, log.runs, cand, a.status, number)
        else:
            commit = git.commit_target(root, common.editable_files(config),
                                       f"experiment {number} ({a.status}): {first_line}\n\n{a.description}")
            commit = commit or git.head(root)
        # Seed 001's record: run, commit (short), metric, metrics, status, description,
        # timestamp (epoch seconds), segment, confidence, asi; the rest is ours.
        ratio = stats.confidence(log.runs, config["direction"])["confidence"]
        record = {"type": "run", "run": number, "commit": commit[:7], "commit_sha": commit,
                  "status": a.status, "metric": metric, "metrics": parsing.json_safe(metrics),
                  "description": a.description, "timestamp": int(time.time()),
                  "segment": 0, "confidence": ratio if common.finite(ratio) else None}
        if pending:
            record.update(run_status=pending["run_status"], seconds=pending.get("seconds"),
                          target_sha=pending["target_sha"])
            # Every undisturbed sample with its seed: repeats of identical code (same
            # target hash) make the noise estimate and the kept state's mean.
            if a.status != "crash" or pending.get("samples"):
                record["samples"] = pending.get("samples", [])
                record["seeds"] = pending.get("seeds", [])
            if pending.get("disturbed"):
                record["disturbed"] = pending["disturbed"]
            if pending.get("recommendation"):
                record["recommendation"] = pending["recommendation"]
                if a.status == "keep" and pending["recommendation"] != "keep":
                    # The agent's call (simplicity, a known gain), but on the record.
                    record["override"] = {"recommendation": pending["recommendation"],
                                          "reason": " ".join((a.reason or a.description).split())}
            if pending["run_status"] == "invalid" and pending.get("detail"):
                record["invalid"] = pending["detail"]
        if cand:
            record.update(candidate=cand["name"], base=cand["base"], worker=cand.get("worker"),
                          backend=cand.get("backend", "local"), seed=cand.get("seed"))
            if (cand.get("slurm") or {}).get("job"):
                record["job"] = cand["slurm"]["job"]
            if cand.get("rebased_from"):
                record["rebased_from"] = cand["rebased_from"]
            record = {k: v for k, v in record.items() if v is not None or k in ("metric", "confidence")}
        if notes:
            record["asi"] = notes
        records.append_record(root, record)
        records.write_results(root, config, log.runs + [record])
        if cand:
            candidates.forget(root, cand["name"])
        elif pending:
            records.clear_pending(root, config["tag"])
        if not cand:
            moved = ""
        if a.status != "keep" and not cand:
            changed = git.changed_files(root, kept, commit) if commit != kept else []
            if commit != kept:
                ref = git.save_ref(root, config["tag"], f"run-{number}", commit)
                moved = f"; the tried change is kept at {ref}"
            git.reset_to(root, kept)
            moved = f"; {', '.join(changed) or config['target']} reset to {kept[:7]}" + moved
        undo = None
        if a.status == "discard":
            undo = undo_keep(root, config, log.runs + [record], number + 1)

    runs = log.runs + [record] + ([undo] if undo else [])
    best = stats.best_run(runs, config["direction"])
    best_text = (f"best {config['metric']} {common.fmt(best['metric'])} (run {best['run']})"
                 if best else "no kept result yet")
    est = policy.kept_estimate(config, runs) if best and policy.policy_name(config) == "noise-aware" else None
    if est and est["sd"] is not None:   # the value the next run is judged against, beside the raw best
        best_text += f"; the kept state is estimated at {common.fmt(est['mean'])} (the next run is judged against it)"
    shown = common.fmt(metric) if metric is not None else "-"
    print(f"logged run {number}: {a.status} {config['metric']}={shown} commit {commit[:7]}"
          f"{moved}; {best_text}")
    if undo:
        # Not a run (the cap does not count it): it is named by what it does.
        print(f"undone: {undo['description']}; "
              f"{', '.join(git.changed_files(root, undo['commit'], commit)) or config['target']} "
              f"reset to {undo['commit']}. Build the next idea on this code.")
    for line in (wave_lines if cand else []):
        print(line)
    if cand:
        flying = candidates.wave_line(root)
        print(f"wave: {flying}; " if flying else "wave: no candidate open; ", end="")
        print("refill free workers now (new-candidate, submit-wave), then wait-wave")
    every, done = config.get("progress_every", session.PROGRESS_EVERY), stats.experiments(runs)
    if every and done % every == 0:
        report = session.progress_report(root, config, runs, every)
        print(report)
        session.write_progress(root, report)
    cap = config.get("max_iterations")
    if cap and done >= cap:
        print(f"iteration cap reached ({done} of {cap} runs): write the summary "
              "(summarize), then stop; the session ends when you do")
    return 0


if __name__ == "__main__":
    common.run_main(main)
