"""The ``qfi`` command line: typed options become Hydra overrides for the one task function in ``app``.

Anything after the options is passed to Hydra: overrides (``train.lr=0.05``, ``quant=minmax``) and Hydra's own
flags (``--cfg job`` prints the composed config). Every user mistake is one line on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import sys
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from qfi_cli import __version__
from qfi_cli.errors import QfiError, first_line
from qfi_cli.layout import POINT_DIR_EXCLUDED
from qfi_cli.progress import wide_console

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                  help="qfi: train quantized networks (with SAM) and measure how they survive bit errors "
                       "in their stored weight codes.")
console = wide_console()
errors = Console(stderr=True)
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
LAUNCHERS = {"basic": None, "joblib": ("hydra_plugins.hydra_joblib_launcher", "joblib"),
             "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
             "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
             "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
             "ray": ("hydra_plugins.hydra_ray_launcher", "ray")}
# The ray launcher starts a private Ray instance: loopback only, no dashboard, no usage statistics sent.
RAY_LOCAL = ["+hydra.launcher.ray.init._node_ip_address=127.0.0.1", "+hydra.launcher.ray.init.include_dashboard=false"]
SWEEP_STATE = ".qfi_sweep.json"  # a sweep directory's fixed settings (what every point shares)


@functools.lru_cache(maxsize=None)
def _default(group_file: str, key: str) -> str:
    """A default from the shipped config, for help pages (``_default("quant/lsq", "wbits")`` -> ``'8'``)."""
    from omegaconf import OmegaConf

    from qfi_cli.paths import conf_dir

    value = OmegaConf.select(OmegaConf.load(conf_dir() / f"{group_file}.yaml"), key)
    return str(value)


Overrides = Annotated[Optional[list[str]], typer.Argument(help="Hydra overrides, e.g. train.lr=0.05 quant=minmax; "
                                                                "or --cfg job to print the composed config.",
                                                           show_default=False)]
Out = Annotated[Optional[Path], typer.Option("--out", help="Output directory.",
                                             show_default="outputs/<command>/<time>")]
Checkpoint = Annotated[Optional[Path], typer.Option(help="model.pt to evaluate.",
                                                    show_default="the latest from `qfi train`")]
TrustCode = Annotated[bool, typer.Option("--trust-code", help="Import the code (model._target_, data._target_) "
                                                              "that the checkpoint's saved config names; without "
                                                              "it only a _target_ this command line names is "
                                                              "imported.")]


def _version(value: bool) -> None:
    if value:
        console.print(f"qfi {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                          help="Print qfi's version and exit.")] = None) -> None:
    """qfi: train quantized networks (with SAM) and measure how they survive bit errors in their stored weights."""


def _opt(overrides: list[str], key: str, value: Any) -> None:
    if value is not None:
        overrides.append(f"{key}={_quote(str(value).lower() if isinstance(value, bool) else value)}")


def _quote(value: Any) -> str:
    """A value as Hydra's override grammar reads it literally: paths with spaces, quotes, ``~``, ``${...}``, ``=``."""
    text = str(value)
    if isinstance(value, (int, float)) or all(c.isalnum() or c in "._-/:" for c in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("${", "\\${") + "'"


def _fail(message: str) -> None:
    errors.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _float_text(name: str, text: str | None) -> float | None:
    """A float option given as text: decimal or scientific notation; a nonzero value that underflows to 0 is an
    error (``--ber 1e-400`` is not 0)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        _fail(f"{name} must be a number, got {text!r}")
    if value == 0 and any(c in "123456789" for c in text.lower().split("e")[0]):
        _fail(f"{name}={text} is too small for a double-precision number (it would be 0)")
    if not math.isfinite(value):
        _fail(f"{name} must be a finite number, got {text}")
    return value


def _run(command: str, ov: list[str], overrides: list[str] | None, out: Path | None,
         multirun: bool = False) -> Any:
    from qfi_cli.app import run
    from qfi_cli.validate import check_overrides, check_writable, hydra_flags, quote_values, target_overrides

    try:
        user = quote_values(list(overrides or []))
        flags = hydra_flags(user, command)
        args = target_overrides(ov + user)
        if flags:  # --cfg / --info / --resolve: Hydra prints; a sweep shows its first point's config
            from qfi_cli.validate import first_values
            return run([a for a in first_values(args) if a != "--multirun"])
        configs = check_overrides(args)
        composed = configs[0]
        check_writable(composed["paths"]["root"], "outputs root (paths.root or QFI_OUTPUTS)")
        if out is not None:
            check_writable(out)
        if command == "sweep" and out is not None:
            _check_sweep_dir(out, configs)
        last = run((["--multirun"] if multirun else []) + args + ([_exclude_fixed(args)] if multirun else []))
    except QfiError as e:
        _fail(str(e))
    if last["error"]:
        _fail(last["error"])
    return last


def _table(title: str, rows: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value))
    console.print(table)


@app.command(context_settings=EXTRA, rich_help_panel="Jobs")
def train(
    model: Annotated[Optional[str], typer.Option(help="Model: digits_cnn, lenet5, resnet20, resnet18, simplenet.",
                                                 show_default=_default("model/digits_cnn", "name"))] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Data set: digits, mnist, fashion_mnist, cifar10, "
                                                        "cifar100.", show_default="digits")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="Training recipe (conf/recipe): normal, rquant, clipping, "
                                                       "randbet, advbet, sam, sam_clipping, sam_randbet, sam_advbet.",
                                                  show_default="none: the settings below")] = None,
    wbits: Annotated[Optional[int], typer.Option(help="Weight bits: 2..8, or 32 (float). The first and last "
                                                 "layers keep max(bits, quant.first_last_bits) (8 unless "
                                                 "quant.first_last_bits=null); labels say what was stored.",
                                                 show_default=_default("quant/lsq", "wbits"))] = None,
    abits: Annotated[Optional[int], typer.Option(help="Activation bits: 2..8, or 32 (float).",
                                                 show_default=_default("quant/lsq", "abits"))] = None,
    rho: Annotated[Optional[str], typer.Option(help="SAM radius; 0 = plain training.",
                                               show_default=_default("sam/sam", "rho"))] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (0: calibrate only, post-training "
                                                       "quantization).",
                                                  show_default=_default("train/default", "epochs"))] = None,
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
) -> None:
    """Train a quantized model (SAM on, fault injection off); writes model.pt and metrics.json.

    Example: [bold]qfi train --wbits 4 --rho 0.05 train.lr=0.05[/]
    """
    ov = ["command=train"]
    _opt(ov, "model", model)
    _opt(ov, "data", dataset)
    _opt(ov, "recipe", recipe)
    _opt(ov, "quant.wbits", wbits)
    _opt(ov, "quant.abits", abits)
    _opt(ov, "sam.rho", _float_text("--rho", rho))
    _opt(ov, "train.epochs", epochs)
    _opt(ov, "seed", seed)
    _opt(ov, "hydra.run.dir", out)
    if resume:
        if out is None:
            _fail("--resume needs --out DIR: the run directory to continue")
        ov.append("resume=true")
    if overwrite:
        ov.append("overwrite=true")
    if trust_code:
        ov.append("trust_code=true")
    metrics = _run("train", ov, overrides, out)["result"]
    if metrics:
        _table("qfi train", {k: v for k, v in metrics.items() if k not in ("history", "widths")})


def _bers(text: str | None) -> list[float] | None:
    if text is None:
        return None
    values = [_float_text("--bers", part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        _fail("--bers needs at least one rate, e.g. --bers 1e-5,1e-4,1e-3")
    return values


@app.command("inject-eval", context_settings=EXTRA, rich_help_panel="Jobs")
def inject_eval(
    checkpoint: Checkpoint = None,
    ber: Annotated[Optional[str], typer.Option(help="Bit error rate: each weight bit flips with this "
                                                    "probability.",
                                               show_default=_default("fault/bitflip", "ber"))] = None,
    bers: Annotated[Optional[str], typer.Option(help="Several rates in one job, e.g. 1e-5,1e-4,1e-3: one model "
                                                     "load, nested patterns, one result per rate.",
                                                show_default=False)] = None,
    trials: Annotated[Optional[int], typer.Option(help="Independent fault patterns per rate.",
                                                  show_default="10")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the fault patterns (eval.fault_seed).",
                                                show_default="0")] = None,
    save_faults: Annotated[Optional[Path], typer.Option("--save-faults", help="Record every trial's faulty bits "
                                                        "in this .npz file; fault=replay fault.file=FILE applies "
                                                        "them again.", show_default=False)] = None,
    out: Out = None,
    trust_code: TrustCode = False,
    overrides: Overrides = None,
) -> None:
    """Evaluate a trained model under bit errors (injection on, SAM off); writes results.json.

    Example: [bold]qfi inject-eval --ber 1e-4 --trials 20 fault=msb[/]
    """
    if ber is not None and bers is not None:
        _fail("give --ber or --bers, not both")
    ov = ["command=inject_eval"]
    _opt(ov, "checkpoint", checkpoint.resolve() if checkpoint else None)
    _opt(ov, "fault.ber", _float_text("--ber", ber))
    if bers is not None:
        ov.append(f"eval.bers=[{','.join(repr(b) for b in _bers(bers))}]")
    _opt(ov, "eval.trials", trials)
    _opt(ov, "eval.fault_seed", seed)
    _opt(ov, "eval.save_faults", save_faults.resolve() if save_faults else None)
    _opt(ov, "hydra.run.dir", out)
    if trust_code:
        ov.append("trust_code=true")
    last = _run("inject-eval", ov, overrides, out)
    results = last["result"]
    if isinstance(results, list):
        from qfi_cli.report import aggregate

        aggregate(Path(last["out_dir"]), console)
    elif results:
        ci = results["accuracy_ci95"]
        _table("qfi inject-eval", {
            "ber": "-" if results["ber"] is None else f"{results['ber']:.3g}", "trials": results["trials"],
            "clean accuracy": results["clean_accuracy"],
            "accuracy (mean ± std)": f"{results['accuracy_mean']:.4f} ± {results['accuracy_std']:.4f}",
            "95% CI": "n/a (one trial)" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]",
            "robust error (RErr)": results["rerr_mean"],
            **({"stored weights": f"{results['wbits_label']}: {results['bits_model']} bits "
                                  f"({results['bits_model'] / results['bits_all_wbits']:.2f}x all "
                                  f"{results['wbits']}-bit)"} if results.get("wbits_label") else {}),
            "flips per trial (mean)": f"{sum(results['flips']) / len(results['flips']):.1f} of "
                                      f"{results['bits_total']} bits",
            "NaN trials": results["nan_trials"], "seconds": results["seconds"],
            **({"faults saved to": results["faults_file"]} if results.get("faults_file") else {})})


SENSITIVITY_BER = 0.01  # qfi sensitivity's rate unless --ber, --count or the overrides choose the faults


@app.command(context_settings=EXTRA, rich_help_panel="Jobs")
def sensitivity(
    checkpoint: Annotated[Optional[Path], typer.Option(help="model.pt to map.",
                                                       show_default="the latest from `qfi train`")] = None,
    ber: Annotated[Optional[str], typer.Option(help="Bit error rate inside each cell (layer x bit position).",
                                               show_default=str(SENSITIVITY_BER))] = None,
    count: Annotated[Optional[int], typer.Option(help="Exactly this many flipped bits per cell, instead of a "
                                                      "rate.", show_default=False)] = None,
    trials: Annotated[Optional[int], typer.Option(help="Fault patterns per cell.", show_default="10")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the fault patterns (eval.fault_seed).",
                                                show_default="0")] = None,
    top: Annotated[Optional[int], typer.Option(help="Ranked cells to print.",
                                               show_default="10")] = None,
    budget: Annotated[bool, typer.Option("--budget", help="Also the protection budget: whole-model RErr as the "
                                                          "most sensitive cells, then layers, are protected, and "
                                                          "with the MSB protected (budget.csv, budget.png).")]
    = False,
    out: Out = None,
    trust_code: TrustCode = False,
    overrides: Overrides = None,
) -> None:
    """Map where faults hurt: RErr with faults in one layer and one bit position at a time; writes
    sensitivity.csv, sensitivity.png and results.json (the whole model at the same rate).

    Example: [bold]qfi sensitivity --ber 1e-2 --trials 20 --budget[/]
    """
    if ber is not None and count is not None:
        _fail("give --ber or --count, not both")
    ov = ["command=sensitivity"]
    chosen = {arg.split("=", 1)[0].lstrip("+~") for arg in overrides or [] if "=" in arg}
    if ber is None and count is None and not chosen & {"fault", "fault.ber", "fault.model", "fault.count",
                                                       "eval.bers"}:
        ov.append(f"fault.ber={SENSITIVITY_BER}")
    _opt(ov, "checkpoint", checkpoint.resolve() if checkpoint else None)
    _opt(ov, "fault.ber", _float_text("--ber", ber))
    if count is not None:
        ov += ["fault.model=bitflip_count", "fault.ber=null", f"fault.count={count}"]
    _opt(ov, "eval.trials", trials)
    _opt(ov, "eval.fault_seed", seed)
    _opt(ov, "sensitivity.top", top)
    if budget:
        ov.append("sensitivity.budget=true")
    _opt(ov, "hydra.run.dir", out)
    if trust_code:
        ov.append("trust_code=true")
    last = _run("sensitivity", ov, overrides, out)
    from qfi_cli.report.sensitivity import render_sensitivity

    results = last["result"]
    for res in results if isinstance(results, list) else [results] if results else []:
        render_sensitivity(res, console, top=res.top)
    if results:
        console.print(f"wrote sensitivity.csv, sensitivity.png{', budget.csv, budget.png' if budget else ''} in "
                      f"{last['out_dir']}", highlight=False, soft_wrap=True)


@app.command(context_settings=EXTRA, rich_help_panel="Jobs")
def attack(
    checkpoint: Checkpoint = None,
    flips: Annotated[Optional[int], typer.Option(help="Most bit flips to commit (the paper's iterations); the "
                                                      "search stops earlier at the target accuracy.",
                                                 show_default=_default("config", "attack.flips"))] = None,
    target_accuracy: Annotated[Optional[str], typer.Option("--target-accuracy", help="Stop at or below this test "
                                                                                      "accuracy (0..1).",
                                                           show_default="chance + 1 point")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Which training samples form the attack batch "
                                                     "(attack.seed).", show_default="0")] = None,
    out: Out = None,
    trust_code: TrustCode = False,
    overrides: Overrides = None,
) -> None:
    """Worst-case bit flips: progressive bit search (Rakin et al., ICCV 2019) on the stored weight codes, beside
    as many random flips; writes attack.json and attack_curve.png.

    The attack batch (attack.batch samples) comes from the TRAINING split; accuracy is measured on the TEST split.
    Knobs: attack.k_top, attack.batch, attack.random_trials. Example: [bold]qfi attack --flips 50 attack.k_top=20[/]

    attack.k_top (default 5): qfi's candidate bits per layer, evaluated by true loss; not Rakin et al.'s k_top.
    attack.rank_top (default null: every weight) is their k_top: only the bits of each layer's rank_top weights of
    largest |gradient| are candidates. Their setting: [bold]qfi attack attack.rank_top=10 attack.k_top=1[/]
    """
    ov = ["command=attack"]
    _opt(ov, "checkpoint", checkpoint.resolve() if checkpoint else None)
    _opt(ov, "attack.flips", flips)
    _opt(ov, "attack.target_accuracy", _float_text("--target-accuracy", target_accuracy))
    _opt(ov, "attack.seed", seed)
    _opt(ov, "hydra.run.dir", out)
    if trust_code:
        ov.append("trust_code=true")
    last = _run("attack", ov, overrides, out)
    res = last["result"]
    if not res:
        return
    at_final = res.get("random_at_final") or {}
    ci = at_final.get("accuracy_ci95")
    n, spf = res["flips_committed"], res["seconds_per_flip"]
    _table("qfi attack", {
        "clean accuracy": res["clean_accuracy"], "target accuracy": res["target_accuracy"],
        "flips to target": "not reached" if res["flips_to_target"] is None else res["flips_to_target"],
        f"accuracy after {n} flips": res["final_accuracy"],
        f"random {n} flips (mean [95% CI], {res['random']['trials']} trials)":
            "-" if not at_final else f"{at_final['accuracy_mean']:.4f}"
                                     + ("" if ci is None else f" [{ci[0]:.4f}, {ci[1]:.4f}]"),
        "seconds per flip": "-" if spf is None else f"{spf:.3f}", "seconds": res["seconds"]})
    console.print(f"attack batch: {res['attack_samples']} samples of the training split (attack.seed="
                  f"{res['attack']['seed']}); accuracy: {res['samples']} samples of the test split. Wrote attack.json "
                  f"and attack_curve.png in {last['out_dir']}", highlight=False, soft_wrap=True)


@app.command(context_settings=EXTRA, rich_help_panel="Jobs")
def sweep(
    checkpoint: Checkpoint = None,
    bers: Annotated[Optional[str], typer.Option(help="Comma-separated bit error rates, e.g. 1e-5,1e-4,1e-3: "
                                                     "evaluated in one job per model.",
                                                show_default=False)] = None,
    trials: Annotated[Optional[int], typer.Option(help="Fault patterns per point.", show_default="10")] = None,
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
) -> None:
    """Sweep inject-eval over a grid (Hydra multirun); writes summary.csv, ber_curve.png and the study table.

    Any override can be swept too: [bold]qfi sweep --bers 1e-4,1e-3 --train quant.wbits=4,8 sam.rho=0,0.05[/].
    [bold]command=attack[/] attacks every model of the grid instead (attack.json per point, flips to target in the
    table). Running it again into the same --out skips finished points.
    """
    if launcher not in LAUNCHERS:
        _fail(f"unknown launcher {launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
    if LAUNCHERS[launcher] and importlib.util.find_spec(LAUNCHERS[launcher][0]) is None:
        _fail(f"the {launcher} launcher is not installed: pip install 'qfi[{LAUNCHERS[launcher][1]}]'")
    ov = ["command=inject_eval", f"hydra/launcher={launcher}"]
    if launcher == "ray":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ov += RAY_LOCAL
    _opt(ov, "checkpoint", checkpoint.resolve() if checkpoint else None)
    if bers is not None:
        ov.append(f"eval.bers=[{','.join(repr(b) for b in _bers(bers))}]")
    _opt(ov, "eval.trials", trials)
    if seed is not None:  # a sweep of training seeds (replicates): 0,1,2
        if not all(part.strip().isdigit() for part in seed.split(",")):
            _fail(f"--seed takes whole numbers separated by commas (0,1,2), got {seed!r}")
        ov.append(f"seed={seed.replace(' ', '')}")
    _opt(ov, "eval.fault_seed", fault_seed)
    _opt(ov, "hydra.sweep.dir", out)
    if train_models:
        ov.append("sweep_train=true")
    if trust_code:
        ov.append("trust_code=true")
    last = _run("sweep", ov, _group_rates(overrides), out, multirun=True)
    rows = last.get("rows") or []
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        _fail(f"{len(failed)} of {len(rows)} sweep point(s) failed (first: {failed[0].get('dir')}: "
              f"{failed[0].get('error')}); finished points are kept: fix the cause and run the same command again")


def _group_rates(overrides: list[str] | None) -> list[str]:
    """A swept ``fault.ber=a,b,c`` becomes ``eval.bers=[a,b,c]``: every rate of one model in one job."""
    out = []
    for arg in overrides or []:
        key, sep, value = arg.partition("=")
        if sep and key == "fault.ber" and "," in value and not value.strip().startswith(("[", "range", "choice")):
            out.append(f"eval.bers=[{value}]")
        else:
            out.append(arg)
    return out


def _exclude_fixed(overrides: list[str]) -> str:
    """Hydra override that keeps single-valued settings out of the sweep points' directory names."""
    from qfi_cli.validate import parsed_overrides

    fixed = {o.get_key_element().lstrip("+~") for o in parsed_overrides(overrides)
             if not o.is_sweep_override() and not o.get_key_element().lstrip("+~").startswith("hydra")}
    keys = sorted(fixed | set(POINT_DIR_EXCLUDED) | {"eval.bers"})
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"


def _check_sweep_dir(out: Path, configs: list[dict[str, Any]]) -> None:
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
                _fail(f"{out} holds a sweep made with {key}={json.dumps(before[key])}, not "
                      f"{json.dumps(fixed[key])}: use another --out (rows made differently must not mix)")
        fixed = {k: v for k, v in fixed.items() if k in before}
    write_json(state, fixed)


@app.command(rich_help_panel="Results")
def report(sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory (qfi sweep --out).")]) -> None:
    """Render summary.csv, the study table, paired differences and the plots again from a sweep directory."""
    from qfi_cli.report import aggregate

    try:
        aggregate(sweep_dir)
    except QfiError as e:
        _fail(str(e))


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's usage-error classes (and "no arguments, show help"), from click and from Typer's own copy of it."""
    modules = [click.exceptions]
    try:
        import typer._click.exceptions as vendored  # Typer >= 0.29 ships its own click

        modules.append(vendored)
    except ImportError:
        pass
    usage = tuple(m.ClickException for m in modules)
    no_args = tuple(m.NoArgsIsHelpError for m in modules if hasattr(m, "NoArgsIsHelpError"))
    return usage, no_args


def main() -> None:
    """Entry point: Typer's app with usage errors as one line (``error: qfi CMD: ...``, exit 2)."""
    usage, no_args = _click_exceptions()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="qfi", standalone_mode=False)
    except no_args:
        raise SystemExit(0) from None
    except usage as e:
        ctx = getattr(e, "ctx", None)
        name = ctx.command_path if ctx is not None else "qfi"
        errors.print(Text.assemble(("error: ", "bold red"), f"{name}: {first_line(e.format_message())}"),
                     highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, click.exceptions.Abort):
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
