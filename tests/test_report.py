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
from qfi_cli.report import (COLUMNS, aggregate, ber_figure, collect, config_label, paired_differences,
                            pending_points, plot_ber_curve, render_paired, render_table, write_summary)

T975_DF2 = 4.302652729749464  # Student-t 97.5% quantile, 2 degrees of freedom (tables)
RHO0, RHO5 = "quant.wbits=4 sam.rho=0.0", "quant.wbits=4 sam.rho=0.05"
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
    assert r["ci95_low"] == pytest.approx(0.85 - T975_DF2 * 0.05 / math.sqrt(3))
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
                      "ci95_low", "ci95_high", "rerr_mean", "status", "error", "dir"]
    assert len(table) == 8
    by_dir = {row["dir"]: row for row in table}
    p5 = by_dir["p5"]  # rho 0.05, ber 1e-2, accuracies 0.70 0.60 0.62
    assert float(p5["ber"]) == 1e-2 and p5["sam.rho"] == "0.05" and p5["quant.wbits"] == "4"
    assert float(p5["accuracy_mean"]) == pytest.approx(0.64)
    assert float(p5["accuracy_std"]) == pytest.approx(statistics.stdev([0.70, 0.60, 0.62]))
    assert float(p5["clean_accuracy"]) == 0.96 and p5["status"] == "ok" and p5["error"] == ""
    half = T975_DF2 * statistics.stdev([0.70, 0.60, 0.62]) / math.sqrt(3)
    assert float(p5["ci95_high"]) == pytest.approx(0.64 + half)
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
    ax = ber_figure(collect(sweep)).axes[0]
    assert ax.get_xscale() == "log"
    curves = [line for line in ax.lines if line.get_linestyle() == "-"]
    assert sorted(list(c.get_xdata()) for c in curves) == [[1e-4, 1e-3, 1e-2]] * 2  # no 0, no failed 0.1
    assert sorted(100 * v for v in CLEAN.values()) == pytest.approx(
        sorted(line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"))
    assert len(ax.collections) == 2  # one CI band per configuration
    top = max(float(c.get_paths()[0].vertices[:, 1].max()) for c in ax.collections)
    assert top == pytest.approx(100.0)  # rho 0.05 at 1e-3 has a CI up to 100.83 %: clipped to 100
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {RHO0, RHO5}
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_paired_differences_match_hand_computation(sweep: Path) -> None:
    diffs = paired_differences(sweep)
    assert sorted(d["ber"] for d in diffs) == [1e-4, 1e-3, 1e-2]  # BER 0 and 0.1 have one side only
    d = next(d for d in diffs if d["ber"] == 1e-3)
    assert (d["a"], d["b"], d["n"], d["seed"]) == (RHO0, RHO5, 3, 0)
    # a - b per trial: 0.90-0.93, 0.80-0.82, 0.85-0.86 = -0.03, -0.02, -0.01: mean -0.02, sd 0.01
    half = T975_DF2 * 0.01 / math.sqrt(3)
    assert d["mean"] == pytest.approx(-0.02)
    assert d["ci95_low"] == pytest.approx(-0.02 - half) and d["ci95_high"] == pytest.approx(-0.02 + half)


def test_paired_differences_need_same_seed_and_trials(sweep: Path) -> None:
    rows = collect(sweep)
    for r in rows:
        if r["ber"] == 1e-3 and r["sam.rho"] == 0.05:
            r["_seed"] = 1
        if r["ber"] == 1e-2 and r["sam.rho"] == 0.05:
            r["_accuracies"], r["trials"] = r["_accuracies"][:2], 2
    assert [d["ber"] for d in paired_differences(rows)] == [1e-4]


def test_config_label_without_swept_keys(tmp_path: Path) -> None:
    res = _result(0.0, 1e-3, [0.9, 0.8])
    del res["point"]
    write_json(tmp_path / "run" / "results.json", {**res, "model": "digits_cnn", "wbits": 8})
    (row,) = collect(tmp_path)
    assert config_label(row) == "digits_cnn w8"
    assert config_label({"sam.rho": 0.05, "ber": 1e-3, "_model": "digits_cnn", "_wbits": 8}) == "sam.rho=0.05"


def test_single_trial_points_have_no_ci(tmp_path: Path) -> None:
    for rho in (0.0, 0.05):
        res = {**_result(rho, 1e-3, [0.9, 0.8]), "trials": 1, "accuracies": [0.9 - rho],
               "accuracy_mean": 0.9 - rho, "accuracy_std": 0.0, "accuracy_ci95": None}
        write_json(tmp_path / f"r{rho}" / "results.json", res)
    rows = collect(tmp_path)
    assert [(r["ci95_low"], r["ci95_high"]) for r in rows] == [(None, None)] * 2
    (d,) = paired_differences(rows)
    assert d["n"] == 1 and d["mean"] == pytest.approx(0.05) and d["ci95_low"] is None
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
    render_paired(paired_differences(rows), console)
    text = out.getvalue()
    assert "1.0e-03" in text and "1.0e-01" in text
    half = 100 * T975_DF2 * 0.05 / math.sqrt(3)
    assert f"85.00 [{85 - half:.2f}, {85 + half:.2f}]" in text
    assert "CUDA out of memory" in text
    assert "-2.00" in text  # paired mean at BER 1e-3, in percentage points


def test_aggregate_writes_everything(sweep: Path) -> None:
    out = io.StringIO()
    rows = aggregate(sweep, Console(file=out, width=220, color_system=None))
    assert len(rows) == 8
    assert (sweep / "summary.csv").is_file() and (sweep / "ber_curve.png").is_file()
    assert "1 failed" in out.getvalue() and "2 without results.json" in out.getvalue()


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
    assert not (tmp_path / "summary.csv").exists()
