"""The report's figures: ``ber_curve.png`` (accuracy against p) and ``rerr_curve.png`` (RErr against p), on a
log p axis, one line per configuration (its training seeds aggregated) with its 95% CI band, and the clean value
as a dashed line of the same colour.

When a second factor varies beside the main one (``recipe`` if swept, else the first factor that varies), the
figure has one panel per value of the others (say one per weight bit width), so that each panel compares the
main factor's levels on the same footing; the panel title names the other factors' values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qfi_cli.io import atomic_write
from qfi_cli.report.collect import RECIPE_KEY
from qfi_cli.report.study import Config, Study, build_study
from qfi_cli.report.format import fmt_p
from qfi_cli.stats import describe_ci

MAX_PANELS = 6
_METRICS = {
    "accuracy": ("accuracy (%)", "accuracy under random bit errors"),
    "rerr": ("robust error RErr (%)", "robust error (RErr) under random bit errors"),
}


def _layout(study: Study) -> tuple[str | None, list[str]]:
    """The main factor (one line per level) and the panel factors (one panel per combination of theirs)."""
    varying = [k for k in study.factors if len({repr(c.values.get(k)) for c in study.configs}) > 1]
    if not varying:
        return None, []
    main = RECIPE_KEY if RECIPE_KEY in varying else varying[0]
    others = [k for k in varying if k != main]
    panels = {tuple(repr(c.values.get(k)) for k in others) for c in study.configs}
    return (main, others) if 1 < len(panels) <= MAX_PANELS else (None, [])


def _series(study: Study, config: Config, metric: str) -> tuple[list[float], list[float], list[float],
                                                                  list[float], float | None]:
    """x (p > 0), mean, low, high (in %, NaN where missing) and the clean value (in %) of one configuration."""
    xs, ys, lows, highs = [], [], [], []
    for ber in study.bers:
        cell = study.cell(config, ber)
        if cell is None or ber <= 0:
            continue
        est = cell.accuracy if metric == "accuracy" else cell.rerr
        if est.mean is None:
            continue
        xs.append(ber)
        ys.append(100 * est.mean)
        lows.append(math.nan if est.low is None else 100 * est.low)
        highs.append(math.nan if est.high is None else 100 * est.high)
    clean = study.clean_error[config.key].mean
    if clean is not None:
        clean = 100 * (1 - clean if metric == "accuracy" else clean)
    return xs, ys, lows, highs, clean


_MARKERS = "osD^vP*Xh<>"


def _panels(study: Study, others: list[str]) -> dict[tuple, list[Config]]:
    """The study's configurations grouped into panels, one per combination of the ``others`` factors."""
    panels: dict[tuple, list[Config]] = {}
    for c in study.configs:
        panels.setdefault(tuple(repr(c.values.get(k)) for k in others), []).append(c)
    return panels or {(): []}


def _colors(count: int) -> list[Any]:
    """Line colours for ``count`` lines: matplotlib's cycle up to 10, else tab20."""
    import matplotlib

    return [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]] if count <= 10 else \
        [matplotlib.colormaps["tab20"](i) for i in range(20)]


def _draw_lines(ax: Any, configs: list[Config], study: Study, metric: str, main: str | None, others: list[str],
                levels: list[str], colors: list[Any], handles: dict[str, Any]) -> bool:
    """Plot each configuration's curve, CI band and clean line on ``ax``, adding legend handles to ``handles``;
    whether anything was drawn."""
    from matplotlib.lines import Line2D

    drawn = False
    for config in configs:
        index = levels.index(repr(config.values.get(main))) if main else study.configs.index(config)
        color, marker = colors[index % len(colors)], _MARKERS[index % len(_MARKERS)]
        xs, ys, lows, highs, clean = _series(study, config, metric)
        if xs:
            ax.plot(xs, ys, color=color, marker=marker, markersize=5, linewidth=1.8)
            if any(not math.isnan(v) for v in lows + highs):
                ax.fill_between(xs, lows, highs, color=color, alpha=0.15, linewidth=0)
            drawn = True
        if clean is not None:
            ax.axhline(clean, color=color, linestyle="--", linewidth=1.0, alpha=0.7)
            drawn = True
        label = f"{main}={config.shown.get(main, config.values.get(main))}" if main and others else config.label
        handles.setdefault(label, Line2D([], [], color=color, marker=marker if xs else None, label=label))
    return drawn


