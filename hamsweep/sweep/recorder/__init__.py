"""Tune events -> the sweep's Parquet rows and the dashboard's state. One ``Recorder`` lives in the
driver: it is the sweep's single writer (a ``tune.Callback``) and its budget stopper (a
``tune.Stopper``). It composes one small object per job, each in a module of its own:

- ``_book``: the trials (their dashboard views and clocks), rebuilt from ``trials`` on resume;
- ``_writer``: the Parquet rows, buffered and flushed as new part files at least every
  ``flush_s`` seconds and at every trial end;
- ``_budget``: the wall-clock and GPU-hour budget;  ``_disk_watch``: a disk that fills up;
- ``_state``: ``state.json``;  ``_feed``: the dashboard's frames and event lines;
- ``_confirm``: the confirm stage's plan;  ``_study``: what the Optuna study must be told.

Tune pickles its run config (this object included, and the searcher holding the bound methods
``set_waiting`` and ``set_confirm``) into the experiment folder, copies it, and unpickles it when a
Tuner is restored. A pickled Recorder holds no state: it stands for the Recorder the driver of
this process attached (``attach``), and unpickles as that very object (``attached``), or as an
``_Inert`` stand-in where no sweep runs (ExperimentAnalysis, a notebook). A Recorder pickled
before the split (as ``hamsweep.recorder.Recorder`` with the empty state its ``__getstate__``
gave) is migrated by ``__setstate__``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import tune

from hamsweep.keys import CONFIRM, NUMBER, TRUNK
from hamsweep.results.read import read_table
from hamsweep.results.schema import TRIALS
from hamsweep.results.spend import Spending
from hamsweep.results.writer import FLUSH_S
from hamsweep.spec import METHOD_KEY
from hamsweep.sweep import disk
from hamsweep.sweep.count import confirm_trials, trial_count
from hamsweep.sweep.dashboard import TrialView
from hamsweep.sweep.per_method import method_budget
from hamsweep.sweep.recorder._book import TrialBook
from hamsweep.sweep.recorder._budget import Budget
from hamsweep.sweep.recorder._confirm import ConfirmSink
from hamsweep.sweep.recorder._disk_watch import DiskWatch
from hamsweep.sweep.recorder._feed import DashboardFeed
from hamsweep.sweep.recorder._state import StateFile
from hamsweep.sweep.recorder._study import StudyLink
from hamsweep.sweep.recorder._writer import RowWriter, param_types

if TYPE_CHECKING:
    from hamsweep.errors import DiskFull
    from hamsweep.spec import SweepSpec
    from hamsweep.sweep.jobs import TrialJobs

__all__ = ["Recorder", "attached", "param_types"]


class Recorder(tune.Callback, tune.Stopper):
    """The sweep's writer, dashboard feed and budget stopper (see the module docstring). It keeps
    no state of its own: every attribute is a job (or the spec and folder they share)."""

    def __init__(
        self,
        spec: SweepSpec,
        out: Path,
        view: Any,
        *,
        started: float,
        restored: bool,
        flush_s: float = FLUSH_S,
        jobs: TrialJobs | None = None,
        ray_temp: Path | None = None,
    ) -> None:
        self.spec, self.out = spec, Path(out)
        # trials trained outside Ray (SLURM mode jobs): polled each step, told which end early
        self.jobs = jobs
        self.writer = RowWriter(spec, self.out, flush_s)
        self.confirm = ConfirmSink(self.out)
        self.book = TrialBook(spec, started, self.confirm)
        self.budget = Budget(spec.budget)
        # Ray's temp folder: the session folder of the sweep's own Ray (None on a cluster's)
        self.disk = DiskWatch(self.out, ray_temp, disk.reserve(spec))
        self.state_file = StateFile(self.out)
        self.feed = DashboardFeed(view, self.book.now)
        self.study = StudyLink(self.out)
        if restored:  # Tune continues these trials; rows of any other one are dropped at the end
            if (plan := self.confirm.load()) is not None:
                self.book.show_confirm(plan)
            rows = read_table(self.out, TRIALS).to_pylist()
            self.book.load(rows, list(self.writer.types))

    # ---- pickling: a reference to the attached Recorder (see the module docstring) ----
    def attach(self) -> Recorder:
        """This process's sweep Recorder from now on: what a pickled Recorder unpickles as."""
        global _attached
        _attached = self
        return self

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return attached, ()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A Recorder pickled before the split (``{}``: it kept no state) shares the attached
        Recorder's jobs; with none attached it is inert."""
        live = _attached
        if live is None:
            self.__class__ = _Inert  # an old instance, made before any class of ours could say so
            return
        self.__dict__.update(live.__dict__)  # the same job objects: no state of its own

    def __deepcopy__(self, memo: dict[int, Any]) -> Recorder:
        return self

    # ---- what the driver reads when the run has ended ----
    @property
    def disk_full(self) -> DiskFull | None:
        return self.disk.full

    @property
    def budget_hit(self) -> str | None:
        return self.budget.hit

    @property
    def tune_trials(self) -> set[str]:
        return self.book.tune_trials

    def disk_low(self) -> DiskFull | None:
        return self.disk.low()

    def unfinished(self) -> int:
        """Trials not ended yet, counting those the sampler has not proposed, and the confirm
        stage's (one, before it is planned: the search has not ended). In a comparison with a
        budget in device-hours, the search trials no method has hours left for do not count."""
        planned = self.confirm.planned()
        confirm = planned if planned is not None else min(confirm_trials(self.spec), 1)
        count = trial_count(self.spec, confirm=confirm)
        if (budget := method_budget(self.spec)) is not None:
            budget.source = self.method_seconds
            counts = {m: v.trials for m, v in self.book.state.method_spend().items()}
            if not budget.left(counts):  # the search trials never started never will
                count -= self.spec.search.trials - sum(counts.values())
        return count - self.book.ended()

    def method_seconds(self) -> dict[str | None, Spending]:
        """method -> what its search has spent so far (``results.spend``), for a comparison's
        budget in device-hours (``per_method.MethodBudget``)."""
        return self.book.now().method_spend()

    # ---- the searcher's sinks (bound methods the pickled searcher holds: keep their names) ----
    def set_confirm(self, p: Any) -> None:
        """The searcher's confirm plan, made when the search ended: kept in the folder."""
        self.confirm.set(p)
        self.book.show_confirm(p)

    def set_waiting(self, waiting: list[tuple[str, int]]) -> None:
        """The searcher's deferred proposals: (trunk key, the warm-up epoch each waits for)."""
        self.book.set_waiting(waiting)

    # ---- trial events ----
    def _running(self, trial: Any) -> TrialView:
        view, started = self.book.running(trial.trial_id, trial.config)
        if started:
            self.feed.event(view, "start")
        return view

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running(trial)
        self._row(trial.trial_id)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        view = self._running(trial)
        clock = self.book.clocks[trial.trial_id]
        clock.node = result.get("node", clock.node)
        clock.devices = result.get("devices", clock.devices)
        if "failed" in result:
            self.book.failed[trial.trial_id] = result["failed"]
            return
        if "test" in result:  # a confirm trial's best checkpoint on the test split: its last result
            self.writer.test(view.trial, result["test"], result["class_names"])
            return
        history = result.get("history", ())
        for rec in history:  # a restarted trial's epochs up to its checkpoint
            self.writer.epoch(view.trial, rec, result["class_names"])
        if history:
            clock.resumed_from = history[-1]["epoch"]
        record = self.writer.epoch(view.trial, result["record"], result["class_names"])
        self.book.epoch(view, record, result)
        self._row(trial.trial_id)
        self.feed.event(view, "epoch")
        self._tick(event=True)

    def on_checkpoint(
        self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        from hamsweep.sweep.trial import prune_checkpoints

        path = Path(checkpoint.path)
        self.book.view(trial.trial_id, trial.config)
        self.book.clocks[trial.trial_id].checkpoint = (
            os.path.relpath(path, self.out) if path.is_absolute() else str(path)
        )
        if path.is_dir():  # local storage: only the newest checkpoints keep their weights
            prune_checkpoints(path.parent)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.disk.check(at_once=True)  # a checkpoint the full disk refused crashes the trial first
        self._stop_work(trial)  # Tune restarts it from its checkpoint: what still runs of it goes
        self.book.view(trial.trial_id, trial.config)
        self.book.restarts(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        view = self.book.view(trial.trial_id, trial.config)
        if trial.trial_id in self.book.failed:
            self._finish(view, "failed", self.book.failed[trial.trial_id])
        elif view.epoch < view.epochs:
            self._stop_work(trial)
            reason = self.budget.hit or self.book.budget_stops.get(view.trial)
            self._finish(view, "stopped", reason or f"ASHA at epoch {view.epoch}")
        else:
            self._finish(view, "completed", f"ran all {view.epochs} epochs")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._stop_work(trial)
        if self.disk.check(at_once=True):  # not the trial's fault: resume restarts it
            return
        view = self.book.view(trial.trial_id, trial.config)
        self._finish(view, "failed", f"error: {_last_error_line(trial)}")

    def _stop_work(self, trial: Any) -> None:
        """A trial ended early or restarts: its SLURM job (mode jobs) must not train on."""
        if self.jobs is not None:
            self.jobs.stop(trial.config.get(NUMBER))

    def _finish(self, view: TrialView, status: str, reason: str) -> None:
        self.book.finish(view, status, reason)
        self._row(view.trial)
        self._flush()
        self.feed.event(view, status)
        if len(self.spec.objective.metrics) == 1:  # Optuna's best trial: single objective only
            self.study.sampler_best(self.book.state)
        self._tick(event=True)

    # ---- the loop ----
    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.jobs is not None:
            self.jobs.poll()
        if not self.disk.check():
            self._tick()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.book.tune_trials = {t.trial_id for t in trials}
        for tid, view in self.book.state.trials.items():
            if view.status == "running" and self.budget.hit:
                # Tune ends them without on_trial_complete, to us or to the searcher
                self._finish(view, "stopped", self.budget.hit)
                if view.role != TRUNK and view.stage != CONFIRM:  # no Optuna trials
                    self.study.tell_pruned(view, self.budget.hit)
            elif view.status == "running":
                self._row(tid)
        self._flush()
        self.feed.draw()
        self.disk.guard(lambda: self.state_file.write(self.book.state))
        self.feed.close()

    def _tick(self, event: bool = False) -> None:
        if self.writer.due():
            for tid in self.book.running_open():
                self._row(tid)  # wall and GPU seconds move on
            self._flush()
        self.feed.tick(event)
        self.state_file.tick(self.book.state, self.disk.guard)

    def _flush(self) -> None:
        self.disk.guard(self.writer.flush)

    def _row(self, tid: str) -> None:
        view, clock, trunk_key = self.book.for_row(tid)
        self.writer.trial(view, clock, trunk_key, time.time())

    # ---- tune.Stopper: the budget, and a full disk Tune cannot be asked to stop for ----
    def __call__(self, trial_id: str, result: dict) -> bool:
        """A search trial of a comparison stops once its method has spent its device-hours
        (``search.method_hours``): no method trains longer than another."""
        budget = method_budget(self.spec)
        view = self.book.state.trials.get(trial_id)
        if budget is None or view is None or not _searched(view) or "failed" in result:
            return False
        budget.source = self.method_seconds
        method = view.params.get(METHOD_KEY)
        if not budget.over(method) or result.get("epoch", 0) >= view.epochs:
            return False
        self.book.budget_stops[trial_id] = (
            f"{method}'s search budget of {self.spec.search.method_hours:g} device-hours spent, "
            f"at epoch {result.get('epoch', 0)}"
        )
        return True

    def stop_all(self) -> bool:
        if self.disk.must_stop_now():
            return True
        return self.budget.spent(self.book.now())


def _searched(view: TrialView) -> bool:
    """A search trial (not a trunk, not the confirm stage's)."""
    return view.role != TRUNK and view.stage != CONFIRM


class _Inert(tune.Callback, tune.Stopper):
    """A Recorder unpickled where no sweep runs: Tune's no-op callbacks, and a stopper that never
    stops."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return False

    def set_confirm(self, p: Any) -> None:
        """The searcher's sinks, bound to a Recorder it held: heard by nobody here."""

    def set_waiting(self, waiting: list[tuple[str, int]]) -> None:
        pass

    def method_seconds(self) -> dict[str | None, Spending]:
        """A comparison's budget source (``MethodBudget.source``): nothing spent, here."""
        return {}


_attached: Recorder | None = None  # the driver's Recorder in this process (``Recorder.attach``)


def attached() -> Recorder | _Inert:
    """What a pickled Recorder unpickles as: the attached Recorder itself, or an inert stand-in."""
    return _attached if _attached is not None else _Inert()


def _last_error_line(trial: Any) -> str:
    """The exception line of the trial's error file (Ray writes the whole traceback there)."""
    path = trial.error_file
    if not path or not Path(path).is_file():
        return "the trial's worker failed"
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    return lines[-1] if lines else "the trial's worker failed"
