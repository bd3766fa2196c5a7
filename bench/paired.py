"""Paired comparisons of two search methods over the same seeds, with no scipy: the per-seed
differences, their mean with a Student-t interval and a percentile-bootstrap interval, and an
exact two-sided sign test.

With n seeds the sign test cannot give a p below 2 / 2**n (0.0625 for 5 seeds, 0.031 for 6):
it says so (`sign_p_min`), so that a table never reads "not significant" as "no difference".
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Mapping

LEVEL = 0.95
RESAMPLES = 10_000


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom (bisection on t_cdf)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def t_interval(diffs: list[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The Student-t interval of the mean of `diffs` (None for fewer than 2)."""
    n = len(diffs)
    if n < 2:
        return None
    half = t_quantile(0.5 + level / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    mean = statistics.fmean(diffs)
    return mean - half, mean + half


def bootstrap_interval(diffs: list[float], level: float = LEVEL, resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float] | None:
    """The percentile-bootstrap interval of the mean of `diffs` (fixed seed; None for fewer
    than 2). With few seeds it is narrower than the t interval: it cannot see beyond the
    differences observed."""
    n = len(diffs)
    if n < 2:
        return None
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=n)) for _ in range(resamples))
    lo = means[int(math.floor((1 - level) / 2 * (resamples - 1)))]
    hi = means[int(math.ceil((1 + level) / 2 * (resamples - 1)))]
    return lo, hi


def sign_test(diffs: list[float]) -> dict:
    """Exact two-sided sign test: wins (> 0), ties (== 0, left out), losses (< 0), p, and the
    smallest p that many non-tied seeds could give."""
    wins = sum(d > 0 for d in diffs)
    losses = sum(d < 0 for d in diffs)
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return {"wins": wins, "ties": len(diffs) - n, "losses": losses,
            "sign_p": min(1.0, 2 * tail), "sign_p_min": min(1.0, 2 / 2**n)}


def paired(a: Mapping[int, float | None], b: Mapping[int, float | None],
           level: float = LEVEL) -> dict:
    """Compare per-seed values `a` and `b` (seed -> value; None: no value, left out): the
    differences a - b over the seeds both have, their mean, t and bootstrap intervals, and the
    sign test."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    diffs = [a[s] - b[s] for s in seeds]
    return {"seeds": seeds, "diffs": diffs, "n": len(diffs),
            "mean": statistics.fmean(diffs) if diffs else None,
            "t_ci": t_interval(diffs, level), "bootstrap_ci": bootstrap_interval(diffs, level),
            "level": level, **sign_test(diffs)}
