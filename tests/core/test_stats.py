from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hamsweep.core.metrics import summarize
from hamsweep.core.stats import (
    CONFIRM_KEYS,
    Interval,
    class_differences,
    class_intervals,
    paired_difference,
    seed_summaries,
    t_interval,
)

# Student (1908), "The probable error of a mean", Biometrika 6: the Cushny & Peebles sleep data,
# extra hours of sleep for 10 patients under two drugs (R's datasets::sleep). R's example(t.test)
# prints for the paired test of group 1 - group 2: "t = -4.0621, df = 9, 95 percent confidence
# interval: -2.4598858 -0.7001142, mean difference -1.58"; for Welch's unpaired test:
# "t = -1.8608, df = 17.776, 95 percent confidence interval: -3.3654832 0.2054832".
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
T_975_9 = 2.262157  # t quantile, 0.975, 9 degrees of freedom (printed tables: 2.262)


def test_t_interval_sleep_textbook_by_hand() -> None:
    d = [b - a for a, b in zip(SLEEP_1, SLEEP_2)]  # 1.2 2.4 1.3 1.3 0.0 1.0 1.8 0.8 4.6 1.4
    iv = t_interval(d)
    sd = math.sqrt(13.616 / 9)  # sum of squared deviations from 1.58, by hand: 13.616
    assert (iv.mean, iv.n, iv.confidence) == (pytest.approx(1.58), 10, 0.95)
    assert iv.std == pytest.approx(sd) and iv.std == pytest.approx(1.22999, abs=1e-5)
    assert iv.low == pytest.approx(1.58 - T_975_9 * sd / math.sqrt(10), abs=1e-6)
    # R's digits
    assert (iv.low, iv.high) == (
        pytest.approx(0.7001142, abs=1e-7),
        pytest.approx(2.4598858, abs=1e-7),
    )


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
@pytest.mark.parametrize(
    "values",
    [[0.41, 0.43], [0.52, 0.49, 0.55], [0.2, 0.25, 0.22, 0.31, 0.18], [-0.01, 0.02, 0.0, 0.01]],
)
def test_t_interval_matches_scipy(values: list[float], confidence: float) -> None:
    x = np.array(values)
    low, high = scipy_stats.t.interval(
        confidence, x.size - 1, loc=x.mean(), scale=scipy_stats.sem(x)
    )
    iv = t_interval(values, confidence)
    assert (iv.low, iv.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert (
        iv.mean == pytest.approx(x.mean())
        and iv.std == pytest.approx(x.std(ddof=1))
        and iv.n == x.size
    )


def test_paired_difference_sleep_textbook() -> None:
    iv = paired_difference(SLEEP_2, SLEEP_1)
    assert (iv.low, iv.high) == (
        pytest.approx(0.7001142, abs=1e-7),
        pytest.approx(2.4598858, abs=1e-7),
    )
    assert iv.verdict() == "higher (95% CI excludes 0)" and iv.excludes_zero
    assert paired_difference(SLEEP_1, SLEEP_2).verdict() == "lower (95% CI excludes 0)"
    # the same data unpaired (Welch) cannot tell the drugs apart: pairing is the point
    welch = scipy_stats.ttest_ind(SLEEP_2, SLEEP_1, equal_var=False).confidence_interval(0.95)
    # R's digits
    assert (welch.low, welch.high) == (
        pytest.approx(-0.2054832, abs=1e-7),
        pytest.approx(3.3654832, abs=1e-7),
    )
    assert welch.low < 0 < welch.high and iv.high - iv.low < (welch.high - welch.low) / 2


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.99])
def test_paired_difference_matches_scipy_paired_t_test(confidence: float) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.3, 0.5, 6), rng.uniform(0.3, 0.5, 6)
    iv = paired_difference(a, b, confidence)
    # an independent reference: scipy's paired t-test, its interval of the mean difference
    ref = scipy_stats.ttest_rel(a, b).confidence_interval(confidence)
    assert (iv.low, iv.high) == (
        pytest.approx(ref.low, rel=1e-12),
        pytest.approx(ref.high, rel=1e-12),
    )
    assert iv.mean == pytest.approx(a.mean() - b.mean())
    assert (iv.n, iv.confidence) == (6, confidence)
    # the difference the other way round is the mirror image
    back = paired_difference(b, a, confidence)
    assert (back.low, back.high) == (pytest.approx(-iv.high), pytest.approx(-iv.low))
    # what moves both runs of a seed together (its data order, its init) cancels out of the pairs
    seed_effect = rng.normal(0, 0.1, 6)
    moved = paired_difference(a + seed_effect, b + seed_effect, confidence)
    assert (moved.low, moved.high) == (pytest.approx(iv.low), pytest.approx(iv.high))


