"""Datasets as uint8 tensors, the class-stratified validation split, and the on-device loader.

The datasets are ``hamsweep.core.datasets``' (with what is known of each before loading: its
classes, its files, whether it is resized and may be flipped); here is how each is loaded, in
``_LOADERS``: ``cifar10``, ``cifar100``, ``svhn`` (torchvision's files, read as whole arrays),
``imagenette``, ``stl10`` and ``imagefolder`` (``hamsweep.core.folders``: image files decoded once
into a cache, resized to ``data.image_size``) and ``synthetic`` (generated from
``DataConfig.seed``; classes of increasing difficulty, for smoke tests and for checking that
per-class metrics separate easy from hard classes).

The loader keeps the whole split on the device as uint8 and shuffles and augments it there in
batches (as cifar10-airbench does): no PIL and no worker processes in the hot path. Every random
draw comes from a generator seeded from (seed, epoch[, batch]), so a run resumed at any batch sees
exactly the batches it would have seen, without saving loader state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hamsweep.core.datasets import REGISTRY
from hamsweep.errors import DataError
from hamsweep.spec import DataConfig

__all__ = [
    "Dataset",
    "DeviceLoader",
    "Split",
    "check_files",
    "load",
    "stratified_split",
    "subsample",
]

PAD = 4  # pixels of zero padding around the random crop (the standard CIFAR recipe)


@dataclass(frozen=True)
class Split:
    """images: (N, C, H, W) uint8 on CPU; labels: (N,) int64 on CPU."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """One dataset, split three ways; ``classes[label]`` is the name of a label."""

    name: str
    classes: tuple[str, ...]
    train: Split  # training images left after the validation split
    val: Split  # class-stratified held-out part of the training set
    test: Split
    flip: bool  # whether a horizontal flip keeps the label (False for SVHN: digits)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        c, h, w = self.train.images.shape[1:]
        return (c, h, w)


def load(cfg: DataConfig) -> Dataset:
    """Load ``cfg.name`` and hold out ``cfg.val_fraction`` of each training class as validation."""
    train, test, classes = _LOADERS[cfg.name](cfg)
    train_idx, val_idx = stratified_split(train.labels, cfg.val_fraction, cfg.seed)
    return Dataset(
        name=cfg.name,
        classes=classes,
        train=_take(train, train_idx),
        val=_take(train, val_idx),
        test=test,
        flip=REGISTRY[cfg.name].flip,
    )


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx), both sorted int64: per class, round(fraction * n_class) indices go
    to val.

    labels: (N,) int64 >= 0. The val indices are drawn with a generator seeded with ``seed``.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1) but got {fraction}")
    counts = torch.bincount(labels)
    quota = torch.tensor([round(fraction * int(n)) for n in counts], dtype=torch.int64)
    is_val = _pick_per_class(labels, quota, torch.Generator().manual_seed(seed))
    return is_val.logical_not().nonzero().flatten(), is_val.nonzero().flatten()


def subsample(split: Split, max_examples: int | None, seed: int) -> Split:
    """A class-stratified subset of at most ``max_examples`` (None: ``split`` itself), in the
    original order.

    Each class keeps its share of ``max_examples`` (largest remainders get the leftover slots).
    """
    n = len(split)
    if max_examples is None or max_examples >= n:
        return split
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None but got {max_examples}")
    counts = torch.bincount(split.labels)
    exact = counts.double() * max_examples / n
    quota = exact.floor().long()
    # hand the slots lost to flooring to the classes with the largest remainders (stable: low label
    # first)
    order = torch.sort(exact - quota, descending=True, stable=True).indices
    quota[order[: max_examples - int(quota.sum())]] += 1
    keep = _pick_per_class(split.labels, quota, _generator(seed))
    return _take(split, keep.nonzero().flatten())


def _pick_per_class(
    labels: torch.Tensor, quota: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """(N,) bool mask with ``quota[c]`` examples of each class c set, chosen uniformly at random."""
    perm = torch.randperm(len(labels), generator=gen)
    # a stable sort by label of a random permutation: grouped by class, random order within a class
    grouped = perm[torch.sort(labels[perm], stable=True).indices]
    counts = torch.bincount(labels, minlength=len(quota))
    starts = counts.cumsum(0) - counts
    cls = labels[grouped]
    rank = torch.arange(len(labels)) - starts[cls]
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[grouped[rank < quota[cls]]] = True
    return mask


def _take(split: Split, idx: torch.Tensor) -> Split:
    return Split(images=split.images[idx], labels=split.labels[idx])


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints; stable across processes (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


# ------------------------------------------------------------------ torchvision datasets


def _load_cifar(cfg: DataConfig) -> tuple[Split, Split, tuple[str, ...]]:
    """CIFAR-10/100: ``.data`` is (N, 32, 32, 3) uint8 HWC, ``.targets`` a list of ints."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
    train, test = (_torchvision(cfg, cls, train=flag) for flag in (True, False))
    return _cifar_split(train), _cifar_split(test), tuple(train.classes)


