"""train.py: a short real run on the embedded `classics` data, the abort on a
diverging loss, and the pieces whose mistakes would not crash (the fused loss)."""

import json
import math
import os
import re
import subprocess
import sys

import jsonschema
import numpy as np
import pytest

from core import parsing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(REPO, "schemas", "last_run.schema.json")
SUMMARY_KEYS = ["val_bpb", "training_seconds", "total_seconds", "eval_seconds", "train_peak_mb", "peak_memory_mb",
                "mfu_percent", "avg_tok_sec", "total_tokens_M", "num_steps", "num_params_M", "depth", "dmodel_scale"]


def parse_summary(stdout):
    """The block after the last '---' line: 'key:<spaces>value', keys in the documented order."""
    lines = stdout.splitlines()
    assert "---" in lines, stdout[-3000:]
    block = lines[len(lines) - 1 - lines[::-1].index("---") + 1:]
    pairs = [re.fullmatch(r"([a-z_M]+):( +)(\S+)", line) for line in block]
    assert all(pairs), block
    assert [m.group(1) for m in pairs] == SUMMARY_KEYS, block
    assert len({len(m.group(1)) + len(m.group(2)) for m in pairs}) == 1, "values are aligned in one column"
    return {m.group(1): m.group(3) for m in pairs}


def validate_record(path):
    with open(path) as f:
        record = json.load(f)
    with open(SCHEMA) as f:
        jsonschema.validate(record, json.load(f))
    return record


def uniform_bpb(prepare):
    """val_bpb of a model that predicts every token with probability 1/V: an
    untrained model (its output head starts near zero) scores this."""
    batch = 8
    return prepare.evaluate_bpb(lambda x, y: np.full(x.shape, math.log(prepare.VOCAB_SIZE)), batch)