def test_paired_is_narrower_than_unpaired_when_seeds_correlate() -> None:
    # each seed moves both runs together (data order, init); the config is 1 point better on every
    # seed
    seed_effect = np.array([0.0, 0.04, -0.03, 0.02, -0.05])
    baseline = 0.30 + seed_effect
    config = baseline + 0.01 + np.array([0.002, -0.001, 0.001, -0.002, 0.0])
    paired = paired_difference(config, baseline)
    unpaired = scipy_stats.ttest_ind(config, baseline).confidence_interval(0.95)
    assert paired.mean == pytest.approx(0.01) and paired.verdict() == "higher (95% CI excludes 0)"
    assert unpaired.low < 0 < unpaired.high
    assert paired.high - paired.low < (unpaired.high - unpaired.low) / 10


@pytest.mark.parametrize(
    ("values", "baseline", "confidence", "verdict"),
    [
        ([0.30, 0.32, 0.31], [0.31, 0.30, 0.32], 0.95, "no clear difference (95% CI includes 0)"),
        # [0, 0]
        ([0.30, 0.30, 0.30], [0.30, 0.30, 0.30], 0.95, "no clear difference (95% CI includes 0)"),
        # a constant gain: [0.02, 0.02]
        ([0.32, 0.32, 0.32], [0.30, 0.30, 0.30], 0.95, "higher (95% CI excludes 0)"),
        ([0.30, 0.28, 0.29], [0.31, 0.30, 0.32], 0.9, "lower (90% CI excludes 0)"),
    ],
)
def test_verdict_words(
    values: list[float], baseline: list[float], confidence: float, verdict: str
) -> None:
    assert paired_difference(values, baseline, confidence).verdict() == verdict


