"""YAML -> frozen, validated configs: the trial config and the sweep spec.

Every default of the project lives here. A spec file (``search_spaces/*.yaml``) is the trial config
(sections ``data``, ``model``, ``train``, ``ham``, ``eval``) plus a ``search`` section whose every
parameter declares its distribution *and* its default (the paper's value)::

    ham:
      drop_step: 3
    search:
      params:
        ham.discard_threshold: {uniform: [0.0, 0.9], default: 0.0}
        ham.drop_step: {int: [1, train.attack_steps], default: 3}   # bound may name another key

Errors are ``SpecError``s whose message starts with the key path and says what is valid.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from hamsweep.errors import SpecError

__all__ = [
    "DATASETS",
    "METHODS",
    "MODELS",
    "DataConfig",
    "Distribution",
    "EvalConfig",
    "HamConfig",
    "ModelConfig",
    "SearchConfig",
    "SweepSpec",
    "TrainConfig",
    "TrialConfig",
    "load_spec",
    "parse_overrides",
]

DATASETS = ("cifar10", "cifar100", "svhn", "synthetic")
MODELS = ("preact_resnet18", "wrn34_10", "small_cnn")
METHODS = ("ham", "pgd_at", "trades")
SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")

_FRACTION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def _fraction(value: Any) -> Any:
    """Accept '8/255' (as YAML gives it, a string) for pixel-unit floats."""
    if isinstance(value, str) and (m := _FRACTION.match(value)):
        return float(Fraction(m.group(1)) / Fraction(m.group(2)))
    return value


PixelFloat = Annotated[float, BeforeValidator(_fraction)]


def _pixel_range(key: str, value: float | None) -> None:
    if value is None:
        return
    if value > 1:
        raise SpecError(key, f"{key} must be in (0, 1] but got {value:g}; did you mean {value:g}/255?")
    if value <= 0:
        raise SpecError(key, f"{key} must be in (0, 1] but got {value:g}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Frozen):
    name: Literal["cifar10", "cifar100", "svhn", "synthetic"] = "cifar10"
    root: str = "data"  # folder holding torchvision's files (e.g. data/cifar-10-batches-py)
    download: bool = False  # let torchvision download missing files
    val_fraction: float = 0.1  # share of each training class held out for validation, in [0, 1)
    seed: int = 0  # seeds the validation split and the synthetic data (not training)
    augment: bool = True  # random crop (pad 4) + horizontal flip (no flip for SVHN)
    # synthetic data only
    num_classes: int = 10  # classes of increasing difficulty
    image_size: int = 32  # pixels per side
    train_size: int = 5000  # images before the validation split
    test_size: int = 1000  # images in the test split

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if not 0 <= self.val_fraction < 1:
            raise SpecError("val_fraction", f"val_fraction must be in [0, 1) but got {self.val_fraction}")
        for key in ("num_classes", "image_size", "train_size", "test_size"):
            if getattr(self, key) < (2 if key == "num_classes" else 1):
                raise SpecError(key, f"{key} must be positive (num_classes >= 2) but got {getattr(self, key)}")
        return self


class ModelConfig(_Frozen):
    name: Literal["preact_resnet18", "wrn34_10", "small_cnn"] = "preact_resnet18"
    width: int = 32  # small_cnn only: channels of the first conv layer, doubled per stage

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.width < 1:
            raise SpecError("width", f"width must be >= 1 but got {self.width}")
        return self


class TrainConfig(_Frozen):
    method: Literal["ham", "pgd_at", "trades"] = "ham"
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
    trades_beta: float = 6.0  # TRADES only: weight of the KL term
    seed: int = 0  # seeds init, shuffling, augmentation, attacks and HAM's keep-easy draw
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available, else CPU
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast on the forward passes
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent GPUs)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        _pixel_range("eps", self.eps)
        _pixel_range("step_size", self.step_size)
        for key in ("epochs", "batch_size", "attack_steps"):
            if getattr(self, key) < 1:
                raise SpecError(key, f"{key} must be >= 1 but got {getattr(self, key)}")
        if self.lr <= 0:
            raise SpecError("lr", f"lr must be > 0 but got {self.lr}")
        if len(self.lr_milestones) != len(self.lr_factors):
            raise SpecError(
                "lr_factors",
                f"lr_milestones ({len(self.lr_milestones)}) and lr_factors ({len(self.lr_factors)}) "
                "must have the same length"
            )
        if any(not 0 < m <= 1 for m in self.lr_milestones) or list(self.lr_milestones) != sorted(self.lr_milestones):
            raise SpecError("lr_milestones", f"lr_milestones must be increasing fractions in (0, 1] but got {list(self.lr_milestones)}")
        return self


class HamConfig(_Frozen):
    warmup_epochs: int = 50  # epochs of plain PGD-AT before HAM starts
    drop_step: int = 3  # M: PGD steps run on the whole batch before easy AEs are dropped
    discard_threshold: float = 0.0  # tau in [0,1): easy = still correct after M steps and p_true >= tau
    keep_easy_fraction: float = 0.0  # rho in [0,1]: share of easy AEs kept anyway, drawn at random
    temperature: float | None = None  # w ~ exp(-kappa / T) over kept AEs; None = uniform weights
    loss_normalization: Literal["kept", "batch"] = "kept"  # average the loss over kept AEs or the whole batch

    @model_validator(mode="after")
    def _check(self) -> HamConfig:
        if self.warmup_epochs < 0:
            raise SpecError("warmup_epochs", f"warmup_epochs cannot be negative but got {self.warmup_epochs}")
        if self.drop_step < 1:
            raise SpecError("drop_step", f"drop_step must be >= 1 but got {self.drop_step}")
        if not 0 <= self.discard_threshold < 1:
            raise SpecError("discard_threshold", f"discard_threshold must be in [0, 1) but got {self.discard_threshold}")
        if not 0 <= self.keep_easy_fraction <= 1:
            raise SpecError("keep_easy_fraction", f"keep_easy_fraction must be in [0, 1] but got {self.keep_easy_fraction}")
        if self.temperature is not None and not self.temperature > 0:
            raise SpecError("temperature", f"temperature must be > 0 (or null for uniform weights) but got {self.temperature}")
        return self


class EvalConfig(_Frozen):
    every_epochs: int = 1  # evaluate on the validation split every N epochs (and after the last)
    attack_steps: int = 20  # PGD steps of the evaluation attack (random start)
    step_size: PixelFloat | None = None  # evaluation PGD step; None = train.eps / 4
    batch_size: int = 256
    test: bool = True  # after training, evaluate the last model on the test split
    autoattack: bool = False  # also run AutoAttack (standard, torchattacks) on the test split
    max_examples: int | None = None  # evaluate at most N examples per split (class-stratified); None = all
    cvar_fraction: float = 0.2  # CVaR-k averages the k = ceil(fraction * classes) worst classes

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        _pixel_range("step_size", self.step_size)
        for key in ("every_epochs", "attack_steps", "batch_size"):
            if getattr(self, key) < 1:
                raise SpecError(key, f"{key} must be >= 1 but got {getattr(self, key)}")
        if self.max_examples is not None and self.max_examples < 1:
            raise SpecError("max_examples", f"max_examples must be >= 1 or null but got {self.max_examples}")
        if not 0 < self.cvar_fraction <= 1:
            raise SpecError("cvar_fraction", f"cvar_fraction must be in (0, 1] but got {self.cvar_fraction}")
        return self


class TrialConfig(_Frozen):
    """Everything one training run needs; built from a spec's defaults plus overrides."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    ham: HamConfig = HamConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _check(self) -> TrialConfig:
        k, m = self.train.attack_steps, self.ham.drop_step
        if self.train.method == "ham" and m > k:
            raise SpecError(
                "ham.drop_step",
                f"{m} is larger than train.attack_steps ({k}); drop_step must be in 1..{k}",
            )
        if self.train.method == "ham" and self.ham.warmup_epochs > self.train.epochs:
            raise SpecError(
                "ham.warmup_epochs",
                f"{self.ham.warmup_epochs} is larger than train.epochs ({self.train.epochs}); "
                f"warmup_epochs must be in 0..{self.train.epochs}",
            )
        return self


