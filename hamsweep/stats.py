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
- A single class gets a two-stage parametric bootstrap over seeds and test images
  (``class_intervals``; its docstring says why).

scipy is imported inside the one function that needs it: importing it costs a second or more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from hamsweep.metrics import class_accuracy, summarize

__all__ = [
    "CONFIRM_KEYS",
    "Interval",
    "class_intervals",
    "paired_difference",
    "seed_summaries",
    "t_interval",
]

CONFIRM_KEYS = ("worst", "cvar", "mean")  # the metrics.summarize keys the confirm table reports per seed

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
    values: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> Interval:
    """t-interval of the per-seed differences values[i] - baseline[i]: (seeds,) each, the same
    ``train.seed`` at the same index. Positive means ``values`` is higher than the baseline."""
    x, b = _sample(values, "values"), _sample(baseline, "baseline")
    if x.size != b.size:
        raise ValueError(f"values and baseline must be paired by seed (equal lengths) but got {x.size} and {b.size} seeds")
    return t_interval(x - b, confidence)


def seed_summaries(n: np.ndarray, correct: np.ndarray, cvar_fraction: float) -> dict[str, np.ndarray]:
    """Each seed's ``metrics.summarize`` values for the keys in ``CONFIRM_KEYS``.

    n, correct: (seeds, classes) per-class counts, one row per seed. cvar_fraction: in (0, 1], as
    ``spec`` resolves it. Returns key -> (seeds,) floats in [0, 1] (nan for a seed without examples).
    """
    rows = _each_seed(lambda ns, cs: summarize(ns, cs, cvar_fraction), n, correct)
    return {key: np.array([row[key] for row in rows]) for key in CONFIRM_KEYS}


def class_intervals(
    n: np.ndarray, correct: np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class mean accuracy over seeds, with a two-stage (hierarchical) parametric bootstrap
    percentile interval.

    n, correct: (seeds, classes) per-class counts, one row per seed. Returns (mean, low, high),
    each (classes,) in [0, 1]: the mean over seeds of correct / n, and the percentile interval of
    ``resamples`` bootstrap means; nan for a class without examples in any seed. Deterministic for
    a given ``seed`` (numpy's default generator).

    Each resample draws the seeds with replacement, then each drawn seed's correct counts from
    Binomial(n_sc, correct_sc / n_sc): the counts are all that is stored, so this is the parametric
    form of resampling the test images. Why both stages: per class the test split is small (100
    images a class on CIFAR-100, a binomial standard deviation of up to 5 points), so test-image
    noise is as large as seed noise. A t-interval over seeds ignores the first and is undefined
    for one seed; a pooled Wilson interval ignores the second. With one seed this still gives an
    interval (the binomial part); it is degenerate at an accuracy of exactly 0 or 1.

    Coverage: the binomial stage adds test-image noise on top of a seed spread that already holds
    it, conservative when test-image noise dominates; resampling a few seeds understates seed
    noise (a percentile interval has no t correction), which undercovers when seed noise
    dominates. Measured for a 95% interval, 100 images a class, 3 seeds: 0.98 without seed noise,
    0.93 with a seed standard deviation of 5 points, 0.84 with 10 (with 5 seeds: 0.99, 0.94, 0.90);
    ``tests/test_stats.py`` checks the CIFAR-100-like case. A class with no examples in a drawn seed
    is left out of that seed's mean.
    """
    acc = np.stack(_each_seed(class_accuracy, n, correct))  # (seeds, classes), nan where n == 0; checks the counts
    _check_confidence(confidence)
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer but got {resamples!r}")
    n = np.asarray(n).astype(np.int64)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n.shape[0], size=(resamples, n.shape[0]))  # (resamples, seeds): seeds with replacement
    hits = rng.binomial(n[drawn], np.nan_to_num(acc)[drawn])  # (resamples, seeds, classes): test images, parametric
    with np.errstate(invalid="ignore", divide="ignore"):  # n == 0 is left out by _mean_present
        boot = _mean_present(hits / n[drawn], n[drawn] > 0)  # (resamples, classes)
    mean, ok = _mean_present(acc, n > 0), (n > 0).any(0)
    low, high = np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    low[ok], high[ok] = np.nanpercentile(boot[:, ok], (50 * (1 - confidence), 50 * (1 + confidence)), axis=0)
    return mean, low, high


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
        raise ValueError(f"n and correct must both have shape (seeds, classes) with seeds >= 1 but got {got}")
    return n_arr, c_arr


def _each_seed(fn: Callable[[np.ndarray, np.ndarray], _T], n: np.ndarray, correct: np.ndarray) -> list[_T]:
    """fn(n[s], correct[s]) for each seed row s of (seeds, classes) counts; an error names the row."""
    n, correct = _seed_counts(n, correct)
    out = []
    for s in range(n.shape[0]):  # a handful of seeds: a loop costs nothing and keeps metrics' checks
        try:
            out.append(fn(n[s], correct[s]))
        except ValueError as e:
            raise ValueError(f"seed row {s}: {e}") from None
    return out
