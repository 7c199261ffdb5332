"""The report's figures, each a pure function of ``ReportData`` -> ``Drawn`` (matplotlib, Agg): a
title that says what to read from it, and a caption for the page. Accuracies are drawn in percent.
A new figure is one function in ``search`` (the search and its best configs) or ``comparison``
(the confirmed configs against PGD-AT, class by class) and one entry in ``FIGURES``, the page's
order.
"""

from __future__ import annotations

from collections.abc import Callable

from hamsweep.report.data import ReportData
from hamsweep.report.figures._base import Drawn
from hamsweep.report.figures.comparison import class_differences, cost_of_fairness, rank_agreement
from hamsweep.report.figures.search import (
    class_state,
    curves,
    diagnostics,
    fairness,
    knobs,
    per_class,
    progress,
)

__all__ = [
    "FIGURES",
    "Drawn",
    "class_differences",
    "class_state",
    "cost_of_fairness",
    "draw_all",
    "fairness",
    "per_class",
    "progress",
    "rank_agreement",
]

FIGURES: tuple[Callable[[ReportData], Drawn], ...] = (
    per_class,
    class_differences,
    cost_of_fairness,
    rank_agreement,
    fairness,
    progress,
    knobs,
    curves,
    diagnostics,
    class_state,
)


def draw_all(d: ReportData) -> list[Drawn]:
    return [f(d) for f in FIGURES]
