"""The records attacked the way a hostile or careless agent would, with real git and
the real scripts: a line added to the log, git configured to run the agent's code
inside the scripts' own git calls, the log's git copy faked or deleted, a forged
result handed to --unlogged, a rewritten waiting result. Each is refused (one line
that says what to do) or recovered by resume-session, and the loop goes on."""

import json
import os
import re
import shutil
import stat
import subprocess

import pytest

from core import records as core_records
from plugin_helpers import edit_target, git, new_repo, ok, records, run_and_log, script, strict_session

FORGED_METRIC = 0.123456


@pytest.fixture
def session(tmp_path):
    """A strict session with a kept baseline: its log and copies written by the scripts."""
    p = strict_session(tmp_path)
    run_and_log(p, "keep", "baseline")
    return p


def runs(p):
    return [r for r in records(p) if r["type"] == "run"]


def forged_keep(p) -> bytes:
    """A valid-looking record of a keep no run measured, after the last real one."""
    last = runs(p)[-1]
    return (json.dumps({**last, "run": last["run"] + 1, "metric": FORGED_METRIC, "status": "keep",
                        "description": "forged", "samples": [FORGED_METRIC]}) + "\n").encode()


def refused(proc, *words):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and all(w in line for w in words), line
    return line


def assert_goes_on(p, description="after the attack"):
    """The loop goes on: a run and its log work, and nothing forged is in the log."""
    edit_target(p, VAL_BPB=0.9)
    ok(script(p, "run-experiment"))
    ok(script(p, "log-experiment", "--status", "keep", "--description", description))
    assert runs(p)[-1]["description"] == description
    assert FORGED_METRIC not in [r["metric"] for r in runs(p)]


# ------------------------------------------------------------- a line the scripts did not write

def test_an_appended_line_is_refused_and_resume_sets_it_aside(session):
    log = session / "autoresearch.jsonl"
    recorded = log.read_bytes()
    line = forged_keep(session)
    with open(log, "ab") as f:
        f.write(line)
    refused(script(session, "run-experiment"), "not the log the scripts wrote", "resume-session")
    refused(script(session, "log-experiment", "--status", "keep", "--metric", "0.1",
                    "--description", "x"), "not the log the scripts wrote")
    refused(script(session, "summarize", "--no-plot"), "not the log the scripts wrote")
    out = ok(script(session, "resume-session")).stdout
    aside = re.search(r"set aside 1 line\(s\) the scripts did not write, in (\S+)", out)
    assert aside and "restored autoresearch.jsonl" in out, out
    assert (session / aside.group(1)).read_bytes() == line
    assert log.read_bytes().startswith(recorded) and line not in log.read_bytes()
    assert_goes_on(session)


def test_a_log_replaced_with_another_sessions_tag_is_refused(session):
    """A whole new log under a tag that has no copies: the project's copy still decides."""
    log = session / "autoresearch.jsonl"
    config, *rest = log.read_text().splitlines(keepends=True)
    other = {**json.loads(config), "tag": "fresh", "branch": "autoresearch/fresh", "max_iterations": 999}
    log.write_text(json.dumps(other) + "\n" + "".join(rest))
    refused(script(session, "run-experiment"), "not the log the scripts wrote")
    ok(script(session, "resume-session"))
    assert records(session)[0]["tag"] == "t1" and records(session)[0]["max_iterations"] != 999


# ------------------------------------------- git configured to run the agent's code

HOOK = """#!/bin/sh
echo "$0" >> {marker}
echo '{line}' >> {log}
cat > /dev/null
exit 0
"""


def plant(p, tmp_path, how):
    """Configure git the way an agent with Bash could, so that git runs `payload`."""
    marker = tmp_path / "ran"
    payload = HOOK.format(marker=marker, line=forged_keep(p).decode().strip(), log=p / "autoresearch.jsonl")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for name in ("pre-commit", "post-commit", "post-checkout", "reference-transaction",
                 "post-index-change", "pre-auto-gc", "post-rewrite"):
        (hooks / name).write_text(payload)
        (hooks / name).chmod(0o755)
    program = hooks / "program"
    program.write_text(payload.replace("cat > /dev/null", "cat"))   # a filter passes its input on
    program.chmod(0o755)
    if how == "core.hooksPath":
        git(p, "config", "core.hooksPath", str(hooks))
    elif how == "core.fsmonitor":
        git(p, "config", "core.fsmonitor", str(program))
    elif how == "filter in .gitattributes":
        (p / ".gitattributes").write_text("*.py filter=tidy diff=tidy\n")
        git(p, "config", "filter.tidy.clean", str(program))
        git(p, "config", "filter.tidy.smudge", str(program))
        git(p, "config", "diff.tidy.textconv", str(program))
    elif how == "include.path":
        extra = tmp_path / "extra.gitconfig"
        extra.write_text(f"[core]\n\thooksPath = {hooks}\n\tfsmonitor = {program}\n"
                         f"[filter \"tidy\"]\n\tclean = {program}\n")
        (p / ".git" / "info" / "attributes").write_text("*.py filter=tidy\n")
        git(p, "config", "include.path", str(extra))
    elif how == "hooks in .git/hooks":
        for hook in hooks.iterdir():
            shutil.copy(hook, p / ".git" / "hooks" / hook.name)
    return marker


