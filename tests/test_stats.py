from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hamsweep.metrics import summarize
from hamsweep.stats import CONFIRM_KEYS, Interval, class_intervals, paired_difference, seed_summaries, t_interval

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
    assert (iv.low, iv.high) == (pytest.approx(0.7001142, abs=1e-7), pytest.approx(2.4598858, abs=1e-7))  # R's digits


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
@pytest.mark.parametrize(
    "values", [[0.41, 0.43], [0.52, 0.49, 0.55], [0.2, 0.25, 0.22, 0.31, 0.18], [-0.01, 0.02, 0.0, 0.01]]
)
def test_t_interval_matches_scipy(values: list[float], confidence: float) -> None:
    x = np.array(values)
    low, high = scipy_stats.t.interval(confidence, x.size - 1, loc=x.mean(), scale=scipy_stats.sem(x))
    iv = t_interval(values, confidence)
    assert (iv.low, iv.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert iv.mean == pytest.approx(x.mean()) and iv.std == pytest.approx(x.std(ddof=1)) and iv.n == x.size


def test_paired_difference_sleep_textbook() -> None:
    iv = paired_difference(SLEEP_2, SLEEP_1)
    assert (iv.low, iv.high) == (pytest.approx(0.7001142, abs=1e-7), pytest.approx(2.4598858, abs=1e-7))
    assert iv.verdict() == "higher (95% CI excludes 0)" and iv.excludes_zero
    assert paired_difference(SLEEP_1, SLEEP_2).verdict() == "lower (95% CI excludes 0)"
    # the same data unpaired (Welch, R's digits above) cannot tell the drugs apart: pairing is the point
    welch_low, welch_high = -0.2054832, 3.3654832
    assert welch_low < 0 < welch_high and iv.high - iv.low < (welch_high - welch_low) / 2


def test_paired_difference_is_t_interval_of_differences() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.3, 0.5, 6), rng.uniform(0.3, 0.5, 6)
    assert paired_difference(a, b, 0.9) == t_interval(a - b, 0.9)


def test_paired_is_narrower_than_unpaired_when_seeds_correlate() -> None:
    # each seed moves both runs together (data order, init); the config is 1 point better on every seed
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
        ([0.30, 0.30, 0.30], [0.30, 0.30, 0.30], 0.95, "no clear difference (95% CI includes 0)"),  # [0, 0]
        ([0.32, 0.32, 0.32], [0.30, 0.30, 0.30], 0.95, "higher (95% CI excludes 0)"),  # a constant gain: [0.02, 0.02]
        ([0.30, 0.28, 0.29], [0.31, 0.30, 0.32], 0.9, "lower (90% CI excludes 0)"),
    ],
)
def test_verdict_words(values: list[float], baseline: list[float], confidence: float, verdict: str) -> None:
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
        (lambda: paired_difference([0.1, 0.2, 0.3], [0.1, 0.2]), r"must be paired by seed .* got 3 and 2 seeds"),
        (lambda: t_interval([]), r"values must have shape \(seeds,\) with seeds >= 1 but got shape \(0,\)"),
        (lambda: t_interval([[0.1, 0.2]]), r"values must have shape \(seeds,\)"),
        (lambda: paired_difference([0.1, 0.2], [0.1, math.nan]), r"baseline must be finite but got \[0\.1, nan\]"),
        (lambda: t_interval([0.1, 0.2], 95), r"confidence must be in \(0, 1\) but got 95; did you mean 0\.95\?"),
        (lambda: t_interval([0.1, 0.2], 0), r"confidence must be in \(0, 1\) but got 0$"),
    ],
)
def test_bad_samples_raise(call, match: str) -> None:  # noqa: ANN001
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


def test_class_intervals_deterministic_for_a_seed() -> None:
    n, correct = _counts(3, 8, 100)
    first, again, other = (class_intervals(n, correct, seed=s) for s in (5, 5, 6))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])
    mean, low, high = first
    np.testing.assert_allclose(mean, (correct / n).mean(0))
    assert (low < mean).all() and (mean < high).all()


