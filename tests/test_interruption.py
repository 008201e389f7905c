"""A process killed mid-run (SIGKILL, no clean-up) loses nothing: a killed training resumes to the uninterrupted
run's weights, a killed sweep keeps its finished points and only runs the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

QFI = [sys.executable, "-m", "qfi_cli.cli"]


def _train_cmd(out: Path, *extra: str) -> list[str]:
    return [*QFI, "train", "--out", str(out), "--epochs", "6", "train.limit=512", "model.width=8", "device=cpu",
            *extra]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(in_tmp):
    env = {**os.environ, "QFI_OUTPUTS": str(in_tmp / "outputs")}
    proc = subprocess.Popen(_train_cmd(in_tmp / "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = in_tmp / "killed" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (in_tmp / "killed" / "model.pt").exists(), "the kill must land mid-training"
    epoch_done = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= epoch_done < 6
    subprocess.run(_train_cmd(in_tmp / "killed", "--resume"), env=env, check=True, capture_output=True)
    subprocess.run(_train_cmd(in_tmp / "straight"), env=env, check=True, capture_output=True)
    resumed = torch.load(in_tmp / "killed" / "model.pt", weights_only=True)["state_dict"]
    straight = torch.load(in_tmp / "straight" / "model.pt", weights_only=True)["state_dict"]
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)
    history = json.loads((in_tmp / "killed" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_interrupted_sweep_keeps_finished_points(trained_digits, in_tmp):
    checkpoint, _ = trained_digits
    out = in_tmp / "sweep"
    cmd = [*QFI, "sweep", "--checkpoint", str(checkpoint), "--bers", "1e-5,1e-4,1e-3,1e-2,1e-1", "--trials", "40",
           "--out", str(out), "device=cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list(out.rglob("results.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {p.parent.name: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    assert 2 <= len(kept) < 5, "the kill must land mid-sweep"
    for p in out.rglob("results.json"):
        assert json.loads(p.read_text())["status"] == "ok"
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert f"skip {len(kept)} finished rate(s)" in done.stderr + done.stdout
    after = {p.parent.name: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    assert len(after) == 5 and all(after[k] == v for k, v in kept.items())
    assert (out / "summary.csv").read_text().count("\n") == 6
