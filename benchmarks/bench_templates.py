"""
Performance of the templates on this machine, as ratios measured in one run.

    python benchmarks/bench_templates.py                 # all three parts (~3 min on 2 cores)
    python benchmarks/bench_templates.py --skip-run      # roofline ratio only
    python benchmarks/bench_templates.py --budget 120    # the learning run's budget

1. Throughput against the roofline: tok/s of train.py's default model against
   the fp32 matmul roofline for the same FLOPs. Training steps and roofline
   matmuls are interleaved, so a neighbour that takes CPU time slows both alike;
   the ratio is the median over the pairs. Two rooflines: the peak (one large
   square matmul) and the model's own matmul shapes (forward and backward), done
   as bare matmuls, which says how much time goes to everything but matmuls.
2. Learning: val_bpb of the untrained model, then of a real `train.py` run of
   --budget seconds.
3. Overhead of that run: wall time outside the training budget (start-up,
   uncounted steps, evaluation), as a share of a 300 s budget.

Uses the `classics` dataset (prepared into the cache when missing).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("AUTORESEARCH_DATASET", "classics")
sys.path.insert(0, REPO)


def ensure_prepared():
    result = subprocess.run([sys.executable, os.path.join(REPO, "prepare.py"), "--dataset",
                             os.environ["AUTORESEARCH_DATASET"]], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(result.stdout + result.stderr)


def roofline_part(pairs):
    import numpy as np
    import torch
    import train as t
    prepare = sys.modules["prepare"]

    tokenizer = prepare.Tokenizer.load()
    model = t.build_model()
    optimizers = t.build_optimizers(model)
    loader = prepare.make_dataloader(tokenizer, t.DEVICE_BATCH_SIZE, t.MAX_SEQ_LEN, "train")
    tokens = t.DEVICE_BATCH_SIZE * t.MAX_SEQ_LEN * t.GRAD_ACCUM_STEPS
    flops_per_token = model.flops_per_token()

    def train_step(step):
        t0 = time.perf_counter()
        t.set_schedule(optimizers, 0.0, step)
        for _ in range(t.GRAD_ACCUM_STEPS):
            x, y = t.to_device(*next(loader))
            with t.autocast():
                loss = model(x, y).mean()
            (loss / t.GRAD_ACCUM_STEPS).backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        loss.item()
        return time.perf_counter() - t0

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)

    def peak_matmul(seconds=0.5):
        # Long enough to see the same conditions as a training step.
        t0, reps = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            torch.mm(a, b)
            reps += 1
        return reps * 2 * n ** 3 / (time.perf_counter() - t0)

    # The model's matmuls for one micro-batch, forward (x @ W^T) and backward
    # (dY @ W and dY^T @ X), as bare fp32 matmuls.
    m = t.DEVICE_BATCH_SIZE * t.MAX_SEQ_LEN
    shapes = []
    for p in list(model.blocks[0].parameters()):
        if p.dim() >= 2:
            out, inp = p.shape[-2] * (p.numel() // (p.shape[-2] * p.shape[-1])), p.shape[-1]
            shapes.append((out, inp))
    shapes = shapes * model.depth + [tuple(model.lm_head.weight.shape)]
    operands = [(torch.randn(m, i), torch.randn(o, i), torch.randn(m, o)) for o, i in shapes]

    def model_matmuls():
        t0 = time.perf_counter()
        flops = 0
        for x, w, dy in operands:
            x @ w.t()
            dy @ w
            dy.t() @ x
            flops += 3 * 2 * x.shape[0] * x.shape[1] * w.shape[0]
        return flops / (time.perf_counter() - t0)

    for step in range(2):  # allocator warm-up
        train_step(step)
        peak_matmul()
        model_matmuls()
    steps, peaks, shaped = [], [], []
    for step in range(pairs):
        steps.append(train_step(step + 2))
        peaks.append(peak_matmul())
        shaped.append(model_matmuls())
    step_flops = flops_per_token * tokens
    ratios = [step_flops / s / p for s, p in zip(steps, peaks)]
    ratios_shaped = [step_flops / s / p for s, p in zip(steps, shaped)]
    step_s = statistics.median(steps)
    peak = statistics.median(peaks)
    return dict(
        threads=torch.get_num_threads(), depth=t.DEPTH, width=t.WIDTH,
        num_params_M=round(model.num_params() / 1e6, 2), flops_per_token=flops_per_token,
        tokens_per_step=tokens, micro_batch=f"{t.DEVICE_BATCH_SIZE}x{t.MAX_SEQ_LEN}x{t.GRAD_ACCUM_STEPS}",
        step_s=round(step_s, 3), tok_per_sec=round(tokens / step_s, 1),
        model_gflops=round(step_flops / step_s / 1e9, 1),
        roofline_peak_gflops=round(peak / 1e9, 1),
        roofline_tok_per_sec=round(peak / flops_per_token, 1),
        roofline_shapes_gflops=round(statistics.median(shaped) / 1e9, 1),
        ratio_vs_peak=round(statistics.median(ratios), 3),
        ratio_vs_peak_range=[round(min(ratios), 3), round(max(ratios), 3)],
        ratio_vs_model_shapes=round(statistics.median(ratios_shaped), 3),
        untrained_val_bpb=untrained_bpb(t, model_fresh=t.build_model(), prepare=prepare, np=np, torch=torch),
    )


def untrained_bpb(t, model_fresh, prepare, np, torch):
    model_fresh.eval()

    def per_token_loss(x, y):
        x, y = t.to_device(x, y)
        with torch.no_grad():
            return model_fresh(x, y).float().cpu().numpy()

    return round(prepare.evaluate_bpb(per_token_loss, t.DEVICE_BATCH_SIZE), 6)


def run_part(budget, reference_budget=300.0):
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, AUTORESEARCH_TIME_BUDGET=str(budget), PYTHONPATH=REPO)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py")], cwd=tmp, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
        with open(os.path.join(tmp, "data", "last_run.json")) as f:
            record = json.load(f)
    tr = record["training"]
    overhead = wall - tr["training_seconds"]
    return dict(
        budget_s=budget, val_bpb=round(record["result"]["val_bpb"], 6), wall_s=round(wall, 1),
        training_s=tr["training_seconds"], num_steps=tr["total_steps"], tok_per_sec=tr["avg_tok_sec"],
        startup_s=tr["startup_seconds"], uncounted_steps_s=tr["untimed_seconds"], eval_s=tr["eval_seconds"],
        overhead_s=round(overhead, 1), overhead_pct_of_300s=round(100 * overhead / reference_budget, 2),
        peak_memory_mb=tr["peak_memory_mb"],
    )


def main():
    ap = argparse.ArgumentParser(description="template performance ratios on this machine")
    ap.add_argument("--pairs", type=int, default=8, help="interleaved (train step, roofline) pairs")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds of the learning run")
    ap.add_argument("--skip-run", action="store_true", help="only the roofline part")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    ensure_prepared()
    out = dict(roofline=roofline_part(args.pairs))
    r = out["roofline"]
    print(f"train.py default CPU model: depth {r['depth']} width {r['width']}, {r['num_params_M']}M params, "
          f"{r['flops_per_token'] / 1e6:.1f} MFLOP/token, {r['tokens_per_step']} tokens/step "
          f"({r['micro_batch']}), {r['threads']} threads")
    print(f"  throughput          {r['tok_per_sec']:,.0f} tok/s  ({r['model_gflops']} GFLOP/s of model FLOPs)")
    print(f"  fp32 matmul peak    {r['roofline_peak_gflops']} GFLOP/s  -> roofline {r['roofline_tok_per_sec']:,.0f} tok/s")
    print(f"  ratio vs roofline   {r['ratio_vs_peak']:.3f}x  (median of {args.pairs} pairs; "
          f"range {r['ratio_vs_peak_range'][0]}..{r['ratio_vs_peak_range'][1]}; target >= 0.6)")
    print(f"  model-shape matmuls {r['roofline_shapes_gflops']} GFLOP/s  -> ratio {r['ratio_vs_model_shapes']:.3f}x")
    print(f"  untrained val_bpb   {r['untrained_val_bpb']}")
    if not args.skip_run:
        out["run"] = run_part(args.budget)
        u = out["run"]
        print(f"train.py run, {u['budget_s']:g} s budget: val_bpb {u['val_bpb']} after {u['num_steps']} steps "
              f"({u['tok_per_sec']:,.0f} tok/s), untrained {r['untrained_val_bpb']}")
        print(f"  overhead            {u['overhead_s']} s = {u['overhead_pct_of_300s']}% of a 300 s budget "
              f"(start-up {u['startup_s']} s, uncounted steps {u['uncounted_steps_s']} s, eval {u['eval_s']} s, "
              f"rest process start/exit; target <= 5%)")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
