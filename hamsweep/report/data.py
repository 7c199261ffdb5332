"""What a report draws, read once from a sweep folder: its Parquet tables (through DuckDB) and its
Optuna study. Reading only: a running sweep is read as it is now (a snapshot)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hamsweep import rundir
from hamsweep.errors import SpecError
from hamsweep.results import store as results
from hamsweep.spec import SweepSpec, validate
from hamsweep.spec.trial import objective_summary

__all__ = ["ReportData", "load"]


@dataclass
class ReportData:
    """A sweep folder's trials, epochs and per-class numbers, as plain rows."""

    out: Path
    spec: SweepSpec
    trials: list[dict[str, Any]]  # trials rows (every stage)
    # trial_epochs rows: every epoch of every trial, a fork's inherited ones marked
    epochs: list[dict[str, Any]]
    # validation per-class robust counts at each search-stage trial's best epoch
    best_classes: list[dict[str, Any]]
    confirm: list[dict[str, Any]] = field(default_factory=list)  # the confirm table's rows
    confirm_classes: list[dict[str, Any]] = field(default_factory=list)
    # trial_class_state rows of the best search trial (by its best objective): what its method kept
    # per class, epoch by epoch
    class_state: list[dict[str, Any]] = field(default_factory=list)
    # trial_class_state rows at each search trial's (and search trunk's) best epoch where its
    # method recorded the accuracy on each class's training AEs (train_robust_acc)
    chosen_state: list[dict[str, Any]] = field(default_factory=list)
    # each confirmed config's robust accuracy per class on its training-split subset
    # (``confirm.train_examples``), the mean over its completed seeds: config, class_id, acc
    train_classes: list[dict[str, Any]] = field(default_factory=list)
    study: Any = None  # the Optuna study; None without a journal
    running: bool = False  # some trial has not ended: the report is a snapshot
    taken: str = ""  # when it was read, UTC

    @property
    def objective(self) -> str:
        return self.spec.objective.primary

    @property
    def column(self) -> str:
        """The epochs column of the objective, e.g. robust_worst."""
        return f"robust_{objective_summary(self.objective)}"

    def device(self) -> str:
        """'GPU' or 'CPU': what the trials' device-seconds count (``trials.device``; GPU in
        folders from before it)."""
        return results.device_label(self.trials)

    def search(self) -> list[dict[str, Any]]:
        """The search stage's HAM (or other) trials, trunks apart."""
        return [
            t
            for t in self.trials
            if (t.get("stage") or "search") == "search" and (t.get("role") or "search") == "search"
        ]

    def baselines(self) -> list[dict[str, Any]]:
        return [
            t
            for t in self.trials
            if (t.get("stage") or "search") == "search" and t.get("role") == "trunk"
        ]


def load(out: Path) -> ReportData:
    """Read ``out``; a folder without a spec or without any trial is one clear error."""
    out = Path(out)
    if not (out / rundir.SPEC).is_file():
        raise SpecError(str(out), f"holds no {rundir.SPEC}: pass a sweep folder")
    spec = validate(SweepSpec, rundir.read_spec(out))
    if results.TRIALS not in results.tables(out):
        raise SpecError(
            str(out),
            "holds no trials yet: nothing to report (start it with hamsweep run, or wait for its "
            "first trial)",
        )
    con = results.connect(out)
    rows = lambda sql: con.sql(sql).to_arrow_table().to_pylist()  # noqa: E731
    has_history = "trial_epochs" in {
        r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()
    }
    epochs = rows(
        "SELECT * FROM trial_epochs ORDER BY trial, epoch"
        if has_history
        else "SELECT *, false AS inherited FROM epochs ORDER BY trial, epoch"
    )
    best = rows("""SELECT c.trial, c.class_id, c.class_name, c.n, c.correct
                   FROM classes c JOIN trials t ON c.trial = t.trial AND c.epoch = t.best_epoch
                   WHERE c.split = 'val' AND c.attack <> 'clean'
                   ORDER BY c.trial, c.class_id""")
    trials = rows("SELECT * FROM trials ORDER BY started NULLS LAST, trial")
    present = results.tables(out)
    data = ReportData(
        out=out,
        spec=spec,
        trials=trials,
        epochs=epochs,
        best_classes=best,
        confirm=rows(f"SELECT * FROM {results.CONFIRM}") if results.CONFIRM in present else [],
        confirm_classes=rows(
            f"SELECT * FROM {results.CONFIRM_CLASSES} ORDER BY config, attack, class_id"
        )
        if results.CONFIRM_CLASSES in present
        else [],
        class_state=rows(
            """SELECT * FROM trial_class_state WHERE trial = (SELECT trial FROM trials
               WHERE role = 'search' AND coalesce(stage, 'search') = 'search'
               AND best_objective IS NOT NULL ORDER BY best_objective DESC, number LIMIT 1)
               ORDER BY epoch, class_id"""
        )
        if results.CLASS_STATE in present
        else [],
        chosen_state=rows(
            """SELECT s.trial, s.class_id, s.train_robust_acc FROM trial_class_state s
               JOIN trials t ON s.trial = t.trial AND s.epoch = t.best_epoch
               WHERE coalesce(t.stage, 'search') = 'search' AND s.train_robust_acc IS NOT NULL
               ORDER BY s.trial, s.class_id"""
        )
        if results.CLASS_STATE in present
        else [],
        train_classes=rows(
            """SELECT t.config, c.class_id, avg(c.correct / c.n) AS acc
               FROM classes c JOIN trials t ON c.trial = t.trial
               WHERE t.stage = 'confirm' AND t.status = 'completed' AND c.split = 'train'
               AND c.attack <> 'clean' AND c.n > 0
               GROUP BY t.config, c.class_id ORDER BY t.config, c.class_id"""
        ),
        study=_study(out),
        taken=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    data.running = _running(out, trials)
    return data


def _study(out: Path) -> Any:
    from hamsweep.results.study import open_study

    try:
        return open_study(out)
    except SpecError:
        return None


def _running(out: Path, trials: list[dict[str, Any]]) -> bool:
    """Whether some trial has not ended (still running, or left running by a
    driver that was killed)."""
    return any(t["status"] in ("running", "pending") for t in trials)
