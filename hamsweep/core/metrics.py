"""Per-class counts -> per-class accuracies and the robust-fairness summaries.

What gets stored is the pair of per-class counts ``(n, correct)``; every summary here is a pure
function of them, so any metric can be recomputed later from the results tables. Accuracies are
fractions in [0, 1]. Summaries are taken over the classes that have examples (``n > 0``), each
class weighing the same (class-balanced), since robust fairness is about the worst classes, not
the average example.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

# torch only for class_counts: reading stored counts (hamsweep query) needs no torch
if TYPE_CHECKING:
    import torch

__all__ = [
    "SUMMARY_KEYS",
    "class_accuracy",
    "class_counts",
    "cvar_k",
    "summarize",
    "wilson_lower",
]

SUMMARY_KEYS = ("mean", "worst", "std", "cvar", "lcb")  # the float metrics `summarize` returns
Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def class_counts(
    pred: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class example and correct counts, on the inputs' device.

    pred, labels: (N,) integer class indices in [0, num_classes).
    Returns (n, correct), each int64 (num_classes,).
    """
    import torch

    if pred.shape != labels.shape or labels.dim() != 1:
        got = f"{tuple(pred.shape)} and {tuple(labels.shape)}"
        raise ValueError(f"pred and labels must both have shape (N,) but got {got}")
    if labels.is_floating_point() or pred.is_floating_point():
        raise ValueError(
            f"pred and labels must be integer class indices but got {pred.dtype} and {labels.dtype}"
        )
    labels = labels.long()
    if labels.numel():
        # one host sync, which bincount needs anyway
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must be in 0..{num_classes - 1} but got values in {lo}..{hi}")
    # one pass: bin 2*label + hit, so column 0 counts the misses and column 1 the hits of each class
    bins = torch.bincount(2 * labels + (pred == labels).long(), minlength=2 * num_classes).view(
        num_classes, 2
    )
    return bins.sum(1), bins[:, 1].contiguous()


def _counts(n: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated (n, correct) as float arrays of shape (C,)."""
    n, correct = np.asarray(n, dtype=float), np.asarray(correct, dtype=float)
    if n.shape != correct.shape or n.ndim != 1:
        raise ValueError(
            f"n and correct must both have shape (num_classes,) but got {n.shape} and "
            f"{correct.shape}"
        )
    if (
        not (np.isfinite(n).all() and np.isfinite(correct).all())
        or (n % 1).any()
        or (correct % 1).any()
    ):
        raise ValueError(
            "n and correct must be whole counts but got non-integer or non-finite values"
        )
    if (n < 0).any() or (correct < 0).any():
        got = f"n={n.astype(int).tolist()}, correct={correct.astype(int).tolist()}"
        raise ValueError(f"counts cannot be negative but got {got}")
    if (correct > n).any():
        bad = int(np.argmax(correct > n))
        got = f"correct={int(correct[bad])} > n={int(n[bad])}"
        raise ValueError(f"correct cannot exceed n but class {bad} has {got}")
    return n, correct


def class_accuracy(n: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Per-class accuracy correct / n, (C,) floats in [0, 1]; nan where n == 0."""
    n, correct = _counts(n, correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, correct / n, np.nan)


def wilson_lower(n: np.ndarray, correct: np.ndarray, z: float = Z_95) -> np.ndarray:
    """Lower end of the Wilson score interval for each class's accuracy, (C,); nan where n == 0.

    (p + z^2/2n - z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), p = correct / n. Unlike the normal
    interval it stays inside [0, 1] and is not degenerate at p = 1, which small test classes hit.
    """
    p = class_accuracy(n, correct)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        z2n = z * z / n
        spread = z * np.sqrt(np.maximum(p * (1 - p) / n + z2n / (4 * n), 0.0))
        low = (p + z2n / 2 - spread) / (1 + z2n)
    return np.where(n > 0, np.clip(low, 0.0, 1.0), np.nan)


def cvar_k(num_classes: int, fraction: float) -> int:
    """How many worst classes CVaR averages: max(1, ceil(fraction * num_classes))."""
    if not 0 < fraction <= 1:
        raise ValueError(f"cvar fraction must be in (0, 1] but got {fraction}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 but got {num_classes}")
    # round first: 0.07 * 100 is 7.000000000000001 in floating point, and must give k = 7, not 8
    return max(1, math.ceil(round(fraction * num_classes, 9)))


def summarize(n: np.ndarray, correct: np.ndarray, cvar_fraction: float = 0.2) -> dict[str, float]:
    """Class-balanced summaries of per-class counts n, correct: (C,).

    Over the classes with n > 0: ``mean`` (of per-class accuracies), ``worst`` (min), ``std``
    (population, ddof=0), ``cvar`` (mean of the k = cvar_k(classes, cvar_fraction) worst), ``lcb``
    (min Wilson 95% lower bound: a worst class that small classes cannot flatter); plus
    ``worst_class`` (index, ties -> lowest; -1 if no class has examples) and ``n`` (total examples).
    """
    acc = class_accuracy(n, correct)
    present = acc[~np.isnan(acc)]
    total = int(np.asarray(n, dtype=float).sum())
    # checks the fraction even when no class is present
    k = cvar_k(max(present.size, 1), cvar_fraction)
    if present.size == 0:
        return {**dict.fromkeys(SUMMARY_KEYS, math.nan), "worst_class": -1, "n": total}
    return {
        "mean": float(present.mean()),
        "worst": float(present.min()),
        "std": float(present.std()),
        "cvar": float(np.sort(present)[:k].mean()),
        "lcb": float(np.nanmin(wilson_lower(n, correct))),
        "worst_class": int(np.nanargmin(acc)),
        "n": total,
    }
