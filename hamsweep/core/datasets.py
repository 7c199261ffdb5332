"""The datasets a trial may train on: each one's name and what is known of it without loading it.

The one list of datasets. It imports no torch, so the spec validates ``data.name`` against it
(``spec.DATASETS`` is its ``DATASETS``) and ``import hamsweep.spec`` stays light;
``hamsweep.core.data`` loads a dataset by its entry, and the sweep sizes a model by its
``classes`` before any data is read. A new dataset is an entry here and its loader in
``hamsweep.core.data`` (``tests/core/test_datasets.py`` checks that both name the same datasets,
and each entry against what its loader gives).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASETS", "IMAGE_DATASETS", "REGISTRY", "DatasetInfo", "class_count"]


@dataclass(frozen=True)
class DatasetInfo:
    """What is known of one dataset before loading it."""

    # labels it has; None: as many as data.num_classes says (synthetic), or as its folders hold
    # (imagefolder: known only once it is listed)
    classes: int | None
    # its images are resized to data.image_size when loaded (hamsweep.core.folders)
    resized: bool = False
    # a horizontal flip keeps the label: augmentation may flip (not SVHN's digits)
    flip: bool = True
    # the folder torchvision reads under data.root, the files (or folders) there that loading reads,
    # and the archive that torchvision extracts without downloading when it is already in data.root
    # (handy on offline clusters); None: nothing to find (generated, or the user's own folders)
    files: tuple[str, tuple[str, ...], str | None] | None = None


# in the order the spec lists them in its errors
REGISTRY: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        10,
        files=(
            "cifar-10-batches-py",
            (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
            "cifar-10-python.tar.gz",
        ),
    ),
    "cifar100": DatasetInfo(
        100,
        files=("cifar-100-python", ("train", "test", "meta"), "cifar-100-python.tar.gz"),
    ),
    "svhn": DatasetInfo(10, flip=False, files=("", ("train_32x32.mat", "test_32x32.mat"), None)),
    "imagenette": DatasetInfo(
        10, resized=True, files=("imagenette2-160", ("train/", "val/"), "imagenette2-160.tgz")
    ),
    "stl10": DatasetInfo(
        10,
        resized=True,
        files=(
            "stl10_binary",
            ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"),
            "stl10_binary.tar.gz",
        ),
    ),
    "imagefolder": DatasetInfo(None, resized=True),
    "synthetic": DatasetInfo(None),
}

DATASETS = tuple(REGISTRY)  # every valid data.name
IMAGE_DATASETS = tuple(name for name, d in REGISTRY.items() if d.resized)


def class_count(name: str, num_classes: int) -> int:
    """How many labels dataset ``name`` has, without loading it: its own count, else
    ``num_classes`` (``data.num_classes``: synthetic's exact count; for an imagefolder, whose
    folders only loading lists, a stand-in)."""
    return REGISTRY[name].classes or num_classes
