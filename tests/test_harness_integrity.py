"""What a template cannot fake: the metric, the eval set, and the result.

A template runs inside the training process, so each cheat here is a copy of
train.py changed the way an agent could change it, run for real on `classics`
with the result channel open (a pipe, as a runner opens it). What the runner
reads from the channel must be the harness's own measurement, of the pinned eval
set (`prepare.py --eval-fingerprint`), and must show training on validation
data. The template runs are shared between tests where one run shows several
things."""

import json
import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import REPO, run_prepare
from test_train import parse_summary, patched_copy

# In one test process (`-n 2 --dist loadgroup`): the honest and lying runs serve the module, built once.
pytestmark = pytest.mark.xdist_group("harness-integrity")

RESULT_FD_ENV = "AUTORESEARCH_RESULT_FD"
BUDGET = {"AUTORESEARCH_TIME_BUDGET": "3"}   # seconds: a few steps, then the full evaluation
CPU_BATCH = 8                                # train.py's evaluation batch on a CPU (2048 tokens // 256)

IMPORT_LINE = r"^import prepare  # noqa: E402$"
TRAIN_LOADER = r'^(    loader = prepare\.make_dataloader\(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN), "train"\)$'
FINISH = r"^    report\.finish\(val_bpb, "
MAIN_CALL = r"^    main\(\)$"
# A narrower model: these runs check what the harness reports, not what the model
# learns, and its full evaluation takes a third of the time (batch sizes unchanged).
SMALL_MODEL = (r"^    DEPTH, WIDTH, HEAD_DIM = 2, 256, 64$", "    DEPTH, WIDTH, HEAD_DIM = 2, 64, 32")


def run_with_channel(script, cwd, env, extra_env=None, timeout=300):
    """Run `script` as a runner that wants the result channel does: a pipe's write end,
    passed to the child and named by AUTORESEARCH_RESULT_FD. Returns the finished
    process and the channel's one JSON document (None when nothing was written;
    json.loads fails when more than one was)."""
    r, w = os.pipe()
    chunks = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(r, 65536), b"")))
    reader.start()
    try:
        result = subprocess.run(
            [sys.executable, script], cwd=cwd, pass_fds=(w,), capture_output=True, text=True, timeout=timeout,
            env={**os.environ, **env, "PYTHONPATH": REPO, RESULT_FD_ENV: str(w), **(extra_env or {})})
    finally:
        os.close(w)   # the child's copy closed when it exited: now the reader sees the end
        reader.join()
        os.close(r)
    raw = b"".join(chunks).decode()
    return result, json.loads(raw) if raw else None


def ran_ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def fingerprint(classics_cache):
    """The eval set, as a plugin pins it at setup: from the data alone, no model."""
    proc = run_prepare(["--dataset", "classics", "--eval-fingerprint"], classics_cache)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    return json.loads(line)


def same_eval_set(evaluated, fingerprint):
    """The channel's eval section describes the pinned eval set (any batch size that divides it)."""
    keys = ("tokens", "bytes", "rows", "digest")
    assert {k: evaluated[k] for k in keys} == {k: fingerprint[k] for k in keys}
    assert evaluated["batches"] * evaluated["batch_size"] == fingerprint["rows"]


@pytest.fixture(scope="module")
def honest(tmp_path_factory, classics_cache):
    cwd = tmp_path_factory.mktemp("honest")
    return cwd, *run_with_channel(patched_copy(cwd, "train.py", [SMALL_MODEL]), cwd, classics_cache, BUDGET)


