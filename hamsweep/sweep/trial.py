"""The Ray Tune trainable around ``train.run``: config from Ray -> validated ``TrialConfig`` ->
training, with ``tune.report`` injected as the core's ``report``.

Each epoch is reported with its checkpoint folder (``last.pt``, ``best.pt``), which Ray copies into
the sweep folder. A trial that starts again after a crash (its worker died, the driver was killed
and the sweep resumed) continues from the checkpoint Ray holds, never from a newer local file: the
epoch that follows is then re-run and reported again, deterministically, so no epoch is lost and
none is counted twice (readers keep one row per key).

``train_trial`` is the trial itself, whoever reports: ``trainable`` runs it in a Ray worker with
``tune_report``; a SLURM trial job (``hamsweep.launch.jobs``, mode jobs) runs it with a reporter
that writes files, which a light trainable in the driver hands to Tune unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hamsweep.errors import DivergenceError
from hamsweep.keys import (
    BEST,
    CONFIRM,
    FORK,
    KEEP,
    NUMBER,
    OBJECTIVE,
    TRUNK,
    best_key,
    role,
    stage,
    trial_params,
)
from hamsweep.rundir import atomic_write_text
from hamsweep.spec import SweepSpec, TrialConfig
from hamsweep.spec.trial import objective_summary, warmup_key
from hamsweep.sweep import trunk

__all__ = [
    "HISTORY",
    "WORKER_PID",
    "Emit",
    "prune_checkpoints",
    "restore_checkpoint",
    "result_metrics",
    "sweep_trial_config",
    "train_trial",
    "trainable",
    "trial_dirname",
    "tune_report",
    "work_dir",
]

HISTORY = "history.json"  # in the checkpoint folder: every epoch's record so far
# in the trial's work folder: the process training it (to find or kill it)
WORKER_PID = "worker.pid"
# (one result for Tune, its checkpoint folder or None)
Emit = Callable[[dict[str, Any], Path | None], None]
_DATASETS: dict[str, Any] = {}  # per worker process: a reused actor loads each dataset once


def sweep_trial_config(spec: SweepSpec, config: Mapping[str, Any]) -> TrialConfig:
    """The trial's config: the spec, then Ray's sampled values (a trunk: PGD-AT,
    ``trunk.trunk_config``). The test split is left alone by training: a confirm trial evaluates its
    best checkpoint on it after training (``train_trial``)."""
    if role(config) == TRUNK:
        return trunk.trunk_config(spec, trial_params(config))
    return spec.search_trial_config(trial_params(config))


class _Best:
    """The trial's best epoch by the primary objective, with every objective's value there."""

    def __init__(self, metrics: tuple[str, ...]) -> None:
        self.metrics = metrics
        self.epoch: int | None = None
        self.values: dict[str, float] = {}

    def update(self, epoch: int, values: Mapping[str, float]) -> None:
        primary = self.metrics[0]
        if self.epoch is None or values[primary] > self.values[primary]:
            self.epoch, self.values = epoch, dict(values)


def result_metrics(
    record: Any, cfg: TrialConfig, metrics: tuple[str, ...], best: _Best, last: float | None
) -> dict[str, Any]:
    """What one epoch reports to Tune: the objective (carried over from the last evaluated epoch
    when this one was not evaluated), the best so far, the dashboard's figures, and the whole record
    (per-class counts included) for the driver's Parquet writer."""
    out: dict[str, Any] = {
        "epoch": record.epoch,
        "phase": record.phase,
        "hard_fraction": record.hard_fraction,
    }
    robust = record.val_robust()
    if robust is not None:
        summary = robust.summary(cfg.eval.cvar_fraction)
        values = {m: summary[objective_summary(m)] for m in metrics}
        # a HAM trial's best is a HAM epoch (ham.select_after_warmup)
        if cfg.selectable(record.epoch):
            best.update(record.epoch, values)
        last = values[metrics[0]]
        clean = next(
            (e for e in record.evals if e.split == "val" and e.attack != robust.attack), None
        )
        out.update(
            robust_mean=summary["mean"],
            clean_mean=clean.summary(cfg.eval.cvar_fraction)["mean"] if clean else None,
        )
    # ASHA compares numbers; 0 before any evaluation
    out[OBJECTIVE] = last if last is not None else 0.0
    out[BEST] = best.values.get(metrics[0], out[OBJECTIVE])
    out["best_epoch"] = best.epoch
    out.update({best_key(m): best.values.get(m, 0.0) for m in metrics})
    out["record"] = record.to_dict()
    return out


