"""The one Hydra task function: composes conf/ and dispatches ``command`` to the engine.

``qfi_cli.cli`` calls ``run(overrides)``; sweeps (``--multirun``) reach the same task function through
Hydra's launchers (basic, joblib, submitit), which pickle it: it stays at module level.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from qfi_cli.engine.evaluate import RESULTS, check_eval_settings, inject_eval
from qfi_cli.engine.train import MODEL, train
from qfi_cli.errors import QfiError
from qfi_cli.faults import FaultConfig
from qfi_cli.io import latest_checkpoint, read_json, record_latest, write_json
from qfi_cli.paths import conf_dir
from qfi_cli.progress import Reporter

TRAIN_KEYS = ("model", "data", "quant", "sam", "train", "seed", "device")


def point_dirname(override_dirname: str) -> str:
    """A directory name for a sweep point (Hydra's override_dirname with unsafe characters replaced).

    >>> point_dirname("fault.ber=0.0001,model=resnet20")
    'fault.ber=0.0001,model=resnet20'
    >>> point_dirname("")
    'default'
    """
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", override_dirname) or "default"


if not OmegaConf.has_resolver("qfi_point"):
    OmegaConf.register_new_resolver("qfi_point", point_dirname)

# What the last task run in this process produced (the CLI prints it) or the user mistake it hit.
LAST: dict[str, Any] = {"result": None, "error": None}


def _overridden(cfg: DictConfig) -> dict[str, Any]:
    """This job's overrides as key -> value read back from the composed config (never from the override text:
    Hydra normalises ``1e-4`` to ``0.0001``). A config-group choice maps to its ``name``."""
    values = {}
    for item in HydraConfig.get().overrides.task:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item or key.startswith(("hydra", "paths")):
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig):
            value = value.get("name", key)
        values[key] = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
    return values


def _point(cfg: DictConfig) -> dict[str, Any]:
    """The swept values of this sweep point (single-valued settings are excluded by the CLI)."""
    excluded = set(HydraConfig.get().job.config.override_dirname.exclude_keys)
    return {k: v for k, v in _overridden(cfg).items() if k not in excluded}


def _finished(out_dir: Path, cfg: dict[str, Any], point: dict[str, Any]) -> dict[str, Any] | None:
    """The point's earlier results when they are complete and were made with the same settings."""
    try:
        done = read_json(out_dir / RESULTS)
    except (OSError, ValueError):
        return None
    fault = FaultConfig.from_dict(cfg["fault"]).as_dict()
    same = (done.get("status") == "ok" and done.get("point") == point and done.get("fault") == fault
            and done.get("trials") == cfg["eval"]["trials"] and done.get("seed") == cfg["seed"]
            and len(done.get("accuracies", ())) == done.get("trials"))
    return done if same else None


def _sweep_model(cfg: dict[str, Any], sweep_dir: Path, reporter: Reporter) -> Path:
    """Train the model this point's config describes once per sweep (a lock guards parallel points)."""
    train_cfg = {k: cfg[k] for k in TRAIN_KEYS}
    digest = hashlib.sha256(json.dumps(train_cfg, sort_keys=True).encode()).hexdigest()[:12]
    model_dir = sweep_dir / "models" / digest
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (model_dir / MODEL).is_file():
            write_json(model_dir / "train_config.json", train_cfg)
            train({**cfg, "command": "train"}, model_dir, reporter, resume=(model_dir / "last.pt").is_file())
    return model_dir / MODEL


def _expected(cfg: DictConfig) -> dict[str, Any]:
    """What the user asked of the model (``model=lenet5``, ``quant.wbits=4``): the checkpoint must agree."""
    expect = {}
    for key, value in _overridden(cfg).items():
        section = key.split(".")[0]
        if section in ("model", "quant", "sam", "train"):
            expect[key if "." in key else key + ".name"] = value
    return expect


def _checkpoint(cfg: dict[str, Any]) -> Path:
    if cfg.get("checkpoint"):
        return Path(cfg["checkpoint"])
    return latest_checkpoint(cfg["paths"]["root"])


def task(cfg: DictConfig) -> Any:
    """Run one job: ``train`` or ``inject_eval`` (one sweep point when Hydra runs a multirun)."""
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    reporter = Reporter(live=None if not multirun or hc.launcher.get("_target_", "").endswith("BasicLauncher")
                        else False)
    plain = OmegaConf.to_container(cfg, resolve=True)
    point = _point(cfg) if multirun else {}
    try:
        if cfg.command == "train":
            result = train(plain, out_dir, reporter, resume=bool(cfg.resume))
            record_latest(cfg.paths.root, out_dir / MODEL)
        elif cfg.command == "inject_eval":
            check_eval_settings(plain)
            if multirun and (done := _finished(out_dir, plain, point)) is not None:
                reporter.log(f"skip {out_dir.name}: finished before")
                LAST["result"] = done
                return done
            checkpoint = (_sweep_model(plain, Path(hc.sweep.dir), reporter) if multirun and cfg.sweep_train
                          else _checkpoint(plain))
            expect = {} if multirun and cfg.sweep_train else _expected(cfg)
            result = inject_eval(plain, out_dir, checkpoint, reporter, expect, point)
        else:
            raise QfiError(f"unknown command {cfg.command!r}: use train or inject_eval")
    except Exception as e:  # noqa: BLE001 - a sweep point records any failure and the sweep goes on
        if not multirun:
            if isinstance(e, QfiError):
                LAST["error"] = str(e)
                return None
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, QfiError):
            message = f"{type(e).__name__}: {message}"
            traceback.print_exc()
        write_json(out_dir / RESULTS, {"status": "failed", "error": message, "point": point})
        reporter.log(f"point {out_dir.name} failed: {message}")
        return None
    LAST["result"] = result
    return result


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Any:
    return task(cfg)


def run(overrides: list[str], prog: str = "qfi") -> dict[str, Any]:
    """Run the Hydra app with ``overrides`` as its command line (``--multirun`` and ``--cfg job`` included).

    Returns ``LAST`` (result and error of the last task run in this process).
    """
    LAST.update(result=None, error=None)
    saved = sys.argv
    from qfi_cli.validate import split_flags

    plain, flags = split_flags(overrides)
    sys.argv = [prog, *plain, *flags]  # argparse takes the overrides before Hydra's flags
    try:
        main()
    finally:
        sys.argv = saved
    return LAST
