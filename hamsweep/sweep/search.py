"""Spec -> what proposes and stops trials: the Optuna sampler and define-by-run space (through Ray's
``OptunaSearch``), the Optuna journal in the sweep folder, and ASHA.

Optuna runs with a no-op pruner here: early stopping is ASHA's job. Optuna is still told the truth
about every trial: one intermediate value per epoch, COMPLETE only for trials that ran all their
epochs, PRUNED for trials ASHA (or the budget) stopped, FAIL for crashed or diverged ones, so that
TPE never takes an epoch-3 number for a final one. Every finished trial also carries the number
hamsweep ranks it by, its best epoch's objective, as the user attribute ``best_objective`` (a PRUNED
trial's value is Optuna's: its last intermediate value; see ``hamsweep.study``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from hamsweep.errors import SpecError
from hamsweep.keys import BEST, CONFIG, CONFIRM, FORK, KEEP, NUMBER, OBJECTIVE, ROLE, TRUNK, best_key, role, stage, trial_params
from hamsweep.spec import Distribution, SweepSpec, flat
from hamsweep.spec.trial import warmup_key
from hamsweep.study import JOURNAL, journal_storage, new_study_name, open_study, record_baseline, study_name
from hamsweep.trunk import Plan, plan, ready_epochs, trunk_config

if TYPE_CHECKING:
    import optuna

__all__ = [
    "BEST",
    "JOURNAL",
    "NUMBER",
    "OBJECTIVE",
    "Searcher",
    "Space",
    "best_key",
    "make_scheduler",
    "make_searcher",
    "open_study",
]


logging.getLogger("optuna").setLevel(logging.WARNING)  # one "trial finished" line per trial is noise here


class Space:
    """Optuna define-by-run space: each searched key in dependency order, so that an int bound
    naming another key (``ham.drop_step: {int: [1, train.attack_steps]}``) reads the value sampled
    for this very trial, and M <= K holds for every trial."""

    def __init__(self, params: Mapping[str, Distribution], fixed: Mapping[str, Any]) -> None:
        self.params = dict(_dependency_order(params))
        self.fixed = dict(fixed)  # the spec's values of every key, for bounds naming unsearched keys

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values = dict(self.fixed)
        for key, dist in self.params.items():
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
        ready = [k for k, d in pending.items() if not any(b in pending for b in (d.low, d.high) if isinstance(b, str))]
        if not ready:
            raise SpecError("search.params", f"the bounds of {', '.join(pending)} name each other in a cycle")
        for key in ready:
            done[key] = pending.pop(key)
    return list(done.items())


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded. TPE is multivariate with the constant liar, so that trials
    proposed while others run do not all land on the same point."""
    import warnings

    import optuna

    # multivariate, group and constant_liar are "experimental" in Optuna 5 (stable in use since 2.x)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    s, seed = spec.search.sampler, spec.search.seed
    if s == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if s == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


