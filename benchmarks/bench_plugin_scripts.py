"""How fast the plugin's scripts and hooks answer on a session with a 1,000-run log.

Builds a throwaway project (git repo, stand-in target, 1,000 logged runs), then times
each command as the agent calls it: a fresh process, wall clock, median of several
calls. The goals: hooks (they run on every tool call) under 150 ms; scripts (one per
5-minute run) under 500 ms. Two figures are reported apart because they are
dominated by something other than the log: `run-experiment` (the training run itself;
here a stand-in that exits at once) and the first `progress.png` render (importing
matplotlib); later summaries reuse the plot while the log is unchanged.

    python benchmarks/bench_plugin_scripts.py [--runs 1000] [--repeat 7]
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
from plugin_helpers import HOOKS, SCRIPTS, fill_log, make_project, script  # noqa: E402
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
    a = p.parse_args()
    # As on a person's machine, let Python cache the scripts' compiled bytecode (some CI
    # images turn that off, which adds ~15 ms of compiling the core modules to every call).
    if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
        print("note: PYTHONDONTWRITEBYTECODE was set; cleared for the timed processes")
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "proj")
        check(script(project, "setup-session", "--tag", "bench", "--dataset", "classics", "--budget", "1"))
        fill_log(project, a.runs)
        check(script(project, "run-experiment"))
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
            ("guard hook (Bash deny)", hook("guard.py", guard_in)),
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


if __name__ == "__main__":
    main()
