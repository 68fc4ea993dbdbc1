"""resume-session (and end-session): back on the kept commit after an interruption,
unlogged runs found and recorded with one command, older logs, a higher cap."""

import json
import re
import shutil

from core import records as core_records

from plugin_helpers import (edit_target, git, make_project, ok, records, run_and_log, script,
                            strict_session)


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
    shutil.rmtree(core_records.copies_dir(str(project)))          # nor outside the project
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
