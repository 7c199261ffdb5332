"""A comparison's sampler (``search.methods``, issue 21): one Optuna study, each method its own
sampler state, the same number of trials for each.

Every method gets an inner sampler of the spec's kind (seeded ``search.seed + its index``) that
sees only that method's trials: ``_MethodStudy`` is the study with the other methods' trials left
out, the way Optuna's own HyperbandPruner hands TPE one bracket's trials. So a method's TPE learns
from its own trials alone (their objective values are not comparable across methods' spaces:
HAM's best ``drop_step`` says nothing about CFA's ``lambda1``), and one journal, one study and one
sequence of trial numbers still hold the whole sweep (results, optuna-dashboard).

Which method a new trial trains is not sampled: it is the budget rule's. ``before_trial`` gives it
the method with the fewest trials so far (ties in the spec's order), and the sweep asks for
``num_samples`` x methods trials in all, so each method gets ``num_samples``. With
``search.method_hours`` (``MethodBudget``) it gives it the method that has spent the fewest
device-seconds of search so far, among those with hours and trials left; the Recorder stops a
method's trials once its hours are spent, and the search ends when no method has any left.
The trial records its method as the parameter ``train.method`` (the space asks for it first;
this sampler answers) and as the system attribute ``hamsweep:method`` (set before it samples
anything, so that a trial still running is already its method's for the constant liar).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Container, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from hamsweep.results.spend import Spending
from hamsweep.spec.sweep import METHOD_KEY

if TYPE_CHECKING:
    from optuna import Study
    from optuna.distributions import BaseDistribution
    from optuna.trial import FrozenTrial

    from hamsweep.spec import SweepSpec

__all__ = [
    "METHOD_ATTR",
    "MethodBudget",
    "PerMethodSampler",
    "method_budget",
    "method_of",
]

METHOD_ATTR = "hamsweep:method"  # the trial's system attribute naming its method


def method_of(trial: FrozenTrial) -> str | None:
    """The method a trial of a comparison trains; None for one that has none yet."""
    return trial.system_attrs.get(METHOD_ATTR, trial.params.get(METHOD_KEY))


def _spent(trial: FrozenTrial) -> bool:
    """Whether ``trial`` used up one of its method's trials: every trial asked for, except one
    still enqueued and one a killed driver left behind, which the resumed sweep does not run
    (``OptunaAdapter.fail_orphans`` fails it with no ``status``; a trial that ran and failed was
    told how it ended, ``status`` included). Such a trial may have been handed to Tune just
    before the kill, after Tune's last snapshot: the sweep then proposes another in its place,
    and it must be this method's."""
    if trial.state == TrialState.WAITING:
        return False
    return trial.state != TrialState.FAIL or "status" in trial.user_attrs


class MethodBudget:
    """Each method's search budget in device-hours (``search.method_hours``), and at most ``cap``
    trials (``search.num_samples``). ``source`` says what each method has spent: a callable
    returning method -> ``results.spend.Spending`` (its trials' own cost and the shared warm-up
    they fork from, counted once), the Recorder's ``method_seconds``, set by the driver
    (pickled as a reference to the Recorder of the process that unpickles it). Pure Python: the
    sampler and the stage scheduler share one.

    Budgets are met to the nearest epoch: with r trials of a method running, each of them adds an
    epoch before the next word on it, so a trial stops once r half-epochs more would pass the
    method's hours, and each method ends within about half an epoch of the same device-hours. A
    method gets a new trial only while what it has spent, and what its running trials would spend
    to their last epoch, leaves half an epoch."""

    def __init__(self, methods: Sequence[str], hours: float, cap: int) -> None:
        self.methods, self.seconds, self.cap = tuple(methods), hours * 3600.0, cap
        self.source: Callable[[], Mapping[str | None, Spending]] | None = None

    def spent(self) -> dict[str, Spending]:
        """method -> what it has spent (nothing for one with no trial yet)."""
        got = self.source() if self.source is not None else {}
        return {m: got.get(m, Spending(0.0, 0.0, 0, 0)) for m in self.methods}

    def left(self, counts: Counter[str] | dict[str, int]) -> list[str]:
        """The methods that may get another trial, the cheapest so far first (ties: fewer
        trials, then the spec's order): hours left beyond what their running trials will spend,
        and fewer than ``cap`` trials (``counts``: method -> trials it has had)."""
        spent = self.spent()

        def room(s: Spending) -> bool:
            return s.seconds + s.epoch * (s.ahead + 0.5) < self.seconds

        open_ = [m for m in self.methods if room(spent[m]) and counts.get(m, 0) < self.cap]
        return sorted(
            open_, key=lambda m: (spent[m].seconds, counts.get(m, 0), self.methods.index(m))
        )

    def over(self, method: str | None) -> bool:
        """Whether ``method`` has spent its hours, to the nearest epoch (its running trials
        stop): stopping now leaves it closer to them than the epoch its running trials would all
        add before the next word on this one."""
        if method not in self.methods:
            return False
        s = self.spent()[method]
        return s.seconds + s.epoch * max(1, s.running) / 2 >= self.seconds


