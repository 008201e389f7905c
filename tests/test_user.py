"""The user's own work: their model (``model._target_``), their float weights (``model.init``: QAT or PTQ), their
data (``data._target_``) and the Python API that README documents."""

from __future__ import annotations

import csv
import doctest
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import qfi_cli
from qfi_cli.cli import app
from qfi_cli.config import RunConfig
from qfi_cli.data import as_dataset, load_dataset
from qfi_cli.engine.common import build_float_model
from qfi_cli.errors import QfiError
from qfi_cli.models import build_model
from qfi_cli.quant import QuanConv2d, QuanLinear
from tests.user_models import FixedNet, MyNet

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
MYNET = "model._target_=tests.user_models.MyNet"
DIGITS = "data._target_=tests.user_models.make_digits"
TINY = ["train.epochs=2", "train.limit=256", "device=cpu"]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------ model._target_

@pytest.mark.slow
def test_target_model_trains_is_evaluated_with_faults_and_swept(in_tmp):
    run = in_tmp / "run"
    result = invoke("train", "--out", run, MYNET, "model.hidden=6", *TINY)
    assert result.exit_code == 0, result.output
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["config"]["model"] == {"_target_": "tests.user_models.MyNet", "hidden": 6, "name": "MyNet"}
    assert ckpt["state_dict"]["features.0.weight"].shape == (6, 1, 3, 3)

    from qfi_cli.engine.evaluate import load_trained
    from qfi_cli.user_code import Trust

    model, _, _ = load_trained(run / "model.pt", torch.device("cpu"), trust=Trust(code=True))
    assert isinstance(model, MyNet)
    assert isinstance(model.features[0], QuanConv2d) and isinstance(model.head, QuanLinear)

    result = invoke("inject-eval", "--checkpoint", run / "model.pt", "--ber", "1e-2", "--trials", "3",
                    "--out", in_tmp / "eval", MYNET, "device=cpu")
    assert result.exit_code == 0, result.output
    res = json.loads((in_tmp / "eval" / "results.json").read_text())
    assert res["model"] == "MyNet" and len(res["accuracies"]) == 3 and min(res["flips"]) > 0
    assert res["clean_accuracy"] == ckpt["metrics"]["test_accuracy"]  # the same model on the same test set

    sweep = in_tmp / "sweep"
    result = invoke("sweep", "--train", "--bers", "1e-3,1e-2", "--trials", "2", "--out", sweep, MYNET,
                    "model.hidden=4,6", DIGITS, "train.epochs=1", "train.limit=128", "device=cpu")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert {r["model.hidden"] for r in rows} == {"4", "6"}
    models = sorted(sweep.glob("models/*/model.pt"))
    assert len(models) == 2
    for path in models:
        saved = torch.load(path, weights_only=True)["config"]
        assert saved["model"]["_target_"] == "tests.user_models.MyNet"
        assert saved["data"]["_target_"] == "tests.user_models.make_digits"
    point = json.loads(next(sweep.rglob("model.hidden=4/**/results.json")).read_text())
    assert (point["model"], point["dataset"]) == ("MyNet", "make_digits")


def test_cfg_job_shows_the_target_model_alone(in_tmp):
    result = invoke("train", MYNET, "model.hidden=6", "--cfg", "job")
    assert result.exit_code == 0, result.output
    model = re.search(r"^model:\n((?:  .*\n)+)", result.output, re.M).group(1)
    assert model.split() == ["_target_:", "tests.user_models.MyNet", "hidden:", "6"]


@pytest.mark.parametrize("target, n_classes", [("tests.user_models.FixedNet", 10),
                                               ("tests.user_models.make_mlp", 10)])
def test_num_classes_only_reaches_a_constructor_that_names_it(target, n_classes):
    data = load_dataset("digits")
    model = build_float_model({"model": {"_target_": target}}, data)
    assert model(next(data.batches("test", 5))[0]).shape == (5, n_classes)


