"""THE keep rule: the only code that says keep, discard or rerun.

`recommend` judges a single run (or a candidate) by the session's policy;
`revert_due` says when a provisional keep is undone; `decide_candidate` judges a
wave's candidate against a kept state that may have moved while it ran. The
numbers of the noise-aware rule live in NOISE_AWARE, and
skills/autoresearch/references/decision-rules.md states them (a test checks the two
agree).
"""
from __future__ import annotations

import datetime as _dt
import math

from .common import finite, UserError
from .git import commit_of, last_kept_commit
from .monitor import DISTURBED_BUSY
from .proposals import effect_posterior
from .stats import (baseline_run, best_run, code_groups, code_samples, improvement, kept_state, noise,
    run_samples, seeds_ignored, SEEDS_IGNORED, undone_runs)

POLICIES = ("noise-aware", "strict", "quality-speed")
# Configs written before the quality+speed rule was named keep working.
POLICY_ALIASES = {"balanced": "quality-speed"}
DEFAULT_POLICY = "noise-aware"
DEFAULT_BASELINE_RUNS = 3


def policy_name(config: dict) -> str:
    name = config.get("policy") or DEFAULT_POLICY
    name = POLICY_ALIASES.get(name, name)
    if name not in POLICIES:
        raise UserError(f"unknown keep policy {name!r}: use one of {', '.join(POLICIES)}")
    return name


# The decision, from P = P(helpful) and the expected gain it carries:
#   * first run: keep at P >= keep[0]; discard under `drop`; in between the result is
#     marginal, and it gets one confirming run on a new seed, unless its expected
#     gain is worth less than a new idea has been worth in this session (at G = 4
#     sigma a confirming run costs more than most marginal results return);
#   * after the confirming run: keep at P >= keep[1]. That bar looks low, but what
#     reaches it is mostly small real gains, few null or harmful edits get this far,
#     and a kept null edit costs nothing in the metric;
#   * a keep is provisional: once `undo_after` runs were built on it, when its own
#     samples and what those runs say about it (each is nearly a re-measure, as far
#     as it was a null edit) put P(helpful) under `undo_below`, it is undone
#     (revert_due). That is what lets the first-run bar sit below one half: a lucky
#     keep costs a run or two, not the rest of the night.
# Chosen on benchmarks/bench_decisions.py (research log 2026-11-24 and 2026-11-29).
NOISE_AWARE = {"keep": (0.45, 0.25), "drop": 0.2, "max_samples": 2,
               "rerun_worth": 1.0, "worth_floor": 0.05, "undo_below": 0.3, "undo_after": 1}

def _oriented(x: float, direction: str) -> float:
    """Metric values turned so that lower is better."""
    return x if direction == "lower" else -x


