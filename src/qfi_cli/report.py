"""Sweep reports: gather a sweep's ``results.json`` files into rows, ``summary.csv``, ``ber_curve.png``,
paired per-trial differences between configurations, and Rich tables.

A sweep directory holds one subdirectory per point (nested at any depth), each with a ``results.json`` once
the point has run (``status`` "ok" or "failed"). Directories without one (``models/``, points not run yet)
are skipped. ``aggregate`` does everything; the Hydra callback and ``qfi report DIR`` call it.

>>> import tempfile, pathlib
>>> from qfi_cli.io import write_json
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = write_json(d / "p0" / "results.json", {"status": "failed", "error": "boom", "point": {"fault.ber": 0.1}})
>>> [(r["ber"], r["status"], r["error"], r["dir"]) for r in collect(d)]
[(0.1, 'failed', 'boom', 'p0')]
"""

from __future__ import annotations

import csv
import math
import os
from itertools import combinations
from pathlib import Path
from typing import Any, Iterable

from rich import box
from rich.console import Console
from rich.table import Table

from qfi_cli.errors import QfiError
from qfi_cli.io import atomic_write, read_json
from qfi_cli.stats import t_interval

RESULTS = "results.json"
SUMMARY = "summary.csv"
CURVE = "ber_curve.png"
BER_KEY = "fault.ber"
# The columns of a row after the swept keys, in summary.csv order.
COLUMNS = ("ber", "trials", "clean_accuracy", "accuracy_mean", "accuracy_std", "ci95_low", "ci95_high",
           "rerr_mean", "status", "error", "dir")


# ---------------------------------------------------------------------------------------------------- collect

def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _one_line(text: Any) -> str:
    text = str(text or "").strip()
    return text.splitlines()[0] if text else ""


