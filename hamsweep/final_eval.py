"""After the search: the top trials' best checkpoints on the test split, and the results table.

The search only ever sees the validation split. ``evaluate_top`` is the one place the test split is
used: each of the top-k completed trials (by its best validation objective) is evaluated from its
``best.pt``, class by class, into the ``classes`` table with ``split = 'test'`` and ``epoch`` = the
checkpoint's epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hamsweep import results
from hamsweep.errors import SpecError
from hamsweep.keys import SEARCH, TRUNK
from hamsweep.results import CLASSES, param_column
from hamsweep.spec import OBJECTIVES, SweepSpec
from hamsweep.spec.trial import objective_summary

__all__ = ["evaluate_top", "results_table", "top_trials"]


def top_trials(out: Path, k: int, by: str = "worst_robust", *, completed_only: bool = False, role: str = SEARCH) -> list[dict[str, Any]]:
    """The ``k`` best trials of ``role`` (search trials; ``trunk``: the PGD-AT baselines) by the
    highest validation ``by`` over their selectable epochs, best first."""
    if by not in OBJECTIVES:
        raise SpecError("--by", f"unknown metric {by!r}; valid metrics are {', '.join(OBJECTIVES)}")
    if results.TRIALS not in results.tables(out):
        raise SpecError(str(out), "holds no trials yet; pass a sweep folder")
    con = results.connect(out)
    has_role = "role" in {r[0] for r in con.execute("DESCRIBE trials").fetchall()}  # folders from before trunks have none
    if not has_role and role != SEARCH:
        return []
    conditions = ["t.status = 'completed'"] if completed_only else []
    conditions += [f"coalesce(t.role, '{SEARCH}') = '{role}'"] if has_role else []
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    column = f"robust_{objective_summary(by)}"
    sql = f"""
        WITH v AS (SELECT trial, coalesce(max({column}) FILTER (WHERE phase = 'ham'), max({column})) AS value
                   FROM epochs GROUP BY trial),
             b AS (SELECT e.trial, e.robust_worst, e.robust_mean, e.clean_mean FROM epochs e JOIN trials t
                   ON e.trial = t.trial AND e.epoch = t.best_epoch),
             x AS (SELECT trial, min(correct / n) AS test_worst, avg(correct / n) AS test_mean FROM classes
                   WHERE split = 'test' AND attack LIKE 'pgd%' GROUP BY trial)
        SELECT t.*, v.value, b.robust_worst, b.robust_mean, b.clean_mean, x.test_worst, x.test_mean
        FROM trials t LEFT JOIN v USING (trial) LEFT JOIN b USING (trial) LEFT JOIN x USING (trial) {where}
        ORDER BY v.value DESC NULLS LAST, t.number LIMIT {int(k)}"""
    return con.sql(sql).to_arrow_table().to_pylist()


def results_table(out: Path, spec: SweepSpec, top: int = 10, by: str | None = None) -> Table:
    """The best trials with their parameters and summary metrics (validation; test where evaluated)."""
    by = by or spec.objective.primary
    rows = top_trials(out, top, by)
    baselines = top_trials(out, top, by, role=TRUNK)
    title = f"{spec.name}: best {len(rows)} trials by validation {by}" + (", and the PGD-AT baseline" if baselines else "")
    table = Table(title=title, title_justify="left")
    keys = list(spec.search.params)
    for col in ("#", "trial", "status", "epochs", *[k.split(".")[-1] for k in keys], by, "worst", "mean", "clean", "test worst", "test mean"):
        table.add_column(col, justify="left" if col in ("trial", "status") else "right")
    for r in rows + baselines:
        # a trunk has only its warm-up keys: the HAM knobs do not apply to PGD-AT
        params = [_fmt(r.get(param_column(k)), k) if r.get("role") != TRUNK or r.get(param_column(k)) is not None else "" for k in keys]
        table.add_row(
            "PGD-AT" if r.get("role") == TRUNK else str(r["number"]), r["trial"], r["status"], f"{r['epochs_run']}/{r['epochs']}",
            *params, _pct(r["value"]), _pct(r["robust_worst"]), _pct(r["robust_mean"]), _pct(r["clean_mean"]),
            _pct(r["test_worst"]), _pct(r["test_mean"]), end_section=r is (rows[-1] if rows else None) and bool(baselines),
        )
    return table


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _fmt(x: Any, key: str) -> str:
    if x is None:
        return "uniform" if key.endswith("temperature") else "—"  # ham.temperature: null = uniform weights
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def evaluate_top(out: Path, spec: SweepSpec, k: int, *, autoattack: bool = False, console: Console | None = None) -> int:
    """Evaluate the top-``k`` completed trials' best checkpoints on the test split, and the PGD-AT
    baselines (the trunks run to the end) beside them; returns how many."""
    console = console or Console()
    rows = top_trials(out, k, spec.objective.primary, completed_only=True)
    rows += top_trials(out, k, spec.objective.primary, completed_only=True, role=TRUNK)
    if not rows:
        console.print("final evaluation: no completed trial to evaluate", highlight=False)
        return 0
    writer = results.PartWriter(out)
    for row in rows:
        evals, epoch, names = _evaluate(out, spec, row, autoattack)
        writer.append(CLASSES, results.eval_rows(row["trial"], epoch, evals, names))
        worst = min(c / n for e in evals if e.attack != "clean" for n, c in zip(e.n, e.correct) if n)
        name = "PGD-AT baseline" if row.get("role") == TRUNK else f"#{row['number']}"
        console.print(f"final evaluation: trial {row['trial']} ({name}) test worst-class robust {100 * worst:.1f}%", highlight=False)
    return len(rows)


def _evaluate(out: Path, spec: SweepSpec, row: dict[str, Any], autoattack: bool) -> tuple[list[Any], int, tuple[str, ...]]:
    import torch

    from hamsweep import data, models
    from hamsweep.evaluation import evaluate
    from hamsweep.train import BEST, pick_device

    from hamsweep.trunk import trunk_config

    params = {k: row[param_column(k)] for k in spec.search.params}
    if row.get("role") == TRUNK:  # a trunk's row holds only its warm-up keys; HAM's are null
        cfg = trunk_config(spec, {k: v for k, v in params.items() if v is not None})
    else:
        cfg = spec.trial_config(params)
    path = Path(out) / (row["checkpoint"] or "-") / BEST
    if not row["checkpoint"] or not path.is_file():
        raise SpecError(str(out), f"trial {row['trial']} has no best checkpoint ({path}); it cannot be evaluated")
    dataset = data.load(cfg.data)
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = models.build(cfg.model, dataset.num_classes, in_channels=dataset.image_shape[0])
    model.load_state_dict(state["model"])
    model.to(pick_device(cfg.train.device))
    evals = evaluate(model, dataset.test, "test", cfg, dataset.num_classes, seed=0, autoattack=autoattack)
    return evals, int(state["epoch"]), tuple(dataset.classes)
