"""SAM and ASAM on the quantized weights (the seed's design: L(Q(w) + eps(Q(w))), SAQ's "case 3").

One step: (1) forward/backward at Q(w), each quantized layer keeping ``quantized_weight.grad``;
(2) ascent: ``epsilon = rho * g / ||g||`` with ONE global L2 norm over all layers (ASAM: ``rho * T^2 g / ||T g||``
with ``T = |Q(w)| + eta``); (3) zero the gradients and forward/backward at Q(w) + epsilon, batch-norm running
statistics frozen (momentum 0) so they update once per step; (4) clear epsilon (in ``finally``), clip if asked,
and step the base optimizer. ``rho = 0`` is plain one-pass training.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
from torch import nn

from qfi_cli.quant.layers import quantized_layers

log = logging.getLogger(__name__)


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Batch norm still normalises with batch statistics, but its running statistics do not move."""
    saved = [(m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        for m, _, _ in saved:
            m.momentum = 0.0
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class SAM:
    """Sharpness-aware minimisation of a quantized model around its quantized weights.

    ``step(loss_fn)`` runs both passes; ``loss_fn()`` must run the forward and return the loss.

    >>> from qfi_cli.quant import quantize_model
    >>> model = quantize_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), first_last_bits=None)
    >>> sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    >>> loss = sam.step(lambda: nn.functional.cross_entropy(model(x), y))
    >>> all(m.epsilon is None for m in model.modules() if hasattr(m, "epsilon"))
    True
    """

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 adaptive: bool = False, eta: float = 0.01, grad_clip: float | None = None,
                 injector=None) -> None:  # noqa: ANN001 - a qfi_cli.faults.FaultInjector
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if adaptive and eta <= 0:
            raise ValueError("ASAM on quantized weights needs eta > 0: many quantized weights are exactly 0")
        self.model, self.base_optimizer = model, base_optimizer
        self.rho, self.adaptive, self.eta, self.grad_clip = float(rho), adaptive, float(eta), grad_clip
        self.injector = injector
        self.layers = [m for _, m in quantized_layers(model)]
        if injector is not None and injector.enable_in_training and self.rho > 0:
            msg = ("fault injection is on during SAM training: SAM's ascent uses the clean quantized weight's "
                   "gradient, and both passes of each step see the same fault pattern")
            log.warning(msg)
            warnings.warn(msg, stacklevel=2)

    def _clip(self) -> None:
        if self.grad_clip:
            params = [p for g in self.base_optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.grad_clip)

    @torch.no_grad()
    def _set_epsilon(self) -> None:
        tracked = [(m, m.quantized_weight) for m in self.layers
                   if m.quantized_weight is not None and m.quantized_weight.grad is not None]
        scaled = []
        for _, w in tracked:
            scaled.append(w.grad * (w.detach().abs() + self.eta) if self.adaptive else w.grad)
        norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2) if scaled else torch.tensor(0.0)
        factor = self.rho / norm if norm > 0 else 0.0  # a zero gradient leaves nothing to ascend
        for (m, w), s in zip(tracked, scaled):
            m.epsilon = (s * (w.detach().abs() + self.eta) if self.adaptive else s) * factor

    def step(self, loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One SAM step (two passes; one when rho is 0). Returns the first pass's loss (detached)."""
        same_faults = self.injector.same_faults() if self.injector is not None else nullcontext()
        with same_faults:
            self.base_optimizer.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            if self.rho > 0:
                self._set_epsilon()
                self.base_optimizer.zero_grad(set_to_none=True)
                try:
                    with frozen_bn_stats(self.model):
                        loss_fn().backward()
                finally:
                    self.clear()
            self._clip()
            self.base_optimizer.step()
        self.clear()
        return loss.detach()

    def clear(self) -> None:
        """Remove every epsilon and the references to the last quantized weights."""
        for m in self.layers:
            m.epsilon = None
            m.quantized_weight = None
