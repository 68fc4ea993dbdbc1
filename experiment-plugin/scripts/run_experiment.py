#!/usr/bin/env python3
"""Run the session's target once and report in a few lines.

Runs `<python> <target>` from the project root with AUTORESEARCH_DATASET and
AUTORESEARCH_TIME_BUDGET set from the session config, all output to run.log, and
torch.compile's cache in .autoresearch/compile-cache/<tag>/ (unless
TORCHINDUCTOR_CACHE_DIR is set), so runs reuse what earlier ones compiled. The run
is started in its own process group; past the timeout (default 2 x budget + 120 s)
the whole group is killed, children included. The fixed files' hashes are checked
before and after.

Prints `METRIC name=value` lines, one `status:` line (ok, crash, nan, timeout or
tampered), the keep policy's recommendation for an ok run, and, only on failure,
the last lines of run.log. Exit status 0 only for ok.

Seeds: the first run of some code (by the hash of the target) gets
AUTORESEARCH_SEED=42; every further run of identical code gets the next seed, so a
repeat measures the seed-to-seed spread a real change must beat.

Disturbed runs: the machine is read before and after the run (other processes' CPU
time and VM steal from /proc/stat; other processes on the GPU via nvidia-smi where
present; `ps` on macOS). A run that others disturbed beyond the thresholds gets
`recommend: rerun (disturbed: ...)`, and its metric is never a sample.

The result waits in .autoresearch/pending.json until log-experiment records it.
Running again without changing the target adds a sample of the same code (a
baseline repeat, a confirmation after `rerun`, a re-measure of the kept state); the
recommendation then uses their mean against the mean of the kept state's samples.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, harness, parsing, monitor, devices, records, stats, policy, candidates, runner  # noqa: E402



def parse_args(argv):
    p = argparse.ArgumentParser(prog="run-experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, help="override the session timeout (seconds)")
    p.add_argument("--tail", type=int, default=30, help="log lines shown on failure (default 30)")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    root = common.find_root()
    common.use_project_python(root)
    root, log = records.load_session(root)
    config = log.config
    leftover = runner.stop_leftover_run(root)
    if leftover:
        print(leftover)
    if runner.tampered(root, config):
        return 3
    worker = devices.main_tree_worker(config)
    busy = [c["name"] for c in candidates.candidates(root) if c.get("state") in candidates.IN_FLIGHT]
    if busy:
        raise common.UserError(f"candidates {', '.join(busy)} are running on the workers: a run here "
                            "would share their devices; wait for them (wait-wave), or run this "
                            "as a candidate (new-candidate)")
    timeout = a.timeout or config["timeout"]
    target_path = os.path.join(root, config["target"])
    if not os.path.isfile(target_path):
        raise common.UserError(f"target {config['target']} is missing: restore it with "
                            f"git checkout -- {config['target']}")
    target_sha = harness.code_hash(root, config)
    number = len(log.runs) + 1
    # Runs of this same code since the last log (baseline repeats, confirmations,
    # re-measures) add up; a run of different code starts afresh.
    previous = records.read_pending(root, config["tag"]) or {}
    if previous.get("target_sha") != target_sha:
        previous = {}
    seed = stats.next_seed(log.runs, target_sha, previous)

    results = []
    code, seconds, reading = runner.run_target(root, config, timeout, seed, worker=worker,
                                               results=results)
    with open(os.path.join(root, common.RUN_LOG), encoding="utf-8", errors="replace") as f:
        text = f.read()
    status, detail, metrics = runner.verdict(config, code, text, results, root=root)
    if status == "ok" and config.get("checks"):
        status, detail, text = runner.run_checks(root, config["checks"], timeout, status, detail, text)
    if runner.tampered(root, config):       # the run itself changed a fixed file
        status = "tampered"

    for k in (config["metric"],) + tuple(k for k in parsing.SHOWN if k != config["metric"]):
        if k in metrics:
            print(f"METRIC {k}={metrics[k]}")
    # A script that sets its own seed ignores the one passed: naming it would mislead.
    when = f"run {number} after {seconds:.1f}s" + (f", seed {seed}" if config.get("seeds", True) else "")
    samples, seeds = list(previous.get("samples", [])), list(previous.get("seeds", []))
    disturbed = list(previous.get("disturbed", []))
    pending = {"run_status": status, "metrics": parsing.json_safe(metrics), "seconds": round(seconds, 1),
               **({"detail": detail} if status == "invalid" else {}),
               "target_sha": target_sha, "samples": samples, "seeds": seeds,
               "disturbed": disturbed, "load": reading, "finished": common.now_iso()}
    why = monitor.disturbed(reading, config)
    verdict = (("DISTURBED, " + why if why else "quiet") if monitor.load_checked(config)
               else "load not checked")
    load = (f"machine: {verdict} (other processes "
            f"{reading.get('others', 0):.0%} of {reading.get('cpus', '?')} CPUs"
            + (f", steal {reading['steal']:.0%}" if "steal" in reading else "")
            + (f", {reading['gpu_others']} other GPU process(es)" if reading.get("gpu_others") else "")
            + ")") if reading else None
    if status == "ok":
        stats.add_sample(metrics[config["metric"]], seed, why, samples, seeds, disturbed)
        candidate = {"target_sha": target_sha, "samples": samples, "metrics": metrics,
                     "disturbed_now": why, "disturbed_runs": len(disturbed)}
        decision, reason = policy.recommend(config, log.runs, candidate)
        pending.update(recommendation=decision, reason=reason)
        shown = f", {len(samples)} samples of this code" if len(samples) > 1 else ""
        print(f"status: ok {when}{shown}")
        if load:
            print(load)
        print(f"recommend: {decision}: {reason}")
    elif status == "invalid":
        print(f"status: invalid {when} ({detail})")
        print("the run's result cannot be judged: what it measured is not the fixed evaluation. "
              "Undo what caused it; record it with: log-experiment --status crash --description '...'")
    elif status != "tampered":
        limit = f" (limit {timeout:g}s, process group killed)" if status == "timeout" else ""
        print(f"status: {status} {when}{limit}" + (f" ({detail})" if detail else ""))
        tail = text.splitlines()[-a.tail:]
        print(f"--- last {len(tail)} lines of {common.RUN_LOG} ---")
        print("\n".join(tail))
        print("---")
        kind = "checks_failed" if status == "checks_failed" else "crash"
        print(f"next: fix and run again, or record it: log-experiment --status {kind} "
              "--description '...'")
    records.write_pending(root, config["tag"], pending)
    return 0 if status == "ok" else (3 if status == "tampered" else 1)


if __name__ == "__main__":
    common.run_main(main)
