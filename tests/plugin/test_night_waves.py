"""A night with two workers, through the real Claude Code CLI and a scripted model.

/experiment:model ... --workers 2: the baseline, then a first wave of two ideas that
both beat it (one is kept, the other re-based onto it), then a second wave in which one
candidate crashes and one hangs, while the re-based winner waits in the queue. In the
middle of that wave the machine goes down (the CLI and the workers are killed outright);
/experiment:resume lists what finished, what was lost and what to re-queue, and the
night ends at its iteration cap with every run logged, the hung run killed with its
whole process group each time, and the branch on the best combination."""

import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest

from plugin_helpers import (PLUGIN, WAVE_TARGET, git, gone_now, hang_child, hang_children, make_project, records,
                            require_claude, stop_workers)
from plugin_helpers_model import ScriptedModel, text, tool, tool_results, user_text


CAP = 6


def result(body):
    (r,) = tool_results(body)
    assert not r["is_error"], r["text"][-2000:]
    return r["text"]


def bash(command):
    return [tool("Bash", command=command, timeout=600000)]


class Agent:
    """What the scripted model types: the skill's wave loop, one tool call a step."""

    def __init__(self, project):
        self.project, self.said, self.names = project, {}, {}

    def s(self, name):
        return f'"{self.said["scripts"]}/{name}"'

    def new(self, label, description):
        def step(body):
            return bash(f"{self.s('new-candidate')} --description '{description}'")
        step.label = label
        return step

    def read_new(self, label):
        def step(body):
            out = result(body)
            name, wt = re.search(r"^candidate (c\d+): worktree (\S+)", out, re.M).groups()
            self.names[label] = name
            return [tool("Read", file_path=str(self.project / wt / "train.py"))]
        return step

    def edit(self, label, old, new):
        def step(body):
            assert old in result(body)
            path = self.project / ".autoresearch" / "worktrees" / self.names[label] / "train.py"
            return [tool("Edit", file_path=str(path), old_string=old, new_string=new)]
        return step

    def log_what_it_said(self, expect=None):
        """Run the `next: log-experiment ...` line wait-wave printed."""
        def step(body):
            out = result(body)
            if expect:
                expect(out)
            line = re.search(r"^next: (log-experiment .*)$", out, re.M).group(1)
            args = shlex.split(line)[1:]
            self.said.setdefault("shown", []).append(out)
            return bash(f"{self.s('log-experiment')} {shlex.join(args)}")
        return step

    def then(self, script, *args, check=None):
        def step(body):
            out = result(body)
            if check:
                check(out)
            self.said.setdefault("outputs", []).append(out)
            return bash(" ".join([self.s(script), *args]))
        return step