@pytest.mark.parametrize("args, needles", [
    (["model._target_=tests.user_models.Nope"], ["module tests.user_models has no attribute Nope"]),
    (["model._target_=qfi_no_such_pkg.nets.Net"], ["no module named qfi_no_such_pkg"]),
    (["model._target_=tests.user_models.NotAModule"], ["is a class but not a torch.nn.Module"]),
    (["model._target_=tests.user_models.not_a_model"], ["returned a str, not a torch.nn.Module"]),
    (["model._target_=tests.user_models.WIDTH"], ["is not callable (it is a int)"]),
    (["model._target_=MyNet"], ["must be a dotted path such as mypkg.nets.MyNet"]),
    ([MYNET, "model.hidden=0"], ["MyNet(hidden=0, num_classes=10, in_channels=1) failed: ValueError: hidden must "
                                 "be >= 1"]),
    ([MYNET, "model.depth=3"], ["unknown setting model.depth for tests.user_models.MyNet (it takes: num_classes, "
                                "in_channels, hidden)"]),
    (["--model", "lenet5", MYNET], ["model._target_ replaces a named model (model=lenet5)"]),
    ([DIGITS, "--dataset", "cifar10"], ["data._target_ replaces a named data set (data=cifar10)"]),
])
def test_a_wrong_target_model_is_one_line(in_tmp, args, needles):
    assert_one_line_error(invoke("train", "--out", in_tmp / "bad", *args, "device=cpu"), *needles)
    assert not (in_tmp / "bad" / "model.pt").exists()


def test_a_model_that_does_not_return_class_logits_is_one_line(in_tmp):
    result = invoke("train", "--out", in_tmp / "bad", MYNET, "model.num_classes=3", "device=cpu")
    assert_one_line_error(result, "model MyNet must return logits of shape (batch, 10) for the 10 classes of "
                                  "digits, got shape (1, 3)")


# -------------------------------------------------------------------------------------------------- model.init

def _float_net(tmp_path: Path, hidden: int = 6, epochs: int = 40) -> tuple[MyNet, Path, float]:
    """A float MyNet trained on digits (plain torch), its state_dict file and its test accuracy (batch 1000)."""
    torch.manual_seed(0)
    data = load_dataset("digits")
    net = MyNet(num_classes=10, hidden=hidden)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    x, y = next(data.batches("train", 2000))
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        correct = torch.cat([net(xb).argmax(1) == yb for xb, yb in data.batches("test", 1000)])
    path = tmp_path / "float.pt"
    torch.save(net.state_dict(), path)
    return net, path, int(correct.sum()) / correct.numel()


def test_model_init_gives_the_same_float_predictions(tmp_path):
    net, path, _ = _float_net(tmp_path, epochs=3)
    data = load_dataset("digits")
    x = next(data.batches("test", 450))[0]
    spec = {"_target_": "tests.user_models.MyNet", "hidden": 6}
    loaded = build_float_model({"model": {**spec, "init": str(path)}}, data).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
        assert not torch.equal(build_float_model({"model": spec}, data).eval()(x), net(x))  # init made the difference
    # a registered model too
    torch.manual_seed(3)
    cnn = build_model("digits_cnn", num_classes=10, in_channels=1, width=4).eval()
    torch.save(cnn.state_dict(), tmp_path / "cnn.pt")
    loaded = build_float_model({"model": {"name": "digits_cnn", "width": 4, "init": str(tmp_path / "cnn.pt")}},
                               data).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), cnn(x))


def test_model_init_mismatches_are_one_line(tmp_path):
    data = load_dataset("digits")
    torch.save(MyNet(num_classes=10, hidden=4).state_dict(), tmp_path / "h4.pt")
    torch.save(FixedNet().state_dict(), tmp_path / "fixed.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pt")
    torch.save(MyNet(num_classes=10, hidden=6), tmp_path / "pickled.pt")  # a whole module, not a state_dict
    spec = {"_target_": "tests.user_models.MyNet", "hidden": 6}
    cases = {"h4.pt": "features.0.weight is 4x1x3x3 in the file, 6x1x3x3 in the model",
             "fixed.pt": "missing features.0.weight, features.0.bias, features.1.weight (+6 more); unexpected "
                         "body.1.weight, body.1.bias, body.3.weight (+1 more)",
             "odd.pt": "is not a state_dict",
             "pickled.pt": "cannot be read as a state_dict (weights only)",
             "absent.pt": "no such file"}
    for name, needle in cases.items():
        with pytest.raises(QfiError) as e:
            build_float_model({"model": {**spec, "init": str(tmp_path / name)}}, data)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.slow
