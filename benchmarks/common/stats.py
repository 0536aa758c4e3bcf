"""Means with 95 % t-intervals, and paired differences (the same split and seed on both sides)."""

from __future__ import annotations

from collections.abc import Sequence


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, lower, upper) of the 95 % t-interval; one value has no interval (NaN bounds)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    half = stats.t.ppf(0.975, n - 1) * sd / n**0.5
    return mean, mean - half, mean + half


def paired(differences: Sequence[float], higher_is_better: bool = True) -> dict:
    """The mean difference with its t-interval and how many pairs the first side won."""
    won = sum((d > 0) if higher_is_better else (d < 0) for d in differences)
    return {"differences": list(differences), "interval": t_interval(differences), "wins": won}


def median_of(values: Sequence[float]) -> float:
    """The upper median (an element of ``values``, as the reports print them)."""
    return sorted(values)[len(values) // 2]
