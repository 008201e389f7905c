"""The qfi command line, driven through Typer's CliRunner on tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from qfi_cli.cli import app

runner = CliRunner()
TINY_TRAIN = ["train.epochs=2", "train.limit=256", "model.width=4"]


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result


def test_help_lists_every_subcommand_and_option():
    """Each command has a row in the Commands panel (its name, then its description), and each command's help lists
    every option it takes (the app's own description mentions "train": a bare substring check proves nothing)."""
    import re

    import typer

    group = typer.main.get_command(app)
    assert {"train", "inject-eval", "sweep", "report"} <= set(group.commands)
    out = invoke("--help").output
    for name, command in group.commands.items():
        assert re.search(rf"^\W*{re.escape(name)} {{2,}}\w", out, re.M), f"no row for {name} in:\n{out}"
        sub = invoke(name, "--help").output
        options = [o for p in command.params for o in p.opts if o.startswith("--")]
        assert options or name == "report"
        for option in options:
            assert re.search(rf"{re.escape(option)}\b", sub), f"{name} --help does not list {option}"
    train_options = [o for p in group.commands["train"].params for o in p.opts]
    assert {"--model", "--dataset", "--wbits", "--abits", "--rho", "--epochs", "--seed", "--out"} <= set(train_options)


def test_cfg_job_prints_the_composed_config(in_tmp):
    result = invoke("train", "--wbits", "4", "--cfg", "job")
    assert result.exit_code == 0, result.output
    assert "wbits: 4" in result.output and "name: digits_cnn" in result.output
    assert not (in_tmp / "outputs").exists() or not list((in_tmp / "outputs").rglob("model.pt"))


def test_train_writes_checkpoint_metrics_and_latest(in_tmp):
    out = in_tmp / "run"
    result = invoke("train", "--wbits", "4", "--rho", "0.05", "--seed", "3", "--out", str(out), *TINY_TRAIN)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "train_loss", "epochs", "seconds"):
        assert key in metrics
    assert metrics["epochs"] == 2 and 0.0 <= metrics["test_accuracy"] <= 1.0
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["config"]["quant"]["wbits"] == 4 and ckpt["config"]["sam"]["rho"] == 0.05
    assert ckpt["config"]["seed"] == 3 and "state_dict" in ckpt
    assert (out / ".hydra" / "config.yaml").is_file()
    latest = (in_tmp / "outputs" / "latest_checkpoint.txt").read_text().strip()
    assert Path(latest) == (out / "model.pt").resolve()
    assert "test_accuracy" in result.output


def test_training_is_deterministic_on_cpu(in_tmp):
    for name in ("a", "b"):
        assert invoke("train", "--out", str(in_tmp / name), "device=cpu", *TINY_TRAIN).exit_code == 0
    a = torch.load(in_tmp / "a" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(in_tmp / "b" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_runs_started_in_the_same_instant_get_their_own_dirs(in_tmp, monkeypatch):
    """Runs and sweeps without --out started at the same instant (Hydra's clock frozen) each finish in their own
    directory: the microsecond of the start, then a random tag (``${qfi_unique:}``)."""
    import datetime as dt

    import hydra.core.utils

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 1, 2, 3, 4, 5, 678901)

    monkeypatch.setattr(hydra.core.utils, "datetime", Frozen)  # what Hydra's ${now:...} reads
    evaluate = ["--trials", "1", "eval.limit=50", "device=cpu"]
    for _ in range(2):
        result = invoke("train", "train.epochs=1", "train.limit=64", "model.width=4", "device=cpu")
        assert result.exit_code == 0, result.output
        result = invoke("inject-eval", *evaluate)  # the model the train before it recorded
        assert result.exit_code == 0, result.output
        result = invoke("sweep", "--bers", "1e-3", "fault.model=bitflip,stuck_at_0", *evaluate)
        assert result.exit_code == 0, result.output
    for command, done in (("train", "model.pt"), ("inject_eval", "results.json"), ("sweep", "summary.csv")):
        dirs = list((in_tmp / "outputs" / command).iterdir())
        assert len(dirs) == 2 and all((d / done).is_file() for d in dirs), dirs
        assert all(d.name.startswith("2024-01-02_03-04-05-678901-") for d in dirs), dirs
    for sweep in (in_tmp / "outputs" / "sweep").iterdir():  # every point of a sweep lies in its one directory
        assert len(list(sweep.glob("fault.model=*/**/results.json"))) == 2


def test_run_dirs_sort_by_start_time(in_tmp):
    made = []
    for _ in range(3):
        before = set((in_tmp / "outputs" / "train").glob("*"))
        assert invoke("train", "train.epochs=0", "model.width=4", "device=cpu").exit_code == 0
        (new,) = set((in_tmp / "outputs" / "train").glob("*")) - before
        made.append(new.name)
    assert sorted(made) == made and len(set(made)) == 3


def test_user_mistake_is_one_line_without_traceback(in_tmp):
    result = invoke("train", "--wbits", "9", "--out", str(in_tmp / "bad"))
    assert result.exit_code != 0
    assert "2..8 or 32" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2
