"""The one Hydra task function: composes conf/, reads it into a ``RunConfig`` and dispatches ``command``.

``qfi_cli.cli`` calls ``run(overrides)``; sweeps (``--multirun``) reach the same task function through Hydra's
launchers (basic, joblib, submitit), which pickle it: it stays at module level. Commands are registered by name in
``COMMANDS`` (``train``, ``inject_eval``, ``sensitivity``, ``attack``); each gets a ``Job`` and owns its output
files; this module stamps sweep bookkeeping (``point``, ``status``) on what the engine returns.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import re
import secrets
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from qfi_cli.config import RunConfig
from qfi_cli.engine.evaluate import inject_eval, rates
from qfi_cli.engine.train import train
from qfi_cli.errors import QfiError, first_line
from qfi_cli.io import latest_checkpoint, load_checkpoint, read_json, record_latest, write_json
from qfi_cli.layout import LAST as LAST_CHECKPOINT
from qfi_cli.layout import ATTACK, ATTACK_CURVE, MODEL, MODELS_DIR, RESULTS, TRAIN_CONFIG
from qfi_cli.loggers import log_run
from qfi_cli.paths import conf_dir
from qfi_cli.progress import Reporter
from qfi_cli.registry import Registry

TRAIN_KEYS = ("model", "data", "quant", "sam", "train", "seed", "device", "recipe")
# Keys that may differ from the saved run when resuming it: where and how to run, not what to train.
RESUME_FREE = ("command", "resume", "overwrite", "device", "checkpoint", "logger", "trust_code")


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


def rate_dirname(ber: float | None, count: int | None = None) -> str:
    """The subdirectory of one rate when a job evaluates several.

    >>> rate_dirname(1e-05), rate_dirname(None, 10)
    ('fault.ber=1e-05', 'fault.count=10')
    """
    return f"fault.ber={ber!r}" if ber is not None else f"fault.count={count}"


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

# What the last task run in this process produced (the CLI prints it), the user mistake it hit, and the rows of
# the last sweep's report (the CLI counts failed points).
LAST: dict[str, Any] = {"result": None, "error": None, "rows": None, "out_dir": None}


@dataclass
class Job:
    """What a command knows about its Hydra job."""

    cfg: RunConfig
    out_dir: Path
    multirun: bool
    sweep_dir: Path | None
    point: dict[str, Any]
    explicit: dict[str, Any]
    composed: dict[str, Any]
    reporter: Reporter = field(default_factory=Reporter)


COMMANDS: Registry[Callable[[Job], Any]] = Registry("command")


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


def _select(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


# -------------------------------------------------------------------------------------------------------- train

def _resume_config(job: Job) -> RunConfig:
    """The saved run's config, with the flags given now checked against it (a contradiction names the key)."""
    out = job.out_dir
    if (out / MODEL).is_file():
        raise QfiError(f"nothing to resume in {out}: it holds a finished run ({MODEL}); start a new run with "
                       "another --out")
    if not (out / LAST_CHECKPOINT).is_file():
        raise QfiError(f"nothing to resume in {out}: no {LAST_CHECKPOINT} (start without --resume)")
    saved = load_checkpoint(out / LAST_CHECKPOINT, map_location="cpu", trust=job.cfg.trust())["config"]
    given = job.cfg.as_dict()  # read as the saved config was (paths resolved: model.init, data.root)
    for key, value in job.explicit.items():
        if key.split(".")[0] in RESUME_FREE:
            continue
        now = _select(given, key)
        was = _select(saved, key)
        if isinstance(now, dict):  # a group choice: compare the whole section
            diff = next((k for k in now if now[k] != (was or {}).get(k)), None)
            if diff is None:
                continue
            key, now, was = f"{key}.{diff}", now[diff], (was or {}).get(diff)
        if now != was:
            raise QfiError(f"--resume continues the run in {out} as it was started: {key}={now} contradicts its "
                           f"{key}={was} (drop it, or start a new run with another --out)")
    effective = {**saved, "device": job.cfg.device, "resume": True, "command": "train",
                 "trust_code": job.cfg.trust_code, "paths": {"root": job.cfg.paths.root}}
    return RunConfig.from_dict(effective)


