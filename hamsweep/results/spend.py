"""What a method's search has spent, counted one way everywhere: by the budget in device-hours of a
comparison (``sweep.per_method.MethodBudget``, from the dashboard's live trial views), by the
dashboard's header and by the confirmed table (from the ``trials`` rows).

A method's spending is its search trials' own device-seconds (a running one's so far) and, once,
the warm-up of each trunk its trials fork from, as far as its latest fork from it: what the
method's search would have cost alone. A trunk's warm-up is its device-seconds an epoch times the
fork epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

__all__ = ["SearchCost", "Spending", "spending"]


class SearchCost(NamedTuple):
    """One search trial, as spending counts it."""

    method: str | None  # its train.method (None: any, for a sweep of one method)
    seconds: float  # its own device-seconds
    epochs: int  # epochs it trained itself (after its fork)
    ahead: int  # epochs it still has ahead, at most (0 once it ended)
    trunk: str | None  # the trunk it forks from (a trial id), None: from scratch
    forked_at: int | None  # the trunk epoch it forks after


class Spending(NamedTuple):
    """A method's search so far."""

    seconds: float  # device-seconds: its trials' own and, once, the warm-ups they fork from
    epoch: float  # its trials' mean own device-seconds an epoch (0 before one has trained one)
    ahead: int  # epochs its running trials have ahead, at most (ASHA may stop them)
    trials: int  # its search trials
    running: int = 0  # of them, those with epochs ahead


def spending(
    trials: Iterable[SearchCost], trunks: Mapping[str, tuple[float, int]]
) -> dict[str | None, Spending]:
    """Method -> its ``Spending``; ``trunks``: trunk trial id -> (its device-seconds, the epochs
    it has run)."""
    own: dict[str | None, list[SearchCost]] = {}
    for t in trials:
        own.setdefault(t.method, []).append(t)
    out = {}
    for method, mine in own.items():
        warmup: dict[str, float] = {}
        for t in mine:
            seconds, epochs = trunks.get(t.trunk, (0.0, 0)) if t.trunk else (0.0, 0)
            if epochs and t.forked_at:
                share = seconds / epochs * min(t.forked_at, epochs)
                warmup[t.trunk] = max(warmup.get(t.trunk, 0.0), share)  # type: ignore[index]
        seconds = sum(t.seconds for t in mine)
        epochs = sum(t.epochs for t in mine)
        out[method] = Spending(
            seconds + sum(warmup.values()),
            seconds / epochs if epochs else 0.0,
            sum(t.ahead for t in mine),
            len(mine),
            sum(t.ahead > 0 for t in mine),
        )
    return out
