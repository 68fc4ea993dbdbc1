"""confidence (core/stats): the MAD noise floor and verdict, reported without advice."""

import json

import pytest

from core import stats
from plugin_helpers import ok, script


def log_metric(p, status, value, description="x"):
    ok(script(p, "log-experiment", "--status", status, "--metric", str(value),
              "--description", description))


def test_confidence_reports_noise_floor_and_verdict(project):
    for status, v in [("keep", 1.00), ("discard", 1.01), ("discard", 0.99), ("discard", 1.02),
                      ("keep", 0.90)]:
        log_metric(project, status, v)
    out = json.loads(ok(script(project, "confidence", "--json")).stdout)
    # metrics 1.00 1.01 0.99 1.02 0.90: median 1.00, deviations 0 .01 .01 .02 .10 -> MAD .01
    assert out["noise_floor"] == pytest.approx(0.01)
    assert out["improvement"] == pytest.approx(0.10)
    assert out["confidence"] == pytest.approx(10.0) and out["verdict"] == "likely real"
    text = ok(script(project, "confidence")).stdout
    assert "likely real" in text and "baseline 1.000000" in text and "best 0.900000" in text


def test_confidence_reports_a_marginal_latest_keep_without_advice(project):
    """The MAD verdict is reported; what to do comes only from the keep rule."""
    for status, v in [("keep", 1.00), ("discard", 1.02), ("discard", 0.98), ("discard", 1.04),
                      ("keep", 0.97)]:
        log_metric(project, status, v)
    out = json.loads(ok(script(project, "confidence", "--json")).stdout)
    assert out["verdict"] == "marginal" and "rerun" not in out
    text = ok(script(project, "confidence")).stdout
    assert "marginal" in text and "rerun:" not in text and "to confirm" not in text


def test_confidence_verdict_noise():
    runs = [{"run": i + 1, "status": s, "metric": m, "commit": "a" * 40}
            for i, (s, m) in enumerate([("keep", 1.0), ("discard", 1.05), ("discard", 0.95),
                                        ("keep", 0.99)])]
    c = stats.confidence(runs, "lower")
    assert c["verdict"] == "noise" and c["confidence"] < 1
