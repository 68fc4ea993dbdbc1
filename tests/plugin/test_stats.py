"""Noise from repeats (core/stats): a new seed for every repeat of identical code, and
the noise pooled from those repeats."""

import json

import pytest

from core import harness, policy as core_policy, stats as core_stats
from plugin_helpers import ok, recommendation, records, script, set_constant


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
