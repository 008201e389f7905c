"""Check a command line before Hydra runs it, so that mistakes give one line instead of Hydra's report.

Checks: options belong to the command; overrides parse (values the grammar cannot read literally are quoted);
config-group choices exist (``model=foo``); the overrides compose against ``conf/``; the composed config reads into
a valid ``RunConfig`` (types, ranges, keys no part of qfi reads), for every value of a swept key; output
directories can be written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from qfi_cli.config import RunConfig
from qfi_cli.errors import QfiError, first_line
from qfi_cli.paths import conf_dir

GROUPS = {"model": "model", "data": "data set", "quant": "quantizer", "sam": "SAM setting", "fault": "fault model",
          "train": "training recipe", "sweep": "named sweep", "recipe": "recipe", "experiment": "experiment",
          "logger": "logger"}
# Hydra's flags that take a value in the next token, and those that stand alone, that qfi passes through.
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-name", "-cn", "--config-dir", "-cd",
               "--experimental-rerun"}
PASS_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--resolve"}
# Settings that say where or how a sweep runs, or what it sweeps, rather than how each point is made.
NOT_FIXED = ("hydra", "sweep", "paths", "device", "command", "eval.bers", "fault.ber", "sweep_train", "logger",
             "trust_code")


def split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra's flags (and their values) from key=value overrides.

    >>> split_flags(["--cfg", "job", "a=1", "--multirun"])
    (['a=1'], ['--cfg', 'job', '--multirun'])
    """
    overrides, flags, skip = [], [], False
    for arg in args:
        if skip:
            flags.append(arg)
            skip = False
        elif arg.startswith("-"):
            flags.append(arg)
            skip = arg in VALUE_FLAGS and "=" not in arg
        else:
            overrides.append(arg)
    return overrides, flags


def hydra_flags(args: list[str], command: str) -> list[str]:
    """The Hydra flags among ``args`` (``--cfg job``, ``--info``, ``--resolve``); any other option is a mistake.

    >>> hydra_flags(["a=1", "--cfg", "job"], "train")
    ['--cfg', 'job']
    >>> hydra_flags(["--epochs", "3"], "inject-eval")
    Traceback (most recent call last):
    ...
    qfi_cli.errors.QfiError: qfi inject-eval has no option --epochs (see qfi inject-eval --help)
    """
    _, flags = split_flags(args)
    for flag in flags:
        if flag.startswith("-") and flag.split("=")[0] not in PASS_FLAGS:
            raise QfiError(f"qfi {command} has no option {flag.split('=')[0]} (see qfi {command} --help)")
    return flags


def _quote(text: str) -> str:
    text = text.replace("'", "\\'").replace("${", "\\${")
    stripped = text.rstrip("\\")
    return "'" + stripped + "\\" * (2 * (len(text) - len(stripped))) + "'"


def quote_values(args: list[str]) -> list[str]:
    """Quote the value of a ``key=value`` override that Hydra's grammar cannot read as it is (``~/data``,
    non-ASCII characters, spaces), so that it arrives as the literal string the user typed.

    >>> quote_values(["data.root=~/data", "train.lr=0.1", "fault.layers=[conv*]", "--cfg", "job"])
    ["data.root='~/data'", 'train.lr=0.1', 'fault.layers=[conv*]', '--cfg', 'job']
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if arg.startswith("-") or not sep or value[:1] in ("'", '"', "[", "{"):
            out.append(arg)
            continue
        try:
            parser.parse_overrides([arg])
            out.append(arg)
        except HydraException:
            out.append(f"{key}={_quote(value)}")
    return out


def parsed_overrides(args: list[str]) -> list[Any]:
    """Hydra's parsed overrides of the ``key=value`` arguments (one-line QfiError when one does not parse)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(split_flags(args)[0])
    except HydraException as e:
        raise QfiError(f"malformed override: {_hydra_message(e)}") from None


def group_options(group: str) -> list[str]:
    """Config files of a group in conf/ (``group_options("quant")`` -> ``['lsq', 'minmax', 'rquant']``)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def target_overrides(args: list[str]) -> list[str]:
    """Hydra's ``_target_`` convention on the command line: ``model._target_=mypkg.nets.MyNet`` replaces the
    default model (``~model``) and the other ``model.KEY=V`` become its constructor arguments (``+model.KEY=V``);
    the same for ``data._target_``. ``model.init=PATH`` works for every model (``++model.init``).

    >>> target_overrides(["model._target_=m.Net", "model.hidden=8", "train.lr=0.1"])
    ['~model', '+model._target_=m.Net', '+model.hidden=8', 'train.lr=0.1']
    >>> target_overrides(["model.init=w.pt", "--cfg", "job"])
    ['++model.init=w.pt', '--cfg', 'job']
    """
    def key(arg: str) -> str:
        return arg.partition("=")[0].lstrip("+~") if not arg.startswith("-") else ""

    out = list(args)
    for section in ("model", "data"):
        if not any(key(a) == f"{section}._target_" and "=" in a for a in out):
            continue
        chosen = [a for a in out if key(a) == section and not a.startswith("~")]
        if chosen:
            what, option = ("model", "--model") if section == "model" else ("data set", "--dataset")
            raise QfiError(f"{section}._target_ replaces a named {what} ({chosen[0]}): give one of them "
                           f"(drop {chosen[0]} / {option})")
        out = [f"+{a}" if key(a).startswith(section + ".") and not a.startswith(("+", "~")) else a for a in out]
        if f"~{section}" not in out:
            out.insert(0, f"~{section}")
    return [f"++{a}" if key(a) == "model.init" and not a.startswith(("+", "~")) else a for a in out]


def check_targets(composed: dict[str, Any]) -> None:
    """Import the user's ``model._target_`` / ``data._target_`` now, so a wrong path is one line before any job."""
    from qfi_cli.user_code import TARGET, resolve_target

    for section in ("model", "data"):
        spec = composed.get(section)
        if isinstance(spec, dict) and TARGET in spec:
            resolve_target(spec[TARGET], f"{section}.{TARGET}")


