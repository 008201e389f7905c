"""Experiment trackers (the ``logger`` config group): ``csv`` (default), ``tensorboard``, ``mlflow``.

A tracker records one run (a training run or one inject-eval / sweep point): its parameters (the resolved
config, flattened to dotted keys), metrics per step (per epoch in training), and artifacts (files).
``make_logger`` opens the one the config names; ``log_run`` does a whole finished run in one call.

- ``csv``: one row per ``log_metrics`` call in ``<run dir>/metrics.csv`` (``step`` then the metric names);
  nothing else.
- ``tensorboard``: event files in ``<run dir>/tensorboard/`` (scalars per step, the params as text and as
  HParams, PNG artifacts as images, small text artifacts as text). Needs ``pip install 'qfi[tensorboard]'``.
- ``mlflow``: one MLflow run named after the run directory, in experiment ``experiment`` (default ``qfi``) of
  ``tracking_uri``; when that is null, ``$MLFLOW_TRACKING_URI`` or else a local file store
  ``<outputs root>/mlruns``. Needs ``pip install 'qfi[mlflow]'``.

>>> import tempfile, pathlib
>>> run = pathlib.Path(tempfile.mkdtemp())
>>> with make_logger({"name": "csv"}, run, run.parent) as log:
...     log.log_params({"train": {"lr": 0.1}})
...     log.log_metrics({"train_loss": 0.5, "test_accuracy": 0.9}, step=1)
>>> print((run / "metrics.csv").read_text().strip())
step,train_loss,test_accuracy
1,0.5,0.9
"""

from __future__ import annotations

import csv
import importlib.util
import inspect
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from qfi_cli.errors import QfiError
from qfi_cli.io import atomic_write
from qfi_cli.registry import Registry

METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
MLRUNS_DIR = "mlruns"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys (lists and other values are kept as they are).

    >>> flatten({"model": {"name": "lenet5", "width": 8}, "seed": 0, "bers": [1e-4, 1e-3], "empty": {}})
    {'model.name': 'lenet5', 'model.width': 8, 'seed': 0, 'bers': [0.0001, 0.001]}
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def scalars(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among ``values``' top-level entries (booleans, lists, nested dicts and None left out).

    >>> scalars({"accuracy_mean": 0.9, "trials": 10, "ok": True, "accuracies": [0.9], "rerr": None,
    ...          "nan": float("nan")})
    {'accuracy_mean': 0.9, 'trials': 10.0}
    """
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _import_failed(extra: str, package: str, error: ImportError) -> QfiError:
    """A one-line error for a tracker library that is missing or fails to import (``extra`` names the logger,
    qfi's extra and the library's module alike)."""
    if importlib.util.find_spec(extra) is None:
        return QfiError(f"the {extra} logger needs {package}: pip install 'qfi[{extra}]'")
    return QfiError(f"{package} is installed but fails to import: {str(error).strip().splitlines()[0]}")


class RunLogger:
    """One run in a tracker. This base records nothing; a tracker overrides what it keeps.

    Use it as a context manager: leaving the block closes the run, as ``FAILED`` when an exception escapes.
    """

    def __init__(self, run_dir: str | Path, root: str | Path) -> None:
        self.run_dir, self.root = Path(run_dir), Path(root)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the run's settings (nested dicts are flattened to dotted keys)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record numbers at ``step`` (an epoch; None for a run with one set of results)."""

    def log_artifact(self, path: str | Path) -> None:
        """Attach a file (results.json, a plot)."""

    def close(self, status: str = "FINISHED") -> None:
        """End the run: ``FINISHED``, ``FAILED`` or ``KILLED``."""

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close("FINISHED" if exc_type is None else "KILLED" if exc_type is KeyboardInterrupt else "FAILED")


LOGGERS: Registry[type[RunLogger]] = Registry("logger")


@LOGGERS.register("csv")
class CsvLogger(RunLogger):
    """Metrics as rows of ``<run dir>/metrics.csv``: the file is rewritten atomically with each new row, and its
    columns grow when a later row brings new names. Params and artifacts are not written (the run directory
    already holds the config and the files)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        path = self.run_dir / METRICS_CSV
        rows, columns = [], ["step"]
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows, columns = list(reader), list(reader.fieldnames or columns)
        columns += [k for k in metrics if k not in columns]
        rows.append({"step": "" if step is None else step, **metrics})

        def write(f: io.TextIOBase) -> None:
            w = csv.DictWriter(f, fieldnames=columns, restval="", lineterminator="\n")
            w.writeheader()
            w.writerows(rows)

        atomic_write(path, write, mode="w")


@LOGGERS.register("tensorboard")
class TensorBoardLogger(RunLogger):
    """TensorBoard event files in ``<run dir>/tensorboard/``: scalars per step, params as a text table and as
    HParams (written at close, with the last value of each scalar), PNG artifacts as images."""

    TEXT_SUFFIXES = (".json", ".csv", ".txt", ".yaml", ".md")
    TEXT_LIMIT = 100_000

    def __init__(self, run_dir: str | Path, root: str | Path) -> None:
        super().__init__(run_dir, root)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise _import_failed("tensorboard", "TensorBoard", e) from None
        self.writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))
        self._params: dict[str, Any] = {}
        self._last: dict[str, float] = {}
        self._closed = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flatten(params)
        self._params.update(flat)
        table = "\n".join(["| key | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in flat.items())])
        self.writer.add_text("params", table)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), global_step=step or 0)
            self._last[key] = float(value)

    def log_artifact(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix.lower() == ".png":
            from matplotlib.image import imread

            image = imread(path)  # HxWxC floats in [0, 1]
            self.writer.add_image(path.stem, image[..., :3] if image.ndim == 3 else image,
                                  dataformats="HWC" if image.ndim == 3 else "HW")
        elif path.suffix.lower() in self.TEXT_SUFFIXES and path.stat().st_size <= self.TEXT_LIMIT:
            self.writer.add_text(path.name, "```\n" + path.read_text(errors="replace") + "\n```")

    def close(self, status: str = "FINISHED") -> None:
        if self._closed:
            return
        self._closed = True
        if self._params:
            from torch.utils.tensorboard.summary import hparams

            values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in self._params.items()}
            for summary in hparams(values, dict(self._last)):
                self.writer.file_writer.add_summary(summary)
        self.writer.close()


@LOGGERS.register("mlflow")
class MlflowLogger(RunLogger):
    """One MLflow run (named after the run directory) through ``MlflowClient``: params flattened to dotted keys,
    metrics per step, artifacts with ``log_artifact``. A ``file:`` store is allowed explicitly
    (``MLFLOW_ALLOW_FILE_STORE``), since MLflow 3 asks for that opt-in."""

    PARAM_LIMIT = 500  # characters of a param value every MLflow version accepts
    BATCH = 100        # params per log_batch request (MLflow's limit)

    def __init__(self, run_dir: str | Path, root: str | Path, tracking_uri: str | None = None,
                 experiment: str = "qfi", run_name: str | None = None) -> None:
        super().__init__(run_dir, root)
        try:
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise _import_failed("mlflow", "MLflow", e) from None
        self.uri = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                    or (Path(root).resolve() / MLRUNS_DIR).as_uri())
        if self.uri.startswith("file:") or "://" not in self.uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.run_id = self.client.create_run(self._experiment_id(experiment, MlflowException),
                                                 run_name=run_name or self.run_dir.name,
                                                 tags={"qfi.run_dir": str(self.run_dir.resolve())}).info.run_id
        except MlflowException as e:
            raise QfiError(f"MLflow at {self.uri}: {str(e).strip().splitlines()[0]}") from None
        self._closed = False

    def _experiment_id(self, name: str, error: type[Exception]) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except error:  # another sweep point created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[: self.PARAM_LIMIT]) for k, v in flatten(params).items()]
        for i in range(0, len(items), self.BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + self.BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()])

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        if not self._closed:
            self._closed = True
            self.client.set_terminated(self.run_id, status)


def make_logger(cfg: Mapping[str, Any] | None, run_dir: str | Path, root: str | Path) -> RunLogger:
    """Open the tracker that ``cfg`` (the ``logger`` config: ``name`` and its options) describes for one run.

    ``run_dir`` is the run's (or sweep point's) directory, ``root`` the outputs root (``paths.root``).

    >>> make_logger({"name": "csv"}, "run", "outputs").__class__.__name__
    'CsvLogger'
    >>> make_logger({"name": "csv", "colour": "red"}, "run", "outputs")
    Traceback (most recent call last):
    qfi_cli.errors.QfiError: logger csv has no option 'colour' (its options: none)
    """
    options = dict(cfg or {})
    name = str(options.pop("name", "csv"))
    cls = LOGGERS.get(name)
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("run_dir", "root")]
    for key in options:
        if key not in accepted:
            raise QfiError(f"logger {name} has no option {key!r} (its options: {', '.join(accepted) or 'none'})")
    return cls(run_dir, root, **options)


def log_run(cfg: Mapping[str, Any] | None, run_dir: str | Path, root: str | Path, params: Mapping[str, Any],
            metrics: Mapping[str, Any] | None = None, artifacts: Iterable[str | Path] = (),
            history: Iterable[Mapping[str, Any]] | None = None, status: str = "FINISHED") -> None:
    """Record a finished run in one call: ``params``; each ``history`` row at step = its ``epoch`` (or its
    position from 1); the finite numbers of ``metrics`` (without a step); the ``artifacts`` that exist.

    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> log_run({"name": "csv"}, run, run.parent, {"seed": 0}, {"accuracy_mean": 0.8, "accuracies": [0.8]},
    ...         history=[{"epoch": 1, "train_loss": 0.7}])
    >>> print((run / "metrics.csv").read_text().strip())
    step,train_loss,accuracy_mean
    1,0.7,
    ,,0.8
    """
    log = make_logger(cfg, run_dir, root)
    with log:
        log.log_params(params)
        for i, row in enumerate(history or (), start=1):
            log.log_metrics(scalars({k: v for k, v in row.items() if k != "epoch"}), step=int(row.get("epoch", i)))
        if metrics and (numbers := scalars(metrics)):
            log.log_metrics(numbers)
        for path in artifacts:
            if Path(path).is_file():
                log.log_artifact(path)
        log.close(status)  # leaving the block closes it again: a no-op
