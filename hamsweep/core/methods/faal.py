"""FAAL: Fairness-Aware Adversarial Learning (Zhang, Zhang, Mu, Huang and Ruan, CVPR 2024) — class
weights from the worst class distribution in a KL ball, solved per batch, in a short fine-tune of a
PGD-AT model.

**The paper** re-poses adversarial training as min-max-max: the model minimises, over the worst
class distribution Q within a divergence ball around the reference P, the expected adversarial
loss, ``min_theta max_{Q: D(Q, P) <= eta} E_{y ~ Q} [l_y(theta)]`` with l_y the loss of class y's
adversarial examples; the maximiser ("class-wise distributionally adversarial weights") is found per
batch by convex optimisation, and the weighted loss is minimised. Its headline protocol fine-tunes
a converged PGD-AT PreActResNet-18 for 2 epochs (CIFAR-10: 45.51 / 31.10 average / worst-class
AutoAttack accuracy). The paper's body was not readable from this project's sources (only its
abstract): which way its KL divergence runs is taken from the official code and from the guarantee
the abstract states (the worst-case value bounds the out-of-sample loss with high probability),
the property of the ball {Q: KL(P || Q) <= r} around the empirical distribution (Van Parys,
Esfahani and Kuhn 2021), which the code's ``DAW`` class solves (its comments keep the names of the
distributionally robust training code it was adapted from: an unused misspecification radius alpha
beside the statistical radius r).

Per batch of B examples (``FaalConfig``):

1. x_adv = PGD-K from a random start (``train.eps``, ``train.step_size``, ``train.attack_steps``);
   ``faal.loss: trades`` uses TRADES' KL attack instead;
2. one training forward at x_adv (train mode); each example's loss l_i: the cross-entropy
   (``loss: at``) or TRADES' CE(f(x), y) + beta KL(f(x) || f(x_adv)) (``loss: trades``);
3. each class's score a_c: the mean over its examples of the probability margin
   max_{j != y} softmax_j - softmax_y at x_adv, in [-1, 1] (``class_loss: margin``, the code's),
   or of l_i (``class_loss: train_loss``); ``class_means``;
4. q = argmax_q sum_c q_c a_c over the simplex subject to D(q, p) <= eta, p uniform;
   ``worst_case_distribution``:

   - ``divergence: kl_uniform_q``, KL(p || q) <= eta (the code's ball): the Lagrangian's
     stationary point is q_c = lambda p_c / (mu - a_c), mu > max a, lambda normalising; mu is the
     one root of KL(p || q(mu)) = eta (decreasing in mu from infinity at max a to 0), found by a
     one-dimensional search. q keeps every class > 0 for a finite eta and tends to the max-score
     vertex as eta grows;
   - ``divergence: kl_q_uniform``, KL(q || p) <= eta (exponential tilting): q_c proportional to
     p_c exp(a_c / t), the temperature t the root of KL(q(t) || p) = eta; once eta >= -log p(M),
     M the set of max-score classes, the ball holds the face of M and q = p restricted to M (the
     max-score vertex when one class leads);
   - eta = 0, or every score equal: q = p (the objective is flat, p is the ball's centre);

5. the weight of a class-c example is w_c = K q_c (K the classes in the simplex; mean 1, so that
   eta = 0 trains exactly as PGD-AT); the loss is sum_i w_{y_i} l_i / B; ``class_weights``,
   ``faal_loss``.

Cost: PGD-AT's attack and training forward, plus one host transfer of 2C numbers per batch and a
root search on the host (~20 evaluations of a C-vector, about a millisecond).

Weights are solved per batch (a fresh problem each batch, as in the code) and kept nowhere: FAAL
has no per-class state between epochs. The ``class_state`` table's ``weight`` of a class is the
mean of w_c over the epoch's examples of that class (``Counts.add_class``: a batch counts by its
number of class-c examples); ``train_robust_acc`` is the accuracy on the training AEs.

**A class absent from a batch** has no score and multiplies no example: it is left out of the
problem (p uniform over the K classes present, its weight 0 that batch, and no example of it adds
to its epoch mean). ``objective: example_sum`` is the code's rule instead (below).

**The official code** (``TrustAI/FAAL``: ``FAAL.py``, ``ft_prn.py``, ``run_prn.py``; read, not
copied): per batch, PGD-10 (eps 8/255, step 2/255, random start) in eval mode, the training
forward in train mode, ``cw`` = the probability margin above per example, its per-class mean (NaN
for an absent class set to -1), and cvxpy (ECOS, then MOSEK, then SCS) maximises
``sum_i p[y_i] * a[y_i]`` subject to ``sum(kl_div(P_emp, p)) <= r`` (cvxpy's kl_div(x, y) is
x log(x / y) - x + y: summed over the simplex, KL(P_emp || p)), P_emp uniform over the 10 classes,
r = ``--scale 0.5``; the loss is ``sum_i ce_i * p[y_i] * 10 / B`` (``--loss TRADES``: TRADES'
per-example loss, beta 6, weighted the same). The fine-tune: 2 epochs from ``PRN_PGD.pth``, SGD
lr 0.01 then 0.001 (``--lr-max 0.01``, multistep x0.1 at epoch 1), momentum 0.9, weight decay
5e-4, batch 128, the full CIFAR-10 training set; the epoch kept is the better of the two by
PGD-10 (CW loss) average and worst-class accuracy on the first 20 *test* batches (2,560 images).
What differs, on purpose:

- a closed-form dual and a one-dimensional root search (scipy's brentq) replace the commercial
  solver; ``tests/core/methods/test_faal.py`` checks it against a direct solution (SLSQP, grids);
- the objective: the code's ``sum_i p[y_i] a[y_i]`` weighs each class's score by its number of
  examples in the batch (sum_c n_c p_c a_c) and keeps absent classes in the simplex at coefficient
  0, so part of the mass goes to classes that multiply no example; the default here is the
  distribution over classes the method describes (sum over the classes present of q_c a_c).
  ``objective: example_sum`` is the code's rule (reference uniform over all classes, coefficient
  n_c a_c, weight ``num_classes * q_c``);
- ``divergence: kl_q_uniform`` (the tilting ball) is offered beside the code's KL(p || q);
- model selection on the validation split (``eval.select_by``), never the test split; a FAAL trial's
  best is a FAAL epoch (``faal.select_after_warmup``), as the code picks among its fine-tune epochs;
- the fine-tune continues the trunk's optimizer (momentum buffer included) and the trial's learning
  rate schedule: ``search_spaces/faal.yaml`` gives the fork's two epochs the code's 0.01 and 0.001
  through ``train.lr_factors`` (which the PGD-AT trunk, the sweep's baseline, then also trains its
  last two epochs with: the same fine-tune without the weights). The code builds a fresh SGD;
- the code's AT step also runs a clean forward in train mode that its loss never reads (it only
  moves BN statistics); here BN sees the AEs only, as in PGD-AT;
- the code's AWP and MART variants (``--loss AT-AWP``, ``TRADES-AWP``, ``MART``) are left out.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import model_validator

from hamsweep.core.methods._base import Learner, Method
from hamsweep.errors import SpecError
from hamsweep.spec._base import _Frozen

if TYPE_CHECKING:  # torch and numpy are imported where used: the spec imports this module
    import numpy as np
    from torch import Tensor

    from hamsweep.core.methods._base import Counts, StepOut

__all__ = [
    "CLASS_LOSSES",
    "DIVERGENCES",
    "LOSSES",
    "METHOD",
    "OBJECTIVES",
    "Faal",
    "FaalConfig",
    "class_means",
    "class_weights",
    "faal_loss",
    "margins",
    "worst_case_distribution",
]

# KL(p || q) <= eta (the official code's ball) or KL(q || p) <= eta (exponential tilting)
Divergence = Literal["kl_uniform_q", "kl_q_uniform"]
# each class's score: the mean probability margin at x_adv (the code's) or the mean training loss
ClassLoss = Literal["margin", "train_loss"]
# sum over the classes present of q_c a_c, or the code's sum over examples of q_{y_i} a_{y_i}
Objective = Literal["class_mean", "example_sum"]
# the per-example loss weighted: CE on the AEs (FAAL_AT) or TRADES' (FAAL_TRADES)
BaseLoss = Literal["at", "trades"]
DIVERGENCES: tuple[str, ...] = get_args(Divergence)
CLASS_LOSSES: tuple[str, ...] = get_args(ClassLoss)
OBJECTIVES: tuple[str, ...] = get_args(Objective)
LOSSES: tuple[str, ...] = get_args(BaseLoss)

# the root search over u = log(temperature / score range): exp(-700) is near the smallest normal
# float64, exp(50) makes the ball's KL ~1e-44, below any radius worth asking for
_U_LO, _U_HI = -700.0, 50.0


# ---- the inner maximisation: pure numpy ----
def worst_case_distribution(
    scores: np.ndarray,
    eta: float,
    divergence: Divergence = "kl_uniform_q",
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """argmax over the simplex of ``sum_k q_k scores_k`` subject to D(q, p) <= ``eta``.

    scores: (K,) finite; reference p: (K,) > 0 summing to 1, uniform when None; ``divergence``:
    ``kl_uniform_q`` is KL(p || q), ``kl_q_uniform`` KL(q || p). Returns q: (K,) float64. eta = 0
    or equal scores: q = p. Ties at the maximum share its mass in proportion to p.
    """
    import numpy as np

    a = np.asarray(scores, dtype=np.float64)
    p = np.full(a.shape, 1.0 / a.size) if reference is None else np.asarray(reference, np.float64)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}; got {divergence!r}")
    spread = float(a.max() - a.min())
    if eta <= 0 or spread == 0:
        return p.copy()
    # the solution is invariant to shifting and scaling the scores: search on a range of 1
    g = (a.max() - a) / spread  # (K,) in [0, 1], 0 on the max-score classes
    if divergence == "kl_uniform_q":
        return _solve(lambda u: _mu_family(g, p, u), lambda q: _kl(p, q), eta)
    top = g == 0
    if eta >= -math.log(float(p[top].sum())):  # the ball holds the face of the max-score classes
        return np.where(top, p, 0.0) / p[top].sum()
    return _solve(lambda u: _tilt_family(g, p, u), lambda q: _kl(q, p), eta)


def _mu_family(g: np.ndarray, p: np.ndarray, u: float) -> np.ndarray:
    """KL(p || q)'s stationary points q_k ~ p_k / (s + g_k), s = exp(u) = mu - max a (scores
    scaled to a range of 1), written as p_k / (1 + g_k / s): no overflow for tiny s."""
    q = p / (1.0 + g * math.exp(-u))
    return q / q.sum()


def _tilt_family(g: np.ndarray, p: np.ndarray, u: float) -> np.ndarray:
    """KL(q || p)'s stationary points q_k ~ p_k exp(-g_k / t), t = exp(u)."""
    import numpy as np

    z = np.log(p) - g * math.exp(-u)
    q = np.exp(z - z.max())
    return q / q.sum()


