"""The agent's Bash in Claude Code's own sandbox: what setup writes into
.claude/settings.local.json, what it leaves of the person's settings, when it is taken
out, and, end to end with the real CLI and the real sandbox (bubblewrap), what the
agent's Bash can and cannot write while only the plugin's scripts run outside it.

Needs the Claude Code CLI, bubblewrap and socat (bash dev.sh test installs them): a
test that needs one of them fails where it is missing, it never skips."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from core import agent_sandbox
from plugin_helpers import (HOOKS, PLUGIN, SCRIPTS, claude_bin, git, make_project, ok, records,
                            script)
from plugin_helpers_model import ScriptedModel, text, tool, tool_results, user_text

OWNER = {"CLAUDE_CODE_SESSION_ID": "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"}
SETUP = ("--tag", "sb", "--dataset", "classics", "--budget", "1", "--baseline-runs", "1")


def need(*programs):
    """The programs a test needs, or a failure that names what to install."""
    missing = [p for p in programs if shutil.which(p) is None]
    claude = claude_bin()
    if claude is None:
        missing.append("the Claude Code CLI")
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: bash dev.sh test installs them "
                    "(apt-get install bubblewrap socat; the CLI into .tools/claude)")
    return claude


def settings(project):
    return json.loads((project / ".claude" / "settings.local.json").read_text())


def set_up(project, *args, env=None):
    return ok(script(project, "setup-session", *SETUP, *args, env={**OWNER, **(env or {})}))


def prompt(project, text="hello", conversation=OWNER["CLAUDE_CODE_SESSION_ID"]):
    """The person types something: the UserPromptSubmit hook runs."""
    proc = subprocess.run([sys.executable, str(HOOKS / "prompt.py")], input=json.dumps(
        {"session_id": conversation, "cwd": str(project), "hook_event_name": "UserPromptSubmit",
         "prompt": text}), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ the settings file

def test_setup_writes_the_sandbox_and_keeps_the_persons_settings(tmp_path):
    need("bwrap", "socat")
    project = make_project(tmp_path / "proj")
    (project / ".claude").mkdir()
    mine = {"model": "opus", "permissions": {"allow": ["Bash(make test)"], "deny": ["Read(./.env)"]},
            "sandbox": {"network": {"allowedDomains": ["example.com"]}}}
    (project / ".claude" / "settings.local.json").write_text(json.dumps(mine))
    out = set_up(project).stdout
    assert "agent bash sandboxed (bubblewrap)" in out and "only the plugin's scripts run outside it" in out

    written = settings(project)
    sandbox = written["sandbox"]
    assert (sandbox["enabled"], sandbox["autoAllowBashIfSandboxed"], sandbox["allowUnsandboxedCommands"],
            sandbox["failIfUnavailable"]) == (True, True, False, True)
    run = str(SCRIPTS / "run-experiment")
    assert {run, f"{run}:*"} <= set(sandbox["excludedCommands"])
    assert {f"Bash({run})", f"Bash({run}:*)"} <= set(written["permissions"]["allow"])
    assert not any(".py" in c for c in sandbox["excludedCommands"])        # commands, not modules
    denied = set(sandbox["filesystem"]["denyWrite"])
    for name in (".git", "autoresearch.jsonl", "results.tsv", "run.log", ".autoresearch", "prepare.py",
                 "data_sources.py", "datasets", "train_mlx.py"):
        assert str(project / name) in denied, name
    assert str(PLUGIN) in denied
    # .claude/ is left to Claude Code, which denies its own settings files by itself (a
    # read-only .claude/ would leave it nowhere to mount them); the e2e test shows it holds.
    assert str(project / ".claude") not in denied
    assert str(project / "train.py") not in denied and str(project / "autoresearch.md") not in denied
    # The person's own keys are all still there.
    assert written["model"] == "opus" and written["permissions"]["deny"] == ["Read(./.env)"]
    assert "Bash(make test)" in written["permissions"]["allow"]
    assert git(project, "status", "--porcelain") == ""          # the file is not shown as new


def test_the_settings_go_when_the_session_is_over_and_the_person_is_back(tmp_path):
    need("bwrap", "socat")
    project = make_project(tmp_path / "proj")
    (project / ".claude").mkdir()
    before = {"permissions": {"allow": ["Bash(make test)"]}, "sandbox": {"enabled": False}}
    (project / ".claude" / "settings.local.json").write_text(json.dumps(before))
    set_up(project)
    prompt(project)                                         # mid-session: nothing changes
    assert settings(project)["sandbox"]["enabled"] is True
    ok(script(project, "end-session"))
    assert settings(project)["sandbox"]["enabled"] is True  # the agent's own end: still on
    prompt(project, "/experiment:summary")                  # the person is back
    assert settings(project) == before

    fresh = make_project(tmp_path / "fresh")                # a file setup created goes whole
    set_up(fresh)
    ok(script(fresh, "end-session"))
    prompt(fresh)
    assert not (fresh / ".claude" / "settings.local.json").exists()


def test_resume_puts_the_sandbox_back(tmp_path):
    need("bwrap", "socat")
    project = make_project(tmp_path / "proj")
    set_up(project)
    ok(script(project, "end-session"))
    prompt(project)
    assert not (project / ".claude" / "settings.local.json").exists()
    ok(script(project, "resume-session", env=OWNER))
    assert settings(project)["sandbox"]["enabled"] is True


def test_without_bubblewrap_setup_says_what_is_left_open(tmp_path):
    """A machine without socat (or bwrap): no settings that would stop Claude Code from
    starting, and the research config says the agent's Bash is not sandboxed."""
    project = make_project(tmp_path / "proj")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("git", "bwrap"):
        if shutil.which(name):
            os.symlink(shutil.which(name), bin_dir / name)
    out = set_up(project, env={"PATH": str(bin_dir)}).stdout
    assert "agent bash NOT sandboxed: socat not installed" in out
    assert "a helper it writes and runs can change the records, .git and the harness" in out
    assert not (project / ".claude" / "settings.local.json").exists()


