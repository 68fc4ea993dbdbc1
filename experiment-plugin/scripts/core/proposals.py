"""The model of proposals: what an edit's true effect is likely to be, before and after
it is measured. The keep rule (policy.py) decides from this posterior."""
from __future__ import annotations

import math

# The noise-aware rule judges a candidate by how likely it is to be a real gain,
# given everything measured so far, under a stated model of proposals. In units of
# sigma (one run's noise), the true effect d of an edit on the kept state is
#     null     d = 0                     half of all edits
#     harmful  d > 0, half-normal(3)     29%
#     broken   d > 0, exponential(30)    1%: a diverged or broken run
#     helpful  d < 0, exponential        20%, an equal mixture of means 0.5, 1, 2, 4, 8
# (most ideas do nothing or hurt; a few help, at every scale; no one size is assumed).
# The broken share is for its tail: a half-normal cannot explain a run 20 sigma worse,
# so it would be put down partly to the kept state, and drag its estimate up.
# The model gives what a threshold on a difference cannot:
#   * P(helpful), judged against the kept state's *estimated* value and its spread;
#   * the kept value after a keep: the posterior mean of (old value + d), which takes
#     out the luck a marginal keep was kept on (the winner's curse);
#   * more of that value from discards: a probably-null edit is nearly a re-measure.
# Everything is closed form (a point mass, a half-normal and exponentials against a
# normal likelihood), so a 1,000-run log is replayed in milliseconds.
PRIOR_NULL, PRIOR_HARMFUL, PRIOR_BROKEN, PRIOR_HELPFUL = 0.5, 0.29, 0.01, 0.2
HARMFUL_SCALE, BROKEN_MEAN = 3.0, 30.0
HELPFUL_MEANS = (0.5, 1.0, 2.0, 4.0, 8.0)

_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# The prior's constant terms, computed once: effect_posterior runs a few dozen times
# for every run a log replay passes.
_LOG_NULL, _LOG_HARMFUL, _H2 = math.log(PRIOR_NULL), math.log(2 * PRIOR_HARMFUL), HARMFUL_SCALE ** 2
_BROKEN = (1 / BROKEN_MEAN, math.log(PRIOR_BROKEN / BROKEN_MEAN))   # (rate, log of weight * rate)
_HELPFUL = tuple((1 / mean, math.log(PRIOR_HELPFUL / len(HELPFUL_MEANS)) + math.log(1 / mean))
                 for mean in HELPFUL_MEANS)   # (rate, log of its weight times the rate)


def _log_phi(x: float) -> float:
    return -0.5 * x * x - _LOG_SQRT_2PI


def _log_cdf(x: float) -> float:
    """log of the standard normal CDF, accurate far into the lower tail."""
    if x > -8:
        return math.log(0.5 * math.erfc(-x / _SQRT2))
    x2 = x * x
    return _log_phi(x) - math.log(-x) + math.log1p(-1 / x2 + 3 / x2 ** 2 - 15 / x2 ** 3)


def _log_cdf_mills(b: float) -> tuple[float, float]:
    """log Phi(b), and phi(b) / Phi(b) (the inverse Mills ratio) from it."""
    lc = _log_cdf(b)
    return lc, math.exp(_log_phi(b) - lc)


def effect_posterior(diff: float, spread: float) -> dict:
    """The posterior of a candidate's true effect d (sigma units, negative is better)
    given diff = observed minus kept estimate and spread = the sd of that difference,
    both in sigma units. Returns {p_helpful, p_null, p_harmful, mean, var}."""
    s2 = spread * spread
    # (log weight, mean of d, variance of d, kind)
    parts = [(_LOG_NULL + _log_phi(diff / spread) - math.log(spread), 0.0, 0.0, "null")]
    h2 = _H2
    v = h2 * s2 / (h2 + s2)
    m, sd = diff * h2 / (h2 + s2), math.sqrt(v)
    b = m / sd
    lc, r = _log_cdf_mills(b)
    lw = _LOG_HARMFUL + _log_phi(diff / math.sqrt(h2 + s2)) - 0.5 * math.log(h2 + s2) + lc
    parts.append((lw, m + sd * r, max(v * (1 - r * (r + b)), 0.0), "harmful"))
    for lam, log_w in _HELPFUL:
        a = diff + lam * s2
        b = -a / spread
        lc, r = _log_cdf_mills(b)
        lw = log_w + lam * diff + lam * lam * s2 / 2 + lc
        parts.append((lw, a - spread * r, max(s2 * (1 - b * r - r * r), 0.0), "helpful"))
    lam, log_w = _BROKEN                # the same exponential, mirrored onto d > 0
    a = diff - lam * s2
    lc, r = _log_cdf_mills(a / spread)
    parts.append((log_w - lam * diff + lam * lam * s2 / 2 + lc, a + spread * r,
                  max(s2 * (1 - a / spread * r - r * r), 0.0), "harmful"))
    top = max(p[0] for p in parts)
    ws = [math.exp(p[0] - top) for p in parts]
    total = sum(ws)
    ws = [w / total for w in ws]
    mean = sum(w * p[1] for w, p in zip(ws, parts))
    var = sum(w * (p[2] + p[1] ** 2) for w, p in zip(ws, parts)) - mean ** 2
    out = {"p_null": 0.0, "p_harmful": 0.0, "p_helpful": 0.0, "mean": mean, "var": max(var, 0.0),
           "gain_helpful": 0.0}
    for w, p in zip(ws, parts):
        out["p_" + p[3]] += w
        if p[3] == "helpful":
            out["gain_helpful"] -= w * p[1]
    return out
