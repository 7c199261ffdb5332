"""WAT's Hedge weights and weighted TRADES loss, checked against re-computations written out here
in numpy (the paper's exponential weights, and the official code's formula for its option)."""

from __future__ import annotations

import copy
import dataclasses
import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import killed_and_resumed, tiny_config

from hamsweep.core import models
from hamsweep.core.attacks import trades_attack
from hamsweep.core.data import DeviceLoader, load
from hamsweep.core.methods import trades, wat
from hamsweep.core.train import Tally, Trainer, run
from hamsweep.errors import SpecError
from hamsweep.spec import SweepSpec, TrialConfig, validate

K = 4  # the tiny config's classes


# ---- numpy references ----
def _np_hedge(losses: np.ndarray, eta: float) -> np.ndarray:
    """Hedge run round by round: q_1 uniform, q_{t+1, a} = q_{t, a} exp(eta c_{t, a}) / Z.
    losses: (T, A) -> (A,) after the T rounds."""
    q = np.full(losses.shape[1], 1 / losses.shape[1])
    for c in losses:
        q = q * np.exp(eta * (c - c.max()))  # shifted by a constant: Z absorbs it
        q = q / q.sum()
    return q


def _np_class_weights(losses: np.ndarray, eta: float, scale: str, k: int = K) -> np.ndarray:
    """A class-k example's multiplier in the loss after the rounds ``losses`` (T, K + 1)."""
    if scale == "times_classes":  # the official code: class_factor = exp(eta * summed costs)
        if len(losses) == 0:
            return np.full(k, 2.0)  # weights initialised to ones, one per arm
        factor = np.exp(eta * losses.sum(axis=0))
        w = k * factor / factor.sum()
        return w[:k] + w[k]
    q = _np_hedge(losses, eta) if len(losses) else np.full(k + 1, 1 / (k + 1))
    return k * q[:k] + q[k]


def _np_trades(nat: np.ndarray, adv: np.ndarray, y: np.ndarray, beta: float) -> np.ndarray:
    """(B,) CE(nat, y) + beta KL(softmax(nat) || softmax(adv)) per example, from logits."""

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp_nat, lp_adv = log_softmax(nat.astype(np.float64)), log_softmax(adv.astype(np.float64))
    ce = -lp_nat[np.arange(len(y)), y]
    kl = (np.exp(lp_nat) * (lp_nat - lp_adv)).sum(axis=1)
    return ce + beta * kl


def _np_arm_losses(loss: np.ndarray, y: np.ndarray, k: int = K) -> np.ndarray:
    out = [loss[y == c].mean() if (y == c).any() else loss.mean() for c in range(k)]
    return np.array([*out, loss.mean()])


# ---- the per-epoch quantities ----
LOSSES = np.array(  # three epochs of per-arm validation losses: 4 classes, then the average
    [[1.2, 0.9, 2.0, 1.5, 1.4], [1.1, 0.8, 1.9, 1.6, 1.35], [1.0, 0.0, 2.2, 1.4, 1.15]]
)


@pytest.mark.parametrize("scale", wat.AVERAGE_SCALES)
@pytest.mark.parametrize("eta", [0.1, 1.0])
def test_the_hedge_weights_are_recomputed_from_given_losses(scale, eta):
    for t in range(len(LOSSES) + 1):
        cumulative = torch.tensor(LOSSES[:t].sum(axis=0) if t else np.zeros(K + 1))
        w = wat.arm_weights(cumulative, eta, K, updates=t, average_scale=scale)
        got = wat.class_weights(w, K).numpy()
        np.testing.assert_allclose(got, _np_class_weights(LOSSES[:t], eta, scale), rtol=1e-12)
    # the game's expectation: sum_k (K q_k + q_avg) = K (1 - q_avg) + K q_avg = K, so the
    # multipliers average 1 over the classes whatever q is (uniform q: plain TRADES)
    if scale == "probability":
        assert got.sum() == pytest.approx(K)


def test_the_hardest_class_gains_and_a_class_at_zero_loss_loses():
    w = [
        wat.class_weights(
            wat.arm_weights(torch.tensor(LOSSES[:t].sum(axis=0)), 1.0, K, updates=t), K
        )
        for t in range(1, 4)
    ]
    assert int(w[-1].argmax()) == 2  # class 2 has the largest loss every epoch
    # class 1's loss is 0 in epoch 3: the others' weights grow by exp(eta c), its own stays put,
    # so it loses weight relative to every class with a positive loss
    assert w[2][1] < w[1][1] and int(w[-1].argmin()) == 1
    q = wat.hedge(torch.tensor(LOSSES.sum(axis=0)), 1.0).numpy()
    np.testing.assert_allclose(q, _np_hedge(LOSSES, 1.0), rtol=1e-12)
    assert q.sum() == pytest.approx(1.0)


