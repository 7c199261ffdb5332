"""HAM: Hard Adversarial example Mining (IEEE TIFS 2025) — the early-drop attack and its loss.

After the PGD-AT warm-up, each batch is attacked in two phases:

1. ``drop_step`` (M) PGD steps on the whole batch (random start in the eps-ball). For every example
   kappa = the first step t in 0..M at which the model misclassifies x^t (0: already at the random
   start), read from the logits each PGD step computes anyway; ``NEVER`` = M + 1 if it stayed correct.
   One gradient-free forward at x^M gives the status after the M-th step.
2. **Easy** AEs are still correct after M steps (kappa = NEVER) *and* give the true class a
   probability >= ``discard_threshold`` (tau). They are discarded, except a random fraction
   ``keep_easy_fraction`` (rho) kept anyway. The other ("hard") AEs and the kept easy ones are
   **compacted** into a smaller batch and only they receive the remaining K - M steps: no forward or
   backward pass is spent on a discarded example after step M (the paper's efficiency claim).

The training loss is the cross-entropy on the kept AEs, weighted by w ~ exp(-kappa / temperature)
(mean 1 over kept AEs; kept-easy AEs count as kappa = M + 1): AEs that crossed the decision boundary
earliest, the least robust ones, weigh most. ``temperature=None`` gives uniform weights, and
``discard_threshold=0`` with ``keep_easy_fraction=0`` reproduces the official code.

An example misclassified at some step <= M is hard even if a later step moved it back: the model
has been shown not to resist it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hamsweep.attacks import pgd_step, random_start

__all__ = ["HamBatch", "early_drop", "ham_attack", "ham_loss", "keep_mask", "weights"]


@dataclass(frozen=True)
class HamBatch:
    """The outcome of HAM's attack on one batch of B examples, of which ``kept`` survive."""

    x_adv: Tensor  # (kept, C, H, W) adversarial examples after all K steps
    y: Tensor  # (kept,) their labels
    index: Tensor  # (kept,) positions in the original batch, increasing
    kappa: Tensor  # (B,) int64: first misclassification step in 0..M, or M + 1 = never
    easy: Tensor  # (B,) bool: correct after M steps and p_true >= tau
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
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Phase 1: M steps on the whole batch. Returns ``(x_adv_M, kappa, easy)``.

    x: (B, C, H, W) in [0, 1]; y: (B,). kappa: (B,) int64 in 0..M+1 (M+1 = never misclassified);
    easy: (B,) bool.
    """
    never = drop_step + 1
    kappa = torch.full_like(y, never)
    x_adv = random_start(x, eps, generator)
    for t in range(drop_step):
        x_next, logits = pgd_step(model, x_adv, x, y, eps, step_size)
        _record(kappa, logits, y, t, never)
        x_adv = x_next
    with torch.no_grad():
        logits = model(x_adv).float()
    _record(kappa, logits, y, drop_step, never)
    p_true = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    easy = (kappa == never) & (p_true >= discard_threshold)
    return x_adv, kappa, easy


def _record(kappa: Tensor, logits: Tensor, y: Tensor, step: int, never: int) -> None:
    """Set kappa = step for examples misclassified at this step and not before (in place)."""
    first = (logits.argmax(dim=1) != y) & (kappa == never)
    kappa.copy_(torch.where(first, step, kappa))  # no boolean indexing: no host sync on a GPU


def keep_mask(easy: Tensor, keep_easy_fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """(B,) bool: every hard example, plus round(rho * #easy) easy ones drawn at random."""
    kept = ~easy
    n_easy = int(easy.sum())
    n_keep = round(keep_easy_fraction * n_easy)
    if n_keep == n_easy:  # rho = 1 (or no easy AE): keep all, and draw nothing from the generator
        return kept | easy
    if n_keep > 0:
        easy_idx = easy.nonzero().squeeze(1)
        order = torch.randperm(n_easy, generator=generator, device=generator.device if generator else "cpu")
        kept[easy_idx[order[:n_keep].to(easy.device)]] = True
    return kept


def weights(kappa: Tensor, temperature: float | None) -> Tensor:
    """w_i ~ exp(-kappa_i / T), normalised to mean 1; uniform when ``temperature`` is None. kappa: (n,)."""
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
    generator: torch.Generator | None = None,
) -> HamBatch:
    """HAM's attack on one batch: early drop at step M, then K - M steps on the kept AEs only.

    x: (B, C, H, W) in [0, 1]; y: (B,) int64. The model should be in eval mode. Defaults are the
    official code's (tau = 0, rho = 0, uniform weights).
    """
    x_adv, kappa, easy = early_drop(
        model, x, y, eps=eps, step_size=step_size, drop_step=drop_step,
        discard_threshold=discard_threshold, generator=generator,
    )
    index = keep_mask(easy, keep_easy_fraction, generator).nonzero().squeeze(1)
    x_kept, x_nat, y_kept = x_adv[index], x[index], y[index]  # compaction: a smaller batch
    for _ in range(attack_steps - drop_step):
        x_kept, _ = pgd_step(model, x_kept, x_nat, y_kept, eps, step_size)
    return HamBatch(
        x_adv=x_kept,
        y=y_kept,
        index=index,
        kappa=kappa,
        easy=easy,
        weights=weights(kappa[index], temperature),
        attack_steps=x.shape[0] * drop_step + index.numel() * (attack_steps - drop_step),
    )


def ham_loss(logits: Tensor, y: Tensor, w: Tensor, batch_size: int, normalization: str = "kept") -> Tensor:
    """Weighted cross-entropy over the kept AEs. logits: (kept, classes); y, w: (kept,).

    ``kept``: divide by the number kept (the official code; it boosts each AE by B / kept);
    ``batch``: divide by the original batch size B.
    """
    per_example = F.cross_entropy(logits.float(), y, reduction="none")
    denominator = y.numel() if normalization == "kept" else batch_size
    return (w * per_example).sum() / denominator
