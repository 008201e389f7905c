"""Plain forms the tests check src against; src does not need them.

- ``round_ste``: the straight-through rounding composite ``fake_quantize`` must equal in values and gradients;
- ``apply_mask``: fault modes on k-bit integer codes, composed from src's pattern primitives;
- ``dense_reference``: one uniform per bit (as Stutz et al.'s code), the law the sparse sampler must follow;
- ``sample_positions``: a fresh sampler's faulty bits at one rate, in one call.
"""

from __future__ import annotations

import numpy as np
import torch

from qfi_cli.faults.bits import from_unsigned, mask_patterns, to_unsigned
from qfi_cli.faults.sampler import Key, NestedBitSampler


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return (x.round() - x).detach() + x


def apply_mask(codes: torch.Tensor, mask: torch.Tensor, bits: int, signed: bool, mode: str = "flip") -> torch.Tensor:
    """New int64 codes with the bits of ``mask`` flipped, cleared (``stuck0``) or set (``stuck1``) in their k-bit
    patterns (two's complement for signed codes); ``mask`` broadcasts against ``codes``.

    >>> apply_mask(torch.tensor([3, -1]), torch.tensor([128, 128]), 8, signed=True).tolist()
    [-125, 127]
    """
    return from_unsigned(mask_patterns(to_unsigned(codes, bits), torch.as_tensor(mask), mode), bits, signed)


def dense_reference(n_bits: int, ber: float, generator: np.random.Generator | int | None = None,
                    chunk: int = 1 << 22) -> np.ndarray:
    """Faulty bit indices from one float64 uniform per bit, faulty iff below ``ber``; independent of ``chunk``.

    >>> dense_reference(10, 1.0, 0).tolist(), dense_reference(10, 0.0, 0).size
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 0)
    """
    rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
    parts = [np.flatnonzero(rng.random(min(chunk, n_bits - start)) < ber) + start for start in range(0, n_bits, chunk)]
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, dtype=np.int64)


def sample_positions(n_bits: int, ber: float, key: Key) -> np.ndarray:
    """Sorted distinct faulty bit indices of ``n_bits`` bits at rate ``ber`` for one stream key."""
    return NestedBitSampler(n_bits, key).positions(ber)
