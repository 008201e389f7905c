"""qfi: train quantized networks (with SAM) and measure how they survive bit errors in their stored weight codes.

The Python API: every name in ``__all__`` is importable from ``qfi_cli`` (loaded on first use, so ``import qfi_cli``
stays as fast as the command line needs). README's "From Python" shows this example; a test keeps the two equal.

>>> import torch
>>> from torch import nn
>>> from qfi_cli import SAM, FaultConfig, FaultInjector, calibrate, frozen_weights, load_dataset
>>> from qfi_cli import mean_ci, quantize_model
>>> _ = torch.manual_seed(0)
>>> data = load_dataset("digits")                        # 8x8 images as in-memory tensors
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))   # your float model
>>> model = quantize_model(net, wbits=4)                 # every Linear / Conv2d -> QuanLinear / QuanConv2d
>>> x, y = next(data.batches("train", 2000))             # the whole training split as one batch
>>> calibrate(model, x)                                  # activation quantizers see data once
>>> sam = SAM(model, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9), rho=0.05)
>>> def objective():                                     # loss and logits at the current weights
...     logits = model(x)
...     return nn.functional.cross_entropy(logits, y), logits
>>> for step in range(30):                               # SAM steps: ascent, then descent, on Q(w)
...     loss, _ = sam.step(objective)
>>> x_test, y_test = next(data.batches("test", 450))
>>> def accuracy():
...     return (model(x_test).argmax(1) == y_test).double().mean().item()
>>> clean = accuracy()
>>> with FaultInjector(model.eval(), FaultConfig(ber=1e-2), seed=0) as injector, frozen_weights(model):
...     faulty = []
...     for t in range(20):                              # trial t: its own pattern, undone on exit
...         with injector.trial(t):
...             faulty.append(accuracy())
>>> low, high = mean_ci(faulty)                          # 95% interval of the mean over trials (betting)
>>> clean > 0.9, low <= sum(faulty) / len(faulty) <= high, high <= clean
(True, True, True)
"""

__version__ = "0.2.0"

# public name -> the module that defines it (imported on first access: torch is not loaded by `import qfi_cli`)
_EXPORTS = {
    "QfiError": "qfi_cli.errors",
    "RunConfig": "qfi_cli.config", "Trust": "qfi_cli.user_code",
    # models and data
    "build_model": "qfi_cli.models", "register_model": "qfi_cli.models", "list_models": "qfi_cli.models",
    "load_float_weights": "qfi_cli.models",
    "load_dataset": "qfi_cli.data", "list_datasets": "qfi_cli.data", "InMemoryDataset": "qfi_cli.data",
    "as_dataset": "qfi_cli.data",
    # quantization
    "quantize_model": "qfi_cli.quant", "calibrate": "qfi_cli.quant", "frozen_weights": "qfi_cli.quant",
    "quantized_layers": "qfi_cli.quant", "QuanConv2d": "qfi_cli.quant", "QuanLinear": "qfi_cli.quant",
    "QUANTIZERS": "qfi_cli.quant",
    # faults, SAM, statistics
    "FaultConfig": "qfi_cli.faults", "FaultInjector": "qfi_cli.faults", "FAULT_MODELS": "qfi_cli.faults",
    "SAM": "qfi_cli.optim",
    "mean_ci": "qfi_cli.stats", "two_level_ci": "qfi_cli.stats",
    # the engine: what `qfi train` / `qfi inject-eval` run
    "train": "qfi_cli.engine.train", "inject_eval": "qfi_cli.engine.evaluate", "load_trained": "qfi_cli.engine.evaluate",
    "build_float_model": "qfi_cli.engine.common", "build_quantized_model": "qfi_cli.engine.common",
    "predict_correct": "qfi_cli.engine.common",
    "aggregate": "qfi_cli.report",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qfi_cli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
