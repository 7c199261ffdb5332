"""Disk space (issue 13, part 2): a folder on a small tmpfs the test mounts itself is refused
before anything starts, in one line naming the path, its free space and what the sweep needs; a
disk that fills up while the sweep runs stops it cleanly (exit code 1, one line), and once space is
freed ``resume`` finishes it with nothing lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from chaos import invariants
from conftest import HAMSWEEP, hamsweep, snapshotted_epochs, tmpfs, wait_for, write_spec

from hamsweep.spec import load_spec
from hamsweep.sweep.disk import disk_needed, reserve


@pytest.fixture()
def small_disk(tmp_path: Path):
    yield from tmpfs(tmp_path / "small", 4)


@pytest.fixture()
def filling_disk(tmp_path: Path):
    yield from tmpfs(tmp_path / "filling", 64)


def test_a_sweep_that_does_not_fit_its_disk_is_refused_before_anything_starts(small_disk, tmp_path):
    spec = write_spec(tmp_path / "big.yaml", model={"name": "small_cnn", "width": 64})
    need = disk_needed(load_spec(spec))
    assert need > 4 * 1024**2  # the checkpoints of this model do not fit in 4 MB
    proc = hamsweep("run", str(spec), "--out", str(small_disk / "out"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert (
        f"--out: {small_disk / 'out'}:" in proc.stderr
        and "free of" in proc.stderr
        and "95% full" in proc.stderr
    )
    assert not any(small_disk.iterdir())  # nothing written


def test_a_sweep_that_fits_runs_there(small_disk, tmp_path):
    spec = write_spec(
        tmp_path / "tiny.yaml",
        search={"num_samples": 1, "max_concurrent": 1, "params": {}},
        confirm={"top_k": 0},
        train={"epochs": 1},
        ham={"warmup_epochs": 0},
    )
    assert disk_needed(load_spec(spec)) < 1024**2
    assert "disk: about" in hamsweep("validate", str(spec)).stdout
    proc = hamsweep("run", str(spec), "--out", str(small_disk / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_disk_that_fills_up_stops_the_sweep_cleanly_and_it_resumes_once_space_is_freed(
    filling_disk, tmp_path
):
    import os

    samples = 3
    spec = write_spec(
        tmp_path / "fill.yaml",
        data={"train_size": 2048},
        train={"epochs": 12},
        scheduler="none",
        search={"num_samples": samples, "max_concurrent": 2},
        confirm={"top_k": 0},
    )
    out = filling_disk / "out"
    driver = subprocess.Popen(
        [str(HAMSWEEP), "run", str(spec), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    filler = filling_disk / "filler"
    try:
        wait_for(lambda: snapshotted_epochs(out) >= 2, 300, "two checkpointed epochs")
        keep = reserve(load_spec(spec))
        with open(
            filler, "wb"
        ) as f:  # a colleague's files: less stays free than a running sweep keeps
            os.posix_fallocate(
                f.fileno(),
                0,
                os.statvfs(filling_disk).f_bavail * os.statvfs(filling_disk).f_frsize - keep // 2,
            )
        _, stderr = driver.communicate(timeout=180)
    finally:
        driver.kill()
    assert driver.returncode == 1, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    assert (
        "Traceback" not in stderr
        and line.startswith(f"hamsweep: error: --out: {out}: ")
        and "free of" in line
    ), stderr[-3000:]
    assert line.endswith(f"stopped cleanly: free space, then continue with: hamsweep resume {out}")
    assert "hamsweep.errors.DiskFull" not in stderr
    filler.unlink()
    proc = hamsweep("resume", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert invariants(out, samples) == []
