"""The sweep spec: a trial config plus ``name``, ``objective``, ``search`` (each searched parameter
with its distribution and its default), ``scheduler``, ``resources``, ``budget`` and ``confirm``;
and the readers of spec files and ``--set`` overrides."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from hamsweep.core import methods as registry
from hamsweep.errors import SpecError
from hamsweep.spec._base import _Frozen, at_least, fraction, validate
from hamsweep.spec.trial import (
    OBJECTIVES,
    TRIAL_SECTIONS,
    WARMUP_FREE_KEYS,
    Objective,
    TrialConfig,
    assign,
    config_keys,
    flat,
)

SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2")
SCHEDULERS = ("asha", "none")
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "random", "gp", "nsga2")  # CMA-ES optimises one objective only
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")

Bound = float | int | str  # a number, or the dotted key of an int parameter


class Distribution(_Frozen):
    """One searched parameter, written in YAML as ``{uniform: [lo, hi], default: x}``,
    ``{loguniform: [lo, hi], default: x}``, ``{int: [lo, hi], default: n}`` (``step`` optional)
    or ``{choice: [a, b, ...], default: a}``. Int bounds may name another key
    (``train.attack_steps``)."""

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
            raise ValueError(
                f"must be a mapping like {{uniform: [0, 1], default: 0.5}} but got {data!r}"
            )
        if "kind" in data:
            return data
        kinds = [k for k in DISTRIBUTIONS if k in data]
        if len(kinds) != 1:
            raise ValueError(
                f"needs exactly one of {', '.join(DISTRIBUTIONS)} but got keys {sorted(data)}"
            )
        if "default" not in data:
            raise ValueError(
                "needs a default (the value used by `hamsweep train` and as the paper's setting)"
            )
        kind, rest = kinds[0], {k: v for k, v in data.items() if k != kinds[0]}
        value = data[kind]
        if (
            not isinstance(value, (list, tuple))
            or (kind != "choice" and len(value) != 2)
            or not value
        ):
            form = "a non-empty list" if kind == "choice" else "a list [low, high]"
            raise ValueError(f"{kind} takes {form} but got {value!r}")
        if kind == "choice":
            return {"kind": kind, "choices": tuple(value), **rest}
        return {"kind": kind, "low": fraction(value[0]), "high": fraction(value[1]), **rest}

    @model_validator(mode="after")
    def _check(self) -> Distribution:
        if self.kind == "choice":
            if self.default not in self.choices:  # type: ignore[operator]
                raise ValueError(
                    f"default {self.default!r} is not one of the choices {list(self.choices or ())}"
                )
            return self
        for name in ("low", "high"):
            bound = getattr(self, name)
            if isinstance(bound, str) and self.kind != "int":
                raise ValueError(
                    f"{self.kind} bounds must be numbers; only "
                    f"int bounds may name a key, got {bound!r}"
                )
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


METHOD_KEY = "train.method"  # the key a comparison of methods (search.methods) sets per trial


# what a method's ``set`` may fix: its training; the data, the model and the evaluation are the
# comparison's, the same for every method
_SETTABLE = ("train",)
_NOT_SETTABLE = (METHOD_KEY, "train.seed")  # each method is its own; the seeds are the stages'


class MethodSearch(_Frozen):
    """One method of a comparison (``search.methods``): the parameters searched for it alone, and
    the values fixed for it alone (its published schedule)."""

    params: dict[str, Distribution] = {}  # 'section.field' -> distribution with its default
    # 'section.field' -> the value every trial of this method trains with, over the spec's
    # sections: its own schedule (train.epochs, train.lr_milestones, ...). A method whose schedule
    # differs forks from a PGD-AT trunk of its own, and is paired with PGD-AT on its schedule
    set: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _fractions(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("set"), dict):
            data = {**data, "set": {k: fraction(v) for k, v in data["set"].items()}}
        return data


class SearchConfig(_Frozen):
    sampler: Literal["tpe", "random", "cmaes", "gp", "nsga2"] = "tpe"  # Optuna sampler
    seed: int = 0  # seeds the sampler
    # trials in the sweep; with ``methods``: per method, so every method gets the same number
    # (with ``method_hours``: the most a method may get)
    num_samples: int = 8
    max_concurrent: int = 1  # trials running at once
    start_with_defaults: bool = True  # the first trial runs every default (the paper's setting)
    # HAM trials fork from one PGD-AT run per distinct warm-up config (a trunk, which is also the
    # sweep's PGD-AT baseline) instead of each repeating its warm-up; false
    # = every trial from scratch
    share_warmup: bool = True
    params: dict[str, Distribution] = {}  # 'section.field' -> distribution with its default
    # a comparison: method name -> what is searched for it alone (``params`` are searched for every
    # method); each method has its own sampler state (no method's trials teach another's) and
    # ``num_samples`` trials; empty: every trial trains ``train.method``
    methods: dict[str, MethodSearch] = {}
    # a comparison's budget rule: null = the same number of trials for each method (num_samples);
    # a number = the same device-hours (GPU-hours; CPU-hours where resources.gpu is 0) of search
    # for each: a cheaper method gets more trials, up to num_samples, and a method's trials stop
    # once its hours are spent (its own cost after the fork; the shared trunk is every method's)
    method_hours: float | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        at_least(self, 1, "num_samples", "max_concurrent")
        if self.method_hours is not None and not self.method_hours > 0:
            raise SpecError(
                "method_hours",
                f"must be > 0 device-hours per method (or null: the same number of trials for "
                f"each) but got {self.method_hours}",
            )
        if self.method_hours is not None and not self.methods:
            raise SpecError(
                "method_hours",
                "is a comparison's budget rule; list the methods compared in search.methods, "
                "or drop it (budget.gpu_hours limits a sweep of one method)",
            )
        for name, m in self.methods.items():
            for key in m.set:
                _check_settable(name, key, {**self.params, **m.params})
            for key, dist in m.params.items():
                if key == METHOD_KEY:
                    raise SpecError(
                        f"methods.{name}.params.{key}", "each method is its own; drop this key"
                    )
                if key in self.params:
                    raise SpecError(
                        f"methods.{name}.params.{key}",
                        "is searched for every method (search.params) already; give it once",
                    )
                other = next((o for o, om in self.methods.items() if key in om.params), name)
                if other != name and self.methods[other].params[key] != dist:
                    raise SpecError(
                        f"methods.{name}.params.{key}",
                        f"differs from methods.{other}.params.{key}; one study keeps one "
                        "distribution per key, so give both methods the same",
                    )
        if self.methods and METHOD_KEY in self.params:
            raise SpecError(
                f"params.{METHOD_KEY}", "search.methods names the methods; drop this key"
            )
        return self

    @property
    def trials(self) -> int:
        """Search trials in all: ``num_samples``, per method in a comparison."""
        return self.num_samples * max(len(self.methods), 1)

    @property
    def space(self) -> dict[str, Distribution]:
        """Every searched key: ``params``, and in a comparison each method's and ``train.method``
        itself (a choice of the methods: the trials table's method column)."""
        if not self.methods:
            return dict(self.params)
        names = list(self.methods)
        out: dict[str, Distribution] = {
            METHOD_KEY: Distribution(kind="choice", choices=tuple(names), default=names[0])
        }
        out.update(self.params)
        for m in self.methods.values():
            out.update(m.params)
        return out

    def method_params(self, method: str | None) -> dict[str, Distribution]:
        """What a trial of ``method`` searches: ``params`` and that method's own."""
        own = self.methods[method].params if method in self.methods else {}
        return {**self.params, **own}


class ObjectiveConfig(_Frozen):
    """What the sweep maximises, always measured on the validation split (never the test split)."""

    # a list = multi-objective (e.g. nsga2)
    metric: Objective | tuple[Objective, ...] = "worst_robust"
    mode: Literal["max"] = "max"  # accuracies are maximised

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.metric if isinstance(self.metric, tuple) else (self.metric,)

    @property
    def primary(self) -> str:
        """The metric ASHA compares, best.pt is chosen by, and results are sorted by."""
        return self.metrics[0]

    @model_validator(mode="after")
    def _check(self) -> ObjectiveConfig:
        if not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise SpecError(
                "metric",
                f"needs one metric or a list of distinct ones from {', '.join(OBJECTIVES)}",
            )
        return self


class SchedulerConfig(_Frozen):
    """Early stopping of weak trials. ASHA compares trials on the objective at each rung."""

    name: Literal["asha", "none"] = "asha"
    grace_period: int = 1  # epochs every trial runs before ASHA may stop it
    # ASHA keeps the best 1/reduction_factor of the trials at each rung
    reduction_factor: float = 3.0
    max_epochs: int | None = None  # ASHA's max_t, in epochs; None = train.epochs

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data  # `scheduler: none`

    @model_validator(mode="after")
    def _check(self) -> SchedulerConfig:
        if self.grace_period < 1:
            raise SpecError(
                "grace_period", f"grace_period must be >= 1 epoch but got {self.grace_period}"
            )
        if self.reduction_factor <= 1:
            raise SpecError(
                "reduction_factor", f"reduction_factor must be > 1 but got {self.reduction_factor}"
            )
        return self


class ResourcesConfig(_Frozen):
    """What one trial reserves; Ray packs as many trials as fit (fractional GPUs share a device)."""

    cpu: float = 1.0  # CPU cores per trial (also torch's thread count in the trial)
    gpu: float = 0.0  # GPUs per trial; 0.5 = two trials share one GPU

    @property
    def device(self) -> str:
        """What a trial's cost is counted in: 'gpu' when it reserves GPUs, else 'cpu'."""
        return "gpu" if self.gpu > 0 else "cpu"

    @property
    def devices(self) -> float:
        """How many of ``device`` a trial reserves: its device-seconds are wall seconds x this."""
        return self.gpu if self.gpu > 0 else self.cpu

    @model_validator(mode="after")
    def _check(self) -> ResourcesConfig:
        if self.cpu <= 0:
            raise SpecError("cpu", f"cpu must be > 0 but got {self.cpu}")
        if self.gpu < 0 or (self.gpu > 1 and self.gpu != int(self.gpu)):
            raise SpecError(
                "gpu", f"gpu must be a fraction in [0, 1] or a whole number but got {self.gpu}"
            )
        return self


class BudgetConfig(_Frozen):
    """Limits of the whole sweep: no new trial starts and running ones stop once one is reached."""

    wall_hours: float | None = None  # wall-clock hours of the sweep (resumes continue the count)
    gpu_hours: float | None = None  # sum over trials of wall time x resources.gpu, in hours

    @model_validator(mode="after")
    def _check(self) -> BudgetConfig:
        for key in ("wall_hours", "gpu_hours"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise SpecError(key, f"{key} must be > 0 (or null for no limit) but got {value}")
        return self


class ConfirmConfig(_Frozen):
    """After the search, the one stage that touches the test split: the ``top_k`` completed trials
    (by the validation objective) and the PGD-AT baseline, retrained on ``seeds`` new values of
    ``train.seed`` and evaluated per class on the test split from their best checkpoints (chosen on
    validation, as in the search), with intervals over seeds (``hamsweep.sweep.confirm``).
    ``seeds: 0`` retrains nothing: the search's own best checkpoints are evaluated on the test
    split, one seed, no interval (what ``final_eval`` did before)."""

    top_k: int = 3  # configs confirmed; 0 = no confirm stage (the test split is never touched)
    # new train.seed values per config and for the PGD-AT baseline; 0 = the search's checkpoints.
    # In YAML also {min: 3, max: 10, step: 1}: seeds added in rounds (below)
    seeds: int = 3
    # seeds in rounds: while a config's difference to PGD-AT is undecided by the group-sequential
    # test (hamsweep.core.sequential), ``round_seeds`` more seeds each round, up to ``max_seeds``;
    # None: ``seeds`` only, one ordinary paired t-test
    max_seeds: int | None = None
    round_seeds: int = 1  # seeds added per round
    spending: Literal["obrien_fleming", "pocock"] = "obrien_fleming"  # the test's spending rule
    # train the new seeds' PGD-AT baselines in slots the search leaves idle, when the search cannot
    # change them (no searched key touches the warm-up); false: only once the search has ended
    early: bool = True
    # in a comparison (search.methods), TRADES at its defaults (the spec's train section) is
    # confirmed beside each method's best and PGD-AT, on the same seeds, whether or not it is one of
    # the methods: the field's second reference; false: only the methods' best and PGD-AT
    trades: bool = True
    autoattack: bool = False  # also AutoAttack (standard), besides PGD-``eval.attack_steps``
    # training-split examples (class-stratified) each confirm trial's best checkpoint is also
    # attacked on (PGD-``eval.attack_steps``, not AutoAttack): each config's class ranks on the
    # training, validation and test splits (the report's rank agreement). None = as many as the
    # test split; 0 = none
    train_examples: int | None = None
    confidence: float = 0.95  # two-sided coverage of every interval in the confirm tables
    # a sweep pickled before early baselines (the TRADES reference, the training split) had none
    _before_field: ClassVar[dict[str, Any]] = {"early": False, "trades": False, "train_examples": 0}

    @model_validator(mode="before")
    @classmethod
    def _seed_range(cls, data: Any) -> Any:
        """``seeds: {min: 3, max: 10, step: 1}`` is seeds, max_seeds and round_seeds."""
        if not isinstance(data, Mapping) or not isinstance(data.get("seeds"), Mapping):
            return data
        given = dict(data["seeds"])
        if unknown := sorted(set(given) - {"min", "max", "step"}):
            raise SpecError(
                "seeds", f"takes min, max and step (seeds per round) but got {', '.join(unknown)}"
            )
        if "min" not in given or "max" not in given:
            raise SpecError("seeds", "needs both min and max, e.g. {min: 3, max: 10}")
        rest = {k: v for k, v in data.items() if k != "seeds"}
        return {
            **rest,
            "seeds": given["min"],
            "max_seeds": given["max"],
            **({"round_seeds": given["step"]} if "step" in given else {}),
        }

    @model_validator(mode="after")
    def _check(self) -> ConfirmConfig:
        at_least(self, 0, "top_k", "seeds")
        at_least(self, 1, "round_seeds")
        if self.train_examples is not None:
            at_least(self, 0, "train_examples")
        if not 0 < self.confidence < 1:
            raise SpecError("confidence", f"confidence must be in (0, 1) but got {self.confidence}")
        if self.max_seeds is not None and not 2 <= self.seeds <= self.max_seeds:
            raise SpecError(
                "seeds",
                f"seeds in rounds need 2 <= min ({self.seeds}) <= max ({self.max_seeds}): "
                "one seed has no spread to test with",
            )
        return self

    @property
    def retrains(self) -> bool:
        return self.top_k > 0 and self.seeds > 0

    @property
    def most_seeds(self) -> int:
        """The seeds a config can get in all: ``max_seeds`` in rounds, else ``seeds``."""
        return self.max_seeds if self.max_seeds is not None else self.seeds


class SweepSpec(TrialConfig):
    """A spec file: the trial config's sections plus ``name``, ``objective``, ``search``,
    ``scheduler``, ``resources``, ``budget`` and ``confirm``."""

    name: str = "sweep"
    objective: ObjectiveConfig = ObjectiveConfig()
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    budget: BudgetConfig = BudgetConfig()
    confirm: ConfirmConfig = ConfirmConfig()

    @model_validator(mode="before")
    @classmethod
    def _final_eval(cls, data: Any) -> Any:
        """``final_eval: {top_k, autoattack}`` of specs (and sweep folders) before the confirm stage
        is ``confirm`` with ``seeds: 0``: the same evaluation of the search's own checkpoints."""
        if not isinstance(data, Mapping) or "final_eval" not in data:
            return data
        if "confirm" in data:
            raise SpecError(
                "final_eval", "is the older name of confirm (with seeds: 0); give only confirm"
            )
        old = data["final_eval"] or {}
        if not isinstance(old, Mapping):
            raise SpecError("final_eval", f"must be a mapping like {{top_k: 1}} but got {old!r}")
        rest = {k: v for k, v in data.items() if k != "final_eval"}
        return {**rest, "confirm": {"seeds": 0, "top_k": 1, **old}}

    @model_validator(mode="before")
    @classmethod
    def _select_by(cls, data: Any) -> Any:
        """A sweep selects checkpoints by its objective: an ``eval.select_by`` that says
        otherwise is a mistake."""
        if not isinstance(data, Mapping) or not isinstance(data.get("eval"), Mapping):
            return data
        metric = (
            (data.get("objective") or {}).get("metric", "worst_robust")
            if isinstance(data.get("objective"), (Mapping, type(None)))
            else None
        )
        primary = metric[0] if isinstance(metric, (list, tuple)) and metric else metric
        given = data["eval"].get("select_by")
        if given is not None and primary is not None and given != primary:
            raise SpecError(
                "eval.select_by",
                f"{given} differs from objective.metric ({primary}); a sweep selects checkpoints "
                "by its objective, so drop eval.select_by",
            )
        return data

    @model_validator(mode="after")
    def _check_sweep(self) -> SweepSpec:
        multi = len(self.objective.metrics) > 1
        if multi and self.search.sampler not in MULTI_OBJECTIVE_SAMPLERS:
            raise SpecError(
                "search.sampler",
                f"{self.search.sampler} optimises one objective; with several objective.metric "
                f"use one of {', '.join(MULTI_OBJECTIVE_SAMPLERS)}",
            )
        # only the default can differ (see _select_by)
        if self.eval.select_by != self.objective.primary:
            object.__setattr__(
                self, "eval", self.eval.model_copy(update={"select_by": self.objective.primary})
            )
        s, epochs = self.scheduler, self.train.epochs
        if s.max_epochs is not None and not s.grace_period <= s.max_epochs <= epochs:
            raise SpecError(
                "scheduler.max_epochs",
                f"{s.max_epochs} must be in {s.grace_period}..{epochs} "
                "(grace_period..train.epochs)",
            )
        if s.name == "asha" and s.grace_period > epochs:
            raise SpecError(
                "scheduler.grace_period", f"{s.grace_period} is larger than train.epochs ({epochs})"
            )
        for m in self.search.methods:
            if s.name == "asha" and s.grace_period > self.epochs(m):
                raise SpecError(
                    "scheduler.grace_period",
                    f"{s.grace_period} is larger than {m}'s train.epochs "
                    f"({self.epochs(m)}, search.methods.{m}.set)",
                )
        return self

    @model_validator(mode="after")
    def _check_params(self) -> SweepSpec:
        keys, valid = config_keys(), registry.names()
        for name in self.search.methods:
            if name not in valid:
                raise SpecError(
                    f"search.methods.{name}", f"unknown method; valid are {', '.join(valid)}"
                )
        for method in self.search.methods or [None]:
            for key in self.fixed(method):
                if key not in keys:
                    raise SpecError(
                        f"search.methods.{method}.set.{key}",
                        f"unknown key; valid keys are {', '.join(keys)}",
                    )
            for key, dist in self.search.method_params(method).items():
                where = _where(key, method, self.search.params)
                if key not in keys:
                    raise SpecError(where, f"unknown key; valid keys are {', '.join(keys)}")
                for bound in (dist.low, dist.high):
                    if isinstance(bound, str) and bound not in keys:
                        raise SpecError(where, f"bound {bound!r} is not a config key")
            self._check_method(method)
        return self

    def _check_method(self, method: str | None) -> None:
        """The searched values of ``method`` (None: the spec's one method) are valid trials."""
        try:  # the defaults, with what the method fixes, form a valid trial
            values = flat(self.trial_config(self.defaults(method)))
        except SpecError as err:
            if not self.fixed(method):
                raise
            raise SpecError(
                f"search.methods.{method}.set", f"gives an invalid trial: {err}"
            ) from None
        for key, dist in self.search.method_params(method).items():
            where = _where(key, method, self.search.params)
            if dist.kind == "choice":
                self._check_values(key, dist.choices or (), method, where)
                continue
            lo, hi = dist.bounds(values)
            if lo > hi:
                raise SpecError(where, f"low {lo} is larger than high {hi}")
            if not dist.contains(dist.default, values):
                raise SpecError(where, f"default {dist.default} is outside [{lo}, {hi}]")
            self._check_values(key, (lo, hi), method, where)

    def _check_values(
        self, key: str, candidates: Iterable[Any], method: str | None, where: str
    ) -> None:
        """Each end of a range, each choice, must itself be a valid value of ``key``. A searched key
        whose bound names ``key`` is sampled within that bound, so it is clamped into it here."""
        defaults = {**flat(TrialConfig.model_validate(self.base())), **self.defaults(method)}
        for value in candidates:
            overrides = {**self.defaults(method), key: value}
            for other, dist in self.search.method_params(method).items():
                if key in (dist.low, dist.high):
                    lo, hi = dist.bounds({**defaults, key: value})
                    overrides[other] = min(max(dist.default, lo), hi)
            try:
                self.trial_config(overrides)
            except SpecError as err:
                raise SpecError(where, f"{value!r} can be sampled but is invalid: {err}") from None

    def base(self) -> dict[str, Any]:
        """The trial sections as plain data, without the sweep's sections; checkpoints are
        selected by the objective."""
        data = {s: getattr(self, s).model_dump() for s in TRIAL_SECTIONS}
        data["eval"]["select_by"] = self.objective.primary
        return data

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods the sweep trains: ``search.methods``' names, or ``train.method`` alone."""
        return tuple(self.search.methods) or (self.train.method,)

    def defaults(self, method: str | None = None) -> dict[str, Any]:
        """Each searched key -> its declared default. In a comparison (``search.methods``): the
        keys ``method`` searches (the first method's when None), and ``train.method`` itself."""
        if not self.search.methods:
            return {key: dist.default for key, dist in self.search.params.items()}
        method = method if method in self.search.methods else self.methods[0]
        own = self.search.method_params(method)
        return {METHOD_KEY: method, **{key: dist.default for key, dist in own.items()}}

    def fixed(self, method: str | None) -> dict[str, Any]:
        """What ``search.methods.<method>.set`` fixes for ``method``'s trials ({} for a method not
        compared, or with nothing of its own)."""
        own = self.search.methods.get(method) if method else None
        return dict(own.set) if own else {}

    def schedules(self) -> dict[str, dict[str, Any]]:
        """Each compared method -> its own schedule (``schedule``); {} where no method fixes a key
        a PGD-AT warm-up depends on. Methods with the same schedule can share a trunk and a PGD-AT
        baseline."""
        if not self._schedule_keys():
            return {}
        return {m: self.schedule(m) for m in self.search.methods}

    def schedule(self, method: str | None = None) -> dict[str, Any]:
        """The keys any method fixes that a PGD-AT warm-up depends on, at ``method``'s value (None:
        the spec's own, what a method that fixes none trains with); lists, as a Tune config and
        confirm.json hold them."""
        keys = self._schedule_keys()
        cfg = flat(
            self.trial_config({METHOD_KEY: method})
            if method
            else TrialConfig.model_validate(self.base())
        )
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k in keys}

    def _schedule_keys(self) -> list[str]:
        return [k for m in self.search.methods.values() for k in m.set if k not in WARMUP_FREE_KEYS]

    def epochs(self, method: str | None = None) -> int:
        """``train.epochs`` of ``method``'s trials: its own where it fixes it."""
        return int(self.fixed(method).get("train.epochs", self.train.epochs))

    def full_epochs(self, method: str | None = None) -> int:
        """Epochs a search trial of ``method`` runs when nothing stops it early (ASHA's max_t): its
        own ``train.epochs``, at most ``scheduler.max_epochs``."""
        return min(self.scheduler.max_epochs or self.epochs(method), self.epochs(method))

    def trial_config(self, overrides: Mapping[str, Any] | None = None) -> TrialConfig:
        """The spec's sections, then what the trial's method fixes and its searched defaults (the
        method ``overrides`` names, in a comparison), then ``overrides`` ('section.field' keys)."""
        data, overrides = self.base(), dict(overrides or {})
        chosen = {**self.defaults(overrides.get(METHOD_KEY)), **overrides}
        for key, value in {**self.fixed(chosen.get(METHOD_KEY)), **chosen}.items():
            assign(data, key, value)
        return validate(TrialConfig, data)

    def search_trial_config(self, params: Mapping[str, Any]) -> TrialConfig:
        """The config a trial of the search trains with: ``trial_config(params)`` with the test
        split left alone (only the confirm stage touches it, after the search)."""
        cfg = self.trial_config(params)
        return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"test": False})})


