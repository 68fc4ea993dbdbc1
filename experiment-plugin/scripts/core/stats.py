"""Numbers from the log: samples of each code, the noise from repeats of identical
code, seeds, the kept state, best and baseline, and the MAD confidence (reported,
never used to decide).
"""
from __future__ import annotations

import math

from .common import finite


def experiments(runs: list[dict]) -> int:
    """Runs that tried something: what --max-iterations counts. A record that undoes
    a keep (log-experiment writes it after a discard) is not one."""
    return sum(1 for r in runs if not r.get("reverts"))


def add_sample(value: float, seed: int, why: str | None, samples: list, seeds: list,
               disturbed_runs: list) -> None:
    """File a finished run's metric: a sample of its code (with its seed), or, when
    other load disturbed the run (`why`), set apart where it never counts."""
    if why:
        disturbed_runs.append({"metric": value, "seed": seed, "why": why})
    else:
        samples.append(value)
        seeds.append(seed)


# The noise a change must beat is the spread between runs of IDENTICAL code: a new
# seed each time (run-experiment sees to that) and whatever timing jitter the budget
# adds. Repeats come from the baseline (--baseline-runs), confirmation reruns and
# re-measures of the kept state. Samples are grouped by the hash of the target file,
# so a re-measure logged much later still joins its group; the within-group variance
# is pooled over every group. A run that other load disturbed is never a sample.


def run_samples(record: dict) -> list[float]:
    """The undisturbed samples a logged run stands for. Logs written before samples
    were recorded for every run count a measured run as one sample."""
    if isinstance(record.get("samples"), list):
        return [x for x in record["samples"] if finite(x)]
    if record.get("status") in ("keep", "discard") and finite(record.get("metric")) \
            and not record.get("disturbed"):
        return [record["metric"]]
    return []


def code_groups(runs: list[dict], candidate: dict | None = None) -> dict:
    """{target hash: [samples]} over the log, plus the waiting candidate's samples.
    Runs without a target hash (older logs) each form a group of their own."""
    groups: dict = {}
    for r in runs:
        groups.setdefault(r.get("target_sha") or f"run-{r.get('run')}", []).extend(run_samples(r))
    if candidate:
        groups.setdefault(candidate["target_sha"], []).extend(candidate.get("samples", []))
    return groups


def pooled_noise(groups: dict) -> tuple[float | None, int]:
    """(sigma, degrees of freedom): the pooled within-code standard deviation of one
    run. sigma is None until some code has been measured twice, and while every
    repeat is bit-identical to the first (seeds_ignored): that is not a noise of zero,
    it is a seed that never reaches the randomness."""
    ss, dof = 0.0, 0
    for xs in groups.values():
        if len(xs) > 1:
            m = sum(xs) / len(xs)
            ss += sum((x - m) ** 2 for x in xs)
            dof += len(xs) - 1
    return (math.sqrt(ss / dof) if dof and ss > 0 else None), dof


def seeds_ignored(groups: dict) -> bool:
    """Whether repeats of identical code, each on a new seed, all gave the very same
    number (at least three runs of some code): the script reseeds after reading
    AUTORESEARCH_SEED, or its randomness does not come from the seed. Two equal runs
    can be chance where a metric has few values (an accuracy on 360 examples)."""
    repeated = [xs for xs in groups.values() if len(xs) > 1]
    return (any(len(xs) > 2 for xs in repeated)
            and all(len(set(xs)) == 1 for xs in repeated))


SEEDS_IGNORED = ("repeats on new seeds gave bit-identical results: AUTORESEARCH_SEED does not "
                 "reach the script's randomness (it reseeds after reading it, e.g. "
                 "random_state=1 or torch.manual_seed(1337)), so the noise is unknown, not zero")


def noise(runs: list[dict], candidate: dict | None = None) -> tuple[float | None, int]:
    return pooled_noise(code_groups(runs, candidate))


def noise_line(runs: list[dict], digits: int = 4) -> str:
    """One line for people: 'noise sigma 0.0061 from 5 repeats (4 dof)', or how to get one."""
    groups = code_groups(runs)
    sigma, dof = pooled_noise(groups)
    if sigma is None and seeds_ignored(groups):
        return "noise sigma unknown: " + SEEDS_IGNORED
    if sigma is None:
        return "noise sigma unknown: no code measured twice yet (rerun the kept state to measure it)"
    repeats = sum(len(xs) for xs in groups.values() if len(xs) > 1)
    return f"noise sigma {sigma:.{digits}f} from {repeats} repeats of identical code ({dof} dof)"