def _format_axes(ax: Any, ticks: list[float], others: list[str], configs: list[Config], drawn: bool) -> None:
    """Log-scale p axis with the rates as ticks, grid, the panel's title, and a notice when nothing was drawn."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    if 0 < len(ticks) <= 8:
        ax.set_xticks(ticks, [fmt_p(p) for p in ticks])
        ax.xaxis.set_minor_locator(NullLocator())  # the rates are the ticks (minor ones cost half the drawing)
    ax.set_xlabel("bit error rate p (log scale; each stored weight bit flips with probability p)", fontsize=10)
    ax.tick_params(labelsize=10)
    ax.grid(True, which="major", alpha=0.35)
    if others:
        ax.set_title(" ".join(f"{k}={configs[0].shown.get(k, configs[0].values.get(k))}" for k in others),
                     fontsize=11)
    if not drawn:
        ax.text(0.5, 0.5, "no successful points to plot", transform=ax.transAxes, ha="center",
                va="center", fontsize=12, color="0.4")


def _subject(ok: list[dict[str, Any]]) -> str:
    """What the ok rows measured: their models (and data sets), or "sweep"."""
    models = sorted({str(r["_model"]) for r in ok if r.get("_model") is not None})
    datasets = sorted({str(r["_dataset"]) for r in ok if r.get("_dataset") is not None})
    return " / ".join(models) + (f" on {' / '.join(datasets)}" if datasets else "") if models else "sweep"


def _legend_note(ok: list[dict[str, Any]], study: Study) -> str | None:
    """The legend's title: trials per point, training seeds per line and the band's meaning (None without both)."""
    trials = sorted({r["trials"] for r in ok})
    seeds = study.seed_counts()
    note = None
    if trials and seeds:
        n_trials = str(trials[0]) if len(trials) == 1 else f"{trials[0]}-{trials[-1]}"
        n_seeds = str(min(seeds)) if min(seeds) == max(seeds) else f"{min(seeds)}-{max(seeds)}"
        plural = "" if n_seeds == "1" else "s"
        note = (f"{n_trials} trials per point, {n_seeds} training seed{plural} per line (mean over seeds)\n"
                f"band: {describe_ci(seeds, sequential=study.sequential)}")
    return note


def _legend(fig: Any, handles: dict[str, Any], note: str | None) -> None:
    """The figure's legend below the panels: the lines, the clean line and the CI band, titled ``note``."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    entries = [*handles.values(), Line2D([], [], color="0.35", linestyle="--", label="clean (no faults)"),
               Patch(facecolor="0.35", alpha=0.25, label="95% CI")]
    longest = max(len(h.get_label()) for h in entries)
    ncols = min(len(entries), 4 if longest <= 24 else 2 if longest <= 48 else 1)
    fig.legend(handles=entries, loc="outside lower center", ncols=ncols, fontsize=9, framealpha=0.9,
               title=note, title_fontsize=8, alignment="left")


def curve_figure(study: Study, rows: list[dict[str, Any]], metric: str = "accuracy") -> Any:
    """The matplotlib Figure (Agg canvas, no pyplot state) of ``metric`` ("accuracy" or "rerr") against p."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ylabel, what = _METRICS[metric]
    main, others = _layout(study)
    panels = _panels(study, others)
    n = len(panels)
    fig = Figure(figsize=(max(8.0, min(6.0 * n, 18.0)), 6.0), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    levels = list(dict.fromkeys(repr(c.values.get(main)) for c in study.configs)) if main else []
    colors = _colors(len(levels) if main else len(study.configs))
    ticks = [p for p in study.bers if p > 0]
    drawn, handles = False, {}
    for ax, configs in zip(axes, panels.values()):
        drawn = _draw_lines(ax, configs, study, metric, main, others, levels, colors, handles) or drawn
        _format_axes(ax, ticks, others, configs, drawn)  # drawn: in this or an earlier panel
    axes[0].set_ylabel(ylabel, fontsize=11)
    ok = [r for r in rows if r.get("status") == "ok"]
    fig.suptitle(f"{_subject(ok)}: {what}", fontsize=13)
    note = _legend_note(ok, study)
    if drawn:
        _legend(fig, handles, note)
    return fig


def ber_figure(rows: list[dict[str, Any]], study: Study | None = None) -> Any:
    """Accuracy (%) against p: the Figure that ``plot_ber_curve`` saves."""
    return curve_figure(build_study(rows) if study is None else study, rows, "accuracy")


def rerr_figure(rows: list[dict[str, Any]], study: Study | None = None) -> Any:
    """RErr (%) against p: the Figure that ``plot_rerr_curve`` saves."""
    return curve_figure(build_study(rows) if study is None else study, rows, "rerr")


def _save(fig: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=150))


def plot_ber_curve(rows: list[dict[str, Any]], path: str | Path, study: Study | None = None) -> Path:
    """Write ``ber_figure`` as a PNG (atomically); return its path. Failed points and p = 0 are left out of the
    curves (p = 0 cannot sit on a log axis: its accuracy is the clean one, drawn dashed)."""
    return _save(ber_figure(rows, study), path)


def plot_rerr_curve(rows: list[dict[str, Any]], path: str | Path, study: Study | None = None) -> Path:
    """Write ``rerr_figure`` as a PNG (atomically); return its path. The dashed line is the clean error."""
    return _save(rerr_figure(rows, study), path)
