"""``qfi sensitivity``: where faults hurt. For every quantized layer and every bit position of its codes (a *cell*),
the accuracy and robust error (RErr) with faults restricted to that cell, over trials; optionally the protection
budget curve.

One process, one model load, one quantization: the weights are frozen once and every cell's trials write their
faults in place and undo them (O(flips)). A cell is an injector restricted to one layer and one bit position
(``fault.layers=[<layer>] fault.bits=[<bit>]``), so cell (L, b) at trial t meets exactly the faults
``qfi inject-eval fault.layers=[L] fault.bits=[b]`` meets at trial t with the same fault seed: at a rate each of
the cell's bits fails with probability p; with a count exactly N of them fail.

The budget (``sensitivity.budget``): the whole model's RErr at the same rate as protection (``fault.protect``) is
added greedily, most damaging cell per protected bit first (damage = cell RErr - clean error, over the cell's
bits), then the same for whole layers, and with the MSB of every code protected. Protection leaves the protected
bits out of the pattern drawn without it, so every point of the curve meets the same faults elsewhere (paired).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qfi_cli.config import RunConfig
from qfi_cli.engine.common import predict_correct, resolve_device
from qfi_cli.engine.prefix import PrefixReuse
from qfi_cli.engine.evaluate import TrialStats, load_trained, rates, result_record, run_trials
from qfi_cli.errors import QfiError
from qfi_cli.faults import FaultInjector
from qfi_cli.faults.bits import resolve_bits
from qfi_cli.faults.config import FaultConfig
from qfi_cli.faults.selection import ProtectRule, exact, protect_cells
from qfi_cli.progress import Reporter
from qfi_cli.quant import frozen_weights, weight_bits_total


@dataclass
class Cell:
    """One layer x bit position: the bits exposed there (0: protected) and its trials (None when protected)."""

    layer: str
    bit: int
    width: int
    bits_exposed: int
    stats: TrialStats | None = None

    @property
    def label(self) -> str:
        return f"{self.layer}:{self.bit}"

    def summary(self) -> dict[str, Any]:
        return self.stats.summary() if self.stats is not None else {}


@dataclass
class BudgetPoint:
    """Whole-model RErr with protection: ``strategy`` none | cells | layers | msb, ``step`` (how many cells or
    layers are protected), ``added`` (what this step adds), ``bits_protected`` of the exposed bits and their
    ``fraction`` of all stored weight bits."""

    strategy: str
    step: int
    added: str
    bits_protected: int
    fraction: float
    stats: TrialStats


@dataclass
class SensitivityResult:
    """The sensitivity map of one model at one rate (or count), with the whole-model run and the budget."""

    ber: float | None
    count: int | None
    trials: int
    clean_accuracy: float
    clean_error: float
    cells: list[Cell]
    layers: list[tuple[str, int, int]]  # (name, weights, code width), in module order
    whole: dict[str, Any]  # the whole model at this rate: inject-eval's results.json record
    storage: dict[str, str | None] = field(default_factory=dict)  # layer -> float format (None: integer codes)
    budget: list[BudgetPoint] = field(default_factory=list)
    seconds: float = 0.0
    top: int = 10  # how many ranked cells to print (sensitivity.top)
    precision: float | None = None  # eval.precision: each cell ran trials until +-precision (trials: the cap)

    def trials_text(self, each: str = "each") -> str:
        """How many trials each cell (point) ran, for titles.

        >>> r = SensitivityResult(0.01, None, 1000, 0.98, 0.02, [], [], {}, precision=0.02)
        >>> r.trials_text(), dataclasses.replace(r, trials=10, precision=None).trials_text("per cell")
        ('trials each until the 95% CI is within +-2 points', '10 trials per cell')
        """
        if self.precision is None:
            return f"{self.trials} trials {each}"
        return f"trials {each} until the 95% CI is within +-{100 * self.precision:g} points"

    def ranked(self) -> list[Cell]:
        """Measured cells, highest RErr first (ties: layer order, MSB first)."""
        measured = [c for c in self.cells if c.stats is not None]
        return sorted(measured, key=lambda c: -c.summary()["rerr_mean"])


def _clean_stats(trials: int, accuracy: float, error: float) -> TrialStats:
    """What trials without any exposed bit give: the clean accuracy (and error) every time, with no forward."""
    return TrialStats([accuracy] * trials, [error] * trials, [0] * trials)


def _damage_per_bit(cells: list[Cell], clean_error: float) -> float:
    """RErr above the clean error that these cells' faults caused, per exposed bit."""
    bits = sum(c.bits_exposed for c in cells)
    return sum(c.summary()["rerr_mean"] - clean_error for c in cells) / bits if bits else 0.0