def kept_estimate(config: dict, runs: list[dict], sigma: float | None = None) -> dict | None:
    """The kept state's estimated value: {mean, sd, samples, held} in metric units, by
    replaying the log's keeps under the model above. The baseline and re-measures
    add their samples (a normal update); each keep of new code moves the estimate
    to the posterior of (old value + d) given the candidate's samples; a revert (a
    keep record with "reverts") puts back the estimate from before the keep it undoes.
    Without a noise estimate it is the plain mean of the kept code's samples, sd None.

    `held`, after a keep of new code: whether that keep still holds up, judged on
    everything measured since (see revert_due), as {run, record, since, p, prev}: the
    run kept and its record, the runs logged on top of it, P(it was a real gain), and
    the keep record of the state it replaced."""
    direction = config["direction"]
    if sigma is None:
        sigma, _ = noise(runs)
    kept = kept_state(config, runs)
    if kept is None:
        return None
    if not sigma:
        return {"mean": kept["mean"], "sd": None, "samples": len(kept["samples"]), "held": None}
    mu = var = None
    sha = None
    last_keep = None    # the keep record the branch stands on
    prov = None         # the latest keep of new code, while it can still be undone
    left = {}           # commit: (mu, var, sha, keep record) of each kept state moved on from
    for r in runs:
        if r["status"] == "keep" and r.get("reverts") and prov and prov["run"] == r["reverts"]:
            left[commit_of(last_keep)] = (mu, var, sha, last_keep)
            mu, var, sha = prov["before"]
            last_keep, prov = prov["prev"], None
            continue
        if r["status"] not in ("keep", "discard") or not finite(r.get("metric")):
            continue
        base, here = r.get("base"), commit_of(last_keep) if last_keep else None
        if base and here and base[:len(here)] != here:
            # A wave's candidate built on a state the branch has since left (another
            # candidate was kept, or that keep was undone, while it ran): it measured
            # that state plus its change, which says nothing about this one...
            if r["status"] != "keep" or base not in left:
                continue
            # ...unless it was kept in place of the change made since: then the new
            # state is that state plus its change.
            left[commit_of(last_keep)] = (mu, var, sha, last_keep)
            mu, var, sha, last_keep = left[base]
            prov = None
        xs = [_oriented(x, direction) for x in run_samples(r)]
        if not xs:
            if r["status"] != "keep":
                continue
            xs = [_oriented(r["metric"], direction)]
        n, xbar = len(xs), sum(xs) / len(xs)
        if mu is None or (r.get("target_sha") and r.get("target_sha") == sha):
            # The baseline, or the kept code measured again: a plain normal update.
            if mu is None:
                mu, var = xbar, sigma ** 2 / n
            else:
                prec = 1 / var + n / sigma ** 2
                mu, var = (mu / var + n * xbar / sigma ** 2) / prec, 1 / prec
            sha = sha or r.get("target_sha")
            if r["status"] == "keep":
                last_keep = r
            if prov:
                prov["prec"] += n / sigma ** 2
                prov["sum"] += n * xbar / sigma ** 2
            continue
        # Other code: xbar = V_kept + d + noise. The posterior of d, given how far
        # xbar is from the estimate, says how much these samples tell about the kept
        # value (a likely null edit is nearly a re-measure; a clear change, nothing)
        # and, after a keep, where the new state stands.
        s2 = sigma ** 2 / n
        post = effect_posterior((xbar - mu) / sigma, math.sqrt(var + s2) / sigma)
        v = var * s2 / (var + s2)
        a = (mu * s2 + xbar * var) / (var + s2)
        if r["status"] == "keep":           # the new state: V_kept + d
            left[commit_of(last_keep)] = (mu, var, sha, last_keep)
            prov = {"run": r["run"], "record": r, "before": (mu, var, sha), "prev": last_keep,
                    "prec": n / sigma ** 2, "sum": n * xbar / sigma ** 2, "since": 0}
            b = s2 / (var + s2)
            mu, var = a + b * sigma * post["mean"], v + b * b * sigma ** 2 * post["var"]
            sha, last_keep = r.get("target_sha"), r
        else:                               # still the old state: V_kept
            c = var / (var + s2)
            mu, var = a - c * sigma * post["mean"], v + c * c * sigma ** 2 * post["var"]
            if prov:
                # A discard built on the kept code re-measures it, as far as it was null.
                prov["prec"] += post["p_null"] / s2
                prov["sum"] += post["p_null"] * xbar / s2
                prov["since"] += 1
    held = None
    if prov:
        # The keep judged again, on its own samples and on what the runs since said
        # about the code it left, against the state it replaced (known apart from it).
        before_mu, before_var, _ = prov["before"]
        own = prov["sum"] / prov["prec"]
        p = effect_posterior((own - before_mu) / sigma,
                             math.sqrt(1 / prov["prec"] + before_var) / sigma)["p_helpful"]
        held = {"run": prov["run"], "record": prov["record"], "since": prov["since"], "p": p,
                "prev": prov["prev"]}
    return {"mean": _oriented(mu, direction), "sd": math.sqrt(var), "samples": len(kept["samples"]),
            "held": held}


def estimate_line(config: dict, runs: list[dict]) -> str | None:
    """One line for people: where the kept state stands, as estimated (the value the
    noise-aware rule judges against), beside the plain mean of its samples."""
    est, kept, base = kept_estimate(config, runs), kept_state(config, runs), baseline_run(runs)
    if not est or est["sd"] is None or not base:
        return None
    sigma, _ = noise(runs)
    raw = sum(kept["samples"]) / len(kept["samples"])
    gain = improvement(est["mean"], base["metric"], config["direction"])
    return (f"kept state (run {kept['run']['run']}): estimated {config['metric']} "
            f"{est['mean']:.6f} +- {est['sd']:.6f}, {gain / sigma:+.1f} sigma from the baseline "
            f"(its own {len(kept['samples'])} sample(s) average {raw:.6f}; the estimate takes "
            "out the luck it was kept on)")


