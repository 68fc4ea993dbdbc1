"""The plugin's scripts, run as the agent runs them, on a real project in a temporary
git repository with a stand-in training script."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jsonschema
import pytest

from plugin_helpers import (PLUGIN, SCRIPTS, edit_target, git, make_project, ok, records,
                            script, tsv_rows)

sys.path.insert(0, str(SCRIPTS))
from core import common, parsing, records as core_records, stats, policy as core_policy  # noqa: E402

ALL_SCRIPTS = ["setup-session", "run-experiment", "log-experiment", "parse-metrics",
               "confidence", "summarize", "resume-session", "end-session", "finalize"]


@pytest.fixture
def project(tmp_path):
    p = make_project(tmp_path / "proj")
    ok(script(p, "setup-session", "--tag", "t1", "--dataset", "classics", "--budget", "1"))
    return p


def strict_session(tmp_path):
    """A session whose every verdict comes from one run (Karpathy's rule), for tests of
    what happens around a verdict rather than of the verdict itself."""
    p = make_project(tmp_path / "proj")
    ok(script(p, "setup-session", "--tag", "t1", "--dataset", "classics", "--budget", "1",
              "--policy", "strict"))
    return p


def run_and_log(p, status, description, **constants):
    if constants:
        edit_target(p, **constants)
    run = script(p, "run-experiment")
    log = script(p, "log-experiment", "--status", status, "--description", description)
    return run, ok(log)


# ---------------------------------------------------------------------- every script

@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_every_script_has_help_and_is_executable(name):
    path = SCRIPTS / name
    assert os.access(path, os.X_OK), f"{name} is not executable"
    proc = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and f"usage: {name}" in proc.stdout
    # The command is a thin runner; its code is a module that tools can read.
    assert (SCRIPTS / (name.replace("-", "_") + ".py")).is_file()


def test_scripts_outside_a_session_say_how_to_start_one(tmp_path):
    p = make_project(tmp_path / "p")
    for name in ("run-experiment", "confidence", "summarize", "resume-session"):
        proc = script(p, name)
        assert proc.returncode == 2
        assert "setup-session" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- setup

def test_setup_creates_branch_config_and_files(project):
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"
    config = records(project)[0]
    assert config["type"] == "config" and config["target"] == "train.py"
    assert config["dataset"] == "classics" and config["budget"] == 1
    assert config["timeout"] == 2 * 1 + 120 and config["policy"] == "noise-aware"
    assert config["python"] == sys.executable
    assert set(config["fixed_files"]) == {"prepare.py", "data_sources.py",
                                          "datasets/classics/book.txt"}
    assert tsv_rows(project) == [["commit", "val_bpb", "memory_gb", "avg_tok_sec", "status",
                                  "description"]]
    assert (project / "autoresearch.md").exists()
    assert json.loads((project / ".autoresearch" / "state.json").read_text())["active"] is True
    # The session files are ignored by git, so resets never touch them.
    assert git(project, "status", "--porcelain") == ""


def test_setup_prints_and_records_the_research_config(tmp_path):
    p = make_project(tmp_path / "p")
    out = ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics", "--budget", "7",
                    "--max-iterations", "30", "--target-value", "0.95", "--plateau", "12")).stdout
    config = records(p)[0]
    platform = config["platform"]
    assert platform["os"].startswith(os.uname().sysname) and platform["device"].startswith(("cpu", "cuda", "mps"))
    assert platform["framework"].startswith("torch ") and platform["memory_gb"] > 0
    assert "research config:" in out and f"platform   {platform['os']}" in out
    assert "budget     7 s per run" in out and "val_bpb, lower is better" in out
    assert "stops at   30 runs; best reaches 0.95; 12 runs in a row without a keep" in out
    assert config["target_value"] == 0.95 and config["plateau"] == 12 and config["scope"] == []


@pytest.mark.parametrize("args,says", [
    (["--scope", "train.py"], "it is the target"),
    (["--scope", "prepare.py"], "a fixed file"),
    (["--scope", "untracked.py"], "not a file tracked by git"),
    (["--read-only", "missing.py"], "no such file"),
    (["--plateau", "-1"], "--plateau must be 0"),
])
def test_setup_rejects_bad_file_options_in_one_line(tmp_path, args, says):
    p = make_project(tmp_path / "p")
    proc = script(p, "setup-session", "--tag", "t", "--dataset", "classics", *args)
    assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (p / "autoresearch.jsonl").exists()


def test_scope_files_are_committed_and_reverted_with_the_target(tmp_path):
    p = make_project(tmp_path / "p")
    (p / "helpers.py").write_text("FACTOR = 1\n")
    git(p, "add", "-A")
    git(p, "commit", "-qm", "helpers")
    ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics", "--budget", "1",
              "--scope", "helpers.py"))
    run_and_log(p, "keep", "baseline")
    (p / "helpers.py").write_text("FACTOR = 2\n")
    run_and_log(p, "keep", "double it", VAL_BPB=0.9)
    assert git(p, "show", "HEAD:helpers.py") == "FACTOR = 2" and git(p, "status", "--porcelain") == ""
    (p / "helpers.py").write_text("FACTOR = 3\n")
    run_and_log(p, "discard", "triple it", VAL_BPB=0.95)
    assert (p / "helpers.py").read_text() == "FACTOR = 2\n"            # reverted with the target
    assert git(p, "show", "refs/autoresearch/t/run-3:helpers.py") == "FACTOR = 3"


def test_a_read_only_file_is_hashed_like_the_harness(tmp_path):
    p = make_project(tmp_path / "p")
    (p / "eval_extra.py").write_text("K = 1\n")
    git(p, "add", "-A")
    git(p, "commit", "-qm", "extra eval")
    ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics", "--budget", "1",
              "--read-only", "eval_extra.py"))
    assert "eval_extra.py" in records(p)[0]["fixed_files"]
    (p / "eval_extra.py").write_text("K = 2\n")
    proc = script(p, "run-experiment")
    assert proc.returncode == 3 and "status: tampered (eval_extra.py changed since setup)" in proc.stdout


def test_setup_refuses_an_existing_branch_and_names_the_resume_command(project):
    ok(script(project, "run-experiment"))
    ok(script(project, "log-experiment", "--status", "keep", "--description", "baseline"))
    proc = script(project, "setup-session", "--tag", "t1", "--dataset", "classics")
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "/experiment:resume" in proc.stderr
    assert len(records(project)) == 2          # nothing recorded was lost


def test_setup_again_right_after_setup_is_harmless(project):
    proc = ok(script(project, "setup-session", "--tag", "t1", "--dataset", "classics"))
    assert "already set up" in proc.stdout


@pytest.mark.parametrize("tag", ["bad tag", "-x", "a..b", "x.lock", "a/b", "é"])
def test_setup_rejects_a_tag_that_is_not_a_branch_name(tmp_path, tag):
    p = make_project(tmp_path / "p")
    proc = script(p, "setup-session", f"--tag={tag}", "--dataset", "classics")
    assert proc.returncode == 2 and "invalid tag" in proc.stderr
    assert git(p, "branch", "--list", "autoresearch/*") == ""
    assert not (p / "autoresearch.jsonl").exists()


def test_setup_prints_the_prepare_command_when_data_is_missing(tmp_path):
    p = make_project(tmp_path / "p")
    proc = script(p, "setup-session", "--tag", "t", "--dataset", "tinystories",
                  env={"MISSING_DATASETS": "tinystories"})
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("prepare it with: python prepare.py --dataset tinystories")
    assert git(p, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert not (p / "autoresearch.jsonl").exists()


def test_setup_refuses_uncommitted_changes(tmp_path):
    p = make_project(tmp_path / "p")
    edit_target(p, VAL_BPB=0.5)
    proc = script(p, "setup-session", "--tag", "t", "--dataset", "classics")
    assert proc.returncode == 2 and "uncommitted changes in train.py" in proc.stderr


def test_setup_archives_a_previous_session_instead_of_overwriting(project):
    run_and_log(project, "keep", "baseline")
    ok(script(project, "setup-session", "--tag", "t2", "--dataset", "classics", "--budget", "1",
              "--target", "train_mlx.py"))
    assert records(project)[0]["tag"] == "t2" and len(records(project)) == 1
    archived = list((project / ".autoresearch" / "archive").glob("t1-*/autoresearch.jsonl"))
    assert len(archived) == 1 and len(archived[0].read_text().splitlines()) == 2


def test_scripts_work_from_a_subdirectory(project):
    sub = project / "datasets" / "classics"
    proc = ok(script(project, "run-experiment", cwd=sub))
    assert "status: ok" in proc.stdout
    ok(script(project, "log-experiment", "--status", "keep", "--description", "baseline", cwd=sub))
    assert len(records(project)) == 2


# ------------------------------------------------------------------ run-experiment

def test_run_ok_prints_compact_metrics_and_status(project):
    proc = ok(script(project, "run-experiment"))
    lines = proc.stdout.splitlines()
    assert lines[0] == "METRIC val_bpb=1.0"
    assert "METRIC avg_tok_sec=1000000" in lines
    assert any(l.startswith("status: ok run 1") and "seed 42" in l for l in lines)
    # noise-aware measures the baseline 3 times (on new seeds) before any change
    assert "recommend: rerun: baseline sample 1 of 3" in proc.stdout
    assert len(lines) <= 10 and "step 00001" not in proc.stdout      # never the log itself
    assert "dataset classics, budget 1s" in (project / "run.log").read_text()


@pytest.mark.parametrize("mode,status", [("crash", "crash"), ("nan", "nan"), ("nometric", "crash")])
def test_run_failures_have_their_own_status_and_show_the_log_tail(project, mode, status):
    edit_target(project, MODE=mode)
    proc = script(project, "run-experiment")
    assert proc.returncode == 1
    assert f"status: {status} run 1" in proc.stdout
    assert "last" in proc.stdout and "lines of run.log" in proc.stdout
    if mode == "crash":
        assert "shape mismatch in attention" in proc.stdout
    if mode == "nan":
        assert "FAIL: loss is NaN at step 12" in proc.stdout


def gone(pid, wait=5.0):
    """True once `pid` has exited (a zombie waiting for a reaper counts as exited);
    a survivor is killed so the test leaves nothing behind."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if not os.path.isdir("/proc"):          # no procfs (macOS): ask the kernel
                os.kill(pid, 0)
            else:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return False


def test_run_timeout_kills_the_whole_process_group(project):
    edit_target(project, MODE="hang")
    start = time.monotonic()
    proc = script(project, "run-experiment", "--timeout", "2")
    assert proc.returncode == 1 and "status: timeout" in proc.stdout
    assert "process group killed" in proc.stdout
    assert time.monotonic() - start < 20
    child = int((project / "hang_child.pid").read_text())
    assert gone(child), "the target's child process survived the timeout"


COMPILE_PROBE = """
if os.environ.get("PROBE_COMPILE"):
    import torch
    torch.compile(lambda x: x * 2 + 1)(torch.ones(8))   # a real compile: it fills the cache
print("compile cache:", os.environ.get("TORCHINDUCTOR_CACHE_DIR"), flush=True)
"""


def test_runs_compile_into_the_session_cache_unless_the_user_chose_one(project, tmp_path):
    """torch.compile's cache is the session's (.autoresearch/compile-cache/<tag>/), so it
    lasts between runs wherever /tmp does not; a TORCHINDUCTOR_CACHE_DIR the user set
    wins; the next session starts without the old cache."""
    pytest.importorskip("torch")
    with open(project / "train.py", "a") as f:
        f.write(COMPILE_PROBE)
    cache = project / ".autoresearch" / "compile-cache" / "t1"
    ok(script(project, "run-experiment", env={"PROBE_COMPILE": "1"}, timeout=300))
    assert f"compile cache: {cache}" in (project / "run.log").read_text()
    assert list(cache.glob("fxgraph/**/*")), "the run's compiled graph is in the session's cache"
    mine = tmp_path / "my-cache"
    ok(script(project, "run-experiment", env={"TORCHINDUCTOR_CACHE_DIR": str(mine)}))
    assert f"compile cache: {mine}" in (project / "run.log").read_text()
    ok(script(project, "log-experiment", "--status", "keep", "--description", "baseline"))
    proc = ok(script(project, "setup-session", "--tag", "t2", "--dataset", "classics", "--budget", "1"))
    assert "deleted the earlier sessions' compile cache" in proc.stdout
    assert not (project / ".autoresearch" / "compile-cache").exists()
    ok(script(project, "run-experiment"))
    assert f"compile cache: {project / '.autoresearch' / 'compile-cache' / 't2'}" in \
        (project / "run.log").read_text()


def test_run_refuses_when_a_fixed_file_changed(project):
    with open(project / "prepare.py", "a") as f:
        f.write("# tweak the evaluation\n")
    proc = script(project, "run-experiment")
    assert proc.returncode == 3
    assert "status: tampered (prepare.py changed since setup)" in proc.stdout
    assert "repair: run resume-session" in proc.stdout
    assert not (project / "run.log").exists()        # it did not even run
    proc = script(project, "log-experiment", "--status", "keep", "--description", "x",
                  "--metric", "0.5")
    assert proc.returncode == 2 and "nothing was recorded" in proc.stderr
    assert len(records(project)) == 1
    ok(script(project, "resume-session"))            # the repair it names works
    assert "tweak the evaluation" not in (project / "prepare.py").read_text()
    assert script(project, "run-experiment").returncode == 0


def test_a_run_that_tampers_with_data_is_not_recorded(project):
    (project / "train.py").write_text((project / "train.py").read_text().replace(
        'if MODE == "crash":',
        'open("datasets/classics/book.txt", "a").write("more")\nif MODE == "crash":'))
    proc = script(project, "run-experiment")
    assert proc.returncode == 3 and "status: tampered" in proc.stdout
    assert "datasets/classics/book.txt" in proc.stdout
    proc = script(project, "log-experiment", "--status", "keep", "--description", "x")
    assert proc.returncode == 2 and "nothing was recorded" in proc.stderr
    assert len(records(project)) == 1


# ------------------------------------------------------------------- parse-metrics

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


# ------------------------------------------------------------------ log-experiment

def test_keep_commits_the_change_and_discard_resets_to_it(project):
    run_and_log(project, "keep", "baseline")
    base = git(project, "rev-parse", "HEAD")
    assert records(project)[1]["commit_sha"] == base          # baseline: nothing to commit
    run_and_log(project, "keep", "lower lr", VAL_BPB=0.9)
    kept = git(project, "rev-parse", "HEAD")
    assert kept != base and records(project)[2]["commit_sha"] == kept
    assert git(project, "show", "-s", "--format=%s", kept).startswith("experiment 2 (keep): lower lr")
    assert "VAL_BPB = 0.9" in (project / "train.py").read_text()

    run_and_log(project, "discard", "wider mlp", VAL_BPB=0.95)
    assert git(project, "rev-parse", "HEAD") == kept
    assert "VAL_BPB = 0.9\n" in (project / "train.py").read_text()     # back to the kept code
    tried = records(project)[3]["commit_sha"]
    assert tried != kept
    assert "VAL_BPB = 0.95" in git(project, "show", f"refs/autoresearch/t1/run-3:train.py")
    assert git(project, "status", "--porcelain") == ""
    # Every record and row survived the reset.
    assert [r["status"] for r in records(project)[1:]] == ["keep", "keep", "discard"]
    assert [row[4] for row in tsv_rows(project)[1:]] == ["keep", "keep", "discard"]
    assert tsv_rows(project)[3][:2] == [tried[:7], "0.950000"]


def test_crash_is_reverted_and_cannot_be_logged_as_keep(project):
    run_and_log(project, "keep", "baseline")
    edit_target(project, MODE="crash")
    assert script(project, "run-experiment").returncode == 1
    proc = script(project, "log-experiment", "--status", "keep", "--description", "oops")
    assert proc.returncode == 2 and "--status crash" in proc.stderr
    ok(script(project, "log-experiment", "--status", "crash", "--description", "flash attention"))
    rec = records(project)[-1]
    assert rec["status"] == "crash" and rec["run_status"] == "crash" and rec["metric"] is None
    assert 'MODE = "ok"' in (project / "train.py").read_text()
    assert tsv_rows(project)[-1][1:5] == ["0.000000", "0.0", "0", "crash"]


def test_log_needs_a_run_and_an_unchanged_target(project):
    proc = script(project, "log-experiment", "--status", "keep", "--description", "x")
    assert proc.returncode == 2 and "run run-experiment first" in proc.stderr
    ok(script(project, "run-experiment"))
    edit_target(project, VAL_BPB=0.1)
    proc = script(project, "log-experiment", "--status", "keep", "--description", "x")
    assert proc.returncode == 2 and "changed since the last run" in proc.stderr
    assert len(records(project)) == 1


@pytest.mark.parametrize("args,message", [
    (["--status", "keep", "--description", "  "], "--description"),
    (["--status", "keep", "--description", "x", "--metrics", "[1]"], "JSON object"),
    (["--status", "keep", "--description", "x", "--asi", "{bad"], "not valid JSON"),
    (["--status", "maybe", "--description", "x"], "invalid choice"),
])
def test_log_rejects_bad_input_with_one_clear_line(project, args, message):
    ok(script(project, "run-experiment"))
    proc = script(project, "log-experiment", *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(records(project)) == 1


def test_descriptions_with_tabs_newlines_and_shell_text_are_stored_exactly(project):
    nasty = "lr 3e-4\tthen\n$(rm -rf ~) `id` 'quoted' \"double\" | ; && > x"
    ok(script(project, "run-experiment"))
    ok(script(project, "log-experiment", "--status", "keep", "--description", nasty,
              "--asi", json.dumps({"hypothesis": "tabs\tand\nnewlines"})))
    rec = records(project)[1]
    assert rec["description"] == nasty and rec["asi"]["hypothesis"] == "tabs\tand\nnewlines"
    rows = tsv_rows(project)
    assert len(rows) == 2 and len(rows[1]) == 6
    assert rows[1][5] == "lr 3e-4 then $(rm -rf ~) `id` 'quoted' \"double\" | ; && > x"
    assert not (project / "x").exists()


def test_records_match_the_json_schema(project):
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "discard", "worse", VAL_BPB=1.5)
    edit_target(project, MODE="nan")
    script(project, "run-experiment")
    ok(script(project, "log-experiment", "--status", "crash", "--description", "nan"))
    schema = json.loads((PLUGIN / "schema" / "autoresearch-record.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for rec in records(project):
        jsonschema.validate(rec, schema)


@pytest.mark.parametrize("mutate, says", [
    (lambda r: r.pop("commit"), "'commit' is a required property"),
    (lambda r: r.update(status="kept"), "record.status: 'kept' is not one of"),
    (lambda r: r.update(run=0), "record.run: 0 is less than the minimum of 1"),
    (lambda r: r.update(metric="0.9"), "record.metric: '0.9' is not of type"),
    (lambda r: r.update(extra=1), "'extra' was unexpected"),
    (lambda r: r.update(description=""), "record.description: '' should be non-empty"),
    (lambda r: r.update(commit="abc"), "record.commit: 'abc' does not match"),
    (lambda r: r.update(metrics={"a": [1]}), "record.metrics.a: [1] is not of type"),
])
def test_an_invalid_record_is_refused_in_one_line(mutate, says):
    good = {"type": "run", "run": 2, "commit": "a" * 40, "status": "keep", "metric": 0.9,
            "metrics": {"val_bpb": 0.9, "mfu_percent": "n/a"}, "description": "d",
            "timestamp": "2026-01-01T00:00:00Z"}
    core_records.validate(good)
    mutate(good)
    with pytest.raises(common.UserError) as refused:
        core_records.validate(good)
    message = str(refused.value)
    assert message.startswith("invalid record") and says in message and "\n" not in message, message


def test_concurrent_writers_lose_and_tear_nothing(project):
    n = 12
    procs = [subprocess.Popen([sys.executable, str(SCRIPTS / "log-experiment"), "--status",
                               "discard", "--metric", str(1 + i / 100), "--description",
                               f"writer {i}\twith tab"], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    recs = records(project)[1:]
    assert sorted(r["run"] for r in recs) == list(range(1, n + 1))
    assert sorted(r["description"] for r in recs) == sorted(f"writer {i}\twith tab" for i in range(n))
    rows = tsv_rows(project)[1:]
    assert len(rows) == n and all(len(r) == 6 for r in rows)


def test_a_truncated_last_line_is_reported_kept_and_repaired(project):
    run_and_log(project, "keep", "baseline")
    with open(project / "autoresearch.jsonl", "a") as f:
        f.write('{"type": "run", "run": 2, "comm')             # a writer killed mid-line
    proc = ok(script(project, "confidence"))
    assert "line 3 is truncated" in proc.stderr
    ok(script(project, "run-experiment"))
    proc = ok(script(project, "log-experiment", "--status", "discard", "--description", "again"))
    assert "truncated" in proc.stderr
    recs = records(project)                                    # every line parses again
    assert [r.get("run") for r in recs] == [None, 1, 2]
    salvaged = (project / ".autoresearch" / "salvaged.jsonl").read_text()
    assert '"comm' in salvaged


# ------------------------------------------------------------ confidence, policies

def log_metric(p, status, value, description="x"):
    ok(script(p, "log-experiment", "--status", status, "--metric", str(value),
              "--description", description))


def test_confidence_reports_noise_floor_and_verdict(project):
    for status, v in [("keep", 1.00), ("discard", 1.01), ("discard", 0.99), ("discard", 1.02),
                      ("keep", 0.90)]:
        log_metric(project, status, v)
    out = json.loads(ok(script(project, "confidence", "--json")).stdout)
    # metrics 1.00 1.01 0.99 1.02 0.90: median 1.00, deviations 0 .01 .01 .02 .10 -> MAD .01
    assert out["noise_floor"] == pytest.approx(0.01)
    assert out["improvement"] == pytest.approx(0.10)
    assert out["confidence"] == pytest.approx(10.0) and out["verdict"] == "likely real"
    text = ok(script(project, "confidence")).stdout
    assert "likely real" in text and "baseline 1.000000" in text and "best 0.900000" in text


def test_confidence_reports_a_marginal_latest_keep_without_advice(project):
    """The MAD verdict is reported; what to do comes only from the keep rule."""
    for status, v in [("keep", 1.00), ("discard", 1.02), ("discard", 0.98), ("discard", 1.04),
                      ("keep", 0.97)]:
        log_metric(project, status, v)
    out = json.loads(ok(script(project, "confidence", "--json")).stdout)
    assert out["verdict"] == "marginal" and "rerun" not in out
    text = ok(script(project, "confidence")).stdout
    assert "marginal" in text and "rerun:" not in text and "to confirm" not in text


def test_confidence_verdict_noise():
    runs = [{"run": i + 1, "status": s, "metric": m, "commit": "a" * 40}
            for i, (s, m) in enumerate([("keep", 1.0), ("discard", 1.05), ("discard", 0.95),
                                        ("keep", 0.99)])]
    c = stats.confidence(runs, "lower")
    assert c["verdict"] == "noise" and c["confidence"] < 1


def policy_runs():
    """A kept baseline measured 5 times (mean 1.00, noise sigma exactly 0.01 over 4 dof)
    and one discarded idea; throughput 1000 tok/s."""
    return [{"run": 1, "status": "keep", "metric": 1.00, "commit": "a" * 40, "target_sha": "b" * 64,
             "samples": [0.99, 1.01, 0.99, 1.01, 1.00], "metrics": {"avg_tok_sec": 1000}},
            {"run": 2, "status": "discard", "metric": 1.02, "commit": "c" * 40,
             "target_sha": "d" * 64, "samples": [1.02], "metrics": {"avg_tok_sec": 1000}}]


def decide(policy, value, tok=1000, samples=None):
    config = {"metric": "val_bpb", "direction": "lower", "policy": policy}
    return core_policy.recommend(config, policy_runs(), {"target_sha": "e" * 64, "samples": samples or [value],
                                                 "metrics": {"avg_tok_sec": tok}})


@pytest.mark.parametrize("policy,value,expected", [
    # kept state estimated near 1.00 (5 samples, sigma 0.01 over 4 dof): one run's
    # P(real gain) is 0.72 at 0.97, 0.35 at 0.985, 0.19 at 0.995
    ("noise-aware", 0.97, "keep"),       # 3 sigma better: kept on one run
    ("noise-aware", 0.985, "rerun"),     # 1.5 sigma: marginal, confirm on a new seed
    ("noise-aware", 0.995, "discard"),   # half a sigma: within the noise
    ("noise-aware", 1.01, "discard"),
    ("strict", 0.995, "keep"),
    ("strict", 1.001, "discard"),
])
def test_keep_policies(policy, value, expected):
    decision, reason = decide(policy, value)
    assert decision == expected, reason


def test_noise_aware_decides_a_confirmed_candidate_on_the_mean_of_its_samples():
    assert decide("noise-aware", None, samples=[0.985, 0.99])[0] == "keep"     # 1.6 SE >= 0.8
    assert decide("noise-aware", None, samples=[0.985, 1.005])[0] == "discard"  # 0.6 SE


# Seed 000's rule, on its own examples (kept: val_bpb 1.000 at 1000 tok/s).
@pytest.mark.parametrize("value,tok,expected", [
    (0.999, 900, "keep"),       # improved, throughput -10% (no more than -15%)
    (0.997, 800, "discard"),    # a gain under 0.005 and throughput -20%
    (0.994, 800, "keep"),       # a gain of 0.006 is worth -20%
    (1.0005, 1150, "keep"),     # within 0.001, throughput +15% (over +10%)
    (1.0005, 1050, "discard"),  # within 0.001 but only +5%
    (1.002, 1300, "keep"),      # regressed by under 0.003, throughput +30% (over +25%)
    (1.002, 1150, "discard"),   # regressed, only +15%
    (1.004, 1400, "discard"),   # regressed by 0.004: too much for any speed-up
    (0.999, 860, "rerun"),      # -14%: within throughput jitter (3-5%) of the -15% line
])
def test_quality_speed_policy(value, tok, expected):
    decision, reason = decide("quality-speed", value, tok)
    assert decision == expected, reason
    assert decide("balanced", value, tok)[0] == expected     # configs that say balanced still read


def test_unknown_policy_is_one_line_error():
    with pytest.raises(common.UserError, match="unknown keep policy 'fast'.*noise-aware"):
        decide("fast", 0.9)


def test_higher_is_better_sessions(tmp_path):
    p = make_project(tmp_path / "p")
    ok(script(p, "setup-session", "--tag", "acc", "--dataset", "classics", "--budget", "1",
              "--metric", "val_bpb", "--direction", "higher", "--policy", "strict"))
    run_and_log(p, "keep", "baseline")
    edit_target(p, VAL_BPB=1.5)
    assert "recommend: keep" in ok(script(p, "run-experiment")).stdout


# ------------------------------------------------------------------------ summarize

def test_summarize_writes_report_and_plot_and_keeps_next_steps(project):
    run_and_log(project, "keep", "baseline")
    edit_target(project, VAL_BPB=0.9)
    ok(script(project, "run-experiment"))
    ok(script(project, "log-experiment", "--status", "keep", "--description", "lower lr",
              "--asi", json.dumps({"category": "optimizer", "learned": "the lr was too high"})))
    run_and_log(project, "discard", "wider mlp", VAL_BPB=0.95)
    edit_target(project, MODE="crash")
    script(project, "run-experiment")
    ok(script(project, "log-experiment", "--status", "crash", "--description", "flash attn"))
    ok(script(project, "summarize"))
    md = (project / "autoresearch-summary.md").read_text()
    assert "| baseline | 1.000000 | 1 |" in md and "| best | 0.900000 | 2 |" in md
    assert "Improvement: 0.100000 (10.00%)" in md
    assert re.search(r"Branch `autoresearch/t1`, 20\d\d-\d\d-\d\d \d\d:\d\d", md)   # when it ran
    assert "research config:" in md and "policy     noise-aware" in md
    assert "| 1 | 2 | +0.100000 | 0.900000 |" in md and "| lower lr | the lr was too high |" in md
    assert "| optimizer | 1 | 1 | 0 | 2 |" in md and "| uncategorised | 2 | 0 | 1 | 3, 4 |" in md
    assert "**worse or no better (discarded)**: 1" in md and "run 3: wider mlp" in md
    assert "**crashed**: 1" in md and "run 4 `" in md and "flash attn" in md
    assert (project / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The agent fills the next steps; a later summary keeps them.
    (project / "autoresearch-summary.md").write_text(
        md.split("## Recommended next steps")[0] + "## Recommended next steps\n\n1. Try RoPE base 50k.\n")
    proc = ok(script(project, "summarize"))
    assert "progress.png is up to date" in proc.stdout
    assert "1. Try RoPE base 50k." in (project / "autoresearch-summary.md").read_text()


def load_script(name):
    """The module behind a plugin command (`summarize` runs summarize.py)."""
    import importlib
    return importlib.import_module(name.replace("-", "_"))


def append_runs(project, *runs):
    """Run records exactly as log-experiment writes them, with the fields a rerun leaves."""
    commit = git(project, "rev-parse", "HEAD")
    with common.Lock(str(project)):
        for n, (status, metric, extra) in enumerate(runs, 1):
            core_records.append_record(str(project), {
                "type": "run", "run": n, "commit": commit, "status": status, "metric": metric,
                "metrics": {}, "description": f"change {n}", "timestamp": common.now_iso(), **extra})


def test_summary_says_what_really_happened_to_a_better_but_discarded_run(project):
    append_runs(project,
                ("keep", 1.0, {}),
                ("discard", 0.995, {"samples": [0.99, 1.0], "recommendation": "discard"}),
                ("discard", 0.99, {"samples": [0.99], "recommendation": "rerun"}),
                ("discard", 1.02, {}))
    ok(script(project, "summarize", "--no-plot"))
    md = (project / "autoresearch-summary.md").read_text()
    assert "**better at first, not confirmed on a rerun (discarded)**: 1" in md
    assert "run 2: change 2" in md.split("not confirmed on a rerun (discarded)**")[1].split("**")[0]
    assert "**better once, discarded before the recommended rerun**: 1" in md
    assert "**worse or no better (discarded)**: 1" in md and "run 4: change 4" in md
    assert "The session is still open: /experiment:resume continues it" in md


def test_kept_changes_are_ranked_by_their_means_and_a_re_measure_is_not_a_change(project):
    # Change 2 was kept on a lucky draw (0.90); its re-measure says 0.96 (mean 0.93).
    # Change 4 (mean 0.91) then added 0.02 over 0.93, not 0.01 under the lucky 0.90.
    append_runs(project,
                ("keep", 1.0, {"samples": [1.0, 1.01, 0.99], "target_sha": "a" * 64}),
                ("keep", 0.90, {"samples": [0.90], "target_sha": "b" * 64}),
                ("keep", 0.96, {"samples": [0.96], "target_sha": "b" * 64, "description": "re-measure"}),
                ("keep", 0.91, {"samples": [0.90, 0.92], "target_sha": "c" * 64}))
    ok(script(project, "summarize", "--no-plot"))
    ranked = (project / "autoresearch-summary.md").read_text().split("ranked by gain")[1].split("\n## ")[0]
    assert "| 1 | 2 | +0.100000 | 0.900000 |" in ranked and "| 2 | 4 | +0.020000 | 0.910000 |" in ranked
    assert "re-measure" not in ranked and "| 3 |" not in ranked


def test_progress_plot_has_whole_run_numbers_labelled_keeps_and_marked_near_misses(project, monkeypatch):
    from matplotlib.figure import Figure
    append_runs(project, ("keep", 1.0, {"samples": [1.0, 1.01, 0.99], "target_sha": "a" * 64}),
                ("keep", 0.98, {}),
                ("discard", 0.97, {"samples": [0.97, 0.99], "recommendation": "discard"}),
                ("discard", 1.05, {}), ("keep", 0.96, {}))
    shown = {}
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (shown.setdefault("fig", fig),
                                                                   savefig(fig, *a, **k)))
    summarize = load_script("summarize")
    log = core_records.read_log(str(project))
    summarize.render_plot(str(project), log.config, log.runs, str(project / "p.png"))
    ax = shown["fig"].axes[0]
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 5]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert [t.get_text() for t in ax.texts] == ["change 2", "change 5"]    # kept, after the baseline
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "better, but not kept (see the summary)" in legend
    assert "noise: one run's sigma (0.0115)" in legend     # pooled over the repeats: the band


def test_setup_adds_nothing_to_the_exclude_file_when_gitignore_covers_it(tmp_path):
    p = make_project(tmp_path / "p")
    (p / ".gitignore").write_text("hang_child.pid\nresults.tsv\nautoresearch.jsonl\n"
                                  "autoresearch.md\nautoresearch-summary.md\nprogress.png\n"
                                  "run.log\n/autoresearch.stop\n.autoresearch/\n.*.tmp-*\n")
    git(p, "commit", "-qam", "ignore the session files")
    out = ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics")).stdout
    assert "exclude" not in out
    assert "autoresearch" not in (p / ".git" / "info" / "exclude").read_text()


# --------------------------------------------------------------------------- resume

def test_resume_restores_the_last_kept_commit_and_continues(project):
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "keep", "lower lr", VAL_BPB=0.9)
    kept = git(project, "rev-parse", "HEAD")
    edit_target(project, VAL_BPB=0.5)                   # interrupted mid-experiment
    ok(script(project, "run-experiment"))               # ... even after its run
    git(project, "checkout", "-q", "-b", "elsewhere")
    (project / "autoresearch.stop").write_text("")
    ok(script(project, "end-session"))
    proc = ok(script(project, "resume-session"))
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"
    assert git(project, "rev-parse", "HEAD") == kept and git(project, "status", "--porcelain") == ""
    assert "VAL_BPB = 0.9\n" in (project / "train.py").read_text()
    assert "2 runs logged; next is run 3" in proc.stdout and "best val_bpb 0.900000 (run 2" in proc.stdout
    saved = git(project, "for-each-ref", "--format=%(refname)", "refs/autoresearch/t1/")
    assert "interrupted-" in saved
    ref = [r for r in saved.splitlines() if "interrupted" in r][0]
    assert "VAL_BPB = 0.5" in git(project, "show", f"{ref}:train.py")
    assert not (project / "autoresearch.stop").exists()
    assert json.loads((project / ".autoresearch" / "state.json").read_text())["active"]
    assert not (project / ".autoresearch" / "pending.json").exists()
    run_and_log(project, "keep", "next", VAL_BPB=0.8)
    assert records(project)[-1]["run"] == 3


def test_resume_shows_a_finished_unlogged_run_and_one_command_records_it(tmp_path):
    project = strict_session(tmp_path)
    run_and_log(project, "keep", "baseline")
    edit_target(project, VAL_BPB=0.5)
    ok(script(project, "run-experiment"))               # finished; then the agent was killed
    out = ok(script(project, "resume-session")).stdout
    assert "run 2 finished but was never logged: val_bpb 0.500000, recommend keep" in out
    ref = re.search(r"the change it measured is saved as (\S+)", out).group(1)
    assert "VAL_BPB = 0.5" in git(project, "show", f"{ref}:train.py")
    assert "VAL_BPB = 1.0" in (project / "train.py").read_text()     # the tree is back on the kept state
    command = re.search(r"record it:  (\S+) (--unlogged \S+ --status keep)", out)
    assert command and command.group(1).endswith("scripts/log-experiment")
    args = command.group(2).split() + ["--description", "half the loss"]
    logged = ok(script(project, "log-experiment", *args)).stdout
    assert "logged run 2: keep val_bpb=0.500000" in logged
    assert [(r["run"], r["status"], r["metric"]) for r in records(project)[1:] if r["type"] == "run"] \
        == [(1, "keep", 1.0), (2, "keep", 0.5)]
    assert "VAL_BPB = 0.5" in git(project, "show", "HEAD:train.py")
    assert git(project, "status", "--porcelain") == ""
    again = script(project, "log-experiment", *args)    # the file is used up
    assert again.returncode == 2 and "not found" in again.stderr


def test_a_log_in_the_first_format_still_resumes(project):
    """A session log as the first release wrote it (no research config, `notes` for the
    asi, ISO timestamps, no events) resumes, logs, summarises and finalizes."""
    base = git(project, "rev-parse", "HEAD")
    first = records(project)[0]
    old_config = {k: first[k] for k in ("type", "version", "tag", "branch", "dataset", "target",
                                        "budget", "timeout", "metric", "direction", "policy",
                                        "max_iterations", "python", "base_commit", "fixed_files",
                                        "created")}
    old_runs = [{"type": "run", "run": 1, "commit": base, "status": "keep", "metric": 1.0,
                 "metrics": {"avg_tok_sec": 1000000}, "description": "baseline",
                 "timestamp": "2026-03-05T22:01:07Z", "run_status": "ok", "seconds": 1.2,
                 "recommendation": "keep", "notes": {"learned": "the stand-in gives 1.0"}}]
    git(project, "update-ref", "-d", "refs/autoresearch/t1/log")   # that release kept no copy in git
    (project / "autoresearch.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [old_config, *old_runs]))
    out = ok(script(project, "resume-session")).stdout
    assert "1 runs logged; next is run 2" in out and "(learned: the stand-in gives 1.0)" in out
    run_and_log(project, "keep", "lower", VAL_BPB=0.9)
    ok(script(project, "summarize", "--no-plot"))
    assert "| best | 0.900000 | 2 |" in (project / "autoresearch-summary.md").read_text()
    ok(script(project, "end-session"))
    assert "one commit on" not in script(project, "finalize").stdout   # no start branch recorded:
    assert "pass --onto BRANCH" in script(project, "finalize").stderr   # it asks for one
    assert "the 1 kept changes as one commit on main" in ok(script(project, "finalize", "--onto", "main")).stdout


def test_two_quick_resumes_keep_both_saved_changes(project):
    run_and_log(project, "keep", "baseline")
    saved = []
    for value in (0.5, 0.6):
        edit_target(project, VAL_BPB=value)
        out = ok(script(project, "resume-session")).stdout
        saved.append(re.search(r"saved uncommitted changes as (\S+)", out).group(1))
    assert saved[0] != saved[1]
    assert [f"VAL_BPB = {v}" in git(project, "show", f"{ref}:train.py")
            for v, ref in zip((0.5, 0.6), saved)] == [True, True]


def test_a_write_cut_short_leaves_nothing_git_sees_and_resume_sweeps_it(project):
    run_and_log(project, "keep", "baseline")
    stale = project / ".results.tsv.tmp-4242"            # a writer killed before its rename
    stale.write_text("commit\tval_bpb\n")
    assert git(project, "status", "--porcelain", "-uall") == ""
    out = ok(script(project, "resume-session")).stdout
    assert "removed 1 half-written temporary file(s)" in out and not stale.exists()
    assert (project / "results.tsv").read_text().count("\n") == 2      # the real one is intact


def test_resume_after_a_hand_reset_says_the_branch_was_behind(project):
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "keep", "lower lr", VAL_BPB=0.9)
    kept = git(project, "rev-parse", "HEAD")
    git(project, "reset", "-q", "--hard", "HEAD~1")     # by hand, behind the scripts' back
    out = ok(script(project, "resume-session")).stdout
    assert "the branch was behind the last kept commit" in out
    assert git(project, "rev-parse", "HEAD") == kept


def test_an_unlogged_run_is_not_recorded_once_the_log_moved_on(tmp_path):
    project = strict_session(tmp_path)
    run_and_log(project, "keep", "baseline")
    edit_target(project, VAL_BPB=0.5)
    ok(script(project, "run-experiment"))
    out = ok(script(project, "resume-session")).stdout
    unlogged = re.search(r"--unlogged (\S+)", out).group(1)
    run_and_log(project, "discard", "something else", VAL_BPB=1.1)
    proc = script(project, "log-experiment", "--unlogged", unlogged, "--status", "keep",
                  "--description", "late")
    assert proc.returncode == 2 and "measure it again instead: git checkout refs/autoresearch/" in proc.stderr
    assert len([r for r in records(project) if r["type"] == "run"]) == 2


def test_an_ended_session_resumes_with_a_higher_cap(tmp_path):
    project = make_project(tmp_path / "proj")
    ok(script(project, "setup-session", "--tag", "t1", "--dataset", "classics", "--budget", "1",
              "--max-iterations", "3"))
    for i in range(3):
        run_and_log(project, "discard", f"r{i}", VAL_BPB=1.1)
    ok(script(project, "end-session"))
    assert records(project)[-1]["event"] == "end"
    proc = script(project, "resume-session")
    assert proc.returncode == 2 and "resume with --max-iterations 23" in proc.stderr
    proc = script(project, "resume-session", "--max-iterations", "3")
    assert proc.returncode == 2 and "not above the 3 runs already logged" in proc.stderr
    out = ok(script(project, "resume-session", "--max-iterations", "5")).stdout
    assert "iteration cap: 5 runs (2 left)" in out
    assert records(project)[-1] == {**records(project)[-1], "event": "resume", "max_iterations": 5}
    run_and_log(project, "discard", "r4", VAL_BPB=1.1)
    assert records(project)[-1]["run"] == 4             # events do not count as runs


def start_hanging_run(project):
    """run-experiment on a target that hangs with a child; returns (runner, child pid)."""
    edit_target(project, MODE="hang")
    runner = subprocess.Popen([sys.executable, str(SCRIPTS / "run-experiment")], cwd=project,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = project / "hang_child.pid"
    deadline = time.monotonic() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the stand-in never started"
        time.sleep(0.1)
    return runner, int(pid_file.read_text())


def test_stopping_run_experiment_takes_the_run_down_with_it(project):
    """The caller's own timeout (the Bash tool's, say) must not leave training behind."""
    runner, child = start_hanging_run(project)
    runner.send_signal(signal.SIGTERM)
    runner.communicate(timeout=20)
    assert runner.returncode == 128 + signal.SIGTERM
    assert gone(child), "the run's child process outlived run-experiment"


def test_a_stop_signal_inside_the_wait_still_takes_the_run_down(project):
    """The signal can land while Popen.wait holds its lock (between its waitpid and its
    release). A handler that waited on the run there would wait for that lock forever."""
    edit_target(project, MODE="hang")
    driver = f"""
import os, signal, subprocess, sys
sys.path.insert(0, {str(SCRIPTS)!r})
from core import records, runner
try_wait, calls = subprocess.Popen._try_wait, []
def signalled_inside(self, flags):
    calls.append(flags)
    if len(calls) == 20:                     # the run is going by now: stop, lock held
        os.kill(os.getpid(), signal.SIGTERM)
    return try_wait(self, flags)
subprocess.Popen._try_wait = signalled_inside
config = records.read_config({str(project)!r})
runner.run_target({str(project)!r}, config, 60, 1)
"""
    proc = subprocess.run([sys.executable, "-c", driver], cwd=project, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert gone(int((project / "hang_child.pid").read_text()))


def test_scripts_switch_to_the_session_interpreter(tmp_path):
    """Called by a bare `python3`, the scripts re-run under the interpreter the session
    was set up with (the one that has matplotlib and trains)."""
    p = make_project(tmp_path / "p")
    wrapper = tmp_path / "session-python"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/calls"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics", "--budget", "1",
              "--python", str(wrapper)))
    ok(script(p, "run-experiment"))               # the run itself uses the session interpreter
    ok(script(p, "summarize", "--no-plot"))
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "prepare.py --dataset classics --verify"      # setup's data check
    assert "m.version('torch')" in calls[1]                           # its framework, recorded
    assert calls[2].endswith("run-experiment") and calls[3] == "train.py"
    assert calls[4].endswith("summarize --no-plot") and len(calls) == 5


def test_a_run_orphaned_by_a_killed_runner_is_stopped_next_time(project):
    """SIGKILL cannot be caught: the next run-experiment cleans up instead."""
    runner, child = start_hanging_run(project)
    runner.kill()
    runner.communicate(timeout=20)
    os.kill(child, 0)                                  # the orphan is still training
    edit_target(project, MODE="ok")
    proc = ok(script(project, "run-experiment"))
    assert "stopped a leftover run" in proc.stdout
    assert gone(child)


# ------------------------------------------------------------------------- finalize

def test_finalize_prints_the_plan_and_changes_nothing_without_yes(project):
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "keep", "lower lr", VAL_BPB=0.9)
    refused = script(project, "finalize")
    assert refused.returncode == 2 and "still active: end it first" in refused.stderr
    ok(script(project, "end-session"))
    before = git(project, "rev-parse", "main")
    out = ok(script(project, "finalize")).stdout
    assert "the 1 kept changes as one commit on main" in out
    assert "val_bpb 1.000000 -> 0.900000 (-10.00%)" in out and "- run 2 (+0.100000): lower lr" in out
    assert "git merge --squash autoresearch/t1" in out and "--yes" in out
    assert git(project, "rev-parse", "main") == before
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"


def test_finalize_squashes_the_kept_changes_onto_the_starting_branch(project):
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "keep", "lower lr", VAL_BPB=0.9)
    run_and_log(project, "discard", "wider", VAL_BPB=0.95)
    run_and_log(project, "keep", "even lower", VAL_BPB=0.8)
    kept_tree = git(project, "rev-parse", "autoresearch/t1^{tree}")
    before = git(project, "rev-parse", "main")
    ok(script(project, "end-session"))
    out = ok(script(project, "finalize", "--yes")).stdout
    assert "done; nothing was pushed" in out
    assert git(project, "rev-parse", "main~1") == before            # one new commit
    assert git(project, "rev-parse", "main^{tree}") == kept_tree     # exactly the kept code
    body = git(project, "log", "-1", "--format=%B", "main")
    assert "2 kept changes" in body and "lower lr" in body and "even lower" in body
    assert "wider" not in body
    assert git(project, "status", "--porcelain") == ""


def test_finalize_split_makes_one_branch_per_independent_change(project):
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "keep", "lower loss", VAL_BPB=0.9)
    with open(project / "train.py", "a") as f:                 # far from the first change
        f.write("# a faster epilogue\n")
    run_and_log(project, "keep", "epilogue", VAL_BPB=0.9)
    run_and_log(project, "keep", "faster", VAL_BPB=0.9, TOK_SEC=2000000)   # next to run 2's line
    ok(script(project, "end-session"))
    out = ok(script(project, "finalize", "--split", "--yes")).stdout
    base = records(project)[0]["base_commit"]
    for run in (2, 3):
        assert git(project, "rev-parse", f"autoresearch/t1-run{run}~1") == base
    alone = git(project, "show", "autoresearch/t1-run3:train.py")
    assert "a faster epilogue" in alone and "VAL_BPB = 1.0" in alone     # only its own change
    assert "VAL_BPB = 0.9" in git(project, "show", "autoresearch/t1-run2:train.py")
    assert "run 4 needs an earlier change" in out
    assert not git(project, "branch", "--list", "autoresearch/t1-run4")
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"


