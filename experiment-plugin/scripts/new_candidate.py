#!/usr/bin/env python3
"""Prepare one candidate of a wave: a git worktree at the kept state, for one idea.

Makes .autoresearch/worktrees/<name>/ (names c1, c2, ...) at the last kept commit and
prints the file to edit there. Edit only the session's target in it (the guard
treats each worktree like the project), then submit-wave commits the edit and runs
it. Prepare one candidate per free worker, each a different idea.

  --unchanged   no edit: the kept code itself (a baseline sample or a re-measure,
                run on a worker like any candidate)
  --drop NAME   abandon a prepared, lost or tampered candidate: its worktree is removed
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, records, candidates  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(prog="new-candidate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--description", help="the idea, one sentence (it becomes the log's description)")
    p.add_argument("--unchanged", action="store_true", help="the kept code as it is (re-measure)")
    p.add_argument("--drop", metavar="NAME", help="abandon a prepared or lost candidate")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    root = common.find_root()
    common.use_project_python(root)
    with common.Lock(root):
        root, log = records.load_session(root)
        config = log.config
        if a.drop:
            cand = candidates.load(root, a.drop)
            if cand.get("state") not in ("prepared", "lost") and cand.get("run_status") != "tampered":
                raise common.UserError(f"{a.drop} is {cand.get('state')}: only a prepared, lost or "
                                    "tampered candidate can be dropped (a finished one is logged)")
            candidates.forget(root, a.drop)
            print(f"dropped {a.drop}")
            return 0
        if not a.description or not a.description.strip():
            raise common.UserError("--description must say what the candidate changes")
        if not any(r["status"] == "keep" for r in log.runs) and not a.unchanged:
            raise common.UserError("no kept state yet: run and log the baseline first (run-experiment, "
                                "or new-candidate --unchanged --description baseline)")
        cand = candidates.create(root, config, log.runs, a.description.strip(), unchanged=a.unchanged)
    path = candidates.worktree(root, cand["name"])
    print(f"candidate {cand['name']}: worktree {os.path.relpath(path, root)} at "
          f"{cand['base'][:7]} (the kept state)")
    if a.unchanged:
        print("next: submit-wave runs it unchanged")
    else:
        files = ", ".join(os.path.join(path, f) for f in common.editable_files(config))
        print(f"edit: {files} (only this; one idea)")
        print("next: edit it, then submit-wave (it commits and starts every prepared candidate)")
    return 0


if __name__ == "__main__":
    common.run_main(main)
