"""The Recorder's budget: the sweep stops once its wall-clock hours or its GPU-hours are spent
(``budget`` in the spec)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hamsweep.spec.sweep import BudgetConfig
    from hamsweep.sweep.dashboard import SweepState

__all__ = ["Budget"]


class Budget:
    """``hit``: why the budget stopped the sweep, None while it has not."""

    def __init__(self, budget: BudgetConfig) -> None:
        self.budget = budget
        self.hit: str | None = None

    def spent(self, state: SweepState) -> bool:
        """Whether the budget is spent as of ``state`` (its ``now``); once spent, it stays so."""
        b = self.budget
        if b.wall_hours is not None and state.now - state.started >= b.wall_hours * 3600:
            self.hit = f"budget: {b.wall_hours:g} wall-clock hours reached"
        if b.gpu_hours is not None and state.gpu_hours() >= b.gpu_hours:
            self.hit = f"budget: {b.gpu_hours:g} GPU-hours reached"
        return self.hit is not None