# ------------------------------------------------------------------ seed 001 format

def test_records_follow_seed_001_and_keep_the_full_hash(project):
    config = records(project)[0]
    assert (config["name"], config["metricName"], config["metricUnit"], config["bestDirection"]) \
        == ("t1", "val_bpb", "bpb", "lower")
    run_and_log(project, "keep", "baseline")
    edit_target(project, VAL_BPB=0.9)
    ok(script(project, "run-experiment"))
    ok(script(project, "log-experiment", "--status", "discard", "--description", "lower",
              "--asi", json.dumps({"learned": "x"})))
    r = records(project)[-1]
    assert {"run", "commit", "metric", "metrics", "status", "description", "timestamp",
            "segment", "confidence", "asi"} <= set(r)
    assert len(r["commit"]) == 7 and r["commit_sha"].startswith(r["commit"]) and len(r["commit_sha"]) == 40
    assert isinstance(r["timestamp"], int) and abs(r["timestamp"] - time.time()) < 120
    assert r["segment"] == 0 and r["asi"] == {"learned": "x"} and "notes" not in r
    assert git(project, "rev-parse", f"refs/autoresearch/t1/run-2") == r["commit_sha"]


def test_a_run_that_fails_its_checks_is_never_kept(tmp_path):
    p = make_project(tmp_path / "p")
    ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics", "--budget", "1",
              "--policy", "strict", "--checks", "grep -q 'VAL_BPB = 1' train.py || "
              "(echo 'test_model: expected the checked value' && exit 3)"))
    run_and_log(p, "keep", "baseline")
    edit_target(p, VAL_BPB=0.5)                          # better, but the checks fail
    proc = script(p, "run-experiment")
    assert proc.returncode == 1 and "status: checks_failed" in proc.stdout
    assert "exited 3" in proc.stdout and "test_model: expected the checked value" in proc.stdout
    refused = script(p, "log-experiment", "--status", "keep", "--description", "x")
    assert refused.returncode == 2 and "--status checks_failed" in refused.stderr
    ok(script(p, "log-experiment", "--status", "checks_failed", "--description", "half the loss"))
    r = records(p)[-1]
    assert r["status"] == "checks_failed" and r["metric"] == 0.5
    assert "VAL_BPB = 1.0" in (p / "train.py").read_text()           # reverted
    ok(script(p, "summarize", "--no-plot"))
    assert "**failed its checks (never kept)**: 1" in (p / "autoresearch-summary.md").read_text()