@pytest.mark.slow
def test_a_wave_night_through_the_real_cli(tmp_path):
    claude = require_claude()
    project = make_project(tmp_path / "proj")
    (project / "train.py").write_text(WAVE_TARGET)
    git(project, "commit", "-qam", "wave stand-in")
    home = tmp_path / "home"
    home.mkdir()
    agent = Agent(project)
    cli = {}

    def setup(body):
        line = re.search(r'^\s*("[^"\n]*/scripts/setup-session" --tag w1 .*)$', user_text(body), re.M)
        command = line.group(1).replace(
            "[--dataset <dataset>] [options]", f"--dataset classics --budget 1 --timeout 6 --policy strict --workers 2 "
                                   f"--max-iterations {CAP}")
        return bash(command)

    def baseline(body):
        out = result(body)
        assert "waves: 2 worker(s) on local (cpu0, cpu1)" in out, out
        agent.said["scripts"] = re.search(r"^scripts: (.+)$", out, re.M).group(1)
        return bash(agent.s("run-experiment"))

    def log_baseline(body):
        assert "recommend: keep: baseline" in result(body)
        return bash(f"{agent.s('log-experiment')} --status keep --description baseline")

    def first_new(body):
        assert "logged run 1: keep" in result(body)
        return bash(f"{agent.s('new-candidate')} --description 'idea A: bigger gain'")

    def second_new(body):
        return bash(f"{agent.s('new-candidate')} --description 'idea B: smaller gain'")

    def submit(check):
        def step(body):
            out = result(body)
            check(out)
            return bash(agent.s("submit-wave"))
        return step

    def wait(body):
        out = result(body)
        agent.said.setdefault("logs", []).append(out)
        return bash(f"{agent.s('wait-wave')} --timeout 120")

    def saw_a_kept(out):
        assert "recommend: keep" in out and f"candidate {agent.names['A']}" in out, out

    def saw_b_rebase(out):
        assert f"candidate {agent.names['B']}" in out and "recommend: rebase" in out, out

    def crash_new(body):
        out = result(body)
        assert f"re-based {agent.names['B']}" in out and "(queued)" in out, out
        return bash(f"{agent.s('new-candidate')} --description 'new attention (crashes)'")

    def hang_new(body):
        return bash(f"{agent.s('new-candidate')} --description 'loader rewrite (hangs)'")

    def machine_goes_down(body):
        out = result(body)
        assert "submitted" in out, out
        wave = project / ".autoresearch" / "wave"
        hang = agent.names["hang"]
        deadline = time.time() + 30
        while time.time() < deadline:
            states = {c["name"]: c["state"] for c in (json.loads(f.read_text()) for f in wave.glob("c*.json"))}
            if states.get(hang) == "running" and sum(s == "done" for s in states.values()) == 2:
                break
            time.sleep(0.2)
        assert states.get(hang) == "running" and list(states.values()).count("done") == 2, states
        cli["hang_run"] = json.loads((wave / f"{hang}.running").read_text())["pgid"]
        cli["hang_child"] = hang_child(project / ".autoresearch" / "worktrees" / hang)   # it has started
        for f in wave.glob("worker-*.pid"):
            try:
                os.kill(int(f.read_text()), signal.SIGKILL)
            except OSError:
                pass
        os.killpg(cli["proc"].pid, signal.SIGKILL)
        return [text("(never delivered)")]

    first = [setup, baseline, log_baseline, first_new, agent.read_new("A"),
             agent.edit("A", "GAIN_A = 0.0", "GAIN_A = 0.1"), second_new, agent.read_new("B"),
             agent.edit("B", "GAIN_B = 0.0", "GAIN_B = 0.05"),
             # B takes a second longer, so A is shown (and kept) first.
             lambda body: [tool("Edit", file_path=str(project / ".autoresearch" / "worktrees" /
                                                      agent.names["B"] / "train.py"),
                                old_string="SLEEP = 0.0", new_string="SLEEP = 1.0")],
             submit(lambda out: None), wait,
             agent.log_what_it_said(saw_a_kept), wait,
             agent.log_what_it_said(saw_b_rebase),
             crash_new, agent.read_new("crash"), agent.edit("crash", 'MODE = "ok"', 'MODE = "crash"'),
             hang_new, agent.read_new("hang"), agent.edit("hang", 'MODE = "ok"', 'MODE = "hang"'),
             submit(lambda out: None), machine_goes_down]
    with ScriptedModel(first) as model:
        proc = subprocess.Popen([claude, "-p", "/experiment:model w1 classics --workers 2",
                                 "--plugin-dir", str(PLUGIN), "--output-format", "stream-json", "--verbose"],
                                cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True,
                                env=model.client_env(str(home), CLAUDE_CODE_STOP_HOOK_BLOCK_CAP="0"))
        cli["proc"] = proc
        try:
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    try:
        assert model.finished, f"stopped after {model.step} of {len(first)} steps:\n{out[-3000:]}\n{err[-2000:]}"
        assert [e for e in model.errors if "BrokenPipe" not in e] == [], model.errors
        runs = [r for r in records(project) if r["type"] == "run"]
        assert [r["status"] for r in runs] == ["keep", "keep", "discard"]
        assert runs[1]["candidate"] == agent.names["A"] and runs[2]["recommendation"] == "rebase"
        assert gone_now(cli["hang_run"]), "the hung run's sandbox died with its killed worker"

        # The morning after: /experiment:resume in a new conversation. -----------------
        seen = {}

        def resume(body):
            line = re.search(r'^\s*("[^"\n]*/scripts/resume-session")', user_text(body), re.M).group(1)
            return bash(line)

        def requeue(body):
            out = result(body)
            assert f"wave: {agent.names['crash']} finished, not logged (status crash)" in out, out
            assert f"wave: {agent.names['hang']} was lost" in out, out     # its run died with its worker
            finished = re.findall(r"^wave: (c\d+) finished, not logged", out, re.M)
            assert len(finished) == 2, out          # the crash, and the re-based winner
            assert "submit-wave re-queues it" in out
            seen["resume"] = out
            return bash(agent.s("submit-wave"))

        def wait_next(body):
            out = result(body)
            seen.setdefault("logged", []).append(out)
            return bash(f"{agent.s('wait-wave')} --timeout 120")

        def log_next(body):
            out = result(body)
            line = re.search(r"^next: (log-experiment .*)$", out, re.M)
            assert line, out
            seen.setdefault("shown", []).append(out)
            if "status: timeout" in out:        # the second hang: its worktree, before it goes
                seen["hang_tree"] = project / ".autoresearch" / "worktrees" / agent.names["hang"]
                assert (seen["hang_tree"] / "data" / "hang_child.pid").exists(), "its child had started"
            return bash(f"{agent.s('log-experiment')} {shlex.join(shlex.split(line.group(1))[1:])}")

        def done(body):
            out = result(body)
            assert "iteration cap reached" in out, out
            return [text("Iteration cap reached; stopping.")]

        second = [resume, requeue, wait_next, log_next, wait_next, log_next, wait_next, log_next, done]
        with ScriptedModel(second) as model:
            proc = subprocess.run([claude, "-p", "/experiment:resume", "--plugin-dir", str(PLUGIN),
                                   "--output-format", "stream-json", "--verbose"], cwd=project,
                                  capture_output=True, text=True, timeout=300,
                                  env=model.client_env(str(home), CLAUDE_CODE_STOP_HOOK_BLOCK_CAP="0"))
        assert model.errors == [], model.errors
        assert model.finished, f"stopped after {model.step} of {len(second)} steps:\n{proc.stdout[-3000:]}"
        assert gone_now(cli["hang_run"]), "no run of a killed worker is left behind"
        shown = "\n".join(seen["shown"])
        assert "status: crash candidate" in shown and "shape mismatch in attention" in shown
        assert re.search(r"^status: timeout candidate .*\(limit 6s, process group killed\)", shown, re.M), shown
        time.sleep(0.3)
        assert gone_now(cli["hang_child"]), "the first hang's child went with its sandbox"
        assert hang_children(seen["hang_tree"]) == [], "the second hang's child was killed at the timeout"
        runs = [r for r in records(project) if r["type"] == "run"]
        assert len(runs) == CAP
        by = {r.get("candidate"): r for r in runs}
        assert by[agent.names["crash"]]["run_status"] == "crash"
        assert by[agent.names["hang"]]["run_status"] == "timeout"
        rebased = [r for r in runs if r.get("rebased_from") == agent.names["B"]]
        assert len(rebased) == 1 and rebased[0]["status"] == "keep"
        assert rebased[0]["metric"] == 0.85 and {r["worker"] for r in runs if r.get("worker")} <= {"cpu0", "cpu1"}
        text_now = (project / "train.py").read_text()
        assert "GAIN_A = 0.1" in text_now and "GAIN_B = 0.05" in text_now and 'MODE = "ok"' in text_now
        assert git(project, "rev-parse", "HEAD") == rebased[0]["commit_sha"]
        assert git(project, "status", "--porcelain") == ""
        assert records(project)[-1]["event"] == "end"
    finally:
        stop_workers(project)
