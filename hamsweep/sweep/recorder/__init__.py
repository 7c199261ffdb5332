"""Tune events -> the sweep's Parquet rows and the dashboard's state. One ``Recorder`` lives in the
driver: it is the sweep's single writer (a ``tune.Callback``) and its budget stopper (a
``tune.Stopper``).

Rows are buffered and flushed as new part files at least every ``flush_s`` seconds and at every
trial end. A resumed sweep rebuilds its state from the ``trials`` table it finds.
"""

from __future__ import annotations

import datetime as dt
import errno
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from ray import tune

from hamsweep import disk, results
from hamsweep.errors import DiskFull
from hamsweep.dashboard import STATE_FILE, SweepState, TrialView, state_to_json
from hamsweep.rundir import atomic_write_text
from hamsweep.results import CLASSES, EPOCHS, TRIALS, BufferedWriter, PartWriter, param_column
from hamsweep.keys import BASELINE, CONFIG, CONFIRM, FORK, SEARCH, TRUNK, role, stage, table_role, trial_params, view_role
from hamsweep.search import BEST, NUMBER, OBJECTIVE, full_epochs
from hamsweep.spec import Distribution, SweepSpec
from hamsweep.spec.trial import warmup_key
from hamsweep.trunk import plan, trunk_config

if TYPE_CHECKING:
    from hamsweep.sweep import TrialJobs

__all__ = ["Recorder", "param_types"]

_ENDED = ("completed", "stopped", "failed")
_REFRESH_S = 1.0  # a dashboard frame at least once a second ...
_EVENT_FRAME_S = 0.5  # ... and on a trial's event, at most twice a second (a frame of 1,000 trials takes ~25 ms)
_STATE_S = 1.0  # state.json at most once a second, and at most 5% of the driver's time (~6 ms for 1,000 trials)
_DISK_S = 1.0  # free space is looked at at most once a second


@dataclass
class _Clock:
    """One trial's time: seconds of earlier runs (before a restart or a resume) plus the current one."""

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


def param_types(params: dict[str, Distribution]) -> dict[str, pa.DataType]:
    """Arrow type of each searched key's column in ``trials``."""
    out = {}
    for key, d in params.items():
        if d.kind == "int":
            out[key] = pa.int64()
        elif d.kind != "choice":
            out[key] = pa.float64()
        else:
            values = [c for c in d.choices or () if c is not None]
            numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in values)
            ints = numeric and all(isinstance(c, int) for c in values)
            bools = all(isinstance(c, bool) for c in values)
            out[key] = pa.bool_() if bools and values else pa.int64() if ints else pa.float64() if numeric else pa.string()
    return out


