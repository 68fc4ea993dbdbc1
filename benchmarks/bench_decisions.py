"""Does the keep rule find real improvements, and only those? Replayed sessions.

THE MODEL OF PROPOSALS (everything in units of sigma, one run's noise):
  * each proposal has a true effect d on the kept state (lower is better):
      50% null       d = 0
      30% harmful    d = +|N(0, 3)|
      20% helpful    d = -Exp(mean G),  G in {0.5, 1, 2, 4} (the typical real gain)
  * one run of some code observes its true value + N(0, 1), fresh each run;
  * a session has 100 runs; every run costs one, baseline repeats and
    confirmation reruns included;
  * the outlier case: the same, but 5% of proposals (taken from the harmful ones)
    break training, d = U(15, 60), as a doubled learning rate that diverges does.
    Nothing about them is hard to decide; what it tests is that they do not drag
    the kept state's estimate, and with it every later decision;
  * the agent follows the recommendation: `rerun` runs the same code again (a new
    seed).

Each run goes through the real decision code in core.policy (recommend,
kept_state, kept_estimate) on records shaped as log-experiment writes them.
Printed per policy and G:
  bad kept   null or harmful proposals kept, share of those decided
  real kept  proposals with d <= -2 kept, share of those decided
  gain       median true gain of a session (baseline true value - final true value)
  x strict   that median over strict's
  curse      median winner's curse: true value of the final state minus the value
             the session reports for it (strict: the best single run kept; the
             noise-aware rule: the kept state's estimated value)
  runs/keep  runs per kept proposal
  confirms   confirming runs per session (a second run of the same code)
  bad: 2nd run  the share of the bad keeps made after a confirming run
  undone     keeps undone per session (revert_due); an undone keep counts as
             discarded in "bad kept" and "real kept", as it ends up in git

With --oracle, two more rows show what the estimates cost: the default rule told
sigma exactly (oracle-sigma), and told both sigma and the kept state's true value
(oracle-kept). No rule can know either; the gap between them and noise-aware is what
better information (not better thresholds) could win back.

Goals for the default policy (issue 8), at every G at once: gain >= 0.9x strict at
G >= 1 and >= 1.25x at G = 0.5; bad kept <= 5%; real kept >= 85%; curse <= 1.

    python benchmarks/bench_decisions.py                # synthetic: minutes, one process per core
    python benchmarks/bench_decisions.py --sessions 200 # a quick look (intervals ~8% wide)
    python benchmarks/bench_decisions.py --scripts 4    # drive the real scripts too
    python benchmarks/bench_decisions.py --oracle       # and the rule with sigma / the kept value known

After the main table, the outlier case is printed for the default rule and strict.
"""
import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "experiment-plugin" / "scripts"
sys.path.insert(0, str(SCRIPTS))
from core import records, stats as core_stats, policy as core_policy  # noqa: E402

GS = (0.5, 1.0, 2.0, 4.0)
RUNS = 100
START = 100.0       # the baseline's true value; any number works, only differences matter
GOALS = {"bad_kept": 0.05, "real_kept": 0.85, "curse": 1.0, "ratio_small": 1.25, "ratio": 0.9}
DIVERGE = 0.05      # the outlier case's share of proposals that break training


def proposal(rng, g, diverge=0.0):
    u = rng.random()
    if u < 0.5:
        return 0.0
    if u < 0.8 - diverge:
        return abs(rng.gauss(0, 3))
    if u < 0.8:
        return rng.uniform(15, 60)
    return -rng.expovariate(1 / g)


ORACLES = ("oracle-sigma", "oracle-kept")


def config_for(policy):
    aware = policy == "noise-aware" or policy in ORACLES
    return {"metric": "val_bpb", "direction": "lower", "policy": "noise-aware" if aware else policy,
            "baseline_runs": core_policy.DEFAULT_BASELINE_RUNS if aware else 1}


