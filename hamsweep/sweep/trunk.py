"""Shared warm-ups: the trunks of a sweep, where their checkpoints live, and what sharing saves.

Every HAM trial starts with ``ham.warmup_epochs`` epochs of plain PGD-AT, and trials whose
warm-up config is the same (``spec.trial.warmup_part``) compute bit-identical warm-ups. A **trunk**
is one PGD-AT run of such a config, trained as a trial of the sweep (role ``trunk``), to the last
epoch: it is also the sweep's PGD-AT baseline. After each epoch a fork may start from, it keeps a
copy of its checkpoint in ``trunks/<key>/epoch-NNNN/``; a HAM trial with warm-up ``w`` (a fork)
starts from ``epoch-w`` and trains epochs ``w+1..`` only (``train.Trainer._fork``).

A sweep has one trunk per combination of the searched warm-up keys' values: they must be
``choice`` or ``int`` parameters (``train.lr: {choice: [0.05, 0.1]}`` makes two trunks). A key
searched over a continuous range gives every trial a warm-up of its own: nothing is shared, and
``plan`` says why.
"""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hamsweep.core import datasets, methods
from hamsweep.spec import SweepSpec, TrialConfig
from hamsweep.spec.trial import WARMUP_FREE_KEYS, warmup_key

__all__ = ["TRUNKS", "Plan", "Trunk", "epoch_dir", "plan", "ready_epochs", "snapshot"]

# in the sweep folder: trunks/<key>/epoch-NNNN/, a copy of the trunk's checkpoint folder
TRUNKS = "trunks"
_EPOCH = "epoch-"  # a trunk epoch's folder: epoch-0020
MAX_TRUNKS = 16  # more combinations than this share too little to be worth a full PGD-AT run each


