"""The session log (core/records): records follow the JSON schema and seed 001's format."""

import json
import time

import jsonschema
import pytest

from core import common, records as core_records
from plugin_helpers import PLUGIN, edit_target, git, ok, records, run_and_log, script


def test_records_match_the_json_schema(project):
    run_and_log(project, "keep", "baseline")
    run_and_log(project, "discard", "worse", VAL_BPB=1.5)
    edit_target(project, MODE="nan")
    script(project, "run-experiment")
    ok(script(project, "log-experiment", "--status", "crash", "--description", "nan"))
    schema = json.loads((PLUGIN / "schema" / "autoresearch-record.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for rec in records(project):
        jsonschema.validate(rec, schema)


@pytest.mark.parametrize("mutate, says", [
    (lambda r: r.pop("commit"), "'commit' is a required property"),
    (lambda r: r.update(status="kept"), "record.status: 'kept' is not one of"),
    (lambda r: r.update(run=0), "record.run: 0 is less than the minimum of 1"),
    (lambda r: r.update(metric="0.9"), "record.metric: '0.9' is not of type"),
    (lambda r: r.update(extra=1), "'extra' was unexpected"),
    (lambda r: r.update(description=""), "record.description: '' should be non-empty"),
    (lambda r: r.update(commit="abc"), "record.commit: 'abc' does not match"),
    (lambda r: r.update(metrics={"a": [1]}), "record.metrics.a: [1] is not of type"),
])
def test_an_invalid_record_is_refused_in_one_line(mutate, says):
    good = {"type": "run", "run": 2, "commit": "a" * 40, "status": "keep", "metric": 0.9,
            "metrics": {"val_bpb": 0.9, "mfu_percent": "n/a"}, "description": "d",
            "timestamp": "2026-01-01T00:00:00Z"}
    core_records.validate(good)
    mutate(good)
    with pytest.raises(common.UserError) as refused:
        core_records.validate(good)
    message = str(refused.value)
    assert message.startswith("invalid record") and says in message and "\n" not in message, message


def test_records_follow_seed_001_and_keep_the_full_hash(project):
    config = records(project)[0]
    assert (config["name"], config["metricName"], config["metricUnit"], config["bestDirection"]) \
        == ("t1", "val_bpb", "bpb", "lower")
    run_and_log(project, "keep", "baseline")
    edit_target(project, VAL_BPB=0.9)
    ok(script(project, "run-experiment"))
    ok(script(project, "log-experiment", "--status", "discard", "--description", "lower",
              "--asi", json.dumps({"learned": "x"})))
    r = records(project)[-1]
    assert {"run", "commit", "metric", "metrics", "status", "description", "timestamp",
            "segment", "confidence", "asi"} <= set(r)
    assert len(r["commit"]) == 7 and r["commit_sha"].startswith(r["commit"]) and len(r["commit_sha"]) == 40
    assert isinstance(r["timestamp"], int) and abs(r["timestamp"] - time.time()) < 120
    assert r["segment"] == 0 and r["asi"] == {"learned": "x"} and "notes" not in r
    assert git(project, "rev-parse", f"refs/autoresearch/t1/run-2") == r["commit_sha"]


def test_results_leave_memory_and_throughput_empty_where_an_own_script_measured_none(tmp_path):
    run = {"run": 1, "commit": "abcdef1234", "status": "keep", "metric": 0.91, "metrics": {},
           "description": "baseline"}
    crash = {**run, "run": 2, "status": "crash", "metric": None, "description": "oom"}
    for kind, row in (("own", ["abcdef1", "0.910000", "", "", "keep", "baseline"]),
                      ("harness", ["abcdef1", "0.910000", "0.0", "0", "keep", "baseline"])):
        core_records.write_results(str(tmp_path), {"metric": "val_acc", "project": kind}, [run, crash])
        rows = [line.split("\t") for line in (tmp_path / "results.tsv").read_text().splitlines()]
        assert rows[0] == ["commit", "val_acc", "memory_gb", "avg_tok_sec", "status", "description"]
        assert rows[1] == row, kind         # seed 000's zeros stay where the harness measures
