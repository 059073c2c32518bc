"""The soak's trend test (bench/trend.py) on series whose trend is known."""

from __future__ import annotations

import random

from bench.trend import trend


def _series(slope_per_h: float, noise: float, n: int = 90, step_s: float = 10.0):
    rng = random.Random(7)
    t = [i * step_s for i in range(n)]
    y = [1000.0 + slope_per_h * x / 3600 + rng.gauss(0, noise) for x in t]
    return t, y


def test_trend_calls_a_noisy_level_series_flat():
    result = trend(*_series(0.0, 50.0), bound_per_h=1024)
    assert result["verdict"] == "flat"
    assert result["lower95_per_h"] <= 0 <= result["upper95_per_h"]


def test_trend_finds_growth_above_the_bound():
    result = trend(*_series(20000.0, 50.0), bound_per_h=1024)
    assert result["verdict"] == "growing"
    assert result["lower95_per_h"] > 1024
    assert abs(result["slope_per_h"] - 20000) < 3 * result["se_per_h"]


def test_trend_calls_significant_growth_below_the_bound_flat():
    result = trend(*_series(100.0, 1.0), bound_per_h=1024)
    assert result["lower95_per_h"] > 0  # it grows, significantly...
    assert result["verdict"] == "flat"  # ...but slower than the bound
    assert "< 1024" in result["why"]


def test_trend_widens_the_interval_for_autocorrelated_samples():
    rng = random.Random(3)
    t = [i * 10.0 for i in range(90)]
    walk, y = 0.0, []
    for _ in t:
        walk += rng.gauss(0, 20)
        y.append(1000 + walk)
    corrected = trend(t, y, bound_per_h=1024)
    assert corrected["lag1_autocorrelation"] > 0.5
    assert corrected["n_effective"] < 30


def test_trend_needs_a_few_samples():
    assert trend([0, 10, 20], [1, 2, 3], bound_per_h=1)["verdict"] == "too few samples"
