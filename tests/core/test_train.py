"""The trial loop: warm-up, exact resume, divergence, empty batches, bookkeeping."""

from __future__ import annotations

import math
import re

import pytest
import torch
from conftest import killed_and_resumed, tiny_config

from hamsweep.core.methods import ham
from hamsweep.core.train import EpochRecord, Trainer, lr_at, run
from hamsweep.errors import DivergenceError, SpecError
from hamsweep.results.read import read_table
from hamsweep.results.schema import EPOCHS, epoch_rows
from hamsweep.results.writer import PartWriter
from hamsweep.sweep.standalone import epoch_line


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lr_schedule_is_piecewise_at_fractions_of_the_epochs():
    cfg = tiny_config(train={"epochs": 120, "lr": 0.1})
    assert [lr_at(cfg, e) for e in (0, 59, 60, 89, 90, 109, 110, 119)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0005, 0.0005]
    )


def test_warmup_epochs_are_exactly_pgd_at(tmp_path, dataset):
    ham = tiny_config(train={"epochs": 2}, ham={"warmup_epochs": 1})
    pgd_at = tiny_config(train={"epochs": 2, "method": "pgd_at"})
    a, b = Trainer(ham, tmp_path / "a", dataset), Trainer(pgd_at, tmp_path / "b", dataset)
    epochs_a = a.epochs()
    rec_a, rec_b = next(epochs_a), next(b.epochs())
    assert rec_a.phase == rec_b.phase == "pgd_at"
    assert _states_equal(a.model.state_dict(), b.model.state_dict())
    rec_a2 = next(epochs_a)
    assert rec_a2.phase == "ham" and rec_a2.attack_steps < rec_a2.attack_steps_full


def test_ham_keeping_every_easy_ae_with_uniform_weights_trains_exactly_like_pgd_at(
    tmp_path, dataset
):
    ham = tiny_config(train={"epochs": 1}, ham={"warmup_epochs": 0, "keep_easy_fraction": 1.0})
    pgd_at = tiny_config(train={"epochs": 1, "method": "pgd_at"})
    a, b = Trainer(ham, tmp_path / "a", dataset), Trainer(pgd_at, tmp_path / "b", dataset)
    rec_a, _ = next(a.epochs()), next(b.epochs())
    assert rec_a.phase == "ham" and rec_a.hard_fraction < 1.0  # some AEs were easy, and kept anyway
    assert _states_equal(a.model.state_dict(), b.model.state_dict())


def test_resume_from_checkpoint_continues_exactly(tmp_path, dataset):
    cfg = tiny_config(
        train={"epochs": 3}, ham={"warmup_epochs": 1, "keep_easy_fraction": 0.5, "temperature": 1.0}
    )
    straight = run(cfg, workdir=tmp_path / "straight", dataset=dataset)

    resumed = killed_and_resumed(cfg, tmp_path / "killed", 2, dataset)
    final_a = torch.load(tmp_path / "straight/checkpoint/last.pt", weights_only=False)
    final_b = torch.load(tmp_path / "killed/checkpoint/last.pt", weights_only=False)
    assert _states_equal(final_a["model"], final_b["model"])
    assert torch.equal(final_a["generator"], final_b["generator"])
    a, b = straight[-1].to_dict(), resumed[-1].to_dict()
    for timing in ("seconds", "images_per_s"):
        a.pop(timing), b.pop(timing)
    assert a == b  # same loss, hard fraction, per-class counts


def test_divergence_names_epoch_and_batch(tmp_path, dataset):
    cfg = tiny_config(train={"lr": 1e30, "method": "pgd_at"})
    with pytest.raises(DivergenceError, match=r"at epoch 1, batch \d+") as err:
        run(cfg, workdir=tmp_path, dataset=dataset)
    assert "\n" not in str(err.value)
    assert re.search(r"batch (\d+)", str(err.value))


