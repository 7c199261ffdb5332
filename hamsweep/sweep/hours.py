"""Predicted device-hours of a sweep (``hamsweep validate --time``): the epochs
``trunk.predicted_cost`` expects of each method's search (after its fork, under ASHA), of the
trunks and of the confirm stage's first round, times each method's epoch as ``core.timing``
measures it on the device of the machine that runs ``validate``. With a comparison's budget in
device-hours (``search.method_hours``) it also predicts how many trials each method gets: a
method's first trial pays for the warm-up it forks from (``per_method.MethodBudget`` counts it
once), every trial its own epochs, up to ``search.num_samples``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hamsweep.core import methods
from hamsweep.errors import SpecError

if TYPE_CHECKING:
    from hamsweep.core.timing import EpochTime
    from hamsweep.spec import SweepSpec
    from hamsweep.sweep.trunk import Plan

# (phase, epochs) -> device-hours of that many epochs of that method
_HoursOf = Callable[[str, float], float]

__all__ = ["Hours", "measure", "predict"]


@dataclass(frozen=True)
class Hours:
    """Predicted device-hours (GPU-hours; CPU-hours where ``resources.gpu`` is 0)."""

    search: dict[str, float]  # method -> its search trials' own hours (and its warm-up, charged)
    trials: dict[str, float]  # method -> the trials it is predicted to get
    trunks: float  # the search's shared PGD-AT trunks
    confirm: float  # the confirm stage's first round (test-split attacks not included)

    @property
    def total(self) -> float:
        return sum(self.search.values()) + self.trunks + self.confirm


def measure(spec: SweepSpec, batches: int = 5) -> dict[str, EpochTime]:
    """Each method's epoch (and PGD-AT's, the trunks') timed here at its defaults."""
    import torch

    from hamsweep.core.data import load
    from hamsweep.core.timing import epoch_time
    from hamsweep.sweep.confirm import confirms_trades

    if spec.resources.gpu > 0 and not torch.cuda.is_available():
        raise SpecError(
            "resources.gpu",
            f"the spec's trials hold {spec.resources.gpu:g} GPU each but this machine has no CUDA "
            "device: run validate --time on a GPU node (e.g. under srun --gres=gpu:1), or drop "
            "--time",
        )
    data = load(spec.trial_config().data)
    reference = ["trades"] if confirms_trades(spec) else []  # the confirm stage's TRADES
    phases = dict.fromkeys([*spec.methods, *reference, methods.TRUNK_METHOD])
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(spec.resources.cpu)))  # as a trial runs (sweep.trial)
    try:
        for phase in phases:
            method = phase if phase in spec.search.methods else None
            cfg = spec.search_trial_config(spec.defaults(method) if method else {})
            out[phase] = epoch_time(cfg, phase, data, batches)
    finally:
        torch.set_num_threads(threads)
    return out


def predict(spec: SweepSpec, times: dict[str, EpochTime]) -> Hours:
    """The sweep's predicted device-hours from ``times`` (``measure``)."""
    from hamsweep.sweep.trunk import plan, predicted_cost

    cost, p, every = predicted_cost(spec), plan(spec), spec.eval.every_epochs
    scale = spec.resources.devices / 3600  # device-seconds -> device-hours

    def hours(phase: str, epochs: float) -> float:
        return epochs * times[phase].epoch(every) * scale

    search, trials = {}, {}
    n = spec.search.num_samples if spec.search.methods else spec.search.trials
    for m, epochs in cost.methods.items():
        per_trial = hours(m, epochs / n)
        warmup = _warmup_hours(spec, p, m, hours)
        if spec.search.method_hours is None:
            trials[m], search[m] = float(n), n * per_trial
            continue
        fits = (spec.search.method_hours - warmup) / per_trial if per_trial else float(n)
        trials[m] = max(0.0, min(float(n), fits))
        search[m] = warmup + trials[m] * per_trial
    trunks = hours(methods.TRUNK_METHOD, sum(t.epochs for t in p.trunks)) if p.shared else 0.0
    return Hours(search, trials, trunks, _confirm_hours(spec, p, hours))


def _warmup_hours(spec: SweepSpec, p: Plan, method: str, hours: _HoursOf) -> float:
    """The warm-up a comparison's budget charges ``method`` once: the trunk's epochs up to its
    latest fork (0 for a method that trains from scratch, or without shared warm-ups)."""
    if spec.search.method_hours is None or not p.shared or not methods.get(method).fork_key:
        return 0.0
    return hours(methods.TRUNK_METHOD, _fork_epoch(spec, method))


def _fork_epoch(spec: SweepSpec, method: str) -> int:
    """The epoch ``method`` forks at with its defaults."""
    params = spec.defaults(method if spec.search.methods else None)
    return spec.search_trial_config(params).fork_epoch()


def _confirm_hours(spec: SweepSpec, p: Plan, hours: _HoursOf) -> float:
    """The confirm stage's first round: per new seed, PGD-AT's run on each schedule and each
    confirmed config's epochs (after its fork, when it forks)."""
    c = spec.confirm
    if not c.retrains:
        return 0.0
    from hamsweep.sweep.confirm import baseline_epochs, confirms_trades

    total = hours(methods.TRUNK_METHOD, baseline_epochs(spec))
    for m in spec.methods:
        forks = p.shared and methods.get(m).fork_key
        epochs = spec.epochs(m)
        total += c.top_k * hours(m, epochs - _fork_epoch(spec, m) if forks else epochs)
    if confirms_trades(spec):
        total += hours("trades", spec.epochs("trades"))
    return c.seeds * total
