"""How fast is the fixed harness? Prints figures and ratios measured in one run.

    python benchmarks/bench_data.py               # prepare + dataloader + a 30 s train.py run
    python benchmarks/bench_data.py --budget 60   # a longer template run, steadier tok/s

1. `prepare.py --dataset classics` from an empty cache (goal: under 60 s).
2. Dataloader throughput on classics, at the CPU template's row shape (goal: at
   least 20x the tokens per second the PyTorch template consumes here).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARSE_METRICS = os.path.join(REPO, "experiment-plugin", "scripts", "parse-metrics")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=30, help="seconds of train.py training to measure")
    parser.add_argument("--batch", type=int, default=32, help="dataloader rows per batch")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench-data-")
    env = {**os.environ, "AUTORESEARCH_CACHE": os.path.join(work, "cache"),
           "AUTORESEARCH_DATASET": "classics", "AUTORESEARCH_QUIET": "1"}

    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(REPO, "prepare.py"), "--dataset", "classics"],
                   env=env, check=True, capture_output=True)
    prepare_s = time.perf_counter() - t0
    print(f"prepare classics from scratch:   {prepare_s:8.1f} s    (goal < 60 s: {'ok' if prepare_s < 60 else 'MISSED'})")

    # Dataloader alone, in a fresh interpreter that sees the new cache.
    code = f"""
import time, prepare
tok = prepare.Tokenizer.load()
loader = prepare.make_dataloader(tok, {args.batch}, prepare.MAX_SEQ_LEN, "train")
next(loader)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 5:
    x, y = next(loader)
    n += x.size
print(n / (time.perf_counter() - t0))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True, text=True)
    loader_tps = float(out.stdout.strip().splitlines()[-1])
    print(f"dataloader (B={args.batch}, T=256):     {loader_tps:10,.0f} tok/s")

    # What the PyTorch template consumes, from its own summary block.
    log = os.path.join(work, "run.log")
    with open(log, "w") as f:
        subprocess.run([sys.executable, os.path.join(REPO, "train.py")], cwd=work, stdout=f, stderr=subprocess.STDOUT,
                       env={**env, "AUTORESEARCH_TIME_BUDGET": str(args.budget), "PYTHONPATH": REPO}, check=True)
    metrics = json.loads(subprocess.run([sys.executable, PARSE_METRICS, log], check=True,
                                        capture_output=True, text=True).stdout)
    train_tps = float(metrics["avg_tok_sec"])
    ratio = loader_tps / train_tps
    print(f"train.py consumes ({args.budget:.0f} s run):   {train_tps:10,.0f} tok/s")
    print(f"dataloader / template:           {ratio:10.1f} x   (goal >= 20x: {'ok' if ratio >= 20 else 'MISSED'})")


if __name__ == "__main__":
    main()
