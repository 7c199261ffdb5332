"""Seeds in rounds: a group-sequential paired t-test (issue 21, item 7).

With 3 seeds a paired t-interval has t(2) = 4.30 and is often undecided even for a large difference.
Adding seeds until it decides and then reading an ordinary t-interval is optional stopping: the
chance of a false "excludes 0" grows with every look (with looks at 3, 4, ..., 10 seeds about
2.5x the nominal 5%: ``bench/sequential.py`` measures it). This module is the honest version.

**The design.** The per-seed differences (a method minus PGD-AT, seed i against seed i) are looked
at after ``min_seeds``, ``min_seeds + step``, ... up to ``max_seeds`` seeds (the looks). At look
k with n_k seeds, T_k = mean / (std / sqrt(n_k)) (std with ddof=1). The verdict is decided at the
first look where |T_k| >= c_k, and its interval is the repeated confidence interval
mean +- c_k * std / sqrt(n_k) (Jennison & Turnbull, *Group Sequential Methods*, ch. 9): it
excludes 0 exactly when the test decides, and the intervals of all looks cover the true difference
together with the stated confidence. A difference still undecided at ``max_seeds`` stays undecided.

**The boundaries c_k** spend the error rate alpha = 1 - confidence over the looks with one of
Lan and DeMets' spending functions of t = n_k / max_seeds: O'Brien-Fleming's,
alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)) (the default), or the Pocock type,
alpha(t) = alpha * ln(1 + (e - 1) t). Pocock's spends early, but at 3 seeds t(2) is so wide that
what it spends there buys little: by ``bench/sequential.py`` (looks at 3..10 seeds),
O'Brien-Fleming's decides 74% of 1-sd differences where Pocock's decides 59%, and 99.3% of
1.7-sd ones (Pocock's 97.1%), at 6.4 seeds on average against 5.8. The
chance of a first |T| >= c at look k under no difference is alpha(t_k) - alpha(t_{k-1}); with
Student-t statistics the c_k have no closed form, so they are computed by simulation: ``PATHS``
paths of ``max_seeds`` independent normal differences (T does not depend on the mean's scale),
from a fixed seed, so a design always gets the same boundaries. Under normal differences the test's
error rate is then alpha up to the simulation's error (sd ~0.0005 at alpha = 0.05; the first
look's c is Student's t quantile itself). For other shapes ``bench/sequential.py`` measures it:
heavy tails keep it (3.5% for t(3) differences), skewed differences do not (9.6% for a
lognormal of sigma 0.5, where the fixed 3-seed t-test has 7.6%).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hamsweep.spec import ConfirmConfig

__all__ = ["PATHS", "SPENDING", "Design", "Look", "design", "spent"]

SPENDING = ("pocock", "obrien_fleming")  # Lan-DeMets spending functions
PATHS = 200_000  # simulated paths per design when computing its boundaries
_SEED = 20261207  # the simulation's seed: a design's boundaries are always the same


def spent(t: float, alpha: float, spending: str) -> float:
    """The error rate spent by information fraction ``t`` in (0, 1] (the share of ``max_seeds``
    looked at), for total two-sided error ``alpha``."""
    if spending == "pocock":
        return alpha * math.log(1 + (math.e - 1) * t)
    from scipy import stats

    z = stats.norm.ppf(1 - alpha / 2)
    return float(2 - 2 * stats.norm.cdf(z / math.sqrt(t)))


@dataclass(frozen=True)
class Look:
    """A paired difference as the sequential design reads it after the seeds it was given."""

    mean: float  # mean difference over the ``n`` seeds read
    std: float  # their sample standard deviation (ddof=1)
    low: float  # the repeated confidence interval's lower end
    high: float  # ... and upper end
    n: int  # seeds read: the look that decided, or the last look reached
    decided: bool  # |T| crossed the boundary at look ``n``
    final: bool  # no more seeds will be added: decided, or ``max_seeds`` reached
    confidence: float  # coverage of the intervals over all looks together

    @property
    def excludes_zero(self) -> bool:
        return self.decided

    def verdict(self) -> str:
        """In words, with the seeds the verdict took: "higher (95% sequential CI excludes 0, at
        4 seeds)"."""
        ci = f"{round(100 * self.confidence, 6):g}% sequential CI"
        at = f"{self.n} seeds"
        if self.decided:
            way = "higher" if self.mean > 0 else "lower"
            return f"{way} ({ci} excludes 0, at {at})"
        if self.final:
            return f"no clear difference ({ci} includes 0 at {at}, the maximum)"
        return f"undecided at {at}: more seeds"


