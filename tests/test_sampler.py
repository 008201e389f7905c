"""The exact, sparse, nested bit-error sampler.

Model under test: every exposed bit holds an independent U ~ Uniform[0, 1) and is faulty at rate p iff U < p.
So at one key the number of faulty bits is Binomial(n, p), bits are independent and uniform over positions, and
a lower rate's set is a subset of a higher rate's.

Statistical checks: every acceptance region comes from the null distribution (exact binomial / hypergeometric
quantiles, chi-square critical values) at a false-alarm probability ALPHA = 1e-6 per check, so with about 50
checks the chance that a correct sampler fails any of them is below 1e-4. The keys are fixed, so a run is
deterministic. The last tests feed known-bad samplers to the same checks to show that they can fail.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from qfi_cli.faults import sampler as sampler_module
from qfi_cli.faults.sampler import (
    N_LEVELS,
    NestedBitSampler,
    level_bounds,
    level_of,
    sample_fixed_count,
    stream_key,
)
from tests.reference import dense_reference, sample_positions

ALPHA = 1e-6


# ---------------------------------------------------------------- statistical helpers


def binom_bounds(n: int, p: float, alpha: float = ALPHA) -> tuple[int, int]:
    """[lo, hi] with P(X < lo) + P(X > hi) <= alpha for X ~ Binomial(n, p)."""
    return int(stats.binom.ppf(alpha / 2, n, p)), int(stats.binom.isf(alpha / 2, n, p))


def chi2_statistic(observed, expected) -> tuple[float, int]:
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert expected.min() >= 5.0, "too few expected counts per cell for the chi-square approximation"
    assert math.isclose(observed.sum(), expected.sum(), rel_tol=1e-9)
    return float(((observed - expected) ** 2 / expected).sum()), observed.size - 1


def assert_chi2(observed, expected, alpha: float = ALPHA) -> None:
    stat, df = chi2_statistic(observed, expected)
    critical = stats.chi2.isf(alpha, df)
    assert stat <= critical, f"chi-square {stat:.1f} > critical {critical:.1f} (df={df}, alpha={alpha})"


def assert_discrete_gof(samples, dist, n_bins: int = 20, alpha: float = ALPHA) -> None:
    """Chi-square goodness of fit of integer samples to a scipy discrete distribution, in quantile bins."""
    samples = np.asarray(samples)
    inner = np.unique(dist.ppf(np.linspace(0, 1, n_bins + 1)[1:-1]))  # bin i = (edge[i-1], edge[i]]
    edges = np.concatenate(([-np.inf], inner, [np.inf]))
    cdf = np.concatenate(([0.0], dist.cdf(inner), [1.0]))
    probs = np.diff(cdf)
    observed = np.array([np.sum((samples > lo) & (samples <= hi)) for lo, hi in zip(edges[:-1], edges[1:])])
    assert_chi2(observed, probs * samples.size, alpha)


def assert_uniform_bins(values, low: int, high: int, n_bins: int, alpha: float = ALPHA) -> None:
    """Chi-square test that integer values are uniform on [low, high), in n_bins bins of (almost) equal width."""
    edges = np.linspace(low, high, n_bins + 1).round().astype(np.int64)
    observed = np.histogram(values, bins=edges)[0]
    assert observed.sum() == len(values)
    assert_chi2(observed, np.diff(edges) / (high - low) * len(values), alpha)


def key(trial: int, layer: str = "layer", seed: int = 0) -> tuple[int, ...]:
    return stream_key(seed, trial, layer)


# ---------------------------------------------------------------- counts at one key


@pytest.mark.parametrize(
    ("n_bits", "ber"),
    [
        (10**6, 0.3),
        (10**6, 0.05),
        (10**6, 2.0**-10),  # exactly a level boundary
        (10**6, math.nextafter(2.0**-10, 0)),  # just below it: the level under it, almost whole
        (10**6, 1e-3),
        (10**6, 0.5),
        (10**6, 0.999),
        (10**7, 1e-4),
        (10**8, 1e-6),  # expected 100
        (10**11, 1e-9),  # expected 100; float32 rand() < p could not resolve this
        (10**14, 1e-12),  # expected 100, inside the first levels
        (10**15, 2.0**-50),  # expected ~0.9: below 2**-40, the bottom level
    ],
)
def test_count_within_exact_binomial_bounds(n_bits, ber):
    pos = sample_positions(n_bits, ber, key(17))
    lo, hi = binom_bounds(n_bits, ber)
    assert lo <= pos.size <= hi, (pos.size, lo, hi)
    assert pos.dtype == np.int64
    assert pos.size == 0 or (pos[0] >= 0 and pos[-1] < n_bits)
    assert np.all(np.diff(pos) > 0)  # sorted and distinct


def test_count_at_1e6_summed_over_many_keys():
    n_bits, ber, keys = 10**5, 1e-6, 1000
    total = sum(sample_positions(n_bits, ber, key(t)).size for t in range(keys))
    lo, hi = binom_bounds(n_bits * keys, ber)  # independent keys: the sum is Binomial(keys * n, p)
    assert lo <= total <= hi


@pytest.mark.parametrize(("n_bits", "ber"), [(10**5, 1e-3), (1000, 0.2), (10**7, 1e-5)])
def test_count_distribution_across_keys_is_binomial(n_bits, ber):
    m = 1200
    counts = np.array([NestedBitSampler(n_bits, key(t, "dist")).positions(ber).size for t in range(m)])
    # 1. exact: the total over independent keys is Binomial(m n, p)
    lo, hi = binom_bounds(m * n_bits, ber)
    assert lo <= counts.sum() <= hi
    # 2. the variance: z-test on the sample variance, Var(s^2) = mu4/m - sigma^4 (m-3)/(m(m-1)) (CLT over m keys)
    pq = ber * (1 - ber)
    sigma2 = n_bits * pq
    mu4 = n_bits * pq * (1 + 3 * pq * (n_bits - 2))
    sd_s2 = math.sqrt(mu4 / m - sigma2**2 * (m - 3) / (m * (m - 1)))
    z = (counts.var(ddof=1) - sigma2) / sd_s2
    assert abs(z) <= stats.norm.isf(ALPHA / 2), z
    # 3. the whole shape: chi-square over quantile bins of Binomial(n, p)
    assert_discrete_gof(counts, stats.binom(n_bits, ber))


# ---------------------------------------------------------------- where the faults land


def test_uniform_over_bit_index_and_over_the_tensor():
    k, n_codes, ber = 8, 10**6, 0.03
    pos = sample_positions(k * n_codes, ber, key(3, "uniform"))
    observed = np.bincount(pos % k, minlength=k)
    assert_chi2(observed, np.full(k, pos.size / k))  # position mod k: every bit of the code alike
    assert_uniform_bins(pos, 0, k * n_codes, 64)  # and every part of the tensor alike


def test_uniform_over_bit_index_at_a_low_rate():
    k, n_bits, ber = 8, 8 * 10**7, 1e-4  # ~8000 faults out of the lowest ~27 levels
    pos = sample_positions(n_bits, ber, key(4, "uniform"))
    assert_chi2(np.bincount(pos % k, minlength=k), np.full(k, pos.size / k))
    assert_uniform_bins(pos, 0, n_bits, 32)


def test_faults_per_code_are_binomial():
    # bits of one code fail independently: the number of faulty bits per 8-bit code is Binomial(8, p)
    k, n_codes, ber = 8, 10**6, 0.05
    pos = sample_positions(k * n_codes, ber, key(5, "percode"))
    per_code = np.bincount(pos // k, minlength=n_codes)
    hist = np.bincount(per_code, minlength=k + 1)[: k + 1]
    probs = stats.binom.pmf(np.arange(k + 1), k, ber)
    cells = probs * n_codes >= 5  # pool the rare high counts into one cell
    observed = np.append(hist[cells], hist[~cells].sum())
    expected = np.append(probs[cells] * n_codes, probs[~cells].sum() * n_codes)
    if expected[-1] < 5:  # fold the pooled cell into the last kept one
        observed = np.append(observed[:-2], observed[-2:].sum())
        expected = np.append(expected[:-2], expected[-2:].sum())
    assert_chi2(observed, expected)


def _pattern_counts(n_bits: int, ber: float, keys: int, tag: str) -> np.ndarray:
    codes = np.zeros(keys, dtype=np.int64)
    for t in range(keys):
        for p in NestedBitSampler(n_bits, key(t, tag)).positions(ber):
            codes[t] |= 1 << int(p)
    return np.bincount(codes, minlength=1 << n_bits)


@pytest.mark.parametrize(
    ("ber", "fraction"),
    [(0.3, None), (0.3, 0), (0.7, None)],  # fraction 0: every level through the draw-and-redraw path
)
def test_joint_law_of_four_bits_is_exact(monkeypatch, ber, fraction):
    # all 16 fault patterns of 4 bits against the product of Bernoulli(p): marginals and independence at once
    if fraction is not None:
        monkeypatch.setattr(sampler_module, "_CHOICE_FRACTION", fraction)
    n, keys = 4, 2000
    observed = _pattern_counts(n, ber, keys, f"joint{fraction}")
    weights = np.array([bin(c).count("1") for c in range(1 << n)])
    probs = ber**weights * (1 - ber) ** (n - weights)
    assert_chi2(observed, probs * keys)


@pytest.mark.parametrize("fraction", [0, 10**9])  # draw-and-redraw, numpy's choice
def test_distinct_uniform_subsets(monkeypatch, fraction):
    monkeypatch.setattr(sampler_module, "_CHOICE_FRACTION", fraction)
    n, k, draws = 7, 3, 7000  # 35 subsets, 200 expected each
    rng = np.random.default_rng(11)
    index = {}
    observed = np.zeros(math.comb(n, k), dtype=np.int64)
    for _ in range(draws):
        x = sampler_module._distinct_uniform(rng, n, k)
        assert x.size == k and np.all(np.diff(x) > 0)
        observed[index.setdefault(tuple(x.tolist()), len(index))] += 1
    assert len(index) == math.comb(n, k)
    assert_chi2(observed, np.full(observed.size, draws / observed.size))


def test_u_of_all_bits_is_uniform_and_defines_positions():
    n = 10**5
    s = NestedBitSampler(n, key(6, "u"))
    pos, u = s.candidates(N_LEVELS - 1)
    assert np.array_equal(pos, np.arange(n))  # the ladder covers every bit exactly once
    assert np.all((u >= 0) & (u < 1))
    assert stats.kstest(u, "uniform").pvalue > ALPHA
    for ber in [0.0, 1e-4, 2.0**-10, 0.0123, 0.25, 0.5, 0.77, 1.0]:
        assert np.array_equal(s.positions(ber), pos[u < ber]), ber
    # the U's of one level lie in that level and are uniform there
    a, b = level_bounds(36)
    lv_pos, lv_u = s.level(36)
    assert np.all((lv_u >= a) & (lv_u < b)) and lv_pos.size > 1000
    v = (lv_u - a) / (b - a)
    assert stats.kstest(v, "uniform").pvalue > ALPHA
    # float64 resolution inside the level: not all on a float32-like grid of 2**-24 of its width
    assert np.any(v * 2.0**24 != np.floor(v * 2.0**24))


# ---------------------------------------------------------------- nesting, edges, determinism

RATES = [0.0, 1e-12, 1e-9, 1e-6, 1e-4, 2.0**-10, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.7, 0.99, 1.0]


def test_nested_across_rates_for_many_keys():
    n = 20000
    for t in range(40):
        s = NestedBitSampler(n, key(t, "nest"))
        previous = np.empty(0, dtype=np.int64)
        for ber in RATES:
            current = s.positions(ber)
            assert np.all(np.isin(previous, current, assume_unique=True)), (t, ber)
            assert np.array_equal(current, sample_positions(n, ber, key(t, "nest")))  # fresh instance: the same
            previous = current


def test_nested_when_asked_from_high_to_low():
    n = 10**5
    s = NestedBitSampler(n, key(1, "order"))
    high_first = {ber: s.positions(ber) for ber in reversed(RATES)}
    for low, high in zip(RATES, RATES[1:]):
        assert np.all(np.isin(high_first[low], high_first[high]))
        assert np.array_equal(high_first[low], sample_positions(n, low, key(1, "order")))


def test_rate_zero_is_empty_and_rate_one_is_everything():
    for n in [0, 1, 5, 1000]:
        assert sample_positions(n, 0.0, key(0)).size == 0
        assert np.array_equal(sample_positions(n, 1.0, key(0)), np.arange(n))
        s = NestedBitSampler(n, key(0))
        pos, u = s.candidates(N_LEVELS - 1)
        assert np.array_equal(pos, np.arange(n))
    assert sample_positions(10**15, 0.0, key(0)).size == 0


def test_bad_rates_are_rejected():
    for ber in [-1e-9, 1.0000001, float("nan"), 2.0]:
        with pytest.raises(ValueError):
            sample_positions(100, ber, key(0))
    with pytest.raises(ValueError):
        NestedBitSampler(-1, key(0))


def test_level_of_matches_level_bounds():
    for ber in [1e-15, 2.0**-40, 1e-9, 1e-3, 2.0**-10, 0.3, 0.5, 0.9999]:
        a, b = level_bounds(level_of(ber))
        assert a <= ber < b
    assert level_of(1.0) == N_LEVELS - 1 and level_of(0.0) == 0


def test_determinism_and_distinct_streams():
    n, ber = 10**6, 1e-3
    base = sample_positions(n, ber, stream_key(7, 3, "layer1.0.conv1", 0))
    assert base.size > 500
    assert np.array_equal(base, sample_positions(n, ber, stream_key(7, 3, "layer1.0.conv1", 0)))
    for other in [
        stream_key(7, 4, "layer1.0.conv1", 0),  # trial
        stream_key(8, 3, "layer1.0.conv1", 0),  # seed
        stream_key(7, 3, "layer1.0.conv2", 0),  # layer
        stream_key(7, 3, "layer1.0.conv1", 1),  # draw
    ]:
        assert other != stream_key(7, 3, "layer1.0.conv1", 0)
        assert not np.array_equal(base, sample_positions(n, ber, other))
    # negative seeds and trials map to keys of their own
    assert len({stream_key(s, 0, "x") for s in [-2, -1, 0, 1, 2]}) == 5


_CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("qfi_sampler_copy", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
k = mod.stream_key(3, 1, "features.0.weight", 2)
print(repr(k))
print(mod.NestedBitSampler(10**6, k).positions(1e-4).tolist())
"""


