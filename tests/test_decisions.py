"""Decisions a researcher can trust: a new seed for every repeat of identical code, the
noise pooled from those repeats, disturbed runs set aside, and the replay benchmark
of the keep rules."""

import json
import math
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from plugin_helpers import SCRIPTS, make_project, ok, records, script

sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import bench_decisions  # noqa: E402
from core import harness, parsing, monitor, stats as core_stats, policy as core_policy, session as core_session  # noqa: E402

# A stand-in whose metric depends on the seed it is given, as a real run's does.
SEEDED_TARGET = '''\
import os, random, time
VAL_BPB = 1.0
BUSY = 0.0        # seconds of computing, so that the machine's load can be read
seed = int(os.environ["AUTORESEARCH_SEED"])
end = time.monotonic() + BUSY
while time.monotonic() < end:
    pass
print("---")
print(f"val_bpb:          {VAL_BPB + 0.01 * random.Random(seed).gauss(0, 1):.6f}")
print("avg_tok_sec:      1,000")
'''

HOG = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass\n"


@pytest.fixture
def session(tmp_path):
    p = make_project(tmp_path / "proj")
    (p / "train.py").write_text(SEEDED_TARGET)
    subprocess.run(["git", "commit", "-qam", "seeded stand-in"], cwd=p, check=True)
    ok(script(p, "setup-session", "--tag", "s", "--dataset", "classics", "--budget", "1"))
    return p


def recommendation(proc):
    return next(l for l in proc.stdout.splitlines() if l.startswith("recommend: "))


def set_constant(p, name, value):
    text = (p / "train.py").read_text()
    text = "\n".join(f"{name} = {value!r}" if line.startswith(f"{name} = ") else line
                     for line in text.splitlines()) + "\n"
    (p / "train.py").write_text(text)


def test_repeats_of_identical_code_get_new_seeds_and_make_the_noise(session):
    outs = [ok(script(session, "run-experiment")) for _ in range(3)]
    assert [recommendation(o).split(":")[1].strip() for o in outs] == ["rerun", "rerun", "keep"]
    assert ["seed 42" in outs[0].stdout, "seed 43" in outs[1].stdout, "seed 44" in outs[2].stdout] \
        == [True, True, True]
    ok(script(session, "log-experiment", "--status", "keep", "--description", "baseline"))
    base = records(session)[-1]
    assert base["seeds"] == [42, 43, 44] and len(set(base["samples"])) == 3
    assert base["target_sha"] == harness.hash_file(str(session / "train.py"))
    assert base["metric"] == pytest.approx(sum(base["samples"]) / 3)
    sigma, dof = core_stats.noise(records(session)[1:])
    assert dof == 2 and 0 < sigma
    out = ok(script(session, "confidence")).stdout
    assert f"noise sigma {sigma:.6f} from 3 repeats of identical code (2 dof)" in out
    assert json.loads(ok(script(session, "confidence", "--json")).stdout)["sigma"] == pytest.approx(sigma)

    set_constant(session, "VAL_BPB", 0.9)          # new code: the first run is seed 42 again
    proc = ok(script(session, "run-experiment"))
    assert "seed 42" in proc.stdout and recommendation(proc).startswith("recommend: keep")
    logged = ok(script(session, "log-experiment", "--status", "keep", "--description", "lower")).stdout
    assert "kept state (run 2): estimated val_bpb" in ok(script(session, "confidence")).stdout
    est = core_policy.kept_estimate(records(session)[0], records(session)[1:])["mean"]
    best = records(session)[-1]["metric"]
    assert f"best val_bpb {best:.6f} (run 2); the kept state is estimated at {est:.6f}" in logged
    out = json.loads(ok(script(session, "confidence", "--json")).stdout)
    assert abs(out["kept_estimate"] - 0.9) < abs(out["kept_estimate"] - base["metric"])
    assert out["kept_sd"] > 0


def test_bad_setup_input_is_one_line_error(tmp_path):
    p = make_project(tmp_path / "p")
    for args, words in ((["--baseline-runs", "0"], "--baseline-runs must be 1 or more"),
                        (["--policy", "fast"], "unknown keep policy 'fast'")):
        proc = script(p, "setup-session", "--tag", "x", "--dataset", "classics", *args)
        assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.splitlines()) == 1
    ok(script(p, "setup-session", "--tag", "x", "--dataset", "classics", "--policy", "balanced",
              "--baseline-runs", "2"))
    config = records(p)[0]
    assert config["policy"] == "quality-speed" and config["baseline_runs"] == 2


