"""qfi sweep on Hydra's real launchers: same numbers everywhere, resume, failing points, --train."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

from qfi_cli.cli import app
from tests.helpers import SWEEP_TRAIN

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
    return {p.parent.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("results.json")}


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
    assert "skip 3 finished rate(s)" in result.output
    victim = sorted(first)[1]
    (out / victim / "results.json").unlink()
    sweep(out, checkpoint)
    after = mtimes(out)
    assert {k for k in first if after[k] != first[k]} == {victim}
    assert summary(out) == before


def test_changed_settings_are_refused_and_keep_the_points(trained_digits, in_tmp):
    """A sweep into a directory made with other fixed settings (more trials) would mix rows made differently in one
    summary: it is refused in one line, and the finished points stay as they were; a new --out runs it."""
    checkpoint, _ = trained_digits
    out = in_tmp / "s"
    sweep(out, checkpoint)
    first = mtimes(out)
    assert len(first) == 3 and all(r["status"] == "ok" for r in summary(out))
    result = runner.invoke(app, ["sweep", "--checkpoint", str(checkpoint), "--bers", BERS, "--trials", "4",
                                 "--out", str(out)])
    assert result.exit_code == 2 and "eval.trials=3, not 4" in result.output, result.output
    assert mtimes(out) == first
    other = in_tmp / "s4"
    sweep(other, checkpoint, "--trials", "4")
    assert [r["trials"] for r in summary(other)] == ["4"] * 3 and all(r["status"] == "ok" for r in summary(other))


def test_rate_settings_of_a_finished_point_are_checked_before_reuse(trained_digits, in_tmp):
    """Without the sweep's record (a directory copied by hand), a point whose results were made with other trials is
    run again, never reused."""
    checkpoint, _ = trained_digits
    out = in_tmp / "s"
    sweep(out, checkpoint)
    first = mtimes(out)
    (out / ".qfi_sweep.json").unlink()
    sweep(out, checkpoint, "--trials", "4")
    assert all(mtimes(out)[k] != v for k, v in first.items()), "4-trial points must not reuse 3-trial results"
    assert [r["trials"] for r in summary(out)] == ["4"] * 3 and all(r["status"] == "ok" for r in summary(out))


def test_failing_point_does_not_end_the_sweep(trained_digits, in_tmp):
    checkpoint, _ = trained_digits
    out = in_tmp / "s"
    result = runner.invoke(app, ["sweep", "--checkpoint", str(checkpoint), "--bers", "1e-3", "--trials", "2",
                                 "--out", str(out), "fault.layers=[conv1],[nomatch*],[fc]"])
    assert result.exit_code == 2, result.output
    assert "1 of 3 sweep point(s) failed" in result.output and "match no quantized layer" in result.output
    rows = list(csv.DictReader(open(out / "summary.csv")))
    status = {r["fault.layers"]: r["status"] for r in rows}
    assert status == {"['conv1']": "ok", "['nomatch*']": "failed", "['fc']": "ok"}, status
    failed = json.loads(next(out.rglob("*nomatch*/**/results.json")).read_text())
    assert failed["status"] == "failed" and "match no quantized layer" in failed["error"]


@pytest.mark.slow
def test_sweep_trains_each_model_once(in_tmp):
    out = in_tmp / "s"
    result = runner.invoke(app, ["sweep", "--train", "--bers", "1e-3,1e-2", "--trials", "2", "--out", str(out),
                                 "quant.wbits=4,8", *SWEEP_TRAIN])
    assert result.exit_code == 0, result.output
    models = sorted(out.glob("models/*/model.pt"))
    assert len(models) == 2
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 4 and {r["quant.wbits"] for r in rows} == {"4", "8"}
    stamps = [m.stat().st_mtime_ns for m in models]
    shutil.rmtree(out / "quant.wbits=4" / "fault.ber=0.01")
    assert runner.invoke(app, ["sweep", "--train", "--bers", "1e-3,1e-2", "--trials", "2", "--out", str(out),
                               "quant.wbits=4,8", *SWEEP_TRAIN]).exit_code == 0
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
