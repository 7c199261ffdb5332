"""FRL's per-epoch update and per-batch loss, each checked against a recomputation written out
here (numpy and plain Python), its spec errors, its exact resume and its fork from the trunk."""

from __future__ import annotations

import copy
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import killed_and_resumed, tiny_config

from hamsweep.core import methods, models
from hamsweep.core.evaluation import EvalCounts
from hamsweep.core.methods import frl
from hamsweep.core.methods.frl import (
    FrlConfig,
    FrlState,
    ascend,
    class_errors,
    class_weights,
    eps_factors,
    update,
)
from hamsweep.core.train import Tally, run
from hamsweep.errors import SpecError
from hamsweep.spec import SweepSpec, validate

EPS, STEP, K = 8 / 255, 2 / 255, 3

# three hand-made EVALs of 4 classes: (n, clean correct, PGD correct) per class
EVALS = [
    # class 0 at 0% error, class 1 at 100% natural error, class 3 has no validation example
    ([50, 50, 40, 0], [50, 0, 30, 0], [50, 0, 12, 0]),
    ([50, 50, 40, 0], [45, 5, 20, 0], [40, 0, 5, 0]),
    # class 0 now at 100% boundary error, class 2 at 100% natural error, class 3 present
    ([50, 50, 40, 10], [50, 50, 0, 10], [0, 50, 0, 10]),
]


