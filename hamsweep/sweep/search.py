"""Spec -> what proposes trials: the Optuna sampler and define-by-run space (through Ray's
``OptunaSearch``: ``OptunaAdapter``) and the Optuna journal in the sweep folder. ASHA, which stops
trials early, is ``hamsweep.sweep.schedulers`` (its names are re-exported here).
``Searcher``, what Ray Tune sees, composes the adapter with the stage scheduler
(``hamsweep.sweep.stages``), which says what to hand out when.

Optuna runs with a no-op pruner here: early stopping is ASHA's job. Optuna is still told the truth
about every trial: one intermediate value per epoch, COMPLETE only for trials that ran all their
epochs, PRUNED for trials ASHA (or the budget) stopped, FAIL for crashed or diverged ones, so that
TPE never takes an epoch-3 number for a final one. Every finished trial also carries the number
hamsweep ranks it by, its best epoch's objective, as the user attribute ``best_objective`` (a PRUNED
trial's value is Optuna's: its last intermediate value; see ``hamsweep.results.study``).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.search import SearchAlgorithm, SearchGenerator
from ray.tune.search import Searcher as TuneSearcher
from ray.tune.search.optuna import OptunaSearch

from hamsweep.errors import SpecError
from hamsweep.keys import (
    BEST,
    CONFIG,
    FORK,
    NUMBER,
    OBJECTIVE,
    best_key,
    role,
)
from hamsweep.results.study import (
    JOURNAL,
    journal_storage,
    new_study_name,
    open_study,
    record_baseline,
    study_name,
)
from hamsweep.spec import METHOD_KEY, Distribution, SweepSpec, flat
from hamsweep.sweep.per_method import method_budget

# Asha and make_scheduler live in schedulers; their names stay here: old sweep folders pickle
# hamsweep.search.Asha (hamsweep._moved maps hamsweep.search to this module)
from hamsweep.sweep.schedulers import Asha, full_epochs, make_scheduler  # noqa: F401
from hamsweep.sweep.stages import Candidate, Stages

if TYPE_CHECKING:
    import optuna

    from hamsweep.sweep.per_method import MethodBudget
    from hamsweep.sweep.trunk import Plan

__all__ = [
    "BEST",
    "JOURNAL",
    "NUMBER",
    "OBJECTIVE",
    "OptunaAdapter",
    "Searcher",
    "Space",
    "best_key",
    "make_scheduler",
    "make_searcher",
    "open_study",
]


# one "trial finished" line per trial is noise here
logging.getLogger("optuna").setLevel(logging.WARNING)


class Space:
    """Optuna define-by-run space: each searched key in dependency order, so that an int bound
    naming another key (``ham.drop_step: {int: [1, train.attack_steps]}``) reads the value sampled
    for this very trial, and M <= K holds for every trial."""

    def __init__(
        self,
        params: Mapping[str, Distribution],
        fixed: Mapping[str, Any],
        methods: Mapping[str, Mapping[str, Distribution]] | None = None,
    ) -> None:
        self.params = dict(_dependency_order(params))
        # the spec's values of every key, for bounds naming unsearched keys
        self.fixed = dict(fixed)
        # a comparison (search.methods): method -> the keys a trial of it searches
        self.methods = {m: dict(_dependency_order(p)) for m, p in (methods or {}).items()}

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values, params = dict(self.fixed), self.params
        if getattr(self, "methods", None):  # (a Space pickled before comparisons has none)
            # asked first: the sampler answers with the method whose turn it is (per_method)
            method = trial.suggest_categorical(METHOD_KEY, list(self.methods))
            values[METHOD_KEY], params = method, self.methods[method]
        for key, dist in params.items():
            values[key] = _suggest(trial, key, dist, values)
        return {NUMBER: trial.number}  # Ray adds returned constants to the trial's config


def _suggest(trial: optuna.Trial, key: str, dist: Distribution, values: Mapping[str, Any]) -> Any:
    if dist.kind == "choice":
        return trial.suggest_categorical(key, list(dist.choices or ()))
    lo, hi = dist.bounds(values)
    if dist.kind == "int":
        return trial.suggest_int(key, int(lo), int(hi), step=dist.step)
    return trial.suggest_float(key, float(lo), float(hi), log=dist.kind == "loguniform")


def _dependency_order(params: Mapping[str, Distribution]) -> list[tuple[str, Distribution]]:
    """Keys whose bounds name another searched key come after it (the spec forbids cycles by
    checking bounds against the defaults; a cycle here is reported, not looped on)."""
    done: dict[str, Distribution] = {}
    pending = dict(params)
    while pending:
        ready = [
            k
            for k, d in pending.items()
            if not any(b in pending for b in (d.low, d.high) if isinstance(b, str))
        ]
        if not ready:
            raise SpecError(
                "search.params", f"the bounds of {', '.join(pending)} name each other in a cycle"
            )
        for key in ready:
            done[key] = pending.pop(key)
    return list(done.items())


def make_sampler(
    spec: SweepSpec, budget: MethodBudget | None = None
) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded. TPE is multivariate with the constant liar, so that trials
    proposed while others run do not all land on the same point. A comparison's sampler picks
    each trial's method by the budget rule (``budget``: device-hours, else equal trials)."""
    import warnings

    import optuna

    # multivariate, group and constant_liar are "experimental" in Optuna 5 (stable in use since 2.x)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if spec.search.methods:  # a comparison: one sampler of this kind per method
        from hamsweep.sweep.per_method import PerMethodSampler

        return PerMethodSampler(
            spec.methods, lambda i: _sampler(spec.search.sampler, spec.search.seed + i), budget
        )
    return _sampler(spec.search.sampler, spec.search.seed)