def oracle(policy, kept):
    """The decision code's own estimates replaced by the truth (for the --oracle rows):
    sigma is 1 with unlimited degrees of freedom; for oracle-kept the kept state's
    value is also known exactly (`kept` holds it, updated by the session)."""
    patches = [mock.patch.object(core_policy, "noise", lambda runs, candidate=None: (1.0, 10 ** 6))]
    if policy == "oracle-kept":
        patches.append(mock.patch.object(
            core_policy, "kept_estimate",
            lambda config, runs, sigma=None: {"mean": kept[0], "sd": 1e-9, "samples": 1}))
    return patches


class Stats:
    def __init__(self):
        self.bad = self.bad_kept = self.real = self.real_kept = self.keeps = 0
        self.bad_kept_confirmed = self.confirm_runs = self.reverts = 0
        self.gains, self.curses, self.runs = [], [], 0

    def decided(self, d, decision, samples=1):
        """Count one decided proposal of true effect d (None: the baseline) after
        `samples` runs of it."""
        if d is None:
            return
        self.bad += d >= 0
        self.real += d <= -2
        self.confirm_runs += samples - 1
        if decision == "keep":
            self.keeps += 1
            self.bad_kept += d >= 0
            self.bad_kept_confirmed += d >= 0 and samples > 1
            self.real_kept += d <= -2

    def undone(self, d, samples=1):
        """A keep of true effect d undone later (revert_due): it counts as discarded."""
        self.reverts += 1
        self.keeps -= 1
        self.bad_kept -= d >= 0
        self.bad_kept_confirmed -= d >= 0 and samples > 1
        self.real_kept -= d <= -2

    def add(self, other):
        for k in ("bad", "bad_kept", "real", "real_kept", "keeps", "runs", "bad_kept_confirmed",
                  "confirm_runs", "reverts"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.gains += other.gains
        self.curses += other.curses

    def row(self):
        return {"bad_kept": self.bad_kept / max(1, self.bad),
                "real_kept": self.real_kept / max(1, self.real),
                "gain": statistics.median(self.gains), "curse": statistics.median(self.curses),
                "runs_per_keep": self.runs / max(1, self.keeps),
                # where the bad keeps come from, and what confirming costs
                "bad_kept_confirmed": self.bad_kept_confirmed / max(1, self.bad_kept),
                "confirm_runs": self.confirm_runs / max(1, len(self.gains)),
                "reverts": self.reverts / max(1, len(self.gains)),
                "gains": list(self.gains)}   # per session, in seed order (for the intervals)


def ratio_interval(gains, base, draws=1000, seed=0):
    """90% interval of median(gains) / median(base) by a paired bootstrap: session i
    of both lists saw the same proposals and noise draws, so they are resampled
    together. A ratio's last digit means little without it: at 300 sessions the
    interval is several percent wide."""
    rng = random.Random(seed)
    n, out = len(gains), []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        b = statistics.median(base[i] for i in idx)
        if b > 0:
            out.append(statistics.median(gains[i] for i in idx) / b)
    out.sort()
    return out[int(0.05 * len(out))], out[int(0.95 * len(out)) - 1]


def session(policy, g, seed, diverge=0.0):
    """One synthetic session through the real decision code; returns its Stats."""
    ideas, noise = random.Random(seed), random.Random(seed + 10**6)
    config = config_for(policy)
    truth = [START]     # the kept state's true value, for the oracle rows
    with contextlib.ExitStack() as stack:
        for patch in oracle(policy, truth) if policy in ORACLES else []:
            stack.enter_context(patch)
        return _session(policy, g, ideas, noise, config, truth, diverge)


def _session(policy, g, ideas, noise, config, truth, diverge=0.0):
    runs, stats = [], Stats()
    kept_true, kept_sha = START, None
    truths = {}         # target hash: (true value, d, runs) of every code kept
    candidate, used, number = None, 0, 0
    while used < RUNS:
        if candidate is None:
            number += 1
            d = proposal(ideas, g, diverge) if kept_sha is not None else None
            candidate = {"sha": f"{number:064x}", "true": kept_true + (d or 0.0), "d": d,
                         "samples": []}
        x = candidate["true"] + noise.gauss(0, 1)
        used += 1
        candidate["samples"].append(x)
        decision, _ = core_policy.recommend(config, runs, {"target_sha": candidate["sha"],
                                                   "samples": candidate["samples"], "metrics": {}})
        if decision == "rerun":
            continue
        d = candidate["d"]
        stats.decided(d, decision, len(candidate["samples"]))
        if decision == "keep":
            kept_true, kept_sha = candidate["true"], candidate["sha"]
            truths[kept_sha] = (kept_true, d, len(candidate["samples"]))
            truth[0] = kept_true
        runs.append({"type": "run", "run": len(runs) + 1, "status": decision,
                     "metric": sum(candidate["samples"]) / len(candidate["samples"]),
                     "samples": list(candidate["samples"]), "target_sha": candidate["sha"],
                     "commit": "0" * 40, "metrics": {}})
        candidate = None
        held = core_policy.revert_due(config, runs) if decision == "discard" else None
        if held:
            _, d_undone, n_undone = truths[kept_sha]
            stats.undone(d_undone, n_undone)
            runs.append(core_policy.revert_record(config, runs, held, len(runs) + 1))
            kept_sha = runs[-1]["target_sha"]
            kept_true = truth[0] = truths[kept_sha][0]
    if policy == "strict":
        reported = core_stats.best_run(runs, "lower")["metric"]
    else:
        reported = core_policy.kept_estimate(config, runs)["mean"]
    stats.gains.append(START - kept_true)
    stats.curses.append(kept_true - reported)
    stats.runs = used
    return stats


def _cell(args):
    policy, g, sessions, seed, diverge = args
    total = Stats()
    for i in range(sessions):
        total.add(session(policy, g, seed * 7919 + i, diverge))
    return total.row()


def replay(policies, sessions, seed=1, jobs=1, diverge=0.0):
    """{(policy, G): row} over `sessions` synthetic sessions per cell; `jobs` > 1 runs
    the cells in that many processes (the same sessions, the same numbers); `diverge`:
    the share of proposals that break training (the outlier case)."""
    cells = [(policy, g) for policy in policies for g in GS]
    args = [(policy, g, sessions, seed, diverge) for policy, g in cells]
    if jobs > 1:
        import multiprocessing
        with multiprocessing.Pool(jobs) as pool:
            rows = pool.map(_cell, args)
    else:
        rows = [_cell(a) for a in args]
    return dict(zip(cells, rows))


def meets_goals(table, policy, against="strict"):
    """The goals the default policy must meet; returns the list of misses."""
    misses = []
    for g in GS:
        row, base = table[policy, g], table[against, g]
        ratio = row["gain"] / base["gain"] if base["gain"] > 0 else float("inf")
        need = GOALS["ratio_small"] if g < 1 else GOALS["ratio"]
        if ratio < need:
            misses.append(f"G={g:g}: gain {ratio:.2f}x strict < {need}")
        if row["bad_kept"] > GOALS["bad_kept"]:
            misses.append(f"G={g:g}: bad kept {row['bad_kept']:.1%}")
        if row["real_kept"] < GOALS["real_kept"]:
            misses.append(f"G={g:g}: real kept {row['real_kept']:.1%}")
        if row["curse"] > GOALS["curse"]:
            misses.append(f"G={g:g}: curse {row['curse']:.2f}")
    return misses


def print_table(table, policies, title):
    print(title)
    print(f"{'policy':13} {'G':>4} {'bad kept':>9} {'real kept':>10} {'gain':>7} {'x strict':>9} "
          f"{'(90% interval)':>15} {'curse':>6} {'runs/keep':>10} {'confirms':>9} "
          f"{'bad: 2nd run':>12} {'undone':>7}")
    for policy in policies:
        for g in GS:
            row = table[policy, g]
            base = table.get(("strict", g))
            ratio, interval = "-", ""
            if base and base["gain"] > 0:
                ratio = f"{row['gain'] / base['gain']:.3f}x"
                if policy != "strict" and len(row["gains"]) == len(base["gains"]) > 1:
                    interval = "{:.3f}-{:.3f}".format(*ratio_interval(row["gains"], base["gains"]))
            print(f"{policy:13} {g:>4g} {row['bad_kept']:>9.1%} {row['real_kept']:>10.1%} "
                  f"{row['gain']:>7.2f} {ratio:>9} {interval:>15} {row['curse']:>6.2f} "
                  f"{row['runs_per_keep']:>10.1f} {row['confirm_runs']:>9.1f} "
                  f"{row['bad_kept_confirmed']:>12.0%} {row['reverts']:>7.1f}")


# ------------------------------------------------------------------ scripts mode
# The same model, but each run is a real `run-experiment` of a fake target whose
# printed metric is its true value plus fresh noise seeded by AUTORESEARCH_SEED, and
# each decision a real `log-experiment`; afterwards git must hold the target the
# decision says (the candidate after a keep, the kept state after a discard).

FAKE_TARGET = '''import os, random
PROPOSAL = {number}   # which proposal this code is
TRUE = {true!r}   # its true value
seed = int(os.environ.get("AUTORESEARCH_SEED") or 42)
noise = random.Random(f"{salt}-{{PROPOSAL}}-{{seed}}").gauss(0, 1)
print("---")
print(f"val_bpb:          {{TRUE + {sigma!r} * noise:.6f}}")
'''


def make_project(path, python):
    path.mkdir(parents=True)
    (path / "prepare.py").write_text(
        "import sys\nif '--verify' in sys.argv: print('ok')\n")
    (path / "target.py").write_text("TRUE = 100.0\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=path, check=True, env=env, capture_output=True)
    return env


def script(name, cwd, env, *args):
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    return proc


def scripts_session(policy, g, seed, workdir, runs=RUNS, sigma=0.01):
    """One session through the real scripts; returns (Stats, list of git mismatches)."""
    ideas = random.Random(seed)
    root = Path(workdir) / f"{policy}-{g:g}-{seed}"
    env = make_project(root, sys.executable)
    env = {**env, "AUTORESEARCH_NO_REEXEC": "1"}
    stats, mismatches = Stats(), []

    def write_target(true, number):
        (root / "target.py").write_text(FAKE_TARGET.format(number=number, true=true,
                                                           salt=seed, sigma=sigma))

    write_target(START * sigma, 0)
    subprocess.run(["git", "commit", "-qam", "fake target"], cwd=root, env=env, check=True)
    proc = script("setup-session", root, env, "--tag", "bench", "--target", "target.py",
                  "--dataset", "none", "--budget", "1", "--policy", policy)
    if proc.returncode:
        raise SystemExit(f"setup-session failed: {proc.stderr}")
    kept_true, kept_sha, used, number, candidate = START, None, 0, 0, None
    truths = {}         # target hash: (true value, d, runs) of every code kept
    while used < runs:
        if candidate is None:
            log = records.read_log(str(root))
            number += 1
            d = proposal(ideas, g) if log.runs else None
            candidate = {"true": kept_true + (d or 0.0), "d": d, "runs": 0}
            write_target(candidate["true"] * sigma, number)
        used += 1
        candidate["runs"] += 1
        proc = script("run-experiment", root, env)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("recommend: ")), None)
        if line is None:
            raise SystemExit(f"run-experiment gave no recommendation:\n{proc.stdout}\n{proc.stderr}")
        decision = line.split()[1].rstrip(":")
        if decision == "rerun":
            continue
        proc = script("log-experiment", root, env, "--status", decision,
                      "--description", f"proposal {number}")
        if proc.returncode:
            raise SystemExit(f"log-experiment failed: {proc.stderr}")
        d = candidate["d"]
        stats.decided(d, decision, candidate["runs"])
        last = records.read_log(str(root)).runs[-1]
        if decision == "keep":
            kept_true, kept_sha = candidate["true"], last["target_sha"]
            truths[kept_sha] = (kept_true, d, candidate["runs"])
        elif last.get("reverts"):       # log-experiment undid the latest keep
            stats.undone(*truths[kept_sha][1:])
            kept_sha = last["target_sha"]
            kept_true = truths[kept_sha][0]
        text = (root / "target.py").read_text()
        if f"TRUE = {kept_true * sigma!r}" not in text:
            mismatches.append(f"{root.name} proposal {number}: after {decision} the target "
                              f"is not the kept state")
        candidate = None
    log = records.read_log(str(root))
    if policy == "strict":
        reported = core_stats.best_run(log.runs, "lower")["metric"] / sigma
    else:
        reported = core_policy.kept_estimate(log.config, log.runs)["mean"] / sigma
    stats.gains.append(START - kept_true)
    stats.curses.append(kept_true - reported)
    stats.runs = used
    return stats, mismatches