def _reference(evals, cfg: FrlConfig) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The multipliers and log radius factors after each EVAL, from the definitions (numpy)."""
    y = len(evals[0][0])
    phi_nat, phi_bnd, log_eps = np.zeros(y), np.zeros(y), np.zeros(y)
    out = []
    for n, clean, robust in evals:
        n, clean, robust = (np.asarray(a, dtype=float) for a in (n, clean, robust))
        seen = n > 0
        safe = np.where(seen, n, 1.0)
        nat_i, bnd_i = 1 - clean / safe, (clean - robust) / safe
        nat, bnd = 1 - clean.sum() / n.sum(), (clean.sum() - robust.sum()) / n.sum()
        gap_nat = np.where(seen, nat_i - nat - cfg.tau_nat, 0.0)
        gap_bnd = np.where(seen, bnd_i - bnd - cfg.tau_bnd, 0.0)

        def project(phi):
            phi = np.maximum(phi, 0.0)
            s = phi.sum()
            return phi * cfg.multiplier_budget / s if s > cfg.multiplier_budget else phi

        phi_nat = project(phi_nat + cfg.alpha_nat * gap_nat)
        if cfg.variant != "remargin":
            phi_bnd = project(phi_bnd + cfg.alpha_bnd * gap_bnd)
        if cfg.variant != "reweight":
            log_eps = log_eps + cfg.alpha_eps * gap_bnd
        out.append((phi_nat.copy(), phi_bnd.copy(), log_eps.copy()))
    return out


@pytest.mark.parametrize("variant", frl.VARIANTS)
@pytest.mark.parametrize("budget", [0.5, 0.02])  # 0.02: the budget binds from the first EVAL
def test_the_update_equals_the_definition_on_hand_made_errors(variant, budget):
    cfg = FrlConfig(variant=variant, multiplier_budget=budget)
    state = FrlState.zeros(4)
    for (n, clean, robust), (nat, bnd, log_eps) in zip(EVALS, _reference(EVALS, cfg)):
        state = update(state, class_errors(n, clean, robust), cfg)
        assert np.allclose(state.multiplier_nat, nat, atol=1e-12, rtol=0)
        assert np.allclose(state.multiplier_bnd, bnd, atol=1e-12, rtol=0)
        assert np.allclose(state.log_eps_factor, log_eps, atol=1e-12, rtol=0)
        assert sum(state.multiplier_nat) <= budget + 1e-12
        assert all(w > 0 for w in class_weights(state.multiplier_nat))
    if variant == "remargin":
        assert state.multiplier_bnd == (0.0,) * 4  # the boundary error moves radii, not weights
    if variant == "reweight":
        assert state.log_eps_factor == (0.0,) * 4


def test_the_first_update_by_hand():
    """EVALS[0] under the defaults: overall natural error 1 - 80/140, boundary error 18/140."""
    errors = class_errors(*EVALS[0])
    assert errors.nat == (0.0, 1.0, 0.25, None) and errors.bnd == (0.0, 0.0, 0.45, None)
    assert errors.nat_total == pytest.approx(60 / 140) and errors.bnd_total == pytest.approx(
        18 / 140
    )
    state = update(FrlState.zeros(4), errors, FrlConfig())
    # only class 1 breaks its natural constraint: 1 - 60/140 - 0.07; only class 2 its boundary one
    phi1 = 0.05 * (1 - 60 / 140 - 0.07)
    gap2 = 0.45 - 18 / 140 - 0.07
    assert state.multiplier_nat == pytest.approx((0, phi1, 0, 0))
    assert state.multiplier_bnd == pytest.approx((0, 0, 0.1 * gap2, 0))
    # the log factor falls for the classes under their tolerance, stays for the absent class 3
    assert state.log_eps_factor == pytest.approx(
        (0.4 * (0 - 18 / 140 - 0.07), 0.4 * (0 - 18 / 140 - 0.07), 0.4 * gap2, 0.0)
    )
    assert class_weights(state.multiplier_nat) == pytest.approx(
        (1 - phi1, 1 + 3 * phi1, 1 - phi1, 1 - phi1)
    )
    factors = eps_factors(state.log_eps_factor, 0.98, 3.0)
    assert factors == pytest.approx((0.98, 0.98, math.exp(0.4 * gap2), 1.0))


def test_the_projection_clamps_at_zero_and_scales_to_the_budget():
    assert ascend([0.3, 0.3, 0.0], [1.0, 1.0, -1.0], 0.1, 0.5) == pytest.approx((0.25, 0.25, 0))
    assert ascend([0.1, 0.0], [-2.0, 1.0], 0.1, 0.5) == pytest.approx((0.0, 0.1))
    assert class_weights([0.25, 0.25, 0.0]) == pytest.approx((1.25, 1.25, 0.5))  # mean 1


def test_weights_are_the_official_cost_sensitive_formula_times_the_classes():
    """utils_frl.cost_sensitive for 10 classes: 1/10 + 9/10 phi_i - 1/10 sum_{j != i} phi_j."""
    phi = np.random.default_rng(0).uniform(0, 0.05, 10)
    official = [
        0.1 + sum(0.9 * phi[j] if j == i else -0.1 * phi[j] for j in range(10)) for i in range(10)
    ]
    assert class_weights(list(phi)) == pytest.approx([10 * d for d in official])


def test_radius_factors_are_bounded():
    assert eps_factors([-1.0, 0.0, 0.5, 3.0], 0.98, 3.0) == pytest.approx(
        (0.98, 1.0, math.exp(0.5), 3.0)
    )


# ---- the step ----
def _learner(variant: str, step_rule: str = "largest_eps", state: dict | None = None, **train):
    cfg = tiny_config(
        train={"method": "frl", "attack_steps": K, **train},
        frl={"variant": variant, "step_rule": step_rule, "beta": 2.0, "warmup_epochs": 1},
    )
    torch.manual_seed(0)
    model = models.build(cfg.model, num_classes=4, in_channels=3).eval()
    if state is None:  # class 3, absent from the batch below, has the largest radius (3 eps)
        state = {
            "multiplier_nat": [0.1, 0.0, 0.2, 0.15],
            "multiplier_bnd": [0.0, 0.3, 0.05, 0.1],
            "log_eps_factor": [-0.5, 0.2, 0.7, 2.0],
        }
    return SimpleNamespace(
        cfg=cfg,
        model=model,
        generator=torch.Generator().manual_seed(7),
        method_state=copy.deepcopy(state),
        data=SimpleNamespace(num_classes=4),
        device=torch.device("cpu"),
        validate=None,  # a state is given: no EVAL
    )


def _batch():
    x = torch.rand(9, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])  # no example of class 3


def _expected(learner, x, y, before):
    """FRL's step written out: per-example radius and step, TRADES' KL attack, the loss."""
    cfg, model = learner.cfg, learner.model
    model.load_state_dict(before)
    model.eval()
    s = learner.method_state
    phi_nat, phi_bnd = np.array(s["multiplier_nat"]), np.array(s["multiplier_bnd"])
    if cfg.frl.variant == "reweight":
        factor = np.ones(4)
    else:
        factor = np.clip(np.exp(s["log_eps_factor"]), 0.98, 3.0)
    fy = factor[y.numpy()]
    steps = {"largest_eps": np.full(len(y), fy.max()), "own_eps": fy, "fixed": np.ones(len(y))}
    if cfg.frl.variant == "reweight":
        steps = {rule: np.ones(len(y)) for rule in steps}
    eps = torch.tensor(EPS * fy, dtype=torch.float32).view(-1, 1, 1, 1)
    step = torch.tensor(STEP * steps[cfg.frl.step_rule], dtype=torch.float32).view(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    x_adv = (x + 0.001 * noise).clamp(0, 1)
    with torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)
    for _ in range(K):
        x_adv.requires_grad_(True)
        kl = (p_nat * (p_nat.log() - F.log_softmax(model(x_adv), dim=1))).sum()
        (g,) = torch.autograd.grad(kl, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * g.sign(), x - eps), x + eps).clamp(0, 1)
    model.train()
    logits_nat, logits_adv = model(x), model(x_adv)
    ce = F.cross_entropy(logits_nat, y, reduction="none")
    q = F.softmax(logits_nat, dim=1)
    kl = (q * (q.log() - F.log_softmax(logits_adv, dim=1))).sum(1)
    w0 = torch.tensor(1 + 4 * phi_nat - phi_nat.sum(), dtype=torch.float32)[y]
    w1 = torch.tensor(1 + 4 * phi_bnd - phi_bnd.sum(), dtype=torch.float32)[y]
    loss = (w0 * ce).sum() / w0.sum() + 2.0 * (w1 * kl).sum() / w1.sum()
    return logits_adv, loss, steps[cfg.frl.step_rule]


@pytest.mark.parametrize(
    "variant,rule",
    [
        ("reweight", "largest_eps"),
        ("remargin", "largest_eps"),
        ("reweight_remargin", "largest_eps"),
        ("reweight_remargin", "own_eps"),
        ("reweight_remargin", "fixed"),
    ],
)
def test_the_step_equals_its_definition(variant, rule):
    learner, (x, y) = _learner(variant, rule), _batch()
    before = copy.deepcopy(learner.model.state_dict())  # the training forward moves BN statistics
    tally = Tally()
    loss, logits, y_out = frl.METHOD.step(learner, x, y, tally)
    exp_logits, exp_loss, exp_steps = _expected(learner, x, y, before)
    assert torch.equal(y_out, y)
    assert torch.allclose(logits, exp_logits, atol=1e-5)
    assert float(loss.detach()) == pytest.approx(float(exp_loss.detach()), rel=1e-5)
    assert tally.images == tally.train_examples == 9 and tally.attack_steps == 9 * K
    if variant != "reweight":  # the per-class mean step, in the class_state table
        means = tally.class_means(4)["step_size"]
        assert means[3] is None  # absent from the batch
        for c in range(3):
            assert means[c] == pytest.approx(STEP * exp_steps[y.numpy() == c].mean(), rel=1e-6)


def test_with_equal_weights_and_radii_the_step_is_trades():
    zero = {k: [0.0] * 4 for k in FrlState.__dataclass_fields__}
    learner, (x, y) = _learner("reweight", state=zero, trades_beta=2.0), _batch()
    before = copy.deepcopy(learner.model.state_dict())
    loss, logits, _ = frl.METHOD.step(learner, x, y, Tally())
    learner.model.load_state_dict(before)
    learner.model.eval()
    learner.generator = torch.Generator().manual_seed(7)
    t_loss, t_logits, _ = methods.get("trades").step(learner, x, y, Tally())
    assert torch.allclose(logits, t_logits, atol=1e-6)
    assert float(loss.detach()) == pytest.approx(float(t_loss.detach()), rel=1e-6)


def _evals(n, clean, robust):
    return (
        EvalCounts("val", "clean", tuple(n), tuple(clean)),
        EvalCounts("val", "pgd3", tuple(n), tuple(robust)),
    )


def test_the_first_batch_evaluates_the_starting_model_and_each_epoch_updates():
    learner, (x, y) = _learner("reweight_remargin", state={}), _batch()
    seeds = []

    def validate(model, seed):
        assert model is learner.model
        seeds.append(seed)
        return _evals(*EVALS[len(seeds) - 1])

    learner.validate = validate
    ref = _reference(EVALS, learner.cfg.frl)
    frl.METHOD.step(learner, x, y, Tally())
    frl.METHOD.step(learner, x, y, Tally())  # the state exists now: no second EVAL
    assert seeds == [0]  # as the trial evaluates its last warm-up epoch (frl.warmup_epochs - 1)
    assert np.allclose(learner.method_state["multiplier_nat"], ref[0][0])
    state = frl.METHOD.class_state(learner)
    assert np.allclose(state["eps"], EPS * np.clip(np.exp(ref[0][2]), 0.98, 3.0))
    assert np.allclose(state["weight"], 1 + 4 * ref[0][0] - ref[0][0].sum())
    assert np.allclose(state["multiplier_bnd"], ref[0][1])
    # an epoch that was not evaluated: FRL evaluates it itself, seeded as the trial would be
    frl.METHOD.end_epoch(learner, SimpleNamespace(epoch=5, evals=()))
    assert seeds == [0, 4]
    assert np.allclose(learner.method_state["log_eps_factor"], ref[1][2])
    # an evaluated epoch: its validation counts are reused
    frl.METHOD.end_epoch(learner, SimpleNamespace(epoch=6, evals=_evals(*EVALS[2])))
    assert seeds == [0, 4]
    assert np.allclose(learner.method_state["multiplier_bnd"], ref[2][1])


# ---- the spec ----
@pytest.mark.parametrize(
    "section,message",
    [
        (
            {"variant": "rw"},
            "frl.variant: Input should be 'reweight', 'remargin' or 'reweight_remargin' (got 'rw')",
        ),
        ({"tau_nat": 1.5}, "frl.tau_nat: tau_nat must be in [0, 1] but got 1.5"),
        ({"tau_bnd": -0.1}, "frl.tau_bnd: tau_bnd must be in [0, 1] but got -0.1"),
        ({"alpha_eps": -0.2}, "frl.alpha_eps: alpha_eps cannot be negative but got -0.2"),
        ({"alpha_nat": -1}, "frl.alpha_nat: alpha_nat cannot be negative but got -1.0"),
        (
            {"multiplier_budget": 0},
            "frl.multiplier_budget: multiplier_budget must be in (0, 1] but got 0.0",
        ),
        ({"eps_factor_max": 0.5}, "frl.eps_factor_max: eps_factor_max must be >= 1 but got 0.5"),
        (
            {"eps_factor_min": 1.2},
            "frl.eps_factor_min: eps_factor_min must be in [0, 1] but got 1.2",
        ),
        ({"warmup_epochs": -1}, "frl.warmup_epochs: warmup_epochs cannot be negative but got -1"),
        (
            {"step_rule": "max"},
            "frl.step_rule: Input should be 'largest_eps', 'own_eps' or 'fixed' (got 'max')",
        ),
    ],
)
def test_bad_knobs_are_one_line_errors_naming_the_key(section, message):
    with pytest.raises(SpecError) as err:
        validate(SweepSpec, {"frl": section})
    assert str(err.value) == message


def test_an_frl_trial_needs_its_warmup_inside_the_run_and_a_validation_split():
    with pytest.raises(SpecError) as err:
        validate(SweepSpec, {"train": {"method": "frl", "epochs": 3}, "frl": {"warmup_epochs": 5}})
    assert str(err.value) == (
        "frl.warmup_epochs: 5 is larger than train.epochs (3); warmup_epochs must be in 0..3"
    )
    with pytest.raises(SpecError, match=r"^data\.val_fraction: FRL updates .* but got 0\.0$"):
        validate(SweepSpec, {"train": {"method": "frl"}, "data": {"val_fraction": 0}})
    validate(SweepSpec, {"data": {"val_fraction": 0}})  # other methods need none


# ---- the trial: exact resume, the fork ----
CFG = tiny_config(train={"method": "frl", "epochs": 3}, frl={"warmup_epochs": 1})


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An FRL trial run through, with its own PGD-AT warm-up."""
    from hamsweep.core.data import load

    root = tmp_path_factory.mktemp("frl")
    dataset = load(CFG.data)
    records = run(CFG, workdir=root / "straight", dataset=dataset)
    return SimpleNamespace(root=root, dataset=dataset, records=records)


