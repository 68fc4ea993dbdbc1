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
When the latest keep improved on the best before it by only 1-2x the noise floor,
a `rerun:` hint says how to confirm it. Needs 3 measured runs for a noise floor.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import experiment_lib as lib  # noqa: E402


def latest_keep_hint(config, runs, mad):
    """How much the latest keep added over the best before it, in noise floors."""
    keeps = [r for r in lib.standing_keeps(runs) if lib.finite(r.get("metric"))]
    if len(keeps) < 2 or not mad:
        return None
    last = keeps[-1]
    before = lib.best_run([r for r in runs if r["run"] < last["run"]], config["direction"])
    gain = lib.improvement(last["metric"], before["metric"], config["direction"])
    ratio = gain / mad
    if 1 <= ratio < 2:
        return (f"rerun: run {last['run']} ({last['description'][:60]}) beat run {before['run']} "
                f"by only {ratio:.1f}x the noise floor; run-experiment again on it (unchanged) "
                "to confirm before building on it")
    return None


def main(argv=None):
    p = argparse.ArgumentParser(prog="confidence", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    root, log = lib.load_session()
    config, runs = log.config, log.runs
    c = lib.confidence(runs, config["direction"])
    hint = latest_keep_hint(config, runs, c["noise_floor"])
    kept = lib.kept_state(config, runs)
    est = lib.kept_estimate(config, runs)
    name = config["metric"]
    if a.json:
        out = {"metric": name, "runs": len(runs), "measured": len(lib.measured(runs)),
               "baseline": c["baseline"] and c["baseline"]["metric"],
               "best": c["best"] and c["best"]["metric"],
               "best_run": c["best"] and c["best"]["run"],
               "best_commit": c["best"] and c["best"]["commit"],
               "improvement": c["improvement"], "noise_floor": c["noise_floor"],
               "confidence": c["confidence"] if c["confidence"] != float("inf") else "inf",
               "verdict": c["verdict"], "rerun": hint, "sigma": c["sigma"], "sigma_dof": c["dof"],
               "kept_mean": kept and kept["mean"], "kept_samples": kept and len(kept["samples"]),
               "kept_estimate": est and est["mean"], "kept_sd": est and est["sd"]}
        print(json.dumps(out))
        return 0
    if not c["baseline"]:
        print(f"no measured runs yet ({len(runs)} logged): nothing to compare")
        return 0
    base, best = c["baseline"], c["best"]
    print(f"{name}: baseline {lib.fmt(base['metric'])} (run {base['run']}), best "
          f"{lib.fmt(best['metric'])} (run {best['run']}, commit {best['commit'][:7]}), "
          f"improvement {lib.fmt(c['improvement'])}")
    mad = c["noise_floor"]
    ratio = c["confidence"]
    print(f"noise floor (MAD of {len(lib.measured(runs))} runs): "
          f"{lib.fmt(mad) if mad is not None else 'n/a'}")
    shown = "n/a" if ratio is None else ("inf" if ratio == float("inf") else f"{ratio:.1f}x")
    print(f"confidence: {shown} -> {c['verdict']}")
    print(lib.noise_line(runs, digits=6))
    line = lib.estimate_line(config, runs)
    if line:
        print(line)
    if hint:
        print(hint)
    return 0


if __name__ == "__main__":
    lib.run_main(main)
