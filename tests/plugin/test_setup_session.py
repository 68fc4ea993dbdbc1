"""setup-session: the branch, the research config, the session files, and the one-line
refusals of bad input."""

import json
import os
import sys

import pytest

from plugin_helpers import (edit_target, git, make_project, ok, records, run_and_log, script,
                            tsv_rows)


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


def test_setup_again_before_the_first_run_replaces_the_settings(project):
    """A wrong setting found before any run is logged: setup again with the same tag
    sets the session up anew, on one branch, from the same base."""
    base = records(project)[0]["base_commit"]
    proc = ok(script(project, "setup-session", "--tag", "t1", "--dataset", "classics", "--budget", "7"))
    assert "session t1 had no run logged: set up again with these settings" in proc.stdout
    config = records(project)[0]
    assert len(records(project)) == 1 and config["budget"] == 7 and config["base_commit"] == base
    assert config["start_branch"] == "main"
    assert git(project, "branch", "--list", "autoresearch/*").split() == ["*", "autoresearch/t1"]
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"
    ok(script(project, "run-experiment"))               # the new settings are the session's
    assert "budget 7s" in (project / "run.log").read_text()
    bad = script(project, "setup-session", "--tag", "t1", "--dataset", "classics", "--budget", "9")
    assert bad.returncode == 2 and records(project)[0]["budget"] == 7, "a run is waiting: kept"


def test_end_session_discard_throws_away_a_session_with_no_runs(project):
    ok(script(project, "end-session", "--discard"))
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(project, "branch", "--list", "autoresearch/*") == ""
    assert not (project / "autoresearch.jsonl").exists()
    assert list((project / ".autoresearch" / "archive").glob("t1-*/autoresearch.jsonl"))
    ok(script(project, "setup-session", "--tag", "t1", "--dataset", "classics"))   # the tag is free
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"


def test_end_session_discard_keeps_a_session_with_runs(project):
    ok(script(project, "run-experiment"))
    ok(script(project, "log-experiment", "--status", "keep", "--description", "baseline"))
    proc = script(project, "end-session", "--discard")
    assert proc.returncode == 2 and "has runs recorded: it is kept" in proc.stderr
    assert len(records(project)) == 2 and git(project, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"


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


def test_setup_adds_nothing_to_the_exclude_file_when_gitignore_covers_it(tmp_path):
    p = make_project(tmp_path / "p")
    (p / ".gitignore").write_text("hang_child.pid\nresults.tsv\nautoresearch.jsonl\n"
                                  "autoresearch.md\nautoresearch-summary.md\nautoresearch-summary.html\nprogress.png\nautoresearch-progress.png\n"
                                  "progress-test.png\n"
                                  "run.log\n/autoresearch.stop\n.autoresearch/\n.*.tmp-*\n")
    git(p, "commit", "-qam", "ignore the session files")
    out = ok(script(p, "setup-session", "--tag", "t", "--dataset", "classics")).stdout
    assert "exclude" not in out
    assert "autoresearch" not in (p / ".git" / "info" / "exclude").read_text()


def test_bad_setup_input_is_one_line_error(tmp_path):
    p = make_project(tmp_path / "p")
    for args, words in ((["--baseline-runs", "0"], "--baseline-runs must be 1 or more"),
                        (["--policy", "fast"], "unknown keep policy 'fast'")):
        proc = script(p, "setup-session", "--tag", "x", "--dataset", "classics", *args)
        assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.splitlines()) == 1
    ok(script(p, "setup-session", "--tag", "x", "--dataset", "classics", "--policy", "balanced",
              "--baseline-runs", "2"))
    config = records(p)[0]
    assert config["policy"] == "quality-speed" and config["baseline_runs"] == 2
