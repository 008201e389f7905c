"""Bit semantics of k-bit codes: two's complement, masks, fault modes.

The reference used below (`_ref_*`) is written independently of the code under test: it goes through the bit
string, and reads a signed pattern as -b[k-1] 2**(k-1) + sum_{i<k-1} b[i] 2**i.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qfi_cli.faults.bits import (
    FAULT_MODES,
    MODE_OF_CODE,
    from_unsigned,
    mask_patterns,
    n_exposed_bits,
    positions_to_masks,
    to_unsigned,
)
from tests.reference import apply_mask

WIDTHS = range(2, 9)


def test_fault_mode_file_codes_are_pinned():
    """The codes are the ``mode`` column of saved fault files (faults/replay.py): a reorder or renumbering of the
    mode table would silently change what every existing .npz file means."""
    assert {name: m.code for name, m in FAULT_MODES.items()} == {"flip": 0, "stuck0": 1, "stuck1": 2}
    assert MODE_OF_CODE == {0: "flip", 1: "stuck0", 2: "stuck1"}


def test_fault_file_stores_the_pinned_codes(tmp_path):
    from torch import nn

    from qfi_cli.faults.replay import FaultRecorder, read_fault_file
    from qfi_cli.quant import quantize_model

    model = quantize_model(nn.Sequential(nn.Linear(4, 2)), first_last_bits=None).eval()
    name = next(n for n, m in model.named_modules() if hasattr(m, "wbits"))
    rec = FaultRecorder(model, levels=[(0.1, None)], trials=1)
    rec.begin(0, 0)
    masks = [(mode, torch.tensor([1 << i])) for i, mode in enumerate(("flip", "stuck0", "stuck1"))]
    rec.add(name, torch.tensor([0]), masks, bits=8)
    data = np.load(rec.save(tmp_path / "f.npz"), allow_pickle=False)
    assert sorted(zip(data["bit"].tolist(), data["mode"].tolist())) == [(0, 0), (1, 1), (2, 2)]
    ff = read_fault_file(tmp_path / "f.npz").bind([(name, dict(model.named_modules())[name])])

    class _Inj:
        ber, count = 0.1, None

    got = {mode: (idx.tolist(), mask.tolist()) for mode, idx, mask in ff.faults(name, _Inj(), 0, "", 0)}
    assert got == {"flip": ([0], [1]), "stuck0": ([0], [2]), "stuck1": ([0], [4])}


def _ref_pattern(code: int, bits: int) -> str:
    """Bit string, most significant first, of a code (negative codes in two's complement)."""
    return format(code + (1 << bits) if code < 0 else code, f"0{bits}b")


def _ref_value(pattern: str, signed: bool) -> int:
    bits = len(pattern)
    value = sum(int(c) << (bits - 1 - i) for i, c in enumerate(pattern))
    if signed and pattern[0] == "1":
        value -= 1 << bits
    return value


def _ref_apply(code: int, mask: int, bits: int, signed: bool, mode: str) -> int:
    chars = list(_ref_pattern(code, bits))
    for bit in range(bits):
        if mask >> bit & 1:
            i = bits - 1 - bit
            chars[i] = {"flip": "1" if chars[i] == "0" else "0", "stuck0": "0", "stuck1": "1"}[mode]
    return _ref_value("".join(chars), signed)


def _code_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


# ---------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize(
    ("code", "mask", "bits", "signed", "mode", "expected"),
    [
        (3, 1 << 7, 8, True, "flip", -125),
        (-1, 1 << 7, 8, True, "flip", 127),
        (3, 1 << 3, 4, True, "flip", -5),
        (3, 1 << 7, 8, False, "flip", 131),
        (-128, 1 << 7, 8, True, "flip", 0),
        (0, 1, 8, True, "flip", 1),
        (0, 0xFF, 8, True, "flip", -1),
        (-8, 1 << 3, 4, True, "flip", 0),
        (-1, 1 << 7, 8, True, "stuck0", 127),
        (-1, 1 << 7, 8, True, "stuck1", -1),  # already set: unchanged
        (3, 1 << 7, 8, True, "stuck1", -125),
        (3, 1 << 7, 8, True, "stuck0", 3),  # already clear: unchanged
        (5, 0b0110, 4, False, "stuck0", 1),
        (5, 0b0110, 4, False, "stuck1", 7),
    ],
)
def test_hand_computed(code, mask, bits, signed, mode, expected):
    out = apply_mask(torch.tensor([code]), torch.tensor([mask]), bits, signed, mode)
    assert out.dtype == torch.int64
    assert out.tolist() == [expected]
    assert _ref_apply(code, mask, bits, signed, mode) == expected  # the reference agrees with the hand values