def test_all_easy_batch_takes_no_step_and_produces_no_nan(tmp_path, dataset):
    from dataclasses import replace

    from hamsweep.core.data import Split

    cfg = tiny_config(train={"epochs": 1}, ham={"warmup_epochs": 0})
    labels0 = Split(dataset.train.images, torch.zeros_like(dataset.train.labels))
    trainer = Trainer(cfg, tmp_path, replace(dataset, train=labels0))
    head = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # a model that answers class 0, with certainty, whatever the input
        head.weight.zero_()
        head.bias.copy_(torch.tensor([50.0, 0.0, 0.0, 0.0]))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    record = trainer.train_epoch(0)
    assert record.empty_batches == len(trainer.loader) and record.train_examples == 0
    assert record.hard_fraction == 0.0
    assert math.isnan(record.train_loss)  # no step taken: no loss to report, and no exception
    params = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[k], p) for k, p in params.items())


def test_epoch_bookkeeping_and_evaluation_counts(tmp_path, dataset):
    cfg = tiny_config(
        train={"epochs": 2}, ham={"warmup_epochs": 1}, eval={"test": True, "every_epochs": 2}
    )
    records = run(cfg, workdir=tmp_path, dataset=dataset)
    first, second = records
    assert first.evals == ()  # every_epochs = 2: no evaluation after epoch 1
    assert first.attack_steps == first.attack_steps_full == first.images * 3
    assert 0 <= second.hard_fraction <= second.kept_fraction <= 1
    # M = 1 full step, then K - M = 2 steps on the kept (rho = 0: kept = hard)
    assert second.attack_steps == pytest.approx(
        second.images * 1 + second.train_examples * 2, abs=0
    )
    assert second.decision_forwards == second.images
    splits = {(e.split, e.attack): e for e in second.evals}
    assert set(splits) == {("val", "clean"), ("val", "pgd3"), ("test", "clean"), ("test", "pgd3")}
    assert sum(splits["val", "clean"].n) == len(dataset.val)
    assert sum(splits["test", "pgd3"].n) == len(dataset.test)
    for e in second.evals:
        assert all(0 <= c <= n for n, c in zip(e.n, e.correct))
    assert sum(splits["val", "pgd3"].correct) <= sum(splits["val", "clean"].correct)
    assert (tmp_path / "checkpoint" / "best.pt").is_file()


def test_trades_trains(tmp_path, dataset):
    cfg = tiny_config(train={"epochs": 1, "method": "trades"})
    (record,) = run(cfg, workdir=tmp_path, dataset=dataset)
    assert record.phase == "trades" and math.isfinite(record.train_loss)


def test_bf16_autocast_and_channels_last_train(tmp_path, dataset):
    cfg = tiny_config(
        train={"epochs": 1, "precision": "bf16", "channels_last": True}, ham={"warmup_epochs": 0}
    )
    (record,) = run(cfg, workdir=tmp_path, dataset=dataset)
    assert record.phase == "ham" and math.isfinite(record.train_loss)
    assert sum(record.evals[0].n) == len(dataset.val)


def test_a_checkpoint_is_not_resumed_under_another_config(tmp_path, dataset):
    run(tiny_config(train={"epochs": 1}), workdir=tmp_path, dataset=dataset)
    with pytest.raises(
        SpecError, match=r"last\.pt: was written by another config \(differs in train\.lr\)"
    ):
        Trainer(tiny_config(train={"epochs": 1, "lr": 0.2}), tmp_path, dataset)


def _pgd_at(cfg, **ham):
    """``cfg`` as a PGD-AT run (a trunk): method pgd_at, and HAM knobs that a warm-up never
    reads."""
    return cfg.model_copy(
        update={
            "train": cfg.train.model_copy(update={"method": "pgd_at"}),
            "ham": cfg.ham.model_copy(update=ham),
        }
    )


def _trunk_snapshot(cfg, workdir, epoch, dataset):
    """Run ``cfg`` to the end, keeping a copy of its checkpoint folder after ``epoch``."""
    import shutil

    snap = workdir / f"epoch-{epoch}"

    def keep(record, ckpt):
        if record.epoch == epoch:
            shutil.copytree(ckpt, snap)

    run(cfg, workdir=workdir, report=keep, dataset=dataset)
    return snap


