"""Small statistics shared by inject-eval and the sweep report."""

from __future__ import annotations

import math

from scipy import stats


def t_interval(values: list[float]) -> tuple[float, float, float | None, float | None]:
    """Mean, sample standard deviation and Student-t 95% confidence interval of the mean (no CI below 2 values).

    >>> mean, std, low, high = t_interval([0.5, 0.7])
    >>> round(mean, 12), round(std, 12), round(low, 4), round(high, 4)
    (0.6, 0.141421356237, -0.6706, 1.8706)
    """
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0, None, None
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half