def test_equal_or_zero_losses_leave_the_weights_uniform_and_large_ones_stay_finite():
    for cumulative in (torch.zeros(K + 1), torch.full((K + 1,), 3.0)):
        w = wat.arm_weights(cumulative, 0.5, K, updates=2)
        np.testing.assert_allclose(wat.class_weights(w, K).numpy(), np.ones(K))
    # eta * S in the thousands (exp overflows in the official code's formula): all on the worst
    w = wat.arm_weights(torch.tensor([5e3, 0.0, 0.0, 0.0, 0.0]), 1.0, K, updates=50)
    assert torch.isfinite(w).all() and w.tolist() == [4.0, 0.0, 0.0, 0.0, 0.0]


def test_without_the_average_arm_the_weights_are_k_times_q_over_the_classes():
    cumulative = torch.tensor(LOSSES[:, :K].sum(axis=0))
    w = wat.arm_weights(cumulative, 0.3, K, updates=3)
    assert len(w) == K
    np.testing.assert_allclose(w.numpy(), K * _np_hedge(LOSSES[:, :K], 0.3), rtol=1e-12)
    np.testing.assert_allclose(wat.class_weights(w, K).numpy(), w.numpy())


def test_arm_losses_are_class_means_and_an_absent_class_costs_the_average():
    loss = np.array([0.5, 1.5, 2.0, 0.2, 0.4, 3.0, 1.0])
    y = np.array([0, 0, 1, 3, 3, 1, 0])  # no class 2
    got = wat.arm_losses(torch.tensor(loss, dtype=torch.float32), torch.tensor(y), K)
    np.testing.assert_allclose(got.numpy(), _np_arm_losses(loss, y), rtol=1e-6)
    assert len(wat.arm_losses(torch.tensor(loss), torch.tensor(y), K, average_arm=False)) == K
    with pytest.raises(ValueError, match="validation split is empty"):
        wat.arm_losses(torch.zeros(0), torch.zeros(0, dtype=torch.int64), K)


# ---- the per-batch quantities ----
@pytest.mark.parametrize("scale", wat.AVERAGE_SCALES)
def test_the_weighted_trades_loss_on_a_batch_missing_a_class(scale):
    gen = torch.Generator().manual_seed(3)
    nat, adv = torch.randn(9, K, generator=gen) * 3, torch.randn(9, K, generator=gen) * 3
    y = torch.tensor([0, 1, 3, 3, 0, 1, 1, 3, 0])  # class 2 absent
    w = wat.arm_weights(
        torch.tensor(LOSSES[:2].sum(axis=0)), 0.7, K, updates=2, average_scale=scale
    )
    per_example = wat.trades_per_example(nat, adv, y, beta=6.0)
    loss = wat.weighted_loss(per_example, wat.example_weights(w, y, K))

    m = _np_class_weights(LOSSES[:2], 0.7, scale)[y.numpy()]
    ref = _np_trades(nat.numpy(), adv.numpy(), y.numpy(), 6.0)
    np.testing.assert_allclose(per_example.numpy(), ref, rtol=1e-5)
    # divided by the batch, not by the weights present: class 2's absence changes no other weight
    assert float(loss) == pytest.approx(float((m * ref).sum() / len(y)), rel=1e-5)


@functools.cache
def _data():
    return load(tiny_config().data)


def _learner(cfg: TrialConfig, state: dict | None = None, seed: int = 7) -> SimpleNamespace:
    torch.manual_seed(0)
    model = models.build(cfg.model, num_classes=K, in_channels=3).eval()
    data = dataclasses.replace(_data(), test=None)  # any read of the test split fails

    def batches(split, batch_size=None):  # as Trainer.batches: in order, no augmentation
        size = batch_size or cfg.eval.batch_size
        return DeviceLoader(split, size, device=torch.device("cpu"), seed=0, shuffle=False).epoch(0)

    return SimpleNamespace(
        cfg=cfg,
        model=model,
        data=data,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(seed),
        method_state=dict(state or {}),
        batches=batches,
    )


def test_the_step_is_the_trades_attack_and_the_hedge_weighted_trades_loss():
    cfg = tiny_config(train={"method": "wat"}, wat={"eta": 0.5})
    cumulative = LOSSES[:2].sum(axis=0)
    state = {"cumulative_loss": cumulative.tolist(), "updates": 2}
    learner = _learner(cfg, state)
    before = copy.deepcopy(learner.model.state_dict())
    x, y = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(12) % 3
    tally = Tally()
    loss, logits, y_used = wat.METHOD.step(learner, x, y, tally)  # class 3 absent from the batch

    # the same attack from the same generator, then the loss written out in numpy
    model = learner.model
    model.load_state_dict(before)
    model.eval()
    t = cfg.train
    x_adv = trades_attack(
        model,
        x,
        eps=t.eps,
        step_size=t.step_size,
        steps=t.attack_steps,
        generator=torch.Generator().manual_seed(7),
    )
    model.train()
    nat, adv = model(x).detach().numpy(), model(x_adv).detach().numpy()
    m = _np_class_weights(LOSSES[:2], 0.5, "probability")[y.numpy()]
    ref = (m * _np_trades(nat, adv, y.numpy(), t.trades_beta)).mean()
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)
    np.testing.assert_allclose(logits.detach().numpy(), adv, rtol=1e-5, atol=1e-6)
    assert torch.equal(y_used, y)
    assert tally.images == tally.train_examples == 12 and tally.attack_steps == 12 * t.attack_steps


