"""How many seeds the test split is scored on, and what the morning's table concludes,
from a session's records (no run needed)."""

from core import holdout

CONFIG = {"direction": "lower", "metric": "val_bpb", "measure": "harness"}


def runs(baseline, final, sigma_pairs):
    """A baseline measured three times, repeats of identical code for the noise, a keep."""
    out = [{"run": 1, "status": "keep", "metric": baseline[0], "samples": baseline, "target_sha": "a",
            "commit": "a" * 7, "commit_sha": "a" * 40}]
    out += [{"run": 2 + i, "status": "discard", "metric": x, "samples": list(pair), "target_sha": f"r{i}",
             "commit": "b" * 7} for i, pair in enumerate(sigma_pairs) for x in pair[:1]]
    out.append({"run": 9, "status": "keep", "metric": final[0], "samples": final, "target_sha": "c",
                "commit": "c" * 7, "commit_sha": "c" * 40})
    return out


def test_a_gain_that_is_large_beside_the_noise_needs_the_fewest_seeds():
    log = runs([2.00, 2.01, 1.99], [1.80], [(1.0, 1.01), (1.5, 1.49)])
    assert holdout.seeds_needed(CONFIG, log) == holdout.MIN_SEEDS


def test_a_gain_near_the_noise_gets_more_seeds_up_to_the_cap():
    assert holdout.seeds_needed(CONFIG, runs([2.00, 2.01, 1.99], [1.99], [(1.0, 1.02), (1.5, 1.48)])) \
        == holdout.MAX_SEEDS
    # No repeats at all: the noise is unknown, a middle number.
    single = runs([2.0], [1.9], [])
    assert holdout.seeds_needed(CONFIG, single) == holdout.DEFAULT_SEEDS


def event(role, state, seed, val, test):
    return {"type": "event", "event": "test", "role": role, "state": state, "seed": seed, "status": "ok",
            "commit": "a" * 40, "val": val, "test": test}


def test_the_table_says_whether_the_gain_carried_over():
    log = runs([2.00, 2.01, 1.99], [1.80], [(1.0, 1.01), (1.5, 1.49)])
    held = [event("baseline", 1, 1000, 2.0, 2.10), event("baseline", 1, 1001, 2.01, 2.11),
            event("final", 9, 1000, 1.8, 1.91), event("final", 9, 1001, 1.81, 1.90)]
    t = holdout.table(CONFIG, log, held)
    assert t["carried"] is True and abs(t["test_gain"]["gain"] - 0.2) < 1e-9
    assert t["test_gain"]["lo"] > 0 and t["val_gain"]["se"] > 0
    fitted = [dict(e, test=2.10 if e["role"] == "final" else e["test"]) for e in held]
    t = holdout.table(CONFIG, log, fitted)
    assert t["carried"] is False
    lines = "\n".join(holdout.lines(CONFIG, log, fitted))
    assert "**Did not carry over**" in lines and "| final (run 9) | 2 |" in lines
    # Failed scoring runs are shown nowhere as numbers; nothing scored, no table.
    assert holdout.table(CONFIG, log, [dict(e, status="crash", test=None) for e in held]) is None
