"""Typed configuration: the composed config (a plain dict) read once into dataclasses, validated where it is read.

``RunConfig.from_dict(plain)`` checks every key qfi reads: types (a number stays a number), ranges (no negative
learning rate, no NaN radius), choices (schedule, device), and that no key is set that nothing reads. Each mistake
is a one-line ``QfiError`` naming the key. The engine receives a ``RunConfig``; ``as_dict()`` gives the plain dict
that checkpoints and results store.

>>> cfg = RunConfig.from_dict({"train": {"lr": 0.1}, "quant": {"wbits": 4}})
>>> cfg.train.lr, cfg.quant.wbits, cfg.sam.rho
(0.1, 4, 0.05)
>>> RunConfig.from_dict({"train": {"lr": -1}})
Traceback (most recent call last):
...
qfi_cli.errors.QfiError: train.lr must be >= 0, got -1.0
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from qfi_cli.faults.config import FaultConfig
from qfi_cli.quant.encoding import FLOAT_FORMATS
from qfi_cli.quant.quantizers import QUANTIZERS, check_bits
from qfi_cli.stats import PrecisionRule
from qfi_cli.user_code import TARGET, Trust, target_label
from qfi_cli.typed import check_seed, coerce, require, section

@dataclass
class QuantConfig:
    """``quant``: quantizer name, weight / activation bit widths, per-channel or group-wise scales, first/last layer
    bits.

    Float storage: ``name`` ``float`` with ``format`` fp16 | bf16 | fp32, or ``name`` fp16 | bf16 | fp32 itself
    (``format`` then null or the same). The format decides the weight width: ``wbits`` must be null or that width
    (16 or 32) and is set to it; ``abits`` null means the same format for activations, 32 keeps them fp32.

    >>> q = QuantConfig(name="float", format="bf16", wbits=None, abits=None).validated()
    >>> q.quantizer, q.wbits, q.abits
    ('bf16', 16, 16)
    >>> QuantConfig(name="fp16", wbits=8).validated()
    Traceback (most recent call last):
    ...
    qfi_cli.errors.QfiError: quant=fp16 stores weights as fp16 (16 bits): quant.wbits must be 16 or null, got 8

    ``group_size``: one weight scale per group of that many consecutive entries of each output row (int4
    weight-only style; see ``qfi_cli.quant.quantizers.weight_groups``), for the quantizers with ``GROUPS``; groups
    lie inside rows, so it supersedes ``per_channel``:

    >>> QuantConfig(name="minmax", wbits=4, group_size=32).validated().group_size
    32
    >>> QuantConfig(name="rquant", group_size=32).validated()
    Traceback (most recent call last):
    ...
    qfi_cli.errors.QfiError: quant=rquant takes no quant.group_size (affine, lsq, minmax do): set it to null
    """

    name: str = "lsq"
    wbits: Optional[int] = 8
    abits: Optional[int] = 8
    per_channel: bool = False
    first_last_bits: Optional[int] = 8
    format: Optional[str] = None
    group_size: Optional[int] = None

    @property
    def is_float(self) -> bool:
        return self.name == "float" or self.name in FLOAT_FORMATS

    @property
    def quantizer(self) -> str:
        """The registered quantizer that stores the weights (the format for float storage)."""
        return self.format if self.is_float else self.name

    def validated(self) -> "QuantConfig":
        if self.is_float:
            self._float_widths()
        else:
            QUANTIZERS.get(self.name)
            require(self.format is None, f"quant.format applies to float storage (quant=float, fp16, bf16, fp32), "
                                         f"not to quant={self.name}: drop it or choose quant=float")
            check_bits(self.wbits, "weight bit width")
            check_bits(self.abits, "activation bit width")
        if self.first_last_bits is not None:
            check_bits(self.first_last_bits, "quant.first_last_bits")
        require(not self.per_channel or QUANTIZERS.get(self.quantizer).PER_CHANNEL,
                f"{self.name} quantizes per layer (one range, one zero point): set quant.per_channel=false")
        if self.group_size is not None:
            grouped = ", ".join(sorted(n for n in QUANTIZERS.names() if QUANTIZERS.get(n).GROUPS))
            require(QUANTIZERS.get(self.quantizer).GROUPS,
                    f"quant={self.name} takes no quant.group_size ({grouped} do): set it to null")
            require(self.group_size >= 1, f"quant.group_size must be a whole number >= 1 (entries per weight scale) "
                                          f"or null, got {self.group_size}")
        return self

    def _float_widths(self) -> None:
        formats = ", ".join(FLOAT_FORMATS)
        if self.name == "float":
            require(self.format in FLOAT_FORMATS, f"quant=float needs quant.format: one of {formats}, got "
                                                  f"{self.format!r}")
        else:
            require(self.format in (None, self.name), f"quant={self.name} stores {self.name}: quant.format must be "
                                                      f"null or {self.name}, got {self.format!r}")
            self.format = self.name
        width = FLOAT_FORMATS[self.format][2]
        require(self.wbits in (None, width), f"quant={self.name} stores weights as {self.format} ({width} bits): "
                                             f"quant.wbits must be {width} or null, got {self.wbits}")
        require(self.abits in (None, width, 32), f"quant={self.name}: quant.abits must be null or {width} "
                                                 f"({self.format} activations) or 32 (fp32), got {self.abits}")
        self.wbits = width
        self.abits = width if self.abits is None else int(self.abits)


@dataclass
class SamConfig:
    """``sam``: radius ``rho`` (0 = plain training), ASAM (``adaptive``) and its ``eta``."""

    rho: float = 0.05
    adaptive: bool = False
    eta: float = 0.01

    def validated(self) -> "SamConfig":
        require(self.rho >= 0, f"sam.rho must be >= 0, got {self.rho}")
        require(self.eta >= 0, f"sam.eta must be >= 0, got {self.eta}")
        require(not (self.adaptive and self.eta == 0),
                "sam.eta must be > 0 with ASAM: many quantized weights are exactly 0")
        return self


@dataclass
class BetConfig:
    """``train.bet``: bit error training. ``mode`` none | random (RandBET, Stutz et al., as their code): each step
    averages the clean gradient with the gradient under a fresh random pattern at rate ``ber``, that one clamped to
    ``[-grad_clamp, grad_clamp]`` elementwise, on steps that their curriculum turns on (re-decided after every step
    from the clean and faulty losses against ``start_loss``); adversarial (AdvBET-style): the clean loss plus the
    loss under ``adv_flips`` bit flips found on the step's batch by ``adv_steps`` rounds of first-order bit search
    (``qfi_cli.faults.search.adversarial_flips``), once the clean loss falls below ``start_loss``. ``weight``: the
    faulty term's weight (1: the reference's plain average)."""

    mode: str = "none"
    ber: float = 0.01
    start_loss: float = 1.75
    weight: float = 1.0
    grad_clamp: Optional[float] = 0.05
    adv_flips: int = 10
    adv_steps: int = 1

    def validated(self) -> "BetConfig":
        require(self.mode in BET_MODES, f"train.bet.mode must be one of {', '.join(BET_MODES)}, got {self.mode!r}")
        require(0 <= self.ber <= 1, f"train.bet.ber must lie in [0, 1], got {self.ber}")
        require(self.start_loss >= 0, f"train.bet.start_loss must be >= 0, got {self.start_loss}")
        require(self.weight >= 0, f"train.bet.weight must be >= 0, got {self.weight}")
        require(self.grad_clamp is None or self.grad_clamp > 0,
                f"train.bet.grad_clamp must be > 0 or null, got {self.grad_clamp}")
        require(self.adv_flips >= 1, f"train.bet.adv_flips must be >= 1, got {self.adv_flips}")
        require(1 <= self.adv_steps <= self.adv_flips,
                f"train.bet.adv_steps must lie in 1..train.bet.adv_flips ({self.adv_flips}), got {self.adv_steps}")
        return self


BET_MODES = ("none", "random", "adversarial")
SCHEDULES = ("cosine", "step", "none")


@dataclass
class TrainConfig:
    """``train``: SGD with momentum and a schedule; SAM (``sam``) wraps it."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    grad_clip: Optional[float] = None
    limit: Optional[int] = None
    clip_weights: Optional[float] = None
    bet: BetConfig = field(default_factory=BetConfig)
    sharpness_rho: float = 0.05
    sharpness_batch: int = 256

    def validated(self) -> "TrainConfig":
        require(self.epochs >= 0, f"train.epochs must be >= 0, got {self.epochs}")
        require(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        require(self.lr >= 0, f"train.lr must be >= 0, got {self.lr}")
        require(0 <= self.momentum < 1, f"train.momentum must lie in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        require(not (self.nesterov and self.momentum == 0), "train.nesterov=true needs train.momentum > 0")
        require(self.schedule in SCHEDULES,
                f"train.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        require(self.grad_clip is None or self.grad_clip > 0, f"train.grad_clip must be > 0 or null, got "
                                                               f"{self.grad_clip}")
        require(self.limit is None or self.limit >= 1, f"train.limit must be >= 1 or null, got {self.limit}")
        require(self.clip_weights is None or self.clip_weights > 0,
                f"train.clip_weights must be > 0 or null, got {self.clip_weights}")
        require(self.sharpness_rho > 0, f"train.sharpness_rho must be > 0, got {self.sharpness_rho}")
        require(self.sharpness_batch >= 1, f"train.sharpness_batch must be >= 1, got {self.sharpness_batch}")
        return self


@dataclass
class EvalConfig:
    """``eval``: trials per rate, batch size, test-set limit, the fault-pattern seed, the rates of one job,
    where inject-eval records every trial's faulty bits (``save_faults``: relative paths lie in the run
    directory), and the adaptive rule that replaces ``trials`` when ``precision`` is set: each rate runs
    ``min_trials`` to ``max_trials`` trials until its 95% interval (a confidence sequence) is within +-precision
    (``qfi_cli.stats.PrecisionRule``). ``prefix_reuse``: a trial's forwards recompute only what its faulty layers
    feed (``qfi_cli.engine.prefix``; bit-identical results). ``calib``: how many training batches calibrate the
    data-dependent quantizers (one forward over them all) before training; with ``train.epochs=0`` (PTQ) that is
    all the model sees of the training data."""

    trials: int = 10
    batch_size: int = 1000
    limit: Optional[int] = None
    fault_seed: int = 0
    bers: Optional[list[float]] = None
    save_faults: Optional[str] = None
    precision: Optional[float] = None
    min_trials: int = 10
    max_trials: int = 1000
    prefix_reuse: bool = True
    calib: int = 1

    def validated(self) -> "EvalConfig":
        require(self.calib >= 1, f"eval.calib (calibration batches) must be >= 1, got {self.calib}")
        require(self.trials >= 1, f"trials must be >= 1, got {self.trials}")
        require(self.precision is None or 0 < self.precision < 0.5,
                f"eval.precision must lie in (0, 0.5) (0.01: the mean accuracy to +-1 point) or be null, "
                f"got {self.precision}")
        require(2 <= self.min_trials <= self.max_trials,
                f"eval.min_trials and eval.max_trials must satisfy 2 <= min_trials <= max_trials, got "
                f"{self.min_trials} and {self.max_trials}")
        require(self.batch_size >= 1, f"eval.batch_size must be >= 1, got {self.batch_size}")
        require(self.limit is None or self.limit >= 1, f"eval.limit must be >= 1 or null, got {self.limit}")
        check_seed("eval.fault_seed", self.fault_seed)
        for ber in self.bers or ():
            require(0 <= ber <= 1, f"ber must lie in [0, 1], got {ber}")
        require(self.bers is None or len(self.bers) > 0, "eval.bers must name at least one rate (or be null)")
        require(self.precision is None or self.save_faults is None,
                "eval.precision stops each rate at its own trial count: --save-faults needs a fixed eval.trials "
                "(set eval.precision=null)")
        return self

    def stopping(self) -> Optional[PrecisionRule]:
        """The adaptive stopping rule (``eval.precision``), or None: a fixed ``eval.trials``.

        >>> EvalConfig(precision=0.01, max_trials=500).stopping()
        PrecisionRule(precision=0.01, min_trials=10, max_trials=500, level=0.95)
        >>> EvalConfig().stopping() is None, EvalConfig(trials=7).most_trials(), EvalConfig(precision=0.1).most_trials()
        (True, 7, 1000)
        """
        return None if self.precision is None else PrecisionRule(self.precision, self.min_trials, self.max_trials)

    def most_trials(self) -> int:
        """The trials a rate may take: ``eval.trials``, or ``eval.max_trials`` with ``eval.precision``."""
        return self.trials if self.precision is None else self.max_trials


@dataclass
class AttackConfig:
    """``attack``: the progressive bit search (Rakin et al., ICCV 2019). ``flips``: most flips committed (the
    paper's iterations); ``k_top``: candidate bits per layer whose true loss is evaluated each iteration (not the
    paper's ``k_top``); ``rank_top``: the paper's ``k_top``, the weights per layer pre-ranked by |gradient| whose
    bits alone are candidates, positive first-order gain only (null: every weight; their setting: 10 with k_top 1);
    ``batch``: attack batch size, drawn from the training split; ``target_accuracy``: stop at or below this test
    accuracy (null: chance + 1 point); ``random_trials``: trials of the random baseline (``fault=count`` at the
    same flip counts); ``seed``: which training samples form the attack batch."""

    flips: int = 100
    k_top: int = 5
    rank_top: Optional[int] = None
    batch: int = 128
    target_accuracy: Optional[float] = None
    random_trials: int = 10
    seed: int = 0

    def validated(self) -> "AttackConfig":
        require(self.flips >= 1, f"attack.flips must be >= 1, got {self.flips}")
        require(self.k_top >= 1, f"attack.k_top must be >= 1, got {self.k_top}")
        require(self.rank_top is None or self.rank_top >= 1,
                f"attack.rank_top must be >= 1 or null (every weight), got {self.rank_top}")
        require(self.batch >= 1, f"attack.batch must be >= 1, got {self.batch}")
        require(self.target_accuracy is None or 0 <= self.target_accuracy <= 1,
                f"attack.target_accuracy must lie in [0, 1] or be null (chance + 1 point), got "
                f"{self.target_accuracy}")
        require(self.random_trials >= 1, f"attack.random_trials must be >= 1, got {self.random_trials}")
        check_seed("attack.seed", self.seed)
        return self


@dataclass
class DataConfig:
    """``data``: the data set's name and the local root its files are read from (``~`` expands); or the user's own
    callable, ``data._target_`` (``target``): its other keys are the callable's arguments, ``name`` its label.

    >>> DataConfig.from_plain({"_target_": "mypkg.data.make", "n": 100}, "data").as_dict()
    {'_target_': 'mypkg.data.make', 'name': 'make', 'n': 100}
    """

    name: str = "digits"
    root: Optional[str] = None
    target: Optional[str] = field(default=None, init=False)
    kwargs: dict = field(default_factory=dict, init=False)

    @classmethod
    def from_plain(cls, data: Any, path: str) -> "DataConfig":
        if not (isinstance(data, dict) and TARGET in data):
            return section(cls, data, path)
        target = coerce(f"{path}.{TARGET}", data[TARGET], str)
        out = cls(name=coerce(f"{path}.name", data.get("name", target_label(target)), str))
        out.target, out.kwargs = target, {k: v for k, v in data.items() if k not in (TARGET, "name")}
        return out

    def validated(self) -> "DataConfig":
        self.root = None if self.root is None else str(Path(self.root).expanduser())
        return self

    def as_dict(self) -> dict[str, Any]:
        if self.target is not None:
            return {TARGET: self.target, "name": self.name, **self.kwargs}
        return {"name": self.name, "root": self.root}


@dataclass
class PathsConfig:
    """``paths``: the outputs root (runs, sweeps, latest_checkpoint.txt)."""

    root: str = "outputs"

    def validated(self) -> "PathsConfig":
        self.root = str(Path(self.root).expanduser())
        return self


@dataclass
class SensitivityConfig:
    """``sensitivity``: how many ranked cells to print (``top``), and whether to add the protection budget curve
    (``budget``: whole-model RErr as the most sensitive cells are protected one by one)."""

    top: int = 10
    budget: bool = False

    def validated(self) -> "SensitivityConfig":
        require(self.top >= 0, f"sensitivity.top must be >= 0, got {self.top}")
        return self


DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class RunConfig:
    """The whole composed config (``conf/config.yaml``), typed. ``model`` and ``logger`` stay mappings: their keys
    are the chosen component's own arguments. ``command`` is checked against the command registry
    (``qfi_cli.commands.check``, in the pre-check and the app), which this module does not import."""

    command: str = "train"
    seed: int = 0
    device: str = "auto"
    checkpoint: Optional[str] = None
    resume: bool = False
    overwrite: bool = False
    sweep_train: bool = False
    trust_code: bool = False
    recipe: Optional[str] = None
    model: dict = field(default_factory=lambda: {"name": "digits_cnn"})
    data: DataConfig = field(default_factory=DataConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    logger: dict = field(default_factory=lambda: {"name": "csv"})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Read and validate the composed config (a plain dict; missing sections take their defaults)."""
        if isinstance(data, RunConfig):
            return data
        return section(cls, {k: v for k, v in data.items() if k != "hydra"}, "")

    def validated(self) -> "RunConfig":
        check_seed("seed", self.seed)
        require(bool(DEVICE.match(self.device)), f"unknown device {self.device!r}: use auto, cpu or cuda[:N]")
        target = self.model.get(TARGET)
        require(isinstance(self.model.get("name"), str) or isinstance(target, str),
                "model.name must name a registered model (or model._target_ your own class, e.g. mypkg.nets.MyNet)")
        if isinstance(target, str):
            self.model.setdefault("name", target_label(target))  # the label results and reports show
        init = self.model.get("init")
        require(init is None or isinstance(init, str), f"model.init must be a file path or null, got {init!r}")
        if init is not None:  # the float state_dict loaded before quantization, stored resolved
            self.model["init"] = str(Path(init).expanduser().resolve())
        if self.checkpoint is not None:
            self.checkpoint = str(Path(self.checkpoint).expanduser())
        self.fault.check_run(self, self.command)  # fault x eval / command rules: in the pre-check of every point
        return self

    def trust(self) -> Trust:
        """Which ``_target_`` a checkpoint this run loads may name: those this config names, or any with
        ``trust_code``."""
        return Trust.of(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """The plain dict (checkpoints and results store it)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        return {k: v.as_dict() if hasattr(v, "as_dict") else dataclasses.asdict(v) if dataclasses.is_dataclass(v)
                else v for k, v in out.items()}
