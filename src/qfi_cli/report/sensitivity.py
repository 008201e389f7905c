"""The files and console output of ``qfi sensitivity``: ``sensitivity.csv`` and ``sensitivity.png`` (a heatmap of
RErr per layer and bit position), ``budget.csv`` and ``budget.png`` (RErr against the fraction of stored bits
protected), and the ranked cells as a Rich table.

>>> import io, tempfile
>>> from qfi_cli.engine.evaluate import TrialStats
>>> from qfi_cli.engine.sensitivity import Cell, SensitivityResult
>>> cells = [Cell("fc", 1, 2, 40, TrialStats([0.5, 0.7], [0.5, 0.3], [1, 2])),
...          Cell("fc", 0, 2, 40, TrialStats([0.9, 0.9], [0.1, 0.1], [1, 1]))]
>>> res = SensitivityResult(0.01, None, 2, 0.9, 0.1, cells, [("fc", 40, 2)], {"rerr_mean": 0.6, "model": "m"})
>>> [p.name for p in write_sensitivity(tempfile.mkdtemp(), res)]
['sensitivity.csv', 'sensitivity.png']
>>> [(r["layer"], r["bit"], r["bit_role"], r["rank"], round(r["rerr_increase"], 6)) for r in cell_rows(res)]
[('fc', 1, 'MSB', 1, 0.3), ('fc', 0, 'LSB', 2, 0.0)]
>>> _ = render_sensitivity(res, Console(file=io.StringIO()))
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from qfi_cli.io import atomic_write
from qfi_cli.layout import BUDGET_CSV, BUDGET_PNG, SENSITIVITY_CSV, SENSITIVITY_PNG
from qfi_cli.report.format import fmt_p, pct, write_csv
from qfi_cli.stats import METHOD, SEQUENTIAL_METHOD, describe_ci

CELL_COLUMNS = ("layer", "bit", "bit_role", "width", "bits_exposed", "trials", "flips_mean", "accuracy_mean",
                "accuracy_ci95_low", "accuracy_ci95_high", "rerr_mean", "rerr_ci95_low", "rerr_ci95_high",
                "rerr_increase", "rank", "nan_trials", "protected", "forwards")
BUDGET_COLUMNS = ("strategy", "step", "added", "bits_protected", "fraction_protected", "accuracy_mean",
                  "accuracy_ci95_low", "accuracy_ci95_high", "rerr_mean", "rerr_ci95_low", "rerr_ci95_high",
                  "flips_mean")


def bit_role(bit: int, width: int, float_format: str | None = None) -> str:
    """What a bit position holds: sign / exponent / mantissa for floats, MSB (sign) / LSB for integer codes.

    >>> bit_role(7, 8), bit_role(0, 8), bit_role(14, 16, "fp16"), bit_role(9, 16, "fp16"), bit_role(3, 8)
    ('MSB', 'LSB', 'exponent', 'mantissa', '')
    """
    if float_format is not None:
        mantissa = {"fp32": 23, "fp16": 10, "bf16": 7}[float_format]
        return "sign" if bit == width - 1 else "exponent" if bit >= mantissa else "mantissa"
    return "MSB" if bit == width - 1 else "LSB" if bit == 0 else ""


def _rate(result: Any) -> str:
    return f"p = {fmt_p(result.ber)}" if result.ber is not None else f"{result.count} flips per cell"


def _ci(summary: dict[str, Any], key: str, i: int) -> float | None:
    ci = summary.get(key)
    return None if ci is None else ci[i]


def cell_rows(result: Any) -> list[dict[str, Any]]:
    """The rows of sensitivity.csv (``CELL_COLUMNS``), in layer order, MSB first; ``rank`` 1 = highest RErr."""
    ranks = {id(c): i for i, c in enumerate(result.ranked(), 1)}
    rows = []
    for c in result.cells:
        s = c.summary()
        rows.append({
            "layer": c.layer, "bit": c.bit, "bit_role": bit_role(c.bit, c.width, result.storage.get(c.layer)),
            "width": c.width, "bits_exposed": c.bits_exposed,
            "trials": result.trials if c.stats is None else len(c.stats.accuracies),
            "flips_mean": s.get("flips_mean"), "accuracy_mean": s.get("accuracy_mean"),
            "accuracy_ci95_low": _ci(s, "accuracy_ci95", 0), "accuracy_ci95_high": _ci(s, "accuracy_ci95", 1),
            "rerr_mean": s.get("rerr_mean"), "rerr_ci95_low": _ci(s, "rerr_ci95", 0),
            "rerr_ci95_high": _ci(s, "rerr_ci95", 1),
            "rerr_increase": None if c.stats is None else s["rerr_mean"] - result.clean_error,
            "rank": ranks.get(id(c)), "nan_trials": None if c.stats is None else c.stats.nan_trials,
            "protected": c.stats is None, "forwards": 0 if c.stats is None else c.stats.forwards})
    return rows


def budget_rows(result: Any) -> list[dict[str, Any]]:
    """The rows of budget.csv (``BUDGET_COLUMNS``)."""
    rows = []
    for p in result.budget:
        s = p.stats.summary()
        rows.append({"strategy": p.strategy, "step": p.step, "added": p.added, "bits_protected": p.bits_protected,
                     "fraction_protected": p.fraction, "accuracy_mean": s["accuracy_mean"],
                     "accuracy_ci95_low": _ci(s, "accuracy_ci95", 0), "accuracy_ci95_high": _ci(s, "accuracy_ci95", 1),
                     "rerr_mean": s["rerr_mean"], "rerr_ci95_low": _ci(s, "rerr_ci95", 0),
                     "rerr_ci95_high": _ci(s, "rerr_ci95", 1), "flips_mean": s["flips_mean"]})
    return rows


def _title(result: Any) -> str:
    whole = result.whole
    return f"{whole.get('model', 'model')} on {whole.get('dataset', '?')}"


def sensitivity_figure(result: Any) -> Any:
    """Heatmap (matplotlib Figure, Agg canvas): one row per layer, one column per bit position (MSB left), colour
    = RErr (%) with faults in that cell only; each cell printed with its value; protected cells hatched."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    layers = result.layers
    width = max(w for _, _, w in layers)
    grid = np.full((len(layers), width), np.nan)
    protected = []
    row_of = {name: i for i, (name, _, _) in enumerate(layers)}
    for c in result.cells:
        col = width - 1 - c.bit
        if c.stats is None:
            protected.append((row_of[c.layer], col))
        else:
            grid[row_of[c.layer], col] = 100 * c.summary()["rerr_mean"]
    fig = Figure(figsize=(min(max(6.0, 0.62 * width + 3.2), 22.0), max(3.2, 0.5 * len(layers) + 2.3)), dpi=150,
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    clean = 100 * result.clean_error
    finite = grid[np.isfinite(grid)]
    top = max(float(finite.max()) if finite.size else clean, clean + 1e-9)
    norm = PowerNorm(0.5, vmin=clean, vmax=top)  # square-root scale: small increases stay visible
    image = ax.imshow(grid, cmap="magma_r", norm=norm, aspect="auto", interpolation="nearest")
    ax.set_facecolor("0.92")
    fmt = next((result.storage.get(n) for n, _, w in layers if w == width), None)
    roles = [bit_role(b, width, fmt) for b in range(width)] + [None]
    ax.set_xticks(range(width), [f"{b}\n{roles[b]}" if roles[b] != roles[b + 1] else str(b)  # a role where it starts
                                 for b in reversed(range(width))], fontsize=8 if width > 16 else 9)
    ax.set_yticks(range(len(layers)), [f"{n}  ({numel:,} w, {w} b)" for n, numel, w in layers], fontsize=9)
    ax.set_xlabel("bit position in the stored code (MSB left, 0 = LSB)", fontsize=10)
    ax.set_xticks(np.arange(-0.5, width, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(layers), 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.2)
    ax.tick_params(which="minor", length=0)
    if width <= 16 and len(layers) <= 40:
        for (i, j), v in np.ndenumerate(grid):
            if math.isfinite(v):
                dark = float(norm(v)) > 0.45
                ax.text(j, i, f"{v:.1f}" if v >= 10 else f"{v:.2f}", ha="center", va="center", fontsize=7.5,
                        color="white" if dark else "black")
    for i, j in protected:
        ax.add_patch(_hatch(i, j))
        ax.text(j, i, "prot.", ha="center", va="center", fontsize=6.5, color="0.3")
    for i, (_, _, w) in enumerate(layers):
        for j in range(width - w):  # narrower codes: no such bit
            ax.text(j, i, "-", ha="center", va="center", fontsize=8, color="0.6")
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label(f"RErr (%) with faults in that cell only\n(square-root scale; lightest = clean error {clean:.2f}%)",
                  fontsize=9)
    whole = 100 * result.whole["rerr_mean"]
    fig.suptitle(f"{_title(result)}: where faults hurt ({_rate(result)}, {result.trials_text('per cell')})",
                 fontsize=12)
    ax.set_title(f"whole model at the same rate: RErr {whole:.2f}%", fontsize=9, color="0.3")
    return fig


def _hatch(i: int, j: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.55", linewidth=0)


def budget_figure(result: Any) -> Any:
    """RErr (%) against the fraction of stored weight bits protected: cells added greedily (most damage per bit
    first), whole layers likewise, and the MSB of every code; the clean error dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 5.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    none = [p for p in result.budget if p.strategy == "none"]
    styles = {"cells": ("C0", "o", "cells (layer x bit), most damage per bit first"),
              "layers": ("C2", "s", "whole layers, most damage per bit first")}
    for strategy, (color, marker, label) in styles.items():
        pts = none + [p for p in result.budget if p.strategy == strategy]
        xs = [100 * p.fraction for p in pts]
        ys, lows, highs = [], [], []
        for p in pts:
            s = p.stats.summary()
            ys.append(100 * s["rerr_mean"])
            lows.append(100 * (s["rerr_ci95"] or [s["rerr_mean"]] * 2)[0])
            highs.append(100 * (s["rerr_ci95"] or [s["rerr_mean"]] * 2)[1])
        ax.plot(xs, ys, color=color, marker=marker, markersize=3.5, linewidth=1.6, label=label)
        ax.fill_between(xs, lows, highs, color=color, alpha=0.15, linewidth=0)
        if strategy == "layers":
            for p, x, y in zip(pts[1:], xs[1:], ys[1:]):
                ax.annotate(f"+{p.added}", (x, y), textcoords="offset points", xytext=(4, 5), fontsize=7,
                            color=color)
    for p in result.budget:
        if p.strategy == "msb":
            s = p.stats.summary()
            ax.plot([100 * p.fraction], [100 * s["rerr_mean"]], "D", color="C3", markersize=8,
                    label=f"MSB of every code protected: RErr {100 * s['rerr_mean']:.2f}%")
    ax.axhline(100 * result.clean_error, color="0.35", linestyle="--", linewidth=1.0,
               label=f"clean error {100 * result.clean_error:.2f}%")
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.6)  # linear below 1%, logarithmic above: the first steps show
    ticks = [0, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlim(-0.05, 180)
    ax.set_xlabel("stored weight bits protected (%, symmetric log scale)", fontsize=10)
    ax.set_ylabel("robust error RErr (%), whole model", fontsize=10)
    ax.grid(True, alpha=0.35)
    method = SEQUENTIAL_METHOD if result.precision is not None else METHOD
    ax.legend(fontsize=8, loc="upper right", title=f"bands: 95% CI, {method}, over the trials", title_fontsize=8)
    fig.suptitle(f"{_title(result)}: protection budget ({_rate(result)}, {result.trials_text('per point')})",
                 fontsize=12)
    return fig


def _save(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=150))


def write_sensitivity(directory: str | Path, result: Any) -> list[Path]:
    """Write sensitivity.csv and sensitivity.png (and budget.csv, budget.png when the result has a budget) into
    ``directory``, atomically; returns their paths."""
    root = Path(directory)
    rows = cell_rows(result)
    written = [write_csv(root / SENSITIVITY_CSV, list(CELL_COLUMNS), [[r[k] for k in CELL_COLUMNS] for r in rows]),
               _save(sensitivity_figure(result), root / SENSITIVITY_PNG)]
    if result.budget:
        brows = budget_rows(result)
        written += [write_csv(root / BUDGET_CSV, list(BUDGET_COLUMNS), [[r[k] for k in BUDGET_COLUMNS]
                                                                          for r in brows]),
                    _save(budget_figure(result), root / BUDGET_PNG)]
    return written


def _interval(summary: dict[str, Any], key: str) -> str:
    mean, ci = summary[f"{key}_mean"], summary[f"{key}_ci95"]
    return pct(mean) + ("" if ci is None else f" [{pct(ci[0])}, {pct(ci[1])}]")


def render_sensitivity(result: Any, console: Console | None = None, top: int | None = None) -> Table:
    """Print the ``top`` cells (default ``result.top``) ranked by RErr, and the budget's landmarks if any."""
    console = console or Console()
    top = result.top if top is None else top
    table = Table(title=f"{_title(result)}: the {min(top, len(result.ranked()))} most sensitive cells "
                        f"({_rate(result)}, {result.trials_text()})",
                  caption=f"bits: bits exposed in the cell; flips: changed bits per trial; +pp: RErr above the "
                          f"clean error {pct(result.clean_error)}%; whole model at this rate: RErr "
                          f"{pct(result.whole['rerr_mean'])}%; "
                          f"{describe_ci(1, sequential=result.precision is not None)}",
                  title_style="bold", caption_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("#", "right"), ("layer", "left"), ("bit", "right"), ("bits", "right"),
                          ("flips", "right"), ("RErr % [95% CI]", "right"), ("+pp", "right")):
        table.add_column(name, justify=justify, no_wrap=name != "layer")
    short = {"exponent": "exp", "mantissa": "man"}
    for i, c in enumerate(result.ranked()[:top], 1):
        s = c.summary()
        role = bit_role(c.bit, c.width, result.storage.get(c.layer))
        table.add_row(str(i), c.layer, f"{c.bit} {short.get(role, role)}".strip(), f"{c.bits_exposed:,}",
                      f"{s['flips_mean']:.2f}", _interval(s, "rerr"), pct(s["rerr_mean"] - result.clean_error,
                                                                           signed=True))
    console.print(table)
    if result.budget:
        render_budget(result, console)
    return table


def render_budget(result: Any, console: Console) -> Table:
    """The budget's landmarks: no protection, MSB only, each layer step, and the cell steps that first bring RErr
    within 1, 0.5 and 0.1 percentage points of the clean error."""
    table = Table(title="protection budget: whole-model RErr", title_style="bold", header_style="bold",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("protected", "left"), ("bits protected %", "right"), ("RErr %", "right")):
        table.add_column(name, justify=justify)
    shown = [p for p in result.budget if p.strategy in ("none", "msb", "layers")]
    cells = [p for p in result.budget if p.strategy == "cells"]
    for gap in (0.01, 0.005, 0.001):
        hit = next((p for p in cells if p.stats.summary()["rerr_mean"] - result.clean_error <= gap), None)
        if hit is not None and hit not in shown:
            shown.append(hit)
    for p in sorted(shown, key=lambda p: (p.fraction, p.strategy)):
        what = {"none": "nothing", "msb": "MSB of every code",
                "layers": f"top {p.step} layer(s) (+{p.added})", "cells": f"top {p.step} cell(s) (+{p.added})"}
        table.add_row(what[p.strategy], f"{100 * p.fraction:.2f}", _interval(p.stats.summary(), "rerr"))
    console.print(table)
    return table