def sensitivity(cfg: RunConfig | dict[str, Any], checkpoint: str | Path, reporter: Reporter | None = None,
                expect: dict[str, Any] | None = None,
                on_result: Callable[[SensitivityResult], None] | None = None) -> list[SensitivityResult]:
    """The sensitivity map of ``checkpoint`` at each rate of ``cfg`` (``fault.ber`` / ``eval.bers``, or
    ``fault.count`` flips per cell), over ``cfg.eval.trials`` trials; with ``cfg.sensitivity.budget`` the
    protection budget too. ``on_result`` gets each rate's result when it is complete. Example::

        [res] = sensitivity(cfg, "runs/w8/model.pt")     # res.ranked()[0].label, res.whole["rerr_mean"], ...
    """
    cfg = RunConfig.from_dict(cfg)
    reporter = reporter or Reporter()
    fault = cfg.fault
    fault.check_run(cfg, "sensitivity")  # the pre-check's rules, for a config made for another command
    levels = rates(cfg)
    device = resolve_device(cfg.device)
    model, data, ckpt = load_trained(checkpoint, device, cfg.data.root, expect, cfg.trust())
    batch_size, limit, trials, seed = cfg.eval.batch_size, cfg.eval.limit, cfg.eval.most_trials(), cfg.eval.fault_seed
    stored = weight_bits_total(model)
    results = []
    with frozen_weights(model) if fault.persistence == "trial" else nullcontext():
        clean = predict_correct(model, data, batch_size, limit)
        clean_correct = clean[0]
        clean_accuracy = int(clean_correct.sum()) / clean_correct.numel()
        clean_error = int((~clean_correct).sum()) / clean_correct.numel()  # exactly what a fault-free trial gives

        reuse = PrefixReuse.build(model) if cfg.eval.prefix_reuse else None
        measure = functools.partial(_measure, model, data, cfg, clean, reuse)
        for ber, count in levels:
            start = time.perf_counter()
            plan, exposed0 = _plan(model, fault, seed)
            n_cells = sum(len(bits) for *_, bits in plan)
            steps = 1 + n_cells + ((n_cells + len(plan) + 1) if cfg.sensitivity.budget else 0)
            with reporter.task("sensitivity", total=steps * trials) as advance:
                whole_stats, _ = measure(fault, ber, count, advance, "whole model ")
                with FaultInjector(model, fault, seed=seed) as injector:
                    whole = result_record(cfg, whole_stats, injector, model, ckpt, checkpoint, clean_correct, ber,
                                          count, seed, device, 0.0)
                cells = _cells(plan, fault, lambda config, label: measure(config, ber, count, advance, label))
                result = SensitivityResult(ber, count, trials, clean_accuracy, clean_error, cells,
                                           [(n, m.weight.numel(), m.wbits) for n, m, _ in plan], whole,
                                           {n: (m.frozen_encoding or m.quantize_weight_clean()[1]).float_format
                                            for n, m, _ in plan}, top=cfg.sensitivity.top,
                                           precision=cfg.eval.precision)
                if cfg.sensitivity.budget:
                    result.budget = _budget(result, fault, exposed0, stored, whole_stats,
                                            lambda rules, label: measure(
                                                dataclasses.replace(fault, protect=[*fault.protect, *rules]), ber,
                                                None, advance, label))
            result.seconds = round(time.perf_counter() - start, 3)
            result.whole["seconds"] = result.seconds
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def _measure(model: Any, data: Any, cfg: RunConfig, clean: tuple[Any, int], reuse: PrefixReuse | None,
             config: FaultConfig, ber: float | None, count: int | None, advance: Callable,
             label: str) -> tuple[TrialStats, int]:
    """Trials of the model under ``config`` at ``ber`` / ``count`` (the clean result where no bit is exposed), and
    the bits exposed."""
    trials, correct, rule = cfg.eval.most_trials(), clean[0], cfg.eval.stopping()
    with FaultInjector(model, config, seed=cfg.eval.fault_seed) as injector:
        exposed = injector.exposed_weight_bits()
        if exposed == 0:  # known without a trial: as many as a fixed run (or the adaptive minimum) would show
            advance(trials, f"{label}protected")
            return _clean_stats(trials if rule is None else rule.min_trials, int(correct.sum()) / correct.numel(),
                                int((~correct).sum()) / correct.numel()), 0
        if count is not None and count > exposed:
            raise QfiError(f"--count {count} exceeds the {exposed} bits of {label.strip()}: give a smaller "
                           "count or a rate (--ber)")
        return run_trials(model, data, injector, range(trials), clean, cfg.eval.batch_size, cfg.eval.limit, ber,
                          count, advance=advance, label=label, stop=rule, reuse=reuse), exposed