def _sampler(s: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if s == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True
        )
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if s == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


class OptunaAdapter(OptunaSearch):
    """Ray's OptunaSearch, made truthful and restart-safe: it proposes from the journal study and
    tells the study how each search trial went. What to hand out when is ``Stages``' job.

    - per-epoch intermediate values (``objective`` at step ``epoch``);
    - a trial that ended before ``full_epochs`` without error is PRUNED (ASHA or the budget
      stopped it), a diverged one (result key ``failed``) is FAIL, only a full one COMPLETE;
    - each finished trial carries its best epoch's objective (user attribute ``best_objective``,
      what hamsweep ranks by), a search trunk that ended goes into the baseline study
      (``study.record_baseline``): neither is anything TPE reads;
    - an update to an Optuna trial that already finished is ignored: after a driver crash,
      Tune's snapshot can be older than the journal, and Tune re-runs such a trial;
    - on restore, Optuna trials left RUNNING by the crashed driver that Tune does not know are
      marked FAIL, so they do not stay RUNNING forever in the study;
    - on restore, the study is read from the journal of the folder being resumed (``use_journal``),
      not the one the pickle names.
    """

    def __init__(
        self,
        *args: Any,
        full_epochs: int,
        method_epochs: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        self.full_epochs = full_epochs
        self.method_epochs = dict(method_epochs or {})  # a comparison's methods' own full_epochs
        self._last_step: dict[str, int] = {}  # trial id -> the last epoch reported to Optuna
        self._best: dict[str, tuple[float, int | None]] = {}  # trial id -> (best, its epoch)
        super().__init__(*args, **kwargs)
        if self._ot_study is not None:
            self._check_directions()

    def _check_directions(self) -> None:
        import optuna

        wrong = [d for d in self._ot_study.directions if d != optuna.study.StudyDirection.MAXIMIZE]
        if wrong or len(self._ot_study.directions) != (
            len(self.metric) if isinstance(self.metric, list) else 1
        ):
            raise SpecError(
                "objective",
                f"the Optuna study {self._study_name!r} in the journal has directions "
                f"{[d.name for d in self._ot_study.directions]}, not this spec's objective; "
                "use a new folder",
            )

    # ---- proposals ----
    def trial_of(self, trial_id: str) -> Any:
        """The Optuna trial proposed for Tune trial ``trial_id``."""
        return self._ot_trials[trial_id]

    def forget(self, trial_id: str) -> None:
        """The proposal made for ``trial_id`` does not start as it (it waits for its trunk): its
        Optuna trial is ``adopt``-ed by the Tune trial it starts as."""
        del self._ot_trials[trial_id]

    def adopt(self, trial_id: str, handle: Any) -> None:
        """A proposal that waited starts as Tune trial ``trial_id``."""
        self._ot_trials[trial_id] = handle

    def mark_started(self, trial_id: str, config: dict[str, Any]) -> None:
        """The Optuna trial names the Tune trial it runs as (``hamsweep.results.study``)."""
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("tune_trial", trial_id)
        ot_trial.set_user_attr("role", "search")
        if config.get(FORK):
            ot_trial.set_user_attr("fork", config[FORK])

    def name_in_study(self, attr: str, key: str, value: Any) -> None:
        """A trunk or a confirm trial (no Optuna trials) in the study's user attribute ``attr``."""
        if self._ot_study is not None:
            named = {**self._ot_study.user_attrs.get(attr, {}), key: value}
            self._ot_study.set_user_attr(attr, named)

    # ---- results ----
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        if BEST in result and not result.get("failed"):  # as the driver's trials table keeps it
            self._best[trial_id] = (result[BEST], result.get("best_epoch"))
        if (
            isinstance(self.metric, list)
            or trial_id not in self._ot_trials
            or OBJECTIVE not in result
            or result.get("failed")
        ):
            return  # Optuna keeps no intermediate values for several objectives
        if result["epoch"] <= self._last_step.get(trial_id, 0):
            return  # the last result arrives twice: as a result and with the completion
        self._last_step[trial_id] = result["epoch"]
        # an Optuna trial finished in the journal already is left as it is (see the class docstring)
        with contextlib.suppress(UpdateFinishedTrialError, ValueError, RuntimeError):
            self._ot_trials[trial_id].report(result[OBJECTIVE], result["epoch"])

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> Candidate | None:
        """Tells the study how a search trial ended. Returns (number, params, best objective) of a
        COMPLETE trial (a candidate for the confirm stage), else None."""
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return None
        if result:
            self.on_trial_result(trial_id, result)  # Tune hands a trial's last result only here
        self._completed_trials.add(trial_id)
        ot_trial = self._ot_trials[trial_id]
        full = getattr(self, "method_epochs", {}).get(ot_trial.params.get(METHOD_KEY))
        state, values = self._outcome(result or {}, error, full)
        candidate = None
        if state == optuna.trial.TrialState.COMPLETE:
            candidate = (ot_trial.number, dict(ot_trial.params), float((result or {})[BEST]))
        self._mark_ended(ot_trial, trial_id, state, result or {}, error)
        finished = optuna.exceptions.UpdateFinishedTrialError  # in the journal already
        with contextlib.suppress(finished, ValueError, RuntimeError):
            self._ot_study.tell(ot_trial, values, state=state)
        return candidate

    def _mark_ended(
        self, ot_trial: Any, trial_id: str, state: Any, result: Mapping[str, Any], error: bool
    ) -> None:
        """Before ``tell`` (a finished Optuna trial takes no more attributes): how it ended, and
        where its checkpoint is."""
        from optuna.exceptions import UpdateFinishedTrialError

        reason = _reason(result, error, complete=state.name == "COMPLETE")
        attrs: dict[str, Any] = {
            "status": state.name,
            "status_reason": reason,
            **self._best_attrs(trial_id),
        }
        if result.get("checkpoint_dir_name"):
            attrs["checkpoint"] = f"ray/trial_{trial_id}/{result['checkpoint_dir_name']}"
        try:
            for key, value in attrs.items():
                ot_trial.set_user_attr(key, value)
        except (UpdateFinishedTrialError, ValueError, RuntimeError):
            pass  # finished in the journal already (see the class docstring)

    def _best_attrs(self, trial_id: str) -> dict[str, Any]:
        """The user attributes ``best_objective`` and ``best_epoch``: the number hamsweep ranks by
        (``trials.best_objective``); none for a trial that reported no result."""
        if trial_id not in self._best:
            return {}
        best, epoch = self._best[trial_id]
        return {"best_objective": float(best), "best_epoch": epoch}

    def record_baseline(
        self, trial_id: str, key: str, result: Mapping[str, Any], error: bool
    ) -> None:
        """A search trunk (the PGD-AT baseline of warm-up ``key``) that ended, in the baseline
        study; not confirm trunks."""
        if (
            self._ot_study is None
            or trial_id not in self._ot_study.user_attrs.get("trunks", {}).values()
        ):
            return
        failed = error or bool(result.get("failed")) or BEST not in result
        attrs = {"tune_trial": trial_id, "status_reason": _reason(result, error, complete=True)}
        if not failed:
            attrs |= {"best_objective": float(result[BEST]), "best_epoch": result.get("best_epoch")}
        try:
            record_baseline(self._ot_study, key, attrs, None if failed else self._values(result))
        except (ValueError, RuntimeError):  # a value Optuna refuses (NaN): the sweep goes on
            logging.getLogger(__name__).warning(
                "the PGD-AT baseline %s is not in the baseline study", trial_id, exc_info=True
            )

    def _values(self, result: Mapping[str, Any]) -> list[float]:
        """The objective values Optuna is told for a trial that ran all its epochs: each at its
        best epoch."""
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        return [float(result[m]) for m in metrics]

    def _outcome(
        self, result: Mapping[str, Any], error: bool, full: int | None = None
    ) -> tuple[Any, Any]:
        from optuna.trial import TrialState

        if error or result.get("failed") or BEST not in result:
            return TrialState.FAIL, None
        if result.get("epoch", 0) < (full or self.full_epochs):
            # Optuna takes no value with PRUNED: it keeps the last intermediate value (the objective
            # at the epoch it stopped); the best epoch's is the user attribute best_objective
            return TrialState.PRUNED, None
        return TrialState.COMPLETE, self._values(result)

    def use_journal(self, path: Path) -> None:
        """Read and write the study in the journal at ``path``. The pickled storage names the
        absolute path of the journal it was made with: once the sweep folder is moved or copied,
        that is another folder's journal, or none. The study, its trials and this adapter share the
        one storage object, so its file is swapped in place; the storage replays the new file."""
        from optuna.storages.journal import JournalFileBackend

        storage = self._storage
        if Path(storage._backend._file_path) != Path(path):
            storage._backend = JournalFileBackend(str(path))

    def fail_orphans(self, waiting: Iterable[Any] = ()) -> None:
        """Optuna trials left RUNNING that are neither Tune's (``_ot_trials``) nor ``waiting``
        (proposals not handed out yet) become FAIL: the driver that asked for them is gone."""
        from optuna.trial import TrialState

        known = {t.number for t in [*self._ot_trials.values(), *waiting]}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in known:
                self._ot_study.tell(t.number, state=TrialState.FAIL)


def _reason(result: Mapping[str, Any], error: bool, complete: bool) -> str:
    """Why a trial ended, in words (user attribute ``status_reason``)."""
    epoch = result.get("epoch", 0)
    return (
        "error: its worker failed"
        if error
        else f"failed: {result['failed']}"
        if result.get("failed")
        else f"ran all {epoch} epochs"
        if complete
        else f"stopped at epoch {epoch} (ASHA or the budget)"
    )


class Searcher(TuneSearcher):
    """What Ray Tune sees: ``stages`` (``hamsweep.sweep.stages.Stages``) says what to hand out next,
    ``optuna`` (``OptunaAdapter``) proposes and keeps the journal study. Tune pickles it into the
    sweep folder (``save``, and whole with the Tuner); one pickled before the split, a single
    OptunaSearch holding both jobs' attributes, comes back as the two (``_split_old_state``)."""

    def __init__(self, optuna: OptunaAdapter, stages: Stages) -> None:
        super().__init__(metric=optuna.metric, mode=optuna.mode)
        self.optuna, self.stages = optuna, stages

    def suggest(self, trial_id: str) -> dict | str | None:
        if (trunk := self.stages.next_trunk(trial_id)) is not None:
            self.optuna.name_in_study("trunks", self.stages.trunk_trials[trial_id], trial_id)
            return trunk
        config = self._release(trial_id)
        if config is None and self.stages.may_ask():
            config = self._ask(trial_id)
        if config is None and self.stages.search_over():
            return self._next_confirm(trial_id)
        if config is None and (early := self.stages.early_baseline(trial_id)) is not None:
            named = {"config": early[CONFIG], "seed": early["train.seed"], "role": role(early)}
            self.optuna.name_in_study("confirm", trial_id, named)
            return early  # a slot the search leaves idle trains a confirm-stage baseline
        return config

    def _release(self, trial_id: str) -> dict | None:
        if (released := self.stages.release(trial_id)) is None:
            return None
        handle, config = released
        self.optuna.adopt(trial_id, handle)
        self.optuna.mark_started(trial_id, config)
        return config

    def _ask(self, trial_id: str) -> dict | None:
        config = self.optuna.suggest(trial_id)
        if not isinstance(config, dict):
            return config
        ready = self.stages.offer(trial_id, self.optuna.trial_of(trial_id), config)
        if ready is None:
            self.optuna.forget(trial_id)
        else:
            self.optuna.mark_started(trial_id, ready)
        return ready

    def _next_confirm(self, trial_id: str) -> dict | str | None:
        config = self.stages.next_confirm(trial_id)
        if isinstance(config, dict):
            named = {"config": config.get(CONFIG), "seed": config.get("train.seed")}
            self.optuna.name_in_study("confirm", trial_id, {**named, "role": role(config)})
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.optuna.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self.stages.confirm_ended(trial_id, result, error)
        if trial_id in self.stages.trunk_trials:
            key = self.stages.trunk_ended(trial_id)
            self.optuna.record_baseline(trial_id, key, result or {}, error)
        elif self.stages.running(trial_id):
            candidate = self.optuna.on_trial_complete(trial_id, result, error)
            self.stages.search_ended(trial_id, candidate)

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        return self.optuna.set_search_properties(metric, mode, config, **spec)

    # ---- the scheduler's parts that the driver sets or reads through the searcher ----
    @property
    def spec(self) -> SweepSpec | None:
        return self.stages.spec

    @property
    def plan(self) -> Plan:
        return self.stages.plan

    @property
    def waiting_sink(self) -> Any:
        return self.stages.waiting_sink

    @waiting_sink.setter
    def waiting_sink(self, sink: Any) -> None:
        self.stages.waiting_sink = sink

    @property
    def confirm_sink(self) -> Any:
        return self.stages.confirm_sink

    @confirm_sink.setter
    def confirm_sink(self, sink: Any) -> None:
        self.stages.confirm_sink = sink

    @property
    def method_seconds(self) -> Any:
        """What tells a comparison's budget in device-hours each method's spending (the
        Recorder's ``method_seconds``); None without such a budget."""
        budget = self.stages._budget()
        return None if budget is None else budget.source

    @method_seconds.setter
    def method_seconds(self, source: Any) -> None:
        if (budget := self.stages._budget()) is not None:
            budget.source = source

    # ---- Tune's snapshots ----
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(_split_old_state(pickle.load(f)))
        self._in_resumed_folder()
        self.optuna.fail_orphans(self.stages.waiting_handles())
        self._forget_lost_confirm_trials()

    def _forget_lost_confirm_trials(self) -> None:
        """A confirm trial is named in the study (user attribute ``confirm``) when it is handed
        out; one handed out after Tune's last snapshot never ran, and the restored stages hand its
        config out again under another trial id: its name goes. Only where the stages have kept
        every confirm hand-out (a sweep of this release: ``Stages.rounds``)."""
        book = self.stages.__dict__.get("rounds")
        study = self.optuna._ot_study
        if book is None or study is None:
            return
        named = study.user_attrs.get("confirm", {})
        kept = {trial: v for trial, v in named.items() if trial in book["handed"]}
        if kept != named:
            study.set_user_attr("confirm", kept)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(_split_old_state(state))
        self._in_resumed_folder()

    def _in_resumed_folder(self) -> None:
        """Read the journal and the trunk checkpoints of the folder being resumed (``resuming``)."""
        if _resumed is not None:
            self.stages.folder = _resumed
            self.optuna.use_journal(_resumed / JOURNAL)


_resumed: Path | None = None  # the sweep folder this process resumes (``resuming``)


class Generator(SearchGenerator):
    """What Tune builds around the searcher, built on restore (``restore_into_folder``) so that
    it restores into the folder being resumed: Tune's own gives the trials it creates after a
    restore the storage of the experiment it pickled, the absolute path of the folder the sweep
    was written in (the trials it restores get the folder being resumed), so a moved or copied
    sweep would put new trials' checkpoints in the old folder, or fail them where it is gone."""

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if _resumed is not None and self._experiment is not None:
            # the driver's storage_path is the sweep folder (the spec's storage and the
            # experiment's are one object)
            self._experiment.storage.storage_fs_path = _resumed.as_posix()


def restore_into_folder(tuner: Any) -> Any:
    """``tuner`` (restored by ``Tuner.restore``) with a ``Generator`` around its searcher, which
    the sweep's pickled Tuner holds bare (Tune itself wraps it in a plain SearchGenerator)."""
    config = tuner._local_tuner._tune_config
    if not isinstance(config.search_alg, SearchAlgorithm):
        config.search_alg = Generator(config.search_alg)
    return tuner


@contextlib.contextmanager
def resuming(folder: Path | None) -> Iterator[None]:
    """While the driver restores and runs Tune's snapshot of ``folder``: a Searcher unpickled from
    it reads ``folder``'s journal and trunk checkpoints. The snapshot holds the absolute paths of
    the folder it was written in, and a user may have moved or copied the sweep folder since (the
    old one is then another sweep's, or gone). Tune hands the searcher a staging copy of its
    state, never the sweep folder, so the driver says which folder it is. None: a new sweep."""
    global _resumed
    _resumed = None if folder is None else Path(folder).absolute()
    try:
        yield
    finally:
        _resumed = None


# the pre-split Searcher's attributes that are the stage scheduler's now (the rest is Optuna's)
_STAGE_ATTRS = {
    "spec": "spec",
    "folder": "folder",
    "plan": "plan",
    "_trunk_trials": "trunk_trials",
    "_trunks_ended": "trunks_ended",
    "_deferred": "deferred",
    "_complete": "complete",
    "_confirm": "confirm",
    "waiting_sink": "waiting_sink",
    "confirm_sink": "confirm_sink",
}


def _split_old_state(state: dict[str, Any]) -> dict[str, Any]:
    """The state of a Searcher pickled before the split (hamsweep 8b70c57 and before: one
    OptunaSearch with the stage attributes) as the two parts; a state after the split as it is."""
    if "stages" in state:
        return state
    old = dict(state)
    stages = Stages()  # no spec: its plan is the pickled one, below
    stages.__dict__.update({new: old.pop(key) for key, new in _STAGE_ATTRS.items() if key in old})
    stages.started = set(old.get("_ot_trials", {}))  # the proposals handed to Tune ...
    stages.ended = set(old.get("_completed_trials", ()))  # ... and those that ended
    optuna = OptunaAdapter.__new__(OptunaAdapter)
    optuna.__dict__.update({"_last_step": {}, "_best": {}, **old})  # _best came later
    return {"_metric": optuna._metric, "_mode": optuna._mode, "optuna": optuna, "stages": stages}


def make_searcher(spec: SweepSpec, folder: Path) -> Searcher:
    """The searcher for ``spec``, its study in ``folder``'s journal. A new study starts with the
    spec's defaults as its first trial (``search.start_with_defaults``): the paper's setting is
    always one of the points compared."""
    journal = Path(folder) / JOURNAL
    fresh = not journal.exists()
    name = study_name(folder) or new_study_name(spec.name)  # a folder keeps its study's name
    metrics = spec.objective.metrics
    multi = len(metrics) > 1
    defaults = fresh and spec.search.start_with_defaults and spec.search.space
    # a comparison: each method's defaults first (its paper's setting), in the spec's order
    points = [spec.defaults(m) for m in spec.search.methods] or [spec.defaults()]
    per_method = {m: spec.search.method_params(m) for m in spec.search.methods}
    budget = method_budget(spec)  # the sampler and the stages share one
    optuna = OptunaAdapter(
        space=Space(spec.search.params, flat(spec.trial_config()), per_method),
        metric=[best_key(m) for m in metrics] if multi else BEST,
        mode=["max"] * len(metrics) if multi else "max",
        points_to_evaluate=points if defaults else None,
        sampler=make_sampler(spec, budget),
        study_name=name,
        storage=journal_storage(journal),
        full_epochs=full_epochs(spec),
        method_epochs={m: full_epochs(spec, m) for m in spec.search.methods},
    )
    if not fresh:  # a driver killed before Tune's first snapshot: nothing it proposed will run
        optuna.fail_orphans()
    if optuna._ot_study.metric_names is None:  # optuna-dashboard names it, not "Objective 0"
        optuna._ot_study.set_metric_names(list(metrics))
    stages = Stages(spec, Path(folder))
    stages.budget = budget
    return Searcher(optuna, stages)