def _result_files(root: Path) -> list[Path]:
    """Every file named exactly results.json under ``root``, outside hidden directories, in path order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if RESULTS in filenames and os.path.isfile(os.path.join(dirpath, RESULTS)):
            found.append(Path(dirpath) / RESULTS)
    return found


def pending_points(sweep_dir: str | Path) -> list[str]:
    """Point directories without a results.json: not run yet or interrupted (relative paths, sorted).

    A point directory is one Hydra made (it holds ``.hydra/``) or an empty one; directories with other content
    and no results.json (``models/<digest>/`` with its checkpoint) are not points.
    """
    root = Path(sweep_dir)
    pending = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if RESULTS in filenames:
            dirnames[:] = []  # a finished point: whatever lies below belongs to it
            continue
        hydra_made = (here / ".hydra").is_dir()
        empty = not filenames and not any(os.scandir(here))
        if here != root and (hydra_made or empty):
            pending.append(here.relative_to(root).as_posix())
    return pending


def _row(path: Path, root: Path) -> dict[str, Any]:
    rel = path.parent.relative_to(root).as_posix()
    try:
        res = read_json(path)
        if not isinstance(res, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return {"_point": {}, "ber": None, "status": "unreadable",
                "error": f"cannot read {RESULTS}: {type(e).__name__}", "dir": rel}
    point = res.get("point") if isinstance(res.get("point"), dict) else {}
    ci = res.get("accuracy_ci95")
    ci = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
    status = str(res.get("status") or ("ok" if "accuracy_mean" in res else "unknown"))
    ber = _float(res.get("ber"))
    if ber is None:
        ber = _float(point.get(BER_KEY))
    accuracies = res.get("accuracies")
    return {
        "_point": {k: v for k, v in point.items() if k != BER_KEY},
        "ber": ber, "trials": res.get("trials"),
        "clean_accuracy": _float(res.get("clean_accuracy")),
        "accuracy_mean": _float(res.get("accuracy_mean")), "accuracy_std": _float(res.get("accuracy_std")),
        "ci95_low": _float(ci[0]), "ci95_high": _float(ci[1]), "rerr_mean": _float(res.get("rerr_mean")),
        "status": status, "error": "" if status == "ok" else _one_line(res.get("error") or status),
        "dir": rel,
        "_accuracies": [float(a) for a in accuracies] if isinstance(accuracies, list) else None,
        "_seed": res.get("seed"), "_model": res.get("model"), "_wbits": res.get("wbits"),
        "_dataset": res.get("dataset"),
    }


def _sort_value(value: Any) -> tuple:
    """Numbers (and numeric strings) in numeric order, before text; missing values first."""
    if value is None or value == "":
        return (0, 0.0, "")
    number = _float(value)
    if number is not None and not math.isnan(number):
        return (1, number, "")
    return (2, 0.0, str(value))


def swept_keys(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The swept keys (other than the BER) of ``rows``, in order of first appearance.

    >>> swept_keys([{"sam.rho": 0.0, "ber": 0.1, "status": "ok", "_seed": 0}])
    ['sam.rho']
    """
    keys: dict[str, None] = {}
    for row in rows:
        for k in row:
            if k not in COLUMNS and not k.startswith("_"):
                keys.setdefault(k, None)
    return list(keys)


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per sweep point, sorted by configuration then BER.

    A row holds the swept values (each key of the point but ``fault.ber``), then ``ber``, ``trials``,
    ``clean_accuracy``, ``accuracy_mean``, ``accuracy_std``, ``ci95_low``, ``ci95_high``, ``rerr_mean``,
    ``status``, ``error`` ("" when ok) and ``dir`` (relative to ``sweep_dir``). Missing values are None.
    Keys starting with ``_`` are private (per-trial accuracies, seed, model, ...), for ``paired_differences``.
    Configurations are ordered by their swept values, numbers numerically (4 before 16).

    Raises QfiError when ``sweep_dir`` does not exist or holds no results.json.
    """
    root = Path(sweep_dir)
    if not root.exists():
        raise QfiError(f"sweep directory not found: {root}")
    if not root.is_dir():
        raise QfiError(f"not a directory: {root} (pass the sweep directory that holds the points)")
    files = _result_files(root)
    if not files:
        raise QfiError(f"no {RESULTS} under {root}: not a sweep directory, or no point has finished yet")
    raw = [_row(f, root) for f in files]
    keys: dict[str, None] = {}
    for r in raw:
        for k in r["_point"]:
            keys.setdefault(k, None)
    rows = []
    for r in raw:
        point = r.pop("_point")
        rows.append({**{k: point.get(k) for k in keys}, **{c: r.get(c) for c in COLUMNS},
                     **{k: v for k, v in r.items() if k.startswith("_")}})
    swept = list(keys)

    def order(row: dict[str, Any]) -> tuple:
        config = [row.get(k) for k in swept] if any(row.get(k) is not None for k in swept) else \
            [row.get("_model"), row.get("_wbits")]
        return (tuple(_sort_value(v) for v in config), config_label(row), _sort_value(row.get("ber")), row["dir"])

    return sorted(rows, key=order)


def config_label(row: dict[str, Any]) -> str:
    """What tells one configuration (one line of the plot) from another: its swept values other than the BER;
    the model name and weight bits when nothing else was swept.

    >>> config_label({"quant.wbits": 4, "sam.rho": 0.05, "ber": 1e-4, "status": "ok"})
    'quant.wbits=4 sam.rho=0.05'
    >>> config_label({"ber": 1e-4, "status": "ok", "_model": "digits_cnn", "_wbits": 8})
    'digits_cnn w8'
    """
    parts = [f"{k}={row[k]}" for k in swept_keys([row]) if row[k] is not None and row[k] != ""]
    if parts:
        return " ".join(parts)
    model, wbits = row.get("_model"), row.get("_wbits")
    if model is None and wbits is None:
        return "default"
    return f"{model if model is not None else '?'} w{wbits if wbits is not None else '?'}"


# ---------------------------------------------------------------------------------------------------- summary

def write_summary(sweep_dir: str | Path, rows: list[dict[str, Any]] | None = None) -> Path:
    """Write ``summary.csv`` into ``sweep_dir`` (atomically): swept keys, then ``COLUMNS``; None as "".

    ``rows`` defaults to ``collect(sweep_dir)``. Returns the path.
    """
    rows = collect(sweep_dir) if rows is None else rows
    header = [*swept_keys(rows), *COLUMNS]

    def cell(value: Any) -> Any:
        return "" if value is None else value

    def write(f: Any) -> None:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow([cell(row.get(k)) for k in header])

    return atomic_write(Path(sweep_dir) / SUMMARY, write, mode="w")


# ---------------------------------------------------------------------------------------------------- plot

def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(config_label(row), []).append(row)
    return groups


def _nan(value: Any) -> float:
    number = _float(value)
    return math.nan if number is None else number


def plot_ber_curve(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Plot mean accuracy (%) against BER on a log axis, one line per configuration with its 95% CI band and
    its clean accuracy as a dashed line of the same colour; write a PNG (atomically) and return its path.

    Failed points are skipped; a BER of 0 cannot sit on a log axis, so it is left out of the curve (its
    accuracy is the clean one, drawn dashed).
    """
    fig = ber_figure(rows)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=150))


