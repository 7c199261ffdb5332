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