def test_qat_and_ptq_from_float_weights(in_tmp):
    net, path, float_acc = _float_net(in_tmp)
    assert float_acc > 0.5, "the float model should have learnt something"
    # PTQ at 32 bits is the float model itself: the same accuracy, exactly
    result = invoke("train", "--out", in_tmp / "ptq32", MYNET, "model.hidden=6", f"model.init={path}",
                    "train.epochs=0", "quant.wbits=32", "quant.abits=32", "device=cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((in_tmp / "ptq32" / "metrics.json").read_text())["test_accuracy"] == float_acc
    # PTQ at 8 bits (`train.epochs=0`: calibration only) writes a model.pt that loads as data and evaluates
    result = invoke("train", "--out", in_tmp / "ptq", MYNET, "model.hidden=6", f"model.init={path}",
                    "train.epochs=0", "device=cpu")
    assert result.exit_code == 0, result.output
    ckpt = torch.load(in_tmp / "ptq" / "model.pt", weights_only=True)
    assert ckpt["config"]["model"]["init"] == str(path.resolve()) and ckpt["metrics"]["epochs"] == 0
    assert ckpt["metrics"]["train_loss"] is None
    assert not (in_tmp / "ptq" / "last.pt").exists()
    path.unlink()  # rebuilding from model.pt needs its own weights, not the init file
    result = invoke("inject-eval", "--checkpoint", in_tmp / "ptq" / "model.pt", "--ber", "1e-3", "--trials", "2",
                    "--out", in_tmp / "eval", "--trust-code", "device=cpu")
    assert result.exit_code == 0, result.output
    res = json.loads((in_tmp / "eval" / "results.json").read_text())
    assert res["clean_accuracy"] == ckpt["metrics"]["test_accuracy"] and len(res["accuracies"]) == 2


def test_a_model_init_run_resumes_with_its_own_command_line(in_tmp):
    _, path, _ = _float_net(in_tmp, epochs=1)
    args = ["train", "--out", in_tmp / "run", MYNET, "model.hidden=6", "model.init=float.pt", "train.epochs=1",
            "train.limit=64", "device=cpu"]
    assert invoke(*args).exit_code == 0
    (in_tmp / "run" / "model.pt").unlink()  # as if killed after its last epoch
    path.unlink()  # resuming continues from last.pt: the init file is not read again
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert (in_tmp / "run" / "model.pt").is_file()


def test_qat_starts_from_the_float_weights(in_tmp):
    torch.manual_seed(5)
    cnn = build_model("digits_cnn", num_classes=10, in_channels=1, width=4)
    torch.save(cnn.state_dict(), in_tmp / "cnn.pt")
    # lr=0 and no weight decay: QAT leaves the float weights where model.init put them
    result = invoke("train", "--out", in_tmp / "qat", "model.width=4", f"model.init={in_tmp / 'cnn.pt'}",
                    "train.lr=0", "train.weight_decay=0", "train.epochs=1", "train.limit=64", "device=cpu")
    assert result.exit_code == 0, result.output
    state = torch.load(in_tmp / "qat" / "model.pt", weights_only=True)["state_dict"]
    float_keys = [k for k in cnn.state_dict() if k.endswith("weight") and cnn.state_dict()[k].dim() > 1]
    assert float_keys and all(torch.equal(state[k], cnn.state_dict()[k]) for k in float_keys)


# ----------------------------------------------------------------------------------------------- data._target_

@pytest.mark.slow
def test_target_data_trains_and_evaluates(in_tmp):
    run = in_tmp / "run"
    result = invoke("train", "--out", run, DIGITS, "data.n_test=300", "model.width=4", *TINY)
    assert result.exit_code == 0, result.output
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["config"]["data"] == {"_target_": "tests.user_models.make_digits", "name": "make_digits",
                                      "n_test": 300}
    result = invoke("inject-eval", "--checkpoint", run / "model.pt", "--ber", "1e-2", "--trials", "2",
                    "--out", in_tmp / "eval", DIGITS, "device=cpu")
    assert result.exit_code == 0, result.output
    res = json.loads((in_tmp / "eval" / "results.json").read_text())
    assert res["dataset"] == "make_digits" and res["samples"] == 300
    assert res["clean_accuracy"] == ckpt["metrics"]["test_accuracy"]


def test_target_data_of_the_wrong_shape_is_one_line(in_tmp):
    result = invoke("train", "--out", in_tmp / "bad", "data._target_=tests.user_models.make_flat", "device=cpu")
    assert_one_line_error(result, "data make_flat: x_train must be images (N, C, H, W), got shape (1797, 64)")
    result = invoke("train", "--out", in_tmp / "bad", DIGITS, "data.size=3", "device=cpu")
    assert_one_line_error(result, "unknown setting data.size for tests.user_models.make_digits (it takes: n_test)")


def _toy(**changes):
    x = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    return {"x_train": x, "y_train": torch.tensor([0, 1, 2, 0, 1, 2]), "x_test": x[:2], "y_test": torch.tensor([0, 1]),
            **changes}


@pytest.mark.parametrize("returned, needle", [
    ([1, 2], "the callable returned a list, not a dict with x_train, y_train, x_test, y_test"),
    ({k: v for k, v in _toy().items() if k != "y_test"}, "the returned dict has no y_test"),
    (_toy(labels=3), "unknown key 'labels'"),
    (_toy(x_test=[[1]]), "x_test must be a torch tensor or numpy array, got list"),
    (_toy(y_train=torch.tensor([0, 1, 2])), "y_train must be 6 labels (one per image of x_train), got shape (3,)"),
    (_toy(y_train=torch.zeros(6)), "y_train must hold integer class labels, got torch.float32"),
    (_toy(num_classes=2), "labels must lie in [0, 2) (num_classes=2), got 0..2"),
    (_toy(x_test=torch.zeros(2, 1, 5, 5, dtype=torch.uint8)), "x_train images are (1, 4, 4), x_test images (1, 5, 5)"),
    (_toy(x_train=torch.zeros(6, 1, 4, 4, dtype=torch.int32)), "x_train must be uint8 or floating point"),
    (_toy(mean=(0.5, 0.5)), "mean must be a number or 1 numbers (one per channel)"),
    (_toy(x_train=torch.full((6, 1, 4, 4), float("nan"))), "x_train holds NaN or infinite values"),
    (_toy(augment="flip"), "augment must be null or 'cifar'"),
])
def test_the_data_contract_names_what_is_wrong(returned, needle):
    with pytest.raises(QfiError) as e:
        as_dataset(returned, "toy")
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_data_contract_defaults():
    toy = _toy()
    ds = as_dataset(toy, "toy")
    x = toy["x_train"].double() / 255
    assert (ds.num_classes, ds.in_channels, ds.pixel_max, ds.augment) == (3, 1, 255.0, None)
    assert ds.mean[0] == pytest.approx(float(x.mean()), rel=1e-12)
    assert ds.std[0] == pytest.approx(float(x.std(unbiased=False)), rel=1e-9)


# ------------------------------------------------------------------------------------------------- Python API

def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- api-example:begin -->\n```python\n(.*?)```\n<!-- api-example:end -->", text, re.S)
    assert block, "README's From Python section lost its example markers"
    return block.group(1)


def test_readme_python_example_is_the_doctested_one_and_runs():
    doc = qfi_cli.__doc__
    assert _readme_example().strip() == doc[doc.index(">>>"):].strip()
    test = doctest.DocTestParser().get_doctest(_readme_example(), {}, "README.md", "README.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0 and runner.tries > 10


def test_public_names_resolve():
    for name in qfi_cli.__all__:
        assert getattr(qfi_cli, name) is not None, name
    with pytest.raises(AttributeError):
        qfi_cli.no_such_name  # noqa: B018
    assert RunConfig is qfi_cli.RunConfig and qfi_cli.train.__module__ == "qfi_cli.engine.train"
