"""CFA: its per-class radii, steps and TRADES weights, its loss on fixed batches, the weight
average's choice of epochs, its spec errors and its exact resume, each checked against a
re-computation written out here from the definitions (methods/cfa.py's docstring)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import killed_and_resumed, tiny_config

from hamsweep.core import models
from hamsweep.core.evaluation import CLEAN, EvalCounts, evaluate
from hamsweep.core.methods import cfa
from hamsweep.core.train import Tally, Trainer, run
from hamsweep.errors import SpecError
from hamsweep.spec import SweepSpec, validate

EPS, STEP, BETA = 8 / 255, 2 / 255, 6.0


def _cfg(epochs: int = 3, **knobs):
    """A tiny CFA trial, calibrating from its second epoch unless told otherwise."""
    return tiny_config(
        train={"method": "cfa", "epochs": epochs}, cfa={"calibrate_after": 1, **knobs}
    )


# ---- per-epoch quantities ----
# a class at 0%, one at 100%, one in between, one with no training example last epoch
ACC = (0.0, 1.0, 0.25, None)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.3])
def test_calibrated_eps_and_beta_are_lambda_plus_the_train_accuracy_times_the_base(lam):
    t = np.array([0.0, 1.0, 0.25])
    expected_eps = np.append((lam + t) * EPS, EPS)  # a class with no example keeps train.eps
    expected_beta = np.append((lam + t) * BETA, BETA)
    assert cfa.calibrated_eps(ACC, EPS, lam) == pytest.approx(expected_eps.tolist())
    assert cfa.calibrated_beta(ACC, BETA, lam) == pytest.approx(expected_beta.tolist())
    # the hardest class gets the smallest radius and weight, the most robust the largest
    eps = cfa.calibrated_eps(ACC, EPS, lam)
    assert eps[0] == pytest.approx(lam * EPS) and eps[1] == pytest.approx((lam + 1) * EPS)


def test_steps_are_fixed_as_the_official_code_or_scaled_with_the_radius():
    class_eps = [4 / 255, 12 / 255, 8 / 255]
    assert cfa.step_sizes(class_eps, EPS, STEP, "fixed") == [STEP] * 3
    assert cfa.step_sizes(class_eps, EPS, STEP, "scaled") == pytest.approx(
        [1 / 255, 3 / 255, 2 / 255]
    )


def test_convex_weights_sum_to_one_and_additive_ones_are_trades():
    assert cfa.loss_weights(6.0, "convex") == pytest.approx((1 / 7, 6 / 7))
    assert cfa.loss_weights(0.0, "convex") == pytest.approx((1.0, 0.0))
    assert cfa.loss_weights(3.0, "additive") == (1.0, 3.0)


def test_worst_class_accuracy_skips_classes_without_examples():
    assert cfa.worst_class_accuracy((10, 0, 4), (5, 0, 1)) == 0.25
    assert math.isnan(cfa.worst_class_accuracy((0, 0), (0, 0)))


def _ema_reference(worst, threshold, decay):
    """Closed form: the m admitted epochs e_1 < ... < e_m weigh decay^(m-1) (the first, which
    started the average) and (1 - decay) decay^(m-j) (e_j, j > 1); the others 0."""
    admitted = [i for i, w in enumerate(worst) if w >= threshold]
    out = np.zeros(len(worst))
    m = len(admitted)
    for j, i in enumerate(admitted, start=1):
        out[i] = decay ** (m - 1) if j == 1 else (1 - decay) * decay ** (m - j)
    return out


WORST = [0.0, 0.30, 0.10, math.nan, 0.24, 1.0, 0.2399, 0.5]


@pytest.mark.parametrize(
    ("threshold", "decay"), [(0.24, 0.88), (0.0, 0.5), (1.0, 0.88), (0.6, 0.88), (0.24, 0.0)]
)
def test_the_average_takes_the_epochs_at_or_above_the_threshold(threshold, decay):
    weights = cfa.fawa_weights(WORST, threshold, decay)
    assert weights == pytest.approx(_ema_reference(WORST, threshold, decay).tolist())
    assert sum(weights) == pytest.approx(1.0 if any(w >= threshold for w in WORST) else 0.0)


def test_at_024_the_epochs_of_030_024_100_and_050_enter_and_0_2399_does_not():
    weights = cfa.fawa_weights(WORST, 0.24, 0.88)
    assert [i + 1 for i, w in enumerate(weights) if w > 0] == [2, 5, 6, 8]


# ---- the per-epoch hook on a stub trial ----
def _learner(cfg):
    """What CFA sees of a trial (``methods._base.Learner``), without its data."""
    return SimpleNamespace(
        cfg=cfg,
        model=models.build(cfg.model, 4, in_channels=3).eval(),
        data=SimpleNamespace(num_classes=4),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(7),
        method_state={},
        new_model=lambda: models.build(cfg.model, 4, in_channels=3),
    )


def _record(epoch, acc=ACC, robust=None):
    """A record of 1-based ``epoch`` with the train accuracies ``acc`` and the validation PGD
    evaluation ``robust`` (None: the epoch was not evaluated)."""
    return SimpleNamespace(
        epoch=epoch, class_state={"train_robust_acc": acc}, val_robust=lambda: robust
    )


def test_calibration_starts_after_calibrate_after_epochs_from_the_last_epoch():
    cfg = _cfg(epochs=5, calibrate_after=2, lambda1=0.3, lambda2=0.4, fawa=False)
    learner = _learner(cfg)
    method = cfa.METHOD
    method.end_epoch(learner, _record(1, acc=(0.9, 0.9, 0.9, 0.9)))
    assert "eps" not in learner.method_state  # epoch 2 still trains with train.eps
    assert method.class_state(learner) == {
        "eps": [EPS] * 4,
        "step_size": [STEP] * 4,
        "beta": [BETA] * 4,
    }
    method.end_epoch(learner, _record(2))  # epoch 3 (0-based 2) calibrates from epoch 2's
    state = method.class_state(learner)
    assert state["eps"] == pytest.approx([0.3 * EPS, 1.3 * EPS, 0.55 * EPS, EPS])
    assert state["beta"] == pytest.approx([0.4 * BETA, 1.4 * BETA, 0.65 * BETA, BETA])
    assert state["step_size"] == [STEP] * 4  # the official fixed step


def test_ccr_is_off_on_the_at_base_and_ccm_can_be_turned_off():
    learner = _learner(_cfg(calibrate_after=1, base="at", fawa=False))
    cfa.METHOD.end_epoch(learner, _record(1))
    assert "beta" not in learner.method_state and "beta" not in cfa.METHOD.class_state(learner)
    learner = _learner(_cfg(calibrate_after=1, ccm=False, fawa=False))
    cfa.METHOD.end_epoch(learner, _record(1))
    assert "eps" not in learner.method_state and "beta" in learner.method_state


def test_the_average_holds_the_admitted_epochs_weights_and_is_the_evaluated_model():
    """Epoch e's model has every tensor filled with e; validation worst classes of 2/10, 3/10,
    1/10, none (no example), 10/10, 2/10: at threshold 0.24 epochs 2 and 5 enter."""
    decay = 0.75
    learner = _learner(_cfg(epochs=6, fawa_threshold=0.24, fawa_decay=decay))
    worst = [2, 3, 1, None, 10, 2]
    for epoch, c in enumerate(worst, start=1):
        with torch.no_grad():
            for value in learner.model.state_dict().values():
                value.fill_(epoch)
        # None: an evaluation in which no class had an example
        n, correct = ((0,) * 4, (0,) * 4) if c is None else ((10,) * 4, (c, 10, 10, 10))
        robust = EvalCounts("val", "pgd3", n, correct)
        cfa.METHOD.end_epoch(learner, _record(epoch, robust=robust))
        if epoch == 1:
            assert cfa.METHOD.eval_model(learner) is None  # nothing averaged yet: the trained one
    state = learner.method_state
    assert state["fawa_epochs"] == [2, 5]
    expected = 2 * decay + 5 * (1 - decay)
    average = cfa.METHOD.eval_model(learner).state_dict()
    for key, value in state["fawa"].items():
        if value.is_floating_point():
            assert torch.allclose(value, torch.full_like(value, expected)), key
        else:  # BN's batch counter: the newest admitted epoch's
            assert torch.equal(value, torch.full_like(value, 5)), key
        assert torch.equal(average[key], value)
    assert state["val_worst"][:3] == pytest.approx([0.2, 0.3, 0.1])
    assert math.isnan(state["val_worst"][3]) and state["val_worst"][4:] == [1.0, 0.2]


# ---- per-batch quantities on a tiny model and a fixed batch ----
# classes 0-2 only: class 3 is absent from the batch
X = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
CLASS_EPS = [0.5 * EPS, 1.5 * EPS, 1.0 * EPS, 0.75 * EPS]
CLASS_BETA = [3.0, 9.0, 6.0, 4.5]


def _stepped(base, step_rule="fixed", kl_weighting="convex"):
    cfg = _cfg(base=base, step_rule=step_rule, kl_weighting=kl_weighting)
    torch.manual_seed(0)
    learner = _learner(cfg)
    learner.method_state.update(eps=CLASS_EPS, beta=CLASS_BETA)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    tally = Tally()
    loss, logits, _ = cfa.METHOD.step(learner, X, Y, tally)
    learner.model.load_state_dict(before)  # the training forward moved BN statistics
    learner.model.eval()
    return learner.model, loss, logits, tally


def _per_example(values):
    return torch.tensor([values[c] for c in Y.tolist()], dtype=torch.float32).view(-1, 1, 1, 1)


@pytest.mark.parametrize("step_rule", ["fixed", "scaled"])
def test_the_at_step_attacks_each_class_in_its_own_ball(step_rule):
    model, loss, logits, tally = _stepped("at", step_rule)
    # written out: x0 = x + U(-eps_y, eps_y), K signed steps, each projected on the class's ball
    eps = _per_example(CLASS_EPS)
    steps = [STEP] * 4 if step_rule == "fixed" else [STEP * e / EPS for e in CLASS_EPS]
    step = _per_example(steps)
    noise = torch.rand(X.shape, generator=torch.Generator().manual_seed(7))
    x_adv = (X + (2 * noise - 1) * eps).clamp(0, 1)
    for _ in range(3):  # tiny_config's train.attack_steps
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), Y, reduction="sum"), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), X - eps), X + eps)
        x_adv = x_adv.clamp(0, 1)
    reach = (x_adv - X).abs().amax(dim=(1, 2, 3))
    assert (reach <= eps.flatten() + 1e-7).all() and (reach > 0.9 * eps.flatten()).all()
    expected = model.train()(x_adv).detach()
    assert torch.equal(logits.detach(), expected)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(expected, Y)))
    _check_train_accuracy(tally, expected)


def _check_train_accuracy(tally, logits):
    """The tally holds each class's accuracy on its AEs; class 3 had none (None)."""
    correct = (logits.argmax(1) == Y).numpy()
    y = Y.numpy()
    expected = [float(correct[y == k].mean()) for k in range(3)] + [None]
    means = tally.class_means(4)["train_robust_acc"]
    assert means[:3] == pytest.approx(expected[:3]) and means[3] is None