# sigma itself is estimated, from few degrees of freedom early in a session (the
# baseline's 3 runs give 2). A sigma that happens to come out small would make noise
# look like gains, so the decision averages P(helpful) over the values of sigma the
# repeats allow: five equally likely ones, at the 10/30/50/70/90% points of the
# scaled chi-square the pooled variance follows.
_QUANTILES_Z = (-1.2816, -0.5244, 0.0, 0.5244, 1.2816)


def sigma_draws(sigma: float, dof: int) -> list[float]:
    """Five equally weighted values of the true sigma given the pooled estimate and
    its degrees of freedom (Wilson-Hilferty quantiles of chi-square)."""
    out = []
    for z in _QUANTILES_Z:
        q = dof * max(1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof)), 0.05) ** 3
        out.append(sigma * math.sqrt(dof / q))
    return out


def idea_worth(config: dict, runs: list[dict], est: dict, sigma: float) -> float:
    """What a new idea has been worth in this session so far, in sigma: the estimated
    gain of the kept state over the baseline per run since the baseline (at least
    NOISE_AWARE["worth_floor"]). A confirming run is one idea not tried: it is run
    only when the marginal candidate's expected gain is worth more than that."""
    base = baseline_run(runs)
    xs = run_samples(base) or [base["metric"]]
    gain = improvement(est["mean"], sum(xs) / len(xs), config["direction"]) / sigma
    return max(gain / max(1, len(runs) - 1), NOISE_AWARE["worth_floor"])


def recommend(config: dict, runs: list[dict], candidate: dict) -> tuple[str, str]:
    """keep / discard / rerun for the code just run, by the session's keep policy.

    `candidate`: {"target_sha", "samples": [undisturbed metric values of this code
    since the last log], "metrics": the latest run's metrics, "disturbed": why the
    latest run does not count, or absent}.
    """
    name, direction = config["metric"], config["direction"]
    if candidate.get("disturbed_now"):
        busy = candidate.get("disturbed_runs", 1) >= DISTURBED_BUSY
        return "rerun", (f"disturbed: {candidate['disturbed_now']}; run-experiment again "
                         "unchanged (this run is not counted)"
                         + (f". {candidate['disturbed_runs']} runs of this code were disturbed: "
                            "the machine is busy. Find the other load (top) and stop it, or "
                            "`sleep 300` before the next run. On a machine always shared, set "
                            "the session up with --no-load-check" if busy else ""))
    samples = candidate["samples"]
    n_c = len(samples)
    value = sum(samples) / n_c
    policy = policy_name(config)
    kept = kept_state(config, runs)
    if kept is None:
        wanted = config.get("baseline_runs") or 1
        if policy == "noise-aware" and n_c < wanted:
            return "rerun", (f"baseline sample {n_c} of {wanted} (measuring the noise): "
                             "run-experiment again unchanged, on a new seed")
        sigma, dof = noise(runs, candidate)
        extra = f"; noise sigma {sigma:.6f} ({dof} dof)" if sigma is not None else ""
        if seeds_ignored(code_groups(runs, candidate)):
            extra = f"; {SEEDS_IGNORED}: each change is judged on one run"
        return "keep", f"baseline: {name} {value:.6f} (mean of {n_c}){extra}"
    if kept["target_sha"] and kept["target_sha"] == candidate["target_sha"]:
        return "keep", (f"re-measure of the kept state: {name} {value:.6f}; it now has "
                        f"{len(kept['samples']) + n_c} samples (log it with --status keep)")
    kept_mean = kept["mean"]
    gain = improvement(value, kept_mean, direction)

    def versus(kept_value: float, how: str) -> str:
        return (f"{name} {value:.6f}" + (f" (mean of {n_c})" if n_c > 1 else "")
                + f" vs kept {kept_value:.6f} ({how}, run {kept['run']['run']})")

    shown = versus(kept_mean, f"mean of {len(kept['samples'])}")
    if policy == "strict":
        best = best_run(runs, direction)
        gain = improvement(samples[-1], best["metric"], direction)
        shown = f"{name} {samples[-1]:.6f} vs best {best['metric']:.6f} (run {best['run']})"
        return ("keep", f"{shown}: better") if gain > 0 else ("discard", f"{shown}: not better")
    if policy == "quality-speed":
        return quality_speed(gain, candidate.get("metrics") or {}, kept["metrics"], n_c, shown)
    sigma, dof = noise(runs, candidate)
    if sigma is None or sigma == 0:
        # No code measured twice yet: nothing to judge a difference by. An apparent
        # gain is confirmed on a new seed, which is also the first repeat. A script
        # that sets its own seed repeats itself: a second run would agree with the
        # first whatever the noise, so it is judged on the one run, and says so.
        if config.get("seeds") is False or seeds_ignored(code_groups(runs, candidate)):
            return (("keep", f"{shown}: better (one run: the script sets its own seed, so "
                             "repeats cannot measure the noise)") if gain > 0 else
                    ("discard", f"{shown}: not better"))
        if gain > 0 and n_c == 1:
            return "rerun", f"{shown}: better, but the noise is not measured yet: confirm it on a new seed"
        return ("keep", f"{shown}: better on {n_c} seeds") if gain > 0 else \
            ("discard", f"{shown}: not better")
    est = kept_estimate(config, runs, sigma)
    diff = improvement(est["mean"], value, direction)      # negative when better
    draws = sigma_draws(sigma, dof)
    p = worth = 0.0     # P(real gain); expected gain from it, in sigma
    for s in draws:
        # The kept estimate's own sd scales with sigma too.
        k = s / sigma
        spread = math.sqrt((k * est["sd"]) ** 2 + s ** 2 / n_c)
        post = effect_posterior(diff / s, spread / s)
        p += post["p_helpful"] / len(draws)
        worth += post["gain_helpful"] / len(draws)
    stage = min(n_c, NOISE_AWARE["max_samples"]) - 1
    keep_bar = NOISE_AWARE["keep"][stage]
    detail = (f"{versus(est['mean'], 'estimated')}: P(real gain) {p:.2f} "
              f"(noise sigma {sigma:.6f}, {dof} dof)")
    if p >= keep_bar:
        return "keep", detail
    if (n_c == 1 and p < NOISE_AWARE["drop"]) or n_c >= NOISE_AWARE["max_samples"]:
        return "discard", detail + (" (within noise)" if gain > 0 else "")
    if n_c == 1 and NOISE_AWARE["rerun_worth"] and \
            worth < NOISE_AWARE["rerun_worth"] * idea_worth(config, runs, est, sigma):
        return "discard", detail + (f" (marginal, and its expected gain {worth:.2f} sigma is "
                                    "worth less than trying a new idea)")
    return "rerun", detail + (f" (marginal, needs {keep_bar:.2f}: run-experiment again "
                              "unchanged to confirm on a new seed)")


