"""The trial config: sections ``data``, ``model``, ``train``, one per training method that has knobs
(``ham``; each declared by its module in ``hamsweep.core.methods``), ``eval``; every field with its
default and unit. Every default of the project lives here or in a method's module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import create_model, model_validator

from hamsweep.core import methods
from hamsweep.core.datasets import DATASETS as DATASETS  # re-exported: spec.DATASETS
from hamsweep.core.datasets import IMAGE_DATASETS
from hamsweep.core.methods.ham import HamConfig as HamConfig  # re-exported: spec.HamConfig
from hamsweep.errors import SpecError
from hamsweep.spec._base import PixelFloat, _Frozen, at_least, pixel_range

MODELS = ("preact_resnet18", "wrn34_10", "small_cnn")
METHODS = methods.names()  # every module of hamsweep.core.methods
MethodName = Literal[METHODS]  # type: ignore[valid-type]
# what a sweep may maximise, always on the validation split; each is the column
# ``robust_<summary>`` of the ``epochs`` table (worst class, CVaR of the worst classes, Wilson lower
# bound of the worst, mean)
OBJECTIVES = ("worst_robust", "cvar_robust", "lcb_robust", "mean_robust")
Objective = Literal["worst_robust", "cvar_robust", "lcb_robust", "mean_robust"]


def objective_summary(objective: str) -> str:
    """'worst_robust' -> 'worst': the key of ``metrics.summarize`` the objective reads."""
    return objective.removesuffix("_robust")


# pixels a side: below it the crop padding and the models' strides leave nothing to learn
MIN_IMAGE_SIZE = 8


DatasetName = Literal[DATASETS]  # type: ignore[valid-type]


class DataConfig(_Frozen):
    name: DatasetName = "cifar10"  # one of DATASETS (hamsweep.core.datasets)
    # folder holding torchvision's files (e.g. data/cifar-10-batches-py); imagefolder:
    # train/ and test/
    root: str = "data"
    download: bool = False  # let torchvision download missing files
    val_fraction: float = 0.1  # share of each training class held out for validation, in [0, 1)
    seed: int = 0  # seeds the validation split and the synthetic data (not training)
    augment: bool = True  # random crop (pad 4) + horizontal flip (no flip for SVHN)
    # pixels per side: synthetic data's, and imagenette, stl10, imagefolder are resized to it
    image_size: int = 32
    # synthetic data only
    num_classes: int = 10  # classes of increasing difficulty
    train_size: int = 5000  # images before the validation split
    test_size: int = 1000  # images in the test split
    # in (0, 1]: how far the hardest class goes toward the hardest setting (1 = classes 0-2 fully
    # robust, the last near 0)
    hardest: float = 1.0

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if not 0 <= self.val_fraction < 1:
            raise SpecError(
                "val_fraction", f"val_fraction must be in [0, 1) but got {self.val_fraction}"
            )
        if not 0 < self.hardest <= 1:
            raise SpecError("hardest", f"hardest must be in (0, 1] but got {self.hardest}")
        for key in ("num_classes", "image_size", "train_size", "test_size"):
            if getattr(self, key) < (2 if key == "num_classes" else 1):
                raise SpecError(
                    key, f"{key} must be positive (num_classes >= 2) but got {getattr(self, key)}"
                )
        if self.name in IMAGE_DATASETS and self.image_size < MIN_IMAGE_SIZE:
            raise SpecError(
                "image_size",
                f"{self.image_size} is too small for {self.name}: "
                f"image_size must be >= {MIN_IMAGE_SIZE} pixels a side",
            )
        return self


class ModelConfig(_Frozen):
    name: Literal["preact_resnet18", "wrn34_10", "small_cnn"] = "preact_resnet18"
    width: int = 32  # small_cnn only: channels of the first conv layer, doubled per stage

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        at_least(self, 1, "width")
        return self


class TrainConfig(_Frozen):
    method: MethodName = "ham"  # the training method: one of METHODS
    epochs: int = 120
    batch_size: int = 128  # examples per optimizer step (before HAM discards easy AEs)
    lr: float = 0.1  # initial SGD learning rate
    momentum: float = 0.9
    weight_decay: float = 2e-4
    lr_milestones: tuple[float, ...] = (1 / 2, 3 / 4, 11 / 12)  # fractions of `epochs`
    lr_factors: tuple[float, ...] = (0.1, 0.01, 0.005)  # lr = lr * factor from each milestone on
    eps: PixelFloat = 8 / 255  # L-inf radius of the training attack, in [0,1] pixel units
    step_size: PixelFloat = 2 / 255  # PGD step size, pixel units
    attack_steps: int = 10  # K: PGD steps of the training attack
    trades_beta: float = 6.0  # TRADES only (methods/trades.py): weight of the KL term
    seed: int = 0  # seeds init, shuffling, augmentation, attacks and HAM's keep-easy draw
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available, else CPU
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast on the forward passes
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent GPUs)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        pixel_range("eps", self.eps)
        pixel_range("step_size", self.step_size)
        at_least(self, 1, "epochs", "batch_size", "attack_steps")
        if self.lr <= 0:
            raise SpecError("lr", f"lr must be > 0 but got {self.lr}")
        if len(self.lr_milestones) != len(self.lr_factors):
            raise SpecError(
                "lr_factors",
                f"lr_milestones ({len(self.lr_milestones)}) and "
                f"lr_factors ({len(self.lr_factors)}) must have the same length",
            )
        if any(not 0 < m <= 1 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(
            self.lr_milestones
        ):
            raise SpecError(
                "lr_milestones",
                "lr_milestones must be increasing fractions in (0, 1] "
                f"but got {list(self.lr_milestones)}",
            )
        return self


class EvalConfig(_Frozen):
    every_epochs: int = 1  # evaluate on the validation split every N epochs (and after the last)
    attack_steps: int = 20  # PGD steps of the evaluation attack (random start)
    step_size: PixelFloat | None = None  # evaluation PGD step; None = train.eps / 4
    batch_size: int = 256
    test: bool = True  # after training, evaluate the last model on the test split
    autoattack: bool = False  # also run AutoAttack (standard, torchattacks) on the test split
    # evaluate at most N examples per split (class-stratified); None = all
    max_examples: int | None = None
    cvar_fraction: float = 0.2  # CVaR-k averages the k = ceil(fraction * classes) worst classes
    # best.pt = the epoch with the highest value of this (validation)
    select_by: Objective = "worst_robust"

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        pixel_range("step_size", self.step_size)
        at_least(self, 1, "every_epochs", "attack_steps", "batch_size")
        if self.max_examples is not None and self.max_examples < 1:
            raise SpecError(
                "max_examples", f"max_examples must be >= 1 or null but got {self.max_examples}"
            )
        if not 0 < self.cvar_fraction <= 1:
            raise SpecError(
                "cvar_fraction", f"cvar_fraction must be in (0, 1] but got {self.cvar_fraction}"
            )
        return self


class _Trial(_Frozen):
    """The trial config's fixed sections and its checks; ``TrialConfig`` adds the methods'."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _check(self) -> _Trial:
        methods.get(self.train.method).check(self)  # e.g. ham.drop_step <= train.attack_steps
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a config pickled before a method's section existed (the searcher in Tune's snapshot of an
        # older sweep folder) gets that section's defaults, as ``config_diff`` reads a missing key
        fields = type(self).model_fields
        missing = {k: f.default for k, f in fields.items() if k not in state["__dict__"]}
        super().__setstate__({**state, "__dict__": {**state["__dict__"], **missing}})

    def selectable(self, epoch: int) -> bool:
        """Can 1-based ``epoch`` be this trial's best (``best.pt``, its best objective)? Its method
        says (a HAM trial's best is a HAM epoch, ``ham.select_after_warmup``:
        ``Ham.selectable``)."""
        return methods.get(self.train.method).selectable(self, epoch)

    def fork_epoch(self) -> int | None:
        """The epoch this trial forks from the PGD-AT trunk at (``ham.warmup_epochs`` for HAM when
        it is neither 0 nor the whole run); None: it trains from scratch."""
        return methods.get(self.train.method).fork_epoch(self)


