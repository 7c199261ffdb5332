"""The group-sequential paired t-test (hamsweep.core.sequential): its error rate under optional
stopping, recomputed here on simulations independent of the ones that made its boundaries."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from hamsweep.core.sequential import SPENDING, Design, spent
from hamsweep.core.stats import paired_difference

PATHS = 40_000  # sd of a simulated 5% error rate: 0.0011


def _t_at_looks(x: np.ndarray, looks: tuple[int, ...]) -> np.ndarray:
    """|T| of each path (row of ``x``) at each look, computed look by look."""
    out = np.empty((x.shape[0], len(looks)))
    for k, n in enumerate(looks):
        part = x[:, :n]
        out[:, k] = np.abs(part.mean(1)) / (part.std(1, ddof=1) / math.sqrt(n))
    return out


@pytest.mark.parametrize("spending", SPENDING)
def test_the_error_rate_under_optional_stopping_is_the_stated_one(spending):
    design = Design(3, 10, spending=spending)
    x = np.random.default_rng(1).standard_normal((PATHS, 10))  # no difference
    t = _t_at_looks(x, design.looks)
    ever = (t >= np.array(design.boundaries())).any(1).mean()
    assert abs(ever - 0.05) < 0.006, ever
    # and each look spends what the spending function says, no more
    first = (t >= np.array(design.boundaries())).argmax(1)[(t >= design.boundaries()).any(1)]
    fractions = [n / 10 for n in design.looks]
    for k in range(len(design.looks)):
        want = spent(fractions[k], 0.05, spending) - (
            spent(fractions[k - 1], 0.05, spending) if k else 0
        )
        assert abs((first == k).mean() * ever - want) < 0.004, (k, want)


def test_peeking_with_the_fixed_t_interval_would_not_hold_it():
    """The same looks with the ordinary 95% t-interval at each: the rate the design fixes."""
    design = Design(3, 10)
    x = np.random.default_rng(2).standard_normal((PATHS, 10))
    t = _t_at_looks(x, design.looks)
    naive = np.array([stats.t.ppf(0.975, n - 1) for n in design.looks])
    assert (t >= naive).any(1).mean() > 0.09


def test_the_first_boundary_is_students_quantile_and_one_look_is_the_paired_t_test():
    design = Design(3, 10, spending="pocock")
    alpha1 = 0.05 * math.log(1 + (math.e - 1) * 0.3)  # Lan-DeMets' Pocock type at 3 of 10 seeds
    assert design.boundaries()[0] == pytest.approx(stats.t.ppf(1 - alpha1 / 2, 2), rel=1e-12)
    fixed = Design(4, 4)
    d = [0.07, 0.34, 0.18, -0.02]
    look, ref = fixed.read(d), paired_difference(np.array(d) + 1, np.ones(4))
    assert (look.low, look.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert look.final and not look.decided and "includes 0 at 4 seeds" in look.verdict()


def test_a_verdict_is_made_at_the_first_look_that_decides_and_then_kept():
    design = Design(3, 10)
    c = design.boundaries()
    small = [0.100, 0.101, 0.102]  # |T| = 175 > c_1: decided at 3 seeds
    look = design.read([*small, -0.5, -0.6])  # later seeds are not read
    t = abs(np.mean(small)) / (np.std(small, ddof=1) / math.sqrt(3))
    assert t > c[0] and look.decided and look.final and look.n == 3
    assert look.low == pytest.approx(np.mean(small) - c[0] * np.std(small, ddof=1) / math.sqrt(3))
    assert look.verdict() == "higher (95% sequential CI excludes 0, at 3 seeds)"


def test_an_undecided_difference_asks_for_the_next_round_until_the_maximum():
    design = Design(3, 6, step=2)
    assert design.looks == (3, 5, 6) and design.next_seeds(3) == 5 and design.next_seeds(5) == 6
    noisy = [0.2, -0.1, 0.15, -0.05, 0.1, -0.1]
    for n, final in ((3, False), (4, False), (5, False), (6, True)):
        look = design.read(noisy[:n])
        assert not look.decided and look.final is final
        assert look.n == max(k for k in design.looks if k <= n)
    assert design.read(noisy[:4]).verdict() == "undecided at 3 seeds: more seeds"


def test_boundaries_are_the_same_every_time():
    a = Design(3, 8).boundaries()
    assert Design(3, 8, confidence=0.95).boundaries() == a  # cached, and from a fixed seed
    assert all(x > y for x, y in itertools.pairwise(a))  # falling with the seeds


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_seeds": 1, "max_seeds": 5}, "2 <= min (1) <= max (5)"),
        ({"min_seeds": 6, "max_seeds": 5}, "2 <= min (6) <= max (5)"),
        ({"step": 0}, "step must be >= 1"),
        ({"confidence": 95}, "confidence must be in (0, 1)"),
        ({"spending": "haybittle"}, "spending must be one of pocock, obrien_fleming"),
    ],
)
def test_a_bad_design_says_what_is_valid(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Design(**kwargs)


def test_fewer_differences_than_the_first_look_are_refused():
    with pytest.raises(ValueError, match="must be >= 3 finite values"):
        Design(3, 5).read([0.1, 0.2])
