"""How long one epoch of a method takes on this machine's device: a few training batches and a
slice of the validation split, timed and scaled to the whole epoch (``hamsweep validate --time``
turns these into predicted device-hours of a sweep).

The first batch of each is not timed (CUDA's kernel selection, lazy allocation). A method's
per-epoch hook (``end_epoch``: the validation attacks of FRL, CFA and WAT, DAFA's similarities at
its first epoch) is not timed: ``bench/methods.py`` measures it at about a tenth of an epoch on a
CPU. The model is as the method would start it (fresh weights): the epoch time of adversarial
training barely depends on them, except for HAM, whose discarded easy examples make later epochs
cheaper than the timed first (the prediction is an upper bound for HAM).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

from hamsweep.core.data import Dataset, subsample
from hamsweep.core.evaluation import evaluate
from hamsweep.core.train import Tally, Trainer
from hamsweep.spec import TrialConfig

__all__ = ["EpochTime", "epoch_time"]


@dataclass(frozen=True)
class EpochTime:
    """Seconds of one epoch of a method on one device, scaled from the batches timed."""

    train: float  # the training part: every batch of the training split
    evaluation: float  # one evaluation of the validation split (clean and PGD)
    device: str  # "cuda" or "cpu"
    batches: int  # training batches timed

    def epoch(self, every: int) -> float:
        """Seconds of an average epoch when the validation split is evaluated every ``every``."""
        return self.train + self.evaluation / every


def epoch_time(cfg: TrialConfig, phase: str, data: Dataset, batches: int = 5) -> EpochTime:
    """Time ``batches`` training batches of ``phase``'s method (after one untimed) and an
    evaluation of as many validation batches (after one untimed), scaled to the epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cfg, tmp, data)
        train = _train_seconds(t, phase, batches) / batches * len(t.loader)
        evaluation = _eval_seconds(t, data, batches)
    return EpochTime(train, evaluation, t.device.type, batches)


def _train_seconds(t: Trainer, phase: str, batches: int) -> float:
    """Seconds of batches 1..``batches`` of epoch 0 (batch 0 runs untimed first)."""
    tally, start = Tally(), 0.0
    for b, (x, y) in enumerate(t.loader.epoch(0)):
        if b == 1:
            t.sync()
            start = time.perf_counter()
        t.train_batch(phase, x, y, tally, 0, b)
        if b == batches:
            break
    t.sync()
    return time.perf_counter() - start


def _eval_seconds(t: Trainer, data: Dataset, batches: int) -> float:
    """Seconds of an evaluation of the validation split (``eval.max_examples`` of it), from one
    of ``batches`` eval batches (after one untimed batch)."""
    cfg = t.cfg
    n_val = min(len(data.val), cfg.eval.max_examples or len(data.val))
    size = min(n_val, batches * cfg.eval.batch_size)
    probe = subsample(data.val, min(n_val, cfg.eval.batch_size), cfg.data.seed)
    evaluate(t.model, probe, "val", cfg, data.num_classes, seed=0)  # untimed
    part = subsample(data.val, size, cfg.data.seed)
    t.sync()
    start = time.perf_counter()
    evaluate(t.model, part, "val", cfg, data.num_classes, seed=0)
    t.sync()
    return (time.perf_counter() - start) * n_val / size
