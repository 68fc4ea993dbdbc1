"""Runs per hour: two local workers with one core each against one worker with two.

Both sides go through the plugin exactly as a session does (setup-session, then
candidates of the unchanged template: new-candidate --unchanged, submit-wave,
wait-wave, log-experiment --candidate), each in its own clone of this repository, on
the real train.py and the embedded `classics` data. The two sides alternate in
rounds (one worker runs two candidates one after the other; two workers run two at
once), so load from elsewhere on the machine falls on both alike. Printed: runs per
hour of each side and their ratio, and what a run achieved on each (steps in the
budget, val_bpb): on a CPU, a run with one core fits fewer steps into its budget, so
the per-run quality changes too.

    python benchmarks/bench_waves.py                 # 3 rounds, 30 s budget (~8 min on 2 cores)
    python benchmarks/bench_waves.py --rounds 1 --budget 10
"""
import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "experiment-plugin", "scripts")


def sh(cwd, env, *args, timeout=1800):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args[:3])} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def script(cwd, env, name, *args):
    return sh(cwd, env, sys.executable, os.path.join(cwd, "experiment-plugin", "scripts", name), *args)


def clone(workdir, name, env, workers, budget):
    root = os.path.join(workdir, name)
    sh(workdir, env, "git", "clone", "-q", REPO, root)
    for key, value in (("user.name", "bench"), ("user.email", "bench@localhost")):
        sh(root, env, "git", "config", key, value)
    script(root, env, "setup-session", "--tag", name, "--dataset", "classics", "--budget", str(budget),
           "--policy", "strict", "--workers", str(workers), "--python", sys.executable)
    return root


def wave(root, env, n):
    """n unchanged candidates, submitted at once, each logged as it comes; returns
    (wall seconds, [(seconds, num_steps, val_bpb)])."""
    for _ in range(n):
        script(root, env, "new-candidate", "--unchanged", "--description", "bench")
    start = time.monotonic()
    script(root, env, "submit-wave")
    results = []
    while len(results) < n:
        out = script(root, env, "wait-wave", "--timeout", "1800")
        line = re.search(r"^next: (log-experiment .*)$", out, re.M)
        if not line:
            sys.exit(f"no result:\n{out}")
        if "status: ok" not in out:
            sys.exit(f"a run failed:\n{out}")
        steps = re.search(r"^METRIC num_steps=(\S+)", out, re.M)
        bpb = float(re.search(r"^METRIC val_bpb=(\S+)", out, re.M).group(1))
        secs = float(re.search(r"after ([\d.]+)s", out).group(1))
        results.append((secs, float(steps.group(1)) if steps else float("nan"), bpb))
        status = "keep" if "recommend: keep" in out else "discard"
        args = shlex.split(line.group(1))[1:]
        args[args.index("--status") + 1] = status
        script(root, env, "log-experiment", *args)
    return time.monotonic() - start, results


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", type=float, default=30)
    p.add_argument("--json", action="store_true", help="one JSON line at the end")
    a = p.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        sys.exit("needs 2 or more cores")
    workdir = tempfile.mkdtemp(prefix="bench-waves-")
    cache = os.environ.get("AUTORESEARCH_CACHE") or os.path.join(workdir, "cache")
    env = {**os.environ, "AUTORESEARCH_CACHE": cache, "AUTORESEARCH_QUIET": "1",
           "AUTORESEARCH_LOAD_CHECK": "0", "AUTORESEARCH_NO_REEXEC": "1"}
    env.pop("CLAUDE_CODE_SESSION_ID", None)
    try:
        sh(REPO, env, sys.executable, "prepare.py", "--dataset", "classics")
        sides = {"1 worker x 2 cores": clone(workdir, "one", env, 1, a.budget),
                 "2 workers x 1 core": clone(workdir, "two", env, 2, a.budget)}
        for root in sides.values():             # the baseline, outside the measurement
            script(root, env, "run-experiment")
            script(root, env, "log-experiment", "--status", "keep", "--description", "baseline")
        walls = {k: 0.0 for k in sides}
        runs = {k: [] for k in sides}
        print(f"{cores} cores, budget {a.budget:g} s, {a.rounds} rounds of 2 runs a side; "
              f"load average at start {loadavg()}", flush=True)
        for r in range(a.rounds):
            for name, root in sides.items():
                wall, results = wave(root, env, 2)
                walls[name] += wall
                runs[name] += results
                print(f"  round {r + 1}, {name}: 2 runs in {wall:.1f} s "
                      f"(each {', '.join(f'{s:.1f}' for s, _, _ in results)} s; load {loadavg()})", flush=True)
        report = {"cores": cores, "budget": a.budget, "rounds": a.rounds}
        for name in sides:
            rate = 3600 * len(runs[name]) / walls[name]
            steps = statistics.mean(s for _, s, _ in runs[name])
            bpb = statistics.mean(b for _, _, b in runs[name])
            report[name] = {"runs_per_hour": round(rate, 1), "steps": round(steps, 1),
                            "val_bpb": round(bpb, 4), "run_seconds": round(statistics.mean(
                                s for s, _, _ in runs[name]), 1)}
            print(f"{name}: {rate:.1f} runs/h; a run: {steps:.0f} steps, val_bpb {bpb:.4f}, "
                  f"{report[name]['run_seconds']:.1f} s")
        one, two = (report[n]["runs_per_hour"] for n in sides)
        report["ratio"] = round(two / one, 2)
        print(f"ratio (2 workers x 1 core / 1 worker x 2 cores): {report['ratio']:.2f}x runs per hour; "
              f"load average at end {loadavg()}")
        if a.json:
            print(json.dumps(report))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
