"""A training script of one's own, unchanged: the metric read from what it already
prints. Each script below prints its metric the way a known trainer does (nanoGPT's
`val loss X`, `val_loss=X`, a printed dict, Hugging Face's Trainer, Keras, Lightning);
setup proposes the pattern from the source, run-experiment reads the last match and
log-experiment records it, in a real git repository."""

import re
from pathlib import Path

import pytest

from core import parsing
from plugin_helpers import commit_all, git, new_repo, ok, records, script, set_constant

# Every script: reads the seed and the budget, prints its metric many times (the last
# is the result), and moves it by QUALITY so a test can make a change better or worse.
HEAD = '''\
import os, random, time
QUALITY = 0.0
seed = int(os.environ.get("AUTORESEARCH_SEED", 0))
budget = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", 300))
rng = random.Random(seed)
t0 = time.time()
'''

# nanoGPT's train.py: `step N: train loss X, val loss Y` every eval_interval.
NANOGPT = HEAD + '''\
best_val_loss = 1e9
for iter_num in range(0, 750, 250):
    losses = {"train": 2.5 - iter_num / 500, "val": 2.6 - iter_num / 500 - QUALITY + rng.gauss(0, 0.01)}
    print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    if losses["val"] < best_val_loss:
        best_val_loss = losses["val"]
        print(f"saving checkpoint to out-shakespeare-char")
    if time.time() - t0 > budget:
        break
print(f"iter 750: loss 1.1000, time 12.34ms, mfu 3.21%")
'''

KEY_VALUE = HEAD + '''\
for epoch in range(3):
    val_loss = 0.9 - 0.1 * epoch - QUALITY + rng.gauss(0, 0.01)
    print(f"epoch {epoch} train_loss={val_loss + 0.05:.4f} val_loss={val_loss:.4f} lr=3e-04")
'''

DICT_PRINT = HEAD + '''\
for epoch in range(3):
    val_loss = 0.9 - 0.1 * epoch - QUALITY + rng.gauss(0, 0.01)
    print({"epoch": epoch, "train_loss": round(val_loss + 0.05, 4), "val_loss": round(val_loss, 4)})
'''

# Hugging Face's Trainer logs a dict per logging step and per evaluation; the script
# itself never names eval_loss. (No transformers here: the same lines, printed.)
HF_TRAINER = HEAD + '''\
try:
    from transformers import Trainer, TrainingArguments
except ImportError:
    Trainer = None
if Trainer is not None:
    trainer = Trainer(model=None, args=TrainingArguments("out", eval_strategy="epoch"))
    trainer.train()
else:
    for epoch in (1.0, 2.0):
        loss = 2.6 - epoch / 2 - QUALITY + rng.gauss(0, 0.01)
        print({"loss": round(loss + 0.1, 4), "grad_norm": 1.53, "learning_rate": 5e-05, "epoch": epoch - 0.5})
        metrics = {"loss": round(loss, 4), "runtime": 0.41, "samples_per_second": 243.9}
        print({**{f"eval_{k}": v for k, v in metrics.items()}, "epoch": epoch})   # as Trainer.evaluate names them
    print({"train_runtime": 5.2, "train_samples_per_second": 96.1, "train_loss": 2.3, "epoch": 2.0})
'''

# Keras's fit() prints one line per epoch (verbose=2, or any non-terminal output).
KERAS = HEAD + '''\
try:
    import keras
except ImportError:
    keras = None
if keras is not None:
    model = keras.Sequential([keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=3, validation_split=0.2, verbose=2)
else:
    for epoch in range(1, 4):
        acc = 0.80 + 0.03 * epoch + QUALITY + rng.gauss(0, 0.003)
        logs = {"accuracy": acc - 0.02, "loss": 1 - acc}
        logs.update({"val_" + k: v for k, v in {"accuracy": acc, "loss": 1.1 - acc}.items()})
        print(f"Epoch {epoch}/3")       # as fit(verbose=2) writes it
        print("45/45 - 0s - 4ms/step - " + " - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
'''

# Lightning: self.log("val_loss", ..., prog_bar=True) shows in the progress bar,
# updated in place with carriage returns, then trainer.validate prints its table.
LIGHTNING = HEAD + '''\
import sys
def validation_step(self, batch, batch_idx):
    loss = 0.0
    self.log("val_loss", loss, prog_bar=True)
for epoch in range(2):
    val = 0.5 - 0.2 * epoch - QUALITY + rng.gauss(0, 0.005)
    for step in (5, 10):
        sys.stdout.write(f"\\rEpoch {epoch}: {step * 10}%|####| {step}/10 [00:01<00:00, 8.10it/s, v_num=0, train_loss={val + 0.1:.3f}, val_loss={val:.3f}]")
    sys.stdout.write("\\n")
print("`Trainer.fit` stopped: `max_epochs=2` reached.")
print("┃      Validate metric      ┃       DataLoader 0        ┃")
print(f"│         val_loss          │    {val:.17f}    │")
'''

