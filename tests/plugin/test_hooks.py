"""The guard (PreToolUse) and loop keeper (Stop) hooks, fed the JSON Claude Code sends
them on stdin, against a real session in a temporary git repository."""

import json
import subprocess
import sys

import pytest

from core import common, records as core_records
from plugin_helpers import HOOKS, PLUGIN, git, make_project, ok, records, script, set_up_project


OWNER = {"CLAUDE_CODE_SESSION_ID": "s"}     # the conversation that runs the loop


def new_session(path):
    return set_up_project(path, "--tag", "t1", "--dataset", "classics", "--budget", "1",
                          "--max-iterations", "3", env=OWNER)


@pytest.fixture
def project(tmp_path):
    return new_session(tmp_path / "proj")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """One active session shared by the guard tests that only ask questions."""
    return new_session(tmp_path_factory.mktemp("guarded") / "proj")


def pre_tool_use(project, tool, tool_input, cwd=None, conversation="s"):
    from plugin_helpers import hook
    proc = hook("guard.py", {
        "session_id": conversation, "transcript_path": "/dev/null", "cwd": str(cwd or project),
        "permission_mode": "default", "hook_event_name": "PreToolUse",
        "tool_name": tool, "tool_input": tool_input, "tool_use_id": "toolu_1"})
    assert proc.returncode == 0, proc.stderr
    if not proc.stdout.strip():
        return None
    out = json.loads(proc.stdout)["hookSpecificOutput"]
    assert out["hookEventName"] == "PreToolUse" and out["permissionDecision"] == "deny"
    return out["permissionDecisionReason"]


def stop(project, active=False, cwd=None, conversation="s"):
    from plugin_helpers import hook
    proc = hook("stop.py", {"session_id": conversation, "transcript_path": "/dev/null",
                            "cwd": str(cwd or project), "permission_mode": "default",
                            "hook_event_name": "Stop", "stop_hook_active": active})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def test_hooks_json_uses_exec_form_with_the_plugin_root():
    config = json.loads((HOOKS / "hooks.json").read_text())
    handlers = [h for event in config["hooks"].values() for group in event for h in group["hooks"]]
    assert {h["args"][-1] for h in handlers} == {"${CLAUDE_PLUGIN_ROOT}/hooks/guard.py",
                                                 "${CLAUDE_PLUGIN_ROOT}/hooks/session_start.py",
                                                 "${CLAUDE_PLUGIN_ROOT}/hooks/stop.py",
                                                 "${CLAUDE_PLUGIN_ROOT}/hooks/prompt.py"}
    assert all(h["type"] == "command" and " " not in h["command"] for h in handlers)
    assert {tuple(h["args"][:-1]) for h in handlers} == {("${CLAUDE_PLUGIN_ROOT}/hooks/run.sh",)}
    matcher = config["hooks"]["PreToolUse"][0]["matcher"].split("|")
    assert set(matcher) == {"Edit", "Write", "MultiEdit", "NotebookEdit", "Bash"}


def test_the_hooks_start_past_a_version_managers_shim(tmp_path):
    """run.sh starts the first python3 on PATH that is not a shim (pyenv's costs ~50 ms
    a start, on every tool call), without site-packages or PYTHON* variables."""
    shims, real = tmp_path / "pyenv" / "shims", tmp_path / "bin"
    shims.mkdir(parents=True)
    real.mkdir()
    (shims / "python3").write_text("#!/bin/sh\necho shim\n")
    (shims / "python3").chmod(0o755)
    (real / "python3").symlink_to(sys.executable)
    probe = tmp_path / "probe.py"
    probe.write_text("import sys, os; print(sys.executable, sys.flags.no_site, sys.flags.ignore_environment)")
    proc = subprocess.run(["sh", str(HOOKS / "run.sh"), str(probe)], capture_output=True, text=True,
                          env={"PATH": f"{shims}:{real}:/usr/bin:/bin", "PYTHONPATH": "/nowhere"})
    assert proc.stdout.split() == [str(real / "python3"), "1", "1"], proc.stdout + proc.stderr


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


@pytest.mark.parametrize("path", ["train.py", "autoresearch.md", "autoresearch-summary.md",
                                  "notes/idea.md", "/tmp/elsewhere.py"])
def test_guard_allows_the_target_and_the_notes(guarded, path):
    full = path if path.startswith("/") else str(guarded / path)
    assert pre_tool_use(guarded, "Edit", {"file_path": full}) is None


