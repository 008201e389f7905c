"""What every command shares: its record (``Command``), the job it is given (``Job``), what a CLI run hands back
(``Outcome``), and ``run_point``, the one wrapper around a point's work (which checkpoint, what it must agree with,
finished work skipped, failures recorded in a multirun).

Nothing here imports torch, Hydra or Typer at module level: the CLI imports every command to build its help.

>>> slot = Slot(Path("p") / "results.json", {"fault.ber": 0.01})
>>> slot.path.name, slot.point
('results.json', {'fault.ber': 0.01})
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from qfi_cli.errors import QfiError, first_line
from qfi_cli.layout import LAST_CHECKPOINT, MODEL, MODELS_DIR, RESULTS, TRAIN_CONFIG
from qfi_cli.progress import Reporter

if TYPE_CHECKING:
    from qfi_cli.config import RunConfig

TRAIN_KEYS = ("model", "data", "quant", "sam", "train", "seed", "device", "recipe")
EXPECTED = ("model", "quant", "sam", "train", "recipe")  # settings a loaded checkpoint must agree with


@dataclass
class Request:
    """What a command's options ask of the Hydra app: its overrides, the user's own, the output directory."""

    overrides: list[str]
    extra: Optional[list[str]] = None
    out: Optional[Path] = None
    multirun: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # options its printing needs (e.g. ``budget``)


@dataclass
class Outcome:
    """What one ``app.run`` produced in this process: the result and user mistake of its last job, the run dir.

    >>> Outcome().error is None
    True
    """

    result: Any = None
    error: Optional[str] = None
    out_dir: Optional[str] = None


@dataclass
class Job:
    """What a command knows about its Hydra job."""

    cfg: "RunConfig"
    out_dir: Path
    multirun: bool
    sweep_dir: Path | None
    point: dict[str, Any]
    explicit: dict[str, Any]
    composed: dict[str, Any]
    reporter: Reporter = field(default_factory=Reporter)
    overrides: list[str] = field(default_factory=list)  # the job's overrides as given (.hydra/overrides.yaml)

    def snapshot(self, cfg: "RunConfig") -> None:
        """``.hydra/config.yaml`` (the effective config) and ``overrides.yaml``, written once the config is valid."""
        from omegaconf import OmegaConf

        from qfi_cli.io import atomic_write

        hydra_dir = self.out_dir / ".hydra"
        hydra_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(hydra_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg.as_dict())), mode="w")
        overrides = list(self.overrides)
        atomic_write(hydra_dir / "overrides.yaml", lambda f: f.write(OmegaConf.to_yaml(overrides)), mode="w")


def _no_check(cfg: "RunConfig") -> None:
    """No cross-field rule."""


@dataclass
class Command:
    """One command, registered once: its names, options, job, rules, outputs and printing.

    ``options`` is the Typer function (its signature is the command's options) and returns a ``Request`` for the
    Hydra app, or None when it did the work itself; ``show(outcome, request)`` prints the result. ``job(Job)`` runs
    in the Hydra task (config commands only: ``name`` is then what ``command=`` takes); ``check(cfg)`` holds the
    command's cross-field rules, run in the pre-check for every composed point and again before the job;
    ``prepare(request, configs)`` returns extra overrides once the configs are checked.

    >>> Command("demo", "demo", options=lambda: None).config_command
    True
    """

    name: Optional[str]
    cli_name: str
    options: Callable[..., Optional[Request]]
    job: Optional[Callable[[Job], Any]] = None
    check: Callable[["RunConfig"], None] = _no_check
    show: Optional[Callable[[Outcome, Request], None]] = None
    prepare: Optional[Callable[[Request, list[dict[str, Any]]], list[str]]] = None
    outputs: tuple[str, ...] = ()
    panel: str = "Jobs"
    extra_args: bool = True

    @property
    def config_command(self) -> bool:
        """Whether ``command=<name>`` runs it (it has a job), rather than only the CLI."""
        return self.name is not None


@dataclass
class Slot:
    """One result file a point owes (``path``), and the point it records (``point``)."""

    path: Path
    point: dict[str, Any]


def rate_dirname(ber: float | None, count: int | None = None) -> str:
    """The subdirectory of one rate when a job evaluates several.

    >>> rate_dirname(1e-05), rate_dirname(None, 10)
    ('fault.ber=1e-05', 'fault.count=10')
    """
    return f"fault.ber={ber!r}" if ber is not None else f"fault.count={count}"


def rate_point(job: Job, ber: float | None, count: int | None) -> dict[str, Any]:
    """The point one rate of ``job`` records (the job's swept values, with this rate).

    >>> rate_point(Job(None, Path("."), True, None, {"seed": 1}, {}, {}), 0.01, None)
    {'seed': 1, 'fault.ber': 0.01}
    """
    if ber is None:
        return {**job.point, "fault.count": count} if "fault.count" in job.point else dict(job.point)
    return {**job.point, "fault.ber": ber}


def in_run(job: Job, path: str | None) -> Path | None:
    """A file setting: relative paths lie in the run (or sweep point) directory.

    >>> str(in_run(Job(None, Path("run"), False, None, {}, {}, {}), "faults.npz"))
    'run/faults.npz'
    """
    return None if path is None else job.out_dir / Path(path).expanduser()


def finished_record(path: Path, point: dict[str, Any], same: Callable[[dict[str, Any]], bool]) -> dict | None:
    """A point's earlier record in ``path`` when it is complete ("ok", the same point) and ``same`` accepts it
    (made with the same settings); None otherwise (missing, unreadable, failed, other settings).

    >>> finished_record(Path("/nonexistent/results.json"), {}, lambda done: True) is None
    True
    """
    from qfi_cli.io import read_json

    try:
        done = read_json(path)
    except (OSError, ValueError):
        return None
    ok = isinstance(done, dict) and done.get("status") == "ok" and done.get("point") == point and same(done)
    return done if ok else None


def expected(job: Job) -> dict[str, Any]:
    """What the user asked of the model (``model=lenet5``, ``quant.wbits=4``): the checkpoint must agree.

    >>> expected(Job(None, Path("."), False, None, {}, {"model": "lenet5", "quant.wbits": 4, "eval.trials": 3}, {}))
    {'model.name': 'lenet5', 'quant.wbits': 4}
    """
    expect = {}
    for key, value in job.explicit.items():
        if key.split(".")[0] in EXPECTED and not isinstance(value, dict):
            expect[key if "." in key or key == "recipe" else key + ".name"] = value
    return expect


def checkpoint_path(cfg: "RunConfig") -> Path:
    """The model a command loads: ``checkpoint`` (a model.pt, or a run directory holding one), else the latest
    that ``qfi train`` recorded."""
    from qfi_cli.io import latest_checkpoint

    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if path.is_dir():
            if (path / MODEL).is_file():
                return path / MODEL
            raise QfiError(f"--checkpoint {path} is a directory without {MODEL}: pass the model file")
        return path
    return latest_checkpoint(cfg.paths.root)


def sweep_model(cfg: "RunConfig", sweep_dir: Path, reporter: Reporter) -> Path:
    """Train the model this point's config describes once per sweep (a lock guards parallel points)."""
    from qfi_cli.config import RunConfig
    from qfi_cli.engine.train import train
    from qfi_cli.io import write_json

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


def model_for(job: Job) -> tuple[Path | None, dict[str, Any]]:
    """(checkpoint, expectations): the sweep's own model for ``sweep --train`` (nothing to expect), None for
    inject-eval of a torch.ao int8 ``model._target_`` without ``--checkpoint``, else the chosen checkpoint, which
    must agree with the model settings the user gave."""
    if job.multirun and job.cfg.sweep_train:
        return sweep_model(job.cfg, job.sweep_dir, job.reporter), {}
    if job.cfg.command == "inject_eval" and not job.cfg.checkpoint:
        from qfi_cli.engine.evaluate import torch_ao_model

        if torch_ao_model(job.cfg) is not None:  # a torch.ao int8 model is evaluated as its _target_ returns it
            return None, {}
    return checkpoint_path(job.cfg), expected(job)


def write_failure(path: Path, error: BaseException, point: dict[str, Any], reporter: Reporter) -> None:
    """Record a failed point in ``path`` (``status=failed``, the message, the point); a bug also prints its
    traceback."""
    from qfi_cli.io import write_json

    message = first_line(error)
    if not isinstance(error, QfiError):
        message = f"{type(error).__name__}: {message}"
        traceback.print_exc()
    write_json(path, {"status": "failed", "error": message, "point": point})
    reporter.log(f"point {path.parent.name} failed: {message}")


def run_point(job: Job, slots: list[Slot], work: Callable[..., None], finished: Callable[[int], Any],
              skipped: Callable[[int], str], *, all_or_none: bool = False,
              kept: Callable[[int], bool] = lambda i: False) -> tuple[dict[int, Any], dict[int, Any] | None]:
    """Run a point's work for the result files (``slots``) it still owes.

    In a multirun a slot ``i`` whose ``finished(i)`` gives its earlier result is skipped (``all_or_none``: only when
    every slot is finished), logged as ``skipped(n)``. The rest go to ``work(checkpoint, expect, todo, written)``,
    which puts each result into ``written`` (slot index -> result) as it is complete. A failure in a multirun
    records ``status=failed`` in every owed slot not written (nor ``kept(i)``) and gives written None; a single run
    raises it. Returns ({slot index: result}, written).
    """
    done = {i: r for i in range(len(slots)) if job.multirun and (r := finished(i)) is not None}
    if all_or_none and len(done) < len(slots):
        done = {}
    if done:
        job.reporter.log(skipped(len(done)))
    todo = [i for i in range(len(slots)) if i not in done]
    written: dict[int, Any] = {}
    if not todo:
        return done, written
    try:
        checkpoint, expect = model_for(job)
        work(checkpoint, expect, todo, written)
    except Exception as e:
        if not job.multirun:
            raise
        for i in todo:
            if i not in written and not kept(i):
                write_failure(slots[i].path, e, slots[i].point, job.reporter)
        return {**done, **written}, None
    return {**done, **written}, written


__all__ = ["Command", "Job", "Outcome", "RESULTS", "Request", "Slot", "TRAIN_KEYS", "checkpoint_path", "expected",
           "finished_record", "in_run", "model_for", "rate_dirname", "rate_point", "run_point", "sweep_model",
           "write_failure"]