def method_budget(spec: SweepSpec) -> MethodBudget | None:
    """A comparison's budget in device-hours (``search.method_hours``); None: equal trials."""
    hours = spec.search.method_hours
    return None if hours is None else MethodBudget(spec.methods, hours, spec.search.num_samples)


class _MethodStudy:
    """``study`` as the sampler of ``method`` sees it: that method's trials only."""

    def __init__(self, study: Study, method: str) -> None:
        self._study, self._method = study, method

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [t for t in trials if method_of(t) == self._method]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class PerMethodSampler(BaseSampler):
    """Optuna sampler of a comparison (see the module docstring). ``make(i)`` builds the inner
    sampler of the i-th method."""

    def __init__(
        self,
        methods: Sequence[str],
        make: Callable[[int], BaseSampler],
        budget: MethodBudget | None = None,
    ) -> None:
        self.methods = tuple(methods)
        self.samplers = {m: make(i) for i, m in enumerate(self.methods)}
        self.budget = budget  # search.method_hours; None: the same number of trials for each

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        fixed = trial.system_attrs.get("fixed_params", {}).get(METHOD_KEY)  # an enqueued default
        method = fixed if fixed in self.samplers else self._fewest(study)
        study._storage.set_trial_system_attr(trial._trial_id, METHOD_ATTR, method)
        trial.system_attrs[METHOD_ATTR] = method  # the trial object Optuna samples this one with
        self.samplers[method].before_trial(self._view(study, method), trial)

    def _fewest(self, study: Study) -> str:
        """The method with the fewest trials spent so far; ties go to the earlier in the spec.
        With a budget in device-hours: the one that spent the fewest device-seconds, of those
        with hours and trials left (the stage scheduler asks for a trial only while one has)."""
        counts = Counter(
            method_of(t) for t in study._get_trials(deepcopy=False, use_cache=False) if _spent(t)
        )
        budget = self.__dict__.get("budget")  # (none in a sampler pickled before budgets)
        if budget is not None and (left := budget.left(counts)):
            return left[0]
        return min(self.methods, key=lambda m: (counts[m], self.methods.index(m)))

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        method = self._method(trial)
        space = self.samplers[method].infer_relative_search_space(self._view(study, method), trial)
        return {k: d for k, d in space.items() if k != METHOD_KEY}  # the method is not sampled

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        method = self._method(trial)
        return self.samplers[method].sample_relative(self._view(study, method), trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        method = self._method(trial)
        if param_name == METHOD_KEY:
            return method
        return self.samplers[method].sample_independent(
            self._view(study, method), trial, param_name, param_distribution
        )

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        method = method_of(trial)
        if method in self.samplers:
            self.samplers[method].after_trial(self._view(study, method), trial, state, values)

    def reseed_rng(self) -> None:
        for sampler in self.samplers.values():
            sampler.reseed_rng()

    def _method(self, trial: FrozenTrial) -> str:
        method = method_of(trial)
        if method not in self.samplers:
            raise RuntimeError(f"Optuna trial {trial.number} has no method of {self.methods}")
        return method

    @staticmethod
    def _view(study: Study, method: str) -> Any:
        return _MethodStudy(study, method)
