"""``qfi inject-eval``: evaluate a trained model under bit errors (injection on, SAM off); writes results.json.

Several rates (``--bers``) are one job: one model load, nested patterns, each rate written as soon as it is
complete into its own ``fault.ber=<p>/results.json``; a sweep point skips the rates it already finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from qfi_cli.commands.base import Command, Job, Outcome, Request, Slot, finished_record, in_run, rate_dirname
from qfi_cli.commands.base import rate_point, run_point
from qfi_cli.commands.options import (Checkpoint, Out, Overrides, Precision, TrustCode, console, default, fail,
                                      float_text, opt, rates_text, table)
from qfi_cli.layout import RESULTS


def options(
    checkpoint: Checkpoint = None,
    ber: Annotated[Optional[str], typer.Option(help="Bit error rate: each weight bit flips with this "
                                                    "probability.",
                                               show_default=default("fault/bitflip", "ber"))] = None,
    bers: Annotated[Optional[str], typer.Option(help="Several rates in one job, e.g. 1e-5,1e-4,1e-3: one model "
                                                     "load, nested patterns, one result per rate.",
                                                show_default=False)] = None,
    trials: Annotated[Optional[int], typer.Option(help="Independent fault patterns per rate.",
                                                  show_default="10")] = None,
    precision: Precision = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the fault patterns (eval.fault_seed).",
                                                show_default="0")] = None,
    save_faults: Annotated[Optional[Path], typer.Option("--save-faults", help="Record every trial's faulty bits "
                                                        "in this .npz file; fault=replay fault.file=FILE applies "
                                                        "them again.", show_default=False)] = None,
    out: Out = None,
    trust_code: TrustCode = False,
    overrides: Overrides = None,
) -> Request:
    """Evaluate a trained model under bit errors (injection on, SAM off); writes results.json.

    Example: [bold]qfi inject-eval --ber 1e-4 --trials 20 fault=msb[/]
    """
    if ber is not None and bers is not None:
        fail("give --ber or --bers, not both")
    ov = ["command=inject_eval"]
    opt(ov, "checkpoint", checkpoint.resolve() if checkpoint else None)
    opt(ov, "fault.ber", float_text("--ber", ber))
    if bers is not None:
        ov.append(f"eval.bers=[{','.join(repr(b) for b in rates_text(bers))}]")
    opt(ov, "eval.trials", trials)
    opt(ov, "eval.precision", precision)
    opt(ov, "eval.fault_seed", seed)
    opt(ov, "eval.save_faults", save_faults.resolve() if save_faults else None)
    opt(ov, "hydra.run.dir", out)
    if trust_code:
        ov.append("trust_code=true")
    return Request(ov, overrides, out)


def show(outcome: Outcome, request: Request) -> None:
    """One rate as a table; several as the sweep report of the run directory."""
    results = outcome.result
    if isinstance(results, list):
        from qfi_cli.report import aggregate

        aggregate(Path(outcome.out_dir), console)
    elif results:
        ci = results["accuracy_ci95"]
        table("qfi inject-eval", {
            "ber": "-" if results["ber"] is None else f"{results['ber']:.3g}", "trials": results["trials"],
            **({"stopped": f"{results['stopped']} (+-{results['precision']:g} wanted)"}
               if results.get("precision") is not None else {}),
            "forwards": results.get("forwards"),
            "clean accuracy": results["clean_accuracy"],
            "accuracy (mean ± std)": f"{results['accuracy_mean']:.4f} ± {results['accuracy_std']:.4f}",
            "95% CI": "n/a (one trial)" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}] ({results['ci_method']})",
            "robust error (RErr)": results["rerr_mean"],
            **({"stored weights": f"{results['wbits_label']}: {results['bits_model']} bits "
                                  f"({results['bits_model'] / results['bits_all_wbits']:.2f}x all "
                                  f"{results['wbits']}-bit)" + _groups_text(results.get("groups"))}
               if results.get("wbits_label") else {}),
            "flips per trial (mean)": f"{sum(results['flips']) / len(results['flips']):.1f} of "
                                      f"{results['bits_total']} bits",
            **({"exposed bits by part": ", ".join(f"{part} {n}" for part, n in results["bits_by_part"].items())}
               if len(results.get("bits_by_part") or {}) > 1 else {}),
            "NaN trials": results["nan_trials"], "seconds": results["seconds"],
            **({"faults saved to": results["faults_file"]} if results.get("faults_file") else {})})


def _groups_text(groups: dict[str, int] | None) -> str:
    """``, a scale per 9-32 entries`` for group-wise scales (results' ``groups``), else nothing."""
    if not groups:
        return ""
    lo, hi = min(groups.values()), max(groups.values())
    return f", a scale per {lo if lo == hi else f'{lo}-{hi}'} entries"


def finished(slot: Slot, job: Job, ber: float | None, count: int | None) -> dict[str, Any] | None:
    """A rate's earlier results when they are complete and were made with the same fault settings, fault seed and
    trials (or the same adaptive rule: ``eval.precision``, ``min_trials``, ``max_trials``)."""
    cfg = job.cfg
    fault = cfg.fault.as_dict() | {"ber": ber, "count": count if count is not None else cfg.fault.count}
    ev = cfg.eval

    def same(done: dict[str, Any]) -> bool:
        complete = isinstance(done.get("accuracies"), list) and len(done["accuracies"]) == done.get("trials")
        if ev.precision is None:
            trials = done.get("trials") == ev.trials and done.get("precision") is None
        else:
            trials = ((done.get("precision"), done.get("min_trials"), done.get("max_trials"))
                      == (ev.precision, ev.min_trials, ev.max_trials))
        return complete and trials and done.get("fault") == fault and done.get("fault_seed") == ev.fault_seed

    return finished_record(slot.path, slot.point, same)


def job(job: Job) -> Any:
    """Every rate of this job not finished yet, each written (and logged) as soon as it is complete."""
    from qfi_cli.config import RunConfig
    from qfi_cli.engine.evaluate import inject_eval, rates
    from qfi_cli.io import write_json
    from qfi_cli.loggers import log_run

    cfg = job.cfg
    levels = rates(cfg)
    split = cfg.eval.bers is not None or len(levels) > 1  # one subdirectory per rate
    slots = [Slot(job.out_dir / rate_dirname(b, c) / RESULTS if split else job.out_dir / RESULTS,
                  rate_point(job, b, c)) for b, c in levels]

    def work(checkpoint: Path, expect: dict[str, Any], todo: list[int], written: dict[int, Any]) -> None:
        part = cfg
        if split:
            plain = cfg.as_dict()
            part = RunConfig.from_dict(plain | {"eval": plain["eval"] | {"bers": [levels[i][0] for i in todo]}})
        pending = iter(todo)

        def save(res: dict[str, Any]) -> None:  # each rate as soon as it is complete
            i = next(pending)
            res.update(status="ok", point=slots[i].point)
            write_json(slots[i].path, res)
            log_run(cfg.logger, slots[i].path.parent, cfg.paths.root, {**cfg.as_dict(), "point": res["point"]},
                    res, [slots[i].path])
            written[i] = res

        inject_eval(part, checkpoint, job.reporter, expect, on_result=save,
                    save_faults=in_run(job, cfg.eval.save_faults))

    results, written = run_point(job, slots, work, lambda i: finished(slots[i], job, *levels[i]),
                                 lambda n: f"skip {n} finished rate(s) of {job.out_dir.name}")
    if written is None:
        return None
    ordered = [results[i] for i in range(len(levels))]
    return ordered if split else ordered[0]


COMMAND = Command("inject_eval", "inject-eval", options, job=job, show=show, outputs=(RESULTS,))