@pytest.fixture(scope="module")
def liar(tmp_path_factory, classics_cache):
    """A template that shrinks the eval set behind the module's back, reports its own
    number to the harness, and prints its own result lines after the harness's."""
    cwd = tmp_path_factory.mktemp("liar")
    script = patched_copy(cwd, "train.py", [
        SMALL_MODEL,
        (IMPORT_LINE, 'import prepare  # noqa: E402\nvars(prepare)["EVAL_TOKENS"] = 2048'),
        (FINISH, '    print(f"harness returned {val_bpb!r}", flush=True)\n    report.finish(0.2, '),
        (MAIN_CALL, '    main()\n    print("METRIC val_bpb=0.1")\n    print("---")\n'
                    '    print("val_bpb:          0.100000")'),
    ])
    result, document = run_with_channel(script, cwd, classics_cache, BUDGET)
    ran_ok(result)
    returned = float(next(line for line in result.stdout.splitlines()
                          if line.startswith("harness returned ")).split()[-1])
    return result, document, returned


def test_an_honest_run_reports_the_pinned_eval_set_and_no_validation_reads(honest, fingerprint):
    cwd, result, document = honest
    ran_ok(result)
    summary = parse_summary(result.stdout)   # the printed block is unchanged, for humans and older tools
    assert document["version"] == 1 and document["status"] == "ok" and document["error"] is None
    assert document["val_bpb"] == document["template_val_bpb"] and document["val_bpb_source"] == "harness"
    assert abs(document["val_bpb"] - float(summary["val_bpb"])) < 1e-6
    same_eval_set(document["eval"], fingerprint)
    assert document["eval"]["batch_size"] == CPU_BATCH and document["eval"]["calls"] == 1
    assert document["eval"]["tokens"] == fingerprint["eval_tokens"] == 2**16
    assert document["served"]["val"] == 0 and document["served"]["train"] > 0
    assert document["harness"] == dict(dataset="classics", eval_tokens=2**16, max_seq_len=256, vocab_size=4096,
                                       time_budget_s=3.0, seed=42)
    assert document["num_steps"] == int(summary["num_steps"]) and document["template"] == "train.py"
    # last_run.json carries the same measurements beside its old fields.
    with open(cwd / "data" / "last_run.json") as f:
        record = json.load(f)
    assert record["result"] == {"status": "ok", "val_bpb": document["val_bpb"]}
    assert record["served"] == document["served"]
    assert record["eval"] == dict(document["eval"], val_bpb=document["val_bpb"], val_bpb_source="harness")


@pytest.mark.parametrize("assignment", ["prepare.EVAL_TOKENS = 2048", "prepare.evaluate_bpb = lambda *a: 0.3"])
def test_setting_a_harness_name_stops_the_run(tmp_path, classics_cache, assignment):
    script = patched_copy(tmp_path, "train.py", [(IMPORT_LINE, f"import prepare  # noqa: E402\n{assignment}")])
    result, document = run_with_channel(script, tmp_path, classics_cache, BUDGET)
    assert result.returncode != 0
    name = assignment.split()[0]
    assert f"AttributeError: {name} is fixed by the harness" in result.stderr, result.stderr[-2000:]
    assert document is None and "---" not in result.stdout.splitlines()


def test_every_harness_name_is_fixed(harness):
    """Reading is free; setting, deleting or adding a name is refused, with the reason."""
    names = [n for n in vars(harness) if n not in harness._IMPORT_ATTRIBUTES] + ["NEW_NAME"]
    for name in names:
        before = vars(harness).get(name)
        with pytest.raises(AttributeError, match=rf"^prepare\.{name} is fixed by the harness; "):
            setattr(harness, name, 1)
        with pytest.raises(AttributeError, match=rf"^prepare\.{name} is fixed by the harness; "):
            delattr(harness, name)
        assert vars(harness).get(name) is before
    for name in ("EVAL_TOKENS", "MAX_SEQ_LEN", "VOCAB_SIZE", "TIME_BUDGET", "SEED", "DATASET", "evaluate_bpb",
                 "make_dataloader", "RunReport", "Tokenizer", "get_token_bytes", "eval_fingerprint"):
        assert name in names


def test_the_eval_set_ignores_a_constant_rebound_behind_the_module(liar, fingerprint):
    """vars(prepare) gets past the refusal; evaluate_bpb reads its own copy, so the
    eval set is the pinned one (and a runner comparing it would see if it were not)."""
    _, document, _ = liar
    same_eval_set(document["eval"], fingerprint)
    assert document["harness"]["eval_tokens"] == fingerprint["eval_tokens"]