def _solve(family: Any, divergence: Any, eta: float) -> np.ndarray:
    """The member of a one-parameter ``family`` whose divergence is ``eta``: a root search on u,
    along which the divergence decreases; the end of the range when eta lies beyond it."""
    from scipy.optimize import brentq

    excess = lambda u: divergence(family(u)) - eta  # noqa: E731
    if excess(_U_LO) <= 0:  # eta past what float64 resolves: the vertex, to machine precision
        return family(_U_LO)
    if excess(_U_HI) >= 0:  # eta below ~1e-44: the centre
        return family(_U_HI)
    return family(brentq(excess, _U_LO, _U_HI, xtol=1e-14, rtol=4 * 2.0**-52, maxiter=500))


def _kl(q: np.ndarray, p: np.ndarray) -> float:
    """KL(q || p) = sum q log(q / p), with 0 log 0 = 0."""
    import numpy as np

    pos = q > 0
    return float(np.sum(q[pos] * np.log(q[pos] / p[pos])))


def class_weights(
    means: np.ndarray,
    counts: np.ndarray,
    eta: float,
    divergence: Divergence = "kl_uniform_q",
    objective: Objective = "class_mean",
) -> np.ndarray:
    """Each class's weight on its examples in the batch's loss, w_c = K q_c (mean 1 over the K
    classes of the simplex). means: (C,) the classes' scores (NaN where absent); counts: (C,)
    their examples in the batch.

    ``class_mean``: the simplex of the classes present, scores a_c; an absent class gets 0.
    ``example_sum`` (the official code): the simplex of all C classes, scores n_c a_c (0 where
    absent, whose weight multiplies no example).
    """
    import numpy as np

    means, counts = np.asarray(means, np.float64), np.asarray(counts)
    present = counts > 0
    if objective == "example_sum":
        scores = np.where(present, counts * np.nan_to_num(means), 0.0)
        return means.size * worst_case_distribution(scores, eta, divergence)
    if objective != "class_mean":
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")
    w = np.zeros(means.shape)
    if present.any():
        q = worst_case_distribution(means[present], eta, divergence)
        w[present] = int(present.sum()) * q
    return w


