"""The Recorder's link to the Optuna study: what Tune never tells the searcher (trials the budget
ended), and Optuna's own best trial for the dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hamsweep.sweep.dashboard import SweepState, TrialView

__all__ = ["StudyLink"]


class StudyLink:
    """The sweep's study, opened once: the journal is then read incrementally, not replayed."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self._study: Any = None

    def study(self) -> Any:
        from hamsweep.sweep.search import open_study

        if self._study is None:
            self._study = open_study(self.out)
        return self._study

    def tell_pruned(self, view: TrialView, reason: str) -> None:
        """A search trial the budget ended (Tune ends it without telling the searcher): PRUNED."""
        from hamsweep.results.study import tell_stopped

        attrs = {
            "status": "PRUNED",
            "status_reason": f"stopped at epoch {view.epoch} ({reason})",
            "best_objective": view.best_objective,
            "best_epoch": view.best_epoch,
        }
        tell_stopped(self.study(), view.number, attrs)

    def sampler_best(self, state: SweepState) -> None:
        """Optuna's own view of the best trial, read back from the journal, into ``state``."""
        try:
            best = self.study().best_trial
        except ValueError:  # no complete trial yet
            return
        state.sampler_best = (best.number, best.value, dict(best.params))
