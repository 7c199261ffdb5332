"""The Recorder's result writer: the Parquet rows of trials, epochs and per-class counts, buffered
and written as part files by the sweep's single ``BufferedWriter``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from hamsweep.keys import SEARCH, table_role
from hamsweep.results.schema import (
    CLASS_STATE,
    CLASSES,
    EPOCHS,
    TRIALS,
    class_rows,
    class_state_rows,
    epoch_rows,
    eval_rows,
    param_column,
    trials_schema,
)
from hamsweep.results.writer import FLUSH_S, BufferedWriter, PartWriter
from hamsweep.sweep.count import costs

if TYPE_CHECKING:
    from hamsweep.core.train import EpochRecord
    from hamsweep.spec import Distribution, SweepSpec
    from hamsweep.sweep.dashboard import TrialView
    from hamsweep.sweep.recorder._book import Clock

__all__ = ["RowWriter", "param_types"]


def param_types(params: dict[str, Distribution]) -> dict[str, pa.DataType]:
    """Arrow type of each searched key's column in ``trials``."""
    out = {}
    for key, d in params.items():
        if d.kind == "int":
            out[key] = pa.int64()
        elif d.kind != "choice":
            out[key] = pa.float64()
        else:
            out[key] = _choice_type(d.choices or ())
    return out


def _choice_type(choices: Any) -> pa.DataType:
    values = [c for c in choices if c is not None]
    numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in values)
    if values and all(isinstance(c, bool) for c in values):
        return pa.bool_()
    if numeric and all(isinstance(c, int) for c in values):
        return pa.int64()
    return pa.float64() if numeric else pa.string()


class RowWriter:
    """Rows of one sweep's tables. ``epoch``, ``test`` and ``trial`` buffer; ``flush`` writes a part
    per table (at most every ``flush_s`` seconds: ``due``), and raises what the disk raises."""

    def __init__(self, spec: SweepSpec, out: Path, flush_s: float = FLUSH_S) -> None:
        self.spec = spec
        self.types = param_types(spec.search.space)
        parts = PartWriter(Path(out), {TRIALS: trials_schema(self.types)})
        self.buffer = BufferedWriter(parts, flush_s)

    def epoch(self, trial: str, rec: dict[str, Any], class_names: list[str]) -> EpochRecord:
        """One epoch of a trial (as its result carries it): its ``epochs`` and ``classes`` rows."""
        from hamsweep.core.train import EpochRecord

        record = EpochRecord.from_dict(rec)
        cvar = self.spec.eval.cvar_fraction
        self.buffer.add(EPOCHS, epoch_rows(trial, record, cvar))
        self.buffer.add(CLASSES, class_rows(trial, record, class_names))
        self.buffer.add(CLASS_STATE, class_state_rows(trial, record, class_names))
        return record

    def test(self, trial: str, test: dict[str, Any], class_names: list[str]) -> None:
        """A confirm trial's best checkpoint evaluated on the test split: its ``classes`` rows."""
        from hamsweep.core.evaluation import EvalCounts

        evals = [EvalCounts.from_dict(e) for e in test["evals"]]
        self.buffer.add(CLASSES, eval_rows(trial, test["epoch"], evals, class_names))

    def trial(self, view: TrialView, clock: Clock, trunk_key: str | None, now: float) -> None:
        """The trial's ``trials`` row as of ``now`` (it replaces a buffered one)."""
        self.buffer.add(TRIALS, [trial_row(self.spec, self.types, view, clock, trunk_key, now)])

    def due(self) -> bool:
        return self.buffer.due()

    def flush(self) -> None:
        self.buffer.flush()


def trial_row(
    spec: SweepSpec,
    types: dict[str, pa.DataType],
    view: TrialView,
    clock: Clock,
    trunk_key: str | None,
    now: float,
) -> dict[str, Any]:
    """A ``trials`` row: what the dashboard's view of the trial and its clock say at ``now``."""
    seconds = clock.seconds(now)
    gpu_seconds, device_seconds = costs(spec, seconds)
    return {
        "role": table_role(view.role, view.stage),
        "trunk": view.trunk,
        "forked_at": view.forked_at,
        "trunk_key": trunk_key,
        "stage": view.stage,
        "seed": view.seed,
        "config": view.config,
        "baseline": view.baseline,
        "trial": view.trial,
        "number": view.number if view.stage == SEARCH else None,
        "status": view.status,
        "stop_reason": view.stop_reason,
        "objective": spec.objective.primary,
        "best_objective": view.best_objective,
        "best_epoch": view.best_epoch,
        "last_objective": view.objective,
        "epochs_run": view.epoch,
        "epochs": view.epochs,
        "restarts": clock.restarts,
        "resumed_from": clock.resumed_from,
        "gpu_seconds": gpu_seconds,
        "wall_seconds": seconds,
        "device": spec.resources.device,
        "device_seconds": device_seconds,
        "started": _utc(clock.started),
        "ended": _utc(clock.ended) if clock.ended else None,
        "checkpoint": clock.checkpoint,
        "node": clock.node,
        "devices": clock.devices,
        **{param_column(k): view.params.get(k) for k in types},
    }


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC)
