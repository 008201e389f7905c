"""Worst-case bit flips: the progressive bit search (Rakin et al., ICCV 2019) on the stored weight codes.

``BitSearch`` works on the frozen quantized weights of a model (inside ``frozen_weights(model)``), with the same
bit semantics as random faults (``Encoding``: two's-complement or unsigned integer codes, or IEEE float bits) and
the same in-place primitive (``faults.flips.write_masked``). One ``step()``:

1. forward and backward on the attack batch, with the frozen weights as leaves: dL/dw of every layer;
2. in each layer, rank every bit by its first-order loss increase ``grad_i * (decode(pattern_i ^ 2**b) - w_i)``
   (the exact value change the flip makes, so the bit's direction and the gradient's sign both count) and keep
   the ``k_top`` best (``bit_gains``); with ``rank_top`` (the paper's ``k_top``) only the bits of the layer's
   ``rank_top`` weights of largest |gradient| with a positive gain, as in Rakin et al.'s code;
3. evaluate the true loss on the attack batch after each kept candidate of each layer (flip in place, forward,
   undo), and commit the one flip over all layers that raises it most.

Bits already flipped are never chosen again, so after n steps the model is at Hamming distance exactly n from the
clean one, as n random flips under ``fault=count`` are. ``restore()`` undoes every committed flip bit for bit.

``first_order_step(n)`` commits the n best bits by first-order gain alone (no true-loss evaluations): the cheap
search of adversarial bit error training (``adversarial_flips``, ``flipped``).

>>> from torch import nn
>>> from qfi_cli.quant import frozen_weights, quantize_model
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = quantize_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), "minmax",
...                        first_last_bits=None).eval()
>>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
>>> with frozen_weights(model):
...     search = BitSearch(model, x, y, k_top=4)
...     before = search.loss()
...     flip = search.step()
...     search.restore()
>>> flip.loss > before, flip.layer in ("0", "2"), 0 <= flip.bit < 8
(True, True, True)
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.faults.flips import Written, write_masked
from qfi_cli.quant.encoding import Encoding
from qfi_cli.quant.layers import frozen_weights, quantized_layers

Masks = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer name -> (flat index, bit mask), one entry per code


@dataclass(frozen=True)
class Flip:
    """One committed bit flip: where (layer, flat code index, bit; 0 = LSB), the integer code and value before
    and after (``Encoding.codes`` / the decoded value), and the attack batch's loss after it."""

    layer: str
    index: int
    bit: int
    old_code: int
    new_code: int
    old_value: float
    new_value: float
    loss: float

    def as_dict(self) -> dict:
        return asdict(self)


def rank_entries(grads: torch.Tensor, encoding: Encoding, r: int) -> torch.Tensor:
    """Flat indices (ascending) of the ``r`` entries with the largest |dL/d code|: Rakin et al.'s top-``k_top``
    weights by gradient magnitude. For integer codes dL/d code = dL/dw * scale: with one scale per tensor that is
    the order of |dL/dw|, which is used; with per-channel scales |dL/dw * scale|; float and RQuant codes (one range
    per tensor): |dL/dw|. Ties go to
    the lower index; a NaN gradient ranks last.

    >>> enc = Encoding(bits=4, scale=torch.tensor(1.0))
    >>> rank_entries(torch.tensor([0.1, -3.0, 2.0, 3.0]), enc, 2).tolist()
    [1, 3]
    """
    grads = grads.detach().reshape(-1)
    per_channel = encoding.scale is not None and not encoding.is_float and encoding.scale.numel() > 1
    index = torch.arange(grads.numel(), device=grads.device)
    mag = (grads * encoding._scale_at(index).to(grads.dtype)).abs() if per_channel else grads.abs()
    mag = torch.where(torch.isnan(mag), torch.full_like(mag, -math.inf), mag)
    r = min(int(r), mag.numel())
    kth = mag.topk(r).values[-1]
    above = (mag > kth).nonzero().reshape(-1)
    tied = (mag == kth).nonzero().reshape(-1)[: r - above.numel()]
    return torch.cat([above, tied]).sort().values


