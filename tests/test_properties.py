"""Property-based tests (hypothesis): the sampler and the code/bit pipeline at every bit width 2..8."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfi_cli.faults.bits import n_exposed_bits, positions_to_masks, to_unsigned
from qfi_cli.faults.sampler import NestedBitSampler, stream_key
from qfi_cli.quant import code_range
from tests.reference import apply_mask, sample_positions

rates = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 5000), p=rates, q=rates, seed=st.integers(0, 2**31), trial=st.integers(0, 1000))
def test_sampler_positions_are_sorted_distinct_in_range_and_nested(n, p, q, seed, trial):
    lo, hi = sorted((p, q))
    key = stream_key(seed, trial, "layer")
    small, large = sample_positions(n, lo, key), sample_positions(n, hi, key)
    for pos in (small, large):
        assert pos.dtype == np.int64
        assert np.all(np.diff(pos) > 0) and (len(pos) == 0 or (pos[0] >= 0 and pos[-1] < n))
    assert np.isin(small, large).all()
    if hi == 1.0:
        assert len(large) == n
    if lo == 0.0:
        assert len(small) == 0
    again = NestedBitSampler(n, key)
    assert np.array_equal(again.positions(hi), large) and np.array_equal(again.positions(lo), small)


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(2, 8), signed=st.booleans(), n_codes=st.integers(1, 300), p=rates,
       seed=st.integers(0, 2**31), mode=st.sampled_from(["flip", "stuck0", "stuck1"]),
       msb_only=st.booleans(), data=st.data())
def test_faults_change_exactly_the_sampled_bits(bits, signed, n_codes, p, seed, mode, msb_only, data):
    lo, hi = code_range(bits, signed)
    codes = torch.tensor(data.draw(st.lists(st.integers(lo, hi), min_size=n_codes, max_size=n_codes)))
    bit_positions = [bits - 1] if msb_only else None
    pos = sample_positions(n_exposed_bits(n_codes, bits, bit_positions), p, stream_key(seed, 0, "w"))
    idx, mask = positions_to_masks(torch.from_numpy(pos), bits, bit_positions)
    idx_np, mask_np = positions_to_masks(pos, bits, bit_positions)  # the numpy path the injector takes
    assert torch.equal(idx, idx_np) and torch.equal(mask, mask_np)
    new = apply_mask(codes[idx], mask, bits, signed, mode)
    assert ((new >= lo) & (new <= hi)).all(), "faulty codes stay k-bit codes"
    changed = to_unsigned(codes[idx], bits) ^ to_unsigned(new, bits)
    assert ((changed & ~mask) == 0).all(), "only sampled bits may change"
    if mode == "flip":
        assert torch.equal(changed, mask)
    else:
        target = 0 if mode == "stuck0" else 1
        for b in range(bits):
            hit = ((mask >> b) & 1).bool()
            assert (((to_unsigned(new, bits) >> b) & 1)[hit] == target).all()
    if msb_only:
        assert (mask == 1 << (bits - 1)).all()