def test_to_unsigned_known_values():
    assert to_unsigned(torch.tensor([0, 1, 127, -128, -1, -125]), 8).tolist() == [0, 1, 127, 128, 255, 131]
    assert to_unsigned(torch.tensor([-8, -5, 7]), 4).tolist() == [8, 11, 7]
    assert from_unsigned(torch.tensor([8, 11, 7, 15]), 4, signed=True).tolist() == [-8, -5, 7, -1]
    assert from_unsigned(torch.tensor([8, 11, 7, 15]), 4, signed=False).tolist() == [8, 11, 7, 15]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", WIDTHS)
def test_round_trip_exhaustive(bits, signed):
    lo, hi = _code_range(bits, signed)
    codes = torch.arange(lo, hi + 1)
    u = to_unsigned(codes, bits)
    assert u.dtype == torch.int64
    assert sorted(u.tolist()) == list(range(1 << bits))  # a bijection onto [0, 2**bits)
    assert torch.equal(from_unsigned(u, bits, signed), codes)
    assert u.tolist() == [int(_ref_pattern(c, bits), 2) for c in codes.tolist()]


@st.composite
def _codes(draw):
    bits = draw(st.integers(2, 8))
    signed = draw(st.booleans())
    lo, hi = _code_range(bits, signed)
    codes = draw(st.lists(st.integers(lo, hi), min_size=1, max_size=32))
    masks = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=len(codes), max_size=len(codes)))
    return bits, signed, codes, masks


@settings(max_examples=200, deadline=None)
@given(_codes())
def test_round_trip_property(case):
    bits, signed, codes, _ = case
    t = torch.tensor(codes)
    u = to_unsigned(t, bits)
    assert bool(((u >= 0) & (u < (1 << bits))).all())
    assert from_unsigned(u, bits, signed).tolist() == codes
    # to_unsigned(from_unsigned(u)) == u as well
    assert torch.equal(to_unsigned(from_unsigned(u, bits, signed), bits), u)


@settings(max_examples=200, deadline=None)
@given(_codes(), st.sampled_from(["flip", "stuck0", "stuck1"]))
def test_apply_mask_matches_reference(case, mode):
    bits, signed, codes, masks = case
    out = apply_mask(torch.tensor(codes), torch.tensor(masks), bits, signed, mode)
    assert out.tolist() == [_ref_apply(c, m, bits, signed, mode) for c, m in zip(codes, masks)]
    lo, hi = _code_range(bits, signed)
    assert bool(((out >= lo) & (out <= hi)).all())
    if mode == "flip":  # an involution
        assert apply_mask(out, torch.tensor(masks), bits, signed, mode).tolist() == codes
    else:  # idempotent
        assert torch.equal(apply_mask(out, torch.tensor(masks), bits, signed, mode), out)


def test_apply_mask_broadcasts_and_keeps_shape():
    codes = torch.tensor([[1, 2], [3, -4]])
    out = apply_mask(codes, torch.tensor(1), 8, True)
    assert out.shape == codes.shape and out.tolist() == [[0, 3], [2, -3]]


def test_pattern_primitives_reject_bad_input():
    with pytest.raises(ValueError, match="mode"):
        mask_patterns(torch.tensor([1]), torch.tensor([1]), mode="xor")
    with pytest.raises(TypeError):
        to_unsigned(torch.tensor([1.0]), 8)
    with pytest.raises(ValueError):
        to_unsigned(torch.tensor([1]), 0)


# ---------------------------------------------------------------- positions -> masks


def _ref_masks(positions, bits, bit_positions=None):
    exposed = list(range(bits)) if bit_positions is None else list(bit_positions)
    masks: dict[int, int] = {}
    for p in positions:
        code, slot = divmod(int(p), len(exposed))
        masks[code] = masks.get(code, 0) | (1 << exposed[slot])
    codes = sorted(masks)
    return codes, [masks[c] for c in codes]