def ber_figure(rows: list[dict[str, Any]]) -> Any:
    """The matplotlib Figure (Agg canvas, no pyplot state) that ``plot_ber_curve`` saves."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ok = [r for r in rows if r.get("status") == "ok"]
    fig = Figure(figsize=(9, 5.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    markers = "osD^vP*Xh<>"
    handles, drawn = [], False
    for i, (label, group) in enumerate(_groups(ok).items()):
        color, marker = colors[i % len(colors)], markers[(i // len(colors)) % len(markers)]
        pts = sorted((r for r in group if (_float(r.get("ber")) or 0.0) > 0), key=lambda r: r["ber"])
        if pts:
            x = [r["ber"] for r in pts]
            y = [100 * _nan(r.get("accuracy_mean")) for r in pts]
            ax.plot(x, y, color=color, marker=marker, markersize=5, linewidth=1.8)
            # accuracy lies in [0, 100] %: clip the band there (NaN, a missing CI, stays NaN)
            lo = [min(max(100 * _nan(r.get("ci95_low")), 0.0), 100.0) for r in pts]
            hi = [min(max(100 * _nan(r.get("ci95_high")), 0.0), 100.0) for r in pts]
            if any(not math.isnan(v) for v in lo + hi):
                ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
            drawn = True
        clean = next((c for r in group if (c := _float(r.get("clean_accuracy"))) is not None), None)
        if clean is not None:
            ax.axhline(100 * clean, color=color, linestyle="--", linewidth=1.2, alpha=0.8)
            drawn = True
        handles.append(Line2D([], [], color=color, marker=marker if pts else None, label=label))
    ax.set_xscale("log")
    ax.set_xlabel("bit error rate (BER), log scale", fontsize=11)
    ax.set_ylabel("accuracy (%)", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", axis="x", alpha=0.12)
    models = sorted({str(r["_model"]) for r in ok if r.get("_model") is not None})
    datasets = sorted({str(r["_dataset"]) for r in ok if r.get("_dataset") is not None})
    trials = sorted({int(r["trials"]) for r in ok if isinstance(r.get("trials"), int)})
    what = " / ".join(models) + (f" on {' / '.join(datasets)}" if datasets else "") if models else "sweep"
    ax.set_title(f"{what}: accuracy under random bit errors", fontsize=13)
    if trials:
        n = str(trials[0]) if len(trials) == 1 else f"{trials[0]}-{trials[-1]}"
        fig.text(0.99, 0.005, f"{n} trials per point", ha="right", va="bottom", fontsize=8, color="0.4")
    if drawn:
        handles += [Line2D([], [], color="0.35", linestyle="--", label="clean accuracy (no faults)"),
                    Patch(facecolor="0.35", alpha=0.25, label="95% CI of the mean")]
        ax.legend(handles=handles, loc="best", fontsize=9, framealpha=0.9)
    else:
        ax.text(0.5, 0.5, "no successful points to plot", transform=ax.transAxes, ha="center", va="center",
                fontsize=12, color="0.4")
    return fig


# ---------------------------------------------------------------------------------------------------- paired

def paired_differences(sweep_dir_or_rows: str | Path | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired per-trial accuracy differences (a - b) between configurations.

    Two points pair when they share BER, seed, trial count (and dataset): fault patterns are keyed by
    (seed, trial, layer), so trial t of both saw the same faults and the differences cancel the luck of the
    draw. Each result holds ``a``, ``b`` (labels, a before b in row order), ``ber``, ``seed``, ``n``, ``mean``,
    ``std``, ``ci95_low``, ``ci95_high`` (Student-t, None when n < 2). Takes a sweep directory or
    ``collect`` rows (which keep the per-trial accuracies).
    """
    rows = collect(sweep_dir_or_rows) if isinstance(sweep_dir_or_rows, (str, Path)) else sweep_dir_or_rows
    cells: dict[tuple, dict[str, list[float]]] = {}
    for row in rows:
        accs = row.get("_accuracies")
        if row.get("status") != "ok" or not accs or row.get("ber") is None:
            continue
        if isinstance(row.get("trials"), int) and len(accs) != row["trials"]:
            continue
        key = (row["ber"], row.get("_seed"), len(accs), row.get("_dataset"))
        cells.setdefault(key, {}).setdefault(config_label(row), accs)
    out = []
    for (ber, seed, n, _), by_label in cells.items():
        for a, b in combinations(by_label, 2):
            diffs = [x - y for x, y in zip(by_label[a], by_label[b])]
            mean, std, low, high = t_interval(diffs)
            out.append({"a": a, "b": b, "ber": ber, "seed": seed, "n": n, "mean": mean, "std": std,
                        "ci95_low": low, "ci95_high": high})
    return out


