#!/usr/bin/env python3
"""SessionStart hook: get the project ready for the agent's sandbox, and, after a
compaction or in a resumed conversation, bring the session back into the context.

Claude Code watches only the settings folders that exist when it starts: `.claude/` is
made here, so that the sandbox settings setup-session writes later in this same
conversation take effect at once. A session that has ended leaves its sandbox settings
until the person is back: a new start of Claude Code takes them out.

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
        project = os.environ.get("CLAUDE_PROJECT_DIR") or payload.get("cwd") or os.getcwd()
        try:
            os.makedirs(os.path.join(project, ".claude"), exist_ok=True)
        except OSError:
            pass                    # a folder of no one's: the sandbox comes at the next start
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
