"""Write small CIFAR-10, CIFAR-100 and SVHN datasets in exactly torchvision's on-disk formats.

torchvision checks the md5 of every file even with ``download=False``; each writer returns the
class-attribute patches that point torchvision's checksum table at the files just written, so the
real integrity check still runs. Apply them with ``monkeypatch.setattr(*patch)`` in a test, or with
``setattr(*patch)`` in a script (bench/loader.py imports this module with the repo
root on sys.path).

Images are passed as (N, 3, 32, 32) uint8 (hamsweep's layout), labels as (N,) ints.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

Patch = tuple[type, str, Any]  # (class, attribute, new value) for setattr / monkeypatch.setattr
Arrays = tuple[np.ndarray, np.ndarray]  # images (N, 3, 32, 32) uint8, labels (N,) int


def random_arrays(n: int, num_classes: int, seed: int) -> Arrays:
    """n random images with balanced labels (index mod num_classes) in random order."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    return images, rng.permutation(np.arange(n) % num_classes)


def write_cifar10(root: Path, train: Arrays, test: Arrays, classes: list[str]) -> list[Patch]:
    """``root/cifar-10-batches-py/``: data_batch_1..5 (train split evenly),
    test_batch, batches.meta."""
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    parts = zip(np.array_split(train[0], 5), np.array_split(train[1], 5))
    train_list = [
        [f"data_batch_{i}", _pickle(folder / f"data_batch_{i}", _cifar_batch(x, y, "labels"))]
        for i, (x, y) in enumerate(parts, start=1)
    ]
    test_list = [["test_batch", _pickle(folder / "test_batch", _cifar_batch(*test, "labels"))]]
    meta = {"num_cases_per_batch": 10000, "label_names": classes, "num_vis": 3072}
    md5 = _pickle(folder / "batches.meta", meta)
    return _cifar_patches(CIFAR10, train_list, test_list, md5)


def write_cifar100(root: Path, train: Arrays, test: Arrays, classes: list[str]) -> list[Patch]:
    """``root/cifar-100-python/``: train, test (fine and coarse labels), meta."""
    from torchvision.datasets import CIFAR100

    folder = root / CIFAR100.base_folder
    train_list = [["train", _pickle(folder / "train", _cifar_batch(*train, "fine_labels"))]]
    test_list = [["test", _pickle(folder / "test", _cifar_batch(*test, "fine_labels"))]]
    meta = {"fine_label_names": classes, "coarse_label_names": [f"super{i}" for i in range(20)]}
    md5 = _pickle(folder / "meta", meta)
    return _cifar_patches(CIFAR100, train_list, test_list, md5)


def write_svhn(root: Path, train: Arrays, test: Arrays) -> list[Patch]:
    """``root/train_32x32.mat``, ``root/test_32x32.mat``: X (32, 32, 3, N) uint8,
    y (N, 1) with 10 for digit 0."""
    import scipy.io
    from torchvision.datasets import SVHN

    split_list = {key: list(entry) for key, entry in SVHN.split_list.items()}
    for split, (images, labels) in (("train", train), ("test", test)):
        path = root / split_list[split][1]
        path.parent.mkdir(parents=True, exist_ok=True)
        y = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
        scipy.io.savemat(path, {"X": images.transpose(2, 3, 1, 0), "y": y})
        split_list[split][2] = _md5(path)
    return [(SVHN, "split_list", split_list)]


def _cifar_batch(images: np.ndarray, labels: np.ndarray, key: str) -> dict[str, Any]:
    """One CIFAR pickle: rows of 3072 bytes, the red plane first, each plane row-major."""
    n = len(images)
    batch: dict[str, Any] = {"batch_label": "hamsweep test batch", key: [int(v) for v in labels]}
    if key == "fine_labels":
        batch["coarse_labels"] = [int(v) % 20 for v in labels]
    batch["data"] = np.ascontiguousarray(images.reshape(n, 3 * 32 * 32))
    batch["filenames"] = [f"img_{i}.png" for i in range(n)]
    return batch


def _cifar_patches(
    cls: type, train_list: list[list[str]], test_list: list[list[str]], meta_md5: str
) -> list[Patch]:
    meta = {**cls.meta, "md5": meta_md5}  # type: ignore[attr-defined]
    return [(cls, "train_list", train_list), (cls, "test_list", test_list), (cls, "meta", meta)]


def _pickle(path: Path, obj: dict[str, Any]) -> str:
    """Pickle ``obj`` to ``path`` (protocol 2, as the original Python 2 files) and
    return its md5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)
    return _md5(path)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---- STL-10, Imagenette and image folders ----
def write_stl10(root: Path, train: Arrays, test: Arrays, classes: list[str]) -> list[Patch]:
    """``root/stl10_binary/``: {train,test}_{X,y}.bin as torchvision reads them (X: N x 3 x 96 x 96
    bytes, each plane column-major; y: labels 1..10), an empty unlabeled_X.bin, class_names.txt.
    Images are passed as (N, 3, 96, 96) uint8."""
    from torchvision.datasets import STL10

    folder = root / STL10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for split, (images, labels) in (("train", train), ("test", test)):
        (folder / f"{split}_X.bin").write_bytes(
            np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes()
        )
        (folder / f"{split}_y.bin").write_bytes((np.asarray(labels) + 1).astype(np.uint8).tobytes())
        md5 |= {
            f"{split}_X.bin": _md5(folder / f"{split}_X.bin"),
            f"{split}_y.bin": _md5(folder / f"{split}_y.bin"),
        }
    (folder / "unlabeled_X.bin").write_bytes(b"")
    md5["unlabeled_X.bin"] = _md5(folder / "unlabeled_X.bin")
    (folder / STL10.class_names_file).write_text("\n".join(classes) + "\n")
    train_list = [[name, md5[name]] for name, _ in STL10.train_list]
    test_list = [[name, md5[name]] for name, _ in STL10.test_list]
    return [(STL10, "train_list", train_list), (STL10, "test_list", test_list)]


def write_images(
    folder: Path,
    n: int,
    size: tuple[int, int],
    seed: int,
    suffixes: tuple[str, ...] = (".png", ".jpg"),
) -> list[Path]:
    """n random RGB images of ``size`` (width, height) in ``folder``, alternating the formats of
    ``suffixes``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:03d}{suffixes[i % len(suffixes)]}"
        Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def write_imagenette(
    root: Path, train_per_class: int, val_per_class: int, size: tuple[int, int] = (24, 18)
) -> list[str]:
    """``root/imagenette2-160/{train,val}/<wnid>/*.JPEG`` for Imagenette's 10 classes, and its
    ``noisy_imagenette.csv`` (torchvision does not read it); returns the wnids in order."""
    from torchvision.datasets import Imagenette

    base = root / "imagenette2-160"
    wnids = sorted(Imagenette._WNID_TO_CLASS)
    rows = [
        "path,noisy_labels_0,noisy_labels_1,noisy_labels_5,noisy_labels_25,noisy_labels_50,is_valid"
    ]
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c, wnid in enumerate(wnids):
            for path in write_images(
                base / split / wnid, n, size, seed=100 * c + (split == "val"), suffixes=(".JPEG",)
            ):
                rows.append(
                    f"{path.relative_to(base)},{wnid},{wnid},{wnid},{wnid},{wnid},{split == 'val'}"
                )
    (base / "noisy_imagenette.csv").write_text("\n".join(rows) + "\n")
    return wnids