def _train_command(job: Job) -> dict[str, Any]:
    cfg, out = job.cfg, job.out_dir
    if cfg.resume:
        cfg = _resume_config(job)
    elif not cfg.overwrite:
        if (out / MODEL).is_file():
            raise QfiError(f"{out} already holds a finished run ({MODEL}): choose another --out, or pass "
                           "--overwrite to replace it")
        if (out / LAST_CHECKPOINT).is_file():
            raise QfiError(f"{out} holds an interrupted run ({LAST_CHECKPOINT}): pass --resume to continue it, or "
                           "--overwrite to start over")
    _snapshot(job, cfg)
    metrics = train(cfg, out, job.reporter, resume=cfg.resume)
    record_latest(cfg.paths.root, out / MODEL)
    return metrics


COMMANDS.register("train")(_train_command)


# -------------------------------------------------------------------------------------------------- inject-eval

def _sweep_model(cfg: RunConfig, sweep_dir: Path, reporter: Reporter) -> Path:
    """Train the model this point's config describes once per sweep (a lock guards parallel points)."""
    plain = cfg.as_dict()
    train_cfg = {k: plain[k] for k in TRAIN_KEYS}
    if cfg.fault.enable_in_training:
        train_cfg["fault"] = plain["fault"]
    digest = hashlib.sha256(json.dumps(train_cfg, sort_keys=True).encode()).hexdigest()[:12]
    model_dir = sweep_dir / MODELS_DIR / digest
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (model_dir / MODEL).is_file():
            write_json(model_dir / TRAIN_CONFIG, train_cfg)
            run_cfg = RunConfig.from_dict({**plain, "command": "train"})
            train(run_cfg, model_dir, reporter, resume=(model_dir / LAST_CHECKPOINT).is_file())
    return model_dir / MODEL


def _expected(job: Job) -> dict[str, Any]:
    """What the user asked of the model (``model=lenet5``, ``quant.wbits=4``): the checkpoint must agree."""
    expect = {}
    for key, value in job.explicit.items():
        if key.split(".")[0] in ("model", "quant", "sam", "train", "recipe"):
            if isinstance(value, dict):
                continue
            expect[key if "." in key or key == "recipe" else key + ".name"] = value
    return expect


def _checkpoint(cfg: RunConfig) -> Path:
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if path.is_dir():
            if (path / MODEL).is_file():
                return path / MODEL
            raise QfiError(f"--checkpoint {path} is a directory without {MODEL}: pass the model file")
        return path
    return latest_checkpoint(cfg.paths.root)


def _finished(path: Path, job: Job, cfg: RunConfig, ber: float | None, count: int | None) -> dict[str, Any] | None:
    """A rate's earlier results when they are complete and were made with the same settings."""
    try:
        done = read_json(path)
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict):
        return None
    fault = cfg.fault.as_dict() | {"ber": ber, "count": count if count is not None else cfg.fault.count}
    same = (done.get("status") == "ok" and done.get("point") == _rate_point(job, ber, count)
            and done.get("fault") == fault and done.get("trials") == cfg.eval.trials
            and done.get("fault_seed") == cfg.eval.fault_seed
            and isinstance(done.get("accuracies"), list) and len(done["accuracies"]) == done.get("trials"))
    return done if same else None


def _rate_point(job: Job, ber: float | None, count: int | None) -> dict[str, Any]:
    if ber is None:
        return {**job.point, "fault.count": count} if "fault.count" in job.point else dict(job.point)
    return {**job.point, "fault.ber": ber}


def _inject_eval_command(job: Job) -> Any:
    cfg = job.cfg
    levels = rates(cfg)
    split = cfg.eval.bers is not None or len(levels) > 1  # one subdirectory per rate
    paths = [job.out_dir / rate_dirname(b, c) / RESULTS if split else job.out_dir / RESULTS for b, c in levels]
    done = {i: r for i, ((b, c), p) in enumerate(zip(levels, paths))
            if job.multirun and (r := _finished(p, job, cfg, b, c)) is not None}
    todo = [i for i in range(len(levels)) if i not in done]
    if done:
        job.reporter.log(f"skip {len(done)} finished rate(s) of {job.out_dir.name}")
    results = dict(done)
    if todo:
        try:
            checkpoint = (_sweep_model(cfg, job.sweep_dir, job.reporter) if job.multirun and cfg.sweep_train
                          else _checkpoint(cfg))
            expect = {} if job.multirun and cfg.sweep_train else _expected(job)
            part = cfg
            if split:
                plain = cfg.as_dict()
                part = RunConfig.from_dict(plain | {"eval": plain["eval"] | {"bers": [levels[i][0] for i in todo]}})
            pending = iter(todo)

            def save(res: dict[str, Any]) -> None:  # each rate as soon as it is complete
                i = next(pending)
                res.update(status="ok", point=_rate_point(job, *levels[i]))
                write_json(paths[i], res)
                log_run(cfg.logger, paths[i].parent, cfg.paths.root, {**cfg.as_dict(), "point": res["point"]}, res,
                        [paths[i]])
                results[i] = res

            inject_eval(part, checkpoint, job.reporter, expect, on_result=save,
                        save_faults=_in_run(job, cfg.eval.save_faults))
        except Exception as e:
            if job.multirun:  # every rate this job still owed records the failure
                for i in todo:
                    if i not in results:
                        _write_failure(paths[i].parent, e, _rate_point(job, *levels[i]), job.reporter)
                return None
            raise
    ordered = [results[i] for i in range(len(levels))]
    return ordered if split else ordered[0]


