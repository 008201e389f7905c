"""The report's figures: ``ber_curve.png`` (accuracy against p) and ``rerr_curve.png`` (RErr against p), on a
log p axis, one line per configuration (its training seeds aggregated) with its 95% CI band, and the clean value
as a dashed line of the same colour.

When a second factor varies beside the main one (``recipe`` if swept, else the first factor that varies), the
figure has one panel per value of the others (say one per weight bit width), so that each panel compares the
main factor's levels on the same footing; the panel title names the other factors' values. ``recipe`` (else
``sam.rho``) is the main factor by default, so a configuration and its SAM twin share a panel. ``FigureOptions``
(``qfi report --lines/--panels/--select/--logy/--format/--dpi/--size/--no-title``) overrides each choice.
Labels, colours and line styles come from ``report.labels`` (one table for every figure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qfi_cli.errors import QfiError
from qfi_cli.io import atomic_write
from qfi_cli.layout import BER_CURVE, RERR_CURVE
from qfi_cli.report.collect import RECIPE_KEY
from qfi_cli.report.labels import color_of, linestyle_of, row_label, value_label
from qfi_cli.report.study import Config, Study, build_study
from qfi_cli.report.format import fmt_p
from qfi_cli.stats import describe_ci

MAX_PANELS = 6
FORMATS = ("png", "pdf", "svg")
SAM_KEY = "sam.rho"
X_LABEL = "bit error rate p (log scale)"


@dataclass
class FigureOptions:
    """How the curves are drawn: ``lines`` (the factor with one line per value) and ``panels`` (one panel per
    value), None for the defaults; ``metrics`` drawn (``accuracy``: ber_curve, ``rerr``: rerr_curve); ``select``
    (factor -> the values kept, as text); ``logy``; ``formats`` written (png, pdf, svg: real text); ``dpi``;
    ``size`` (inches, width x height; None: by the panel count); ``title``: the figure's title.

    >>> FigureOptions(formats=("svg",)).validated().formats
    ('svg',)
    """

    lines: str | None = None
    panels: str | None = None
    metrics: tuple[str, ...] = ("accuracy", "rerr")
    select: dict[str, tuple[str, ...]] | None = None
    logy: bool = False
    formats: tuple[str, ...] = ("png",)
    dpi: int = 150
    size: tuple[float, float] | None = None
    title: bool = True

    def validated(self) -> "FigureOptions":
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise QfiError(f"--format takes {', '.join(FORMATS)} (comma-separated), got {','.join(self.formats)}")
        if not self.metrics or any(m not in _METRICS for m in self.metrics):
            raise QfiError(f"--y takes {', '.join(_METRICS)} (comma-separated), got {','.join(self.metrics)}")
        if not 20 <= self.dpi <= 1200:
            raise QfiError(f"--dpi must lie in [20, 1200], got {self.dpi}")
        if self.size is not None and not all(1 <= v <= 50 for v in self.size):
            raise QfiError(f"--size takes WIDTHxHEIGHT in inches, each in [1, 50], got {self.size}")
        return self

    def selected(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows ``select`` keeps (a factor's value compared as text: ``quant.wbits=4,8``, ``sam.rho=0.05``).

        >>> rows = [{"quant.wbits": 4}, {"quant.wbits": 8}, {"quant.wbits": 2}]
        >>> FigureOptions(select={"quant.wbits": ("4", "8")}).selected(rows)
        [{'quant.wbits': 4}, {'quant.wbits': 8}]
        """
        kept = rows
        for key, values in (self.select or {}).items():
            if not any(key in r for r in rows):
                raise QfiError(f"--select {key}: no result has that factor")
            kept = [r for r in kept if _text(r.get(key)) in values]
        if rows and not kept:
            raise QfiError("--select keeps no result: " + " ".join(f"{k}={','.join(v)}"
                                                                  for k, v in (self.select or {}).items()))
        return kept


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
_METRICS = {
    "accuracy": ("accuracy (%)", "accuracy under random bit errors"),
    "rerr": ("robust error RErr (%)", "robust error (RErr) under random bit errors"),
}


