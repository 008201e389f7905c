"""The ``qfi`` command line: typed options become Hydra overrides for the one task function in ``app``.

Anything after the options is passed to Hydra as it is: overrides (``train.lr=0.05``, ``quant=minmax``) and
Hydra's own flags (``--cfg job`` prints the composed config).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from qfi_cli.errors import QfiError

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                  help="qfi: train quantized networks (with SAM) and measure how they survive bit errors "
                       "in their stored weight codes.")
console = Console()
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
LAUNCHERS = {"basic": None, "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
             "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
             "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
             "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
             "ray": ("hydra_plugins.hydra_ray_launcher", "ray")}
# The ray launcher starts a private Ray instance: loopback only, no dashboard, no usage statistics sent.
RAY_LOCAL = ["+hydra.launcher.ray.init._node_ip_address=127.0.0.1", "+hydra.launcher.ray.init.include_dashboard=false"]

Overrides = Annotated[Optional[list[str]], typer.Argument(help="Hydra overrides, e.g. train.lr=0.05 quant=minmax; "
                                                                "or --cfg job to print the composed config.",
                                                           show_default=False)]
Out = Annotated[Optional[Path], typer.Option("--out", help="Output directory (default: outputs/<command>/<time>).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed for python, numpy, torch and the fault patterns.")]


def _opt(overrides: list[str], key: str, value: Any) -> None:
    if value is not None:
        overrides.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")


def _fail(message: str) -> None:
    console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _run(overrides: list[str], out: Path | None = None) -> Any:
    from qfi_cli.app import run
    from qfi_cli.validate import check_overrides, check_writable

    try:
        check_overrides(overrides)
        if out is not None:
            check_writable(out)
        last = run(overrides)
    except QfiError as e:
        _fail(str(e))
    if last["error"]:
        _fail(last["error"])
    return last["result"]


def _table(title: str, rows: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command(context_settings=EXTRA, rich_help_panel="Jobs")
def train(
    model: Annotated[Optional[str], typer.Option(help="Model: digits_cnn, lenet5, resnet20, resnet18.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Data set: digits, mnist, fashion_mnist, cifar10, "
                                                        "cifar100.")] = None,
    wbits: Annotated[Optional[int], typer.Option(help="Weight bits: 2..8, or 32 (float).")] = None,
    abits: Annotated[Optional[int], typer.Option(help="Activation bits: 2..8, or 32 (float).")] = None,
    rho: Annotated[Optional[float], typer.Option(help="SAM radius; 0 = plain training.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    seed: Seed = None,
    out: Out = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last epoch.")] = False,
    overrides: Overrides = None,
) -> None:
    """Train a quantized model (SAM on, fault injection off); writes model.pt and metrics.json.

    Example: [bold]qfi train --wbits 4 --rho 0.05 train.lr=0.05[/]
    """
    ov = ["command=train"]
    _opt(ov, "model", model)
    _opt(ov, "data", dataset)
    _opt(ov, "quant.wbits", wbits)
    _opt(ov, "quant.abits", abits)
    _opt(ov, "sam.rho", rho)
    _opt(ov, "train.epochs", epochs)
    _opt(ov, "seed", seed)
    _opt(ov, "hydra.run.dir", out)
    if resume:
        if out is None:
            _fail("--resume needs --out DIR: the run directory to continue")
        ov.append("resume=true")
    metrics = _run(ov + list(overrides or []), out)
    if metrics:
        _table("qfi train", {k: v for k, v in metrics.items() if k not in ("history",)})


@app.command("inject-eval", context_settings=EXTRA, rich_help_panel="Jobs")
def inject_eval(
    checkpoint: Annotated[Optional[Path], typer.Option(help="model.pt to evaluate (default: the latest from "
                                                            "`qfi train`).")] = None,
    ber: Annotated[Optional[float], typer.Option(help="Bit error rate: each weight bit flips with this "
                                                      "probability.")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Independent fault patterns to evaluate.")] = None,
    seed: Seed = None,
    out: Out = None,
    overrides: Overrides = None,
) -> None:
    """Evaluate a trained model under bit errors (injection on, SAM off); writes results.json.

    Example: [bold]qfi inject-eval --ber 1e-4 --trials 20 fault=msb[/]
    """
    ov = ["command=inject_eval"]
    _opt(ov, "checkpoint", checkpoint.resolve() if checkpoint else None)
    _opt(ov, "fault.ber", ber)
    _opt(ov, "eval.trials", trials)
    _opt(ov, "seed", seed)
    _opt(ov, "hydra.run.dir", out)
    results = _run(ov + list(overrides or []), out)
    if results:
        ci = results["accuracy_ci95"]
        _table("qfi inject-eval", {
            "ber": f"{results['ber']:.3g}", "trials": results["trials"],
            "clean accuracy": results["clean_accuracy"],
            "accuracy (mean ± std)": f"{results['accuracy_mean']:.4f} ± {results['accuracy_std']:.4f}",
            "95% CI": "n/a (one trial)" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]",
            "robust error (RErr)": results["rerr_mean"],
            "flips per trial (mean)": f"{sum(results['flips']) / len(results['flips']):.1f} of "
                                      f"{results['bits_total']} bits",
            "NaN trials": results["nan_trials"], "seconds": results["seconds"]})


@app.command(context_settings=EXTRA, rich_help_panel="Jobs")
def sweep(
    checkpoint: Annotated[Optional[Path], typer.Option(help="model.pt to evaluate (default: latest trained).")] = None,
    bers: Annotated[Optional[str], typer.Option(help="Comma-separated bit error rates, e.g. 1e-5,1e-4,1e-3.")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Fault patterns per point.")] = None,
    launcher: Annotated[str, typer.Option(help="Hydra launcher: basic, joblib, submitit_local, submitit_slurm "
                                               "(or slurm: the example in conf/hydra/launcher), ray (a local "
                                               "Ray instance).")] = "basic",
    out: Out = None,
    train_models: Annotated[bool, typer.Option("--train", help="Train each distinct model of the grid once, "
                                                               "then evaluate it at every BER.")] = False,
    seed: Seed = None,
    overrides: Overrides = None,
) -> None:
    """Sweep inject-eval over a grid (Hydra multirun); writes summary.csv and ber_curve.png.

    Any override can be swept too: [bold]qfi sweep --bers 1e-4,1e-3 --train quant.wbits=4,8 sam.rho=0,0.05[/].
    Running it again into the same --out skips finished points.
    """
    if launcher not in LAUNCHERS:
        _fail(f"unknown launcher {launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
    if LAUNCHERS[launcher] and importlib.util.find_spec(LAUNCHERS[launcher][0]) is None:
        _fail(f"the {launcher} launcher is not installed: pip install 'qfi[{LAUNCHERS[launcher][1]}]'")
    ov = ["--multirun", "command=inject_eval", f"hydra/launcher={launcher}"]
    if launcher == "ray":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ov += RAY_LOCAL
    _opt(ov, "checkpoint", checkpoint.resolve() if checkpoint else None)
    _opt(ov, "fault.ber", bers)
    _opt(ov, "eval.trials", trials)
    _opt(ov, "seed", seed)
    _opt(ov, "hydra.sweep.dir", out)
    if train_models:
        ov.append("sweep_train=true")
    ov += list(overrides or [])
    _run(ov + [_exclude_fixed(ov)], out)


def _exclude_fixed(overrides: list[str]) -> str:
    """Hydra override that keeps single-valued settings out of the sweep points' directory names."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from qfi_cli.validate import split_flags

    try:
        parsed = OverridesParser.create().parse_overrides(split_flags(overrides)[0])
    except HydraException:
        return "hydra.job.config.override_dirname.exclude_keys=[]"  # reported by check_overrides
    fixed = {o.get_key_element().lstrip("+~") for o in parsed
             if not o.is_sweep_override() and not o.get_key_element().lstrip("+~").startswith("hydra")}
    keys = sorted(fixed | {"command", "checkpoint", "sweep_train", "device", "paths.root", "sweep"})
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"


@app.command(rich_help_panel="Results")
def report(sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory (qfi sweep --out).")]) -> None:
    """Render summary.csv, the table, the paired differences and ber_curve.png again from a sweep directory."""
    from qfi_cli.report import aggregate

    try:
        aggregate(sweep_dir)
    except QfiError as e:
        _fail(str(e))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
