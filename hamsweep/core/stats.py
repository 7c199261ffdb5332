"""Statistics over seeds: intervals for the confirm stage (issue 10).

After the search, the top configs and the PGD-AT baseline are retrained on a few new values of
``train.seed`` and evaluated on the test split, per class. What is stored per seed is the pair of
per-class counts ``(n, correct)`` (see ``metrics``); everything here is a pure function of them or
of the per-seed summaries taken from them. Accuracies are fractions in [0, 1].

- A summary metric (worst-class, CVaR, mean; robust or clean) gets the mean and sample standard
  deviation over seeds and a Student-t interval of the mean (``t_interval``).
- A config against PGD-AT gets the t-interval of the **paired** per-seed differences
  (``paired_difference``): seed i of the config minus seed i of the baseline, so the variation the
  two share through the seed (data order, initialisation) cancels.
- A single class gets a Jeffreys interval on an effective number of test images, the seeds' spread
  estimated over all the classes (``class_intervals``), and its paired difference to PGD-AT an
  interval from the same model (``class_differences``); their docstrings say why and what coverage
  was measured.

scipy is imported inside the functions that need it: importing it costs a second or more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from hamsweep.core.metrics import class_accuracy, summarize

__all__ = [
    "CONFIRM_KEYS",
    "Interval",
    "class_differences",
    "class_intervals",
    "paired_difference",
    "seed_summaries",
    "t_interval",
]

# the metrics.summarize keys the confirm table reports per seed
CONFIRM_KEYS = ("worst", "cvar", "mean")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its confidence interval; accuracies (or differences) as fractions."""

    mean: float  # mean over seeds
    std: float  # sample standard deviation over seeds (ddof=1); nan for one seed
    low: float  # lower end of the interval; nan when it cannot be computed (one seed)
    high: float  # upper end; nan when it cannot be computed (one seed)
    n: int  # number of seeds
    confidence: float = 0.95  # two-sided coverage of [low, high], in (0, 1)

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or wholly below 0 (False without an interval)."""
        return self.low > 0 or self.high < 0  # nan compares False both ways

    def verdict(self) -> str:
        """The interval of a difference in words, for a results table: which way, and whether its
        interval includes 0, e.g. "higher (95% CI excludes 0)"."""
        ci = f"{round(100 * self.confidence, 6):g}% CI"
        if math.isnan(self.low):
            return "one seed: no interval" if self.n == 1 else "no interval"
        if self.low > 0:
            return f"higher ({ci} excludes 0)"
        if self.high < 0:
            return f"lower ({ci} excludes 0)"
        return f"no clear difference ({ci} includes 0)"


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean of ``values``: (seeds,) finite floats, one per seed.

    mean +- t_{(1+confidence)/2, seeds-1} * std / sqrt(seeds), std with ddof=1. With one seed the
    mean is returned with std, low and high nan: one value says nothing about the spread.
    """
    x = _sample(values, "values")
    _check_confidence(confidence)
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1, confidence)
    from scipy import stats

    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1)) * std / math.sqrt(x.size)
    return Interval(mean, std, mean - half, mean + half, x.size, confidence)


