"""DAFA's definitions, each recomputed here in numpy or written out from the paper (Algorithm 2):
the class similarity, the weights under both rules, the class-wise radii and the weighted losses;
then its place in the loop: the fork from the PGD-AT trunk, an exact resume, lam = 0 = PGD-AT."""

from __future__ import annotations

import copy
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import killed_and_resumed, tiny_config

from hamsweep.core import attacks, models
from hamsweep.core.data import DeviceLoader
from hamsweep.core.methods import dafa
from hamsweep.core.train import Tally, Trainer, run
from hamsweep.errors import SpecError
from hamsweep.spec import TrialConfig, validate

C = 4  # tiny_config's classes


# ---- the definitions, written out ----
def _np_similarity(probs: np.ndarray, labels: np.ndarray, c: int) -> np.ndarray:
    """p_i(j): the mean softmax of class j over the examples of class i; zeros for a class with
    none."""
    sim = np.zeros((c, c))
    for i in range(c):
        rows = probs[labels == i]
        if len(rows):
            sim[i] = rows.mean(axis=0)
    return sim


def _np_weights(p: np.ndarray, lam: float, rule: str) -> np.ndarray:
    """Algorithm 2 of the paper, loop for loop (``own_confusion``: the code's first release)."""
    w = np.ones(len(p))
    for i in range(len(p)):
        for j in range(len(p)):
            if i == j:
                continue
            if p[i, i] < p[j, j]:
                w[i] += lam * p[i, j] * p[j, j]
            elif p[i, i] > p[j, j]:
                w[i] -= lam * (p[j, i] * p[i, i] if rule == "transfer" else p[i, j] * p[j, j])
    return np.maximum(w, 0.0)


def _softmax_outputs(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 2
    labels = rng.integers(0, c, size=n)
    logits[np.arange(n), labels] += rng.uniform(0, 3, size=c)[labels]  # classes differ in ease
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs.astype(np.float32), labels


@pytest.mark.parametrize("rule", dafa.WEIGHT_RULES)
@pytest.mark.parametrize("lam", [0.0, 1.0, 1.5])
def test_similarity_and_weights_equal_algorithm_2_written_out(rule, lam):
    probs, labels = _softmax_outputs(300, 6, seed=3)
    sim = dafa.class_similarity(torch.from_numpy(probs), torch.from_numpy(labels), 6)
    expected = _np_similarity(probs.astype(np.float64), labels, 6)
    assert sim.dtype == torch.float64 and np.allclose(sim.numpy(), expected, atol=1e-12)
    w = dafa.class_weights(sim, lam, rule)
    assert np.allclose(w.numpy(), _np_weights(expected, lam, rule), atol=1e-12)
    if rule == "transfer":  # what the harder class of a pair gains, the easier gives up
        assert float(w.sum()) == pytest.approx(6.0, abs=1e-12)
    if lam == 0:
        assert torch.equal(w, torch.ones(6, dtype=torch.float64))


# the 3-class case worked by hand: class 0 the hardest, class 2 predicted with probability 1
_P3 = [[0.5, 0.4, 0.1], [0.3, 0.7, 0.0], [0.0, 0.0, 1.0]]


def test_a_class_predicted_with_probability_one_by_hand():
    p = torch.tensor(_P3, dtype=torch.float64)
    # transfer: W0 = 1 + .4*.7 + .1*1 = 1.38; W1 = 1 - .4*.7 (to 0) = .72; W2 = 1 - .1*1 (to 0)
    assert dafa.class_weights(p, 1.0, "transfer").tolist() == pytest.approx([1.38, 0.72, 0.9])
    # own_confusion: class 1 gives its own confusion into 0 (.3 * .5); class 2, confused into
    # nothing, gives nothing although class 0 leaks .1 to it
    assert dafa.class_weights(p, 1.0, "own_confusion").tolist() == pytest.approx([1.38, 0.85, 1.0])
    # a large lam: class 1 would go to 1 - 5 * .28 < 0, floored
    assert dafa.class_weights(p, 5.0, "transfer").tolist() == pytest.approx([2.9, 0.0, 0.5])


def test_a_class_at_zero_is_the_hardest_and_only_gains():
    # class 2 is never predicted as itself (0%): it gains from both, in its confusion into each
    p = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])
    w = dafa.class_weights(torch.from_numpy(p), 1.0, "transfer").numpy()
    assert w[2] == pytest.approx(1 + 0.6 * 0.9 + 0.4 * 0.8)
    assert np.allclose(w, _np_weights(p, 1.0, "transfer"))


