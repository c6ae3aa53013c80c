"""How a claim of the paper is decided on our seeds: one rule, written once here and stated in docs/trust.md
("Verdicts"). Every result's JSON carries each claim's `verdict`, `rule`, `n` and statistic from these functions, and
the pages are written from the JSONs (mm_repro.commands.verdicts).

The rule, `welch-0.05`, for a claim that one method's value is below another's (every claim of the paper's CPU half
is one, or a conjunction of them: an order, "the smallest"):
- a one-sided Welch's t-test over the seeds (scipy.stats.ttest_ind, unequal variances): **holds** when the claimed
  direction has p < 0.05; **does not hold** when the opposite direction has p < 0.05 / m (Bonferroni over the claim's
  m comparisons, so that a claim of many pairs is not failed by one chance reversal); else **not resolved**;
- a conjunction (an order of k methods: its k - 1 neighbouring pairs; "A is the smallest": A below each other) holds
  when every pair holds (an intersection-union test: its p-value is the largest of the pairs', no correction needed),
  does not hold when any pair is reversed as above, else is not resolved;
- beside it, the per-seed agreement (on how many shared seeds the claimed direction holds) and, for an unresolved
  pair, how many seeds per side would resolve it at the observed effect (80 % power, the same one-sided test,
  Student's t with the pooled standard deviation);
- fewer than 2 seeds on a side: not resolved (no spread, no test).

Why this rule (docs/trust.md): Bouthillier et al. (MLSys 2021) show that seeds alone move a benchmark by more than
many published gaps and ask for a test over several seeds per side rather than a comparison of two means; Agarwal et
al. (NeurIPS 2021, rliable) show that point estimates over few runs mislead and recommend intervals and the
probability of improvement. With 3-10 seeds per side, their stratified bootstrap has too few resamples to be
reliable, so we take the parametric test (exact under normal noise, and conservative with unequal spreads), keep the
per-seed agreement as the probability-of-improvement-like figure beside it, and say how many seeds would settle what
is not settled.

A claim against the paper's own number (`matches`) is decided by the 95 % t-interval of our seeds' mean: holds when
the paper's number lies inside, does not hold when outside, not resolved with fewer than 2 seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

RULE = "welch-0.05"
ALPHA = 0.05
POWER = 0.8
HOLDS, DOES_NOT_HOLD, NOT_RESOLVED = "holds", "does not hold", "not resolved"
VERDICTS = (HOLDS, DOES_NOT_HOLD, NOT_RESOLVED)
MAX_SEEDS = 1000  # "seeds to resolve" beyond this is reported as None: the observed effect is nil for practical use

Values = Mapping[int, float]  # one method's value by seed


def _welch_p(a: list[float], b: list[float]) -> float:
    """One-sided p-value of 'mean(a) < mean(b)' (nan without a spread to test)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.var(a) == 0 and np.var(b) == 0:  # no spread on either side: the t statistic is undefined
        return 0.0 if max(a) < min(b) else (1.0 if min(a) > max(b) else math.nan)
    return float(stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)


