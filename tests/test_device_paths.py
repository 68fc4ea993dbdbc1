"""Every device's code runs here, on a CPU. AUTORESEARCH_DEVICE picks a device's
code in a template (train.py: cuda, mps; train_mlx.py: metal) while the tensors
stay on the CPU, so the lines a GPU would run (bf16 autocast, torch.compile, the
sliding-window masks, value embeddings, the Muon step in bf16, the MFU lookup,
mx.compile) run in every test run, and a shape, dtype or name error in them fails
here instead of on the first GPU that tries them. The runs are at toy size (bf16
on a CPU is slow) and take a few steps; each compile starts from an empty cache.

What cannot run off its hardware, and what runs in its place:
- flash-attn (like FA3): CUDA kernels only; train.py uses it only on a real GPU.
- FlexAttention's backward: it has none on a CPU, so the cuda code trains here on
  SDPA with a boolean mask, and its `attention:` line says so. Its forward, compiled,
  with the sliding-window block mask, is checked against that mask below.
- torch.cuda's device properties and memory statistics, torch.mps's memory: read
  only on those devices; the record describes the CPU the run was on.
- Metal kernels (mx.fast on the GPU): MLX runs its CPU versions of the same ops.
"""

import importlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from test_train import REPO, parse_summary, patched_copy, run_template, validate_record

EVAL_TOKENS = 4096
SMALL_EVAL = {"AUTORESEARCH_EVAL_TOKENS": str(EVAL_TOKENS)}   # the harness's own knob: fewer, never more
# Toy size, set right after the device's own sizes (so the device's code still runs).
TORCH_TOY = (r"^(WINDOW_PATTERN = .*)$", "DEPTH, WIDTH, HEAD_DIM = 2, 64, 32\n"
                                         "DEVICE_BATCH_TOKENS, TOTAL_BATCH_TOKENS = 2**9, 2**10\n\\1")
MLX_TOY = (r"^(WINDOW_PATTERN = .*)$", "DEPTH, WIDTH, HEAD_DIM = 2, 64, 32\nDEVICE_BATCH_TOKENS = 2**9\n\\1")


def untrained_bpb(harness, monkeypatch):
    """val_bpb of uniform predictions over the small eval set."""
    monkeypatch.setenv("AUTORESEARCH_EVAL_TOKENS", str(EVAL_TOKENS))
    harness = importlib.reload(harness)
    return harness.evaluate_bpb(lambda x, y: np.full(x.shape, math.log(harness.VOCAB_SIZE)), 8)


# MPS code counts every step in the budget: a fixed number of warm-up steps makes the
# run take at least 6 steps however busy the machine is (the CUDA code's 10 already do).
MPS_STEPS = (r"^WARMUP_STEPS = .*$", "WARMUP_STEPS = 5")


