"""Class-wise evaluation: clean, PGD (random start) and AutoAttack accuracy per class.

The counts are what gets stored (``results.CLASSES``); every summary is recomputed from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hamsweep.core import attacks, metrics
from hamsweep.core.data import Dataset, DeviceLoader, Split, subsample
from hamsweep.spec import TrialConfig

__all__ = [
    "AUTOATTACK",
    "CLEAN",
    "EvalCounts",
    "evaluate",
    "evaluate_checkpoint",
    "standard_autoattack",
]

CLEAN, AUTOATTACK = "clean", "autoattack"  # attack names; PGD is named pgd<steps>


@dataclass(frozen=True)
class EvalCounts:
    """Per-class counts of one evaluation: ``correct[c]`` of ``n[c]`` examples of class c."""

    split: str  # "val", "test", or "train" (``evaluate_checkpoint``'s training subset)
    attack: str  # "clean", "pgd20", "autoattack"
    n: tuple[int, ...]
    correct: tuple[int, ...]

    @classmethod
    def from_dict(cls, data: dict) -> EvalCounts:
        """The inverse of ``dataclasses.asdict`` (JSON gives lists back for the tuples)."""
        return cls(**{**data, "n": tuple(data["n"]), "correct": tuple(data["correct"])})

    def summary(self, cvar_fraction: float) -> dict[str, float]:
        return metrics.summarize(np.array(self.n), np.array(self.correct), cvar_fraction)


def evaluate(
    model: nn.Module,
    split: Split,
    name: str,
    cfg: TrialConfig,
    num_classes: int,
    *,
    seed: int,
    autoattack: bool = False,
) -> list[EvalCounts]:
    """Class-wise clean and PGD-``eval.attack_steps`` accuracy (plus AutoAttack
    when asked) on ``split``.

    The attack's random start draws from its own generator seeded by ``seed``, so evaluating never
    changes the training randomness.
    """
    e, device = cfg.eval, next(model.parameters()).device
    split = subsample(split, e.max_examples, cfg.data.seed)
    gen = torch.Generator(device=device).manual_seed(10_000 + cfg.train.seed * 1_000 + seed)
    loader = DeviceLoader(split, e.batch_size, device=device, seed=0, shuffle=False)
    step = e.step_size if e.step_size is not None else cfg.train.eps / 4
    attackers = _attackers(model, cfg.train.eps, step, e.attack_steps, gen, num_classes, autoattack)
    zeros = torch.zeros(num_classes, dtype=torch.int64, device=device)
    totals = {a: (zeros, zeros) for a in attackers}
    model.eval()
    for x, y in loader.epoch(0):
        for a, attack in attackers.items():
            x_a = attack(x, y)
            with torch.no_grad():
                pred = model(x_a).argmax(1)
            n, c = metrics.class_counts(pred, y, num_classes)
            totals[a] = (totals[a][0] + n, totals[a][1] + c)
    return [
        EvalCounts(name, a, tuple(n.tolist()), tuple(c.tolist())) for a, (n, c) in totals.items()
    ]


def evaluate_checkpoint(
    path: Path,
    cfg: TrialConfig,
    dataset: Dataset,
    *,
    device: torch.device,
    autoattack: bool = False,
    train_examples: int = 0,
) -> tuple[list[EvalCounts], int]:
    """A saved model (``best.pt`` or ``last.pt`` of ``train``) on the test split of ``dataset``, per
    class: (the evaluations, the epoch the checkpoint holds). The one test-split evaluation after
    training: the confirm stage's trials and ``hamsweep evaluate`` both call it. With
    ``train_examples``, also a class-stratified subset of that many training examples (split
    ``train``, clean and PGD): the classes' ranks on the data the model trained on."""
    from hamsweep.core import models

    state = torch.load(path, map_location="cpu", weights_only=False)
    model = models.build(cfg.model, dataset.num_classes, in_channels=dataset.image_shape[0])
    model.load_state_dict(state["model"])
    model.to(device)
    evals = evaluate(
        model, dataset.test, "test", cfg, dataset.num_classes, seed=0, autoattack=autoattack
    )
    if train_examples:
        train = subsample(dataset.train, train_examples, cfg.data.seed)
        evals += evaluate(model, train, "train", cfg, dataset.num_classes, seed=0)
    return evals, int(state["epoch"])


def _attackers(
    model: nn.Module,
    eps: float,
    step: float,
    steps: int,
    gen: torch.Generator,
    num_classes: int,
    autoattack: bool,
) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """Attack name -> (x, y) -> x_adv, each built once per evaluation."""
    out: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        CLEAN: lambda x, y: x,
        f"pgd{steps}": lambda x, y: attacks.pgd(
            model, x, y, eps=eps, step_size=step, steps=steps, generator=gen
        ),
    }
    if autoattack:
        out[AUTOATTACK] = standard_autoattack(model, eps, num_classes)
    return out


def standard_autoattack(model: nn.Module, eps: float, num_classes: int) -> Any:
    """AutoAttack, version "standard" at L-inf ``eps``, with the settings of the reference
    implementation (Croce & Hein, github.com/fra31/auto-attack, which no package registry serves):
    APGD-CE and APGD-T (100 iterations, 1 restart, rho 0.75), FAB-T (100 iterations), both
    targeted ones on the 9 most likely other classes (all others when there are fewer), then Square
    (5,000 queries, p_init 0.8, no rescaled schedule), each on the examples still classified
    correctly. It runs the attacks of torchattacks (a PyPI package): torchattacks' own
    ``AutoAttack(version="standard")`` leaves them at 10 iterations and targets every other class,
    a weaker and (on 100 classes) far slower attack than the one papers report."""
    import torchattacks

    targets = min(9, num_classes - 1)
    apgd_t = torchattacks.APGDT(model, eps=eps, steps=100, n_restarts=1, n_classes=num_classes)
    fab_t = torchattacks.FAB(
        model, eps=eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=num_classes
    )
    apgd_t.n_target_classes = fab_t.n_target_classes = targets
    attack = torchattacks.MultiAttack(
        [
            torchattacks.APGD(model, eps=eps, steps=100, n_restarts=1, loss="ce", seed=0),
            apgd_t,
            fab_t,
            torchattacks.Square(
                model, eps=eps, n_queries=5000, n_restarts=1, p_init=0.8, resc_schedule=False
            ),
        ]
    )
    return attack
