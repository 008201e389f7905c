"""``qfi train``: quantization-aware training with SAM on the quantized weights (injection off by default).

Where training meets fault injection, this module decides (SAM knows nothing of faults):

* ``train.bet.mode=random`` (RandBET, Stutz et al., as their ``AverageWeightsTraining``): a step's gradient is the
  average of the clean one and the one under a fresh random pattern at rate ``train.bet.ber`` (clamped to
  ``train.bet.grad_clamp``), on steps their curriculum turns on (see ``TrainingFaults``); the faulty loss reaches
  the weights through the straight-through gradient;
* ``train.bet.mode=adversarial`` (AdvBET-style, Stutz et al., TPAMI): the same, under ``train.bet.adv_flips``
  bit flips chosen on the step's batch by ``adv_steps`` rounds of first-order bit search (the attack's ranking,
  ``faults.search.adversarial_flips``; BN statistics frozen), found once per step before SAM's two passes;
* ``fault.enable_in_training=true`` (the seed's rule 4): every training forward sees faults (no clean term);

in both, step ``k`` has its own pattern, reproducible from (seed, k), and both passes of a SAM step see it; SAM's
ascent follows the gradient at the clean quantized weights. ``train.clip_weights`` projects every trainable
parameter into ``[-w_max, w_max]`` before each step's forward (and once after the last step), as Stutz et al.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from qfi_cli.config import RunConfig
from qfi_cli.engine.common import build_quantized_model, load_data, predict_correct, resolve_device, seed_everything
from qfi_cli.engine.sharpness import sharpness
from qfi_cli.errors import QfiError
from qfi_cli.faults import FaultConfig, FaultInjector
from qfi_cli.faults.search import Masks, adversarial_flips, flipped
from qfi_cli.io import load_checkpoint, save_checkpoint, write_json
from qfi_cli.layout import LAST_CHECKPOINT, METRICS, MODEL
from qfi_cli.loggers import make_logger, scalars
from qfi_cli.models import model_label
from qfi_cli.optim import SAM
from qfi_cli.optim.sam import frozen_bn_stats
from qfi_cli.progress import Reporter
from qfi_cli.quant import calibrate, is_torch_ao, quantized_layers, stored_record

log = logging.getLogger(__name__)


def _scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int):
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if kind == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(epochs * 0.5), int(epochs * 0.75)], 0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _training_injectors(cfg: RunConfig, model: torch.nn.Module) -> tuple[FaultInjector | None, FaultInjector | None]:
    """(injector of ``fault.enable_in_training``, RandBET's injector): at most one of them (``qfi_cli.commands.train
    .check`` refuses both in the pre-check)."""
    faulty = cfg.fault.enable_in_training
    bet = cfg.train.bet.mode == "random"
    if faulty:
        injector = FaultInjector(model, cfg.fault, seed=cfg.seed)
        if cfg.sam.rho > 0:
            msg = ("fault injection is on during SAM training: SAM's ascent uses the clean quantized weight's "
                   "gradient, and both passes of each step see the same fault pattern")
            log.warning(msg)
            warnings.warn(msg, stacklevel=3)
        return injector, None
    if bet:
        return None, FaultInjector(model, FaultConfig(ber=cfg.train.bet.ber, enable_in_training=True,
                                                      enable_in_inference=False), seed=cfg.seed)
    return None, None


def _clamped(g: torch.Tensor, c: float | None) -> torch.Tensor:
    return g if c is None else g.clamp(-c, c)


def stutz_curriculum(clean: float, faulty: float, threshold: float) -> bool:
    """Whether RandBET's next step injects: Stutz et al.'s ``average_simple_curriculum``, from this step's clean loss
    and its faulty loss (0 on a step that did not inject): ``clean < 1.15 t`` and ``(clean + faulty) / 2 <= t``.

    >>> stutz_curriculum(2.0, 0.0, 1.75), stutz_curriculum(1.9, 1.7, 1.75), stutz_curriculum(2.1, 0.0, 1.75)
    (True, False, False)
    """
    return clean < 1.15 * threshold and (clean + faulty) / 2 <= threshold


class TrainingFaults:
    """Where training meets fault injection: step k's pattern, RandBET's / AdvBET's objective and when they inject.

    ``with faults.step(k, x, y):`` holds step k's pattern for every forward inside (both SAM passes; AdvBET finds
    its flips on the batch (x, y) here, once); ``backward(model, x, y)`` runs the step's forwards and backwards and
    returns ``(loss, clean logits)``; ``after_step(logits, y)`` decides whether the next step injects. Without
    faults in training it is plain cross-entropy.

    RandBET (``train.bet.mode=random``) follows Stutz et al.'s ``AverageWeightsTraining``: the gradient of a step
    that injects is ``(g_clean + weight * clamp(g_faulty, -c, c)) / (1 + weight)`` (c = ``train.bet.grad_clamp``,
    weight 1: their average) for every trainable parameter, the faulty forward leaves batch-norm statistics alone,
    and their curriculum (``average_simple_curriculum``) decides after every step whether the next one injects: the
    clean loss ``< 1.15 t`` and ``(clean + faulty loss) / 2 <= t`` (t = ``train.bet.start_loss``; the faulty loss
    is 0 on a step that did not inject, as theirs). Under SAM the ascent follows the same combination at the
    clean quantized weights.
    """

    def __init__(self, cfg: RunConfig, model: torch.nn.Module) -> None:
        self.faulty, self.bet = _training_injectors(cfg, model)
        self.model, self.adversarial = model, cfg.train.bet.mode == "adversarial"
        self.adv_flips, self.adv_steps = cfg.train.bet.adv_flips, cfg.train.bet.adv_steps
        self.weight, self.start_loss = cfg.train.bet.weight, cfg.train.bet.start_loss
        self.grad_clamp = cfg.train.bet.grad_clamp
        self.on, self.last_clean, self.last_faulty = False, math.inf, 0.0
        self.flips: Masks | None = None
        self._faulty_losses: list[float] = []

    @contextmanager
    def step(self, step: int, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> Iterator[None]:
        injector = self.faulty or self.bet
        self._faulty_losses = []
        if self.adversarial and self.on and x is not None:  # AdvBET: this batch's flips, for both SAM passes
            with frozen_bn_stats(self.model):
                self.flips = adversarial_flips(self.model, x, y, self.adv_flips, self.adv_steps)
        try:
            with injector.step(step) if injector is not None else nullcontext():
                yield
        finally:
            self.flips = None

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy at the clean Q(w) (faulty Q(w) under ``fault.enable_in_training``), plus AdvBET's
        ``weight * CE`` under its adversarial flips once started (batch-norm statistics frozen for it)."""
        with self.bet.disabled() if self.bet is not None else nullcontext():
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        if self.on and self.flips:
            with frozen_bn_stats(model), flipped(model, self.flips):
                loss = loss + self.weight * F.cross_entropy(model(x), y)
        return loss, logits

    def backward(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                 sam: SAM | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's forwards and backwards (gradients accumulate into ``.grad``); returns ``(loss detached, clean
        logits)``, the loss being the objective whose gradient was taken (RandBET: the weighted mean of the clean
        and the faulty loss; ``sam``'s kept Q(w) of the faulty forward get the same clamp and weight)."""
        if self.bet is None or not self.on:
            loss, logits = self.loss(model, x, y)
            loss.backward()
            return loss.detach(), logits
        with self.bet.disabled():
            logits = model(x)
            clean = F.cross_entropy(logits, y)
        clean.backward()
        params = [p for p in model.parameters() if p.requires_grad]
        clean_grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        layers = [m for _, m in quantized_layers(model)] if sam is not None else []
        kept = [len(sam.kept(m)) for m in layers]
        with frozen_bn_stats(model):
            faulty = F.cross_entropy(model(x), y)
        faulty.backward()
        w, c = self.weight, self.grad_clamp
        for p, g in zip(params, clean_grads):
            parts = [t for t in (g, None if p.grad is None else _clamped(p.grad, c) * w) if t is not None]
            p.grad = sum(parts) / (1 + w) if parts else None
        for m, n in zip(layers, kept):  # SAM's ascent: the faulty pass's share at the clean Q(w), clamped alike
            for q in sam.kept(m)[n:]:
                if q.grad is not None:
                    q.grad = _clamped(q.grad, c) * w
        self._faulty_losses.append(float(faulty.detach()))
        return ((clean.detach() + w * faulty.detach()) / (1 + w)), logits

    def after_step(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        if self.bet is None and not self.adversarial:
            return
        self.last_clean = float(F.cross_entropy(logits.detach(), y))
        if self.adversarial:
            self.on = self.on or self.last_clean < self.start_loss
            return
        self.last_faulty = self._faulty_losses[0] if self._faulty_losses else 0.0  # the first pass's, as the logits
        self.on = stutz_curriculum(self.last_clean, self.last_faulty, self.start_loss)

    def state(self) -> dict[str, Any]:
        return {"bet_on": self.on, "last_clean_loss": self.last_clean}

    def load_state(self, state: dict[str, Any]) -> None:
        self.on = bool(state.get("bet_on", False))
        self.last_clean = float(state.get("last_clean_loss", math.inf))

    def detach(self) -> None:
        for injector in (self.faulty, self.bet):
            if injector is not None:
                injector.detach()


NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.InstanceNorm2d)


def network_parameters(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, float]]:
    """What weight clipping projects: every trainable parameter but the quantizers' own (LSQ step sizes), each with
    its centre: 1 for a normalisation layer's scale, 0 otherwise."""
    quantizer = {id(p) for _, m in quantized_layers(model) for q in (m.quan_w_fn, m.quan_a_fn) for p in q.parameters()}
    scales = {id(m.weight) for m in model.modules() if isinstance(m, NORMS) and getattr(m, "weight", None) is not None}
    return [(p, 1.0 if id(p) in scales else 0.0) for p in model.parameters()
            if p.requires_grad and id(p) not in quantizer]


