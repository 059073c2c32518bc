"""Is a soak series growing?  A least-squares slope with a one-sided bound.

Samples a few seconds apart are not independent (RSS that is high now is
high ten seconds later), and ordinary least squares would then claim more
confidence than the data holds.  The standard error is widened for the lag-1
autocorrelation of the residuals (effective sample size
``n (1 - r1) / (1 + r1)``, as climate trend tests do), so "no significant
growth" is not granted merely because many samples were taken.
"""

from __future__ import annotations

import itertools
import math

#: One-sided 95 % quantiles of Student's t, by degrees of freedom.
_T95 = {
    1: 6.314,
    2: 2.920,
    3: 2.353,
    4: 2.132,
    5: 2.015,
    6: 1.943,
    7: 1.895,
    8: 1.860,
    9: 1.833,
    10: 1.812,
    12: 1.782,
    15: 1.753,
    20: 1.725,
    25: 1.708,
    30: 1.697,
    40: 1.684,
    60: 1.671,
    120: 1.658,
}


def t95(df: float) -> float:
    """The quantile for the largest tabulated df not above ``df`` (so never
    narrower than the exact one); the normal's 1.645 beyond 120."""
    if df >= 1000:
        return 1.645
    usable = [k for k in _T95 if k <= max(1.0, df)]
    return _T95[max(usable)]


def trend(t_s: list[float], ys: list[float], bound_per_h: float) -> dict:
    """Slope of ``ys`` over ``t_s`` (seconds) in units per hour, its one-sided
    95 % confidence bounds, and a verdict.

    ``flat``: the slope is not significantly above zero (its lower bound is
    <= 0) or it is significantly below ``bound_per_h`` (its upper bound is
    below the bound).  ``growing`` otherwise.
    """
    n = len(ys)
    out: dict = {"n": n, "bound_per_h": bound_per_h}
    if n < 4 or len(t_s) != n:
        out.update(verdict="too few samples", slope_per_h=None)
        return out
    hours = [t / 3600.0 for t in t_s]
    tm = sum(hours) / n
    ym = sum(ys) / n
    sxx = sum((t - tm) ** 2 for t in hours)
    if sxx == 0:
        out.update(verdict="too few samples", slope_per_h=None)
        return out
    slope = sum((t - tm) * (y - ym) for t, y in zip(hours, ys, strict=True)) / sxx
    resid = [y - ym - slope * (t - tm) for t, y in zip(hours, ys, strict=True)]
    ss = sum(r * r for r in resid)
    r1 = sum(a * b for a, b in itertools.pairwise(resid)) / ss if ss > 0 else 0.0
    r1 = max(0.0, min(r1, 0.99))  # negative autocorrelation: no credit taken
    n_eff = n * (1 - r1) / (1 + r1)
    df = max(1.0, n_eff - 2)
    # Residual variance on the effective degrees of freedom.
    se = math.sqrt(ss / df / sxx) if ss > 0 else 0.0
    tq = t95(df)
    lower, upper = slope - tq * se, slope + tq * se
    if lower <= 0:
        verdict, why = "flat", "slope not significantly > 0"
    elif upper < bound_per_h:
        verdict, why = "flat", f"slope significantly < {bound_per_h:g}/h"
    else:
        verdict, why = "growing", "slope significantly > 0 and not below the bound"
    out.update(
        slope_per_h=round(slope, 3),
        se_per_h=round(se, 3),
        lower95_per_h=round(lower, 3),
        upper95_per_h=round(upper, 3),
        lag1_autocorrelation=round(r1, 3),
        n_effective=round(n_eff, 1),
        verdict=verdict,
        why=why,
    )
    return out