def _layout(study: Study, options: FigureOptions | None = None) -> tuple[str | None, list[str]]:
    """The main factor (one line per level) and the panel factors (one panel per combination of theirs)."""
    options = options or FigureOptions()
    varying = [k for k in study.factors if len({repr(c.values.get(k)) for c in study.configs}) > 1]
    for name, key in (("--lines", options.lines), ("--panels", options.panels)):
        if key is not None and key not in varying:
            raise QfiError(f"{name} {key}: not a factor that varies here (varying: {', '.join(varying) or 'none'})")
    if not varying:
        return None, []
    main = options.lines or next((k for k in (RECIPE_KEY, SAM_KEY) if k in varying and k != options.panels),
                                 next((k for k in varying if k != options.panels), None))
    others = [options.panels] if options.panels else [k for k in varying if k != main]
    panels = {tuple(repr(c.values.get(k)) for k in others) for c in study.configs}
    if options.panels or 1 < len(panels) <= MAX_PANELS:
        return main, [k for k in others if k]
    return (main, []) if len(varying) == 1 else (None, [])


def _first_row(study: Study, config: Config) -> dict[str, Any]:
    """A row of ``config`` (its results' facts: rho, widths, model)."""
    return next((c.rows[0] for c in study.cells.values() if c.config == config and c.rows), {})


def config_text(study: Study, config: Config, keys: list[str] | None = None) -> str:
    """``config`` as a legend says it: the values of ``keys`` (default: its factors but the seed) through the
    label table, or without factors its model, widths and recipe."""
    row = _first_row(study, config)
    keys = [k for k in config.values if k != "seed"] if keys is None else keys
    if not keys:
        return row_label(row) if row else config.label
    return ", ".join(value_label(k, config.values.get(k), rho=row.get("_rho"), shown=config.shown.get(k))
                     for k in keys)


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


def _style(study: Study, config: Config, main: str | None, levels: list[str]) -> tuple[str, str, Any]:
    """Colour, marker and line style of a configuration: the recipe's own colour (else the main factor's level,
    or the configuration's place), a line style per weight bit width."""
    index = levels.index(repr(config.values.get(main))) if main else study.configs.index(config)
    row = _first_row(study, config)
    recipe = config.values.get(RECIPE_KEY, row.get("_recipe"))
    # the recipe's colour unless the lines are another factor's levels (widths keep it: their style differs)
    color = color_of(recipe if main in (RECIPE_KEY, None, "quant.wbits") else None, index)
    wbits = config.values.get("quant.wbits", row.get("_wbits"))
    return color, _MARKERS[index % len(_MARKERS)], linestyle_of(wbits)


def _draw_lines(ax: Any, configs: list[Config], study: Study, metric: str, main: str | None, others: list[str],
                levels: list[str], handles: dict[str, Any]) -> bool:
    """Plot each configuration's curve, CI band and clean line on ``ax``, adding legend handles to ``handles``;
    whether anything was drawn."""
    from matplotlib.lines import Line2D

    drawn = False
    for config in configs:
        color, marker, style = _style(study, config, main, levels)
        xs, ys, lows, highs, clean = _series(study, config, metric)
        if xs:
            ax.plot(xs, ys, color=color, marker=marker, markersize=5, linewidth=1.8, linestyle=style, gid="curve")
            if any(not math.isnan(v) for v in lows + highs):
                ax.fill_between(xs, lows, highs, color=color, alpha=0.15, linewidth=0)
            drawn = True
        if clean is not None:
            ax.axhline(clean, color=color, linestyle="--", linewidth=1.0, alpha=0.7, gid="clean")
            drawn = True
        label = config_text(study, config, [main] if main and others else None)
        handles.setdefault(label, Line2D([], [], color=color, marker=marker if xs else None, linestyle=style,
                                         label=label))
    return drawn


def _format_axes(ax: Any, ticks: list[float], others: list[str], configs: list[Config], study: Study, drawn: bool,
                 logy: bool) -> None:
    """Log-scale p axis with the rates as ticks (one notation: ``fmt_p``), grid, the panel's title, and a notice
    when nothing was drawn."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    ax.set_xscale("log")
    if logy:  # plain numbers at 1, 2, 5 x 10^k (the rates' notation, not 10^k)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    if 0 < len(ticks) <= 8:
        ax.set_xticks(ticks, [fmt_p(p) for p in ticks])
        ax.xaxis.set_minor_locator(NullLocator())  # the rates are the ticks (minor ones cost half the drawing)
    ax.tick_params(labelsize=10)
    ax.grid(True, which="major", alpha=0.35)
    if others and configs:
        ax.set_title(config_text(study, configs[0], others), fontsize=11)
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
        per_line = "1 training seed per line" if n_seeds == "1" else f"mean over {n_seeds} training seeds per line"
        note = (f"{n_trials} trials per point, {per_line}\n"
                f"band: {describe_ci(seeds, sequential=study.sequential)}")
    return note


def _legend(fig: Any, handles: dict[str, Any], note: str | None) -> None:
    """The figure's legend below the panels: the lines, the clean line and the CI band, titled ``note``."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    first = next(iter(handles.values())).get_color() if handles else "0.35"
    entries = [*handles.values(), Line2D([], [], color="0.35", linestyle="--", label="clean (no faults)"),
               Patch(facecolor=first, alpha=0.25, label="95% CI (band in the line's colour)")]
    longest = max(len(h.get_label()) for h in entries)
    ncols = min(len(entries), 4 if longest <= 24 else 2 if longest <= 48 else 1)
    fig.legend(handles=entries, loc="outside lower center", ncols=ncols, fontsize=9, framealpha=0.9,
               title=note, title_fontsize=8, alignment="left")


