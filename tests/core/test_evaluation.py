"""Class-wise evaluation: counts per class for each attack."""

from __future__ import annotations

import torch
from conftest import tiny_config

from hamsweep.core import models
from hamsweep.core.evaluation import evaluate


def test_autoattack_evaluation_is_class_wise_and_no_stronger_than_clean(dataset):
    cfg = tiny_config(eval={"max_examples": 16})
    torch.manual_seed(0)
    model = models.build(cfg.model, dataset.num_classes)
    counts = {
        e.attack: e
        for e in evaluate(
            model, dataset.test, "test", cfg, dataset.num_classes, seed=0, autoattack=True
        )
    }
    assert set(counts) == {"clean", "pgd3", "autoattack"}
    assert sum(counts["autoattack"].n) == 16 and len(counts["autoattack"].n) == dataset.num_classes
    assert sum(counts["autoattack"].correct) <= sum(counts["clean"].correct)


def test_evaluation_is_repeatable_and_counts_every_example(dataset):
    cfg = tiny_config()
    torch.manual_seed(0)
    model = models.build(cfg.model, dataset.num_classes)
    first = {
        e.attack: e for e in evaluate(model, dataset.val, "val", cfg, dataset.num_classes, seed=3)
    }
    again = {
        e.attack: e for e in evaluate(model, dataset.val, "val", cfg, dataset.num_classes, seed=3)
    }
    assert first == again  # its own seeded generator: the same counts every time
    assert first["clean"].n == first["pgd3"].n and sum(first["clean"].n) == len(dataset.val)


def test_autoattack_runs_the_reference_implementations_standard_settings(dataset):
    """fra31/auto-attack's version "standard": APGD-CE, APGD-T, FAB-T at 100 iterations, one
    restart, the targeted two on 9 other classes (fewer where there are fewer), Square at 5,000
    queries with p_init 0.8; not torchattacks' own defaults (10 iterations, every other class)."""
    import torchattacks

    from hamsweep.core.evaluation import standard_autoattack

    model = models.build(tiny_config().model, dataset.num_classes)
    for classes, targets in ((100, 9), (10, 9), (4, 3)):
        apgd, apgd_t, fab_t, square = standard_autoattack(model, 8 / 255, classes).attacks
        assert (type(apgd), type(apgd_t), type(fab_t), type(square)) == (
            torchattacks.APGD,
            torchattacks.APGDT,
            torchattacks.FAB,
            torchattacks.Square,
        )
        assert apgd.loss == "ce" and (apgd.steps, apgd_t.steps, fab_t.steps) == (100, 100, 100)
        assert (apgd.n_restarts, apgd_t.n_restarts, fab_t.n_restarts, square.n_restarts) == (1,) * 4
        assert (apgd_t.n_target_classes, fab_t.n_target_classes) == (targets, targets)
        assert fab_t.multi_targeted and apgd.eps == square.eps == 8 / 255
        assert (square.n_queries, square.p_init, square.rescale_schedule) == (5000, 0.8, False)
