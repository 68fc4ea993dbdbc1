"""Waves on Slurm: runs per hour with two job slots against one, and what the engine
costs each candidate (submit to start, end to result), in seconds.

A one-node Slurm cluster (munged, slurmctld, slurmd; tests/slurm_cluster.py, two
one-CPU slots) is started here and stopped after. Both sides go through the plugin as
a session does (setup-session --backend slurm, candidates of the unchanged code:
new-candidate --unchanged, submit-wave, wait-wave, log-experiment --candidate), each
in its own project: one with --workers 1 (one job at a time), one with --workers 2
(both slots). The target is a stand-in that keeps one CPU busy for the budget, as a
training run fills its time budget, and prints when it started and ended. The sides
alternate in rounds, so load from elsewhere on the machine falls on both alike.

Printed per side: runs per hour and their ratio (the goal is 1.8x or more); from the
one-slot side, where nothing else waits: submit -> start (sbatch returned, to the
target's first line: Slurm's scheduling and the job's start), end -> seen (the
target's last line, to the worker knowing the job ended: squeue's polling and the
job's completion) and end -> result (to wait-wave printing the result: what the agent
waits for). Needs Slurm and munge installed (apt-get install slurm-wlm munge) and root.

    python benchmarks/bench_slurm.py                     # 2 rounds, 4 runs a side, 5 s budget (~2 min)
    python benchmarks/bench_slurm.py --rounds 1 --runs 2 --budget 3
"""
import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, "tests"), os.path.join(REPO, "experiment-plugin", "scripts")]
os.environ.setdefault("AUTORESEARCH_SESSIONS", tempfile.mkdtemp(prefix="bench-slurm-sessions-"))

from plugin_helpers import git, make_project, script  # noqa: E402
from slurm_cluster import SlurmCluster  # noqa: E402

TARGET = '''\
"""A run that keeps one CPU busy for its budget, and says when it started and ended."""
import os, time
print(f"start {time.time():.3f}", flush=True)
end, steps = time.monotonic() + float(os.environ["AUTORESEARCH_TIME_BUDGET"]), 0
while time.monotonic() < end:
    steps += 1
print(f"end {time.time():.3f}", flush=True)
print("---")
print("val_bpb:          1.000000")
print(f"num_steps:        {steps}")
'''


def run(root, env, name, *args, timeout=600):
    proc = script(root, name, *args, env=env, timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def project(workdir, name, env, workers, budget):
    from pathlib import Path
    root = make_project(Path(workdir) / name)
    (root / "train.py").write_text(TARGET)
    git(root, "commit", "-qam", "busy stand-in")
    run(root, env, "setup-session", "--tag", name, "--dataset", "classics", "--budget", f"{budget:g}",
        "--policy", "strict", "--workers", str(workers), "--backend", "slurm",
        "--cpus-per-task", "1", "--python", sys.executable)
    return root


def wave(root, env, n):
    """n unchanged candidates submitted at once, each logged as it comes; returns (wall
    seconds, [(submit->start, end->seen, end->result) of each])."""
    for _ in range(n):
        run(root, env, "new-candidate", "--unchanged", "--description", "bench")
    start = time.monotonic()
    run(root, env, "submit-wave")
    costs = []
    while len(costs) < n:
        out = run(root, env, "wait-wave", "--timeout", "600")
        shown = time.time()
        line = re.search(r"^next: (log-experiment .*)$", out, re.M)
        if not line or "status: ok" not in out:
            sys.exit(f"no ok result:\n{out}")
        name = re.search(r"candidate (c\d+)", out).group(1)
        with open(os.path.join(root, ".autoresearch", "wave", f"{name}.json")) as f:
            info = json.load(f)["slurm"]
        with open(os.path.join(root, ".autoresearch", "wave", f"{name}.log")) as f:
            text = f.read()
        began = float(re.search(r"^start (\S+)", text, re.M).group(1))
        ended = float(re.search(r"^end (\S+)", text, re.M).group(1))
        costs.append((began - info["submitted"], info["ended"] - ended, shown - ended))
        args = shlex.split(line.group(1))[1:]
        args[args.index("--status") + 1] = "keep" if "recommend: keep" in out else "discard"
        run(root, env, "log-experiment", *args)
    return time.monotonic() - start, costs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--runs", type=int, default=4, help="candidates a side runs each round")
    p.add_argument("--budget", type=float, default=5.0, help="seconds each run keeps its CPU busy")
    p.add_argument("--json", action="store_true", help="one JSON line at the end")
    a = p.parse_args(argv)
    cluster = SlurmCluster(slots=2).start()
    workdir = tempfile.mkdtemp(prefix="bench-slurm-")
    env = {**cluster.env, "AUTORESEARCH_NO_REEXEC": "1"}
    try:
        sides = {"1 slot": project(workdir, "one", env, 1, a.budget),
                 "2 slots": project(workdir, "two", env, 2, a.budget)}
        for root in sides.values():             # the baseline, outside the measurement
            wave(root, env, 1)
        walls = {k: 0.0 for k in sides}
        costs = {k: [] for k in sides}
        print(f"budget {a.budget:g} s, {a.rounds} round(s) of {a.runs} runs a side", flush=True)
        for r in range(a.rounds):
            for name, root in sides.items():
                wall, cost = wave(root, env, a.runs)
                walls[name] += wall
                costs[name] += cost
                print(f"  round {r + 1}, {name}: {a.runs} runs in {wall:.1f} s", flush=True)
        report = {"budget": a.budget, "rounds": a.rounds, "runs": a.runs}
        for name in sides:
            report[name] = {"runs_per_hour": round(3600 * len(costs[name]) / walls[name], 1)}
            print(f"{name}: {report[name]['runs_per_hour']:.1f} runs/h")
        report["ratio"] = round(report["2 slots"]["runs_per_hour"] / report["1 slot"]["runs_per_hour"], 2)
        print(f"ratio (2 slots / 1 slot): {report['ratio']:.2f}x runs per hour (goal >= 1.8x)")
        for i, what in enumerate(("submit -> start", "end -> seen", "end -> result")):
            values = [c[i] for c in costs["1 slot"]]
            key = what.replace(" -> ", "_to_")
            report[key] = {"median": round(statistics.median(values), 2), "max": round(max(values), 2)}
            print(f"{what}: median {report[key]['median']:.2f} s, max {report[key]['max']:.2f} s "
                  f"(sbatch, {len(values)} runs)")
        if a.json:
            print(json.dumps(report))
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