def _check_settable(method: str, key: str, searched: Mapping[str, Any]) -> None:
    """``search.methods.<method>.set.<key>`` may be fixed for ``method`` alone."""
    where = f"methods.{method}.set.{key}"
    if key in _NOT_SETTABLE:
        raise SpecError(where, "is not a method's own to fix; drop this key")
    if key in searched:
        raise SpecError(where, f"is searched for {method}; fix it or search it, not both")
    section = key.split(".")[0]
    if section not in (*_SETTABLE, method):
        whose = (
            f"is {section}'s section, not {method}'s"
            if section in registry.names()
            else f"{section} is the comparison's, the same for every method"
        )
        raise SpecError(where, f"{whose}; a method fixes only train.* keys or its own section's")


def _where(key: str, method: str | None, common: Mapping[str, Any]) -> str:
    """The spec path of searched ``key``: search.params.KEY, or search.methods.M.params.KEY."""
    if method is None or key in common:
        return f"search.params.{key}"
    return f"search.methods.{method}.params.{key}"


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file; every problem is a one-line ``SpecError`` naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SpecError(
            str(path), "no such spec file; pass a YAML file such as search_spaces/smoke.yaml"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(
            str(path), f"is not valid YAML{where}: {getattr(err, 'problem', err)}"
        ) from None
    if not isinstance(data, dict):
        raise SpecError(
            str(path), f"must be a mapping of sections ({', '.join(SweepSpec.model_fields)})"
        )
    data.setdefault("name", path.stem)
    try:
        return validate(SweepSpec, data)
    except SpecError as err:
        raise SpecError(
            f"{path}: {err.key}" if err.key else str(path), str(err).removeprefix(f"{err.key}: ")
        ) from None


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``['ham.drop_step=3', 'ham.temperature=null']`` ->
    ``{'ham.drop_step': 3, ...}`` (values as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError("--set", f"expected KEY=VALUE such as ham.drop_step=3 but got {item!r}")
        try:
            out[key.strip()] = fraction(yaml.safe_load(raw))
        except yaml.YAMLError:
            raise SpecError(key.strip(), f"value {raw!r} is not valid YAML") from None
    return out
