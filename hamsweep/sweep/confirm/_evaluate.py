"""``confirm.seeds: 0`` (and ``hamsweep evaluate``): the search's own best checkpoints of the top
trials and of the PGD-AT baselines on the test split, one seed, no interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hamsweep.errors import SpecError
from hamsweep.keys import TRUNK
from hamsweep.spec import SweepSpec

__all__ = ["evaluate_top"]


def evaluate_top(
    out: Path, spec: SweepSpec, k: int, *, autoattack: bool = False, console: Any = None
) -> int:
    """Evaluate the top-``k`` completed trials' best checkpoints on the test split, and the PGD-AT
    baselines (the trunks run to the end) beside them; returns how many. ``console``: rich's, for
    one line per evaluation."""
    from rich.console import Console

    from hamsweep.results import store as results
    from hamsweep.results.tables import top_trials

    console = console or Console()
    rows = top_trials(out, k, spec.objective.primary, completed_only=True)
    rows += top_trials(out, k, spec.objective.primary, completed_only=True, role=TRUNK)
    if not rows:
        console.print("test evaluation: no completed trial to evaluate", highlight=False)
        return 0
    writer = results.PartWriter(out)
    for row in rows:
        evals, epoch, names = _evaluate(out, spec, row, autoattack)
        writer.append(results.CLASSES, results.eval_rows(row["trial"], epoch, evals, names))
        worst = min(
            c / n for e in evals if e.attack != "clean" for n, c in zip(e.n, e.correct) if n
        )
        name = "PGD-AT baseline" if row.get("role") == TRUNK else f"#{row['number']}"
        console.print(
            f"test evaluation: trial {row['trial']} ({name}) "
            f"test worst-class robust {100 * worst:.1f}%",
            highlight=False,
        )
    return len(rows)


def _evaluate(
    out: Path, spec: SweepSpec, row: dict[str, Any], autoattack: bool
) -> tuple[list[Any], int, tuple[str, ...]]:
    from hamsweep.core import data
    from hamsweep.core.evaluation import evaluate_checkpoint
    from hamsweep.core.train import BEST, pick_device
    from hamsweep.results.store import param_column
    from hamsweep.sweep.trunk import trunk_config

    params = {k: row[param_column(k)] for k in spec.search.space}
    if row.get("role") == TRUNK:  # a trunk's row holds only its warm-up keys; HAM's are null
        cfg = trunk_config(spec, {k: v for k, v in params.items() if v is not None})
    else:
        cfg = spec.trial_config(params)
    path = Path(out) / (row["checkpoint"] or "-") / BEST
    if not row["checkpoint"] or not path.is_file():
        raise SpecError(
            str(out),
            f"trial {row['trial']} has no best checkpoint ({path}); it cannot be evaluated",
        )
    dataset = data.load(cfg.data)
    evals, epoch = evaluate_checkpoint(
        path, cfg, dataset, device=pick_device(cfg.train.device), autoattack=autoattack
    )
    return evals, epoch, tuple(dataset.classes)
