#!/usr/bin/env python3
"""Stop hook: keep the research loop going until it is meant to end, then end it.

While a session is active:
  * at the iteration cap, or when autoresearch.stop exists in the project root, the
    session ends (guard and loop off, the end recorded in the log, the stop file
    consumed) and the person is told what happened and what to do next;
  * in the conversation that owns the loop (the one that ran setup-session or
    resume-session), a stop is blocked with a short prompt to continue: the next run
    number and the best result so far;
  * in any other conversation (the morning's /experiment:summary, a question) the
    stop goes through, with a note that the session is still open.

It deliberately ignores `stop_hook_active`: the loop is meant to continue across
many stops. Claude Code itself ends a turn after 8 consecutive blocks; for long
unattended sessions raise that with CLAUDE_CODE_STOP_HOOK_BLOCK_CAP (0 removes the
limit). On bad state it fails open: the stop goes through, with a message.
"""
import json
import os
import sys

sys.dont_write_bytecode = True  # nothing is written into the plugin's folder
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "scripts"))
from core import common, records, stats, candidates, session  # noqa: E402


def decide(payload):
    """Return the hook's JSON answer, or None to let Claude stop silently."""
    root = session.active_root(payload)
    if root is None:
        return None
    log = records.read_log(root)
    config, runs = log.config, log.runs
    ending = session.loop_end_reason(root, config, runs)
    if ending:
        session.end_session(root, ending)
        return {"systemMessage": session.ended_message(config, runs, ending)}
    if not session.owns_loop(root, payload):
        return {"systemMessage": session.open_elsewhere_note(config)}
    cap = config.get("max_iterations")
    pending = os.path.exists(os.path.join(root, common.STATE_DIR, "pending.json"))
    first = "log the finished run with log-experiment, then " if pending else ""
    flying = candidates.wave_line(root)
    if flying:
        first = (f"{flying}: wait-wave for the next result, log it (log-experiment --candidate), "
                 "refill free workers (new-candidate, submit-wave), and ")
    left = f" of {cap}" if cap else ""
    learned = next((f" Latest lesson (run {r['run']}): {records.lesson(r)[:200]}."
                    for r in reversed(runs) if records.lesson(r)), "")
    reason = (f"autoresearch session {config['tag']} is still running: {stats.experiments(runs)}{left} runs "
              f"logged, {session.best_line(config, runs)}.{learned} Do not stop and do not ask: {first}"
              f"continue with run {len(runs) + 1}: pick the next idea, edit {config['target']}, "
              f"run-experiment, log-experiment.{session.plateau_hint(config, runs)} The loop ends "
              f"at the iteration cap or when the person creates {session.stop_file(root)}.")
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
