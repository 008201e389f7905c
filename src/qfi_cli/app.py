"""The one Hydra task function: composes conf/, reads it into a ``RunConfig`` and dispatches ``command``.

``qfi_cli.cli`` calls ``run(overrides)``, which hands the argument list to Hydra's own runner (no ``sys.argv``) and
gives back an ``Outcome`` that the task fills (no module-global state); sweeps (``--multirun``) reach the same task
function through Hydra's launchers (basic, joblib, submitit, ray), which pickle it: it stays at module level, and
remote points report through their files. The commands are the registry ``qfi_cli.commands.COMMANDS``; each gets a
``Job`` and owns its output files.
"""

from __future__ import annotations

import functools
import re
import secrets
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from qfi_cli.commands import COMMANDS, Job, Outcome, check, for_config
from qfi_cli.commands.base import rate_dirname, write_failure
from qfi_cli.config import RunConfig
from qfi_cli.errors import QfiError
from qfi_cli.layout import RESULTS
from qfi_cli.paths import conf_dir
from qfi_cli.progress import Reporter

CONFIG_NAME = "config"


def point_dirname(override_dirname: str) -> str:
    """A directory name for a sweep point (Hydra's override_dirname with unsafe characters replaced).

    >>> point_dirname("fault.ber=0.0001,model=resnet20")
    'fault.ber=0.0001,model=resnet20'
    >>> point_dirname("")
    'default'
    >>> point_dirname("+model.hidden=4")  # Hydra's prefixes (+, ++, ~) are dropped, as the points' keys drop them
    'model.hidden=4'
    """
    bare = re.sub(r"(^|,)[+~]+(?=[A-Za-z_])", r"\1", override_dirname)
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", bare) or "default"


def unique_suffix() -> str:
    """A short random tag that keeps apart the run (or sweep) dirs of runs started in the same microsecond.

    Registered as ``${qfi_unique:}`` with ``use_cache``: one value per composed config, so every later reading of
    ``hydra.run.dir`` / ``hydra.sweep.dir`` (and every sweep point, whose config gets the cache copied) agrees.

    >>> len(unique_suffix()), unique_suffix() != unique_suffix()
    (6, True)
    """
    return secrets.token_hex(3)


if not OmegaConf.has_resolver("qfi_point"):
    OmegaConf.register_new_resolver("qfi_point", point_dirname)
if not OmegaConf.has_resolver("qfi_unique"):
    OmegaConf.register_new_resolver("qfi_unique", unique_suffix, use_cache=True)

# ---------------------------------------------------------------------------------------------------------- task

def _overridden(cfg: DictConfig) -> dict[str, Any]:
    """This job's overrides as key -> value read back from the composed config (never from the override text:
    Hydra normalises ``1e-4`` to ``0.0001``). A config-group choice maps to its ``name`` (or its section)."""
    values = {}
    for item in HydraConfig.get().overrides.task:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item or key.startswith(("hydra", "paths")):
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig):
            value = value.get("name", OmegaConf.to_container(value, resolve=True))
        values[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
    return values


def _point(cfg: DictConfig) -> dict[str, Any]:
    """The swept values of this sweep point (single-valued settings are excluded by the CLI)."""
    excluded = set(HydraConfig.get().job.config.override_dirname.exclude_keys)
    return {k: v for k, v in _overridden(cfg).items() if k not in excluded}


def _remove_if_empty(directory: Path) -> None:
    """A run that failed before writing anything leaves no directory behind."""
    try:
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    except OSError:
        pass


def _job(cfg: DictConfig, out_dir: Path, multirun: bool, point: dict[str, Any], reporter: Reporter) -> Job:
    """The typed config and what the command knows of its Hydra job (the commands' rules checked again)."""
    hc = HydraConfig.get()
    composed = OmegaConf.to_container(cfg, resolve=True)
    run_cfg = RunConfig.from_dict(composed)
    check(run_cfg)
    return Job(run_cfg, out_dir, multirun, Path(hc.sweep.dir) if multirun else None, point, _overridden(cfg),
               composed, reporter, overrides=list(hc.overrides.task))


def task(cfg: DictConfig, outcome: Optional[Outcome] = None) -> Any:
    """Run one job (one sweep point when Hydra runs a multirun); ``outcome`` (in this process) gets its result,
    its user mistake and its run directory."""
    hc = HydraConfig.get()
    # the directory Hydra made, read without resolving it again (a literal "${...}" in --out stays literal)
    out_dir = Path(OmegaConf.to_container(hc.runtime, resolve=False)["output_dir"])
    multirun = hc.mode == RunMode.MULTIRUN
    reporter = Reporter(live=None if not multirun or hc.launcher.get("_target_", "").endswith("BasicLauncher")
                        else False)
    point = _point(cfg) if multirun else {}
    outcome = outcome if outcome is not None else Outcome()
    outcome.out_dir = str(out_dir)
    try:
        job = _job(cfg, out_dir, multirun, point, reporter)
        if job.cfg.command != "train":
            job.snapshot(job.cfg)
        result = for_config(job.cfg.command).job(job)
    except Exception as e:  # noqa: BLE001 - a sweep point records any failure and the sweep goes on
        if not multirun:
            _remove_if_empty(out_dir)
            if isinstance(e, QfiError):
                outcome.error = str(e)
                return None
            raise
        write_failure(out_dir / RESULTS, e, point, reporter)
        return None
    outcome.result = result
    return result


@hydra.main(config_path=str(conf_dir()), config_name=CONFIG_NAME, version_base="1.3")
def main(cfg: DictConfig) -> Any:
    """``python -m qfi_cli.app``: Hydra's own entry point (it reads ``sys.argv``); the CLI calls ``run``."""
    return task(cfg)


def run(overrides: list[str], prog: str = "qfi") -> Outcome:
    """Run the Hydra app with ``overrides`` as its argument list (``--multirun`` and ``--cfg job`` included),
    through Hydra's own runner: ``sys.argv`` is left alone. Returns the ``Outcome`` of the last job run in this
    process (remote sweep points report through their files)."""
    from hydra import version
    from hydra._internal.utils import _run_hydra, get_args_parser

    from qfi_cli.validate import split_flags

    plain, flags = split_flags(overrides)
    parser = get_args_parser()
    parser.prog = prog
    args = parser.parse_args([*plain, *flags])  # argparse takes the overrides before Hydra's flags
    outcome = Outcome()
    version.setbase("1.3")
    _run_hydra(args=args, args_parser=parser, task_function=functools.partial(task, outcome=outcome),
               config_path=str(conf_dir()), config_name=CONFIG_NAME)
    return outcome


__all__ = ["COMMANDS", "Job", "Outcome", "main", "point_dirname", "rate_dirname", "run", "task"]