COMMANDS.register("inject_eval")(_inject_eval_command)


def _in_run(job: Job, path: str | None) -> Path | None:
    """A file setting: relative paths lie in the run (or sweep point) directory."""
    return None if path is None else job.out_dir / Path(path).expanduser()


# -------------------------------------------------------------------------------------------------- sensitivity

def _sensitivity_command(job: Job) -> Any:
    """Sensitivity map(s) of one model: per rate, results.json (the whole model at that rate, as inject-eval
    writes it) and sensitivity.csv / .png (budget.csv / .png with ``sensitivity.budget``)."""
    from qfi_cli.engine.sensitivity import sensitivity
    from qfi_cli.layout import BUDGET_CSV, SENSITIVITY_CSV
    from qfi_cli.report.sensitivity import write_sensitivity

    cfg = job.cfg
    levels = rates(cfg)
    split = cfg.eval.bers is not None
    dirs = [job.out_dir / rate_dirname(b, c) if split else job.out_dir for b, c in levels]
    wanted = (SENSITIVITY_CSV, BUDGET_CSV) if cfg.sensitivity.budget else (SENSITIVITY_CSV,)
    if job.multirun and all(all((d / f).is_file() for f in wanted) and _finished(d / RESULTS, job, cfg, b, c)
                            for d, (b, c) in zip(dirs, levels)):
        job.reporter.log(f"skip finished sensitivity point {job.out_dir.name}")
        return None
    pending = iter(range(len(levels)))

    def save(res: Any) -> None:
        i = next(pending)
        files = write_sensitivity(dirs[i], res)
        record = res.whole | {"status": "ok", "point": _rate_point(job, *levels[i]), "command": "sensitivity",
                              "sensitivity_files": [f.name for f in files]}
        write_json(dirs[i] / RESULTS, record)
        log_run(cfg.logger, dirs[i], cfg.paths.root, {**cfg.as_dict(), "point": record["point"]}, record,
                [dirs[i] / RESULTS, *files])

    try:
        checkpoint = (_sweep_model(cfg, job.sweep_dir, job.reporter) if job.multirun and cfg.sweep_train
                      else _checkpoint(cfg))
        expect = {} if job.multirun and cfg.sweep_train else _expected(job)
        results = sensitivity(cfg, checkpoint, job.reporter, expect, on_result=save)
    except Exception as e:
        if job.multirun:
            for d, (b, c) in zip(dirs, levels):
                if not (d / SENSITIVITY_CSV).is_file():
                    _write_failure(d, e, _rate_point(job, b, c), job.reporter)
            return None
        raise
    return results if split else results[0]


COMMANDS.register("sensitivity")(_sensitivity_command)


# ------------------------------------------------------------------------------------------------------- attack

def _attack_finished(path: Path, job: Job, cfg: RunConfig) -> dict[str, Any] | None:
    """A point's earlier attack.json when it is complete and was made with the same attack settings."""
    try:
        done = read_json(path)
    except (OSError, ValueError):
        return None
    same = (isinstance(done, dict) and done.get("status") == "ok" and done.get("point") == job.point
            and done.get("attack") == dataclasses.asdict(cfg.attack) and done.get("fault_seed") == cfg.eval.fault_seed
            and done.get("limit") == cfg.eval.limit and isinstance(done.get("flips"), list)
            and len(done["flips"]) == done.get("flips_committed"))
    return done if same else None