def _method_sections() -> dict[str, Any]:
    """Each method with knobs -> its section (named after it), with the section's defaults."""
    found = (methods.get(name) for name in METHODS)
    return {m.name: (m.config, m.config()) for m in found if m.config is not None}


# Everything one training run needs; built from a spec's defaults plus overrides. The sections in
# order: data, model, train, the methods' (today ham), eval. Built here so that a new method's
# section needs no edit of this file; its module and name are TrialConfig's, as pickles name it.
TrialConfig = create_model(
    "TrialConfig",
    __base__=_Trial,
    __module__=__name__,
    __doc__="Everything one training run needs; built from a spec's defaults plus overrides.",
    **_method_sections(),
    eval=(EvalConfig, EvalConfig()),
)

TRIAL_SECTIONS = tuple(TrialConfig.model_fields)

# What cannot change a HAM trial's warm-up epochs (plain PGD-AT, epochs 1..ham.warmup_epochs): the
# method (the warm-up is PGD-AT whatever it is) and every key only a method reads (``Method.keys``:
# its section, e.g. every HAM knob, read only after the warm-up, ``warmup_epochs`` itself only
# saying where the warm-up ends; and TRADES' beta). Everything else does: data (and the validation
# split), the model, the optimizer and its schedule (``lr_milestones`` are fractions of
# ``train.epochs``), the attack, the seed, precision and device, and ``eval`` (each warm-up epoch's
# per-class validation counts, and the best epoch so far, are part of the warm-up).
WARMUP_FREE_KEYS = (
    "train.method",
    *(key for name in METHODS for key in methods.get(name).own_keys()),
)