def _values(o: Any) -> list[str]:
    return list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]


def first_values(args: list[str]) -> list[str]:
    """``args`` with every swept override replaced by its first value (what ``--cfg job`` shows for a sweep).

    >>> first_values(["a=1,2", "b=3", "--cfg", "job"])
    ['a=1', 'b=3', '--cfg', 'job']
    """
    overrides, flags = split_flags(args)
    out = []
    for o, text in zip(parsed_overrides(overrides), overrides):
        out.append(f"{o.get_key_element()}={_values(o)[0]}" if o.is_sweep_override() else text)
    return out + flags


def _compose(overrides: list[str], sweeper: bool = False) -> Any:
    """The composed config as a plain dict (without Hydra's node); with ``sweeper``, also the grid that the
    config itself sweeps (``hydra.sweeper.params`` of a +experiment or +sweep file)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=sweeper)
        plain = OmegaConf.to_container(cfg, resolve=False)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise QfiError(f"bad override: {_hydra_message(e)}") from None
    hydra = plain.pop("hydra", None) or {}
    try:
        out = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    except (OmegaConfBaseException, ValueError) as e:
        raise QfiError(f"bad setting: {_hydra_message(e)}") from None
    if not sweeper:
        return out
    params = (hydra.get("sweeper") or {}).get("params") or {}
    return out, {str(k): str(v) for k, v in params.items()}


def compositions(args: list[str]) -> list[dict[str, Any]]:
    """Every config a command line makes, as plain dicts: the first (every swept key at its first value), then one
    per further value of each swept key with the others at their first values (the command line's sweeps and the
    grid a +experiment / +sweep file sets). Raises a one-line QfiError for an unknown group choice or an override
    that does not compose."""
    choices: list[list[str]] = []
    for o in parsed_overrides(args):
        key = o.get_key_element().lstrip("+~")
        values = _values(o)
        if key in GROUPS and not o.is_delete():
            for v in values:
                if v not in group_options(key):
                    raise QfiError(f"unknown {GROUPS[key]} {v!r} ({key}=); choose one of: "
                                   f"{', '.join(group_options(key))}")
        if key.startswith("hydra"):
            continue
        choices.append([o.input_line] if o.is_delete() else [f"{o.get_key_element()}={v}" for v in values])
    first, params = _compose([c[0] for c in choices], sweeper=True)
    given = {c[0].split("=")[0].lstrip("+~") for c in choices}
    for key, grid in params.items():  # a config's own grid; the command line's value for a key wins
        if key not in given:
            choices.append([f"{key}={v}" for v in _values(parsed_overrides([f"{key}={grid}"])[0])])
    configs = [_compose([c[0] for c in choices])] if len(choices) > len(given) else [first]
    for i, options in enumerate(choices):
        for option in options[1:]:
            configs.append(_compose([option if j == i else c[0] for j, c in enumerate(choices)]))
    return configs


def check_overrides(args: list[str], rules: Optional[Callable[[RunConfig], None]] = None) -> list[dict[str, Any]]:
    """Raise a one-line QfiError unless the overrides in ``args`` parse, compose and read into a valid config, for
    every value of every swept key (``compositions``), that ``rules`` accepts (the CLI passes the commands'
    cross-field rules, ``qfi_cli.commands.check``). Returns the compositions, the first one first."""
    configs = compositions(args)
    for composed in configs:
        cfg = RunConfig.from_dict(composed)
        if rules is not None:
            rules(cfg)
        check_targets(composed)
    return configs


def hydra_setting(args: list[str], key: str) -> str:
    """A Hydra setting (``hydra.sweep.dir``) as the first composition of ``args`` resolves it now."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    swept = [a for a in first_values(args) if not a.startswith("-")]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=swept, return_hydra_config=True)
    return str(OmegaConf.select(cfg, key))


def fixed_settings(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings every point of a sweep shares (flattened dotted keys, from ``compositions``): what no swept value
    changes, less where it runs. A sweep directory keeps them to refuse a later sweep that would mix other rows in.

    >>> fixed_settings([{"eval": {"trials": 3}, "seed": 0, "device": "cpu"}, {"eval": {"trials": 3}, "seed": 1}])
    {'eval.trials': 3}
    """
    flats = [dict(_flatten(c)) for c in configs]
    return {k: v for k, v in flats[0].items()
            if all(f.get(k, object()) == v for f in flats[1:]) and not any(k == s or k.startswith(s + ".")
                                                                          for s in NOT_FIXED)}


def _flatten(d: dict[str, Any], prefix: str = "") -> Any:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check_writable(directory: str | Path, what: str = "--out") -> None:
    """Raise a one-line QfiError unless ``directory`` can be created and written."""
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise QfiError(f"cannot write to {path}: {e.strerror or e}; choose another {what}") from None


def _hydra_message(e: Exception) -> str:
    text = first_line(e)
    if text.startswith("Could not override") and "+" not in text:
        text += " (no such key: check the spelling, or add a new key with +key=value)"
    return text

