"""Files: atomic writes, checkpoints (loaded with ``weights_only=True``), JSON, and the latest-model pointer."""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from qfi_cli.errors import QfiError
from qfi_cli.layout import LATEST_FILE
from qfi_cli.user_code import Trust

CHECKPOINT_FORMAT = 1


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write through ``write(fileobj)`` into a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees a half-written file, and a crash leaves the old file (or none).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = atomic_write(p, lambda f: f.write("hi"), mode="w")
    >>> p.read_text()
    'hi'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except OSError as e:
        raise QfiError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # a full disk, a quota, a read-only mount: the old file (or none) stays
            raise QfiError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path


def strict(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, inf) replaced by None: strict JSON, which every reader accepts.

    >>> strict({"a": [1.0, float("nan")], "b": float("inf")})
    {'a': [1.0, None], 'b': None}
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict(v) for v in data]
    return data


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write ``data`` as indented, strict JSON (NaN and inf become null)."""
    return atomic_write(path, lambda f: json.dump(strict(data), f, indent=2, sort_keys=False, allow_nan=False),
                        mode="w")


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def save_checkpoint(path: str | Path, state_dict: dict, config: dict, **extra: Any) -> Path:
    """Atomically save a checkpoint: plain data only, so that ``torch.load(weights_only=True)`` reads it."""
    payload = {"format": CHECKPOINT_FORMAT, "state_dict": state_dict, "config": config, **extra}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", trust: Trust | None = None) -> dict:
    """Load a checkpoint as data (``weights_only=True``: a pickle that would run code is refused).

    Every checkpoint read goes through here, and so does the rule that its config names no code to import: each
    ``_target_`` it saved must be one ``trust`` covers (the run names the same one, or ``--trust-code``); by default
    none is. Raises QfiError with one line when the file is missing, corrupt, unsafe, names untrusted code or is not
    a qfi checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise QfiError(f"checkpoint not found: {path} (train one with `qfi train` or pass --checkpoint)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        blocked = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), None)
        if blocked is None:
            raise QfiError(f"checkpoint {path} is corrupt or unreadable (not a torch checkpoint)") from None
        raise QfiError(f"refusing to load {path}: it holds code, not plain data ({blocked[:120]})") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse an untrusted file means it is unreadable
        raise QfiError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise QfiError(f"{path} is not a qfi checkpoint (no state_dict/config): write it with `qfi train`")
    (trust or Trust()).check(ckpt["config"], f"checkpoint {path}")
    return ckpt


def record_latest(root: str | Path, checkpoint: str | Path) -> None:
    """Remember ``checkpoint`` as the latest trained model under the outputs root."""
    atomic_write(Path(root) / LATEST_FILE, lambda f: f.write(str(Path(checkpoint).resolve()) + "\n"), mode="w")


def latest_checkpoint(root: str | Path) -> Path:
    """The checkpoint recorded by the last ``qfi train`` under ``root``."""
    pointer = Path(root) / LATEST_FILE
    if not pointer.is_file():
        raise QfiError(f"no trained model recorded in {pointer}: run `qfi train` first or pass --checkpoint")
    try:
        text = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise QfiError(f"{pointer} is unreadable ({type(e).__name__}): run `qfi train` again or pass "
                       "--checkpoint") from None
    if not text:
        raise QfiError(f"{pointer} is empty: run `qfi train` again or pass --checkpoint")
    return Path(text)