TRIAL_SECTIONS = tuple(TrialConfig.model_fields)


def config_keys() -> dict[str, type[_Frozen]]:
    """Every leaf key of the trial config as 'section.field' -> the section's model."""
    keys: dict[str, type[_Frozen]] = {}
    for section, field in TrialConfig.model_fields.items():
        model = field.annotation
        for name in model.model_fields:  # type: ignore[union-attr]
            keys[f"{section}.{name}"] = model  # type: ignore[assignment]
    return keys


Bound = float | int | str  # a number, or the dotted key of an int parameter


class Distribution(_Frozen):
    """One searched parameter, written in YAML as ``{uniform: [lo, hi], default: x}``,
    ``{loguniform: [lo, hi], default: x}``, ``{int: [lo, hi], default: n}`` (``step`` optional)
    or ``{choice: [a, b, ...], default: a}``. Int bounds may name another key (``train.attack_steps``)."""

    kind: Literal["uniform", "loguniform", "int", "choice"]
    low: Bound | None = None
    high: Bound | None = None
    choices: tuple[Any, ...] | None = None
    step: int = 1  # int only
    default: Any

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise ValueError(f"must be a mapping like {{uniform: [0, 1], default: 0.5}} but got {data!r}")
        if "kind" in data:
            return data
        kinds = [k for k in DISTRIBUTIONS if k in data]
        if len(kinds) != 1:
            raise ValueError(f"needs exactly one of {', '.join(DISTRIBUTIONS)} but got keys {sorted(data)}")
        if "default" not in data:
            raise ValueError("needs a default (the value used by `hamsweep train` and as the paper's setting)")
        kind, rest = kinds[0], {k: v for k, v in data.items() if k != kinds[0]}
        value = data[kind]
        if not isinstance(value, (list, tuple)) or (kind != "choice" and len(value) != 2) or not value:
            form = "a non-empty list" if kind == "choice" else "a list [low, high]"
            raise ValueError(f"{kind} takes {form} but got {value!r}")
        if kind == "choice":
            return {"kind": kind, "choices": tuple(value), **rest}
        return {"kind": kind, "low": _fraction(value[0]), "high": _fraction(value[1]), **rest}

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if self.kind == "choice":
            if self.default not in self.choices:  # type: ignore[operator]
                raise ValueError(f"default {self.default!r} is not one of the choices {list(self.choices or ())}")
            return self
        for name in ("low", "high"):
            bound = getattr(self, name)
            if isinstance(bound, str) and self.kind != "int":
                raise ValueError(f"{self.kind} bounds must be numbers; only int bounds may name a key, got {bound!r}")
        if self.kind == "loguniform" and isinstance(self.low, (int, float)) and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0 but got {self.low}")
        if self.kind == "int" and not isinstance(self.default, int):
            raise ValueError(f"int default must be an integer but got {self.default!r}")
        if self.kind != "int" and not isinstance(self.default, (int, float)):
            raise ValueError(f"{self.kind} default must be a number but got {self.default!r}")
        return self

    def bounds(self, values: Mapping[str, Any]) -> tuple[float, float]:
        """(low, high) with key references looked up in the already-chosen ``values``."""
        lo, hi = (values[b] if isinstance(b, str) else b for b in (self.low, self.high))
        return lo, hi

    def contains(self, value: Any, values: Mapping[str, Any]) -> bool:
        if self.kind == "choice":
            return value in self.choices  # type: ignore[operator]
        lo, hi = self.bounds(values)
        return lo <= value <= hi