def _attack_command(job: Job) -> dict[str, Any] | None:
    from qfi_cli.engine.attack import attack
    from qfi_cli.report.attack import plot_attack_curve

    cfg, path = job.cfg, job.out_dir / ATTACK
    if job.multirun and (done := _attack_finished(path, job, cfg)) is not None:
        job.reporter.log(f"skip finished attack {job.out_dir.name}")
        return done
    try:
        checkpoint = (_sweep_model(cfg, job.sweep_dir, job.reporter) if job.multirun and cfg.sweep_train
                      else _checkpoint(cfg))
        result = attack(cfg, checkpoint, job.reporter, {} if job.multirun and cfg.sweep_train else _expected(job))
    except Exception as e:
        if job.multirun:
            _write_failure(job.out_dir, e, job.point, job.reporter, ATTACK)
            return None
        raise
    result.update(status="ok", point=dict(job.point))
    write_json(path, result)
    plot_attack_curve(result, job.out_dir / ATTACK_CURVE)
    history = [{"epoch": f["flip"], "loss": f["loss"], "accuracy": f["accuracy"]} for f in result["flips"]]
    log_run(cfg.logger, job.out_dir, cfg.paths.root, {**cfg.as_dict(), "point": result["point"]}, result,
            [path, job.out_dir / ATTACK_CURVE], history=history)
    return result


COMMANDS.register("attack")(_attack_command)


# ---------------------------------------------------------------------------------------------------------- task

def _snapshot(job: Job, cfg: RunConfig) -> None:
    """``.hydra/config.yaml`` (the effective config) and ``overrides.yaml``, written once the config is valid."""
    hydra_dir = job.out_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    from qfi_cli.io import atomic_write

    atomic_write(hydra_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg.as_dict())), mode="w")
    overrides = list(HydraConfig.get().overrides.task)
    atomic_write(hydra_dir / "overrides.yaml", lambda f: f.write(OmegaConf.to_yaml(overrides)), mode="w")


def _write_failure(directory: Path, error: BaseException, point: dict[str, Any], reporter: Reporter,
                   name: str = RESULTS) -> None:
    message = first_line(error)
    if not isinstance(error, QfiError):
        message = f"{type(error).__name__}: {message}"
        traceback.print_exc()
    write_json(directory / name, {"status": "failed", "error": message, "point": point})
    reporter.log(f"point {directory.name} failed: {message}")


def _remove_if_empty(directory: Path) -> None:
    """A run that failed before writing anything leaves no directory behind."""
    try:
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    except OSError:
        pass


def task(cfg: DictConfig) -> Any:
    """Run one job (one sweep point when Hydra runs a multirun)."""
    hc = HydraConfig.get()
    # the directory Hydra made, read without resolving it again (a literal "${...}" in --out stays literal)
    out_dir = Path(OmegaConf.to_container(hc.runtime, resolve=False)["output_dir"])
    multirun = hc.mode == RunMode.MULTIRUN
    reporter = Reporter(live=None if not multirun or hc.launcher.get("_target_", "").endswith("BasicLauncher")
                        else False)
    point = _point(cfg) if multirun else {}
    LAST["out_dir"] = str(out_dir)
    try:
        composed = OmegaConf.to_container(cfg, resolve=True)
        run_cfg = RunConfig.from_dict(composed)
        job = Job(run_cfg, out_dir, multirun, Path(hc.sweep.dir) if multirun else None, point, _overridden(cfg),
                  composed, reporter)
        if run_cfg.command != "train":
            _snapshot(job, run_cfg)
        result = COMMANDS.get(run_cfg.command)(job)
    except Exception as e:  # noqa: BLE001 - a sweep point records any failure and the sweep goes on
        if not multirun:
            _remove_if_empty(out_dir)
            if isinstance(e, QfiError):
                LAST["error"] = str(e)
                return None
            raise
        _write_failure(out_dir, e, point, reporter)
        return None
    LAST["result"] = result
    return result


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Any:
    return task(cfg)


def run(overrides: list[str], prog: str = "qfi") -> dict[str, Any]:
    """Run the Hydra app with ``overrides`` as its command line (``--multirun`` and ``--cfg job`` included).

    Returns ``LAST`` (result and error of the last task run in this process, rows of the last sweep report).
    """
    LAST.update(result=None, error=None, rows=None, out_dir=None)
    saved = sys.argv
    from qfi_cli.validate import split_flags

    plain, flags = split_flags(overrides)
    sys.argv = [prog, *plain, *flags]  # argparse takes the overrides before Hydra's flags
    try:
        main()
    finally:
        sys.argv = saved
    return LAST


__all__ = ["COMMANDS", "Job", "LAST", "main", "point_dirname", "rate_dirname", "run", "task"]
