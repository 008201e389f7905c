"""The commands, one module each, registered once here: the CLI (its Typer commands), the Hydra app (``command=``
dispatch) and the pre-check (each command's cross-field rules) are all built from ``COMMANDS``.

To add a command: write ``commands/<name>.py`` with a ``COMMAND = Command(...)`` and name its module in
``MODULES``.

>>> [c.cli_name for c in COMMANDS.values()]
['train', 'inject-eval', 'sensitivity', 'attack', 'sweep', 'report']
>>> config_commands()
['train', 'inject_eval', 'sensitivity', 'attack']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qfi_cli.commands import attack, inject_eval, report, sensitivity, sweep, train
from qfi_cli.commands.base import Command, Job, Outcome, Request
from qfi_cli.errors import QfiError
from qfi_cli.registry import Registry

if TYPE_CHECKING:
    from qfi_cli.config import RunConfig

MODULES = (train, inject_eval, sensitivity, attack, sweep, report)  # in the order of `qfi --help`

COMMANDS: Registry[Command] = Registry("command")
for _module in MODULES:
    COMMANDS.register(_module.COMMAND.cli_name)(_module.COMMAND)


def config_commands() -> list[str]:
    """The values ``command=`` takes (the commands with a job), in registry order."""
    return [c.name for c in COMMANDS.values() if c.config_command]


def for_config(name: str) -> Command:
    """The command ``command=<name>`` runs; a one-line QfiError names the choices.

    >>> for_config("inject_eval").cli_name
    'inject-eval'
    >>> for_config("eval")
    Traceback (most recent call last):
    ...
    qfi_cli.errors.QfiError: unknown command 'eval': use train, inject_eval, sensitivity, attack
    """
    found = next((c for c in COMMANDS.values() if c.config_command and c.name == name), None)
    if found is None:
        raise QfiError(f"unknown command {name!r}: use {', '.join(config_commands())}")
    return found


def check(cfg: "RunConfig") -> None:
    """The cross-field rules of the command ``cfg`` runs (and training's, when a sweep trains its models): the
    pre-check runs them for every composed point, the app again before the job."""
    for_config(cfg.command).check(cfg)
    if cfg.sweep_train and cfg.command != "train":
        for_config("train").check(cfg)


__all__ = ["COMMANDS", "Command", "Job", "MODULES", "Outcome", "Request", "check", "config_commands", "for_config"]