@pytest.mark.parametrize("kl_weighting", ["convex", "additive"])
def test_the_trades_step_weighs_each_class_by_its_beta(kl_weighting):
    from hamsweep.core.attacks import trades_attack

    model, loss, logits, tally = _stepped("trades", kl_weighting=kl_weighting)
    # the attack with per-example radii built by hand; the loss written out per example
    x_adv = trades_attack(
        model,
        X,
        eps=_per_example(CLASS_EPS).flatten(),
        step_size=STEP,
        steps=3,
        generator=torch.Generator().manual_seed(7),
    )
    model.train()
    with torch.no_grad():
        nat, adv = model(X), model(x_adv)
    assert torch.equal(logits.detach(), adv)
    p, log_p, log_q = nat.softmax(1), nat.log_softmax(1), adv.log_softmax(1)
    kl = (p * (log_p - log_q)).sum(1)
    ce = -log_p[torch.arange(8), Y]
    beta = torch.tensor([CLASS_BETA[c] for c in Y.tolist()])
    if kl_weighting == "convex":
        per_example = ce / (1 + beta) + kl * beta / (1 + beta)
    else:
        per_example = ce + beta * kl
    assert float(loss.detach()) == pytest.approx(float(per_example.mean()), rel=1e-5)
    _check_train_accuracy(tally, adv)


