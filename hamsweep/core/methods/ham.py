"""HAM: Hard Adversarial example Mining (IEEE TIFS 2025) — the early-drop attack and its loss.

After the PGD-AT warm-up, each batch is attacked in two phases:

1. ``drop_step`` (M) PGD steps on the whole batch (random start in the eps-ball). For every example
   kappa = the first step t in 0..M at which the model misclassifies x^t (0: already at the random
   start), read from the logits each PGD step computes anyway; ``NEVER`` = M + 1 if it stayed
   correct. One gradient-free forward at x^M gives the status after the M-th step.
2. **Easy** AEs are, by the paper's selection test (its method figure; ``correct_early`` in the
   official code), those the model classifies correctly at x^M *and* whose true class has a
   probability >= ``discard_threshold`` (tau) there: ``easy_rule="correct_at_m"``, the default. An
   example misclassified at some step before M and classified correctly again at x^M has *flipped
   back* (``flipped``); it is easy by the paper. ``easy_rule="never_misclassified"`` makes it hard:
   easy then also needs kappa = NEVER, i.e. the model resisted every x^0..x^M, not only x^M. Easy
   AEs are discarded, except a random fraction ``keep_easy_fraction`` (rho) kept anyway. The other
   ("hard") AEs and the kept easy ones are **compacted** into a smaller batch and only they receive
   the remaining K - M steps: no forward or backward pass is spent on a discarded example after
   step M (the paper's efficiency claim).

The training loss is the cross-entropy on the kept AEs, weighted by w ~ exp(-kappa / temperature)
(mean 1 over kept AEs): AEs that crossed the decision boundary earliest, the least robust ones,
weigh most. kappa means the same under both rules: a kept easy AE that was never misclassified
counts as kappa = M + 1, and one that flipped back (easy under ``correct_at_m``) keeps its first
misclassification step (< M + 1), so it weighs like an AE that crossed there, more than a
never-misclassified one. ``temperature=None`` gives uniform weights.

**The official code** (``attack_generator.py``: ``GA_PGD_early2``; its training script) is
reproduced by tau = 0, rho = 0, uniform weights, ``easy_rule="correct_at_m"`` and
``loss_normalization="kept"`` (``ham_loss``): the same easy set at x^M, the same K - M further steps
on the hard AEs only, the same mean loss over them. What differs, on purpose:

- the attack's loss is the batch's *summed* cross-entropy, the official one its mean: the gradient
  signs are the same, but each example's step then does not depend on how many share its batch;
- the official code runs forwards it never reads: one on the clean batch and one at the random
  start (for an unused ``delta_max``), and a gradient-free one after *every* step where only the one
  after step M is read; here the one at x^M is the only extra forward (``decision_forwards``);
- its normalisation mismatch: its attack normalises the model's input with CIFAR-100's mean and std
  while its training forward on CIFAR-10 uses CIFAR-10's; here the attack and the training step
  feed the model the same [0, 1] images;
- on a batch where every AE is easy, the official code crashes (it pairs the full batch's logits
  with an empty target); here such a batch takes no optimizer step and is counted;
- its eps is 0.031 and its step 0.007, not 8/255 and 2/255 (set ``train.eps=0.031`` and
  ``train.step_size=0.007`` to match them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import model_validator

from hamsweep.core.methods._base import Learner, Method
from hamsweep.errors import SpecError
from hamsweep.spec._base import _Frozen, at_least

if TYPE_CHECKING:  # torch is imported where it is used: the spec imports this module for HamConfig
    import torch
    from torch import Tensor, nn

    from hamsweep.core.methods._base import Counts, StepOut

__all__ = [
    "EASY_RULES",
    "METHOD",
    "EarlyDrop",
    "Ham",
    "HamBatch",
    "HamConfig",
    "bucket",
    "early_drop",
    "ham_attack",
    "ham_loss",
    "keep_mask",
    "weights",
]

# what makes an AE easy (see above); the spec's ``ham.easy_rule`` offers the same names
EasyRule = Literal["correct_at_m", "never_misclassified"]
EASY_RULES: tuple[str, ...] = get_args(EasyRule)


@dataclass(frozen=True)
class EarlyDrop:
    """Phase 1's outcome on a batch of B examples."""

    x_adv: Tensor  # (B, C, H, W) adversarial examples after M steps
    kappa: Tensor  # (B,) int64: first misclassification step in 0..M, or M + 1 = never
    easy: Tensor  # (B,) bool: easy by the rule asked for
    flipped: Tensor  # (B,) bool: misclassified at some step before M, correct at x^M


