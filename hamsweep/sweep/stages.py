"""The stage scheduler: which trial a sweep hands Ray Tune next. Pure Python, no Ray and no Optuna:
it is told what was proposed and what ended, reads the trunk folders (``trunk.ready_epochs``), and
answers with the next config, None (nothing can start now) or ``FINISHED``.

The stages, in the order they are handed out:

1. **Search trunks** (``trunk.plan``): each shared PGD-AT warm-up, role ``trunk``, numbered -1, -2,
   ...: not an Optuna trial.
2. **Search proposals**. A HAM proposal whose trunk has not reached its warm-up epoch yet is
   **deferred**, not started: it would hold a GPU idle. Deferred proposals start as soon as their
   epoch is there, before any new one is asked for; while they wait, new proposals are asked for (up
   to ``search.max_concurrent`` waiting, never more than ``search.trials`` in all), so that one
   whose epoch is there can run. A proposal whose trunk ended without its epoch (it failed) trains
   its own warm-up. A comparison with ``search.method_hours`` (``budget``, a
   ``per_method.MethodBudget``) asks for proposals only while a method has hours and trials left,
   and its search is over once none has and its trials have ended.
3. **The confirm stage** (``hamsweep.sweep.confirm``), once every search proposal has been handed
   out and has ended: the ``confirm.top_k`` COMPLETE trials with the highest objective and their
   PGD-AT baselines on new seeds, each seed's trunks first, each config as soon as its trunk's
   epoch is there (or its trunk failed).
4. ``FINISHED``.

A proposal is kept with an opaque ``handle`` (the Optuna trial, for ``search.Searcher``): what
proposed it gets it back when the proposal starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hamsweep.keys import (
    CONFIG,
    CONFIRM,
    FORK,
    KEEP,
    NUMBER,
    ROLE,
    TRUNK,
    role,
    stage,
    trial_params,
)
from hamsweep.spec import METHOD_KEY, SweepSpec
from hamsweep.spec.trial import warmup_key
from hamsweep.sweep.trunk import Plan, plan, ready_epochs, trunk_config

__all__ = ["FINISHED", "Point", "Stages"]

FINISHED = "FINISHED"  # Ray Tune's ``Searcher.FINISHED``: Tune compares it by value
Point = tuple[str, int]  # (trunk key, warm-up epoch) where a trial forks
Candidate = tuple[int, dict[str, Any], float]  # a COMPLETE search trial: (number, params, best)


class Stages:
    """What to hand out next, stage by stage (see the module docstring). ``waiting_sink`` hears of
    the points trials wait for whenever they change (the dashboard), ``confirm_sink`` of the confirm
    plan when it is made."""

    def __init__(self, spec: SweepSpec | None = None, folder: Path | None = None) -> None:
        self.spec, self.folder = spec, folder
        self.plan: Plan = plan(spec) if spec is not None else Plan(reason="no spec")
        self.trunk_trials: dict[str, str] = {}  # Tune trial id -> the key of the trunk it trains
        self.trunks_ended: set[str] = set()  # keys of trunks whose trial ended (finished or failed)
        self.deferred: list[tuple[Any, dict[str, Any], Point]] = []  # (handle, config, its point)
        self.started: set[str] = set()  # Tune trial ids of the search proposals handed out
        self.ended: set[str] = set()  # ... and of those that ended
        self.complete: dict[str, Candidate] = {}  # COMPLETE search trials: the confirm candidates
        self.confirm: list[dict[str, Any]] | None = None  # not handed out yet; None: not planned
        self.waiting_sink: Any = None  # called with [(trunk key, epoch)] of the trials that wait
        self.confirm_sink: Any = None  # called with the ConfirmPlan when it is made
        # a comparison's budget in device-hours (search.method_hours); None: equal trials
        self.budget: Any = None
        self.started_methods: dict[str, str] = {}  # Tune trial id -> the method it trains

    # ---- the search: trunks first, then proposals ----
    def next_trunk(self, trial_id: str) -> dict[str, Any] | None:
        """The config of the next search trunk not handed out yet, as Tune trial ``trial_id``."""
        started = set(self.trunk_trials.values())
        trunk = next((t for t in self.plan.trunks if t.key not in started), None)
        if trunk is None:
            return None
        self.trunk_trials[trial_id] = trunk.key
        return {
            ROLE: TRUNK,
            NUMBER: -1 - trunk.index,
            KEEP: list(trunk.keep or self.plan.fork_epochs),
            **trunk.params,
        }

    def release(self, trial_id: str) -> tuple[Any, dict[str, Any]] | None:
        """The first deferred proposal that can start now, as Tune trial ``trial_id``: its handle
        and its config as it starts."""
        for i, (handle, config, point) in enumerate(self.deferred):
            if (ready := self._start(config, point)) is not None:
                del self.deferred[i]
                self._started(trial_id, config)
                self._tell_waiting()
                return handle, ready
        return None

    def may_ask(self) -> bool:
        """Whether to ask for another proposal: always, unless proposals wait for a trunk (then at
        most ``max_concurrent`` wait, and no more are asked for than the sweep has trials)."""
        if self.spec is None:
            return True
        proposed = len(self.started) + len(self.deferred)
        waiting_ok = not self.plan.shared or len(self.deferred) < self.spec.search.max_concurrent
        if self._budget() is not None and not self._budget().left(self.method_counts()):
            return False  # every method has spent its hours (or has had its most trials)
        return waiting_ok and proposed < self.spec.search.trials

    def method_counts(self) -> dict[str, int]:
        """method -> the search proposals of it made so far (handed out, or waiting)."""
        counts: dict[str, int] = {}
        methods = [*self.__dict__.get("started_methods", {}).values()]
        for method in methods + [c.get(METHOD_KEY) for _, c, _ in self.deferred]:
            counts[method] = counts.get(method, 0) + 1
        return counts

    def _budget(self) -> Any:
        return self.__dict__.get("budget")  # (none in a Stages pickled before budgets)

    def _started(self, trial_id: str, config: dict[str, Any]) -> None:
        self.started.add(trial_id)
        self.__dict__.setdefault("started_methods", {})[trial_id] = config.get(METHOD_KEY)

    def offer(self, trial_id: str, handle: Any, config: dict[str, Any]) -> dict[str, Any] | None:
        """A new proposal for Tune trial ``trial_id``: its config as it starts now, or None when it
        is deferred (kept with ``handle`` until its trunk epoch is there)."""
        point = self._fork_point(config)
        ready = self._start(config, point)
        if ready is None:
            self.deferred.append((handle, config, point))  # type: ignore[arg-type]
            self._tell_waiting()
        else:
            self._started(trial_id, config)
        return ready

    def running(self, trial_id: str) -> bool:
        """Whether ``trial_id`` is a search proposal that was handed out and has not ended."""
        return trial_id in self.started and trial_id not in self.ended

    def search_ended(self, trial_id: str, complete: Candidate | None = None) -> None:
        """A search proposal ended; ``complete``: (number, params, best) of one that ran all its
        epochs (a candidate for the confirm stage)."""
        self.ended.add(trial_id)
        if complete is not None:
            self.complete[trial_id] = complete

    def trunk_ended(self, trial_id: str) -> str:
        """A trunk's trial ended (finished or failed): proposals still waiting for an epoch it did
        not reach train their own warm-up. Returns the trunk's key."""
        key = self.trunk_trials[trial_id]
        self.trunks_ended.add(key)
        return key

    def waiting_handles(self) -> list[Any]:
        """The handles of the deferred proposals (proposed, not handed out)."""
        return [handle for handle, _, _ in self.deferred]

    # ---- the confirm stage ----
    def search_over(self) -> bool:
        """Every search proposal has been handed to Tune and has ended (with a budget in
        device-hours: also once no method has hours or trials left)."""
        if self.spec is None or self.deferred or not self.started <= self.ended:
            return False
        if len(self.started) >= self.spec.search.trials:
            return True
        budget = self._budget()
        return budget is not None and not budget.left(self.method_counts())

    def next_confirm(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next confirm trial that can start now (a trunk, or a config whose trunk epoch is
        there), as Tune trial ``trial_id``; None while they wait; FINISHED once all are handed
        out."""
        if self.confirm is None:
            self._plan_confirm()
        for i, config in enumerate(self.confirm or ()):
            ready = self._start(config, self._fork_point(config))
            if ready is not None:
                del self.confirm[i]  # type: ignore[union-attr]
                if role(config) == TRUNK:  # its forks train their own warm-up if it fails
                    cfg = trunk_config(self.spec, trial_params(config))  # type: ignore[arg-type]
                    self.trunk_trials[trial_id] = warmup_key(cfg)
                self._rounds()["handed"][trial_id] = (config[CONFIG], config["train.seed"])
                self._tell_waiting()
                return ready
        if self.confirm:
            return None
        return self._next_round(trial_id)

    def early_baseline(self, trial_id: str) -> dict[str, Any] | None:
        """A confirm-stage PGD-AT baseline (``confirm.early_baselines``) not handed out yet, as Tune
        trial ``trial_id``: while the search has nothing to start (its proposals wait for a trunk
        epoch, or it has asked for all it may), a slot trains what the confirm stage needs whatever
        the search chooses. None when there is none (left, or known yet)."""
        from hamsweep.sweep.confirm import early_baselines

        if self.spec is None:
            return None
        book = self._rounds()
        early = book.setdefault("early", {})  # (CONFIG, seed) -> Tune trial id
        for config in early_baselines(self.spec):
            key = (config[CONFIG], config["train.seed"])
            if key not in early:
                early[key] = trial_id
                book["handed"][trial_id] = key
                cfg = trunk_config(self.spec, trial_params(config))
                self.trunk_trials[trial_id] = warmup_key(cfg)
                return config
        return None

    # ---- seeds in rounds (confirm.seeds: {min, max}) ----
    def _rounds(self) -> dict[str, Any]:
        """The confirm trials handed out (Tune trial id -> (CONFIG, seed)), their test objectives
        ((CONFIG, seed) -> value, None: failed) and the plan so far. (A Stages pickled before
        rounds existed has none: they start empty.)"""
        return self.__dict__.setdefault("rounds", {"handed": {}, "values": {}, "plan": None})

    def confirm_ended(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        """A trial ended: if it is a confirm trial, keep its test objective for the next round."""
        from hamsweep.sweep.confirm import test_objective

        book = self._rounds()
        if trial_id in book["handed"] and self.spec is not None:
            value = None if error else test_objective(self.spec, result or {})
            book["values"][book["handed"][trial_id]] = value

    def _next_round(self, trial_id: str) -> dict[str, Any] | str | None:
        """With every confirm trial handed out: more seeds for each config whose trials (and its
        baseline's) have ended and whose difference to PGD-AT is still undecided
        (``confirm.undecided``), without waiting for the other configs' trials; None while some
        run; FINISHED when none is left undecided (or seeds are not in rounds)."""
        from hamsweep.sweep.confirm import add_round, undecided

        book = self._rounds()
        if self.spec is None or book["plan"] is None:
            return FINISHED
        more, running = undecided(self.spec, book["plan"], book["values"])
        if not more:
            return None if running else FINISHED
        p, trials = add_round(self.spec, book["plan"], more)
        book["plan"], self.confirm = p, list(trials)
        if self.confirm_sink is not None:
            self.confirm_sink(p)
        return self.next_confirm(trial_id)

    def _plan_confirm(self) -> None:
        from hamsweep.sweep.confirm import Chosen, plan_confirm, trades_reference

        assert self.spec is not None
        ranked = sorted(self.complete.items(), key=lambda kv: (-kv[1][2], kv[1][0]))
        k = self.spec.confirm.top_k
        # a comparison confirms each method's own best k: the search ranks a method's configs
        # against each other, never against another method's (their sampler states are apart)
        best = (
            [
                kv
                for m in self.spec.methods
                for kv in [kv for kv in ranked if kv[1][1].get(METHOD_KEY) == m][:k]
            ]
            if self.spec.search.methods
            else ranked[:k]
        )
        chosen = (
            [Chosen(tid, number, params, value) for tid, (number, params, value) in best]
            if self.spec.confirm.retrains
            else []
        )
        if reference := trades_reference(self.spec, chosen, self.complete):
            chosen.append(reference)
        p = plan_confirm(self.spec, chosen)
        early = self._rounds().get("early", {})  # baselines trained while the search ran
        self.confirm = [t for t in p.trials if (t[CONFIG], t["train.seed"]) not in early]
        self._rounds()["plan"] = p
        if self.confirm_sink is not None:
            self.confirm_sink(p)

    # ---- forks ----
    def _fork_point(self, config: dict[str, Any]) -> Point | None:
        """(trunk key, warm-up epoch) where a proposal (or a confirm config) forks; None: it trains
        from scratch (a trunk, too)."""
        if self.spec is None or not self.plan.shared or role(config) == TRUNK:
            return None
        cfg = self.spec.search_trial_config(trial_params(config))
        # its trunk is the PGD-AT run of its own seed, handed out first
        if stage(config) == CONFIRM:
            return (warmup_key(cfg), cfg.fork_epoch()) if self.plan.forks(cfg) else None
        trunk = self.plan.trunk_of(cfg)
        return (trunk.key, cfg.fork_epoch()) if trunk is not None else None

    def _start(self, config: dict[str, Any], point: Point | None) -> dict[str, Any] | None:
        """``config`` as it starts now (forking from its trunk), or None while its trunk epoch is
        not there."""
        if point is None:
            return config
        key, epoch = point
        if epoch in ready_epochs(self.folder, key):  # type: ignore[arg-type]
            return {**config, FORK: key}
        if key in self.trunks_ended:
            return config  # its trunk failed before that epoch: it trains its own warm-up
        return None

    def _tell_waiting(self) -> None:
        if self.waiting_sink is not None:
            confirm = [p for c in self.confirm or () if (p := self._fork_point(c)) is not None]
            self.waiting_sink([point for _, _, point in self.deferred] + confirm)
