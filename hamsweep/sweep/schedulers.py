"""ASHA, the scheduler that stops search trials early (``make_scheduler``; ``scheduler: none``
runs every trial to its last epoch): over the search trials only, with rungs that count epochs of
the full schedule, so that a fork meets the same rungs as a trial trained from scratch. Optuna
(``hamsweep.sweep.search``) is told of every stop; ``full_epochs`` is the epoch count both take
for a trial that nothing stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import ASHAScheduler

from hamsweep.keys import CONFIRM, OBJECTIVE, TRUNK, role, stage

if TYPE_CHECKING:
    from hamsweep.spec import SweepSpec

__all__ = ["Asha", "full_epochs", "make_scheduler"]


def full_epochs(spec: SweepSpec) -> int:
    """Epochs a trial runs when nothing stops it early (ASHA's max_t)."""
    return spec.scheduler.max_epochs or spec.train.epochs


class Asha(ASHAScheduler):
    """ASHA over the search trials only: a trunk is the PGD-AT baseline and runs to its last epoch,
    never compared at a rung, and so does every trial of the confirm stage. Rungs count epochs of
    the full schedule (a fork's first result is epoch ``warmup_epochs + 1``), so a fork meets the
    same rungs as the trial trained from scratch."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if role(trial.config) != TRUNK and stage(trial.config) != CONFIRM:
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if trial.trial_id not in self._trial_info:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        if trial.trial_id in self._trial_info:
            super().on_trial_remove(tune_controller, trial)


def make_scheduler(spec: SweepSpec) -> ASHAScheduler | None:
    """ASHA on the epoch counter, comparing the primary objective; None for ``scheduler: none``."""
    s = spec.scheduler
    if s.name == "none":
        return None
    return Asha(
        time_attr="epoch",
        metric=OBJECTIVE,
        mode="max",
        max_t=full_epochs(spec),
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )
