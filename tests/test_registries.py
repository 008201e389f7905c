"""Every registered part and every config file, smoke-tested (as timm's test_models.py and lightning-hydra-template's
test_configs.py do): a model, quantizer, fault model, logger, recipe or config option added later is covered here
without a new test. A broken builder or a corrupted config file fails one of these fast tests."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from qfi_cli.config import RunConfig
from qfi_cli.faults import FAULT_MODELS, FaultConfig, FaultInjector
from qfi_cli.faults.sources.rate import RateFaults
from qfi_cli.loggers import LOGGERS, make_logger
from qfi_cli.models import build_model, input_size, list_models
from qfi_cli.optim import SAM
from qfi_cli.paths import conf_dir
from qfi_cli.quant import QUANTIZED_TYPES, QUANTIZERS, calibrate, frozen_weights, quantize_model, quantized_layers
from qfi_cli.quant.quantizers import VALID_BITS
from qfi_cli.validate import group_options

GROUPS = sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra")


def composed(overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def plain(cfg) -> dict:
    d = OmegaConf.to_container(cfg, resolve=False)
    d.pop("hydra", None)
    d["paths"] = {"root": "outputs"}
    return OmegaConf.to_container(OmegaConf.create(d), resolve=True)


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_quantizes_calibrates_takes_faults_and_trains_a_step(name):
    """On a tiny input of the model's own size: forward and backward through SAM, then faults in one trial."""
    torch.manual_seed(0)
    side = input_size(name) or 8
    channels = 1 if side in (8, 28) else 3
    model = quantize_model(build_model(name, num_classes=4, in_channels=channels), wbits=4, abits=8)
    layers = quantized_layers(model)
    assert len(layers) >= 2, "every Conv2d / Linear becomes a quantized layer"
    x, y = torch.randn(2, channels, side, side), torch.tensor([0, 3])
    calibrate(model, x)
    model.train()
    sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.01), rho=0.05)
    loss, logits = sam.step(lambda: (F.cross_entropy(out := model(x), y), out))
    assert logits.shape == (2, 4) and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)
    model.eval()
    with FaultInjector(model, FaultConfig(ber=0.01)) as injector, frozen_weights(model):
        clean = model(x)
        with injector.trial(0):
            faulty = model(x)
        assert injector.flips_total() > 0 and not torch.equal(clean, faulty)
        assert torch.equal(model(x), clean), "leaving the trial restores the weights"


@pytest.mark.parametrize("name", QUANTIZERS.names())
def test_every_quantizer_says_how_it_stores_what_it_quantized(name):
    """At every width it takes: the encoding has that width, its codes lie in its range, and decoding the stored
    patterns gives back exactly the value the layer computes with."""
    cls = QUANTIZERS.get(name)
    for bits in [b for b in getattr(cls, "VALID_BITS", VALID_BITS)]:
        torch.manual_seed(bits)
        w = torch.randn(8, 3, 3, 3)
        value, enc = cls().quantize(w, bits)
        lo, hi = enc.code_range()
        codes = enc.codes(value)
        assert enc.bits == bits and lo <= int(codes.min()) and int(codes.max()) <= hi, (name, bits)
        assert torch.equal(enc.decode(enc.encode(value)), value), (name, bits)


# one small float example per row of the layer table (a new row needs its example here, and the test covers it):
# (make the float layer, make its input, call the layer on the input)
nn = torch.nn
LAYER_EXAMPLES = {
    nn.Conv1d: (lambda: nn.Conv1d(2, 4, 3, padding=1), lambda: torch.randn(2, 2, 9)),
    nn.Conv2d: (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2, groups=2), lambda: torch.randn(2, 2, 9, 9)),
    nn.Conv3d: (lambda: nn.Conv3d(2, 3, 2), lambda: torch.randn(2, 2, 4, 4, 4)),
    nn.ConvTranspose1d: (lambda: nn.ConvTranspose1d(2, 3, 3, stride=2), lambda: torch.randn(2, 2, 5)),
    nn.ConvTranspose2d: (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),
                         lambda: torch.randn(2, 2, 4, 4)),
    nn.ConvTranspose3d: (lambda: nn.ConvTranspose3d(2, 2, 2, stride=2), lambda: torch.randn(1, 2, 2, 2, 2)),
    nn.Linear: (lambda: nn.Linear(6, 4), lambda: torch.randn(3, 6)),
    nn.modules.linear.NonDynamicallyQuantizableLinear: (lambda: nn.modules.linear.NonDynamicallyQuantizableLinear(6, 4),
                                                        lambda: torch.randn(3, 6)),
    nn.Embedding: (lambda: nn.Embedding(10, 4, padding_idx=1), lambda: torch.randint(0, 10, (3, 5))),
    nn.MultiheadAttention: (lambda: nn.MultiheadAttention(8, 2, batch_first=True), lambda: torch.randn(2, 5, 8),
                            lambda layer, x: layer(x, x, x)[0]),
}


