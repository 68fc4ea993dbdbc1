#!/usr/bin/env python3
"""Wait for the next result of the wave and show it, with the keep policy's word.

Prints what run-experiment prints for a single run (METRIC lines, a `status:` line
naming the candidate, its worker and seed, `recommend:`), and the log-experiment line
that records it. The recommendation is made against the kept state as it is now:

  keep      log it --status keep: the branch moves to the candidate's commit
  discard   log it --status discard
  rerun     (not shown: the candidate is queued again at once, on a new seed)
  rebase    it beat the state it was built on, but another candidate was kept
            meanwhile: log it --status discard and it is re-based onto the new kept
            state as a new candidate, queued at once
  crash     crash, nan or timeout: log it --status crash (after a quick fix, if any)

Returns after --timeout seconds (default 540) with the candidates still running, so
the Bash call never times out; call it again. --list shows every open candidate.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, devices, parsing, records, policy, candidates, waves  # noqa: E402


def show(root, config, cand, tail):
    name, status = cand["name"], cand.get("run_status")
    for k in (config["metric"],) + tuple(k for k in parsing.SHOWN if k != config["metric"]):
        if k in (cand.get("metrics") or {}):
            print(f"METRIC {k}={cand['metrics'][k]}")
    when = (f"candidate {name} on {cand.get('worker')}, seed {cand.get('seed')}, after "
            f"{cand.get('seconds', 0):.1f}s" + (f" (re-based from {cand['rebased_from']})"
                                                if cand.get("rebased_from") else ""))
    if status == "ok":
        n = len(cand.get("samples") or [])
        print(f"status: ok {when}" + (f", {n} samples of this code" if n > 1 else ""))
    else:
        limit = (f" (limit {cand['timeout']:g}s, process group killed)" if status == "timeout" else "")
        print(f"status: {status} {when}{limit}" + (f" ({cand['detail']})" if cand.get("detail") else ""))
        try:
            with open(candidates.log_path(root, name), encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()[-tail:]
        except OSError:
            lines = []
        print(f"--- last {len(lines)} lines of {os.path.relpath(candidates.log_path(root, name), root)} ---")
        print("\n".join(lines))
        print("---")
    print(f"recommend: {cand['recommendation']}: {cand['reason']}")
    if cand["recommendation"] == "tampered":
        print(f"next: new-candidate --drop {name}, then the idea again in a new candidate")
        return
    as_status = {"rebase": "discard"}.get(cand["recommendation"], cand["recommendation"])
    print(f"next: log-experiment --candidate {name} --status {as_status} "
          f"--description '{cand['description']}'")


def listing(root, config):
    cands = candidates.candidates(root)
    if not cands:
        print("no open candidates")
    for c in cands:
        extra = f" on {c['worker']}" if c.get("state") == "running" else ""
        print(f"{c['name']:<5} {c.get('state'):<9}{extra}  {c['description']}")
    busy = [w["name"] for w in devices.workers(config) if waves.worker_pid(root, w["slot"])]
    print(f"workers: {len(busy)} of {len(devices.workers(config))} busy" +
          (f" ({', '.join(busy)})" if busy else ""))


def main(argv=None):
    p = argparse.ArgumentParser(prog="wait-wave", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=waves.WAIT_SECONDS,
                   help=f"return after this many seconds without a result (default {waves.WAIT_SECONDS})")
    p.add_argument("--list", action="store_true", help="show the open candidates and workers, do not wait")
    p.add_argument("--tail", type=int, default=30, help="log lines shown on failure (default 30)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    root = common.find_root()
    common.use_project_python(root)
    root, log = records.load_session(root)
    config = log.config
    if a.list:
        listing(root, config)
        return 0
    deadline = time.monotonic() + a.timeout
    while True:
        with common.Lock(root):
            runs = records.read_log(root).runs
            cands = candidates.candidates(root)
            shown = [c for c in cands if c.get("state") == "decided"]
            done = [c for c in cands if c.get("state") == "done"]
            for cand in sorted(done, key=lambda c: c.get("finished", "")):
                decision, reason = policy.decide_candidate(config, runs, cand)
                if decision == "rerun":
                    cand.update(state="queued", recommendation=None)
                    candidates.save(root, cand)
                    print(f"rerun: {cand['name']} queued again on a new seed ({reason})")
                    continue
                cand.update(state="decided", recommendation=decision, reason=reason)
                candidates.save(root, cand)
                waves.ensure_workers(root, config)
                show(root, config, cand, a.tail)
                return 0
            for name in waves.lost_by_dead_workers(root, config):
                print(f"lost: {name}'s worker stopped before it finished (see "
                      f"{common.WAVE_DIR}/worker-*.log); submit-wave re-queues it")
            cands = candidates.candidates(root)
            flying = [c for c in cands if c.get("state") in candidates.IN_FLIGHT]
            if flying:
                waves.ensure_workers(root, config)      # a rerun, or a worker that died
        if not flying:
            if shown:
                print(f"no new result; shown but not logged yet: {', '.join(c['name'] for c in shown)} "
                      "(log each with log-experiment --candidate NAME)")
            else:
                print("no candidates in flight: prepare some with new-candidate, then submit-wave")
            return 0
        if time.monotonic() > deadline:
            print(f"still running after {a.timeout:g}s: "
                  + ", ".join(f"{c['name']} ({c['state']})" for c in flying)
                  + "; call wait-wave again")
            return 0
        time.sleep(0.5)


if __name__ == "__main__":
    common.run_main(main)
