#!/usr/bin/env python3
"""One worker of a wave (started by submit-wave, never by hand): takes the oldest
queued candidate, runs it on this slot's device or cores, writes its result, and takes
the next; exits when nothing is queued. Stopping it (TERM) stops its run's whole
process group. On Slurm, a candidate of this slot whose worker died is taken up
first: its job goes on, and this worker follows it."""
import argparse
import os
import sys

sys.dont_write_bytecode = True  # nothing is written into the plugin's folder
sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, devices, records, candidates, waves  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(prog="wave-worker", description=__doc__)
    p.add_argument("--slot", type=int, required=True)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    root = common.find_root()
    config = records.read_config(root)
    worker = devices.workers(config)[a.slot]
    while True:
        with common.Lock(root):
            cand = waves.take_next(root, config, a.slot, records.read_log(root).runs)
            if cand is None:
                path = waves.worker_path(root, a.slot)
                if os.path.exists(path) and open(path).read().strip() == str(os.getpid()):
                    os.unlink(path)
                return 0
        result = waves.run_candidate(root, config, cand, worker)
        with common.Lock(root):
            current = common.read_json(candidates.state_file(root, cand["name"]), default=None)
            if current and current.get("state") == "running" and current.get("slot") == a.slot:
                current.update(result, state="done")
                candidates.save(root, current)


if __name__ == "__main__":
    common.run_main(main)
