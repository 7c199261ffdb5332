"""What a training method is: the interface every module of ``hamsweep.core.methods`` implements.

A method module defines one subclass of ``Method`` and an instance of it named ``METHOD``; the
registry (``hamsweep.core.methods``) finds it by itself. The module's top level imports no torch
(the spec imports every method for its section, and ``hamsweep status`` must start fast): torch
and ``hamsweep.core.attacks`` are imported inside ``step``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from hamsweep.errors import SpecError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from hamsweep.spec._base import _Frozen

    # (loss to minimise, the logits it was computed from, their labels); None: no optimizer step
    StepOut = tuple[Tensor, Tensor, Tensor] | None

__all__ = ["CLASS_STATE", "TRUNK_METHOD", "Counts", "Learner", "Method"]

# the method trunks train with: every forking method's warm-up, and a sweep's baseline
TRUNK_METHOD = "pgd_at"

# What a method keeps or measures per class in an epoch: the columns of the ``class_state`` table
# (one row per trial, epoch and class), each the value the epoch *trained with* (the weights, eps,
# beta, multipliers in force during it) or measured over it (HAM's hard fraction). A method fills
# the ones it has (``Method.class_state`` and ``Counts.add_class``); the others stay null.
CLASS_STATE: dict[str, str] = {
    "weight": "the class's weight in the training loss (1: unweighted)",
    "eps": "the class's attack radius, pixels in [0, 1] (train.eps: unchanged)",
    "step_size": "the class's attack step, pixels in [0, 1]",
    "beta": "the class's TRADES weight of the boundary (KL) term",
    "multiplier_nat": "FRL's Lagrange multiplier of the class's natural error",
    "multiplier_bnd": "FRL's Lagrange multiplier of the class's boundary error",
    "train_robust_acc": "accuracy on the class's training AEs this epoch, a fraction",
    "hard_fraction": "HAM: share of the class's AEs not easy after ham.drop_step steps",
}


class Learner(Protocol):
    """What a method's step sees of the trial (``hamsweep.core.train.Trainer``)."""

    cfg: Any  # the TrialConfig
    model: nn.Module
    # ``hamsweep.core.data.Dataset``, the trial's splits: a method's per-epoch update may read
    # ``data.val`` (or ``data.train``), never ``data.test``
    data: Any
    device: torch.device
    generator: torch.Generator  # every random draw of the attack comes from it
    # what the method keeps between epochs (``end_epoch`` writes it): saved in every checkpoint
    # and restored with it, so plain data and tensors only
    method_state: dict[str, Any]

    def new_model(self) -> nn.Module:
        """A freshly built model of the trial's architecture, on its device (e.g. for an average
        of weights)."""
        ...

    def batches(self, split: Any, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """(x, y) batches of ``split`` (``data.val`` or ``data.train``) on the trial's device, in
        the split's order, without augmentation; ``batch_size`` defaults to ``eval.batch_size``."""
        ...

    def validate(self, model: nn.Module, seed: int) -> tuple[Any, ...]:
        """``model`` on the validation split as the trial evaluates it: per-class clean and PGD
        counts (``hamsweep.core.evaluation.EvalCounts``), the attack's start drawn from ``seed``."""
        ...


class Counts(Protocol):
    """The epoch's running counts a step adds to (``hamsweep.core.train.Tally``)."""

    empty_batches: int  # batches that took no optimizer step

    def add_attack(
        self,
        images: int,  # examples attacked
        steps: int,  # example-steps of attack computed (one forward + backward each)
        trained: int,  # examples in the training forward/backward
        hard: int = 0,  # HAM: AEs not easy after M steps
        decisions: int = 0,  # HAM: gradient-free forwards at step M
        flip_backs: int = 0,  # HAM: AEs wrong before M and correct at x^M
    ) -> None: ...

    def add_class(self, column: str, y: Tensor, values: Tensor) -> None:
        """Add per-example ``values`` (B,) of labels ``y`` (B,) to the epoch's per-class mean of
        ``column`` (a ``CLASS_STATE`` name): the ``class_state`` row of each class holds the mean
        over the epoch's examples of that class (null for a class with none)."""


class Method:
    """One training method. Subclasses set the class attributes and override ``step``; the rest
    has defaults that fit a method trained from scratch with no per-class state."""

    name: ClassVar[str]  # the value of ``train.method``, and the ``phase`` of its epochs
    title: ClassVar[str]  # how messages name it: "HAM", "PGD-AT"
    # its spec section, a frozen pydantic model: the trial config's section named ``name``
    # (every knob with its default, its unit in a comment, a validator); None: no knobs
    config: ClassVar[type[_Frozen] | None] = None
    # keys outside its section that only it reads (kept where older specs put them)
    reads: ClassVar[tuple[str, ...]] = ()
    # the key whose value w is the epoch it forks from the PGD-AT trunk at (w PGD-AT epochs, then
    # its own), e.g. "ham.warmup_epochs"; None: it never forks
    fork_key: ClassVar[str | None] = None
    # the ``EpochRecord`` diagnostic fields its epochs fill (None on other epochs)
    diagnostics: ClassVar[tuple[str, ...]] = ()

    def own_keys(self) -> tuple[str, ...]:
        """Every key only this method reads: its section's and ``reads``. None of them can change
        the PGD-AT warm-up a fork shares (``spec.trial.WARMUP_FREE_KEYS``)."""
        own = tuple(f"{self.name}.{k}" for k in self.config.model_fields) if self.config else ()
        return (*self.reads, *own)

    def warmup(self, cfg: Any) -> int:
        """Epochs of ``warmup_method`` before the method's own: the value of ``fork_key`` (0
        without one)."""
        if self.fork_key is None:
            return 0
        section, key = self.fork_key.split(".")
        return int(getattr(getattr(cfg, section), key))

    def warmup_method(self, cfg: Any) -> str:
        """The method of the warm-up epochs: PGD-AT, the trunk's, which a fork shares."""
        return TRUNK_METHOD

    def check(self, cfg: Any) -> None:
        """Checks across sections for a trial of this method (raise ``SpecError``); a forking
        method's warm-up fits in the run. A method with checks of its own calls this too."""
        if self.fork_key is None:
            return
        w, epochs = self.warmup(cfg), cfg.train.epochs
        if w > epochs:
            key = self.fork_key.split(".")[1]
            raise SpecError(
                self.fork_key,
                f"{w} is larger than train.epochs ({epochs}); {key} must be in 0..{epochs}",
            )

    def phase(self, cfg: Any, epoch: int) -> str:
        """The method 0-based ``epoch`` trains with (a forking method: its warm-up's before the
        fork)."""
        return self.warmup_method(cfg) if epoch < self.warmup(cfg) else self.name

    def fork_epoch(self, cfg: Any) -> int | None:
        """The epoch a trial forks from the PGD-AT trunk at: the value of ``fork_key`` when it
        is neither 0 (no warm-up) nor the whole run and the warm-up is PGD-AT's; None: the trial
        trains from scratch."""
        if self.fork_key is None or self.warmup_method(cfg) != TRUNK_METHOD:
            return None
        w = self.warmup(cfg)
        return w if 0 < w < cfg.train.epochs else None

    def selectable(self, cfg: Any, epoch: int) -> bool:
        """Can 1-based ``epoch`` be the trial's best (``best.pt``, its best objective)? A forking
        method whose section has ``select_after_warmup: true`` is represented by one of its own
        epochs, unless the warm-up is the whole run."""
        if self.fork_key is None:
            return True
        section = getattr(cfg, self.fork_key.split(".")[0])
        w = self.warmup(cfg)
        if not getattr(section, "select_after_warmup", False) or w >= cfg.train.epochs:
            return True
        return epoch > w

    def step(self, learner: Learner, x: Tensor, y: Tensor, tally: Counts) -> StepOut:
        """Attack one batch and return what the optimizer minimises. x: (B, C, H, W) in [0, 1],
        y: (B,). Called in eval mode (attacks must not move BN statistics) and under the trial's
        autocast; switch to ``learner.model.train()`` for the training forward. Count the work in
        ``tally.add_attack``. Return None to take no optimizer step on this batch."""
        raise NotImplementedError

    def class_state(self, learner: Learner) -> dict[str, Sequence[float]]:
        """Per-class values this epoch trained with, ``CLASS_STATE`` name -> one value per class
        (called after the epoch's last batch, before ``end_epoch`` changes them). Per-example
        means go through ``Counts.add_class`` instead."""
        return {}

    def eval_model(self, learner: Learner) -> nn.Module | None:
        """The model the trial's epoch is evaluated, selected and reported by, when it is not the
        trained one (CFA's weight average); None: the trained model. Called after ``end_epoch``."""
        return None

    def end_epoch(self, learner: Learner, record: Any) -> None:
        """After each epoch trained with this method, once it is evaluated and before its
        checkpoint: the place for per-class state kept between epochs, in
        ``learner.method_state`` (checkpointed with the model, so a restarted trial continues
        exactly). ``record``: the epoch's ``hamsweep.core.train.EpochRecord`` (per-class
        validation counts of the trained model in ``record.evals`` when the epoch was evaluated,
        per-class values of the epoch in ``record.class_state``)."""
