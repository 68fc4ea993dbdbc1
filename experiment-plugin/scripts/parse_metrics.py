#!/usr/bin/env python3
"""Print the metrics of a run as one JSON object.

Reads a run log (the template's `---` summary block and/or `METRIC name=value`
lines) or a last_run.json (its `result` section). With output piped in
(`python train.py 2>&1 | parse-metrics`) it reads that, and only that: a run that
printed no summary is reported as such, never answered with an older file. Without
an argument or a pipe it reads run.log in the project root, or data/last_run.json
when there is no run.log.
Inside a session set up with --metric-pattern, its metric is read by that pattern
(the last match), as run-experiment reads it.
Values like `1,660,000` become numbers; `n/a` stays a string; NaN becomes "nan".
Exit status 1 when nothing was found.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, parsing  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(prog="parse-metrics", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", help="run log or last_run.json (default: run.log)")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    path, pattern = a.path, session_pattern()
    if path is None and piped_stdin():
        return report(parsing.parse_metrics(sys.stdin.read(), *pattern), "standard input")
    if path is None:
        root = common.find_root()
        path = os.path.join(root, common.RUN_LOG)
        if not os.path.exists(path):
            path = os.path.join(root, "data", "last_run.json")
    return report(parsing.parse_metrics_file(path, *pattern), path)


def session_pattern():
    """(pattern, metric) of the session here, if it reads its metric by a pattern."""
    try:
        with open(os.path.join(common.find_root(), common.LOG), encoding="utf-8") as f:
            config = json.loads(f.readline())
        return config.get("metric_pattern"), config.get("metric")
    except (common.UserError, OSError, ValueError, AttributeError):
        return None, None


def piped_stdin():
    """A pipe or a redirected file, not a terminal or /dev/null (what tools give a
    command they run without input)."""
    import stat
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def report(metrics, source):
    print(json.dumps(parsing.json_safe(metrics), sort_keys=True))
    if not metrics:
        print(f"no metrics found in {source}: expected a '---' summary block, METRIC lines "
              "or a last_run.json with a result section", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    common.run_main(main)