def test_a_progress_report_every_n_runs_in_autoresearch_md(tmp_path):
    p = make_project(tmp_path / "p")
    ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics", "--budget", "1",
              "--policy", "strict", "--progress-every", "3"))
    notes = p / "autoresearch.md"
    notes.write_text(notes.read_text().replace("## Ideas queue\n", "## Ideas queue\n\n- try RoPE base 50k\n- tie embeddings, or a\n  factorised head\n"))
    outs = [run_and_log(p, "keep", "baseline")[1].stdout]
    for i, value in enumerate((0.9, 0.95, 0.85, 0.99, 0.8)):
        outs.append(run_and_log(p, "keep" if value < 0.9 else "discard", f"idea {i}", VAL_BPB=value)[1].stdout)
    assert [("Progress after" in o) for o in outs] == [False, False, True, False, False, True]
    text = notes.read_text()
    assert text.count("## Progress after") == 1 and "## Progress after 6 runs" in text   # replaced, not piled up
    assert "6 runs, 3 kept" in text and "best against the baseline: +0.200000 (+20.00%)" in text
    assert "next: try RoPE base 50k; tie embeddings, or a factorised head" in text and "- try RoPE base 50k" in text
    assert "idea 4" in text.split("## Progress after 6 runs")[1]


def test_an_unlogged_run_of_a_scope_file_is_found_and_recorded(tmp_path):
    p = make_project(tmp_path / "p")
    (p / "helpers.py").write_text("FACTOR = 1\n")
    git(p, "add", "-A")
    git(p, "commit", "-qm", "helpers")
    ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics", "--budget", "1",
              "--policy", "strict", "--scope", "helpers.py"))
    run_and_log(p, "keep", "baseline")
    (p / "helpers.py").write_text("FACTOR = 2\n")
    edit_target(p, VAL_BPB=0.8)
    ok(script(p, "run-experiment"))                     # finished; never logged
    out = ok(script(p, "resume-session")).stdout
    assert (p / "helpers.py").read_text() == "FACTOR = 1\n"
    assert "git checkout refs/autoresearch/t/interrupted-" in out and "-- train.py helpers.py" in out
    args = re.search(r"record it:  \S+ (--unlogged \S+ --status keep)", out).group(1).split()
    ok(script(p, "log-experiment", *args, "--description", "both files"))
    assert git(p, "show", "HEAD:helpers.py") == "FACTOR = 2" and "VAL_BPB = 0.8" in git(p, "show", "HEAD:train.py")
