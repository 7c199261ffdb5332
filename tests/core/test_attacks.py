from __future__ import annotations

import torch
import torch.nn.functional as F

from hamsweep.core.attacks import fgsm, per_example, pgd, project, random_start, trades_attack
from hamsweep.core.models import build
from hamsweep.spec import ModelConfig

EPS = 8 / 255


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = build(ModelConfig(name="small_cnn", width=4), num_classes=4).eval()
    x = torch.rand(32, 3, 8, 8)
    x[:4] = 0.0  # images at the border of [0, 1]: the box constraint must bind
    x[4:8] = 1.0
    y = torch.randint(0, 4, (32,))
    return model, x, y


def _in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> bool:
    return bool(
        ((x_adv - x).abs() <= eps + 1e-6).all() and (x_adv >= 0).all() and (x_adv <= 1).all()
    )


def test_pgd_stays_in_eps_ball_and_box_and_raises_the_loss():
    model, x, y = _setup()
    x_adv = pgd(
        model,
        x,
        y,
        eps=EPS,
        step_size=2 / 255,
        steps=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert _in_ball(x_adv, x, EPS)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert adv.mean() > clean.mean()
    assert float((adv > clean).float().mean()) > 0.9  # nearly every example's loss went up


def test_pgd_is_deterministic_for_a_seeded_generator_and_leaves_global_rng_alone():
    model, x, y = _setup()
    state = torch.get_rng_state()
    a = pgd(
        model, x, y, eps=EPS, step_size=2 / 255, steps=3, generator=torch.Generator().manual_seed(1)
    )
    b = pgd(
        model, x, y, eps=EPS, step_size=2 / 255, steps=3, generator=torch.Generator().manual_seed(1)
    )
    c = pgd(
        model, x, y, eps=EPS, step_size=2 / 255, steps=3, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(state, torch.get_rng_state())


def test_random_start_and_project():
    x = torch.rand(16, 3, 8, 8)
    start = random_start(x, EPS, torch.Generator().manual_seed(0))
    assert _in_ball(start, x, EPS) and not torch.equal(start, x)
    far = x + 1.0
    assert _in_ball(project(far, x, EPS), x, EPS)


def test_fgsm_is_one_full_step_without_random_start():
    model, x, y = _setup()
    x_adv = fgsm(model, x, y, eps=EPS)
    assert _in_ball(x_adv, x, EPS)
    inside = (x > EPS) & (x < 1 - EPS)
    moved = (x_adv - x).abs()[inside]
    # every pixel away from the box edges moved by exactly eps (sign of a non-zero gradient)
    # or not at all
    assert torch.all(((moved - EPS).abs() < 1e-6) | (moved == 0))


def test_trades_attack_stays_in_ball_and_raises_kl():
    model, x, _ = _setup()
    x_adv = trades_attack(
        model, x, eps=EPS, step_size=2 / 255, steps=5, generator=torch.Generator().manual_seed(0)
    )
    assert _in_ball(x_adv, x, EPS)
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), p, reduction="batchmean")
    assert kl > 1e-6


def test_per_example_radii_attack_each_example_as_its_own_radius_would():
    """A (N,) eps and step: each example's AE is the one a batch-wide float radius of its own value
    gives it (the model is in eval mode and the attack's gradients are per example), and a float
    radius is still the exact old path."""
    model, x, y = _setup()
    per_class = torch.tensor([2 / 255, 4 / 255, 8 / 255, 12 / 255])
    eps = per_example(per_class, y)
    assert eps.tolist() == [per_class[c].item() for c in y.tolist()]
    mixed = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=5, start=False)
    tmixed = trades_attack(
        model, x, eps=eps, step_size=eps / 4, steps=5, generator=torch.Generator().manual_seed(1)
    )
    for c in range(4):
        rows = y == c
        e = per_class[c].item()
        alone = pgd(model, x, y, eps=e, step_size=e / 4, steps=5, start=False)
        assert torch.allclose(mixed[rows], alone[rows], atol=1e-6)
        assert _in_ball(mixed[rows], x[rows], e)
        assert (mixed[rows] - x[rows]).abs().max() > e / 2  # it moved up to its own radius
        assert _in_ball(tmixed[rows], x[rows], e)
    # the random start draws the same noise and scales it per example
    g = torch.Generator().manual_seed(3)
    start = random_start(x, eps, g)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    expected = (x + (2 * noise - 1) * eps.view(-1, 1, 1, 1)).clamp(0, 1)
    assert torch.equal(start, expected)
    same = pgd(model, x, y, eps=EPS, step_size=2 / 255, steps=3, start=False)
    same_t = pgd(model, x, y, eps=torch.full((32,), EPS), step_size=2 / 255, steps=3, start=False)
    assert torch.allclose(same, same_t, atol=1e-7)
