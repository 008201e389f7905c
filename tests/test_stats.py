"""Tests for qfi_cli.stats: the betting intervals (coverage measured on trial-accuracy shapes, bounds, the two levels,
determinism, cost), and that the percentile bootstrap qfi used before fails the same coverage check."""

from __future__ import annotations

import sys
import time
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

from qfi_cli.stats import (METHOD, describe_ci, describe_seed_range, mean_ci, mean_of_means, seed_range,
                           two_level_ci)

FRACTIONS = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=40)

# ------------------------------------------------------------------------------------------- coverage

POPULATION = 5_000  # trials per rate taken as the population (as scripts/coverage.py does on the real model)
REPETITIONS = 400
TARGET = 0.94  # issue 26: the share of 95% intervals that contain the reference must be >= 94%
# The tolerance: a valid 95% interval covers with probability >= 0.95, so over 400 independent repetitions the count
# is Binomial(400, >= 0.95): sd <= 4.4 (1.1 points). 94% is 376 of 400, 0.9 sd below 380; an interval with coverage
# exactly 95% would miss it in ~15% of seeds, which is why the check is a fixed computation (seeded) and why the
# measured coverage (99-100%) sits far above it: with true coverage 98% the chance to fall below 376 is < 1e-4.
# The old bootstrap covers 55-85% here: 8-30 sd below the target.


def population(shape: str, size: int = POPULATION, seed: int = 0) -> np.ndarray:
    """Trial accuracies of the measured shape of digits_cnn 8-bit (360 test samples, clean accuracy ~0.98).

    ``"1e-4"``: binomial noise around 0.98, and with probability 0.55% a catastrophic trial uniform in [0.1, 0.9]
    (skewness about -15, as measured at p = 0.01%); ``"1e-3"``: around 0.975, 10% of trials uniform in [0.3, 0.95]
    (skewness about -3.6; measured -3.7 at 0.1%); ``"1e-2"``: a milder spread, each trial's accuracy drawn from
    Beta(90, 10) (mean 0.9, sd 0.03) then binomial on 360 samples (skewness about -0.5).
    """
    rng = np.random.default_rng([seed, {"1e-4": 4, "1e-3": 3, "1e-2": 2}[shape]])
    if shape == "1e-2":
        return rng.binomial(360, rng.beta(90, 10, size)) / 360
    clean, share, low, high = {"1e-4": (0.98, 0.0055, 0.1, 0.9), "1e-3": (0.975, 0.10, 0.3, 0.95)}[shape]
    acc = rng.binomial(360, clean, size) / 360
    bad = rng.random(size) < share
    acc[bad] = rng.uniform(low, high, int(bad.sum()))
    return acc


def subsamples(pop: np.ndarray, n: int, repetitions: int = REPETITIONS, seed: int = 1) -> np.ndarray:
    """``repetitions`` samples of n trials, each drawn without replacement from the population."""
    rng = np.random.default_rng([seed, n])
    return np.stack([pop[rng.choice(len(pop), n, replace=False)] for _ in range(repetitions)])


def percentile_bootstrap(values: np.ndarray, resamples: int = 2_000, seed: int = 0) -> tuple[float, float]:
    """The interval qfi reported before: 2.5% and 97.5% quantiles of the means of resamples with replacement."""
    idx = np.random.default_rng([seed, len(values)]).integers(0, len(values), (resamples, len(values)))
    low, high = np.quantile(values[idx].mean(axis=1), [0.025, 0.975])
    return float(low), float(high)


def coverage(procedure, samples: np.ndarray, reference: float) -> tuple[float, float]:
    intervals = np.array([procedure(s) for s in samples])
    covered = (intervals[:, 0] <= reference) & (reference <= intervals[:, 1])
    return float(covered.mean()), float((intervals[:, 1] - intervals[:, 0]).mean())


