"""ASHA, the scheduler that stops search trials early (``make_scheduler``; ``scheduler: none``
runs every trial to its last epoch): over the search trials only, with rungs that count epochs of
the full schedule, so that a fork meets the same rungs as a trial trained from scratch. Optuna
(``hamsweep.sweep.search``) is told of every stop; ``full_epochs`` is the epoch count both take
for a trial that nothing stopped.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from hamsweep.keys import CONFIRM, OBJECTIVE, TRUNK, role, stage
from hamsweep.spec.sweep import METHOD_KEY

if TYPE_CHECKING:
    from hamsweep.spec import SweepSpec

__all__ = ["Asha", "full_epochs", "make_scheduler"]


def full_epochs(spec: SweepSpec, method: str | None = None) -> int:
    """Epochs a search trial of ``method`` runs when nothing stops it early (ASHA's max_t)."""
    return spec.full_epochs(method)


class Asha(ASHAScheduler):
    """ASHA over the search trials only: a trunk is the PGD-AT baseline and runs to its last epoch,
    never compared at a rung, and so does every trial of the confirm stage. Rungs count epochs of
    the full schedule (a fork's first result is epoch ``warmup_epochs + 1``), so a fork meets the
    same rungs as the trial trained from scratch.

    In a comparison (``per_method``) each method has rungs of its own: a trial is compared with its
    own method's trials only, as its sampler learns from them only (``per_method``), so that a
    method whose worst class is lower throughout is not stopped at every rung by another's, and
    each method's search keeps its share of full trials. A method with epochs of its own
    (``method_max_t``) has rungs up to them."""

    def __init__(
        self,
        *args: Any,
        per_method: bool = False,
        method_max_t: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._grace_period = kwargs.get("grace_period", 1)
        # the first bracket before any trial: each method's rungs start as a copy of it
        self._pristine = copy.deepcopy(self._brackets[0]) if per_method else None
        self._method_brackets: dict[str, Any] = {}
        self._method_max_t = dict(method_max_t or {})

    def _new_bracket(self, method: str) -> Any:
        """``method``'s rungs: the first bracket's, or up to its own max_t."""
        max_t = getattr(self, "_method_max_t", {}).get(method, self._max_t)
        if max_t == self._max_t:
            return copy.deepcopy(self._pristine)
        return _Bracket(
            self._grace_period, max_t, self._reduction_factor, 0, self._stop_last_trials
        )

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if role(trial.config) != TRUNK and stage(trial.config) != CONFIRM:
            super().on_trial_add(tune_controller, trial)
            pristine = getattr(self, "_pristine", None)  # (none in an Asha pickled before)
            if pristine is not None:
                method = trial.config.get(METHOD_KEY)
                if method not in self._method_brackets:
                    self._method_brackets[method] = self._new_bracket(method)
                self._trial_info[trial.trial_id] = self._method_brackets[method]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if trial.trial_id not in self._trial_info:
            return self.CONTINUE
        own = getattr(self, "_method_max_t", {}).get(trial.config.get(METHOD_KEY))
        if own is not None and result.get(self._time_attr, 0) >= own and OBJECTIVE in result:
            self._num_stopped += 1
            return self.STOP  # its own last epoch (the base class stops at the longest's)
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
    own = {m: full_epochs(spec, m) for m in spec.search.methods}
    return Asha(
        per_method=bool(spec.search.methods),
        method_max_t=own,
        time_attr="epoch",
        metric=OBJECTIVE,
        mode="max",
        max_t=max([full_epochs(spec), *own.values()]),
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )
