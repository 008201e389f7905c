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
    if flat.device.type == "cpu" and not encoding.is_float and flat.dtype in (torch.float32, torch.float64):
        # the few entries of a trial, in numpy on the tensor's own memory: the same IEEE values, without the
        # fixed cost of ~20 small torch operations per layer
        values, at = flat.detach().numpy(), index.cpu().numpy()
        old = values[at]
        patterns = encoding.encode(old, at)
        new = patterns
        for how, mask in steps:
            new = mask_patterns(new, mask.cpu().numpy(), how)
        values[at] = encoding.decode(new, at, dtype=values.dtype)
        return Written(index.cpu(), torch.from_numpy(old), torch.from_numpy(patterns), torch.from_numpy(new))
    index = index.to(flat.device)
    old = flat[index]
    patterns = encoding.encode(old, index)
    new = patterns
    for how, mask in steps:
        new = mask_patterns(new, mask.to(flat.device), how)
    flat[index] = encoding.decode(new, index, dtype=flat.dtype)
    return Written(index, old, patterns, new)