class Searcher(OptunaSearch):
    """Ray's OptunaSearch, made truthful and restart-safe:

    - per-epoch intermediate values (``objective`` at step ``epoch``);
    - a trial that ended before ``full_epochs`` without error is PRUNED (ASHA or the budget
      stopped it), a diverged one (result key ``failed``) is FAIL, only a full one COMPLETE;
    - each finished trial carries its best epoch's objective (user attribute ``best_objective``,
      what hamsweep ranks by), a search trunk that ended goes into the baseline study
      (``study.record_baseline``): neither is anything TPE reads;
    - an update to an Optuna trial that already finished is ignored: after a driver crash,
      Tune's snapshot can be older than the journal, and Tune re-runs such a trial;
    - on restore, Optuna trials left RUNNING by the crashed driver that Tune does not know are
      marked FAIL, so they do not stay RUNNING forever in the study.

    With shared warm-ups (``trunk.plan``) it first hands Tune each trunk (role ``trunk``, numbered
    -1, -2, ...: not an Optuna trial), then proposals. A HAM proposal whose trunk has not reached
    its warm-up epoch yet is **deferred**, not started: it would hold a GPU idle. Deferred
    proposals start as soon as their epoch is there, before any new one is asked for; while they
    wait, new proposals are asked for (up to ``max_concurrent`` waiting, never more than
    ``num_samples`` in all), so that one whose epoch is there can run. A proposal whose trunk ended
    without its epoch (it failed) trains its own warm-up.

    Once every search trial has ended it hands out the confirm stage (``hamsweep.confirm``): the
    ``confirm.top_k`` COMPLETE trials with the highest objective and their PGD-AT baselines on new
    seeds, each seed's trunks first, each config as soon as its trunk's epoch is there; then FINISHED.
    ``confirm_sink`` hears of the plan when it is made.
    """

    def __init__(self, *args: Any, full_epochs: int, spec: SweepSpec | None = None, folder: Path | None = None,
                 **kwargs: Any) -> None:
        self.full_epochs = full_epochs
        self._last_step: dict[str, int] = {}  # trial id -> the last epoch reported to Optuna
        self.spec, self.folder = spec, folder
        self.plan: Plan = plan(spec) if spec is not None else Plan(reason="no spec")
        self._trunk_trials: dict[str, str] = {}  # Tune trial id -> the key of the trunk it trains
        self._trunks_ended: set[str] = set()  # keys of trunks whose trial ended (finished or failed)
        # proposals waiting for a trunk epoch: (Optuna trial, config, (trunk key, epoch))
        self._deferred: list[tuple[Any, dict[str, Any], tuple[str, int]]] = []
        self.waiting_sink: Any = None  # called with [(trunk key, epoch)] whenever the deferred proposals change
        self._complete: dict[str, tuple[int, dict[str, Any], float]] = {}  # COMPLETE trial id -> (number, params, best)
        self._confirm: list[dict[str, Any]] | None = None  # confirm trials not handed out yet; None: not planned
        self.confirm_sink: Any = None  # called with the ConfirmPlan when it is made
        super().__init__(*args, **kwargs)
        if self._ot_study is not None:
            self._check_directions()

    # ---- proposals, trunks first ----
    def suggest(self, trial_id: str) -> dict | str | None:
        started = set(self._trunk_trials.values())
        if trunk := next((t for t in self.plan.trunks if t.key not in started), None):
            self._trunk_trials[trial_id] = trunk.key
            self._name_in_study("trunks", trunk.key, trial_id)
            return {ROLE: TRUNK, NUMBER: -1 - trunk.index, KEEP: list(self.plan.fork_epochs), **trunk.params}
        config = self._release_deferred(trial_id)
        if config is None and self._may_ask():
            config = self._ask(trial_id)
        if config is None and self._search_over():
            return self._next_confirm(trial_id)
        return config

    def _release_deferred(self, trial_id: str) -> dict | None:
        for i, (ot_trial, config, point) in enumerate(self._deferred):
            if (ready := self._start(config, point)) is not None:
                del self._deferred[i]
                self._ot_trials[trial_id] = ot_trial
                self._tell_waiting()
                self._mark_started(trial_id, ready)
                return ready
        return None

    def _mark_started(self, trial_id: str, config: dict[str, Any]) -> None:
        """The Optuna trial names the Tune trial it runs as (``hamsweep.study``)."""
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("tune_trial", trial_id)
        ot_trial.set_user_attr("role", "search")
        if config.get(FORK):
            ot_trial.set_user_attr("fork", config[FORK])

    def _may_ask(self) -> bool:
        """Whether to ask Optuna for another proposal: always, unless proposals wait for a trunk (then
        at most ``max_concurrent`` wait, and no more are asked for than the sweep has trials)."""
        if self.spec is None:
            return True
        proposed = len(self._ot_trials) + len(self._deferred)
        waiting_ok = not self.plan.shared or len(self._deferred) < self.spec.search.max_concurrent
        return waiting_ok and proposed < self.spec.search.num_samples

    # ---- the confirm stage ----
    def _search_over(self) -> bool:
        """Every search proposal has been handed to Tune and has ended."""
        if self.spec is None or self._deferred or len(self._ot_trials) < self.spec.search.num_samples:
            return False
        return all(t in self._completed_trials for t in self._ot_trials)

    def _next_confirm(self, trial_id: str) -> dict | str | None:
        """The next confirm trial that can start now (a trunk, or a config whose trunk epoch is
        there); None while they wait; FINISHED once all are handed out."""
        from ray.tune.search import Searcher as _Base

        if self._confirm is None:
            self._plan_confirm()
        for i, config in enumerate(self._confirm or ()):
            ready = self._start(config, self._fork_point(config))
            if ready is not None:
                del self._confirm[i]  # type: ignore[union-attr]
                if role(config) == TRUNK:  # its forks train their own warm-up if it fails (_trunks_ended)
                    self._trunk_trials[trial_id] = warmup_key(trunk_config(self.spec, trial_params(config)))  # type: ignore[arg-type]
                self._name_in_study("confirm", trial_id, {"config": config.get(CONFIG), "seed": config.get("train.seed"),
                                                          "role": role(config)})
                self._tell_waiting()
                return ready
        return None if self._confirm else _Base.FINISHED

    def _name_in_study(self, attr: str, key: str, value: Any) -> None:
        """A trunk or a confirm trial (no Optuna trials) in the study's user attribute ``attr``."""
        if self._ot_study is not None:
            self._ot_study.set_user_attr(attr, {**self._ot_study.user_attrs.get(attr, {}), key: value})

    def _plan_confirm(self) -> None:
        from hamsweep.confirm import Chosen, plan_confirm

        assert self.spec is not None  # noqa: S101 - _search_over checked it
        best = sorted(self._complete.items(), key=lambda kv: (-kv[1][2], kv[1][0]))[: self.spec.confirm.top_k]
        chosen = [Chosen(tid, number, params, value) for tid, (number, params, value) in best] if self.spec.confirm.retrains else []
        p = plan_confirm(self.spec, chosen)
        self._confirm = list(p.trials)
        if self.confirm_sink is not None:
            self.confirm_sink(p)

    def _ask(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if not isinstance(config, dict):
            return config
        point = self._fork_point(config)
        ready = self._start(config, point)
        if ready is None:
            self._deferred.append((self._ot_trials.pop(trial_id), config, point))
            self._tell_waiting()
        else:
            self._mark_started(trial_id, ready)
        return ready

    def _fork_point(self, config: dict[str, Any]) -> tuple[str, int] | None:
        """(trunk key, warm-up epoch) where a proposal (or a confirm config) forks; None: it trains
        from scratch (a trunk, too)."""
        if self.spec is None or not self.plan.shared or role(config) == TRUNK:
            return None
        cfg = self.spec.search_trial_config(trial_params(config))
        if stage(config) == CONFIRM:  # its trunk is the PGD-AT run of its own seed, handed out before it
            return (warmup_key(cfg), cfg.ham.warmup_epochs) if self.plan.forks(cfg) else None
        trunk = self.plan.trunk_of(cfg)
        return (trunk.key, cfg.ham.warmup_epochs) if trunk is not None else None

    def _start(self, config: dict[str, Any], point: tuple[str, int] | None) -> dict[str, Any] | None:
        """``config`` as it starts now (forking from its trunk), or None while its trunk epoch is not there."""
        if point is None:
            return config
        key, epoch = point
        if epoch in ready_epochs(self.folder, key):  # type: ignore[arg-type]
            return {**config, FORK: key}
        if key in self._trunks_ended:
            return config  # its trunk failed before that epoch: it trains its own warm-up
        return None

    def _tell_waiting(self) -> None:
        if self.waiting_sink is not None:
            confirm = [p for c in self._confirm or () if (p := self._fork_point(c)) is not None]
            self.waiting_sink([point for _, _, point in self._deferred] + confirm)

    def _check_directions(self) -> None:
        import optuna

        wrong = [d for d in self._ot_study.directions if d != optuna.study.StudyDirection.MAXIMIZE]
        if wrong or len(self._ot_study.directions) != (len(self.metric) if isinstance(self.metric, list) else 1):
            raise SpecError(
                "objective", f"the Optuna study {self._study_name!r} in the journal has directions "
                f"{[d.name for d in self._ot_study.directions]}, not this spec's objective; use a new folder"
            )

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        if BEST in result and not result.get("failed"):  # as the driver's trials table keeps it (recorder)
            self._best_seen()[trial_id] = (result[BEST], result.get("best_epoch"))
        if isinstance(self.metric, list) or trial_id not in self._ot_trials or OBJECTIVE not in result or result.get("failed"):
            return  # Optuna keeps no intermediate values for several objectives
        if result["epoch"] <= self._last_step.get(trial_id, 0):
            return  # the last result arrives twice: as a result and with the completion
        self._last_step[trial_id] = result["epoch"]
        try:
            self._ot_trials[trial_id].report(result[OBJECTIVE], result["epoch"])
        except (UpdateFinishedTrialError, ValueError, RuntimeError):
            pass  # finished in the journal already (see the class docstring)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if trial_id in self._trunk_trials:
            self._trunks_ended.add(self._trunk_trials[trial_id])  # proposals still waiting for it train their own warm-up
            self._record_baseline(trial_id, result or {}, error)
            return
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result:
            self.on_trial_result(trial_id, result)  # Tune hands a trial's last result only to this method
        self._completed_trials.add(trial_id)
        state, values = self._outcome(result or {}, error)
        ot_trial = self._ot_trials[trial_id]
        if state == optuna.trial.TrialState.COMPLETE:  # a candidate for the confirm stage
            self._complete[trial_id] = (ot_trial.number, dict(ot_trial.params), float((result or {})[BEST]))
        self._mark_ended(ot_trial, trial_id, state, result or {}, error)
        try:
            self._ot_study.tell(self._ot_trials[trial_id], values, state=state)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
            pass  # finished in the journal already

    def _mark_ended(self, ot_trial: Any, trial_id: str, state: Any, result: Mapping[str, Any], error: bool) -> None:
        """Before ``tell`` (a finished Optuna trial takes no more attributes): how it ended, and where its checkpoint is."""
        from optuna.exceptions import UpdateFinishedTrialError

        reason = _reason(result, error, complete=state.name == "COMPLETE")
        attrs: dict[str, Any] = {"status": state.name, "status_reason": reason, **self._best_attrs(trial_id)}
        if result.get("checkpoint_dir_name"):
            attrs["checkpoint"] = f"ray/trial_{trial_id}/{result['checkpoint_dir_name']}"
        try:
            for key, value in attrs.items():
                ot_trial.set_user_attr(key, value)
        except (UpdateFinishedTrialError, ValueError, RuntimeError):
            pass  # finished in the journal already (see the class docstring)

    def _best_seen(self) -> dict[str, tuple[float, int | None]]:
        """Tune trial id -> (best objective, its epoch) of its last result that did not fail. Created
        here, not in ``__init__``: a searcher pickled by an older hamsweep comes back without it."""
        return self.__dict__.setdefault("_best", {})

    def _best_attrs(self, trial_id: str) -> dict[str, Any]:
        """The user attributes ``best_objective`` and ``best_epoch``: the number hamsweep ranks by
        (``trials.best_objective``); none for a trial that reported no result."""
        if trial_id not in self._best_seen():
            return {}
        best, epoch = self._best_seen()[trial_id]
        return {"best_objective": float(best), "best_epoch": epoch}

    def _record_baseline(self, trial_id: str, result: Mapping[str, Any], error: bool) -> None:
        """A search trunk (the PGD-AT baseline) that ended, in the baseline study; not confirm trunks."""
        if self._ot_study is None or trial_id not in self._ot_study.user_attrs.get("trunks", {}).values():
            return
        failed = error or bool(result.get("failed")) or BEST not in result
        attrs = {"tune_trial": trial_id, "status_reason": _reason(result, error, complete=True),
                 **({} if failed else {"best_objective": float(result[BEST]), "best_epoch": result.get("best_epoch")})}
        try:
            record_baseline(self._ot_study, self._trunk_trials[trial_id], attrs, None if failed else self._values(result))
        except (ValueError, RuntimeError):  # a value Optuna refuses (NaN): the sweep goes on without it
            logging.getLogger(__name__).warning("the PGD-AT baseline %s is not in the baseline study", trial_id, exc_info=True)

    def _values(self, result: Mapping[str, Any]) -> list[float]:
        """The objective values Optuna is told for a trial that ran all its epochs: each at its best epoch."""
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        return [float(result[m]) for m in metrics]

    def _outcome(self, result: Mapping[str, Any], error: bool) -> tuple[Any, Any]:
        from optuna.trial import TrialState

        if error or result.get("failed") or BEST not in result:
            return TrialState.FAIL, None
        if result.get("epoch", 0) < self.full_epochs:
            # Optuna takes no value with PRUNED: it keeps the last intermediate value (the objective
            # at the epoch it stopped); the best epoch's is the user attribute best_objective
            return TrialState.PRUNED, None
        return TrialState.COMPLETE, self._values(result)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._fail_orphans()

    def _fail_orphans(self) -> None:
        from optuna.trial import TrialState

        known = {t.number for t in [*self._ot_trials.values(), *(d[0] for d in self._deferred)]}
        for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in known:
                self._ot_study.tell(t.number, state=TrialState.FAIL)


def _reason(result: Mapping[str, Any], error: bool, complete: bool) -> str:
    """Why a trial ended, in words (user attribute ``status_reason``)."""
    epoch = result.get("epoch", 0)
    return ("error: its worker failed" if error else f"failed: {result['failed']}" if result.get("failed")
            else f"ran all {epoch} epochs" if complete else f"stopped at epoch {epoch} (ASHA or the budget)")


def make_searcher(spec: SweepSpec, folder: Path) -> Searcher:
    """The searcher for ``spec``, its study in ``folder``'s journal. A new study starts with the
    spec's defaults as its first trial (``search.start_with_defaults``): the paper's setting is
    always one of the points compared."""
    journal = Path(folder) / JOURNAL
    fresh = not journal.exists()
    name = study_name(folder) or new_study_name(spec.name)  # a folder keeps its study's name
    metrics = spec.objective.metrics
    multi = len(metrics) > 1
    searcher = Searcher(
        space=Space(spec.search.params, flat(spec.trial_config())),
        metric=[best_key(m) for m in metrics] if multi else BEST,
        mode=["max"] * len(metrics) if multi else "max",
        points_to_evaluate=[spec.defaults()] if fresh and spec.search.start_with_defaults and spec.search.params else None,
        sampler=make_sampler(spec),
        study_name=name,
        storage=journal_storage(journal),
        full_epochs=full_epochs(spec),
        spec=spec,
        folder=Path(folder),
    )
    if not fresh:  # a driver killed before Tune's first snapshot: nothing it proposed will run
        searcher._fail_orphans()
    if searcher._ot_study.metric_names is None:  # optuna-dashboard names the objective, not "Objective 0"
        searcher._ot_study.set_metric_names(list(metrics))
    return searcher


def full_epochs(spec: SweepSpec) -> int:
    """Epochs a trial runs when nothing stops it early (ASHA's max_t)."""
    return spec.scheduler.max_epochs or spec.train.epochs


class Asha(ASHAScheduler):
    """ASHA over the search trials only: a trunk is the PGD-AT baseline and runs to its last epoch,
    never compared at a rung, and so does every trial of the confirm stage. Rungs count epochs of
    the full schedule (a fork's first result is epoch ``warmup_epochs + 1``), so a fork meets the
    same rungs as the trial trained from scratch."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if role(trial.config) != TRUNK and stage(trial.config) != CONFIRM:
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if trial.trial_id not in self._trial_info:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_remove(tune_controller, trial)


def make_scheduler(spec: SweepSpec) -> ASHAScheduler | None:
    """ASHA on the epoch counter, comparing the primary objective; None for ``scheduler: none``."""
    s = spec.scheduler
    if s.name == "none":
        return None
    return Asha(
        time_attr="epoch", metric=OBJECTIVE, mode="max", max_t=full_epochs(spec),
        grace_period=s.grace_period, reduction_factor=s.reduction_factor,
    )
