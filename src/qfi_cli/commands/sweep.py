"""``qfi sweep``: inject-eval (or ``command=attack``) over a grid, as a Hydra multirun under any launcher.

A swept ``fault.ber`` is grouped into ``eval.bers`` (every rate of one model in one job); single-valued settings stay
out of the points' directory names; a sweep directory records its fixed settings (``.qfi_sweep.json``) and refuses a
later sweep made differently. The sweep exits non-zero when points failed, counted from the files the points wrote.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from qfi_cli.commands.base import Command, Outcome, Request
from qfi_cli.commands.options import Checkpoint, Out, Overrides, Precision, TrustCode, fail, opt, quote, rates_text
from qfi_cli.errors import QfiError
from qfi_cli.layout import BER_CURVE, PAIRED, POINT_DIR_EXCLUDED, RERR_CURVE, SUMMARY, TABLE_CSV
from qfi_cli.layout import TABLE_MD

LAUNCHERS = {"basic": None, "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
             "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
             "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
             "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
             "ray": ("hydra_plugins.hydra_ray_launcher", "ray")}
# The ray launcher starts a private Ray instance: loopback only, no dashboard, no usage statistics sent.
RAY_LOCAL = ["+hydra.launcher.ray.init._node_ip_address=127.0.0.1", "+hydra.launcher.ray.init.include_dashboard=false"]
SWEEP_STATE = ".qfi_sweep.json"  # a sweep directory's fixed settings (what every point shares)
SWEEP_DIR = "hydra.sweep.dir"


def options(
    checkpoint: Checkpoint = None,
    bers: Annotated[Optional[str], typer.Option(help="Comma-separated bit error rates, e.g. 1e-5,1e-4,1e-3: "
                                                     "evaluated in one job per model.",
                                                show_default=False)] = None,
    trials: Annotated[Optional[int], typer.Option(help="Fault patterns per point.", show_default="10")] = None,
    precision: Precision = None,
    launcher: Annotated[str, typer.Option(help="Hydra launcher: basic, joblib, submitit_local, submitit_slurm "
                                               "(or slurm: the example in conf/hydra/launcher), ray (a local "
                                               "Ray instance).")] = "basic",
    out: Out = None,
    train_models: Annotated[bool, typer.Option("--train", help="Train each distinct model of the grid once, "
                                                               "then evaluate it at every BER.")] = False,
    seed: Annotated[Optional[str], typer.Option(help="Training seed(s) of --train models, e.g. 0,1,2 "
                                                     "(replicates).", show_default="0")] = None,
    fault_seed: Annotated[Optional[int], typer.Option("--fault-seed", help="Seed of the fault patterns, shared by "
                                                                           "every model of the sweep.",
                                                      show_default="0")] = None,
    trust_code: TrustCode = False,
    overrides: Overrides = None,
) -> Request:
    """Sweep inject-eval over a grid (Hydra multirun); writes summary.csv, ber_curve.png and the study table.

    Any override can be swept too: [bold]qfi sweep --bers 1e-4,1e-3 --train quant.wbits=4,8 sam.rho=0,0.05[/].
    [bold]command=attack[/] attacks every model of the grid instead (attack.json per point, flips to target in the
    table). Running it again into the same --out skips finished points.
    """
    if launcher not in LAUNCHERS:
        fail(f"unknown launcher {launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
    if LAUNCHERS[launcher] and importlib.util.find_spec(LAUNCHERS[launcher][0]) is None:
        fail(f"the {launcher} launcher is not installed: pip install 'qfi[{LAUNCHERS[launcher][1]}]'")
    ov = ["command=inject_eval", f"hydra/launcher={launcher}"]
    if launcher == "ray":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ov += RAY_LOCAL
    opt(ov, "checkpoint", checkpoint.resolve() if checkpoint else None)
    if bers is not None:
        ov.append(f"eval.bers=[{','.join(repr(b) for b in rates_text(bers))}]")
    opt(ov, "eval.trials", trials)
    opt(ov, "eval.precision", precision)
    if seed is not None:  # a sweep of training seeds (replicates): 0,1,2
        if not all(part.strip().isdigit() for part in seed.split(",")):
            fail(f"--seed takes whole numbers separated by commas (0,1,2), got {seed!r}")
        ov.append(f"seed={seed.replace(' ', '')}")
    opt(ov, "eval.fault_seed", fault_seed)
    opt(ov, SWEEP_DIR, out)
    if train_models:
        ov.append("sweep_train=true")
    if trust_code:
        ov.append("trust_code=true")
    return Request(ov, group_rates(overrides), out, multirun=True)


def group_rates(overrides: list[str] | None) -> list[str]:
    """A swept ``fault.ber=a,b,c`` becomes ``eval.bers=[a,b,c]``: every rate of one model in one job.

    >>> group_rates(["fault.ber=1e-4,1e-3", "seed=0,1"])
    ['eval.bers=[1e-4,1e-3]', 'seed=0,1']
    """
    out = []
    for arg in overrides or []:
        key, sep, value = arg.partition("=")
        if sep and key == "fault.ber" and "," in value and not value.strip().startswith(("[", "range", "choice")):
            out.append(f"eval.bers=[{value}]")
        else:
            out.append(arg)
    return out


def exclude_fixed(overrides: list[str]) -> str:
    """Hydra override that keeps single-valued settings out of the sweep points' directory names."""
    from qfi_cli.validate import parsed_overrides

    fixed = {o.get_key_element().lstrip("+~") for o in parsed_overrides(overrides)
             if not o.is_sweep_override() and not o.get_key_element().lstrip("+~").startswith("hydra")}
    keys = sorted(fixed | set(POINT_DIR_EXCLUDED) | {"eval.bers"})
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"