def test_guard_keeps_edits_to_the_target_and_its_scope(tmp_path):
    p = make_project(tmp_path / "proj")
    (p / "model_utils.py").write_text("X = 1\n")
    (p / "eval_extra.py").write_text("Y = 1\n")
    git(p, "add", "-A")
    git(p, "commit", "-qm", "more files")
    ok(script(p, "setup-session", "--tag", "t1", "--dataset", "classics", "--scope", "model_utils.py",
              "--read-only", "eval_extra.py", env=OWNER))
    assert pre_tool_use(p, "Edit", {"file_path": str(p / "model_utils.py")}) is None
    reason = pre_tool_use(p, "Edit", {"file_path": str(p / "train_mlx.py")})
    assert "outside this session's scope (train.py, model_utils.py)" in reason and "--scope" in reason
    assert "fixed harness" in pre_tool_use(p, "Write", {"file_path": str(p / "eval_extra.py")})
    assert "fixed harness" in pre_tool_use(p, "Bash", {"command": "echo x >> eval_extra.py"})


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
    "git reset --hard HEAD~1",
    "git stash",
    "git clean -f",
    "git checkout HEAD~1 -- prepare.py",
    "git restore --source HEAD~2 -- data_sources.py",
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
    "git checkout HEAD -- train.py",
    "git clean -n",
    "git log --oneline -5",
    "python train.py > /tmp/out.log",
    "pip list",
    "pip show torch",
    "\"/x/scripts/log-experiment\" --status keep --description 'tried pip install x; rm prepare.py'",
    "\"/x/scripts/run-experiment\"",
    "echo 'unbalanced",
])
def test_guard_allows_reads_runs_and_restores(guarded, command):
    assert pre_tool_use(guarded, "Bash", {"command": command}) is None


# The classes of what the guard refuses, each in spellings no earlier list named.

IN_PLACE_EDITS = ["sed -i 's/a/b/' {f}", "sed -Ei 's/a/b/' {f}", "sed -ni.bak 'p' {f}",
                  "sed --in-place=.orig -e 's/a/b/' {f}", "gsed -i -e 's/a/b/' {f}",
                  "perl -pi -e 's/a/b/' {f}", "perl -0pi -e 's/a/b/' {f}", "perl -0777 -pi.bak -e 's/a/b/' {f}",
                  "perl -i -pe 's/a/b/' {f}", "perl -wnli -e 'print' {f}", "ruby -pi -e 'sub(/a/, %q(b))' {f}",
                  "gawk -i inplace '{{print}}' {f}", "awk -i inplace '{{print}}' {f}"]


@pytest.mark.parametrize("edit", IN_PLACE_EDITS)
def test_guard_denies_in_place_edits_in_any_spelling(guarded, edit):
    for target in ("prepare.py", "autoresearch.jsonl", str(PLUGIN / "scripts" / "core" / "runner.py")):
        assert pre_tool_use(guarded, "Bash", {"command": edit.format(f=target)}), (edit, target)
    # Several files at once: the plugin's checks with the harness, as one command.
    both = edit.format(f=f"{PLUGIN / 'scripts' / 'core' / 'runner.py'} prepare.py")
    assert pre_tool_use(guarded, "Bash", {"command": both})
    assert pre_tool_use(guarded, "Bash", {"command": edit.format(f="train.py")}) is None


@pytest.mark.parametrize("command", ["sed -n 1,20p prepare.py", "sed -e 's/i/j/' prepare.py",
                                     "perl -ne 'print if /EVAL/' prepare.py", "awk '{print $1}' results.tsv",
                                     "ruby -e 'puts File.read(%q(prepare.py))'"])
def test_guard_allows_editors_that_only_read(guarded, command):
    assert pre_tool_use(guarded, "Bash", {"command": command}) is None


@pytest.fixture(scope="module")
def links(guarded):
    """Links in the project to what the guard protects, made before the session (or by
    a command the guard could not read)."""
    for name, to in (("cfg", ".claude"), ("harness.py", "prepare.py"), ("gitdir", ".git"),
                     ("log", "autoresearch.jsonl"), ("state", ".autoresearch"),
                     ("plugin", str(PLUGIN))):
        if not (guarded / name).is_symlink():
            (guarded / name).symlink_to(to)
    (guarded / ".claude").mkdir(exist_ok=True)
    return guarded


@pytest.mark.parametrize("command", ["echo '{{}}' > cfg/settings.local.json", "cat x >> harness.py",
                                     "echo ref > gitdir/refs/heads/main", "tee -a log < /tmp/line",
                                     "cp /tmp/s.json state/state.json", "rm plugin/hooks/guard.py",
                                     "sed -i 's/deny/allow/' plugin/hooks/guard.py",
                                     "python3 -c \"open('cfg/settings.local.json', 'w')\""])