@pytest.mark.parametrize("how", ["core.hooksPath", "core.fsmonitor", "filter in .gitattributes",
                                 "include.path", "hooks in .git/hooks"])
def test_the_scripts_git_calls_run_no_program_the_repository_names(session, tmp_path, how):
    marker = plant(session, tmp_path, how)
    before = runs(session)
    edit_target(session, VAL_BPB=0.9)                   # a keep: commit
    ok(script(session, "run-experiment"))
    ok(script(session, "log-experiment", "--status", "keep", "--description", "kept"))
    edit_target(session, VAL_BPB=1.5)                   # a discard: commit, ref, reset
    ok(script(session, "run-experiment"))
    ok(script(session, "log-experiment", "--status", "discard", "--description", "worse"))
    edit_target(session, VAL_BPB=0.7)                   # interrupted: stash, ref, reset
    ok(script(session, "resume-session"))
    assert not marker.exists(), marker.read_text()
    assert [r["description"] for r in runs(session)] == [r["description"] for r in before] + ["kept", "worse"]


def test_git_settings_passed_in_the_environment_are_ignored(session, tmp_path):
    marker = plant(session, tmp_path, "none")
    env = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "core.hooksPath",
           "GIT_CONFIG_VALUE_0": str(tmp_path / "hooks"),
           "GIT_CONFIG_PARAMETERS": f"'core.hooksPath'='{tmp_path / 'hooks'}'"}
    edit_target(session, VAL_BPB=0.9)
    ok(script(session, "run-experiment", env=env))
    ok(script(session, "log-experiment", "--status", "keep", "--description", "kept", env=env))
    assert not marker.exists()


# --------------------------------------------------------- the log's git copy faked

# With the outside copy deleted as well, only `git replace` is still caught (objects are
# read with replace off); a log rewritten together with its only copy is what the
# sandbox, which keeps the agent's Bash out of .git and the user's cache, prevents.
@pytest.mark.parametrize("how, outside", [("update-ref", "kept"), ("symbolic-ref", "kept"),
                                          ("replace", "kept"), ("replace", "deleted too")])
def test_a_faked_git_copy_of_the_log_does_not_make_a_forged_line_pass(session, how, outside):
    ref = "refs/autoresearch/t1/log"
    log = session / "autoresearch.jsonl"
    recorded = log.read_bytes()
    forged = recorded + forged_keep(session)
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=session, input=forged,
                          capture_output=True, check=True).stdout.decode().strip()
    if how == "update-ref":
        git(session, "update-ref", ref, blob)
    elif how == "symbolic-ref":
        git(session, "update-ref", "refs/mine/log", blob)
        git(session, "symbolic-ref", ref, "refs/mine/log")
    else:
        git(session, "replace", "-f", git(session, "rev-parse", ref), blob)
    if outside == "deleted too":
        shutil.rmtree(core_records.copies_dir(str(session)))
    log.write_bytes(forged)
    refused(script(session, "run-experiment"), "resume-session")
    out = ok(script(session, "resume-session")).stdout
    assert FORGED_METRIC not in [r["metric"] for r in runs(session)], out
    assert subprocess.run(["git", "symbolic-ref", "-q", ref], cwd=session).returncode != 0  # a plain ref again
    assert_goes_on(session)
    assert git(session, "cat-file", "blob", git(session, "rev-parse", ref)) == log.read_text().strip()


# ------------------------------------------------- refs and objects deleted together

def test_records_whose_git_copies_were_pruned_come_back(session, tmp_path):
    edit_target(session, VAL_BPB=0.8)
    ok(script(session, "run-experiment"))               # a result waiting to be logged
    log = (session / "autoresearch.jsonl").read_bytes()
    pending = (session / ".autoresearch" / "pending.json").read_bytes()
    empty = new_repo(tmp_path / "empty")
    git(session, "fetch", "-q", "--prune", str(empty), "+refs/autoresearch/*:refs/autoresearch/*")
    assert git(session, "for-each-ref", "refs/autoresearch/") == ""
    git(session, "-c", "gc.reflogExpire=now", "-c", "gc.pruneExpire=now", "gc", "-q", "--prune=now")
    (session / "autoresearch.jsonl").unlink()
    (session / ".autoresearch" / "pending.json").unlink()
    out = ok(script(session, "resume-session")).stdout
    assert "restored autoresearch.jsonl from its copy" in out and "wrote refs/autoresearch/t1/log again" in out
    assert (session / "autoresearch.jsonl").read_bytes().startswith(log)
    assert "run 2 finished but was never logged: val_bpb 0.800000" in out     # the waiting run too
    unlogged = re.search(r"--unlogged (\S+) --status keep", out).group(1)
    assert json.loads((session / unlogged).read_text())["metrics"] == json.loads(pending)["metrics"]
    ok(script(session, "log-experiment", "--unlogged", unlogged, "--status", "keep", "--description", "0.8"))
    assert [r["metric"] for r in runs(session)] == [1.0, 0.8]


