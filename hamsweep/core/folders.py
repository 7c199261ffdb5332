"""Datasets of image files and STL-10 (each split as (images, labels) tensors; ``data`` makes them
``Split``s): Imagenette (torchvision's ``Imagenette``), a researcher's own ``train/<class>/*`` and
``test/<class>/*`` folders (torchvision's ``ImageFolder``), and STL-10 (torchvision's ``STL10``, its
labelled train and test splits), all as uint8 ``Split``s of ``data.image_size`` pixels a side.

**Resizing**, the same for every file and deterministic: the shorter side is scaled to
``image_size`` with PIL's bicubic filter (antialiased: its support widens with the scale factor),
then the centre square is cropped (torchvision's ``Resize(s)`` + ``CenterCrop(s)``, the standard
ImageNet evaluation transform: aspect ratios are kept, the edges of a long side are dropped).
STL-10's square 96x96 arrays are resized the same way (PIL, bicubic) only when
``image_size`` is not 96.

**Cache.** Decoding thousands of files is slow, and every trial loads its data: the decoded arrays
of a folder split are kept in ``.hamsweep-cache/`` inside ``data.root`` (or, where that is not
writable, in ``~/.cache/hamsweep``), as one ``.npz`` per split, named by a hash of the split's file
listing (path, size, modification time), ``image_size`` and ``RESAMPLE``, and written to a
temporary name then renamed: a changed file, size or resize method makes a new cache, and a crash
never leaves a half-written one. torch and PIL only (through torchvision): no Ray.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hamsweep.errors import DataError

__all__ = [
    "CACHE_DIR",
    "RESAMPLE",
    "decode",
    "list_imagefolder",
    "load_imagefolder",
    "load_imagenette",
    "load_stl10",
]

CACHE_DIR = ".hamsweep-cache"  # in data.root: decoded folder splits
# part of the cache key: change it when the resize changes
RESAMPLE = "pil-bicubic-shorter-side-center-crop-v1"


def _resize(image: Any, size: int) -> np.ndarray:
    """A PIL image -> (3, size, size) uint8: shorter side to ``size`` (bicubic), centre square."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def decode(paths: Sequence[str], size: int) -> np.ndarray:
    """(N, 3, size, size) uint8 from image files; an unreadable file is a
    ``DataError`` naming it."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                out[i] = _resize(image, size)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DataError(
                f"{path}: cannot be read as an image "
                f"({type(err).__name__}: {err}); remove or replace it"
            ) from None
    return out


def _cache_key(samples: Sequence[tuple[str, int]], size: int) -> str:
    h = hashlib.sha1(f"{RESAMPLE}|{size}".encode())
    for path, label in samples:
        st = os.stat(path)
        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    return h.hexdigest()[:16]


def _cache_dirs(root: Path) -> list[Path]:
    return [root / CACHE_DIR, Path.home() / ".cache" / "hamsweep"]


def _cached_split(
    root: Path, name: str, samples: Sequence[tuple[str, int]], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, S, S) uint8, labels (N,) int64) of ``samples``, from the
    cache or decoded once."""
    key = f"{name}-{size}px-{_cache_key(samples, size)}.npz"
    for folder in _cache_dirs(root):
        if (folder / key).is_file():
            with np.load(folder / key) as cached:
                return torch.from_numpy(cached["images"]), torch.from_numpy(cached["labels"])
    images = decode([p for p, _ in samples], size)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    for folder in _cache_dirs(root):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{key}.tmp-{os.getpid()}.npz"
            np.savez(tmp, images=images, labels=labels)
            os.replace(tmp, folder / key)
            break
        except OSError:  # a read-only data folder: the next place
            continue
    return torch.from_numpy(images), torch.from_numpy(labels)


