"""How much does val_bpb move between runs of identical code, and why?

Runs the real train.py on a prepared dataset several times at a fixed budget,
some with the default seed (42) and some with a new seed each, and reads the
machine around each run with the same monitor run-experiment uses. Prints one
line per run (seed, val_bpb, steps, other processes' share of the CPUs, VM steal,
whether the run counts as disturbed) and then:

  * sigma of all quiet runs (the noise a decision must beat);
  * sigma among same-seed runs (timing alone: how many steps fit);
  * sigma among new-seed runs (timing and seed);
  * the slope of val_bpb on the step count, and how much of the variance the step
    count explains;
  * with --probe S: a fixed matrix-multiply workload of S seconds, timed just before
    and just after each run, and how much of the step count's spread the machine's
    speed on it explains. The step count cannot serve to adjust a comparison (a
    faster change earns its extra steps); a probe that does not depend on the code
    could, if it tracks what the run got.

    python prepare.py --dataset classics
    python benchmarks/bench_noise.py --budget 90 --same 5 --seeds 9 --out noise.jsonl
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiment-plugin" / "scripts"))
from core import common, parsing, monitor as core_monitor  # noqa: E402


def one_run(python, dataset, budget, seed, timeout, script="train.py", cwd=REPO):
    """One training run as run-experiment makes it (its own process group, the harness
    on PYTHONPATH), watched by the load monitor. `script` is run from `cwd`, where its
    records land. Returns the figures, the reading, and the output's tail for errors."""
    env = {**os.environ, "AUTORESEARCH_DATASET": dataset, "AUTORESEARCH_TIME_BUDGET": f"{budget:g}",
           "AUTORESEARCH_SEED": str(seed), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([python, str(script)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    monitor = core_monitor.LoadMonitor(proc.pid).start()
    out, _ = proc.communicate(timeout=timeout)
    reading = monitor.stop()
    metrics = parsing.parse_metrics(out)
    return {"seed": seed, "val_bpb": metrics.get("val_bpb"), "steps": metrics.get("num_steps"),
            "tok_s": metrics.get("avg_tok_sec"), "load": reading, "disturbed": core_monitor.disturbed(reading, {}),
            "exit": proc.returncode, "tail": out[-2000:]}


PROBE_CODE = """
import sys, time, torch
torch.manual_seed(0)
a, b = torch.randn(384, 384), torch.randn(384, 384)
end, n = time.perf_counter() + float(sys.argv[1]), 0
start = time.perf_counter()
while time.perf_counter() < end:
    a @ b
    n += 1
print(2 * 384 ** 3 * n / (time.perf_counter() - start) / 1e9)
"""


def probe(python, seconds):
    """GFLOP/s of a fixed fp32 matrix multiply for `seconds`, in its own process and
    with torch's default threads, as a training run has them."""
    out = subprocess.run([python, "-c", PROBE_CODE, str(seconds)], capture_output=True, text=True)
    return float(out.stdout.strip()) if out.returncode == 0 else None


def fit(xs, ys):
    """Least squares of ys on xs: (slope, share of the variance explained, residuals)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if not sxx:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    resid = [y - my - slope * (x - mx) for x, y in zip(xs, ys)]
    syy = sum((y - my) ** 2 for y in ys)
    return slope, (1 - sum(e * e for e in resid) / syy) if syy else 0.0, resid


def sd(xs):
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def report(rows):
    quiet = [r for r in rows if not r["disturbed"] and common.finite(r["val_bpb"])]
    same = [r["val_bpb"] for r in quiet if r["seed"] == 42]
    new = [r["val_bpb"] for r in quiet if r["seed"] != 42]
    print(f"quiet runs {len(quiet)} of {len(rows)}; sigma all {sd([r['val_bpb'] for r in quiet]):.4f}, "
          f"same seed {sd(same):.4f} (n={len(same)}), new seeds {sd(new):.4f} (n={len(new)})")
    if len(quiet) > 2:
        xs = [r["steps"] for r in quiet]
        ys = [r["val_bpb"] for r in quiet]
        line = fit(xs, ys)
        if line:
            slope, explained, resid = line
            print(f"steps {min(xs)}-{max(xs)}; val_bpb per step {slope:+.4f}; the step count "
                  f"explains {explained:.0%} of the variance; residual sigma {sd(resid):.4f}")
        probed = [r for r in quiet if r.get("probe")]
        line = fit([r["probe"] for r in probed], [r["steps"] for r in probed]) \
            if len(probed) > 2 else None
        if line:
            _, explained, _ = line
            on_bpb = fit([r["probe"] for r in probed], [r["val_bpb"] for r in probed])
            print(f"probe {min(r['probe'] for r in probed):.1f}-{max(r['probe'] for r in probed):.1f} "
                  f"GFLOP/s; it explains {explained:.0%} of the step count's variance; val_bpb "
                  f"adjusted for it: sigma {sd(on_bpb[2]):.4f} (unadjusted "
                  f"{sd([r['val_bpb'] for r in probed]):.4f})")
    bad = [r for r in rows if r["disturbed"]]
    for r in bad:
        print(f"disturbed: seed {r['seed']} val_bpb {r['val_bpb']} steps {r['steps']}: {r['disturbed']}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=90)
    p.add_argument("--dataset", default="classics")
    p.add_argument("--same", type=int, default=5, help="runs with seed 42")
    p.add_argument("--seeds", type=int, default=9, help="runs with a new seed each (43, 44, ...)")
    p.add_argument("--probe", type=float, default=0,
                   help="seconds of a fixed matmul probe before and after each run (default 0: none)")
    p.add_argument("--out", help="append one JSON line per run here")
    p.add_argument("--report", help="only print the figures of an earlier --out file")
    a = p.parse_args()
    if a.report:
        with open(a.report) as f:
            report([json.loads(line) for line in f if line.strip()])
        return
    # Alternate the two kinds, so a slow spell of the machine hits both alike.
    order = []
    same, new = a.same, list(range(43, 43 + a.seeds))
    while same or new:
        if same:
            order.append(42)
            same -= 1
        if new:
            order.append(new.pop(0))
    rows = []
    for i, seed in enumerate(order, 1):
        start = time.monotonic()
        before = probe(sys.executable, a.probe) if a.probe else None
        row = one_run(sys.executable, a.dataset, a.budget, seed, timeout=3 * a.budget + 300)
        after = probe(sys.executable, a.probe) if a.probe else None
        if before and after:
            row["probe"] = (before + after) / 2
            row["probe_spread"] = abs(before - after)
        rows.append(row)
        print(f"{i:2d}/{len(order)} seed {seed:3d} val_bpb {row['val_bpb']} steps {row['steps']} "
              + (f"probe {before:.1f}/{after:.1f} " if before and after else "") +
              f"others {row['load'].get('others')} steal {row['load'].get('steal')} "
              f"{'DISTURBED ' + row['disturbed'] if row['disturbed'] else 'quiet'} "
              f"({time.monotonic() - start:.0f}s)", flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps({k: v for k, v in row.items() if k != "tail"}) + "\n")
    report(rows)


if __name__ == "__main__":
    main()