@pytest.mark.parametrize("select_after_warmup", [True, False])
def test_a_fork_from_a_pgd_at_trunk_equals_the_trial_trained_from_scratch(
    tmp_path, dataset, select_after_warmup
):
    cfg = tiny_config(
        train={"epochs": 4},
        ham={
            "warmup_epochs": 2,
            "keep_easy_fraction": 0.3,
            "temperature": 1.0,
            "select_after_warmup": select_after_warmup,
        },
    )
    scratch = run(cfg, workdir=tmp_path / "scratch", dataset=dataset)
    # HAM knobs do not matter to a trunk
    trunk = _pgd_at(cfg, drop_step=3, keep_easy_fraction=0.0, warmup_epochs=0)
    snap = _trunk_snapshot(trunk, tmp_path / "trunk", 2, dataset)
    forked = run(cfg, workdir=tmp_path / "fork", fork=snap, dataset=dataset)
    assert [r.epoch for r in forked] == [3, 4] and [r.phase for r in forked] == ["ham", "ham"]
    for a, b in zip(scratch[2:], forked):
        a, b = a.to_dict(), b.to_dict()
        for timing in ("seconds", "images_per_s"):
            a.pop(timing), b.pop(timing)
        assert a == b  # every per-class count, the loss, the hard fraction
    final = [
        torch.load(tmp_path / w / "checkpoint/last.pt", weights_only=False)
        for w in ("scratch", "fork")
    ]
    assert _states_equal(final[0]["model"], final[1]["model"])
    assert _states_equal(final[0]["optimizer"]["state"][0], final[1]["optimizer"]["state"][0])
    assert (
        torch.equal(final[0]["generator"], final[1]["generator"])
        and final[0]["best"] == final[1]["best"]
    )
    best = [
        torch.load(tmp_path / w / "checkpoint/best.pt", weights_only=False)
        for w in ("scratch", "fork")
    ]
    assert best[0]["epoch"] == best[1]["epoch"] and _states_equal(
        best[0]["model"], best[1]["model"]
    )
    if select_after_warmup:
        assert best[0]["epoch"] > 2  # a HAM trial is represented by a HAM epoch, not a PGD-AT one


def test_a_fork_is_refused_when_the_warmup_would_differ(tmp_path, dataset):
    cfg = tiny_config(train={"epochs": 3}, ham={"warmup_epochs": 1})
    other_lr = _pgd_at(cfg).model_copy(
        update={"train": cfg.train.model_copy(update={"method": "pgd_at", "lr": 0.01})}
    )
    snap = _trunk_snapshot(other_lr, tmp_path / "trunk", 1, dataset)
    with pytest.raises(SpecError, match=r"warm-up of another config \(differs in train\.lr\)"):
        run(cfg, workdir=tmp_path / "fork", fork=snap, dataset=dataset)
    late = _trunk_snapshot(_pgd_at(cfg), tmp_path / "trunk2", 2, dataset)
    with pytest.raises(SpecError, match=r"holds epoch 2, not ham.warmup_epochs \(1\)"):
        run(cfg, workdir=tmp_path / "fork2", fork=late, dataset=dataset)


def test_flip_backs_are_counted_in_ham_epochs_only_and_land_in_the_epochs_table(
    tmp_path, dataset, monkeypatch
):
    seen: list[
        tuple[str, int]
    ] = []  # (easy_rule, flip-backs) of every HAM batch, read off the real attack
    real = ham.ham_attack

    def spy(*args, **kwargs):
        hb = real(*args, **kwargs)
        seen.append((kwargs["easy_rule"], int(hb.flipped.sum())))
        return hb

    monkeypatch.setattr(ham, "ham_attack", spy)
    # a step of eps overshoots enough that a few AEs flip back even on this tiny model
    cfg = tiny_config(
        train={"epochs": 2, "step_size": 8 / 255, "attack_steps": 4},
        ham={"warmup_epochs": 1, "drop_step": 3, "easy_rule": "never_misclassified"},
    )
    warm, first = run(cfg, workdir=tmp_path / "run", dataset=dataset)
    assert warm.phase == "pgd_at" and warm.flip_backs is None
    assert first.phase == "ham" and first.flip_backs == sum(n for _, n in seen) > 0
    # the config's rule reaches the attack
    assert {rule for rule, _ in seen} == {"never_misclassified"}
    assert f"flip-backs {first.flip_backs}" in epoch_line(
        first, 2
    ) and "flip-backs" not in epoch_line(warm, 2)
    writer = PartWriter(tmp_path / "results")
    for record in (warm, first):
        writer.append(EPOCHS, epoch_rows("t", record, 0.2))
    assert read_table(tmp_path / "results", EPOCHS).column("flip_backs").to_pylist() == [
        None,
        first.flip_backs,
    ]
    # a record saved before the column
    old = {k: v for k, v in first.to_dict().items() if k != "flip_backs"}
    assert EpochRecord.from_dict(old).flip_backs is None


