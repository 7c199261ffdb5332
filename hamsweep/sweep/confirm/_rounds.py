"""Seeds in rounds: the objective a confirm trial is decided on, and which configs get more seeds
(the group-sequential design of ``hamsweep.core.sequential``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from hamsweep.core import sequential
from hamsweep.spec import SweepSpec
from hamsweep.sweep.confirm._plan import (
    ConfirmPlan,
    seeds_of,
)

__all__ = ["test_objective", "undecided"]


def test_objective(spec: SweepSpec, result: dict[str, Any]) -> float | None:
    """The objective (``objective.primary`` on PGD-``eval.attack_steps``) of a confirm trial's
    test evaluation, the number seeds in rounds are decided on; None without one (it failed)."""
    from hamsweep.core.metrics import summarize
    from hamsweep.spec.trial import objective_summary

    attack = f"pgd{spec.eval.attack_steps}"
    for e in (result.get("test") or {}).get("evals", ()):
        if e["split"] == "test" and e["attack"] == attack:
            summary = summarize(np.array(e["n"]), np.array(e["correct"]), spec.eval.cvar_fraction)
            return float(summary[objective_summary(spec.objective.primary)])
    return None


def undecided(
    spec: SweepSpec, p: ConfirmPlan, values: dict[tuple[str, int], float | None]
) -> tuple[dict[str, int], bool]:
    """The chosen configs whose every trial so far (and its baseline's on the same seeds) has ended,
    whose difference to PGD-AT (``test_objective``, seed by seed) the group-sequential design
    (``core.sequential.design``) has not decided, and that may get more seeds: config -> how many
    more (to the design's next look); and whether some config still has trials running.
    ``values``: (CONFIG, seed) -> test objective (None: that trial failed) of the ended ones."""
    design = sequential.design(spec.confirm)
    if design is None:
        return {}, False
    out, running = {}, False
    for c in p.chosen:
        base, seeds = p.baseline_of(c.trial), seeds_of(p, c.trial)
        if any((k, s) not in values for s in seeds for k in (c.trial, base)):
            running = True  # its round has not ended: decided once it has
            continue
        d = [
            values[(c.trial, s)] - values[(base, s)]  # type: ignore[operator]
            for s in seeds
            if values[(c.trial, s)] is not None and values[(base, s)] is not None
        ]
        if len(d) >= design.min_seeds and design.read(d).final:
            continue
        if len(seeds) < design.max_seeds:
            out[c.trial] = design.next_seeds(len(seeds)) - len(seeds)
    return out, running
