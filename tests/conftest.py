"""Tiny data, a tiny model and a tiny trial config: every test here runs in seconds on 2 CPU cores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from hamsweep.spec import TrialConfig

REPO = Path(__file__).resolve().parents[1]
HAMSWEEP = str(Path(sys.executable).with_name("hamsweep"))  # the console script of this venv

# tiny tensors: threads only add synchronisation, and oversubscribe the cores under pytest-xdist or a busy CI
torch.set_num_threads(1)


def tiny_config(**sections: dict) -> TrialConfig:
    """A trial that trains in about a second: 8x8 synthetic images, small_cnn of width 4."""
    base = {
        "data": {"name": "synthetic", "num_classes": 4, "image_size": 8, "train_size": 256, "test_size": 64, "val_fraction": 0.25},
        "model": {"name": "small_cnn", "width": 4},
        "train": {"method": "ham", "epochs": 3, "batch_size": 32, "lr": 0.05, "attack_steps": 3, "device": "cpu"},
        "ham": {"warmup_epochs": 1, "drop_step": 1},
        "eval": {"attack_steps": 3, "batch_size": 128, "test": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return TrialConfig.model_validate(base)


@pytest.fixture
def cfg() -> TrialConfig:
    return tiny_config()


@pytest.fixture
def dataset(cfg: TrialConfig):
    from hamsweep.data import load

    return load(cfg.data)