# ------------------------------------------------------- --unlogged takes the runner's only

def a_result(p, metric):
    """What an agent can make: a real waiting result with its numbers changed, the
    fields --unlogged wants, and the current code's hash."""
    run = ok(script(p, "run-experiment"))
    assert "status: ok" in run.stdout
    result = json.loads((p / ".autoresearch" / "pending.json").read_text())
    result["metrics"]["val_bpb"] = metric
    result["samples"] = [metric]
    result.update(ref=git(p, "rev-parse", "HEAD"), after_runs=len(runs(p)))
    return result


@pytest.mark.parametrize("where", ["forged.json", ".autoresearch/unlogged-run-20260101T000000Z.json"])
def test_unlogged_refuses_a_file_resume_did_not_set_aside(session, where):
    (session / where).write_text(json.dumps(a_result(session, FORGED_METRIC)))
    line = refused(script(session, "log-experiment", "--unlogged", where, "--status", "keep",
                          "--description", "forged"), "resume-session set aside")
    assert "nothing was recorded" in line and len(runs(session)) == 1


def test_unlogged_refuses_a_set_aside_result_that_was_changed(session):
    edit_target(session, VAL_BPB=0.8)
    ok(script(session, "run-experiment"))
    out = ok(script(session, "resume-session")).stdout
    path = re.search(r"--unlogged (\S+) --status keep", out).group(1)
    result = json.loads((session / path).read_text())
    result["metrics"]["val_bpb"] = result["samples"][-1] = FORGED_METRIC
    (session / path).write_text(json.dumps(result, indent=1) + "\n")
    refused(script(session, "log-experiment", "--unlogged", path, "--status", "keep",
                   "--description", "forged"), "was changed")
    assert len(runs(session)) == 1


# -------------------------------------------------------------- the waiting result

def rewrite_pending(p, metric):
    path = p / ".autoresearch" / "pending.json"
    pending = json.loads(path.read_text())
    pending["metrics"]["val_bpb"] = metric
    pending["samples"] = [metric]
    data = json.dumps(pending, indent=1) + "\n"
    path.write_text(data)
    return data


def test_a_waiting_result_rewritten_with_its_git_copy_is_refused(session):
    edit_target(session, VAL_BPB=0.95)
    ok(script(session, "run-experiment"))
    data = rewrite_pending(session, FORGED_METRIC)
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=session, input=data.encode(),
                          capture_output=True, check=True).stdout.decode().strip()
    git(session, "update-ref", "refs/autoresearch/t1/pending", blob)
    refused(script(session, "log-experiment", "--status", "keep", "--description", "forged"),
            "changed after run-experiment wrote it", "resume-session")
    assert len(runs(session)) == 1
    out = ok(script(session, "resume-session")).stdout
    assert "the run's own result is back in its place" in out
    assert "run 2 finished but was never logged: val_bpb 0.950000" in out
    assert_goes_on(session)


@pytest.mark.parametrize("how", ["rewritten", "written where none was"])
def test_a_rewritten_waiting_result_is_set_aside_and_the_loop_goes_on(session, how):
    pending = session / ".autoresearch" / "pending.json"
    if how == "rewritten":
        edit_target(session, VAL_BPB=0.95)
        ok(script(session, "run-experiment"))
        rewrite_pending(session, FORGED_METRIC)
    else:
        pending.write_text(json.dumps({"run_status": "ok", "metrics": {"val_bpb": FORGED_METRIC},
                                       "target_sha": "0" * 64, "samples": [FORGED_METRIC]}))
    forged = pending.read_text()
    refused(script(session, "run-experiment"), "pending.json", "resume-session")
    refused(script(session, "log-experiment", "--status", "keep", "--description", "x"), "pending.json")
    out = ok(script(session, "resume-session")).stdout
    aside = re.search(r"set aside \.autoresearch/pending\.json, which run-experiment did not write, as (\S+?)(;|\n)", out)
    assert aside, out
    assert (session / aside.group(1)).read_text() == forged
    assert_goes_on(session)
