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


def curve_figure(study: Study, rows: list[dict[str, Any]], metric: str = "accuracy") -> Any:
    """The matplotlib Figure (Agg canvas, no pyplot state) of ``metric`` ("accuracy" or "rerr") against p."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullLocator

    ylabel, what = _METRICS[metric]
    main, others = _layout(study)
    panels: dict[tuple, list[Config]] = {}
    for c in study.configs:
        panels.setdefault(tuple(repr(c.values.get(k)) for k in others), []).append(c)
    panels = panels or {(): []}
    n = len(panels)
    fig = Figure(figsize=(max(8.0, min(6.0 * n, 18.0)), 6.0), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    levels = list(dict.fromkeys(repr(c.values.get(main)) for c in study.configs)) if main else []
    count = len(levels) if main else len(study.configs)
    colors = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]] if count <= 10 else \
        [matplotlib.colormaps["tab20"](i) for i in range(20)]
    markers = "osD^vP*Xh<>"
    ticks = [p for p in study.bers if p > 0]
    drawn, handles = False, {}
    for ax, configs in zip(axes, panels.values()):
        for config in configs:
            index = levels.index(repr(config.values.get(main))) if main else study.configs.index(config)
            color, marker = colors[index % len(colors)], markers[index % len(markers)]
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
    axes[0].set_ylabel(ylabel, fontsize=11)
    ok = [r for r in rows if r.get("status") == "ok"]
    models = sorted({str(r["_model"]) for r in ok if r.get("_model") is not None})
    datasets = sorted({str(r["_dataset"]) for r in ok if r.get("_dataset") is not None})
    subject = " / ".join(models) + (f" on {' / '.join(datasets)}" if datasets else "") if models else "sweep"
    fig.suptitle(f"{subject}: {what}", fontsize=13)
    trials = sorted({r["trials"] for r in ok})
    seeds = study.seed_counts()
    note = None
    if trials and seeds:
        n_trials = str(trials[0]) if len(trials) == 1 else f"{trials[0]}-{trials[-1]}"
        n_seeds = str(min(seeds)) if min(seeds) == max(seeds) else f"{min(seeds)}-{max(seeds)}"
        plural = "" if n_seeds == "1" else "s"
        note = (f"{n_trials} trials per point, {n_seeds} training seed{plural} per line (mean over seeds)\n"
                f"band: {describe_ci(seeds)}")
    if drawn:
        entries = [*handles.values(), Line2D([], [], color="0.35", linestyle="--", label="clean (no faults)"),
                   Patch(facecolor="0.35", alpha=0.25, label="95% CI")]
        longest = max(len(h.get_label()) for h in entries)
        ncols = min(len(entries), 4 if longest <= 24 else 2 if longest <= 48 else 1)
        fig.legend(handles=entries, loc="outside lower center", ncols=ncols, fontsize=9, framealpha=0.9,
                   title=note, title_fontsize=8, alignment="left")
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
