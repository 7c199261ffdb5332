"""hamsweep.core.data: the real torchvision loaders on small files, the splits, the device loader,
synthetic data."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cifar_files import Arrays, Patch, random_arrays, write_cifar10, write_cifar100, write_svhn

from hamsweep.core import data
from hamsweep.errors import DataError
from hamsweep.spec import DataConfig

CPU = torch.device("cpu")


def _apply(monkeypatch: pytest.MonkeyPatch, patches: list[Patch]) -> None:
    for cls, attr, value in patches:
        monkeypatch.setattr(cls, attr, value)


def _write(name: str, root: Path, train: Arrays, test: Arrays, classes: list[str]) -> list[Patch]:
    if name == "svhn":
        return write_svhn(root, train, test)
    writer = write_cifar10 if name == "cifar10" else write_cifar100
    return writer(root, train, test, classes)


# ------------------------------------------------------------------ torchvision datasets

# name -> (classes, train images, test images); every class has at least 2 training images
FILES = {"cifar10": (10, 60, 20), "cifar100": (100, 200, 100), "svhn": (10, 50, 20)}


@pytest.mark.parametrize("name", list(FILES))
def test_load_round_trips_torchvision_files(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k, n_train, n_test = FILES[name]
    train, test = random_arrays(n_train, k, seed=1), random_arrays(n_test, k, seed=2)
    classes = [f"{name}_class{i}" for i in range(k)]
    _apply(monkeypatch, _write(name, tmp_path, train, test, classes))
    ds = data.load(DataConfig(name=name, root=str(tmp_path), val_fraction=0.2, seed=3))

    train_idx, val_idx = data.stratified_split(torch.from_numpy(train[1]).long(), 0.2, seed=3)
    expected = {
        "train": (train, train_idx),
        "val": (train, val_idx),
        "test": (test, torch.arange(n_test)),
    }
    for key, ((images, labels), idx) in expected.items():
        split = getattr(ds, key)
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape == (len(idx), 3, 32, 32) and split.images.is_contiguous()
        assert torch.equal(split.images, torch.from_numpy(images)[idx])
        assert torch.equal(split.labels, torch.from_numpy(labels).long()[idx])
    assert ds.classes == (tuple(str(d) for d in range(10)) if name == "svhn" else tuple(classes))
    assert (ds.num_classes, ds.image_shape, ds.flip) == (k, (3, 32, 32), name != "svhn")


def test_known_pixel_lands_at_its_channel_row_and_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, labels = np.zeros((10, 3, 32, 32), np.uint8), np.arange(10)
    images[4, 2, 5, 9] = 200  # image 4, blue channel, row 5, column 9
    _apply(
        monkeypatch,
        write_cifar10(tmp_path, (images, labels), (images, labels), [str(i) for i in range(10)]),
    )
    ds = data.load(DataConfig(name="cifar10", root=str(tmp_path), val_fraction=0.0))
    assert ds.test.images[4, 2, 5, 9] == 200 and int(ds.test.images.sum()) == 200


def test_svhn_label_10_is_digit_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.zeros((10, 3, 32, 32), np.uint8)
    _apply(monkeypatch, write_svhn(tmp_path, (images, np.arange(10)), (images, np.arange(10))))
    ds = data.load(DataConfig(name="svhn", root=str(tmp_path), val_fraction=0.0))
    assert ds.test.labels.tolist() == list(range(10))  # file holds 10, 1, ..., 9


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("cifar10", "cifar-10-batches-py/"),
        ("cifar100", "cifar-100-python/"),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_missing_files_name_the_folder(name: str, where: str, tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        data.load(DataConfig(name=name, root=str(tmp_path / "nowhere")))
    message = str(err.value)
    assert "\n" not in message and where in message and "nowhere" in message
    assert "data.download: true" in message and message.startswith(name)


def test_corrupted_file_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k = 10
    _apply(
        monkeypatch,
        write_cifar10(
            tmp_path, random_arrays(20, k, 0), random_arrays(10, k, 1), list("abcdefghij")
        ),
    )
    with (tmp_path / "cifar-10-batches-py" / "test_batch").open("ab") as f:
        f.write(b"x")
    with pytest.raises(DataError, match="cifar-10-batches-py/"):
        data.load(DataConfig(name="cifar10", root=str(tmp_path)))


@pytest.mark.parametrize("name", list(FILES))
def test_failed_download_is_one_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision import datasets

    # a closed local port: the real download code runs and fails at once, as it does offline
    dead = "http://127.0.0.1:9/archive"
    if name == "svhn":
        split_list = {
            split: [dead, *entry[1:]] for split, entry in datasets.SVHN.split_list.items()
        }
        monkeypatch.setattr(datasets.SVHN, "split_list", split_list)
    else:
        monkeypatch.setattr(
            datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100, "url", dead
        )
    with pytest.raises(DataError) as err:
        data.load(DataConfig(name=name, root=str(tmp_path), download=True))
    assert (
        "\n" not in str(err.value)
        and "download" in str(err.value)
        and str(tmp_path) in str(err.value)
    )


# ------------------------------------------------------------------ splits


def _labels(counts: list[int], seed: int = 0) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.5])
def test_stratified_split_counts_and_partition(fraction: float) -> None:
    counts = [10, 7, 3, 25, 1]
    labels = _labels(counts)
    train, val = data.stratified_split(labels, fraction, seed=0)
    assert train.dtype == val.dtype == torch.int64
    assert torch.bincount(labels[val], minlength=5).tolist() == [
        round(fraction * n) for n in counts
    ]
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(len(labels)))
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)


def test_stratified_split_is_seeded() -> None:
    labels = _labels([50] * 4)
    first, again, other = (data.stratified_split(labels, 0.3, seed) for seed in (0, 0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])


def test_stratified_split_fraction_zero_keeps_everything() -> None:
    train, val = data.stratified_split(_labels([4, 4]), 0.0, seed=0)
    assert torch.equal(train, torch.arange(8)) and val.numel() == 0


def _split(n: int, k: int = 3, size: int = 8, seed: int = 0) -> data.Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return data.Split(images=images, labels=_labels([n // k + (c < n % k) for c in range(k)], seed))


def test_subsample_is_stratified_and_seeded() -> None:
    split = _split(103, k=4)  # classes of 26, 26, 26, 25
    sub = data.subsample(split, 40, seed=0)
    assert len(sub) == 40
    assert sorted(torch.bincount(sub.labels).tolist()) == [10, 10, 10, 10]
    rows = {tuple(x.flatten().tolist()) for x in split.images}
    assert all(tuple(x.flatten().tolist()) in rows for x in sub.images)
    assert torch.equal(sub.images, data.subsample(split, 40, seed=0).images)
    assert not torch.equal(sub.images, data.subsample(split, 40, seed=1).images)


def test_subsample_uneven_classes_keep_their_share() -> None:
    split = data.Split(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), _labels([70, 20, 10]))
    # 7.7, 2.2, 1.1
    assert torch.bincount(data.subsample(split, 11, seed=0).labels).tolist() == [8, 2, 1]


def test_subsample_none_or_large_is_unchanged() -> None:
    split = _split(30)
    assert (
        data.subsample(split, None, seed=0) is split and data.subsample(split, 30, seed=0) is split
    )


# ------------------------------------------------------------------ device loader


def _indexed_split(n: int, size: int = 8) -> data.Split:
    """Random images whose label is their own index, so a batch tells where each image came from."""
    g = torch.Generator().manual_seed(n)
    return data.Split(
        torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.arange(n)
    )


def _collect(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches of an epoch concatenated: x (N, C, H, W), y (N,)."""
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def test_epoch_covers_every_example_once() -> None:
    split = _indexed_split(50)
    loader = data.DeviceLoader(split, 16, device=CPU, seed=0)
    x, y = _collect(loader.epoch(0))
    assert len(loader) == 4 and torch.equal(y.sort().values, torch.arange(50))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.device == y.device == CPU
    assert torch.equal(x, split.images[y].float() / 255)  # no augmentation: the images themselves


