"""Replayable faults: record every trial's faulty weight bits to a file, and apply exactly those bits again.

``qfi inject-eval --save-faults FILE`` writes, for every rate and trial, each faulty bit as (layer, code index,
bit, mode); ``fault=replay fault.file=FILE`` applies exactly those bits to any model whose quantized layers have
the same names, shapes and code widths, so two models (or two runs) meet the same faults whatever drew them.

The file is a numpy ``.npz`` (``np.load(FILE, allow_pickle=False)`` reads it; written atomically):

====================  =========================================================================================
``meta``              a JSON string: ``format`` ("qfi-faults/1"), ``layers`` (name, shape, bits, storage of every
                      quantized layer of the model it was saved from, in module order), ``levels`` (``[ber, count]``
                      per rate, in the order of ``level`` below), ``trials``, ``fault_seed``, ``fault`` (the fault
                      config), ``checkpoint``, ``model_name``
``level``             int16: index into ``levels``
``trial``             int32: trial index
``layer``             int16: index into ``layers``
``index``             int64: flat index of the code in the layer's weight (row-major)
``bit``               int8: bit position in the code (0 = LSB)
``mode``              int8: 0 flip, 1 stuck at 0, 2 stuck at 1 (``FaultMode.code`` in faults/bits.py)
====================  =========================================================================================

One row per faulty bit, sorted by (level, trial, layer, index, bit). A stuck bit is recorded whether or not it
changed the stored value (a fault is a property of the memory cell, not of the weight).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from qfi_cli.errors import QfiError
from qfi_cli.faults.bits import FAULT_MODES, MODE_OF_CODE, positions_to_masks
from qfi_cli.io import atomic_write

FORMAT = "qfi-faults/1"
COLUMNS = {"level": np.int16, "trial": np.int32, "layer": np.int16, "index": np.int64, "bit": np.int8,
           "mode": np.int8}


@torch.no_grad()
def layer_table(layers: Sequence[tuple[str, nn.Module]]) -> list[dict[str, Any]]:
    """Name, weight shape, code width and storage of each quantized layer (what a replay must match)."""
    table = []
    for name, m in layers:
        _, encoding = m.quantize_weight_clean() if m.frozen_encoding is None else (None, m.frozen_encoding)
        storage = encoding.float_format or ("int" if encoding.signed else "uint")
        table.append({"name": name, "shape": list(m.weight.shape), "bits": int(m.wbits), "storage": storage})
    return table


class FaultRecorder:
    """Collects the faulty weight bits of every trial; set ``injector.recorder = recorder.add`` and call
    ``begin(level, trial)`` before each trial, then ``save(path)``.

    >>> import tempfile
    >>> from qfi_cli.faults import FaultConfig, FaultInjector
    >>> from qfi_cli.quant import frozen_weights, quantize_model
    >>> model = quantize_model(nn.Sequential(nn.Linear(8, 4)), first_last_bits=None).eval()
    >>> rec, faulty = FaultRecorder(model, levels=[(0.1, None)], trials=1), {}
    >>> with frozen_weights(model):
    ...     with FaultInjector(model, FaultConfig(ber=0.1), seed=0) as inj:
    ...         inj.recorder = rec.add
    ...         rec.begin(0, 0)
    ...         with inj.trial(0):
    ...             faulty["drawn"] = model[0].frozen_weight.clone()
    ...     path = rec.save(tempfile.mkdtemp() + "/faults.npz")
    ...     with FaultInjector(model, FaultConfig(model="replay", ber=None, file=str(path))) as inj:
    ...         with inj.trial(0, ber=0.1):
    ...             faulty["replayed"] = model[0].frozen_weight.clone()
    >>> rec.rows() == inj.flips_total() > 0, torch.equal(faulty["drawn"], faulty["replayed"])
    (True, True)
    """

    def __init__(self, model: nn.Module, levels: Sequence[tuple[float | None, int | None]], trials: int,
                 **meta: Any) -> None:
        from qfi_cli.quant import quantized_layers

        layers = quantized_layers(model)
        self._layer_id = {name: i for i, (name, _) in enumerate(layers)}
        self.meta = {"format": FORMAT, "layers": layer_table(layers),
                     "levels": [[b, c] for b, c in levels], "trials": int(trials), **meta}
        self._parts: list[dict[str, np.ndarray]] = []
        self._at = (0, 0)

    def begin(self, level: int, trial: int) -> None:
        self._at = (int(level), int(trial))

    def add(self, name: str, index: torch.Tensor, masks: list[tuple[str, torch.Tensor]], bits: int) -> None:
        """Record one layer's faulty entries of the current trial (the injector's recorder hook)."""
        for mode, mask in masks:
            m = mask.detach().cpu().numpy().astype(np.int64)
            rows, bit = np.nonzero((m[:, None] >> np.arange(bits)) & 1)
            if not rows.size:
                continue
            n = rows.size
            self._parts.append({"level": np.full(n, self._at[0]), "trial": np.full(n, self._at[1]),
                                "layer": np.full(n, self._layer_id[name]),
                                "index": index.detach().cpu().numpy()[rows], "bit": bit,
                                "mode": np.full(n, FAULT_MODES[mode].code)})

    def rows(self) -> int:
        return sum(len(p["bit"]) for p in self._parts)

    def arrays(self) -> dict[str, np.ndarray]:
        cols = {k: (np.concatenate([p[k] for p in self._parts]) if self._parts else np.zeros(0)).astype(t)
                for k, t in COLUMNS.items()}
        order = np.lexsort(tuple(cols[k] for k in reversed(("level", "trial", "layer", "index", "bit"))))
        return {k: v[order] for k, v in cols.items()}

    def save(self, path: str | Path) -> Path:
        """Write the file atomically (see the module docstring for its layout); returns its path."""
        arrays = {"meta": np.array(json.dumps(self.meta)), **self.arrays()}
        return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


class FaultFile:
    """A fault file read back: its ``meta``, columns, ``levels`` and ``trials``; ``bind(layers)`` checks a model
    against it and returns the source a ``fault=replay`` injector draws from."""

    def __init__(self, path: Path, meta: dict[str, Any], columns: dict[str, np.ndarray]) -> None:
        self.path, self.meta, self.columns = path, meta, columns
        self.levels: list[tuple[float | None, int | None]] = [
            (None if b is None else float(b), None if c is None else int(c)) for b, c in meta["levels"]]
        self.trials = int(meta["trials"])
        self._slices: dict[tuple[int, int, int], tuple[int, int]] = {}
        self._names: list[str] = []

    def bind(self, layers: Sequence[tuple[str, nn.Module]]) -> "FaultFile":
        """Check that ``layers`` (every quantized layer of a model) have the file's names, shapes and widths."""
        want = [(d["name"], list(d["shape"]), int(d["bits"])) for d in self.meta["layers"]]
        have = [(n, list(m.weight.shape), int(m.wbits)) for n, m in layers]
        if [n for n, *_ in want] != [n for n, *_ in have]:
            raise QfiError(f"fault file {self.path} was saved from layers {_names(want)}, but this model has "
                           f"{_names(have)}: replay needs the same quantized layers")
        for (n, shape, bits), (_, shape2, bits2) in zip(want, have):
            if (shape, bits) != (shape2, bits2):
                raise QfiError(f"fault file {self.path}: layer {n} was {bits}-bit {shape}, but this model's {n} is "
                               f"{bits2}-bit {shape2}: replay needs the same layer shapes and code widths")
        self._names = [n for n, *_ in want]
        c = self.columns  # rows are sorted by (level, trial, layer): one slice per group
        change = np.zeros(c["bit"].size, dtype=bool)
        change[:1] = True
        for k in ("level", "trial", "layer"):
            change[1:] |= c[k][1:] != c[k][:-1]
        starts = np.flatnonzero(change)
        ends = np.append(starts[1:], c["bit"].size)
        for s, e in zip(starts.tolist(), ends.tolist()):
            self._slices[(int(c["level"][s]), int(c["trial"][s]), int(c["layer"][s]))] = (s, e)
        return self

    def level_of(self, ber: float | None, count: int | None) -> int:
        for i, (b, c) in enumerate(self.levels):
            if (ber is not None and b == ber) or (ber is None and b is None and (count is None or c == count)):
                return i
        raise QfiError(f"fault file {self.path} holds no faults at {_level_text(ber, count)}; it holds "
                       f"{', '.join(_level_text(b, c) for b, c in self.levels)}")

    def faults(self, name: str, injector: Any, trial: int, key: str,
               draw: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """The recorded faults of layer ``name`` in ``trial`` at the injector's rate: ``(mode, index, mask)``."""
        if trial >= self.trials:
            raise QfiError(f"fault file {self.path} holds {self.trials} trials, not trial {trial + 1}")
        level = self.level_of(injector.ber, injector.count if injector.ber is None else None)
        span = self._slices.get((level, trial, self._names.index(name)))
        if span is None:
            return []
        s, e = span
        index, bit, mode = (self.columns[k][s:e].astype(np.int64) for k in ("index", "bit", "mode"))
        bits = int(self.meta["layers"][self._names.index(name)]["bits"])
        parts = []
        for m in np.unique(mode).tolist():
            sel = mode == m
            code, mask = positions_to_masks(index[sel] * bits + bit[sel], bits)
            if m not in MODE_OF_CODE:
                raise QfiError(f"fault file {self.path} holds unknown fault mode code {m} (known: "
                               f"{', '.join(f'{c} {n}' for c, n in MODE_OF_CODE.items())})")
            parts.append((MODE_OF_CODE[m], code, mask))
        return parts


def _names(layers: list[tuple]) -> str:
    names = [n for n, *_ in layers]
    return ", ".join(names[:8]) + (f" ... ({len(names)} layers)" if len(names) > 8 else "")


def _level_text(ber: float | None, count: int | None) -> str:
    return f"ber {ber:g}" if ber is not None else f"count {count}"


def read_fault_file(path: str | Path) -> FaultFile:
    """Read a ``--save-faults`` file (``allow_pickle=False``: data, never code); one-line QfiError when it is
    missing or not a qfi fault file."""
    path = Path(path)
    if not path.is_file():
        raise QfiError(f"fault file not found: {path} (write one with qfi inject-eval --save-faults FILE)")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            columns = {k: np.asarray(data[k]) for k in COLUMNS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise QfiError(f"{path} is not a qfi fault file ({type(e).__name__}): write one with "
                       "qfi inject-eval --save-faults FILE") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise QfiError(f"{path} is not a qfi fault file (format {meta.get('format') if isinstance(meta, dict) else '?'}"
                       f", expected {FORMAT})")
    return FaultFile(path, meta, columns)
