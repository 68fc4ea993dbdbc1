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
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import experiment_lib as lib  # noqa: E402

SHOWN = ("peak_memory_mb", "avg_tok_sec", "mfu_percent", "num_steps", "training_seconds")
NAN = re.compile(r"\bnan\b|explod", re.IGNORECASE)   # the harness: "loss is NaN", "loss exploded"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="run-experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, help="override the session timeout (seconds)")
    p.add_argument("--tail", type=int, default=30, help="log lines shown on failure (default 30)")
    return p.parse_args(argv)


def tampered(root, config):
    changed = lib.changed_fixed_files(root, config["fixed_files"])
    if changed:
        print(f"status: tampered ({', '.join(changed[:5])} changed since setup)")
        print(f"repair: {lib.TAMPER_REPAIR}, then run again; a tampered run is never recorded")
    return bool(changed)


def run_target(root, config, timeout, seed, worker=None, cwd=None, log_path=None,
               running=None, siblings=None):
    """Start the target in its own session (so its process group is ours to kill);
    returns (exit code or None on timeout, seconds, the machine's load reading).

    A wave's candidate runs the same way from its own worktree (`cwd`), with its own
    log and running file, on one `worker` of the local backend: that worker's
    environment (CUDA_VISIBLE_DEVICES, thread counts) and, on a CPU, its own cores."""
    python = config["python"]
    if not os.path.exists(python):
        raise lib.UserError(f"interpreter {python} from the session config is gone: recreate "
                            "it, or set up a new session with --python")
    worker = worker or {}
    env = {**os.environ, **lib.compile_cache_env(root, config), "AUTORESEARCH_DATASET": config["dataset"],
           "AUTORESEARCH_TIME_BUDGET": f"{config['budget']:g}", "AUTORESEARCH_SEED": str(seed),
           "PYTHONUNBUFFERED": "1", **worker.get("env", {})}
    cpus = worker.get("cpus")
    start = time.monotonic()
    running = running or os.path.join(root, lib.STATE_DIR, "running.json")
    with open(log_path or os.path.join(root, lib.RUN_LOG), "wb") as out:
        proc = subprocess.Popen([python, config["target"]], cwd=cwd or root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        monitor = lib.LoadMonitor(proc.pid, cpus=cpus, siblings=siblings).start()
        lib.write_atomic(running, json.dumps({"pgid": proc.pid, "target": config["target"]}) + "\n")

        def kill_group():
            # TERM the whole group, give it 5 s, then KILL whatever is left (dataloader
            # workers, compilers and other children included).
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

        # If this script is itself stopped (the caller's own timeout), take the run down too.
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, lambda s, f: (kill_group(), sys.exit(128 + s)))
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        kill_group()
        reading = monitor.stop()
        if os.path.exists(running):
            os.unlink(running)
    return code, time.monotonic() - start, reading


def classify(code, text, metrics, name):
    value = metrics.get(name)
    if code is None:
        return "timeout", None
    if isinstance(value, float) and value != value:
        return "nan", None
    if code != 0:
        return ("nan" if NAN.search(text) else "crash"), f"exit {code}"
    if not lib.finite(value):
        return "crash", f"no {name} in the output"
    return "ok", None