def test_printed_result_lines_do_not_reach_the_channel(liar):
    result, document, returned = liar
    lines = result.stdout.splitlines()
    assert "METRIC val_bpb=0.1" in lines and lines[-2:] == ["---", "val_bpb:          0.100000"]  # the lie is there
    assert document["val_bpb"] == returned and returned not in (0.1, 0.2)


def test_a_number_the_template_passes_is_marked_and_replaced(liar):
    _, document, returned = liar
    assert document["template_val_bpb"] == 0.2
    assert document["val_bpb_source"] == "template"
    assert document["val_bpb"] == returned


def test_training_on_validation_data_shows_in_served(tmp_path, classics_cache):
    """The one-word change: the training loader reads "val". Everything else looks
    like an honest run; the validation tokens served give it away."""
    script = patched_copy(tmp_path, "train.py", [(TRAIN_LOADER, r'\1, "val")')])
    # What it scores does not matter here: a small eval set saves the seconds.
    result, document = run_with_channel(script, tmp_path, classics_cache,
                                        {**BUDGET, "AUTORESEARCH_EVAL_TOKENS": "4096"})
    ran_ok(result)
    assert document["status"] == "ok" and document["val_bpb_source"] == "harness"
    assert document["served"]["val"] > 0 and document["served"]["train"] == 0   # honest: 0 and > 0


# ---------------------------------------------------------------------------
# The channel itself, with a tiny numpy-only target (no model: a uniform guess)

TINY = """
import math, os, subprocess, sys
import numpy as np
import prepare

report = prepare.RunReport(
    "tiny.py", "numpy", dict(device_type="cpu", device_name="test", memory_gb=None, peak_flops=None),
    model=dict(depth=1, width=1, num_params=1, vocab_size=prepare.VOCAB_SIZE, seq_len=prepare.MAX_SEQ_LEN),
    training=dict(compiled=False, dtype="fp32", device_batch_size=8, grad_accum_steps=1,
                  tokens_per_step=8 * prepare.MAX_SEQ_LEN),
    loss_limit=100.0)
report.step(0, 0.01, 8.0, True, 0.01, 1.0)
uniform = lambda x, y: np.full(y.shape, math.log(prepare.VOCAB_SIZE))
"""


def run_tiny(tmp_path, env, body):
    script = tmp_path / "tiny.py"
    script.write_text(TINY + body)
    return run_with_channel(str(script), tmp_path, env)


def test_a_replaced_metric_leaves_the_channel_without_a_measurement(tmp_path, classics_cache):
    result, document = run_tiny(tmp_path, classics_cache, 'vars(prepare)["evaluate_bpb"] = lambda *a: 0.3\n'
                                                          "report.finish(prepare.evaluate_bpb(uniform, 8), 1, 1, 1)\n")
    ran_ok(result)
    assert document["val_bpb"] is None and document["eval"] is None
    assert document["template_val_bpb"] == 0.3 and document["val_bpb_source"] == "template"


def test_one_document_per_run_and_every_evaluation_counted(tmp_path, classics_cache):
    result, document = run_tiny(tmp_path, classics_cache, "prepare.evaluate_bpb(lambda x, y: np.zeros(y.shape), 8)\n"
                                                          "v = prepare.evaluate_bpb(uniform, 8)\n"
                                                          "report.finish(v, 1, 1, 1)\nreport.finish(v, 1, 1, 1)\n")
    ran_ok(result)
    assert document["eval"]["calls"] == 2 and document["val_bpb_source"] == "harness"
    assert 2.0 < document["val_bpb"] < 4.5   # the last evaluation's value: the uniform guess


