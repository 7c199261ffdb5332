"""FAAL's definition, checked against re-computations written out here: the KL ball's worst case
against a direct numerical solution (SLSQP over the simplex, fine grids), a batch's weights and
loss recomputed in numpy on a tiny model, the spec's errors, the fork from a PGD-AT trunk and the
resume of a killed trial."""

from __future__ import annotations

import copy
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import killed_and_resumed, tiny_config
from scipy.optimize import minimize

from hamsweep.core import attacks, models
from hamsweep.core.methods import TRUNK_METHOD, faal
from hamsweep.core.methods.faal import (
    DIVERGENCES,
    class_means,
    class_weights,
    margins,
    worst_case_distribution,
)
from hamsweep.core.train import Tally, Trainer, run
from hamsweep.errors import SpecError
from hamsweep.spec import TrialConfig, validate

RNG = np.random.default_rng(0)


# ---- the reference: the problem solved directly ----
def _kl(a: np.ndarray, b: np.ndarray) -> float:
    """KL(a || b), 0 log 0 = 0, written out."""
    return float(sum(x * np.log(x / y) for x, y in zip(a, b) if x > 0))


def _divergence(q: np.ndarray, p: np.ndarray, divergence: str) -> float:
    return _kl(p, q) if divergence == "kl_uniform_q" else _kl(q, p)


def _direct(scores, eta: float, divergence: str) -> np.ndarray:
    """max sum q a over the simplex subject to D(q, uniform) <= eta, by SLSQP from a few starts."""
    a = np.asarray(scores, float)
    k = len(a)
    p = np.full(k, 1 / k)

    def constraint(q):
        q = np.clip(q, 1e-300, None)
        return eta - (
            np.sum(p * np.log(p / q)) if divergence == "kl_uniform_q" else q @ np.log(q / p)
        )

    best = None
    for lean in (0.0, 0.5, 0.9):  # from the centre, and leaning toward the max-score class
        x0 = (1 - lean) * p + lean * (a == a.max()) / (a == a.max()).sum()
        x0 = np.clip(x0, 1e-6, None)
        res = minimize(
            lambda q: -(a @ q),
            x0 / x0.sum(),
            jac=lambda q: -a,
            method="SLSQP",
            bounds=[(1e-12, 1.0)] * k,
            constraints=[
                {"type": "eq", "fun": lambda q: q.sum() - 1},
                {"type": "ineq", "fun": constraint},
            ],
            options={"ftol": 1e-15, "maxiter": 2000},
        )
        if constraint(res.x) > -1e-9 and (best is None or a @ res.x > a @ best):
            best = res.x
    assert best is not None
    return best / best.sum()


CASES = [
    (RNG.normal(size=2), 0.05),
    (RNG.normal(size=3), 0.3),
    (RNG.uniform(-1, 1, size=4), 0.5),  # margins: in [-1, 1]
    (RNG.uniform(-1, 1, size=10), 0.5),  # CIFAR-10 at the code's radius
    (RNG.uniform(-1, 1, size=10), 0.01),
    (RNG.normal(size=6) * 5 + 2, 1.2),
    (np.array([0.3, 0.3, -0.2, 0.1]), 0.4),  # two classes tied at the top
]


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("scores,eta", CASES)
def test_the_dual_matches_the_problem_solved_directly(scores, eta, divergence):
    q = worst_case_distribution(scores, eta, divergence)
    ref = _direct(scores, eta, divergence)
    p = np.full(len(scores), 1 / len(scores))
    assert q.sum() == pytest.approx(1, abs=1e-12) and (q >= 0).all()
    assert _divergence(q, p, divergence) <= eta + 1e-9  # feasible ...
    assert scores @ q >= scores @ ref - 1e-9  # ... and at least as good as the direct solution
    assert np.abs(q - ref).max() < 1e-4
    if divergence == "kl_uniform_q" or eta < np.log(len(scores) / (scores == scores.max()).sum()):
        # below the face of the max-score classes the constraint is active: KL = eta
        assert _divergence(q, p, divergence) == pytest.approx(eta, rel=1e-9)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_two_and_three_classes_against_a_fine_grid(divergence):
    for k, step, scores, eta in ((2, 2e-6, np.array([0.4, -0.1]), 0.1), (3, 1 / 1500, None, 0.3)):
        if k == 2:
            x = np.arange(step, 1, step)
            grid = np.stack([x, 1 - x], axis=1)
        else:
            scores = np.array([0.2, -0.5, 0.7])
            i, j = np.meshgrid(np.arange(1, 1500), np.arange(1, 1500), indexing="ij")
            keep = i + j < 1500
            grid = np.stack([i[keep], j[keep], 1500 - i[keep] - j[keep]], axis=1) * step
        p = 1 / k
        if divergence == "kl_uniform_q":
            d = np.sum(p * np.log(p / grid), axis=1)
        else:
            d = np.sum(grid * np.log(grid / p), axis=1)
        feasible = grid[d <= eta]
        best = feasible[np.argmax(feasible @ scores)]
        q = worst_case_distribution(scores, eta, divergence)
        spread = scores.max() - scores.min()
        assert q @ scores >= best @ scores - 1e-12  # the grid's best point is feasible
        assert q @ scores - best @ scores < 5 * step * spread * k  # and one cell from the optimum
        assert np.abs(q - best).max() < 20 * step


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_the_limits_equal_scores_zero_radius_and_a_huge_radius(divergence):
    uniform = np.full(5, 0.2)
    same = np.full(5, 0.37)
    assert np.array_equal(worst_case_distribution(same, 3.0, divergence), uniform)
    scores = np.array([0.1, -0.4, 0.6, 0.0, 0.2])
    assert np.array_equal(worst_case_distribution(scores, 0.0, divergence), uniform)
    vertex = worst_case_distribution(scores, 1e6, divergence)
    assert vertex[2] == pytest.approx(1, abs=1e-12)  # every mass on the worst class
    tied = worst_case_distribution(np.array([0.6, -0.4, 0.6, 0.0, 0.2]), 1e6, divergence)
    assert tied[0] == pytest.approx(0.5, abs=1e-12) and tied[2] == pytest.approx(0.5, abs=1e-12)
    # shifting or scaling the scores moves no weight: a linear objective over a fixed ball
    moved = worst_case_distribution(3 * scores + 7, 0.5, divergence)
    assert np.allclose(moved, worst_case_distribution(scores, 0.5, divergence), atol=1e-10)


