#!/usr/bin/env python3
"""End the session now: guard and loop off, the end recorded in the log.

What the iteration cap and autoresearch.stop do at the loop's next stop, this does at
once (it is what /experiment:end runs). The branch, log and results are untouched;
resume-session switches guard and loop back on and continues.

--discard throws away a session that has logged no run (a wrong --run, --budget-via
or seed setting): back on the branch it started from, its branch deleted, its files
moved under .autoresearch/archive/. Running setup-session again with the same tag
does the same and sets it up anew.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, records, session, waves  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(prog="end-session", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--discard", action="store_true",
                   help="throw away a session with no run logged, and its branch")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    root = common.find_root()
    if a.discard:
        root, log = records.load_session(root)
        archived, back_to = session.discard_unstarted(root)
        for line in waves.shutdown(root, log.config):
            print(line)
        print(f"session {log.config['tag']} thrown away: {log.config['branch']} deleted, back on "
              f"{back_to[:12]}; its files are in {archived}/")
        return 0
    if not session.read_state(root).get("active"):
        print("no active session here; nothing to do")
        return 0
    root, log = records.load_session(root)
    reason = "it was ended by end-session"
    session.end_session(root, reason)
    for line in waves.shutdown(root, log.config):
        print(line)
    print(session.ended_message(log.config, log.runs, reason))
    return 0


if __name__ == "__main__":
    common.run_main(main)
