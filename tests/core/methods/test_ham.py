"""HAM's definition, checked against an independent re-computation written out here."""

from __future__ import annotations

import functools
import math
from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hamsweep.core.attacks import pgd, project, random_start
from hamsweep.core.data import load
from hamsweep.core.methods.ham import (
    EASY_RULES,
    early_drop,
    ham_attack,
    ham_loss,
    keep_mask,
    weights,
)
from hamsweep.core.models import build
from hamsweep.spec import DataConfig, HamConfig, ModelConfig

EPS, STEP, K = 8 / 255, 2 / 255, 6


@functools.cache
def _trained() -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A small_cnn trained (clean) for a few seconds on synthetic data whose classes differ in
    difficulty: confident and robust on some examples, fragile on others."""
    data = load(
        DataConfig(
            name="synthetic",
            num_classes=4,
            image_size=8,
            train_size=512,
            test_size=64,
            val_fraction=0,
        )
    )
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


def _reference(
    model, x, y, m: int, tau: float, seed: int, rule: str, eps: float = EPS, step: float = STEP
):
    """HAM phase 1 written out from the definition: a separate forward for every status.
    Returns (x^M, kappa, easy, flipped)."""
    gen = torch.Generator().manual_seed(seed)
    x_adv = random_start(x, eps, gen)
    wrong = []  # wrong[t][i]: example i misclassified at x^t
    for t in range(m + 1):
        with torch.no_grad():
            logits = model(x_adv)
        wrong.append([bool(logits[i].argmax() != y[i]) for i in range(len(y))])
        if t < m:
            xg = x_adv.clone().requires_grad_(True)
            loss = F.cross_entropy(model(xg), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xg)
            x_adv = project(x_adv + step * g.sign(), x, eps)
    per_example = list(zip(*wrong))  # (B, m + 1)
    kappa = torch.tensor([w.index(True) if True in w else m + 1 for w in per_example])
    flipped = torch.tensor([any(w[:m]) and not w[m] for w in per_example])
    p_true = F.softmax(logits, 1)[torch.arange(len(y)), y]
    correct = {
        "correct_at_m": [not w[m] for w in per_example],
        "never_misclassified": [not any(w) for w in per_example],
    }
    easy = torch.tensor(correct[rule]) & (p_true >= tau)
    return x_adv, kappa, easy, flipped


@pytest.mark.parametrize("rule", EASY_RULES)
@pytest.mark.parametrize("m,tau", [(1, 0.0), (3, 0.0), (3, 0.6), (K, 0.3)])
def test_split_equals_independent_recomputation(m, tau, rule):
    model, x, y = _setup()
    ref_x, ref_kappa, ref_easy, ref_flipped = _reference(model, x, y, m, tau, seed=7, rule=rule)
    drop = early_drop(
        model,
        x,
        y,
        eps=EPS,
        step_size=STEP,
        drop_step=m,
        discard_threshold=tau,
        easy_rule=rule,
        generator=torch.Generator().manual_seed(7),
    )
    assert torch.allclose(drop.x_adv, ref_x, atol=1e-6)
    assert torch.equal(drop.kappa, ref_kappa)
    assert torch.equal(drop.easy, ref_easy)
    assert torch.equal(drop.flipped, ref_flipped)
    assert 0 < int(drop.easy.sum()) < len(y), "the fixture should give both easy and hard examples"
    # misclassified at the random start: kappa = 0
    assert int((drop.kappa == 0).sum()) >= len(y) // 8


def test_kappa_is_the_first_misclassification_step():
    model, x, y = _setup()
    m = 4
    kappa = early_drop(
        model,
        x,
        y,
        eps=EPS,
        step_size=STEP,
        drop_step=m,
        discard_threshold=0.0,
        generator=torch.Generator().manual_seed(3),
    ).kappa
    # replay the same attack one prefix length at a time: x^t for t = 0..m
    wrong_at = []
    for t in range(m + 1):
        x_t = pgd(
            model,
            x,
            y,
            eps=EPS,
            step_size=STEP,
            steps=t,
            generator=torch.Generator().manual_seed(3),
        )
        with torch.no_grad():
            wrong_at.append(model(x_t).argmax(1) != y)
    wrong = torch.stack(wrong_at)  # (m+1, B)
    first = torch.where(wrong.any(0), wrong.float().argmax(0), torch.full_like(y, m + 1))
    assert torch.equal(kappa, first)
    assert len(set(kappa.tolist())) >= 3  # several different crossing steps really occur


# a step longer than the ball's diameter overshoots: every PGD step ends on a face of the eps-ball
EPS_C, STEP_C, CENTRE, FAR = 0.1, 0.25, 0.5, 0.9
FLIPPED = [True] * 6 + [False] * 4  # the examples of _flip_back_batch that flip back


class _Cubic(nn.Module):
    """Two classes on one-pixel images: margin = logit_0 - logit_1 = z^3 - 2.97 z,
    z = (v - CENTRE) / EPS_C.

    In the ball around CENTRE (|z| <= 1) the margin falls from +1.97 at z = -1 to -1.97 at z = +1
    but rises again within 0.005 of either face. So from a random start PGD lands on the face where
    the label is wrong (x^1), then overshoots to the other face, where it is right, and stays there:
    a flip-back, for either label (a start within 0.005 of a face would go otherwise; seed 0 has
    none). Around FAR (z in [3, 5]) the margin is >= 18: class 0 is never misclassified, class 1
    always."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1)[:, 0] - CENTRE) / EPS_C
        margin = z**3 - 2.97 * z
        return torch.stack([margin, torch.zeros_like(margin)], dim=1)


