"""Exact bit semantics of k-bit integer weight codes (torch int64 tensors).

A k-bit code is stored as a k-bit pattern: unsigned codes as themselves, signed codes in two's complement.
Bit errors act on that pattern, so flipping the top bit of a signed 8-bit 3 gives -125, not 131.

"Exposed bits" are the bits a fault may hit: every bit of every code by default, or only the bits listed in
``bit_positions`` (e.g. ``[k - 1]`` for MSB-only faults). Exposed bit ``p`` lives in code ``p // m`` at bit
``bit_positions[p % m]`` with ``m`` exposed bits per code, so a sorted list of exposed-bit indices maps to
sorted code indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Optional, Union

import numpy as np
import torch

from qfi_cli.errors import QfiError


class FaultMode(NamedTuple):
    """One fault mode: how a mask changes stored bit patterns, and the code a fault file stores for it."""

    apply: Callable[[Any, Any], Any]  # (patterns, mask) -> new patterns; torch tensors or numpy arrays alike
    code: int  # the ``mode`` column of a fault file (faults/replay.py): part of the file format, never renumber


# The one table of fault modes (mask_patterns, profile validation and the replay file format all read it).
FAULT_MODES: dict[str, FaultMode] = {
    "flip": FaultMode(lambda patterns, mask: patterns ^ mask, 0),
    "stuck0": FaultMode(lambda patterns, mask: patterns & ~mask, 1),
    "stuck1": FaultMode(lambda patterns, mask: patterns | mask, 2),
}
MODE_OF_CODE: dict[int, str] = {m.code: name for name, m in FAULT_MODES.items()}

_MAX_BITS = 62  # masks and two's-complement arithmetic stay inside int64


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    bits = int(bits)
    if not 1 <= bits <= _MAX_BITS:
        raise ValueError(f"bits must lie in [1, {_MAX_BITS}], got {bits}")
    return bits


def _as_int64(x: Union[torch.Tensor, np.ndarray, Sequence[int]], what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "iu":
            raise TypeError(f"{what} must hold integers, got numpy dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, dtype=torch.int64)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{what} must be an integer tensor, got {x.dtype} (round float codes first)")
    return x.to(torch.int64)


def _check_bit_positions(bit_positions: Optional[Sequence[int]], bits: int) -> Optional[list[int]]:
    if bit_positions is None:
        return None
    positions = [int(b) for b in bit_positions]
    if not positions:
        raise ValueError("bit_positions must name at least one bit")
    if len(set(positions)) != len(positions):
        raise ValueError(f"bit_positions must be distinct, got {positions}")
    bad = [b for b in positions if not 0 <= b < bits]
    if bad:
        raise ValueError(f"bit_positions must lie in [0, {bits}), got {bad}")
    return positions


def resolve_bits(positions: list[int] | None, bits: int, what: str = "fault.bits") -> list[int] | None:
    """Bit positions (negative from the MSB) as sorted positions in ``[0, bits)``; None stays None (all bits).

    >>> resolve_bits([-1, 0, 7], 8)
    [0, 7]
    """
    if positions is None:
        return None
    pos = sorted({b if b >= 0 else bits + b for b in positions})
    if pos[0] < 0 or pos[-1] >= bits:
        raise QfiError(f"{what} {positions} do not fit {bits}-bit codes (0..{bits - 1}, or -1 = MSB)")
    return pos


def to_unsigned(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Return the k-bit pattern of ``codes`` as int64 in ``[0, 2**bits)`` (two's complement for negatives).

    >>> to_unsigned(torch.tensor([3, -1, -128, 127]), 8).tolist()
    [3, 255, 128, 127]
    """
    bits = _check_bits(bits)
    return torch.bitwise_and(_as_int64(codes, "codes"), (1 << bits) - 1)