def test_a_failed_run_says_so_on_the_channel(tmp_path, classics_cache):
    result, document = run_tiny(tmp_path, classics_cache, 'report.step(1, 0.01, float("nan"), True, 0.02, 1.0)\n')
    assert result.returncode == 1 and "FAIL: loss is NaN at step 1" in result.stdout
    assert document["status"] == "failed" and document["error"] == "loss is NaN at step 1"
    assert document["val_bpb"] is None and document["template_val_bpb"] is None and document["num_steps"] == 1


PROBE = """
import os, sys
try:
    os.fstat(int(sys.argv[1]))
    state = "open"
except OSError:
    state = "closed"
print(os.environ.get("AUTORESEARCH_RESULT_FD"), state)
"""


def test_a_process_the_template_starts_cannot_reach_the_channel(tmp_path, classics_cache):
    """Neither the variable nor the descriptor passes to a child, even one started
    with close_fds=False."""
    script = tmp_path / "tiny.py"
    # The number is read before prepare is imported: the only moment it is in the environment.
    script.write_text("import os\nFD = os.environ['AUTORESEARCH_RESULT_FD']\n" + TINY + f"""
child = subprocess.run([sys.executable, "-c", {PROBE!r}, FD], close_fds=False, capture_output=True, text=True)
print("parent:", os.environ.get("AUTORESEARCH_RESULT_FD"), "child:", child.stdout.strip())
""")
    result, document = run_with_channel(str(script), tmp_path, classics_cache)
    ran_ok(result)
    assert "parent: None child: None closed" in result.stdout.splitlines(), result.stdout
    assert document is None   # this target never finishes: nothing was written


def test_a_loss_made_up_from_the_targets_fails_the_probe(harness):
    """Any model's loss on random next tokens averages at least ln V; a loss that reads
    its targets, or is scaled down, does not."""
    V = harness.VOCAB_SIZE
    logits = np.random.default_rng(1).normal(size=V) * 3          # some fixed, peaky model
    logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    honest = lambda x, y: -logp[y]
    cheats = {"zero": lambda x, y: np.zeros(y.shape), "halved": lambda x, y: -logp[y] / 2,
              "peeks": lambda x, y: np.where(y == y, 0.01, 9.0)}
    harness.evaluate_bpb(honest, 8)
    probe = harness._LEDGER.eval["probe"]
    assert probe["floor"] == round(math.log(V), 4) and probe["nats"] >= 0.9 * probe["floor"]
    for name, loss in cheats.items():
        harness.evaluate_bpb(loss, 8)
        assert harness._LEDGER.eval["probe"]["nats"] < 0.9 * probe["floor"], name


def test_validation_rows_are_counted_whoever_asks_for_them(harness):
    """The count is in the packing itself: a template that reaches past make_dataloader
    for the private packer is counted too; the evaluation's own reading is not."""
    tokenizer = harness.Tokenizer.load()
    before = dict(harness._LEDGER.served)
    harness.evaluate_bpb(lambda x, y: np.zeros(y.shape), 8)
    harness.eval_fingerprint()
    assert harness._LEDGER.served == before
    next(harness._packed_rows(tokenizer, 2, harness.MAX_SEQ_LEN, "val"))
    assert harness._LEDGER.served["val"] == before["val"] + 2 * harness.MAX_SEQ_LEN


def served(harness, per_token_loss, batch_size, seed=0):
    """evaluate_bpb under a runner: the harness's serve_evaluation on one end of a
    socket (in a thread here; a process of the runner's in a real run), the template's
    evaluate_bpb on the other. Returns (what evaluate_bpb returned, the runner's result)."""
    import socket

    runner_end, run_end = socket.socketpair()
    out = {}

    def runner():
        # The runner reads the run's request first (measure.ServedRun), then serves it.
        try:
            request = harness._read_header(runner_end.fileno())
            assert request["op"] == "eval", request
            out.update(harness.serve_evaluation(runner_end.fileno(), request["batch_size"], seed))
        except BaseException as e:
            out["error"] = e
            runner_end.shutdown(socket.SHUT_RDWR)     # the run's side reads EOF, not forever
    thread = threading.Thread(target=runner)
    thread.start()
    saved = (harness._LEDGER.result_fd, harness._LEDGER.eval_calls)
    harness._LEDGER.result_fd, harness._LEDGER.eval_calls = run_end.fileno(), 0
    try:
        value = harness.evaluate_bpb(per_token_loss, batch_size)
    finally:
        harness._LEDGER.result_fd, harness._LEDGER.eval_calls = saved
        run_end.shutdown(socket.SHUT_RDWR)            # a runner still waiting for losses stops
        thread.join()
        runner_end.close()
        run_end.close()
    if "error" in out:
        raise out["error"]
    return value, out


