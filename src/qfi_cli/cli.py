"""The ``qfi`` command line, built from the command registry (``qfi_cli.commands``): each command's typed options
become Hydra overrides for the one task function in ``app``.

Anything after the options is passed to Hydra: overrides (``train.lr=0.05``, ``quant=minmax``) and Hydra's own
flags (``--cfg job`` prints the composed config). Every user mistake is one line on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import sys
from typing import Annotated, Any, Callable, Optional

import click
import typer
from rich.text import Text

from qfi_cli import __version__
from qfi_cli.commands import COMMANDS, Command, Outcome, Request, check
from qfi_cli.commands.options import console, errors, fail
from qfi_cli.errors import QfiError, first_line

app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                  help="qfi: train quantized networks (with SAM) and measure how they survive bit errors "
                       "in their stored weight codes.")
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def _version(value: bool) -> None:
    if value:
        console.print(f"qfi {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                          help="Print qfi's version and exit.")] = None) -> None:
    """qfi: train quantized networks (with SAM) and measure how they survive bit errors in their stored weights."""


def launch(command: Command, request: Request) -> Outcome:
    """Check a command's request (options, overrides, every swept value with the commands' rules, writable
    directories), then run it through the Hydra app; a user mistake is one line (exit 2)."""
    from qfi_cli import app as hydra_app
    from qfi_cli.validate import check_overrides, check_writable, first_values, hydra_flags, quote_values
    from qfi_cli.validate import target_overrides

    try:
        user = quote_values(list(request.extra or []))
        flags = hydra_flags(user, command.cli_name)
        args = target_overrides(request.overrides + user)
        if flags:  # --cfg / --info / --resolve: Hydra prints; a sweep shows its first point's config
            return hydra_app.run([a for a in first_values(args) if a != "--multirun"])
        configs = check_overrides(args, rules=check)
        check_writable(configs[0]["paths"]["root"], "outputs root (paths.root or QFI_OUTPUTS)")
        if request.out is not None:
            check_writable(request.out)
        extra = command.prepare(request, args, configs) if command.prepare else []
        outcome = hydra_app.run((["--multirun"] if request.multirun else []) + args + extra)
    except QfiError as e:
        fail(str(e))
    if outcome.error:
        fail(outcome.error)
    return outcome


def typer_command(command: Command) -> Callable[..., None]:
    """The Typer function of ``command``: its options' signature and help; runs the request it makes and prints."""
    @functools.wraps(command.options)
    def run(**options: Any) -> None:
        request = command.options(**options)
        if request is None:
            return
        outcome = launch(command, request)
        if command.show is not None:
            command.show(outcome, request)

    return run


FUNCTIONS = {}
for _command in COMMANDS.values():
    FUNCTIONS[_command.cli_name.replace("-", "_")] = app.command(
        _command.cli_name, context_settings=EXTRA if _command.extra_args else None,
        rich_help_panel=_command.panel)(typer_command(_command))


def __getattr__(name: str) -> Callable[..., None]:
    """``cli.train``, ``cli.inject_eval``, ``cli.sweep`` ...: each command's function, callable with its options."""
    try:
        return FUNCTIONS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


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
