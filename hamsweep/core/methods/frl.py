"""FRL: Fair Robust Learning (Xu, Liu, Li, Jain and Tang, "To be Robust or to be Fair: Towards
Fairness in Adversarial Training", ICML 2021) — per-class Lagrange multipliers on the natural and
the boundary error, a reweighted TRADES loss, and per-class attack radii ("remargin").

**The paper's definitions.** For a classifier f, a class i of Y and the radius eps:

- R_nat(f, i) = Pr(f(x) != y | y = i), the class's natural (clean) error;
- R_bndy(f, i) = Pr(f(x) = y and f(x + delta) != y for some ||delta||_inf <= eps | y = i), its
  boundary error; R_rob(f, i) = R_nat(f, i) + R_bndy(f, i) is its robust error (TRADES'
  decomposition); R_nat(f), R_bndy(f) are the same over all classes.

FRL fine-tunes a robust model to min R_nat(f) + R_bndy(f) subject to, for every class i,
R_nat(f, i) - R_nat(f) <= tau1 and R_bndy(f, i) - R_bndy(f) <= tau2 (no class's error more than a
tolerance above the overall one). Its Lagrangian carries multipliers phi_nat^i, phi_bndy^i >= 0,
and it alternates, once per epoch (the paper's Algorithms 1 and 2):

1. EVAL: each class's R_nat and R_bndy on a *validation* set, at the test radius eps;
2. ascent: phi_nat^i += alpha1 (R_nat(f, i) - R_nat(f) - tau1) and
   phi_bndy^i += alpha2 (R_bndy(f, i) - R_bndy(f) - tau2): a class over its tolerance gains;
3. TRAIN: one epoch on the Lagrangian's cost-sensitive surrogate. With equal class shares
   (R(f) = mean_i R(f, i)) the terms of class i add up to the weight
   w^i = 1/Y + phi^i - (1/Y) sum_j phi^j on R(f, i), for each of the two errors (``class_weights``
   reports Y w^i: mean 1). The surrogate is TRADES': cross-entropy on x for the natural error,
   beta KL(f(x) || f(x')) at the KL attack's x' for the boundary error.

The variants (``frl.variant``): **reweight** (FRL-RW) reweights both errors; **remargin** (FRL-RM)
reweights the natural error and answers a boundary violation with a larger attack radius instead of
a larger weight, eps^i <- eps^i exp(alpha (R_bndy(f, i) - R_bndy(f) - tau2)) (the training attack of
a class that keeps violating gets stronger, as larger training margins buy robustness at eps);
**reweight_remargin** (FRL-RWRM) does both.

**The official code** (``hannxu123/fair_robust``: ``frlrw.py`` + ``utils_frl.py`` for RW,
``frlrmrw.py`` + ``utils_frl2.py`` for RWRM; RM's ``frlrm.py`` + ``utils_frl1.py`` were deleted in
2022 and are read from the history) is what the defaults compute:

- EVAL is PGD-20 (step 2/255, random start) at 8/255 on the validation set before each epoch. A
  class's boundary error is its clean minus its PGD accuracy, the overall errors are over all
  validation examples;
- after each ascent a multiplier vector is clamped at 0 and, when it sums to more than ``lim``
  (0.5), scaled to sum ``lim`` (``normalize_lambda``): every weight stays >= (1 - lim) / Y > 0.
  The boundary multipliers step 2 rate1 (0.1), the natural ones rate1 (0.05);
- remargin keeps a third vector lambda2 += rate2 (boundary violation), unclamped, and attacks class
  i at eps clamp(exp(2 lambda2^i), 0.98, 3) (2.5 in RM's script): the multiplicative update above
  with a log step 2 rate2 (0.4 for RWRM's rate2 = 0.2), bounded so that a radius never shrinks more
  than 2% nor grows past 3 eps;
- the TRADES attack (10 steps, model in eval mode) uses these per-example radii, with a step of
  2/255 (RW, RM) or the batch's largest radius / 4 (RWRM), for every example of the batch;
- the loss is sum_k w0_k CE_k / sum_k w0_k + beta sum_k w1_k KL_k / sum_k w1_k over the batch
  (self-normalised: a class absent from the batch takes no share), beta = 1.5 (RM's deleted
  script divided the sum of both terms by the sum of both weights, with beta 1, tau 0.1, lim 0.3);
- it fine-tunes a separately trained robust PreActResNet-18 (``hot_start.pt``) for 40 epochs at lr
  0.001 (momentum 0.9, weight decay 5e-4; its milestones 40 and 80 are never reached in 40
  epochs), halving rate1 at epoch 40.

The paper's full text was not at hand when this module was written (its abstract was): its
algorithm is stated above as the ML Reproducibility Challenge 2021 report's notebooks
(``Ian-Hardy/Fair_Robust_Modeling``) transcribe it, and agrees with the official code on the
violations, the ascent, the weights and the multiplicative radius update. The rules the code adds
(the budget ``lim``, the radius bounds, the attack's step, separate rates) are knobs here with the
code's values as defaults; setting ``eps_factor_min: 0`` and a large ``eps_factor_max`` drops the
radius bounds.

**What differs, on purpose:**

- the validation set is the trial's ``data.val`` (``data.val_fraction`` of each training class),
  never the test split. The official set is the last 300 training images of each class; the
  official scripts also evaluate on the test set every 5 epochs, to print it only. Here nothing
  of FRL reads ``data.test``;
- the robust start is the sweep's PGD-AT trunk at ``frl.warmup_epochs`` under the trial's one
  learning-rate schedule (``search_spaces/frl.yaml`` ends it at 0.001 for the FRL epochs), not a
  separately trained checkpoint;
- EVAL runs after each FRL epoch (``end_epoch``, reusing the trial's own validation counts when the
  epoch was evaluated, the same attack and seed) and once on the forked model before the first FRL
  batch: the official order (evaluate, update, train), shifted to the end of the epoch. It is the
  trial's validation (``eval.attack_steps``, ``eval.step_size``, ``eval.max_examples``);
- the per-class counts give the boundary error as clean minus PGD accuracy (the official code's);
  it differs from the paper's definition only by examples wrong at x and right at their PGD point;
- a class with no validation example has violation 0 (the official code divides by zero);
- rate1 is not halved every 40 epochs (a detail of the scripts; in their 40 epochs it changes the
  last epoch's update only);
- the attack starts from x + 0.001 N(0, 1) clipped to [0, 1], and the training forward computes
  f(x) once for both terms (``trades.py``'s step); the official code feeds the unclipped start and
  runs f(x) twice in train mode (BN statistics see the clean batch twice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import model_validator

from hamsweep.core.methods._base import Learner, Method
from hamsweep.errors import SpecError
from hamsweep.spec._base import _Frozen

if TYPE_CHECKING:  # torch is imported where it is used: the spec imports this module for FrlConfig
    from torch import Tensor

    from hamsweep.core.methods._base import Counts, StepOut

__all__ = [
    "METHOD",
    "STEP_RULES",
    "VARIANTS",
    "ClassErrors",
    "Frl",
    "FrlConfig",
    "FrlState",
    "ascend",
    "class_errors",
    "class_weights",
    "eps_factors",
    "frl_loss",
    "step_sizes",
    "update",
    "violations",
]

Variant = Literal["reweight", "remargin", "reweight_remargin"]
VARIANTS: tuple[str, ...] = get_args(Variant)
# the attack step of an example whose class attacks at f x train.eps: train.step_size times the
# batch's largest f (the official RWRM code), times its own f, or train.step_size unchanged
StepRule = Literal["largest_eps", "own_eps", "fixed"]
STEP_RULES: tuple[str, ...] = get_args(StepRule)


def reweights_boundary(variant: str) -> bool:
    """Whether ``variant`` has boundary multipliers (reweight, reweight_remargin)."""
    return variant in ("reweight", "reweight_remargin")


def remargins(variant: str) -> bool:
    """Whether ``variant`` moves the per-class radii (remargin, reweight_remargin)."""
    return variant in ("remargin", "reweight_remargin")


# ---- the per-epoch update: pure functions of per-class counts, on plain floats ----
@dataclass(frozen=True)
class ClassErrors:
    """One EVAL's errors, fractions in [0, 1]; None for a class with no validation example."""

    nat: tuple[float | None, ...]  # R_nat(f, i): 1 - clean accuracy
    bnd: tuple[float | None, ...]  # R_bndy(f, i): clean accuracy - PGD accuracy
    nat_total: float  # R_nat(f), over all examples
    bnd_total: float  # R_bndy(f)