def next_seed(runs: list[dict], target_sha: str, pending: dict | None = None) -> int:
    """42 for the first run of some code (today's baseline stays reproducible); each
    further run of the same code (same target hash) gets the next seed, so repeats
    measure the seed-to-seed spread a real change must beat, not only timing jitter."""
    earlier = sum(len(r.get("seeds") or run_samples(r)) + len(r.get("disturbed") or [])
                  for r in runs if r.get("target_sha") == target_sha)
    if pending and pending.get("target_sha") == target_sha:
        earlier += len(pending.get("seeds") or []) + len(pending.get("disturbed") or [])
    return 42 + earlier


def code_samples(runs: list[dict], record: dict) -> list[float]:
    """Every sample in the log of the code a keep record stands for. A keep made on
    disturbed runs alone has no samples: its metric stands in."""
    sha = record.get("target_sha")
    return (code_groups(runs)[sha] if sha else run_samples(record)) or [record["metric"]]


def kept_state(config: dict, runs: list[dict]) -> dict | None:
    """The code the branch stands on: its target hash, every sample of that code in
    the log (the keep, its confirmations, later re-measures) and their mean."""
    last = next((r for r in reversed(runs) if r["status"] == "keep" and finite(r.get("metric"))),
                None)
    if last is None:
        return None
    if last.get("reverts"):     # undoing a keep: the state is the keep it went back to
        last = next((r for r in reversed(standing_keeps(runs))
                     if r.get("target_sha") == last.get("target_sha")), last)
    sha = last.get("target_sha")
    samples = code_samples(runs, last)
    return {"run": last, "target_sha": sha, "samples": samples,
            "mean": sum(samples) / len(samples), "metrics": last.get("metrics") or {}}


def better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "lower" else a > b


def improvement(new: float, old: float, direction: str) -> float:
    """Positive when `new` is better than `old`."""
    return old - new if direction == "lower" else new - old


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def measured(runs: list[dict]) -> list[dict]:
    """Runs that finished with a usable metric (kept or discarded)."""
    return [r for r in runs if r["status"] in ("keep", "discard") and finite(r.get("metric"))]


def noise_floor(runs: list[dict]) -> float | None:
    """Median absolute deviation of every recorded metric (the MAD confidence kept for
    compatibility). It is the spread between DIFFERENT ideas, harmful ones included,
    so it grows with their variety: reported, never used to decide. None with fewer
    than 3 runs."""
    xs = [r["metric"] for r in measured(runs)]
    if len(xs) < 3:
        return None
    m = median(xs)
    return median([abs(x - m) for x in xs])


def baseline_run(runs: list[dict]) -> dict | None:
    return next(iter(measured(runs)), None)


def undone_runs(runs: list[dict]) -> set:
    """The run numbers of keeps undone later (see revert_due)."""
    return {r["reverts"] for r in runs if r.get("reverts")}


def standing_keeps(runs: list[dict]) -> list[dict]:
    """The keeps that stand: not undone later, and not the records that undo them."""
    undone = undone_runs(runs)
    return [r for r in runs if r["status"] == "keep" and r["run"] not in undone
            and not r.get("reverts")]


def best_run(runs: list[dict], direction: str) -> dict | None:
    """The best kept run, leaving out keeps undone later (see standing_keeps)."""
    best = None
    for r in standing_keeps(runs):
        if finite(r.get("metric")):
            if best is None or better(r["metric"], best["metric"], direction):
                best = r
    return best


def verdict(ratio: float | None) -> str:
    if ratio is None:
        return "unknown (fewer than 3 measured runs)"
    if ratio >= 2:
        return "likely real"
    if ratio >= 1:
        return "marginal"
    return "noise"


def confidence(runs: list[dict], direction: str) -> dict:
    base, best = baseline_run(runs), best_run(runs, direction)
    mad = noise_floor(runs)
    gain = improvement(best["metric"], base["metric"], direction) if base and best else None
    if gain is None or mad is None:
        ratio = None
    elif mad == 0:
        ratio = math.inf if gain else 0.0
    else:
        ratio = abs(gain) / mad
    sigma, dof = noise(runs)
    return {"baseline": base, "best": best, "improvement": gain, "noise_floor": mad,
            "confidence": ratio, "verdict": verdict(ratio), "sigma": sigma, "dof": dof}
