"""The Recorder's confirm sink: the confirm stage's plan, heard from the searcher when the search
ends and kept in the sweep folder (``confirm.json``); how confirm trials are named and numbered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ConfirmSink"]


class ConfirmSink:
    """The plan (``hamsweep.sweep.confirm.ConfirmPlan``), None until the search has ended."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.plan: Any = None

    def set(self, p: Any) -> None:
        """The searcher's plan, made when the search ended: written to the folder, then kept."""
        from hamsweep.sweep.confirm import write_plan

        write_plan(self.out, p)
        self.plan = p

    def load(self) -> Any:
        """A resumed sweep's plan, if its search had ended (else None)."""
        from hamsweep.sweep.confirm import read_plan

        if (p := read_plan(self.out)) is not None:
            self.plan = p
        return p

    def label(self, config: str | None) -> str | None:
        """How the tables name a confirm trial's config ('#12', 'PGD-AT'); None before the plan."""
        return self.plan.label(config) if self.plan is not None and config else None

    def chosen_number(self, config: str | None) -> int | None:
        """The Optuna number of the search trial whose config a confirm trial retrains."""
        if self.plan is None:
            return None
        return next((c.number for c in self.plan.chosen if c.trial == config), None)

    def planned(self) -> int | None:
        """The confirm stage's trials once planned; None before."""
        return len(self.plan.trials) if self.plan is not None else None