def warmup_part(cfg: TrialConfig) -> dict[str, Any]:
    """The keys of ``cfg`` that its warm-up epochs depend on ('section.field' -> value)."""
    return {k: v for k, v in flat(cfg).items() if k not in WARMUP_FREE_KEYS}


def warmup_key(cfg: TrialConfig) -> str:
    """A short id of ``warmup_part(cfg)``: trials with the same key have bit-identical warm-ups."""
    import hashlib
    import json

    text = json.dumps(warmup_part(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def config_keys() -> dict[str, type[_Frozen]]:
    """Every leaf key of the trial config as 'section.field' -> the section's model."""
    keys: dict[str, type[_Frozen]] = {}
    for section, field in TrialConfig.model_fields.items():
        model = field.annotation
        for name in model.model_fields:  # type: ignore[union-attr]
            keys[f"{section}.{name}"] = model  # type: ignore[assignment]
    return keys


def flat(cfg: TrialConfig) -> dict[str, Any]:
    """The trial config as {'section.field': value}."""
    return {f"{s}.{k}": v for s in TRIAL_SECTIONS for k, v in getattr(cfg, s).model_dump().items()}


def config_diff(saved: Mapping[str, Any], cfg: TrialConfig) -> list[str]:
    """The 'section.field' keys where ``saved`` (a dumped config, e.g. from a run folder) differs
    from ``cfg``. A key ``saved`` lacks (written before the key existed) counts as its default."""
    given, keys = cfg.model_dump(mode="json"), config_keys()

    def was(s: str, k: str) -> Any:
        section = saved.get(s) or {}
        return section[k] if k in section else keys[f"{s}.{k}"].model_fields[k].default

    return [f"{s}.{k}" for s in given for k in given[s] if was(s, k) != given[s][k]]


def assign(data: dict[str, Any], key: str, value: Any) -> None:
    keys = config_keys()
    if key not in keys:
        section = key.split(".")[0]
        valid = [k for k in keys if k.startswith(section + ".")] or list(keys)
        raise SpecError(key, f"unknown key; valid keys are {', '.join(valid)}")
    section, field = key.split(".")
    data[section][field] = value
