"""Experiment trackers read back through their own libraries: metrics.csv, TensorBoard event files, an MLflow store."""

from __future__ import annotations

import csv
import json
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
from omegaconf import OmegaConf

from qfi_cli.errors import QfiError
from qfi_cli.loggers import LOGGERS, MLRUNS_DIR, flatten, log_run, make_logger
from qfi_cli.paths import conf_dir

PARAMS = {"model": {"name": "digits_cnn", "width": 8}, "fault": {"ber": 1e-3, "model": "bitflip"},
          "eval": {"limit": None}, "seed": 0, "point": {"fault.ber": 1e-3}}
HISTORY = [{"epoch": 1, "train_loss": 1.25, "train_accuracy": 0.6, "test_accuracy": 0.55},
           {"epoch": 2, "train_loss": 0.7, "train_accuracy": 0.8, "test_accuracy": 0.78},
           {"epoch": 3, "train_loss": 0.3, "train_accuracy": 0.9, "test_accuracy": 0.88}]
RESULTS = {"ber": 1e-3, "trials": 3, "accuracy_mean": 0.8123, "accuracies": [0.8, 0.81, 0.83], "status": "ok",
           "accuracy_ci95": None}


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A run directory with results.json and a plot, under an outputs root; no tracker settings from outside."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "outputs" / "sweep" / "fault.ber=0.001"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(RESULTS))
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1], [1, 0])
    fig.savefig(run_dir / "ber_curve.png")
    plt.close(fig)
    return run_dir


def artifacts(run_dir):
    return [run_dir / "results.json", run_dir / "ber_curve.png", run_dir / "not_written.json"]


def test_csv_writes_rows_and_nothing_else(run):
    before = sorted(p.name for p in run.iterdir())
    log_run({"name": "csv"}, run, run.parents[1], PARAMS, RESULTS, artifacts(run), history=HISTORY)
    assert sorted(p.name for p in run.iterdir()) == sorted(before + ["metrics.csv"])
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3", ""]
    assert [float(r["train_loss"]) for r in rows[:3]] == [h["train_loss"] for h in HISTORY]
    assert rows[3]["train_loss"] == "" and float(rows[3]["accuracy_mean"]) == RESULTS["accuracy_mean"]
    assert set(rows[0]) == {"step", "train_loss", "train_accuracy", "test_accuracy", "ber", "trials",
                            "accuracy_mean"}


def test_csv_appends_to_an_earlier_run(run):
    with make_logger(None, run, run.parents[1]) as log:
        log.log_metrics({"train_loss": 1.0}, step=1)
    with make_logger({"name": "csv"}, run, run.parents[1]) as log:  # a resumed run goes on in the same file
        log.log_metrics({"train_loss": 0.5, "test_accuracy": 0.9}, step=2)
    assert (run / "metrics.csv").read_text() == "step,train_loss,test_accuracy\n1,1.0,\n2,0.5,0.9\n"


def test_tensorboard_event_files_read_back(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_run({"name": "tensorboard"}, run, run.parents[1], PARAMS, RESULTS, artifacts(run), history=HISTORY)
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    for key in ("train_loss", "train_accuracy", "test_accuracy"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == [float(np.float32(h[key])) for h in HISTORY]  # stored as float32
    assert [(e.step, e.value) for e in acc.Scalars("accuracy_mean")] == [(0, float(np.float32(0.8123)))]
    assert "accuracies" not in acc.Tags()["scalars"]
    image = acc.Images("ber_curve")[0]
    assert (image.width, image.height) == (100, 75)  # 2 x 1.5 inches at 50 dpi
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]
             if tag.endswith("text_summary")}
    assert "| model.width | 8 |" in texts["params/text_summary"]
    assert '"accuracy_mean": 0.8123' in texts["results.json/text_summary"]
    hparams = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert b"model.width" in hparams["_hparams_/session_start_info"]