def revert_due(config: dict, runs: list[dict]) -> dict | None:
    """The keep to undo now, or None. A keep on one or two runs is provisional: every
    later run built on it that changed nothing re-measures it. When those say it was
    probably not a real gain (P under NOISE_AWARE["undo_below"], after at least
    NOISE_AWARE["undo_after"] runs on top), the branch goes back to the state it
    replaced. Only the latest keep can be undone, and only under noise-aware."""
    if policy_name(config) != "noise-aware":
        return None
    est = kept_estimate(config, runs)
    held = (est or {}).get("held")
    if not held or held["prev"] is None or held["since"] < NOISE_AWARE["undo_after"] \
            or held["p"] >= NOISE_AWARE["undo_below"]:
        return None
    return held


def revert_record(config: dict, runs: list[dict], held: dict, number: int) -> dict:
    """The record that undoes a keep: a keep of the code it replaced (so every reader
    of the log finds the kept state where git has it), with `reverts` naming the run
    undone and no samples of its own."""
    prev = held["prev"]
    samples = code_samples(runs, prev)
    metric = sum(samples) / len(samples)
    record = {"type": "run", "run": number, "commit": prev["commit"], "status": "keep",
              "metric": metric, "metrics": prev.get("metrics") or {},
              "description": (f"revert run {held['run']}: the {held['since']} runs since did "
                              f"not bear it out (P(real gain) {held['p']:.2f}); back to run "
                              f"{prev['run']}'s code"),
              "timestamp": int(_dt.datetime.now().timestamp()), "segment": 0, "confidence": None,
              "samples": [], "seeds": [], "reverts": held["run"]}
    for key in ("commit_sha", "target_sha"):
        if prev.get(key):
            record[key] = prev[key]
    return record


