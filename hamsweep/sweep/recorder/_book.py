"""The Recorder's book of trials: each trial's dashboard view and clock, and how trunks, forks
and confirm trials relate. It is the state every other job of the Recorder reads (the writer's
rows, the dashboard's frames, state.json, the budget); a resumed sweep rebuilds it from the
``trials`` table it finds."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hamsweep.keys import (
    BASELINE,
    BEST,
    CONFIG,
    CONFIRM,
    FORK,
    NUMBER,
    OBJECTIVE,
    SEARCH,
    TRUNK,
    role,
    stage,
    trial_params,
    view_role,
)
from hamsweep.results.schema import param_column
from hamsweep.spec.trial import warmup_key
from hamsweep.sweep.count import costs
from hamsweep.sweep.dashboard import ENDED, SweepState, TrialView
from hamsweep.sweep.trunk import trunk_config

if TYPE_CHECKING:
    from hamsweep.core.train import EpochRecord
    from hamsweep.spec import SweepSpec
    from hamsweep.sweep.recorder._confirm import ConfirmSink

__all__ = ["Clock", "TrialBook"]


@dataclass
class Clock:
    """One trial's time: seconds of earlier runs (before a restart or a resume) plus the current
    one."""

    started: float  # time.time() of the trial's first start
    before: float = 0.0  # wall seconds of earlier segments
    segment: float | None = None  # time.time() the current segment started; None when not running
    ended: float | None = None
    restarts: int = 0
    resumed_from: int | None = None  # epoch of the checkpoint the trial last continued from
    checkpoint: str | None = None  # latest checkpoint folder, relative to the sweep folder
    node: str | None = None  # host the trial last reported from
    devices: str | None = None  # CUDA_VISIBLE_DEVICES there

    def seconds(self, now: float) -> float:
        return self.before + (now - self.segment if self.segment is not None else 0.0)

    def stop(self, now: float) -> None:
        self.before, self.segment = self.seconds(now), None


class TrialBook:
    """Every trial of the sweep by Tune trial id: ``state.trials`` (the views the dashboard draws)
    and ``clocks``. Only the ``open`` trials (not ended) have clocks that move."""

    def __init__(self, spec: SweepSpec, started: float, confirm: ConfirmSink) -> None:
        self.spec, self.confirm = spec, confirm
        self.state = SweepState(
            name=spec.name,
            objective=spec.objective.primary,
            num_samples=spec.search.trials,
            started=started,
            now=time.time(),
            gpu_hours_budget=spec.budget.gpu_hours,
            wall_hours_budget=spec.budget.wall_hours,
            method_hours_budget=spec.search.method_hours,
            device=spec.resources.device,
        )
        self.clocks: dict[str, Clock] = {}
        self.open: set[str] = set()  # trials not ended: the only ones whose clocks move
        self.trunk_ids: dict[str, str] = {}  # trunk key -> the Tune trial id training it
        self.fork_keys: dict[str, str] = {}  # a fork's trial id -> its trunk's key
        self.failed: dict[str, str] = {}  # trial id -> reason reported by the trainable
        # trial id -> why its method's budget stopped it (a comparison's search.method_hours)
        self.budget_stops: dict[str, str] = {}
        self.tune_trials: set[str] = set()  # the trial ids Tune knows, set when the experiment ends

    # ---- resume ----
    def load(self, rows: list[dict[str, Any]], params: list[str]) -> None:
        """The trials of a resumed sweep, from its ``trials`` rows (``params``: searched keys)."""
        for row in rows:
            view = self._loaded_view(row, params)
            if view.role == TRUNK and row.get("trunk_key"):
                self.trunk_ids[row["trunk_key"]] = view.trial
            if view.status == "running":
                view.status = "pending"  # until Tune resumes it
            self.state.trials[view.trial] = view
            self.clocks[view.trial] = _loaded_clock(row)
            self.times(view.trial, time.time())
            if view.status not in ENDED:
                self.open.add(view.trial)

    def _loaded_view(self, row: dict[str, Any], params: list[str]) -> TrialView:
        # a confirm trial's row has no number: the chosen config's, as drawn
        confirm = (row.get("stage") or SEARCH) == CONFIRM
        view = TrialView(
            trial=row["trial"],
            params={k: row.get(param_column(k)) for k in params},
            epochs=row["epochs"],
            status=row["status"],
            number=self.confirm.chosen_number(row.get("config")) if confirm else row["number"],
            epoch=row["epochs_run"],
            objective=row["last_objective"],
            best_objective=row["best_objective"],
            best_epoch=row["best_epoch"],
            stop_reason=row["stop_reason"],
            role=view_role(row.get("role")),
            trunk=row.get("trunk"),
            forked_at=row.get("forked_at"),
            stage=row.get("stage") or SEARCH,
            seed=row.get("seed"),
            config=row.get("config"),
            baseline=row.get("baseline"),
        )
        view.label = self.confirm.label(view.config)
        return view

    # ---- trials as Tune reports them ----
    def view(self, tid: str, config: dict[str, Any]) -> TrialView:
        """The trial's view; a trial first heard of is added (open, its clock started now)."""
        if tid not in self.state.trials:
            self.state.trials[tid] = self._new_view(tid, config)
            self.open.add(tid)
        if tid not in self.clocks:
            self.clocks[tid] = Clock(started=time.time())
        return self.state.trials[tid]

    def _new_view(self, tid: str, config: dict[str, Any]) -> TrialView:
        """A trunk (the PGD-AT baseline, to its last epoch, no Optuna number), a search trial (a
        fork starts after its warm-up), or a confirm trial (either of the two on a new seed, all
        epochs)."""
        params = trial_params(config)
        cfg = self.spec.search_trial_config(params)
        confirm = stage(config) == CONFIRM
        extra = {}
        if confirm:
            extra = {
                "stage": CONFIRM,
                "config": config.get(CONFIG),
                "baseline": config.get(BASELINE),
                "label": self.confirm.label(config.get(CONFIG)),
            }
        if role(config) == TRUNK:
            self.trunk_ids[warmup_key(trunk_config(self.spec, params))] = tid
            epochs = cfg.train.epochs
            return TrialView(
                trial=tid, params=params, epochs=epochs, role=TRUNK, seed=cfg.train.seed, **extra
            )
        number = self.confirm.chosen_number(config.get(CONFIG)) if confirm else config.get(NUMBER)
        # ASHA never stops a confirm trial
        epochs = cfg.train.epochs if confirm else self.spec.full_epochs(cfg.train.method)
        view = TrialView(
            trial=tid, params=params, epochs=epochs, number=number, seed=cfg.train.seed, **extra
        )
        if config.get(FORK):
            self.fork_keys[tid] = config[FORK]
            view.trunk = self.trunk_ids.get(config[FORK])
            view.forked_at = cfg.fork_epoch()
        return view

    def running(self, tid: str, config: dict[str, Any]) -> tuple[TrialView, bool]:
        """The trial runs: its clock moves. True with the view when it was not running before."""
        view, clock = self.view(tid, config), self.clocks[tid]
        if clock.segment is None:
            clock.segment = time.time()
        started = view.status != "running"
        view.status = "running"
        return view, started

    def epoch(self, view: TrialView, record: EpochRecord, result: dict[str, Any]) -> None:
        """The trial's latest epoch (``record``, and the objectives its ``result`` carries)."""
        view.epoch, view.objective = record.epoch, result[OBJECTIVE]
        view.best_objective, view.best_epoch = result[BEST], result.get("best_epoch")
        view.mean_robust = result.get("robust_mean", view.mean_robust)
        view.clean_mean = result.get("clean_mean", view.clean_mean)
        robust = record.val_robust()
        if robust is not None and view.best_epoch == record.epoch:
            view.class_robust = tuple(
                c / n if n else math.nan for n, c in zip(robust.n, robust.correct)
            )
            view.class_names = tuple(result["class_names"])

    def restarts(self, tid: str) -> None:
        """Tune restarts the trial from its checkpoint: pending until it runs again."""
        clock = self.clocks[tid]
        clock.stop(time.time())
        clock.restarts += 1
        self.state.trials[tid].status = "pending"

    def finish(self, view: TrialView, status: str, reason: str) -> None:
        """The trial ended: its clock stops for good."""
        now = time.time()
        clock = self.clocks[view.trial]
        clock.stop(now)
        clock.ended = now
        self.times(view.trial, now)  # its last: now() moves only the trials not ended
        self.open.discard(view.trial)
        view.status, view.stop_reason = status, reason

    def show_confirm(self, p: Any) -> None:
        """The confirm stage's plan (``ConfirmPlan``) on the dashboard: its trials and seeds."""
        self.state.confirm_trials, self.state.confirm_seeds = len(p.trials), tuple(p.seeds)

    def set_waiting(self, waiting: list[tuple[str, int]]) -> None:
        """The searcher's deferred proposals: (trunk key, the warm-up epoch each waits for)."""
        self.state.waiting = [(self.trunk_ids.get(key, key), epoch) for key, epoch in waiting]

    # ---- time ----
    def now(self) -> SweepState:
        """The state as of now: every open trial's times moved on."""
        now = time.time()
        self.state.now = now
        for tid in self.open:  # not every trial: this runs at each of Tune's steps
            self.times(tid, now)
        return self.state

    def times(self, tid: str, now: float) -> None:
        view = self.state.trials[tid]
        view.wall_seconds = self.clocks[tid].seconds(now)
        view.gpu_seconds, view.device_seconds = costs(self.spec, view.wall_seconds)

    # ---- what the rows say ----
    def for_row(self, tid: str) -> tuple[TrialView, Clock, str | None]:
        """The view (a fork's trunk looked up again: its trunk may have started since), the clock,
        and the trunk key a trunk trains, of the trial's ``trials`` row."""
        view = self.state.trials[tid]
        if tid in self.fork_keys:
            view.trunk = self.trunk_ids.get(self.fork_keys[tid], view.trunk)
        trunk_key = next((k for k, t in self.trunk_ids.items() if t == tid), None)
        return view, self.clocks[tid], trunk_key

    def running_open(self) -> list[str]:
        """The trials not ended that run now (their rows' times move on)."""
        return [tid for tid in self.open if self.state.trials[tid].status == "running"]

    def ended(self) -> int:
        return sum(v.status in ENDED for v in self.state.trials.values())


def _loaded_clock(row: dict[str, Any]) -> Clock:
    started = row["started"].timestamp() if row["started"] else time.time()
    clock = Clock(
        started=started,
        before=row["wall_seconds"] or 0.0,
        restarts=row["restarts"] or 0,
        resumed_from=row["resumed_from"],
    )
    clock.checkpoint = row["checkpoint"]
    clock.ended = row["ended"].timestamp() if row["ended"] else None
    clock.node, clock.devices = row.get("node"), row.get("devices")
    return clock
