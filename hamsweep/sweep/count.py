"""How many trials a sweep runs: the one formula behind Tune's ``num_samples`` (the driver), the
disk a sweep needs (``disk``) and the trials not ended yet (the Recorder); and what one trial
costs (``costs``: the Parquet rows and the dashboard count it the same way)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hamsweep.spec import SweepSpec

__all__ = ["confirm_trials", "costs", "trial_count"]


def confirm_trials(spec: SweepSpec) -> int:
    """The confirm stage's trials at most: each of the ``confirm.top_k`` configs (of each method, in
    a comparison, and TRADES at its defaults) and one PGD-AT baseline per config, on each of the new
    seeds (the most a config can get, with seeds in rounds); 0 when nothing is retrained."""
    from hamsweep.sweep.confirm import confirms_trades

    c = spec.confirm
    configs = c.top_k * len(spec.methods) + confirms_trades(spec)
    return 2 * configs * c.most_seeds if c.retrains else 0


def trial_count(spec: SweepSpec, confirm: int | None = None) -> int:
    """The sweep's trials: the ``search.trials`` the sampler proposes, the trunks it trains
    first (``trunk.plan``), and the confirm stage's: ``confirm`` once it is planned, else at most
    ``confirm_trials``. Tune counts all of them as trials."""
    from hamsweep.sweep.trunk import plan

    extra = confirm_trials(spec) if confirm is None else confirm
    return spec.search.trials + len(plan(spec).trunks) + extra


def costs(spec: SweepSpec, wall_seconds: float) -> tuple[float, float]:
    """(GPU-seconds, device-seconds) of a trial that ran ``wall_seconds``: the GPUs it holds, and
    its GPUs (else CPU cores) held, times its wall time."""
    return wall_seconds * spec.resources.gpu, wall_seconds * spec.resources.devices
