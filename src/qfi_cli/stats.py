"""Small statistics shared by inject-eval and the sweep report: means and their 95% intervals.

Trial accuracies under bit errors are skewed (most trials near the clean accuracy, a few collapses), so the
intervals here are bootstrap percentile intervals: they stay inside the range of the data (never above the best
trial) and follow its skew. They are deterministic (a fixed generator seed). ``hierarchical_bootstrap_ci`` covers
two sources of variance at once: the training seed (which model you got) and the fault pattern (which bits broke).
``describe_ci`` says in one line which of them an interval covers.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0
_CACHED = 1 << 21  # resample weights up to this size (16 MB: 209 trials) are cached; more are drawn in chunks


def mean_of_means(groups: Sequence[Sequence[float]]) -> float | None:
    """The mean over groups (training seeds) of each group's mean (its trials); None without values.

    >>> mean_of_means([[0.9, 0.7], [0.5]])
    0.65
    """
    means = [math.fsum(g) / len(g) for g in groups if len(g)]
    return math.fsum(means) / len(means) if means else None


def _indices(n: int, resamples: int, seed: int, stream: int) -> np.ndarray:
    """Indices of ``resamples`` draws of n out of n with replacement, from stream ``stream`` of ``seed``."""
    return np.random.default_rng([seed, stream, n]).integers(0, n, size=(resamples, n))


@lru_cache(maxsize=8)
def _weights(n: int, resamples: int, seed: int, stream: int) -> np.ndarray:
    """Bootstrap weights (resamples x n, read-only): row b holds how often resample b drew each of n values, / n.

    Stream ``stream`` of ``seed``; cached, since every cell of a report resamples the same trial count.
    """
    idx = _indices(n, resamples, seed, stream) + n * np.arange(resamples)[:, None]
    weights = np.bincount(idx.ravel(), minlength=resamples * n).reshape(resamples, n) / n
    weights.flags.writeable = False
    return weights


def _resampled_means(values: np.ndarray, resamples: int, seed: int, stream: int) -> np.ndarray:
    """Means of ``resamples`` bootstrap resamples of each column of ``values`` (n x k) -> (resamples x k).

    Resample b draws the same rows for every column (one draw of n indices with replacement).
    """
    n, k = values.shape
    columns = [np.ascontiguousarray(values[:, c]) for c in range(k)]  # einsum per column: no BLAS threads
    if n * resamples <= _CACHED:
        weights = _weights(n, resamples, seed, stream)
        return np.stack([np.einsum("bn,n->b", weights, col) for col in columns], axis=1)
    rng = np.random.default_rng([seed, stream, n])  # long trial lists: draw in chunks, uncached
    out = np.empty((resamples, k))
    step = max(1, _CACHED // n)
    for start in range(0, resamples, step):
        rows = min(resamples, start + step) - start
        idx = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        weights = np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n) / n
        out[start:start + rows] = np.stack([np.einsum("bn,n->b", weights, col) for col in columns], axis=1)
    return out


def _percentiles(means: np.ndarray, values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    lo, hi = float(values.min()), float(values.max())  # a mean of resampled values cannot leave [min, max]:
    return min(max(float(low), lo), hi), min(max(float(high), lo), hi)  # clip away float rounding


def _check(level: float, resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")


def bootstrap_ci(values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                 seed: int = SEED) -> tuple[float, float] | tuple[None, None]:
    """Bootstrap percentile interval of the mean of ``values`` (say one model's trial accuracies).

    Draws ``resamples`` resamples of the values with replacement (numpy PCG64 seeded with ``seed``: the same
    values give the same interval) and returns the (1 - level)/2 and (1 + level)/2 quantiles of their means.
    The interval never leaves [min, max] of the values, so it never rises above the best trial. (None, None)
    below two values. The interval covers the variance of the values only: over trials, the fault patterns.

    >>> [round(x, 4) for x in bootstrap_ci([0.99, 0.98, 0.99, 0.97, 0.99, 0.40])]  # skewed: mean 0.887
    [0.6917, 0.9883]
    >>> bootstrap_ci([0.9])
    (None, None)
    >>> bootstrap_ci([0.5, 0.5, 0.5])
    (0.5, 0.5)
    """
    _check(level, resamples)
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or len(data) < 2:
        return None, None
    return _percentiles(_resampled_means(data[:, None], resamples, seed, 0)[:, 0], data, level)


def hierarchical_bootstrap_ci(groups: Sequence[Sequence[float]], level: float = LEVEL,
                              resamples: int = RESAMPLES,
                              seed: int = SEED) -> tuple[float, float] | tuple[None, None]:
    """Two-level bootstrap percentile interval of ``mean_of_means(groups)``: groups are training seeds, their
    values the trials (fault patterns) of that seed's model.

    Each resample draws as many groups as there are, with replacement, then for each drawn group as many of its
    values as it has, with replacement; the statistic is the mean over drawn groups of their resampled means.
    So the interval covers both the seed-to-seed and the pattern-to-pattern variance. With one group it is
    ``bootstrap_ci`` of that group (fault patterns only); when no group varies it is the percentile bootstrap
    of the group means (seeds only). Like ``bootstrap_ci`` it stays inside [min, max] of all the values; empty
    groups are ignored; (None, None) when there is no variance to resample (one group of one value).

    Few seeds limit it: with 2 or 3 groups, every seed drawn alike has probability 1/4 or 1/27 > 2.5%, so the
    seed level spans exactly the range of the group means, which holds the mean of a symmetric seed distribution
    with probability 1 - 2^(1-n) (50% for 2 seeds, 75% for 3); trials widen it from there.

    >>> [round(x, 4) for x in hierarchical_bootstrap_ci([[0.98, 0.97, 0.99], [0.90, 0.60, 0.91], [0.96, 0.95]])]
    [0.7878, 0.9778]
    >>> hierarchical_bootstrap_ci([[0.9, 0.8]]) == bootstrap_ci([0.9, 0.8])
    True
    >>> hierarchical_bootstrap_ci([[0.9], [0.8], [0.7]])  # one trial per seed: seeds only, their range
    (0.7, 0.9)
    """
    _check(level, resamples)
    data = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if len(data) < 2:
        return bootstrap_ci(data[0], level, resamples, seed) if data else (None, None)
    n = len(data)
    # stream 0 picks the seeds (so that, with no trial variance, this is bootstrap_ci of the group means);
    # stream 1 + j resamples the trials of whichever seed fills slot j
    pick = _indices(n, resamples, seed, 0)
    means = np.empty((resamples, n))
    for j in range(n):
        slot = np.empty((resamples, n))  # column g: resampled mean of group g, for every resample
        for size in {len(v) for v in data}:
            members = [g for g, v in enumerate(data) if len(v) == size]
            values = np.stack([data[g] for g in members], axis=1)
            slot[:, members] = values[0] if size == 1 else _resampled_means(values, resamples, seed, 1 + j)
        means[:, j] = slot[np.arange(resamples), pick[:, j]]
    return _percentiles(means.mean(axis=1), np.concatenate(data), level)


def describe_ci(seeds: int | Sequence[int], level: float = LEVEL, resamples: int = RESAMPLES) -> str:
    """One line saying what an interval of this module covers, given the number(s) of training seeds behind it.

    >>> describe_ci(3)
    '95% CI: bootstrap percentile (10,000 resamples), hierarchical over training seeds and fault patterns (trials)'
    >>> describe_ci(1)
    '95% CI: bootstrap percentile (10,000 resamples) over fault patterns (trials) of one training seed'
    """
    counts = {seeds} if isinstance(seeds, int) else set(seeds)
    head = f"{100 * level:g}% CI: bootstrap percentile ({resamples:,} resamples)"
    several = f"{head}, hierarchical over training seeds and fault patterns (trials)"
    one = f"{head} over fault patterns (trials) of one training seed"
    if counts <= {0, 1}:
        return one
    if min(counts) > 1:
        return several
    return f"{several}; over fault patterns only where a row has one seed"


def describe_seed_ci(level: float = LEVEL, resamples: int = RESAMPLES) -> str:
    """What the interval of a per-model number (clean error: one value per training seed) covers.

    >>> describe_seed_ci()
    '95% CI: bootstrap percentile (10,000 resamples) over training seeds'
    """
    return f"{100 * level:g}% CI: bootstrap percentile ({resamples:,} resamples) over training seeds"
