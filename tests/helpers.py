"""Test helpers: compose the real conf/ tree into a plain dict (what the engine receives)."""

from __future__ import annotations

from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from qfi_cli.paths import conf_dir


def compose(overrides: list[str] | None = None) -> dict[str, Any]:
    """The composed config for ``overrides`` as a plain dict, without Hydra's own node."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides or []))
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    plain["paths"] = {"root": "outputs"}
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