def test_populations_have_the_measured_shape() -> None:
    skew = {shape: sps.skew(population(shape)) for shape in ("1e-4", "1e-3", "1e-2")}
    assert -20 < skew["1e-4"] < -11 and -4.5 < skew["1e-3"] < -3 and -1 < skew["1e-2"] < 0, skew
    assert abs(population("1e-2").mean() - 0.9) < 0.005 and abs(population("1e-2").std() - 0.034) < 0.003
    assert abs(np.median(population("1e-4")) - 0.98) < 0.005


@pytest.mark.parametrize("shape", ["1e-4", "1e-3", "1e-2"])
@pytest.mark.parametrize("n", [10, 50])
def test_betting_interval_covers_trial_accuracies(shape: str, n: int) -> None:
    pop = population(shape)
    share, width = coverage(mean_ci, subsamples(pop, n), float(pop.mean()))
    assert share >= TARGET, (shape, n, share)
    assert width < {10: 0.45, 50: 0.15}[n], (shape, n, width)  # wide where few trials must be, but not [0, 1]


@pytest.mark.parametrize("n", [10, 50])
def test_percentile_bootstrap_fails_on_the_heavy_tail(n: int) -> None:
    """The same check fails the old interval: most samples of 10 or 50 trials hold no catastrophic trial, and the
    percentile interval of such a sample lies on the clean accuracy, above the mean."""
    pop = population("1e-4")
    share, _ = coverage(percentile_bootstrap, subsamples(pop, n), float(pop.mean()))
    assert share < 0.90, share  # far below TARGET (measured 0.55-0.80)


# --------------------------------------------------------------------------------------------- properties

@settings(max_examples=60, deadline=None)
@given(FRACTIONS)
def test_interval_inside_the_bounds_and_holds_the_mean(values: list[float]) -> None:
    low, high = mean_ci(values)
    assert 0.0 <= low <= high <= 1.0
    assert low - 1e-9 <= float(np.mean(values)) <= high + 1e-9


@settings(max_examples=30, deadline=None)
@given(FRACTIONS)
def test_mirrored_and_affine(values: list[float]) -> None:
    """RErr = 1 - accuracy gets the mirrored interval; values on [lo, hi] the mapped one (paired differences)."""
    low, high = mean_ci(values)
    m_low, m_high = mean_ci([1.0 - v for v in values])
    assert (m_low, m_high) == pytest.approx((1.0 - high, 1.0 - low), abs=1e-9)
    d_low, d_high = mean_ci([2.0 * v - 1.0 for v in values], lo=-1.0)
    assert (d_low, d_high) == pytest.approx((2.0 * low - 1.0, 2.0 * high - 1.0), abs=1e-9)


def test_no_collapse_seen_still_reaches_down_by_the_bound() -> None:
    # 10 trials at 0.98: a distribution with P(trial = 0) = d gives such a sample with probability (1 - d)^10,
    # >= 2.5% up to d = 0.31 (mean 0.678); a valid interval must reach down about that far. Above, a mean of
    # 0.986 needs 31% of trials at 1.0 (the same 2.5%), so the upper end stays near the data.
    low, high = mean_ci([0.98] * 10)
    assert 0.6 < low < 0.70 and 0.98 < high < 0.99
    low50, high50 = mean_ci([0.98] * 50)  # (1 - d)^50 = 2.5%: d = 0.071, mean 0.91
    assert 0.88 < low50 < 0.92 and 0.98 < high50 < 0.985


def test_skewed_trials_stay_within_the_bound() -> None:
    # the demo's case: trials near clean (99.1%) and a few collapses; a Student-t band went above 100%
    accs = [0.991] * 45 + [0.40, 0.55, 0.62, 0.71, 0.30]
    low, high = mean_ci(accs)
    assert 0.0 <= low < float(np.mean(accs)) < high <= 1.0


