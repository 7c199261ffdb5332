"""The dataset registry (``hamsweep.core.datasets``) is the one list of datasets: the spec accepts
exactly its names, ``core.data`` has a loader for each, and what it says of a dataset before loading
(its classes, whether it is resized, its files) is what loading that dataset gives. (Its ``flip`` is
what ``core.data.load`` uses: ``tests/core/test_data.py`` checks SVHN's.)"""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
from cifar_files import (
    random_arrays,
    write_cifar10,
    write_cifar100,
    write_imagenette,
    write_images,
    write_stl10,
    write_svhn,
)

from hamsweep import spec
from hamsweep.core import data, datasets
from hamsweep.errors import SpecError
from hamsweep.spec import DataConfig, TrialConfig, validate


def test_the_spec_accepts_exactly_the_registry() -> None:
    names = typing.get_args(DataConfig.model_fields["name"].annotation)
    assert spec.DATASETS == datasets.DATASETS == tuple(names) == tuple(datasets.REGISTRY)
    assert {"imagenette", "stl10", "imagefolder", "synthetic"} <= set(spec.DATASETS)
    for name in spec.DATASETS:
        assert DataConfig(name=name).name == name
    with pytest.raises(SpecError) as err:
        validate(TrialConfig, {"data": {"name": "mnist"}})
    assert str(err.value).startswith("data.name: ") and "'mnist'" in str(err.value)
    assert all(f"'{name}'" in str(err.value) for name in spec.DATASETS)


def test_core_data_loads_every_dataset_of_the_registry_and_no_other() -> None:
    assert tuple(data._LOADERS) == datasets.DATASETS


def test_the_image_size_floor_holds_for_the_resized_datasets_only() -> None:
    for name, info in datasets.REGISTRY.items():
        if info.resized:
            with pytest.raises(SpecError, match=f"data.image_size: 4 is too small for {name}"):
                validate(TrialConfig, {"data": {"name": name, "image_size": 4}})
        else:
            assert (
                validate(TrialConfig, {"data": {"name": name, "image_size": 4}}).data.image_size
                == 4
            )


def test_importing_the_spec_imports_no_torch() -> None:
    code = "import sys, hamsweep.spec; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---- each entry against what its loader gives, on tiny files in each dataset's own format ----
def _tiny(name: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Write a tiny ``name`` under ``root``; the DataConfig fields that load it."""
    fields: dict[str, object] = {"name": name, "root": str(root), "val_fraction": 0.0}
    patches = []
    if name in ("cifar10", "cifar100", "svhn"):
        k = 100 if name == "cifar100" else 10
        train, test = random_arrays(2 * k, k, seed=1), random_arrays(k, k, seed=2)
        classes = [f"c{i}" for i in range(k)]
        patches = (
            write_svhn(root, train, test)
            if name == "svhn"
            else (write_cifar10 if name == "cifar10" else write_cifar100)(
                root, train, test, classes
            )
        )
    elif name == "stl10":
        rng = np.random.default_rng(0)
        train = (rng.integers(0, 256, (20, 3, 96, 96), dtype=np.uint8), np.arange(20) % 10)
        test = (rng.integers(0, 256, (10, 3, 96, 96), dtype=np.uint8), np.arange(10) % 10)
        patches = write_stl10(root, train, test, [f"c{i}" for i in range(10)])
        fields["image_size"] = 16
    elif name == "imagenette":
        write_imagenette(root, train_per_class=1, val_per_class=1)
        fields["image_size"] = 16
    elif name == "imagefolder":
        for c in range(3):
            write_images(root / "train" / f"class{c}", 2, (20, 14), seed=c)
            write_images(root / "test" / f"class{c}", 1, (20, 14), seed=10 + c)
        fields["image_size"] = 16
    else:
        fields.update(num_classes=4, image_size=16, train_size=16, test_size=8)
    for patch in patches:
        monkeypatch.setattr(*patch)
    return fields


@pytest.mark.parametrize("name", datasets.DATASETS)
def test_each_entry_is_what_loading_gives(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = DataConfig(**_tiny(name, tmp_path, monkeypatch))
    info, ds = datasets.REGISTRY[name], data.load(cfg)
    # without loading: the entry's own count, else data.num_classes (exact for synthetic)
    expected = info.classes if info.classes is not None else ds.num_classes
    assert ds.num_classes == expected
    if name != "imagefolder":  # its count is known only once its folders are listed
        assert datasets.class_count(name, cfg.num_classes) == ds.num_classes
    # resized datasets come at data.image_size; the others at their own size (synthetic is made
    # at data.image_size, the torchvision ones are 32x32)
    side = cfg.image_size if info.resized or name == "synthetic" else 32
    assert ds.image_shape == (3, side, side)
    if info.files is not None:  # every file it names is there once the dataset is
        folder, files, _ = info.files
        assert all((tmp_path / folder / f).exists() for f in files)
        assert data.check_files(cfg) is None
