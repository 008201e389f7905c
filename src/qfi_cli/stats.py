"""Small statistics shared by inject-eval and the reports: means and their 95% intervals.

**Which interval, and why.** Trial accuracies under bit errors are bounded ([0, 1]) and, at low rates, have a long
left tail: most trials equal the clean accuracy and a rare one collapses (digits_cnn 8-bit: skewness -15 at
p = 0.01%, -3.7 at 0.1%). A sample of 10 or 50 trials usually holds no collapse, so any interval built from the
spread of the sample (bootstrap percentile, Student t, empirical Bernstein with the observed range) shrinks onto
the clean accuracy and misses the mean: the bootstrap percentile interval qfi used before covered 29% (n = 10) and
53% (n = 50) at p = 0.01% on the real model (issue 26; scripts/coverage.py measured 26% and 58%). An
interval valid for every distribution on [0, 1] has to use the bound itself: 10 trials all at 0.98 cannot exclude
a 30% chance of a trial at 0 (such a sample then still has probability 2.5%), so its lower end must reach down to
about 0.68, and that is the honest answer.

``mean_ci`` is the betting confidence interval of Waudby-Smith & Ramdas (2023), "Estimating means of bounded random
variables by betting" (JRSS-B 86(1)): for a candidate mean m, a gambler who starts with capital 1 and bets the
fraction lambda_t on each value through K_t(m) = prod_i (1 + lambda_i (x_i - m)) holds a nonnegative martingale
when the mean is m, so by Markov's inequality it reaches 2/alpha with probability <= alpha/2. Two such gamblers,
one betting that the mean lies above m (its capital rejects m as too small), one below (too large), each at
alpha/2 (the hedged capital with theta = 1/2); the interval is every m neither rejects. The bets are the
predictable plug-in ones of the paper's fixed-n interval, lambda_t = sqrt(2 log(2/alpha) / (n sigma_{t-1}^2)),
truncated at c/m (above) and c/(1-m) (below) with c = 0.95, where sigma_{t-1}^2 is the variance of the values
before t (floored at 1e-5; the first bet uses 1/4). Choices against the paper's defaults, measured on simulated
trial accuracies (tests/test_stats.py) and real ones (scripts/coverage.py): the variance estimate has no 1/4
prior pseudo-observation (with it, 50 trials near 0.98 kept the upper end at 1.0), and c = 0.95 rather than 3/4
(the lower end is set by the bound, and a bet near all-in reaches it: [0.98] * 10 gives [0.667, 0.987]). The
guarantee does not depend on these choices (any bet fixed before seeing x_t is valid); they set the width only.
Compared there with the paper's prior-and-c = 3/4 version, its aGRAPA bets and its diversified-Kelly mixture, this
one was the narrowest at n = 10, 50 and 200 at all three shapes.

Properties: coverage >= 95% for any distribution on [lo, hi] with independent values (not asymptotic); the
interval uses the values in their given order (trial order), with no randomness; it always lies in [lo, hi] and
is wide when the data are few (n = 10 near the clean accuracy: about 0.33 wide, almost all of it below the mean).
Each side's capital is monotone in m, so each end is found exactly by a staged grid search (33 candidates, three
times: resolution 1/32768 of [lo, hi], rounded outwards). Cost: O(n) per candidate, 200 candidates: about 0.5 ms for
n = 10, 1 ms for n = 200, 4 ms for n = 1,000 and 15 ms for n = 5,000 (one core; up to 3x more on a loaded machine;
scripts/coverage.py prints it).

``two_level_ci`` is the interval of a mean over training seeds (replicates, usually 1 to 5) of each seed's mean
over its trials. It covers the fault-pattern (trial) variance of that mean, given the trained models, and not the
seed-to-seed variance: with 1 to 5 replicates nothing distribution-free bounds that usefully (3 values in [0, 1]
cannot exclude a 30% chance of a seed that trains badly: an interval over per-seed means spans [0, 73]% for clean
errors near 1%), so reports show the seeds' spread as a range beside it (``seed_range``), not as a CI. When the seeds
have equal trial counts, trial t's values (the same fault pattern for every model of a study) average into one
value in [lo, hi], and those averages are independent across trials: ``mean_ci`` of them covers the mean over the
models exactly as the one-model interval does. With unequal counts each seed's interval is taken at level
1 - alpha / k and their bounds averaged (Bonferroni: all k cover together with probability >= 1 - alpha, and then
the average covers the mean of means). ``describe_ci`` / ``describe_seed_range`` say in one line which variance an
interval covers and by which method.

A difference of two paired values in [0, 1] lies in [-1, 1]: pass ``lo=-1.0``.

**Stopping at a stated precision** (``eval.precision``). An interval re-checked after every trial until it is
narrow enough is not a 95% interval any more (the fixed-n one above, at the trial count where it happened to be
narrow, misses more often). ``sequential=True`` gives the betting *confidence sequence* of the same paper (its
hedged capital with predictable plug-in bets, Section 4): the bets do not depend on a planned n,
lambda_t = sqrt(2 log(2/alpha) / (sigma_{t-1}^2 t log(1 + t))), truncated as above, and a candidate mean is
excluded once either gambler's capital has reached 2/alpha at any time so far (the running intersection). By
Ville's inequality each capital ever reaches 2/alpha with probability <= alpha/2, so the intervals at all trial
counts contain the mean together with probability >= 95%: the one at a data-dependent stopping time is valid.
Its width at a given n is close to the fixed-n interval's (the running maximum gains what the smaller late bets
lose; tests/test_stats.py measures both). ``PrecisionRule`` is the stopping rule built on it, and everything
computed from adaptively stopped trials (results.json, reports, paired differences) uses ``sequential=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LEVEL = 0.95
METHOD = "betting (Waudby-Smith & Ramdas 2023)"  # the ``ci_method`` of results.json
SEQUENTIAL_METHOD = "betting confidence sequence (Waudby-Smith & Ramdas 2023)"  # ... of adaptively stopped trials
TRUNCATION = 0.95  # c: at most this fraction of the capital the bound allows is bet on one value
VARIANCE_FLOOR = 1e-5  # of the values mapped to [0, 1]
STAGES = (32, 32, 32)  # candidate means per refinement (each + 1): resolution 1/32768 of [lo, hi]
_SLACK = 1e-12  # values this far outside [lo, hi] are float rounding and clipped


def mean_of_means(groups: Sequence[Sequence[float]]) -> float | None:
    """The mean over groups (training seeds) of each group's mean (its trials); None without values.

    >>> mean_of_means([[0.9, 0.7], [0.5]])
    0.65
    """
    means = [math.fsum(g) / len(g) for g in groups if len(g)]
    return math.fsum(means) / len(means) if means else None


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def _scaled(values: Sequence[float], lo: float, hi: float) -> np.ndarray:
    if not hi > lo:
        raise ValueError(f"the bounds must satisfy lo < hi, got [{lo}, {hi}]")
    data = np.asarray(values, dtype=float)
    if data.ndim != 1:
        raise ValueError("values must be one-dimensional")
    if not np.isfinite(data).all() or (data < lo - _SLACK * (hi - lo)).any() or (data > hi + _SLACK * (hi - lo)).any():
        raise ValueError(f"mean_ci needs finite values inside [{lo:g}, {hi:g}]")
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0)


def _bets(x: np.ndarray, alpha: float, sequential: bool = False) -> np.ndarray:
    """The predictable plug-in bets: bet t uses the values before t only (their variance, floored); the fixed-n
    interval's scale with n, the confidence sequence's with t log(1 + t)."""
    n = len(x)
    t = np.arange(1, n + 1)
    mean = np.cumsum(x) / t
    var = np.maximum(np.cumsum(x * x) / t - mean * mean, 0.0)  # variance of the first t values
    before = np.concatenate([[0.25], np.maximum(var[:-1], VARIANCE_FLOOR)])
    scale = t * np.log1p(t) if sequential else n
    return np.sqrt(2.0 * math.log(2.0 / alpha) / (scale * before))


def _rejects(x: np.ndarray, bets: np.ndarray, m: np.ndarray, threshold: float, above: bool,
             sequential: bool = False) -> np.ndarray:
    """For each candidate mean m: does the capital of the gambler betting the mean lies above m (``above``) or
    below it reach exp(threshold) (at the end; ``sequential``: at any time so far)? Monotone in m: non-increasing
    for ``above``, non-decreasing otherwise (every factor of the capital is, hence its running maximum too)."""
    room = m if above else 1.0 - m
    with np.errstate(divide="ignore"):
        cap = np.where(room > 0, TRUNCATION / np.where(room > 0, room, 1.0), np.inf)
    lam = np.minimum(bets[:, None], cap[None, :])
    step = (x[:, None] - m[None, :]) if above else (m[None, :] - x[:, None])
    log_capital = np.log1p(lam * step)
    if sequential:
        return np.cumsum(log_capital, axis=0).max(axis=0) >= threshold
    return log_capital.sum(axis=0) >= threshold


def _end(x: np.ndarray, bets: np.ndarray, threshold: float, lower: bool, sequential: bool = False) -> float:
    """The lower (or upper) end of the interval: the last candidate rejected as too small (or the first as too
    large), refined in stages; every accepted candidate lies inside, so the end errs outwards only."""
    a, b = 0.0, 1.0
    for g in STAGES:
        m = np.linspace(a, b, g + 1)
        hit = np.flatnonzero(_rejects(x, bets, m, threshold, above=lower, sequential=sequential))
        if lower:
            if not len(hit):
                return a
            j = hit[-1]
            if j == g:
                return b
            a, b = m[j], m[j + 1]
        else:
            if not len(hit):
                return b
            j = hit[0]
            if j == 0:
                return a
            a, b = m[j - 1], m[j]
    return a if lower else b


def mean_ci(values: Sequence[float], lo: float = 0.0, hi: float = 1.0, level: float = LEVEL,
            sequential: bool = False) -> tuple[float, float] | tuple[None, None]:
    """Betting confidence interval (Waudby-Smith & Ramdas 2023) of the mean of ``values``, each in [lo, hi].

    Valid for any distribution on [lo, hi] (independent values; not asymptotic); uses the values in their
    given order; deterministic. (None, None) below two values. See the module docstring for the bets.
    ``sequential``: the confidence sequence's interval at n = len(values), valid when n was chosen by looking at
    the values (adaptive stopping); wider.

    >>> [round(v, 4) for v in mean_ci([0.99, 0.98, 0.99, 0.97, 0.99, 0.40])]  # skewed: mean 0.887
    [0.448, 0.9846]
    >>> [round(v, 3) for v in mean_ci([0.98] * 10)]  # no collapse seen: the bound says how far down one may lie
    [0.667, 0.987]
    >>> mean_ci([0.9])
    (None, None)
    >>> [round(v, 3) for v in mean_ci([0.02, -0.01, 0.03] * 20, lo=-1.0)]  # paired differences lie in [-1, 1]
    [-0.051, 0.076]
    >>> [round(v, 3) for v in mean_ci([0.99, 0.98, 0.99, 0.97, 0.99, 0.40], sequential=True)]  # adaptive stop
    [0.458, 0.985]
    """
    _check_level(level)
    x = _scaled(values, lo, hi)
    if len(x) < 2:
        return None, None
    alpha = 1.0 - level
    bets = _bets(x, alpha, sequential)
    threshold = math.log(2.0 / alpha)
    low = _end(x, bets, threshold, lower=True, sequential=sequential)
    high = _end(x, bets, threshold, lower=False, sequential=sequential)
    return float(lo + (hi - lo) * low), float(lo + (hi - lo) * high)


def two_level_ci(groups: Sequence[Sequence[float]], lo: float = 0.0, hi: float = 1.0, level: float = LEVEL,
                 sequential: bool = False) -> tuple[float, float] | tuple[None, None]:
    """Interval of ``mean_of_means(groups)`` over the fault patterns, given the models: groups are training seeds,
    their values the trials of that seed (see the module docstring); ``sequential``: the groups' trial counts were
    chosen adaptively (``PrecisionRule``), so every interval is the confidence sequence's.

    One group: ``mean_ci`` of its values. Equal trial counts: ``mean_ci`` of trial t's mean over the groups.
    Otherwise the average of the groups' intervals at level ``1 - (1 - level) / k``. Empty groups are ignored;
    (None, None) when there is nothing to bound (one value in all).

    >>> two_level_ci([[0.9, 0.8]]) == mean_ci([0.9, 0.8])
    True
    >>> two_level_ci([[0.98, 0.96], [0.90, 0.94]]) == mean_ci([0.94, 0.95])
    True
    >>> low, high = two_level_ci([[0.98, 0.97, 0.99], [0.90, 0.60, 0.91], [0.96, 0.95]])
    >>> low < mean_of_means([[0.98, 0.97, 0.99], [0.90, 0.60, 0.91], [0.96, 0.95]]) < high
    True
    """
    data = [list(g) for g in groups if len(g)]
    if len(data) == 1:
        return mean_ci(data[0], lo, hi, level, sequential)
    if not data:
        return None, None
    if len({len(g) for g in data}) == 1:
        return mean_ci([math.fsum(column) / len(column) for column in zip(*data)], lo, hi, level, sequential)
    each = [mean_ci(g, lo, hi, 1 - (1 - level) / len(data), sequential) for g in data]
    if any(low is None for low, _ in each):
        return None, None
    return math.fsum(low for low, _ in each) / len(each), math.fsum(high for _, high in each) / len(each)


@dataclass(frozen=True)
class PrecisionRule:
    """Run trials until the 95% confidence sequence of the mean (``mean_ci(..., sequential=True)``) is no wider
    than ``2 * precision`` (the mean to +-precision), after at least ``min_trials`` and at most ``max_trials``.

    The sequence is valid at every n at once, so the interval where the rule stops is a valid 95% interval. It is
    checked at ``min_trials`` and then every ceil(n / 20) trials (at most 5% more trials than checking every one,
    about 50 checks per tenfold of n); not at 40 in the example below, which the 41st trial decides.

    >>> rule = PrecisionRule(0.05, min_trials=10, max_trials=400)
    >>> rule.done([0.98] * 10), rule.done([0.98] * 40), rule.done([0.98] * 41)  # n = 10: [0.667, 0.987], too wide
    (False, False, True)
    >>> rule.done([0.5, 0.0, 1.0] * 100), rule.done([0.5, 0.0, 1.0] * 134)  # the cap ends it without precision
    (False, True)
    """

    precision: float
    min_trials: int = 10
    max_trials: int = 1000
    level: float = LEVEL

    def checked_at(self, n: int) -> bool:
        """Whether the interval is looked at after trial n (n = min_trials, then every ceil(n / 20) trials).

        >>> [n for n in range(1, 60) if PrecisionRule(0.01, min_trials=10).checked_at(n)][:14]
        [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23, 25]
        """
        m = max(self.min_trials, 2)
        while m < n:
            m += -(-m // 20)
        return m == n

    def precise(self, values: Sequence[float]) -> bool:
        """Whether the confidence sequence's interval of ``values`` is no wider than ``2 * precision``."""
        low, high = mean_ci(values, level=self.level, sequential=True)
        return low is not None and high - low <= 2 * self.precision

    def done(self, values: Sequence[float]) -> bool:
        """Whether to stop after these trials (each value in [0, 1]): the cap reached, or precise at a check."""
        n = len(values)
        return n >= self.max_trials or (self.checked_at(n) and self.precise(values))


