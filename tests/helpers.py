"""Test helpers: compose the real conf/ tree into a plain dict (what the engine receives); run the real ``qfi``
entry point in this process."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from qfi_cli.paths import conf_dir

CLI_TINY = ["train.limit=256", "model.width=4", "device=cpu", "eval.batch_size=450"]
"""Overrides that make a ``qfi`` command's run tiny (a narrow digits_cnn on 256 training images)."""

SWEEP_TRAIN = ["train.epochs=1", "train.limit=128", "model.width=4", "device=cpu"]
"""Overrides that make each model of a ``qfi sweep --train`` test tiny (one short epoch, a narrow digits_cnn)."""


def compose(overrides: list[str] | None = None) -> dict[str, Any]:
    """The composed config for ``overrides`` as a plain dict, without Hydra's own node."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides or []))
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    plain["paths"] = {"root": "outputs"}
    return OmegaConf.to_container(OmegaConf.create(plain), resolve=True)


def qfi(capsys, *args: str) -> tuple[int, str]:
    """Run the real entry point (``qfi_cli.cli.main``) in this process: (exit status, stdout + stderr)."""
    from qfi_cli import cli

    saved, handlers = sys.argv, logging.root.handlers[:]
    sys.argv = ["qfi", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved
        logging.root.handlers[:] = handlers  # Hydra's --info sets up logging to this test's (soon closed) stream
    out = capsys.readouterr()
    return code, out.out + out.err


def killed_after(monkeypatch, epochs_done: int) -> None:
    """The next training run dies (as a SIGKILL would: no model.pt) right after saving epoch ``epochs_done``."""
    import qfi_cli.engine.train as engine

    real = engine.save_checkpoint

    def save(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if Path(path).name == "last.pt" and kwargs.get("epoch") == epochs_done:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(engine, "save_checkpoint", save)


def one_line_error(code: int, output: str) -> str:
    """The one ``error: ...`` line of a failed command (exit status 2, no traceback)."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert code == 2, output
    assert "Traceback" not in output and len(lines) == 1 and lines[0].startswith("error: "), output
    return lines[0]


def checkpoint_layers(checkpoint: Path) -> list:
    """``(name, layer)`` of every quantized layer of a checkpoint's model, on the CPU."""
    import torch

    from qfi_cli.engine.evaluate import load_trained
    from qfi_cli.quant import quantized_layers

    return quantized_layers(load_trained(checkpoint, torch.device("cpu"))[0])