def test_ties_trade_nothing_as_the_paper_s_else_if_says():
    p = torch.tensor([[0.6, 0.4], [0.4, 0.6]], dtype=torch.float64)
    for rule in dafa.WEIGHT_RULES:  # the official code's `else` would take .24 from both
        assert dafa.class_weights(p, 1.0, rule).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("rule", dafa.WEIGHT_RULES)
def test_a_class_absent_from_the_split_keeps_weight_one_and_moves_no_one(rule):
    probs, labels = _softmax_outputs(200, 4, seed=5)
    keep = labels != 3
    sim = dafa.class_similarity(torch.from_numpy(probs[keep]), torch.from_numpy(labels[keep]), 4)
    assert sim[3].tolist() == [0.0] * 4
    w = dafa.class_weights(sim, 1.0, rule).numpy()
    assert w[3] == 1.0
    # the others trade as if class 3 did not exist (their probability on it moves nothing)
    assert np.allclose(w[:3], _np_weights(sim.numpy()[:3, :3], 1.0, rule), atol=1e-12)


# ---- the step: class-wise radii and the weighted loss ----
def _learner(method_state: dict, **train) -> SimpleNamespace:
    cfg = tiny_config(train={"method": "dafa", **train}, dafa={"warmup_epochs": 1})
    torch.manual_seed(0)
    model = models.build(cfg.model, num_classes=C, in_channels=3).eval()
    gen = torch.Generator().manual_seed(7)

    def batches(split, batch_size=None):  # as Trainer.batches: in order, no augmentation
        size = batch_size or cfg.eval.batch_size
        return DeviceLoader(split, size, device=torch.device("cpu"), seed=0, shuffle=False).epoch(0)

    return SimpleNamespace(
        cfg=cfg, model=model, generator=gen, method_state=method_state, batches=batches
    )


def _state(weight: list[float], cfg: TrialConfig) -> dict:
    w = torch.tensor(weight, dtype=torch.float64)
    return {"weight": w, "eps": w * cfg.train.eps, "step_size": w * cfg.train.step_size}


def test_each_class_is_attacked_within_its_own_margin_and_weighs_its_weight():
    learner = _learner({})
    t = learner.cfg.train
    learner.method_state.update(_state([1.3, 0.6, 1.0, 0.9], learner.cfg))
    before = copy.deepcopy(learner.model.state_dict())  # the training forward moves BN stats
    x = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 3, 0, 1, 3, 0, 1, 3, 0, 1, 3])  # class 2 is absent from the batch
    tally = Tally()
    loss, logits, _ = dafa.METHOD.step(learner, x, y, tally)

    # written out: eps_y = W_y eps, step W_y alpha, uniform start in the class's ball, K steps
    w_of = {0: 1.3, 1: 0.6, 2: 1.0, 3: 0.9}
    w = torch.tensor([w_of[c] for c in y.tolist()], dtype=torch.float64)
    eps, step = (w * t.eps).float().view(-1, 1, 1, 1), (w * t.step_size).float().view(-1, 1, 1, 1)
    model = learner.model
    model.load_state_dict(before)
    model.eval()
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(7))
    xa = (x + (2 * noise - 1) * eps).clamp(0, 1)
    for _ in range(t.attack_steps):
        xa.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y, reduction="sum"), xa)
        xa = torch.min(torch.max(xa.detach() + step * g.sign(), x - eps), x + eps).clamp(0, 1)
    for c in (0, 1, 3):  # each class's AEs reach its own radius, never past it
        rows = y == c
        dist = (xa[rows] - x[rows]).abs().amax()
        assert w_of[c] * t.eps / 2 < dist <= w_of[c] * t.eps + 1e-6
    expected = model.train()(xa)
    assert torch.allclose(logits, expected, atol=1e-6)
    ce = F.cross_entropy(expected, y, reduction="none").detach().double()
    assert float(loss.detach()) == pytest.approx(float((w * ce).sum() / len(y)), rel=1e-6)
    assert tally.images == 12 and tally.attack_steps == 12 * t.attack_steps