def test_guard_denies_writes_through_links_to_what_it_protects(links, command):
    assert pre_tool_use(links, "Bash", {"command": command.format()}), command


@pytest.mark.parametrize("path", ["cfg/settings.local.json", "harness.py", "gitdir/config",
                                  "log", "state/pending.json", "plugin/hooks/guard.py"])
def test_guard_denies_the_edit_tools_through_links(links, path):
    assert pre_tool_use(links, "Write", {"file_path": str(links / path), "content": "x"}), path


@pytest.mark.parametrize("command", ["ln -s .claude c2", "ln -sf ./.claude c3", "ln -s prepare.py p.py",
                                     "ln prepare.py hard.py", "ln -sfn .git g2", "cp -s prepare.py p2.py",
                                     "cp -l autoresearch.jsonl l2", "link prepare.py p3.py",
                                     "python3 -c \"import os; os.symlink('.claude', 'c4')\""])
def test_guard_denies_making_links_to_what_it_protects(guarded, command):
    assert pre_tool_use(guarded, "Bash", {"command": command}), command


def test_guard_allows_links_of_the_agents_own(guarded):
    assert pre_tool_use(guarded, "Bash", {"command": "ln -s /tmp/data data_link"}) is None
    assert pre_tool_use(guarded, "Bash", {"command": "ln -sf notes/idea.md idea.md"}) is None


@pytest.mark.parametrize("command", [
    "pip3.11 install einops", ".venv/bin/pip install einops", "/usr/bin/pip3 install -U torch",
    "python -m pip install einops", "python3.11 -mpip install einops", ".venv/bin/python -m pip install x",
    "env PIP_INDEX_URL=http://x pip install y", "python -m ensurepip", "python3 -m uv pip install x",
    "uv run --with einops python train.py", "uv run --with-requirements r.txt train.py", "uvx ruff",
    "uv tool run black", "uv pip sync r.txt", "pipx run black", "pip uninstall -y numpy",
    "pip download torch -d wheels", "conda create -n x numpy", "mamba update numpy", "npx cowsay",
    "pnpm dlx x", "poetry install", "pdm sync", "pipenv install x",
    "python -c 'import subprocess; subprocess.run([\"pip\", \"install\", \"x\"])'",
    "python3 - <<'PY'\nimport pip._internal\nPY", "xargs -a reqs.txt pip install",
    "bash -c 'pip3 install x'", "nice -n 5 uv add einops",
])
def test_guard_denies_package_installs_in_any_spelling(guarded, command):
    reason = pre_tool_use(guarded, "Bash", {"command": command})
    assert reason and "installing packages is not allowed" in reason, command


@pytest.mark.parametrize("command", ["pip3.11 list", "pip freeze", "python -m pip show torch",
                                     "uv run train.py", "uv --version", "uv pip list", "uv tree",
                                     "python -m pytest -q", "conda list"])
def test_guard_allows_looking_at_packages(guarded, command):
    assert pre_tool_use(guarded, "Bash", {"command": command}) is None


SCRIPT = str(PLUGIN / "scripts" / "run-experiment")
LOG_SCRIPT = str(PLUGIN / "scripts" / "log-experiment")


@pytest.mark.parametrize("command", [
    f'PYTHONPATH=/tmp "{SCRIPT}"', f'"{SCRIPT}"; echo $?', f'cd /tmp && "{SCRIPT}"',
    f'timeout 900 "{SCRIPT}"', f'env -i "{SCRIPT}"', f'"{SCRIPT}" > /tmp/out.txt', f'"{SCRIPT}" | tail -3',
    f'"{SCRIPT}" && rm -rf /tmp/x', f'true\n"{SCRIPT}"', f'"{LOG_SCRIPT}" --description "$(cat x)"',
    f"{LOG_SCRIPT} --description `id`", f'"{SCRIPT}" & sleep 1', f'("{SCRIPT}")',
])
def test_guard_lets_the_scripts_run_outside_the_sandbox_only_alone(guarded, command):
    """Claude Code runs a command that starts with a script's path outside the sandbox,
    so everything in such a command would escape it: only the script alone may run so."""
    reason = pre_tool_use(guarded, "Bash", {"command": command})
    assert reason and "only when called alone" in reason, command


