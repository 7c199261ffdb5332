from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hamsweep.core.metrics import (
    SUMMARY_KEYS,
    class_accuracy,
    class_counts,
    cvar_k,
    summarize,
    wilson_lower,
)

Z = 1.959963984540054

# the hand-computed table: class 2 has no examples
N = np.array([10, 20, 0, 5])
CORRECT = np.array([10, 5, 0, 4])


def _wilson_lower_by_hand(c: int, n: int) -> float:
    # the other textbook form of the Wilson bound: centre (c + z^2/2) / (n + z^2),
    # half-width z / (n + z^2) * sqrt(c (n - c) / n + z^2 / 4)
    centre = (c + Z**2 / 2) / (n + Z**2)
    half = Z / (n + Z**2) * math.sqrt(c * (n - c) / n + Z**2 / 4)
    return centre - half


def test_class_accuracy_table() -> None:
    acc = class_accuracy(N, CORRECT)
    np.testing.assert_array_equal(acc[[0, 1, 3]], [1.0, 0.25, 0.8])
    assert math.isnan(acc[2])


def test_wilson_textbook_values() -> None:
    assert wilson_lower(np.array([10]), np.array([8]))[0] == pytest.approx(0.4902, abs=1e-4)
    # = 0.7225
    assert wilson_lower(np.array([10]), np.array([10]))[0] == pytest.approx(10 / (10 + Z**2))
    assert wilson_lower(np.array([10]), np.array([0]))[0] == 0.0


def test_wilson_table_against_hand_formula() -> None:
    low = wilson_lower(N, CORRECT)
    for i in (0, 1, 3):
        assert low[i] == pytest.approx(_wilson_lower_by_hand(int(CORRECT[i]), int(N[i])), rel=1e-12)
    assert math.isnan(low[2])


def test_wilson_tightens_with_more_examples() -> None:
    n = np.array([5, 50, 500, 5000])
    low = wilson_lower(n, (0.8 * n).astype(int))
    assert (np.diff(low) > 0).all() and (low < 0.8).all()


def test_summarize_table() -> None:
    s = summarize(N, CORRECT, cvar_fraction=0.2)
    accs = [1.0, 0.25, 0.8]  # the three classes with examples
    m = sum(accs) / 3
    # 0.68333, class-balanced (the example-weighted mean is 19/35)
    assert s["mean"] == pytest.approx(m)
    assert s["worst"] == 0.25
    assert s["std"] == pytest.approx(math.sqrt(sum((a - m) ** 2 for a in accs) / 3))  # 0.31710
    assert s["cvar"] == 0.25  # k = ceil(0.2 * 3) = 1
    assert s["lcb"] == pytest.approx(
        min(_wilson_lower_by_hand(c, n) for c, n in [(10, 10), (5, 20), (4, 5)])
    )
    # 5/20 is the least certain-good class
    assert s["lcb"] == pytest.approx(_wilson_lower_by_hand(5, 20))
    assert s["worst_class"] == 1
    assert s["n"] == 35
    assert set(s) == {*SUMMARY_KEYS, "worst_class", "n"}
    assert all(type(s[k]) is float for k in SUMMARY_KEYS) and type(s["worst_class"]) is int


@pytest.mark.parametrize(
    ("fraction", "cvar"), [(0.5, (0.25 + 0.8) / 2), (0.66, (0.25 + 0.8) / 2), (1.0, 2.05 / 3)]
)
def test_summarize_cvar_k(fraction: float, cvar: float) -> None:
    assert summarize(N, CORRECT, cvar_fraction=fraction)["cvar"] == pytest.approx(cvar)


def test_worst_class_ties_go_to_lowest_index() -> None:
    assert summarize(np.array([0, 4, 4, 2]), np.array([0, 2, 2, 1]))["worst_class"] == 1


def test_summarize_without_examples() -> None:
    s = summarize(np.zeros(3, dtype=int), np.zeros(3, dtype=int))
    assert all(math.isnan(s[k]) for k in SUMMARY_KEYS)
    assert s["worst_class"] == -1 and s["n"] == 0


@pytest.mark.parametrize(
    ("num_classes", "fraction", "k"),
    [
        (10, 0.2, 2),
        (100, 0.07, 7),
        (50, 0.14, 7),
        (100, 0.2, 20),
        (3, 0.01, 1),
        (7, 1.0, 7),
        (3, 0.2, 1),
    ],
)
def test_cvar_k(num_classes: int, fraction: float, k: int) -> None:
    # 0.07 * 100 and 0.14 * 50 are 7.000000000000001 in floating point: still k = 7
    assert cvar_k(num_classes, fraction) == k


def test_class_counts_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (1000,), generator=g)  # class 6 of 7 never appears
    pred = torch.where(
        torch.rand(1000, generator=g) < 0.6, labels, torch.randint(0, 7, (1000,), generator=g)
    )
    n, correct = class_counts(pred, labels, num_classes=7)
    assert n.dtype == correct.dtype == torch.int64 and n.shape == correct.shape == (7,)
    for c in range(7):
        assert n[c] == sum(int(y) == c for y in labels)
        assert correct[c] == sum(int(y) == c and int(p) == c for p, y in zip(pred, labels))
    assert summarize(n.numpy(), correct.numpy())["n"] == 1000


def test_class_counts_empty_batch() -> None:
    n, correct = class_counts(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 3)
    assert n.tolist() == correct.tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("pred", "labels", "match"),
    [
        (
            torch.zeros(3, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
            "must both have shape",
        ),
        (torch.zeros(3, 10), torch.zeros(3, dtype=torch.long), "must both have shape"),
        (torch.zeros(3), torch.zeros(3), "integer class indices"),
        (
            torch.zeros(3, dtype=torch.long),
            torch.tensor([0, 1, 5]),
            r"must be in 0\.\.4 but got values in 0\.\.5",
        ),
        (torch.zeros(3, dtype=torch.long), torch.tensor([0, -1, 2]), r"labels must be in 0\.\.4"),
    ],
)
def test_class_counts_bad_inputs(pred: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        class_counts(pred, labels, num_classes=5)


@pytest.mark.parametrize(
    ("n", "correct", "match"),
    [
        ([1, 2, 3], [1, 2], "must both have shape"),
        ([[1, 2]], [[1, 2]], "must both have shape"),
        ([1, -2], [1, 0], "cannot be negative"),
        ([1, 2], [1, 3], "class 1 has correct=3 > n=2"),
        ([1.5, 2], [1, 2], "whole counts"),
        ([np.nan, 2], [1, 2], "whole counts"),
    ],
)
def test_bad_counts_raise(n: list, correct: list, match: str) -> None:
    for fn in (class_accuracy, wilson_lower, summarize):
        with pytest.raises(ValueError, match=match):
            fn(np.array(n), np.array(correct))


@pytest.mark.parametrize(("num_classes", "fraction"), [(10, 0.0), (10, 1.5), (10, -0.2), (0, 0.2)])
def test_bad_cvar_arguments(num_classes: int, fraction: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        cvar_k(num_classes, fraction)
    if num_classes:
        with pytest.raises(ValueError, match=r"cvar fraction must be in \(0, 1\]"):
            summarize(N, CORRECT, cvar_fraction=fraction)
