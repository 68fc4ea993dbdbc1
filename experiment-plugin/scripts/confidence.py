#!/usr/bin/env python3
"""Is the best improvement real, or noise?

Noise sigma: the pooled spread between runs of identical code (baseline repeats,
confirmations, re-measures; disturbed runs excluded). This is what the noise-aware
policy decides by, and the best kept state's gain is shown in units of it.

Noise floor (kept for compatibility, not used to decide): the median absolute
deviation (MAD) of every recorded metric, which is the spread between different
ideas.
Confidence: |best kept - baseline| / MAD, read as
  >= 2   likely real
  1 - 2  marginal
  < 1    noise
Needs 3 measured runs for a noise floor. This script reports; it gives no advice:
keep, discard and rerun come only from the keep rule (run-experiment's
`recommend:` line; references/decision-rules.md).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from core import common, records, stats, policy  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(prog="confidence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    root, log = records.load_session()
    config, runs = log.config, log.runs
    c = stats.confidence(runs, config["direction"])
    kept = stats.kept_state(config, runs)
    est = policy.kept_estimate(config, runs)
    name = config["metric"]
    if a.json:
        out = {"metric": name, "runs": len(runs), "measured": len(stats.measured(runs)),
               "baseline": c["baseline"] and c["baseline"]["metric"],
               "best": c["best"] and c["best"]["metric"],
               "best_run": c["best"] and c["best"]["run"],
               "best_commit": c["best"] and c["best"]["commit"],
               "improvement": c["improvement"], "noise_floor": c["noise_floor"],
               "confidence": c["confidence"] if c["confidence"] != float("inf") else "inf",
               "verdict": c["verdict"], "sigma": c["sigma"], "sigma_dof": c["dof"],
               "kept_mean": kept and kept["mean"], "kept_samples": kept and len(kept["samples"]),
               "kept_estimate": est and est["mean"], "kept_sd": est and est["sd"]}
        print(json.dumps(out))
        return 0
    if not c["baseline"]:
        print(f"no measured runs yet ({len(runs)} logged): nothing to compare")
        return 0
    base, best = c["baseline"], c["best"]
    print(f"{name}: baseline {common.fmt(base['metric'])} (run {base['run']}), best "
          f"{common.fmt(best['metric'])} (run {best['run']}, commit {best['commit'][:7]}), "
          f"improvement {common.fmt(c['improvement'])}")
    mad = c["noise_floor"]
    ratio = c["confidence"]
    print(f"noise floor (MAD of {len(stats.measured(runs))} runs): "
          f"{common.fmt(mad) if mad is not None else 'n/a'}")
    shown = "n/a" if ratio is None else ("inf" if ratio == float("inf") else f"{ratio:.1f}x")
    print(f"confidence: {shown} -> {c['verdict']}")
    print(stats.noise_line(runs, digits=6))
    line = policy.estimate_line(config, runs)
    if line:
        print(line)
    return 0


if __name__ == "__main__":
    common.run_main(main)