def test_the_trades_base_weights_the_natural_term_only():
    logits_nat = torch.randn(6, C, generator=torch.Generator().manual_seed(2))
    logits_adv = torch.randn(6, C, generator=torch.Generator().manual_seed(3))
    y, w = torch.tensor([0, 1, 1, 3, 0, 3]), torch.tensor([1.2, 0.7, 0.7, 1.1, 1.2, 1.1])
    p_nat, p_adv = F.softmax(logits_nat, 1).double(), F.softmax(logits_adv, 1).double()
    nat = -torch.log(p_nat[torch.arange(6), y])
    kl = (p_nat * (p_nat.log() - p_adv.log())).sum(1)
    expected = (w.double() * nat).sum() / 6 + 6.0 * kl.mean()
    got = dafa.trades_loss(logits_nat, logits_adv, y, w, beta=6.0)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_the_first_dafa_step_reads_the_similarity_once_on_the_training_split(dataset):
    learner = _learner({})
    learner.data, learner.device = dataset, torch.device("cpu")
    cfg, t = learner.cfg, learner.cfg.train
    x, y = dataset.train.images[:16].float() / 255, dataset.train.labels[:16]
    tally = Tally()
    model0 = copy.deepcopy(learner.model)
    dafa.METHOD.step(learner, x, y, tally)

    # the warmed-up model's softmax at a PGD-K AE of every training example, from its own stream
    gen = torch.Generator().manual_seed(20_000 + t.seed)
    probs = []
    images, labels = dataset.train.images.float() / 255, dataset.train.labels
    for i in range(0, len(labels), cfg.eval.batch_size):
        xb, yb = images[i : i + cfg.eval.batch_size], labels[i : i + cfg.eval.batch_size]
        xa = attacks.pgd(
            model0, xb, yb, eps=t.eps, step_size=t.step_size, steps=t.attack_steps, generator=gen
        )
        with torch.no_grad():
            probs.append(F.softmax(model0(xa), 1))
    sim = _np_similarity(torch.cat(probs).double().numpy(), labels.numpy(), C)
    w = _np_weights(sim, cfg.dafa.lam, "transfer")
    state = learner.method_state
    assert np.allclose(state["similarity"].numpy(), sim, atol=1e-6)
    assert np.allclose(state["weight"].numpy(), w, atol=1e-6)
    assert np.allclose(state["eps"].numpy(), w * t.eps) and np.allclose(
        state["step_size"].numpy(), w * t.step_size
    )
    assert tally.attack_steps == (len(labels) + 16) * t.attack_steps  # the pass is counted
    kept = {k: v.clone() for k, v in state.items()}
    dafa.METHOD.step(learner, x, y, Tally())  # read once: the next batch changes nothing
    assert all(torch.equal(kept[k], state[k]) for k in kept)
    assert dafa.METHOD.class_state(learner).keys() == {"weight", "eps", "step_size"}