def work_dir(experiment: Path, number: int) -> Path:
    """Where trial ``number`` (Optuna's) trains; Ray copies its checkpoint folder from here after
    each epoch. Keyed by the number from the trial's config: with reused actors, Ray 2.60's
    ``get_trial_dir()`` and ``get_trial_id()`` can still name the actor's first trial."""
    return experiment / "work" / f"{number:05d}"


def trial_dirname(trial: Any) -> str:
    """Each trial's folder under the sweep's ``ray/``
    (Tune's default name lists every parameter)."""
    return f"trial_{trial if isinstance(trial, str) else trial.trial_id}"


def trainable(config: dict[str, Any], spec_data: dict[str, Any], experiment: str) -> None:
    """One trial under Ray Tune (wrapped with ``tune.with_parameters(trainable, spec_data=...,
    experiment=...)``; ``experiment`` is Tune's experiment folder in the sweep folder)."""
    from ray import tune

    from hamsweep.spec import validate

    spec = validate(SweepSpec, spec_data)
    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    work = work_dir(Path(experiment), config[NUMBER])
    restore_checkpoint(work, tune.get_checkpoint())
    (work / WORKER_PID).write_text(str(os.getpid()))
    train_trial(spec, config, work, out=Path(experiment).parent, cpus=cpus, emit=tune_report)


def train_trial(
    spec: SweepSpec, config: Mapping[str, Any], work: Path, *, out: Path, cpus: float, emit: Emit
) -> None:
    """Train one trial in ``work`` (continuing from ``work/checkpoint`` when there is one) and send
    each result to ``emit``: ``tune_report`` in a Ray worker, files in a SLURM trial job. ``out``
    is the sweep folder: a trunk keeps its checkpoints for forks there, a fork starts from one.
    A confirm trial's last result carries its best checkpoint's per-class test evaluation
    (``test``)."""
    import torch

    from hamsweep.core import train

    torch.set_num_threads(max(1, int(cpus)))  # more threads than reserved cores slows every trial
    cfg = sweep_trial_config(spec, config)
    dataset = _dataset(cfg)
    fork = trunk.epoch_dir(out, config[FORK], cfg.fork_epoch()) if config.get(FORK) else None
    if fork is not None and not fork.is_dir():
        raise FileNotFoundError(
            f"trunk checkpoint {fork} is missing: the trial cannot fork from it"
        )
    if role(config) == TRUNK:
        emit = _keeping_trunk_epochs(emit, out, warmup_key(cfg), tuple(config.get(KEEP, ())))
    inherited = (
        json.loads((fork / HISTORY).read_text())
        if fork is not None and (fork / HISTORY).is_file()
        else []
    )
    reporter = _Reporter(
        cfg, spec.objective.metrics, dataset.classes, work / "checkpoint", emit, inherited=inherited
    )
    try:
        train.run(cfg, workdir=work, report=reporter, dataset=dataset, fork=fork)
    except DivergenceError as err:
        # deterministic: a restart would diverge again, so the trial ends here as failed
        emit(reporter.failure(f"diverged: {err}"), None)
        return
    if reporter.backfill:  # restored at its last epoch: nothing left to train, but report once
        reporter.repeat_last()
    if stage(config) == CONFIRM:
        emit(
            reporter.tested(_test(cfg, dataset, work / "checkpoint" / train.BEST, spec.confirm)),
            None,
        )