def test_class_intervals_cover_at_about_the_nominal_rate() -> None:
    # CIFAR-100-like per class: 100 test images, 3 seeds, a seed-to-seed sd of 3 points (the binomial
    # sd is 4-5 points): 200 simulated experiments of 10 classes each
    rng = np.random.default_rng(1)
    mu = rng.uniform(0.2, 0.8, 10)
    n = np.full((3, 10), 100)
    hits = 0
    for e in range(200):
        correct = rng.binomial(n, np.clip(mu + rng.normal(0, 0.03, (3, 10)), 0, 1))
        _, low, high = class_intervals(n, correct, resamples=500, seed=e)
        hits += int(((low <= mu) & (mu <= high)).sum())
    assert 0.88 <= hits / 2000 <= 0.99  # measured: 0.953


def test_class_intervals_wider_with_fewer_test_images() -> None:
    # the same accuracies on every seed: all the width comes from the test images
    widths = []
    for images in (25, 400):
        n = np.full((3, 4), images)
        _, low, high = class_intervals(n, (np.array([0.2, 0.4, 0.6, 0.8]) * n).astype(int))
        widths.append(high - low)
    assert (widths[0] > 3 * widths[1]).all()  # the binomial sd shrinks as 1 / sqrt(images): 4x


def test_class_intervals_seed_stage() -> None:
    # 10,000 images a class leave almost no binomial spread; the seeds disagree by 20 points. The mean of
    # 3 seeds drawn with replacement from {0.3, 0.5, 0.7} is 0.3 (or 0.7) with probability 1/27 > 2.5%
    n = np.full((3, 1), 10_000)
    mean, low, high = class_intervals(n, np.array([[3000], [5000], [7000]]))
    assert mean[0] == pytest.approx(0.5)
    assert (low[0], high[0]) == (pytest.approx(0.3, abs=0.01), pytest.approx(0.7, abs=0.01))


def test_class_intervals_one_seed_has_the_binomial_width() -> None:
    mean, low, high = class_intervals(np.array([[100, 100]]), np.array([[60, 100]]))
    assert mean.tolist() == [0.6, 1.0]
    assert low[0] < 0.6 < high[0]
    assert high[0] - low[0] == pytest.approx(2 * 1.96 * math.sqrt(0.6 * 0.4 / 100), abs=0.03)  # 0.19
    assert low[1] == high[1] == 1.0  # every image correct: the binomial part has no spread


def test_class_intervals_all_correct_and_missing_classes() -> None:
    n = np.array([[50, 50, 0], [50, 0, 0]])
    mean, low, high = class_intervals(n, np.array([[50, 20, 0], [50, 0, 0]]))
    assert (mean[0], low[0], high[0]) == (1.0, 1.0, 1.0)
    assert mean[1] == 0.4 and low[1] < 0.4 < high[1]  # only the seed that has examples of it counts
    assert np.isnan([mean[2], low[2], high[2]]).all()  # no examples in any seed


@pytest.mark.parametrize(
    ("n", "correct", "kwargs", "match"),
    [
        ([50, 50], [10, 20], {}, r"must both have shape \(seeds, classes\) with seeds >= 1 but got \(2,\) and \(2,\)"),
        ([[50, 50]], [[10, 60]], {}, r"seed row 0: correct cannot exceed n but class 1 has correct=60 > n=50"),
        ([[50, 50], [50, -1]], [[10, 20], [10, 0]], {}, r"seed row 1: counts cannot be negative"),
        ([[50, 50]], [[10, 20]], {"resamples": 0}, r"resamples must be a positive integer but got 0"),
        ([[50, 50]], [[10, 20]], {"confidence": 1.0}, r"confidence must be in \(0, 1\) but got 1\.0"),
    ],
)
def test_bad_counts_raise(n: list, correct: list, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        class_intervals(np.array(n), np.array(correct), **kwargs)
    if "resamples" not in kwargs and "confidence" not in kwargs:
        with pytest.raises(ValueError, match=match):
            seed_summaries(np.array(n), np.array(correct), cvar_fraction=0.2)


def test_interval_is_a_plain_record() -> None:
    iv = Interval(mean=0.01, std=0.002, low=0.008, high=0.012, n=5)
    assert iv.confidence == 0.95 and dataclasses.asdict(iv)["high"] == 0.012 and iv.excludes_zero


def test_import_pulls_in_neither_torch_nor_scipy() -> None:
    # the confirm table is built from stored counts: no torch; scipy (a second to import) only on first use
    code = "import sys, hamsweep.stats; bad = {'torch', 'ray', 'scipy'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
