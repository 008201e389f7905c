"""Tests for qfi_cli.stats: the bootstrap percentile intervals (coverage, range, hierarchy, determinism)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

try:
    import qfi_cli  # noqa: F401
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from qfi_cli.stats import bootstrap_ci, describe_ci, describe_seed_ci, hierarchical_bootstrap_ci, mean_of_means

FRACTIONS = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=40)


def _binomial_bounds(n: int, p: float, tail: float = 1e-6) -> tuple[int, int]:
    """Counts a Binomial(n, p) stays within but with probability < 2 * tail."""
    return int(sps.binom.ppf(tail, n, p)), int(sps.binom.isf(tail, n, p))


def test_percentile_bootstrap_coverage_on_normal_data() -> None:
    # For normal data the bootstrap distribution of the mean is normal with the plug-in variance s^2 (n-1)/n / n,
    # so the percentile interval is mean +- z s sqrt((n-1)/n) / sqrt(n): it covers the true mean with probability
    # P(|T_{n-1}| < z sqrt((n-1)/n)) (0.942 at n = 50). K independent data sets give a binomial count.
    n, k, mu = 50, 2000, 0.9
    expected = 1 - 2 * sps.t.sf(sps.norm.ppf(0.975) * math.sqrt((n - 1) / n), n - 1)
    rng = np.random.default_rng(2024)
    covered = 0
    for _ in range(k):
        low, high = bootstrap_ci(rng.normal(mu, 0.05, n))
        covered += low <= mu <= high
    lo, hi = _binomial_bounds(k, expected)
    assert lo <= covered <= hi, (covered, expected * k)


def test_wrong_level_would_fail_the_coverage_check() -> None:
    """The check above can fail: a 68% interval covers far fewer than the binomial bound."""
    n, k, mu = 50, 400, 0.9
    expected = 1 - 2 * sps.t.sf(sps.norm.ppf(0.975) * math.sqrt((n - 1) / n), n - 1)
    rng = np.random.default_rng(7)
    covered = sum(lo <= mu <= hi for lo, hi in (bootstrap_ci(rng.normal(mu, 0.05, n), level=0.68)
                                               for _ in range(k)))
    assert covered < _binomial_bounds(k, expected)[0]


@settings(max_examples=60, deadline=None)
@given(FRACTIONS)
def test_interval_stays_inside_the_data(values: list[float]) -> None:
    low, high = bootstrap_ci(values, resamples=500)
    assert min(values) <= low <= high <= max(values)
    inner = bootstrap_ci(values, level=0.5, resamples=500)  # same resamples: nested quantiles
    assert low <= inner[0] <= inner[1] <= high


@settings(max_examples=40, deadline=None)
@given(st.lists(FRACTIONS, min_size=1, max_size=5))
def test_hierarchical_interval_stays_inside_the_data(groups: list[list[float]]) -> None:
    low, high = hierarchical_bootstrap_ci(groups, resamples=500)
    flat = [v for g in groups for v in g]
    assert min(flat) <= low <= high <= max(flat)


def test_skewed_trials_never_above_the_best_trial() -> None:
    # the demo's case: trials near clean (99.1%) and a few collapses; a Student-t band went above 100%
    accs = [0.991] * 45 + [0.40, 0.55, 0.62, 0.71, 0.30]
    low, high = bootstrap_ci(accs)
    assert high <= 0.991 and low < float(np.mean(accs)) < high


def test_deterministic_and_seeded() -> None:
    values = list(np.random.default_rng(3).random(30))
    assert bootstrap_ci(values) == bootstrap_ci(values)
    assert hierarchical_bootstrap_ci([values[:10], values[10:]]) == hierarchical_bootstrap_ci([values[:10],
                                                                                               values[10:]])
    assert bootstrap_ci(values, seed=1) != bootstrap_ci(values, seed=2)


def test_too_few_values() -> None:
    assert bootstrap_ci([]) == (None, None) and bootstrap_ci([0.5]) == (None, None)
    assert hierarchical_bootstrap_ci([]) == (None, None)
    assert hierarchical_bootstrap_ci([[0.5], []]) == (None, None)
    assert mean_of_means([[], []]) is None
    with pytest.raises(ValueError):
        bootstrap_ci([0.1, 0.2], level=1.0)


def test_one_seed_is_the_one_level_bootstrap() -> None:
    trials = [0.9, 0.7, 0.95, 0.3, 0.88]
    assert hierarchical_bootstrap_ci([trials]) == bootstrap_ci(trials)
    assert hierarchical_bootstrap_ci([trials, []]) == bootstrap_ci(trials)


def test_no_trial_variance_is_the_bootstrap_over_seed_means() -> None:
    means = list(np.random.default_rng(5).random(10))
    low, high = hierarchical_bootstrap_ci([[m] * 7 for m in means])
    ref = bootstrap_ci(means)  # the seed draws are the same stream; resampled means of constants may differ by
    assert (low, high) == pytest.approx(ref, rel=1e-12)  # float rounding of a weighted sum only


def test_three_seeds_span_their_range() -> None:
    # With 3 seeds, all three draws pick the smallest with probability 1/27 = 3.7% > 2.5% (and the largest
    # likewise): the 2.5% and 97.5% quantiles of the seed level are the smallest and largest seed means.
    assert hierarchical_bootstrap_ci([[0.7] * 4, [0.9] * 4, [0.8] * 4]) == pytest.approx((0.7, 0.9))


def test_hierarchical_wider_than_one_level_when_seeds_differ() -> None:
    rng = np.random.default_rng(11)
    groups = [list(np.clip(rng.normal(m, 0.02, 30), 0, 1)) for m in (0.90, 0.75, 0.95)]
    h_low, h_high = hierarchical_bootstrap_ci(groups)
    p_low, p_high = bootstrap_ci([v for g in groups for v in g])  # pooled trials, seeds ignored
    assert h_high - h_low > 2 * (p_high - p_low)
    assert h_low <= mean_of_means(groups) <= h_high


def test_wording() -> None:
    assert "training seeds and fault patterns" in describe_ci(3)
    assert "fault patterns (trials) of one training seed" in describe_ci(1)
    assert "one seed" in describe_ci([1, 3])
    assert describe_seed_ci().endswith("over training seeds")