def run_checks(root, command, timeout, status, detail, text):
    """The session's --checks command (tests, a lint) after an ok run. A failure makes
    the run `checks_failed`: never kept, however good its metric. Its output is what
    the failure tail shows."""
    proc = subprocess.run(command, shell=True, cwd=root, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode == 0:
        return status, detail, text
    return "checks_failed", f"`{command}` exited {proc.returncode}", proc.stdout + proc.stderr


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    root = lib.find_root()
    lib.use_project_python(root)
    root, log = lib.load_session(root)
    config = log.config
    pending_path = os.path.join(root, lib.STATE_DIR, "pending.json")
    leftover = lib.stop_leftover_run(root)
    if leftover:
        print(leftover)
    if tampered(root, config):
        return 3
    import waves
    worker = waves.main_tree_worker(config)
    busy = [c["name"] for c in lib.candidates(root) if c.get("state") in lib.IN_FLIGHT]
    if busy:
        raise lib.UserError(f"candidates {', '.join(busy)} are running on the workers: a run here "
                            "would share their devices; wait for them (wait-wave), or run this "
                            "as a candidate (new-candidate)")
    timeout = a.timeout or config["timeout"]
    target_path = os.path.join(root, config["target"])
    if not os.path.isfile(target_path):
        raise lib.UserError(f"target {config['target']} is missing: restore it with "
                            f"git checkout -- {config['target']}")
    target_sha = lib.code_hash(root, config)
    number = len(log.runs) + 1
    # Runs of this same code since the last log (baseline repeats, confirmations,
    # re-measures) add up; a run of different code starts afresh.
    previous = lib.read_json(pending_path, default=None) or {}
    if previous.get("target_sha") != target_sha:
        previous = {}
    seed = lib.next_seed(log.runs, target_sha, previous)

    code, seconds, reading = run_target(root, config, timeout, seed, worker=worker)
    with open(os.path.join(root, lib.RUN_LOG), encoding="utf-8", errors="replace") as f:
        text = f.read()
    metrics = lib.parse_metrics(text)
    status, detail = classify(code, text, metrics, config["metric"])
    if status == "ok" and config.get("checks"):
        status, detail, text = run_checks(root, config["checks"], timeout, status, detail, text)
    if tampered(root, config):       # the run itself changed a fixed file
        status = "tampered"

    for k in (config["metric"],) + tuple(k for k in SHOWN if k != config["metric"]):
        if k in metrics:
            print(f"METRIC {k}={metrics[k]}")
    when = f"run {number} after {seconds:.1f}s, seed {seed}"
    samples, seeds = list(previous.get("samples", [])), list(previous.get("seeds", []))
    disturbed = list(previous.get("disturbed", []))
    pending = {"run_status": status, "metrics": lib.json_safe(metrics), "seconds": round(seconds, 1),
               "target_sha": target_sha, "samples": samples, "seeds": seeds,
               "disturbed": disturbed, "load": reading, "finished": lib.now_iso()}
    why = lib.disturbed(reading)
    load = (f"machine: {'DISTURBED, ' + why if why else 'quiet'} (other processes "
            f"{reading.get('others', 0):.0%} of {reading.get('cpus', '?')} CPUs"
            + (f", steal {reading['steal']:.0%}" if "steal" in reading else "")
            + (f", {reading['gpu_others']} other GPU process(es)" if reading.get("gpu_others") else "")
            + ")") if reading else None
    if status == "ok":
        lib.add_sample(metrics[config["metric"]], seed, why, samples, seeds, disturbed)
        candidate = {"target_sha": target_sha, "samples": samples, "metrics": metrics,
                     "disturbed_now": why, "disturbed_runs": len(disturbed)}
        decision, reason = lib.recommend(config, log.runs, candidate)
        pending.update(recommendation=decision, reason=reason)
        shown = f", {len(samples)} samples of this code" if len(samples) > 1 else ""
        print(f"status: ok {when}{shown}")
        if load:
            print(load)
        print(f"recommend: {decision}: {reason}")
    elif status != "tampered":
        limit = f" (limit {timeout:g}s, process group killed)" if status == "timeout" else ""
        print(f"status: {status} {when}{limit}" + (f" ({detail})" if detail else ""))
        tail = text.splitlines()[-a.tail:]
        print(f"--- last {len(tail)} lines of {lib.RUN_LOG} ---")
        print("\n".join(tail))
        print("---")
        kind = "checks_failed" if status == "checks_failed" else "crash"
        print(f"next: fix and run again, or record it: log-experiment --status {kind} "
              "--description '...'")
    lib.write_atomic(pending_path, json.dumps(pending, indent=1) + "\n")
    return 0 if status == "ok" else (3 if status == "tampered" else 1)


if __name__ == "__main__":
    lib.run_main(main)