def seeds_to_resolve(a: list[float], b: list[float]) -> int | None:
    """Seeds per side at which the one-sided test at ALPHA has 80 % power for the observed effect (Cohen's d with the
    pooled sample std); None when it cannot be estimated (fewer than 2 seeds, no effect) or exceeds MAX_SEEDS."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    spread = math.sqrt((np.var(a, ddof=1) + np.var(b, ddof=1)) / 2)
    effect = abs(np.mean(a) - np.mean(b)) / spread if spread > 0 else math.inf
    if effect == 0 or not math.isfinite(spread):
        return None
    for n in range(2, MAX_SEEDS + 1):
        df = 2 * n - 2
        critical = stats.t.ppf(1 - ALPHA, df)
        power = 1.0 if math.isinf(effect) else 1 - stats.nct.cdf(critical, df, effect * math.sqrt(n / 2))
        if power >= POWER:
            return n
    return None


def below(lower: str, upper: str, values: Mapping[str, Values], comparisons: int = 1) -> dict:
    """Is `lower`'s value below `upper`'s? The pair's test both ways, its verdict (the reverse at ALPHA /
    `comparisons`), its per-seed agreement and the seeds that would resolve it."""
    a, b = list(values[lower].values()), list(values[upper].values())
    p, reverse = _welch_p(a, b), _welch_p(b, a)
    shared = sorted(set(values[lower]) & set(values[upper]))
    agree = sum(values[lower][s] < values[upper][s] for s in shared)
    if p < ALPHA:
        verdict = HOLDS
    elif reverse < ALPHA / comparisons:
        verdict = DOES_NOT_HOLD
    else:
        verdict = NOT_RESOLVED
    return {
        "lower": lower,
        "upper": upper,
        "verdict": verdict,
        "p_value": None if math.isnan(p) else p,
        "p_reverse": None if math.isnan(reverse) else reverse,
        "agreement": f"{agree} of {len(shared)} seeds",
        "n": [len(a), len(b)],
        "seeds_to_resolve": seeds_to_resolve(a, b) if verdict == NOT_RESOLVED else None,
    }


def conjunction(claim: str, pairs: list[dict], values: Mapping[str, Values], **shown: object) -> dict:
    """A claim made of pairs: holds if every pair holds, does not hold if any pair is reversed, else not resolved."""
    verdicts = {p["verdict"] for p in pairs}
    if verdicts == {HOLDS}:
        verdict = HOLDS
    elif DOES_NOT_HOLD in verdicts:
        verdict = DOES_NOT_HOLD
    else:
        verdict = NOT_RESOLVED
    ps = [p["p_value"] for p in pairs]
    needed = [p["seeds_to_resolve"] for p in pairs if p["verdict"] == NOT_RESOLVED]
    return {
        "claim": claim,
        **shown,
        "ours": {m: round(float(np.mean(list(v.values()))), 4) for m, v in values.items() if v},
        "verdict": verdict,
        "rule": RULE,
        "n": {m: len(v) for m, v in values.items()},
        "p_value": None if None in ps else max(ps),  # the intersection-union test's p-value
        "pairs": pairs,
        "seeds_to_resolve": (None if None in needed else max(needed)) if needed else None,
    }


def order(claim: str, ranked: list[str], values: Mapping[str, Values], paper: object = None) -> dict:
    """`ranked` from the largest value to the smallest: each method's value above the next one's."""
    missing = [m for m in ranked if not values.get(m)]
    if missing:
        return unresolved(claim, f"no trained seed of {', '.join(missing)}", values, paper=paper)
    m = len(ranked) - 1
    pairs = [below(low, high, values, m) for high, low in zip(ranked, ranked[1:], strict=False)]
    return conjunction(claim, pairs, values, paper=paper)


def smallest(claim: str, method: str, values: Mapping[str, Values], paper: object = None) -> dict:
    """`method`'s value below every other method's."""
    others = [m for m in values if m != method]
    missing = [m for m in [method, *others] if not values.get(m)]
    if missing:
        return unresolved(claim, f"no trained seed of {', '.join(missing)}", values, paper=paper)
    pairs = [below(method, other, values, len(others)) for other in others]
    return conjunction(claim, pairs, values, paper=paper)


def only(claim: str, method: str, does: Mapping[str, dict]) -> dict:
    """Only `method` does what each conjunction of `does` (one per method) says: holds when `method`'s holds and every
    other's does not hold; does not hold when `method`'s does not hold or another's holds; else not resolved."""
    mine, others = does[method], [c for name, c in does.items() if name != method]
    if mine["verdict"] == HOLDS and all(c["verdict"] == DOES_NOT_HOLD for c in others):
        verdict = HOLDS
    elif mine["verdict"] == DOES_NOT_HOLD or any(c["verdict"] == HOLDS for c in others):
        verdict = DOES_NOT_HOLD
    else:
        verdict = NOT_RESOLVED
    return {
        "claim": claim,
        "ours": {name: c["verdict"] for name, c in does.items()},
        "verdict": verdict,
        "rule": RULE,
        "n": mine["n"],
        "p_value": mine["p_value"],  # of `method`'s own conjunction; each other's is in `parts`
        "pairs": mine["pairs"],
        "parts": list(does.values()),
        "seeds_to_resolve": mine["seeds_to_resolve"],
    }