class SearchConfig(_Frozen):
    sampler: Literal["tpe", "random", "cmaes", "gp", "nsga2"] = "tpe"
    seed: int = 0  # seeds the sampler
    num_samples: int = 8  # trials in the sweep
    max_concurrent: int = 1  # trials running at once
    params: dict[str, Distribution] = {}  # 'section.field' -> distribution with its default

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        if self.num_samples < 1 or self.max_concurrent < 1:
            raise SpecError("num_samples", "num_samples and max_concurrent must be >= 1")
        return self


class SweepSpec(TrialConfig):
    """A spec file: the trial config's sections plus ``name`` and ``search``."""

    name: str = "sweep"
    search: SearchConfig = SearchConfig()

    @model_validator(mode="after")
    def _check_params(self) -> SweepSpec:
        keys = config_keys()
        for key, dist in self.search.params.items():
            if key not in keys:
                raise SpecError(f"search.params.{key}", f"unknown key; valid keys are {', '.join(keys)}")
            for bound in (dist.low, dist.high):
                if isinstance(bound, str) and bound not in keys:
                    raise SpecError(f"search.params.{key}", f"bound {bound!r} is not a config key")
        values = flat(self.trial_config())  # the defaults must form a valid trial
        for key, dist in self.search.params.items():
            if dist.kind == "choice":
                self._check_values(key, dist.choices or ())
                continue
            lo, hi = dist.bounds(values)
            if lo > hi:
                raise SpecError(f"search.params.{key}", f"low {lo} is larger than high {hi}")
            if not dist.contains(dist.default, values):
                raise SpecError(f"search.params.{key}", f"default {dist.default} is outside [{lo}, {hi}]")
            self._check_values(key, (lo, hi))
        return self

    def _check_values(self, key: str, candidates: Iterable[Any]) -> None:
        """Each end of a range, each choice, must itself be a valid value of ``key``."""
        for value in candidates:
            try:
                self.trial_config({key: value})
            except SpecError as err:
                raise SpecError(f"search.params.{key}", f"{value!r} can be sampled but is invalid: {err}") from None

    def base(self) -> dict[str, Any]:
        """The trial sections as plain data, without ``name`` and ``search``."""
        return {s: getattr(self, s).model_dump() for s in TRIAL_SECTIONS}

    def defaults(self) -> dict[str, Any]:
        """Each searched key -> its declared default."""
        return {key: dist.default for key, dist in self.search.params.items()}

    def trial_config(self, overrides: Mapping[str, Any] | None = None) -> TrialConfig:
        """The spec's sections, then the searched defaults, then ``overrides`` ('section.field' keys)."""
        data = self.base()
        for key, value in {**self.defaults(), **(overrides or {})}.items():
            _assign(data, key, value)
        return validate(TrialConfig, data)