def quality_speed(gain: float, metrics: dict, kept_metrics: dict, n_c: int, shown: str):
    """Seed 000's rule for quality and throughput together (gain in metric units,
    positive is better; throughput is avg_tok_sec). Keep when
      * the metric improved and throughput fell by no more than 15%;
      * the metric is within 0.001 and throughput rose more than 10%;
      * the metric regressed by less than 0.003 and throughput rose more than 25%;
    a gain of 0.005 or more is kept even when slower. Throughput varies 3-5%
    between identical runs, so a first run whose verdict would flip within 4% of
    its throughput is run again once."""
    old, new = kept_metrics.get("avg_tok_sec"), metrics.get("avg_tok_sec")
    speed = (new / old - 1) if finite(old) and finite(new) and old else 0.0

    def rule(s):
        if gain > 0 and s >= -0.15:
            return "keep", f"better, throughput {speed:+.0%}"
        if abs(gain) <= 0.001 and s > 0.10:
            return "keep", f"same quality, throughput {speed:+.0%}"
        if -0.003 < gain and s > 0.25:
            return "keep", f"slightly worse, throughput {speed:+.0%}"
        if gain >= 0.005:
            return "keep", f"better by {gain:.4f}, worth throughput {speed:+.0%}"
        if gain > 0:
            return "discard", f"better by under 0.005 but throughput {speed:+.0%} (over -15%)"
        return "discard", f"not better, throughput {speed:+.0%}"

    decision, why = rule(speed)
    if n_c == 1 and speed and {rule(speed - 0.04)[0], rule(speed + 0.04)[0]} != {decision}:
        return "rerun", f"{shown}: {why}, within throughput jitter of a threshold: run it again"
    return decision, f"{shown}: {why}"


def runs_at(runs: list[dict], base: str) -> list[dict]:
    """The log as it stood while `base` was the kept state (up to the next keep)."""
    last = max((i for i, r in enumerate(runs) if r["status"] == "keep" and commit_of(r) == base),
               default=None)
    if last is None:
        return runs
    after = next((j for j in range(last + 1, len(runs))
                  if runs[j]["status"] == "keep" and commit_of(runs[j]) != base), len(runs))
    return runs[:after]


def decide_candidate(config: dict, runs: list[dict], cand: dict) -> tuple[str, str]:
    """keep / discard / rerun / rebase / crash / checks_failed for a finished candidate,
    by the session's keep policy against the kept state as it is now."""
    status = cand.get("run_status")
    if status == "tampered":
        return "tampered", (f"{cand.get('detail')}: never recorded; drop it (new-candidate --drop "
                            f"{cand['name']}) and make the idea again without touching the harness")
    if status != "ok":
        return ("checks_failed" if status == "checks_failed" else "crash"), \
            f"status {status}" + (f" ({cand['detail']})" if cand.get("detail") else "")
    candidate = {"target_sha": cand["target_sha"], "samples": cand["samples"],
                 "metrics": cand.get("metrics") or {}, "disturbed_now": cand.get("disturbed_now")}
    if not candidate["samples"] and not candidate["disturbed_now"]:
        candidate["disturbed_now"] = "every run of it was disturbed"
    kept = last_kept_commit(config, runs)
    if cand.get("unchanged") and cand["base"] != kept:
        return "discard", ("a re-measure of a kept state that has moved on since: its samples "
                           "stay in the log, nothing else to do")
    decision, reason = recommend(config, runs, candidate)
    undone_keeps = undone_runs(runs)
    undone = next((r["run"] for r in runs if r["run"] in undone_keeps
                   and commit_of(r) == cand["base"]), None)
    if cand["base"] == kept or (decision == "rerun" and not undone):
        return decision, reason
    if decision == "keep" and not undone:
        return "keep", (f"{reason}; the kept state moved while it ran and it beats the new one "
                        "too: keeping it replaces that change, which is re-based onto it")
    then, why = recommend(config, runs_at(runs, cand["base"]), candidate)
    if undone:
        # Its commit holds the change of a keep undone since: keeping it (or running it
        # again) would bring that change back. Its own change can be tried on the kept state.
        if then == "keep":
            return "rebase", (f"it beat the state it was built on ({why}), but that state was "
                              f"run {undone}'s keep, undone since: log it as discard and its "
                              "change is re-based onto the kept state as a new candidate")
        return "discard", f"{why}; it was built on run {undone}'s keep, undone since"
    if then == "keep":
        return "rebase", (f"it beat the state it was built on ({why}), not the kept state that "
                          f"moved since ({reason}): log it as discard and it is re-based onto "
                          "the new kept state as a new candidate")
    return decision, reason
