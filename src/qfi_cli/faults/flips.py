"""The bit primitive: change chosen bits of chosen entries of a quantized tensor in place, keeping what undoes it.

``write_masked(flat, encoding, index, mask)`` encodes the entries ``flat[index]`` into their stored patterns (as
their ``Encoding`` says: two's-complement or unsigned integer codes, or IEEE float bits), flips (or clears, or
sets) the bits of ``mask`` and writes the decoded values back. It returns the old values, so ``flat[index] = old``
undoes it bit for bit. The fault injector's trials, the bit-flip attack and adversarial bit error training all go
through it.

>>> import torch
>>> from qfi_cli.quant.encoding import Encoding
>>> flat, enc = torch.tensor([1.5, -0.5, 2.0]), Encoding(bits=8, scale=torch.tensor(0.5))
>>> w = write_masked(flat, enc, torch.tensor([0]), torch.tensor([128]))   # sign bit of code 3
>>> flat.tolist(), w.old.tolist(), w.patterns.tolist(), w.new.tolist()
([-62.5, -0.5, 2.0], [1.5], [3], [131])
>>> flat[w.index] = w.old; flat.tolist()
[1.5, -0.5, 2.0]
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from qfi_cli.faults.bits import mask_patterns
from qfi_cli.quant.encoding import Encoding


class Written(NamedTuple):
    """What ``write_masked`` changed: the entries (flat index), their old values (``flat[index] = old`` undoes
    the write), and their stored patterns before and after."""

    index: torch.Tensor
    old: torch.Tensor
    patterns: torch.Tensor
    new: torch.Tensor


def write_masked(flat: torch.Tensor, encoding: Encoding, index: torch.Tensor,
                 masks: torch.Tensor | Sequence[tuple[str, torch.Tensor]], mode: str = "flip") -> Written:
    """Apply bit masks to the stored patterns of ``flat[index]``, in place.

    ``flat`` is a flattened quantized tensor (a view: the tensor it views changes too), ``index`` distinct flat
    positions; ``masks`` is one int64 bit mask per entry, applied as ``mode`` (``flip``, ``stuck0`` or
    ``stuck1``), or a list of ``(mode, mask)`` pairs applied in order. Costs O(len(index)).
    """
    steps = [(mode, masks)] if isinstance(masks, torch.Tensor) else list(masks)
    if numpy_writable(flat, encoding):
        at = index.cpu().numpy()
        old, patterns, new = write_masked_np(flat.detach().numpy(), encoding, at,
                                             [(how, mask.cpu().numpy()) for how, mask in steps])
        return Written(index.cpu(), torch.from_numpy(old), torch.from_numpy(patterns), torch.from_numpy(new))
    index = index.to(flat.device)
    old = flat[index]
    patterns = encoding.encode(old, index)
    new = patterns
    for how, mask in steps:
        new = mask_patterns(new, mask.to(flat.device), how)
    flat[index] = encoding.decode(new, index, dtype=flat.dtype)
    return Written(index, old, patterns, new)


def numpy_writable(flat: torch.Tensor, encoding: Encoding) -> bool:
    """Whether ``write_masked_np`` can change ``flat`` through its numpy view: a CPU float tensor of integer codes.

    >>> from qfi_cli.quant.encoding import FP32
    >>> numpy_writable(torch.zeros(3), Encoding(bits=8, scale=torch.tensor(1.0))), numpy_writable(torch.zeros(3), FP32)
    (True, False)
    """
    return flat.device.type == "cpu" and not encoding.is_float and flat.dtype in (torch.float32, torch.float64)


def writable(flat: torch.Tensor | np.ndarray, encoding: Encoding) -> torch.Tensor | np.ndarray:
    """``flat``'s numpy view where ``numpy_writable`` allows it (it shares ``flat``'s memory), else ``flat``.

    >>> from qfi_cli.quant.encoding import FP32
    >>> type(writable(torch.zeros(3), Encoding(bits=8, scale=torch.tensor(1.0)))).__name__, writable(torch.zeros(1), FP32)
    ('ndarray', tensor([0.]))
    """
    if isinstance(flat, np.ndarray):
        return flat
    return flat.detach().numpy() if numpy_writable(flat, encoding) else flat


def write_masked_np(values: np.ndarray, encoding: Encoding, at: np.ndarray,
                    steps: Sequence[tuple[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``write_masked`` on a numpy view (``numpy_writable`` tensors): the few entries of a trial without the fixed
    cost of ~20 small torch operations, and the same IEEE values. Returns ``(old values, patterns, new patterns)``.

    >>> from qfi_cli.quant.encoding import Encoding
    >>> values = np.array([1.5, -0.5], dtype=np.float32)
    >>> old, patterns, new = write_masked_np(values, Encoding(bits=8, scale=torch.tensor(0.5)), np.array([0]),
    ...                                      [("flip", np.array([128]))])
    >>> values.tolist(), old.tolist(), patterns.tolist(), new.tolist()
    ([-62.5, -0.5], [1.5], [3], [131])
    """
    old = values[at]
    patterns = encoding.encode(old, at)
    new = patterns
    for how, mask in steps:
        new = mask_patterns(new, mask, how)
    values[at] = encoding.decode(new, at, dtype=values.dtype)
    return old, patterns, new