def machine_busy(seconds=1.0):
    """Share of the CPUs busy over a short look, before a test that needs quiet."""
    a = monitor.read_proc_stat()
    time.sleep(seconds)
    b = monitor.read_proc_stat()
    return (b["busy"] - a["busy"] + b["steal"] - a["steal"]) / ((os.cpu_count() or 1) * seconds)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_a_run_beside_a_cpu_hog_is_disturbed_and_not_a_sample(session):
    set_constant(session, "BUSY", 6.0)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 1)]
    try:
        proc = ok(script(session, "run-experiment", timeout=120))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert "machine: DISTURBED" in proc.stdout
    assert recommendation(proc).startswith("recommend: rerun: disturbed: other processes used")
    pending = json.loads((session / ".autoresearch" / "pending.json").read_text())
    assert pending["samples"] == [] and pending["disturbed"][0]["seed"] == 42
    assert pending["load"]["others"] > monitor.DISTURBED_OTHERS


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_a_quiet_run_is_not_disturbed(session):
    if machine_busy() > monitor.DISTURBED_OTHERS / 2:
        pytest.skip("the machine is busy with other work; a quiet run cannot be shown now")
    set_constant(session, "BUSY", 6.0)
    proc = ok(script(session, "run-experiment", timeout=120))
    assert "machine: quiet" in proc.stdout, proc.stdout


def test_gpu_and_ps_readings_parse_recorded_output():
    smi = "12345, 1024\n23456, 20480\n"
    assert monitor.parse_gpu_pids(smi) == [12345, 23456]
    assert monitor.parse_gpu_pids("No running processes found\n[N/A], [N/A]\n") == []
    ps = "    1     1   0:01.50\n  812   812  12:03.25\n  900   812 1-02:03:04\n bad line\n"
    assert monitor.parse_ps_cputimes(ps) == {1: (1, 1.5), 812: (812, 723.25), 900: (812, 93784.0)}


def test_real_template_with_two_seeds_gives_two_val_bpb(tmp_path, classics_cache):
    """The real train.py, a few seconds on classics: the seed reaches the model."""
    values = []
    for seed in ("42", "43"):
        env = {**os.environ, **classics_cache, "PYTHONPATH": REPO, "AUTORESEARCH_TIME_BUDGET": "3",
               "AUTORESEARCH_SEED": seed}
        proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py")], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        values.append(parsing.parse_metrics(proc.stdout)["val_bpb"])
    assert values[0] != values[1]


def test_replay_default_policy_keeps_little_noise_and_reports_honestly():
    """The fast replay through the real decision code (fixed seeds: deterministic)."""
    table = bench_decisions.replay(["noise-aware", "strict"], sessions=40, seed=1)
    for g in bench_decisions.GS:
        rule, strict = table["noise-aware", g], table["strict", g]
        assert rule["bad_kept"] <= 0.05, (g, rule)
        assert rule["curse"] <= 1.0, (g, rule)
        assert rule["bad_kept"] <= strict["bad_kept"] and rule["curse"] < strict["curse"]
        assert rule["real_kept"] >= 0.85, (g, rule)
    # Lucky keeps are undone, and undoing never costs the goals above.
    assert sum(table["noise-aware", g]["reverts"] for g in bench_decisions.GS) > 0
    assert all(table["strict", g]["reverts"] == 0 for g in bench_decisions.GS)
    # Where real gains are small, judging against an honest estimate finds more of them.
    assert table["noise-aware", 0.5]["gain"] > 1.25 * table["strict", 0.5]["gain"]


def test_noise_report_says_what_the_step_count_and_a_speed_probe_explain(capsys):
    import bench_noise
    steps = [180, 200, 190, 210, 185]
    rows = [{"seed": seed, "steps": n, "val_bpb": 2.0 - 0.001 * n, "probe": n / 2, "disturbed": None}
            for seed, n in zip((42, 43, 42, 44, 45), steps)]
    bench_noise.report(rows)
    out = capsys.readouterr().out
    assert "steps 180-210; val_bpb per step -0.0010; the step count explains 100%" in out
    assert "probe 90.0-105.0 GFLOP/s; it explains 100% of the step count's variance" in out
    assert "adjusted for it: sigma 0.0000 (unadjusted 0.0120)" in out
    for r, wobble in zip(rows, (3, -2, 5, -4, 0)):      # a probe that does not track
        r["probe"] = 100 + wobble
    bench_noise.report(rows)
    assert "it explains 100%" not in capsys.readouterr().out