@dataclass(frozen=True)
class HamBatch:
    """The outcome of HAM's attack on one batch of B examples, of which ``kept`` survive."""

    x_adv: Tensor  # (kept, C, H, W) adversarial examples after all K steps
    y: Tensor  # (kept,) their labels
    index: Tensor  # (kept,) positions in the original batch, increasing
    kappa: Tensor  # (B,) int64: first misclassification step in 0..M, or M + 1 = never
    # (B,) bool: easy by the rule asked for (correct at x^M and p_true >= tau, by default)
    easy: Tensor
    flipped: Tensor  # (B,) bool: misclassified at some step before M, correct at x^M
    weights: Tensor  # (kept,) float32, mean 1 (empty when nothing is kept)
    attack_steps: int  # example-steps of PGD computed (forward + backward each)

    @property
    def num_kept(self) -> int:
        return int(self.index.numel())


def early_drop(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    drop_step: int,
    discard_threshold: float,
    easy_rule: EasyRule = "correct_at_m",
    generator: torch.Generator | None = None,
) -> EarlyDrop:
    """Phase 1: M steps on the whole batch, then the easy test at x^M.

    x: (B, C, H, W) in [0, 1]; y: (B,). ``easy_rule``: ``correct_at_m`` (the paper: correct at x^M)
    or ``never_misclassified`` (correct at every x^0..x^M); both also need p_true >= tau at x^M.
    """
    import torch
    import torch.nn.functional as F

    from hamsweep.core.attacks import pgd_step, random_start

    if easy_rule not in EASY_RULES:
        raise ValueError(f"easy_rule must be one of {', '.join(EASY_RULES)} but got {easy_rule!r}")
    never = drop_step + 1
    kappa = torch.full_like(y, never)
    x_adv = random_start(x, eps, generator)
    for t in range(drop_step):
        x_next, logits = pgd_step(model, x_adv, x, y, eps, step_size)
        _record(kappa, logits, y, t, never)
        x_adv = x_next
    with torch.no_grad():
        logits = model(x_adv).float()
    correct = logits.argmax(dim=1) == y
    _record(kappa, logits, y, drop_step, never)
    # correct at x^M yet wrong at some step: only a step before M can have been the wrong one
    flipped = correct & (kappa < never)
    p_true = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    easy = correct & (p_true >= discard_threshold)
    if easy_rule == "never_misclassified":
        easy = easy & ~flipped
    return EarlyDrop(x_adv=x_adv, kappa=kappa, easy=easy, flipped=flipped)


def _record(kappa: Tensor, logits: Tensor, y: Tensor, step: int, never: int) -> None:
    """Set kappa = step for examples misclassified at this step and not before (in place)."""
    import torch

    first = (logits.argmax(dim=1) != y) & (kappa == never)
    kappa.copy_(torch.where(first, step, kappa))  # no boolean indexing: no host sync on a GPU


def keep_mask(
    easy: Tensor, keep_easy_fraction: float, generator: torch.Generator | None = None
) -> Tensor:
    """(B,) bool: every hard example, plus round(rho * #easy) easy ones drawn at random."""
    import torch

    kept = ~easy
    n_easy = int(easy.sum())
    n_keep = round(keep_easy_fraction * n_easy)
    if n_keep == n_easy:  # rho = 1 (or no easy AE): keep all, and draw nothing from the generator
        return kept | easy
    if n_keep > 0:
        easy_idx = easy.nonzero().squeeze(1)
        order = torch.randperm(
            n_easy, generator=generator, device=generator.device if generator else "cpu"
        )
        kept[easy_idx[order[:n_keep].to(easy.device)]] = True
    return kept