def _flip_back_batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([CENTRE] * 6 + [FAR] * 4).view(-1, 1, 1, 1)
    return x, torch.tensor([0, 1, 0, 1, 0, 1, 0, 0, 1, 1])


def _drop(rule: str, tau: float = 0.5, m: int = 3):
    x, y = _flip_back_batch()
    return early_drop(
        _Cubic(),
        x,
        y,
        eps=EPS_C,
        step_size=STEP_C,
        drop_step=m,
        discard_threshold=tau,
        easy_rule=rule,
        generator=torch.Generator().manual_seed(0),
    )


def test_flip_backs_are_easy_by_the_paper_and_hard_when_never_misclassified():
    m = 3
    paper, never = _drop("correct_at_m", m=m), _drop("never_misclassified", m=m)
    assert paper.flipped.tolist() == never.flipped.tolist() == FLIPPED
    # p_true at x^M: sigmoid(1.97) = 0.88
    assert paper.easy.tolist() == [True] * 6 + [True, True, False, False]
    assert never.easy.tolist() == [False] * 6 + [True, True, False, False]
    # the rules differ exactly on the flip-backs
    assert torch.equal(paper.easy ^ never.easy, paper.flipped)
    # kappa is the first wrong step, whatever the rule: the random start (0) or the first face (1)
    assert torch.equal(paper.kappa, never.kappa)
    assert set(paper.kappa[:6].tolist()) == {0, 1} and paper.kappa[6:].tolist() == [
        m + 1,
        m + 1,
        0,
        0,
    ]
    x, y = _flip_back_batch()
    for rule, drop in (("correct_at_m", paper), ("never_misclassified", never)):
        ref_x, ref_kappa, ref_easy, ref_flipped = _reference(
            _Cubic(), x, y, m, 0.5, 0, rule, eps=EPS_C, step=STEP_C
        )
        assert torch.allclose(drop.x_adv, ref_x) and torch.equal(drop.kappa, ref_kappa)
        assert torch.equal(drop.easy, ref_easy) and torch.equal(drop.flipped, ref_flipped)
    # tau applies at x^M under both rules: above 0.88 the flip-backs are hard under both
    for rule in EASY_RULES:
        assert _drop(rule, tau=0.9).easy.tolist() == [False] * 6 + [True, True, False, False]


