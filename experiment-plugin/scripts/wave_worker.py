#!/usr/bin/env python3
"""One worker of a wave (started by submit-wave, never by hand): takes the oldest
queued candidate, runs it on this slot's device or cores, writes its result, and takes
the next; exits when nothing is queued. Stopping it (TERM) stops its run's whole
process group."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import experiment_lib as lib  # noqa: E402
import waves  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(prog="wave-worker", description=__doc__)
    p.add_argument("--slot", type=int, required=True)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    root = lib.find_root()
    config = lib.read_config(root)
    worker = waves.workers(config)[a.slot]
    while True:
        with lib.Lock(root):
            log = lib.read_log(root)
            queued = [c for c in lib.candidates(root) if c.get("state") == "queued"]
            if not queued:
                path = waves.worker_path(root, a.slot)
                if os.path.exists(path) and open(path).read().strip() == str(os.getpid()):
                    os.unlink(path)
                return 0
            cand = queued[0]
            cand.update(state="running", worker=worker["name"], slot=a.slot,
                        backend=config.get("backend", "local"), started=lib.now_iso(),
                        seed=lib.next_seed(log.runs, cand["target_sha"], cand))
            waves.save(root, cand)
        result = waves.run_candidate(root, config, cand, worker)
        with lib.Lock(root):
            current = lib.read_json(waves.state_path(root, cand["name"]), default=None)
            if current and current.get("state") == "running" and current.get("slot") == a.slot:
                current.update(result, state="done")
                waves.save(root, current)


if __name__ == "__main__":
    lib.run_main(main)
