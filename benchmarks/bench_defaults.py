"""Two versions of train.py, head to head: val_bpb, tok/s and steps at one budget.

The question it answers: are the template's defaults (say, the tuned CPU branch)
really better than an older version's, on the data they were tuned on and on data
they never saw? Each version is taken from git (`--old REF`, `--new REF`; the new
side defaults to the working tree's train.py) and run unchanged through the real
harness. The two sides alternate, run for run, with the same seeds (42, 43, ...),
so drift in the machine's speed falls on both alike. The same load monitor as
run-experiment's marks runs that other processes disturbed; they are listed and
left out of the medians.

    python prepare.py --dataset classics
    python benchmarks/heldout_corpus.py --out ~/heldout && python prepare.py --dataset local:$HOME/heldout
    python benchmarks/bench_defaults.py --old 22395cb --datasets classics,local:$HOME/heldout --runs 3
    python benchmarks/bench_defaults.py --old HEAD~1 --budget 20 --runs 1   # a quick look

Printed: one line per run, then per dataset the medians of each side and the
new side's change in val_bpb (a negative percentage is better).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiment-plugin", "scripts"))
from core import common  # noqa: E402
import bench_noise  # noqa: E402  (one watched training run)


def template_at(ref, path, workdir, name):
    """The file `path` as of git `ref` (or as it is in the working tree when ref is
    None), written to workdir/name."""
    if ref is None:
        text = open(os.path.join(REPO, path), encoding="utf-8").read()
    else:
        proc = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"git show {ref}:{path} failed: {proc.stderr.strip()}; pass a commit that has {path}")
        text = proc.stdout
    out = os.path.join(workdir, name)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    return out


def one_run(script, dataset, budget, seed, rundir):
    """One watched run of a template (bench_noise.one_run), records under rundir; a
    failed run ends the comparison with its output."""
    os.makedirs(rundir, exist_ok=True)
    row = bench_noise.one_run(sys.executable, dataset, budget, seed, timeout=2 * budget + 600,
                              script=script, cwd=rundir)
    if row["exit"] != 0 or not common.finite(row["val_bpb"]):
        sys.exit(f"{os.path.basename(script)} on {dataset} failed (exit {row['exit']}):\n{row['tail']}")
    return {k: row[k] for k in ("val_bpb", "tok_s", "steps", "disturbed", "load")}


def median(rows, key):
    values = [r[key] for r in rows if common.finite(r.get(key))]
    return statistics.median(values) if values else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git ref of the old version (e.g. a commit before tuning)")
    ap.add_argument("--new", default=None, help="git ref of the new version (default: the working tree)")
    ap.add_argument("--target", default="train.py", help="the template to compare (default train.py)")
    ap.add_argument("--datasets", default="classics", help="comma-separated datasets (default classics)")
    ap.add_argument("--budget", type=float, default=120, help="training seconds per run (default 120)")
    ap.add_argument("--runs", type=int, default=3, help="runs of each side per dataset (default 3)")
    ap.add_argument("--out", default=None, help="append one JSON line per run to this file")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.budget <= 0:
        sys.exit("--runs must be at least 1 and --budget positive")
    work = tempfile.mkdtemp(prefix="bench_defaults_")
    sides = {"old": template_at(args.old, args.target, work, "old_" + os.path.basename(args.target)),
             "new": template_at(args.new, args.target, work, "new_" + os.path.basename(args.target))}
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    results = {d: {"old": [], "new": []} for d in datasets}
    print(f"old = {args.old}, new = {args.new or 'working tree'}; {args.runs} runs each, "
          f"{args.budget:g} s budget, alternated", flush=True)
    for dataset in datasets:
        for i in range(args.runs):
            seed = 42 + i
            order = ("old", "new") if i % 2 == 0 else ("new", "old")   # neither side always goes first
            for side in order:
                row = one_run(sides[side], dataset, args.budget, seed, os.path.join(work, side))
                results[dataset][side].append(row)
                flag = " DISTURBED" if row["disturbed"] else ""
                print(f"{dataset:>24} {side:>3} seed {seed}: val_bpb {row['val_bpb']:.4f}  "
                      f"tok/s {row['tok_s']:,.0f}  steps {row['steps']:.0f}{flag}", flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps({"dataset": dataset, "side": side, "seed": seed, **row}) + "\n")
    print()
    print("| dataset | side | runs | val_bpb (median) | tok/s | steps | change in val_bpb |")
    print("|---|---|---|---|---|---|---|")
    for dataset in datasets:
        quiet = {s: [r for r in results[dataset][s] if not r["disturbed"]] for s in ("old", "new")}
        old_bpb = median(quiet["old"], "val_bpb")
        for side in ("old", "new"):
            rows = quiet[side]
            bpb = median(rows, "val_bpb")
            change = f"{100 * (bpb - old_bpb) / old_bpb:+.1f}%" if side == "new" else ""
            print(f"| {dataset} | {side} | {len(rows)} of {args.runs} | {bpb:.4f} | {median(rows, 'tok_s'):,.0f} | "
                  f"{median(rows, 'steps'):.0f} | {change} |")


if __name__ == "__main__":
    sys.exit(main())