def flat(cfg: TrialConfig) -> dict[str, Any]:
    """The trial config as {'section.field': value}."""
    return {f"{s}.{k}": v for s in TRIAL_SECTIONS for k, v in getattr(cfg, s).model_dump().items()}


def config_diff(saved: Mapping[str, Any], cfg: TrialConfig) -> list[str]:
    """The 'section.field' keys where ``saved`` (a dumped config, e.g. from a run folder) differs from ``cfg``."""
    given = cfg.model_dump(mode="json")
    return [f"{s}.{k}" for s in given for k in given[s] if (saved.get(s) or {}).get(k) != given[s][k]]


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    keys = config_keys()
    if key not in keys:
        section = key.split(".")[0]
        valid = [k for k in keys if k.startswith(section + ".")] or list(keys)
        raise SpecError(key, f"unknown key; valid keys are {', '.join(valid)}")
    section, field = key.split(".")
    data[section][field] = value


def _format_error(err: ValidationError, prefix: str = "") -> SpecError:
    """The first pydantic error as one line: 'key.path: what is wrong (got value)'."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    cause = (e.get("ctx") or {}).get("error")
    if isinstance(cause, SpecError):  # raised by one of our validators: its key is below `loc`
        key = ".".join(p for p in (prefix, loc, cause.key) if p)
        return SpecError(key, str(cause).removeprefix(f"{cause.key}: "))
    key = ".".join(p for p in (prefix, loc) if p)
    if e["type"] == "extra_forbidden":
        parent, _, name = loc.rpartition(".")
        model = _model_at(parent)
        valid = ", ".join(model.model_fields) if model else "see the docs"
        return SpecError(key, f"unknown key {name!r}; valid keys here are {valid}")
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] != "value_error" and "input" in e and not isinstance(e["input"], (dict, list)):
        msg += f" (got {e['input']!r})"
    return SpecError(key, msg)


def _model_at(path: str) -> type[BaseModel] | None:
    model: Any = SweepSpec
    for part in filter(None, path.split(".")):
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def validate(model: type[_Frozen], data: Any, prefix: str = "") -> Any:
    """``model.model_validate(data)`` with errors turned into one-line ``SpecError``s."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _format_error(err, prefix) from None


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; every problem is a one-line ``SpecError`` naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), "no such spec file; pass a YAML file such as search_spaces/smoke.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(str(path), f"is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise SpecError(str(path), f"must be a mapping of sections ({', '.join(SweepSpec.model_fields)})")
    data.setdefault("name", path.stem)
    try:
        return validate(SweepSpec, data)
    except SpecError as err:
        raise SpecError(f"{path}: {err.key}" if err.key else str(path), str(err).split(": ", 1)[-1]) from None


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``['ham.drop_step=3', 'ham.temperature=null']`` -> ``{'ham.drop_step': 3, ...}`` (values as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError("--set", f"expected KEY=VALUE such as ham.drop_step=3 but got {item!r}")
        try:
            out[key.strip()] = _fraction(yaml.safe_load(raw))
        except yaml.YAMLError:
            raise SpecError(key.strip(), f"value {raw!r} is not valid YAML") from None
    return out
