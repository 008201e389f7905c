"""Fault sources as objects: a new source is one module in ``qfi_cli/faults/sources/`` (plus its yaml), and every
fault rule across sections runs in the pre-check, so a sweep with a bad combination fails before any point runs."""

from __future__ import annotations

import json
import sys

import pytest

from qfi_cli.config import RunConfig
from qfi_cli.errors import QfiError
from qfi_cli.faults import FAULT_MODELS, FaultConfig, FaultInjector, sources
from qfi_cli.quant import frozen_weights, quantized_layers
from qfi_cli.validate import check_overrides
from tests.helpers import one_line_error, qfi

TOY = '''"""A toy fault source: trial t flips bit 0 of code t of every selected layer."""

import numpy as np

from qfi_cli.faults.sources.base import Draw, FaultSource, register_fault_model
from qfi_cli.typed import require


@register_fault_model("toy_first_codes")
class FirstCodes(FaultSource):
    per_cell = False

    def validate(self, fault):
        require(fault.ber is None, "toy_first_codes flips one code per layer: set fault.ber=null")

    def check_run(self, cfg, command):
        require(cfg.eval.trials <= 4, "toy_first_codes has 4 trials at most")

    def bind(self, injector, layers):
        return FirstCodesDraw()


class FirstCodesDraw(Draw):
    def faults(self, at):
        return np.array([at.trial], dtype=np.int64), [("flip", np.array([1], dtype=np.int64))]
'''


@pytest.fixture
def toy_source(tmp_path, monkeypatch):
    """The toy source as one file in a folder the sources package also reads (nothing else edited)."""
    folder = tmp_path / "more_sources"
    folder.mkdir()
    (folder / "toy_first_codes.py").write_text(TOY)
    monkeypatch.setattr(sources, "__path__", [*sources.__path__, str(folder)])
    monkeypatch.setattr(FAULT_MODELS, "_items", dict(FAULT_MODELS._items))  # restored after the test
    assert "toy_first_codes" in sources.import_sources()
    yield "toy_first_codes"
    sys.modules.pop("qfi_cli.faults.sources.toy_first_codes", None)


def test_a_new_source_is_one_file(toy_source):
    from torch import nn

    from qfi_cli.quant import quantize_model

    model = quantize_model(nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2)), first_last_bits=None).eval()
    with FaultInjector(model, FaultConfig(model=toy_source, ber=None)) as injector, frozen_weights(model):
        clean = [m.frozen_weight.clone() for _, m in quantized_layers(model)]
        with injector.trial(2):
            changed = [(m.frozen_weight != c).flatten().nonzero().flatten().tolist()
                       for (_, m), c in zip(quantized_layers(model), clean)]
        assert changed == [[2], [2]] and injector.flips_total() == 2
    with pytest.raises(QfiError, match="set fault.ber=null"):
        FaultConfig(model=toy_source).validated()


def test_a_new_source_runs_from_the_command_line(toy_source, trained_digits, outputs, capsys):
    checkpoint, _ = trained_digits
    common = ["inject-eval", "--checkpoint", str(checkpoint), f"fault.model={toy_source}", "fault.ber=null",
              "eval.limit=100", "device=cpu"]
    code, out = qfi(capsys, *common, "--trials", "3", "--out", "toy")
    assert code == 0, out
    res = json.loads((outputs / "toy" / "results.json").read_text())
    assert res["fault"]["model"] == toy_source and res["ber"] is None and res["trials"] == 3
    assert len(set(res["flips"])) == 1 and res["flips"][0] > 0  # one bit per layer, every trial
    line = one_line_error(*qfi(capsys, *common, "--trials", "9", "--out", "toy9"))
    assert "toy_first_codes has 4 trials at most" in line and not (outputs / "toy9").exists()


RULES = [  # (overrides, message): fault rules across sections, refused when the config is read
    (["command=sensitivity", "fault=replay", "fault.file=f.npz"],
     "sensitivity draws its own faults per cell: fault.model must be bitflip, bitflip_count, stuck_at_0 or "
     "stuck_at_1, not replay"),
    (["command=sensitivity", "fault=profile", "fault.file=m.json"], "sensitivity draws its own faults per cell"),
    (["command=sensitivity", "fault.target=both"], "sensitivity maps stored weight bits: set fault.target=weights"),
    (["command=sensitivity", "fault=count", "sensitivity.budget=true"],
     "the protection budget measures the whole model at a rate: give --ber, not --count"),
    (["command=inject_eval", "fault=count", "eval.bers=[0.1]"],
     "eval.bers does not apply to fault.model=bitflip_count (it flips fault.count bits)"),
    (["command=inject_eval", "fault=profile", "fault.file=m.json", "eval.bers=[0.1]"],
     "eval.bers does not apply to fault=profile (its rates come from the map in fault.file)"),
    (["command=inject_eval", "fault=transient", "eval.save_faults=f.npz"],
     "--save-faults records per-trial weight faults: it needs fault.target=weights and fault.persistence=trial"),
]


@pytest.mark.parametrize("overrides,message", RULES, ids=[m[:40] for _, m in RULES])
def test_fault_rules_across_sections_are_in_the_pre_check(overrides, message):
    with pytest.raises(QfiError) as e:
        check_overrides(overrides)
    assert message in str(e.value)


def test_a_swept_value_that_breaks_a_fault_rule_fails_the_sweep_before_it_starts(outputs, capsys):
    code, out = qfi(capsys, "sweep", "command=sensitivity", "fault=bitflip,replay", "fault.file=f.npz",
                    "--out", "sw")
    assert code == 2 and "sensitivity draws its own faults per cell" in one_line_error(code, out)
    assert not list(outputs.rglob("results.json"))


def test_the_engine_checks_its_own_command(tmp_path):
    cfg = RunConfig.from_dict({"fault": {"model": "replay", "ber": None, "file": str(tmp_path / "f.npz")}})
    with pytest.raises(QfiError, match="sensitivity draws its own faults per cell"):
        cfg.fault.check_run(cfg, "sensitivity")
    from qfi_cli.engine.sensitivity import sensitivity

    with pytest.raises(QfiError, match="sensitivity draws its own faults per cell"):
        sensitivity(cfg, tmp_path / "model.pt")  # before any checkpoint is read
