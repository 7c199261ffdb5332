"""What the confirm stage costs, as ``hamsweep validate`` predicts it."""

from __future__ import annotations

from hamsweep.core import methods
from hamsweep.spec import METHOD_KEY, SweepSpec
from hamsweep.sweep.confirm._plan import (
    _TRADES,
    _baseline_config,
    confirms_trades,
)

__all__ = ["baseline_epochs", "confirm_cost"]


def confirm_cost(spec: SweepSpec) -> tuple[float, int]:
    """(predicted training epochs of the confirm stage's first round, its trials): per seed, the
    ``confirm.top_k`` configs of each method (each its epochs after its warm-up, its fork epochs
    averaged as ``trunk.predicted_cost`` does), TRADES at its defaults in a comparison
    (``confirms_trades``), and a PGD-AT baseline per schedule among them."""
    from hamsweep.sweep.trunk import plan

    c = spec.confirm
    if not c.retrains:
        return 0.0, 0
    p = plan(spec)

    def after(m: str) -> float:
        """A config of ``m``'s epochs after its fork (all of them when it does not fork)."""
        e = spec.epochs(m)
        forks = [w for w in p.fork_epochs if w < e]
        if not p.shared or not methods.get(m).fork_key or not forks:
            return float(e)
        return sum(e - w for w in forks) / len(forks)

    configs = {m: c.top_k * after(m) for m in spec.methods}
    count = c.top_k * len(spec.methods)
    if confirms_trades(spec):
        configs[_TRADES] = configs.get(_TRADES, 0.0) + spec.epochs(_TRADES)
        count += 1
    baselines = _first_baselines(spec)
    return c.seeds * (sum(baselines.values()) + sum(configs.values())), c.seeds * (
        count + len(baselines)
    )


def _first_baselines(spec: SweepSpec) -> dict[str, int]:
    """The PGD-AT baselines of the methods the confirm stage confirms (TRADES at its defaults
    included), one per schedule (``spec.schedules``): CONFIG -> its epochs."""
    confirmed = [*spec.methods, *([_TRADES] if confirms_trades(spec) else [])]
    return {_baseline_config(spec, {METHOD_KEY: m}): spec.epochs(m) for m in confirmed}


def baseline_epochs(spec: SweepSpec) -> int:
    """Training epochs of one seed's PGD-AT baselines (one per schedule, ``_first_baselines``)."""
    return sum(_first_baselines(spec).values())
