#!/usr/bin/env python3
"""Stop hook: keep the research loop going until it is meant to end.

While a session is active, with the iteration cap not reached and no
autoresearch.stop file, a stop is blocked with a short prompt to continue: the next
run number and the best result so far. Otherwise the stop goes through.

It deliberately ignores `stop_hook_active`: the loop is meant to continue across
many stops. Claude Code itself ends a turn after 8 consecutive blocks; for long
unattended sessions raise that with CLAUDE_CODE_STOP_HOOK_BLOCK_CAP (0 removes the
limit). On bad state it fails open: the stop goes through, with a message.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "scripts"))
import experiment_lib as lib  # noqa: E402


def decide(payload):
    """Return the hook's JSON answer, or None to let Claude stop silently."""
    root = lib.active_root(payload)
    if root is None:
        return None
    log = lib.read_log(root)
    config, runs = log.config, log.runs
    if os.path.exists(os.path.join(root, lib.STOP_FILE)):
        return {"systemMessage": f"autoresearch {config['tag']}: {lib.STOP_FILE} found, the loop "
                                 f"ends after {len(runs)} runs (/experiment:resume continues it)"}
    cap = config.get("max_iterations")
    if cap and len(runs) >= cap:
        return {"systemMessage": f"autoresearch {config['tag']}: iteration cap reached "
                                 f"({len(runs)} of {cap} runs); the loop ends"}
    best = lib.best_run(runs, config["direction"])
    best_text = (f"best {config['metric']} {lib.fmt(best['metric'])} (run {best['run']})"
                 if best else "no kept result yet")
    pending = os.path.exists(os.path.join(root, lib.STATE_DIR, "pending.json"))
    first = "log the finished run with log-experiment, then " if pending else ""
    left = f" of {cap}" if cap else ""
    reason = (f"autoresearch session {config['tag']} is still running: {len(runs)}{left} runs "
              f"logged, {best_text}. Do not stop and do not ask: {first}continue with run "
              f"{len(runs) + 1}: pick the next idea, edit {config['target']}, run-experiment, "
              f"log-experiment. The loop ends at the iteration cap or when the person creates "
              f"{lib.STOP_FILE}.")
    return {"decision": "block", "reason": reason}


def main():
    try:
        answer = decide(json.load(sys.stdin))
    except Exception as e:  # fail open: never trap the session on broken state
        answer = {"systemMessage": f"autoresearch loop hook: could not read the session state "
                                   f"({e}); letting Claude stop. Fix it, then /experiment:resume."}
    if answer:
        print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
