"""Attack results in reports: one attack's curve (``attack_curve.png``), and a sweep's attack.json points as rows,
a study table column group (flips to target per configuration) and ``attacks.csv``: the report section
``attack`` (``report.sections``), registered here.

``collect_attacks(sweep_dir)`` reads every attack.json (hidden directories and ``models/`` skipped) into a row:
the point's swept values, ``clean_accuracy``, ``status``, ``error``, ``dir``, and private ``_`` keys (flips to
target, the random baseline at that count, the model's facts). ``attack_columns`` is a ``TABLE_GROUPS`` member:
flips to target as mean over training seeds [betting CI over seeds, values in [0, attack.flips + 1]], and the random baseline's accuracy at the
same numbers of flips.

>>> import tempfile, pathlib
>>> from qfi_cli.io import write_json
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> for s, n in ((0, 7), (1, 9)):
...     _ = write_json(d / f"seed={s}" / "attack.json", {"status": "ok", "point": {"seed": s}, "seed": s,
...         "flips_to_target": n, "flips_committed": n, "clean_accuracy": 0.98, "target_accuracy": 0.11,
...         "attack": {"flips": 100}, "random_at_target": {"flips": n, "accuracy_mean": 0.97}})
>>> rows = collect_attacks(d)
>>> [(r["dir"], r["status"], r["_flips_to_target"]) for r in rows]
[('seed=0', 'ok', 7), ('seed=1', 'ok', 9)]
>>> flips_estimate(rows).mean
8.0
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qfi_cli.io import atomic_write
from qfi_cli.layout import ATTACK, ATTACK_CURVE, ATTACKS_CSV
from qfi_cli.report.collect import (SEED_KEY, SHARPNESS, config_order, factors, point_keys, result_files, sort_value,
                                    stored_label, swept_keys)
from qfi_cli.report.fields import Invalid, integer, number, one_line, show
from qfi_cli.report.format import Column, pct, write_csv
from qfi_cli.report.sections import Section, register_section
from qfi_cli.report.study import Config, Estimate, Study
from qfi_cli.stats import describe_ci, describe_seed_range, seed_range


ATTACK_COLUMNS = ("flips_to_target", "flips_committed", "max_flips", "target_accuracy", "clean_accuracy",
                  "final_accuracy", "random_accuracy_at_target", "seconds_per_flip", "status", "error", "dir",
                  "train_seed")


# ---------------------------------------------------------------------------------------------------- rows

def _fields(res: dict[str, Any]) -> dict[str, Any]:
    """The checked numbers of an ok attack.json (raises Invalid naming the first that does not hold)."""
    committed = integer(res, "flips_committed", low=0)
    to_target = integer(res, "flips_to_target", low=0, required=False)
    if to_target is not None and to_target > committed:
        raise Invalid(f"flips_to_target is {to_target}, above flips_committed {committed}")
    settings = res.get("attack")
    if not isinstance(settings, dict):
        raise Invalid(f"attack is {show(settings)}, not an object")
    metrics = res.get("train_metrics")
    if metrics is not None and not isinstance(metrics, dict):
        raise Invalid(f"train_metrics is {show(metrics)}, not an object")
    random = res.get("random_at_target")
    if random is not None and not isinstance(random, dict):
        raise Invalid(f"random_at_target is {show(random)}, not an object")
    return {
        "clean_accuracy": number(res, "clean_accuracy"),
        "_flips_to_target": to_target, "_flips_committed": committed,
        "_max_flips": integer(settings, "flips", low=1, required=False),
        "_target": number(res, "target_accuracy"),
        "_final_accuracy": number(res, "final_accuracy", required=False),
        "_random_at_target": number(random or {}, "accuracy_mean", required=False),
        "_seconds_per_flip": number(res, "seconds_per_flip", high=None, required=False),
        "_model": res.get("model"), "_dataset": res.get("dataset"), "_recipe": res.get("recipe"),
        "_wbits": integer(res, "wbits", low=1, required=False),
        "_widths": stored_label(res),
        "_rho": number(res, "rho", low=0.0, high=None, required=False),
        **{f"_{k}": number(metrics or {}, k, low=None, high=None, required=False) for k in SHARPNESS},
    }


def _attack_row(path: Path, root: Path) -> dict[str, Any]:
    from qfi_cli.io import read_json

    rel = path.parent.relative_to(root).as_posix()
    try:
        res = read_json(path)
    except (OSError, ValueError, RecursionError) as e:
        return {"_point": {}, "dir": rel, "status": "unreadable",
                "error": f"cannot read {ATTACK}: {one_line(e) or type(e).__name__}"}
    if not isinstance(res, dict) or not isinstance(res.get("point", {}), dict):
        return {"_point": {}, "dir": rel, "status": "unreadable", "error": f"{ATTACK} is not a JSON object with a "
                                                                          "point object"}
    point = res.get("point", {})
    status = res.get("status")
    if status != "ok":
        return {"_point": point, "dir": rel, "_seed": point.get(SEED_KEY),
                "status": status if isinstance(status, str) and status else "invalid",
                "error": one_line(res.get("error")) or f"status is {show(status)}"}
    try:
        fields = _fields(res)
    except Invalid as e:
        return {"_point": point, "dir": rel, "_seed": point.get(SEED_KEY), "status": "invalid",
                "error": f"invalid {ATTACK}: {e}"}
    seed = res.get("seed") if isinstance(res.get("seed"), int) else point.get(SEED_KEY)
    return {"_point": point, **fields, "status": "ok", "error": "", "dir": rel, "_seed": seed}


def collect_attacks(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per attack.json under ``sweep_dir`` (none when it holds none or does not exist), sorted by
    configuration, then training seed. Keys: the swept values, ``clean_accuracy``, ``status``, ``error``,
    ``dir``, and private ``_flips_to_target``, ``_flips_committed``, ``_max_flips``, ``_target``,
    ``_random_at_target``, ``_seed`` ... (see ``ATTACK_COLUMNS`` for the csv)."""
    root = Path(sweep_dir)
    if not root.is_dir():
        return []
    raw = [_attack_row(p, root) for p in result_files(root, ATTACK)]
    keys = point_keys(raw)
    rows = []
    for r in raw:
        point = r.pop("_point")
        rows.append({**{k: point.get(k) for k in keys}, "clean_accuracy": None, **r})
    keys_ = factors(rows)
    return sorted(rows, key=lambda r: (config_order(r, keys_), sort_value(r.get("_seed")), r["dir"]))