def _cifar_split(ds: Any) -> Split:
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
    return Split(images=images, labels=torch.tensor(ds.targets, dtype=torch.int64))


def _load_svhn(cfg: DataConfig) -> tuple[Split, Split, tuple[str, ...]]:
    """SVHN: ``.data`` is already (N, 3, 32, 32) uint8; torchvision has mapped label 10 to
    digit 0."""
    from torchvision import datasets

    train, test = (_torchvision(cfg, datasets.SVHN, split=name) for name in ("train", "test"))
    return _svhn_split(train), _svhn_split(test), tuple(str(digit) for digit in range(10))


def _svhn_split(ds: Any) -> Split:
    # .data is a transposed view of the .mat array: copy it into contiguous NCHW
    return Split(
        images=torch.from_numpy(ds.data).contiguous(), labels=torch.from_numpy(ds.labels).long()
    )


def _torchvision(cfg: DataConfig, cls: Callable[..., Any], **kwargs: Any) -> Any:
    """``cls(root, download, **kwargs)`` with its failures turned into one-line ``DataError``s."""
    try:
        return cls(root=cfg.root, download=cfg.download, **kwargs)
    except (RuntimeError, OSError) as err:  # not found / corrupted; URLError is an OSError
        raise _missing(cfg, err) from None


def _missing(cfg: DataConfig, err: Exception, files: tuple[str, ...] = ()) -> DataError:
    """One line: which files (``files``, else all of them), the folder they must be in, and the ways
    to put them there."""
    folder, every, archive = REGISTRY[cfg.name].files
    where, listed = f"{Path(cfg.root) / folder}/", ", ".join(files or every)
    if cfg.download:
        cause = " ".join(f"{type(err).__name__}: {err}".split())  # one line, whatever the cause
        return DataError(
            f"{cfg.name}: download into {cfg.root}/ failed ({cause}); "
            f"without internet, copy {listed} into {where} and set data.download: false"
        )
    tarball = f" (or {archive} into {cfg.root}/ and set data.download: true)" if archive else ""
    return DataError(
        f"{cfg.name}: {listed} not found{'' if files else ' or corrupted'} in {where} "
        f"(data.root: {cfg.root}); set data.download: true on a machine with internet, "
        f"or copy the files there{tarball}, or set data.root to the folder that holds them"
    )


def check_files(cfg: DataConfig) -> str | None:
    """Whether ``load`` will find its files, looked for without reading, downloading or writing
    anything (``hamsweep validate``; a run loads the data before it starts). None: they are there
    (or the data is generated). A warning line: some are missing and ``data.download`` will fetch
    them, which needs the network and the server, neither checked from here. Missing with the
    download off: the ``DataError`` that ``load`` raises. Whether present files are intact is left
    to ``load``."""
    if cfg.name == "synthetic":
        return None
    # no download: the listing ``load`` starts from, checked as it checks it
    if cfg.name == "imagefolder":
        from hamsweep.core.folders import list_imagefolder

        list_imagefolder(Path(cfg.root))
        return None
    folder, files, archive = REGISTRY[cfg.name].files
    missing = tuple(f for f in files if not (Path(cfg.root) / folder / f).exists())
    if not missing:
        return None
    if not cfg.download:
        raise _missing(cfg, FileNotFoundError(missing[0]), missing)
    fetch = (
        f"extracts them from {Path(cfg.root) / archive}"
        if archive and (Path(cfg.root) / archive).is_file()
        else "downloads them"
    )
    return (
        f"data: {cfg.name}'s {', '.join(missing)} not in {Path(cfg.root) / folder}/ yet; "
        f"the run {fetch} (data.download: true), which cannot be checked from here"
    )


# ------------------------------------------------------------------ synthetic data

