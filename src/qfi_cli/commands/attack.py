"""``qfi attack``: worst-case bit flips (progressive bit search, Rakin et al., ICCV 2019) beside as many random
flips; writes attack.json and attack_curve.png. A sweep point is skipped when its attack.json is complete and was
made with the same attack settings, fault seed and evaluation limit."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from qfi_cli.commands.base import Command, Job, Outcome, Request, Slot, finished_record, run_point
from qfi_cli.commands.options import Checkpoint, Out, Overrides, TrustCode, console, default, float_text, opt, table
from qfi_cli.layout import ATTACK, ATTACK_CURVE


def options(
    checkpoint: Checkpoint = None,
    flips: Annotated[Optional[int], typer.Option(help="Most bit flips to commit (the paper's iterations); the "
                                                      "search stops earlier at the target accuracy.",
                                                 show_default=default("config", "attack.flips"))] = None,
    target_accuracy: Annotated[Optional[str], typer.Option("--target-accuracy", help="Stop at or below this test "
                                                                                      "accuracy (0..1).",
                                                           show_default="chance + 1 point")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Which training samples form the attack batch "
                                                     "(attack.seed).", show_default="0")] = None,
    out: Out = None,
    trust_code: TrustCode = False,
    overrides: Overrides = None,
) -> Request:
    """Worst-case bit flips: progressive bit search (Rakin et al., ICCV 2019) on the stored weight codes, beside
    as many random flips; writes attack.json and attack_curve.png.

    The attack batch (attack.batch samples) comes from the TRAINING split; accuracy is measured on the TEST split.
    Knobs: attack.k_top, attack.batch, attack.random_trials. Example: [bold]qfi attack --flips 50 attack.k_top=20[/]

    attack.k_top (default 5): qfi's candidate bits per layer, evaluated by true loss; not Rakin et al.'s k_top.
    attack.rank_top (default null: every weight) is their k_top: only the bits of each layer's rank_top weights of
    largest |gradient| are candidates. Their setting: [bold]qfi attack attack.rank_top=10 attack.k_top=1[/]
    """
    ov = ["command=attack"]
    opt(ov, "checkpoint", checkpoint.resolve() if checkpoint else None)
    opt(ov, "attack.flips", flips)
    opt(ov, "attack.target_accuracy", float_text("--target-accuracy", target_accuracy))
    opt(ov, "attack.seed", seed)
    opt(ov, "hydra.run.dir", out)
    if trust_code:
        ov.append("trust_code=true")
    return Request(ov, overrides, out)


def show(outcome: Outcome, request: Request) -> None:
    """The attack's summary table and what it measured on."""
    res = outcome.result
    if not res:
        return
    at_final = res.get("random_at_final") or {}
    ci = at_final.get("accuracy_ci95")
    n, spf = res["flips_committed"], res["seconds_per_flip"]
    table("qfi attack", {
        "clean accuracy": res["clean_accuracy"], "target accuracy": res["target_accuracy"],
        "flips to target": "not reached" if res["flips_to_target"] is None else res["flips_to_target"],
        f"accuracy after {n} flips": res["final_accuracy"],
        f"random {n} flips (mean [95% CI], {res['random']['trials']} trials)":
            "-" if not at_final else f"{at_final['accuracy_mean']:.4f}"
                                     + ("" if ci is None else f" [{ci[0]:.4f}, {ci[1]:.4f}]"),
        "seconds per flip": "-" if spf is None else f"{spf:.3f}", "seconds": res["seconds"]})
    console.print(f"attack batch: {res['attack_samples']} samples of the training split (attack.seed="
                  f"{res['attack']['seed']}); accuracy: {res['samples']} samples of the test split. Wrote attack.json "
                  f"and attack_curve.png in {outcome.out_dir}", highlight=False, soft_wrap=True)


def finished(slot: Slot, job: Job) -> dict[str, Any] | None:
    """A point's earlier attack.json when it is complete and was made with the same attack settings."""
    cfg = job.cfg

    def same(done: dict[str, Any]) -> bool:
        return (done.get("attack") == dataclasses.asdict(cfg.attack) and done.get("fault_seed") == cfg.eval.fault_seed
                and done.get("limit") == cfg.eval.limit and isinstance(done.get("flips"), list)
                and len(done["flips"]) == done.get("flips_committed"))

    return finished_record(slot.path, slot.point, same)


def job(job: Job) -> dict[str, Any] | None:
    """Attack one model; write attack.json, the curve, and the tracker's record."""
    from qfi_cli.engine.attack import attack
    from qfi_cli.io import write_json
    from qfi_cli.loggers import log_run
    from qfi_cli.report.attack import plot_attack_curve

    cfg, slot = job.cfg, Slot(job.out_dir / ATTACK, dict(job.point))

    def work(checkpoint: Path, expect: dict[str, Any], todo: list[int], written: dict[int, Any]) -> None:
        written[0] = attack(cfg, checkpoint, job.reporter, expect)

    results, written = run_point(job, [slot], work, lambda i: finished(slot, job),
                                 lambda n: f"skip finished attack {job.out_dir.name}")
    if not written:  # finished before (its result), or failed (recorded)
        return results.get(0) if written is not None else None
    result = written[0]
    result.update(status="ok", point=dict(job.point))
    write_json(slot.path, result)
    plot_attack_curve(result, job.out_dir / ATTACK_CURVE)
    history = [{"epoch": f["flip"], "loss": f["loss"], "accuracy": f["accuracy"]} for f in result["flips"]]
    log_run(cfg.logger, job.out_dir, cfg.paths.root, {**cfg.as_dict(), "point": result["point"]}, result,
            [slot.path, job.out_dir / ATTACK_CURVE], history=history)
    return result


COMMAND = Command("attack", "attack", options, job=job, show=show, outputs=(ATTACK, ATTACK_CURVE))