def all_below(claim: str, lowers: list[str], upper: str, values: Mapping[str, Values], paper: object = None) -> dict:
    """Each of `lowers` below `upper` (Appendix G's "both mixups below the baseline")."""
    missing = [m for m in [*lowers, upper] if not values.get(m)]
    if missing:
        return unresolved(claim, f"no trained seed of {', '.join(missing)}", values, paper=paper)
    pairs = [below(low, upper, values, len(lowers)) for low in lowers]
    return conjunction(claim, pairs, values, paper=paper)


def unresolved(claim: str, why: str, values: Mapping[str, Values], **shown: object) -> dict:
    """A claim that cannot be tested (a method with no trained seed): not resolved, saying why."""
    return {
        "claim": claim,
        **shown,
        "ours": {m: round(float(np.mean(list(v.values()))), 4) for m, v in values.items() if v},
        "verdict": NOT_RESOLVED,
        "rule": RULE,
        "n": {m: len(v) for m, v in values.items()},
        "p_value": None,
        "why": why,
        "pairs": [],
        "seeds_to_resolve": None,
    }


def matches(claim: str, paper: float, values: Values) -> dict:
    """Our seeds' mean against the paper's number: the 95 % t-interval of our mean holds it or not."""
    from scipy import stats

    xs = list(values.values())
    interval = None
    if len(xs) >= 2:
        low, high = stats.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=stats.sem(xs))
        interval = [float(low), float(high)]
    if interval is None or not all(map(math.isfinite, interval)):
        verdict = NOT_RESOLVED
    else:
        verdict = HOLDS if interval[0] <= paper <= interval[1] else DOES_NOT_HOLD
    return {
        "claim": claim,
        "paper": paper,
        "ours": round(float(np.mean(xs)), 4) if xs else None,
        "verdict": verdict,
        "rule": "t-interval-0.95",
        "n": len(xs),
        "interval": interval,
    }


def count(claims: list[dict]) -> str:
    """'N of M claims hold' as a study's cell says it, with the unresolved and failed ones counted."""
    tally = {v: sum(c["verdict"] == v for c in claims) for v in VERDICTS}
    parts = [f"{tally[HOLDS]} of {len(claims)} claims hold"]
    plural = {NOT_RESOLVED: NOT_RESOLVED, DOES_NOT_HOLD: "do not hold"}
    parts += [f"{tally[v]} {v if tally[v] == 1 else plural[v]}" for v in (NOT_RESOLVED, DOES_NOT_HOLD) if tally[v]]
    return "; ".join(parts)


def describe(c: dict) -> str:
    """One claim as a line of a report: its verdict, what it says, and the numbers behind the verdict."""
    if c["rule"].startswith("t-interval"):
        shown = (
            "no interval" if c["interval"] is None else f"95 % interval {c['interval'][0]:.4g}..{c['interval'][1]:.4g}"
        )
        return f"**{c['verdict']}**: {c['claim']} (paper {c['paper']}; ours {c['ours']}, n = {c['n']}, {shown})"
    detail = c.get("why") or "; ".join(
        f"{p['lower']} < {p['upper']}: {p['verdict']}, p {_p(p['p_value'])}, {p['agreement']}"
        + (f", ~{p['seeds_to_resolve']} seeds a side would resolve it" if p["seeds_to_resolve"] else "")
        for p in c["pairs"]
    )
    if c.get("parts"):  # "only A": each method's own conjunction, as decided
        detail += "; each one's own: " + ", ".join(f"{name}: {verdict}" for name, verdict in c["ours"].items())
    n = sorted(set(c["n"].values()))
    seeds = f"n = {n[0]} seeds a side" if len(n) == 1 else f"n = {min(n)}-{max(n)} seeds a side"
    return f"**{c['verdict']}**: {c['claim']} ({seeds}; {detail})"


def _p(p: float | None) -> str:
    """A p-value as a report writes it after "p": "= 0.037", "< 1e-4", or "n/a" (fewer than 2 seeds a side)."""
    return "n/a" if p is None else (f"= {p:.2g}" if p >= 1e-4 else "< 1e-4")