def class_errors(n: Sequence[int], clean: Sequence[int], robust: Sequence[int]) -> ClassErrors:
    """Per-class and overall errors from the counts of an evaluation: ``n[i]`` examples of class i,
    ``clean[i]`` of them correct on x, ``robust[i]`` correct at their PGD point."""
    total = sum(n)
    nat = tuple(None if k == 0 else 1 - c / k for k, c in zip(n, clean))
    bnd = tuple(None if k == 0 else (c - r) / k for k, c, r in zip(n, clean, robust))
    if total == 0:
        return ClassErrors(nat, bnd, 0.0, 0.0)
    return ClassErrors(nat, bnd, 1 - sum(clean) / total, (sum(clean) - sum(robust)) / total)


def violations(errors: Sequence[float | None], total: float, tau: float) -> tuple[float, ...]:
    """R(f, i) - R(f) - tau per class: > 0 where class i breaks its constraint; 0 for a class
    with no example (nothing measured, nothing to move)."""
    return tuple(0.0 if e is None else e - total - tau for e in errors)


def ascend(
    multipliers: Sequence[float], violation: Sequence[float], alpha: float, budget: float
) -> tuple[float, ...]:
    """One ascent step of the multipliers, phi + alpha * violation, projected: clamped at 0 (a
    Lagrange multiplier of an inequality), then scaled to sum ``budget`` when over it (the
    official ``lim``: every class weight stays > 0)."""
    raised = [max(0.0, m + alpha * v) for m, v in zip(multipliers, violation)]
    total = sum(raised)
    if total > budget:
        raised = [budget * m / total for m in raised]
    return tuple(raised)