def clip_weights(model: torch.nn.Module, w_max: float) -> None:
    """Stutz et al.'s weight clipping (``BoxProjection`` of every trainable parameter, before each forward), in place:
    weights, biases and normalisation shifts into ``[-w_max, w_max]``, normalisation scales into ``[1 - w_max, 1 +
    w_max]``. Their models hold a normalisation scale as ``1 + gamma`` with ``gamma`` a parameter (reparameterised
    batch / group norm), which the projection keeps in ``[-w_max, w_max]``; qfi's layers hold the scale itself, so
    the same projection keeps it within ``w_max`` of 1. The quantizers' step sizes are not projected.

    >>> from torch import nn
    >>> from qfi_cli.quant import quantize_model
    >>> m = quantize_model(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    >>> with torch.no_grad(): _ = m[0].weight.fill_(3.0); _ = m[0].bias.fill_(-2.0); _ = m[1].weight.fill_(0.2)
    >>> clip_weights(m, 0.5); m[0].weight.abs().max().item(), m[0].bias.min().item(), m[1].weight.min().item()
    (0.5, -0.5, 0.5)
    """
    with torch.no_grad():
        for p, centre in network_parameters(model):
            p.clamp_(centre - w_max, centre + w_max)


def _resume(path: Path, cfg: RunConfig, device: torch.device, model: torch.nn.Module,
            base: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator,
            faults: TrainingFaults) -> tuple[int, list[dict[str, Any]], float]:
    """Load the checkpoint at ``path`` into the run's objects; return ``(start_epoch, history, prior_seconds)``."""
    state = load_checkpoint(path, map_location=device, trust=cfg.trust())
    model.load_state_dict(state["state_dict"])
    base.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"].cpu() if device.type == "cpu" else state["generator"])
    torch.set_rng_state(state["torch_rng"].cpu())
    start_epoch, history = int(state["epoch"]), list(state["history"])
    prior_seconds = float(state["seconds"])
    faults.load_state(state)
    return start_epoch, history, prior_seconds


