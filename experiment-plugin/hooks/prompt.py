#!/usr/bin/env python3
"""UserPromptSubmit hook: a person who asks for the summary is not asking for more runs.

/experiment:summary typed into the conversation that runs the loop releases the loop
(the Stop hook stops keeping that conversation going), so the summary ends its turn.
The session stays open: /experiment:resume takes the loop up again, /experiment:end
closes it. Any other prompt passes untouched, and the hook never blocks one.

A prompt is also the sign that the person is back: once the session has ended, the
sandbox settings setup added to .claude/settings.local.json are taken out here (never
by the agent's own end-session, which must not free the agent's Bash).
"""
import json
import os
import re
import sys

sys.dont_write_bytecode = True  # nothing is written into the plugin's folder
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "scripts"))
from core import agent_sandbox, session  # noqa: E402

RELEASES_THE_LOOP = re.compile(r"^\s*/(experiment:)?summary\b")


def main():
    try:
        payload = json.load(sys.stdin)
        root = session.active_root(payload)
        if root is None:
            agent_sandbox.remove_after_end(payload, session.is_active)
        elif RELEASES_THE_LOOP.match(payload.get("prompt") or "") and session.owns_loop(root, payload):
            session.write_state(root, owner=None)
    except Exception as e:  # never stand between the person and their prompt
        print(f"autoresearch prompt hook: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