def _test(cfg: TrialConfig, dataset: Any, best: Path, confirm: Any) -> dict[str, Any]:
    """The best checkpoint (by validation) on the test split, per class, and on
    ``confirm.train_examples`` of the training split (as many as the test split when None), as a
    result's ``test`` entry."""
    from dataclasses import asdict

    from hamsweep.core.evaluation import evaluate_checkpoint
    from hamsweep.core.train import pick_device

    if not best.is_file():
        raise FileNotFoundError(
            f"{best} is missing: no epoch was evaluated on the validation split, "
            "so no best checkpoint"
        )
    train_examples = confirm.train_examples
    if train_examples is None:
        train_examples = min(len(dataset.test), cfg.eval.max_examples or len(dataset.test))
    evals, epoch = evaluate_checkpoint(
        best,
        cfg,
        dataset,
        device=pick_device(cfg.train.device),
        autoattack=confirm.autoattack,
        train_examples=train_examples,
    )
    return {"epoch": epoch, "evals": [asdict(e) for e in evals]}


def _keeping_trunk_epochs(emit: Emit, out: Path, key: str, epochs: tuple[int, ...]) -> Emit:
    """A trunk's ``emit``: first copy the checkpoint of each epoch a fork may start from
    (see ``trunk``)."""
    wanted = set(epochs)

    def keep_then_emit(result: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None and result.get("epoch") in wanted:
            trunk.snapshot(checkpoint_dir, trunk.epoch_dir(out, key, result["epoch"]))
        emit(result, checkpoint_dir)

    return keep_then_emit


def tune_report(result: dict[str, Any], checkpoint_dir: Path | None) -> None:
    """``Emit`` under Ray Tune: the result,
    with the checkpoint folder Ray copies into the sweep folder."""
    from ray import tune

    checkpoint = (
        tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
    )
    tune.report(result, checkpoint=checkpoint)


def _where() -> dict[str, str]:
    """Where the trial runs: its host and the GPUs Ray (or SLURM) made visible to it."""
    return {"node": socket.gethostname(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


class _Reporter:
    """``train.run``'s ``report`` under Tune. Every epoch's record also goes into ``history.json``
    in the checkpoint folder: a trial restarted from its checkpoint sends that history with its
    first result, so the driver rewrites any row a killed driver had not flushed yet. A fork's
    ``inherited`` epochs (its trunk's, up to the warm-up) count for its objective and best exactly
    as its own warm-up would have, but are never reported as its own: the trunk's rows hold them."""

    def __init__(
        self,
        cfg: TrialConfig,
        metrics: tuple[str, ...],
        classes: Any,
        ckpt_dir: Path,
        emit: Emit,
        inherited: list[dict[str, Any]] | None = None,
    ) -> None:
        from hamsweep.core.train import EpochRecord

        self.cfg, self.metrics, self.classes, self.emit = cfg, metrics, list(classes), emit
        self.best, self.last = _Best(metrics), None
        path = ckpt_dir / HISTORY
        self.history: list[dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else []
        self.backfill = list(self.history)
        own = {rec["epoch"] for rec in self.history}
        for rec in [
            r for r in inherited or () if r["epoch"] not in own
        ] + self.history:  # rebuild the best epoch and the last objective
            self.last = result_metrics(
                EpochRecord.from_dict(rec), cfg, metrics, self.best, self.last
            )[OBJECTIVE]

    def __call__(self, record: Any, ckpt_dir: Path) -> None:
        result = result_metrics(record, self.cfg, self.metrics, self.best, self.last)
        self.last = result[OBJECTIVE]
        result["class_names"] = self.classes
        result.update(_where())
        if self.backfill:
            result["history"], self.backfill = self.backfill, []
        self.history.append(result["record"])
        atomic_write_text(ckpt_dir / HISTORY, json.dumps(self.history))
        self.emit(result, ckpt_dir)

    def repeat_last(self) -> None:
        """Report the last epoch again (with the history), without a new checkpoint."""
        from hamsweep.core.train import EpochRecord

        result = result_metrics(
            EpochRecord.from_dict(self.history[-1]), self.cfg, self.metrics, self.best, self.last
        )
        result.update(class_names=self.classes, history=self.backfill, **_where())
        self.backfill = []
        self.emit(result, None)

    def tested(self, test: dict[str, Any]) -> dict[str, Any]:
        """The last epoch's result again,
        with the test evaluation of the best checkpoint (``_test``)."""
        from hamsweep.core.train import EpochRecord

        result = result_metrics(
            EpochRecord.from_dict(self.history[-1]), self.cfg, self.metrics, self.best, self.last
        )
        result.update(class_names=self.classes, test=test, **_where())
        del result["record"]  # its rows are written already
        return result

    def failure(self, reason: str) -> dict[str, Any]:
        epoch = self.history[-1]["epoch"] if self.history else 0
        return {
            "epoch": epoch,
            OBJECTIVE: self.last or 0.0,
            BEST: self.best.values.get(self.metrics[0], 0.0),
            "failed": reason,
        }


def restore_checkpoint(work: Path, checkpoint: Any) -> None:
    """Start from Ray's checkpoint (or from nothing): a stale local folder is never trusted.

    After a driver crash, Tune's snapshot may name a checkpoint older than the newest one on disk,
    whose weights ``prune_checkpoints`` has since removed: the newest complete checkpoint of the
    same trial is taken instead (its history holds every epoch, so nothing is lost either way)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        return
    if type(checkpoint.filesystem).__name__ == "LocalFileSystem":
        # none whole (the only one's copy was cut short by a kill): start over. Continuing from a
        # last.pt without its history.json would lose the epochs' rows the killed driver had
        # not written
        if (source := _newest_complete(Path(checkpoint.path))) is not None:
            shutil.copytree(source, work / "checkpoint")
        return
    with checkpoint.as_directory() as folder:
        shutil.copytree(folder, work / "checkpoint")


def _epochs_in(folder: Path) -> int:
    try:
        return len(json.loads((folder / HISTORY).read_text()))
    except (OSError, ValueError):
        return -1


def whole_checkpoint(folder: Path) -> bool:
    """``folder`` is a checkpoint a trial can continue from: its ``history.json`` parses and its
    ``last.pt`` loads. Ray copies the files one by one, so a kill can leave either one alone."""
    import torch

    from hamsweep.core.train import LAST

    if not (folder / LAST).is_file() or _epochs_in(folder) < 0:
        return False
    try:
        torch.load(folder / LAST, map_location="cpu", weights_only=False)
    except Exception:
        return False
    return True


def _newest_complete(given: Path) -> Path | None:
    """The whole checkpoint folder of this trial with the most epochs."""
    folders = sorted({given, *given.parent.glob("checkpoint_*")}, key=_epochs_in, reverse=True)
    return next((f for f in folders if whole_checkpoint(f)), None)


def prune_checkpoints(trial_folder: Path, keep: int = 2) -> None:
    """Empty all but the ``keep`` newest checkpoint folders of a trial. Ray keeps every folder
    (``num_to_keep=None``): a snapshot taken before a crash may name an older one, and Ray refuses
    to restore from a folder that is gone; so the folders stay, empty, and ``restore_checkpoint``
    takes the newest complete one instead."""
    from hamsweep.core.train import BEST, LAST

    complete = sorted(f for f in trial_folder.glob("checkpoint_*") if (f / LAST).is_file())
    for folder in complete[:-keep]:
        for name in (LAST, BEST, HISTORY):  # the newest folders hold the whole history
            (folder / name).unlink(missing_ok=True)


def _dataset(cfg: TrialConfig) -> Any:
    from hamsweep.core import data

    key = cfg.data.model_dump_json()
    if key not in _DATASETS:
        _DATASETS.clear()  # one dataset per worker at a time
        _DATASETS[key] = data.load(cfg.data)
    return _DATASETS[key]
