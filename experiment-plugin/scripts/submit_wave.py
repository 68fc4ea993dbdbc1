#!/usr/bin/env python3
"""Submit the wave: commit each prepared candidate's edit and start it on a free worker.

Every prepared candidate (or the ones named) is committed in its worktree (the commit
is kept as refs/autoresearch/<tag>/cand-<name>) and queued; a lost one (its run was
interrupted) is queued again. A worker starts on every free slot: local workers each
have their own device or cores; on SkyPilot each slot is a cluster of the pool. A
worker takes the next queued candidate as soon as it finishes one. Then wait-wave
returns each result as it comes.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, git, harness, devices, records, candidates, waves  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(prog="submit-wave", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="candidates to submit (default: every prepared or lost one)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    root = common.find_root()
    common.use_project_python(root)
    with common.Lock(root):
        root, log = records.load_session(root)
        config = log.config
        if harness.changed_fixed_files(root, config["fixed_files"]):
            raise common.UserError(f"fixed files changed since setup: {harness.TAMPER_REPAIR}; nothing was submitted")
        open_ = {c["name"]: c for c in candidates.candidates(root)}
        names = a.names or [n for n, c in open_.items() if c.get("state") in ("prepared", "lost")]
        for n in names:
            if n not in open_:
                raise common.UserError(f"no open candidate {n!r}: wait-wave --list shows them")
            if open_[n].get("state") not in ("prepared", "lost"):
                raise common.UserError(f"{n} is already {open_[n]['state']} (nothing was submitted)")
        # Every prepared one must have its edit before any is committed.
        for n in names:
            c = open_[n]
            if c["state"] == "prepared" and not c.get("unchanged") and not git.git(
                    candidates.worktree(root, n), "status", "--porcelain", "--", *common.editable_files(config)):
                raise common.UserError(f"{n} has no change yet: edit {os.path.join(candidates.worktree(root, n), config['target'])}, "
                                    f"or drop it (new-candidate --drop {n}); nothing was submitted")
        for n in names:
            c = open_[n]
            if c["state"] == "prepared":
                candidates.commit(root, config, c)
            else:
                c["state"] = "queued"
            candidates.save(root, c)
        started = waves.ensure_workers(root, config)
        queued = [c["name"] for c in candidates.candidates(root) if c.get("state") == "queued"]
    if not names and not queued:
        print("nothing to submit: prepare candidates with new-candidate first")
        return 0
    print(f"submitted {', '.join(names) or 'nothing new'}; queued: {', '.join(queued) or 'none'}; "
          f"started {len(started)} worker(s){': ' + ', '.join(started) if started else ''} "
          f"of {len(devices.workers(config))}")
    print("next: wait-wave (each result as it comes), log it, and refill free workers at once")
    return 0


if __name__ == "__main__":
    common.run_main(main)
