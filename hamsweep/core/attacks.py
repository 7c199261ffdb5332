"""L-inf attacks: PGD with random start (Madry et al., ICLR 2018), FGSM, and TRADES' KL attack.

Threat model: ``||x_adv - x||_inf <= eps`` and ``x_adv`` in [0, 1], images in [0, 1] pixel units.
``eps`` and ``step_size`` are one float for the batch or a (N,) tensor, one radius per example
(CFA, DAFA and FRL give each class its own; ``per_example`` builds it from per-class values). All
functions are pure: they leave the model's mode and parameters alone (callers put it in eval
mode while attacking) and draw randomness only from the ``generator`` they are given.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Radius",
    "fgsm",
    "per_example",
    "pgd",
    "pgd_step",
    "project",
    "random_start",
    "trades_attack",
]

Radius = float | Tensor  # one value, or (N,): one per example


def per_example(per_class: Tensor, y: Tensor) -> Tensor:
    """Each example's value of a per-class tensor: (classes,) and labels (N,) -> (N,)."""
    return per_class.to(y.device)[y]


def _pixels(r: Radius, x: Tensor) -> Radius:
    """``r`` shaped to broadcast against images ``x`` (N, C, H, W): a float stays a float, so the
    one-radius path computes exactly what it always did."""
    if isinstance(r, Tensor):
        return r.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return r


def project(x_adv: Tensor, x: Tensor, eps: Radius) -> Tensor:
    """Clip ``x_adv`` onto the L-inf ball of radius ``eps`` around ``x``, then onto [0, 1]."""
    eps = _pixels(eps, x)
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def random_start(x: Tensor, eps: Radius, generator: torch.Generator | None = None) -> Tensor:
    """``x`` plus uniform noise in [-eps, eps], clipped to [0, 1]. x: (N, C, H, W)."""
    eps = _pixels(eps, x)
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + (2 * noise - 1) * eps).clamp_(0.0, 1.0)


def pgd_step(
    model: nn.Module, x_adv: Tensor, x: Tensor, y: Tensor, eps: Radius, step_size: Radius
) -> tuple[Tensor, Tensor]:
    """One signed-gradient ascent step on the cross-entropy.

    Returns ``(x_next, logits)`` where ``logits`` (N, classes) are the model's output *at x_adv*,
    i.e. the forward pass the step needed anyway: HAM reads each example's status from them
    instead of spending an extra forward per step.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv)
    # sum, not mean: each example's gradient is then independent of the batch size, so an
    # attack on a compacted sub-batch takes exactly the steps it would inside the full batch
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_adv)
    x_next = project(x_adv.detach() + _pixels(step_size, x) * grad.sign(), x, eps)
    return x_next, logits.detach()


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: Radius,
    step_size: Radius,
    steps: int,
    generator: torch.Generator | None = None,
    start: bool = True,
) -> Tensor:
    """PGD-``steps`` (L-inf). x: (N, C, H, W) in [0, 1]; y: (N,) int64. ``start``:
    random start in the ball."""
    x_adv = random_start(x, eps, generator) if start else x.clone()
    for _ in range(steps):
        x_adv, _ = pgd_step(model, x_adv, x, y, eps, step_size)
    return x_adv


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float) -> Tensor:
    """FGSM (Goodfellow et al. 2015): one step of size eps from ``x``, no random start."""
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, start=False)


def trades_attack(
    model: nn.Module,
    x: Tensor,
    *,
    eps: Radius,
    step_size: Radius,
    steps: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """TRADES' inner maximisation (Zhang et al., ICML 2019): maximise KL(f(x) || f(x_adv)).

    Starts at ``x + 0.001 * N(0, 1)`` as the reference code does. x: (N, C, H, W) in [0, 1].
    """
    with torch.no_grad():
        p_nat = F.softmax(model(x).float(), dim=1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = (x + 0.001 * noise).clamp_(0.0, 1.0)
    kl: Callable[[Tensor], Tensor] = lambda logits: F.kl_div(  # noqa: E731
        F.log_softmax(logits.float(), dim=1), p_nat, reduction="sum"
    )
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(kl(model(x_adv)), x_adv)
        x_adv = project(x_adv.detach() + _pixels(step_size, x) * grad.sign(), x, eps)
    return x_adv.detach()
