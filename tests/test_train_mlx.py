"""train_mlx.py on the MLX CPU backend: a short run that learns and writes a
valid record, and the abort on a NaN loss. MLX's Linux CPU backend is slow, so
the run here evaluates on fewer validation tokens than a real run."""

import importlib
import math
import os
import re

import numpy as np
import pytest

from test_train import REPO, parse_summary, patched_copy, run_template, validate_record

pytest.importorskip("mlx.core")

# The harness's names are fixed, so the eval set is made smaller the one sanctioned way:
# AUTORESEARCH_EVAL_TOKENS, read when prepare is imported (the result channel reports it).
SMALL_EVAL = {"AUTORESEARCH_EVAL_TOKENS": "4096"}


def test_short_run_learns_and_writes_a_valid_record(tmp_path, classics_cache, harness, monkeypatch):
    result = run_template(os.path.join(REPO, "train_mlx.py"), tmp_path, classics_cache,
                          {"AUTORESEARCH_TIME_BUDGET": "15", **SMALL_EVAL})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = parse_summary(result.stdout)
    val_bpb = float(summary["val_bpb"])
    for key, value in SMALL_EVAL.items():
        monkeypatch.setenv(key, value)
    harness = importlib.reload(harness)
    assert harness.EVAL_TOKENS == 4096
    untrained = harness.evaluate_bpb(lambda x, y: np.full(x.shape, math.log(harness.VOCAB_SIZE)), 8)
    assert math.isfinite(val_bpb) and val_bpb < untrained - 0.05, (val_bpb, untrained)
    assert summary["mfu_percent"] == "n/a"
    record = validate_record(tmp_path / "data" / "last_run.json")
    assert record["framework"].startswith("mlx")
    assert record["data"]["eval_tokens"] == 4096   # the record says the eval set was small
    assert record["result"]["status"] == "ok"
    assert abs(record["result"]["val_bpb"] - val_bpb) < 1e-6
    assert len(list((tmp_path / "data").glob("run_*.json"))) == 1
    assert record["training"]["total_steps"] == int(summary["num_steps"])


def test_nan_loss_aborts_with_a_clear_line(tmp_path, classics_cache):
    script = patched_copy(tmp_path, "train_mlx.py", [(r"^LOGIT_SOFTCAP = .*$", 'LOGIT_SOFTCAP = float("nan")')])
    result = run_template(script, tmp_path, classics_cache, {"AUTORESEARCH_TIME_BUDGET": "30"})
    assert result.returncode != 0
    assert re.search(r"FAIL: loss is NaN at step 0\b", result.stdout), result.stdout[-2000:] + result.stderr[-2000:]
    record = validate_record(tmp_path / "data" / "last_run.json")
    assert record["result"]["status"] == "failed"


def test_compiled_step_matches_eager(harness, monkeypatch):
    """The compiled training step (the default on Apple GPUs) computes the same
    losses as the eager one, on a model small enough to compile quickly."""
    import importlib
    import sys
    import mlx.core as mx
    monkeypatch.syspath_prepend(REPO)
    sys.modules.pop("train_mlx", None)
    t = importlib.import_module("train_mlx")
    losses = {}
    for compiled in (False, True):
        monkeypatch.setattr(t, "COMPILE", compiled)
        mx.random.seed(0)
        model = t.GPT(depth=2, width=64, head_dim=32, seq_len=32)
        mx.eval(model.parameters())
        opt = t.build_optimizer(model)
        step = t.make_train_step(model, opt)
        rng = np.random.default_rng(0)
        out = []
        for i in range(3):
            x = mx.array(rng.integers(0, t.VOCAB_SIZE, (2, 32)), dtype=mx.int32)
            t.set_schedule(opt, 0.0, i)
            loss = step(x, x)
            mx.eval(loss, model.parameters(), opt.state)
            out.append(loss.item())
        losses[compiled] = out
    assert losses[False][-1] < losses[False][0]
    assert np.allclose(losses[False], losses[True], rtol=1e-3), losses
