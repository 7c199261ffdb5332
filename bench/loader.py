"""Images/s of one augmented training epoch: hamsweep's DeviceLoader vs torchvision's DataLoader.

    python bench/loader.py [--n 10000] [--repeats 3]

Writes a CIFAR-10-format dataset of ``--n`` random images to a temporary folder (with the writer of
tests/cifar_files.py, pointing torchvision's md5 table at it as the tests do), then times full
epochs of batch 128 with random crop (pad 4) + horizontal flip, batches moved to the device:

- ``DeviceLoader`` on CPU, and on CUDA when there is one;
- ``DataLoader(CIFAR10(transform=RandomCrop + RandomHorizontalFlip + ToTensor), shuffle=True)`` with
  0 and 2 worker processes (persistent, so worker start-up is not counted).

Prints a table and, per device, the ratio DeviceLoader / best DataLoader, measured in this run.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root: hamsweep and tests.cifar_files

from hamsweep.core import data  # noqa: E402
from hamsweep.spec import DataConfig  # noqa: E402
from tests.cifar_files import random_arrays, write_cifar10  # noqa: E402

BATCH = 128  # examples per batch, as in training
WORKERS = (0, 2)  # DataLoader worker processes to try

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def main() -> None:
    args = _parse()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as root:
        _write_dataset(Path(root), args.n)
        rows = [
            ("DeviceLoader", dev, "-", _time_device_loader(root, dev, args.repeats))
            for dev in devices
        ]
        for dev, w in itertools.product(devices, WORKERS):
            rows.append(("DataLoader", dev, str(w), _time_dataloader(root, dev, w, args.repeats)))
    _report(rows, args.n)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--n", type=int, default=10_000, help="training images in the fake CIFAR-10 (default 10000)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed epochs per loader, after one warm-up epoch"
    )
    return parser.parse_args()


def _write_dataset(root: Path, n: int) -> None:
    """CIFAR-10 files of n random training images (and 100 test images) with
    torchvision's md5s patched."""
    classes = [f"class{i}" for i in range(10)]
    for cls, attr, value in write_cifar10(
        root, random_arrays(n, 10, 0), random_arrays(100, 10, 1), classes
    ):
        setattr(cls, attr, value)


def _time_device_loader(root: str, device: torch.device, repeats: int) -> float:
    """Median seconds per epoch; loading the files and the copy to the device are not counted."""
    split = data.load(DataConfig(name="cifar10", root=root, val_fraction=0.0)).train
    loader = data.DeviceLoader(split, BATCH, device=device, seed=0, augment=True)
    return _median_epoch(lambda epoch: loader.epoch(epoch), device, repeats)


def _time_dataloader(root: str, device: torch.device, workers: int, repeats: int) -> float:
    """Median seconds per epoch of torchvision's PIL pipeline, each batch moved to ``device``."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    augment = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ]
    )
    dataset = datasets.CIFAR10(root, train=True, transform=augment)
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    return _median_epoch(lambda epoch: loader, device, repeats)


def _median_epoch(
    epoch_batches: Callable[[int], Batches], device: torch.device, repeats: int
) -> float:
    """Median wall seconds to consume every batch of an epoch (epoch 0 is a warm-up, not timed)."""
    times = []
    for epoch in range(repeats + 1):
        start = time.perf_counter()
        for x, y in epoch_batches(epoch):
            x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the device loader's work is asynchronous on CUDA
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _report(rows: list[tuple[str, torch.device, str, float]], n: int) -> None:
    print(
        f"one epoch of {n} CIFAR-10-format images, batch {BATCH}, crop (pad 4) + flip, torch "
        f"{torch.__version__}"
    )
    print(f"{'loader':<13} {'device':<7} {'workers':>7} {'s/epoch':>9} {'images/s':>10}")
    for name, device, workers, seconds in rows:
        print(f"{name:<13} {device.type:<7} {workers:>7} {seconds:>9.3f} {n / seconds:>10.0f}")
    for device in dict.fromkeys(row[1] for row in rows):
        ours = min(s for name, d, _, s in rows if d == device and name == "DeviceLoader")
        best = min(s for name, d, _, s in rows if d == device and name == "DataLoader")
        print(f"{device.type}: DeviceLoader / best DataLoader = {best / ours:.1f}x images/s")


if __name__ == "__main__":
    main()
