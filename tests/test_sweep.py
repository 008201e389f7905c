"""qfi sweep on Hydra's real launchers: same numbers everywhere, resume, failing points, --train."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from qfi_cli.cli import app

runner = CliRunner()
BERS = "1e-4,1e-3,1e-2"
NUMBERS = ("ber", "trials", "clean_accuracy", "accuracy_mean", "accuracy_std", "ci95_low", "ci95_high", "rerr_mean")


def sweep(out, checkpoint, *extra):
    result = runner.invoke(app, ["sweep", "--checkpoint", str(checkpoint), "--bers", BERS, "--trials", "3",
                                 "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result


def summary(out):
    with open(out / "summary.csv") as f:
        return [{k: row[k] for k in NUMBERS + ("status",)} for row in csv.DictReader(f)]


def mtimes(out):
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/results.json")}


@pytest.mark.slow
def test_launchers_agree_on_every_number(trained_digits, in_tmp):
    checkpoint, _ = trained_digits
    tables = {}
    for launcher in ("basic", "joblib", "submitit_local"):
        out = in_tmp / launcher
        sweep(out, checkpoint, "--launcher", launcher, "device=cpu")
        tables[launcher] = summary(out)
        assert (out / "ber_curve.png").stat().st_size > 10_000
    assert len(tables["basic"]) == 3 and all(r["status"] == "ok" for r in tables["basic"])
    assert tables["basic"] == tables["joblib"] == tables["submitit_local"]


def test_resume_runs_only_missing_points(trained_digits, in_tmp):
    checkpoint, _ = trained_digits
    out = in_tmp / "s"
    sweep(out, checkpoint)
    first = mtimes(out)
    assert len(first) == 3
    before = summary(out)
    result = sweep(out, checkpoint)
    assert mtimes(out) == first, "a finished sweep must run no point again"
    assert result.output.count("finished before") == 3
    victim = sorted(first)[1]
    (out / victim / "results.json").unlink()
    sweep(out, checkpoint)
    after = mtimes(out)
    assert {k for k in first if after[k] != first[k]} == {victim}
    assert summary(out) == before


def test_changed_settings_rerun_the_point(trained_digits, in_tmp):
    checkpoint, _ = trained_digits
    out = in_tmp / "s"
    sweep(out, checkpoint)
    first = mtimes(out)
    runner.invoke(app, ["sweep", "--checkpoint", str(checkpoint), "--bers", BERS, "--trials", "4", "--out", str(out)])
    assert all(mtimes(out)[k] != v for k, v in first.items()), "more trials must not reuse 3-trial results"


def test_failing_point_does_not_end_the_sweep(trained_digits, in_tmp):
    checkpoint, _ = trained_digits
    out = in_tmp / "s"
    result = runner.invoke(app, ["sweep", "--checkpoint", str(checkpoint), "--bers", "1e-3", "--trials", "2",
                                 "--out", str(out), "fault.model=bitflip,no_such_model,stuck_at_1"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "summary.csv")))
    status = {r["fault.model"]: r["status"] for r in rows}
    assert status == {"bitflip": "ok", "no_such_model": "failed", "stuck_at_1": "ok"}
    failed = json.loads(next(out.glob("*no_such_model*/results.json")).read_text())
    assert "unknown fault model" in failed["error"]


@pytest.mark.slow
def test_sweep_trains_each_model_once(in_tmp):
    out = in_tmp / "s"
    result = runner.invoke(app, ["sweep", "--train", "--bers", "1e-3,1e-2", "--trials", "2", "--out", str(out),
                                 "quant.wbits=4,8", "train.epochs=1", "train.limit=128", "model.width=4",
                                 "device=cpu"])
    assert result.exit_code == 0, result.output
    models = sorted(out.glob("models/*/model.pt"))
    assert len(models) == 2
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 4 and {r["quant.wbits"] for r in rows} == {"4", "8"}
    stamps = [m.stat().st_mtime_ns for m in models]
    shutil.rmtree(next(out.glob("fault.ber=0.01,quant.wbits=4")))
    assert runner.invoke(app, ["sweep", "--train", "--bers", "1e-3,1e-2", "--trials", "2", "--out", str(out),
                               "quant.wbits=4,8", "train.epochs=1", "train.limit=128", "model.width=4",
                               "device=cpu"]).exit_code == 0
    assert [m.stat().st_mtime_ns for m in models] == stamps, "models must not be retrained"


def test_unknown_or_missing_launcher_is_one_line(in_tmp):
    result = runner.invoke(app, ["sweep", "--launcher", "nope"])
    assert result.exit_code == 2 and "unknown launcher" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_launcher_plugin_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if "joblib_launcher" in name else real(name, *a))
    result = runner.invoke(app, ["sweep", "--launcher", "joblib"])
    assert result.exit_code == 2 and "pip install 'qfi[joblib]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