@pytest.mark.parametrize("float_type", list(QUANTIZED_TYPES), ids=lambda t: t.__name__)
def test_every_row_of_the_layer_table_converts_computes_and_takes_faults(float_type):
    """Each float type of QUANTIZED_TYPES becomes its twin, equals the float layer at 32 bits, quantizes at 4 bits
    and takes weight faults through the frozen weights."""
    make, make_x, *call = LAYER_EXAMPLES[float_type]
    call = call[0] if call else (lambda layer, x: layer(x))
    torch.manual_seed(0)
    float_layer, x = make(), make_x()
    model = quantize_model(torch.nn.Sequential(copy.deepcopy(float_layer)), "minmax", wbits=32, abits=32,
                           first_last_bits=None)
    assert type(model[0]) is QUANTIZED_TYPES[float_type] and torch.equal(call(model[0], x), call(float_layer, x))
    model = quantize_model(torch.nn.Sequential(make()), "minmax", wbits=4, abits=8, first_last_bits=None).eval()
    with FaultInjector(model, FaultConfig(ber=0.2)) as injector, frozen_weights(model):
        assert all(m.frozen_encoding.bits == 4 for _, m in quantized_layers(model))
        clean = call(model[0], x)
        with injector.trial(0):
            assert not torch.equal(call(model[0], x), clean)
        assert torch.equal(call(model[0], x), clean)


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return quantize_model(torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 2)), wbits=4,
                          first_last_bits=None).eval()


@pytest.fixture(scope="module")
def fault_files(tmp_path_factory) -> dict[str, str]:
    """The files ``fault=replay`` and ``fault=profile`` read, made for ``tiny()``: a recorded trial at rate 0.2, and
    a map failing every bit with probability 0.2 plus one stuck cell."""
    from qfi_cli.faults.replay import FaultRecorder

    root = tmp_path_factory.mktemp("faults")
    model = tiny()
    recorder = FaultRecorder(model, levels=[(0.2, None)], trials=1)
    with frozen_weights(model), FaultInjector(model, FaultConfig(ber=0.2)) as injector:
        injector.recorder = recorder.add
        recorder.begin(0, 0)
        with injector.trial(0):
            pass
    profile = root / "map.json"
    profile.write_text('{"rates": [{"layers": ["*"], "p": 0.2}], "stuck": [{"layer": "0", "index": 3, "bit": 1, '
                       '"value": 1}]}')
    return {"replay": str(recorder.save(root / "faults.npz")), "profile": str(profile)}


@pytest.mark.parametrize("name", FAULT_MODELS.names())
def test_every_fault_model_injects(name, fault_files):
    at_rate = isinstance(FAULT_MODELS.get(name), RateFaults)
    cfg = FaultConfig(model=name, ber=0.2 if at_rate else None, count=5, file=fault_files.get(name))
    layer_model = tiny()
    with FaultInjector(layer_model, cfg) as injector, frozen_weights(layer_model):
        before = [m.frozen_weight.clone() for _, m in quantized_layers(layer_model)]
        with injector.trial(0, ber=0.2 if name == "replay" else None):
            changed = sum(int((m.frozen_weight != b).sum()) for (_, m), b in zip(quantized_layers(layer_model),
                                                                                  before))
    assert changed > 0 and injector.flips_total() > 0


@pytest.mark.parametrize("name", LOGGERS.names())
def test_every_logger_config_builds_its_logger(name, tmp_path):
    pytest.importorskip({"tensorboard": "tensorboard", "mlflow": "mlflow"}.get(name, "csv"))
    cfg = plain(composed([f"logger={name}", f"paths.root={tmp_path}"]))
    with make_logger(cfg["logger"], tmp_path / "run", tmp_path) as log:
        log.log_metrics({"x": 1.0}, step=1)


OPTIONS = [(group, option) for group in GROUPS for option in group_options(group)]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_of_every_config_group_composes_into_a_valid_config(group, option, fault_files):
    """Each file of each group composes with the rest of the tree and reads into a RunConfig; the part it names
    exists and builds (model, quantizer, fault model, logger) or its grid parses (sweep, experiment)."""
    prefix = "+" if group in ("experiment", "sweep") else ""
    extra = [f"fault.file={fault_files[option]}"] if group == "fault" and option in fault_files else []
    cfg = composed([f"{prefix}{group}={option}", *extra], hydra=True)
    run = RunConfig.from_dict(plain(cfg))
    if group == "model":
        model = build_model(run.model["name"], num_classes=3, in_channels=3,
                            **{k: v for k, v in run.model.items() if k != "name"})
        assert isinstance(model, torch.nn.Module)
    elif group == "quant":
        QUANTIZERS.get(run.quant.quantizer)(per_channel=run.quant.per_channel)
    elif group == "fault":
        FaultInjector(tiny(), run.fault).detach()
    elif group == "recipe":
        assert run.recipe == option
    elif group in ("experiment", "sweep"):
        params = cfg.hydra.sweeper.params
        assert params, f"+{group}={option} sweeps nothing"
        for key, values in params.items():
            for value in str(values).split(","):  # every swept value reads into a valid config too
                RunConfig.from_dict(plain(composed([f"{prefix}{group}={option}", f"{key}={value}"])))
    elif group == "data":
        assert run.data.name == option


def test_the_slurm_launcher_example_composes():
    cfg = composed(["hydra/launcher=slurm"], hydra=True)
    assert cfg.hydra.launcher.partition and cfg.hydra.launcher.timeout_min > 0
