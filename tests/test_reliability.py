"""Bad input, interruption and untrusted files: one-line errors, nothing lost, no code run from checkpoints."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qfi_cli.cli import app
from qfi_cli.engine.evaluate import inject_eval
from qfi_cli.faults import FaultInjector

runner = CliRunner()
QFI = [sys.executable, "-m", "qfi_cli.cli"]


def _bad_checkpoints(tmp: Path, good: Path) -> dict[str, Path]:
    corrupt = tmp / "corrupt.pt"
    corrupt.write_bytes(b"this is no checkpoint\n" * 100)
    truncated = tmp / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    mismatch = tmp / "mismatch.pt"
    ckpt = torch.load(good, weights_only=True)
    ckpt["config"]["model"]["width"] = 5  # weights of width 8, config of width 5
    torch.save(ckpt, mismatch)
    not_qfi = tmp / "not_qfi.pt"
    torch.save({"weights": torch.zeros(3)}, not_qfi)
    return {"corrupt": corrupt, "truncated": truncated, "mismatch": mismatch, "not_qfi": not_qfi}


BAD = [
    ("ber above 1", ["inject-eval", "--ber", "1.5"], "ber must lie in [0, 1]"),
    ("ber below 0", ["inject-eval", "--ber", "-1e-3"], "ber must lie in [0, 1]"),
    ("trials 0", ["inject-eval", "--trials", "0"], "trials must be >= 1"),
    ("wbits 9", ["train", "--wbits", "9"], "2..8 or 32"),
    ("abits 1", ["train", "--abits", "1"], "2..8 or 32"),
    ("unknown model", ["train", "--model", "vgg99"], "unknown model 'vgg99'"),
    ("unknown model name", ["train", "model.name=vgg99"], "unknown model 'vgg99'"),
    ("unknown data set", ["train", "--dataset", "imagenet"], "unknown data set 'imagenet'"),
    ("unknown fault config", ["inject-eval", "fault=gamma_rays"], "unknown fault model 'gamma_rays'"),
    ("unknown fault model", ["inject-eval", "fault.model=gamma_rays"], "unknown fault model 'gamma_rays'"),
    ("unknown launcher", ["sweep", "--launcher", "kubernetes"], "unknown launcher 'kubernetes'"),
    ("missing checkpoint", ["inject-eval", "--checkpoint", "{tmp}/nope.pt"], "checkpoint not found"),
    ("no trained model yet", ["inject-eval"], "no trained model recorded"),
    ("corrupt checkpoint", ["inject-eval", "--checkpoint", "{corrupt}"], "corrupt or unreadable"),
    ("truncated checkpoint", ["inject-eval", "--checkpoint", "{truncated}"], "corrupt or unreadable"),
    ("not a qfi checkpoint", ["inject-eval", "--checkpoint", "{not_qfi}"], "not a qfi checkpoint"),
    ("architecture mismatch", ["inject-eval", "--checkpoint", "{mismatch}"], "does not match its model config"),
    ("model override vs checkpoint", ["inject-eval", "--checkpoint", "{good}", "model=lenet5"],
     "was trained with model.name=digits_cnn, not lenet5"),
    ("missing data root", ["train", "--dataset", "mnist", "data.root={tmp}/no_data"], "mnist not found under"),
    ("unwritable output", ["train", "--out", "{tmp}/a_file/run"], "cannot write to"),
    ("malformed override", ["train", "train.lr=[0.1"], "malformed override"),
    ("unknown key", ["train", "train.learning_rate=0.1"], "Could not override 'train.learning_rate'"),
    ("wrong type", ["train", "train.lr=fast"], "train.lr must be a number"),
    ("resume without out", ["train", "--resume"], "--resume needs --out"),
    ("resume with nothing to resume", ["train", "--resume", "--out", "{tmp}/empty"], "nothing to resume"),
]


@pytest.mark.parametrize("case,args,message", BAD, ids=[b[0] for b in BAD])
def test_user_mistakes_give_one_line_and_nonzero_exit(case, args, message, in_tmp, trained_digits):
    paths = {"tmp": str(in_tmp), "good": str(trained_digits[0])}
    paths.update({k: str(v) for k, v in _bad_checkpoints(in_tmp, trained_digits[0]).items()})
    (in_tmp / "a_file").write_text("x")
    result = runner.invoke(app, [a.format(**paths) for a in args])
    output = result.output.strip()
    assert result.exit_code != 0, output
    assert message in output, output
    assert "Traceback" not in output and len(output.splitlines()) <= 2, output
    assert not list(in_tmp.rglob("results.json")) and not list(in_tmp.rglob("model.pt"))


def test_refuses_pickle_that_would_run_code(in_tmp):
    marker = in_tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = in_tmp / "evil.pt"
    torch.save({"state_dict": Evil(), "config": {}}, evil)
    result = runner.invoke(app, ["inject-eval", "--checkpoint", str(evil)])
    assert result.exit_code != 0 and "refusing to load" in result.output
    assert not marker.exists(), "loading a checkpoint must never run code"


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
