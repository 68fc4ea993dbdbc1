"""The plugin in the real Claude Code CLI: it validates, it loads with its four
commands and no errors, and a session driven through the CLI by a scripted model on
127.0.0.1 runs the commands' Bash lines as written, meets the guard, logs runs and is
kept going by the Stop hook until the iteration cap.

Needs the CLI (bash dev.sh test installs it); skipped without it, failed in CI."""

import json
import os
import re
import shutil
import subprocess

import pytest

from plugin_helpers import (PLUGIN, edit_target, git, make_project, ok, records, require_claude,
                            script)
from plugin_helpers_model import (ScriptedModel, all_text, guarded_baseline, only_result, text, tool,
                                  tool_results, user_text)


def init_line(claude, plugin_dir, cwd, home):
    """The `system/init` event: what the CLI loaded. No API key needed to get it."""
    env = {"HOME": str(home), "PATH": os.environ["PATH"],
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    proc = subprocess.run([claude, "-p", "hello", "--plugin-dir", str(plugin_dir),
                           "--output-format", "stream-json", "--verbose"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    for line in proc.stdout.splitlines():
        event = json.loads(line)
        if event.get("type") == "system" and event.get("subtype") == "init":
            return event
    pytest.fail(f"no system/init line in the CLI output:\n{proc.stdout[:2000]}\n{proc.stderr[:2000]}")


def test_plugin_validates_strictly():
    claude = require_claude()
    proc = subprocess.run([claude, "plugin", "validate", "--strict", str(PLUGIN)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation passed" in proc.stdout


def test_cli_loads_the_commands_without_errors(tmp_path):
    claude = require_claude()
    (tmp_path / "home").mkdir()
    init = init_line(claude, PLUGIN, tmp_path, tmp_path / "home")
    commands = set(init["slash_commands"])
    assert {"experiment:model", "experiment:resume", "experiment:summary",
            "experiment:end", "experiment:dashboard"} <= commands
    assert "experiment:autoresearch" in init["skills"]
    assert [p["name"] for p in init["plugins"]] == ["experiment"]
    assert init.get("plugin_errors", []) == []


def test_the_error_check_catches_a_broken_plugin(tmp_path):
    """Control for the test above: a hooks.json the CLI rejects shows up as an error."""
    claude = require_claude()
    broken = tmp_path / "plugin"
    shutil.copytree(PLUGIN, broken)
    (broken / "hooks" / "hooks.json").write_text(json.dumps(
        {"hooks": {"Stop": [{"hooks": [{"type": "command"}]}]}}))
    (tmp_path / "home").mkdir()
    init = init_line(claude, broken, tmp_path, tmp_path / "home")
    assert init.get("plugin_errors"), "a broken hooks.json was not reported"


def test_a_session_through_the_real_cli(tmp_path):
    """/experiment:model t1 classics ... against a scripted model: setup, a denied edit of
    prepare.py, a baseline run and log, a Stop turned into a continuation, a discarded
    run, and a stop allowed at the iteration cap."""
    claude = require_claude()
    project = make_project(tmp_path / "proj")
    home = tmp_path / "home"
    home.mkdir()
    seen = {}

    expect = only_result

    def setup(body):
        prompt = user_text(body)
        assert "The session tag is `t1`" in prompt and "t1 classics --budget 1" in prompt
        line = re.search(r'^\s*("[^"\n]*/scripts/setup-session" --tag t1 .*)$', prompt, re.M)
        assert line, f"no setup-session line in the expanded command:\n{prompt[:3000]}"
        assert str(PLUGIN) in line.group(1)                        # ${CLAUDE_PLUGIN_ROOT} expanded
        command = line.group(1).replace("[--dataset <dataset>] [options]",
                                        "--dataset classics --budget 1 --max-iterations 2 --baseline-runs 1")
        return [tool("Bash", command=command, description="set up the session", timeout=600000)]

    def read_prepare(body):
        out = expect(body, "session t1: branch autoresearch/t1", error=False)
        seen["scripts"] = re.search(r"^scripts: (.+)$", out, re.M).group(1)
        return [tool("Read", file_path=str(project / "prepare.py"))]

    def edit_prepare(body):
        expect(body, "argparse")
        return [tool("Edit", file_path=str(project / "prepare.py"),
                     old_string="import argparse, os, sys", new_string="import argparse, os, sys  # faster eval")]

    def try_to_stop(body):
        expect(body, "logged run 1: keep")
        return [text("Baseline recorded.")]

    def read_target(body):
        feedback = user_text(body)
        assert "Stop hook feedback" in feedback and "continue with run 2" in feedback, feedback
        return [tool("Read", file_path=str(project / "train.py"))]

    def edit_target(body):
        expect(body, "VAL_BPB")
        return [tool("Edit", file_path=str(project / "train.py"), old_string="VAL_BPB = 1.000000",
                     new_string="VAL_BPB = 1.200000")]

    def run_worse(body):
        expect(body, "train.py", error=False)
        return [tool("Bash", command=f'"{seen["scripts"]}/run-experiment"', timeout=600000)]

    def log_worse(body):
        expect(body, "status: ok run 2", "recommend: discard")
        return [tool("Bash", command=f'"{seen["scripts"]}/log-experiment" --status discard '
                                     "--description 'worse: higher loss'")]

    def stop_at_cap(body):
        expect(body, "logged run 2: discard", "iteration cap reached")
        return [text("Iteration cap reached; stopping.")]

    steps = [setup, read_prepare, edit_prepare, *guarded_baseline(seen), try_to_stop,
             read_target, edit_target, run_worse, log_worse, stop_at_cap]
    with ScriptedModel(steps) as model:
        proc = subprocess.run(
            [claude, "-p", "/experiment:model t1 classics --budget 1 --max-iterations 2",
             "--plugin-dir", str(PLUGIN), "--output-format", "stream-json", "--verbose"],
            cwd=project, env=model.client_env(str(home)), capture_output=True, text=True,
            timeout=240)
    assert model.errors == [], model.errors
    assert model.finished, f"the CLI stopped after {model.step} of {len(steps)} steps:\n" \
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [r for r in records(project) if r["type"] == "run"]
    assert [(r["run"], r["status"], r["metric"]) for r in runs] == [(1, "keep", 1.0), (2, "discard", 1.2)]
    assert records(project)[-1]["event"] == "end"                       # the cap ended the session
    assert json.loads((project / ".autoresearch" / "state.json").read_text())["active"] is False
    assert "VAL_BPB = 1.000000" in (project / "train.py").read_text()    # discard reverted it
    assert "faster eval" not in (project / "prepare.py").read_text()     # the guard held
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"
    assert git(project, "status", "--porcelain") == ""


def drive(claude, project, home, prompt, steps, *args, **env):
    """Run `claude -p PROMPT` with the plugin against a scripted model; returns
    (process, model). The CLI's own limit on Stop-hook blocks is off, as the README
    advises for a night, so a loop that never lets go would hang until the timeout."""
    with ScriptedModel(steps) as model:
        proc = subprocess.run(
            [claude, "-p", prompt, "--plugin-dir", str(PLUGIN), "--output-format", "stream-json",
             "--verbose", "--include-hook-events", *args], cwd=project, capture_output=True,
            text=True, timeout=180,
            env=model.client_env(str(home), CLAUDE_CODE_STOP_HOOK_BLOCK_CAP="0", **env))
    assert model.errors == [], model.errors
    assert model.finished, f"the CLI stopped after {model.step} of {len(steps)} steps:\n" \
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, model


def bash_line(body, name):
    """The `"${CLAUDE_PLUGIN_ROOT}/scripts/NAME" ...` line of the expanded command."""
    line = re.search(rf'^\s*("[^"\n]*/scripts/{name}")(.*)$', user_text(body), re.M)
    assert line, f"no {name} line in the expanded command:\n{user_text(body)[:3000]}"
    return line.group(1)


def open_night(tmp_path, owner):
    """A session left open overnight by conversation `owner`: baseline kept, not at its cap."""
    project = make_project(tmp_path / "proj")
    env = {"CLAUDE_CODE_SESSION_ID": owner}
    ok(script(project, "setup-session", "--tag", "n1", "--dataset", "classics", "--budget", "1",
              "--max-iterations", "10", "--policy", "strict", env=env))
    ok(script(project, "run-experiment", env=env))
    ok(script(project, "log-experiment", "--status", "keep", "--description", "baseline", env=env))
    home = tmp_path / "home"
    home.mkdir()
    return project, home


@pytest.mark.parametrize("conversation", ["a new conversation", "the loop's own conversation"])
def test_the_summary_ends_its_turn_while_the_session_is_open(tmp_path, conversation):
    """/experiment:summary on a night that never reached its cap: the report is written
    and the turn ends, with the CLI's block limit off. In the loop's own conversation the
    summary request releases the loop; in another one the loop was never there."""
    claude = require_claude()
    owner = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
    project, home = open_night(tmp_path, owner)
    args = ("--session-id", owner) if conversation.startswith("the loop") else ()

    def summarize(body):
        return [tool("Bash", command=bash_line(body, "summarize"), description="write the report")]

    def reply(body):
        assert "wrote autoresearch-summary.md" in tool_results(body)[0]["text"]
        return [text("Baseline 1.000000; nothing better yet. The session is still open.")]

    proc, model = drive(claude, project, home, "/experiment:summary", [summarize, reply], *args)
    assert len(model.requests) == 2                   # no Stop-hook continuation at all
    assert "is still open" in (project / "autoresearch-summary.md").read_text()
    assert "not running in this conversation" in proc.stdout          # the note, shown
    state = json.loads((project / ".autoresearch" / "state.json").read_text())
    assert state["active"] is True and state["owner"] is None if args else state["owner"] == owner


def test_resume_records_a_finished_orphan_and_the_stop_file_ends_the_session(tmp_path):
    """The CLI was killed while a better run finished. /experiment:resume shows its
    result and one command records it; the loop then belongs to this conversation (the
    Stop hook continues it) until the person's stop file ends the session."""
    claude = require_claude()
    project, home = open_night(tmp_path, "dead-conversation")
    edit_target(project, VAL_BPB=0.8)
    ok(script(project, "run-experiment"))             # finished; nobody logged it
    stop_file = project / "autoresearch.stop"

    def resume(body):
        return [tool("Bash", command=bash_line(body, "resume-session"), description="resume")]

    def record(body):
        out = tool_results(body)[0]["text"]
        assert "run 2 finished but was never logged: val_bpb 0.800000, recommend keep" in out
        assert "the change it measured is saved as refs/autoresearch/n1/interrupted-" in out
        command = re.search(r"record it:  (.+--status keep) --description", out).group(1)
        return [tool("Bash", command=f"{command} --description 'lower loss (recovered)'")]

    def end_turn(body):
        assert "logged run 2: keep val_bpb=0.800000" in tool_results(body)[0]["text"]
        return [text("Recorded the interrupted run.")]

    def person_stops(body):
        feedback = user_text(body)
        assert "Stop hook feedback" in feedback and "continue with run 3" in feedback, feedback
        assert str(stop_file) in feedback                 # where the stop file goes, absolute
        stop_file.write_text("")                          # the person, from another terminal
        return [text("Stopping as asked.")]

    proc, _ = drive(claude, project, home, "/experiment:resume", [resume, record, end_turn, person_stops])
    runs = [r for r in records(project) if r["type"] == "run"]
    assert [(r["run"], r["status"], r["metric"]) for r in runs] == [(1, "keep", 1.0), (2, "keep", 0.8)]
    assert "VAL_BPB = 0.8" in (project / "train.py").read_text()
    assert git(project, "status", "--porcelain") == ""
    assert records(project)[-1]["event"] == "end" and not stop_file.exists()
    assert json.loads((project / ".autoresearch" / "state.json").read_text())["active"] is False
    assert f"has ended: {stop_file} was found" in proc.stdout
    assert "/experiment:summary" in proc.stdout
    # Under its cap the session resumes to it; at the cap it needs a higher one.
    assert re.search(r"/experiment:resume (continues to the cap of \d+ \(\d+ more runs?\)|--max-iterations \d+ continues)",
                     proc.stdout), proc.stdout[-2000:]


def test_the_session_comes_back_after_compaction(tmp_path):
    """A long night is compacted: the SessionStart hook puts the session's state (the
    protocol, the best, the last runs with what they taught, the next step) back into
    the context, and the model's next request carries it."""
    claude = require_claude()
    project = make_project(tmp_path / "proj")
    home = tmp_path / "home"
    home.mkdir()
    night = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

    def chat(n):
        return [lambda body: [tool("Bash", command=f"echo step {i} " + "x" * 2000)]
                for i in range(n)] + [lambda body: [text("Noted.")]]
    drive(claude, project, home, "hello", chat(6), "--session-id", night, "--allowedTools", "Bash")

    env = {"CLAUDE_CODE_SESSION_ID": night}
    ok(script(project, "setup-session", "--tag", "c1", "--dataset", "classics", "--budget", "1",
              env=env))
    for value, description, learned in ((1.0, "baseline", "the stand-in gives 1.0"),
                                        (0.9, "halve the loss", "a lower loss is kept")):
        edit_target(project, VAL_BPB=value)
        ok(script(project, "run-experiment", env=env))
        ok(script(project, "log-experiment", "--status", "keep", "--description", description,
                  "--asi", json.dumps({"learned": learned}), env=env))

    drive(claude, project, home, "/compact", [lambda body: [text("<summary>We said hello.</summary>")]],
          "--resume", night)
    edit_target(project, VAL_BPB=1.5)                   # a third run after the compaction
    ok(script(project, "run-experiment", env=env))
    ok(script(project, "log-experiment", "--status", "discard", "--description", "worse",
              env=env))

    def next_request(body):
        context = all_text(body)
        # The block as the compaction left it (2 runs), not only the resume's (3 runs).
        assert "autoresearch session c1 is active" in context and "2 runs logged" in context, context[-3000:]
        assert "skills/autoresearch/SKILL.md" in context and "best val_bpb 0.900000 (run 2" in context
        assert "(learned: a lower loss is kept)" in context
        assert "Next: run 3: pick the next idea" in context
        return [text("Continuing with run 4.")]

    def person_stops(body):
        assert "Latest lesson (run 2): a lower loss is kept" in user_text(body)
        (project / "autoresearch.stop").write_text("")
        return [text("Stopping.")]

    drive(claude, project, home, "go on", [next_request, person_stops], "--resume", night)


def test_a_plateau_asks_for_another_category_then_ends_the_session(tmp_path):
    """Through the CLI: runs without a keep first bring a hint to change category (with
    the categories tried), then, at the plateau limit, the end of the session."""
    claude = require_claude()
    owner = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
    project = make_project(tmp_path / "proj")
    home = tmp_path / "home"
    home.mkdir()
    env = {"CLAUDE_CODE_SESSION_ID": owner}
    ok(script(project, "setup-session", "--tag", "p1", "--dataset", "classics", "--budget", "1",
              "--policy", "strict", "--plateau", "2", env=env))
    ok(script(project, "log-experiment", "--status", "keep", "--metric", "1.0",
              "--description", "baseline", env=env))
    ok(script(project, "log-experiment", "--status", "discard", "--metric", "1.1",
              "--description", "higher lr", "--asi", json.dumps({"category": "optimizer"}), env=env))
    log_experiment = PLUGIN / "scripts" / "log-experiment"

    def pause(body):
        return [text("Thinking about the next idea.")]

    def another(body):
        feedback = user_text(body)
        assert "No keep in the last 1 runs (the session ends at 2): change category" in feedback
        assert "Tried so far: optimizer (1)." in feedback
        return [tool("Bash", command=f'"{log_experiment}" --status discard --metric 1.2 '
                                     "--description 'deeper model' --asi '{\"category\": \"architecture\"}'")]

    def done(body):
        assert "logged run 3: discard" in tool_results(body)[0]["text"]
        return [text("Logged.")]

    proc, _ = drive(claude, project, home, "go on", [pause, another, done], "--session-id", owner,
                    "--allowedTools", "Bash")
    assert "no run was kept in the last 2 (the plateau limit)" in proc.stdout
    assert records(project)[-1]["event"] == "end"