def test_a_kept_flip_back_weighs_by_its_first_misclassification_step():
    x, y = _flip_back_batch()
    m, t = 3, 1.0
    hb = ham_attack(
        _Cubic(),
        x,
        y,
        eps=EPS_C,
        step_size=STEP_C,
        attack_steps=5,
        drop_step=m,
        discard_threshold=0.5,
        keep_easy_fraction=1.0,
        temperature=t,
        generator=torch.Generator().manual_seed(0),
    )
    assert hb.num_kept == len(y)
    assert (hb.easy & hb.flipped).tolist() == FLIPPED  # kept-easy AEs that flipped back
    assert bool((hb.kappa[:6] < m + 1).all()) and hb.kappa[6:8].tolist() == [m + 1, m + 1]
    expected = torch.exp(-hb.kappa.float() / t)
    assert torch.allclose(hb.weights, expected / expected.mean(), rtol=1e-5)
    # above the never-misclassified easy AEs
    assert float(hb.weights[:6].min()) > float(hb.weights[6:8].max())


def test_the_easy_rules_are_the_specs_and_a_typo_lists_them():
    assert get_args(HamConfig.model_fields["easy_rule"].annotation) == EASY_RULES
    with pytest.raises(
        ValueError,
        match=r"^easy_rule must be one of correct_at_m, never_misclassified but got 'never'$",
    ):
        _drop("never")