def from_unsigned(u: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Inverse of :func:`to_unsigned`: read k-bit patterns as signed (two's complement) or unsigned codes.

    >>> from_unsigned(torch.tensor([3, 255, 128, 127]), 8, signed=True).tolist()
    [3, -1, -128, 127]
    >>> from_unsigned(torch.tensor([255]), 8, signed=False).tolist()
    [255]
    """
    bits = _check_bits(bits)
    u = torch.bitwise_and(_as_int64(u, "u"), (1 << bits) - 1)
    if not signed:
        return u
    return torch.where(u >= (1 << (bits - 1)), u - (1 << bits), u)


def n_exposed_bits(n_codes: int, bits: int, bit_positions: Optional[Sequence[int]] = None) -> int:
    """Number of bits a fault may hit in ``n_codes`` k-bit codes.

    >>> n_exposed_bits(10, 8), n_exposed_bits(10, 8, bit_positions=[7])
    (80, 10)
    """
    bits = _check_bits(bits)
    n_codes = int(n_codes)
    if n_codes < 0:
        raise ValueError(f"n_codes must be >= 0, got {n_codes}")
    chosen = _check_bit_positions(bit_positions, bits)
    return n_codes * (bits if chosen is None else len(chosen))


def positions_to_masks(
    positions: Union[torch.Tensor, np.ndarray],
    bits_per_code: int,
    bit_positions: Optional[Sequence[int]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group faulty exposed-bit indices by code: return ``(code_index, mask)``, both int64, code_index sorted unique.

    Without ``bit_positions``, exposed bit ``p`` is bit ``p % k`` of code ``p // k``; with it, bit
    ``bit_positions[p % m]`` of code ``p // m`` (``m = len(bit_positions)``). Costs O(len(positions)).
    Positions should be sorted and distinct (as the sampler returns them); other input is sorted and deduplicated.

    >>> idx, mask = positions_to_masks(torch.tensor([0, 3, 9, 15]), 8)
    >>> idx.tolist(), mask.tolist()
    ([0, 1], [9, 130])
    >>> idx, mask = positions_to_masks(torch.tensor([1, 4]), 8, bit_positions=[7])
    >>> idx.tolist(), mask.tolist()
    ([1, 4], [128, 128])
    """
    bits = _check_bits(bits_per_code)
    chosen = _check_bit_positions(bit_positions, bits)
    if isinstance(positions, np.ndarray) and positions.ndim == 1 and positions.dtype.kind in "iu":
        code_index, mask = positions_to_masks_np(positions, bits, chosen)
        return torch.from_numpy(code_index), torch.from_numpy(mask)
    pos = _as_int64(positions, "positions").reshape(-1)
    if pos.numel() > 1 and not bool((pos[1:] > pos[:-1]).all()):
        pos = torch.unique(pos)  # sorted and distinct: a repeated position must not double-flip
    if pos.numel() and int(pos[0]) < 0:
        raise ValueError(f"positions must be >= 0, got {int(pos[0])}")
    if chosen is None:
        m = bits
        code = torch.div(pos, m, rounding_mode="floor")
        bit = pos - code * m
    else:
        m = len(chosen)
        code = torch.div(pos, m, rounding_mode="floor")
        bit = torch.tensor(chosen, dtype=torch.int64, device=pos.device)[pos - code * m]
    single = torch.bitwise_left_shift(torch.ones_like(bit), bit)
    # pos sorted -> code sorted, and the bits inside one code are distinct, so a segment sum is the OR.
    code_index, inverse = torch.unique_consecutive(code, return_inverse=True)
    mask = torch.zeros(code_index.numel(), dtype=torch.int64, device=pos.device)
    mask.index_add_(0, inverse, single)
    return code_index, mask


def positions_to_masks_np(pos: np.ndarray, bits: int,
                          chosen: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
    """``positions_to_masks`` in numpy, for the sampler's output (a segmented OR with ``reduceat``); no checks of
    ``bits`` and ``chosen``.

    >>> idx, mask = positions_to_masks_np(np.array([0, 3, 9, 15]), 8)
    >>> idx.tolist(), mask.tolist()
    ([0, 1], [9, 130])
    """
    pos = pos.astype(np.int64, copy=False)
    if pos.size > 1 and not (pos[1:] > pos[:-1]).all():
        pos = np.unique(pos)
    if pos.size and pos[0] < 0:
        raise ValueError(f"positions must be >= 0, got {int(pos[0])}")
    m = bits if chosen is None else len(chosen)
    if m & (m - 1) == 0:  # a power of two (8-bit codes, one chosen bit, ...): shifts, several times divmod's speed
        code, bit = pos >> (m.bit_length() - 1), pos & (m - 1)
    else:
        code, bit = np.divmod(pos, m)
    if chosen is not None:
        bit = np.asarray(chosen, dtype=np.int64)[bit]
    if not pos.size:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    single = np.left_shift(1, bit)
    if code.size == 1 or (code[1:] != code[:-1]).all():  # one bit per code, the usual case at small rates
        return code, single
    starts = np.flatnonzero(np.concatenate(([True], code[1:] != code[:-1])))
    return code[starts], np.bitwise_or.reduceat(single, starts)


def mask_patterns(patterns: Any, mask: Any, mode: str = "flip") -> Any:
    """Stored bit patterns with the bits of ``mask`` flipped, cleared or set; torch tensors or numpy arrays alike.

    No checks: ``mask`` must lie in the patterns' width.

    >>> mask_patterns(np.array([0b0101, 0b0101]), np.array([0b0011, 0b0011]), "flip").tolist()
    [6, 6]
    >>> mask_patterns(torch.tensor([0b0101]), torch.tensor([0b0011]), "stuck0").tolist()
    [4]
    """
    fault_mode = FAULT_MODES.get(mode)
    if fault_mode is None:
        raise ValueError(f"mode must be one of {tuple(FAULT_MODES)}, got {mode!r}")
    return fault_mode.apply(patterns, mask)

