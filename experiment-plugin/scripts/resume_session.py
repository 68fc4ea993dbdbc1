#!/usr/bin/env python3
"""Continue an interrupted or ended session exactly where its log says it stands.

  * stops a training run left behind by a killed run-experiment;
  * switches to the session branch;
  * saves any uncommitted change, and a branch moved off the last kept commit, under
    refs/autoresearch/<tag>/interrupted-<time> (nothing is lost), then resets the
    work tree to the last kept commit;
  * restores the log from its copy where it differs (lines the scripts did not write
    are set aside in .autoresearch/set-aside-<time>.jsonl), and sets aside a
    pending.json that run-experiment did not write, putting back the run's own;
  * sets aside a run that finished but was never logged, with the ref that holds
    the change it measured, and prints its result and the one command that records
    it (log-experiment --unlogged FILE ...);
  * checks the fixed files against the hashes recorded at setup;
  * removes autoresearch.stop, records the resume in the log, and switches the guard
    and the loop back on, owned by this conversation;
  * prints where the loop stands: runs logged, the next run number, the best result.

A session that ended at its iteration cap goes on with --max-iterations N (N larger
than the runs already logged).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, git, harness, agent_sandbox, records, stats, session, runner, waves  # noqa: E402


def save_work(root, tag, label):
    """Keep uncommitted changes as a commit object under a ref; return the ref or None."""
    if not git.tracked_changes(root):
        return None
    sha = git.git(root, "stash", "create", f"autoresearch {tag}: interrupted work")
    return git.save_ref(root, tag, f"interrupted-{label}", sha) if sha else None


def where_head_was(root, kept):
    """"past", "behind" or "off" the last kept commit, said as it is."""
    ahead = git.git(root, "rev-list", "--count", f"{kept}..HEAD") != "0"
    behind = git.git(root, "rev-list", "--count", f"HEAD..{kept}") != "0"
    return "past" if ahead and not behind else ("behind" if behind and not ahead else "off")


def set_aside(root, config, runs, label, refs, kept):
    """Move a finished but unlogged result out of the way, with what is needed to record
    it later: the ref holding the change it measured (one of `refs`, or the kept commit
    itself). Returns the lines to print."""
    pending = records.read_pending(root, config["tag"])
    if pending is None:
        return []
    files = " ".join(common.editable_files(config))
    ref = next((r for r in refs + [kept]
                if harness.code_hash(root, config, r) == pending.get("target_sha")), None)
    rel = records.write_unlogged(root, config["tag"], label,
                                 {**pending, "ref": ref, "after_runs": len(runs)})
    records.clear_pending(root, config["tag"])
    name, number = config["metric"], len(runs) + 1
    if pending.get("run_status") == "ok":
        value = pending["samples"][-1] if pending.get("samples") else pending["metrics"].get(name)
        result = f"{name} {common.fmt(value)}"
        if pending.get("recommendation"):
            result += f", recommend {pending['recommendation']}: {pending.get('reason', '')}"
        status = pending.get("recommendation")      # keep, discard, or rerun: measure again
    else:
        result, status = f"status {pending.get('run_status')}", "crash"
    lines = [f"run {number} finished but was never logged: {result}"]
    if ref is None:
        lines.append("  the change it measured was not found in the work tree or the branch; "
                     f"its result stays in {rel}")
        return lines
    if ref != kept:
        lines.append(f"  the change it measured is saved as {ref}")
    if status in ("keep", "discard", "crash"):
        lines.append(f"  record it:  {os.path.join(common.PLUGIN_ROOT, 'scripts', 'log-experiment')} "
                     f"--unlogged {rel} --status {status} --description '...'")
    lines.append(f"  {'or ' if len(lines) > 2 else ''}measure it again:  git checkout {ref} -- "
                 f"{files}, then run-experiment")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="resume-session", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-iterations", type=int,
                   help="a new iteration cap (more than the runs already logged)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    root = common.find_root()
    common.use_project_python(root)
    notes = []
    label = common.now_iso().replace(":", "").replace("-", "")
    with common.Lock(root):
        restored = records.restore_log(root, label)
        if restored:
            notes.append(restored)
        root, log = records.load_session(root)
        config, runs = log.config, log.runs
        if restored:
            records.write_results(root, config, runs)
        tag, branch = config["tag"], config["branch"]
        cap, done = a.max_iterations or config.get("max_iterations"), stats.experiments(runs)
        if a.max_iterations is not None and a.max_iterations <= done:
            raise common.UserError(f"--max-iterations {a.max_iterations} is not above the "
                                f"{done} runs already logged: give a larger number")
        if cap and done >= cap:
            raise common.UserError(f"the iteration cap is reached ({done} of {cap} runs): "
                                f"to go on, resume with --max-iterations {done + 20} "
                                "(or any number above the runs logged)")
        if not git.branch_exists(root, branch):
            raise common.UserError(f"branch {branch} is gone: nothing to resume; start a new "
                                "session with setup-session")
        leftover = runner.stop_leftover_run(root)
        if leftover:
            notes.append(leftover)
        stale = common.remove_stale_temps(root)
        if stale:
            notes.append(f"removed {len(stale)} half-written temporary file(s) of an interrupted write")
        saved = save_work(root, tag, label)
        refs = [saved] if saved else []
        if saved:
            notes.append(f"saved uncommitted changes as {saved}")
            git.reset_to(root, "HEAD")
        if git.current_branch(root) != branch:
            git.git(root, "checkout", "-q", branch)
            notes.append(f"switched to {branch}")
        kept = git.last_kept_commit(config, runs)
        if git.head(root) != kept:
            where = where_head_was(root, kept)
            ref = git.save_ref(root, tag, f"interrupted-{label}-head", git.head(root))
            refs.append(ref)
            git.reset_to(root, kept)
            notes.append(f"the branch was {where} the last kept commit: saved it as {ref} "
                         f"and restored {kept[:7]}")
        forged = records.set_aside_pending(root, tag, label)
        if forged:
            notes.append(forged)
        notes += set_aside(root, config, runs, label, refs, kept)
        notes += waves.recover(root, config)
        if os.path.exists(session.stop_file(root)):
            os.unlink(session.stop_file(root))
            notes.append(f"removed {common.STOP_FILE}")
        changed = harness.changed_fixed_files(root, config["fixed_files"])
        if changed:
            raise common.UserError(f"{', '.join(changed[:5])} still differ from setup at the last "
                                f"kept commit: restore them with git checkout "
                                f"{config['base_commit'][:7]} -- {' '.join(changed[:5])}, "
                                "then resume again")
        event = {"type": "event", "event": "resume", "runs": len(runs), "timestamp": common.now_iso()}
        if a.max_iterations:
            event["max_iterations"] = a.max_iterations
        records.append_record(root, event)
        session.start_loop(root)
        notes += agent_sandbox.apply(root, config)     # the agent's Bash back in its sandbox

    for n in notes:
        print(n)
    print(f"session {tag} on {branch} at {kept[:7]} (last kept); {done} runs logged; "
          f"next is run {len(runs) + 1}")
    print(session.best_line(config, runs) if stats.best_run(runs, config["direction"])
          else "no kept result yet: run the baseline first")
    for r in runs[-5:]:
        print("  " + session.run_line(config, r))
    if cap:
        print(f"iteration cap: {cap} runs ({max(0, cap - done)} left)")
    print(f"guard and loop hooks on; continue the loop (stop it by creating {session.stop_file(root)})")
    print(f"scripts: {os.path.join(common.PLUGIN_ROOT, 'scripts')}")
    return 0


if __name__ == "__main__":
    common.run_main(main)
