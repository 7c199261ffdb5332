"""`hamsweep validate` checks what `hamsweep run` with the same arguments will need (issue 18,
part 8): the data (its files there, or the download on), the cluster profile against this machine
(sbatch, the partition `sinfo` knows), the sweep folder and its disk; it takes `--set` as `run`
does. An error is one line and exit code 2; what cannot be checked from here is a `warning:` line,
and the last line says "ok" only without one. Nothing is ever written."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from cifar_files import random_arrays, write_cifar10, write_images
from conftest import HAMSWEEP, REPO, tmpfs, write_spec

SMOKE = str(REPO / "search_spaces" / "smoke.yaml")


def _listing(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def _validate(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``hamsweep validate ARGS`` run from ``tmp_path`` (its default runs/ lands there), which it
    must leave as it was."""
    before = _listing(tmp_path)
    proc = subprocess.run(
        [HAMSWEEP, "validate", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert _listing(tmp_path) == before, "validate wrote something"
    return proc


def _error(proc: subprocess.CompletedProcess) -> str:
    """The one error line of a refused validate."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[
        -2000:
    ]
    assert lines[0].startswith("hamsweep: error: ") and not proc.stdout, proc.stdout
    return lines[0]


def _verdict(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0 and not proc.stderr, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def _profile(tmp_path: Path, **fields: object) -> str:
    data = {
        "kind": "slurm",
        "mode": "ray",
        "nodes": 1,
        "cpus_per_task": 2,
        "shared_folder": str(tmp_path / "shared"),
        **fields,
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    return str(tmp_path / "p.yaml")


# ---- the data


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"name": "cifar10"}, "cifar-10-batches-py/"),
        ({"name": "svhn"}, "train_32x32.mat, test_32x32.mat"),
        (
            {"name": "imagefolder", "image_size": 8},
            "data.root must hold train/<class>/ and test/<class>/",
        ),
    ],
    ids=["cifar10", "svhn", "imagefolder"],
)
def test_missing_data_with_download_off_is_an_error_naming_data_root(tmp_path, data, says):
    spec = write_spec(tmp_path / "s.yaml", data={**data, "root": str(tmp_path / "nodata")})
    line = _error(_validate(tmp_path, str(spec), "--out", str(tmp_path / "out")))
    assert says in line and str(tmp_path / "nodata") in line, line
    if data["name"] != "imagefolder":  # an image folder has nothing to download
        assert (
            "(data.root: " in line
            and "set data.download: true" in line
            and "set data.root to the folder" in line
        ), line


def test_missing_data_with_download_on_is_a_warning_not_ok(tmp_path):
    """No network here: whether a download works cannot be checked, so it is a
    warning and exit 0."""
    spec = write_spec(
        tmp_path / "s.yaml", data={"name": "cifar10", "root": str(tmp_path / "nodata")}
    )
    proc = _validate(tmp_path, str(spec), "--set", "data.download=true")
    warning = [ln for ln in proc.stdout.splitlines() if ln.startswith("warning: ")]
    assert warning == [
        "warning: data: cifar10's data_batch_1, data_batch_2, data_batch_3, data_batch_4, "
        "data_batch_5, test_batch, batches.meta "
        f"not in {tmp_path / 'nodata' / 'cifar-10-batches-py'}/ yet; "
        "the run downloads them (data.download: true), which cannot be checked from here"
    ], proc.stdout
    last = _verdict(proc)
    assert last.endswith("; 1 warning above") and "ok" not in last and "the data" not in last, last


def test_data_that_is_there_is_checked(tmp_path):
    root = tmp_path / "data"
    write_cifar10(root, random_arrays(20, 10, 0), random_arrays(10, 10, 1), list("abcdefghij"))
    write_images(root / "train" / "a", 2, (10, 10), seed=0)
    write_images(root / "test" / "a", 1, (10, 10), seed=1)
    for name in ("cifar10", "imagefolder"):
        spec = write_spec(
            tmp_path / f"{name}.yaml", data={"name": name, "root": str(root), "image_size": 8}
        )
        last = _verdict(_validate(tmp_path, str(spec)))
        assert last.startswith("ok: checked the spec, ") and f"the data in {root}/" in last, last
    assert not (
        root / ".hamsweep-cache"
    ).exists()  # the images were listed, not decoded into the cache


# ---- --set, as run takes it


def test_set_is_applied_and_shows_in_the_summary(tmp_path):
    proc = _validate(tmp_path, SMOKE, "--set", "train.epochs=12", "--set", "search.num_samples=5")
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"{SMOKE}: synthetic / small_cnn / ham, 12 epochs;"), first
    assert proc.stdout.splitlines()[1].startswith("sweep: 5 trials by tpe"), proc.stdout
    assert _verdict(proc).startswith(
        "ok: checked the spec, this machine for 1 CPU + 0 GPU per trial, "
        "the sweep folder runs/smoke-"
    )


@pytest.mark.parametrize(
    ("override", "says"),
    [
        (
            "ham.drop_step=2",
            "hamsweep: error: ham.drop_step: is searched (search.params or search.methods); "
            "change its range in the spec",
        ),
        ("ham.tau=1", "hamsweep: error: ham.tau: unknown key"),
        ("train.epochs", "hamsweep: error: --set: expected KEY=VALUE"),
    ],
    ids=["searched key", "unknown key", "no value"],
)
def test_set_is_refused_as_run_refuses_it(tmp_path, override, says):
    line = _error(_validate(tmp_path, SMOKE, "--set", override))
    assert line.startswith(says), line
    run = subprocess.run(
        [HAMSWEEP, "run", SMOKE, "--set", override, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.stderr.strip() == line and not (tmp_path / "out").exists()


# ---- the sweep folder and its disk


@pytest.fixture()
def small_disk(tmp_path: Path):
    yield from tmpfs(tmp_path / "small", 4)  # as tests/sweep/test_disk.py mounts it (root)


def test_an_out_folder_on_a_too_small_disk_is_an_error(small_disk, tmp_path):
    # checkpoints larger than 4 MB
    spec = write_spec(tmp_path / "big.yaml", model={"name": "small_cnn", "width": 64})
    line = _error(_validate(tmp_path, str(spec), "--out", str(small_disk / "out")))
    assert f"--out: {small_disk / 'out'}: " in line and "free of" in line and "95% full" in line, (
        line
    )


def test_an_out_folder_that_is_not_empty_is_an_error(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("keep me")
    line = _error(_validate(tmp_path, SMOKE, "--out", str(tmp_path / "out")))
    assert f"--out: {tmp_path / 'out'} already exists and is not empty" in line, line


# ---- the cluster profile against this machine


def test_trials_too_big_for_this_machine(tmp_path):
    """No --cluster: the run may go to a Ray cluster (--address), so a warning;
    --cluster cluster/local.yaml: the run's error."""
    spec = str(write_spec(tmp_path / "s.yaml", resources={"cpu": 4096}))
    proc = _validate(tmp_path, spec)
    assert (
        f"warning: resources.cpu: 4096 CPUs per trial but this machine has {os.cpu_count()}"
        in proc.stdout
    ), proc.stdout
    assert "ok" not in _verdict(proc)
    line = _error(_validate(tmp_path, spec, "--cluster", str(REPO / "cluster" / "local.yaml")))
    assert "resources.cpu: 4096 CPUs per trial" in line, line


def test_a_slurm_profile_without_sbatch_on_path_is_an_error(tmp_path):
    (tmp_path / "bin").mkdir()
    # the console script's shebang is absolute: it still starts
    env = {**os.environ, "PATH": str(tmp_path / "bin")}
    line = _error(_validate(tmp_path, SMOKE, "--cluster", _profile(tmp_path), env=env))
    assert line == (
        "hamsweep: error: --cluster: sbatch is not on PATH: submit from a SLURM login node, "
        "or run locally without --cluster"
    )


def test_a_slurm_that_cannot_be_reached_is_one_line(tmp_path):
    """The real sinfo with a configuration it cannot read prints several lines; validate
    says its last."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM's client commands are not installed (make test installs them)")
    # read at once; a missing file makes sinfo wait for a server
    (tmp_path / "broken.conf").write_text("NotASlurmKey=1\n")
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "broken.conf")}
    # a partition: sinfo is asked
    line = _error(
        _validate(tmp_path, SMOKE, "--cluster", _profile(tmp_path, partition="gpu"), env=env)
    )
    assert line.startswith("hamsweep: error: cluster: sinfo failed: ") and line.endswith(
        "; is SLURM reachable from here?"
    ), line


def test_a_cloud_profile_leaves_its_machines_to_a_warning(tmp_path):
    proc = _validate(tmp_path, SMOKE, "--cluster", str(REPO / "cluster" / "aws.yaml"))
    assert (
        "warning: data and disk: synthetic in data.root data/ and the sweep folder "
        "are on the cluster's machines"
    ) in proc.stdout
    last = _verdict(proc)
    assert (
        last.startswith("checked the spec, the cluster config (Ray's own validation)")
        and "ok" not in last
    ), last


def test_a_slurm_profile_is_checked_against_the_real_local_slurm(slurm, tmp_path):
    line = _error(_validate(tmp_path, SMOKE, "--cluster", _profile(tmp_path, partition="nope")))
    assert line == (
        "hamsweep: error: partition: unknown partition 'nope'; "
        f"this cluster has {', '.join(slurm.partitions)}"
    )
    last = _verdict(
        _validate(
            tmp_path, SMOKE, "--cluster", _profile(tmp_path, partition=slurm.default_partition)
        )
    )
    assert last.startswith(
        f"ok: checked the spec, sbatch on this machine, partition {slurm.default_partition}, "
        "a trial on one node, "
        f"the sweep folder {tmp_path / 'shared'}/smoke-"
    ), last
    assert not (tmp_path / "shared").exists()


def test_the_readme_command_works_without_cifar_here(tmp_path):
    """`hamsweep validate search_spaces/cifar100.yaml` as the README has it, from the repository:
    the spec downloads CIFAR-100 when it is missing, so its absence is a warning, never an error."""
    if (REPO / "data" / "cifar-100-python").exists():
        pytest.skip("CIFAR-100 is on this machine")
    proc = subprocess.run(
        [HAMSWEEP, "validate", "search_spaces/cifar100.yaml"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert (
        "warning: data: cifar100's train, test, meta not in data/cifar-100-python/ yet"
        in proc.stdout
    ), proc.stdout
    assert "ok" not in _verdict(proc)