# Tuned so that adversarial training separates the classes: a small BN CNN after 6 epochs of PGD-3
# AT (eps 8/255; 5k 32x32 or 2k 16x16 images; with or without crop+flip) had PGD-10 robust accuracy
# ~0.9-1.0 on classes 0-2 and 0.0-0.3 on the last two, roughly decreasing in between. The
# prototypes' per-pixel signal is only a few eps: hardness is a matter of a few pixel levels.
_PROTO_STD = 0.07  # per-pixel std of a class prototype around mid-gray, in [0,1] pixel units
# prototype scale of the easiest and the hardest class (geometric in between)
_CONTRAST = (1.0, 0.6)
# largest share of another class's mean image mixed into an image: easiest, hardest
_BLEND = (0.0, 0.5)
_NOISE = (0.03, 0.10)  # per-pixel Gaussian noise std, easiest and hardest class


def _load_synthetic(cfg: DataConfig) -> tuple[Split, Split, tuple[str, ...]]:
    """Smooth random prototypes, one per class; class c gets harder as c grows (see
    ``_synthetic_split``)."""
    protos = _prototypes(cfg.num_classes, cfg.image_size, _generator(cfg.seed, 0))
    train = _synthetic_split(protos, cfg.train_size, _generator(cfg.seed, 1), cfg.hardest)
    test = _synthetic_split(protos, cfg.test_size, _generator(cfg.seed, 2), cfg.hardest)
    return train, test, tuple(f"c{c}" for c in range(cfg.num_classes))


