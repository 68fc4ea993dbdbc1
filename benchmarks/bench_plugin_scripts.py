"""How fast the plugin's scripts and hooks answer on a session with a 1,000-run log.

Builds a throwaway project (git repo, stand-in target, 1,000 logged runs), then times
each command as the agent calls it: a fresh process, wall clock, median of several
calls. The goals: hooks (they run on every tool call) under 150 ms; scripts (one per
5-minute run) under 500 ms. Two figures are reported apart because they are
dominated by something other than the log: `run-experiment` (the training run itself;
here a stand-in that exits at once) and the first `progress.png` render (importing
matplotlib); later summaries reuse the plot while the log is unchanged.

The guard hook, which starts on every tool call, is timed on its own: median and 95th
percentile of --guard-calls starts, as hooks.json starts it (whatever `python3` PATH
finds, a pyenv shim included) and with the interpreter named directly, for a denied
and an allowed Bash command and an Edit. --load N keeps N processes busy meanwhile;
--compare DIR times another copy of the plugin (an earlier commit's, from `git archive`)
in the same way, alternating with this one.

    python benchmarks/bench_plugin_scripts.py [--runs 1000] [--repeat 7] [--guard-calls 50]
        [--load N] [--compare DIR] [--guard-only]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "experiment-plugin" / "scripts"))
from plugin_helpers import HOOKS, PLUGIN, SCRIPTS, fill_log, make_project, script  # noqa: E402
from core import common  # noqa: E402


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def check(proc):
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--guard-calls", type=int, default=50)
    p.add_argument("--load", type=int, default=0, help="busy processes while the guard is timed")
    p.add_argument("--compare", help="another copy of experiment-plugin/ to time the guard of")
    p.add_argument("--guard-only", action="store_true", help="time only the guard hook")
    a = p.parse_args()
    # As on a person's machine, let Python cache the scripts' compiled bytecode (some CI
    # images turn that off, which adds ~15 ms of compiling the core modules to every call).
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
        print("note: PYTHONDONTWRITEBYTECODE was set; cleared for the timed processes")
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "proj")
        check(script(project, "setup-session", "--tag", "bench", "--dataset", "classics", "--budget", "1",
                     env={"CLAUDE_CODE_SESSION_ID": "bench"}))     # the loop's own conversation
        fill_log(project, a.runs)
        check(script(project, "run-experiment"))
        bench_guard(project, a)
        if a.guard_only:
            return
        guard_in = json.dumps({"hook_event_name": "PreToolUse", "cwd": str(project), "tool_name": "Bash",
                               "tool_input": {"command": "sed -i 's/a/b/' prepare.py"}})
        stop_in = json.dumps({"hook_event_name": "Stop", "cwd": str(project), "stop_hook_active": True})

        def hook(name, payload):
            return lambda: check(subprocess.run([sys.executable, str(HOOKS / name)], input=payload,
                                                capture_output=True, text=True))

        def run(name, *args):
            return lambda: check(script(project, name, *args))

        counter = iter(range(10**6))
        cases = [
            ("parse-metrics run.log", run("parse-metrics")),
            ("confidence", run("confidence")),
            ("confidence --json", run("confidence", "--json")),
            ("log-experiment (discard)", lambda: check(script(
                project, "log-experiment", "--status", "discard", "--metric", "1.01",
                "--description", f"bench {next(counter)}"))),
            ("summarize --no-plot", run("summarize", "--no-plot")),
            ("resume-session", run("resume-session")),
            ("stop hook (block)", hook("stop.py", stop_in)),
        ]
        print(f"{a.runs}-run log, median of {a.repeat} calls, {sys.executable}")
        print(f"{'command':<34}{'ms':>8}")
        worst = 0.0
        for name, fn in cases:
            ms = timed(fn, a.repeat)
            worst = max(worst, ms)
            goal = 150 if "hook" in name else 500
            print(f"{name:<34}{ms:>8.1f}{'' if ms < goal else f'   over {goal} ms'}")
        print(f"{'python -c pass (interpreter start)':<34}"
              f"{timed(lambda: subprocess.run([sys.executable, '-c', 'pass']), a.repeat):>8.1f}")
        print("reported apart:")
        print(f"{'run-experiment (instant stand-in)':<34}{timed(run('run-experiment'), a.repeat):>8.1f}")
        first = timed(lambda: ((project / common.PLOT).unlink(missing_ok=True), check(script(project, "summarize"))), 3)
        print(f"{'summarize, first plot render':<34}{first:>8.1f}")
        print(f"{'summarize, plot up to date':<34}{timed(run('summarize'), a.repeat):>8.1f}")
        print(f"slowest log-bound command: {worst:.1f} ms")
        # What a measured run adds before the target's first line: the launcher loads the
        # fixed modules from their checked source (no .pyc) before running the target.
        (project / "bench_target.py").write_text("import prepare\n")
        config = json.loads((project / common.LOG).read_text().splitlines()[0])
        pins = json.dumps(config["fixed_files"])
        direct = timed(lambda: check(subprocess.run([sys.executable, "bench_target.py"], cwd=project,
                                                    capture_output=True, text=True)), a.repeat)
        launched = timed(lambda: check(subprocess.run(
            [sys.executable, "-B", str(SCRIPTS / "core" / "launch.py"), str(project), "bench_target.py", pins],
            cwd=project, capture_output=True, text=True)), a.repeat)
        print(f"{'import prepare, directly':<34}{direct:>8.1f}")
        print(f"{'import prepare, through launch.py':<34}{launched:>8.1f}   (+{launched - direct:.0f} ms a run)")


def hook_command(plugin: Path, name: str) -> list[str]:
    """The hook's command line exactly as hooks.json gives it to Claude Code."""
    config = json.loads((plugin / "hooks" / "hooks.json").read_text())
    for groups in config["hooks"].values():
        for handler in (h for g in groups for h in g["hooks"]):
            line = [handler["command"], *handler.get("args", [])]
            line = [w.replace("${CLAUDE_PLUGIN_ROOT}", str(plugin)) for w in line]
            if line[-1].endswith(name):
                return line
    raise SystemExit(f"{name} is not in {plugin}/hooks/hooks.json")


