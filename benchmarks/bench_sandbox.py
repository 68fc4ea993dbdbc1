"""What the run's sandbox costs: the wall time of a run in bubblewrap and of the same
run with no sandbox, alternated in pairs, and the medians.

    python benchmarks/bench_sandbox.py [--pairs 5] [--budget 5] [--hidden]

A fresh clone of this repository with a small CPU model, a session on `classics`
(a copy of the prepared cache), and runs started by the runner itself
(core.runner.run_target) with the session's sandbox or with none. The same seed
each time: the pair differs only in the sandbox. --hidden sets the session up with
the validation files hidden (the training view of the cache is made by the first
sandboxed run, before the timed ones). Each run counts 0.1 s a training step (the
template's clock edited), so every run does the same work; the overhead is the
difference of the medians of the runner's wall time, in seconds, and as a share of
the wall time without a sandbox.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiment-plugin", "scripts"))
from core import records, runner, sandbox  # noqa: E402


def session(base: str, budget: float, hidden: bool) -> str:
    root = os.path.join(base, "project")
    subprocess.run(["git", "clone", "-q", REPO, root], check=True)
    for key, value in (("user.name", "Bench"), ("user.email", "bench@example.com")):
        subprocess.run(["git", "config", key, value], cwd=root, check=True)
    cache = os.path.join(base, "cache")
    env = {**os.environ, "AUTORESEARCH_CACHE": cache, "AUTORESEARCH_QUIET": "1", "AUTORESEARCH_LOAD_CHECK": "0",
           "AUTORESEARCH_EVAL_TOKENS": "8192"}
    subprocess.run([sys.executable, "prepare.py", "--dataset", "classics"], cwd=root, env=env, check=True,
                   capture_output=True)
    path = os.path.join(root, "train.py")
    # A clock that counts 0.1 s a step: every run does the same steps, so the wall times
    # differ by the sandbox and the machine's noise, not by where a step ends.
    text = open(path).read().replace("    DEPTH, WIDTH, HEAD_DIM = 2, 256, 64\n", "    DEPTH, WIDTH, HEAD_DIM = 2, 64, 32\n")
    text = text.replace("        dt = time.time() - t0\n", "        dt = 0.1\n")
    open(path, "w").write(text)
    if hidden:
        with open(os.path.join(root, "prepare.py"), "a") as f:
            f.write(f"\n# {sandbox.SERVED_VALIDATION}\n")
    subprocess.run(["git", "commit", "-qam", "bench"], cwd=root, check=True)
    subprocess.run([sys.executable, os.path.join(REPO, "experiment-plugin", "scripts", "setup-session"),
                    "--tag", "bench", "--dataset", "classics", "--budget", f"{budget:g}", "--policy", "strict"],
                   cwd=root, env=env, check=True, capture_output=True)
    os.environ.update(env)
    return root


def one(root: str, config: dict, kind: str) -> tuple[float, float | None]:
    config = {**config, "sandbox": dict(config["sandbox"], kind=kind)}
    results = []
    code, seconds, _ = runner.run_target(root, config, config["timeout"], 42, results=results)
    doc = results[0] if results and results[0] else {}
    return seconds, doc.get("training_seconds")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--budget", type=float, default=5)
    p.add_argument("--hidden", action="store_true")
    a = p.parse_args()
    kind, why = sandbox.available()
    if kind != sandbox.BWRAP:
        sys.exit(f"bubblewrap does not run here ({why})")
    base = tempfile.mkdtemp(prefix="bench-sandbox-")
    try:
        root = session(base, a.budget, a.hidden)
        config = records.read_config(root)
        one(root, config, "bwrap")                  # warm: the view, the page cache, the compile cache
        walls = {"bwrap": [], "none": []}
        for i in range(a.pairs):
            for k in (("bwrap", "none") if i % 2 == 0 else ("none", "bwrap")):
                wall, trained = one(root, config, k)
                walls[k].append(wall)
                print(f"pair {i + 1} {k:<6} wall {wall:6.2f} s  training {trained} s", flush=True)
        boxed, bare = statistics.median(walls["bwrap"]), statistics.median(walls["none"])
        print(json.dumps({"pairs": a.pairs, "budget_s": a.budget, "hidden": a.hidden,
                          "median_wall_bwrap_s": round(boxed, 3), "median_wall_none_s": round(bare, 3),
                          "min_wall_bwrap_s": round(min(walls["bwrap"]), 3),
                          "min_wall_none_s": round(min(walls["none"]), 3),
                          "overhead_s": round(boxed - bare, 3),
                          "overhead_pct": round(100 * (boxed - bare) / bare, 2)}))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