def _prototypes(k: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """(K, 3, S, S) smooth, mirror-symmetric random patterns, zero-mean, per-pixel std
    ``_PROTO_STD``.

    Mirror symmetry keeps the horizontal flip a label-preserving augmentation (``Dataset.flip``).
    The patterns are orthogonal when the grid allows it, hence equally far apart: a class's
    difficulty comes from its own knobs (contrast, blend, noise), not from which random patterns
    landed close.
    """
    side = _grid_side(k, size)
    coarse = torch.randn(k, 3, side, side, generator=gen)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    flat = (smooth + smooth.flip(-1)).flatten(1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    if k <= _free_dims(side):
        # rows orthonormal; still zero-mean, smooth and symmetric
        flat = torch.linalg.qr(flat.T).Q.T
    flat = flat / flat.std(dim=1, keepdim=True)
    return (_PROTO_STD * flat).view(k, 3, size, size)


def _grid_side(k: int, size: int) -> int:
    """Side of the coarse random grid that is upsampled to ``size``: cells of about 8 pixels, so
    that a random crop (shift up to ``PAD``) keeps most of a pattern, unless K orthogonal patterns
    need more cells."""
    side = max(2, size // 8)
    while _free_dims(side) < k and side < size:
        side += 1
    return side


def _free_dims(side: int) -> int:
    """Dimension of zero-mean, mirror-symmetric RGB patterns on a side x side grid."""
    return 3 * side * -(-side // 2) - 1


def _synthetic_split(
    protos: torch.Tensor, n: int, gen: torch.Generator, hardest: float = 1.0
) -> Split:
    """n images (label = index mod K, so classes are balanced): gray + blend of prototypes + noise.

    As c grows, class c gets a weaker prototype, mixes a larger share (up to ``_BLEND``) of a random
    other class's mean image into each image, and gets more noise: its images spread toward the
    other classes, so more of them sit within eps of a decision boundary. ``hardest`` in (0, 1]
    scales how far toward the hardest setting the last class goes (``data.hardest``).
    """
    k = len(protos)
    labels = torch.arange(n) % k
    # 0 for class 0 (easiest) .. `hardest` for class K-1
    hardness = hardest * labels.float() / (k - 1)
    blend = torch.rand(n, generator=gen) * _lerp(_BLEND, hardness)
    other = (labels + torch.randint(1, k, (n,), generator=gen)) % k
    # weaker prototypes sit closer to gray and to each other: less room before a boundary
    contrast = _CONTRAST[0] * (_CONTRAST[1] / _CONTRAST[0]) ** (hardest * torch.arange(k) / (k - 1))
    mix = torch.zeros(n, k)
    mix[torch.arange(n), labels] = (1 - blend) * contrast[labels]
    mix[torch.arange(n), other] = blend * contrast[other]
    x = (mix @ protos.flatten(1)).add_(0.5)  # (N, C*H*W)
    x.addcmul_(torch.randn(x.shape, generator=gen), _lerp(_NOISE, hardness)[:, None])
    images = x.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return Split(images=images.view(n, *protos.shape[1:]), labels=labels)


def _lerp(ends: tuple[float, float], t: torch.Tensor) -> torch.Tensor:
    return ends[0] + (ends[1] - ends[0]) * t


def _folders(name: str) -> Callable[[DataConfig], tuple[Split, Split, tuple[str, ...]]]:
    """``hamsweep.core.folders``' loader of ``name``, imported when used (PIL and torchvision's
    folder code)."""

    def load_folder(cfg: DataConfig) -> tuple[Split, Split, tuple[str, ...]]:
        from hamsweep.core import folders

        train, test, classes = getattr(folders, f"load_{name}")(cfg)
        return Split(*train), Split(*test), classes

    return load_folder


# one loader for each dataset of the registry (hamsweep.core.datasets), in its order
_LOADERS: dict[str, Callable[[DataConfig], tuple[Split, Split, tuple[str, ...]]]] = {
    "cifar10": _load_cifar,
    "cifar100": _load_cifar,
    "svhn": _load_svhn,
    "imagenette": _folders("imagenette"),
    "stl10": _folders("stl10"),
    "imagefolder": _folders("imagefolder"),
    "synthetic": _load_synthetic,
}


# ------------------------------------------------------------------ the device loader


class DeviceLoader:
    """Whole split held as a uint8 tensor on ``device``; per-epoch shuffle and augmentation on
    tensors, in batches.

    ``epoch(e)`` yields (x, y): x (B, C, H, W) float32 in [0, 1] on ``device``, y (B,) int64 on
    ``device``. The order of epoch e comes from a generator seeded from (seed, e), the augmentation
    of batch b from one seeded from (seed, e, b): ``epoch(e, start_batch=b)`` yields exactly batches
    b.. of ``epoch(e)``. Augmentation: random crop with zero padding ``PAD`` (as torchvision's
    ``RandomCrop(H, padding=4)``) and, if ``flip``, a horizontal flip with p=0.5. Torch's global RNG
    is never touched.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        device: torch.device,
        seed: int,
        shuffle: bool = True,
        augment: bool = False,
        flip: bool = True,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 but got {batch_size}")
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.device, self.seed = batch_size, torch.device(device), seed
        self.shuffle, self.augment, self.flip, self.drop_last = shuffle, augment, flip, drop_last

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = len(self.labels), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def epoch(
        self, epoch: int, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start_batch``.. of epoch ``epoch``; see the class docstring."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in 0..{len(self)} but got {start_batch}")
        return self._batches(epoch, start_batch)

    def _batches(self, epoch: int, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order(epoch)
        for b in range(start_batch, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment:
                x = self._crop_flip(x, _generator(self.seed, epoch, b))
            yield x.float().div_(255), self.labels[idx]

    def _order(self, epoch: int) -> torch.Tensor:
        """(N,) int64 on the device: the example order of ``epoch``."""
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        return torch.randperm(n, generator=_generator(self.seed, epoch)).to(self.device)

    def _crop_flip(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """x: (B, C, H, W) uint8 on the device -> the same shape, each image cropped (and flipped)
        at random.

        One gather from the zero-padded batch (Hp = H + 2 PAD, Wp = W + 2 PAD): output pixel
        (b, c, i, j) reads flat index
        b*C*Hp*Wp + c*Hp*Wp + (dy_b + i)*Wp + dx_b + (W-1-j if flipped else j).
        """
        b, c, h, w = x.shape
        hp, wp = h + 2 * PAD, w + 2 * PAD
        dy, dx = torch.randint(0, 2 * PAD + 1, (2, b, 1), generator=gen).to(self.device)
        # drawn even if unused: same stream
        flipped = torch.rand(b, 1, generator=gen).to(self.device) < 0.5
        arange = partial(torch.arange, device=self.device)
        cols = arange(w).expand(b, w)
        if self.flip:  # a flipped crop reads its columns right to left
            cols = torch.where(flipped, w - 1 - cols, cols)
        # (B, H) flat offsets of the rows read
        rows = (dy + arange(h)) * wp + arange(b)[:, None] * (c * hp * wp)
        # (B, 1, H, W) flat offsets, channel 0
        pixels = rows[:, None, :, None] + (dx + cols)[:, None, None, :]
        planes = arange(c)[:, None, None] * (hp * wp)  # (C, 1, 1) offsets of the channel planes
        padded = F.pad(x, (PAD, PAD, PAD, PAD))  # zeros, as RandomCrop(padding=4) fills
        return torch.take(padded, pixels + planes)
