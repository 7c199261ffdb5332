"""WAT: Worst-class Adversarial Training (Li & Liu, AAAI 2023) — TRADES with class weights from
no-regret (Hedge) dynamics on the per-class validation robust losses.

**The paper** poses worst-class adversarial training as a two-player zero-sum game: the model
minimises, and an adversary over the "arms" maximises, the mixture ``sum_a q_a R_a(f)`` of the arms'
robust risks, q in the probability simplex. The arms are the K classes (R_k: the TRADES loss on
class k) and, added to the decision set so that the average is not sacrificed (the official
code's comment: "we add expected training loss in the decision set"), the average TRADES loss
R_avg: A = K + 1 arms. The adversary plays Hedge (exponential weights, Freund & Schapire) on the
validation losses, the model answers with an epoch of SGD on the q-weighted training loss. (Of the
paper, only its abstract and introduction could be read here, the no-regret framing; the arms, the
update's timing, eta and the loss below are those of the official code, its game's expectation
where the code's scaling departs from it, see the differences.)

- after epoch t, per arm a: c_a^t = the mean TRADES loss CE(f(x), y) + beta KL(f(x) || f(x_adv))
  over the validation examples of class a (R_avg: over all of them), x_adv from TRADES' KL attack;
- q^{t+1} = softmax(eta * sum_{s<=t} c^s) (the Hedge update q_a <- q_a exp(eta c_a^t) / Z, written
  with the cumulative losses); q^1 is uniform; ``hedge``;
- epoch t + 1 trains on ``sum_i m_i l_i / B``, l_i the example's TRADES loss and
  m_i = K q_{y_i} + q_avg: K 1{y = k} / B summed over a batch is an unbiased estimate of class k's
  mean risk when classes are balanced, so the loss is the expectation under q of the arms' risks;
  with uniform q every m_i = 1 (plain TRADES); ``arm_weights``, ``example_weights``.

The learning rate eta is per unit of (validation TRADES loss x epoch): one update per epoch, after
it is trained, no warm-up (epoch 1 trains with uniform q, i.e. TRADES). ``class_state`` reports
``weight`` = K q_k + q_avg, the multiplier of a class-k example in the loss the epoch trained with
(1: unweighted); ``method_state`` (checkpointed) keeps the cumulative losses, the number of
updates and the last validation losses.

**The official code** (``boqili/WAT``, ``worst_class_adversarial_train.py``, ``--alg wat``; read,
not copied) does the same per epoch: TRADES loss (``--beta 6``), a TRADES KL attack of
``--num_steps 10`` at ``--epsilon 0.031``, ``--step_size 0.007`` on its validation loader, per-arm
costs ``nat + beta * bndy``, ``class_factor = exp(eta * cumulative cost)`` with ``--eta 0.1``,
weights ``K * class_factor / sum(class_factor)`` (= K q). Its validation set is the last 300
images per class of the CIFAR *training* set (``data_loader.py``): a held-out part of the training
data like this project's ``data.val`` (``data.val_fraction: 0.06`` gives 300 per class), never the
test images; the test set is only evaluated there. What differs, on purpose:

- the average arm's weight: the code multiplies it by K as well (m_i = K q_y + K q_avg, while its
  validation cost for the arm is the plain mean), and trains its first epoch with weight 1 on
  every arm (m_i = 2: twice the TRADES loss) before any update; the default here is the game's
  expectation (uniform q: TRADES exactly). ``wat.average_scale: times_classes`` is the code's rule,
  first epoch included;
- the costs are per-class means; the code divides each class's summed loss by (number of
  validation batches x batch size) / K, i.e. by 307.2 instead of 300 on CIFAR-10 (the last batch
  is short): the same up to a factor ~0.98 that rescales eta;
- the validation attack draws its start (x + 0.001 N(0, 1)) from a generator seeded from
  (train.seed, epoch), so a resumed trial recomputes the same weights; the code draws from the
  global RNG, and on ``--resume`` restarts the cumulative costs at zero (its checkpoint has none);
- a class with no validation example (a stratified split gives each class round(val_fraction x
  its size)) costs the average loss that epoch: its weight moves like the average arm's;
- the code's model is ResNet-18, epochs 100, lr 0.1 x0.1 at 75 and 90 (and 0.0001 in its last
  epoch); ``search_spaces/wat.yaml`` gives that schedule to this project's PreActResNet-18;
- class weights assume balanced classes (K, not 1 / prior): as the code, and CIFAR is balanced.

The validation attack costs ``len(data.val) * train.attack_steps`` example-steps per epoch (about
6% of a CIFAR-10 epoch's attack at val_fraction 0.06); it is not counted in the epoch's
``attack_steps`` (``end_epoch`` has no tally).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import model_validator

from hamsweep.core.methods._base import Learner, Method
from hamsweep.errors import SpecError
from hamsweep.spec._base import _Frozen

if TYPE_CHECKING:  # torch is imported where it is used: the spec imports this module for WatConfig
    from collections.abc import Iterable

    import torch
    from torch import Tensor, nn

    from hamsweep.core.methods._base import Counts, StepOut

__all__ = [
    "AVERAGE_SCALES",
    "METHOD",
    "Wat",
    "WatConfig",
    "arm_losses",
    "arm_weights",
    "class_weights",
    "example_weights",
    "hedge",
    "trades_per_example",
    "validation_losses",
    "validation_seed",
    "weighted_loss",
]

# the average arm's weight: its Hedge probability (the game's expectation) or K times it (the code)
AverageScale = Literal["probability", "times_classes"]
AVERAGE_SCALES: tuple[str, ...] = get_args(AverageScale)


# ---- the per-epoch quantities: Hedge over the arms ----
def hedge(cumulative: Tensor, eta: float) -> Tensor:
    """Hedge's distribution over the arms: softmax(eta * cumulative), float64.

    cumulative: (A,) each arm's validation losses summed over the updates so far (zeros: uniform).
    The softmax is exp(eta S_a) / sum exp(eta S_b), computed stably when eta S is large.
    """
    import torch

    return torch.softmax(eta * cumulative.double(), dim=0)


def arm_weights(
    cumulative: Tensor,
    eta: float,
    num_classes: int,
    *,
    updates: int,
    average_scale: AverageScale = "probability",
) -> Tensor:
    """(A,) float64: each arm's weight in the training loss (A = K, or K + 1 with the average arm
    last). Class arms: K q_k. The average arm: q_avg (``probability``) or K q_avg
    (``times_classes``, the official code, which also weighs every arm 1 before its first update).
    """
    import torch

    if average_scale not in AVERAGE_SCALES:
        raise ValueError(
            f"average_scale must be one of {', '.join(AVERAGE_SCALES)} but got {average_scale!r}"
        )
    has_average = len(cumulative) == num_classes + 1
    if average_scale == "times_classes" and updates == 0:
        return torch.ones(len(cumulative), dtype=torch.float64)
    q = hedge(cumulative, eta)
    w = num_classes * q
    if has_average and average_scale == "probability":
        w[num_classes] = q[num_classes]
    return w


def class_weights(weights: Tensor, num_classes: int) -> Tensor:
    """(K,): the multiplier of a class-k example in the loss, K q_k plus the average arm's weight
    (when there is one). weights: (A,) from ``arm_weights``."""
    average = weights[num_classes] if len(weights) > num_classes else 0.0
    return weights[:num_classes] + average


def example_weights(weights: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """(B,): each example's multiplier in the loss (``class_weights`` of its label), on y's device.
    weights: (A,); y: (B,) int64."""
    import torch

    # float32: the dtype the loss is computed in (``trades_per_example`` casts the logits to it)
    return class_weights(weights, num_classes).to(device=y.device, dtype=torch.float32)[y]


# ---- the per-batch quantities: the weighted TRADES loss ----
def trades_per_example(logits_nat: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """(B,) TRADES loss per example: CE(f(x), y) + beta KL(f(x) || f(x_adv)), KL summed over the
    classes. logits_nat, logits_adv: (B, K); y: (B,)."""
    import torch.nn.functional as F

    nat, adv = logits_nat.float(), logits_adv.float()
    ce = F.cross_entropy(nat, y, reduction="none")
    kl = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(nat, dim=1), reduction="none").sum(dim=1)
    return ce + beta * kl


def weighted_loss(per_example: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i l_i / B: divided by the batch size, not by the weights' sum, so that a class
    absent from the batch leaves the others' weights as they are (as the official code)."""
    return (weights * per_example).sum() / per_example.numel()