def _final(workdir):
    return torch.load(workdir / "checkpoint" / "last.pt", weights_only=False)


def _same_epochs(a, b):
    for ra, rb in zip(a, b):
        da, db = ra.to_dict(), rb.to_dict()
        for timing in ("seconds", "images_per_s"):
            da.pop(timing), db.pop(timing)
        assert da == db  # the loss, the per-class state and validation counts


def _same_end(a, b):
    assert a["method_state"] == b["method_state"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["generator"], b["generator"])


def test_the_per_class_state_follows_the_validation_counts(straight):
    recs = straight.records
    assert [r.phase for r in recs] == ["pgd_at", "frl", "frl"]
    assert recs[0].class_state == {}  # PGD-AT keeps none
    ref = _reference(
        [(e.n, e.correct, r.correct) for e, r in ((r.evals[0], r.val_robust()) for r in recs[:2])],
        CFG.frl,
    )
    # epoch 2 trains with the update from epoch 1's validation counts, epoch 3 with epoch 2's
    for rec, (nat, bnd, log_eps) in zip(recs[1:], ref):
        assert rec.evals[0].attack == "clean"
        s = rec.class_state
        assert np.allclose(s["multiplier_nat"], nat) and np.allclose(s["multiplier_bnd"], bnd)
        assert np.allclose(s["eps"], CFG.train.eps * np.clip(np.exp(log_eps), 0.98, 3.0))
        assert s["step_size"][0] == pytest.approx(
            CFG.train.step_size * np.clip(np.exp(log_eps), 0.98, 3.0).max(), rel=1e-6
        )