def run_template(script, cwd, env, extra_env=None, timeout=300):
    env = {**os.environ, **env, "PYTHONPATH": REPO, **(extra_env or {})}
    return subprocess.run([sys.executable, script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def patched_copy(tmp_path, name, replacements):
    """A copy of a template with some lines changed, as an experiment would change them."""
    with open(os.path.join(REPO, name)) as f:
        text = f.read()
    for pattern, new in replacements:
        text, n = re.subn(pattern, new, text, count=1, flags=re.M)
        assert n == 1, pattern
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def template(harness, monkeypatch):
    monkeypatch.syspath_prepend(REPO)
    sys.modules.pop("train", None)
    import train
    yield train
    sys.modules.pop("train", None)


def test_fused_loss_matches_plain_path(template):
    import torch
    torch.manual_seed(0)
    x = torch.randn(300, 32, requires_grad=True)
    w = (0.5 * torch.randn(500, 32)).requires_grad_()
    y = torch.randint(0, 500, (300,))
    scale = torch.rand(300)  # an arbitrary weighting of the per-token losses
    template.LOSS_CHUNK_ELEMENTS = 500 * 64  # several chunks, the last one partial
    fused = template.SoftcapCrossEntropy.apply(x, w, y)
    (fused * scale).sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    cap = template.LOGIT_SOFTCAP
    plain = torch.nn.functional.cross_entropy(cap * torch.tanh(x @ w.t() / cap), y, reduction="none")
    (plain * scale).sum().backward()
    assert torch.allclose(fused, plain, atol=1e-5)
    assert torch.allclose(gx, x.grad, atol=1e-5)
    assert torch.allclose(gw, w.grad, atol=1e-5)


def test_hand_fused_ops_match_plain_pytorch(template, monkeypatch):
    """The whole model (RMSNorm, ReLU^2, fused loss) gives the same loss and
    gradients with and without the hand-fused paths."""
    import torch
    torch.manual_seed(0)
    model = template.GPT(depth=2, width=64, head_dim=32, seq_len=32)
    with torch.no_grad():  # non-zero output projections, so every path carries gradient
        for block in model.blocks:
            block.attn.proj.weight.normal_(std=0.05)
            block.mlp.proj.weight.normal_(std=0.05)
        model.lm_head.weight.normal_(std=0.05)
    x = torch.randint(0, template.VOCAB_SIZE, (2, 32))
    results = []
    for fused in (True, False):
        monkeypatch.setattr(template, "HAND_FUSED", fused)
        model.zero_grad()
        loss = model(x, x.roll(-1, 1))
        loss.mean().backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l1, g1), (l2, g2) = results
    assert torch.allclose(l1, l2, atol=1e-5)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_rotary_rotates_channel_pairs(template):
    import torch
    cos, sin = template.rotary_tables(8, 4)
    x = torch.randn(1, 8, 1, 1, 4)
    y = template.apply_rotary(x, cos, sin)
    half = 2
    angle = torch.outer(torch.arange(8.0), 1.0 / 10000 ** (torch.arange(0, 4, 2) / 4))[None, :, None, None]
    x1, x2 = x[..., :half], x[..., half:]
    expected = torch.cat([x1 * angle.cos() + x2 * angle.sin(), x2 * angle.cos() - x1 * angle.sin()], -1)
    assert torch.allclose(y, expected, atol=1e-6)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation keeps the norm


def test_untrained_model_predicts_uniformly(template, harness):
    import torch
    model = template.build_model()
    tokenizer = harness.Tokenizer.load()
    x, y = template.to_device(*next(harness.make_dataloader(tokenizer, 2, template.MAX_SEQ_LEN, "val")))
    with torch.no_grad():
        loss = model(x, y)
    assert loss.shape == x.shape
    assert abs(loss.mean().item() - math.log(template.VOCAB_SIZE)) < 0.05
    assert model.flops_per_token() > 6 * model.lm_head.weight.numel()


def test_orthogonalize_gives_near_unit_singular_values(template):
    import torch
    G = torch.randn(3, 64, 256)
    s = torch.linalg.svdvals(template.orthogonalize(G))
    assert s.min() > 0.5 and s.max() < 1.3


def test_short_run_learns_and_writes_a_valid_record(tmp_path, classics_cache, harness):
    result = run_template(os.path.join(REPO, "train.py"), tmp_path, classics_cache,
                          {"AUTORESEARCH_TIME_BUDGET": "15"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = parse_summary(result.stdout)
    val_bpb = float(summary["val_bpb"])
    assert math.isfinite(val_bpb)
    assert val_bpb < uniform_bpb(harness) - 0.2, (val_bpb, uniform_bpb(harness))
    assert float(summary["training_seconds"]) >= 15
    assert summary["mfu_percent"] == "n/a"  # a CPU: no invented peak
    assert int(summary["num_steps"]) >= 3
    record = validate_record(tmp_path / "data" / "last_run.json")
    assert record["result"] == {"status": "ok", "val_bpb": val_bpb} or \
        abs(record["result"]["val_bpb"] - val_bpb) < 1e-6
    assert record["data"]["dataset"] == "classics"
    training = record["training"]
    assert training["total_steps"] == int(summary["num_steps"])
    assert training["avg_tok_sec"] == pytest.approx(float(summary["avg_tok_sec"].replace(",", "")), abs=1)
    assert training["eval_seconds"] == pytest.approx(float(summary["eval_seconds"]), abs=0.1)
    assert training["training_peak_mb"] <= training["peak_memory_mb"]
    assert summary["dmodel_scale"] == f"{(256 / 768) ** -0.5:.4f}"  # the CPU model's width
    assert record["timing_sample"] and record["timing_sample"][0]["step"] == 0
    assert "hand-fused loss, norm and relu^2: same as the plain code" in result.stdout
    (archived,) = (tmp_path / "data").glob("run_*")
    assert re.fullmatch(r"run_\d{8}_\d{6}\.json", archived.name)
    assert json.loads(archived.read_text()) == record


def test_an_edit_to_the_plain_loss_takes_effect_on_cpu(tmp_path, classics_cache, harness):
    """On a CPU the hand-fused twin of the loss runs. An experiment that edits the plain
    loss must still change what trains: the startup check sees the twin differ and
    runs the plain code. Here the loss is halved, so the first step reports ~ln(V)/2."""
    script = patched_copy(tmp_path, "train.py", [(r'^    return F\.cross_entropy\(logits, targets, reduction="none"\)$',
                                                  '    return 0.5 * F.cross_entropy(logits, targets, reduction="none")')])
    env = {**os.environ, **classics_cache, "PYTHONPATH": REPO}
    proc = subprocess.Popen([sys.executable, script], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    try:
        for line in proc.stdout:  # the first step is enough: stop there
            lines.append(line)
            if line.startswith("step 00001"):
                break
    finally:
        proc.kill()
        proc.wait()
    out = "".join(lines)
    assert "hand-fused loss, norm and relu^2: differ from the plain code" in out, out[-2000:]
    first_loss = float(re.search(r"^step 00001 .*\| loss ([\d.]+)", out, re.M).group(1))
    # An untrained model predicts uniformly (test_untrained_model_predicts_uniformly): ln(V) unedited.
    assert first_loss == pytest.approx(0.5 * math.log(harness.VOCAB_SIZE), abs=0.1)


def test_run_records_never_overwrite_each_other(harness, tmp_path, monkeypatch):
    """Three runs that end in the same second: three archives under data/run_*, and
    last_run.json is the latest."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(harness.time, "strftime", lambda fmt, *a: "20260101_120000")
    for n in range(3):
        harness.write_run_record({"run": n})
    archives = sorted((tmp_path / "data").glob("run_*"))
    assert [p.name for p in archives] == ["run_20260101_120000.json", "run_20260101_120000_2.json",
                                          "run_20260101_120000_3.json"]
    assert [json.loads(p.read_text())["run"] for p in archives] == [0, 1, 2]
    assert json.loads((tmp_path / "data" / "last_run.json").read_text()) == {"run": 2}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(
        [p.name for p in archives] + ["last_run.json"]), "no temporary file is left behind"


@pytest.mark.parametrize("replacement, message", [
    ((r"^EMBEDDING_LR = .*$", 'EMBEDDING_LR = float("nan")'), r"FAIL: loss is NaN at step 1\b"),
    ((r"^LOSS_LIMIT = .*$", "LOSS_LIMIT = 1.0"), r"FAIL: loss exploded to [\d.]+ at step 0 \(limit 1.00\)"),
])
def test_diverging_loss_aborts_with_a_clear_line(tmp_path, classics_cache, replacement, message):
    script = patched_copy(tmp_path, "train.py", [replacement])
    result = run_template(script, tmp_path, classics_cache, {"AUTORESEARCH_TIME_BUDGET": "30"})
    assert result.returncode != 0
    assert re.search(message, result.stdout), result.stdout[-2000:] + result.stderr[-2000:]
    assert "---" not in result.stdout.splitlines()
    record = validate_record(tmp_path / "data" / "last_run.json")
    assert record["result"]["status"] == "failed" and record["result"]["val_bpb"] is None


def test_real_template_with_two_seeds_gives_two_val_bpb(tmp_path, classics_cache):
    """The real train.py, a second on classics: the seed reaches the model. What is
    checked is only that the two results differ, so the run and its evaluation are short."""
    values = []
    for seed in ("42", "43"):
        env = {**os.environ, **classics_cache, "PYTHONPATH": REPO, "AUTORESEARCH_TIME_BUDGET": "1",
               "AUTORESEARCH_EVAL_TOKENS": "4096", "AUTORESEARCH_SEED": seed}
        proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py")], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        values.append(parsing.parse_metrics(proc.stdout)["val_bpb"])
    assert values[0] != values[1]