@pytest.mark.parametrize("command", [
    f'"{SCRIPT}"', f"{SCRIPT}", f'"{LOG_SCRIPT}" --status keep --description \'a; b $x `y`\'',
    f'"{LOG_SCRIPT}" --status discard --description "wider MLP" --asi \'{{"category": "architecture"}}\'',
    f'cat "{PLUGIN}/scripts/run_experiment.py"', f"grep -n budget {PLUGIN}/scripts/core/runner.py",
    f'"{SCRIPT}"  # the baseline',
])
def test_guard_allows_the_scripts_alone_and_reading_them(guarded, command):
    assert pre_tool_use(guarded, "Bash", {"command": command}) is None


def test_guard_reads_a_new_line_as_the_end_of_a_command(guarded):
    assert pre_tool_use(guarded, "Bash", {"command": "echo start\nrm autoresearch.jsonl"})
    assert pre_tool_use(guarded, "Bash", {"command": "echo 'a\nb' > notes.txt"}) is None


@pytest.mark.parametrize("command", ["git config core.hooksPath /tmp/hooks", "git config core.fsmonitor x",
                                     "git fetch --prune /tmp/empty", "git -c gc.pruneExpire=now gc",
                                     "git symbolic-ref HEAD refs/heads/other", "git replace HEAD abc",
                                     "git checkout main", "git switch -c other", "git checkout -b other"])
def test_guard_denies_git_that_moves_the_branch_or_reaches_its_records(guarded, command):
    assert pre_tool_use(guarded, "Bash", {"command": command}), command


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
    assert "best val_bpb 1.000000 (run 1, commit " in answer["reason"]


def ended(project):
    """The session's end as the log and the hooks see it."""
    events = [r for r in records(project) if r["type"] == "event" and r["event"] == "end"]
    return events and pre_tool_use(project, "Bash", {"command": "pip install x"}) is None


def test_the_iteration_cap_ends_the_session(project):
    for i in range(3):
        ok(script(project, "log-experiment", "--status", "discard", "--metric", "1",
                  "--description", f"r{i}"))
    answer = stop(project)
    message = answer["systemMessage"]
    assert "decision" not in answer
    assert "has ended: the iteration cap was reached (3 of 3 runs)" in message
    assert "/experiment:summary" in message and "/experiment:resume --max-iterations 23" in message
    assert "branch autoresearch/t1" in message
    assert ended(project)
    assert stop(project) is None                          # over: later stops are silent


def test_the_stop_file_ends_the_session_and_is_consumed(project):
    (project / "autoresearch.stop").write_text("")
    answer = stop(project)
    assert "decision" not in answer
    assert f"{project / 'autoresearch.stop'} was found" in answer["systemMessage"]
    assert not (project / "autoresearch.stop").exists()
    assert ended(project)


def test_a_stop_file_outside_the_root_does_not_count(project):
    (project / "sub").mkdir()
    (project / "sub" / "autoresearch.stop").write_text("")
    answer = stop(project)
    assert answer["decision"] == "block"
    assert f"creates {project / 'autoresearch.stop'}" in answer["reason"]   # the absolute path
    assert "sub/autoresearch.stop" in git(project, "status", "--porcelain", "-uall")  # not hidden


def session_with(tmp_path, *args):
    p = make_project(tmp_path / "proj")
    ok(script(p, "setup-session", "--tag", "t1", "--dataset", "classics", "--budget", "1", *args,
              env=OWNER))
    return p


def test_reaching_the_target_value_ends_the_session(tmp_path):
    p = session_with(tmp_path, "--target-value", "0.95")
    ok(script(p, "log-experiment", "--status", "keep", "--metric", "1.0", "--description", "baseline"))
    assert stop(p)["decision"] == "block"
    ok(script(p, "log-experiment", "--status", "keep", "--metric", "0.94", "--description", "better"))
    answer = stop(p)
    assert "the best val_bpb 0.940000 reached the target 0.95" in answer["systemMessage"]
    assert ended(p)


def test_a_plateau_first_asks_for_another_category_then_ends_the_session(tmp_path):
    p = session_with(tmp_path, "--plateau", "4")
    ok(script(p, "log-experiment", "--status", "keep", "--metric", "1.0", "--description", "baseline"))
    for i, category in enumerate(["optimizer", "optimizer", "architecture"]):
        ok(script(p, "log-experiment", "--status", "discard", "--metric", "1.1",
                  "--description", f"idea {i}", "--asi", json.dumps({"category": category})))
        answer = stop(p)
        if i == 0:
            assert "change category" not in answer["reason"]
    assert "No keep in the last 3 runs (the session ends at 4): change category" in answer["reason"]
    assert "Tried so far: optimizer (2), architecture (1)." in answer["reason"]
    ok(script(p, "log-experiment", "--status", "discard", "--metric", "1.1", "--description", "idea 4"))
    assert "no run was kept in the last 4 (the plateau limit)" in stop(p)["systemMessage"]
    assert ended(p)