def weights(kappa: Tensor, temperature: float | None) -> Tensor:
    """w_i ~ exp(-kappa_i / T), normalised to mean 1; uniform when ``temperature`` is None.
    kappa: (n,)."""
    import torch
    import torch.nn.functional as F

    if temperature is None or kappa.numel() == 0:
        return torch.ones(kappa.shape, device=kappa.device)
    # softmax is exp(-kappa/T) / sum, computed stably for small T; times n gives mean 1
    return F.softmax(-kappa.float() / temperature, dim=0) * kappa.numel()


def ham_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    attack_steps: int,
    drop_step: int,
    discard_threshold: float = 0.0,
    keep_easy_fraction: float = 0.0,
    temperature: float | None = None,
    easy_rule: EasyRule = "correct_at_m",
    generator: torch.Generator | None = None,
    pad_buckets: bool = False,
) -> HamBatch:
    """HAM's attack on one batch: early drop at step M, then K - M steps on the kept AEs only.

    x: (B, C, H, W) in [0, 1]; y: (B,) int64. The model should be in eval mode. Defaults are the
    official code's (tau = 0, rho = 0, uniform weights, easy = correct at x^M). ``pad_buckets``:
    the K - M steps run on the kept AEs padded to ``bucket(kept, B)`` examples (zeros, label 0,
    cut off after), so that a GPU sees a few batch shapes instead of one per batch (for CUDA graphs
    and cuDNN's autotuner). Exact: in eval mode with the summed loss of ``pgd_step`` each example's
    step depends on itself only; ``attack_steps`` then counts the padded examples' steps too.
    """
    import torch

    from hamsweep.core.attacks import pgd_step

    drop = early_drop(
        model,
        x,
        y,
        eps=eps,
        step_size=step_size,
        drop_step=drop_step,
        discard_threshold=discard_threshold,
        easy_rule=easy_rule,
        generator=generator,
    )
    index = keep_mask(drop.easy, keep_easy_fraction, generator).nonzero().squeeze(1)
    x_kept, x_nat, y_kept = drop.x_adv[index], x[index], y[index]  # compaction: a smaller batch
    kept = index.numel()
    steps_on = bucket(kept, x.shape[0]) if pad_buckets and kept else kept
    if steps_on > kept:  # padding: zeros, label 0, never read
        x_kept, x_nat, y_pad = (
            torch.cat([t, t.new_zeros((steps_on - kept, *t.shape[1:]))])
            for t in (x_kept, x_nat, y_kept)
        )
    else:
        y_pad = y_kept
    for _ in range(attack_steps - drop_step):
        x_kept, _ = pgd_step(model, x_kept, x_nat, y_pad, eps, step_size)
    x_kept = x_kept[:kept]
    return HamBatch(
        x_adv=x_kept,
        y=y_kept,
        index=index,
        kappa=drop.kappa,
        easy=drop.easy,
        flipped=drop.flipped,
        weights=weights(drop.kappa[index], temperature),
        attack_steps=x.shape[0] * drop_step + steps_on * (attack_steps - drop_step),
    )


def bucket(n: int, batch: int, smallest: int = 16) -> int:
    """The padded size of ``n`` kept AEs out of a batch of ``batch``: the next power of two from
    ``smallest`` on, at most ``batch`` (log2(batch / 16) + 1 shapes in all)."""
    size = smallest
    while size < n:
        size *= 2
    return min(size, batch)


def ham_loss(
    logits: Tensor, y: Tensor, w: Tensor, batch_size: int, normalization: str = "kept"
) -> Tensor:
    """Weighted cross-entropy over the kept AEs. logits: (kept, classes); y, w: (kept,).

    ``kept``: divide by the number kept (the official code; it boosts each AE by B / kept);
    ``batch``: divide by the original batch size B.
    """
    import torch.nn.functional as F

    per_example = F.cross_entropy(logits.float(), y, reduction="none")
    denominator = y.numel() if normalization == "kept" else batch_size
    return (w * per_example).sum() / denominator