# ---------------------------------------------------------------------------------------------------- numbers

def flips_estimate(rows: list[dict[str, Any]]) -> Estimate:
    """Flips to target over training seeds: mean [range over seeds]. A seed that never reached the target within its
    ``_max_flips`` counts as ``_max_flips + 1`` and the mean is then a lower bound (``low`` = mean, ``high`` =
    None)."""
    values, censored = [], False
    for r in rows:
        n = r.get("_flips_to_target")
        if n is None:
            censored = True
            n = (r.get("_max_flips") or r.get("_flips_committed") or 0) + 1
        values.append(float(n))
    if not values:
        return Estimate(None)
    mean = math.fsum(values) / len(values)
    if censored:
        return Estimate(mean, mean, None)
    return Estimate(mean, *seed_range(values))


def _flips_text(est: Estimate) -> str:
    if est.mean is None:
        return "-"
    if est.low is not None and est.high is None:
        return f"≥ {est.mean:.1f}"
    text = f"{est.mean:.1f}"
    return text + (f" [{est.low:.1f}, {est.high:.1f}]" if est.low is not None else "")


def _random_mean(rows: list[dict[str, Any]]) -> float | None:
    values = [r["_random_at_target"] for r in rows if r.get("_random_at_target") is not None]
    return math.fsum(values) / len(values) if values and len(values) == len(rows) else None


def attack_columns(study: Study) -> tuple[list, list[str]]:
    """Study table columns (``TABLE_GROUPS``): flips to target, mean over training seeds [CI over seeds], and the
    random baseline's accuracy (%) at the same flip counts; only when the sweep holds attacks."""
    if not study.attacks:
        return [], []
    targets = sorted({r["_target"] for rows in study.attacks.values() for r in rows if r.get("_target") is not None})

    def flips(c: Config) -> tuple[str, tuple]:
        est = flips_estimate(study.attacks.get(c.key, []))
        censored = est.low is not None and est.high is None
        return _flips_text(est), ("" if est.mean is None else est.mean, "" if censored or est.low is None else est.low,
                                  "" if est.high is None else est.high, "yes" if censored else "")

    def random(c: Config) -> tuple[str, tuple]:
        value = _random_mean(study.attacks.get(c.key, []))
        return pct(value), ("" if value is None else 100 * value,)

    target = " / ".join(f"{100 * t:g}%" for t in targets) or "target"
    columns = [Column(f"Flips to ≤{target} acc", ("flips_to_target", "flips_to_target_low", "flips_to_target_high",
                                                  "flips_to_target_lower_bound"), flips),
               Column("Random acc % @ same flips", ("random_acc_pct_at_flips",), random)]
    legend = [f"Flips to ≤{target} acc: bit flips the progressive bit search (Rakin et al., ICCV 2019; qfi attack) "
              "needs to bring the test accuracy to the target, mean over training seeds; "
              f"{describe_seed_range()} (none with one seed); ≥: some seed did not reach the target within attack.flips (counted as "
              "attack.flips + 1: a lower bound). Random acc @ same flips: test accuracy under as many random bit "
              "flips (fault=count), mean over trials and seeds."]
    return columns, legend


# ---------------------------------------------------------------------------------------------------- files

