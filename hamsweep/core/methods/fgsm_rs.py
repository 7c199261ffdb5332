"""FGSM-RS, "fast is better than free" (Wong, Rice and Kolter, ICLR 2020): adversarial training on
one FGSM step from a random start, about K times cheaper than PGD-K AT.

Each batch: x^0 = x + U(-eps, eps) (clipped to [0, 1]), then one signed-gradient step of size
``fgsm_rs.alpha`` x eps, projected onto the eps-ball and [0, 1]; the loss is PGD-AT's mean
cross-entropy on the result. The paper's alpha = 1.25 (10/255 at eps = 8/255); much larger steps
bring back catastrophic overfitting. ``train.attack_steps`` is not read (one step).

The project's example of a method in one module (README, "Add a training method"): a spec section,
a step, and ``METHOD``; the defaults of ``Method`` cover the rest (no fork, no per-epoch state).
Differs from the paper's code on purpose: the attack runs in eval mode like every attack here (BN
statistics never see the AEs), and without its cyclic learning rate or mixed precision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import model_validator

from hamsweep.core.methods._base import Learner, Method
from hamsweep.errors import SpecError
from hamsweep.spec._base import _Frozen

if TYPE_CHECKING:  # torch is imported in ``step``: the spec imports this module for its section
    from torch import Tensor

    from hamsweep.core.methods._base import Counts, StepOut

__all__ = ["METHOD", "FgsmRs", "FgsmRsConfig"]


class FgsmRsConfig(_Frozen):
    """The spec section ``fgsm_rs``."""

    alpha: float = 1.25  # the FGSM step, in multiples of train.eps (the paper: 1.25)

    @model_validator(mode="after")
    def _check(self) -> FgsmRsConfig:
        if not 0 < self.alpha <= 2:  # past 2 eps the step only lands on the ball's corners
            raise SpecError(
                "alpha", f"alpha must be in (0, 2] (times train.eps) but got {self.alpha}"
            )
        return self


class FgsmRs(Method):
    name = "fgsm_rs"
    title = "FGSM-RS"
    config = FgsmRsConfig

    def step(self, learner: Learner, x: Tensor, y: Tensor, tally: Counts) -> StepOut:
        from hamsweep.core.attacks import pgd_step, random_start
        from hamsweep.core.methods.pgd_at import loss

        eps, alpha = learner.cfg.train.eps, learner.cfg.fgsm_rs.alpha
        x_adv = random_start(x, eps, learner.generator)
        x_adv, _ = pgd_step(learner.model, x_adv, x, y, eps, alpha * eps)
        learner.model.train()
        logits = learner.model(x_adv)
        tally.add_attack(len(y), len(y), len(y))  # one attack step per example
        return loss(logits, y), logits, y


METHOD = FgsmRs()
