"""Exact, sparse, nested bit-error sampling.

Model: every exposed bit ``i`` holds an independent ``U_i ~ Uniform[0, 1)`` and is faulty at rate ``p`` iff
``U_i < p``. So each bit fails independently with probability exactly ``p``, and the faulty set at a lower rate is a
subset of the faulty set at a higher rate (nesting).

The U's are never drawn one per bit. ``[0, 1)`` is cut into a fixed ladder of levels, ratio 2:
``[0, 2**-40), [2**-40, 2**-39), ..., [2**-1, 1)``. Level ``j = [a, b)`` holds the bits whose U falls in it. Given
the bits already taken by lower levels, every other bit is in level ``j`` with probability
``q = (b - a) / (1 - a)``, independently; the sampler draws ``K ~ Binomial(n, q)``, then ``K`` distinct positions
uniformly out of all ``n`` bits, tags each with ``U = a + (b - a) V`` (``V`` uniform, drawn for all ``K``), and
drops the positions a lower level already holds. Levels come bottom-up from one random stream per key, always in
the same order, so level ``j``'s draws never depend on the rate asked; a rate in level ``j`` needs levels ``0..j``
only, which costs at most about twice the number of faulty bits.

Implementation notes: the K distinct positions of a level come from K integers, redrawing as many as were
repeated until K distinct values exist (exact, see ``_distinct_uniform``), or from ``Generator.choice`` when K is a
large share of n. ``positions(p)`` needs no explicit rejection: a candidate that a lower level already holds is in
the answer through that lower level. The per-level U is kept as V, and ``U < p`` is decided as ``V < t`` with ``t``
computed exactly (the level bounds are powers of two), so float64 rounding of U never decides a bit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Optional, Union

import numpy as np

__all__ = [
    "LADDER_BOTTOM_EXP",
    "N_LEVELS",
    "NestedBitSampler",
    "level_bounds",
    "level_of",
    "sample_fixed_count",
    "stream_key",
]

LADDER_BOTTOM_EXP = 40
"""The bottom level is ``[0, 2**-LADDER_BOTTOM_EXP)``."""

N_LEVELS = LADDER_BOTTOM_EXP + 1
"""Levels ``0 .. N_LEVELS - 1``; the top one is ``[0.5, 1)``."""

_STREAM_DOMAIN = 0x7166_6931  # "qfi1": keeps these streams apart from other uses of the same seed

Key = Union[int, Sequence[int], np.random.SeedSequence]

_EMPTY_POS = np.empty(0, dtype=np.int64)
_EMPTY_POS.flags.writeable = False
_EMPTY_U = np.empty(0, dtype=np.float64)
_EMPTY_U.flags.writeable = False


def _zigzag(x: int) -> int:
    """Map any int to a distinct non-negative int (SeedSequence takes non-negative entropy only)."""
    x = int(x)
    return 2 * x if x >= 0 else -2 * x - 1


def stream_key(seed: int, trial: int, layer: str, draw: int = 0) -> tuple[int, ...]:
    """Return the random-stream key of one (seed, trial, layer, draw); stable across processes and platforms.

    The layer name is hashed with BLAKE2b (never Python's salted ``hash()``).

    >>> stream_key(0, 1, "fc") == stream_key(0, 1, "fc"), stream_key(0, 1, "fc") == stream_key(0, 2, "fc")
    (True, False)
    """
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a str, got {type(layer).__name__}")
    digest = hashlib.blake2b(layer.encode("utf-8"), digest_size=16).digest()
    h0 = int.from_bytes(digest[:8], "little")
    h1 = int.from_bytes(digest[8:], "little")
    return (_STREAM_DOMAIN, _zigzag(seed), _zigzag(trial), h0, h1, _zigzag(draw))


def _seed_sequence(key: Key) -> np.random.SeedSequence:
    if isinstance(key, np.random.SeedSequence):
        return key
    try:
        parts = int(key) if isinstance(key, (int, np.integer)) else [int(k) for k in key]
    except TypeError:
        raise TypeError(f"key must be an int, a sequence of ints or a SeedSequence, got {key!r}") from None
    if isinstance(key, bool) or min([parts] if isinstance(parts, int) else parts or [0]) < 0:
        raise ValueError(f"key must be made of non-negative ints (see stream_key), got {key!r}")
    return np.random.SeedSequence(parts)


def level_bounds(level: int) -> tuple[float, float]:
    """Return the interval ``[a, b)`` of ladder level ``level`` (0 = bottom).

    >>> level_bounds(0) == (0.0, 2.0**-40), level_bounds(N_LEVELS - 1)
    (True, (0.5, 1.0))
    """
    if not 0 <= level < N_LEVELS:
        raise ValueError(f"level must lie in [0, {N_LEVELS}), got {level}")
    b = math.ldexp(1.0, level - LADDER_BOTTOM_EXP)
    a = 0.0 if level == 0 else b / 2.0
    return a, b


def _check_ber(ber: float) -> float:
    ber = float(ber)
    if not 0.0 <= ber <= 1.0:  # also rejects NaN
        raise ValueError(f"bit error rate must lie in [0, 1], got {ber}")
    return ber


def level_of(ber: float) -> int:
    """Return the ladder level a rate needs: the level ``[a, b)`` with ``a <= ber < b`` (the top one for 1).

    >>> level_of(0.0), level_of(1e-13), level_of(2.0**-40), level_of(0.3), level_of(0.5), level_of(1.0)
    (0, 0, 1, 39, 40, 40)
    """
    ber = _check_ber(ber)
    if ber == 0.0:
        return 0
    _, e = math.frexp(ber)  # ber in [2**(e-1), 2**e)
    return min(max(e + LADDER_BOTTOM_EXP, 0), N_LEVELS - 1)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sort ``x`` in place and return its distinct values (numpy's SIMD sort; ``np.unique`` is far slower here)."""
    x.sort()
    if x.size < 2:
        return x
    keep = np.empty(x.size, dtype=bool)
    keep[0] = True
    np.not_equal(x[1:], x[:-1], out=keep[1:])
    return x if keep.all() else x[keep]


def _in_sorted(sorted_set: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Boolean mask: which entries of ``x`` occur in the sorted array ``sorted_set``."""
    if sorted_set.size == 0 or x.size == 0:
        return np.zeros(x.size, dtype=bool)
    at = np.searchsorted(sorted_set, x)
    return sorted_set[np.minimum(at, sorted_set.size - 1)] == x


def _conditional_q(level: int) -> float:
    """P(a bit lies in level j | it lies in no lower level) = (b - a) / (1 - a)."""
    a, b = level_bounds(level)
    return (b - a) / (1.0 - a)


_LEVEL_Q = np.array([_conditional_q(j) for j in range(N_LEVELS)])
_RAW_DRAWS = 512  # up to this many positions per level come from _uniform_below, more from Generator.integers
_CHOICE_FRACTION = 16  # above n / 16 positions per level, numpy's choice (Floyd / tail shuffle) is the cheaper way


_INT32_MAX = int(np.iinfo(np.int32).max)


def _index_dtype(n: int) -> type:
    """Positions are held as int32 when they fit (numpy sorts int32 about twice as fast), else int64."""
    return np.int32 if n <= _INT32_MAX else np.int64


def _uniform_below(rng: np.random.Generator, n: int, size: int, dtype: type) -> np.ndarray:
    """``size`` iid integers uniform on ``range(n)`` (exact): raw 64-bit draws masked to the next power of two above
    ``n - 1``, keeping those below ``n`` in draw order (each is kept with probability above 1/2, so one batch of
    about ``size / p`` draws nearly always suffices). A few numpy calls, where ``Generator.integers`` costs a fixed
    ~15 us per call, most of a small level's time.

    >>> x = _uniform_below(np.random.default_rng(0), 5, 10_000, np.int32)
    >>> sorted(set(x.tolist())), x.dtype.name
    ([0, 1, 2, 3, 4], 'int32')
    """
    span = 1 << max(n - 1, 1).bit_length()
    mask, raw = np.uint64(span - 1), rng.bit_generator.random_raw
    parts, need = [], size
    while need:
        x = raw(need * span // n + 8 + need // 16) & mask
        x = x[x < n][:need]
        parts.append(x)
        need -= x.size
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)).astype(dtype)


def _distinct_uniform(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Return a uniformly random k-subset of ``range(n)`` as a sorted array of ``_index_dtype(n)`` (exact).

    For small k it draws k integers, then redraws as many as were repeated until k distinct values exist: the
    result is the set of distinct values of an iid uniform sequence stopped when it first holds k distinct values,
    whose law is invariant under every permutation of ``range(n)``, hence uniform over k-subsets.
    """
    dtype = _index_dtype(n)
    if k == n:
        return np.arange(n, dtype=dtype)  # no randomness needed: every position
    if k * _CHOICE_FRACTION > n:
        x = rng.choice(n, size=k, replace=False, shuffle=False).astype(dtype, copy=False)
        x.sort()
        return x
    # few positions: raw draws (a small level's cost is Generator.integers' fixed overhead); many: Generator.integers
    x = _sorted_unique(_uniform_below(rng, n, k, dtype) if k <= _RAW_DRAWS
                       else rng.integers(0, n, size=k, dtype=dtype))
    while x.size < k:
        extra = _sorted_unique(_uniform_below(rng, n, k - x.size, dtype) if k - x.size <= _RAW_DRAWS
                               else rng.integers(0, n, size=k - x.size, dtype=dtype))
        new = ~_in_sorted(x, extra)
        x = np.insert(x, np.searchsorted(x, extra[new]), extra[new])
    return x


def _readonly(x: np.ndarray) -> np.ndarray:
    x.flags.writeable = False
    return x


class NestedBitSampler:
    """Faulty bits of ``n_bits`` exposed bits, one random stream per ``key``, nested across rates.

    Levels already drawn stay cached, so asking several rates of one instance costs no redraw.

    >>> s = NestedBitSampler(10**6, stream_key(seed=0, trial=0, layer="fc"))
    >>> low, high = s.positions(1e-4), s.positions(1e-3)
    >>> bool(np.isin(low, high).all()), low.dtype.name, bool((np.diff(high) > 0).all())
    (True, 'int64', True)
    >>> s.positions(0.0).size, s.positions(1.0).size
    (0, 1000000)
    """

    def __init__(self, n_bits: int, key: Key) -> None:
        n_bits = int(n_bits)
        if n_bits < 0:
            raise ValueError(f"n_bits must be >= 0, got {n_bits}")
        self.n_bits = n_bits
        self.key = key
        self._rng = np.random.Generator(np.random.PCG64(_seed_sequence(key)))
        # Every level's count first, in one vectorised draw (K_j ~ Binomial(n, q_j), independent): empty levels
        # then cost no further draws, and the counts never depend on the rate asked for.
        self._counts = self._rng.binomial(n_bits, _LEVEL_Q) if n_bits else np.zeros(N_LEVELS, dtype=np.int64)
        # Per drawn level j = [a, b): candidate positions (sorted, distinct) and their V, where the bit's U is the
        # real number a + (b - a) * V. The candidates still include bits a lower level holds: positions() never
        # needs that rejection (such a bit is in the answer through its lower level anyway); level() and
        # candidates() apply it lazily.
        self._cand_pos: list[np.ndarray] = []
        self._cand_v: list[np.ndarray] = []
        self._empty = _readonly(np.empty(0, dtype=_index_dtype(n_bits)))
        self._below: list[np.ndarray] = [self._empty]  # _below[j]: sorted union of levels < j, built on demand
        self._kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # level -> (int64 positions, V) after rejection

    @property
    def levels_drawn(self) -> int:
        """How many ladder levels (from the bottom) this instance has drawn so far."""
        return len(self._cand_pos)

    def _draw_level(self) -> None:
        n, rng = self.n_bits, self._rng
        k = int(self._counts[len(self._cand_pos)])
        if k == 0:
            pos, v = self._empty, _EMPTY_U
        else:
            # Candidates stay private: positions() returns new arrays, level() read-only copies.
            pos = _distinct_uniform(rng, n, k)
            # The V's are iid and independent of the positions, so pairing them with the sorted positions keeps
            # the joint law. They are drawn for all k before any rejection, so consumption never depends on p.
            v = rng.random(k)
        self._cand_pos.append(pos)
        self._cand_v.append(v)

    def _ensure(self, level: int) -> None:
        if not 0 <= level < N_LEVELS:
            raise ValueError(f"level must lie in [0, {N_LEVELS}), got {level}")
        drawn = len(self._cand_pos)
        if drawn > level:
            return
        # Empty levels draw nothing from the stream: append them without a call each (most levels are empty).
        nonzero = np.flatnonzero(self._counts[drawn:level + 1]) + drawn
        for j in (*nonzero.tolist(), level + 1):
            empty = j - len(self._cand_pos)
            self._cand_pos.extend([self._empty] * empty)
            self._cand_v.extend([_EMPTY_U] * empty)
            if j <= level:
                self._draw_level()

    def _below_level(self, level: int) -> np.ndarray:
        """Sorted union of the levels below ``level`` (index dtype)."""
        self._ensure(level)
        while len(self._below) <= level:
            j = len(self._below) - 1
            prev, cand = self._below[j], self._cand_pos[j]
            self._below.append(_readonly(_sorted_unique(np.concatenate((prev, cand)))) if cand.size else prev)
        return self._below[level]

    def _level_v(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """The bits of one level after rejection: ``(int64 positions, V)``; ordering by V is ordering by U."""
        if level not in self._kept:
            self._ensure(level)
            pos, v = self._cand_pos[level], self._cand_v[level]
            taken = _in_sorted(self._below_level(level), pos)
            if taken.any():
                pos, v = pos[~taken], _readonly(v[~taken])
            self._kept[level] = (_readonly(pos.astype(np.int64)), _readonly(v))
        return self._kept[level]

    def level(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the bits whose U lies in level ``level``: ``(positions, u)``, sorted by position.

        ``u`` is U rounded to float64 (kept below the level's top).
        """
        pos, v = self._level_v(level)
        a, b = level_bounds(level)
        u = a + (b - a) * v
        np.minimum(u, math.nextafter(b, 0.0), out=u)  # rounding may reach b
        return pos, u

    def n_candidates(self, level_top: int) -> int:
        """Number of bits whose U lies below the top of level ``level_top`` (draws levels as needed)."""
        return int(self._below_level(level_top).size + self._level_v(level_top)[0].size)

    def candidates(self, level_top: int) -> tuple[np.ndarray, np.ndarray]:
        """Return every bit whose U lies below the top of level ``level_top``: ``(positions, u)``, sorted by position.

        >>> s = NestedBitSampler(1000, 7)
        >>> pos, u = s.candidates(N_LEVELS - 1)
        >>> pos.size, bool((u < 1).all()), bool(((u < 0.25) == np.isin(pos, s.positions(0.25))).all())
        (1000, True, True)
        """
        levels = [self.level(j) for j in range(level_top + 1)]
        pos = np.concatenate([p for p, _ in levels])
        u = np.concatenate([u_ for _, u_ in levels])
        order = np.argsort(pos, kind="stable")
        return pos[order], u[order]

    def positions(self, ber: float) -> np.ndarray:
        """Return the sorted distinct faulty bit indices (int64) at bit error rate ``ber`` in ``[0, 1]``."""
        j = level_of(ber)
        ber = float(ber)
        if ber == 0.0 or self.n_bits == 0:
            return _EMPTY_POS.copy()
        if ber == 1.0:
            return np.arange(self.n_bits, dtype=np.int64)  # every U is < 1
        self._ensure(j)
        pos, v = self._cand_pos[j], self._cand_v[j]
        parts = [p for p in self._cand_pos[:j] if p.size]
        if pos.size:
            parts.append(pos[v < _v_threshold(j, ber)])
        if not parts:
            return _EMPTY_POS.copy()
        if len(parts) == 1:
            return parts[0].astype(np.int64)  # one level's candidates: already sorted and distinct
        # Union of every level below j (a bit rejected by a level is in a lower one) and level j's U < ber.
        return _sorted_unique(np.concatenate(parts)).astype(np.int64, copy=False)


def _v_threshold(level: int, ber: float) -> float:
    """t with ``a + (b - a) V < ber  <=>  V < t`` exactly in level ``[a, b)`` (a, b - a are powers of two)."""
    if level == 0:
        return math.ldexp(ber, LADDER_BOTTOM_EXP)  # U = 2**-40 V
    return math.ldexp(ber, LADDER_BOTTOM_EXP + 1 - level) - 1.0  # U = a (1 + V); ber / a in [1, 2): exact


def _same_key(a: Key, b: Key) -> bool:
    try:
        return bool(a == b)
    except ValueError:  # array-like keys compare elementwise
        return bool(np.array_equal(a, b))


def sample_fixed_count(
    n_bits: Mapping[str, int],
    count: int,
    key_of: Callable[[str], Key],
    cache: Optional[MutableMapping[str, NestedBitSampler]] = None,
) -> dict[str, np.ndarray]:
    """Return exactly ``count`` distinct faulty bits spread uniformly over all layers' bits together.

    They are the ``count`` bits with the smallest U across layers, so the result is nested across ``count``
    and each layer's share follows its size. ``cache`` (optional, a dict) keeps the per-layer samplers
    between calls; an entry whose size or key no longer matches is replaced.

    >>> sizes = {"conv": 800, "fc": 200}
    >>> few = sample_fixed_count(sizes, 5, lambda name: stream_key(0, 0, name))
    >>> more = sample_fixed_count(sizes, 50, lambda name: stream_key(0, 0, name))
    >>> sum(v.size for v in few.values()), all(np.isin(few[k], more[k]).all() for k in sizes)
    (5, True)
    """
    count = int(count)
    names = list(n_bits)
    total = sum(int(n_bits[name]) for name in names)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count > total:
        raise ValueError(f"count {count} exceeds the {total} exposed bits")
    samplers: list[NestedBitSampler] = []
    for name in names:
        key = key_of(name)
        sampler = cache.get(name) if cache is not None else None
        if sampler is None or sampler.n_bits != int(n_bits[name]) or not _same_key(sampler.key, key):
            sampler = NestedBitSampler(int(n_bits[name]), key)
            if cache is not None:
                cache[name] = sampler
        samplers.append(sampler)
    if count == 0:
        return {name: _EMPTY_POS.copy() for name in names}
    # Climb until the bits with U below the top of level j number at least count.
    below_count = 0
    for j in range(N_LEVELS):
        reached = sum(s.n_candidates(j) for s in samplers)
        if reached >= count:
            break
        below_count = reached
    # Every bit of the levels below j is in; level j contributes its (count - below_count) smallest U's.
    need = count - below_count
    lv = [s._level_v(j) for s in samplers]
    v = np.concatenate([v_ for _, v_ in lv])  # one level: V orders the U's
    layer = np.concatenate([np.full(p.size, i, dtype=np.int64) for i, (p, _) in enumerate(lv)])
    pos = np.concatenate([p for p, _ in lv])
    order = np.lexsort((pos, layer, v))[:need]  # ties in V (chance ~1e-16) break by layer order, then position
    chosen_layer, chosen_pos = layer[order], pos[order]
    out: dict[str, np.ndarray] = {}
    for i, (name, s) in enumerate(zip(names, samplers)):
        below = s._below_level(j).astype(np.int64)
        out[name] = _sorted_unique(np.concatenate((below, chosen_pos[chosen_layer == i])))
    return out

