"""What every fault source is: a ``FaultSource`` (its config rules, the rates one job evaluates, and ``bind``,
which returns the ``Draw`` that gives a trial's faulty bits), registered by its ``fault.model`` name in
``FAULT_MODELS``.

A source is one module in ``qfi_cli/faults/sources/`` (found and imported by the package) plus its
``conf/fault/<name>.yaml``::

    @register_fault_model("my_model")
    class MyFaults(FaultSource):
        def bind(self, injector, layers):      # -> a Draw whose faults(at) gives (code index, [(mode, mask)])
            ...

The config types are passed in, never imported here (``fault``: ``FaultConfig``, ``cfg``: ``RunConfig``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from qfi_cli.faults.bits import positions_to_masks_np
from qfi_cli.registry import Registry
from qfi_cli.typed import require

NpMasks = list[tuple[str, np.ndarray]]  # (mode, mask) pairs, each mask aligned with one code index array
Level = tuple[float | None, int | None]  # (ber, count) of one evaluated level
ACT = ":act"  # suffix of an activation stream's layer key
WEIGHTS = "<weights>"  # key of a trial's one stream for the weight bits of all selected layers together
TRAIN = "@train"  # suffix of a training step's stream key (keeps training patterns apart from evaluation trials)
WEIGHT_PART = "weights"  # the stored part of weight codes (qfi_cli.faults.parts)
NO_ENTRIES = np.zeros(0, dtype=np.int64)
NO_ENTRIES.flags.writeable = False


class At(NamedTuple):
    """Where faults are asked for: layer ``name`` (``n_codes`` entries of ``bits`` bits: its input activations, or
    the stored ``part`` of ``qfi_cli.faults.parts``, weight codes by default) and the stream in use: ``trial`` (or
    training step), layer ``key``, ``draw`` (the forward, for faults drawn per forward; else 0)."""

    name: str
    n_codes: int
    bits: int
    is_activation: bool
    trial: int
    key: str
    draw: int
    part: str = WEIGHT_PART


def part_key(part: str) -> str:
    """The suffix that keeps a stored part's layer keys (streams, flip counts) apart; weight codes have none, so
    weight patterns do not depend on which other parts are selected.

    >>> part_key("weights"), part_key("biases")
    ('', '<biases>')
    """
    return "" if part == WEIGHT_PART else f"<{part}>"


class Draw:
    """A source bound to one injector's layers: ``faults(at)`` gives the faulty entries of one layer now as
    ``(code index, [(mode, mask)])`` (int64 numpy arrays; the injector then leaves out protected bits)."""

    def faults(self, at: At) -> tuple[np.ndarray, NpMasks]:
        raise NotImplementedError

    def forget(self) -> None:
        """A new trial or training step begins: drop cached patterns."""

    def plan(self, trials: int, fault_seed: int) -> tuple[int, int]:
        """The trials and fault seed an evaluation uses (a file may fix its own)."""
        return trials, fault_seed

    def shown_ber(self, ber: float | None) -> float | None:
        """The rate results show for a level at ``ber`` (a map shows its expected fraction of faulty bits)."""
        return ber


class FaultSource:
    """Where faults come from and how they change bits. ``mode``: how a faulty bit changes (a ``FAULT_MODES`` key
    of ``faults/bits.py``); ``per_cell``: whether ``qfi sensitivity`` can restrict it to one layer x bit cell.

    >>> class Nothing(FaultSource):
    ...     def bind(self, injector, layers):
    ...         return Draw()
    >>> Nothing().levels(None)
    [(None, None)]
    """

    mode = "flip"
    per_cell = True

    def validate(self, fault: Any) -> None:
        """Rules of the ``fault`` section for this source (``fault.model`` and the common checks are done);
        ``fault`` may be normalised in place (a float rate)."""

    def check_run(self, cfg: Any, command: str) -> None:
        """Rules across sections (``cfg`` a validated ``RunConfig``) for ``command``: run in the pre-check."""

    def levels(self, cfg: Any) -> list[Level]:
        """The (ber, count) levels one job evaluates, ascending."""
        return [(None, None)]

    def bind(self, injector: Any, layers: Sequence[tuple[str, Any]]) -> Draw:
        """The ``Draw`` of ``injector`` (its config, seed, rate and selected layers) for a model whose quantized
        layers are ``layers``; a mismatch with a file is one QfiError."""
        raise NotImplementedError


class FileSource(FaultSource):
    """A source that reads its faults from ``fault.file`` (weights only; ``qfi sensitivity`` draws its own)."""

    per_cell = False

    def validate(self, fault: Any) -> None:
        require(fault.file is not None, f"fault.model={fault.model} reads its faults from a file: set "
                                        f"fault.file=FILE")
        fault.file = str(Path(fault.file).expanduser())
        require(fault.weights_only, f"fault.model={fault.model} applies to weights only: set "
                                    f"fault.target=weights")


FAULT_MODELS: Registry[FaultSource] = Registry("fault model")


def register_fault_model(name: str, *args: Any, **kwargs: Any) -> Callable[[type], type]:
    """Class decorator: register ``cls(*args, **kwargs)`` as ``fault.model=name`` (stack it for several names).

    >>> FAULT_MODELS.get("bitflip").mode, FAULT_MODELS.get("stuck_at_1").mode
    ('flip', 'stuck1')
    """
    def add(cls: type) -> type:
        FAULT_MODELS.register(name)(cls(*args, **kwargs))
        return cls

    return add


def check_rate(fault: Any) -> None:
    """``fault.ber``, when set, is a rate in [0, 1] (stored as a float)."""
    if fault.ber is not None:
        require(0.0 <= float(fault.ber) <= 1.0, f"ber must lie in [0, 1], got {fault.ber}")
        fault.ber = float(fault.ber)


def drawn(mode: str, positions: np.ndarray, bits: int, chosen: list[int] | None) -> tuple[np.ndarray, NpMasks]:
    """Sampled bit positions (over the ``chosen`` bit positions of ``bits``-wide codes) as faulty entries.

    >>> index, [(mode, mask)] = drawn("flip", np.array([0, 9]), 8, None)
    >>> index.tolist(), mode, mask.tolist()
    ([0, 1], 'flip', [1, 2])
    """
    index, mask = positions_to_masks_np(positions, bits, chosen)
    return index, [(mode, mask)]


def merge_faults(parts: Sequence[tuple[str, torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, NpMasks]:
    """Faults given per mode as ``(mode, code index, mask)``: ``(index, [(mode, mask)])`` on one code index
    (sorted, distinct; every mask aligned to it, 0 where a mode has no fault), as numpy arrays.

    >>> index, masks = merge_faults([("flip", torch.tensor([1, 4]), torch.tensor([1, 2])),
    ...                              ("stuck1", torch.tensor([4, 6]), torch.tensor([8, 8]))])
    >>> index.tolist(), [(m, v.tolist()) for m, v in masks]
    ([1, 4, 6], [('flip', [1, 2, 0]), ('stuck1', [0, 8, 8])])
    """
    parts = [p for p in parts if p[1].numel()]
    if not parts:
        return NO_ENTRIES, []
    if len(parts) == 1:
        return parts[0][1].cpu().numpy(), [(parts[0][0], parts[0][2].cpu().numpy())]
    index = torch.unique(torch.cat([p[1] for p in parts]))
    masks = []
    for mode, idx, mask in parts:
        aligned = torch.zeros_like(index)
        aligned[torch.searchsorted(index, idx)] = mask
        masks.append((mode, aligned.cpu().numpy()))
    return index.cpu().numpy(), masks