def test_compaction_forwards_only_kept_examples_after_step_m():
    model, x, y = _setup()
    sizes: list[int] = []
    handle = model.register_forward_hook(
        lambda mod, inp, out, sizes=sizes: sizes.append(inp[0].shape[0])
    )
    try:
        hb = ham_attack(
            model,
            x,
            y,
            eps=EPS,
            step_size=STEP,
            attack_steps=K,
            drop_step=2,
            generator=torch.Generator().manual_seed(0),
        )
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
    hb = ham_attack(
        model,
        x,
        y,
        eps=EPS,
        step_size=STEP,
        attack_steps=K,
        drop_step=2,
        generator=torch.Generator().manual_seed(0),
    )
    full = pgd(
        model, x, y, eps=EPS, step_size=STEP, steps=K, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(hb.x_adv, full[hb.index], atol=1e-6)


def test_threshold_makes_fewer_examples_easy():
    model, x, y = _setup()
    easy = {}
    for tau in (0.0, 0.5, 0.9, 0.999):
        easy[tau] = early_drop(
            model,
            x,
            y,
            eps=EPS,
            step_size=STEP,
            drop_step=2,
            discard_threshold=tau,
            generator=torch.Generator().manual_seed(0),
        ).easy
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


def test_kept_easy_examples_never_misclassified_weigh_as_kappa_m_plus_one():
    model, x, y = _setup()
    m, t = 2, 1.5
    hb = ham_attack(
        model,
        x,
        y,
        eps=EPS,
        step_size=STEP,
        attack_steps=K,
        drop_step=m,
        keep_easy_fraction=0.5,
        temperature=t,
        generator=torch.Generator().manual_seed(0),
    )
    kept_kappa = hb.kappa[hb.index]
    kept_easy = hb.easy[hb.index] & ~hb.flipped[hb.index]
    assert bool(kept_easy.any())
    assert bool((kept_kappa[kept_easy] == m + 1).all())
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
    x_pgd = pgd(
        model,
        x,
        y,
        eps=EPS,
        step_size=STEP,
        steps=K,
        generator=torch.Generator().set_state(gen_state),
    )
    hb = ham_attack(
        model,
        x,
        y,
        eps=EPS,
        step_size=STEP,
        attack_steps=K,
        drop_step=3,
        keep_easy_fraction=1.0,
        generator=torch.Generator().set_state(gen_state),
    )
    assert bool(hb.easy.any()) and hb.num_kept == len(y)
    model.train()
    pgd_at = F.cross_entropy(model(x_pgd), y)
    ham = ham_loss(model(hb.x_adv), hb.y, hb.weights, len(y), "kept")
    assert torch.equal(hb.x_adv, x_pgd)
    assert torch.allclose(ham, pgd_at, rtol=1e-6, atol=0)  # the same mean CE, up to summation order


# ---- padding the kept AEs to a few batch shapes (issue 14, part 1) ----
def test_bucket_sizes_are_powers_of_two_from_16_up_to_the_batch():
    from hamsweep.core.methods.ham import bucket

    assert [bucket(n, 128) for n in (1, 16, 17, 33, 64, 65, 128)] == [16, 16, 32, 64, 64, 128, 128]
    assert bucket(70, 100) == 100 and bucket(3, 8) == 8  # never past the batch


@pytest.mark.parametrize("tau, seed", [(0.0, 0), (0.5, 1), (0.9, 2)])
def test_padded_kept_aes_finish_the_attack_exactly_as_unpadded(tau, seed):
    """Eval mode and the summed loss make each example's step its own: zeros padded beside the kept
    AEs change none of them. The K - M steps run on the bucket's shape."""
    from hamsweep.core.methods.ham import bucket

    model, x, y = _setup(100)
    runs = {}
    for pad in (False, True):
        sizes: list[int] = []
        handle = model.register_forward_hook(
            lambda mod, inp, out, sizes=sizes: sizes.append(inp[0].shape[0])
        )
        try:
            runs[pad] = (
                ham_attack(
                    model,
                    x,
                    y,
                    eps=EPS,
                    step_size=STEP,
                    attack_steps=K,
                    drop_step=2,
                    discard_threshold=tau,
                    keep_easy_fraction=0.3,
                    temperature=1.0,
                    generator=torch.Generator().manual_seed(seed),
                    pad_buckets=pad,
                ),
                sizes,
            )
        finally:
            handle.remove()
    (plain, plain_sizes), (padded, padded_sizes) = runs[False], runs[True]
    kept, size = plain.num_kept, bucket(plain.num_kept, len(y))
    assert 0 < kept < size  # padding took place
    assert padded_sizes == plain_sizes[:3] + [size] * (K - 2) and plain_sizes[3:] == [kept] * (
        K - 2
    )
    assert torch.equal(padded.index, plain.index) and torch.equal(padded.kappa, plain.kappa)
    assert torch.equal(padded.weights, plain.weights) and torch.equal(padded.y, plain.y)
    assert padded.x_adv.shape == plain.x_adv.shape and torch.allclose(
        padded.x_adv, plain.x_adv, atol=1e-6
    )
    # the padded examples' steps are computed too
    assert padded.attack_steps == len(y) * 2 + size * (K - 2)


def test_ham_pad_buckets_trains_the_same_model():
    from hamsweep.core.train import Trainer
    from hamsweep.spec import TrialConfig

    def trained(pad: bool, tmp: str) -> dict:
        cfg = TrialConfig.model_validate(
            {
                "data": {
                    "name": "synthetic",
                    "num_classes": 4,
                    "image_size": 8,
                    "train_size": 320,
                    "val_fraction": 0.2,
                },
                "model": {"name": "small_cnn", "width": 4},
                "train": {"method": "ham", "epochs": 2, "batch_size": 64, "attack_steps": 4},
                "ham": {"warmup_epochs": 1, "drop_step": 1, "pad_buckets": pad},
                "eval": {"attack_steps": 2},
            }
        )
        t = Trainer(cfg, tmp)
        records = list(t.epochs())
        return {
            "state": t.model.state_dict(),
            "kept": records[-1].kept_fraction,
            "steps": records[-1].attack_steps,
        }

    import tempfile

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        plain, padded = trained(False, a), trained(True, b)
    # the field reached the attack
    assert plain["kept"] == padded["kept"] and padded["steps"] > plain["steps"]
    for name, weight in plain["state"].items():
        assert torch.allclose(weight, padded["state"][name], atol=1e-5), name