def test_positions_to_masks_hand_computed():
    idx, mask = positions_to_masks(torch.tensor([0, 3, 7, 9, 23]), 8)
    assert idx.tolist() == [0, 1, 2] and mask.tolist() == [0b10001001, 0b10, 0b10000000]
    assert idx.dtype == torch.int64 and mask.dtype == torch.int64
    idx, mask = positions_to_masks(np.array([0, 5, 6]), 4, bit_positions=[3])  # MSB only
    assert idx.tolist() == [0, 5, 6] and mask.tolist() == [8, 8, 8]
    idx, mask = positions_to_masks(torch.tensor([0, 1, 3, 4]), 8, bit_positions=[7, 0])
    assert idx.tolist() == [0, 1, 2] and mask.tolist() == [0b10000000 | 1, 1, 0b10000000]
    idx, mask = positions_to_masks(torch.tensor([], dtype=torch.int64), 8)
    assert idx.numel() == 0 and mask.numel() == 0


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 8).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.one_of(st.none(), st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True)),
        )
    ),
    st.sets(st.integers(0, 2000), max_size=60),
)
def test_positions_to_masks_matches_reference(kb, positions):
    bits, bit_positions = kb
    positions = sorted(positions)
    idx, mask = positions_to_masks(torch.tensor(positions, dtype=torch.int64), bits, bit_positions)
    codes, masks = _ref_masks(positions, bits, bit_positions)
    assert idx.tolist() == codes and mask.tolist() == masks
    # every faulty bit is exactly one set bit of one mask: nothing lost, nothing doubled
    assert sum(bin(m).count("1") for m in mask.tolist()) == len(positions)


def test_positions_to_masks_cost_does_not_depend_on_the_number_of_codes():
    # code 10**15 of an 8-bit tensor: anything that allocates per code would run out of memory here
    p = 8 * 10**15 + 5
    idx, mask = positions_to_masks(torch.tensor([p, p + 2]), 8)
    assert idx.tolist() == [10**15] and mask.tolist() == [(1 << 5) | (1 << 7)]


def test_positions_to_masks_unsorted_or_repeated_input_is_a_set():
    idx, mask = positions_to_masks(torch.tensor([9, 0, 9, 3]), 8)
    assert idx.tolist() == [0, 1] and mask.tolist() == [0b1001, 0b10]


def test_positions_to_masks_rejects_bad_bit_positions():
    with pytest.raises(ValueError):
        positions_to_masks(torch.tensor([0]), 8, bit_positions=[8])
    with pytest.raises(ValueError):
        positions_to_masks(torch.tensor([0]), 8, bit_positions=[1, 1])
    with pytest.raises(ValueError):
        positions_to_masks(torch.tensor([-1]), 8)


def test_n_exposed_bits():
    assert n_exposed_bits(10, 8) == 80
    assert n_exposed_bits(10, 4, bit_positions=[3]) == 10
    assert n_exposed_bits(0, 8) == 0
    with pytest.raises(ValueError):
        n_exposed_bits(10, 8, bit_positions=[9])


# ---------------------------------------------------------------- end to end on a tensor


@settings(max_examples=100, deadline=None)
@given(
    st.integers(2, 8),
    st.booleans(),
    st.sampled_from(["flip", "stuck0", "stuck1"]),
    st.integers(0, 2**31 - 1),
)
def test_sparse_masks_equal_dense_bitwise_reference(bits, signed, mode, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = _code_range(bits, signed)
    codes = torch.randint(lo, hi + 1, (3, 5), generator=g)
    n_bits = codes.numel() * bits
    positions = torch.nonzero(torch.rand(n_bits, generator=g, dtype=torch.float64) < 0.2).reshape(-1)
    idx, mask = positions_to_masks(positions, bits)
    out = codes.clone()
    out.view(-1)[idx] = apply_mask(codes.view(-1)[idx], mask, bits, signed, mode)
    # dense reference: one bit at a time through the bit strings
    faulty = set(positions.tolist())
    expected = []
    for i, c in enumerate(codes.reshape(-1).tolist()):
        m = sum(1 << b for b in range(bits) if i * bits + b in faulty)
        expected.append(_ref_apply(c, m, bits, signed, mode))
    assert out.shape == codes.shape and out.reshape(-1).tolist() == expected
