"""The keys a trial's results and config carry between the searcher, the trainables and the
Recorder. Ray-free on purpose: a SLURM trial job (mode jobs) builds results
without importing Ray."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BASELINE",
    "BEST",
    "CONFIG",
    "CONFIRM",
    "FORK",
    "KEEP",
    "NUMBER",
    "OBJECTIVE",
    "ROLE",
    "ROLES",
    "SEARCH",
    "STAGE",
    "TRUNK",
    "best_key",
    "role",
    "stage",
    "table_role",
    "trial_params",
    "view_role",
]

OBJECTIVE = "objective"  # result key: the primary objective of the latest evaluated epoch
BEST = "best_objective"  # result key: the primary objective at the trial's best epoch
NUMBER = "optuna_trial"  # config key the space adds: the Optuna trial number (a trunk: -1, -2, ...)
ROLE = "role"  # config key: what the trial is for, SEARCH when absent
# config key the searcher adds: the trunk key a HAM trial starts from after its warm-up
FORK = "fork"
KEEP = "keep"  # config key of a trunk: the epochs whose checkpoints it keeps for forks
STAGE = "stage"  # config key: the stage a trial belongs to, SEARCH when absent, or CONFIRM
# config key of a confirm trial: the config it retrains (a search trial id, or a baseline's label)
CONFIG = "config"
# config key of a confirmed config: the CONFIG of the PGD-AT baseline it is compared with
BASELINE = "baseline"
# roles: a trial proposed by the sampler; a shared PGD-AT warm-up (the baseline)
SEARCH, TRUNK = ("search", "trunk")
# the stage after the search: the winners and the baseline on new seeds, on the test split
CONFIRM = "confirm"
# The ``role`` column of the ``trials`` table: what a trial is, one word whatever its stage, so that
# ``WHERE role = 'search'`` is exactly the sampler's trials (a confirm trial retrains a search
# config on a new seed: it is not one of them). Inside the driver a trial's config
# keeps ROLE and STAGE apart.
ROLES = {
    SEARCH: "proposed by the sampler in the search stage (an Optuna trial; validation split only)",
    TRUNK: (
        "the search's shared PGD-AT warm-up, run to the last epoch: the search's PGD-AT baseline"
    ),
    CONFIRM: (
        "a chosen search config retrained on a new train.seed "
        "(confirm stage; evaluated on the test split)"
    ),
    BASELINE: (
        "PGD-AT retrained on a new train.seed (confirm "
        "stage): the trunk its seed's configs fork from"
    ),
}
_MARKERS = (NUMBER, ROLE, FORK, KEEP, STAGE, CONFIG, BASELINE)


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's config from Ray without the keys above: its 'section.field' values only."""
    return {k: v for k, v in config.items() if k not in _MARKERS}


def role(config: Mapping[str, Any]) -> str:
    return config.get(ROLE, SEARCH)


def stage(config: Mapping[str, Any]) -> str:
    return config.get(STAGE, SEARCH)


def best_key(metric: str) -> str:
    """Result key of ``metric``'s value at the trial's best epoch (multi-objective sweeps)."""
    return f"best_{metric}"


def table_role(role: str | None, stage: str | None) -> str:
    """The ``trials.role`` of a trial with config ``role`` and ``stage`` (see ``ROLES``)."""
    if (stage or SEARCH) == CONFIRM:
        return BASELINE if role == TRUNK else CONFIRM
    return role or SEARCH


def view_role(table_role: str | None) -> str:
    """The driver's role (SEARCH or TRUNK) of a ``trials.role``: the inverse of
    ``table_role`` given the stage."""
    return TRUNK if table_role in (TRUNK, BASELINE) else SEARCH