def check_sweep_dir(out: Path, configs: list[dict[str, Any]]) -> None:
    """A sweep directory holds one study: a new sweep into it must share the settings its earlier sweeps held fixed
    (trials, fault model, fault seed, checkpoint...), so that summary.csv never mixes rows made differently. A
    setting one sweep varies and another fixes (more seeds, another recipe) is fine; the record keeps what both
    held fixed alike."""
    from qfi_cli.io import read_json, write_json
    from qfi_cli.validate import fixed_settings

    state = out / SWEEP_STATE
    fixed = fixed_settings(configs)
    if state.is_file():
        try:
            before = read_json(state)
        except (OSError, ValueError):
            before = {}
        for key in sorted(set(before) & set(fixed)):
            if before[key] != fixed[key]:
                fail(f"{out} holds a sweep made with {key}={json.dumps(before[key])}, not "
                     f"{json.dumps(fixed[key])}: use another --out (rows made differently must not mix)")
        fixed = {k: v for k, v in fixed.items() if k in before}
    write_json(state, fixed)


def prepare(request: Request, args: list[str], configs: list[dict[str, Any]]) -> list[str]:
    """Once the grid is checked: the sweep directory's record, the points' directory names, and the sweep
    directory itself fixed now (the default one resolved here), so that its results can be counted afterwards."""
    from qfi_cli.validate import hydra_setting

    if request.out is not None:
        check_sweep_dir(request.out, configs)
    extra = [exclude_fixed(args)]
    if request.out is None:
        request.out = Path(hydra_setting(args, SWEEP_DIR))
        extra.append(f"{SWEEP_DIR}={quote(request.out)}")
    return extra


def show(outcome: Outcome, request: Request) -> None:
    """Exit non-zero when points failed (counted from their results.json and every report section's file)."""
    from qfi_cli.report import SECTIONS, collect

    root = request.out
    if root is None or not root.is_dir():
        return
    rows = [row for section in SECTIONS.values() for row in section.collect(root)]
    try:
        rows = collect(root) + rows
    except QfiError:
        pass  # a sweep of attacks only, or nothing run
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        fail(f"{len(failed)} of {len(rows)} sweep point(s) failed (first: {failed[0].get('dir')}: "
             f"{failed[0].get('error')}); finished points are kept: fix the cause and run the same command again")


COMMAND = Command(None, "sweep", options, show=show, prepare=prepare,
                  outputs=(SUMMARY, BER_CURVE, RERR_CURVE, TABLE_MD, TABLE_CSV, PAIRED))  # + each section's csv
