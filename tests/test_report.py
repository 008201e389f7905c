"""Tests for qfi_cli.report on a fake sweep directory: 2 configurations x 3 BERs with known accuracies, a BER=0
point, a failed point, an empty (not yet run) point, a Hydra point dir without results, and a models/ dir."""

from __future__ import annotations

import csv
import io
import math
import statistics
import struct
import sys
from pathlib import Path

import pytest

try:
    import qfi_cli  # noqa: F401
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rich.console import Console

from qfi_cli.errors import QfiError
from qfi_cli.io import write_json
from qfi_cli.report import (COLUMNS, TABLE_GROUPS, Column, aggregate, ber_figure, build_study, collect,
                            config_label, pending_points, plot_ber_curve, render_paired,
                            render_table, rerr_figure, write_study_table, write_summary)
from qfi_cli.report.tables import paired_rows
from qfi_cli.stats import describe_ci, mean_ci, two_level_ci

T975_DF2 = 4.302652729749464  # Student-t 97.5% quantile, 2 degrees of freedom (tables)
RHO0, RHO5 = "quant.wbits=4 sam.rho=0.0", "quant.wbits=4 sam.rho=0.05"  # table and CSV labels
SHOWN0, SHOWN5 = "4-bit, no SAM (ρ=0)", "4-bit, SAM (ρ=0.05)"  # the same in figures (report.labels)
CLEAN = {0.0: 0.95, 0.05: 0.96}
# (rho, ber) -> per-trial accuracies
ACCS = {
    (0.0, 1e-4): [0.94, 0.95, 0.93],
    (0.0, 1e-3): [0.90, 0.80, 0.85],
    (0.0, 1e-2): [0.50, 0.40, 0.45],
    (0.05, 1e-4): [0.96, 0.95, 0.95],
    (0.05, 1e-3): [0.93, 0.82, 0.86],
    (0.05, 1e-2): [0.70, 0.60, 0.62],
    (0.05, 0.0): [0.96, 0.96, 0.96],
}


def _result(rho: float, ber: float, accs: list[float], seed: int = 0) -> dict:
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    half = T975_DF2 * std / math.sqrt(len(accs))
    return {
        "ber": ber, "trials": len(accs), "seed": seed, "clean_accuracy": CLEAN[rho],
        "accuracy_mean": mean, "accuracy_std": std, "accuracy_ci95": [mean - half, mean + half],
        "rerr_mean": 1 - mean + 0.01, "accuracies": accs, "flips": [1, 2, 3], "bits_total": 1000,
        "nan_trials": 0, "fault": {"kind": "bitflip", "ber": ber}, "checkpoint": "/x/model.pt",
        "model": "digits_cnn", "dataset": "digits", "wbits": 4, "rho": rho, "seconds": 0.1, "status": "ok",
        "point": {"fault.ber": ber, "quant.wbits": 4, "sam.rho": rho},
    }


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    for i, ((rho, ber), accs) in enumerate(ACCS.items()):
        write_json(tmp_path / f"p{i}" / "results.json", _result(rho, ber, accs))
        (tmp_path / f"p{i}" / ".hydra").mkdir()
    write_json(tmp_path / "failed" / "results.json",
               {"status": "failed", "error": "CUDA out of memory", "point": {"fault.ber": 0.1, "quant.wbits": 4,
                                                                             "sam.rho": 0.05}})
    (tmp_path / "empty").mkdir()                       # a point not run yet
    (tmp_path / "interrupted" / ".hydra").mkdir(parents=True)  # Hydra started it, no results
    (tmp_path / "models" / "abc123").mkdir(parents=True)
    (tmp_path / "models" / "abc123" / "model.pt").write_bytes(b"not a results file")
    (tmp_path / "models" / "abc123" / "metrics.json").write_text("{}")
    return tmp_path


def test_collect_rows_sorted_with_swept_columns(sweep: Path) -> None:
    rows = collect(sweep)
    assert len(rows) == 8
    assert [(config_label(r), r["ber"]) for r in rows] == [
        (RHO0, 1e-4), (RHO0, 1e-3), (RHO0, 1e-2),
        (RHO5, 0.0), (RHO5, 1e-4), (RHO5, 1e-3), (RHO5, 1e-2), (RHO5, 0.1)]
    public = [k for k in rows[0] if not k.startswith("_")]
    assert public == ["quant.wbits", "sam.rho", *COLUMNS]
    assert "fault.ber" not in rows[0]
    r = rows[1]
    assert (r["sam.rho"], r["trials"], r["clean_accuracy"], r["status"], r["error"], r["dir"]) == \
        (0.0, 3, 0.95, "ok", "", "p1")
    assert r["accuracy_mean"] == pytest.approx(0.85)
    # the point's interval is recomputed from its trials (the file holds a Student-t one): betting, [0, 1] bound
    assert (r["ci95_low"], r["ci95_high"]) == mean_ci([0.90, 0.80, 0.85])
    assert (r["train_seed"], r["fault_seed"], r["ci"]) == (0, None, "95% CI: betting (Waudby-Smith & Ramdas 2023) "
                                                          "over fault patterns (trials) of one training seed")
    failed = rows[-1]
    assert (failed["status"], failed["error"], failed["ber"], failed["accuracy_mean"], failed["dir"]) == \
        ("failed", "CUDA out of memory", 0.1, None, "failed")


