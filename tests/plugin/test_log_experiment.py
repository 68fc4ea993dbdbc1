"""log-experiment: keeps commit, discards and crashes reset, bad input is refused in one
line, text is stored exactly, concurrent writers and a torn last line lose nothing,
and the progress report every N runs."""

import json
import subprocess
import sys

import pytest

from plugin_helpers import (SCRIPTS, edit_target, git, make_project, ok, records, run_and_log,
                            script, tsv_rows)


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


def test_a_truncated_last_line_is_completed_from_the_copy(project):
    """A writer killed mid-line leaves the log's last record cut short. Its copies were
    written first, so every script reads the whole record, and the next write completes
    the file before it appends."""
    run_and_log(project, "keep", "baseline")
    path = project / "autoresearch.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole[:-40])                               # killed mid-line
    assert json.loads(ok(script(project, "confidence", "--json")).stdout)["best_run"] == 1
    ok(script(project, "run-experiment"))
    proc = ok(script(project, "log-experiment", "--status", "discard", "--description", "again"))
    assert "completed the last record" in proc.stderr
    assert path.read_bytes().startswith(whole)
    assert [r.get("run") for r in records(project)] == [None, 1, 2]     # every line parses again


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


def test_a_discard_names_the_files_it_puts_back(tmp_path):
    """The change was in a --scope file: that file is reset, not the target."""
    p = make_project(tmp_path / "p")
    (p / "knobs.py").write_text("LR = 0.01\n")
    git(p, "add", "knobs.py")
    git(p, "commit", "-qm", "knobs")
    ok(script(p, "setup-session", "--tag", "t1", "--dataset", "classics", "--budget", "1",
              "--policy", "strict", "--scope", "knobs.py"))
    run_and_log(p, "keep", "baseline")
    (p / "knobs.py").write_text("LR = 0.02\n")
    ok(script(p, "run-experiment"))
    out = ok(script(p, "log-experiment", "--status", "discard", "--description", "higher lr")).stdout
    assert "knobs.py reset to" in out and "train.py reset to" not in out, out
    assert (p / "knobs.py").read_text() == "LR = 0.01\n"


def test_end_session_under_the_cap_says_resume_goes_on_to_it(tmp_path):
    p = make_project(tmp_path / "p")
    ok(script(p, "setup-session", "--tag", "t1", "--dataset", "classics", "--budget", "1",
              "--policy", "strict", "--max-iterations", "6"))
    out = ok(script(p, "end-session")).stdout
    assert "0 runs," in out and "/experiment:resume continues to the cap of 6 (6 more runs)" in out, out
    assert "--max-iterations 26" not in out
    ok(script(p, "resume-session"))
    run_and_log(p, "keep", "baseline")
    out = ok(script(p, "end-session")).stdout
    assert "1 run," in out and "1 runs" not in out and "(5 more runs)" in out, out
