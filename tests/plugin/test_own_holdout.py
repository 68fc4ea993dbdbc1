"""A project of one's own checks the night on its own held-out data: --holdout names a
command that prints the metric on data the loop never sees. Its files are read-only for
the session, it never runs during it, and once the session has ended it scores the
baseline and the final state."""

import json

from plugin_helpers import commit_all, new_repo, ok, script

TRAIN = '''\
import os, random
GAIN = 0.0        # what a change really gains
OVERFIT = 0.0     # what it gains on validation only
seed = int(os.environ.get("AUTORESEARCH_SEED", 0))
noise = random.Random(seed).gauss(0, 0.01)
split = os.environ.get("SPLIT", "val")
loss = 2.0 - GAIN - (OVERFIT if split == "val" else 0.0) + noise
print(f"val_loss: {loss:.6f}")
'''
SCORE_TEST = '''\
import os, runpy
os.environ["SPLIT"] = "test"      # the held-out documents
runpy.run_path("train.py", run_name="__main__")
'''


def holdout_session(tmp_path):
    """A repository whose script scores held-out data as score_test.py, and a session
    set up on it with that as its --holdout; returns (path, setup's output)."""
    p = tmp_path / "own"
    new_repo(p)
    (p / "train.py").write_text(TRAIN)
    (p / "score_test.py").write_text(SCORE_TEST)
    commit_all(p)
    out = ok(script(p, "setup-session", "--tag", "t", "--run", "python train.py", "--metric", "val_loss",
                    "--budget", "5", "--policy", "strict", "--holdout", "python score_test.py")).stdout
    return p, out


def test_a_holdout_command_scores_the_night_once_it_has_ended(tmp_path):
    p, out = holdout_session(tmp_path)
    assert "test split python score_test.py (its files read-only)" in " ".join(out.split())
    config = json.loads((p / "autoresearch.jsonl").read_text().splitlines()[0])
    assert config["holdout"] == "python score_test.py" and "score_test.py" in config["read_only"]
    assert "score_test.py" in config["fixed_files"]
    for description, overfit in (("baseline", "0.0"), ("fit validation", "0.3")):
        (p / "train.py").write_text(TRAIN.replace("OVERFIT = 0.0", f"OVERFIT = {overfit}"))
        assert "recommend: keep" in ok(script(p, "run-experiment")).stdout
        ok(script(p, "log-experiment", "--status", "keep", "--description", description))
    refused = script(p, "summarize", "--test")
    assert refused.returncode == 2 and "still active" in refused.stderr
    ok(script(p, "end-session"))
    out = ok(script(p, "summarize", "--test", "--seeds", "2")).stdout
    assert "scoring on the test split: 4 run(s)" in out
    events = [r for r in map(json.loads, (p / "autoresearch.jsonl").read_text().splitlines())
              if r.get("event") == "test"]
    assert [(e["role"], e["status"]) for e in events] == [("baseline", "ok")] * 2 + [("final", "ok")] * 2
    assert all(1.9 < e["test"] < 2.1 and "val" not in e for e in events)
    summary = (p / "autoresearch-summary.md").read_text()
    assert "**Did not carry over**" in summary


def test_a_script_without_a_holdout_says_how_to_add_one(tmp_path):
    p = tmp_path / "own"
    new_repo(p)
    (p / "train.py").write_text(TRAIN)
    commit_all(p)
    out = ok(script(p, "setup-session", "--tag", "t", "--run", "python train.py", "--metric", "val_loss",
                    "--budget", "5")).stdout
    assert "test split none: pass --holdout CMD" in " ".join(out.split())


def test_a_night_that_kept_nothing_has_nothing_to_score(tmp_path):
    p, _ = holdout_session(tmp_path)
    ok(script(p, "run-experiment"))
    ok(script(p, "log-experiment", "--status", "keep", "--description", "baseline"))
    ok(script(p, "end-session"))
    out = ok(script(p, "summarize", "--test")).stdout
    assert "no kept change beyond the baseline: nothing to compare on the test split" in out
    assert '"event": "test"' not in (p / "autoresearch.jsonl").read_text()
