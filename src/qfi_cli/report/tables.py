"""The report's files: ``summary.csv`` (one row per point and BER), the study table ``table.md`` / ``table.csv``
(Stutz et al.'s layout: one row per configuration) and ``paired.csv`` (one-factor paired differences).

The study table is a list of column groups (``TABLE_GROUPS``): each is a function of the study returning its
columns and the legend lines they need, so a new group is one function appended to the list; a command's own
group (flips to target from attack.json) comes with its report section (``report.sections``), the last member.
Table numbers are percentages (errors in %, differences in percentage points).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from qfi_cli.io import atomic_write
from qfi_cli.layout import PAIRED, SUMMARY, TABLE_CSV, TABLE_MD
from qfi_cli.report.collect import BASELINE_RECIPE, COLUMNS, RECIPE_KEY, collect, swept_keys
from qfi_cli.report.format import MARK, Column, csv_p, fmt_p, interval, write_csv
from qfi_cli.report.sections import section_columns
from qfi_cli.report.study import Config, Pair, Study
from qfi_cli.stats import describe_ci, describe_seed_range

NO_CI = "†"
RERR_DEFINITION = ("RErr (robust error, Stutz et al., MLSys 2021): the fraction of test examples that are wrong "
                   "under the bit errors or wrong without them")
PAIRED_COLUMNS = ("factor", "baseline", "value", "at", "ber", "seeds", "trials",
                  "acc_diff_pp", "acc_diff_pp_low", "acc_diff_pp_high", "acc_ci_excludes_0",
                  "rerr_diff_pp", "rerr_diff_pp_low", "rerr_diff_pp_high", "rerr_ci_excludes_0", "a", "b", "ci")


def _num(value: float | None, scale: float = 100.0) -> float | str:
    return "" if value is None else scale * value


def _yes(flag: bool | None) -> str:
    return "" if flag is None else "yes" if flag else "no"


# ---------------------------------------------------------------------------------------------------- summary

def write_summary(sweep_dir: str | Path, rows: list[dict[str, Any]] | None = None) -> Path:
    """Write ``summary.csv`` into ``sweep_dir`` (atomically): swept keys, then ``COLUMNS``; None as "".

    One row per point and BER (every status). ``rows`` defaults to ``collect(sweep_dir)``. Returns the path.
    """
    rows = collect(sweep_dir) if rows is None else rows
    header = [*swept_keys(rows), *COLUMNS]
    return write_csv(Path(sweep_dir) / SUMMARY, header, [[row.get(k) for k in header] for row in rows])


# ---------------------------------------------------------------------------------------------------- columns

ColumnGroup = Callable[[Study], "tuple[list[Column], list[str]]"]


def config_columns(study: Study) -> tuple[list[Column], list[str]]:
    """One column per factor (the configuration's values); ``configuration`` (its label) without factors."""
    if not study.factors:
        return [Column("configuration", ("configuration",), lambda c: (c.label, (c.label,)), left=True)], []

    def column(key: str) -> Column:
        def cell(c: Config) -> tuple[str, tuple]:
            value = c.values.get(key)
            return c.shown.get(key, "" if value is None else str(value)), (value,)
        return Column(key, (key,), cell, left=True)

    return [column(k) for k in study.factors], []


def _cells(study: Study, config: Config) -> list:
    return [cell for ber in study.bers if (cell := study.cell(config, ber)) is not None]


def seed_columns(study: Study) -> tuple[list[Column], list[str]]:
    """How many training seeds and trials stand behind a row."""
    def seeds(c: Config) -> tuple[str, tuple]:
        n = len(study.seeds(c))
        return str(n), (n,)

    def trials(c: Config) -> tuple[str, tuple]:
        values = sorted({t for cell in _cells(study, c) for t in cell.trials})
        text = "" if not values else str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
        return text, (text,)

    columns = [Column("seeds", ("seeds",), seeds)]
    return columns + ([] if study.attacks_only else [Column("trials", ("trials",), trials)]), []


def clean_columns(study: Study) -> tuple[list[Column], list[str]]:
    """Clean error (%): mean over training seeds, CI over seeds."""
    def cell(c: Config) -> tuple[str, tuple]:
        est = study.clean_error[c.key]
        return interval(est), (_num(est.mean), _num(est.low), _num(est.high))

    return ([Column("Clean Err %", ("clean_err_pct", "clean_err_pct_low", "clean_err_pct_high"), cell)],
            [f"Clean Err: test error without faults, mean over training seeds; {describe_seed_range()} "
             "(none with one seed)."])


def rerr_columns(study: Study) -> tuple[list[Column], list[str]]:
    """RErr (%) at each p > 0: mean over seeds [hierarchical CI]."""
    legend = []
    if any(not cell.rerr_per_trial for cell in study.cells.values()):
        legend.append(f"{NO_CI}: some results.json of the cell has no per-trial RErr (older qfi): the mean of "
                      "the seeds' rerr_mean, without an interval.")

    def column(ber: float) -> Column:
        def cell(c: Config) -> tuple[str, tuple]:
            found = study.cell(c, ber)
            if found is None:
                return "-", ("", "", "")
            est = found.rerr
            text = interval(est) + ("" if found.rerr_per_trial else NO_CI)
            return text, (_num(est.mean), _num(est.low), _num(est.high))
        name = f"rerr_pct@{csv_p(ber)}"
        return Column(f"RErr % p={fmt_p(ber)}", (name, f"{name}_low", f"{name}_high"), cell)

    return [column(ber) for ber in study.bers if ber > 0], legend


def sharpness_columns(study: Study) -> tuple[list[Column], list[str]]:
    """Training sharpness (train_metrics of each model), mean over seeds; only when some model recorded it."""
    columns = []
    for name, header in (("sharpness_worst", "sharpness worst"), ("sharpness_random", "sharpness random")):
        if any(v.get(name) is not None for v in study.sharpness.values()):
            def cell(c: Config, name: str = name) -> tuple[str, tuple]:
                value = study.sharpness.get(c.key, {}).get(name)
                return ("-" if value is None else f"{value:.4g}"), ("" if value is None else value,)
            columns.append(Column(header, (name,), cell))
    legend = ["sharpness worst / random: loss increase at the worst-case weight perturbation of radius rho (as "
              "SAM computes it) / under random weight noise of the same norm, on a fixed batch; mean over "
              "training seeds."] if columns else []
    return columns, legend


def baseline_columns(study: Study) -> tuple[list[Column], list[str]]:
    """Each recipe's paired RErr difference from ``normal`` at the same other factor values, at each p."""
    if RECIPE_KEY not in study.factors or not any(c.values.get(RECIPE_KEY) == BASELINE_RECIPE
                                                 for c in study.configs):
        return [], []

    def column(ber: float) -> Column:
        def cell(c: Config) -> tuple[str, tuple]:
            if c.values.get(RECIPE_KEY) == BASELINE_RECIPE:
                return "baseline", ("", "", "", "")
            pair = study.pair(RECIPE_KEY, BASELINE_RECIPE, c, ber)
            if pair is None:
                return "-", ("", "", "", "")
            est = pair.rerr
            return interval(est, signed=True, mark=True), (_num(est.mean), _num(est.low), _num(est.high),
                                                           _yes(est.excludes_zero))
        name = f"drerr_vs_normal_pp@{csv_p(ber)}"
        return Column(f"ΔRErr vs normal p={fmt_p(ber)}",
                      (name, f"{name}_low", f"{name}_high", f"{name}_excludes_0"), cell)

    columns = [column(ber) for ber in study.bers if ber > 0]
    if not columns:
        return [], []
    seeds = sorted({p.seeds for p in study.pairs if p.factor == RECIPE_KEY})
    legend = [f"ΔRErr vs normal: paired difference recipe - normal in percentage points (negative: fewer robust "
              f"errors than normal), at the same other factor values, pairing each training seed with the same "
              f"seed of normal and each trial with the same fault pattern; {describe_ci(seeds or [1], sequential=study.sequential)}. "
              f"{MARK}: the 95% CI excludes 0."]
    return columns, legend


TABLE_GROUPS: list[ColumnGroup] = [config_columns, seed_columns, clean_columns, rerr_columns, sharpness_columns,
                                   baseline_columns, section_columns]  # then each report section's (report.sections)


def study_columns(study: Study, groups: list[ColumnGroup] | None = None) -> tuple[list[Column], list[str]]:
    """The study table's columns and legend lines, group by group (``TABLE_GROUPS`` by default)."""
    columns, legend = [], []
    for group in TABLE_GROUPS if groups is None else groups:
        c, lines = group(study)
        columns += c
        legend += lines
    return columns, legend


# ---------------------------------------------------------------------------------------------------- table

def _describe(study: Study, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Facts for the caption: what was evaluated, trials, seeds, fault seeds, failures."""
    ok = [r for r in rows if r.get("status") == "ok"]
    named = ok + [r for attack_rows in study.attacks.values() for r in attack_rows]  # attacks name models too

    def names(key: str) -> str:
        return " / ".join(sorted({str(r[key]) for r in named if r.get(key) is not None}))

    trials = sorted({r["trials"] for r in ok})
    seeds = sorted(set(study.seed_counts()))
    fault = sorted({str(r.get("_fault_key")) for r in ok})
    bad = len(rows) - len(ok)
    return {
        "what": (names("_model") or "models") + (f" on {names('_dataset')}" if names("_dataset") else ""),
        "trials": "-".join(str(t) for t in (trials[:1] + trials[-1:] if len(trials) > 1 else trials)) or "?",
        "seeds": " to ".join(str(s) for s in (seeds[:1] + seeds[-1:] if len(seeds) > 1 else seeds)) or "0",
        "faults": (f"the same patterns for every model (fault seed {fault[0]})" if len(fault) == 1
                   else f"fault seeds {', '.join(fault)}"),
        "failed": (f"{bad} of {len(rows)} points failed or could not be read and are left out (see "
                   f"{SUMMARY})." if bad else ""),
        "ci": describe_ci(study.seed_counts() or [1], sequential=study.sequential),
    }


def caption(study: Study, rows: list[dict[str, Any]]) -> str:
    """The table's caption: what the numbers are, trials, seeds and what the intervals cover."""
    d = _describe(study, rows)
    several = any(n > 1 for n in study.seed_counts())
    spread = (" The brackets cover the fault patterns given the trained models, not the spread across training seeds "
              "(a few replicates bound no mean without assumptions): compare recipes by the paired differences and "
              "by how many seeds agree." if several else "")
    if study.attacks_only:
        return (f"Worst-case bit flips (qfi attack) against {d['what']}: each row is a configuration, its numbers "
                f"the mean over its {d['seeds']} training seed{'' if d['seeds'] == '1' else 's'} with the "
                f"{describe_seed_range()} in brackets.")
    return (f"Clean error and robust error (RErr, %) of {d['what']} under random bit errors at rate p (each "
            f"stored weight bit flips independently with probability p); {d['trials']} random fault patterns "
            f"(trials) per p, {d['faults']}; each row is a configuration, its numbers the mean over its "
            f"{d['seeds']} training seed{'' if d['seeds'] == '1' else 's'} with the 95% CI in brackets (Clean Err: "
            f"the seeds' range). {RERR_DEFINITION}. {d['ci']}.{spread}")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def write_study_table(sweep_dir: str | Path, study: Study, rows: list[dict[str, Any]],
                      groups: list[ColumnGroup] | None = None) -> tuple[Path, Path]:
    """Write ``table.md`` (caption, table, legend, notes) and ``table.csv`` (one row per configuration, numbers
    in % / percentage points, and a last column ``ci`` saying what the intervals cover). Returns both paths."""
    root = Path(sweep_dir)
    columns, legend = study_columns(study, groups)
    cells = [[col.cell(c) for col in columns] for c in study.configs]
    title = "worst-case bit flips" if study.attacks_only else "random bit errors"
    lines = [f"# Robustness to {title}", "", caption(study, rows), ""]
    if study.configs:
        lines.append("| " + " | ".join(_md_escape(col.header) for col in columns) + " |")
        lines.append("|" + "|".join(":---" if col.left else "---:" for col in columns) + "|")
        lines += ["| " + " | ".join(_md_escape(text) for text, _ in line) + " |" for line in cells]
    else:
        lines.append("No successful points: nothing to tabulate.")
    failed = _describe(study, rows)["failed"]
    extra = legend + ([failed] if failed else []) + study.notes
    lines += [""] + [f"- {_md_escape(line)}" for line in extra] if extra else []
    md = atomic_write(root / TABLE_MD, lambda f: f.write("\n".join(lines) + "\n"), mode="w")
    header = [name for col in columns for name in col.csv] + ["ci"]
    ci = (describe_seed_range() if study.attacks_only
          else describe_ci(study.seed_counts() or [1], sequential=study.sequential))
    body = [[v for _, values in line for v in values] + [ci] for line in cells]
    return md, write_csv(root / TABLE_CSV, header, body)


def _at(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


def paired_rows(pairs: list[Pair]) -> list[dict[str, Any]]:
    """The rows of paired.csv (``PAIRED_COLUMNS``): differences value - baseline in percentage points."""
    out = []
    for p in pairs:
        trials = ";".join(str(t) for t in p.trials)
        out.append({"factor": p.factor, "baseline": p.baseline, "value": p.value, "at": _at(p.at), "ber": p.ber,
                    "seeds": p.seeds, "trials": trials,
                    "acc_diff_pp": _num(p.accuracy.mean), "acc_diff_pp_low": _num(p.accuracy.low),
                    "acc_diff_pp_high": _num(p.accuracy.high), "acc_ci_excludes_0": _yes(p.accuracy.excludes_zero),
                    "rerr_diff_pp": _num(p.rerr.mean), "rerr_diff_pp_low": _num(p.rerr.low),
                    "rerr_diff_pp_high": _num(p.rerr.high), "rerr_ci_excludes_0": _yes(p.rerr.excludes_zero),
                    "a": p.a.label, "b": p.b.label, "ci": describe_ci(p.seeds, sequential=p.sequential)})
    return out


def write_paired(sweep_dir: str | Path, pairs: list[Pair]) -> Path:
    """Write ``paired.csv`` (header only when nothing pairs, so no stale file survives). Returns the path."""
    return write_csv(Path(sweep_dir) / PAIRED, list(PAIRED_COLUMNS),
                      [[r[k] for k in PAIRED_COLUMNS] for r in paired_rows(pairs)])