def test_a_broken_settings_file_is_reported_not_replaced(tmp_path):
    need("bwrap", "socat")
    project = make_project(tmp_path / "proj")
    (project / ".claude").mkdir()
    (project / ".claude" / "settings.local.json").write_text("{ not json")
    proc = script(project, "setup-session", *SETUP, env=OWNER)
    assert proc.returncode == 2 and "settings.local.json is not readable JSON" in proc.stderr
    assert (project / ".claude" / "settings.local.json").read_text() == "{ not json"
    assert git(project, "branch", "--list", "autoresearch/sb") == ""     # setup undone


# -------------------------------------------------- end to end: the CLI and its sandbox

HELPER = '''\
import errno, os, subprocess, sys
print("pid", os.getpid())
for path in ("autoresearch.jsonl", ".autoresearch/state.json", "prepare.py", ".git/HEAD",
             ".claude/settings.local.json", "run.log", sys.argv[1]):
    try:
        with open(path, "a") as f:
            f.write("# forged\\n")
        print(path, "WRITTEN")
    except OSError as e:
        print(path, errno.errorcode.get(e.errno), e.strerror)
os.makedirs("notes", exist_ok=True)
open("notes/scratch.txt", "w").write("mine")
print("scratch WRITTEN")
ref = subprocess.run(["git", "update-ref", "refs/autoresearch/sb/forged", "HEAD"],
                     capture_output=True, text=True)
print("update-ref", ref.returncode, ref.stderr.strip()[-120:])
'''


def drive(claude, project, home, prompt_text, steps, *args):
    with ScriptedModel(steps) as model:
        proc = subprocess.run(
            [claude, "-p", prompt_text, "--plugin-dir", str(PLUGIN), "--output-format", "stream-json",
             "--verbose", *args], cwd=project, capture_output=True, text=True, timeout=60,
            env=model.client_env(str(home)))
    assert model.errors == [], model.errors
    assert model.finished, f"the CLI stopped after {model.step} of {len(steps)} steps:\n" \
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    return proc