def class_weights(multipliers: Sequence[float]) -> tuple[float, ...]:
    """Y (1/Y + phi^i - (1/Y) sum_j phi^j): the Lagrangian's weight on class i's error, times Y
    (mean 1; all 1 when every multiplier is 0)."""
    y, total = len(multipliers), sum(multipliers)
    return tuple(1 + y * m - total for m in multipliers)


def eps_factors(log_factors: Sequence[float], low: float, high: float) -> tuple[float, ...]:
    """Each class's radius in multiples of train.eps: exp(log factor), bounded to [low, high]."""
    return tuple(min(high, max(low, math.exp(v))) for v in log_factors)


@dataclass(frozen=True)
class FrlState:
    """What FRL keeps per class between epochs (``learner.method_state``, checkpointed)."""

    multiplier_nat: tuple[float, ...]  # phi_nat
    multiplier_bnd: tuple[float, ...]  # phi_bndy (0 under remargin)
    log_eps_factor: tuple[float, ...]  # remargin: ln of the radius factor, before its bounds

    @classmethod
    def zeros(cls, num_classes: int) -> FrlState:
        zero = (0.0,) * num_classes
        return cls(zero, zero, zero)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrlState:
        return cls(*(tuple(float(v) for v in data[k]) for k in cls.__dataclass_fields__))


def update(state: FrlState, errors: ClassErrors, cfg: FrlConfig) -> FrlState:
    """One epoch's step 2: the multipliers (and, remargining, the radii) after an EVAL."""
    v_nat = violations(errors.nat, errors.nat_total, cfg.tau_nat)
    v_bnd = violations(errors.bnd, errors.bnd_total, cfg.tau_bnd)
    nat = ascend(state.multiplier_nat, v_nat, cfg.alpha_nat, cfg.multiplier_budget)
    bnd, log_eps = state.multiplier_bnd, state.log_eps_factor
    if reweights_boundary(cfg.variant):
        bnd = ascend(bnd, v_bnd, cfg.alpha_bnd, cfg.multiplier_budget)
    if remargins(cfg.variant):
        log_eps = tuple(lf + cfg.alpha_eps * v for lf, v in zip(log_eps, v_bnd))
    return FrlState(nat, bnd, log_eps)


# ---- the per-batch quantities ----
def step_sizes(factors: Tensor, step_size: float, rule: str) -> Tensor:
    """Each example's attack step, (B,), for radius factors ``factors`` (B,) (see ``StepRule``)."""
    import torch

    if rule == "largest_eps":  # no host sync: the batch's max stays on the device
        return (step_size * factors.amax()).expand(factors.shape)
    if rule == "own_eps":
        return step_size * factors
    if rule == "fixed":
        return torch.full_like(factors, step_size)
    raise ValueError(f"step rule must be one of {', '.join(STEP_RULES)} but got {rule!r}")