def test_oracle_rows_decide_on_the_truth_and_leave_the_decision_code_as_it_was():
    """--oracle replays the default rule told sigma, or sigma and the kept value: the
    second reports the true value (no winner's curse at all), the first does not."""
    noise, kept_estimate = core_stats.noise, core_policy.kept_estimate
    table = bench_decisions.replay(["oracle-sigma", "oracle-kept", "strict"], sessions=3, seed=4)
    assert core_stats.noise is noise and core_policy.kept_estimate is kept_estimate
    for g in bench_decisions.GS:
        assert table["oracle-kept", g]["curse"] == 0
        assert table["oracle-sigma", g]["curse"] != 0


def test_replay_in_several_processes_gives_the_same_table_and_an_honest_interval():
    one = bench_decisions.replay(["noise-aware", "strict"], sessions=4, seed=5, jobs=1)
    two = bench_decisions.replay(["noise-aware", "strict"], sessions=4, seed=5, jobs=2)
    assert one == two
    # The interval is of the paired ratio: a rule that gains exactly 0.9x in every
    # session has the interval 0.9-0.9; spread across sessions widens it around the point.
    base = [float(x) for x in range(1, 41)]
    assert bench_decisions.ratio_interval([0.9 * x for x in base], base) == pytest.approx((0.9, 0.9))
    noisy = [x * (0.7 if i % 2 else 1.1) for i, x in enumerate(base)]
    lo, hi = bench_decisions.ratio_interval(noisy, base)
    point = bench_decisions.statistics.median(noisy) / bench_decisions.statistics.median(base)
    assert lo < point < hi and hi - lo > 0.05


def test_replay_through_the_real_scripts_leaves_git_where_each_decision_says(tmp_path):
    for policy in ("noise-aware", "strict"):
        stats, mismatches = bench_decisions.scripts_session(policy, 2.0, 3, tmp_path, runs=12)
        assert mismatches == []
        assert stats.runs == 12 and stats.bad + stats.real + stats.keeps > 0


def test_effect_posterior_matches_numerical_integration_of_the_model():
    """The closed form (point mass, half-normal, exponentials against a normal) agrees
    with brute-force integration of the stated prior, far into both tails."""
    def brute(diff, spread, step=0.002):
        total = helpful = first = second = 0.0
        for i in range(int(80 / step)):
            d = -50 + i * step
            if d < 0:
                prior = sum(core_policy.PRIOR_HELPFUL / len(core_policy.HELPFUL_MEANS) / m * math.exp(d / m)
                            for m in core_policy.HELPFUL_MEANS)
            else:
                prior = (core_policy.PRIOR_HARMFUL * 2 / core_policy.HARMFUL_SCALE
                         * math.exp(-d * d / (2 * core_policy.HARMFUL_SCALE ** 2)) / math.sqrt(2 * math.pi))
            w = prior * math.exp(-(diff - d) ** 2 / (2 * spread ** 2)) * step
            total, first, second = total + w, first + w * d, second + w * d * d
            helpful += w if d < 0 else 0.0
        total += core_policy.PRIOR_NULL * math.exp(-diff ** 2 / (2 * spread ** 2))   # the null's point mass
        return helpful / total, first / total, second / total - (first / total) ** 2

    for diff, spread in [(-2, 1), (0, 1.2), (3, 0.8), (-6, 0.9), (20, 1), (-30, 1)]:
        post = core_policy.effect_posterior(diff, spread)
        p, mean, var = brute(diff, spread)
        assert post["p_helpful"] == pytest.approx(p, abs=2e-3)
        assert post["mean"] == pytest.approx(mean, abs=5e-3)
        assert post["var"] == pytest.approx(var, abs=5e-3)