def test_summary_csv(sweep: Path) -> None:
    path = write_summary(sweep)
    assert path == sweep / "summary.csv"
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    assert header == ["quant.wbits", "sam.rho", "ber", "trials", "clean_accuracy", "accuracy_mean", "accuracy_std",
                      "ci95_low", "ci95_high", "rerr_mean", "status", "error", "dir",  # documented, then appended:
                      "train_seed", "fault_seed", "ci", "forwards"]
    assert len(table) == 8
    by_dir = {row["dir"]: row for row in table}
    p5 = by_dir["p5"]  # rho 0.05, ber 1e-2, accuracies 0.70 0.60 0.62
    assert float(p5["ber"]) == 1e-2 and p5["sam.rho"] == "0.05" and p5["quant.wbits"] == "4"
    assert float(p5["accuracy_mean"]) == pytest.approx(0.64)
    assert float(p5["accuracy_std"]) == pytest.approx(statistics.stdev([0.70, 0.60, 0.62]))
    assert float(p5["clean_accuracy"]) == 0.96 and p5["status"] == "ok" and p5["error"] == ""
    assert float(p5["ci95_high"]) == mean_ci([0.70, 0.60, 0.62])[1] <= 1.0  # 3 trials: may pass the best one
    failed = by_dir["failed"]
    assert failed["status"] == "failed" and failed["error"] == "CUDA out of memory" and failed["accuracy_mean"] == ""
    assert [config_label(r) for r in table].count(RHO0) == 3  # labels work on rows read back from the CSV