def test_before_any_update_the_step_is_trades():
    cfg = tiny_config(train={"method": "wat"})
    x, y = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(2)), torch.arange(16) % 4
    losses = []
    for method in (wat.METHOD, trades.METHOD):
        learner = _learner(cfg)
        losses.append(float(method.step(learner, x, y, Tally())[0].detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


# ---- the per-epoch update on the validation split ----
def test_end_epoch_adds_the_validation_losses_of_a_seeded_attack_and_never_reads_test():
    cfg = tiny_config(train={"method": "wat"})
    learner = _learner(cfg)
    gen_before = learner.generator.get_state()
    bn_before = copy.deepcopy(learner.model.state_dict())
    wat.METHOD.end_epoch(learner, SimpleNamespace(epoch=2))
    state = learner.method_state

    # written out: TRADES' attack on the whole validation split in eval mode, per-class means
    model, val, t = learner.model, learner.data.val, cfg.train
    x, y = val.images.float() / 255, val.labels
    assert len(y) <= cfg.eval.batch_size  # one batch: the same draws as the loader's
    gen = torch.Generator().manual_seed(wat.validation_seed(t.seed, 2))
    x_adv = trades_attack(
        model, x, eps=t.eps, step_size=t.step_size, steps=t.attack_steps, generator=gen
    )
    with torch.no_grad():
        nat, adv = model(x).numpy(), model(x_adv).numpy()
    ref = _np_arm_losses(_np_trades(nat, adv, y.numpy(), t.trades_beta), y.numpy())
    np.testing.assert_allclose(state["val_loss"], ref, rtol=1e-5)
    assert state["cumulative_loss"] == state["val_loss"] and state["updates"] == 1
    assert torch.equal(learner.generator.get_state(), gen_before)  # its own generator
    after = learner.model.state_dict()
    assert all(torch.equal(bn_before[k], after[k]) for k in after)  # eval mode: no BN update

    first = list(state["val_loss"])
    wat.METHOD.end_epoch(learner, SimpleNamespace(epoch=3))
    np.testing.assert_allclose(
        state["cumulative_loss"], np.add(first, state["val_loss"]), rtol=1e-12
    )
    assert state["updates"] == 2
    again = _learner(cfg)
    wat.METHOD.end_epoch(again, SimpleNamespace(epoch=2))
    assert again.method_state["val_loss"] == first  # the same epoch draws the same attack


# ---- the spec ----
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"wat": {"eta": -0.1}}, "wat.eta: eta must be finite and > 0 (a Hedge learning rate)"),
        ({"wat": {"eta": float("inf")}}, "wat.eta: eta must be finite and > 0"),
        ({"wat": {"average_scale": "code"}}, "wat.average_scale: Input should be 'probability'"),
        (
            {"train": {"method": "wat"}, "data": {"val_fraction": 0}},
            "data.val_fraction: WAT updates its class weights on the validation split",
        ),
        (
            {"train": {"method": "wat", "trades_beta": -1}},
            "train.trades_beta: trades_beta must be >= 0 for train.method wat",
        ),
    ],
)
def test_bad_knobs_are_one_line_errors_naming_the_key(data, message):
    with pytest.raises(SpecError) as err:
        validate(SweepSpec, data)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ---- the loop: weights reported per epoch, and a restart continues exactly ----
@pytest.mark.parametrize("scale", wat.AVERAGE_SCALES)
def test_each_epoch_reports_the_weights_the_last_update_gave(tmp_path, scale):
    cfg = tiny_config(
        train={"method": "wat", "epochs": 3}, wat={"eta": 2.0, "average_scale": scale}
    )
    trainer = Trainer(cfg, tmp_path, _data())
    history = []  # the validation losses of each update
    for record in trainer.epochs():
        expected = _np_class_weights(np.array(history).reshape(-1, K + 1), 2.0, scale)
        np.testing.assert_allclose(record.class_state["weight"], expected, rtol=1e-9)
        assert record.phase == "wat"
        history.append(trainer.method_state["val_loss"])
    assert trainer.method_state["updates"] == 3
    np.testing.assert_allclose(trainer.method_state["cumulative_loss"], np.sum(history, axis=0))


def test_a_trial_killed_after_epoch_two_resumes_to_the_same_weights(tmp_path):
    cfg = tiny_config(train={"method": "wat", "epochs": 3}, wat={"eta": 2.0})
    straight = run(cfg, workdir=tmp_path / "straight", dataset=_data())

    resumed = killed_and_resumed(cfg, tmp_path / "killed", 2, _data())
    a = torch.load(tmp_path / "straight/checkpoint/last.pt", weights_only=False)
    b = torch.load(tmp_path / "killed/checkpoint/last.pt", weights_only=False)
    assert a["method_state"] == b["method_state"]  # the floats, exactly
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert straight[-1].class_state == resumed[-1].class_state
    assert straight[-1].evals == resumed[-1].evals
    assert straight[-1].class_state["weight"] != (1.0,) * K  # the weights moved
