"""The guard (PreToolUse) and loop keeper (Stop) hooks, fed the JSON Claude Code sends
them on stdin, against a real session in a temporary git repository."""
import json
import subprocess
import sys

import pytest

from plugin_helpers import HOOKS, make_project, ok, script


def new_session(path):
    p = make_project(path)
    ok(script(p, "setup-session", "--tag", "t1", "--dataset", "classics", "--budget", "1",
              "--max-iterations", "3"))
    return p


@pytest.fixture
def project(tmp_path):
    return new_session(tmp_path / "proj")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """One active session shared by the guard tests that only ask questions."""
    return new_session(tmp_path_factory.mktemp("guarded") / "proj")


def pre_tool_use(project, tool, tool_input, cwd=None):
    from plugin_helpers import hook
    proc = hook("guard.py", {
        "session_id": "s", "transcript_path": "/dev/null", "cwd": str(cwd or project),
        "permission_mode": "default", "hook_event_name": "PreToolUse",
        "tool_name": tool, "tool_input": tool_input, "tool_use_id": "toolu_1"})
    assert proc.returncode == 0, proc.stderr
    if not proc.stdout.strip():
        return None
    out = json.loads(proc.stdout)["hookSpecificOutput"]
    assert out["hookEventName"] == "PreToolUse" and out["permissionDecision"] == "deny"
    return out["permissionDecisionReason"]


def stop(project, active=False, cwd=None):
    from plugin_helpers import hook
    proc = hook("stop.py", {"session_id": "s", "transcript_path": "/dev/null",
                            "cwd": str(cwd or project), "permission_mode": "default",
                            "hook_event_name": "Stop", "stop_hook_active": active})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def test_hooks_json_uses_exec_form_with_the_plugin_root():
    config = json.loads((HOOKS / "hooks.json").read_text())
    handlers = [h for event in config["hooks"].values() for group in event for h in group["hooks"]]
    assert {h["args"][0] for h in handlers} == {"${CLAUDE_PLUGIN_ROOT}/hooks/guard.py",
                                                "${CLAUDE_PLUGIN_ROOT}/hooks/stop.py"}
    assert all(h["type"] == "command" and " " not in h["command"] for h in handlers)
    matcher = config["hooks"]["PreToolUse"][0]["matcher"].split("|")
    assert set(matcher) == {"Edit", "Write", "MultiEdit", "NotebookEdit", "Bash"}


# ---------------------------------------------------------------------------- guard

@pytest.mark.parametrize("tool,key,path,says", [
    ("Edit", "file_path", "prepare.py", "fixed harness"),
    ("Write", "file_path", "data_sources.py", "fixed harness"),
    ("MultiEdit", "file_path", "datasets/classics/book.txt", "fixed harness"),
    ("NotebookEdit", "notebook_path", "prepare.py", "fixed harness"),
    ("Write", "file_path", "autoresearch.jsonl", "log-experiment"),
    ("Edit", "file_path", "results.tsv", "log-experiment"),
    ("Write", "file_path", ".autoresearch/state.json", "only by the plugin's scripts"),
    ("Edit", "file_path", "pyproject.toml", "dependencies"),
    ("Write", "file_path", "requirements-dev.txt", "dependencies"),
])
def test_guard_denies_edits_of_fixed_and_session_files(guarded, tool, key, path, says):
    reason = pre_tool_use(guarded, tool, {key: str(guarded / path), "old_string": "a",
                                          "new_string": "b", "content": "x"})
    assert reason and says in reason


@pytest.mark.parametrize("path", ["train.py", "train_mlx.py", "autoresearch.md",
                                  "autoresearch-summary.md", "notes/idea.md", "/tmp/elsewhere.py"])
def test_guard_allows_the_target_and_the_notes(guarded, path):
    full = path if path.startswith("/") else str(guarded / path)
    assert pre_tool_use(guarded, "Edit", {"file_path": full}) is None


def test_guard_resolves_paths_from_a_subdirectory(guarded):
    sub = guarded / "datasets"
    assert "fixed harness" in pre_tool_use(guarded, "Bash", {"command": "echo x > ../prepare.py"}, cwd=sub)
    assert "fixed harness" in pre_tool_use(guarded, "Bash", {"command": "cd .. && rm prepare.py"}, cwd=sub)