def test_drop_last_and_no_shuffle() -> None:
    loader = data.DeviceLoader(
        _indexed_split(50), 16, device=CPU, seed=0, shuffle=False, drop_last=True
    )
    _, y = _collect(loader.epoch(5))
    assert len(loader) == 3 and torch.equal(y, torch.arange(48))


def test_each_epoch_and_seed_has_its_own_order() -> None:
    split = _indexed_split(64)
    order = {}
    for seed, e in ((0, 0), (0, 1), (1, 0), (0, 0)):  # (0, 0) twice, from a fresh loader
        loader = data.DeviceLoader(split, 16, device=CPU, seed=seed)
        order.setdefault((seed, e), []).append(_collect(loader.epoch(e))[1])
    assert torch.equal(*order[0, 0])
    assert not torch.equal(order[0, 0][0], order[0, 1][0]) and not torch.equal(
        order[0, 0][0], order[1, 0][0]
    )


@pytest.mark.parametrize("start", [0, 2, 3, 4])
def test_resume_mid_epoch_is_bitwise_identical(start: int) -> None:
    loader = data.DeviceLoader(_indexed_split(60), 16, device=CPU, seed=7, augment=True)
    full = list(loader.epoch(3))
    tail = list(
        data.DeviceLoader(_indexed_split(60), 16, device=CPU, seed=7, augment=True).epoch(
            3, start_batch=start
        )
    )
    assert len(tail) == len(full) - start
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[start:], tail)
    )