# ---- the spec ----
@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"lam": -0.5}, "dafa.lam: lam must be >= 0 (0: no reweighting; paper 1.0) but got -0.5"),
        ({"warmup_epochs": -1}, "dafa.warmup_epochs: warmup_epochs cannot be negative but got -1"),
        ({"weight_rule": "paper"}, "dafa.weight_rule: Input should be 'transfer' or"),
        ({"apply_to": "eps"}, "dafa.apply_to: Input should be 'both', 'loss' or 'margin'"),
        ({"similarity_split": "test"}, "dafa.similarity_split: Input should be 'train' or 'val'"),
        ({"base": "ham"}, "dafa.base: Input should be 'pgd_at' or 'trades'"),
    ],
)
def test_bad_knobs_are_one_line_naming_the_key(section, message):
    with pytest.raises(SpecError) as err:
        validate(TrialConfig, {"dafa": section})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_cross_section_checks_name_the_key():
    with pytest.raises(SpecError) as err:
        validate(TrialConfig, {"train": {"method": "dafa", "epochs": 10}, "dafa": {}})
    assert str(err.value) == (
        "dafa.warmup_epochs: 70 is larger than train.epochs (10); warmup_epochs must be in 0..10"
    )
    with pytest.raises(SpecError, match=r"^dafa\.similarity_split: val needs a validation split"):
        validate(
            TrialConfig,
            {
                "train": {"method": "dafa", "epochs": 3},
                "data": {"val_fraction": 0},
                "dafa": {"warmup_epochs": 1, "similarity_split": "val"},
            },
        )


def test_phases_and_fork_epoch_by_base():
    pgd = tiny_config(train={"method": "dafa", "epochs": 5}, dafa={"warmup_epochs": 2})
    trades = tiny_config(
        train={"method": "dafa", "epochs": 5}, dafa={"warmup_epochs": 2, "base": "trades"}
    )
    assert [dafa.METHOD.phase(pgd, e) for e in range(5)] == ["pgd_at"] * 2 + ["dafa"] * 3
    assert [dafa.METHOD.phase(trades, e) for e in range(5)] == ["trades"] * 2 + ["dafa"] * 3
    assert pgd.fork_epoch() == 2 and trades.fork_epoch() is None  # the trunk is PGD-AT
    assert [pgd.selectable(e) for e in range(1, 6)] == [False, False, True, True, True]


# ---- in the loop ----
def _cfg(**knobs) -> TrialConfig:
    return tiny_config(train={"method": "dafa", "epochs": 3}, dafa={"warmup_epochs": 1, **knobs})


def _same(a, b) -> None:
    """Two runs' records equal but for timings, and their final checkpoints equal."""
    for ra, rb in zip(a, b, strict=True):
        da, db = ra.to_dict(), rb.to_dict()
        for timing in ("seconds", "images_per_s"):
            da.pop(timing), db.pop(timing)
        assert da == db