def seed_range(values: Sequence[float]) -> tuple[float, float] | tuple[None, None]:
    """The smallest and largest of one number per training seed (a spread, not a CI); (None, None) for < 2 seeds.

    >>> seed_range([0.3, 0.1, 0.2]), seed_range([0.5])
    ((0.1, 0.3), (None, None))
    """
    return (min(values), max(values)) if len(values) > 1 else (None, None)


def describe_ci(seeds: int | Sequence[int], level: float = LEVEL, sequential: bool = False) -> str:
    """One line saying what an interval of this module covers, given the number(s) of training seeds behind it.

    >>> describe_ci(3)
    '95% CI: betting (Waudby-Smith & Ramdas 2023) over fault patterns (trials) given the trained models (not over seeds)'
    >>> describe_ci(1)
    '95% CI: betting (Waudby-Smith & Ramdas 2023) over fault patterns (trials) of one training seed'
    """
    counts = {seeds} if isinstance(seeds, int) else set(seeds)
    head = f"{100 * level:g}% CI: {SEQUENTIAL_METHOD if sequential else METHOD}"
    several = f"{head} over fault patterns (trials) given the trained models (not over seeds)"
    one = f"{head} over fault patterns (trials) of one training seed"
    if counts <= {0, 1}:
        return one
    if min(counts) > 1:
        return several
    return f"{several}; over fault patterns only where a row has one seed"


def describe_seed_range() -> str:
    """What the brackets of a per-model number (one value per training seed) hold.

    >>> describe_seed_range()
    'range [min, max] over training seeds (a spread, not a CI)'
    """
    return "range [min, max] over training seeds (a spread, not a CI)"
