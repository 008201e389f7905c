"""``qfi train``: train a quantized model (SAM on, fault injection off); writes model.pt and metrics.json.

Its rules: ``--resume`` continues the run in ``--out`` with its own settings (a flag that contradicts them names the
key); a finished or interrupted run is never replaced without ``--overwrite``; training-time faults come from one
source (``fault.enable_in_training`` or ``train.bet.mode``, not both).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from qfi_cli.commands.base import Command, Job, Outcome, Request
from qfi_cli.commands.options import Out, Overrides, default, fail, float_text, opt, table
from qfi_cli.errors import QfiError
from qfi_cli.layout import LAST_CHECKPOINT, METRICS, MODEL

if TYPE_CHECKING:
    from qfi_cli.config import RunConfig

# Keys that may differ from the saved run when resuming it: where and how to run, not what to train.
RESUME_FREE = ("command", "resume", "overwrite", "device", "checkpoint", "logger", "trust_code")


def options(
    model: Annotated[Optional[str], typer.Option(help="Model: digits_cnn, lenet5, resnet20, resnet18, simplenet.",
                                                 show_default=default("model/digits_cnn", "name"))] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Data set: digits, mnist, fashion_mnist, cifar10, "
                                                        "cifar100.", show_default="digits")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="Training recipe (conf/recipe): normal, rquant, clipping, "
                                                       "randbet, advbet, sam, sam_clipping, sam_randbet, sam_advbet.",
                                                  show_default="none: the settings below")] = None,
    wbits: Annotated[Optional[int], typer.Option(help="Weight bits: 2..8, or 32 (float). The first and last "
                                                 "layers keep max(bits, quant.first_last_bits) (8 unless "
                                                 "quant.first_last_bits=null); labels say what was stored.",
                                                 show_default=default("quant/lsq", "wbits"))] = None,
    abits: Annotated[Optional[int], typer.Option(help="Activation bits: 2..8, or 32 (float).",
                                                 show_default=default("quant/lsq", "abits"))] = None,
    rho: Annotated[Optional[str], typer.Option(help="SAM radius; 0 = plain training.",
                                               show_default=default("sam/sam", "rho"))] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (0: calibrate only, post-training "
                                                       "quantization).",
                                                  show_default=default("train/default", "epochs"))] = None,
    seed: Annotated[Optional[int], typer.Option(help="Training seed (python, numpy, torch, shuffling).",
                                                show_default="0")] = None,
    out: Out = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run in --out with its own "
                                                          "settings.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --out.")] = False,
    trust_code: Annotated[bool, typer.Option("--trust-code", help="With --resume: import the code (model._target_, "
                                                                  "data._target_) that last.pt's saved config "
                                                                  "names.")] = False,
    overrides: Overrides = None,
) -> Request:
    """Train a quantized model (SAM on, fault injection off); writes model.pt and metrics.json.

    Example: [bold]qfi train --wbits 4 --rho 0.05 train.lr=0.05[/]
    """
    ov = ["command=train"]
    opt(ov, "model", model)
    opt(ov, "data", dataset)
    opt(ov, "recipe", recipe)
    opt(ov, "quant.wbits", wbits)
    opt(ov, "quant.abits", abits)
    opt(ov, "sam.rho", float_text("--rho", rho))
    opt(ov, "train.epochs", epochs)
    opt(ov, "seed", seed)
    opt(ov, "hydra.run.dir", out)
    if resume:
        if out is None:
            fail("--resume needs --out DIR: the run directory to continue")
        ov.append("resume=true")
    if overwrite:
        ov.append("overwrite=true")
    if trust_code:
        ov.append("trust_code=true")
    return Request(ov, overrides, out)


def show(outcome: Outcome, request: Request) -> None:
    """The final metrics as a table."""
    if outcome.result:
        table("qfi train", {k: v for k, v in outcome.result.items() if k not in ("history", "widths", "groups")})


def check(cfg: "RunConfig") -> None:
    """Training-time faults come from one source.

    >>> from qfi_cli.config import RunConfig
    >>> check(RunConfig.from_dict({"fault": {"enable_in_training": True}, "train": {"bet": {"mode": "random"}}}))
    Traceback (most recent call last):
    ...
    qfi_cli.errors.QfiError: fault.enable_in_training=true and train.bet.mode=random both inject faults during training: use one (bit error training adds a faulty loss to the clean one)
    """
    if cfg.fault.enable_in_training and cfg.train.bet.mode != "none":
        raise QfiError(f"fault.enable_in_training=true and train.bet.mode={cfg.train.bet.mode} both inject faults "
                       "during training: use one (bit error training adds a faulty loss to the clean one)")


def _select(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return cfg


def _resume_config(job: Job) -> "RunConfig":
    """The saved run's config, with the flags given now checked against it (a contradiction names the key)."""
    from qfi_cli.config import RunConfig
    from qfi_cli.io import load_checkpoint

    out = job.out_dir
    if (out / MODEL).is_file():
        raise QfiError(f"nothing to resume in {out}: it holds a finished run ({MODEL}); start a new run with "
                       "another --out")
    if not (out / LAST_CHECKPOINT).is_file():
        raise QfiError(f"nothing to resume in {out}: no {LAST_CHECKPOINT} (start without --resume)")
    saved = load_checkpoint(out / LAST_CHECKPOINT, map_location="cpu", trust=job.cfg.trust())["config"]
    given = job.cfg.as_dict()  # read as the saved config was (paths resolved: model.init, data.root)
    for key in job.explicit:
        if key.split(".")[0] in RESUME_FREE:
            continue
        now, was = _select(given, key), _select(saved, key)
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


def finished(out: Path) -> str | None:
    """Why ``out`` may not take a new run without --resume / --overwrite (None: it may)."""
    if (out / MODEL).is_file():
        return f"{out} already holds a finished run ({MODEL}): choose another --out, or pass --overwrite to replace it"
    if (out / LAST_CHECKPOINT).is_file():
        return (f"{out} holds an interrupted run ({LAST_CHECKPOINT}): pass --resume to continue it, or --overwrite "
                "to start over")
    return None


def job(job: Job) -> dict[str, Any]:
    """Train into the run directory (or continue it) and record it as the latest model."""
    from qfi_cli.engine.train import train
    from qfi_cli.io import record_latest

    cfg, out = job.cfg, job.out_dir
    if cfg.resume:
        cfg = _resume_config(job)
    elif not cfg.overwrite and (reason := finished(out)) is not None:
        raise QfiError(reason)
    job.snapshot(cfg)
    metrics = train(cfg, out, job.reporter, resume=cfg.resume)
    record_latest(cfg.paths.root, out / MODEL)
    return metrics


COMMAND = Command("train", "train", options, job=job, check=check, show=show,
                  outputs=(MODEL, METRICS, LAST_CHECKPOINT))