def arm_losses(loss: Tensor, y: Tensor, num_classes: int, average_arm: bool = True) -> Tensor:
    """(A,) float64 on the CPU: each class's mean of ``loss`` (a class with no example: the overall
    mean), then the overall mean when ``average_arm``. loss, y: (N,), N >= 1."""
    import torch

    loss, y = loss.detach().double().cpu(), y.cpu()
    if loss.numel() == 0:
        raise ValueError("arm_losses needs at least one example (the validation split is empty)")
    sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, y, loss)
    counts = torch.bincount(y, minlength=num_classes)
    mean = loss.mean()
    per_class = torch.where(counts > 0, sums / counts.clamp(min=1), mean)
    return torch.cat([per_class, mean[None]]) if average_arm else per_class


def validation_seed(train_seed: int, epoch: int) -> int:
    """The seed of the validation attack after 1-based ``epoch`` (not the evaluation's seeds)."""
    return 0x57A7_0000 + train_seed * 100_003 + epoch


def validation_losses(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    num_classes: int,
    eps: float,
    step_size: float,
    steps: int,
    beta: float,
    generator: torch.Generator,
    average_arm: bool = True,
) -> Tensor:
    """(A,) the arms' validation TRADES losses (``arm_losses``) of ``model`` on the validation
    ``batches`` ((x, y) in order: ``learner.batches(learner.data.val)``), attacked
    with TRADES' KL attack (K ``steps`` of ``step_size`` in the ``eps``-ball). The model is put in
    eval mode (no BN statistics move); every random draw comes from ``generator``."""
    import torch

    from hamsweep.core.attacks import trades_attack

    model.eval()
    losses, labels = [], []
    for x, y in batches:
        x_adv = trades_attack(
            model, x, eps=eps, step_size=step_size, steps=steps, generator=generator
        )
        with torch.no_grad():
            losses.append(trades_per_example(model(x), model(x_adv), y, beta))
        labels.append(y)
    if not losses:
        raise ValueError("WAT needs a validation split; data.val_fraction must be > 0")
    return arm_losses(torch.cat(losses), torch.cat(labels), num_classes, average_arm)