def test_a_killed_and_resumed_trial_ends_exactly_as_an_uninterrupted_one(straight):
    workdir = straight.root / "killed"
    resumed = killed_and_resumed(CFG, workdir, 2, straight.dataset)
    assert set(_final(workdir)["method_state"]) == set(FrlState.__dataclass_fields__)
    _same_epochs(straight.records[2:], resumed)
    _same_end(_final(straight.root / "straight"), _final(workdir))


def test_it_forks_from_the_pgd_at_trunk_at_its_warmup_epoch(straight):
    assert methods.fork_epoch(CFG) == 1 and CFG.selectable(2) and not CFG.selectable(1)
    trunk = CFG.model_copy(update={"train": CFG.train.model_copy(update={"method": "pgd_at"})})
    snap = straight.root / "trunk-epoch-1"

    class Enough(Exception):
        pass

    def keep(record, ckpt):
        if record.epoch == 1:
            shutil.copytree(ckpt, snap)
            raise Enough  # the rest of the trunk is not needed

    with pytest.raises(Enough):
        run(trunk, workdir=straight.root / "trunk", report=keep, dataset=straight.dataset)
    forked = run(CFG, workdir=straight.root / "fork", fork=snap, dataset=straight.dataset)
    assert [(r.epoch, r.phase) for r in forked] == [(2, "frl"), (3, "frl")]
    _same_epochs(straight.records[1:], forked)
    _same_end(_final(straight.root / "straight"), _final(straight.root / "fork"))
    best = [
        torch.load(straight.root / w / "checkpoint/best.pt", weights_only=False)
        for w in ("straight", "fork")
    ]
    assert best[0]["epoch"] == best[1]["epoch"] > 1  # an FRL epoch represents the trial