def replay_scripts(policies, sessions, seed=1, runs=RUNS):
    table, problems = {}, []
    workdir = tempfile.mkdtemp(prefix="bench-decisions-")
    try:
        for policy in policies:
            for g in GS:
                total = Stats()
                for i in range(sessions):
                    stats, bad = scripts_session(policy, g, seed * 7919 + i, workdir, runs)
                    total.add(stats)
                    problems += bad
                table[policy, g] = total.row()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return table, problems


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=1000,
                   help="sessions per policy and G (default 1000; at 300 the gain ratio's "
                        "90%% interval is about +-3%%)")
    p.add_argument("--policies", default="noise-aware,strict")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes for the synthetic replay (default: one per core)")
    p.add_argument("--scripts", type=int, default=0,
                   help="also drive the real scripts, this many sessions per policy and G")
    p.add_argument("--script-runs", type=int, default=RUNS,
                   help=f"runs per session in the scripts mode (default {RUNS})")
    p.add_argument("--oracle", action="store_true",
                   help="add the default rule told sigma (oracle-sigma) and also the kept "
                        "state's true value (oracle-kept): what the estimates cost")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    policies = a.policies.split(",")
    if "strict" not in policies:
        policies.append("strict")
    if a.oracle:
        policies += [o for o in ORACLES if o not in policies]
    if a.sessions < 2 or a.jobs < 1:
        p.error("--sessions must be at least 2 and --jobs at least 1")
    table = replay(policies, a.sessions, a.seed, a.jobs)
    if a.json:
        print(json.dumps({f"{k[0]} {k[1]:g}": {n: v for n, v in row.items() if n != "gains"}
                          for k, row in table.items()}))
    else:
        print_table(table, policies, f"synthetic replay: {a.sessions} sessions of {RUNS} runs per policy and G")
        misses = meets_goals(table, core_policy.DEFAULT_POLICY)
        print("goals: " + ("all met" if not misses else "missed: " + "; ".join(misses)))
        pair = [core_policy.DEFAULT_POLICY, "strict"]
        table = replay(pair, a.sessions, a.seed, a.jobs, diverge=DIVERGE)
        print_table(table, pair, f"\noutlier case: {DIVERGE:.0%} of proposals diverge "
                    "(15-60 sigma worse)")
        misses = meets_goals(table, core_policy.DEFAULT_POLICY)
        print("goals: " + ("all met" if not misses else "missed: " + "; ".join(misses)))
    if a.scripts:
        real = [p for p in policies if p not in ORACLES]    # a subprocess cannot be told the truth
        table, problems = replay_scripts(real, a.scripts, a.seed, a.script_runs)
        print_table(table, real, f"\nreal scripts: {a.scripts} sessions of {a.script_runs} "
                    "runs per policy and G")
        misses = meets_goals(table, core_policy.DEFAULT_POLICY)
        print("goals: " + ("all met" if not misses else "missed: " + "; ".join(misses)))
        print("git: " + ("the target matched every decision" if not problems else
                         f"{len(problems)} mismatches, first: {problems[0]}"))
        if problems:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
