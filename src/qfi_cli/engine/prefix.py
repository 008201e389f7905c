"""Prefix reuse: a trial whose weight faults lie in some layers recomputes only what those layers feed.

Weight faults of a trial are written into the frozen weights before its forwards, so every value the model computes
before (and beside) the faulty layers is the clean model's, the same in every trial. ``PrefixReuse`` traces the
model once (``torch.fx``, quantized layers as leaves), and for a set of faulty layers runs the clean model once over
the test batches, keeping per batch the values the faulty part reads from the clean part (the *frontier*); a
trial's forward then runs only the nodes downstream of a faulty layer, from those values. The ops and their inputs
are the full forward's, so the logits are bit-identical (tests/test_prefix.py checks them and whole sensitivity
maps against the full forward).

Where it does not apply, callers get None and run the full forward: a model fx cannot trace (data-dependent
control flow), faults outside stored weights (activations, per-forward faults), or a frontier larger than
``max_bytes`` (default 512 MiB; it is held for the whole test split).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import fx, nn

from qfi_cli.data import InMemoryDataset
from qfi_cli.engine.common import scored
from qfi_cli.quant import quantized_layers

MAX_BYTES = 512 * 2**20


class _LeafTracer(fx.Tracer):
    """fx's tracer with every quantized layer, and every module of qfi's quantization (a wrapper such as the
    quantized MultiheadAttention), a leaf: one ``call_module`` node, its stored weights inside."""

    def __init__(self, leaves: set[int]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (id(m) in self.leaves or type(m).__module__.startswith("qfi_cli.quant")
                or super().is_leaf_module(m, qualname))


class PrefixReuse:
    """A traced model whose forwards reuse the clean values before and beside the faulty layers.

    >>> from qfi_cli.quant import quantize_model
    >>> net = quantize_model(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), "minmax", wbits=8)
    >>> reuse = PrefixReuse.build(net.eval())
    >>> len(reuse.downstream(["2"])), len(reuse.downstream(["0"]))  # nodes to run again: the last layer alone
    (1, 3)
    """

    def __init__(self, model: nn.Module, graph: fx.GraphModule) -> None:
        self.model, self.graph = model, graph
        self.by_module = {n.target: n for n in graph.graph.nodes if n.op == "call_module"}
        self.quantized = [name for name, _ in quantized_layers(model)]
        self._last: tuple[tuple, Callable[[], tuple[torch.Tensor, int]] | None] | None = None

    @classmethod
    def build(cls, model: nn.Module) -> "PrefixReuse | None":
        """Trace ``model`` (its quantized layers as leaves); None when fx cannot."""
        leaves = {id(m) for _, m in quantized_layers(model)}
        try:
            graph = fx.GraphModule(model, _LeafTracer(leaves).trace(model))
        except Exception:  # noqa: BLE001 - any tracing failure means: run the full forward
            return None
        return cls(model, graph)

    def for_injector(self, injector: Any, data: InMemoryDataset, batch_size: int,
                     limit: int | None = None) -> Callable[[], tuple[torch.Tensor, int]] | None:
        """The ``predictor`` of the layers where ``injector`` can fault stored weights, when it writes them in place
        once per trial (``writes_in_place``) and leaves some quantized layer clean; else None (the full forward).
        The last one is kept: the cells of one layer share it."""
        if not writes_in_place(injector) or not injector.config.weights_only:
            return None  # faults in biases / scales: the full forward
        layers = [name for name, m in injector.layers if injector.allowed_mask(name, m.wbits)]
        if not layers or len(layers) == len(self.quantized):
            return None
        key = (tuple(layers), batch_size, limit, id(data))
        if self._last is None or self._last[0] != key:
            self._last = (key, self.predictor(layers, data, batch_size, limit))
        return self._last[1]

    def node_of(self, layer: str) -> fx.Node | None:
        """The graph node computing ``layer``: its own, or that of the leaf module holding it."""
        parts = layer.split(".")
        for k in range(len(parts), 0, -1):
            node = self.by_module.get(".".join(parts[:k]))
            if node is not None:
                return node
        return None

    def downstream(self, layers: list[str]) -> set[str]:
        """Names (fx node names) of the nodes that depend on any of ``layers`` (the layers' own nodes included)."""
        todo = [n for n in map(self.node_of, layers) if n is not None]
        seen: set[fx.Node] = set()
        while todo:
            node = todo.pop()
            if node not in seen and node.op != "output":
                seen.add(node)
                todo.extend(node.users)
        return {n.name for n in seen}

    @torch.no_grad()
    def predictor(self, layers: list[str], data: InMemoryDataset, batch_size: int, limit: int | None = None,
                  max_bytes: int = MAX_BYTES) -> Callable[[], tuple[torch.Tensor, int]] | None:
        """``predict_correct`` for a model whose faults lie in ``layers`` only: a function giving per-sample
        correctness and the non-finite count, from the clean values it caches now (the model must be clean: call
        it before any trial's faults). None when a layer is not a node of the graph or the frontier would exceed
        ``max_bytes``."""
        if not layers or any(self.node_of(name) is None for name in layers):
            return None
        names = self.downstream(layers)
        nodes = list(self.graph.graph.nodes)
        part = [n for n in nodes if n.name in names or n.op == "output"]
        frontier = {a for n in part for a in n.all_input_nodes if a.name not in names}
        batches, size = [], 0
        for x, y in data.batches("test", batch_size, limit=limit):
            values = _run(self.graph, nodes, {}, x, keep=frontier)
            size += sum(v.numel() * v.element_size() for v in values.values() if isinstance(v, torch.Tensor))
            if size > max_bytes:
                return None
            batches.append((values, y))

        return _Predict(self.graph, part, batches)


class _Predict:
    """``predict_correct`` from cached frontier values: call it for (correct, non-finite count); ``logits()``."""

    def __init__(self, graph: fx.GraphModule, part: list[fx.Node], batches: list) -> None:
        self.graph, self.part, self.batches = graph, part, batches

    @torch.no_grad()
    def logits(self) -> list[torch.Tensor]:
        """The logits of every test batch."""
        return [_run(self.graph, self.part, env) for env, _ in self.batches]

    def __call__(self) -> tuple[torch.Tensor, int]:
        scores = [scored(out, y) for out, (_, y) in zip(self.logits(), self.batches)]
        return torch.cat([c for c, _ in scores]), sum(bad for _, bad in scores)


def writes_in_place(injector: Any) -> bool:
    """Whether ``injector``'s faults are stored-weight faults written into the frozen weights once per trial (so
    a trial's model is fixed during its forwards, and a trial that changed no bit is the clean model)."""
    return (not injector.config.activations and injector.config.persistence == "trial"
            and all(m.frozen_weight is not None for _, m in injector.layers))


def _run(graph: fx.GraphModule, nodes: list[fx.Node], env: dict[fx.Node, object], x: torch.Tensor | None = None,
         keep: set[fx.Node] | None = None) -> object:
    """Run ``nodes`` (graph order) from ``env`` (and the input ``x``): the output, or with ``keep`` the values of
    those nodes."""
    interp = fx.Interpreter(graph)
    interp.env = dict(env)
    for node in nodes:
        if node.op == "placeholder":
            interp.env[node] = x
        elif node.op == "output":
            return interp.run_node(node) if keep is None else {n: interp.env[n] for n in keep}
        else:
            interp.env[node] = interp.run_node(node)
    return {n: interp.env[n] for n in keep or ()}


__all__ = ["PrefixReuse", "writes_in_place"]
