"""The command registry is the one list of commands: the CLI's Typer commands, the values ``command=`` takes and
the Hydra app's dispatch all come from it; ``app.run`` hands Hydra an argument list (``sys.argv`` untouched) and
returns its outcome (no module-global result)."""

from __future__ import annotations

import pickle
import sys

import pytest
import typer

from qfi_cli import app as hydra_app
from qfi_cli import cli
from qfi_cli.commands import COMMANDS, Outcome, check, config_commands, for_config
from qfi_cli.config import RunConfig
from qfi_cli.errors import QfiError
from qfi_cli.validate import check_overrides


def test_the_registry_is_the_single_source_of_commands():
    typer_names = [c.name for c in typer.main.get_command(cli.app).commands.values()]
    assert sorted(typer_names) == sorted(c.cli_name for c in COMMANDS.values())
    assert config_commands() == ["train", "inject_eval", "sensitivity", "attack"]
    for name in config_commands():  # every config command dispatches to its module's job
        assert for_config(name).job is not None
    with pytest.raises(QfiError, match="unknown command 'nope': use train, inject_eval, sensitivity, attack"):
        check(RunConfig.from_dict({"command": "nope"}))


def test_a_command_rule_fails_in_the_pre_check_of_every_swept_point():
    """The train command's rule (one source of training faults) stops a sweep that trains before it starts."""
    args = ["command=inject_eval", "sweep_train=true", "fault.enable_in_training=false,true", "train.bet.mode=random"]
    check_overrides(args)  # without the commands' rules: composes
    with pytest.raises(QfiError, match="both inject faults"):
        check_overrides(args, rules=check)


def test_app_run_leaves_sys_argv_alone_and_keeps_no_global_result(in_tmp):
    saved = list(sys.argv)
    outcome = hydra_app.run(["command=train", "train.epochs=0", "model.width=4", "device=cpu", "train.limit=64",
                             f"hydra.run.dir={in_tmp / 'run'}"])
    assert sys.argv == saved
    assert isinstance(outcome, Outcome) and outcome.error is None and outcome.result["epochs"] == 0
    assert outcome.out_dir == str(in_tmp / "run")
    assert not hasattr(hydra_app, "LAST")
    mistake = hydra_app.run(["command=train", "--multirun", "train.epochs=0", "model.width=4", "device=cpu",
                             "train.limit=64", "train.lr=-1", f"hydra.sweep.dir={in_tmp / 'sweep'}"])
    assert mistake is not outcome and outcome.error is None
    assert len(list((in_tmp / "sweep").glob("*/results.json"))) == 1  # a multirun point records its failure


def test_the_task_function_pickles_with_its_outcome():
    import functools

    task = pickle.loads(pickle.dumps(functools.partial(hydra_app.task, outcome=Outcome())))
    assert task.func is hydra_app.task and isinstance(task.keywords["outcome"], Outcome)
