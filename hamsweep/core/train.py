"""One trial: adversarial training (a method of ``hamsweep.core.methods``), evaluation, checkpoints.

``run(cfg, workdir=..., report=...)`` reads top to bottom: build the data, model and optimizer,
resume from ``workdir/checkpoint`` when one is there, then per epoch: train (each batch through the
epoch's method's step), evaluate on the validation split, the method's per-epoch hook, checkpoint
(atomically), report. Side effects go through ``report`` so the same
loop runs under Ray Tune, in a SLURM job and in a plain test.

A restarted trial continues *exactly*: all randomness comes from one seeded ``torch.Generator``
(saved in the checkpoint) and from the loader, whose order and augmentation are a function of
(seed, epoch, batch).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hamsweep.core import methods, models
from hamsweep.core.data import Dataset, DeviceLoader, load
from hamsweep.core.evaluation import CLEAN, EvalCounts, evaluate
from hamsweep.errors import DivergenceError, SpecError
from hamsweep.spec import TrialConfig, config_diff
from hamsweep.spec.trial import objective_summary, warmup_part

__all__ = ["EpochRecord", "Tally", "Trainer", "last_record", "lr_at", "run"]

CHECKPOINT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"  # file names inside the checkpoint folder


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch reports. ``epoch`` counts from 1 (= epochs completed)."""

    epoch: int
    phase: str  # the method this epoch trained with: pgd_at (incl. HAM's warm-up), ham, trades
    seconds: float  # wall time of the training part of the epoch
    images: int  # training images this epoch (before HAM discards any)
    images_per_s: float  # training images per second
    lr: float
    train_loss: float  # mean over the batches that took a step
    train_acc: float  # accuracy on the adversarial examples trained on
    hard_fraction: float | None  # HAM epochs: share of AEs not easy after M steps
    kept_fraction: float | None  # HAM epochs: share trained on (hard + kept easy)
    attack_steps: int  # example-steps of attack computed (one forward + backward each)
    attack_steps_full: int  # what full PGD-AT would have computed on the same images
    decision_forwards: int  # HAM's gradient-free forwards at step M (one per example)
    train_examples: int  # examples in the training forward/backward
    empty_batches: int  # HAM batches with nothing kept: no optimizer step
    # HAM epochs: AEs wrong at a step before M and correct at x^M, where the two ham.easy_rule
    # choices can disagree (see ham.py); a default, so that the records of older checkpoints
    # still load
    flip_backs: int | None = None
    evals: tuple[EvalCounts, ...] = field(default=())
    # per class, what the epoch trained with or measured (``methods.CLASS_STATE`` name -> one
    # value per class, None where a class had no example): the ``class_state`` table's rows
    class_state: dict[str, tuple[float | None, ...]] = field(default_factory=dict)

    def val_robust(self) -> EvalCounts | None:
        """This epoch's robust (PGD) evaluation on the validation split, if it was evaluated."""
        return next((e for e in self.evals if e.split == "val" and e.attack != CLEAN), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochRecord:
        evals = tuple(EvalCounts.from_dict(e) for e in data["evals"])
        state = {k: tuple(v) for k, v in data.get("class_state", {}).items()}
        return cls(**{**data, "evals": evals, "class_state": state})


Report = Callable[[EpochRecord, Path], None]  # (record, checkpoint folder) after each epoch
OnBatch = Callable[[int, int], None]  # (batches done, batches in the epoch)


def lr_at(cfg: TrialConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: piecewise constant, factors from each milestone on."""
    t = cfg.train
    factor = 1.0
    for milestone, f in zip(t.lr_milestones, t.lr_factors):
        if epoch >= math.floor(milestone * t.epochs):
            factor = f
    return t.lr * factor


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            "train.device", "cuda was asked for but no CUDA device is visible; use auto or cpu"
        )
    return torch.device(name)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def last_record(checkpoint_dir: Path) -> EpochRecord | None:
    """The record of the epoch saved in ``checkpoint_dir/last.pt`` (None without a checkpoint)."""
    path = Path(checkpoint_dir) / LAST
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return EpochRecord.from_dict(state["record"]) if state.get("record") else None


class Trainer:
    """Holds one trial's state; ``epochs()`` yields a record per epoch and checkpoints each."""

    def __init__(
        self,
        cfg: TrialConfig,
        workdir: Path,
        dataset: Dataset | None = None,
        fork: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.train.device)
        self.data = dataset if dataset is not None else load(cfg.data)
        self.ckpt_dir = Path(workdir) / "checkpoint"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.train.seed)  # model init
        c, *_ = self.data.image_shape
        self.model = models.build(cfg.model, self.data.num_classes, in_channels=c).to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=cfg.train.lr,
            momentum=cfg.train.momentum,
            weight_decay=cfg.train.weight_decay,
        )
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.train.seed)
        self.loader = DeviceLoader(
            self.data.train,
            cfg.train.batch_size,
            device=self.device,
            seed=cfg.train.seed,
            augment=cfg.data.augment,
            flip=self.data.flip,
        )
        self.start_epoch = 0
        self.best = -math.inf  # best validation `eval.select_by` so far
        # what a method keeps between epochs (its ``end_epoch`` writes it, e.g. per-class weights);
        # in every checkpoint, so that a restarted trial continues exactly; a fork starts with the
        # trunk's (PGD-AT keeps none)
        self.method_state: dict[str, Any] = {}
        self._resume(fork)

    # ---- checkpoints ----
    def _resume(self, fork: Path | None) -> None:
        """Continue from this trial's own checkpoint; without one, from ``fork`` when given."""
        path = self.ckpt_dir / LAST
        if not path.is_file():
            if fork is not None:
                self._fork(Path(fork))
            return
        # states load on the CPU; load_state_dict copies them onto the model's device
        state = torch.load(path, map_location="cpu", weights_only=False)
        if diff := config_diff(state["config"], self.cfg):
            raise SpecError(
                str(path),
                f"was written by another config (differs in {', '.join(diff)}); use a new folder",
            )
        self._load(state)
        self.best = state["best"]

    def _fork(self, folder: Path) -> None:
        """Start after the warm-up from a trunk's checkpoint of the method's fork epoch (HAM:
        ``ham.warmup_epochs``): the state this trial's own warm-up would have reached, bit for bit,
        since every key the warm-up depends on is the same (checked here). The best epoch so far
        stays the trunk's only when a warm-up epoch may be the best (``cfg.selectable``, HAM:
        ``ham.select_after_warmup: false``); then its best.pt comes along."""
        state = torch.load(folder / LAST, map_location="cpu", weights_only=False)
        saved, mine = (
            warmup_part(TrialConfig.model_validate(state["config"])),
            warmup_part(self.cfg),
        )
        if diff := [k for k in mine if saved.get(k) != mine[k]]:
            raise SpecError(
                str(folder),
                f"is the warm-up of another config (differs in {', '.join(diff)}); "
                "it cannot be forked",
            )
        method, w = methods.get(self.cfg.train.method), self.cfg.fork_epoch()
        if w is None or state["epoch"] != w:
            raise SpecError(
                str(folder),
                f"holds epoch {state['epoch']}, not {method.fork_key or 'a fork epoch'} ({w})",
            )
        self._load(state)
        if self.cfg.selectable(w) and (folder / BEST).is_file():
            self.best = state["best"]
            _atomic_save(
                torch.load(folder / BEST, map_location="cpu", weights_only=False),
                self.ckpt_dir / BEST,
            )

    def _load(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.start_epoch = state["epoch"]
        self.method_state = state.get("method_state", {})  # none in checkpoints before issue 19

    def _checkpoint(self, epoch: int, record: EpochRecord) -> None:
        """Everything needed to continue exactly after ``epoch`` (epochs completed), atomically."""
        state = {
            "version": CHECKPOINT_VERSION,
            "config": self.cfg.model_dump(mode="json"),
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best": self.best,
            "record": record.to_dict(),
            "method_state": self.method_state,
        }
        _atomic_save(state, self.ckpt_dir / LAST)

    def _save_best(self, record: EpochRecord, model: torch.nn.Module) -> None:
        robust = record.val_robust()
        if robust is None or not self.cfg.selectable(record.epoch):
            return
        e = self.cfg.eval
        summary = robust.summary(e.cvar_fraction)
        value = summary[objective_summary(e.select_by)]
        if value > self.best:
            self.best = value
            state = {
                "epoch": record.epoch,
                "model": model.state_dict(),
                e.select_by: value,
                "summary": summary,
            }
            _atomic_save(state, self.ckpt_dir / BEST)

    # ---- the loop ----
    def epochs(self, on_batch: OnBatch | None = None) -> Iterator[EpochRecord]:
        cfg = self.cfg
        for epoch in range(self.start_epoch, cfg.train.epochs):
            record = self.train_epoch(epoch, on_batch)
            last = epoch + 1 == cfg.train.epochs
            method = methods.get(record.phase)
            record = replace(record, evals=self._evaluate(self.model, "val", epoch, last))
            method.end_epoch(self, record)  # per-class state, say
            model = method.eval_model(self)
            if model is None:
                model = self.model
            else:  # the method's own model (CFA's average) is the one the epoch is judged by
                record = replace(record, evals=self._evaluate(model, "val", epoch, last))
            record = replace(
                record, evals=record.evals + self._evaluate(model, "test", epoch, last)
            )
            self._save_best(record, model)
            self._checkpoint(epoch + 1, record)
            yield record

    def new_model(self) -> torch.nn.Module:
        c, *_ = self.data.image_shape
        with torch.random.fork_rng(devices=[]):  # its initialisation draws leave the trial's alone
            model = models.build(self.cfg.model, self.data.num_classes, in_channels=c)
        if self.cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model.to(self.device)

    def batches(self, split: Any, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        size = batch_size or self.cfg.eval.batch_size
        return DeviceLoader(split, size, device=self.device, seed=0, shuffle=False).epoch(0)

    def validate(self, model: torch.nn.Module, seed: int) -> tuple[EvalCounts, ...]:
        n = self.data.num_classes
        return tuple(evaluate(model, self.data.val, "val", self.cfg, n, seed=seed))

    def _evaluate(
        self, model: torch.nn.Module, split: str, epoch: int, last: bool
    ) -> tuple[EvalCounts, ...]:
        """``model`` on the validation split every ``eval.every_epochs`` epochs and after the last;
        on the test split after the last one only, and only if ``eval.test``."""
        e = self.cfg.eval
        if split == "val" and not ((epoch + 1) % e.every_epochs == 0 or last):
            return ()
        if split == "test" and not (last and e.test):
            return ()
        data = self.data.val if split == "val" else self.data.test
        return tuple(
            evaluate(
                model,
                data,
                split,
                self.cfg,
                self.data.num_classes,
                seed=epoch,
                autoattack=e.autoattack and split == "test",
            )
        )

    def phase(self, epoch: int) -> str:
        """The method 0-based ``epoch`` trains with (HAM's warm-up epochs: pgd_at)."""
        return methods.get(self.cfg.train.method).phase(self.cfg, epoch)

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def train_epoch(
        self, epoch: int, on_batch: OnBatch | None = None, phase: str | None = None
    ) -> EpochRecord:
        """Train 0-based ``epoch`` (no evaluation, no checkpoint). ``phase`` overrides the method
        the config gives this epoch: benchmarks compare HAM and PGD-AT from one model state."""
        phase, lr = phase or self.phase(epoch), lr_at(self.cfg, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        tally = Tally()
        self.sync()
        start = time.perf_counter()
        for b, (x, y) in enumerate(self.loader.epoch(epoch)):
            if self.cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.train_batch(phase, x, y, tally, epoch, b)
            if on_batch:
                on_batch(b + 1, len(self.loader))
        self.sync()
        seconds = time.perf_counter() - start
        method = methods.get(phase)
        record = tally.record(epoch + 1, phase, seconds, lr, self.cfg.train.attack_steps, method)
        state = {**tally.class_means(self.data.num_classes), **_values(method.class_state(self))}
        return replace(record, class_state=state)

    def sync(self) -> None:
        """Wait for the device (so that wall-clock timings are real)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def train_batch(
        self, phase: str, x: Tensor, y: Tensor, tally: Tally, epoch: int, b: int
    ) -> None:
        """Attack batch ``b`` with ``phase``'s method, then take one optimizer step (none if the
        method returns none: HAM kept nothing)."""
        method = methods.get(phase)
        self.model.eval()  # attacks run in eval mode: BN statistics must not see the AEs
        with self._autocast():
            out = method.step(self, x, y, tally)
        if out is None:
            return
        loss, logits, y_used = out
        if not torch.isfinite(loss):
            raise DivergenceError(
                f"train loss is {loss.item()} at epoch {epoch + 1}, batch {b + 1}; "
                "lower train.lr, or try precision: fp32"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        tally.add_step(loss, logits, y_used)


@dataclass
class Tally:
    """Running counts of one epoch; ``record`` turns them into an ``EpochRecord``."""

    images: int = 0
    attack_steps: int = 0
    train_examples: int = 0
    hard: int = 0
    decisions: int = 0
    empty_batches: int = 0
    flip_backs: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    # CLASS_STATE name -> the (labels, values) ``add_class`` was given, batch by batch
    per_class: dict[str, list[tuple[Tensor, Tensor]]] = field(default_factory=dict)

    def add_attack(
        self,
        images: int,
        steps: int,
        trained: int,
        hard: int = 0,
        decisions: int = 0,
        flip_backs: int = 0,
    ) -> None:
        self.images += images
        self.attack_steps += steps
        self.train_examples += trained
        self.hard += hard
        self.decisions += decisions
        self.flip_backs += flip_backs

    def add_class(self, column: str, y: Tensor, values: Tensor) -> None:
        _check_column(column)
        # kept on the device as they come (no sync in the batch loop), summed in class_means
        self.per_class.setdefault(column, []).append((y.detach(), values.detach()))

    def class_means(self, num_classes: int) -> dict[str, tuple[float | None, ...]]:
        """``add_class``'s per-class means over the epoch (None for a class with no example)."""
        out = {}
        for column, pairs in self.per_class.items():
            y = torch.cat([p[0].flatten() for p in pairs]).cpu()
            v = torch.cat([p[1].flatten() for p in pairs]).cpu().double()
            sums = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, y, v)
            counts = torch.bincount(y, minlength=num_classes)
            out[column] = tuple(
                float(sums[c] / counts[c]) if counts[c] else None for c in range(num_classes)
            )
        return out

    def add_step(self, loss: Tensor, logits: Tensor, y: Tensor) -> None:
        self.steps += 1
        self.loss_sum += float(loss.detach())
        self.correct += int((logits.detach().argmax(1) == y).sum())

    def record(
        self, epoch: int, phase: str, seconds: float, lr: float, k: int, method: methods.Method
    ) -> EpochRecord:
        """The epoch's record; the diagnostic fields ``method`` declares are filled, others None."""
        shown = set(method.diagnostics) if self.images else set()
        return EpochRecord(
            epoch=epoch,
            phase=phase,
            seconds=seconds,
            images=self.images,
            images_per_s=self.images / max(seconds, 1e-9),
            lr=lr,
            train_loss=self.loss_sum / self.steps if self.steps else math.nan,
            train_acc=self.correct / self.train_examples if self.train_examples else math.nan,
            hard_fraction=self.hard / self.images if "hard_fraction" in shown else None,
            kept_fraction=self.train_examples / self.images if "kept_fraction" in shown else None,
            attack_steps=self.attack_steps,
            attack_steps_full=self.images * k,
            decision_forwards=self.decisions,
            train_examples=self.train_examples,
            empty_batches=self.empty_batches,
            flip_backs=self.flip_backs if "flip_backs" in method.diagnostics else None,
        )


def _check_column(column: str) -> None:
    if column not in methods.CLASS_STATE:
        raise KeyError(f"{column!r} is not a class_state column ({', '.join(methods.CLASS_STATE)})")


def _values(state: dict[str, Any]) -> dict[str, tuple[float | None, ...]]:
    """A method's ``class_state`` as plain floats (tensors and numpy arrays included), each name
    checked against ``methods.CLASS_STATE``."""
    out = {}
    for column, values in state.items():
        _check_column(column)
        if isinstance(values, Tensor):
            values = values.detach().cpu().tolist()
        out[column] = tuple(None if v is None else float(v) for v in values)
    return out


def run(
    cfg: TrialConfig,
    *,
    workdir: Path,
    report: Report | None = None,
    on_batch: OnBatch | None = None,
    dataset: Dataset | None = None,
    fork: Path | None = None,
) -> list[EpochRecord]:
    """Train one trial to the end (resuming from ``workdir/checkpoint`` if present, else starting
    from the trunk checkpoint folder ``fork`` after the warm-up, see ``Trainer._fork``).

    ``report(record, checkpoint_dir)`` is called after each epoch, once its checkpoint is on disk.
    Returns the records of the epochs this call ran.
    """
    trainer = Trainer(cfg, workdir, dataset, fork)
    records = []
    for record in trainer.epochs(on_batch):
        if report:
            report(record, trainer.ckpt_dir)
        records.append(record)
    return records
