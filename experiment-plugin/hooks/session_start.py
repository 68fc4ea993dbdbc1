#!/usr/bin/env python3
"""SessionStart hook: after a compaction or in a resumed conversation, bring the session
back into the context; at any start, take out the sandbox settings of a session that
has ended (it leaves them until the person is back).

Claude Code drops loaded skill text when it compacts a long conversation, and a
resumed conversation starts without it. While an experiment session is active, this
hook adds a short state block to the context: the protocol's path, target, budget
and policy, the run count and best result, the last five runs with what each
taught, and the next step. Without an active session it adds nothing.
"""
import json
import os
import sys

sys.dont_write_bytecode = True  # nothing is written into the plugin's folder
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "scripts"))
from core import agent_sandbox, records, session  # noqa: E402


def main():
    try:
        payload = json.load(sys.stdin)
        root = session.active_root(payload)
        if root is None:
            agent_sandbox.remove_after_end(payload, session.is_active)
            return 0
        if payload.get("source") not in ("compact", "resume"):
            return 0
        log = records.read_log(root)
        block = session.state_block(root, log.config, log.runs, session.owns_loop(root, payload))
    except Exception as e:  # never stand in the way of a conversation starting
        print(f"autoresearch session-start hook: {e}", file=sys.stderr)
        return 0
    print(json.dumps({"hookSpecificOutput": {"hookEventName": "SessionStart",
                                             "additionalContext": block}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
