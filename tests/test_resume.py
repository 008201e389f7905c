"""Resume: ``--resume`` continues a saved run to the uninterrupted run's weights, a finished run is never
overwritten or relabelled, and a flag that contradicts the saved run names its key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import CLI_TINY as TINY
from tests.helpers import killed_after, one_line_error, qfi


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = state(a), state(b)
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


RESUME = [
    # (case, first run's flags, flags given with --resume, the uninterrupted run to compare with)
    ("bare --resume continues the saved epochs", ["--epochs", "4"], [], ["--epochs", "4"]),
    ("bare --resume continues 4-bit, seed 3", ["--epochs", "4", "--wbits", "4", "--seed", "3"], ["--epochs", "4"],
     ["--epochs", "4", "--wbits", "4", "--seed", "3"]),
    ("README: minmax per-channel run resumed bare", ["--epochs", "3", "quant=minmax", "quant.per_channel=true"], [],
     ["--epochs", "3", "quant=minmax", "quant.per_channel=true"]),
]


@pytest.mark.parametrize("case,first,again,straight", RESUME, ids=[r[0] for r in RESUME])
def test_resume_continues_the_saved_run(case, first, again, straight, outputs, monkeypatch, capsys):
    killed_after(monkeypatch, 2)
    assert qfi(capsys, "train", "--out", "D", *first, *TINY)[0] == 130  # interrupted
    monkeypatch.undo()
    monkeypatch.chdir(outputs)
    monkeypatch.setenv("QFI_OUTPUTS", str(outputs / "outputs"))
    assert Path("D/last.pt").is_file() and not Path("D/model.pt").exists()
    code, out = qfi(capsys, "train", "--out", "D", "--resume", *again, *TINY)
    assert code == 0, out
    assert "resuming from epoch 2" in out
    code, out = qfi(capsys, "train", "--out", "S", *straight, *TINY)
    assert code == 0, out
    assert same_weights(Path("D/model.pt"), Path("S/model.pt"))
    resumed, plain = (json.loads(Path(d, "metrics.json").read_text()) for d in ("D", "S"))
    assert resumed["history"] == plain["history"] and resumed["epochs"] == plain["epochs"]
    saved = torch.load("D/model.pt", weights_only=True)["config"]
    assert saved == torch.load("S/model.pt", weights_only=True)["config"] | {"resume": True}


REFUSED = [
    ("contradicting flags on a finished run", ["--resume", "--epochs", "4", "--wbits", "4", "train.lr=0.5"],
     "D: it holds a finished run"),
    ("--resume --epochs 3 on a finished run", ["--resume", "--epochs", "3"], "D: it holds a finished run"),
    ("a new run into a finished run's directory", [], "D already holds a finished run (model.pt)"),
]


@pytest.mark.parametrize("case,args,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_finished_run_is_never_overwritten_or_relabelled(case, args, message, outputs, capsys):
    code, out = qfi(capsys, "train", "--out", "D", "--epochs", "2", *TINY)
    assert code == 0, out
    before = {p.name: p.read_bytes() for p in Path("D").rglob("*") if p.is_file()}
    line = one_line_error(*qfi(capsys, "train", "--out", "D", *args, *TINY))
    assert message in line, line
    after = {p.name: p.read_bytes() for p in Path("D").rglob("*") if p.is_file()}
    assert after == before, "model.pt, metrics.json and .hydra/ must be left as they were"


def test_a_contradicting_flag_names_the_key_and_overwrite_is_explicit(outputs, monkeypatch, capsys):
    killed_after(monkeypatch, 1)
    assert qfi(capsys, "train", "--out", "D", "--epochs", "3", "--wbits", "4", *TINY)[0] == 130
    monkeypatch.undo()
    monkeypatch.chdir(outputs)
    monkeypatch.setenv("QFI_OUTPUTS", str(outputs / "outputs"))
    line = one_line_error(*qfi(capsys, "train", "--out", "D", "--resume", "--wbits", "8", *TINY))
    assert "quant.wbits=8 contradicts its quant.wbits=4" in line, line
    line = one_line_error(*qfi(capsys, "train", "--out", "D", "--resume", "quant=minmax", *TINY))
    assert "quant.name=minmax contradicts its quant.name=lsq" in line, line
    line = one_line_error(*qfi(capsys, "train", "--out", "D", "--epochs", "3", *TINY))
    assert "holds an interrupted run" in line and "--resume" in line, line
    code, out = qfi(capsys, "train", "--out", "D", "--epochs", "1", "--overwrite", *TINY)
    assert code == 0, out
    assert torch.load("D/model.pt", weights_only=True)["config"]["train"]["epochs"] == 1
