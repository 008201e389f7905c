"""What a run's results say: a float (32-bit) model is faulted in its IEEE bits, results.json is strict JSON,
NaN logits count as wrong (``nan_trials``), and the report marks invalid or unreadable result files instead of
failing."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from qfi_cli.engine.evaluate import inject_eval
from qfi_cli.faults import FaultInjector
from qfi_cli.io import write_json
from tests.helpers import CLI_TINY as TINY
from tests.helpers import checkpoint_layers, qfi


def test_a_float_model_is_faulted_in_its_ieee_bits(outputs, capsys):
    """A 32-bit (float) model is not 'perfectly robust': its weights are stored as fp32 and their bits fail."""
    assert qfi(capsys, "train", "--out", "F", "--wbits", "32", "--epochs", "1", "quant.first_last_bits=null",
               *TINY)[0] == 0
    code, out = qfi(capsys, "inject-eval", "--checkpoint", "F/model.pt", "--ber", "1e-3", "--trials", "2",
                    "--out", "E")
    assert code == 0, out
    res = json.loads(Path("E/results.json").read_text())
    n = sum(m.weight.numel() for _, m in checkpoint_layers(Path("F/model.pt")))
    assert res["bits_total"] == 32 * n and all(f > 0 for f in res["flips"])
    code, out = qfi(capsys, "inject-eval", "--checkpoint", "F/model.pt", "fault=count", "fault.count=5",
                    "--trials", "2", "--out", "C")
    assert code == 0, out
    res = json.loads(Path("C/results.json").read_text())
    assert res["flips"] == [5, 5] and res["ber"] is None and res["count"] == 5


def test_results_are_strict_json_and_report_refuses_invalid_files(trained_digits, outputs, capsys):
    checkpoint, _ = trained_digits
    code, out = qfi(capsys, "sweep", "--checkpoint", str(checkpoint), "--bers", "1e-3", "--trials", "2",
                    "--out", "S", "fault.layers=[conv1],[nomatch*]")
    assert code == 2 and "1 of 2 sweep point(s) failed" in out, out

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))

    files = list(Path("S").rglob("results.json"))
    assert len(files) == 2 and all(isinstance(strict(p.read_text()), dict) for p in files)
    write_json(Path("S/extra/results.json"), {"status": "ok", "ber": "x"})
    write_json(Path("S/list/results.json"), [1, 2])
    code, out = qfi(capsys, "report", "S")
    assert code == 0 and "Traceback" not in out, out
    status = {r["dir"]: r["status"] for r in csv.DictReader(open("S/summary.csv"))}
    assert status["extra"] == "invalid" and status["list"] in ("invalid", "unreadable"), status


def test_nan_logits_count_as_wrong_and_are_reported(trained_digits, monkeypatch):
    checkpoint, cfg = trained_digits
    original = FaultInjector._fault_entries

    def poisoned(self, name, flat, *args, **kwargs):  # the last layer's weights all NaN in every trial (undone after)
        if name != self.layers[-1][0]:
            return original(self, name, flat, *args, **kwargs)
        clean = flat.copy()  # a trial hands in the frozen weight's numpy view
        flat.fill(float("nan"))
        return flat, slice(None), clean

    monkeypatch.setattr(FaultInjector, "_fault_entries", poisoned)
    run_cfg = copy.deepcopy(cfg)
    run_cfg["eval"]["trials"] = 3
    [res] = inject_eval(run_cfg, checkpoint)
    assert res["nan_trials"] == 3 and res["accuracies"] == [0.0, 0.0, 0.0]
    assert res["accuracy_mean"] == 0.0 and res["rerr_mean"] == 1.0
    assert res["clean_accuracy"] > 0.8