def test_another_conversation_is_never_kept_looping(project):
    answer = stop(project, conversation="morning")
    assert "decision" not in answer
    assert "open in this project but not running in this conversation" in answer["systemMessage"]
    assert stop(project)["decision"] == "block"           # the owner's still is


def test_a_session_set_up_outside_claude_keeps_no_conversation_looping(tmp_path):
    p = make_project(tmp_path / "proj")
    ok(script(p, "setup-session", "--tag", "t1", "--dataset", "classics", "--budget", "1"))
    assert "decision" not in stop(p)


def test_the_guard_tells_another_conversation_how_to_close_the_session(project):
    reason = pre_tool_use(project, "Edit", {"file_path": str(project / "prepare.py")},
                          conversation="other")
    assert "fixed harness" in reason and "/experiment:end closes it" in reason
    mine = pre_tool_use(project, "Edit", {"file_path": str(project / "prepare.py")})
    assert "/experiment:end" not in mine


def test_git_moves_are_refused_with_the_repair(guarded):
    reason = pre_tool_use(guarded, "Bash", {"command": "git reset --hard HEAD~1"})
    assert "resume-session" in reason and "log-experiment" in reason
    reason = pre_tool_use(guarded, "Bash", {"command": "git checkout HEAD~1 -- prepare.py"})
    assert "resume-session" in reason


def prompt(project, text, conversation="s"):
    from plugin_helpers import hook
    proc = hook("prompt.py", {"session_id": conversation, "transcript_path": "/dev/null",
                              "cwd": str(project), "hook_event_name": "UserPromptSubmit",
                              "prompt": text})
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_asking_for_the_summary_releases_the_loop(project):
    prompt(project, "how is it going?")
    assert stop(project)["decision"] == "block"           # a question mid-loop: go on
    prompt(project, "/experiment:summary", conversation="other")
    assert stop(project)["decision"] == "block"           # someone else's summary: no effect
    prompt(project, "/experiment:summary")
    answer = stop(project)
    assert "decision" not in answer and "not running in this conversation" in answer["systemMessage"]
    assert pre_tool_use(project, "Bash", {"command": "pip install x"})   # the guard stays on
    ok(script(project, "resume-session", env=OWNER))
    assert stop(project)["decision"] == "block"           # resume takes it up again


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


def session_start(project, source="compact", conversation="s"):
    from plugin_helpers import hook
    proc = hook("session_start.py", {"session_id": conversation, "transcript_path": "/dev/null",
                                     "cwd": str(project), "hook_event_name": "SessionStart",
                                     "source": source})
    assert proc.returncode == 0, proc.stderr
    if not proc.stdout.strip():
        return None
    out = json.loads(proc.stdout)["hookSpecificOutput"]
    assert out["hookEventName"] == "SessionStart"
    return out["additionalContext"]


def test_session_start_brings_back_the_state_and_the_lessons(project):
    ok(script(project, "run-experiment"))
    ok(script(project, "log-experiment", "--status", "keep", "--description", "baseline",
              "--asi", json.dumps({"hypothesis": "h", "learned": "the stand-in gives 1.0"})))
    block = session_start(project)
    assert "autoresearch session t1 is active" in block
    assert "skills/autoresearch/SKILL.md" in block and "scripts" in block
    assert "Target train.py, dataset classics, 1 s per run, policy noise-aware" in block
    assert "1 of 3 runs logged; best val_bpb 1.000000 (run 1" in block
    assert "run   1 keep" in block and "(learned: the stand-in gives 1.0)" in block
    assert "Next: run 2: pick the next idea" in block
    other = session_start(project, source="resume", conversation="other")
    assert "not running in this conversation" in other and "Next: run" not in other


def test_session_start_says_nothing_without_a_session(project, tmp_path):
    ok(script(project, "end-session"))
    assert session_start(project) is None
    plain = tmp_path / "plain"
    plain.mkdir()
    assert session_start(plain) is None


def test_lessons_from_logs_of_the_first_format_are_read(project):
    """Logs written before `asi` had its seed name kept it as `notes`."""
    with common.Lock(str(project)):
        core_records.append_record(str(project), {
            "type": "run", "run": 1, "commit": git(project, "rev-parse", "HEAD"), "status": "keep",
            "metric": 1.0, "metrics": {}, "description": "baseline", "timestamp": common.now_iso(),
            "notes": {"learned": "old logs still teach"}})
    assert "(learned: old logs still teach)" in session_start(project)
    assert "Latest lesson (run 1): old logs still teach" in stop(project)["reason"]