# ---------------------------------------------------------------------------------------------------- render

def _pct(value: Any, digits: int = 2) -> str:
    number = _float(value)
    return "-" if number is None or math.isnan(number) else f"{100 * number:.{digits}f}"


def _ber(value: Any) -> str:
    number = _float(value)
    if number is None:
        return "-"
    return "0" if number == 0 else f"{number:.1e}"


def render_table(rows: list[dict[str, Any]], console: Console | None = None) -> Table:
    """Print the summary as a Rich table (BER in scientific notation, accuracies in % with their 95% CI)."""
    console = console or Console()
    keys = swept_keys(rows)
    trials = {row.get("trials") for row in rows if row.get("status") == "ok"}
    same = len(trials) == 1 and None not in trials  # one trial count: say it once, in the title
    title = "Accuracy under random bit errors" + (f" ({next(iter(trials))} trials per point)" if same else "")
    table = Table(title=title, title_style="bold", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for k in keys or ["config"]:
        table.add_column(k, no_wrap=True, min_width=min(len(k), 24), max_width=40)
    table.add_column("BER", justify="right", no_wrap=True)
    if not same:
        table.add_column("trials", justify="right", no_wrap=True)
    table.add_column("clean %", justify="right", no_wrap=True)
    table.add_column("accuracy % [95% CI]", justify="right", no_wrap=True)
    table.add_column("rerr %", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for row in rows:
        config = [("" if row.get(k) is None else str(row[k])) for k in keys] if keys else [config_label(row)]
        ok = row.get("status") == "ok"
        acc = _pct(row.get("accuracy_mean"))
        if ok and _float(row.get("ci95_low")) is not None and _float(row.get("ci95_high")) is not None:
            acc += f" [{_pct(row['ci95_low'])}, {_pct(row['ci95_high'])}]"
        status = "ok" if ok else f"[red]{row.get('status')}[/red]"
        n = [] if same else ["" if row.get("trials") is None else str(row["trials"])]
        table.add_row(*config, _ber(row.get("ber")), *n, _pct(row.get("clean_accuracy")), acc if ok else "-",
                      _pct(row.get("rerr_mean")) if ok else "-", status)
    console.print(table)
    for row in rows:
        if row.get("status") != "ok":
            console.print(f"[red]{row.get('status')}[/red] {row.get('dir')}: {row.get('error') or '?'}",
                          highlight=False, soft_wrap=True)
    return table


def render_paired(diffs: list[dict[str, Any]], console: Console | None = None) -> Table:
    """Print paired differences as a Rich table, in percentage points; green/red where the CI excludes 0."""
    console = console or Console()
    table = Table(title="Paired differences a - b (same faults per trial), percentage points", title_style="bold",
                  header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name, justify in (("a", "left"), ("b", "left"), ("BER", "right"), ("n", "right"),
                          ("mean", "right"), ("95% CI", "right")):
        table.add_column(name, justify=justify, no_wrap=name in ("BER", "mean", "95% CI"))
    for d in diffs:
        low, high = d.get("ci95_low"), d.get("ci95_high")
        ci = "-" if low is None or high is None else f"[{100 * low:+.2f}, {100 * high:+.2f}]"
        style = "green" if low is not None and low > 0 else "red" if high is not None and high < 0 else None
        table.add_row(d["a"], d["b"], _ber(d["ber"]), str(d["n"]), f"{100 * d['mean']:+.2f}", ci, style=style)
    console.print(table)
    return table


def aggregate(sweep_dir: str | Path, console: Console | None = None) -> list[dict[str, Any]]:
    """Report a sweep: ``collect``, write summary.csv and ber_curve.png into ``sweep_dir``, print the tables.

    Returns the rows. Called by the Hydra callback at the end of a multirun and by ``qfi report DIR``.
    """
    console = console or Console()
    root = Path(sweep_dir)
    rows = collect(root)
    summary = write_summary(root, rows)
    curve = plot_ber_curve(rows, root / CURVE)
    render_table(rows, console)
    diffs = paired_differences(rows)
    if diffs:
        render_paired(diffs, console)
    failed = sum(r.get("status") != "ok" for r in rows)
    pending = pending_points(root)
    notes = [f"{len(rows)} point(s)"]
    if failed:
        notes.append(f"{failed} failed")
    if pending:
        notes.append(f"{len(pending)} without {RESULTS} (not run or interrupted)")
    console.print(", ".join(notes))
    console.print(f"wrote {summary} and {curve}", soft_wrap=True, highlight=False)
    return rows