def frl_loss(
    logits_nat: Tensor,
    logits_adv: Tensor,
    y: Tensor,
    w_nat: Tensor,
    w_bnd: Tensor,
    beta: float,
) -> Tensor:
    """sum w_nat CE(f(x), y) / sum w_nat + beta sum w_bnd KL(f(x) || f(x')) / sum w_bnd.

    logits_*: (B, classes); y, w_nat, w_bnd: (B,), the example's class weight. Self-normalised
    over the batch (the official code): a class absent from the batch takes no share, and equal
    weights give TRADES' loss.
    """
    import torch.nn.functional as F

    ce = F.cross_entropy(logits_nat.float(), y, reduction="none")
    kl = F.kl_div(
        F.log_softmax(logits_adv.float(), dim=1),
        F.softmax(logits_nat.float(), dim=1),
        reduction="none",
    ).sum(dim=1)
    return (w_nat * ce).sum() / w_nat.sum() + beta * (w_bnd * kl).sum() / w_bnd.sum()


# ---- the method: its spec section, its step and its per-epoch hook ----
class FrlConfig(_Frozen):
    """The spec section ``frl``: FRL's knobs (read only by FRL trials, after the warm-up)."""

    warmup_epochs: int = 80  # epochs of PGD-AT (the trunk) before FRL fine-tunes the model
    # reweight (FRL-RW), remargin (FRL-RM), reweight_remargin (FRL-RWRM, the paper's strongest)
    variant: Variant = "reweight_remargin"
    # tau1 in [0, 1]: how far a class's natural error may exceed the overall one, a fraction
    # (the official RWRM script: 0.07; RW's: 0.1)
    tau_nat: float = 0.07
    tau_bnd: float = 0.07  # tau2 in [0, 1]: the same for the boundary error
    alpha_nat: float = 0.05  # alpha1 >= 0: multiplier step per epoch per unit of violation (rate1)
    alpha_bnd: float = 0.1  # alpha2 >= 0: the boundary multipliers' step (the code's 2 rate1)
    # remargin, >= 0: step of ln(radius factor) per unit of boundary violation (the code's 2 rate2)
    alpha_eps: float = 0.4
    # in (0, 1]: each multiplier vector is scaled to sum at most this (the code's lim); the weights
    # stay >= (1 - budget) / Y of the total
    multiplier_budget: float = 0.5
    eps_factor_min: float = 0.98  # remargin, in [0, 1]: a class's radius >= this x train.eps
    eps_factor_max: float = 3.0  # remargin, >= 1: a class's radius <= this x train.eps
    # the attack step under remargin: largest_eps (train.step_size x the batch's largest radius
    # factor, the code), own_eps (x the example's own factor), fixed (train.step_size)
    step_rule: StepRule = "largest_eps"
    beta: float = 1.5  # >= 0: weight of the boundary (KL) term (the official scripts: 1.5)
    # best.pt and the trial's best objective come from FRL epochs only (after the warm-up), so that
    # an FRL trial is never represented by a PGD-AT epoch; false lets a warm-up epoch win
    select_after_warmup: bool = True

    @model_validator(mode="after")
    def _check(self) -> FrlConfig:
        if self.warmup_epochs < 0:
            raise SpecError(
                "warmup_epochs", f"warmup_epochs cannot be negative but got {self.warmup_epochs}"
            )
        for key in ("tau_nat", "tau_bnd", "eps_factor_min"):
            if not 0 <= getattr(self, key) <= 1:
                raise SpecError(key, f"{key} must be in [0, 1] but got {getattr(self, key)}")
        for key in ("alpha_nat", "alpha_bnd", "alpha_eps", "beta"):
            if getattr(self, key) < 0:
                raise SpecError(key, f"{key} cannot be negative but got {getattr(self, key)}")
        if not 0 < self.multiplier_budget <= 1:
            raise SpecError(
                "multiplier_budget",
                f"multiplier_budget must be in (0, 1] but got {self.multiplier_budget}",
            )
        if self.eps_factor_max < 1:
            raise SpecError(
                "eps_factor_max", f"eps_factor_max must be >= 1 but got {self.eps_factor_max}"
            )
        return self


