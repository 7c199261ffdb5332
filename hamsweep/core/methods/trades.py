"""TRADES (Zhang et al., ICML 2019): the clean cross-entropy plus beta times KL(f(x) || f(x_adv)),
x_adv maximising the KL (``attacks.trades_attack``, K steps from x + 0.001 N(0, 1)).

Its one knob, ``train.trades_beta`` (the weight of the KL term, default 6.0), stays in the ``train``
section where specs and sweep folders have always had it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hamsweep.core.methods._base import Learner, Method

if TYPE_CHECKING:
    from torch import Tensor

    from hamsweep.core.methods._base import Counts, StepOut

__all__ = ["METHOD", "Trades"]


class Trades(Method):
    name = "trades"
    title = "TRADES"
    reads = ("train.trades_beta",)

    def step(self, learner: Learner, x: Tensor, y: Tensor, tally: Counts) -> StepOut:
        import torch.nn.functional as F

        from hamsweep.core import attacks

        t, model = learner.cfg.train, learner.model
        x_adv = attacks.trades_attack(
            model,
            x,
            eps=t.eps,
            step_size=t.step_size,
            steps=t.attack_steps,
            generator=learner.generator,
        )
        model.train()
        logits_nat, logits_adv = model(x).float(), model(x_adv).float()
        kl = F.kl_div(
            F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="batchmean"
        )
        tally.add_attack(len(y), len(y) * t.attack_steps, len(y))
        return F.cross_entropy(logits_nat, y) + t.trades_beta * kl, logits_adv, y


METHOD = Trades()
