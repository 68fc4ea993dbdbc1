"""The fault suite: what a night throws at the loop, beyond the happy path.

Each fault gets a clear message and loses nothing. Where the faults are tested:

    concurrent log writers              test_log_experiment::test_concurrent_writers_lose_and_tear_nothing
    log-experiment killed mid-write     here: test_log_experiment_killed_at_any_moment_loses_nothing
    a truncated last jsonl line         test_log_experiment::test_a_truncated_last_line_is_completed_from_the_copy
    records forged or deleted           test_records_integrity (each class of attack on the records)
    a corrupt or truncated shard        test_prepare::test_a_corrupt_shard_is_detected_and_repaired
    a download that drops               test_prepare::test_downloads_survive_drops_errors_and_truncation
    a download that keeps failing       test_prepare::test_a_download_that_keeps_failing_keeps_what_finished
    tabs, newlines, $(...) in text      test_log_experiment::test_descriptions_with_tabs_newlines_and_shell_text_are_stored_exactly
    a tag that is not a branch name     test_setup_session::test_setup_rejects_a_tag_that_is_not_a_branch_name
    a missing dataset cache             test_setup_session::test_setup_prints_the_prepare_command_when_data_is_missing
                                        and test_prepare::test_bad_input_gets_one_clear_line
    a results file of 1,000 runs        here: test_a_log_of_a_thousand_runs_still_works
    a hung run and its children         test_night (step 6) and test_run_experiment::test_run_timeout_kills_the_whole_process_group
    a killed runner's orphaned run      test_run_experiment::test_a_run_orphaned_by_a_killed_runner_is_stopped_next_time"""

import json
import random
import subprocess
import sys
import time

import pytest

from plugin_helpers import (SCRIPTS, edit_target, fill_log, git, make_project, ok, records, script,
                            tsv_rows)


@pytest.fixture
def project(tmp_path):
    p = make_project(tmp_path / "proj")
    ok(script(p, "setup-session", "--tag", "faults", "--dataset", "classics", "--budget", "1"))
    ok(script(p, "run-experiment"))
    ok(script(p, "log-experiment", "--status", "keep", "--description", "baseline"))
    return p


def _parsed_lines(project):
    """Every complete line of the log; a torn last line (if any) is returned apart."""
    text = (project / "autoresearch.jsonl").read_text()
    lines, torn = text.split("\n"), None
    if lines[-1]:
        torn = lines.pop()
    return [json.loads(line) for line in lines if line], torn


def test_log_experiment_killed_at_any_moment_loses_nothing(project):
    """SIGKILL log-experiment at random moments (before, during and after it writes and
    moves git); then resume as the skill says. Every record written stays whole, a run
    never logged is set aside (not dropped), and git ends on the last kept commit."""
    rng = random.Random(1)
    attempts = []
    for i in range(12):
        edit_target(project, VAL_BPB=round(0.99 - i * 0.01, 6))
        ok(script(project, "run-experiment"))
        description = f"attempt {i}"
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / "log-experiment"), "--status",
                                 rng.choice(["keep", "discard"]), "--description", description],
                                cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.0, 0.25))
        proc.kill()
        proc.wait()
        attempts.append(description)

        resumed = ok(script(project, "resume-session"))
        runs = [r for r in _parsed_lines(project)[0] if r["type"] == "run"]
        assert [r["run"] for r in runs] == list(range(1, len(runs) + 1)), "run numbers stay dense and unique"
        logged = description in {r["description"] for r in runs}
        set_aside = "never logged" in resumed.stdout
        assert logged or set_aside, f"{description}: neither recorded nor set aside\n{resumed.stdout}"
        kept = [r for r in runs if r["status"] == "keep"]
        assert git(project, "rev-parse", "HEAD") == kept[-1]["commit_sha"], "git is on the last kept commit"
        assert git(project, "status", "--porcelain") == ""

    # One clean iteration afterwards: the log repairs itself and the table matches it.
    edit_target(project, VAL_BPB=0.5)
    ok(script(project, "run-experiment"))
    ok(script(project, "log-experiment", "--status", "keep", "--description", "after the storm"))
    lines, torn = _parsed_lines(project)
    assert torn is None
    runs = [r for r in lines if r["type"] == "run"]
    assert runs[-1]["description"] == "after the storm" and runs[-1]["run"] == len(runs)
    rows = tsv_rows(project)[1:]
    assert [row[4] for row in rows] == [r["status"] for r in runs]
    assert [row[5] for row in rows] == [" ".join(r["description"].split()) for r in runs]


def test_a_log_of_a_thousand_runs_still_works(tmp_path):
    project = make_project(tmp_path / "proj")
    ok(script(project, "setup-session", "--tag", "long", "--dataset", "classics", "--budget", "1"))
    fill_log(project, 1000)
    edit_target(project, VAL_BPB=0.1)
    ok(script(project, "run-experiment"))
    out = ok(script(project, "log-experiment", "--status", "keep", "--description", "run 1001")).stdout
    assert "logged run 1001" in out
    recs = records(project)
    assert len(recs) == 1 + 1001 and [r["run"] for r in recs[1:]] == list(range(1, 1002))
    rows = tsv_rows(project)
    assert len(rows) == 1 + 1001 and rows[-1][5] == "run 1001" and rows[-1][1] == "0.100000"
    summary = ok(script(project, "summarize"))
    text = (project / "autoresearch-summary.md").read_text()
    assert "0.100000" in text and "1001" in text, summary.stdout
    assert (project / "progress.png").read_bytes()[:4] == b"\x89PNG"
    conf = json.loads(ok(script(project, "confidence", "--json")).stdout)
    assert conf["best_run"] == 1001 and conf["verdict"] == "likely real"
    assert "1001 runs logged; next is run 1002" in ok(script(project, "resume-session")).stdout