def paired_difference(
    values: Sequence[float] | np.ndarray,
    baseline: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> Interval:
    """t-interval of the per-seed differences values[i] - baseline[i]: (seeds,) each, the same
    ``train.seed`` at the same index. Positive means ``values`` is higher than the baseline."""
    x, b = _sample(values, "values"), _sample(baseline, "baseline")
    if x.size != b.size:
        raise ValueError(
            f"values and baseline must be paired by seed (equal lengths) but got {x.size} and "
            f"{b.size} seeds"
        )
    return t_interval(x - b, confidence)


def seed_summaries(
    n: np.ndarray, correct: np.ndarray, cvar_fraction: float
) -> dict[str, np.ndarray]:
    """Each seed's ``metrics.summarize`` values for the keys in ``CONFIRM_KEYS``.

    n, correct: (seeds, classes) per-class counts, one row per seed. cvar_fraction: in (0, 1], as
    ``spec`` resolves it. Returns key -> (seeds,) floats in [0, 1] (nan for
    a seed without examples).
    """
    rows = _each_seed(lambda ns, cs: summarize(ns, cs, cvar_fraction), n, correct)
    return {key: np.array([row[key] for row in rows]) for key in CONFIRM_KEYS}


def class_intervals(
    n: np.ndarray, correct: np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class mean accuracy over seeds with a Jeffreys interval on an effective number of test
    images: a quasi-binomial model whose over-dispersion (the seeds' spread)
    is shared by the classes.

    n, correct: (seeds, classes) per-class counts of one config and attack, one row per seed.
    Returns (mean, low, high), each (classes,) in [0, 1]: the mean over seeds of correct / n and its
    interval; nan for a class without examples in any seed. Closed form:
    deterministic, no resampling.

    Model (the data-generating model of the coverage simulation, ``bench/class_coverage.py``): class
    c of seed s has a true accuracy p_cs with mean mu_c over seeds (the target) and variance
    rho * mu_c * (1 - mu_c) (a beta-binomial with one intra-seed correlation rho for all classes of
    the config: the seed spread shrinks towards the bounds, as it must), and correct_cs ~
    Binomial(n_cs, p_cs). Then each seed's accuracy has variance phi * mu_c(1 - mu_c) / n_cs, phi =
    1 + (n - 1) rho: the test images' binomial noise times a dispersion the seeds add. phi is
    estimated once from all classes (Pearson: sum of (acc_cs - mean_c)^2 / (mean_c(1 - mean_c) /
    n_cs) over sum of (seeds_c - 1), classes with 0 < mean < 1), so a class at 0 that says nothing
    about the spread still gets it from the others, with classes*(seeds-1) degrees of freedom
    rather than seeds-1. Each class's interval is then Jeffreys' (the Beta(x + 1/2, m - x + 1/2)
    quantiles) on m = N_c / max(1, phi * (t_df / z)^2) effective images, x = mean_c * m, N_c its
    test images over the seeds: the t / z factor widens for the estimated phi (Korn and Graubard's
    effective sample size, 1998). At x = 0 the low end is 0 and at x = m the high end is 1 (Brown,
    Cai and DasGupta 2001): a class with 0/100 on every seed gets [0, 1.2%] on 2 seeds where the
    others show no seed spread, not [0, 0]. With one seed phi cannot be estimated and is 1: the
    interval is the test images' only.

    Why not the two-stage bootstrap it replaces (seeds with replacement, then Binomial(n, k/n)):
    it collapsed to [0, 0] and [1, 1] at the bounds, it counted the binomial noise twice (the seeds'
    spread already holds it: 0.98 without a seed spread) and resampling 2 or 3 seeds misses the seed
    spread (0.77-0.79 with 2 seeds and a seed sd of 10 points at p = 0.5). Measured for a 95%
    interval, 100 images a class, 10 classes, 2000 experiments a cell (``python
    bench/class_coverage.py``; the README has the table): 0.934-0.977 at p = 0.02, 0.5, 0.98 with 2,
    3 and 5 seeds and a seed sd of 0, 3, 5, 10 points; outside 0.95 +- 0.02 above (0.971-0.977) at
    p = 0.02 and 0.98 with 2-3 seeds (Jeffreys on a few hits), below (0.934-0.940) at p = 0.5 with
    a 10-point seed sd. At p = 0 or 1 every interval that contains the bound covers; the class at
    0/100 on every seed gets [0, 1.8%] on 2 seeds on average (the others' estimated spread), the old
    method [0, 0].
    What it assumes: one dispersion for all the classes of a config and attack; a class whose seeds
    disagree much more than the others' is under-covered.
    """
    # (seeds, classes), nan where n == 0; checks the counts
    acc = np.stack(_each_seed(class_accuracy, n, correct))
    _check_confidence(confidence)
    n = np.asarray(n).astype(float)
    present = n > 0
    mean = _mean_present(acc, present)
    # a class without examples or at a bound: left out of phi
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = np.where(present, (acc - mean) ** 2 / (mean * (1 - mean) / n), 0.0)
    spread = (mean > 0) & (mean < 1)
    deff = _design_effect(
        resid[:, spread].sum(), (present.sum(0)[spread] - 1).clip(0).sum(), confidence
    )
    images = n.sum(0) / deff
    low, high = _jeffreys(mean * images, images, confidence)
    return mean, low, high


def class_differences(
    n: np.ndarray,
    correct: np.ndarray,
    base_n: np.ndarray,
    base_correct: np.ndarray,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class paired difference config - baseline over seeds, with its interval: which classes a
    config lifts.

    n, correct: the config's (seeds, classes) counts; base_n, base_correct: the baseline's, row i
    the same ``train.seed`` as the config's row i (pass only the seeds both have). Returns (mean,
    low, high), each (classes,) in [-1, 1]: the mean over seeds of acc_config - acc_baseline
    (fractions of the class's test images) and its interval; nan for a class without
    examples in any paired seed.

    The same model as ``class_intervals``, on the per-seed differences d_cs: their variance is
    phi_d * v_c, v_c = a(1 - a) / n + b(1 - b) / n the two arms' binomial variance taken as
    independent, a and b the class's pooled accuracies shrunk as Jeffreys does ((k + 1/2) / (N +
    1)), so that a class at 0 in both arms has a small variance, not none. phi_d, pooled over the
    classes (Pearson, sum of (seeds_c - 1) degrees of freedom, classes at the same bound in both
    arms on every seed left out), holds the seed spread of the difference and also what pairing
    removes (the same seed's trunk, the same test images): it is not floored at 1. The interval is
    mean +- t_df * sqrt(phi_d * sum_s v_cs) / seeds_c, clipped to [-1, 1]; with one paired seed
    phi_d is 1 and the quantile z. Measured as ``class_intervals`` (true difference 0, the config's
    and the baseline's seed effects correlated 0.7): 0.933-0.987; outside 0.95 +- 0.02 above
    (0.975-0.987) at p = 0.02 and 0.98 with 2-3 seeds and a seed sd of 5-10 points, below
    (0.933-0.934) at p = 0.5 with 2-3 seeds and 5-10 points. The old two-stage bootstrap on
    the differences: 0.88-0.99.
    """
    acc, base = (
        np.stack(_each_seed(class_accuracy, a, c))
        for a, c in ((n, correct), (base_n, base_correct))
    )
    _check_confidence(confidence)
    if acc.shape != base.shape:
        raise ValueError(
            f"config and baseline counts must be paired by seed (equal shapes) but got {acc.shape} "
            f"and {base.shape}"
        )
    n, m = np.asarray(n).astype(float), np.asarray(base_n).astype(float)
    present = (n > 0) & (m > 0)
    diff = _mean_present(acc - base, present)
    var = _shrunk_variance(np.asarray(correct), n, present) + _shrunk_variance(
        np.asarray(base_correct), m, present
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = np.where(present, (acc - base - diff) ** 2 / var, 0.0)
    seeds = present.sum(0)
    live = ~(_all_at(acc, base, present, 0.0) | _all_at(acc, base, present, 1.0)) & (seeds > 1)
    df = int((seeds[live] - 1).sum())
    phi, q = (
        (resid[:, live].sum() / df, _t(confidence, df)) if df else (1.0, _t(confidence, math.inf))
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        half = q * np.sqrt(phi * np.where(present, var, 0.0).sum(0)) / seeds
    return diff, (diff - half).clip(-1, 1), (diff + half).clip(-1, 1)


def _design_effect(chi2: float, df: int, confidence: float) -> float:
    """max(1, phi * (t_df / z)^2), phi = chi2 / df: how many test images one effective image is
    worth; 1 without degrees of freedom (one seed) or below binomial spread (the
    seeds cannot reduce it)."""
    if df == 0:
        return 1.0
    return max(1.0, chi2 / df * (_t(confidence, df) / _t(confidence, math.inf)) ** 2)


def _jeffreys(x: np.ndarray, m: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Jeffreys interval of x hits in m (possibly fractional) trials, low 0 at x =
    0 and high 1 at x = m."""
    from scipy import stats

    tail = (1 - confidence) / 2
    with np.errstate(invalid="ignore"):  # m == 0 (a class without examples): nan, as wanted
        low = np.where(x <= 0, 0.0, stats.beta.ppf(tail, x + 0.5, m - x + 0.5))
        high = np.where(x >= m, 1.0, stats.beta.ppf(1 - tail, x + 0.5, m - x + 0.5))
    nan = np.isnan(x) | (m == 0)
    return np.where(nan, np.nan, low), np.where(nan, np.nan, high)


def _shrunk_variance(correct: np.ndarray, n: np.ndarray, present: np.ndarray) -> np.ndarray:
    """(seeds, classes) binomial variance of each seed's accuracy, a(1 - a) / n, with the class's
    pooled accuracy over the present seeds shrunk as Jeffreys does: a = (k + 1/2) /
    (N + 1), never 0 or 1."""
    k, total = np.where(present, correct, 0).sum(0), np.where(present, n, 0).sum(0)
    a = (k + 0.5) / (total + 1)
    with np.errstate(divide="ignore"):
        return a * (1 - a) / n


def _all_at(acc: np.ndarray, base: np.ndarray, present: np.ndarray, bound: float) -> np.ndarray:
    """(classes,) whether both arms sit at ``bound`` on every present seed (their difference is 0 by
    construction: it says nothing about the spread)."""
    return (~present | ((acc == bound) & (base == bound))).all(0)


def _t(confidence: float, df: float) -> float:
    """The two-sided quantile of Student's t with ``df`` degrees of freedom
    (the normal's for inf)."""
    from scipy import stats

    return float(
        stats.norm.ppf((1 + confidence) / 2)
        if math.isinf(df)
        else stats.t.ppf((1 + confidence) / 2, df)
    )


def _mean_present(acc: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean over the seed axis (-2) of (..., seeds, classes) accuracies, counting only the seeds
    where the class has examples; nan for a class that has none in any of them."""
    with np.errstate(invalid="ignore"):  # 0 / 0 for such a class: nan, as wanted
        return np.where(present, acc, 0.0).sum(-2) / present.sum(-2)


def _sample(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """``values`` as a (seeds,) float array: seeds >= 1, every value finite."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must have shape (seeds,) with seeds >= 1 but got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite but got {x.tolist()}")
    return x


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        hint = f"; did you mean {confidence / 100:g}?" if 1 < confidence < 100 else ""
        raise ValueError(f"confidence must be in (0, 1) but got {confidence}{hint}")


def _seed_counts(n: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """n, correct as arrays of shape (seeds, classes), seeds >= 1; the counts themselves are
    checked per seed by ``metrics``."""
    n_arr, c_arr = np.asarray(n), np.asarray(correct)
    if n_arr.shape != c_arr.shape or n_arr.ndim != 2 or n_arr.shape[0] == 0:
        got = f"{n_arr.shape} and {c_arr.shape}"
        raise ValueError(
            f"n and correct must both have shape (seeds, classes) with seeds >= 1 but got {got}"
        )
    return n_arr, c_arr


def _each_seed(
    fn: Callable[[np.ndarray, np.ndarray], _T], n: np.ndarray, correct: np.ndarray
) -> list[_T]:
    """fn(n[s], correct[s]) for each seed row s of (seeds, classes) counts;
    an error names the row."""
    n, correct = _seed_counts(n, correct)
    out = []
    # a handful of seeds: a loop costs nothing and keeps metrics' checks
    for s in range(n.shape[0]):
        try:
            out.append(fn(n[s], correct[s]))
        except ValueError as e:
            raise ValueError(f"seed row {s}: {e}") from None
    return out