def write_attacks(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``attacks.csv`` (one row per attack point: swept values, then ``ATTACK_COLUMNS``). Returns the path."""
    keys = [k for k in swept_keys(rows) if k != "clean_accuracy"]
    private = {"flips_to_target": "_flips_to_target", "flips_committed": "_flips_committed",
               "max_flips": "_max_flips", "target_accuracy": "_target", "final_accuracy": "_final_accuracy",
               "random_accuracy_at_target": "_random_at_target", "seconds_per_flip": "_seconds_per_flip",
               "train_seed": "_seed"}
    body = [[r.get(k) for k in keys] + [r.get(private.get(c, c)) for c in ATTACK_COLUMNS] for r in rows]
    return write_csv(Path(sweep_dir) / ATTACKS_CSV, [*keys, *ATTACK_COLUMNS], body)


def render_attacks(study: Study, console: Any) -> None:
    """Print flips to target per configuration (a Rich table)."""
    from rich import box
    from rich.table import Table

    if not study.attacks:
        return
    table = Table(title="Progressive bit search: flips to target, mean over training seeds", title_style="bold",
                  caption=f"flips to target: mean [{describe_seed_range()}]; random %: accuracy "
                          "under as many random flips", caption_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    table.add_column("configuration", overflow="fold")
    for name in ("seeds", "clean %", "target %", "flips to target", "random %"):
        table.add_column(name, justify="right", no_wrap=True)
    for c in study.configs:
        rows = study.attacks.get(c.key)
        if not rows:
            continue
        clean = [r["clean_accuracy"] for r in rows]
        targets = sorted({r["_target"] for r in rows})
        random = _random_mean(rows)
        table.add_row(c.label, str(len(rows)), f"{100 * math.fsum(clean) / len(clean):.2f}",
                      " / ".join(f"{100 * t:g}" for t in targets), _flips_text(flips_estimate(rows)),
                      "-" if random is None else f"{100 * random:.2f}")
    console.print(table)


# ---------------------------------------------------------------------------------------------------- figure

def attack_figure(result: dict[str, Any]) -> Any:
    """Test accuracy (%) against the number of flipped weight bits (log x): the progressive bit search's flips,
    and the random baseline's mean with its 95% CI band; the clean accuracy dashed, the target dotted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(8.0, 5.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    flips = result.get("flips") or []
    random = result.get("random") or {}
    settings = result.get("attack") or {}
    if random.get("counts"):
        xs = random["counts"]
        ax.plot(xs, [100 * v for v in random["accuracy_mean"]], color="tab:blue", marker="o", markersize=3,
                label=f"random flips (fault=count), mean of {random.get('trials')} trials")
        cis = random.get("accuracy_ci95") or []
        if any(ci is not None for ci in cis):
            ax.fill_between(xs, [100 * ci[0] if ci else math.nan for ci in cis],
                            [100 * ci[1] if ci else math.nan for ci in cis], color="tab:blue", alpha=0.2,
                            linewidth=0, label=f"random: {describe_ci(1)}")
    if flips:
        ax.plot([f["flip"] for f in flips], [100 * f["accuracy"] for f in flips], color="tab:red", marker="s",
                markersize=3, label=f"progressive bit search (k_top={settings.get('k_top')}, "
                                    + (f"rank_top={settings['rank_top']}, " if settings.get("rank_top") else "")
                                    + f"batch={result.get('attack_samples')})")
    ax.axhline(100 * result["clean_accuracy"], color="0.3", linestyle="--", linewidth=1, label="clean")
    ax.axhline(100 * result["target_accuracy"], color="0.3", linestyle=":", linewidth=1,
               label=f"target {100 * result['target_accuracy']:g}%")
    n = result.get("flips_to_target")
    if n:
        ax.axvline(n, color="tab:red", alpha=0.3, linewidth=1)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(0.8, max(2, len(flips)) * 1.25)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("flipped weight bits (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="major", alpha=0.35)
    reached = f"target reached after {n} flips" if n is not None else \
        f"target not reached in {result.get('flips_committed')} flips"
    made = ", ".join(p for p in (result.get("recipe") and f"recipe {result['recipe']}",
                                 result.get("seed") is not None and f"seed {result['seed']}") if p)
    widths = stored_label(result) or f"w{result.get('wbits', '?')}"
    subject = (f"{result.get('model', 'model')} {widths}" + (f" ({made})" if made else "")
               + f" on {result.get('dataset', '?')}")
    fig.suptitle(f"Chosen (progressive bit search) vs random weight bit flips\n{subject}: {reached}", fontsize=11)
    if not flips and not random.get("counts"):
        ax.text(0.5, 0.5, "no flips (the clean model is at the target)", transform=ax.transAxes, ha="center")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def plot_attack_curve(result: dict[str, Any], path: str | Path | None = None) -> Path:
    """Write ``attack_figure(result)`` as a PNG (atomically; default name ``attack_curve.png``)."""
    fig = attack_figure(result)
    return atomic_write(Path(path or ATTACK_CURVE), lambda f: fig.savefig(f, format="png", dpi=150))


SECTION = register_section(Section("attack", ATTACK, ATTACKS_CSV, collect=collect_attacks, write=write_attacks,
                                   render=render_attacks, columns=attack_columns, study=True))

__all__ = ["ATTACK_COLUMNS", "SECTION", "attack_columns", "attack_figure", "collect_attacks", "flips_estimate",
           "plot_attack_curve", "render_attacks", "write_attacks"]