@pytest.mark.parametrize("device, toy, attention, training", [
    ("cuda", [TORCH_TOY], "attention: sdpa with a mask (sliding window 128), sdpa (full context)"
             " | not flex: it has no backward on a CPU",
     dict(compiled=True, dtype="bf16 autocast", hand_fused=False, warmup_steps=10, grad_accum_steps=2)),
    ("mps", [TORCH_TOY, MPS_STEPS], "attention: sdpa with a mask (sliding window 128), sdpa (full context)",
     dict(compiled=False, dtype="fp32", hand_fused=True, warmup_steps=5, grad_accum_steps=2)),
], ids=["cuda", "mps"])
def test_torch_device_code_trains_on_cpu(tmp_path, classics_cache, harness, monkeypatch, device, toy,
                                         attention, training):
    script = patched_copy(tmp_path, "train.py", toy)
    result = run_template(script, tmp_path, classics_cache, {**SMALL_EVAL,
        "AUTORESEARCH_DEVICE": device, "AUTORESEARCH_TIME_BUDGET": "1",
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert f"code: {device} (AUTORESEARCH_DEVICE), tensors on the cpu: no {device} device here" in out
    assert attention in out.splitlines(), out[:2000]
    summary = parse_summary(out)
    assert float(summary["val_bpb"]) < untrained_bpb(harness, monkeypatch) - 0.05, summary
    assert summary["mfu_percent"] == "n/a"   # the GPU table was looked up, with the CPU's name
    record = validate_record(tmp_path / "data" / "last_run.json")
    assert record["hardware"]["device_type"] == "cpu" and record["hardware"]["peak_flops"] is None
    assert {k: record["training"][k] for k in training} == training
    assert record["training"]["total_steps"] > training["warmup_steps"]
    assert record["model"]["depth"] == 2 and record["model"]["width"] == 64


FLEX_CHECK = """
import torch, train
assert train.DEVICE_TYPE == "cuda" and train.DEVICE.type == "cpu" and not train.USE_FLEX
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(2, 256, 2, 32, generator=g).bfloat16() for _ in range(3))   # (B, T, H, D)
out = {}
for name, flex, window in (("flex", True, 128), ("mask", False, 128), ("causal", False, 256)):
    train.USE_FLEX, train._masks = flex, {}
    with torch.no_grad():
        out[name] = train.attention(q, k, v, window).float()
    kind = type(train._masks.get((window, 256))).__name__
    print(name, tuple(out[name].shape), out[name].dtype, kind)
print("flex-mask", (out["flex"] - out["mask"]).abs().max().item())
print("flex-causal", (out["flex"] - out["causal"]).abs().max().item())
"""


def test_flex_attention_forward_matches_the_mask(tmp_path, classics_cache):
    """The cuda code's FlexAttention (compiled, with the sliding-window block mask)
    gives the same output as SDPA with the boolean mask, and not that of full causal
    attention: the block mask is the window the mask path uses."""
    env = {**os.environ, **classics_cache, "PYTHONPATH": REPO, "AUTORESEARCH_DEVICE": "cuda",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    result = subprocess.run([sys.executable, "-c", FLEX_CHECK], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["flex"] == "(2, 256, 2, 32) torch.float32 BlockMask"
    assert lines["mask"] == "(2, 256, 2, 32) torch.float32 Tensor"
    assert float(lines["flex-mask"]) < 0.02          # bf16 rounding
    assert float(lines["flex-causal"]) > 0.2         # the window matters at all


def test_mlx_metal_code_trains_on_cpu(tmp_path, classics_cache, harness, monkeypatch):
    """train_mlx.py's GPU code: its mx.compile'd training step and evaluation."""
    pytest.importorskip("mlx.core")
    script = patched_copy(tmp_path, "train_mlx.py", [MLX_TOY])
    result = run_template(script, tmp_path, classics_cache,
                          {**SMALL_EVAL, "AUTORESEARCH_DEVICE": "metal", "AUTORESEARCH_TIME_BUDGET": "1"})
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "code: metal (AUTORESEARCH_DEVICE), arrays on the cpu: no Metal here" in out
    assert "attention: mx.fast sdpa with a mask (sliding window 128), causal (full context)" in out.splitlines()
    summary = parse_summary(out)
    assert float(summary["val_bpb"]) < untrained_bpb(harness, monkeypatch) - 0.05, summary
    record = validate_record(tmp_path / "data" / "last_run.json")
    assert record["hardware"]["device_type"] == "cpu"
    assert record["training"]["compiled"] is True and record["training"]["warmup_steps"] == 2
    assert record["training"]["total_steps"] > 2


@pytest.mark.parametrize("script, device", [("train.py", "tpu"), ("train_mlx.py", "cuda")])
def test_unknown_device_is_refused_in_one_line(tmp_path, classics_cache, script, device):
    if script == "train_mlx.py":
        pytest.importorskip("mlx.core")
    result = run_template(os.path.join(REPO, script), tmp_path, classics_cache, {"AUTORESEARCH_DEVICE": device})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"AUTORESEARCH_DEVICE={device}: "), result.stderr


def test_mfu_peak_is_looked_up_by_whole_words(harness, monkeypatch):
    """The datasheet peaks behind mfu_percent, by the names the GPUs report."""
    monkeypatch.syspath_prepend(REPO)
    sys.modules.pop("train", None)
    import train
    sys.modules.pop("train", None)
    names = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
             "NVIDIA GH200 480GB": 989e12, "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA L40S": 362e12,
             "NVIDIA L4": 121e12, "NVIDIA GeForce RTX 4090": 165e12, "Tesla T4": None, "NVIDIA A10G": None}
    assert {name: train.gpu_peak_flops(name) for name in names} == names