class Frl(Method):
    name = "frl"
    title = "FRL"
    config = FrlConfig
    fork_key = "frl.warmup_epochs"  # frl.warmup_epochs epochs of PGD-AT: the trunk's, when shared

    def check(self, cfg: Any) -> None:
        super().check(cfg)
        if cfg.data.val_fraction == 0:
            raise SpecError(
                "data.val_fraction",
                "FRL updates its multipliers from the validation split; "
                f"val_fraction must be in (0, 1) but got {cfg.data.val_fraction}",
            )

    def step(self, learner: Learner, x: Tensor, y: Tensor, tally: Counts) -> StepOut:
        from hamsweep.core import attacks

        t, f, model = learner.cfg.train, learner.cfg.frl, learner.model
        state = self._state(learner)
        w_nat = _per_example(class_weights(state.multiplier_nat), y)
        w_bnd = _per_example(class_weights(state.multiplier_bnd), y)
        eps: float | Tensor = t.eps
        step: float | Tensor = t.step_size
        if remargins(f.variant):
            factors = eps_factors(state.log_eps_factor, f.eps_factor_min, f.eps_factor_max)
            factor = _per_example(factors, y)
            eps, step = t.eps * factor, step_sizes(factor, t.step_size, f.step_rule)
            tally.add_class("step_size", y, step)
        x_adv = attacks.trades_attack(
            model, x, eps=eps, step_size=step, steps=t.attack_steps, generator=learner.generator
        )
        model.train()
        logits_nat, logits_adv = model(x), model(x_adv)
        tally.add_attack(len(y), len(y) * t.attack_steps, len(y))
        return frl_loss(logits_nat, logits_adv, y, w_nat, w_bnd, f.beta), logits_adv, y

    def class_state(self, learner: Learner) -> dict[str, Sequence[float]]:
        if not learner.method_state:
            return {}
        f, state = learner.cfg.frl, FrlState.from_dict(learner.method_state)
        out: dict[str, Sequence[float]] = {
            "multiplier_nat": state.multiplier_nat,
            "weight": class_weights(state.multiplier_nat),  # the natural (CE) term's weight
        }
        if reweights_boundary(f.variant):
            out["multiplier_bnd"] = state.multiplier_bnd
        if remargins(f.variant):
            factors = eps_factors(state.log_eps_factor, f.eps_factor_min, f.eps_factor_max)
            out["eps"] = tuple(learner.cfg.train.eps * v for v in factors)
        return out

    def end_epoch(self, learner: Learner, record: Any) -> None:
        """EVAL of the epoch's model on the validation split (the record's own counts when the
        epoch was evaluated: the same attack and seed), then the update for the next epoch."""
        evals = tuple(e for e in record.evals if e.split == "val")
        if not evals:
            evals = _validate(learner, seed=record.epoch - 1)
        state = update(FrlState.from_dict(learner.method_state), _errors(evals), learner.cfg.frl)
        learner.method_state.update(state.to_dict())

    def _state(self, learner: Learner) -> FrlState:
        """The state in force; before the first FRL batch, the first update from an EVAL of the
        model FRL starts from (seeded as the trial evaluates its last warm-up epoch)."""
        if not learner.method_state:
            first = _validate(learner, seed=learner.cfg.frl.warmup_epochs - 1)
            state = FrlState.zeros(learner.data.num_classes)
            learner.method_state.update(update(state, _errors(first), learner.cfg.frl).to_dict())
        return FrlState.from_dict(learner.method_state)


def _per_example(per_class: Sequence[float], y: Tensor) -> Tensor:
    """Each example's value (B,) of a per-class sequence, as float32 on the labels' device."""
    import torch

    return torch.tensor(per_class, dtype=torch.float32, device=y.device)[y]


def _validate(learner: Learner, seed: int) -> tuple[Any, ...]:
    """``learner.validate`` on the trained model, outside the step's autocast (the trial's
    evaluations run in full precision)."""
    import torch

    with torch.autocast(learner.device.type, enabled=False):
        return learner.validate(learner.model, seed)


def _errors(evals: Sequence[Any]) -> ClassErrors:
    """The per-class errors of one validation evaluation (its clean and its PGD counts)."""
    clean = next(e for e in evals if e.attack == "clean")
    robust = next(e for e in evals if e.attack != "clean")
    return class_errors(clean.n, clean.correct, robust.correct)


METHOD = Frl()