def _checkpoints_equal(pa, pb) -> None:
    a, b = (torch.load(p / "checkpoint/last.pt", weights_only=False) for p in (pa, pb))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["generator"], b["generator"])
    assert (
        a["method_state"].keys()
        == b["method_state"].keys()
        == {
            "similarity",
            "weight",
            "eps",
            "step_size",
        }
    )
    assert all(torch.equal(a["method_state"][k], b["method_state"][k]) for k in a["method_state"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One DAFA trial (3 epochs, warm-up 1) run straight through: (its folder, its records)."""
    from hamsweep.core.data import load

    cfg = _cfg()
    folder = tmp_path_factory.mktemp("straight")
    return folder, run(cfg, workdir=folder, dataset=load(cfg.data))


def test_the_class_state_is_null_in_the_warmup_and_the_same_every_dafa_epoch(straight):
    _, records = straight
    warm, first, second = records
    assert [r.phase for r in records] == ["pgd_at", "dafa", "dafa"]
    assert warm.class_state == {}
    assert first.class_state == second.class_state
    t = _cfg().train
    w = np.array(first.class_state["weight"])
    assert w.sum() == pytest.approx(C) and not np.allclose(w, 1.0)  # classes differ in ease
    assert np.allclose(first.class_state["eps"], w * t.eps)
    assert np.allclose(first.class_state["step_size"], w * t.step_size)
    # the similarity pass's K steps per training image are in the first DAFA epoch's cost
    assert first.attack_steps - second.attack_steps == len(_train_labels()) * t.attack_steps


def _train_labels() -> torch.Tensor:
    from hamsweep.core.data import load

    return load(_cfg().data).train.labels


@pytest.mark.parametrize("killed_after", [1, 2])
def test_a_killed_and_resumed_trial_ends_exactly_as_one_run_straight(
    tmp_path, dataset, straight, killed_after
):
    """Killed after the warm-up (the similarity is read after the restart) or after the first
    DAFA epoch (it comes from the checkpoint)."""

    resumed = killed_and_resumed(_cfg(), tmp_path, killed_after, dataset)
    folder, records = straight
    _same(records[killed_after:], resumed)
    _checkpoints_equal(folder, tmp_path)


def test_a_fork_from_the_pgd_at_trunk_at_the_warmup_epoch_equals_the_trial_from_scratch(
    tmp_path, dataset, straight
):
    cfg = _cfg()
    trunk = cfg.model_copy(update={"train": cfg.train.model_copy(update={"method": "pgd_at"})})
    snaps = {}

    def keep(record, ckpt):
        snaps[record.epoch] = shutil.copytree(ckpt, tmp_path / f"epoch-{record.epoch}")

    run(trunk, workdir=tmp_path / "trunk", report=keep, dataset=dataset)
    with pytest.raises(SpecError, match=r"holds epoch 2, not dafa.warmup_epochs \(1\)"):
        run(cfg, workdir=tmp_path / "wrong", fork=snaps[2], dataset=dataset)
    forked = run(cfg, workdir=tmp_path / "fork", fork=snaps[1], dataset=dataset)
    assert [(r.epoch, r.phase) for r in forked] == [(2, "dafa"), (3, "dafa")]
    folder, records = straight
    _same(records[1:], forked)
    _checkpoints_equal(folder, tmp_path / "fork")


def test_lam_zero_trains_exactly_as_pgd_at(tmp_path, dataset):
    zero = Trainer(_cfg(lam=0.0), tmp_path / "dafa", dataset)
    pgd = Trainer(tiny_config(train={"method": "pgd_at", "epochs": 3}), tmp_path / "pgd", dataset)
    a, b = zero.epochs(), pgd.epochs()
    for _ in range(2):
        ra, _ = next(a), next(b)
    assert ra.phase == "dafa" and ra.class_state["weight"] == (1.0,) * C
    sa, sb = zero.model.state_dict(), pgd.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(zero.generator.get_state(), pgd.generator.get_state())


@pytest.mark.parametrize(("apply_to", "unit"), [("loss", "eps"), ("margin", "weight")])
def test_apply_to_one_half_leaves_the_other_at_its_default(tmp_path, dataset, apply_to, unit):
    cfg = tiny_config(train={"method": "dafa", "epochs": 2}, dafa={"warmup_epochs": 1})
    cfg = cfg.model_copy(update={"dafa": cfg.dafa.model_copy(update={"apply_to": apply_to})})
    _, first = run(cfg, workdir=tmp_path, dataset=dataset)
    s = first.class_state
    default = cfg.train.eps if unit == "eps" else 1.0
    assert s[unit] == pytest.approx((default,) * C)
    other = "weight" if unit == "eps" else "eps"
    assert len(set(s[other])) > 1  # the other half is class-wise


def test_the_trades_base_trains_its_own_warmup(tmp_path, dataset):
    cfg = tiny_config(
        train={"method": "dafa", "epochs": 2}, dafa={"warmup_epochs": 1, "base": "trades"}
    )
    warm, first = run(cfg, workdir=tmp_path, dataset=dataset)
    assert (warm.phase, first.phase) == ("trades", "dafa")
    assert sum(first.class_state["weight"]) == pytest.approx(C)