class Recorder(tune.Callback, tune.Stopper):
    """The sweep's writer, dashboard feed and budget stopper (see the module docstring)."""

    def __init__(self, spec: SweepSpec, out: Path, view: Any, *, started: float, restored: bool, flush_s: float = 5.0,
                 jobs: TrialJobs | None = None, ray_temp: Path | None = None) -> None:
        self.spec, self.out, self.view = spec, Path(out), view
        self.jobs = jobs  # trials trained outside Ray (SLURM mode jobs): polled each step, told which trials end early
        self.ray_temp = ray_temp  # the session folder of the sweep's own Ray (None on a cluster's): its disk is watched
        self.keep_free = disk.reserve(spec)  # bytes the sweep folder keeps free while running
        self.disk_full: DiskFull | None = None  # why the sweep stopped early on a full disk
        self._disk_at = 0.0
        self.full = full_epochs(spec)
        self.types = param_types(spec.search.params)
        writer = PartWriter(self.out, {TRIALS: results.trials_schema(self.types)})
        self.writer = BufferedWriter(writer, flush_s)
        self.state = SweepState(
            name=spec.name, objective=spec.objective.primary, num_samples=spec.search.num_samples, started=started,
            now=time.time(), gpu_hours_budget=spec.budget.gpu_hours, wall_hours_budget=spec.budget.wall_hours,
            device=spec.resources.device,
        )
        self.clocks: dict[str, _Clock] = {}
        self._open: set[str] = set()  # trials not ended: the only ones whose clocks move
        self.plan = plan(spec)
        self.trunk_ids: dict[str, str] = {}  # trunk key -> the Tune trial id training it
        self.fork_keys: dict[str, str] = {}  # a fork's trial id -> its trunk's key
        self.failed: dict[str, str] = {}  # trial id -> reason reported by the trainable
        self.budget_hit: str | None = None
        self.tune_trials: set[str] = set()  # the trial ids Tune knows, set when the experiment ends
        self.study: Any = None  # see _study()
        self._frame = self._state_due = 0.0
        self.confirm: Any = None  # the confirm stage's ConfirmPlan, once the search has ended
        if restored:  # Tune continues these trials; rows of any other one are dropped at the end
            self._load_confirm()
            self._load()

    # Tune pickles its run config (this object included) into the experiment folder, and copies
    # it when a Tuner is restored. No copy may write or draw on its own: a copy made in this
    # process shares the live Recorder's state (the one ``activate`` registered), which is how a
    # restored Tuner's pickled Recorder becomes this run's.
    _live: Recorder | None = None

    def activate(self) -> Recorder:
        Recorder._live = self
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if Recorder._live is None:  # read outside a driver (ExperimentAnalysis, a notebook): do nothing
            self.__class__ = _Inert
            return
        self.__dict__ = Recorder._live.__dict__

    def __deepcopy__(self, memo: dict[int, Any]) -> Recorder:
        return self

    # ---- resume ----
    def _load(self) -> None:
        for row in results.read_table(self.out, TRIALS).to_pylist():
            params = {k: row.get(param_column(k)) for k in self.types}
            confirm = (row.get("stage") or SEARCH) == CONFIRM  # its row has no number: the chosen config's, as drawn
            view = TrialView(
                trial=row["trial"], params=params, epochs=row["epochs"], status=row["status"],
                number=self._chosen_number(row.get("config")) if confirm else row["number"],
                epoch=row["epochs_run"], objective=row["last_objective"], best_objective=row["best_objective"],
                best_epoch=row["best_epoch"], stop_reason=row["stop_reason"],
                role=view_role(row.get("role")), trunk=row.get("trunk"), forked_at=row.get("forked_at"),
                stage=row.get("stage") or SEARCH, seed=row.get("seed"), config=row.get("config"), baseline=row.get("baseline"),
            )
            view.label = self._label(view.config)
            if view.role == TRUNK and row.get("trunk_key"):
                self.trunk_ids[row["trunk_key"]] = view.trial
            if view.status == "running":
                view.status = "pending"  # until Tune resumes it
            self.state.trials[view.trial] = view
            started = row["started"].timestamp() if row["started"] else time.time()
            clock = _Clock(started=started, before=row["wall_seconds"] or 0.0, restarts=row["restarts"] or 0,
                           resumed_from=row["resumed_from"])
            clock.checkpoint, clock.ended = row["checkpoint"], row["ended"].timestamp() if row["ended"] else None
            clock.node, clock.devices = row.get("node"), row.get("devices")
            self.clocks[view.trial] = clock
            self._times(view.trial, time.time())
            if view.status not in _ENDED:
                self._open.add(view.trial)

    # ---- trial events ----
    def _view(self, trial: Any) -> TrialView:
        tid = trial.trial_id
        if tid not in self.state.trials:
            self.state.trials[tid] = self._new_view(tid, trial.config)
            self._open.add(tid)
        if tid not in self.clocks:
            self.clocks[tid] = _Clock(started=time.time())
        return self.state.trials[tid]

    def _new_view(self, tid: str, config: dict[str, Any]) -> TrialView:
        """A trunk (the PGD-AT baseline, to its last epoch, no Optuna number), a search trial (a fork
        starts after its warm-up), or a confirm trial (either of the two on a new seed, all epochs)."""
        params = trial_params(config)
        cfg = self.spec.search_trial_config(params)
        confirm = stage(config) == CONFIRM
        extra = {}
        if confirm:
            extra = {"stage": CONFIRM, "config": config.get(CONFIG), "baseline": config.get(BASELINE), "label": self._label(config.get(CONFIG))}
        if role(config) == TRUNK:
            self.trunk_ids[warmup_key(trunk_config(self.spec, params))] = tid
            return TrialView(trial=tid, params=params, epochs=self.spec.train.epochs, role=TRUNK, seed=cfg.train.seed, **extra)
        number = self._chosen_number(config.get(CONFIG)) if confirm else config.get(NUMBER)
        epochs = self.spec.train.epochs if confirm else self.full  # ASHA never stops a confirm trial
        view = TrialView(trial=tid, params=params, epochs=epochs, number=number, seed=cfg.train.seed, **extra)
        if config.get(FORK):
            self.fork_keys[tid] = config[FORK]
            view.trunk = self.trunk_ids.get(config[FORK])
            view.forked_at = cfg.ham.warmup_epochs
        return view

    # ---- the confirm stage ----
    def set_confirm(self, p: Any) -> None:
        """The searcher's confirm plan, made when the search ended: kept in the folder (``confirm.json``)."""
        from hamsweep.confirm import write_plan

        write_plan(self.out, p)
        self._show_confirm(p)

    def _load_confirm(self) -> None:
        from hamsweep.confirm import read_plan

        if (p := read_plan(self.out)) is not None:
            self._show_confirm(p)

    def _show_confirm(self, p: Any) -> None:
        self.confirm = p
        self.state.confirm_trials, self.state.confirm_seeds = len(p.trials), tuple(p.seeds)

    def _label(self, config: str | None) -> str | None:
        return self.confirm.label(config) if self.confirm is not None and config else None

    def _chosen_number(self, config: str | None) -> int | None:
        return next((c.number for c in self.confirm.chosen if c.trial == config), None) if self.confirm is not None else None

    def set_waiting(self, waiting: list[tuple[str, int]]) -> None:
        """The searcher's deferred proposals: (trunk key, the warm-up epoch each waits for)."""
        self.state.waiting = [(self.trunk_ids.get(key, key), epoch) for key, epoch in waiting]

    def _running(self, trial: Any) -> TrialView:
        view, clock = self._view(trial), self.clocks[trial.trial_id]
        if clock.segment is None:
            clock.segment = time.time()
        if view.status != "running":
            view.status = "running"
            self._event(view, "start")
        return view

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._running(trial)
        self._row(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        view = self._running(trial)
        clock = self.clocks[trial.trial_id]
        clock.node, clock.devices = result.get("node", clock.node), result.get("devices", clock.devices)
        if "failed" in result:
            self.failed[trial.trial_id] = result["failed"]
            return
        if "test" in result:  # a confirm trial's best checkpoint on the test split: its last result
            self._test_rows(view.trial, result["test"], result["class_names"])
            return
        history = result.get("history", ())
        for rec in history:  # a restarted trial's epochs up to its checkpoint
            self._rows(view.trial, rec, result["class_names"])
        if history:
            self.clocks[view.trial].resumed_from = history[-1]["epoch"]
        self._epoch(view, result)
        self._row(trial.trial_id)
        self._event(view, "epoch")
        self._tick(force_frame=True)

    def _epoch(self, view: TrialView, result: dict) -> None:
        record = self._rows(view.trial, result["record"], result["class_names"])
        view.epoch, view.objective = record.epoch, result[OBJECTIVE]
        view.best_objective, view.best_epoch = result[BEST], result.get("best_epoch")
        view.mean_robust, view.clean_mean = result.get("robust_mean", view.mean_robust), result.get("clean_mean", view.clean_mean)
        robust = record.val_robust()
        if robust is not None and view.best_epoch == record.epoch:
            view.class_robust = tuple(c / n if n else math.nan for n, c in zip(robust.n, robust.correct))
            view.class_names = tuple(result["class_names"])

    def _rows(self, trial: str, rec: dict[str, Any], class_names: list[str]) -> Any:
        from hamsweep.train import EpochRecord

        record = EpochRecord.from_dict(rec)
        self.writer.add(EPOCHS, results.epoch_rows(trial, record, self.spec.eval.cvar_fraction))
        self.writer.add(CLASSES, results.class_rows(trial, record, class_names))
        return record

    def _test_rows(self, trial: str, test: dict[str, Any], class_names: list[str]) -> None:
        from hamsweep.evaluation import EvalCounts

        evals = [EvalCounts.from_dict(e) for e in test["evals"]]
        self.writer.add(CLASSES, results.eval_rows(trial, test["epoch"], evals, class_names))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        from hamsweep.trial import prune_checkpoints

        path = Path(checkpoint.path)
        self._view(trial)
        self.clocks[trial.trial_id].checkpoint = os.path.relpath(path, self.out) if path.is_absolute() else str(path)
        if path.is_dir():  # local storage: only the newest checkpoints keep their weights
            prune_checkpoints(path.parent)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check_disk(at_once=True)  # a checkpoint the full disk refused crashes the trial first
        self._stop_work(trial)  # Tune restarts it from its checkpoint: whatever still runs of it goes
        clock = self.clocks[self._view(trial).trial]
        clock.stop(time.time())
        clock.restarts += 1
        self.state.trials[trial.trial_id].status = "pending"

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        view = self._view(trial)
        if trial.trial_id in self.failed:
            self._finish(view, "failed", self.failed[trial.trial_id])
        elif view.epoch < view.epochs:
            self._stop_work(trial)
            self._finish(view, "stopped", self.budget_hit or f"ASHA at epoch {view.epoch}")
        else:
            self._finish(view, "completed", f"ran all {view.epochs} epochs")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._stop_work(trial)
        if self._check_disk(at_once=True):  # not the trial's fault: resume restarts it (resume_errored)
            return
        self._finish(self._view(trial), "failed", f"error: {_last_error_line(trial)}")

    def _stop_work(self, trial: Any) -> None:
        """A trial ended early or restarts: its SLURM job (mode jobs) must not train on."""
        if self.jobs is not None:
            self.jobs.stop(trial.config.get(NUMBER))

    def _finish(self, view: TrialView, status: str, reason: str) -> None:
        now = time.time()
        clock = self.clocks[view.trial]
        clock.stop(now)
        clock.ended = now
        self._times(view.trial, now)  # its last: _now() moves only the trials not ended
        self._open.discard(view.trial)
        view.status, view.stop_reason = status, reason
        self._row(view.trial)
        self._flush()
        self._event(view, status)
        self._sampler_best()
        self._tick(force_frame=True)

    # ---- the loop ----
    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.jobs is not None:
            self.jobs.poll()
        if not self._check_disk():
            self._tick()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.tune_trials = {t.trial_id for t in trials}
        for tid, view in self.state.trials.items():
            if view.status == "running" and self.budget_hit:
                # Tune ends them without on_trial_complete, to us or to the searcher
                self._finish(view, "stopped", self.budget_hit)
                if view.role != TRUNK and view.stage != CONFIRM:  # a trunk and the confirm stage are no Optuna trials
                    self._tell_pruned(view)
            elif view.status == "running":
                self._row(tid)
        self._flush()
        self.view.update(self._now())
        self._written(self._save_state)
        self.view.close()

    def _tick(self, force_frame: bool = False) -> None:
        if self.writer.due():
            for tid in self._open:
                if self.state.trials[tid].status == "running":
                    self._row(tid)  # wall and GPU seconds move on
            self._flush()
        now = time.monotonic()
        if now - self._frame >= (_EVENT_FRAME_S if force_frame else _REFRESH_S):
            self.view.update(self._now())
            self._frame = now
        if now >= self._state_due:
            began = time.monotonic()
            self._written(self._save_state)
            self._state_due = now + max(_STATE_S, 20 * (time.monotonic() - began))

    def _flush(self) -> None:
        self._written(self.writer.flush)

    def _written(self, write: Any) -> None:
        """``write()``; a full disk stops the sweep cleanly instead of crashing the driver. (A write
        that did not fit is left to the resumed sweep: its trials send their epochs again from their
        checkpoints, and ``repair`` removes a temporary part cut short.)"""
        try:
            write()
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            if self.disk_full is None:
                self._stop_for(self.disk_low() or DiskFull(
                    f"--out: {self.out}: no space left on its disk (writing {err.filename}); stopped cleanly: free space, "
                    f"then continue with: {self._resume}"))

    # ---- a disk that fills up ----
    @property
    def _resume(self) -> str:
        return f"hamsweep resume {self.out}"

    def disk_low(self) -> DiskFull | None:
        """``disk.low_now`` of this sweep's folder and Ray's temp folder: why it cannot go on, or None."""
        return disk.low_now(self.out, self.ray_temp, self.keep_free, self._resume)

    def _check_disk(self, at_once: bool = False) -> bool:
        """At most every ``_DISK_S`` (``at_once``: now): is a disk too full to go on? Then the sweep stops."""
        if self.disk_full is None and (at_once or time.monotonic() - self._disk_at >= _DISK_S):
            self._disk_at = time.monotonic()
            if (full := self.disk_low()) is not None:
                self._stop_for(full)
        return self.disk_full is not None

    def _stop_for(self, full: DiskFull) -> None:
        """End the Tune run as Ctrl-C does (SIGUSR1: Tune's own graceful stop, which snapshots its state
        once more and leaves the unfinished trials to ``resume``); the driver then raises ``full``."""
        self.disk_full = full
        if callable(signal.getsignal(signal.SIGUSR1)):  # Tune's handler (it runs fit in the main thread)
            os.kill(os.getpid(), signal.SIGUSR1)

    def _save_state(self) -> None:
        """The frame's state as a file: ``hamsweep status`` draws it from any machine that sees the folder."""
        atomic_write_text(self.out / STATE_FILE, state_to_json(self.state))

    def _now(self) -> SweepState:
        now = time.time()
        self.state.now = now
        for tid in self._open:  # not every trial: this runs at each of Tune's steps
            self._times(tid, now)
        return self.state

    def _times(self, tid: str, now: float) -> None:
        view = self.state.trials[tid]
        view.wall_seconds = self.clocks[tid].seconds(now)
        view.gpu_seconds = view.wall_seconds * self.spec.resources.gpu
        view.device_seconds = view.wall_seconds * self.spec.resources.devices

    def _event(self, view: TrialView, event: str) -> None:
        self.view.event(self._now(), view, event)

    def _row(self, tid: str) -> None:
        view, clock = self.state.trials[tid], self.clocks[tid]
        now = time.time()
        seconds = clock.seconds(now)
        if tid in self.fork_keys:
            view.trunk = self.trunk_ids.get(self.fork_keys[tid], view.trunk)
        row = {
            "role": table_role(view.role, view.stage), "trunk": view.trunk, "forked_at": view.forked_at,
            "trunk_key": next((k for k, t in self.trunk_ids.items() if t == tid), None),
            "stage": view.stage, "seed": view.seed, "config": view.config, "baseline": view.baseline,
            "trial": tid, "number": view.number if view.stage == SEARCH else None, "status": view.status, "stop_reason": view.stop_reason,
            "objective": self.spec.objective.primary, "best_objective": view.best_objective, "best_epoch": view.best_epoch,
            "last_objective": view.objective, "epochs_run": view.epoch, "epochs": view.epochs, "restarts": clock.restarts,
            "resumed_from": clock.resumed_from,
            "gpu_seconds": seconds * self.spec.resources.gpu, "wall_seconds": seconds,
            "device": self.spec.resources.device, "device_seconds": seconds * self.spec.resources.devices,
            "started": _utc(clock.started), "ended": _utc(clock.ended) if clock.ended else None, "checkpoint": clock.checkpoint,
            "node": clock.node, "devices": clock.devices,
            **{param_column(k): view.params.get(k) for k in self.types},
        }
        self.writer.add(TRIALS, [row])

    def _study(self) -> Any:
        """The sweep's Optuna study, opened once: the journal is then read incrementally, not replayed."""
        from hamsweep.search import open_study

        if self.study is None:
            self.study = open_study(self.out)
        return self.study

    def _tell_pruned(self, view: TrialView) -> None:
        from hamsweep.study import tell_stopped

        tell_stopped(self._study(), view.number, {"status": "PRUNED", "status_reason": f"stopped at epoch {view.epoch} ({self.budget_hit})",
                                                  "best_objective": view.best_objective, "best_epoch": view.best_epoch})

    def _sampler_best(self) -> None:
        """Optuna's own view of the best trial, read back from the journal (single objective only)."""
        if len(self.spec.objective.metrics) > 1:
            return
        try:
            best = self._study().best_trial
        except ValueError:  # no complete trial yet
            return
        self.state.sampler_best = (best.number, best.value, dict(best.params))

    def unfinished(self) -> int:
        """Trials not ended yet, counting those the sampler has not proposed, and the confirm stage's
        (one, before it is planned: the search has not ended)."""
        ended = sum(v.status in _ENDED for v in self.state.trials.values())
        confirm = len(self.confirm.trials) if self.confirm is not None else 1 if self.spec.confirm.retrains else 0
        return self.spec.search.num_samples + len(self.plan.trunks) + confirm - ended

    # ---- tune.Stopper: the budget ----
    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.disk_full is not None and not callable(signal.getsignal(signal.SIGUSR1)):
            return True  # no handler of Tune's to stop it gracefully
        b, state = self.spec.budget, self._now()
        if b.wall_hours is not None and state.now - state.started >= b.wall_hours * 3600:
            self.budget_hit = f"budget: {b.wall_hours:g} wall-clock hours reached"
        if b.gpu_hours is not None and state.gpu_hours() >= b.gpu_hours:
            self.budget_hit = f"budget: {b.gpu_hours:g} GPU-hours reached"
        return self.budget_hit is not None


class _Inert(tune.Callback, tune.Stopper):
    """A Recorder unpickled where no sweep runs: Tune's no-op callbacks, and a stopper that never stops."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return False


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)


def _last_error_line(trial: Any) -> str:
    """The exception line of the trial's error file (Ray writes the whole traceback there)."""
    path = trial.error_file
    if not path or not Path(path).is_file():
        return "the trial's worker failed"
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    return lines[-1] if lines else "the trial's worker failed"