@dataclass(frozen=True)
class Design:
    """When to look and how far T must be from 0 at each look. ``min_seeds == max_seeds`` is a
    fixed design: one look, the ordinary paired t-test."""

    min_seeds: int = 3  # seeds of the first look (>= 2: one seed has no spread)
    max_seeds: int = 10  # seeds of the last look
    step: int = 1  # seeds added per round
    confidence: float = 0.95  # two-sided, over all looks together
    spending: str = "obrien_fleming"  # one of SPENDING

    def __post_init__(self) -> None:
        if not 2 <= self.min_seeds <= self.max_seeds:
            raise ValueError(
                f"seeds must satisfy 2 <= min ({self.min_seeds}) <= max ({self.max_seeds})"
            )
        if self.step < 1:
            raise ValueError(f"step must be >= 1 seed but got {self.step}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1) but got {self.confidence}")
        if self.spending not in SPENDING:
            raise ValueError(
                f"spending must be one of {', '.join(SPENDING)}, not {self.spending!r}"
            )

    @property
    def looks(self) -> tuple[int, ...]:
        """The seed counts looked at: min, min + step, ..., and max."""
        return (*range(self.min_seeds, self.max_seeds, self.step), self.max_seeds)

    def boundaries(self) -> tuple[float, ...]:
        """c_k for each look: the |T| that decides there (see the module docstring)."""
        return _boundaries(self)

    def next_seeds(self, seeds: int) -> int:
        """The seed count of the look after ``seeds`` (``max_seeds`` at most)."""
        return next((n for n in self.looks if n > seeds), self.max_seeds)

    def read(self, differences: Sequence[float] | np.ndarray) -> Look:
        """The verdict after ``differences`` (per-seed, in seed order): each look up to
        ``len(differences)`` in turn, stopping at the first that decides. The seeds beyond a
        deciding look are not read: a verdict does not change once made."""
        d = np.asarray(differences, dtype=float)
        if d.ndim != 1 or d.size < self.min_seeds or not np.isfinite(d).all():
            raise ValueError(
                f"differences must be >= {self.min_seeds} finite values (one per seed) but got "
                f"{d.tolist()}"
            )
        reached = [(n, c) for n, c in zip(self.looks, self.boundaries()) if n <= d.size]
        for i, (n, c) in enumerate(reached):
            mean, std = float(d[:n].mean()), float(d[:n].std(ddof=1))
            half = c * std / math.sqrt(n)
            decided = abs(mean) > half or (std == 0 and mean != 0)
            last = i == len(reached) - 1
            if decided or last:
                final = decided or n >= self.max_seeds
                return Look(mean, std, mean - half, mean + half, n, decided, final, self.confidence)
        raise AssertionError("unreachable: the first look is always reached")


def design(confirm: ConfirmConfig) -> Design | None:
    """The design of a spec's ``confirm`` section: seeds in rounds (``confirm.seeds: {min, max,
    step}``); None for a fixed number of seeds (one ordinary paired t-test) or no retraining."""
    if confirm.max_seeds is None or not confirm.retrains:
        return None
    return Design(
        confirm.seeds, confirm.max_seeds, confirm.round_seeds, confirm.confidence, confirm.spending
    )


@functools.cache
def _boundaries(design: Design) -> tuple[float, ...]:
    from scipy import stats

    looks = np.array(design.looks)
    alpha = 1 - design.confidence
    rng = np.random.default_rng(_SEED)
    x = rng.standard_normal((PATHS, design.max_seeds))
    # T at each look from running sums, without a loop over paths
    s1, s2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
    n = looks.astype(float)
    mean = s1[:, looks - 1] / n
    var = (s2[:, looks - 1] - n * mean**2) / (n - 1)
    t = np.abs(mean) / np.sqrt(np.maximum(var, 1e-300) / n)
    alive = np.ones(PATHS, dtype=bool)  # paths no look has decided yet
    out, before = [], 0.0
    for k, seeds in enumerate(design.looks):
        total = spent(seeds / design.max_seeds, alpha, design.spending)
        # the (total - before) * PATHS largest |T_k| among the paths still alive decide here
        if k == 0:  # nothing decided before: Student's t quantile itself
            c = float(stats.t.ppf(1 - total / 2, seeds - 1))
        else:
            count = max(round((total - before) * PATHS), 1)
            values = np.sort(t[alive, k])[::-1]
            c = float(values[count - 1]) if count <= values.size else 0.0
        out.append(c)
        alive &= t[:, k] < c
        before = total
    return tuple(out)