def _train_epoch(model: torch.nn.Module, data: Any, tcfg: Any, sam: SAM, faults: TrainingFaults,
                 generator: torch.Generator, epoch: int, steps: int, device: torch.device,
                 advance: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run one epoch of SAM steps over the shuffled training set; return ``(loss_sum, correct, seen)``."""
    model.train()
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for i, (x, y) in enumerate(data.batches("train", tcfg.batch_size, shuffle=True, generator=generator,
                                            augment=True, limit=tcfg.limit)):
        if tcfg.clip_weights is not None:
            clip_weights(model, tcfg.clip_weights)
        with faults.step(epoch * steps + i, x, y):
            loss, logits = sam.step(lambda: faults.backward(model, x, y, sam), backward=False)
        faults.after_step(logits, y)
        loss_sum += loss * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        advance(1, "")
    return loss_sum, correct, seen


def _test_accuracy(model: torch.nn.Module, data: Any, batch_size: int) -> float:
    """The fraction of the test split that ``model`` classifies correctly."""
    correct_test = predict_correct(model, data, batch_size)[0]
    return int(correct_test.sum()) / correct_test.numel()


def _epoch_record(model: torch.nn.Module, data: Any, batch_size: int, epoch: int, loss_sum: torch.Tensor,
                  correct: torch.Tensor, seen: int) -> dict[str, Any]:
    """The history row of (0-based) ``epoch``, its test accuracy measured; raises if its mean loss is not finite."""
    train_loss = float(loss_sum) / seen
    if not math.isfinite(train_loss):
        raise QfiError(f"training diverged at epoch {epoch + 1} (loss {train_loss}): lower train.lr or rho")
    model.eval()
    test_acc = _test_accuracy(model, data, batch_size)
    return {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": float(correct) / seen,
            "test_accuracy": test_acc}


def _save_last(path: Path, cfg: RunConfig, model: torch.nn.Module, base: torch.optim.Optimizer, scheduler: Any,
               generator: torch.Generator, faults: TrainingFaults, history: list[dict[str, Any]],
               seconds: float) -> None:
    """Write the resumable end-of-epoch checkpoint (weights, optimizer, scheduler, RNGs, faults) to ``path``."""
    save_checkpoint(path, model.state_dict(), cfg.as_dict(), epoch=history[-1]["epoch"],
                    history=history, optimizer=base.state_dict(), scheduler=scheduler.state_dict(),
                    generator=generator.get_state(), torch_rng=torch.get_rng_state(),
                    seconds=seconds, **faults.state())


def _finish_training(model: torch.nn.Module, faults: TrainingFaults, sam: SAM, clip: float | None) -> None:
    """Detach the training hooks, clip the weights a last time (if ``clip``) and put ``model`` in eval mode."""
    faults.detach()
    sam.remove()
    if clip is not None:  # the saved model inside the bound, as the reference evaluates it
        clip_weights(model, clip)
    model.eval()


def _final_metrics(cfg: RunConfig, model: torch.nn.Module, data: Any, history: list[dict[str, Any]],
                   device: torch.device, prior_seconds: float, start_time: float) -> dict[str, Any]:
    """The run's ``metrics.json`` record: last epoch's accuracy/loss, sharpness, timing, stored bits, history."""
    tcfg = cfg.train
    if history:
        last = history[-1]
    else:  # post-training quantization: calibrated, not trained
        last = {"test_accuracy": _test_accuracy(model, data, cfg.eval.batch_size), "train_loss": None,
                "train_accuracy": None}
    return {"test_accuracy": last["test_accuracy"], "train_loss": last["train_loss"],
            "train_accuracy": last["train_accuracy"], "epochs": tcfg.epochs,
            **sharpness(model, data, rho=tcfg.sharpness_rho, batch_size=tcfg.sharpness_batch, seed=cfg.seed),
            "seconds": round(prior_seconds + time.perf_counter() - start_time, 3), "device": str(device),
            **stored_record(model, cfg.quant.wbits), "history": history}


def _write_outputs(out_dir: Path, cfg: RunConfig, model: torch.nn.Module, metrics: dict[str, Any],
                   tracker: Any) -> None:
    """Save ``model.pt`` and ``metrics.json`` to ``out_dir`` and log the sharpness and metrics file to ``tracker``."""
    save_checkpoint(out_dir / MODEL, model.state_dict(), cfg.as_dict(),
                    metrics={k: v for k, v in metrics.items() if k != "history"})
    write_json(out_dir / METRICS, metrics)
    tracker.log_metrics(scalars({k: v for k, v in metrics.items() if k.startswith("sharpness")}))
    tracker.log_artifact(out_dir / METRICS)


def calibration_images(data: Any, batch_size: int, batches: int, limit: int | None = None) -> torch.Tensor:
    """The first ``batches`` training batches (in order, unaugmented) as one tensor: what ``calibrate`` sees
    (``eval.calib``; 1 is the first batch alone).

    >>> from qfi_cli.data import load_dataset
    >>> calibration_images(load_dataset("digits"), 128, 3).shape
    torch.Size([384, 1, 8, 8])
    """
    return torch.cat([x for x, _ in itertools.islice(data.batches("train", batch_size, limit=limit), batches)])


def train(cfg: RunConfig | dict[str, Any], out_dir: str | Path, reporter: Reporter | None = None,
          resume: bool = False) -> dict[str, Any]:
    """Train the quantized model that ``cfg`` describes; write ``model.pt`` and ``metrics.json`` to ``out_dir``.

    ``cfg`` is the composed config (a ``RunConfig`` or its plain dict, see ``conf/config.yaml``). With ``resume``,
    training continues from ``out_dir/last.pt`` (written atomically after every epoch) and ends with the same
    weights as an uninterrupted run. ``model.init`` (a float state_dict) is loaded before quantization, so training
fine-tunes it (QAT); ``train.epochs=0`` is post-training quantization (PTQ): calibration only. Example
    (``cfg`` as composed from conf/, e.g. ``.hydra/config.yaml`` of a run)::

        metrics = train(cfg, "runs/w4")   # -> runs/w4/model.pt, runs/w4/metrics.json
    """
    cfg = RunConfig.from_dict(cfg)
    reporter = reporter or Reporter()
    out_dir = Path(out_dir)
    tcfg = cfg.train
    epochs = tcfg.epochs
    start_time = time.perf_counter()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data = load_data(cfg.data, device)
    model = build_quantized_model(cfg, data, init=not resume).to(device)
    if is_torch_ao(model):
        raise QfiError(f"model {model_label(cfg.model)} is a torch.ao int8 model: torch.ao int8 modules are not "
                       "trainable (evaluate it with qfi inject-eval, no checkpoint needed)")
    calibrate(model, calibration_images(data, tcfg.batch_size, cfg.eval.calib, tcfg.limit))
    base = torch.optim.SGD(model.parameters(), lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay,
                           nesterov=tcfg.nesterov)
    scheduler = _scheduler(base, tcfg.schedule, epochs)
    faults = TrainingFaults(cfg, model)
    sam = SAM(model, base, rho=cfg.sam.rho, adaptive=cfg.sam.adaptive, eta=cfg.sam.eta, grad_clip=tcfg.grad_clip)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    start_epoch, history, prior_seconds = 0, [], 0.0
    if resume:
        start_epoch, history, prior_seconds = _resume(out_dir / LAST_CHECKPOINT, cfg, device, model, base, scheduler,
                                                      generator, faults)
        reporter.log(f"resuming from epoch {start_epoch} of {epochs}")

    steps = data.num_batches("train", tcfg.batch_size, limit=tcfg.limit)
    with make_logger(cfg.logger, out_dir, cfg.paths.root) as tracker:
        tracker.log_params(cfg.as_dict())
        for row in history:  # a resumed run's tracker gets the curve so far
            tracker.log_metrics(scalars({k: v for k, v in row.items() if k != "epoch"}), step=row["epoch"])
        with reporter.task("train", total=(epochs - start_epoch) * steps) as advance:
            for epoch in range(start_epoch, epochs):
                loss_sum, correct, seen = _train_epoch(model, data, tcfg, sam, faults, generator, epoch, steps,
                                                       device, advance)
                scheduler.step()
                history.append(_epoch_record(model, data, cfg.eval.batch_size, epoch, loss_sum, correct, seen))
                row = history[-1]
                tracker.log_metrics(scalars({k: v for k, v in row.items() if k != "epoch"}), step=epoch + 1)
                advance(0, f"epoch {epoch + 1}/{epochs} loss {row['train_loss']:.4f} "
                           f"test acc {row['test_accuracy']:.4f}")
                _save_last(out_dir / LAST_CHECKPOINT, cfg, model, base, scheduler, generator, faults, history,
                           prior_seconds + time.perf_counter() - start_time)
        _finish_training(model, faults, sam, tcfg.clip_weights)
        metrics = _final_metrics(cfg, model, data, history, device, prior_seconds, start_time)
        _write_outputs(out_dir, cfg, model, metrics, tracker)
    return metrics