def test_stream_key_is_stable_across_processes():
    path = str(Path(sampler_module.__file__).resolve())
    expected_key = stream_key(3, 1, "features.0.weight", 2)
    expected_pos = sample_positions(10**6, 1e-4, expected_key).tolist()
    for hash_seed in ["0", "12345"]:
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", _CHILD, path], env=env, capture_output=True, text=True, check=True)
        key_line, pos_line = out.stdout.strip().splitlines()
        assert key_line == repr(expected_key)
        assert pos_line == repr(expected_pos)


# ---------------------------------------------------------------- fixed count


SIZES = {"a": 1000, "b": 3000, "c": 6000}


def _key_of(trial: int):
    return lambda name: stream_key(0, trial, name)


def test_fixed_count_exact_distinct_and_nested():
    for trial in range(20):
        previous = {name: np.empty(0, dtype=np.int64) for name in SIZES}
        for count in [0, 1, 2, 7, 50, 333, 2000, 9999, 10000]:
            got = sample_fixed_count(SIZES, count, _key_of(trial))
            assert set(got) == set(SIZES)
            assert sum(v.size for v in got.values()) == count
            for name, v in got.items():
                assert v.dtype == np.int64 and np.all(np.diff(v) > 0)
                assert v.size == 0 or (v[0] >= 0 and v[-1] < SIZES[name])
                assert np.all(np.isin(previous[name], v)), (trial, count, name)
            previous = got
    everything = sample_fixed_count(SIZES, sum(SIZES.values()), _key_of(0))
    assert all(np.array_equal(everything[n], np.arange(s)) for n, s in SIZES.items())
    with pytest.raises(ValueError):
        sample_fixed_count(SIZES, sum(SIZES.values()) + 1, _key_of(0))
    with pytest.raises(ValueError):
        sample_fixed_count(SIZES, -1, _key_of(0))