# ---- whole trials ----
def test_before_calibration_the_at_base_trains_exactly_like_pgd_at(tmp_path, dataset):
    cfg = _cfg(epochs=2, base="at", calibrate_after=2, fawa=False)
    pgd_at = tiny_config(train={"method": "pgd_at", "epochs": 2})
    a, b = Trainer(cfg, tmp_path / "a", dataset), Trainer(pgd_at, tmp_path / "b", dataset)
    for rec_a, rec_b in zip(a.epochs(), b.epochs()):
        assert rec_a.train_loss == rec_b.train_loss
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    assert "eps" in a.method_state  # epoch 3 would have calibrated


def test_an_epoch_the_trial_does_not_evaluate_is_evaluated_for_the_average(tmp_path, dataset):
    cfg = _cfg(epochs=2, calibrate_after=1, fawa_threshold=0.0)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"every_epochs": 2})})
    trainer = Trainer(cfg, tmp_path, dataset)
    epochs = trainer.epochs()
    first = next(epochs)
    assert first.val_robust() is None  # not an evaluation epoch of the trial
    evals = evaluate(trainer.model, dataset.val, "val", cfg, 4, seed=0)
    robust = next(e for e in evals if e.attack != CLEAN)
    worst = cfa.worst_class_accuracy(robust.n, robust.correct)
    assert trainer.method_state["val_worst"] == [worst]
    assert trainer.method_state["fawa_epochs"] == [1]
    second = next(epochs)
    assert second.val_robust() is not None and len(trainer.method_state["val_worst"]) == 2
    # the epoch is judged by the average: best.pt holds it
    best = torch.load(tmp_path / "checkpoint" / "best.pt", weights_only=False)
    average = trainer.method_state["fawa"]
    assert all(torch.equal(best["model"][k], v) for k, v in average.items())


