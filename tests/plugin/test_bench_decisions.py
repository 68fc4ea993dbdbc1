"""The replay benchmarks (benchmarks/bench_decisions.py, bench_noise.py) through the real
decision code."""

import sys

import pytest

from core import policy as core_policy, stats as core_stats
from plugin_helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_decisions  # noqa: E402


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


def test_diverged_runs_do_not_drag_the_kept_estimate_into_keeping_null_edits():
    """The outlier case: 5% of proposals diverge, 15-60 sigma worse. Discarding them is
    easy; what must hold is the rest of the session: before the broken-edit tail, each
    one raised the kept estimate and null edits were kept against it (6-7% at G >= 1)."""
    table = bench_decisions.replay(["noise-aware"], sessions=40, seed=1, diverge=bench_decisions.DIVERGE)
    for g in bench_decisions.GS:
        assert table["noise-aware", g]["bad_kept"] <= 0.05, (g, table["noise-aware", g])
        assert abs(table["noise-aware", g]["curse"]) <= 1.0


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