# ---- the method: its spec section and its step ----
class HamConfig(_Frozen):
    """The spec section ``ham``: HAM's knobs (read only by HAM trials, after the warm-up)."""

    warmup_epochs: int = 50  # epochs of plain PGD-AT before HAM starts
    drop_step: int = 3  # M: PGD steps run on the whole batch before easy AEs are dropped
    discard_threshold: float = 0.0  # tau in [0,1): an easy AE also needs p_true >= tau at x^M
    # easy = correct at x^M (correct_at_m, the paper) or at every step 0..M (never_misclassified)
    easy_rule: EasyRule = "correct_at_m"
    keep_easy_fraction: float = 0.0  # rho in [0,1]: share of easy AEs kept anyway, drawn at random
    temperature: float | None = None  # w ~ exp(-kappa / T) over kept AEs; None = uniform weights
    # average the loss over kept AEs or the whole batch
    loss_normalization: Literal["kept", "batch"] = "kept"
    # best.pt and the trial's best objective come from HAM epochs only (after the warm-up), so that
    # a HAM trial is never represented by a PGD-AT epoch; false lets a warm-up epoch win
    select_after_warmup: bool = True
    # the K - M steps on the kept AEs padded to a power of two (16 ... batch): a few batch shapes
    # for a GPU instead of one per batch; exact (ham_attack). false: the kept AEs as they are
    pad_buckets: bool = False

    @model_validator(mode="after")
    def _check(self) -> HamConfig:
        if self.warmup_epochs < 0:
            raise SpecError(
                "warmup_epochs", f"warmup_epochs cannot be negative but got {self.warmup_epochs}"
            )
        at_least(self, 1, "drop_step")
        if not 0 <= self.discard_threshold < 1:
            raise SpecError(
                "discard_threshold",
                f"discard_threshold must be in [0, 1) but got {self.discard_threshold}",
            )
        if not 0 <= self.keep_easy_fraction <= 1:
            raise SpecError(
                "keep_easy_fraction",
                f"keep_easy_fraction must be in [0, 1] but got {self.keep_easy_fraction}",
            )
        if self.temperature is not None and not self.temperature > 0:
            raise SpecError(
                "temperature",
                f"temperature must be > 0 (or null for uniform weights) but got {self.temperature}",
            )
        return self


class Ham(Method):
    name = "ham"
    title = "HAM"
    config = HamConfig
    fork_key = "ham.warmup_epochs"  # ham.warmup_epochs epochs of PGD-AT: the trunk's, when shared
    diagnostics = ("hard_fraction", "kept_fraction", "flip_backs")

    def check(self, cfg: Any) -> None:
        k, m = cfg.train.attack_steps, cfg.ham.drop_step
        if m > k:
            raise SpecError(
                "ham.drop_step",
                f"{m} is larger than train.attack_steps ({k}); drop_step must be in 1..{k}",
            )
        super().check(cfg)

    def step(self, learner: Learner, x: Tensor, y: Tensor, tally: Counts) -> StepOut:
        t, h = learner.cfg.train, learner.cfg.ham
        hb = ham_attack(
            learner.model,
            x,
            y,
            eps=t.eps,
            step_size=t.step_size,
            attack_steps=t.attack_steps,
            drop_step=h.drop_step,
            discard_threshold=h.discard_threshold,
            keep_easy_fraction=h.keep_easy_fraction,
            temperature=h.temperature,
            easy_rule=h.easy_rule,
            generator=learner.generator,
            pad_buckets=h.pad_buckets,
        )
        tally.add_attack(
            len(y),
            hb.attack_steps,
            hb.num_kept,
            hard=int((~hb.easy).sum()),
            decisions=len(y),
            flip_backs=int(hb.flipped.sum()),
        )
        tally.add_class("hard_fraction", y, ~hb.easy)
        if hb.num_kept == 0:  # every AE was easy and none was kept: nothing to learn from
            tally.empty_batches += 1
            return None
        learner.model.train()
        logits = learner.model(hb.x_adv)
        return ham_loss(logits, hb.y, hb.weights, len(y), h.loss_normalization), logits, hb.y


METHOD = Ham()