def _plan(model: Any, fault: FaultConfig, seed: int) -> tuple[list[tuple[str, Any, list[int]]], int]:
    """The selected layers with the bit positions of their cells, and the weight bits exposed in all."""
    with FaultInjector(model, fault, seed=seed) as injector:
        plan = [(name, m, resolve_bits(fault.bits, m.wbits) or list(range(m.wbits))) for name, m in injector.layers]
        exposed = injector.exposed_weight_bits()
    if exposed == 0:
        raise QfiError("no weight bits are exposed to faults (check fault.layers, fault.bits and fault.protect)")
    return plan, exposed


def _cells(plan: list[tuple[str, Any, list[int]]], fault: FaultConfig,
           measure: Callable[[FaultConfig, str], tuple[TrialStats, int]]) -> list[Cell]:
    """Every cell of the plan measured (MSB first per layer): the fault config restricted to that layer and bit."""
    cells = []
    for name, m, bits in plan:
        for bit in reversed(bits):
            config = dataclasses.replace(fault, layers=[exact(name)], bits=[bit])
            stats, exposed = measure(config, f"{name} bit {bit} ")
            cells.append(Cell(name, bit, m.wbits, exposed, stats if exposed else None))
    return cells


def _budget(result: SensitivityResult, fault: FaultConfig, exposed0: int, stored: int, whole: TrialStats,
            measure: Callable[[list[ProtectRule], str], tuple[TrialStats, int]]) -> list[BudgetPoint]:
    """Whole-model runs with protection added greedily by damage per bit: cells, then layers; and MSB only."""
    clean_error = result.clean_error
    measured = [c for c in result.cells if c.stats is not None]
    order = sorted(measured, key=lambda c: -_damage_per_bit([c], clean_error))
    by_layer = {name: [c for c in measured if c.layer == name] for name, *_ in result.layers}
    layers = sorted((n for n in by_layer if by_layer[n]), key=lambda n: -_damage_per_bit(by_layer[n], clean_error))
    points = [BudgetPoint("none", 0, "", 0, 0.0, whole)]

    def point(strategy: str, step: int, added: str, rules: list[ProtectRule]) -> BudgetPoint:
        stats, exposed = measure(rules, f"protect {strategy} {step}: ")
        return BudgetPoint(strategy, step, added, exposed0 - exposed, (exposed0 - exposed) / stored, stats)

    for k, cell in enumerate(order, 1):
        points.append(point("cells", k, cell.label, protect_cells([(c.layer, c.bit) for c in order[:k]])))
    for k, name in enumerate(layers, 1):
        points.append(point("layers", k, name, protect_cells([(n, None) for n in layers[:k]])))
    points.append(point("msb", 1, "*:-1", [ProtectRule(bits=[-1]).validated()]))
    return points


__all__ = ["BudgetPoint", "Cell", "SensitivityResult", "sensitivity"]