def test_the_agents_bash_cannot_write_the_records_while_the_scripts_can(tmp_path):
    claude = need("bwrap", "socat")
    project = make_project(tmp_path / "proj")
    set_up(project)
    home = tmp_path / "home"
    home.mkdir()
    scripts = str(SCRIPTS)
    seen = {}

    def shell_append(body):      # writes whose target the guard cannot read: the OS refuses
        return [tool("Bash", command='printf forged >> "$(echo autoresearch).jsonl"; '
                                     "cat /dev/null > `echo prepare`.py; echo pid $$")]

    def write_helper(body):
        seen["shell"] = tool_results(body)[0]["text"]
        return [tool("Write", file_path=str(project / "helper.py"), content=HELPER)]

    def run_helper(body):
        return [tool("Bash", command="python3 helper.py train.py")]

    def read_target(body):
        seen["helper"] = tool_results(body)[0]["text"]
        return [tool("Read", file_path=str(project / "train.py"))]

    def edit_target(body):
        return [tool("Edit", file_path=str(project / "train.py"), old_string="TOK_SEC = 1000000",
                     new_string="TOK_SEC = 1000001")]

    def undo_by_git(body):        # git's index is read-only: git show is the way back
        seen["edit"] = tool_results(body)[0]
        return [tool("Bash", command="git checkout -- train.py; git show HEAD:train.py > train.py && echo shown")]

    def wrapped_script(body):     # outside the sandbox only alone: the guard refuses the rest
        seen["git"] = tool_results(body)[0]["text"]
        return [tool("Bash", command=f'PYTHONPATH=/tmp "{scripts}/run-experiment"')]

    def run_baseline(body):
        seen["wrapped"] = tool_results(body)[0]
        return [tool("Bash", command=f'"{scripts}/run-experiment"', timeout=600000)]

    def log_baseline(body):
        seen["run"] = tool_results(body)[0]["text"]
        return [tool("Bash", command=f'"{scripts}/log-experiment" --status keep --description baseline')]

    def done(body):
        seen["log"] = tool_results(body)[0]["text"]
        return [text("Baseline logged.")]

    drive(claude, project, home, "go on", [shell_append, write_helper, run_helper, read_target, edit_target,
                                           undo_by_git, wrapped_script, run_baseline, log_baseline,
                                           done], "--allowedTools", "Write,Edit")
    assert "autoresearch.jsonl: Read-only file system" in seen["shell"], seen["shell"]
    assert "prepare.py: Read-only file system" in seen["shell"]
    assert "pid 2" in seen["shell"]                              # its own PID namespace
    helper = seen["helper"]
    for path in ("autoresearch.jsonl", ".autoresearch/state.json", "prepare.py", ".git/HEAD",
                 ".claude/settings.local.json"):
        assert f"{path} EROFS Read-only file system" in helper, helper
    assert "run.log EACCES" in helper       # not there yet: nothing may take its place
    assert "train.py WRITTEN" in helper and "scratch WRITTEN" in helper     # the target and scratch
    assert "update-ref 0" not in helper
    assert not seen["edit"]["is_error"], seen["edit"]           # the Edit tool writes the target
    assert "index.lock': Read-only file system" in seen["git"] and "shown" in seen["git"]
    assert seen["wrapped"]["is_error"] and "only when called alone" in seen["wrapped"]["text"]
    assert "status: ok run 1" in seen["run"] and "logged run 1: keep" in seen["log"]
    assert "forged" not in (project / "autoresearch.jsonl").read_text()
    assert "forged" not in (project / "prepare.py").read_text()
    assert (project / "train.py").read_text() == git(project, "show", "HEAD:train.py") + "\n"   # undone
    assert [r["status"] for r in records(project) if r["type"] == "run"] == ["keep"]
    assert git(project, "for-each-ref", "refs/autoresearch/sb/forged") == ""


def test_the_sandbox_holds_in_the_conversation_that_set_it_up(tmp_path):
    """/experiment:model in a project with no .claude/ yet: setup runs through the CLI,
    and the agent's next Bash command already runs in the sandbox (Claude Code watched
    no .claude/ there: setup makes it read its settings again)."""
    claude = need("bwrap", "socat")
    project = make_project(tmp_path / "proj")
    assert not (project / ".claude").exists()
    home = tmp_path / "home"
    home.mkdir()
    seen = {}

    def setup(body):
        line = [l for l in user_text(body).splitlines() if "/scripts/setup-session\" --tag" in l][0]
        command = line.strip().replace("[--dataset <dataset>] [options]",
                                       "--dataset classics --budget 1 --baseline-runs 1")
        return [tool("Bash", command=command, timeout=600000)]

    def probe(body):
        seen["setup"] = tool_results(body)[0]["text"]
        time.sleep(2)               # Claude Code takes a changed settings file after 1 s of quiet
        return [tool("Bash", command='printf forged >> "$(echo autoresearch).jsonl"; '
                                     "git checkout -q -- train.py; echo pid $$")]

    def try_to_stop(body):
        seen["probe"] = tool_results(body)[0]["text"]
        return [text("Done for now.")]

    def person_stops(body):
        assert "continue with run 1" in user_text(body)
        (project / "autoresearch.stop").write_text("")
        return [text("Stopping as asked.")]

    drive(claude, project, home, "/experiment:model sb classics --budget 1",
          [setup, probe, try_to_stop, person_stops])
    assert "agent bash sandboxed (bubblewrap)" in seen["setup"], seen["setup"]
    assert "Read-only file system" in seen["probe"] and "pid 2" in seen["probe"], seen["probe"]
    assert "forged" not in (project / "autoresearch.jsonl").read_text()
    assert records(project)[-1]["event"] == "end"
    assert settings(project)["sandbox"]["enabled"] is True     # until the person is back
    prompt(project)
    assert not (project / ".claude" / "settings.local.json").exists()