def test_ham_epochs_record_each_class_hard_fraction_in_the_class_state_table(
    tmp_path, dataset, monkeypatch
):
    import duckdb

    from hamsweep.results.schema import CLASS_STATE, class_state_rows

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (labels, easy) of every HAM batch
    real = ham.ham_attack

    def spy(model, x, y, **kwargs):
        hb = real(model, x, y, **kwargs)
        seen.append((y.clone(), hb.easy.clone()))
        return hb

    monkeypatch.setattr(ham, "ham_attack", spy)
    cfg = tiny_config(train={"epochs": 2}, ham={"warmup_epochs": 1, "drop_step": 1})
    warm, first = run(cfg, workdir=tmp_path / "run", dataset=dataset)
    assert warm.class_state == {}  # PGD-AT keeps nothing per class
    labels = torch.cat([y for y, _ in seen]).tolist()
    hard = torch.cat([~e for _, e in seen]).tolist()
    expected = []
    for c in range(4):
        mine = [h for lab, h in zip(labels, hard) if lab == c]
        expected.append(sum(mine) / len(mine) if mine else None)
    assert first.class_state["hard_fraction"] == pytest.approx(expected)
    writer = PartWriter(tmp_path / "results")
    for record in (warm, first):
        writer.append(CLASS_STATE, class_state_rows("t", record, dataset.classes))
    rows = duckdb.sql(
        f"SELECT epoch, phase, class_id, hard_fraction, weight "
        f"FROM '{tmp_path}/results/{CLASS_STATE}/*.parquet' ORDER BY class_id"
    ).fetchall()
    assert [r[:3] for r in rows] == [(2, "ham", c) for c in range(4)]
    assert [r[3] for r in rows] == pytest.approx(expected)
    assert {r[4] for r in rows} == {None}  # HAM keeps no class weight
    # records saved before the field load with none
    old = {k: v for k, v in first.to_dict().items() if k != "class_state"}
    assert EpochRecord.from_dict(old).class_state == {}


def test_a_method_s_eval_model_is_what_the_epoch_is_evaluated_and_selected_by(
    tmp_path, dataset, monkeypatch
):
    import copy

    from hamsweep.core.evaluation import evaluate
    from hamsweep.core.methods.pgd_at import PgdAt

    frozen: dict[str, torch.nn.Module] = {}
    seen: list[tuple] = []  # (the evaluations end_epoch was given, the trained model then)

    def eval_model(self, learner):
        if "m" not in frozen:  # the model after the first epoch, never trained further
            frozen["m"] = copy.deepcopy(learner.model)
        return frozen["m"]

    def end_epoch(self, learner, record):
        seen.append((record.evals, copy.deepcopy(learner.model)))

    monkeypatch.setattr(PgdAt, "eval_model", eval_model)
    monkeypatch.setattr(PgdAt, "end_epoch", end_epoch)
    cfg = tiny_config(train={"method": "pgd_at", "epochs": 2})
    records = run(cfg, workdir=tmp_path / "run", dataset=dataset)
    mine = tuple(evaluate(frozen["m"], dataset.val, "val", cfg, 4, seed=1))
    assert records[-1].evals == mine  # the epoch reports the method's model ...
    given, trained = seen[-1]  # ... end_epoch saw the trained one's
    assert given == tuple(evaluate(trained, dataset.val, "val", cfg, 4, seed=1))
    best = torch.load(tmp_path / "run" / "checkpoint" / "best.pt", weights_only=False)
    assert _states_equal(best["model"], frozen["m"].state_dict())