def test_fixed_count_is_the_rate_set_with_that_many_bits():
    # the count smallest U's across layers: at the count that rate p reaches, the same bits as rate p
    sizes = {"conv": 2 * 10**5, "fc": 5 * 10**4}
    for ber in [1e-5, 3e-4, 2.0**-10, 0.02]:
        by_rate = {name: sample_positions(n, ber, stream_key(1, 2, name)) for name, n in sizes.items()}
        count = sum(v.size for v in by_rate.values())
        cache: dict = {}
        by_count = sample_fixed_count(sizes, count, lambda name: stream_key(1, 2, name), cache=cache)
        assert all(np.array_equal(by_count[n], by_rate[n]) for n in sizes), ber
        again = sample_fixed_count(sizes, count, lambda name: stream_key(1, 2, name), cache=cache)
        assert all(np.array_equal(by_count[n], again[n]) for n in sizes)
        # the same cache under another trial's keys must not serve the old samplers
        other = sample_fixed_count(sizes, count, lambda name: stream_key(1, 3, name), cache=cache)
        fresh = sample_fixed_count(sizes, count, lambda name: stream_key(1, 3, name))
        assert all(np.array_equal(other[n], fresh[n]) for n in sizes)
        assert not all(np.array_equal(other[n], by_count[n]) for n in sizes)