def test_the_tilting_ball_reaches_the_vertex_once_it_holds_it():
    scores = np.array([0.1, -0.4, 0.6, 0.0])  # one max: KL(vertex || uniform) = log 4
    at = worst_case_distribution(scores, np.log(4), "kl_q_uniform")
    assert np.array_equal(at, np.array([0.0, 0.0, 1.0, 0.0]))
    below = worst_case_distribution(scores, np.log(4) - 1e-3, "kl_q_uniform")
    assert 0.9 < below[2] < 1 and _kl(below, np.full(4, 0.25)) == pytest.approx(np.log(4) - 1e-3)
    # the code's ball never reaches it: every class keeps some weight for a finite radius
    assert (worst_case_distribution(scores, 5.0, "kl_uniform_q") > 0).all()


# ---- the batch's weights ----
def test_an_absent_class_is_left_out_and_weighs_zero():
    means = np.array([0.2, np.nan, -0.6, 0.5])
    counts = np.array([3, 0, 4, 2])
    w = class_weights(means, counts, 0.5, "kl_uniform_q", "class_mean")
    q = _direct(means[[0, 2, 3]], 0.5, "kl_uniform_q")  # the problem over the 3 classes present
    assert w[1] == 0
    assert np.allclose(w[[0, 2, 3]], 3 * q, atol=3e-4)
    assert w[[0, 2, 3]].mean() == pytest.approx(1)
    assert w[3] > w[0] > w[2]  # the larger the margin (the less robust), the larger the weight


def test_the_codes_objective_weighs_each_class_by_its_count_and_keeps_absent_ones():
    means = np.array([0.2, np.nan, -0.6, 0.5])
    counts = np.array([3, 0, 4, 2])
    w = class_weights(means, counts, 0.5, "kl_uniform_q", "example_sum")
    # the code: sum_i p[y_i] a[y_i] = sum_c n_c p_c a_c over all 4 classes, absent at 0
    q = _direct(np.array([3 * 0.2, 0.0, 4 * -0.6, 2 * 0.5]), 0.5, "kl_uniform_q")
    assert np.allclose(w, 4 * q, atol=4e-4)
    assert w[1] > 0 and w.mean() == pytest.approx(1)


def test_classes_at_0_and_100_percent_robust_accuracy_get_the_largest_and_smallest_weight():
    # class 0: every AE classified right with confidence (margin -1); class 2: every AE wrong
    logits = torch.tensor(
        [[9.0, 0, 0], [8.0, 0, 0], [0, 1.0, 0.5], [0, 0.5, 1.0], [4.0, 0, 0], [0, 5.0, 0]]
    )
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    means, counts = class_means(margins(logits, y), y, 3)
    prob = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    own = [max(np.delete(prob[i], y[i])) - prob[i, y[i]] for i in range(6)]
    assert np.allclose(means, [np.mean(own[0:2]), np.mean(own[2:4]), np.mean(own[4:6])], atol=1e-6)
    assert counts.tolist() == [2, 2, 2] and means[0] < -0.99 and means[2] > 0.9
    for divergence in DIVERGENCES:
        w = class_weights(means, counts, 0.5, divergence)
        assert w.argmax() == 2 and w.argmin() == 0