SHAPES = {
    # name: (script, metric, the shape setup names, direction, the value it ends on)
    "nanogpt": (NANOGPT, "val_loss", "`val loss X`", "lower", 1.6),
    "key=value": (KEY_VALUE, "val_loss", "`val_loss=X`", "lower", 0.7),
    "dict": (DICT_PRINT, "val_loss", "`'val_loss': X`", "lower", 0.7),
    "hf-trainer": (HF_TRAINER, "eval_loss", "`'eval_loss': X` (the Trainer's log)", "lower", 1.6),
    "keras": (KERAS, "val_accuracy", "`val_accuracy: X` (Keras's progress lines)", "higher", 0.89),
    "lightning": (LIGHTNING, "val_loss", "Lightning's logged `val_loss`", "lower", 0.3),
}


def own_repo(path: Path, code: str, name: str = "train.py") -> Path:
    new_repo(path)
    (path / name).parent.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(code)
    commit_all(path)
    return path


@pytest.mark.parametrize("shape", SHAPES)
def test_the_metric_is_read_from_what_an_unchanged_script_prints(tmp_path, shape):
    code, metric, said, direction, last = SHAPES[shape]
    p = own_repo(tmp_path / shape, code)
    out = ok(script(p, "setup-session", "--tag", "t", "--metric", metric, "--baseline-runs", "1",
                    "--budget", "30")).stdout
    assert f"metric: train.py prints {said}: read by the pattern in the research config" in out
    config = records(p)[0]
    assert config["direction"] == direction and config["metric_pattern"]
    assert f"{metric}, {direction} is better, read by the pattern" in out

    first = ok(script(p, "run-experiment"))
    value = float(re.search(rf"^METRIC {metric}=(\S+)$", first.stdout, re.M).group(1))
    assert value == pytest.approx(last, abs=0.05)        # the last match, not the first
    assert f'"{metric}": {value}' in ok(script(p, "parse-metrics")).stdout     # the same reading
    logged = ok(script(p, "log-experiment", "--status", "keep", "--description", "baseline")).stdout
    assert f"logged run 1: keep {metric}={value:.6f}" in logged

    # A change for the worse (in the metric's own direction) is recommended a discard.
    set_constant(p, "QUALITY", -0.2)
    second = ok(script(p, "run-experiment")).stdout
    assert "recommend: discard" in second, second
    ok(script(p, "log-experiment", "--status", "discard", "--description", "worse"))
    assert [r["status"] for r in records(p)[1:]] == ["keep", "discard"]
    assert records(p)[2]["metric"] == pytest.approx(last - 0.2 if direction == "higher" else last + 0.2,
                                                    abs=0.05)


def test_a_pattern_of_ones_own_reads_the_named_group_and_a_miss_says_so(tmp_path):
    p = own_repo(tmp_path / "own", NANOGPT)
    out = ok(script(p, "setup-session", "--tag", "t", "--baseline-runs", "1",
                    "--metric-pattern", r"val loss (?P<val_nll>[0-9.]+)")).stdout
    assert "val_nll, lower is better" in out                 # the metric named by the group
    first = ok(script(p, "run-experiment")).stdout
    assert re.search(r"^METRIC val_nll=1\.[56]", first, re.M)
    ok(script(p, "log-experiment", "--status", "keep", "--description", "baseline"))
    (p / "train.py").write_text(NANOGPT.replace("val loss", "validation loss"))
    missed = script(p, "run-experiment")
    assert missed.returncode == 1
    assert "no val_nll in the output: the session's --metric-pattern" in missed.stdout


@pytest.mark.parametrize("pattern,expected", [
    ("val loss [0-9.]+", "has no group: put parentheses around the number"),
    ("val loss ([0-9.]+", "is not a regular expression"),
])
def test_a_bad_pattern_is_one_line_and_no_branch(tmp_path, pattern, expected):
    p = own_repo(tmp_path / "own", NANOGPT)
    proc = script(p, "setup-session", "--tag", "t", "--metric", "val_loss", "--metric-pattern", pattern)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert expected in proc.stderr
    assert git(p, "branch", "--list", "autoresearch/*") == ""


def test_the_one_parser_takes_the_last_match_from_a_named_or_first_group():
    log = "val loss 2.0\nval loss 1.5\nval_bpb: 3\n---\nval_bpb: 0.99\n"
    assert parsing.parse_metrics(log, r"val loss ([0-9.]+)", "val_loss")["val_loss"] == 1.5
    assert parsing.parse_metrics(log, r"val loss (?P<value>[0-9.]+)", "x") == {"val_bpb": 0.99, "x": 1.5}
    # a pattern that misses leaves the metric out, even where a summary block has it
    assert "val_bpb" not in parsing.parse_metrics(log, r"nothing ([0-9]+)", "val_bpb")
    assert parsing.parse_metrics("val loss nan\n", parsing.SHAPES[0][2].format(w="val loss"),
                                 "val_loss")["val_loss"] != 0     # NaN stays NaN