def test_fixed_count_spreads_over_layers_by_size():
    count, trials = 200, 300
    total = sum(SIZES.values())
    in_a, positions_c = [], []
    for trial in range(trials):
        got = sample_fixed_count(SIZES, count, _key_of(1000 + trial))
        in_a.append(got["a"].size)
        positions_c.append(got["c"])
    # the number landing in layer a is hypergeometric (count draws out of all bits, without replacement)
    assert_discrete_gof(np.array(in_a), stats.hypergeom(total, SIZES["a"], count), n_bins=10)
    # inside a layer, uniform (draws without replacement are less spread than multinomial: conservative)
    assert_uniform_bins(np.concatenate(positions_c), 0, SIZES["c"], 20)


# ---------------------------------------------------------------- the dense reference


def test_dense_reference_is_binomial_and_chunk_independent():
    n, ber = 10**6, 1e-2
    pos = dense_reference(n, ber, np.random.default_rng(5))
    lo, hi = binom_bounds(n, ber)
    assert lo <= pos.size <= hi and np.all(np.diff(pos) > 0)
    assert np.array_equal(pos, dense_reference(n, ber, np.random.default_rng(5), chunk=12345))


def test_sparse_and_dense_counts_agree_in_law():
    # two samples of counts, one from each sampler: both Binomial(n, p) -> same law (Mann-Whitney would be weak;
    # compare each to the exact binomial instead)
    n, ber, m = 20000, 0.01, 300
    rng = np.random.default_rng(9)
    dense = np.array([dense_reference(n, ber, rng).size for _ in range(m)])
    sparse = np.array([sample_positions(n, ber, key(t, "vs")).size for t in range(m)])
    for counts in (dense, sparse):
        assert_discrete_gof(counts, stats.binom(n, ber), n_bins=10)


# ---------------------------------------------------------------- the checks can fail


def test_checks_reject_a_sampler_without_binomial_spread():
    n, ber, m = 10**5, 1e-3, 2000
    rng = np.random.default_rng(0)
    fixed = np.full(m, round(n * ber)) + rng.integers(-3, 4, m)  # right mean, far too little spread
    with pytest.raises(AssertionError):
        assert_discrete_gof(fixed, stats.binom(n, ber))


def test_checks_reject_a_sampler_that_drops_one_bit_index():
    rng = np.random.default_rng(0)
    pos = rng.choice(8 * 10**6, 200000, replace=False)
    pos = pos[pos % 8 != 7]  # never the sign bit
    with pytest.raises(AssertionError):
        assert_chi2(np.bincount(pos % 8, minlength=8), np.full(8, pos.size / 8))


def test_checks_reject_float32_resolution_at_a_tiny_rate():
    # float32 uniforms are multiples of 2**-24, so "U < 1e-9" fires at rate 2**-24 = 6e-8, not 1e-9
    n, ber = 10**9, 1e-9
    float32_count = stats.binom(n, 2.0**-24).median()
    lo, hi = binom_bounds(n, ber)
    assert not lo <= float32_count <= hi