def test_margins_and_class_means_by_hand():
    g = torch.Generator().manual_seed(3)
    logits, y = torch.randn(12, 5, generator=g), torch.tensor([0, 1, 1, 3, 0, 0, 3, 1, 1, 0, 3, 3])
    m = margins(logits, y).numpy()
    prob = torch.softmax(logits, 1).numpy()
    for i in range(12):
        assert m[i] == pytest.approx(max(np.delete(prob[i], y[i])) - prob[i, y[i]], abs=1e-6)
    means, counts = class_means(torch.tensor(m), y, 5)
    assert counts.tolist() == [4, 4, 0, 4, 0] and np.isnan(means[[2, 4]]).all()
    assert means[3] == pytest.approx(np.mean(m[[3, 6, 10, 11]].astype(np.float64)), abs=1e-12)


# ---- the step on a fixed batch, recomputed ----
def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


@pytest.mark.parametrize(
    "knobs",
    [
        {},  # the defaults: CE, margins, KL(p || q), the classes present
        {"class_loss": "train_loss", "divergence": "kl_q_uniform", "eta": 0.2},
        {"loss": "trades", "objective": "example_sum", "eta": 1.0},
    ],
)
def test_a_step_recomputed_on_a_fixed_batch(knobs):
    cfg = tiny_config(train={"method": "faal"}, faal=knobs)
    f, t = cfg.faal, cfg.train
    torch.manual_seed(0)
    model = models.build(cfg.model, num_classes=4, in_channels=3).eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2] * 8)  # class 3 absent from the batch
    learner = SimpleNamespace(cfg=cfg, model=model, generator=torch.Generator().manual_seed(7))
    tally = Tally()
    loss, logits, y_used = faal.METHOD.step(learner, x, y, tally)

    # the same attack and forward, then every quantity in numpy
    model.load_state_dict(before)
    model.eval()
    gen, kw = torch.Generator().manual_seed(7), dict(eps=t.eps, step_size=t.step_size)
    if f.loss == "at":
        x_adv = attacks.pgd(model, x, y, steps=t.attack_steps, generator=gen, **kw)
        z_adv = model.train()(x_adv).detach().numpy()
        per_example = -_log_softmax(z_adv)[np.arange(24), y]
    else:
        x_adv = attacks.trades_attack(model, x, steps=t.attack_steps, generator=gen, **kw)
        model.train()
        z_nat, z_adv = model(x).detach().numpy(), model(x_adv).detach().numpy()
        lp_nat, lp_adv = _log_softmax(z_nat), _log_softmax(z_adv)
        kl = (np.exp(lp_nat) * (lp_nat - lp_adv)).sum(1)
        per_example = -lp_nat[np.arange(24), y] + t.trades_beta * kl
    assert np.allclose(logits.detach().numpy(), z_adv, atol=1e-5)
    prob = np.exp(_log_softmax(z_adv))
    if f.class_loss == "margin":
        score = np.array([max(np.delete(prob[i], y[i])) - prob[i, y[i]] for i in range(24)])
    else:
        score = per_example
    mean = np.array([score[y.numpy() == c].mean() for c in range(3)])
    if f.objective == "class_mean":  # the 3 classes present
        w = np.append(3 * _direct(mean, f.eta, f.divergence), 0.0)
    else:  # all 4 classes, each scored by its count (8) times its mean, class 3 at 0
        w = 4 * _direct(np.append(8 * mean, 0.0), f.eta, f.divergence)
    expected = (w[y.numpy()] * per_example).sum() / 24
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    assert torch.equal(y_used, y) and tally.images == 24 and tally.attack_steps == 24 * 3
    state = tally.class_means(4)
    assert np.allclose(state["weight"][:3], w[:3], atol=1e-3) and state["weight"][3] is None
    correct = prob.argmax(1) == y.numpy()
    assert state["train_robust_acc"][:3] == pytest.approx(
        [correct[y.numpy() == c].mean() for c in range(3)]
    )


# ---- the spec ----
ETA = "eta must be a finite KL radius >= 0 (nats; 0 = uniform) but got"