def test_ber_curve_png(sweep: Path) -> None:
    path = plot_ber_curve(collect(sweep), sweep / "ber_curve.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert 800 <= width <= 2500 and 500 <= height <= 2000
    assert 20_000 < len(data) < 2_000_000
    assert not list(sweep.glob(".ber_curve.png.*"))  # no temporary file left behind


def test_ber_curve_content_skips_zero_and_failed(sweep: Path) -> None:
    fig = ber_figure(collect(sweep))
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    curves = [line for line in ax.lines if line.get_gid() == "curve"]
    assert sorted(list(c.get_xdata()) for c in curves) == [[1e-4, 1e-3, 1e-2]] * 2  # no 0, no failed 0.1
    assert sorted(100 * v for v in CLEAN.values()) == pytest.approx(
        sorted(line.get_ydata()[0] for line in ax.lines if line.get_gid() == "clean"))
    assert len(ax.collections) == 2  # one CI band per configuration
    top = max(float(c.get_paths()[0].vertices[:, 1].max()) for c in ax.collections)
    # the band is the betting interval, inside [0, 100] % (a Student-t band reached 100.83 % here)
    assert top == pytest.approx(100 * max(mean_ci(accs)[1] for accs in ACCS.values() if len(set(accs)) > 1))
    assert top <= 100.0
    assert {t.get_text() for t in fig.legends[0].get_texts()} >= {SHOWN0, SHOWN5}
    assert ax.get_xlabel() and ax.get_ylabel() and fig.get_suptitle()


def _paired_rows(sweep_or_rows: Path | list[dict]) -> list[dict]:
    """The rows of paired.csv for a sweep directory or ``collect`` rows."""
    return paired_rows(build_study(collect(sweep_or_rows) if isinstance(sweep_or_rows, Path) else sweep_or_rows).pairs)


def test_paired_differences_match_hand_computation(sweep: Path) -> None:
    diffs = _paired_rows(sweep)
    assert sorted(d["ber"] for d in diffs) == [1e-4, 1e-3, 1e-2]  # BER 0 and 0.1 have one side only
    d = next(d for d in diffs if d["ber"] == 1e-3)
    assert (d["factor"], d["baseline"], d["value"], d["at"], d["seeds"], d["trials"]) == \
        ("sam.rho", 0.0, 0.05, "quant.wbits=4", 1, "3")
    assert (d["a"], d["b"]) == (RHO0, RHO5)
    # value - baseline per trial: 0.93-0.90, 0.82-0.80, 0.86-0.85 = 0.03, 0.02, 0.01 (percentage points)
    assert d["acc_diff_pp"] == pytest.approx(2.0)
    low, high = mean_ci([0.93 - 0.90, 0.82 - 0.80, 0.86 - 0.85], lo=-1.0)  # a paired difference lies in [-1, 1]
    assert (d["acc_diff_pp_low"], d["acc_diff_pp_high"]) == pytest.approx((100 * low, 100 * high))
    # three trials cannot exclude 0: a 30% chance of a trial where rho 0.05 loses everything fits them
    assert low < 0 < high and d["acc_ci_excludes_0"] == "no"
    assert d["rerr_diff_pp"] == "" and d["rerr_ci_excludes_0"] == ""


def test_paired_differences_need_same_seed_faults_and_trials(sweep: Path) -> None:
    rows = collect(sweep)
    for r in rows:
        if r["ber"] == 1e-3 and r["sam.rho"] == 0.05:
            r["_seed"] = 1  # another training seed: a model is paired with the same seed of the other
        if r["ber"] == 1e-2 and r["sam.rho"] == 0.05:
            r["_accuracies"], r["trials"] = r["_accuracies"][:2], 2
        if r["ber"] == 1e-4 and r["sam.rho"] == 0.05:
            r["_fault_key"] = 7  # other fault patterns
    assert _paired_rows(rows) == []
    notes = build_study(rows).notes
    assert len(notes) == 3 and all("not paired" in n for n in notes)


def test_config_label_without_swept_keys(tmp_path: Path) -> None:
    res = _result(0.0, 1e-3, [0.9, 0.8])
    del res["point"]
    write_json(tmp_path / "run" / "results.json", {**res, "model": "digits_cnn", "wbits": 8})
    (row,) = collect(tmp_path)
    assert config_label(row) == "digits_cnn w8 sam.rho=0.0"  # says SAM's rho (0: no SAM)
    write_json(tmp_path / "run" / "results.json", {**res, "model": "digits_cnn", "wbits": 8, "recipe": "sam",
                                                   "rho": 0.05})
    (row,) = collect(tmp_path)
    assert config_label(row) == "digits_cnn w8 recipe=sam sam.rho=0.05"
    assert {t.get_text() for t in ber_figure([row]).legends[0].get_texts()} >= {"digits_cnn, 8-bit, SAM (ρ=0.05)"}
    assert config_label({"sam.rho": 0.05, "ber": 1e-3, "_model": "digits_cnn", "_wbits": 8}) == "sam.rho=0.05"


def test_single_trial_points_have_no_ci(tmp_path: Path) -> None:
    for rho in (0.0, 0.05):
        res = {**_result(rho, 1e-3, [0.9, 0.8]), "trials": 1, "accuracies": [0.9 - rho],
               "accuracy_mean": 0.9 - rho, "accuracy_std": 0.0, "accuracy_ci95": None}
        write_json(tmp_path / f"r{rho}" / "results.json", res)
    rows = collect(tmp_path)
    assert [(r["ci95_low"], r["ci95_high"], r["ci"]) for r in rows] == [(None, None, "")] * 2
    (d,) = _paired_rows(rows)
    assert d["trials"] == "1" and d["acc_diff_pp"] == pytest.approx(-5.0) and d["acc_diff_pp_low"] == ""
    assert len(ber_figure(rows).axes[0].collections) == 0  # no band without a CI
    write_summary(tmp_path, rows)
    assert (tmp_path / "summary.csv").read_text().splitlines()[1].split(",")[7:9] == ["", ""]


def test_pending_points(sweep: Path) -> None:
    assert pending_points(sweep) == ["empty", "interrupted"]


def test_render_tables(sweep: Path) -> None:
    rows = collect(sweep)
    out = io.StringIO()
    console = Console(file=out, width=220, color_system=None)
    render_table(rows, console)
    render_paired(build_study(rows).pairs, console)
    text = " ".join(out.getvalue().split())  # Rich wraps captions
    assert "1.0e-03" in text and "1.0e-01" in text  # the failed point is listed with its BER
    low, high = mean_ci([0.90, 0.80, 0.85])
    assert f"85.00 [{100 * low:.2f}, {100 * high:.2f}]" in text
    assert "CUDA out of memory" in text
    assert "+2.00" in text  # paired mean at BER 1e-3 (rho 0.05 - rho 0), in percentage points
    assert "sam.rho: paired differences" in text and "over fault patterns (trials) of one training seed" in text


def test_aggregate_writes_everything(sweep: Path) -> None:
    out = io.StringIO()
    rows = aggregate(sweep, Console(file=out, width=220, color_system=None))
    assert len(rows) == 8 and sum(r["status"] != "ok" for r in rows) == 1
    for name in ("summary.csv", "table.md", "table.csv", "paired.csv", "ber_curve.png", "rerr_curve.png"):
        assert (sweep / name).is_file(), name
    assert "1 failed" in out.getvalue() and "2 without results.json" in out.getvalue()
    assert not list(sweep.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------------- study
# 2 recipes x 2 weight widths x 3 training seeds x 2 BERs, 4 trials each, all on fault seed 0.

RECIPES, WBITS, SEEDS, BERS = ("normal", "sam"), (4, 8), (0, 1, 2), (1e-3, 1e-2)
SHAPE = (0.0, -0.01, 0.01, -0.2)  # trial offsets: three near the mean, one collapse


def _study_accs(recipe: str, wbits: int, seed: int, ber: float) -> list[float]:
    base = {("normal", 4): 0.80, ("sam", 4): 0.85, ("normal", 8): 0.88, ("sam", 8): 0.88}[(recipe, wbits)]
    base -= {1e-3: 0.0, 1e-2: 0.3}[ber] + {0: 0.0, 1: 0.02, 2: -0.01}[seed]
    if (recipe, wbits, ber) == ("sam", 8, 1e-2):
        base += {0: 0.03, 1: -0.03, 2: 0.0}[seed]  # sam differs from normal by +3, -3, 0 points: CI spans 0
    return [base + s for s in SHAPE]


def _study_clean(recipe: str, wbits: int, seed: int) -> float:
    return 0.95 + 0.005 * seed - (0.01 if wbits == 4 else 0.0) + (0.002 if recipe == "sam" else 0.0)


def _study_result(recipe: str, wbits: int, seed: int, ber: float, **extra) -> dict:
    accs = _study_accs(recipe, wbits, seed, ber)
    rerrs = [1 - a + 0.02 for a in accs]
    return {"status": "ok", "ber": ber, "trials": len(accs), "seed": seed, "fault_seed": 0,
            "clean_accuracy": _study_clean(recipe, wbits, seed), "accuracy_mean": statistics.mean(accs),
            "accuracy_std": statistics.stdev(accs), "accuracy_ci95": [0.0, 1.0], "rerr_mean": statistics.mean(rerrs),
            "accuracies": accs, "rerrs": rerrs, "recipe": recipe, "model": "digits_cnn", "dataset": "digits",
            "wbits": wbits, "rho": 0.05 if recipe == "sam" else 0.0,
            "train_metrics": {"sharpness_worst": (0.01 if recipe == "normal" else 0.005) * (1 + seed),
                              "sharpness_random": 0.001 * (1 + seed), "test_accuracy": 0.9},
            "point": {"recipe": recipe, "quant.wbits": wbits, "seed": seed, "fault.ber": ber}, **extra}


def _write_study(root: Path) -> Path:
    for r in RECIPES:
        for w in WBITS:
            for s in SEEDS:
                for b in BERS:
                    write_json(root / f"recipe={r},quant.wbits={w},seed={s},fault.ber={b}" / "results.json",
                               _study_result(r, w, s, b))
    return root


@pytest.fixture()
def study_dir(tmp_path: Path) -> Path:
    return _write_study(tmp_path)


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study, aggregated once (read-only for the tests that use it)."""
    root = _write_study(tmp_path_factory.mktemp("study"))
    aggregate(root, Console(file=io.StringIO()))
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rerr_groups(recipe: str, wbits: int, ber: float, seeds=SEEDS) -> list[list[float]]:
    return [[1 - a + 0.02 for a in _study_accs(recipe, wbits, s, ber)] for s in seeds]


def test_study_table_matches_hand_computation(reported: Path) -> None:
    study_dir = reported
    table = _read_csv(study_dir / "table.csv")
    assert [(r["recipe"], r["quant.wbits"]) for r in table] == [("normal", "4"), ("sam", "4"), ("normal", "8"),
                                                                 ("sam", "8")]
    for row in table:
        recipe, wbits = row["recipe"], int(row["quant.wbits"])
        assert (row["seeds"], row["trials"]) == ("3", "4")
        errors = [1 - _study_clean(recipe, wbits, s) for s in SEEDS]
        assert float(row["clean_err_pct"]) == pytest.approx(100 * statistics.mean(errors), rel=1e-12)
        low, high = min(errors), max(errors)  # the seeds' range (a spread, not a CI)
        assert (float(row["clean_err_pct_low"]), float(row["clean_err_pct_high"])) == \
            pytest.approx((100 * low, 100 * high), rel=1e-12)
        for ber in BERS:
            groups = _rerr_groups(recipe, wbits, ber)
            name = f"rerr_pct@{ber:g}"
            assert float(row[name]) == pytest.approx(100 * statistics.mean(map(statistics.mean, groups)), rel=1e-12)
            low, high = two_level_ci(groups)
            assert (float(row[f"{name}_low"]), float(row[f"{name}_high"])) == \
                pytest.approx((100 * low, 100 * high), rel=1e-12)
            assert float(row[f"{name}_low"]) <= float(row[name]) <= float(row[f"{name}_high"])
        assert float(row["sharpness_worst"]) == pytest.approx((0.02 if recipe == "normal" else 0.01))
        assert float(row["sharpness_random"]) == pytest.approx(0.002)
        assert row["ci"] == describe_ci(3) and "given the trained models (not over seeds)" in row["ci"]


def test_study_table_paired_difference_from_normal(reported: Path) -> None:
    study_dir = reported
    table = {(r["recipe"], r["quant.wbits"]): r for r in _read_csv(study_dir / "table.csv")}
    assert table[("normal", "4")]["drerr_vs_normal_pp@0.001"] == ""
    for wbits in WBITS:
        for ber in BERS:
            diffs = [[b - a for a, b in zip(na, sa)] for na, sa in zip(_rerr_groups("normal", wbits, ber),
                                                                         _rerr_groups("sam", wbits, ber))]
            name = f"drerr_vs_normal_pp@{ber:g}"
            row = table[("sam", str(wbits))]
            assert float(row[name]) == pytest.approx(100 * statistics.mean(map(statistics.mean, diffs)), abs=1e-12)
            low, high = two_level_ci(diffs, lo=-1.0)
            assert (float(row[f"{name}_low"]), float(row[f"{name}_high"])) == \
                pytest.approx((100 * low, 100 * high), abs=1e-12)
            assert row[f"{name}_excludes_0"] == ("yes" if low > 0 or high < 0 else "no")
    # sam 4-bit: 5 points fewer errors on every trial of every seed; sam 8-bit at 1e-2: -3, +3, 0 by seed. Three
    # seed means cannot exclude 0 with only the [-1, 1] bound to go by (a replicate that loses 100 points one
    # time in three fits three seeds at -5): no mark (test_study_marks_a_difference_the_trials_support has one)
    assert table[("sam", "4")]["drerr_vs_normal_pp@0.01_excludes_0"] == "no"
    assert float(table[("sam", "4")]["drerr_vs_normal_pp@0.01"]) == pytest.approx(-5.0)
    assert table[("sam", "8")]["drerr_vs_normal_pp@0.01_excludes_0"] == "no"
    md = (study_dir / "table.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert "ΔRErr vs normal p=1%" in lines[0] and "RErr % p=0.1%" in lines[0] and "Clean Err %" in lines[0]
    sam4, sam8 = lines[2], lines[4]
    assert sam4.count("*") == 0 and sam8.count("*") == 0
    assert "baseline" in lines[1] and "baseline" in lines[3]
    assert "-5.00 [" in sam4


def test_study_marks_a_difference_the_trials_support(tmp_path: Path) -> None:
    """One training seed, 60 paired trials, sam 10 points better on each: the betting interval of the trial
    differences excludes 0 (a mean of 0 would need a 9% chance of a trial 55 points worse; 60 trials without one
    has probability 0.35%), so table.md marks it."""
    for recipe, gain in (("normal", 0.0), ("sam", 0.1)):
        accs = [0.6 + 0.05 * math.sin(t) + gain for t in range(60)]
        rerrs = [1 - a for a in accs]
        write_json(tmp_path / recipe / "results.json", {
            "status": "ok", "ber": 1e-2, "trials": 60, "seed": 0, "fault_seed": 0, "clean_accuracy": 0.95,
            "accuracy_mean": statistics.mean(accs), "accuracy_std": statistics.stdev(accs), "accuracies": accs,
            "rerrs": rerrs, "rerr_mean": statistics.mean(rerrs), "recipe": recipe, "model": "digits_cnn",
            "dataset": "digits", "wbits": 8, "point": {"recipe": recipe, "seed": 0, "fault.ber": 1e-2}})
    aggregate(tmp_path, Console(file=io.StringIO()))
    row = {r["recipe"]: r for r in _read_csv(tmp_path / "table.csv")}["sam"]
    assert float(row["drerr_vs_normal_pp@0.01"]) == pytest.approx(-10.0)
    assert row["drerr_vs_normal_pp@0.01_excludes_0"] == "yes" and float(row["drerr_vs_normal_pp@0.01_high"]) < 0
    assert "*" in [line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| sam")][0]


def test_study_table_caption_says_what_the_numbers_are(reported: Path) -> None:
    study_dir = reported
    md = (study_dir / "table.md").read_text()
    caption = md.split("\n\n")[1]
    for words in ("RErr", "Stutz et al.", "wrong under the bit errors or wrong without them", "4 random fault "
                  "patterns (trials) per p", "3 training seeds", "fault seed 0", "95% CI: betting (Waudby-Smith & Ramdas 2023)",
                  "given the trained models (not over seeds)", "not the spread across training seeds"):
        assert words in caption, words
    assert "*: the 95% CI excludes 0" in md and "mean over training seeds" in md


def test_paired_csv_only_one_factor_changes(reported: Path) -> None:
    study_dir = reported
    pairs = _read_csv(study_dir / "paired.csv")
    assert len(pairs) == 8  # recipe at 4 and 8 bits, wbits for normal and sam; 2 BERs each (no diagonal pairs)
    assert [p["factor"] for p in pairs] == ["recipe"] * 4 + ["quant.wbits"] * 4  # grouped by factor
    for p in pairs:
        a, b = dict(kv.split("=") for kv in p["a"].split()), dict(kv.split("=") for kv in p["b"].split())
        assert [k for k in a if a[k] != b[k]] == [p["factor"]]
        assert (a[p["factor"]], b[p["factor"]]) == (p["baseline"], p["value"])
        assert p["seeds"] == "3" and p["trials"] == "4"
        assert float(p["acc_diff_pp"]) == pytest.approx(-float(p["rerr_diff_pp"]), abs=1e-9)
    assert {(p["baseline"], p["value"]) for p in pairs if p["factor"] == "recipe"} == {("normal", "sam")}
    assert {(p["baseline"], p["value"]) for p in pairs if p["factor"] == "quant.wbits"} == {("4", "8")}


def test_pairs_match_training_seeds(study_dir: Path) -> None:
    # sam 4-bit seed 2 failed: its differences use seeds 0 and 1 of both, paired seed with seed
    path = study_dir / "recipe=sam,quant.wbits=4,seed=2,fault.ber=0.01" / "results.json"
    write_json(path, {"status": "failed", "error": "diverged", "point": {"recipe": "sam", "quant.wbits": 4,
                                                                         "seed": 2, "fault.ber": 0.01}})
    rows = aggregate(study_dir, Console(file=io.StringIO()))
    assert [r["status"] for r in rows].count("failed") == 1
    (p,) = [p for p in _read_csv(study_dir / "paired.csv")
            if p["factor"] == "recipe" and p["at"] == "quant.wbits=4" and p["ber"] == "0.01"]
    accs = {(r, s): _study_accs(r, 4, s, 1e-2) for r in RECIPES for s in SEEDS}
    diffs = [[b - a for a, b in zip(accs[("normal", s)], accs[("sam", s)])] for s in (0, 1)]
    assert p["seeds"] == "2" and float(p["acc_diff_pp"]) == pytest.approx(5.0)
    assert (float(p["acc_diff_pp_low"]), float(p["acc_diff_pp_high"])) == \
        pytest.approx(tuple(100 * v for v in two_level_ci(diffs, lo=-1.0)), abs=1e-12)
    table = {(r["recipe"], r["quant.wbits"]): r for r in _read_csv(study_dir / "table.csv")}
    assert table[("sam", "4")]["seeds"] == "3"  # seed 2 still has its 1e-3 point
    assert "1 of 24 points failed" in (study_dir / "table.md").read_text()


def test_rerr_curve_aggregates_seeds_one_panel_per_width(study_dir: Path) -> None:
    rows = collect(study_dir)
    fig = rerr_figure(rows)
    assert [ax.get_title() for ax in fig.axes] == ["4-bit", "8-bit"]
    for ax, wbits in zip(fig.axes, WBITS):
        assert ax.get_xscale() == "log"
        curves = [line for line in ax.lines if line.get_gid() == "curve"]
        assert {line.get_linestyle() for line in curves} == {"-." if wbits == 4 else "-"}  # a style per width
        assert len(curves) == 2 and len(ax.collections) == 2  # one line and band per recipe, not per seed
        for line, recipe in zip(curves, RECIPES):
            assert list(line.get_xdata()) == list(BERS)
            assert list(line.get_ydata()) == pytest.approx(
                [100 * statistics.mean(map(statistics.mean, _rerr_groups(recipe, wbits, b))) for b in BERS])
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["plain", "SAM (ρ=0.05)"]
    assert "robust error" in fig.axes[0].get_ylabel()
    curves = [line for ax in ber_figure(rows).axes for line in ax.lines if line.get_gid() == "curve"]
    assert len(curves) == 4  # ber_curve.png too: 4 configurations, not 12 (configuration x seed)


@pytest.mark.parametrize("content, status, error", [
    ("[1, 2]", "unreadable", "holds an array, not a JSON object"),
    ('"ok"', "unreadable", "holds a string"),
    ("null", "unreadable", "holds null"),
    ('{"status": "ok", "ber"', "unreadable", "not valid JSON"),
    (b"\xff\xfe{}", "unreadable", "not UTF-8"),
    ('{"status": "ok", "ber": "x"}', "invalid", 'ber is "x", not a number'),
    ({"ber": None, "point": {}}, "invalid", "ber is missing"),
    ({"ber": 2.0}, "invalid", "ber is 2.0, outside [0.0, 1.0]"),
    ({"trials": "4"}, "invalid", "trials is \"4\", not a whole number"),
    ({"trials": 0}, "invalid", "trials is 0, below 1"),
    ({"trials": 5}, "invalid", "accuracies has 4 entries but trials is 5"),
    ({"accuracies": None}, "invalid", "accuracies (one value per trial) is missing"),
    ({"accuracies": [0.5, "a", 0.5, 0.5]}, "invalid", "accuracies holds \"a\""),
    ({"accuracies": [0.5, 1.5, 0.5, 0.5]}, "invalid", "accuracies holds 1.5"),
    ({"accuracies": [0.5, True, 0.5, 0.5]}, "invalid", "accuracies holds true"),
    ({"accuracy_mean": 0.1}, "invalid", "accuracy_mean is 0.1 but its trials average"),
    ({"rerrs": [0.1]}, "invalid", "rerrs has 1 entries but trials is 4"),
    ({"clean_accuracy": None}, "invalid", "clean_accuracy is missing"),
    ({"point": [1]}, "invalid", "point is [1], not an object"),
    ({"status": 5}, "invalid", "status is 5"),
    ({"seed": 1.5}, "invalid", "seed is 1.5, not a whole number"),
    ({"train_metrics": {"sharpness_worst": "big"}}, "invalid", "sharpness_worst is \"big\""),
])
def test_bad_results_are_never_ok_rows(study_dir: Path, content, status: str, error: str) -> None:
    path = study_dir / "recipe=sam,quant.wbits=8,seed=1,fault.ber=0.01" / "results.json"
    if isinstance(content, dict):
        write_json(path, {**_study_result("sam", 8, 1, 1e-2), **content})
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    rows = collect(study_dir)
    (bad,) = [r for r in rows if r["status"] != "ok"]
    assert bad["status"] == status and error in bad["error"] and "\n" not in bad["error"]
    assert bad["accuracy_mean"] is None and bad["dir"] == path.parent.name
    assert len(rows) == 24


def test_aggregate_renders_the_rest_around_bad_files(study_dir: Path) -> None:
    point = "recipe=sam,quant.wbits=8,seed={},fault.ber=0.01"
    (study_dir / point.format(0) / "results.json").write_text("[1, 2]")
    write_json(study_dir / point.format(1) / "results.json", {**_study_result("sam", 8, 1, 1e-2), "ber": "x"})
    write_json(study_dir / point.format(2) / "results.json", {**_study_result("sam", 8, 2, 1e-2), "trials": 5})
    out = io.StringIO()
    rows = aggregate(study_dir, Console(file=out, width=300, color_system=None))
    assert sorted(r["status"] for r in rows if r["status"] != "ok") == ["invalid", "invalid", "unreadable"]
    text = out.getvalue()
    for error in ("holds an array, not a JSON object", 'ber is "x", not a number',
                  "accuracies has 4 entries but trials is 5"):
        assert error in text  # printed with its error
    assert "3 failed or unreadable" in text
    table = {(r["recipe"], r["quant.wbits"]): r for r in _read_csv(study_dir / "table.csv")}
    assert table[("sam", "8")]["rerr_pct@0.01"] == "" and table[("sam", "8")]["rerr_pct@0.001"] != ""
    assert "3 of 24 points failed or could not be read" in (study_dir / "table.md").read_text()
    assert len(_read_csv(study_dir / "summary.csv")) == 24


def test_nan_in_an_ok_file_is_invalid_and_failed_nan_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text('{"status": "ok", "ber": 0.01, "trials": 1, "accuracies": [NaN], '
                                                 '"accuracy_mean": NaN, "clean_accuracy": 0.9}')
    (tmp_path / "b").mkdir()  # an old engine's failed point held a bare NaN
    (tmp_path / "b" / "results.json").write_text('{"status": "failed", "error": "boom", "accuracy_mean": NaN}')
    rows = aggregate(tmp_path, Console(file=io.StringIO()))
    assert sorted((r["dir"], r["status"], r["error"]) for r in rows) == [
        ("a", "invalid", "invalid results.json: accuracies holds NaN, not a fraction in [0, 1]"),
        ("b", "failed", "boom")]


def test_outputs_hold_no_nan_or_inf(study_dir: Path) -> None:
    write_json(study_dir / "x" / "results.json", {"status": "failed", "error": "x", "point": {}})
    aggregate(study_dir, Console(file=io.StringIO()))
    for name in ("summary.csv", "table.csv", "paired.csv", "table.md"):
        text = (study_dir / name).read_text().lower()
        assert "nan" not in text and "inf," not in text and ",inf" not in text, name


def test_old_results_without_fault_seed_rerrs_or_recipe(tmp_path: Path) -> None:
    # older qfi: the seed keyed both the model and the fault patterns, no per-trial RErr, no recipe
    for rho, shift in ((0.0, 0.0), (0.05, 0.02)):
        for seed in (0, 1):
            res = _result(rho, 1e-3, [0.80 + shift + 0.01 * seed, 0.70 + shift, 0.75 + shift], seed=seed)
            res["point"]["seed"] = seed
            write_json(tmp_path / f"rho{rho}-s{seed}" / "results.json", res)
    aggregate(tmp_path, Console(file=io.StringIO()))
    (p,) = _read_csv(tmp_path / "paired.csv")
    assert (p["factor"], p["seeds"], p["rerr_diff_pp"]) == ("sam.rho", "2", "")  # paired by seed; no rerrs
    assert float(p["acc_diff_pp"]) == pytest.approx(2.0)
    (row0, row5) = _read_csv(tmp_path / "table.csv")
    assert row0["rerr_pct@0.001_low"] == "" and row0["rerr_pct@0.001"] != ""  # mean of rerr_mean, no CI
    md = (tmp_path / "table.md").read_text()
    assert "| 25.83† |" in md and "†: some results.json of the cell has no per-trial RErr" in md


def test_duplicate_results_for_one_model_keep_the_longest(study_dir: Path) -> None:
    res = _study_result("normal", 4, 0, 1e-3)
    res.update(trials=8, accuracies=res["accuracies"] * 2, rerrs=res["rerrs"] * 2)
    write_json(study_dir / "later" / "results.json", res)
    study = build_study(collect(study_dir))
    cell = study.cell(study.configs[0], 1e-3)
    assert [r["trials"] for r in cell.rows] == [8, 4, 4]
    assert any("2 results for one model (seed 0)" in n and "using later" in n for n in study.notes)


def test_table_column_groups_extend(study_dir: Path) -> None:
    """A later column group (flips-to-target, say) is one function appended to the list."""
    def flips(study):
        col = Column("flips to target", ("flips_to_target",), lambda c: ("7", (7,)))
        return [col], ["flips to target: bit flips an attack needs (illustration)."]

    rows = collect(study_dir)
    write_study_table(study_dir, build_study(rows), rows, groups=[*TABLE_GROUPS, flips])
    table = _read_csv(study_dir / "table.csv")
    assert list(table[0])[-2:] == ["flips_to_target", "ci"] and table[0]["flips_to_target"] == "7"
    assert "| flips to target |" in (study_dir / "table.md").read_text()


def test_missing_or_empty_sweep_dir(tmp_path: Path) -> None:
    with pytest.raises(QfiError, match="not found") as e:
        collect(tmp_path / "nope")
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "models" / "x").mkdir(parents=True)
    (tmp_path / "models" / "x" / "metrics.json").write_text("{}")
    with pytest.raises(QfiError, match="no results.json") as e:
        aggregate(tmp_path, Console(file=io.StringIO()))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "summary.csv").exists() and not (tmp_path / "table.md").exists()


def test_a_registered_section_feeds_the_report_without_other_edits(sweep: Path, monkeypatch) -> None:
    """A new command's report hooks are one Section (report.sections): its rows, CSV, console part and study table
    columns reach ``aggregate``, its result file counts a point as finished, and nothing else names it."""
    from qfi_cli.report.format import write_csv
    from qfi_cli.report.sections import SECTIONS, Section, register_section, result_names

    monkeypatch.setattr(SECTIONS, "_items", dict(SECTIONS._items))  # restored after the test

    def toy_rows(root: Path) -> list[dict]:
        return [{"dir": p.parent.name, "status": "ok" if p.read_text() == "ok" else "failed", "error": "toy broke"}
                for p in sorted(root.rglob("toy.json"))]

    def toy_columns(study) -> tuple[list, list[str]]:
        column = Column("toy score", ("toy_score",), lambda c: ("42", (42,)))
        return [column], ["toy score: the toy section's column."]

    register_section(Section("toy", "toy.json", "toys.csv", collect=toy_rows,
                             write=lambda root, rows: write_csv(root / "toys.csv", ["dir"], [[r["dir"]] for r in rows]),
                             render=lambda study, console: console.print("toy section"), columns=toy_columns))
    assert result_names()[-1] == "toy.json"
    for name, text in (("toy_a", "ok"), ("toy_b", "bad")):
        (sweep / name).mkdir()
        (sweep / name / "toy.json").write_text(text)
    before = len(collect(sweep))
    buf = io.StringIO()
    rows = aggregate(sweep, Console(file=buf, width=200))
    out = buf.getvalue()
    assert len(rows) == before + 2 and [r["dir"] for r in rows[-2:]] == ["toy_a", "toy_b"]
    assert (sweep / "toys.csv").read_text().split() == ["dir", "toy_a", "toy_b"]
    assert "toy section" in out and "toy_b" in out and "toy broke" in out  # its failures are printed too
    table = (sweep / "table.md").read_text()
    assert "| toy score |" in table and "| 42 |" in table and "toy score: the toy section's column." in table
    assert "toy_score" in (sweep / "table.csv").read_text().splitlines()[0]
    assert "toy_a" not in pending_points(sweep) and "toys.csv" in out
