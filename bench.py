"""
Throughput profile of a training template, without a full run.

    python bench.py                          # train.py, 10 timed steps
    python bench.py --target train_mlx.py --steps 5
    python bench.py --compare-compile        # also time the other mode (compiled vs eager)

Imports the template as a module (its main() does not run), builds its model and
optimizer, and times a few steps split into data / forward+backward /
optimizer, then projects the evaluation time and checks that the loss falls.
It reads only the names each template documents at its top, so it keeps working
as the template is edited. If one of those names is gone, it falls back to a
short real run of the template and reads the numbers from its output.
"""

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_NAMES = ["DEVICE", "DEVICE_TYPE", "DEVICE_BATCH_SIZE", "GRAD_ACCUM_STEPS", "COMPILE",
               "autocast", "to_device", "build_model", "build_optimizers", "set_schedule"]
MLX_NAMES = ["DEVICE_BATCH_SIZE", "COMPILE", "build_model", "build_optimizer", "loss_fn",
             "make_train_step", "set_schedule"]


def load_template(path):
    spec = importlib.util.spec_from_file_location("template_under_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # its prepare.py
    spec.loader.exec_module(module)
    return module


def median_ms(xs):
    return 1000 * statistics.median(xs) if xs else float("nan")


def flops_of(model, num_params):
    fn = getattr(model, "flops_per_token", None)
    return fn() if callable(fn) else 6 * num_params


# ---------------------------------------------------------------------------
# PyTorch

def bench_torch(t, steps, warmup, compile_mode):
    import torch
    prepare = sys.modules["prepare"]

    def sync():   # DEVICE is where the tensors are (DEVICE_TYPE, the code, may differ)
        if t.DEVICE.type == "cuda":
            torch.cuda.synchronize()
        elif t.DEVICE.type == "mps":
            torch.mps.synchronize()

    if t.DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if getattr(t, "HAND_FUSED", False) and hasattr(t, "fused_twins_agree"):
        t.fused_twins_agree()  # as main() does: time the code a run would use
    tokenizer = prepare.Tokenizer.load()
    model = t.build_model()
    optimizers = t.build_optimizers(model)
    run_model = torch.compile(model, dynamic=False) if compile_mode else model
    loader = prepare.make_dataloader(tokenizer, t.DEVICE_BATCH_SIZE, t.MAX_SEQ_LEN, "train")
    rows = {"data": [], "forward": [], "backward": [], "optimizer": [], "step": []}
    losses, first_step_s = [], None
    for step in range(warmup + steps):
        t_step = time.perf_counter()
        data_s = fwd_s = bwd_s = 0.0
        for _ in range(t.GRAD_ACCUM_STEPS):
            t0 = time.perf_counter()
            x, y = t.to_device(*next(loader))
            sync()
            t1 = time.perf_counter()
            with t.autocast():
                loss = run_model(x, y).mean()
            sync()
            t2 = time.perf_counter()
            (loss / t.GRAD_ACCUM_STEPS).backward()
            sync()
            t3 = time.perf_counter()
            data_s, fwd_s, bwd_s = data_s + t1 - t0, fwd_s + t2 - t1, bwd_s + t3 - t2
        t4 = time.perf_counter()
        t.set_schedule(optimizers, 0.0, step)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        sync()
        t5 = time.perf_counter()
        losses.append(loss.item())
        if step == 0:
            first_step_s = t5 - t_step
        if step >= warmup:
            for key, value in zip(rows, (data_s, fwd_s, bwd_s, t5 - t4, t5 - t_step)):
                rows[key].append(value)

    # Evaluation projection: the forward pass on validation batches, as main() runs it.
    model.eval()
    val = prepare.make_dataloader(tokenizer, t.DEVICE_BATCH_SIZE, t.MAX_SEQ_LEN, "val")
    eval_times = []
    for _ in range(2):
        x, y = next(val)
        t0 = time.perf_counter()
        x, y = t.to_device(x, y)
        with torch.no_grad(), t.autocast():
            run_model(x, y).float().cpu().numpy()
        eval_times.append(time.perf_counter() - t0)
    eval_batches = prepare.EVAL_TOKENS // (t.DEVICE_BATCH_SIZE * t.MAX_SEQ_LEN)

    num_params = sum(p.numel() for p in model.parameters())
    info = t.device_info() if hasattr(t, "device_info") else {}
    peak = t.peak_memory_mb() if hasattr(t, "peak_memory_mb") else float("nan")
    return dict(rows=rows, losses=losses, first_step_s=first_step_s,
                eval_batch_s=eval_times[-1], eval_batches=eval_batches,
                tokens_per_step=t.DEVICE_BATCH_SIZE * t.MAX_SEQ_LEN * t.GRAD_ACCUM_STEPS,
                num_params=num_params, flops_per_token=flops_of(model, num_params),
                peak_flops=info.get("peak_flops"), device=info.get("device_name", t.DEVICE_TYPE),
                peak_memory_mb=peak, compiled=compile_mode, cfg_compiled=t.COMPILE)


# ---------------------------------------------------------------------------
# MLX

def bench_mlx(t, steps, warmup, compile_mode):
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    prepare = sys.modules["prepare"]

    tokenizer = prepare.Tokenizer.load()
    model = t.build_model()
    opt = t.build_optimizer(model)
    saved, t.COMPILE = t.COMPILE, compile_mode
    try:
        train_step = t.make_train_step(model, opt)
    finally:
        t.COMPILE = saved
    loss_and_grad = nn.value_and_grad(model, t.loss_fn)
    loader = prepare.make_dataloader(tokenizer, t.DEVICE_BATCH_SIZE, t.MAX_SEQ_LEN, "train")
    rows = {"data": [], "forward+backward": [], "optimizer": [], "step": []}
    losses, first_step_s = [], None
    mx.reset_peak_memory()
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = (mx.array(a) for a in next(loader))
        mx.eval(x, y)
        t1 = time.perf_counter()
        t.set_schedule(opt, 0.0, step)
        if compile_mode:
            # A compiled step is one fused graph: time it whole.
            loss = train_step(x, y)
            mx.eval(loss, model.parameters(), opt.state)
            t2 = t3 = time.perf_counter()
        else:
            loss, grads = loss_and_grad(model, x, y)
            mx.eval(loss, grads)
            t2 = time.perf_counter()
            opt.update(model, grads)
            mx.eval(model.parameters(), opt.state)
            t3 = time.perf_counter()
        losses.append(loss.item())
        if step == 0:
            first_step_s = t3 - t0
        if step >= warmup:
            rows["data"].append(t1 - t0)
            rows["forward+backward"].append(t2 - t1 if not compile_mode else t3 - t1)
            rows["optimizer"].append(t3 - t2 if not compile_mode else float("nan"))
            rows["step"].append(t3 - t0)

    val = prepare.make_dataloader(tokenizer, t.DEVICE_BATCH_SIZE, t.MAX_SEQ_LEN, "val")
    eval_model = mx.compile(model) if compile_mode else model
    eval_times = []
    for _ in range(2):
        x, y = next(val)
        t0 = time.perf_counter()
        np.array(eval_model(mx.array(x), mx.array(y)))
        eval_times.append(time.perf_counter() - t0)
    eval_batches = prepare.EVAL_TOKENS // (t.DEVICE_BATCH_SIZE * t.MAX_SEQ_LEN)
    num_params = model.num_params() if hasattr(model, "num_params") else 0
    info = t.device_info() if hasattr(t, "device_info") else {}
    peak = t.peak_memory_mb() if hasattr(t, "peak_memory_mb") else mx.get_peak_memory() / 2**20
    return dict(rows=rows, losses=losses, first_step_s=first_step_s,
                eval_batch_s=eval_times[-1], eval_batches=eval_batches,
                tokens_per_step=t.DEVICE_BATCH_SIZE * t.MAX_SEQ_LEN,
                num_params=num_params, flops_per_token=flops_of(model, num_params),
                peak_flops=info.get("peak_flops"), device=info.get("device_name", "mlx"),
                peak_memory_mb=peak, compiled=compile_mode, cfg_compiled=t.COMPILE)


# ---------------------------------------------------------------------------
# Report

def summarize(r, time_budget):
    step_s = statistics.median(r["rows"]["step"])
    tok_s = r["tokens_per_step"] / step_s
    model_flops = r["flops_per_token"] * tok_s
    mfu = 100 * model_flops / r["peak_flops"] if r.get("peak_flops") else None
    first, last = r["losses"][0], r["losses"][-1]
    return dict(
        device=r["device"], compiled=r["compiled"], num_params_M=round(r["num_params"] / 1e6, 2),
        tokens_per_step=r["tokens_per_step"], step_ms=round(1000 * step_s, 1),
        split_ms={k: round(median_ms(v), 1) for k, v in r["rows"].items() if k != "step"},
        tok_per_sec=round(tok_s, 1), model_gflops_per_sec=round(model_flops / 1e9, 2),
        mfu_percent=round(mfu, 2) if mfu is not None else None,
        first_step_s=round(r["first_step_s"], 2), peak_memory_mb=round(r["peak_memory_mb"], 1),
        projected_eval_s=round(r["eval_batch_s"] * r["eval_batches"], 1),
        projected_steps=int(time_budget / step_s), projected_tokens_M=round(time_budget * tok_s / 1e6, 2),
        loss_first=round(first, 4), loss_last=round(last, 4),
        loss_falls=bool(math.isfinite(last) and last < first),
    )


def print_report(target, s, other=None):
    print(f"bench: {target} on {s['device']} ({'compiled' if s['compiled'] else 'eager'}), "
          f"{s['num_params_M']}M params, {s['tokens_per_step']:,} tokens/step")
    print(f"  step          {s['step_ms']:10.1f} ms")
    for k, v in s["split_ms"].items():
        share = 100 * v / s["step_ms"] if s["step_ms"] and math.isfinite(v) else float("nan")
        print(f"    {k:<18}{v:10.1f} ms  {share:5.1f}%")
    print(f"  tok/s         {s['tok_per_sec']:>10,.0f}")
    print(f"  model GFLOP/s {s['model_gflops_per_sec']:10.2f}")
    print(f"  mfu           {s['mfu_percent'] if s['mfu_percent'] is not None else 'n/a (device peak unknown)'}")
    print(f"  first step    {s['first_step_s']:10.2f} s (includes compile / warm-up)")
    print(f"  peak memory   {s['peak_memory_mb']:10.1f} MB")
    print(f"  eval (proj.)  {s['projected_eval_s']:10.1f} s")
    print(f"  budget proj.  {s['projected_steps']} steps, {s['projected_tokens_M']}M tokens")
    print(f"  loss          {s['loss_first']:.4f} -> {s['loss_last']:.4f} "
          f"({'falls' if s['loss_falls'] else 'DOES NOT FALL'})")
    if other:
        speed = s["step_ms"] / other["step_ms"] if other["step_ms"] else float("nan")
        print(f"  {'compiled' if other['compiled'] else 'eager'} instead: {other['step_ms']:.1f} ms/step "
              f"({speed:.2f}x the speed), first step {other['first_step_s']:.1f} s")


def fallback(target, budget):
    """The template no longer has the names bench.py reads: run it briefly instead."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, AUTORESEARCH_TIME_BUDGET=str(budget))
        proc = subprocess.run([sys.executable, os.path.abspath(target)], cwd=tmp, env=env,
                              capture_output=True, text=True)
        summary = {}
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("val_bpb", "training_seconds", "total_seconds", "eval_seconds",
                                        "peak_memory_mb", "mfu_percent", "avg_tok_sec", "num_steps", "num_params_M"):
                summary[key.strip()] = value.strip()
        record = {}
        path = os.path.join(tmp, "data", "last_run.json")
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
    print(f"bench: fallback, ran {target} for {budget}s (exit {proc.returncode})")
    for k, v in summary.items():
        print(f"  {k:<17} {v}")
    for row in record.get("timing_sample", [])[:8]:
        print(f"  step {row['step']:4d}  {row['ms']:9.1f} ms  loss {row['loss']:.4f}")
    if proc.returncode != 0:
        print(proc.stdout[-2000:] + proc.stderr[-2000:])
    return proc.returncode


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--target", default="train.py", help="train.py or train_mlx.py (a path)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile, allocator)")
    ap.add_argument("--compare-compile", action="store_true", help="also time the other compile mode")
    ap.add_argument("--json", action="store_true", help="end with the result as one line of JSON")
    ap.add_argument("--fallback-budget", type=float, default=20.0)
    args = ap.parse_args(argv)

    target = args.target if os.path.exists(args.target) else os.path.join(HERE, args.target)
    t_import = time.perf_counter()
    t = load_template(target)
    import_s = time.perf_counter() - t_import
    is_mlx = hasattr(t, "mx") or "mlx" in os.path.basename(target)
    names = MLX_NAMES if is_mlx else TORCH_NAMES
    missing = [n for n in names if not hasattr(t, n)]
    if missing:
        print(f"bench: {os.path.basename(target)} lacks {', '.join(missing)}; falling back to a short run")
        return fallback(target, args.fallback_budget)

    run = bench_mlx if is_mlx else bench_torch
    budget = float(t.TIME_BUDGET) if hasattr(t, "TIME_BUDGET") else 300.0
    main_summary = summarize(run(t, args.steps, args.warmup, t.COMPILE), budget)
    main_summary["import_s"] = round(import_s, 2)
    other = None
    if args.compare_compile:
        other = summarize(run(t, max(2, args.steps // 2), args.warmup, not t.COMPILE), budget)
    print_report(os.path.basename(target), main_summary, other)
    print(f"  import        {import_s:10.2f} s")
    if args.json:
        print(json.dumps(dict(target=os.path.basename(target), **main_summary, other_mode=other)))
    return 0 if main_summary["loss_falls"] else 1


if __name__ == "__main__":
    sys.exit(main())