@dataclass(frozen=True)
class Trunk:
    """One shared warm-up: the searched warm-up keys' values,
    and the key of the config they give."""

    key: str  # ``spec.trial.warmup_key`` of its config
    params: dict[str, Any]  # searched warm-up keys (and its methods' schedule) -> its value
    index: int  # 0, 1, ...: its place in the plan
    epochs: int = 0  # its train.epochs (0: a plan pickled before trunks had their own)
    methods: tuple[str, ...] = ()  # the forking methods whose trials fork from it
    # the epochs it keeps a checkpoint of: its methods' fork epochs (empty: a plan pickled before
    # trunks had their own, which keeps every fork epoch of the plan)
    keep: tuple[int, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The trunks of a sweep and the epochs forks may start from;
    empty with ``reason`` when nothing is shared."""

    trunks: tuple[Trunk, ...] = ()
    # the fork epochs a trial may have (values of ham.warmup_epochs in 1..epochs-1)
    fork_epochs: tuple[int, ...] = ()
    reason: str | None = None  # why nothing is shared

    @property
    def shared(self) -> bool:
        return bool(self.trunks)

    def forks(self, cfg: TrialConfig) -> bool:
        """Whether a trial of this config forks from a trunk: the sweep shares, and its method forks
        (HAM) with a warm-up that is neither empty nor the whole run (``Method.fork_epoch``)."""
        return self.shared and cfg.fork_epoch() is not None

    def trunk_of(self, cfg: TrialConfig) -> Trunk | None:
        """The search trunk a trial forks from,
        or None (not HAM, no warm-up, or a warm-up of its own)."""
        if not self.forks(cfg):
            return None
        key = warmup_key(cfg)
        return next((t for t in self.trunks if t.key == key), None)


def trunk_config(spec: SweepSpec, params: dict[str, Any]) -> TrialConfig:
    """A trunk's config: the search trial of ``params`` trained as PGD-AT to the last epoch."""
    return spec.search_trial_config({**params, "train.method": methods.TRUNK_METHOD})


def plan(spec: SweepSpec) -> Plan:
    """Which trunks ``spec`` makes (see the module docstring): per forking method's schedule
    (``spec.schedules``), one per combination of the searched warm-up keys' values."""
    params = spec.search.space
    if not spec.search.share_warmup:
        return Plan(reason="search.share_warmup is false")
    names = params["train.method"].choices if "train.method" in params else spec.methods
    forking = [m for m in map(methods.get, names or ()) if m.fork_key]
    if not forking:
        forkers = [m.title for m in map(methods.get, methods.names()) if m.fork_key]
        return Plan(reason=f"no trial trains with {' or '.join(forkers)}")
    keys = [m.fork_key for m in forking if m.fork_key]
    forks = {m.name: _fork_epochs(spec, m.name) for m in forking}
    fork_epochs = tuple(sorted({w for ws in forks.values() for w in ws}))
    if not fork_epochs:
        return Plan(
            reason=f"no trial has a warm-up to share ({' / '.join(keys)} is 0 or the whole run)"
        )
    searched = [k for k in params if k not in WARMUP_FREE_KEYS]
    values = {k: _values(spec, k) for k in searched}
    if continuous := [k for k, v in values.items() if v is None]:
        kinds = ", ".join(f"{k} ({params[k].kind})" for k in continuous)
        return Plan(
            reason=f"{kinds} is searched over a range, so each trial has a warm-up of its own; "
            "search it with choice (or int) to share"
        )
    # a method with a schedule of its own (search.methods.M.set) forks from trunks of its own
    schedules = spec.schedules()
    combos: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for m in (m for m in forking if forks[m.name]):
        for c in itertools.product(*values.values()):
            trunk = {**schedules.get(m.name, {}), **dict(zip(values, c))}
            key = warmup_key(trunk_config(spec, trunk))
            combos.setdefault(key, (trunk, []))[1].append(m.name)
    if len(combos) > MAX_TRUNKS:
        return Plan(
            reason=f"the searched warm-up keys ({', '.join(searched)}) and the forking methods' "
            f"schedules make {len(combos)} trunks (at most {MAX_TRUNKS})"
        )
    trunks = tuple(
        Trunk(
            key,
            c,
            i,
            trunk_config(spec, c).train.epochs,
            tuple(dict.fromkeys(names)),
            tuple(sorted({w for m in names for w in forks[m]})),
        )
        for i, (key, (c, names)) in enumerate(combos.items())
    )
    return Plan(trunks, fork_epochs)


def _fork_epochs(spec: SweepSpec, method: str) -> set[int]:
    """The epochs a trial of ``method`` may fork at: its warm-up key's values inside its run."""
    key = methods.get(method).fork_key
    values = _values(spec, key, method) or () if key else ()
    return {int(w) for w in values if 0 < int(w) < spec.epochs(method)}


def _values(spec: SweepSpec, key: str, method: str | None = None) -> tuple[Any, ...] | None:
    """Every value ``key`` can take in the sweep (in a trial of ``method``: what it fixes counts);
    None for a continuous range (or a bound naming a key)."""
    dist = spec.search.space.get(key)
    if dist is None:
        section, name = key.split(".")
        return (getattr(getattr(spec.trial_config(_of(spec, method)), section), name),)
    if dist.kind == "choice":
        return tuple(dist.choices or ())
    if dist.kind == "int" and not isinstance(dist.low, str) and not isinstance(dist.high, str):
        return tuple(range(int(dist.low), int(dist.high) + 1, dist.step))  # type: ignore[arg-type]
    return None


def _of(spec: SweepSpec, method: str | None) -> dict[str, Any]:
    """The overrides that make a trial of ``method`` (none for the spec's own)."""
    return {"train.method": method} if method and spec.search.methods else {}


# ---- the trunk store ----
def epoch_dir(out: Path, key: str, epoch: int) -> Path:
    """Where trunk ``key`` keeps its checkpoint after ``epoch`` for forks."""
    return Path(out) / TRUNKS / key / f"{_EPOCH}{epoch:04d}"


def snapshot(checkpoint_dir: Path, dest: Path) -> None:
    """Copy a trunk's checkpoint folder (last.pt, best.pt, history.json) to ``dest`` atomically (a
    folder renamed into place), once."""
    if dest.is_dir():
        return  # a restarted trunk reaches the same epoch again, with the same state
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # never a temporary file
    shutil.copytree(checkpoint_dir, tmp, ignore=shutil.ignore_patterns(".*"))
    os.replace(tmp, dest)


def ready_epochs(out: Path, key: str) -> set[int]:
    """The epochs of trunk ``key`` that forks can start from now."""
    folder = epoch_dir(out, key, 0).parent
    if not folder.is_dir():
        return set()
    return {int(p.name.removeprefix(_EPOCH)) for p in folder.glob(f"{_EPOCH}*") if p.is_dir()}


# ---- what sharing saves (printed by `hamsweep validate`, checked by bench/sweep_cost.py) ----
@dataclass(frozen=True)
class Cost:
    """Predicted training epochs of a sweep's trials, with and without shared warm-ups."""

    without: float  # expected epochs of all search trials, each from scratch
    shared: float  # the trunks' epochs plus the search trials' epochs after their warm-up
    checkpoints: int  # trunk checkpoints kept for forks (every trunk, every fork epoch)
    # method -> expected epochs of its search trials (after their fork, when they fork)
    methods: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.shared / self.without if self.without else 1.0


def predicted_cost(spec: SweepSpec) -> Cost:
    """Expected epochs under ASHA's rungs (a trial reaches rung k with probability 1/rf^k); a trial
    of a forking method trains from its fork epoch (its method's warm-up key, uniform over its
    values), any other from scratch; trunks run all their epochs. The trials are shared equally by
    the methods (exactly, in a comparison); each method's trials run its own epochs."""
    p = plan(spec)
    space = spec.search.space
    names = space["train.method"].choices if "train.method" in space else spec.methods
    each = spec.search.trials / len(names or (1,))
    full = {m: _full(_asha_segments(spec, m)) for m in names or ()}
    own = {m: each * _expected_epochs(spec, p, m) for m in names or ()}
    without = sum(each * f for f in full.values())
    if not p.shared:
        return Cost(without, without, 0, {m: each * full[m] for m in own})
    shared = sum(t.epochs for t in p.trunks) + sum(own.values())
    return Cost(without, shared, sum(len(t.keep) for t in p.trunks), own)


def _full(segments: list[tuple[int, int, float]]) -> float:
    """Expected epochs of a trial trained from scratch."""
    return sum(length * prob for _, length, prob in segments)


def _expected_epochs(spec: SweepSpec, p: Plan, method: str) -> float:
    """Expected epochs one search trial of ``method`` trains: after its fork epoch, averaged over
    the values of its warm-up key; all of them for a method that trains from scratch."""
    segments = _asha_segments(spec, method)
    key = methods.get(method).fork_key
    values = _values(spec, key, method) if key and p.shared else None
    if not values:
        return _full(segments)

    def after(w: int) -> float:
        if not 0 < w < spec.epochs(method):
            return _full(segments)  # no warm-up to share: from scratch
        return sum(
            max(0, start + length - max(start, w)) * prob for start, length, prob in segments
        )

    return sum(after(int(w)) for w in values) / len(values)


def _asha_segments(spec: SweepSpec, method: str | None = None) -> list[tuple[int, int, float]]:
    """(first epoch, epochs, probability a trial runs them) between ASHA's rungs, as Ray places
    them, for a trial of ``method`` (its own epochs)."""
    import math

    s, max_t = spec.scheduler, spec.full_epochs(method)
    if s.name == "none":
        return [(0, max_t, 1.0)]
    rungs = int(math.log(max_t / s.grace_period) / math.log(s.reduction_factor) + 1)
    points = [
        0,
        *sorted({min(max_t, int(s.grace_period * s.reduction_factor**k)) for k in range(rungs)}),
        max_t,
    ]
    points = sorted(set(points))
    return [
        (a, b - a, s.reduction_factor**-i) for i, (a, b) in enumerate(itertools.pairwise(points))
    ]


def checkpoint_bytes(spec: SweepSpec) -> int:
    """Disk one trunk checkpoint takes: the weights in last.pt and best.pt,
    and SGD's momentum (float32)."""
    from hamsweep.core import models

    # the model is sized before any data is read (imagefolder: data.num_classes stands in)
    classes = datasets.class_count(spec.data.name, spec.data.num_classes)
    model = models.build(spec.model, classes, in_channels=3)  # every dataset here is RGB
    return 3 * 4 * sum(p.numel() for p in model.parameters())