@pytest.mark.parametrize("base", ["at", "trades"])
def test_a_killed_and_resumed_trial_ends_with_the_same_state(tmp_path, dataset, base):
    cfg = _cfg(epochs=4, base=base, calibrate_after=1, fawa_threshold=0.0, fawa_decay=0.5)
    straight = run(cfg, workdir=tmp_path / "straight", dataset=dataset)

    resumed = killed_and_resumed(cfg, tmp_path / "killed", 2, dataset)
    a = torch.load(tmp_path / "straight/checkpoint/last.pt", weights_only=False)
    b = torch.load(tmp_path / "killed/checkpoint/last.pt", weights_only=False)
    for key in ("model", "optimizer"):
        assert _equal(a[key], b[key]), key
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert _equal(a["method_state"], b["method_state"])
    assert a["method_state"]["fawa_epochs"] == [1, 2, 3, 4]
    assert set(a["method_state"]) >= {"eps", "train_robust_acc", "fawa", "val_worst"}
    for r, s in zip(straight[2:], resumed):
        r, s = r.to_dict(), s.to_dict()
        for timing in ("seconds", "images_per_s"):
            r.pop(timing), s.pop(timing)
        assert r == s  # per-class eps, beta, train accuracies, the average's evaluations


def _equal(a, b) -> bool:
    """Nested dicts and lists of tensors and numbers, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


# ---- the spec ----
@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"lambda1": -0.1}, "cfa.lambda1: lambda1 must be >= 0 but got -0.1"),
        ({"lambda2": -1}, "cfa.lambda2: lambda2 must be >= 0 but got -1.0"),
        (
            {"calibrate_after": 0},
            "cfa.calibrate_after: calibrate_after must be >= 1 (CCM reads the previous epoch's "
            "accuracies) but got 0",
        ),
        (
            {"fawa_threshold": 1.5},
            "cfa.fawa_threshold: fawa_threshold must be in [0, 1] but got 1.5",
        ),
        ({"fawa_decay": -0.1}, "cfa.fawa_decay: fawa_decay must be in [0, 1] but got -0.1"),
        ({"base": "fat"}, "cfa.base: Input should be 'at' or 'trades' (got 'fat')"),
        (
            {"step_rule": "eps/4"},
            "cfa.step_rule: Input should be 'fixed' or 'scaled' (got 'eps/4')",
        ),
        (
            {"kl_weighting": "sum"},
            "cfa.kl_weighting: Input should be 'convex' or 'additive' (got 'sum')",
        ),
    ],
)
def test_bad_knobs_are_one_line_errors_naming_the_key(section, message):
    with pytest.raises(SpecError) as err:
        validate(SweepSpec, {"cfa": section})
    assert str(err.value) == message
