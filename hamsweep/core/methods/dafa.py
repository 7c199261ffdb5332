"""DAFA: Distance-Aware Fair Adversarial training (Lee et al., ICLR 2024) — class weights and
class-wise margins from how similar the classes are after a warm-up.

**The paper.** Its observation: under attack, a hard class's examples go mostly to the classes
*similar* to it (cat to dog), not to the easy classes; so robustness should be traded among similar
classes. Its procedure (Algorithm 1 and Algorithm 2, ``DAFA_comp``, in its appendix):

1. ``warmup_epochs`` (tau) epochs of ordinary adversarial training; the class-wise probability
   p_i(j) is the model's mean softmax probability of class j on the adversarial examples of the
   training examples of class i (Alg. 1, line 5: p <- f(x + delta)). p_i(i) says how easy class i
   is; p_i(j), j != i, how close class j lies to class i (``class_similarity``).
2. The class weights (Alg. 2), from W = 1 and the scale ``lam`` (lambda), over every ordered pair
   i != j:

       W_i += lam * p_i(j) * p_j(j)    if p_i(i) < p_j(j)   (i is the harder of the pair)
       W_i -= lam * p_j(i) * p_i(i)    if p_i(i) > p_j(j)   (i is the easier)

   The harder class gains what the easier one gives up, in proportion to how much of the hard
   class goes to the easy one: a pair never confused trades nothing, and the weights keep summing
   to C (the mean margin stays ``train.eps``) — ``class_weights``, ``weight_rule="transfer"``.
3. The rest of the run trains with each class's loss weight W_y (Alg. 1, line 11) and its own
   adversarial margin eps_y = W_y * eps (the abstract's "distinct loss weights and adversarial
   margins"; the code's ``W_y * epsilon``): a harder class is attacked further and weighs more in
   the loss, the easier similar class is attacked less and weighs less. lambda = 1.0 on CIFAR-10,
   1.5 on CIFAR-100 and STL-10, tau = 70 of 110 epochs (the official arguments and scripts).

**The official code** (``rucy74/DAFA``: ``train.py``, ``losses.py``, ``utils.py``) trains TRADES
by default (``--loss trades``; ``pgd`` offered). At the last warm-up epoch (epoch 70) it stores the
softmax of every *training* forward on the AEs (train mode, augmented training images, the model
moving through the epoch): the similarity comes from the training split. Its weights multiply each
example's cross-entropy (TRADES: the natural term only; the KL term stays unweighted) and both the
attack's radius and its step (``W_y * epsilon``, ``W_y * step_size``). The weight formula changed
after publication (``git log -p utils.py``):

- the first release (2024-01-23, the code public when the paper's numbers came out) subtracts
  ``lam * p_i(j) * p_j(j)`` from the easier class i: its *own* confusion into the harder class j,
  not what j gains, so the weights no longer sum to C (``weight_rule="own_confusion"``);
- commit 74657cd (2024-09-02, "Update utils.py") subtracts ``lam * p_j(i) * p_i(i)``: Algorithm 2.

**Followed by default: Algorithm 2, ``weight_rule="transfer"``** — it is the paper's definition,
the authors changed their code to it after publication (the repository's current rule), and it is
the one that does what the paper says DAFA does: a trade of robustness *between similar classes*
that leaves the total weight and the mean margin unchanged. ``own_confusion`` reproduces the code
as first released.

What differs from the official code, on purpose:

- **when and on what the similarity is read.** Here once, at the start of the first DAFA epoch, from
  the warmed-up model held fixed (eval mode, no augmentation) on every example of ``data.train``
  (the paper's and the code's split; ``similarity_split="val"`` reads ``data.val``, 9x cheaper on
  CIFAR-10; never ``data.test``), each attacked by the warm-up's own attack (PGD-K at ``train.eps``,
  or TRADES' KL attack for ``base="trades"``) from a generator of its own, seeded from
  ``train.seed``. The official code reuses the probabilities its last warm-up epoch computed while
  training, a mixture over the some 390 models of that epoch. The warm-up here is the sweep's
  shared PGD-AT trunk, whose epochs know nothing of DAFA, and a fork must equal the trial trained
  from scratch;
  the cost is one attack pass over the split (about one epoch without its weight updates), counted
  in the first DAFA epoch's ``attack_steps``. The training randomness is untouched by it: with
  ``lam = 0`` DAFA trains exactly as its base. The similarity, weights and radii are kept in
  ``learner.method_state`` (in every checkpoint) and reported per class as ``weight``, ``eps`` and
  ``step_size`` in the ``class_state`` table.
- **the PGD base attacks within eps_y.** Each class's AEs take PGD-K steps of W_y * ``step_size``
  inside its own ball of radius W_y * eps from a uniform random start (the trunk's PGD). The
  official ``madry_loss`` takes two steps per iteration (one of W_y * step projected onto the
  W_y * eps ball, then one of the plain step projected onto the plain eps ball), so its AEs end in
  the plain eps ball: the paper's class-wise margin is not what it trains with.
- **ties** (p_i(i) = p_j(j)) move no weight, as Algorithm 2's "else if" says; the code's ``else``
  subtracts from both classes.
- **a class with no example in the split** has a similarity row of zeros, so it trades nothing and
  keeps W = 1 (the code sizes its matrix by the classes it saw, and fails on a missing one).
- **weights are floored at 0**: a large lam can push an easy class that others are often confused
  into below 0, where its loss would be *ascended* and its radius would mean nothing. The paper and
  the code have no floor; it can act only where lam times what a class gives up exceeds 1.
- eps 8/255 and step 2/255 in the specs, not 0.031 and 0.007; PreActResNet-18, not the code's
  ResNet-18; checkpoints chosen on the validation split (the code evaluates on the test split).

Options beyond the paper: ``apply_to`` (``loss`` or ``margin`` alone: which half of DAFA acts) and
``base="trades"`` (the official default: TRADES with the natural cross-entropy weighted, its warm-up
TRADES too, so such a trial trains its own warm-up and never forks from the PGD-AT trunk).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import model_validator

from hamsweep.core.methods._base import Learner, Method
from hamsweep.errors import SpecError
from hamsweep.spec._base import _Frozen

if TYPE_CHECKING:  # torch is imported where it is used: the spec imports this module for DafaConfig
    from collections.abc import Iterable

    import torch
    from torch import Tensor, nn

    from hamsweep.core.methods._base import Counts, StepOut

__all__ = [
    "METHOD",
    "WEIGHT_RULES",
    "Dafa",
    "DafaConfig",
    "adversarial_probs",
    "class_similarity",
    "class_weights",
    "trades_loss",
    "weighted_loss",
]

# how the easier class of a pair gives up weight (see above); ``dafa.weight_rule`` offers these
WeightRule = Literal["transfer", "own_confusion"]
WEIGHT_RULES: tuple[str, ...] = get_args(WeightRule)
Base = Literal["pgd_at", "trades"]  # the adversarial training DAFA reweights (and its warm-up)

# the similarity pass's attack draws from a generator seeded SIMILARITY_SEED + train.seed (the
# evaluation's start at 10_000 + 1_000 * seed + epoch): never from the trial's own stream
_SIMILARITY_SEED = 20_000


def class_similarity(probs: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """p_i(j): row i is the mean of ``probs`` over the examples labelled i. probs: (N, C) softmax
    outputs; labels: (N,) int64 -> (C, C) float64 on the CPU. A class with no example has a row of
    zeros (it then trades no weight, see ``class_weights``)."""
    import torch

    p = probs.detach().double()
    sums = torch.zeros(num_classes, p.shape[1], dtype=torch.float64, device=p.device)
    sums.index_add_(0, labels, p)
    counts = torch.bincount(labels, minlength=num_classes).to(p)
    return (sums / counts.clamp(min=1)[:, None]).cpu()


def class_weights(similarity: Tensor, lam: float, rule: WeightRule = "transfer") -> Tensor:
    """DAFA's class weights W (C,) float64 from the similarity p (C, C) (Algorithm 2).

    For each ordered pair i != j: the harder class (p_i(i) < p_j(j)) gains lam * p_i(j) * p_j(j);
    the easier gives up lam * p_j(i) * p_i(i) (``transfer``, the paper; the same amount its partner
    gained) or lam * p_i(j) * p_j(j) (``own_confusion``, the code's first release). Ties trade
    nothing. Floored at 0.
    """
    if rule not in WEIGHT_RULES:
        raise ValueError(f"rule must be one of {', '.join(WEIGHT_RULES)} but got {rule!r}")
    p = similarity.double()
    own = p.diagonal()
    harder = own[:, None] < own[None, :]  # [i, j]: i is the harder class of the pair
    easier = own[:, None] > own[None, :]  # the diagonal is neither: no pair with itself
    gain = p * own[None, :]  # [i, j] = p_i(j) p_j(j)
    give = p.T * own[:, None] if rule == "transfer" else gain  # p_j(i) p_i(i) | p_i(j) p_j(j)
    delta = (harder * gain - easier * give).sum(dim=1)
    return (1 + lam * delta).clamp(min=0)


def adversarial_probs(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    base: Base,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """The model's softmax at an AE of every example of ``batches`` (a split's (x, y) in order, no
    augmentation: ``learner.batches(split)``):
    ((N, C) float32, (N,) int64) on the model's device. The AE is the base's training attack at one
    radius for all (PGD-``steps`` from a random start, or TRADES' KL attack); eval mode throughout.
    """
    import torch
    import torch.nn.functional as F

    from hamsweep.core import attacks

    model.eval()
    probs, labels = [], []
    for x, y in batches:
        kw = dict(eps=eps, step_size=step_size, steps=steps, generator=generator)
        x_adv = (
            attacks.trades_attack(model, x, **kw)
            if base == "trades"
            else attacks.pgd(model, x, y, **kw)
        )
        with torch.no_grad():
            probs.append(F.softmax(model(x_adv).float(), dim=1))
        labels.append(y)
    return torch.cat(probs), torch.cat(labels)


def weighted_loss(logits: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """sum_i w_i CE(logits_i, y_i) / B (the official ``(CE * w).mean()``). logits: (B, C); y, w:
    (B,). With w = 1 it is ``pgd_at.loss`` bit for bit (same terms, same order)."""
    import torch.nn.functional as F

    per_example = F.cross_entropy(logits.float(), y, reduction="none")
    return (w * per_example).sum() / y.numel()


def trades_loss(
    logits_nat: Tensor, logits_adv: Tensor, y: Tensor, w: Tensor, beta: float
) -> Tensor:
    """TRADES with DAFA's weights on the natural term only (the official ``trades_loss``):
    sum_i w_i CE(f(x_i), y_i) / B + beta * KL(f(x) || f(x_adv)) (batch mean). logits: (B, C)."""
    import torch.nn.functional as F

    kl = F.kl_div(
        F.log_softmax(logits_adv.float(), dim=1),
        F.softmax(logits_nat.float(), dim=1),
        reduction="batchmean",
    )
    return weighted_loss(logits_nat, y, w) + beta * kl


# ---- the method: its spec section and its step ----
class DafaConfig(_Frozen):
    """The spec section ``dafa``: DAFA's knobs (read only by DAFA trials)."""

    # tau: epochs of the base AT before the similarity is read (paper: 70 of 110); 0 = read it from
    # the untrained model
    warmup_epochs: int = 70
    lam: float = 1.0  # lambda >= 0, the weight transfer's scale (paper: CIFAR-10 1.0, others 1.5)
    # how the easier class of a pair gives up weight: transfer (Algorithm 2, the repository since
    # 74657cd) or own_confusion (the code as first released)
    weight_rule: WeightRule = "transfer"
    # where the weights act: both (the paper), loss (loss weights only, one radius) or margin
    # (radii eps_y = W_y eps only, unweighted loss)
    apply_to: Literal["both", "loss", "margin"] = "both"
    # the split the similarity is read on, once, after the warm-up: train (the paper) or val
    similarity_split: Literal["train", "val"] = "train"
    # the AT that DAFA reweights, and its warm-up: pgd_at (forks from the sweep's PGD-AT trunk) or
    # trades (the official default, train.trades_beta; trains its own warm-up)
    base: Base = "pgd_at"
    # best.pt and the trial's best objective come from DAFA epochs only (as ham's knob)
    select_after_warmup: bool = True

    @model_validator(mode="after")
    def _check(self) -> DafaConfig:
        if self.warmup_epochs < 0:
            raise SpecError(
                "warmup_epochs", f"warmup_epochs cannot be negative but got {self.warmup_epochs}"
            )
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise SpecError(
                "lam", f"lam must be >= 0 (0: no reweighting; paper 1.0) but got {self.lam}"
            )
        return self


class Dafa(Method):
    name = "dafa"
    title = "DAFA"
    config = DafaConfig
    fork_key = "dafa.warmup_epochs"  # dafa.warmup_epochs epochs of PGD-AT: the trunk's, if shared

    def check(self, cfg: Any) -> None:
        super().check(cfg)
        d = cfg.dafa
        if d.similarity_split == "val" and cfg.data.val_fraction == 0:
            raise SpecError(
                "dafa.similarity_split",
                "val needs a validation split (data.val_fraction > 0); or use train",
            )

    def warmup_method(self, cfg: Any) -> str:
        """The base's own AT: a PGD-AT-based trial forks from the trunk at
        ``dafa.warmup_epochs``, a TRADES-based one never (the trunk is PGD-AT)."""
        return cfg.dafa.base

    def step(self, learner: Learner, x: Tensor, y: Tensor, tally: Counts) -> StepOut:
        from hamsweep.core import attacks

        if "weight" not in learner.method_state:  # the first DAFA batch: the warm-up just ended
            learner.method_state.update(_start(learner, tally))
        state, t, model = learner.method_state, learner.cfg.train, learner.model
        w = attacks.per_example(state["weight"], y).float()
        kw = dict(
            eps=attacks.per_example(state["eps"], y),
            step_size=attacks.per_example(state["step_size"], y),
            steps=t.attack_steps,
            generator=learner.generator,
        )
        tally.add_attack(len(y), len(y) * t.attack_steps, len(y))
        if learner.cfg.dafa.base == "trades":
            x_adv = attacks.trades_attack(model, x, **kw)
            model.train()
            logits_nat, logits_adv = model(x), model(x_adv)
            return trades_loss(logits_nat, logits_adv, y, w, t.trades_beta), logits_adv, y
        x_adv = attacks.pgd(model, x, y, **kw)
        model.train()
        logits = model(x_adv)
        return weighted_loss(logits, y, w), logits, y

    def class_state(self, learner: Learner) -> dict[str, Any]:
        state = learner.method_state
        return {k: state[k] for k in ("weight", "eps", "step_size") if k in state}


def _start(learner: Learner, tally: Counts) -> dict[str, Any]:
    """The similarity of the warmed-up model and what DAFA trains with from now on: per class
    (C,) float64 on the CPU, the loss ``weight``, the attack's ``eps`` and ``step_size``."""
    import torch

    cfg, data = learner.cfg, learner.data
    t, d = cfg.train, cfg.dafa
    split = data.train if d.similarity_split == "train" else data.val  # never data.test
    gen = torch.Generator(device=learner.device).manual_seed(_SIMILARITY_SEED + t.seed)
    probs, labels = adversarial_probs(
        learner.model,
        learner.batches(split),
        base=d.base,
        eps=t.eps,
        step_size=t.step_size,
        steps=t.attack_steps,
        generator=gen,
    )
    tally.add_attack(0, len(labels) * t.attack_steps, 0)  # the pass's cost, in this epoch's
    similarity = class_similarity(probs, labels, data.num_classes)
    w = class_weights(similarity, d.lam, d.weight_rule)
    ones = torch.ones_like(w)
    margin = ones if d.apply_to == "loss" else w
    return {
        "similarity": similarity,
        "weight": ones if d.apply_to == "margin" else w,
        "eps": margin * t.eps,
        "step_size": margin * t.step_size,
    }


METHOD = Dafa()