def test_one_seed_has_no_interval() -> None:
    for iv, mean in ((t_interval([0.4]), 0.4), (paired_difference([0.5], [0.4]), 0.1)):
        assert iv.n == 1 and iv.mean == pytest.approx(mean)
        assert math.isnan(iv.std) and math.isnan(iv.low) and math.isnan(iv.high)
        assert iv.verdict() == "one seed: no interval" and not iv.excludes_zero
    with pytest.raises(dataclasses.FrozenInstanceError):
        t_interval([0.4]).mean = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: paired_difference([0.1, 0.2, 0.3], [0.1, 0.2]),
            r"must be paired by seed .* got 3 and 2 seeds",
        ),
        (
            lambda: t_interval([]),
            r"values must have shape \(seeds,\) with seeds >= 1 but got shape \(0,\)",
        ),
        (lambda: t_interval([[0.1, 0.2]]), r"values must have shape \(seeds,\)"),
        (
            lambda: paired_difference([0.1, 0.2], [0.1, math.nan]),
            r"baseline must be finite but got \[0\.1, nan\]",
        ),
        (
            lambda: t_interval([0.1, 0.2], 95),
            r"confidence must be in \(0, 1\) but got 95; did you mean 0\.95\?",
        ),
        (lambda: t_interval([0.1, 0.2], 0), r"confidence must be in \(0, 1\) but got 0$"),
    ],
)
def test_bad_samples_raise(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def _counts(seeds: int, classes: int, images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = np.full((seeds, classes), images)
    return n, rng.binomial(n, rng.uniform(0.1, 0.9, (seeds, classes)))


def test_seed_summaries_agree_with_summarize() -> None:
    n, correct = _counts(4, 10, 50)
    n[2, 3] = correct[2, 3] = 0  # a class without examples in one seed
    got = seed_summaries(n, correct, cvar_fraction=0.3)
    assert tuple(got) == CONFIRM_KEYS == ("worst", "cvar", "mean")
    for s in range(4):
        want = summarize(n[s], correct[s], cvar_fraction=0.3)
        for key in CONFIRM_KEYS:
            assert got[key].shape == (4,) and got[key][s] == want[key]
    assert got["worst"][0] == (correct[0] / n[0]).min()


def test_class_intervals_are_a_function_of_the_counts() -> None:
    n, correct = _counts(3, 8, 100)
    first, again = class_intervals(n, correct), class_intervals(n, correct)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    mean, low, high = first
    np.testing.assert_allclose(mean, (correct / n).mean(0))
    assert (low < mean).all() and (mean < high).all()


@pytest.mark.parametrize("seeds", [1, 2, 3, 5])
def test_class_intervals_do_not_collapse_at_0_or_n(seeds: int) -> None:
    # a class with 0/100 and one with 100/100 on every seed: each interval holds its bound and is
    # not a point
    n = np.full((seeds, 3), 100)
    mean, low, high = class_intervals(n, np.tile([0, 100, 50], (seeds, 1)))
    assert (mean[0], low[0]) == (0.0, 0.0) and 0.005 < high[0] < 0.04
    assert (mean[1], high[1]) == (1.0, 1.0) and 0.96 < low[1] < 0.995
    # Jeffreys' upper end on 100 * seeds images (the 50% class shows no seed spread: phi = 1)
    assert high[0] == pytest.approx(scipy_stats.beta.ppf(0.975, 0.5, 100 * seeds + 0.5), rel=1e-12)
    assert low[1] == pytest.approx(1 - high[0], rel=1e-12)


def test_a_class_at_0_takes_the_seed_spread_of_the_others() -> None:
    # the same class at 0/100 beside classes whose seeds agree, then beside classes whose seeds
    # disagree
    calm = class_intervals(
        np.full((3, 4), 100), np.array([[0, 30, 50, 70], [0, 31, 50, 69], [0, 30, 51, 70]])
    )
    loud = class_intervals(
        np.full((3, 4), 100), np.array([[0, 15, 35, 85], [0, 30, 50, 70], [0, 45, 65, 55]])
    )
    assert calm[1][0] == loud[1][0] == 0.0
    assert loud[2][0] > 3 * calm[2][0] > 0


def _coverage(mu: np.ndarray, seeds: int, sd: float, experiments: int, seed: int) -> np.ndarray:
    """Per-class coverage of class_intervals: true accuracy mu (classes,), seed p ~ Beta with mean
    mu and sd ``sd`` at mu = 0.5 (variance rho mu (1 - mu), one rho), 100 test images a class."""
    rng = np.random.default_rng(seed)
    n, hits = np.full((seeds, mu.size), 100), np.zeros(mu.size)
    inner = (mu > 0) & (mu < 1)
    for _ in range(experiments):
        p = np.broadcast_to(mu, n.shape).astype(float)
        if sd:
            k = 1 / (4 * sd**2) - 1
            p[:, inner] = rng.beta(mu[inner] * k, (1 - mu[inner]) * k, (seeds, int(inner.sum())))
        _, low, high = class_intervals(n, rng.binomial(n, p))
        hits += (low <= mu) & (mu <= high)
    return hits / experiments


def test_class_intervals_cover_at_and_near_the_bounds() -> None:
    # 10 classes, 2 seeds, no seed spread: the class at 0.02 sees 0 of 200 images in 1.8% of
    # experiments
    mu = np.array([0.0, 0.02, 0.02, 0.5, 0.98, 1.0, 0.2, 0.4, 0.6, 0.8])
    cov = _coverage(mu, seeds=2, sd=0.0, experiments=400, seed=1)
    assert cov[0] == cov[5] == 1.0
    assert 0.93 <= cov[1:3].mean() <= 0.995 and 0.93 <= cov[4] <= 0.995  # measured: 0.970, 0.980
    assert 0.92 <= cov[3] <= 0.99  # measured: 0.960


def test_class_intervals_cover_with_a_seed_spread() -> None:
    # CIFAR-100-like: a seed sd of 5 points at 0.5 (as large as the binomial's), 3 seeds; the old
    # two-stage bootstrap gave 0.92-0.94 here and 0.78-0.87 at 10 points (bench/class_coverage.py)
    mu = np.array([0.02, 0.1, 0.3, 0.5, 0.5, 0.7, 0.9, 0.98])
    cov = _coverage(mu, seeds=3, sd=0.05, experiments=300, seed=2)
    assert 0.93 <= cov.mean() <= 0.98  # measured: 0.950
    assert cov.min() >= 0.90  # measured: 0.923 (at 0.1; 300 experiments: a standard error of 0.013)


def test_class_intervals_wider_with_fewer_test_images() -> None:
    # the same accuracies on every seed: all the width comes from the test images
    widths = []
    for images in (25, 400):
        n = np.full((3, 4), images)
        _, low, high = class_intervals(n, (np.array([0.2, 0.4, 0.6, 0.8]) * n).astype(int))
        widths.append(high - low)
    assert (widths[0] > 3 * widths[1]).all()  # the binomial sd shrinks as 1 / sqrt(images): 4x


def test_class_intervals_seed_stage() -> None:
    # 10,000 images a class leave almost no binomial spread (sd 0.3 points over 3 seeds); the seeds
    # disagree by 20 points, and that is what the interval shows
    n = np.full((3, 1), 10_000)
    mean, low, high = class_intervals(n, np.array([[3000], [5000], [7000]]))
    assert mean[0] == pytest.approx(0.5)
    assert low[0] < 0.3 and high[0] > 0.7


def test_class_intervals_one_seed_is_jeffreys() -> None:
    mean, low, high = class_intervals(np.array([[100, 100]]), np.array([[60, 100]]))
    assert mean.tolist() == [0.6, 1.0]
    assert (low[0], high[0]) == (
        pytest.approx(scipy_stats.beta.ppf(0.025, 60.5, 40.5), rel=1e-12),
        pytest.approx(scipy_stats.beta.ppf(0.975, 60.5, 40.5), rel=1e-12),
    )
    # 0.19
    assert high[0] - low[0] == pytest.approx(2 * 1.96 * math.sqrt(0.6 * 0.4 / 100), abs=0.01)
    assert high[1] == 1.0 and low[1] == pytest.approx(
        scipy_stats.beta.ppf(0.025, 100.5, 0.5), rel=1e-12
    )


def test_class_intervals_all_correct_and_missing_classes() -> None:
    n = np.array([[50, 50, 0], [50, 0, 0]])
    mean, low, high = class_intervals(n, np.array([[50, 20, 0], [50, 0, 0]]))
    assert (mean[0], high[0]) == (1.0, 1.0) and 0.95 < low[0] < 1.0
    assert mean[1] == 0.4 and low[1] < 0.4 < high[1]  # only the seed that has examples of it counts
    assert np.isnan([mean[2], low[2], high[2]]).all()  # no examples in any seed


def _difference_by_hand(
    a: list[list[int]], b: list[list[int]], images: int
) -> list[tuple[float, float, float]]:
    """class_differences written out with loops: per-seed differences, Jeffreys-shrunk pooled
    variances, a Pearson dispersion over the classes that are not at one bound in both arms,
    Student's t."""
    seeds, classes = len(a), len(a[0])
    chi2, df, parts = 0.0, 0, []
    for c in range(classes):
        d = [(a[s][c] - b[s][c]) / images for s in range(seeds)]
        va, vb = ((sum(x[s][c] for s in range(seeds)) + 0.5) / (seeds * images + 1) for x in (a, b))
        var = (va * (1 - va) + vb * (1 - vb)) / images  # each seed's, equal n
        mean = sum(d) / seeds
        parts.append((mean, var))
        same_bound = all(a[s][c] == b[s][c] == 0 for s in range(seeds)) or all(
            a[s][c] == b[s][c] == images for s in range(seeds)
        )
        if not same_bound:
            chi2 += sum((x - mean) ** 2 for x in d) / var
            df += seeds - 1
    t = scipy_stats.t.ppf(0.975, df)
    return [
        (
            m,
            max(-1.0, m - t * math.sqrt(chi2 / df * v / seeds)),
            min(1.0, m + t * math.sqrt(chi2 / df * v / seeds)),
        )
        for m, v in parts
    ]


def test_class_differences_against_a_computation_by_hand() -> None:
    a = [[0, 3, 48, 90, 100], [0, 1, 55, 93, 100], [0, 4, 51, 88, 99]]
    b = [[0, 0, 40, 91, 100], [0, 2, 47, 94, 100], [0, 1, 42, 85, 100]]
    mean, low, high = class_differences(
        np.full((3, 5), 100), np.array(a), np.full((3, 5), 100), np.array(b)
    )
    for c, (m, lo, hi) in enumerate(_difference_by_hand(a, b, 100)):
        assert (mean[c], low[c], high[c]) == (
            pytest.approx(m, abs=1e-12),
            pytest.approx(lo, abs=1e-12),
            pytest.approx(hi, abs=1e-12),
        )
    assert low[0] < 0 < high[0] and mean[0] == 0.0  # both at 0 on every seed: not [0, 0]
    assert low[2] > 0  # 48, 55, 51 against 40, 47, 42: a lift on every seed


def test_class_differences_are_paired_by_seed() -> None:
    # a shared seed effect of +-15 points moves both arms; the config is 5 points higher on every
    # seed
    base = np.array([[35, 35], [65, 65], [50, 50]])
    config = base + np.array([[5, 0], [5, 0], [5, 0]])
    n = np.full((3, 2), 100)
    mean, low, _ = class_differences(n, config, n, base)
    assert mean.tolist() == pytest.approx([0.05, 0.0])
    assert low[0] > 0  # unpaired, the 30-point spread of either arm would hide the 5 points
    _, lo_c, _ = class_intervals(n, config)
    _, _, hi_b = class_intervals(n, base)
    assert lo_c[0] < hi_b[0]  # the arms' own intervals overlap


def test_class_differences_one_paired_seed_is_binomial() -> None:
    mean, low, high = class_differences(
        np.array([[100]]), np.array([[60]]), np.array([[100]]), np.array([[50]])
    )
    va, vb = 60.5 / 101, 50.5 / 101
    half = 1.959963985 * math.sqrt((va * (1 - va) + vb * (1 - vb)) / 100)
    assert (mean[0], low[0], high[0]) == (
        pytest.approx(0.1),
        pytest.approx(0.1 - half),
        pytest.approx(0.1 + half),
    )


def test_class_differences_bad_pairing_raises() -> None:
    n = np.full((3, 2), 100)
    with pytest.raises(
        ValueError, match=r"paired by seed \(equal shapes\) but got \(3, 2\) and \(2, 2\)"
    ):
        class_differences(n, n // 2, n[:2], n[:2] // 2)
    with pytest.raises(ValueError, match=r"seed row 1: correct cannot exceed n"):
        class_differences(n, n // 2, n, np.array([[1, 1], [101, 1], [1, 1]]))


@pytest.mark.parametrize(
    ("n", "correct", "kwargs", "match"),
    [
        (
            [50, 50],
            [10, 20],
            {},
            r"must both have shape \(seeds, classes\) with seeds >= 1 but got \(2,\) and \(2,\)",
        ),
        (
            [[50, 50]],
            [[10, 60]],
            {},
            r"seed row 0: correct cannot exceed n but class 1 has correct=60 > n=50",
        ),
        ([[50, 50], [50, -1]], [[10, 20], [10, 0]], {}, r"seed row 1: counts cannot be negative"),
        (
            [[50, 50]],
            [[10, 20]],
            {"confidence": 1.0},
            r"confidence must be in \(0, 1\) but got 1\.0",
        ),
    ],
)
def test_bad_counts_raise(n: list, correct: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        class_intervals(np.array(n), np.array(correct), **kwargs)
    if "confidence" not in kwargs:
        with pytest.raises(ValueError, match=match):
            seed_summaries(np.array(n), np.array(correct), cvar_fraction=0.2)


def test_interval_is_a_plain_record() -> None:
    iv = Interval(mean=0.01, std=0.002, low=0.008, high=0.012, n=5)
    assert iv.confidence == 0.95 and dataclasses.asdict(iv)["high"] == 0.012 and iv.excludes_zero


def test_import_pulls_in_neither_torch_nor_scipy() -> None:
    # the confirm table is built from stored counts: no torch; scipy (a second to import) only on
    # first use
    code = (
        "import sys, hamsweep.core.stats; bad = {'torch', 'ray', 'scipy'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