@pytest.mark.parametrize(
    "section,message",
    [
        ({"eta": -0.1}, f"faal.eta: {ETA} -0.1"),
        ({"eta": float("inf")}, f"faal.eta: {ETA} inf"),
        ({"warmup_epochs": -1}, "faal.warmup_epochs: warmup_epochs cannot be negative but got -1"),
        (
            {"divergence": "kl"},
            "faal.divergence: Input should be 'kl_uniform_q' or 'kl_q_uniform' (got 'kl')",
        ),
        (
            {"class_loss": "ce"},
            "faal.class_loss: Input should be 'margin' or 'train_loss' (got 'ce')",
        ),
        (
            {"objective": "sum"},
            "faal.objective: Input should be 'class_mean' or 'example_sum' (got 'sum')",
        ),
        ({"loss": "mart"}, "faal.loss: Input should be 'at' or 'trades' (got 'mart')"),
    ],
)
def test_each_bad_knob_is_one_line_naming_its_key(section, message):
    with pytest.raises(SpecError) as err:
        validate(TrialConfig, {"faal": section})
    assert str(err.value) == message


def test_a_warmup_past_the_run_is_refused():
    with pytest.raises(SpecError) as err:
        validate(
            TrialConfig, {"train": {"method": "faal", "epochs": 4}, "faal": {"warmup_epochs": 5}}
        )
    assert str(err.value) == (
        "faal.warmup_epochs: 5 is larger than train.epochs (4); warmup_epochs must be in 0..4"
    )


# ---- the trial: the radius 0, the fork, the resume ----
def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_records(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        x, y = x.to_dict(), y.to_dict()
        for timing in ("seconds", "images_per_s"):
            x.pop(timing), y.pop(timing)
        assert x == y  # the loss, every per-class count, weight and train robust accuracy


def test_a_zero_radius_trains_exactly_like_pgd_at(tmp_path, dataset):
    cfg = tiny_config(train={"method": "faal", "epochs": 1}, faal={"eta": 0.0})
    a = Trainer(cfg, tmp_path / "faal", dataset)
    b = Trainer(tiny_config(train={"method": "pgd_at", "epochs": 1}), tmp_path / "pgd", dataset)
    rec = next(a.epochs())
    next(b.epochs())
    assert rec.phase == "faal" and set(rec.class_state["weight"]) == {1.0}
    assert _equal_states(a.model.state_dict(), b.model.state_dict())


def test_it_forks_from_the_pgd_at_trunk_at_its_warmup_epoch(tmp_path, dataset):
    cfg = tiny_config(train={"method": "faal", "epochs": 4}, faal={"warmup_epochs": 2, "eta": 1.0})
    assert cfg.fork_epoch() == 2
    assert [faal.METHOD.phase(cfg, e) for e in range(4)] == [TRUNK_METHOD] * 2 + ["faal"] * 2
    scratch = run(cfg, workdir=tmp_path / "scratch", dataset=dataset)
    assert [r.phase for r in scratch] == ["pgd_at", "pgd_at", "faal", "faal"]
    assert all(not r.class_state for r in scratch[:2])  # PGD-AT keeps no per-class state
    assert all(len(set(r.class_state["weight"])) == 4 for r in scratch[2:])  # unequal weights

    # the trunk: the same trial as PGD-AT, FAAL's knobs at anything (a trunk never reads them)
    trunk = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(update={"method": "pgd_at"}),
            "faal": cfg.faal.model_copy(update={"warmup_epochs": 0, "eta": 0.1}),
        }
    )
    snaps = {e: tmp_path / f"trunk-{e}" for e in (1, 2)}

    def keep(record, ckpt):
        if record.epoch in snaps:
            shutil.copytree(ckpt, snaps[record.epoch])

    run(trunk, workdir=tmp_path / "trunk", report=keep, dataset=dataset)
    forked = run(cfg, workdir=tmp_path / "fork", fork=snaps[2], dataset=dataset)
    assert [r.epoch for r in forked] == [3, 4]
    _same_records(scratch[2:], forked)
    final = [
        torch.load(tmp_path / w / "checkpoint/last.pt", weights_only=False)
        for w in ("scratch", "fork")
    ]
    assert _equal_states(final[0]["model"], final[1]["model"])
    best = torch.load(tmp_path / "fork/checkpoint/best.pt", weights_only=False)
    assert best["epoch"] > 2  # a FAAL trial is represented by a FAAL epoch
    with pytest.raises(SpecError, match=r"holds epoch 1, not faal.warmup_epochs \(2\)"):
        run(cfg, workdir=tmp_path / "fork-early", fork=snaps[1], dataset=dataset)


def test_a_killed_and_resumed_trial_ends_with_the_same_weights(tmp_path, dataset):
    cfg = tiny_config(train={"method": "faal", "epochs": 3}, faal={"warmup_epochs": 1})
    straight = run(cfg, workdir=tmp_path / "straight", dataset=dataset)

    resumed = killed_and_resumed(cfg, tmp_path / "killed", 2, dataset)
    _same_records(straight[-1:], resumed)
    a, b = (
        torch.load(tmp_path / w / "checkpoint/last.pt", weights_only=False)
        for w in ("straight", "killed")
    )
    assert _equal_states(a["model"], b["model"]) and a["method_state"] == b["method_state"] == {}