def bit_gains(values: torch.Tensor, grads: torch.Tensor, encoding: Encoding, k: int,
              exclude: list[tuple[int, int]] = (), rank_top: int | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` bit flips of a flattened quantized tensor with the largest first-order loss increase.

    The gain of flipping bit b of entry i is ``grads[i] * (decode(encode(values[i]) ^ 2**b) - values[i])``.
    Returns (gains descending, flat indices, bit positions); ``exclude`` lists (index, bit) pairs never to choose.
    A flip whose gain is not a number (a float code turned NaN) is not chosen. Memory O(len(values) + k * bits).

    ``rank_top`` (Rakin et al.'s ``k_top``): only bits of the ``rank_top`` entries with the largest |dL/d code|
    (``rank_entries``) are candidates, and only those whose gain is positive (their rule: flip 0 -> 1 where the
    bit's gradient is positive, 1 -> 0 where it is negative, largest |gradient x bit weight| first; that product is
    this gain). None: every entry and every bit, whatever its gain's sign.

    >>> enc = Encoding(bits=4, scale=torch.tensor(1.0))
    >>> gains, index, bit = bit_gains(torch.tensor([1.0, -2.0]), torch.tensor([1.0, 0.0]), enc, k=2)
    >>> gains.tolist(), index.tolist(), bit.tolist()    # code 1 -> 5 (bit 2: +4), 1 -> 3 (bit 1: +2)
    ([4.0, 2.0], [0, 0], [2, 1])
    >>> bit_gains(torch.tensor([1.0, -2.0]), torch.tensor([1.0, -0.5]), enc, k=9, rank_top=1)[2].tolist()
    [2, 1]
    """
    values = values.detach().reshape(-1)
    grads = grads.detach().reshape(-1).to(values.dtype)
    if rank_top is None:
        index = torch.arange(values.numel(), device=values.device)
    else:
        index = rank_entries(grads, encoding, rank_top)
        values, grads = values[index], grads[index]
    n = values.numel()
    patterns = encoding.encode(values, index)
    per_bit = min(k, n)
    position = None if rank_top is None else {i: p for p, i in enumerate(index.tolist())}
    excluded: dict[int, list[int]] = {}
    for i, b in exclude:
        if position is None:
            excluded.setdefault(int(b), []).append(int(i))
        elif int(i) in position:
            excluded.setdefault(int(b), []).append(position[int(i)])
    top_gains, top_index, top_bit = [], [], []
    for b in range(encoding.bits):
        changed = encoding.decode(patterns ^ (1 << b), index, dtype=values.dtype)
        gain = grads * (changed - values)
        gain = torch.where(torch.isnan(gain), torch.full_like(gain, -math.inf), gain)
        if b in excluded:
            gain[torch.tensor(excluded[b], device=gain.device)] = -math.inf
        g, i = gain.topk(per_bit)
        top_gains.append(g)
        top_index.append(index[i])
        top_bit.append(torch.full_like(i, b))
    gains, index, bits = torch.cat(top_gains), torch.cat(top_index), torch.cat(top_bit)
    # rank by gain, ties by (index, bit): the same candidates in the same order on every run
    g, i, b = gains.tolist(), index.tolist(), bits.tolist()
    floor = -math.inf if rank_top is None else 0.0
    order = [j for j in sorted(range(len(g)), key=lambda j: (-g[j], i[j], b[j]))[:k] if g[j] > floor]
    pick = torch.tensor(order, dtype=torch.long, device=gains.device)
    return gains[pick], index[pick], bits[pick]


class BitSearch:
    """Progressive bit search on the frozen weights of ``model`` (call it inside ``frozen_weights(model)``).

    ``x``, ``y``: the attack batch and its labels; ``k_top``: candidate bits per layer whose true loss is
    evaluated in each ``step`` (with every bit of a layer as candidates the step commits the single flip that
    raises the loss most); this is not the paper's ``k_top``, which is ``rank_top``: the weights per layer
    pre-ranked by |gradient| whose positive-gain bits alone are candidates (``bit_gains``; None: every weight).
    Rakin et al.'s setting is ``rank_top=10, k_top=1``. The model's mode (eval or train) is the caller's.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, k_top: int,
                 rank_top: int | None = None) -> None:
        self.model, self.x, self.y, self.k_top = model, x, y, int(k_top)
        self.rank_top = None if rank_top is None else int(rank_top)
        self.layers = [(n, m) for n, m in quantized_layers(model) if m.frozen_weight is not None]
        if not self.layers:
            raise QfiError("the bit search needs quantized layers with frozen weights (use it inside "
                           "frozen_weights(model))")
        self.flips: list[Flip] = []
        self._taken: dict[str, list[tuple[int, int]]] = {n: [] for n, _ in self.layers}
        self._undo: list[tuple[torch.Tensor, Written]] = []

    @torch.no_grad()
    def loss(self) -> float:
        """Cross-entropy on the attack batch; a non-finite loss (NaN / Inf logits) counts as +inf."""
        loss = float(F.cross_entropy(self.model(self.x), self.y))
        return loss if math.isfinite(loss) else math.inf

    def gradients(self) -> list[torch.Tensor]:
        """dL/dw of every layer's frozen weight on the attack batch (the weights are leaves for this pass only)."""
        weights = [m.frozen_weight for _, m in self.layers]
        for w in weights:
            w.requires_grad_(True)
        try:
            with torch.enable_grad():
                loss = F.cross_entropy(self.model(self.x), self.y)
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
        finally:
            for w in weights:
                w.requires_grad_(False)
        return [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]

    def _write(self, m: nn.Module, index: int, bit: int) -> tuple[torch.Tensor, Written]:
        flat = m.frozen_weight.view(-1)
        device = flat.device
        with torch.no_grad():
            return flat, write_masked(flat, m.frozen_encoding, torch.tensor([index], device=device),
                                      torch.tensor([1 << bit], device=device))

    def _commit(self, name: str, m: nn.Module, index: int, bit: int, loss: float | None) -> Flip:
        flat, w = self._write(m, index, bit)
        self._undo.append((flat, w))
        self._taken[name].append((index, bit))
        enc = m.frozen_encoding
        new = flat[w.index]
        flip = Flip(name, index, bit, int(enc.codes(w.old, w.index)[0]), int(enc.codes(new, w.index)[0]),
                    float(w.old[0]), float(new[0]), self.loss() if loss is None else loss)
        self.flips.append(flip)
        return flip

    def candidates(self, k: int) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Each layer's ``k`` best untaken bits by first-order gain at the current weights (among its ``rank_top``
        weights of largest |gradient| when set)."""
        out = []
        for (name, m), g in zip(self.layers, self.gradients()):
            gains, index, bit = bit_gains(m.frozen_weight, g, m.frozen_encoding, k, self._taken[name],
                                          self.rank_top)
            out.append((name, m, gains, index, bit))
        return out

    def step(self) -> Flip | None:
        """Commit the candidate flip (``k_top`` per layer) with the highest true loss; None when no bit is left."""
        best: tuple[float, str, nn.Module, int, int] | None = None
        for name, m, _, index, bit in self.candidates(self.k_top):
            for i, b in zip(index.tolist(), bit.tolist()):
                flat, w = self._write(m, i, b)
                loss = self.loss()
                flat[w.index] = w.old
                if best is None or loss > best[0]:
                    best = (loss, name, m, i, b)
        if best is None:
            return None
        loss, name, m, i, b = best
        return self._commit(name, m, i, b, loss)

    def first_order_step(self, n: int) -> list[Flip]:
        """Commit the ``n`` untaken bits with the largest first-order gains over all layers (no true-loss
        evaluation); their ``loss`` is the attack batch's loss after all n."""
        ranked = []
        for pos, (name, m, gains, index, bit) in enumerate(self.candidates(n)):
            ranked += [(-g, pos, i, b, name, m) for g, i, b in zip(gains.tolist(), index.tolist(), bit.tolist())]
        order = sorted(ranked, key=lambda r: r[:4])[:n]
        flips = [self._commit(name, m, i, b, math.nan) for _, _, i, b, name, m in order]
        if flips:
            loss = self.loss()
            flips = [Flip(**{**f.as_dict(), "loss": loss}) for f in flips]
            self.flips[-len(flips):] = flips
        return flips

    def masks(self) -> Masks:
        """The committed flips as one (flat index, bit mask) pair per changed code, per layer."""
        per_layer: dict[str, dict[int, int]] = {}
        for f in self.flips:
            codes = per_layer.setdefault(f.layer, {})
            codes[f.index] = codes.get(f.index, 0) | (1 << f.bit)
        device = self.layers[0][1].frozen_weight.device
        return {name: (torch.tensor(sorted(c), dtype=torch.long, device=device),
                       torch.tensor([c[i] for i in sorted(c)], dtype=torch.long, device=device))
                for name, c in per_layer.items()}

    def restore(self) -> None:
        """Undo every committed flip (in reverse order): the frozen weights are the clean ones again, bit for bit."""
        with torch.no_grad():
            for flat, w in reversed(self._undo):
                flat[w.index] = w.old
        self._undo.clear()
        self._taken = {n: [] for n, _ in self.layers}
        self.flips = []


def adversarial_flips(model: nn.Module, x: torch.Tensor, y: torch.Tensor, flips: int, steps: int = 1) -> Masks:
    """``flips`` adversarial bit flips of ``model``'s weights on the batch (x, y), found in ``steps`` rounds of
    first-order ranking (``BitSearch.first_order_step``; the gradient is taken again after each round). The
    model's weights are untouched; returns the flips as per-layer masks for ``flipped``. Costs ``steps``
    forward/backward passes (the model's mode, and its BN statistics, are the caller's)."""
    with frozen_weights(model):
        search = BitSearch(model, x, y, k_top=flips)
        for s in range(steps):
            share = flips * (s + 1) // steps - flips * s // steps
            if share:
                search.first_order_step(share)
        masks = search.masks()
        search.restore()
    return masks


@contextmanager
def flipped(model: nn.Module, masks: Masks) -> Iterator[None]:
    """Inside the block the layers in ``masks`` compute with those bits of their quantized weight flipped; the
    backward pass sees the gradient of the clean quantized weight (straight through), as a fault hook's does.
    Uses the layers' ``weight_fault`` slots (refused when another injector holds one)."""
    from qfi_cli.faults.injector import straight_through

    layers = dict(quantized_layers(model))
    hooked = []

    def hook_for(index: torch.Tensor, mask: torch.Tensor):
        def hook(x_q: torch.Tensor, encoding: Encoding) -> torch.Tensor:
            flat = x_q.detach().reshape(-1).clone()
            write_masked(flat, encoding, index, mask)
            return straight_through(x_q, flat.view_as(x_q))
        return hook

    try:
        for name, (index, mask) in masks.items():
            m = layers[name]
            if m.weight_fault is not None:
                raise QfiError(f"layer {name} already has a fault injector attached: adversarial flips need its "
                               "weight_fault slot")
            m.weight_fault = hook_for(index, mask)
            hooked.append(m)
        yield
    finally:
        for m in hooked:
            m.weight_fault = None


__all__ = ["BitSearch", "Flip", "Masks", "adversarial_flips", "bit_gains", "flipped", "rank_entries"]