def test_deterministic() -> None:
    values = list(np.random.default_rng(3).random(30))
    assert mean_ci(values) == mean_ci(values)
    assert two_level_ci([values[:10], values[10:]]) == two_level_ci([values[:10], values[10:]])


def test_too_few_values_and_bad_input() -> None:
    assert mean_ci([]) == (None, None) and mean_ci([0.5]) == (None, None)
    assert two_level_ci([]) == (None, None)
    assert two_level_ci([[0.5], []]) == (None, None)
    assert mean_of_means([[], []]) is None
    with pytest.raises(ValueError):
        mean_ci([0.1, 0.2], level=1.0)
    with pytest.raises(ValueError):
        mean_ci([0.1, 1.5])
    with pytest.raises(ValueError):
        mean_ci([0.1, float("nan")])
    assert mean_ci([0.0, 1.0 + 1e-15]) == mean_ci([0.0, 1.0])  # float rounding is clipped


def test_one_seed_is_the_trial_interval() -> None:
    trials = [0.9, 0.7, 0.95, 0.3, 0.88]
    assert two_level_ci([trials]) == mean_ci(trials)
    assert two_level_ci([trials, []]) == mean_ci(trials)


def test_several_seeds_with_equal_trials_are_the_interval_of_the_trial_means() -> None:
    """Trial t of every seed (one fault pattern of a study) averages into one value in [0, 1]; those averages are
    independent across trials, so their betting interval bounds the mean over the models."""
    rng = np.random.default_rng(11)
    groups = [list(np.clip(rng.normal(m, 0.02, 30), 0, 1)) for m in (0.90, 0.75, 0.95)]
    assert two_level_ci(groups) == mean_ci([float(np.mean(column)) for column in zip(*groups)])
    low, high = two_level_ci(groups)
    assert low <= mean_of_means(groups) <= high


def test_unequal_trials_average_bonferroni_intervals() -> None:
    groups = [[0.9, 0.8, 0.95], [0.7, 0.75]]
    each = [mean_ci(g, level=1 - 0.05 / 2) for g in groups]
    assert two_level_ci(groups) == pytest.approx(tuple(np.mean(each, axis=0)))


@pytest.mark.parametrize("trials", [(10, 10, 10), (50, 50, 50), (10, 30, 50)])
def test_two_level_covers_the_mean_over_the_trained_models(trials) -> None:
    """What the interval claims: for fixed trained models (three seeds, each with its own heavy-tailed trial
    distribution: the measured shapes of p = 0.01%, 0.1% and 1%), the share of 400 studies whose interval holds the
    mean of the models' mean accuracies is >= 94%, with equal and with unequal trial counts."""
    pops = [population(shape, seed=7) for shape in ("1e-4", "1e-3", "1e-2")]
    target = float(np.mean([p.mean() for p in pops]))
    rng = np.random.default_rng(5)
    covered = 0
    for _ in range(REPETITIONS):
        groups = [list(p[rng.choice(len(p), n, replace=False)]) for p, n in zip(pops, trials)]
        low, high = two_level_ci(groups)
        covered += low <= target <= high
    assert covered / REPETITIONS >= TARGET


def test_seed_range_is_the_spread_not_a_ci() -> None:
    assert seed_range([0.02, 0.01, 0.05]) == (0.01, 0.05) and seed_range([0.3]) == (None, None)
    assert "not a CI" in describe_seed_range()


def test_cost_per_interval() -> None:
    x = population("1e-2")[:200]
    mean_ci(x)
    start = time.perf_counter()
    for _ in range(20):
        mean_ci(x)
    assert (time.perf_counter() - start) / 20 < 0.02  # about 1 ms on one core


def test_wording() -> None:
    assert METHOD in describe_ci(3) and METHOD in describe_ci(1)
    assert "given the trained models (not over seeds)" in describe_ci(3)
    assert "fault patterns (trials) of one training seed" in describe_ci(1)
    assert "one seed" in describe_ci([1, 3])
