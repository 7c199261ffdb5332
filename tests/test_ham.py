"""HAM's definition, checked against an independent re-computation written out here."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from hamsweep.attacks import pgd, project, random_start
from hamsweep.data import load
from hamsweep.ham import early_drop, ham_attack, ham_loss, keep_mask, weights
from hamsweep.models import build
from hamsweep.spec import DataConfig, ModelConfig

EPS, STEP, K = 8 / 255, 2 / 255, 6


@functools.cache
def _trained() -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A small_cnn trained (clean) for a few seconds on synthetic data whose classes differ in
    difficulty: confident and robust on some examples, fragile on others."""
    data = load(DataConfig(name="synthetic", num_classes=4, image_size=8, train_size=512, test_size=64, val_fraction=0))
    torch.manual_seed(0)
    model = build(ModelConfig(name="small_cnn", width=4), num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x_all, y_all = data.train.images.float() / 255, data.train.labels
    for _ in range(4):
        for i in range(0, len(y_all), 64):
            opt.zero_grad()
            F.cross_entropy(model(x_all[i : i + 64]), y_all[i : i + 64]).backward()
            opt.step()
    return model.state_dict(), data.test.images.float() / 255, data.test.labels


def _setup(n: int = 64):
    state, x, y = _trained()
    model = build(ModelConfig(name="small_cnn", width=4), num_classes=4)
    model.load_state_dict(state)
    model.eval()
    y = y[:n].clone()
    y[: n // 8] = (y[: n // 8] + 1) % 4  # a few wrong labels: misclassified at the random start
    return model, x[:n], y


def _reference(model, x, y, m: int, tau: float, seed: int):
    """HAM phase 1 written out from the definition: a separate forward for every status."""
    gen = torch.Generator().manual_seed(seed)
    x_adv = random_start(x, EPS, gen)
    kappa = torch.full_like(y, m + 1)
    for t in range(m + 1):
        with torch.no_grad():
            logits = model(x_adv)
        for i in range(len(y)):
            if kappa[i] == m + 1 and logits[i].argmax() != y[i]:
                kappa[i] = t
        if t < m:
            xg = x_adv.clone().requires_grad_(True)
            loss = F.cross_entropy(model(xg), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xg)
            x_adv = project(x_adv + STEP * g.sign(), x, EPS)
    p_true = F.softmax(logits, 1)[torch.arange(len(y)), y]
    easy = (kappa == m + 1) & (p_true >= tau)
    return x_adv, kappa, easy


@pytest.mark.parametrize("m,tau", [(1, 0.0), (3, 0.0), (3, 0.6), (K, 0.3)])
def test_split_equals_independent_recomputation(m, tau):
    model, x, y = _setup()
    ref_x, ref_kappa, ref_easy = _reference(model, x, y, m, tau, seed=7)
    x_m, kappa, easy = early_drop(
        model, x, y, eps=EPS, step_size=STEP, drop_step=m, discard_threshold=tau, generator=torch.Generator().manual_seed(7)
    )
    assert torch.allclose(x_m, ref_x, atol=1e-6)
    assert torch.equal(kappa, ref_kappa)
    assert torch.equal(easy, ref_easy)
    assert 0 < int(easy.sum()) < len(y), "the fixture should give both easy and hard examples"
    assert int((kappa == 0).sum()) >= len(y) // 8  # misclassified at the random start: kappa = 0


def test_kappa_is_the_first_misclassification_step():
    model, x, y = _setup()
    m = 4
    _, kappa, _ = early_drop(model, x, y, eps=EPS, step_size=STEP, drop_step=m, discard_threshold=0.0,
                             generator=torch.Generator().manual_seed(3))
    # replay the same attack one prefix length at a time: x^t for t = 0..m
    wrong_at = []
    for t in range(m + 1):
        x_t = pgd(model, x, y, eps=EPS, step_size=STEP, steps=t, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            wrong_at.append(model(x_t).argmax(1) != y)
    wrong = torch.stack(wrong_at)  # (m+1, B)
    first = torch.where(wrong.any(0), wrong.float().argmax(0), torch.full_like(y, m + 1))
    assert torch.equal(kappa, first)
    assert len(set(kappa.tolist())) >= 3  # several different crossing steps really occur


def test_compaction_forwards_only_kept_examples_after_step_m():
    model, x, y = _setup()
    sizes: list[int] = []
    handle = model.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[0]))
    try:
        hb = ham_attack(model, x, y, eps=EPS, step_size=STEP, attack_steps=K, drop_step=2,
                        generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    b, kept = len(y), hb.num_kept
    assert 0 < kept < b
    # M steps on the batch, the status forward at x^M, then K - M steps on the kept examples only
    assert sizes == [b] * 2 + [b] + [kept] * (K - 2)
    assert hb.attack_steps == b * 2 + kept * (K - 2)
    assert torch.equal(hb.index, (~hb.easy).nonzero().squeeze(1))  # rho = 0: exactly the hard ones


def test_kept_examples_finish_the_attack_exactly_as_inside_the_full_batch():
    model, x, y = _setup()
    hb = ham_attack(model, x, y, eps=EPS, step_size=STEP, attack_steps=K, drop_step=2,
                    generator=torch.Generator().manual_seed(0))
    full = pgd(model, x, y, eps=EPS, step_size=STEP, steps=K, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hb.x_adv, full[hb.index], atol=1e-6)


def test_threshold_makes_fewer_examples_easy():
    model, x, y = _setup()
    easy = {}
    for tau in (0.0, 0.5, 0.9, 0.999):
        _, _, easy[tau] = early_drop(model, x, y, eps=EPS, step_size=STEP, drop_step=2, discard_threshold=tau,
                                     generator=torch.Generator().manual_seed(0))
    counts = [int(e.sum()) for e in easy.values()]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert bool((easy[0.9] <= easy[0.0]).all())  # a subset


def test_keep_easy_fraction_keeps_that_share_of_easy_at_random_seeded():
    easy = torch.zeros(100, dtype=torch.bool)
    easy[::2] = True  # 50 easy
    kept = keep_mask(easy, 0.3, torch.Generator().manual_seed(0))
    assert bool(kept[~easy].all())
    assert int((kept & easy).sum()) == 15
    assert torch.equal(kept, keep_mask(easy, 0.3, torch.Generator().manual_seed(0)))
    assert not torch.equal(kept, keep_mask(easy, 0.3, torch.Generator().manual_seed(1)))
    assert bool(keep_mask(easy, 1.0, None).all())
    assert torch.equal(keep_mask(easy, 0.0, None), ~easy)


def test_weights_follow_exp_minus_kappa_over_t_with_mean_one():
    kappa = torch.tensor([0, 1, 2, 4, 4])
    w = weights(kappa, 2.0)
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-6)
    assert math.isclose(float(w[0] / w[2]), math.exp(2 / 2.0), rel_tol=1e-5)
    assert bool((w[:-1] >= w[1:]).all())  # earliest crossers weigh most
    assert torch.equal(weights(kappa, None), torch.ones(5))
    assert torch.isfinite(weights(torch.tensor([0, 50]), 0.01)).all()  # tiny T: no overflow


def test_kept_easy_examples_weigh_as_kappa_m_plus_one():
    model, x, y = _setup()
    m, t = 2, 1.5
    hb = ham_attack(model, x, y, eps=EPS, step_size=STEP, attack_steps=K, drop_step=m, keep_easy_fraction=0.5,
                    temperature=t, generator=torch.Generator().manual_seed(0))
    kept_kappa = hb.kappa[hb.index]
    assert bool(hb.easy[hb.index].any())
    assert bool((kept_kappa[hb.easy[hb.index]] == m + 1).all())
    expected = torch.exp(-kept_kappa.float() / t)
    assert torch.allclose(hb.weights, expected / expected.mean(), rtol=1e-5)


def test_loss_normalisations():
    logits = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 3, 0])
    w = torch.tensor([2.0, 1.0, 1.0, 0.5, 0.5])
    ce = F.cross_entropy(logits, y, reduction="none")
    kept = ham_loss(logits, y, w, batch_size=20, normalization="kept")
    batch = ham_loss(logits, y, w, batch_size=20, normalization="batch")
    assert torch.allclose(kept, (w * ce).sum() / 5)
    assert torch.allclose(batch, (w * ce).sum() / 20)
    assert torch.allclose(kept / batch, torch.tensor(20 / 5))


def test_keeping_all_easy_with_uniform_weights_is_exactly_pgd_at():
    model, x, y = _setup()
    gen_state = torch.Generator().manual_seed(11).get_state()
    x_pgd = pgd(model, x, y, eps=EPS, step_size=STEP, steps=K, generator=torch.Generator().set_state(gen_state))
    hb = ham_attack(model, x, y, eps=EPS, step_size=STEP, attack_steps=K, drop_step=3, keep_easy_fraction=1.0,
                    generator=torch.Generator().set_state(gen_state))
    assert bool(hb.easy.any()) and hb.num_kept == len(y)
    model.train()
    pgd_at = F.cross_entropy(model(x_pgd), y)
    ham = ham_loss(model(hb.x_adv), hb.y, hb.weights, len(y), "kept")
    assert torch.equal(hb.x_adv, x_pgd)
    assert torch.allclose(ham, pgd_at, rtol=1e-6, atol=0)  # the same mean CE, up to summation order