def fixed_model(harness, seed=1, peak=3.0):
    """A fixed bigram-free model: the same distribution at every position."""
    V = harness.VOCAB_SIZE
    logits = np.random.default_rng(seed).normal(size=V) * peak
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def test_the_served_value_is_the_in_process_arithmetic(harness):
    """Moving the arithmetic to the runner changes no value: the same rows, the same
    sums, whatever batch size the template asks for (probe rows fill the last batch)."""
    logp = fixed_model(harness)
    loss = lambda x, y: -logp[y]
    local = harness.evaluate_bpb(loss, 1)
    for batch_size in (1, 3, 8):
        value, result = served(harness, loss, batch_size)
        assert value == result["val_bpb"]
        assert abs(value - local) < 1e-12 * local, (batch_size, value, local)
        assert result["eval"]["rows"] == harness.eval_fingerprint()["rows"]
        assert harness.probe_verdict(result["eval"]["probe"], result["eval"]["replay"]) is None


def test_the_probe_sits_at_places_drawn_per_run(harness):
    """Where the probe rows go changes from run to run: no position gives them away."""
    seen = []
    for seed in (1, 2):
        rows = []

        def loss(x, y, rows=rows):
            rows.extend(map(bytes, x))
            return -fixed_model(harness)[y]

        served(harness, loss, 4, seed=seed)
        seen.append(rows)
    assert len(seen[0]) == len(seen[1]) and seen[0] != seen[1]
    assert seen[0][0] != seen[1][0] or seen[0][-1] != seen[1][-1] or seen[0][5] != seen[1][5]


@pytest.mark.parametrize("scale", [0.95, 0.9, 0.5])
def test_a_scaled_loss_trips_the_probe(harness, scale):
    """Any model's cross-entropy makes the probe's Z = mean(V exp(-nats)) estimate 1;
    losses scaled down make it larger, beyond its own sampling error."""
    logp = fixed_model(harness, peak=1.0)
    value, result = served(harness, lambda x, y: -logp[y] * scale, 8)
    assert "the losses are lowered" in (harness.probe_verdict(result["eval"]["probe"], result["eval"]["replay"]) or "")


def test_an_honest_model_never_trips_the_probe(harness):
    """Models from flat to very peaked, on many draws of the probe's places."""
    for seed in range(6):
        for peak in (0.3, 1.0, 3.0, 6.0):
            logp = fixed_model(harness, seed=seed, peak=peak)
            value, result = served(harness, lambda x, y: -logp[y], 8, seed=seed)
            assert harness.probe_verdict(result["eval"]["probe"], result["eval"]["replay"]) is None, (seed, peak)


def test_a_model_that_changes_while_evaluated_trips_the_replay(harness):
    """A model that moves while it is evaluated, from one distribution towards another:
    each is a real cross-entropy (the probe passes), but a row served twice scores twice."""
    p, q = np.exp(fixed_model(harness, seed=1)), np.exp(fixed_model(harness, seed=2))
    calls = []

    def learning(x, y):
        calls.append(1)
        a = min(1.0, len(calls) / 20)
        return -np.log((1 - a) * p[y] + a * q[y])
    value, result = served(harness, learning, 4)
    assert "served twice" in (harness.probe_verdict(result["eval"]["probe"], result["eval"]["replay"]) or "")
