"""parse-metrics (core/parsing): the summary block, METRIC lines, last_run.json, a pipe."""

import json
import subprocess
import sys

from core import parsing
from plugin_helpers import SCRIPTS, ok, script


SUMMARY = """step 100 | loss 3.2
---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
eval_seconds:     25.8
train_peak_mb:    44800.0
peak_memory_mb:   45060.2
mfu_percent:      n/a
avg_tok_sec:      1,660,000
total_tokens_M:   499.6
num_steps:        953
num_params_M:     50.3
depth:            8
dmodel_scale:     1.0000
"""


def test_parse_metrics_summary_block(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(SUMMARY)
    out = json.loads(ok(script(tmp_path, "parse-metrics", str(log))).stdout)
    assert out["val_bpb"] == 0.9979 and out["avg_tok_sec"] == 1660000
    assert out["num_steps"] == 953 and out["mfu_percent"] == "n/a" and out["depth"] == 8
    assert out["eval_seconds"] == 25.8 and out["train_peak_mb"] == 44800.0 and out["dmodel_scale"] == 1.0


def test_parse_metrics_reads_a_pipe_and_never_answers_with_an_older_file(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "run.log").write_text(SUMMARY)              # yesterday's run
    piped = subprocess.run([sys.executable, str(SCRIPTS / "parse-metrics")], cwd=tmp_path,
                           input="step 1\n---\nval_bpb:          1.234500\n",
                           capture_output=True, text=True, timeout=30)
    assert json.loads(piped.stdout) == {"val_bpb": 1.2345}
    crashed = subprocess.run([sys.executable, str(SCRIPTS / "parse-metrics")], cwd=tmp_path,
                             input="Traceback: out of memory\n", capture_output=True, text=True,
                             timeout=30)
    assert crashed.returncode == 1 and json.loads(crashed.stdout) == {}
    assert "no metrics found in standard input" in crashed.stderr
    quiet = subprocess.run([sys.executable, str(SCRIPTS / "parse-metrics")], cwd=tmp_path,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert json.loads(quiet.stdout)["val_bpb"] == 0.9979     # no pipe: run.log, as before


def test_parse_metrics_metric_lines_override_and_last_block_wins():
    text = SUMMARY + "\n---\nval_bpb: 0.95\n" + "METRIC custom_score=12.5\n"
    m = parsing.parse_metrics(text)
    assert m["val_bpb"] == 0.95 and m["custom_score"] == 12.5
    m = parsing.parse_metrics("METRIC val_bpb=1.5\nnoise\n---\nval_bpb: 1.2\n")
    assert m["val_bpb"] == 1.5
    assert parsing.parse_metrics("---\nval_bpb: nan\n")["val_bpb"] != parsing.parse_metrics("---\nval_bpb: nan\n")["val_bpb"]


def test_parse_metrics_last_run_json(tmp_path):
    path = tmp_path / "last_run.json"
    path.write_text(json.dumps({"hardware": {"device": "cpu"},
                                "training": {"num_steps": 10, "training_seconds": 5.0},
                                "result": {"val_bpb": 1.25, "peak_memory_mb": 100.0}}))
    out = json.loads(ok(script(tmp_path, "parse-metrics", str(path))).stdout)
    assert out == {"val_bpb": 1.25, "peak_memory_mb": 100.0, "num_steps": 10,
                   "training_seconds": 5.0}


def test_parse_metrics_reads_the_records_names_as_the_summarys(tmp_path):
    """last_run.json says total_steps, avg_tok_sec and training_peak_mb; a run reads the
    same from it as from the summary block. Older files said tok_per_sec."""
    new = {"training": {"total_steps": 10, "avg_tok_sec": 1234.5, "training_peak_mb": 90.0,
                        "peak_memory_mb": 100.0, "eval_seconds": 2.5},
           "result": {"status": "ok", "val_bpb": 1.25}}
    old = {"training": {"num_steps": 10, "tok_per_sec": 1234.5}, "result": {"val_bpb": 1.25}}
    outs = []
    for doc in (new, old):
        path = tmp_path / "last_run.json"
        path.write_text(json.dumps(doc))
        outs.append(json.loads(ok(script(tmp_path, "parse-metrics", str(path))).stdout))
    for out in outs:
        assert out["val_bpb"] == 1.25 and out["num_steps"] == 10 and out["avg_tok_sec"] == 1234.5
    assert outs[0]["train_peak_mb"] == 90.0 and outs[0]["eval_seconds"] == 2.5


def test_parse_metrics_reports_nothing_found(tmp_path):
    (tmp_path / "x.log").write_text("Traceback (most recent call last):\n")
    proc = script(tmp_path, "parse-metrics", str(tmp_path / "x.log"))
    assert proc.returncode == 1 and proc.stdout.strip() == "{}" and "no metrics" in proc.stderr