def curve_figure(study: Study, rows: list[dict[str, Any]], metric: str = "accuracy",
                 options: FigureOptions | None = None) -> Any:
    """The matplotlib Figure (Agg canvas, no pyplot state) of ``metric`` ("accuracy" or "rerr") against p."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    options = options or FigureOptions()
    ylabel, what = _METRICS[metric]
    main, others = _layout(study, options)
    panels = _panels(study, others)
    n = len(panels)
    fig = Figure(figsize=options.size or (max(8.0, min(6.0 * n, 18.0)), 6.0), dpi=options.dpi,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    levels = list(dict.fromkeys(repr(c.values.get(main)) for c in study.configs)) if main else []
    ticks = [p for p in study.bers if p > 0]
    drawn, handles = False, {}
    for ax, configs in zip(axes, panels.values()):
        drawn = _draw_lines(ax, configs, study, metric, main, others, levels, handles) or drawn
        _format_axes(ax, ticks, others, configs, study, drawn, options.logy)  # drawn: this or an earlier panel
    axes[0].set_ylabel(ylabel, fontsize=11)
    axes[n // 2].set_xlabel(X_LABEL, fontsize=10)  # once, under the middle panel
    ok = [r for r in rows if r.get("status") == "ok"]
    if options.title:
        fig.suptitle(f"{_subject(ok)}: {what}", fontsize=13)
    note = _legend_note(ok, study)
    if drawn:
        _legend(fig, handles, note)
    return fig


def ber_figure(rows: list[dict[str, Any]], study: Study | None = None, options: FigureOptions | None = None) -> Any:
    """Accuracy (%) against p: the Figure that ``plot_ber_curve`` saves."""
    return curve_figure(build_study(rows) if study is None else study, rows, "accuracy", options)


def rerr_figure(rows: list[dict[str, Any]], study: Study | None = None, options: FigureOptions | None = None) -> Any:
    """RErr (%) against p: the Figure that ``plot_rerr_curve`` saves."""
    return curve_figure(build_study(rows) if study is None else study, rows, "rerr", options)


def save_figure(fig: Any, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` atomically in the format of ``path``'s suffix (png, pdf, svg; the SVG keeps its text as text,
    the PDF embeds TrueType fonts); return the path."""
    import matplotlib

    fmt = Path(path).suffix.lstrip(".") or "png"
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        return atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))


def plot_curves(rows: list[dict[str, Any]], root: str | Path, study: Study | None = None,
                options: FigureOptions | None = None) -> list[Path]:
    """Write the curves ``options`` asks for (``ber_curve`` and ``rerr_curve`` in each format) into ``root``, from
    the rows ``options.select`` keeps; their paths."""
    options = (options or FigureOptions()).validated()
    kept = options.selected(rows)
    study = build_study(kept) if study is None or kept is not rows else study
    names = {"accuracy": Path(BER_CURVE).stem, "rerr": Path(RERR_CURVE).stem}
    written = []
    for metric in options.metrics:
        fig = curve_figure(study, kept, metric, options)
        written += [save_figure(fig, Path(root) / f"{names[metric]}.{fmt}", options.dpi) for fmt in options.formats]
    return written


def plot_ber_curve(rows: list[dict[str, Any]], path: str | Path, study: Study | None = None,
                   options: FigureOptions | None = None) -> Path:
    """Write ``ber_figure`` (atomically, in ``path``'s format); return its path. Failed points and p = 0 are left
    out of the curves (p = 0 cannot sit on a log axis: its accuracy is the clean one, drawn dashed)."""
    return save_figure(ber_figure(rows, study, options), path, (options or FigureOptions()).dpi)


def plot_rerr_curve(rows: list[dict[str, Any]], path: str | Path, study: Study | None = None,
                    options: FigureOptions | None = None) -> Path:
    """Write ``rerr_figure`` (atomically, in ``path``'s format); return its path. The dashed line is the clean
    error."""
    return save_figure(rerr_figure(rows, study, options), path, (options or FigureOptions()).dpi)
