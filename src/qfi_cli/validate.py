"""Check a command line before Hydra runs it, so that mistakes give one line instead of Hydra's report.

Checks: overrides parse; config-group choices exist (``model=foo``); the overrides compose against ``conf/``
(unknown keys, wrong types); the output directory can be written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from qfi_cli.errors import QfiError
from qfi_cli.paths import conf_dir

GROUPS = {"model": "model", "data": "data set", "quant": "quantizer", "sam": "SAM setting", "fault": "fault model",
          "train": "training recipe", "sweep": "named sweep", "logger": "logger"}
# Hydra's flags that take a value in the next token.
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-name", "-cn", "--config-dir", "-cd",
               "--experimental-rerun"}


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


def group_options(group: str) -> list[str]:
    """Config files of a group in conf/ (``group_options("quant")`` -> ``['lsq', 'minmax']``)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def check_overrides(args: list[str]) -> None:
    """Raise a one-line QfiError when the overrides in ``args`` do not parse or do not compose."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides, _ = split_flags(args)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise QfiError(f"malformed override: {_first_line(e)}") from None
    first_values = []
    for o in parsed:
        key = o.get_key_element().lstrip("+~")
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        if key in GROUPS and not o.is_delete():
            for v in values:
                if v not in group_options(key):
                    raise QfiError(f"unknown {GROUPS[key]} {v!r} ({key}=); choose one of: "
                                   f"{', '.join(group_options(key))}")
        if not key.startswith("hydra"):
            first_values.append(f"{o.get_key_element()}={values[0]}" if values else o.input_line)
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            defaults = compose("config", overrides=[v for v in first_values if v.split("=")[0] in GROUPS])
            composed = compose("config", overrides=first_values)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise QfiError(f"bad override: {_first_line(e)}") from None
    _check_types(defaults, composed)


def _check_types(defaults, composed, prefix: str = "") -> None:  # noqa: ANN001 - DictConfigs
    """A number in the shipped config must stay a number (``train.lr=abc`` is a mistake, not a string)."""
    from omegaconf import DictConfig

    for key in composed:
        if prefix == "" and key == "hydra":
            continue
        new, old = composed._get_node(key), defaults._get_node(key) if key in defaults else None
        name = f"{prefix}{key}"
        if isinstance(composed[key], DictConfig) and old is not None and isinstance(defaults[key], DictConfig):
            _check_types(defaults[key], composed[key], name + ".")
            continue
        if old is None or new._is_missing() or new._is_interpolation() or old._is_interpolation():
            continue
        was, now = defaults[key], composed[key]
        if isinstance(was, bool) and now is not None and not isinstance(now, bool):
            raise QfiError(f"{name} must be true or false, got {now!r}")
        if isinstance(was, (int, float)) and not isinstance(was, bool) and now is not None \
                and (isinstance(now, bool) or not isinstance(now, (int, float))):
            raise QfiError(f"{name} must be a number, got {now!r}")
        if isinstance(was, int) and not isinstance(was, bool) and isinstance(now, float) and not now.is_integer():
            raise QfiError(f"{name} must be a whole number, got {now!r}")


def check_writable(directory: str | Path) -> None:
    """Raise a one-line QfiError unless ``directory`` can be created and written."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise QfiError(f"cannot write to {path}: {e.strerror or e}; choose another --out") from None


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    if text.startswith("Could not override") and "+" not in text:
        text += " (no such key: check the spelling, or add a new key with +key=value)"
    return text