def percentiles(fns: list, calls: int) -> list[tuple[float, float]]:
    """Median and 95th percentile (ms) of each function, the calls alternated so that a
    change in the machine's load falls on all of them alike."""
    times = [[] for _ in fns]
    for _ in range(calls):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append((time.perf_counter() - start) * 1000)
    return [(statistics.median(t), sorted(t)[min(len(t) - 1, int(0.95 * len(t)))]) for t in times]


def bench_guard(project: Path, a) -> None:
    """The guard's start-to-answer time, as Claude Code starts it and directly."""
    owner = json.loads((project / common.STATE_DIR / "state.json").read_text()).get("owner")
    base = {"hook_event_name": "PreToolUse", "cwd": str(project), "session_id": owner}
    payloads = {
        "Bash deny (sed -i prepare.py)": {"tool_name": "Bash",
                                          "tool_input": {"command": "sed -i 's/a/b/' prepare.py"}},
        "Bash allow (python train.py)": {"tool_name": "Bash",
                                         "tool_input": {"command": "python train.py > /tmp/out.log"}},
        "Edit allow (train.py)": {"tool_name": "Edit",
                                  "tool_input": {"file_path": str(project / "train.py")}},
    }
    plugins = [("this plugin", PLUGIN)] + ([("compared", Path(a.compare).resolve())] if a.compare else [])
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.load)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    try:
        print(f"guard hook: {a.guard_calls} starts each, {a.load} busy processes beside it; "
              f"python3 on PATH is {subprocess.run(['sh', '-c', 'command -v python3'], capture_output=True, text=True).stdout.strip()}")
        print(f"{'plugin':<12}{'started':<34}{'call':<32}{'median':>8}{'p95':>8}")
        for label, data in payloads.items():
            payload = json.dumps({**base, **data})
            for how in ("as hooks.json starts it", "python3 on PATH", "the interpreter itself"):
                lines = []
                for name, plugin in plugins:
                    guard = str(plugin / "hooks" / "guard.py")
                    lines.append({"as hooks.json starts it": hook_command(plugin, "guard.py"),
                                  "python3 on PATH": ["python3", guard],
                                  "the interpreter itself": [sys.executable, guard]}[how])
                fns = [lambda line=line: subprocess.run(line, input=payload, capture_output=True,
                                                         text=True, env=env) for line in lines]
                for (name, _), (med, p95) in zip(plugins, percentiles(fns, a.guard_calls)):
                    flag = "" if p95 < 150 else "   over 150 ms"
                    print(f"{name:<12}{how:<34}{label:<32}{med:>8.1f}{p95:>8.1f}{flag}")
    finally:
        for proc in load:
            proc.kill()


if __name__ == "__main__":
    main()