@pytest.fixture
def mlflow_client():
    from mlflow.tracking import MlflowClient

    return lambda uri: MlflowClient(tracking_uri=uri)


def test_mlflow_file_store_under_the_outputs_root(run, mlflow_client):
    root = run.parents[1]
    log_run({"name": "mlflow"}, run, root, PARAMS, RESULTS, artifacts(run), history=HISTORY)
    client = mlflow_client((root / MLRUNS_DIR).as_uri())
    experiment = client.get_experiment_by_name("qfi")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == run.name and found.info.status == "FINISHED"
    assert found.data.params == {k: str(v) for k, v in flatten(PARAMS).items()}
    assert found.data.params["point.fault.ber"] == "0.001" and found.data.params["eval.limit"] == "None"
    for key in ("train_loss", "test_accuracy"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))
        assert history == [(h["epoch"], h[key]) for h in HISTORY]
    assert found.data.metrics["accuracy_mean"] == RESULTS["accuracy_mean"]
    assert "accuracies" not in found.data.metrics and "status" not in found.data.metrics
    assert sorted(a.path for a in client.list_artifacts(found.info.run_id)) == ["ber_curve.png", "results.json"]


def test_mlflow_tracking_uri_and_experiment_are_options(run, tmp_path, mlflow_client):
    elsewhere = (tmp_path / "team_store").as_uri()
    cfg = {"name": "mlflow", "tracking_uri": elsewhere, "experiment": "study", "run_name": "w4"}
    for _ in range(2):
        log_run(cfg, run, run.parents[1], PARAMS, RESULTS)
    assert not (run.parents[1] / MLRUNS_DIR).exists()
    client = mlflow_client(elsewhere)
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert [r.info.run_name for r in runs] == ["w4", "w4"]


def test_mlflow_run_that_raises_is_failed(run, mlflow_client):
    with pytest.raises(RuntimeError):
        with make_logger({"name": "mlflow"}, run, run.parents[1]) as log:
            log.log_metrics({"train_loss": 2.0}, step=1)
            raise RuntimeError("diverged")
    client = mlflow_client((run.parents[1] / MLRUNS_DIR).as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("qfi").experiment_id])
    assert found.info.status == "FAILED" and found.data.metrics == {"train_loss": 2.0}


def hide(monkeypatch, module):
    """Make ``import module`` (and its submodules) fail as if it were not installed."""
    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")] + [module]:
        monkeypatch.setitem(sys.modules, loaded, None)


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_missing_package_names_the_extra(run, monkeypatch, name):
    hide(monkeypatch, name)
    if name == "tensorboard":
        hide(monkeypatch, "torch.utils.tensorboard")
    with pytest.raises(QfiError, match=rf"^the {name} logger needs .*: pip install 'qfi\[{name}\]'$"):
        make_logger({"name": name}, run, run.parents[1])


def test_broken_install_is_not_reported_as_missing(run, monkeypatch):
    hide(monkeypatch, "mlflow.tracking")
    with pytest.raises(QfiError, match=r"^MLflow is installed but fails to import: import of mlflow.tracking"):
        make_logger({"name": "mlflow"}, run, run.parents[1])


def test_unknown_logger_or_option_is_one_line(run):
    with pytest.raises(QfiError, match="unknown logger 'wandb'; choose one of: csv, mlflow, tensorboard"):
        make_logger({"name": "wandb"}, run, run.parents[1])
    with pytest.raises(QfiError, match=r"logger mlflow has no option 'uri' \(its options: tracking_uri, "):
        make_logger({"name": "mlflow", "uri": "x"}, run, run.parents[1])


@pytest.mark.parametrize("name", LOGGERS.names())
def test_config_files_match_the_loggers(run, name):
    cfg = OmegaConf.to_container(OmegaConf.load(conf_dir() / "logger" / f"{name}.yaml"))
    assert cfg["name"] == name
    make_logger(cfg, run, run.parents[1]).close()