# ---- Imagenette ----
def load_imagenette(cfg: Any) -> tuple[Any, Any, tuple[str, ...]]:
    """imagenette2-160 (``data.root/imagenette2-160/{train,val}/<wnid>/*.JPEG``): train and val as
    train and test, resized to ``data.image_size`` (32 in the HAM paper);
    classes by their first name."""
    from torchvision import datasets

    splits = []
    for split in ("train", "val"):
        try:  # the loader returns the path: decoding (and its cache) is ours
            ds = datasets.Imagenette(
                cfg.root, split=split, size="160px", download=cfg.download, loader=lambda p: p
            )
        except (RuntimeError, OSError) as err:
            raise DataError(
                f"imagenette: {Path(cfg.root) / 'imagenette2-160'}/ not found or incomplete "
                f"({err}); copy imagenette2-160.tgz's folder there (train/ and val/), or set "
                "data.download: true"
            ) from None
        except KeyError as err:
            raise DataError(
                f"imagenette: {Path(cfg.root) / 'imagenette2-160' / split}/ has a class folder "
                f"{err} that is not one of Imagenette's 10 WordNet ids"
            ) from None
        samples = [ds[i] for i in range(len(ds))]
        if not samples:
            raise DataError(
                f"imagenette: {Path(cfg.root) / 'imagenette2-160' / split}/ holds no .JPEG images"
            )
        splits.append(_cached_split(Path(cfg.root), f"imagenette-{split}", samples, cfg.image_size))
    return splits[0], splits[1], tuple(names[0] for names in ds.classes)


# ---- ImageFolder ----
def load_imagefolder(cfg: Any) -> tuple[Any, Any, tuple[str, ...]]:
    """``data.root/train/<class>/*`` and ``data.root/test/<class>/*`` (any format PIL reads; the
    classes are the folder names in sorted order, the same in both)."""
    root = Path(cfg.root)
    train, test, classes = list_imagefolder(root)
    return (
        _cached_split(root, "imagefolder-train", train, cfg.image_size),
        _cached_split(root, "imagefolder-test", test, cfg.image_size),
        classes,
    )


def list_imagefolder(
    root: Path,
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], tuple[str, ...]]:
    """The (path, label) samples of ``root/train/`` and ``root/test/`` and the class names, checked
    (both folders there, no class folder without images, the same classes in both) without opening
    an image or writing anything: what ``hamsweep validate`` checks of an image folder."""
    found = {split: _image_folder(root / split) for split in ("train", "test")}
    (train_classes, train), (test_classes, test) = found["train"], found["test"]
    if train_classes != test_classes:
        only = sorted(set(train_classes) ^ set(test_classes))
        raise DataError(
            f"imagefolder: {root}/train/ and {root}/test/ have different classes "
            f"({', '.join(only)} in only one); both need the same class folders"
        )
    return train, test, tuple(train_classes)


def _image_folder(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """torchvision's ImageFolder listing of ``folder``: (class names, [(path, label)])."""
    from torchvision import datasets

    if not folder.is_dir():
        raise DataError(
            f"imagefolder: {folder}/ not found; data.root must hold train/<class>/ and "
            "test/<class>/ folders of images"
        )
    empty = [p.name for p in sorted(folder.iterdir()) if p.is_dir() and not _has_images(p)]
    if empty:
        raise DataError(
            f"imagefolder: {folder}/{empty[0]}/ holds no images (.jpg, .png, ...); add images or "
            "remove the folder"
        )
    try:
        ds = datasets.ImageFolder(str(folder), loader=lambda p: p)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"imagefolder: {folder}/: {err}") from None
    return list(ds.classes), list(ds.samples)


def _has_images(folder: Path) -> bool:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return any(p.suffix.lower() in IMG_EXTENSIONS for p in folder.rglob("*") if p.is_file())


# ---- STL-10 ----
def load_stl10(cfg: Any) -> tuple[Any, Any, tuple[str, ...]]:
    """STL-10's labelled train (5,000) and test (8,000) images (``data.root/stl10_binary/``), 96x96,
    resized to ``data.image_size`` when it is not 96."""
    from torchvision import datasets

    splits = []
    for split in ("train", "test"):
        try:
            ds = datasets.STL10(cfg.root, split=split, download=cfg.download)
        except (RuntimeError, OSError) as err:
            raise DataError(
                f"stl10: {Path(cfg.root) / 'stl10_binary'}/ not found or corrupted ({err}); copy "
                "stl10_binary.tar.gz's folder there, or set data.download: true"
            ) from None
        images = ds.data if cfg.image_size == 96 else _resize_arrays(ds.data, cfg.image_size)
        splits.append(
            (
                torch.from_numpy(np.ascontiguousarray(images)),
                torch.from_numpy(ds.labels.astype(np.int64)),
            )
        )
    return splits[0], splits[1], tuple(ds.classes)


def _resize_arrays(images: np.ndarray, size: int) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, 3, size, size), each image as ``_resize`` does."""
    from PIL import Image

    return (
        np.stack([_resize(Image.fromarray(img.transpose(1, 2, 0)), size) for img in images])
        if len(images)
        else np.empty((0, 3, size, size), dtype=np.uint8)
    )
