"""CFA: Class-wise calibrated Fair Adversarial training (Wei, Wang, Guo and Wang, CVPR 2023).

CFA gives each class its own adversarial configuration, read from how robust the class is on the
training set, on one of two bases (``cfa.base``): PGD-AT (``at``) or TRADES (``trades``).

1. **Class-wise calibrated margin (CCM).** t_k is class k's robust accuracy on the training AEs
   of the *previous* epoch (the accuracy of the training forward on the AEs the model trained on,
   measured while it trains; ``train_robust_acc`` in the ``class_state`` table). Class k is
   attacked within eps_k = (lambda1 + t_k) * eps (``calibrated_eps``): a class the model already
   resists gets a larger margin, a hard class a smaller one (at t_k = 0, lambda1 * eps; at 100%,
   (lambda1 + 1) * eps). Both bases.
2. **Class-wise calibrated regularization (CCR)**, TRADES base only: class k's TRADES weight is
   beta_k = (lambda2 + t_k) * beta (``calibrated_beta``), and an example of class y costs
   1 / (1 + beta_y) * CE(f(x), y) + beta_y / (1 + beta_y) * KL(f(x) || f(x')), x' maximising the
   KL within eps_y (``trades_loss``, ``kl_weighting="convex"``): the two weights sum to 1, so a
   class's beta moves the balance between its terms and not the scale of its loss.
3. **Fairness-aware weight averaging (FAWA).** An exponential moving average of the weights over
   the epochs whose *validation* worst-class robust accuracy is >= a threshold eta
   (``fawa_admits``): the first such epoch starts the average with its weights, each later one
   moves it, avg <- decay * avg + (1 - decay) * theta (``fawa_update``); other epochs leave it.
   The average is the model each epoch is evaluated, selected and reported by (``eval_model``).

The first ``calibrate_after`` epochs train with train.eps (and train.trades_beta) for every class:
calibration needs a previous epoch's accuracies, and early ones measure little.

**The official code** (PKU-ML/CFA ``train.py``, ``attack.py``; defaults of its argparse, which
are this module's defaults: lambda1 = lambda2 = 0.5, ``--begin 10``, decay 0.88, threshold 0.24,
its README's AT example uses 0.2) computes the same definitions:

- CCM: ``class_eps = (lambda_1 + train_robust) * eps`` from epoch ``--begin`` (0-based) on, with
  train_robust the previous epoch's per-class accuracy of the training forward on the AEs;
- the PGD step stays ``--pgd-alpha`` = 2/255 for every class whatever its eps_k, in the AT and
  TRADES attacks alike: ``step_rule="fixed"``, the default. ``step_rule="scaled"`` gives class k
  train.step_size * eps_k / train.eps (the same number of steps to cross its ball);
- CCR: ``class_beta = b / (1 + b)`` with b = (lambda_2 + train_robust) * beta and the loss
  ``(1 - class_beta) * CE + class_beta * KL`` averaged over the batch, the convex form above; its
  plain TRADES (CCR off) is that form too, with b = beta: TRADES' loss divided by 1 + beta.
  ``kl_weighting="additive"`` gives CE + beta_y * KL instead, the scale of ``methods/trades.py``
  (at beta = 6 the convex form's gradients are 7 times smaller: an lr to re-tune);
- FAWA: after every epoch, PGD-10 on its validation split (100 training images per class, cut
  from the training set), ``R_min >= threshold`` admits the epoch; the first admitted epoch copies
  the weights, later ones ``avg * decay + theta * (1 - decay)`` over the whole ``state_dict``
  (parameters and BN statistics). The plain EMA it also logs (over every epoch, its ablation) is
  ``fawa_threshold: 0`` here.

What differs, on purpose:

- checkpoints: the official code evaluates the test set every epoch and keeps the checkpoints
  whose *test* robust + worst-class robust accuracy is near the best so far; here no test image is
  read before the end, and best.pt is chosen on the validation split (``eval.select_by``) like
  every method's;
- before the first admitted epoch the official FAWA model is the randomly initialised network
  (evaluated and logged as such); here the trained model is evaluated until the average exists;
- t_k is the mean over class k's training examples; the official code divides class k's correct
  count by a tenth of the epoch's examples, the same on its class-balanced split only;
- a class with no training example in the previous epoch keeps train.eps and train.trades_beta;
- integer buffers (BN's ``num_batches_tracked``) take the newest model's value; the official
  average computes them in floating point and truncates when loading;
- the FAWA epoch test uses the evaluation attack of ``eval`` (PGD-``eval.attack_steps``, step
  ``eval.step_size``); the spec ``search_spaces/cfa.yaml`` sets the official PGD-10 at 2/255. An
  epoch the trial does not evaluate (``eval.every_epochs`` > 1) is evaluated on the validation
  split here, by ``end_epoch``, with the seed the trial's evaluation would use;
- attacks run in eval mode, as every attack here: the official AT attack runs the model in train
  mode (BN statistics move with every PGD step), its TRADES attack in eval mode; its TRADES loss
  runs the clean batch through the model twice (once for CE, once for the KL target), here once;
- the attack's loss is the batch's summed cross-entropy (``attacks.pgd_step``), the official one
  its mean (the same gradient signs); images stay in [0, 1] for the attack and the training step;
- FAT (its third base) is not offered.

The paper (arXiv 2303.14460) states CCM, CCR and FAWA as above; its text was not at hand when
this module was written (only the official code was read), so its equations are recalled, not
quoted, and the defaults are the official code's.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import model_validator

from hamsweep.core.methods._base import Learner, Method
from hamsweep.errors import SpecError
from hamsweep.spec._base import _Frozen

if TYPE_CHECKING:  # torch is imported where used: the spec imports this module for its section
    from torch import Tensor, nn

    from hamsweep.core.methods._base import Counts, StepOut

__all__ = [
    "BASES",
    "KL_WEIGHTINGS",
    "METHOD",
    "STEP_RULES",
    "Cfa",
    "CfaConfig",
    "calibrated_beta",
    "calibrated_eps",
    "fawa_admits",
    "fawa_update",
    "fawa_weights",
    "loss_weights",
    "step_sizes",
    "trades_loss",
    "worst_class_accuracy",
]

Base = Literal["at", "trades"]
StepRule = Literal["fixed", "scaled"]
KlWeighting = Literal["convex", "additive"]
BASES: tuple[str, ...] = get_args(Base)
STEP_RULES: tuple[str, ...] = get_args(StepRule)
KL_WEIGHTINGS: tuple[str, ...] = get_args(KlWeighting)


# ---- per-epoch quantities ----
def calibrated_eps(train_acc: Sequence[float | None], eps: float, lambda1: float) -> list[float]:
    """CCM: eps_k = (lambda1 + t_k) * eps per class, t_k in [0, 1] the previous epoch's train
    robust accuracy of class k; None (no example of the class) keeps ``eps``."""
    return [eps if t is None else (lambda1 + t) * eps for t in train_acc]


def calibrated_beta(train_acc: Sequence[float | None], beta: float, lambda2: float) -> list[float]:
    """CCR: beta_k = (lambda2 + t_k) * beta per class; None keeps ``beta``."""
    return [beta if t is None else (lambda2 + t) * beta for t in train_acc]


def step_sizes(
    class_eps: Sequence[float], eps: float, step_size: float, rule: StepRule = "fixed"
) -> list[float]:
    """Each class's PGD step: ``fixed``, ``step_size`` for all (the official code); ``scaled``,
    ``step_size * eps_k / eps`` (the ratio of step to radius of the uncalibrated attack)."""
    if rule not in STEP_RULES:
        raise ValueError(f"rule must be one of {', '.join(STEP_RULES)} but got {rule!r}")
    if rule == "fixed":
        return [step_size] * len(class_eps)
    return [step_size * e / eps for e in class_eps]


def worst_class_accuracy(n: Sequence[int], correct: Sequence[int]) -> float:
    """min over the classes with examples of correct_k / n_k; NaN when no class has any."""
    accuracies = [c / k for k, c in zip(n, correct) if k > 0]
    return min(accuracies) if accuracies else math.nan


def fawa_admits(worst: float, threshold: float) -> bool:
    """Does an epoch of validation worst-class robust accuracy ``worst`` enter the average?
    (>= threshold, as the official code; NaN never does)."""
    return worst >= threshold


def fawa_weights(worst: Sequence[float], threshold: float, decay: float) -> list[float]:
    """The weight of each epoch's parameters in the average after the last epoch, given every
    epoch's validation worst-class accuracy: 0 for the epochs not admitted; the sum is 1 once one
    is (all 0 before). What ``fawa_update`` computes, epoch by epoch, on numbers."""
    weights: list[float] = []
    started = False
    for w in worst:
        if not fawa_admits(w, threshold):
            weights.append(0.0)
        elif not started:  # the first admitted epoch: the average is its weights
            weights = [0.0] * len(weights) + [1.0]
            started = True
        else:
            weights = [v * decay for v in weights] + [1 - decay]
    return weights


def fawa_update(
    average: Mapping[str, Tensor] | None, state: Mapping[str, Tensor], decay: float
) -> dict[str, Tensor]:
    """One admitted epoch: avg * decay + theta * (1 - decay) for every floating tensor of the
    model's ``state`` (parameters and BN statistics), the newest value for the others; ``state``
    itself when there is no average yet. The result lives on the CPU, apart from the model."""
    out = {}
    for key, value in state.items():
        value = value.detach().to("cpu", copy=True)  # copy: a state_dict shares the parameters
        if average is None or not value.is_floating_point():
            out[key] = value
        else:
            out[key] = average[key] * decay + value * (1 - decay)
    return out


# ---- per-batch quantities ----
def loss_weights(beta: Any, weighting: KlWeighting = "convex") -> tuple[Any, Any]:
    """(weight of the clean CE, weight of the KL) for TRADES weights ``beta`` (a float or a
    tensor): ``convex`` 1 / (1 + beta), beta / (1 + beta) (CFA); ``additive`` 1, beta (TRADES)."""
    if weighting not in KL_WEIGHTINGS:
        raise ValueError(
            f"weighting must be one of {', '.join(KL_WEIGHTINGS)} but got {weighting!r}"
        )
    if weighting == "convex":
        return 1 / (1 + beta), beta / (1 + beta)
    return 1.0, beta


def trades_loss(
    logits_nat: Tensor,
    logits_adv: Tensor,
    y: Tensor,
    beta: Tensor | float,
    weighting: KlWeighting = "convex",
) -> Tensor:
    """The batch mean of w_nat(beta_i) * CE(f(x_i), y_i) + w_kl(beta_i) * KL(f(x_i) || f(x'_i)).

    logits_nat, logits_adv: (B, classes) on the clean and adversarial images; y: (B,); beta: (B,)
    each example's class's beta, or one float for all. The KL's target f(x) is not detached (as
    TRADES)."""
    import torch.nn.functional as F

    logits_nat, logits_adv = logits_nat.float(), logits_adv.float()
    ce = F.cross_entropy(logits_nat, y, reduction="none")
    kl = F.kl_div(
        F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="none"
    ).sum(dim=1)
    w_nat, w_kl = loss_weights(beta, weighting)
    return (w_nat * ce + w_kl * kl).sum() / y.numel()


# ---- the method: its spec section, its step and its per-epoch hook ----
class CfaConfig(_Frozen):
    """The spec section ``cfa``: CFA's knobs (defaults: the official code's)."""

    base: Base = "trades"  # the loss calibrated: at (PGD-AT's CE on AEs) or trades (CE + KL)
    ccm: bool = True  # calibrated margin: class k's radius (lambda1 + t_k) * train.eps
    lambda1: float = 0.5  # CCM's offset (>= 0): radius at 0% train robust accuracy, x train.eps
    ccr: bool = True  # calibrated TRADES weight (trades base only): (lambda2 + t_k) * trades_beta
    lambda2: float = 0.5  # CCR's offset (>= 0), in multiples of train.trades_beta
    # epochs (>= 1) with train.eps and train.trades_beta for every class before CCM and CCR start
    # (the official --begin); train.epochs or more: never
    calibrate_after: int = 10
    # each class's PGD step: fixed = train.step_size (official), scaled = x eps_k / train.eps
    step_rule: StepRule = "fixed"
    # trades base: convex = CE / (1 + beta_k) + KL beta_k / (1 + beta_k) (CFA, official code);
    # additive = CE + beta_k KL (TRADES, methods/trades.py)
    kl_weighting: KlWeighting = "convex"
    fawa: bool = True  # evaluate (and select) the fairness-aware weight average, not the weights
    fawa_decay: float = 0.88  # in [0, 1]: the average's share kept at each admitted epoch
    # in [0, 1]: the validation worst-class robust accuracy (a fraction) an epoch needs to enter
    # the average
    fawa_threshold: float = 0.24

    @model_validator(mode="after")
    def _check(self) -> CfaConfig:
        for key in ("lambda1", "lambda2"):
            if getattr(self, key) < 0:
                raise SpecError(key, f"{key} must be >= 0 but got {getattr(self, key)}")
        if self.calibrate_after < 1:
            raise SpecError(
                "calibrate_after",
                f"calibrate_after must be >= 1 (CCM reads the previous epoch's accuracies) "
                f"but got {self.calibrate_after}",
            )
        for key in ("fawa_decay", "fawa_threshold"):
            if not 0 <= getattr(self, key) <= 1:
                raise SpecError(key, f"{key} must be in [0, 1] but got {getattr(self, key)}")
        return self


class Cfa(Method):
    name = "cfa"
    title = "CFA"
    config = CfaConfig
    reads = ("train.trades_beta",)  # the trades base's beta before calibration

    def __init__(self) -> None:
        # per trainer, the model the weight average is loaded into (built once)
        self._copies: weakref.WeakKeyDictionary[Any, nn.Module] = weakref.WeakKeyDictionary()

    # ---- what the epoch trains with ----
    @staticmethod
    def _state(learner: Learner) -> dict[str, Any]:
        return learner.method_state

    def class_state(self, learner: Learner) -> dict[str, Sequence[float]]:
        t, c, k = learner.cfg.train, learner.cfg.cfa, learner.data.num_classes
        eps = self._state(learner).get("eps") or [t.eps] * k
        out: dict[str, Sequence[float]] = {
            "eps": eps,
            "step_size": step_sizes(eps, t.eps, t.step_size, c.step_rule),
        }
        if c.base == "trades":
            out["beta"] = self._state(learner).get("beta") or [t.trades_beta] * k
        return out

    def _radii(self, learner: Learner, y: Tensor) -> tuple[Any, Any]:
        """Each example's (eps, step): floats before calibration, so that those epochs attack
        exactly as PGD-AT and TRADES do; (B,) tensors after."""
        from hamsweep.core.attacks import per_example

        t = learner.cfg.train
        eps = self._state(learner).get("eps")
        if eps is None:
            return t.eps, t.step_size
        steps = step_sizes(eps, t.eps, t.step_size, learner.cfg.cfa.step_rule)
        return per_example(_tensor(eps, y), y), per_example(_tensor(steps, y), y)

    def _beta(self, learner: Learner, y: Tensor) -> Any:
        """Each example's TRADES beta: train.trades_beta before CCR, a (B,) tensor after."""
        from hamsweep.core.attacks import per_example

        beta = self._state(learner).get("beta")
        return learner.cfg.train.trades_beta if beta is None else per_example(_tensor(beta, y), y)

    def step(self, learner: Learner, x: Tensor, y: Tensor, tally: Counts) -> StepOut:
        from hamsweep.core import attacks
        from hamsweep.core.methods.pgd_at import loss as pgd_at_loss

        t, c, model = learner.cfg.train, learner.cfg.cfa, learner.model
        eps, step = self._radii(learner, y)
        attack = dict(eps=eps, step_size=step, steps=t.attack_steps, generator=learner.generator)
        if c.base == "at":
            x_adv = attacks.pgd(model, x, y, **attack)
            model.train()
            logits = model(x_adv)
            loss = pgd_at_loss(logits, y)
        else:
            x_adv = attacks.trades_attack(model, x, **attack)
            model.train()
            logits_nat, logits = model(x), model(x_adv)
            loss = trades_loss(logits_nat, logits, y, self._beta(learner, y), c.kl_weighting)
        tally.add_attack(len(y), len(y) * t.attack_steps, len(y))
        # t_k of the next epochs' calibration: accuracy of this training forward on the AEs
        tally.add_class("train_robust_acc", y, logits.detach().argmax(dim=1) == y)
        return loss, logits, y

    # ---- between epochs ----
    def end_epoch(self, learner: Learner, record: Any) -> None:
        """Calibrate the next epoch from this one's train robust accuracies, and move the weight
        average if this epoch's validation worst class clears the threshold."""
        t, c, state = learner.cfg.train, learner.cfg.cfa, learner.method_state
        k = learner.data.num_classes
        acc = list(record.class_state.get("train_robust_acc", (None,) * k))
        state["train_robust_acc"] = acc
        if record.epoch >= c.calibrate_after:  # the next epoch (0-based record.epoch) calibrates
            if c.ccm:
                state["eps"] = calibrated_eps(acc, t.eps, c.lambda1)
            if c.ccr and c.base == "trades":
                state["beta"] = calibrated_beta(acc, t.trades_beta, c.lambda2)
        if c.fawa:
            self._average(learner, record)

    def _average(self, learner: Learner, record: Any) -> None:
        c, state = learner.cfg.cfa, learner.method_state
        worst = self._val_worst(learner, record)
        state["val_worst"] = [*state.get("val_worst", []), worst]
        if not fawa_admits(worst, c.fawa_threshold):
            return
        state["fawa"] = fawa_update(state.get("fawa"), learner.model.state_dict(), c.fawa_decay)
        state["fawa_epochs"] = [*state.get("fawa_epochs", []), record.epoch]

    def _val_worst(self, learner: Learner, record: Any) -> float:
        """The trained model's worst-class robust accuracy on the validation split this epoch:
        the trial's evaluation when the epoch had one, else one run here with the same seed."""
        robust = record.val_robust()
        if robust is None:  # the trial's own evaluation of 0-based epoch e draws from seed e
            evals = learner.validate(learner.model, seed=record.epoch - 1)
            robust = next(e for e in evals if e.attack != "clean")
        return worst_class_accuracy(robust.n, robust.correct)

    def eval_model(self, learner: Learner) -> nn.Module | None:
        """The weight average, once an epoch has entered it (before: None, the trained model)."""
        average = learner.method_state.get("fawa")
        if not learner.cfg.cfa.fawa or average is None:
            return None
        model = self._copy(learner)
        model.load_state_dict(average)
        model.eval()
        return model

    def _copy(self, learner: Learner) -> nn.Module:
        """A model of the trial's architecture to load the average into, built once per trainer
        (a learner that takes no weak reference, a test's namespace, gets a new one each time)."""
        try:
            return self._copies[learner]
        except KeyError:
            model = self._copies[learner] = learner.new_model()
            return model
        except TypeError:
            return learner.new_model()


def _tensor(values: Sequence[float], like: Tensor) -> Tensor:
    """Per-class values as a float32 tensor on ``like``'s device."""
    import torch

    return torch.tensor(values, dtype=torch.float32, device=like.device)


METHOD = Cfa()
