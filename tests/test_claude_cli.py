"""The plugin in the real Claude Code CLI: it validates, it loads with its three
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

from plugin_helpers import PLUGIN, git, make_project, records, require_claude
from plugin_helpers_model import ScriptedModel, text, tool, tool_results, user_text


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


def test_cli_loads_the_three_commands_without_errors(tmp_path):
    claude = require_claude()
    (tmp_path / "home").mkdir()
    init = init_line(claude, PLUGIN, tmp_path, tmp_path / "home")
    commands = set(init["slash_commands"])
    assert {"experiment:model", "experiment:resume", "experiment:summary"} <= commands
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

    def expect(body, *needles, error=None):
        results = tool_results(body)
        assert len(results) == 1, results
        for n in needles:
            assert n in results[0]["text"], f"{n!r} not in tool result {results[0]['text'][:800]!r}"
        if error is not None:
            assert results[0]["is_error"] is error, results[0]
        return results[0]["text"]

    def setup(body):
        prompt = user_text(body)
        assert "The session tag is `t1`" in prompt and "t1 classics --budget 1" in prompt
        line = re.search(r'^\s*("[^"\n]*/scripts/setup-session" --tag t1 .*)$', prompt, re.M)
        assert line, f"no setup-session line in the expanded command:\n{prompt[:3000]}"
        assert str(PLUGIN) in line.group(1)                        # ${CLAUDE_PLUGIN_ROOT} expanded
        command = line.group(1).replace("<dataset> [options]",
                                        "classics --budget 1 --max-iterations 2 --baseline-runs 1")
        return [tool("Bash", command=command, description="set up the session", timeout=600000)]

    def read_prepare(body):
        out = expect(body, "session t1: branch autoresearch/t1", error=False)
        seen["scripts"] = re.search(r"^scripts: (.+)$", out, re.M).group(1)
        return [tool("Read", file_path=str(project / "prepare.py"))]

    def edit_prepare(body):
        expect(body, "argparse")
        return [tool("Edit", file_path=str(project / "prepare.py"),
                     old_string="import argparse, os, sys", new_string="import argparse, os, sys  # faster eval")]

    def run_baseline(body):
        expect(body, "autoresearch guard", "fixed harness", error=True)
        return [tool("Bash", command=f'"{seen["scripts"]}/run-experiment"', timeout=600000)]

    def log_baseline(body):
        expect(body, "METRIC val_bpb=1.0", "status: ok run 1", "recommend: keep")
        return [tool("Bash", command=f'"{seen["scripts"]}/log-experiment" --status keep '
                                     "--description 'baseline'")]

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

    steps = [setup, read_prepare, edit_prepare, run_baseline, log_baseline, try_to_stop,
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
    runs = records(project)[1:]
    assert [(r["run"], r["status"], r["metric"]) for r in runs] == [(1, "keep", 1.0), (2, "discard", 1.2)]
    assert "VAL_BPB = 1.000000" in (project / "train.py").read_text()    # discard reverted it
    assert "faster eval" not in (project / "prepare.py").read_text()     # the guard held
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t1"
    assert git(project, "status", "--porcelain") == ""