def test_start_batch_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"start_batch must be in 0..2"):
        data.DeviceLoader(_indexed_split(20), 16, device=CPU, seed=0).epoch(0, start_batch=3)


def _crops(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, 2, 9, 9, C, H, W): every flip x row offset x column offset of a
    zero-padded crop."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (data.PAD,) * 4)
    # a flipped crop is a crop of the flipped pad
    both = torch.stack([padded, padded.flip(-1)], dim=1)
    return both.unfold(-2, h, 1).unfold(-2, w, 1).permute(0, 1, 3, 4, 2, 5, 6)


@pytest.mark.parametrize("flip", [True, False])
def test_augmentation_is_a_zero_padded_crop_and_flip(flip: bool) -> None:
    split = _indexed_split(300)
    loader = data.DeviceLoader(split, 64, device=CPU, seed=0, augment=True, flip=flip)
    x, y = _collect(loader.epoch(0))
    assert x.min() >= 0 and x.max() <= 1 and x.dtype == torch.float32
    source = _crops(split.images[y])
    # (N, 2, 9, 9)
    match = (source == (x * 255).round().to(torch.uint8)[:, None, None, None]).flatten(-3).all(-1)
    assert match.flatten(1).any(1).all(), "an augmented image is no crop or flip of its source"
    hit = match.flatten(1).float().argmax(1)  # first matching (flip, dy, dx) per image
    flipped, dy = hit // 81, hit % 81 // 9
    assert set(dy.tolist()) == set(range(9))  # every offset of the 9 occurs
    assert (0.35 < flipped.float().mean() < 0.65) if flip else not flipped.any()


def test_augmentation_differs_between_seeds_and_keeps_global_rng() -> None:
    split, state = _indexed_split(64), torch.get_rng_state()
    x0 = next(
        data.DeviceLoader(split, 64, device=CPU, seed=0, shuffle=False, augment=True).epoch(0)
    )[0]
    x1 = next(
        data.DeviceLoader(split, 64, device=CPU, seed=1, shuffle=False, augment=True).epoch(0)
    )[0]
    assert not torch.equal(x0, x1) and torch.equal(state, torch.get_rng_state())


# ------------------------------------------------------------------ synthetic


def _synthetic(**kwargs: int) -> data.Dataset:
    return data.load(DataConfig(name="synthetic", **kwargs))


