"""PGD-AT (Madry et al., ICLR 2018): train on PGD-K adversarial examples (random start).

The baseline of every sweep, and the warm-up every forking method shares (its trunk). Its knobs are
the attack's, in the ``train`` section: ``train.eps``, ``train.step_size``, ``train.attack_steps``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hamsweep.core.methods._base import Learner, Method

if TYPE_CHECKING:
    from torch import Tensor

    from hamsweep.core.methods._base import Counts, StepOut

__all__ = ["METHOD", "PgdAt", "loss"]


def loss(logits: Tensor, y: Tensor) -> Tensor:
    """The mean cross-entropy over the batch. logits: (B, classes); y: (B,).

    Summed per example, then divided by B: the order of the sum that HAM's loss with every AE kept
    at weight 1 computes, so that HAM with keep_easy_fraction = 1 and uniform weights reproduces
    PGD-AT bit for bit (a mean-reduced cross_entropy may sum in another order).
    """
    import torch.nn.functional as F

    per_example = F.cross_entropy(logits.float(), y, reduction="none")
    return per_example.sum() / y.numel()


class PgdAt(Method):
    name = "pgd_at"
    title = "PGD-AT"

    def step(self, learner: Learner, x: Tensor, y: Tensor, tally: Counts) -> StepOut:
        from hamsweep.core import attacks

        t = learner.cfg.train
        x_adv = attacks.pgd(
            learner.model,
            x,
            y,
            eps=t.eps,
            step_size=t.step_size,
            steps=t.attack_steps,
            generator=learner.generator,
        )
        learner.model.train()
        logits = learner.model(x_adv)
        tally.add_attack(len(y), len(y) * t.attack_steps, len(y))
        return loss(logits, y), logits, y


METHOD = PgdAt()