# ---- the batch's quantities: torch ----
def margins(logits: Tensor, y: Tensor) -> Tensor:
    """Each example's probability margin max_{j != y} softmax_j - softmax_y, in [-1, 1] (the
    official code's ``cw``): > 0 where the example is misclassified. logits: (B, C); y: (B,)."""
    import torch.nn.functional as F

    prob = F.softmax(logits.detach().float(), dim=1)
    true = prob.gather(1, y[:, None]).squeeze(1)
    other = prob.scatter(1, y[:, None], -1.0).amax(dim=1)  # probabilities >= 0: -1 never wins
    return other - true


def class_means(values: Tensor, y: Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean of ``values`` (B,) over the examples of labels ``y`` (B,): (C,) float64
    means (NaN for a class with no example) and (C,) int64 counts, on the host (one transfer)."""
    import numpy as np
    import torch

    sums = torch.zeros(num_classes, dtype=torch.float64, device=y.device)
    sums.index_add_(0, y, values.detach().double())
    counts = torch.bincount(y, minlength=num_classes).double()
    host = torch.stack([sums, counts]).cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return host[0] / host[1], host[1].astype(np.int64)


def faal_loss(per_example: Tensor, y: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_{y_i} l_i / B. per_example: (B,); y: (B,); weights: (C,) on the same device. With
    every weight 1 it is ``pgd_at.loss`` bit for bit (the same sum, divided by B)."""
    return (weights[y] * per_example).sum() / y.numel()


# ---- the method: its spec section and its step ----
class FaalConfig(_Frozen):
    """The spec section ``faal``: FAAL's knobs (read only by FAAL trials, after the warm-up)."""

    # epochs of PGD-AT before FAAL, the trunk epoch it forks from. The paper fine-tunes a converged
    # PGD-AT model for 2 epochs: train.epochs - 2 (search_spaces/faal.yaml: 110 of 112); 0 = FAAL
    # from the first epoch
    warmup_epochs: int = 0
    eta: float = 0.5  # the KL ball's radius, nats (the code's --scale 0.5); 0: uniform = PGD-AT
    # the ball: KL(uniform || q) <= eta (kl_uniform_q, the code's) or KL(q || uniform) <= eta
    divergence: Divergence = "kl_uniform_q"
    # a class's score: mean probability margin at x_adv (margin, the code's) or its mean loss
    class_loss: ClassLoss = "margin"
    # the classes present, each its mean score (class_mean), or the code's sum over examples
    # (example_sum: every class in the simplex, a class weighed by its count in the batch)
    objective: Objective = "class_mean"
    loss: BaseLoss = "at"  # the loss weighted: CE on PGD AEs (at) or TRADES' (train.trades_beta)
    # best.pt and the trial's best objective come from FAAL epochs only, as the code picks among
    # its fine-tune epochs; false lets a warm-up epoch win
    select_after_warmup: bool = True

    @model_validator(mode="after")
    def _check(self) -> FaalConfig:
        if self.warmup_epochs < 0:
            raise SpecError(
                "warmup_epochs", f"warmup_epochs cannot be negative but got {self.warmup_epochs}"
            )
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise SpecError(
                "eta", f"eta must be a finite KL radius >= 0 (nats; 0 = uniform) but got {self.eta}"
            )
        return self


class Faal(Method):
    name = "faal"
    title = "FAAL"
    config = FaalConfig
    reads = ("train.trades_beta",)  # faal.loss: trades
    fork_key = "faal.warmup_epochs"  # faal.warmup_epochs epochs of PGD-AT: the trunk's, when shared

    def step(self, learner: Learner, x: Tensor, y: Tensor, tally: Counts) -> StepOut:
        import torch

        f = learner.cfg.faal
        logits, per_example = self._forward(learner, x, y)
        score = margins(logits, y) if f.class_loss == "margin" else per_example
        means, counts = class_means(score, y, logits.shape[1])
        w = class_weights(means, counts, f.eta, f.divergence, f.objective)
        weights = torch.as_tensor(w, dtype=torch.float32, device=y.device)
        tally.add_attack(len(y), len(y) * learner.cfg.train.attack_steps, len(y))
        tally.add_class("weight", y, weights[y])
        tally.add_class("train_robust_acc", y, logits.detach().argmax(1) == y)
        return faal_loss(per_example, y, weights), logits, y

    @staticmethod
    def _forward(learner: Learner, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The attack (eval mode), then the training forward (train mode): the logits at x_adv
        (B, C) and each example's loss (B,), CE or TRADES'."""
        import torch.nn.functional as F

        from hamsweep.core import attacks

        t, model = learner.cfg.train, learner.model
        kw = dict(eps=t.eps, step_size=t.step_size, steps=t.attack_steps)
        if learner.cfg.faal.loss == "at":
            x_adv = attacks.pgd(model, x, y, generator=learner.generator, **kw)
            model.train()
            logits = model(x_adv)
            return logits, F.cross_entropy(logits.float(), y, reduction="none")
        x_adv = attacks.trades_attack(model, x, generator=learner.generator, **kw)
        model.train()
        logits_nat, logits = model(x).float(), model(x_adv)
        kl = F.kl_div(
            F.log_softmax(logits.float(), dim=1), F.softmax(logits_nat, dim=1), reduction="none"
        ).sum(dim=1)
        return logits, F.cross_entropy(logits_nat, y, reduction="none") + t.trades_beta * kl


METHOD = Faal()
