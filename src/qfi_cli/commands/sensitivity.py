"""``qfi sensitivity``: where faults hurt, one layer and one bit position at a time.

Per rate: results.json (the whole model at that rate, as inject-eval writes it) and sensitivity.csv / .png
(budget.csv / .png with ``sensitivity.budget``). A sweep point is skipped when every rate has all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from qfi_cli.commands.base import Command, Job, Outcome, Request, Slot, rate_dirname, rate_point, run_point
from qfi_cli.commands.inject_eval import finished as rate_finished
from qfi_cli.commands.options import Out, Overrides, Precision, TrustCode, console, fail, float_text, opt
from qfi_cli.layout import BUDGET_CSV, BUDGET_PNG, RESULTS, SENSITIVITY_CSV, SENSITIVITY_PNG

SENSITIVITY_BER = 0.01  # qfi sensitivity's rate unless --ber, --count or the overrides choose the faults
FAULT_CHOICES = {"fault", "fault.ber", "fault.model", "fault.count", "eval.bers"}  # overrides that choose faults


def options(
    checkpoint: Annotated[Optional[Path], typer.Option(help="model.pt to map.",
                                                       show_default="the latest from `qfi train`")] = None,
    ber: Annotated[Optional[str], typer.Option(help="Bit error rate inside each cell (layer x bit position).",
                                               show_default=str(SENSITIVITY_BER))] = None,
    count: Annotated[Optional[int], typer.Option(help="Exactly this many flipped bits per cell, instead of a "
                                                      "rate.", show_default=False)] = None,
    trials: Annotated[Optional[int], typer.Option(help="Fault patterns per cell.", show_default="10")] = None,
    precision: Precision = None,
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
) -> Request:
    """Map where faults hurt: RErr with faults in one layer and one bit position at a time; writes
    sensitivity.csv, sensitivity.png and results.json (the whole model at the same rate).

    Example: [bold]qfi sensitivity --ber 1e-2 --trials 20 --budget[/]
    """
    if ber is not None and count is not None:
        fail("give --ber or --count, not both")
    ov = ["command=sensitivity"]
    chosen = {arg.split("=", 1)[0].lstrip("+~") for arg in overrides or [] if "=" in arg}
    if ber is None and count is None and not chosen & FAULT_CHOICES:
        ov.append(f"fault.ber={SENSITIVITY_BER}")
    opt(ov, "checkpoint", checkpoint.resolve() if checkpoint else None)
    opt(ov, "fault.ber", float_text("--ber", ber))
    if count is not None:
        ov += ["fault.model=bitflip_count", "fault.ber=null", f"fault.count={count}"]
    opt(ov, "eval.trials", trials)
    opt(ov, "eval.precision", precision)
    opt(ov, "eval.fault_seed", seed)
    opt(ov, "sensitivity.top", top)
    if budget:
        ov.append("sensitivity.budget=true")
    opt(ov, "hydra.run.dir", out)
    if trust_code:
        ov.append("trust_code=true")
    return Request(ov, overrides, out, options={"budget": budget})


def show(outcome: Outcome, request: Request) -> None:
    """Each rate's ranked cells, then the files written."""
    from qfi_cli.report.sensitivity import render_sensitivity

    results = outcome.result
    for res in results if isinstance(results, list) else [results] if results else []:
        render_sensitivity(res, console, top=res.top)
    if results:
        console.print(f"wrote sensitivity.csv, sensitivity.png"
                      f"{', budget.csv, budget.png' if request.options.get('budget') else ''} in "
                      f"{outcome.out_dir}", highlight=False, soft_wrap=True)


def job(job: Job) -> Any:
    """Sensitivity map(s) of one model, one per rate."""
    from qfi_cli.engine.evaluate import rates
    from qfi_cli.engine.sensitivity import sensitivity
    from qfi_cli.io import write_json
    from qfi_cli.loggers import log_run
    from qfi_cli.report.sensitivity import write_sensitivity

    cfg = job.cfg
    levels = rates(cfg)
    split = cfg.eval.bers is not None
    slots = [Slot((job.out_dir / rate_dirname(b, c) if split else job.out_dir) / RESULTS, rate_point(job, b, c))
             for b, c in levels]
    wanted = (SENSITIVITY_CSV, BUDGET_CSV) if cfg.sensitivity.budget else (SENSITIVITY_CSV,)

    def finished(i: int) -> Any:
        d = slots[i].path.parent
        return all((d / f).is_file() for f in wanted) and rate_finished(slots[i], job, *levels[i]) or None

    def work(checkpoint: Path, expect: dict[str, Any], todo: list[int], written: dict[int, Any]) -> None:
        pending = iter(todo)

        def save(res: Any) -> None:
            i = next(pending)
            d = slots[i].path.parent
            files = write_sensitivity(d, res)
            record = res.whole | {"status": "ok", "point": slots[i].point, "command": "sensitivity",
                                  "sensitivity_files": [f.name for f in files]}
            write_json(slots[i].path, record)
            log_run(cfg.logger, d, cfg.paths.root, {**cfg.as_dict(), "point": record["point"]}, record,
                    [slots[i].path, *files])
            written[i] = res

        sensitivity(cfg, checkpoint, job.reporter, expect, on_result=save)

    results, written = run_point(job, slots, work, finished, lambda n: f"skip finished sensitivity point "
                                 f"{job.out_dir.name}", all_or_none=True,
                                 kept=lambda i: (slots[i].path.parent / SENSITIVITY_CSV).is_file())
    if not written:  # skipped, or failed (recorded)
        return None
    ordered = [results[i] for i in range(len(levels))]
    return ordered if split else ordered[0]


COMMAND = Command("sensitivity", "sensitivity", options, job=job, show=show,
                  outputs=(RESULTS, SENSITIVITY_CSV, SENSITIVITY_PNG, BUDGET_CSV, BUDGET_PNG))