def test_synthetic_shapes_balance_and_determinism() -> None:
    ds = _synthetic(num_classes=5, image_size=16, train_size=500, test_size=100, seed=3)
    assert (
        ds.image_shape == (3, 16, 16) and ds.classes == ("c0", "c1", "c2", "c3", "c4") and ds.flip
    )
    assert len(ds.train) + len(ds.val) == 500 and len(ds.test) == 100
    assert ds.train.images.dtype == torch.uint8 and ds.test.labels.dtype == torch.int64
    for split in (ds.val, ds.test):
        assert len(set(torch.bincount(split.labels).tolist())) == 1
    assert torch.bincount(torch.cat([ds.train.labels, ds.val.labels])).tolist() == [100] * 5
    again, other = (
        _synthetic(num_classes=5, image_size=16, train_size=500, test_size=100, seed=s)
        for s in (3, 4)
    )
    assert all(
        torch.equal(getattr(ds, s).images, getattr(again, s).images)
        for s in ("train", "val", "test")
    )
    assert not torch.equal(ds.test.images, other.test.images)


def _robust_ncm(ds: data.Dataset, eps: float) -> torch.Tensor:
    """Per-class accuracy of the nearest-class-mean classifier under the worst L-inf
    attack of radius eps.

    The classifier is linear (score_j = 2 mu_j.x - |mu_j|^2), so the worst attack is exact: it
    lowers the margin to class j by eps * |2 (mu_y - mu_j)|_1. eps=0 gives the clean accuracy.
    -> (K,)
    """
    x_train, x_test = (s.images.flatten(1).float() / 255 for s in (ds.train, ds.test))
    mu = torch.stack([x_train[ds.train.labels == c].mean(0) for c in range(ds.num_classes)])
    scores = 2 * x_test @ mu.T - (mu**2).sum(1)
    y = ds.test.labels
    l1 = (2 * (mu[:, None] - mu[None])).abs().sum(-1)  # (K, K)
    margin = scores.gather(1, y[:, None]) - scores - eps * l1[y]
    margin[torch.arange(len(y)), y] = float("inf")
    correct = (margin.min(1).values > 0).float()
    return torch.zeros(ds.num_classes).index_add_(0, y, correct) / torch.bincount(y)


def test_synthetic_classes_differ_in_robust_difficulty() -> None:
    ds = _synthetic(train_size=4000, test_size=1000)
    clean, robust = _robust_ncm(ds, 0.0), _robust_ncm(ds, 8 / 255)
    assert clean.min() > 0.9  # every class is learnable ...
    assert robust[0] > 0.95 and robust[-1] < 0.4  # ... but only the easy ones robustly at 8/255
    assert robust[:3].mean() > robust[3:7].mean() > robust[7:].mean()


def test_synthetic_flip_keeps_the_class() -> None:
    ds = _synthetic(train_size=2000, test_size=500)
    flipped = dataclasses.replace(ds, test=data.Split(ds.test.images.flip(-1), ds.test.labels))
    assert ds.flip and torch.allclose(_robust_ncm(flipped, 0.0), _robust_ncm(ds, 0.0), atol=0.05)


def test_synthetic_hardest_makes_the_last_class_easier_and_leaves_the_first_alone():
    import numpy as np

    from hamsweep.core.data import load
    from hamsweep.spec import DataConfig

    def spread(hardest: float) -> list[float]:
        """Per class: the mean distance of an image to its class's mean image (noise + blend)."""
        split = load(
            DataConfig(
                name="synthetic",
                num_classes=5,
                image_size=8,
                train_size=500,
                hardest=hardest,
                val_fraction=0,
            )
        ).train
        x, y = split.images.float().numpy() / 255, split.labels.numpy()
        return [float(np.abs(x[y == c] - x[y == c].mean(0)).mean()) for c in range(5)]

    full, easier = spread(1.0), spread(0.4)
    assert easier[-1] < 0.7 * full[-1]  # the hardest class is much less spread out
    assert abs(easier[0] - full[0]) < 0.1 * full[0]  # class 0 is the same easiest setting
    assert easier == sorted(easier) and full == sorted(full)  # still from easiest to hardest


def test_synthetic_hardest_outside_0_1_is_a_one_line_error():
    from hamsweep.errors import SpecError
    from hamsweep.spec import DataConfig, validate

    with pytest.raises(SpecError, match=r"^hardest: hardest must be in \(0, 1\] but got 0.0$"):
        validate(DataConfig, {"name": "synthetic", "hardest": 0})