@pytest.mark.parametrize("command", [
    "echo 'x = 1' > prepare.py",
    "cat patch >> data_sources.py",
    "python train.py 2> run.log",
    "sed -i 's/EVAL_TOKENS = .*/EVAL_TOKENS = 1/' prepare.py",
    "perl -pi -e 's/a/b/' data_sources.py",
    "cp /tmp/mine.py prepare.py",
    "mv prepare.py prepare_old.py",
    "rm -f autoresearch.jsonl",
    "rm -rf .autoresearch",
    "echo '{}' | tee -a autoresearch.jsonl",
    "truncate -s 0 results.tsv",
    "dd if=/dev/zero of=datasets/classics/book.txt count=1",
    "python -c \"open('prepare.py', 'w').write('')\"",
    "python3 -c 'import pathlib; pathlib.Path(\"data_sources.py\").write_text(\"\")'",
    "git rm prepare.py",
    "git clean -fdx",
    "git clean -X -f",
    "git stash --all",
    "true && cat > prepare.py <<'EOF'\nx\nEOF",
])
def test_guard_denies_bash_writes_to_protected_files(guarded, command):
    assert pre_tool_use(guarded, "Bash", {"command": command}) is not None


@pytest.mark.parametrize("command", [
    "pip install flash-attn",
    "pip3 install --upgrade torch",
    "python -m pip install einops",
    ".venv/bin/python -m pip install einops",
    "uv add einops",
    "uv pip install einops",
    "uv sync",
    "conda install -y numpy",
    "poetry add x",
    "cd /tmp && sudo apt-get install -y htop",
    "npm install left-pad",
])
def test_guard_denies_package_installs(guarded, command):
    reason = pre_tool_use(guarded, "Bash", {"command": command})
    assert reason and "installing packages is not allowed" in reason and "autoresearch.md" in reason


@pytest.mark.parametrize("command", [
    "cat prepare.py",
    "grep -n EVAL prepare.py data_sources.py",
    "tail -n 50 run.log",
    "cp prepare.py /tmp/prepare_copy.py",
    "git diff train.py",
    "git checkout -- prepare.py",
    "git reset --hard HEAD",
    "git clean -n",
    "python train.py > /tmp/out.log",
    "pip list",
    "pip show torch",
    "\"/x/scripts/log-experiment\" --status keep --description 'tried pip install x; rm prepare.py'",
    "\"/x/scripts/run-experiment\"",
    "echo 'unbalanced",
])
def test_guard_allows_reads_runs_and_restores(guarded, command):
    assert pre_tool_use(guarded, "Bash", {"command": command}) is None


def test_guard_is_off_without_an_active_session(project, tmp_path):
    ok(script(project, "end-session"))
    assert pre_tool_use(project, "Edit", {"file_path": str(project / "prepare.py")}) is None
    assert pre_tool_use(project, "Bash", {"command": "pip install x"}) is None
    ok(script(project, "resume-session"))
    assert pre_tool_use(project, "Bash", {"command": "pip install x"}) is not None
    plain = make_project(tmp_path / "plain")
    assert pre_tool_use(plain, "Edit", {"file_path": str(plain / "prepare.py")}) is None
    outside = tmp_path / "nowhere"
    outside.mkdir()
    assert pre_tool_use(outside, "Bash", {"command": "pip install x"}, cwd=outside) is None


def test_guard_fails_open_on_garbage_input():
    proc = subprocess.run([sys.executable, str(HOOKS / "guard.py")], input="not json",
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0 and proc.stdout == "" and "allowing it" in proc.stderr


# ----------------------------------------------------------------------------- stop

def test_stop_is_blocked_while_the_loop_should_continue(project):
    answer = stop(project)
    assert answer["decision"] == "block"
    assert "continue with run 1" in answer["reason"] and "0 of 3 runs" in answer["reason"]
    ok(script(project, "run-experiment"))
    answer = stop(project, active=True)                  # still blocks on later stops
    assert answer["decision"] == "block" and "log the finished run" in answer["reason"]
    ok(script(project, "log-experiment", "--status", "keep", "--description", "baseline"))
    answer = stop(project, active=True)
    assert "continue with run 2" in answer["reason"]
    assert "best val_bpb 1.000000 (run 1)" in answer["reason"]


def test_stop_goes_through_at_the_iteration_cap(project):
    for i in range(3):
        ok(script(project, "log-experiment", "--status", "discard", "--metric", "1",
                  "--description", f"r{i}"))
    answer = stop(project)
    assert "decision" not in answer and "iteration cap reached" in answer["systemMessage"]


def test_stop_goes_through_with_a_stop_file(project):
    (project / "autoresearch.stop").write_text("")
    answer = stop(project)
    assert "decision" not in answer and "autoresearch.stop found" in answer["systemMessage"]


def test_stop_goes_through_without_a_session(project, tmp_path):
    ok(script(project, "end-session"))
    assert stop(project) is None
    plain = tmp_path / "plain"
    plain.mkdir()
    assert stop(plain, cwd=plain) is None


def test_stop_fails_open_on_a_broken_log(project):
    (project / "autoresearch.jsonl").write_text("garbage\n")
    answer = stop(project)
    assert "decision" not in answer and "letting Claude stop" in answer["systemMessage"]
