"""Imagenette, STL-10 and image folders: tiny files in each one's own on-disk format, loaded through
torchvision; resizing, the decode cache, every error; a trial on each, and the class names in
Parquet."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cifar_files import write_imagenette, write_images, write_stl10
from conftest import hamsweep, write_spec

from hamsweep.core import data, folders
from hamsweep.core.train import run
from hamsweep.errors import DataError, SpecError
from hamsweep.spec import DataConfig, TrialConfig, validate

STL_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def _cfg(**data_) -> TrialConfig:
    return validate(
        TrialConfig,
        {
            "data": {"val_fraction": 0.25, **data_},
            "model": {"name": "small_cnn", "width": 4},
            "train": {"method": "ham", "epochs": 2, "batch_size": 16, "attack_steps": 2},
            "ham": {"warmup_epochs": 1, "drop_step": 1},
            "eval": {"attack_steps": 2},
        },
    )


def _folder(root: Path, classes: dict[str, tuple[int, int]]) -> Path:
    """root/train/<class>/ and root/test/<class>/ with (train, test) images each, PNG and JPEG,
    20x14."""
    for c, (name, (n_train, n_test)) in enumerate(classes.items()):
        write_images(root / "train" / name, n_train, (20, 14), seed=c)
        write_images(root / "test" / name, n_test, (20, 14), seed=50 + c)
    return root


def test_imagenette_loads_through_torchvision_resized_and_named(tmp_path):
    write_imagenette(tmp_path, train_per_class=4, val_per_class=2)
    ds = data.load(_cfg(name="imagenette", root=str(tmp_path), image_size=8).data)
    assert ds.classes[0] == "tench" and ds.num_classes == 10 and ds.image_shape == (3, 8, 8)
    assert len(ds.train) + len(ds.val) == 40 and len(ds.test) == 20 and ds.flip
    assert ds.train.images.dtype.is_floating_point is False


def test_the_resize_is_the_shorter_side_then_the_centre_square(tmp_path):
    from PIL import Image

    img = np.zeros((10, 30, 3), dtype=np.uint8)  # 30 wide, 10 high: the middle 10x10 is white
    img[:, 10:20] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(img).save(path)
    out = folders.decode([str(path)], 10)
    assert out.shape == (1, 3, 10, 10) and out.min() == 255  # only the centre square is kept
    assert folders.decode([str(path)], 10).tobytes() == out.tobytes()  # deterministic


def test_stl10_keeps_96_or_resizes(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (20, 3, 96, 96), dtype=np.uint8), np.arange(20) % 10)
    test = (rng.integers(0, 256, (10, 3, 96, 96), dtype=np.uint8), np.arange(10) % 10)
    for patch in write_stl10(tmp_path, train, test, STL_CLASSES):
        monkeypatch.setattr(*patch)
    full = data.load(_cfg(name="stl10", root=str(tmp_path), image_size=96, val_fraction=0.0).data)
    assert full.classes == tuple(STL_CLASSES) and full.image_shape == (3, 96, 96)
    assert (
        np.array_equal(full.train.images.numpy(), train[0])
        and full.train.labels.tolist() == train[1].tolist()
    )
    small = data.load(_cfg(name="stl10", root=str(tmp_path), image_size=32).data)
    assert small.image_shape == (3, 32, 32) and len(small.test) == 10


def test_an_image_folder_is_decoded_once_then_read_from_its_cache(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs", {"benign": (6, 2), "malignant": (6, 2), "normal": (6, 2)})
    cfg = _cfg(name="imagefolder", root=str(root), image_size=12).data
    first = data.load(cfg)
    assert first.classes == ("benign", "malignant", "normal") and first.image_shape == (3, 12, 12)
    assert len(list((root / folders.CACHE_DIR).glob("*.npz"))) == 2  # train and test
    monkeypatch.setattr(
        folders, "decode", lambda *a: pytest.fail("decoded again: the cache was not used")
    )
    again = data.load(cfg)
    assert again.train.images.equal(first.train.images) and again.test.labels.equal(
        first.test.labels
    )
    monkeypatch.undo()
    (root / "test" / "normal" / "img_000.png").touch()  # a changed file: a new cache, decoded again
    data.load(cfg)
    assert len(list((root / folders.CACHE_DIR).glob("*.npz"))) == 3
    # another size: another cache
    data.load(_cfg(name="imagefolder", root=str(root), image_size=16).data)
    assert len(list((root / folders.CACHE_DIR).glob("*16px*.npz"))) == 2


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_train", "train/ not found"),
        ("empty_class", "normal/ holds no images"),
        ("unreadable", "img_000.png: cannot be read as an image"),
        ("mismatch", "different classes (extra in only one)"),
    ],
)
def test_image_folder_errors_are_one_line_naming_what_to_fix(tmp_path, breakage, message):
    root = _folder(tmp_path / "imgs", {"benign": (2, 1), "normal": (2, 1)})
    if breakage == "no_train":
        import shutil

        shutil.rmtree(root / "train")
    elif breakage == "empty_class":
        for p in (root / "train" / "normal").iterdir():
            p.unlink()
    elif breakage == "unreadable":
        (root / "test" / "normal" / "img_000.png").write_bytes(b"not an image")
    else:
        write_images(root / "test" / "extra", 1, (20, 14), seed=9)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        data.load(_cfg(name="imagefolder", root=str(root), image_size=8).data)
    assert "\n" not in str(err.value)


def test_missing_imagenette_and_stl10_name_their_folders(tmp_path):
    with pytest.raises(DataError, match="imagenette2-160/ not found"):
        data.load(_cfg(name="imagenette", root=str(tmp_path)).data)
    with pytest.raises(DataError, match="stl10_binary/ not found"):
        data.load(_cfg(name="stl10", root=str(tmp_path)).data)


def test_an_image_size_below_8_is_a_spec_error():
    with pytest.raises(SpecError, match=r"^data.image_size: 4 is too small for imagefolder"):
        validate(DataConfig, {"name": "imagefolder", "image_size": 4}, "data")
    assert DataConfig(name="synthetic", image_size=4).image_size == 4  # synthetic data may be tiny


@pytest.mark.parametrize("name", ["imagenette", "stl10", "imagefolder"])
def test_a_trial_trains_on_each(tmp_path, monkeypatch, name):
    if name == "imagenette":
        write_imagenette(tmp_path, train_per_class=4, val_per_class=2)
    elif name == "stl10":
        rng = np.random.default_rng(1)
        for patch in write_stl10(
            tmp_path,
            (rng.integers(0, 256, (40, 3, 96, 96), dtype=np.uint8), np.arange(40) % 10),
            (rng.integers(0, 256, (20, 3, 96, 96), dtype=np.uint8), np.arange(20) % 10),
            STL_CLASSES,
        ):
            monkeypatch.setattr(*patch)
    else:
        _folder(tmp_path, {"a": (8, 2), "b": (8, 2)})
    records = run(_cfg(name=name, root=str(tmp_path), image_size=8), workdir=tmp_path / "run")
    assert [r.epoch for r in records] == [1, 2] and records[-1].phase == "ham"
    test = [e for e in records[-1].evals if e.split == "test"]
    # per class, every test image
    assert test and sum(test[0].n) == (20 if name != "imagefolder" else 4)


def test_hamsweep_train_stores_the_folder_names_as_class_names(tmp_path):
    root = _folder(tmp_path / "imgs", {"benign": (8, 2), "malignant": (8, 2)})
    spec = write_spec(
        tmp_path / "f.yaml",
        data={"name": "imagefolder", "root": str(root), "image_size": 8},
        train={"epochs": 1},
        ham={"warmup_epochs": 0},
    )
    proc = hamsweep("train", str(spec), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    names = set(pq.read_table(tmp_path / "out" / "classes").column("class_name").to_pylist())
    assert names == {"benign", "malignant"}


def test_a_missing_folder_stops_a_sweep_before_anything_starts(tmp_path):
    spec = write_spec(
        tmp_path / "f.yaml",
        data={"name": "imagefolder", "root": str(tmp_path / "nowhere"), "image_size": 8},
    )
    proc = hamsweep("run", str(spec), "--out", str(tmp_path / "out"))
    assert (
        proc.returncode == 2 and proc.stderr.count("\n") == 1 and "train/ not found" in proc.stderr
    ), proc.stderr
    assert not (tmp_path / "out" / "ray").exists()
