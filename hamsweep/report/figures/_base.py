"""What every figure of the report is: ``Drawn``, and the helpers the figure modules share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node

from matplotlib.figure import Figure

__all__ = ["Drawn", "pct", "robust_attack"]


@dataclass
class Drawn:
    """One figure of the report."""

    name: str  # file stem: per_class -> per_class.png, per_class.pdf
    title: str  # what to read from it (also the figure's own title)
    caption: str  # how it was drawn
    figure: Figure


def pct(x: float | None) -> float:
    """A fraction in percent, NaN for None (matplotlib leaves a gap)."""
    return math.nan if x is None else 100 * x


def robust_attack(rows: list[dict[str, Any]]) -> str:
    """The attack a table's robust numbers are read from: AutoAttack where it ran, else PGD."""
    attacks = {r["attack"] for r in rows} - {"clean"}
    return "autoattack" if "autoattack" in attacks else min(attacks, default="clean")
