"""The keys a trial's results and config carry between the searcher, the trainables and the
Recorder. Ray-free on purpose: a SLURM trial job (mode jobs) builds results without importing Ray."""

from __future__ import annotations

__all__ = ["BEST", "NUMBER", "OBJECTIVE", "best_key"]

OBJECTIVE = "objective"  # result key: the primary objective of the latest evaluated epoch
BEST = "best_objective"  # result key: the primary objective at the trial's best epoch
NUMBER = "optuna_trial"  # config key the space adds: the Optuna trial number


def best_key(metric: str) -> str:
    """Result key of ``metric``'s value at the trial's best epoch (multi-objective sweeps)."""
    return f"best_{metric}"