def test_kept_estimate_shrinks_the_luck_of_a_marginal_keep():
    """A keep on one lucky run is not taken at face value: the estimate sits between
    the old state and the lucky sample; a clear gain is taken nearly as measured; a
    discarded null run beside the kept state sharpens it."""
    config = {"metric": "val_bpb", "direction": "lower", "policy": "noise-aware"}
    base = {"run": 1, "status": "keep", "metric": 1.0, "commit": "a" * 40, "target_sha": "a" * 64,
            "samples": [0.99, 1.01, 0.995, 1.005, 1.0, 1.0]}

    def keep(value):
        return {"run": 2, "status": "keep", "metric": value, "commit": "b" * 40,
                "target_sha": "b" * 64, "samples": [value]}

    marginal = core_policy.kept_estimate(config, [base, keep(0.982)], sigma=0.01)
    assert 0.982 < marginal["mean"] < 0.995
    clear = core_policy.kept_estimate(config, [base, keep(0.90)], sigma=0.01)
    assert clear["mean"] == pytest.approx(0.90, abs=0.002)
    null = {"run": 3, "status": "discard", "metric": 0.905, "commit": "c" * 40,
            "target_sha": "c" * 64, "samples": [0.905]}
    assert core_policy.kept_estimate(config, [base, keep(0.90), null], sigma=0.01)["sd"] < clear["sd"]
    higher = {**config, "direction": "higher"}
    flipped = [{**r, "metric": -r["metric"], "samples": [-x for x in r["samples"]]}
               for r in (base, keep(0.982))]
    assert core_policy.kept_estimate(higher, flipped, sigma=0.01)["mean"] == pytest.approx(-marginal["mean"])


def test_a_run_disturbed_again_and_again_says_the_machine_is_busy():
    config = {"metric": "val_bpb", "direction": "lower", "policy": "noise-aware"}
    base = [{"run": 1, "status": "keep", "metric": 1.0, "commit": "a" * 40, "target_sha": "a" * 64,
             "samples": [0.99, 1.0, 1.01]}]
    for times, busy in ((1, False), (monitor.DISTURBED_BUSY, True)):
        decision, why = core_policy.recommend(config, base, {
            "target_sha": "b" * 64, "samples": [], "metrics": {},
            "disturbed_now": "other processes 55% of 2 CPUs", "disturbed_runs": times})
        assert decision == "rerun" and why.startswith("disturbed: other processes")
        assert ("the machine is busy" in why) is busy and ("AUTORESEARCH_LOAD_CHECK=0" in why) is busy


def test_a_keep_the_runs_built_on_it_do_not_bear_out_is_undone_in_git(session):
    """A keep on one lucky run, then edits on top of it that measure like the code it
    replaced: log-experiment puts the branch back on that code, logs why, keeps the
    undone commit reachable, and the summary and best no longer count it."""
    for _ in range(3):
        ok(script(session, "run-experiment"))
    ok(script(session, "log-experiment", "--status", "keep", "--description", "baseline"))
    baseline = (session / "train.py").read_text()
    set_constant(session, "VAL_BPB", 0.985)
    ok(script(session, "run-experiment"))
    ok(script(session, "log-experiment", "--status", "keep", "--description", "lucky"))
    kept_commit = records(session)[-1]["commit_sha"]
    outs = []
    for i in range(1, 4):
        set_constant(session, "VAL_BPB", 1.01)
        set_constant(session, "BUSY", 0.0001 * i)     # another edit, another code
        ok(script(session, "run-experiment"))
        outs.append(ok(script(session, "log-experiment", "--status", "discard",
                              "--description", f"idea {i}")).stdout)
        if "revert run 2" in outs[-1]:
            break
    assert "revert run 2" in outs[-1], outs
    assert all("revert" not in o for o in outs[:-1])
    undo = records(session)[-1]
    assert undo["reverts"] == 2 and undo["status"] == "keep" and undo["samples"] == []
    assert undo["commit"] == records(session)[1]["commit"]
    assert (session / "train.py").read_text() == baseline       # git is on the old code
    assert subprocess.run(["git", "cat-file", "-e", kept_commit], cwd=session).returncode == 0
    assert "revert run 2" in (session / "results.tsv").read_text()
    runs = records(session)[1:]
    assert core_stats.best_run(runs, "lower")["run"] == 1 and core_session.runs_since_keep(runs) == len(outs) + 1
    ok(script(session, "summarize"))
    assert (session / "progress.png").stat().st_size > 0
    summary = (session / "autoresearch-summary.md").read_text()
    assert f"{len(runs) - 1} runs: 1 kept (1 more kept, then undone)" in summary
    assert "kept, then undone" in summary and "| 1 | 2 |" not in summary
    # The record that undoes a keep tried nothing: --max-iterations does not count it.
    config = records(session)[0]
    assert core_stats.experiments(runs) == len(runs) - 1
    assert core_session.loop_end_reason(str(session), {**config, "max_iterations": len(runs)}, runs) is None
    assert "cap was reached" in core_session.loop_end_reason(
        str(session), {**config, "max_iterations": len(runs) - 1}, runs)
    assert f"## Progress after {len(runs) - 1} runs" in core_session.progress_report(str(session), config, runs, 10)
    resumed = ok(script(session, "resume-session", "--max-iterations", str(len(runs) + 4))).stdout
    assert f"{len(runs) - 1} runs logged" in resumed and "(5 left)" in resumed, resumed
    # The next idea is judged against the old code again, and nothing else is undone.
    set_constant(session, "VAL_BPB", 1.01)
    set_constant(session, "BUSY", 0.01)
    ok(script(session, "run-experiment"))
    assert "revert" not in ok(script(session, "log-experiment", "--status", "discard",
                                     "--description", "one more")).stdout


def test_a_clear_gain_is_not_undone_by_the_runs_after_it():
    config = {"metric": "val_bpb", "direction": "lower", "policy": "noise-aware"}
    base = {"run": 1, "status": "keep", "metric": 1.0, "commit": "a" * 7, "target_sha": "a" * 64,
            "samples": [0.99, 1.01, 1.0]}
    runs = [base, {"run": 2, "status": "keep", "metric": 0.95, "commit": "b" * 7,
                   "target_sha": "b" * 64, "samples": [0.95]}]
    for i in range(6):
        runs.append({"run": 3 + i, "status": "discard", "metric": 0.955, "commit": "c" * 7,
                     "target_sha": f"{i:064x}", "samples": [0.955]})
        assert core_policy.revert_due(config, runs) is None
    assert core_policy.kept_estimate(config, runs)["held"]["p"] > 0.9
    # Under strict (Karpathy's rule) nothing is ever undone.
    lucky = [base, {**runs[1], "metric": 0.99, "samples": [0.99]}] + \
        [{**r, "metric": 1.02, "samples": [1.02]} for r in runs[2:]]
    assert core_policy.revert_due(config, lucky) is not None
    assert core_policy.revert_due({**config, "policy": "strict"}, lucky) is None


def test_the_kept_estimate_leaves_out_what_a_wave_measured_on_a_state_left_since():
    """In a wave, a candidate can finish after the kept state moved: its run measured the
    state it was built on, so it must not move the estimate of the new one, nor count
    toward undoing its keep. One kept in place of the newer change starts from the
    state it was built on."""
    config = {"metric": "val_bpb", "direction": "lower", "policy": "noise-aware"}
    a, b, c = "a" * 40, "b" * 40, "c" * 40

    def run(n, commit, status, value, base=None):
        r = {"type": "run", "run": n, "commit": commit[:7], "commit_sha": commit, "status": status,
             "metric": value, "samples": [value], "target_sha": f"{n:064x}"}
        return {**r, "base": base} if base else r

    baseline = {**run(1, a, "keep", 1.0), "samples": [0.99, 1.01, 1.0]}
    lucky = run(2, b, "keep", 0.985, base=a)
    est = core_policy.kept_estimate(config, [baseline, lucky])
    late = run(3, "d" * 40, "discard", 1.02, base=a)         # built on the baseline
    after = core_policy.kept_estimate(config, [baseline, lucky, late])
    assert (after["mean"], after["sd"], after["held"]["since"]) == (est["mean"], est["sd"], 0)
    on_top = run(3, "d" * 40, "discard", 1.02, base=b)       # the same run, built on the keep
    moved = core_policy.kept_estimate(config, [baseline, lucky, on_top])
    assert moved["mean"] > est["mean"] and moved["held"]["since"] == 1
    # Kept in place of the lucky change: judged from the baseline's state, as if the
    # lucky keep had not happened.
    better = run(3, c, "keep", 0.95, base=a)
    replaced = core_policy.kept_estimate(config, [baseline, lucky, better])
    alone = core_policy.kept_estimate(config, [baseline, {**better, "run": 2}])
    assert replaced["mean"] == pytest.approx(alone["mean"]) and replaced["sd"] == pytest.approx(alone["sd"])
    assert replaced["held"]["prev"]["run"] == 1
