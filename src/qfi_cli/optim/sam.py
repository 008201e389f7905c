"""SAM and ASAM on the quantized weights (the seed's design: L(Q(w) + eps(Q(w))), SAQ's "case 3").

Used like a torch optimizer (as davda54/sam): forward and backward at Q(w); ``first_step()`` sets
``epsilon = rho * g / ||g||`` for every quantized layer, with ONE global L2 norm over all layers (ASAM:
``rho * T^2 g / ||T g||`` with ``T = |Q(w)| + eta``), zeroes the gradients and freezes batch-norm running statistics
(momentum 0, so they update once per step); forward and backward at Q(w) + epsilon; ``second_step()`` clears epsilon,
restores batch norm, clips if asked and steps the base optimizer. ``step(closure)`` does all of it. ``rho = 0`` is
plain one-pass training.

``g`` is the gradient with respect to the clean quantized weights of the pass's forwards (summed when a pass runs
several forwards, as RandBET's clean + faulty loss does); SAM knows nothing of fault injection.

SAM keeps its state as davda54/sam does, in ``self.state[p]`` (``p`` a quantized layer's weight): ``quantized``, the
clean Q(w) of each forward of the pass (gradients retained), and ``epsilon`` during the second pass. It reaches the
layers only through their public hooks (``register_quantized_hook``, ``register_weight_hook``); nothing is written
onto a layer.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from qfi_cli.quant.layers import quantized_layers


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

    >>> from qfi_cli.quant import quantize_model
    >>> model = quantize_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), first_last_bits=None)
    >>> sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    >>> nn.functional.cross_entropy(model(x), y).backward()
    >>> sam.first_step()                                    # epsilon on, gradients zeroed
    >>> nn.functional.cross_entropy(model(x), y).backward()
    >>> sam.second_step()                                   # epsilon off, base optimizer stepped
    >>> loss, logits = sam.step(lambda: (nn.functional.cross_entropy(out := model(x), y), out))  # the same at once
    >>> logits.shape, [sam.epsilon(m) for m in sam.layers]
    (torch.Size([16, 2]), [None, None])
    """

    def __init__(self, model: nn.Module, base_optimizer: torch.optim.Optimizer, rho: float = 0.05,
                 adaptive: bool = False, eta: float = 0.01, grad_clip: float | None = None) -> None:
        self.model, self.base_optimizer = model, base_optimizer
        self.rho, self.adaptive, self.eta, self.grad_clip = float(rho), adaptive, float(eta), grad_clip
        self.layers = [m for _, m in quantized_layers(model)]
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        self._handles = [m.register_quantized_hook(self._keep(m.weight)) for m in self.layers] if self.rho > 0 else []
        self._perturbing: list[RemovableHandle] = []
        self._second_pass: ExitStack | None = None

    def _keep(self, p: torch.Tensor) -> Callable[[nn.Module, torch.Tensor], None]:
        """The hook that keeps each training forward's clean Q(w) of weight ``p`` (a copy of the model is ignored)."""
        def keep(layer: nn.Module, w_q: torch.Tensor) -> None:
            if layer.weight is p and layer.training and w_q.requires_grad:
                w_q.retain_grad()  # the clean Q(w): SAM ascends along its gradient (seed's solution C)
                self.state[p].setdefault("quantized", []).append(w_q)
        return keep

    def _perturb(self, layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
        eps = self.state[layer.weight].get("epsilon") if layer.weight in self.state else None
        return w if eps is None else w + eps

    def kept(self, layer: nn.Module) -> list[torch.Tensor]:
        """The clean Q(w) of each forward of this pass that ``layer`` kept (gradients retained; empty without)."""
        return self.state[layer.weight].get("quantized", []) if layer.weight in self.state else []

    def epsilon(self, layer: nn.Module) -> torch.Tensor | None:
        """The perturbation the second pass adds to ``layer``'s weight (None outside it)."""
        return self.state[layer.weight].get("epsilon") if layer.weight in self.state else None

    def _clip(self) -> None:
        if self.grad_clip:
            params = [p for g in self.base_optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.grad_clip)

    @torch.no_grad()
    def _set_epsilon(self) -> None:
        tracked = []
        for m in self.layers:
            kept = self.kept(m)
            grads = [w.grad for w in kept if w.grad is not None]
            if grads:
                tracked.append((m, kept[0].detach(), torch.stack(grads).sum(0) if len(grads) > 1 else grads[0]))
        scaled = [g * (w.abs() + self.eta) if self.adaptive else g for _, w, g in tracked]
        norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2) if scaled else torch.tensor(0.0)
        factor = self.rho / norm if norm > 0 else 0.0  # a zero gradient leaves nothing to ascend
        for (m, w, _), s in zip(tracked, scaled):
            self.state[m.weight]["epsilon"] = (s * (w.abs() + self.eta) if self.adaptive else s) * factor
        if not self._perturbing:
            self._perturbing = [m.register_weight_hook(self._perturb) for m in self.layers]

    def first_step(self) -> None:
        """After the first backward: set epsilon, zero the gradients, freeze BN statistics for the second pass."""
        self._set_epsilon()
        self._release_quantized()
        self.base_optimizer.zero_grad(set_to_none=True)
        self._second_pass = ExitStack()
        self._second_pass.enter_context(frozen_bn_stats(self.model))

    def second_step(self) -> None:
        """After the second backward: clear epsilon, restore BN, clip, step the base optimizer."""
        self.clear()
        self._clip()
        self.base_optimizer.step()

    def step(self, closure: Callable[[], Any], backward: bool = True) -> tuple[torch.Tensor, Any]:
        """One SAM step (two passes; one when rho is 0). ``closure()`` runs the forward and returns the loss or
        ``(loss, output)``; returns the first pass's ``(loss detached, output)`` (output None without one).
        ``backward=False``: the closure runs its own backward passes (the gradients it leaves are the pass's)."""
        self.base_optimizer.zero_grad(set_to_none=True)
        first = closure()
        loss, output = first if isinstance(first, tuple) else (first, None)
        if backward:
            loss.backward()
        if self.rho > 0:
            try:
                self.first_step()
                second = closure()
                if backward:
                    (second[0] if isinstance(second, tuple) else second).backward()
            finally:
                self.clear()
        self._clip()
        self.base_optimizer.step()
        self.clear()
        return loss.detach(), output

    def _release_quantized(self) -> None:
        for state in self.state.values():
            state.pop("quantized", None)

    def clear(self) -> None:
        """Remove every epsilon and the kept quantized weights; end the second pass (BN statistics restored)."""
        for handle in self._perturbing:
            handle.remove()
        self._perturbing = []
        for state in self.state.values():
            state.pop("epsilon", None)
        self._release_quantized()
        if self._second_pass is not None:
            self._second_pass.close()
            self._second_pass = None

    def remove(self) -> None:
        """Detach SAM from the layers for good (``clear()``, then its hooks removed)."""
        self.clear()
        for handle in self._handles:
            handle.remove()
        self._handles = []