# ---- the method: its spec section, its step, its per-epoch update ----
class WatConfig(_Frozen):
    """The spec section ``wat``: WAT's knobs (TRADES' beta is ``train.trades_beta``)."""

    # Hedge learning rate, per unit of validation TRADES loss per epoch (the official --eta 0.1)
    eta: float = 0.1
    # a (K+1)-th arm, the average TRADES loss, beside the K classes (paper and code); false: the
    # adversary weighs the classes only
    average_arm: bool = True
    # the average arm's weight in the loss: its probability (the game's expectation: uniform q is
    # TRADES) or K times it, with weight 1 on every arm before the first update (the official code)
    average_scale: AverageScale = "probability"

    @model_validator(mode="after")
    def _check(self) -> WatConfig:
        if not 0 < self.eta < math.inf:
            raise SpecError(
                "eta", f"eta must be finite and > 0 (a Hedge learning rate) but got {self.eta}"
            )
        return self


# keys of ``learner.method_state``
CUMULATIVE, UPDATES, VAL_LOSS = "cumulative_loss", "updates", "val_loss"


class Wat(Method):
    name = "wat"
    title = "WAT"
    config = WatConfig
    reads = ("train.trades_beta",)

    def check(self, cfg: Any) -> None:
        if cfg.data.val_fraction <= 0:
            raise SpecError(
                "data.val_fraction",
                "WAT updates its class weights on the validation split; val_fraction must be in "
                f"(0, 1) for train.method wat but got {cfg.data.val_fraction}",
            )
        if cfg.train.trades_beta < 0:
            raise SpecError(
                "train.trades_beta",
                f"trades_beta must be >= 0 for train.method wat but got {cfg.train.trades_beta}",
            )

    def weights(self, cfg: Any, state: dict[str, Any], num_classes: int) -> Tensor:
        """(A,) the arms' weights an epoch trains with, from ``state`` (``learner.method_state``:
        none yet before the first update, uniform q)."""
        import torch

        w = cfg.wat
        arms = num_classes + 1 if w.average_arm else num_classes
        cumulative = state.get(CUMULATIVE, [0.0] * arms)
        return arm_weights(
            torch.tensor(cumulative, dtype=torch.float64),
            w.eta,
            num_classes,
            updates=state.get(UPDATES, 0),
            average_scale=w.average_scale,
        )

    def step(self, learner: Learner, x: Tensor, y: Tensor, tally: Counts) -> StepOut:
        from hamsweep.core.attacks import trades_attack

        t, model = learner.cfg.train, learner.model
        x_adv = trades_attack(
            model,
            x,
            eps=t.eps,
            step_size=t.step_size,
            steps=t.attack_steps,
            generator=learner.generator,
        )
        model.train()
        logits_nat, logits_adv = model(x), model(x_adv)
        per_example = trades_per_example(logits_nat, logits_adv, y, t.trades_beta)
        k = logits_nat.shape[1]  # the model's classes: the dataset's
        m = example_weights(self.weights(learner.cfg, learner.method_state, k), y, k)
        tally.add_attack(len(y), len(y) * t.attack_steps, len(y))
        return weighted_loss(per_example, m), logits_adv.float(), y

    def class_state(self, learner: Learner) -> dict[str, Sequence[float]]:
        k = learner.data.num_classes
        return {"weight": class_weights(self.weights(learner.cfg, learner.method_state, k), k)}

    def end_epoch(self, learner: Learner, record: Any) -> None:
        """Hedge's update: the trained model's validation TRADES losses per arm, added to the
        cumulative losses the next epoch's weights come from. The attack draws from a generator of
        its own, seeded from (train.seed, epoch): ``learner.generator`` is left as it was."""
        import torch

        cfg, k = learner.cfg, learner.data.num_classes
        gen = torch.Generator(device=learner.device)
        gen.manual_seed(validation_seed(cfg.train.seed, record.epoch))
        losses = validation_losses(
            learner.model,
            learner.batches(learner.data.val),
            num_classes=k,
            eps=cfg.train.eps,
            step_size=cfg.train.step_size,
            steps=cfg.train.attack_steps,
            beta=cfg.train.trades_beta,
            generator=gen,
            average_arm=cfg.wat.average_arm,
        )
        previous = learner.method_state.get(CUMULATIVE, [0.0] * len(losses))
        learner.method_state[CUMULATIVE] = (
            torch.tensor(previous, dtype=torch.float64) + losses
        ).tolist()
        learner.method_state[UPDATES] = learner.method_state.get(UPDATES, 0) + 1
        learner.method_state[VAL_LOSS] = losses.tolist()


METHOD = Wat()
