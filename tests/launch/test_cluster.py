"""Cluster profiles and Ray cluster-launcher configs: the shipped ones are valid, a bad one is one
line naming the key (CLI: exit 2)."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from conftest import HAMSWEEP, REPO

from hamsweep.errors import SpecError
from hamsweep.spec.cluster import CloudProfile, LocalProfile, SlurmProfile, check_fits, load_profile


def test_shipped_profiles_are_valid():
    slurm = load_profile(REPO / "cluster" / "slurm.yaml")
    assert (
        isinstance(slurm, SlurmProfile)
        and slurm.mode == "ray"
        and slurm.nodes >= 1
        and slurm.gpus_per_node >= 1
    )
    assert isinstance(load_profile(REPO / "cluster" / "local.yaml"), LocalProfile)


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ("kind: slurm\nnodes: 0\n", "nodes", "must be >= 1 but got 0"),
        ("kind: slurm\nnode: 2\n", "node", "valid keys here are kind, mode, partition"),
        ("kind: slurm\nmode: array\n", "mode", "'ray' or 'jobs'"),
        ("kind: slurm\nmode: jobs\nnodes: 2\n", "nodes", "one-node job"),
        ("kind: slurm\nmem_gb: 0\n", "mem_gb", "must be > 0"),
        ("kind: pbs\n", "kind", "must be one of local, slurm"),
        ("partition: gpu\n", "kind", "must be one of local, slurm"),
        ("[1, 2]\n", "", "must be a mapping"),
    ],
)
def test_bad_profiles_name_the_key(tmp_path, text, key, says):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_profile(path)
    assert str(err.value).startswith(f"{path}: {key}".rstrip()) and says in str(err.value), str(
        err.value
    )


def test_a_trial_must_fit_one_node():
    node = SlurmProfile(kind="slurm", cpus_per_task=4, gpus_per_node=1)
    check_fits(node, 4, 1)
    with pytest.raises(SpecError, match=r"resources.gpu: 2 GPUs per trial"):
        check_fits(node, 1, 2)
    with pytest.raises(SpecError, match=r"resources.cpu: 8 CPUs per trial"):
        check_fits(node, 8, 0)
    check_fits(LocalProfile(), 64, 8)  # the local launcher checks the machine itself when it starts


def test_validate_checks_spec_and_profile_together(slurm, tmp_path):
    # validate asks this machine's SLURM (sbatch, the partition gpu):
    # the project's local cluster has one
    ok = subprocess.run(
        [
            HAMSWEEP,
            "validate",
            str(REPO / "search_spaces" / "cifar100.yaml"),
            "--cluster",
            str(REPO / "cluster" / "slurm.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and "SLURM, mode ray: 2 node(s)" in ok.stdout, ok.stderr
    cpu_only = tmp_path / "cpu.yaml"
    cpu_only.write_text("kind: slurm\ngpus_per_node: 0\n")
    bad = subprocess.run(
        [
            HAMSWEEP,
            "validate",
            str(REPO / "search_spaces" / "cifar100.yaml"),
            "--cluster",
            str(cpu_only),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "gpus_per_node 0" in bad.stderr


# Ray cluster-launcher configs (`ray up` files): checked offline with Ray's own validation.
LAUNCHER_CONFIGS = ("aws.yaml", "gcp.yaml")


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_shipped_launcher_configs_pass_rays_validation(name):
    profile = load_profile(REPO / "cluster" / name)
    assert isinstance(profile, CloudProfile) and profile.provider == name.removesuffix(".yaml")
    # no trial lands on the head
    assert profile.node_types[profile.head_node_type].resources == {"CPU": 0, "GPU": 0}
    assert profile.workers and all(
        t.resources["GPU"] >= 1 and t.max_workers >= 1 for t in profile.workers.values()
    )
    check_fits(profile, 8, 1)  # the shipped cifar/svhn specs' resources per trial
    assert f"ray up {profile.path}" in profile.describe() and "--address auto" in profile.describe()


def test_launcher_configs_are_validated_without_network():
    """What `ray up` checks before its first cloud call needs no cloud: it passes
    with no network at all."""
    if (
        subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False).returncode
        != 0
    ):
        pytest.skip("unshare --net is not permitted here")
    for name in LAUNCHER_CONFIGS:
        cmd = [
            "unshare",
            "--net",
            HAMSWEEP,
            "validate",
            str(REPO / "search_spaces" / "cifar100.yaml"),
            "--cluster",
            str(REPO / "cluster" / name),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert (
            done.returncode == 0 and "Ray cluster launcher on" in done.stdout and not done.stderr
        ), done.stderr


def _aws_with(tmp_path, change) -> str:
    data = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    change(data)
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _workers(data: dict) -> dict:
    return data["available_node_types"]["ray.worker.gpu"]


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        (lambda d: d.update(max_workers="two"), "max_workers", "must be an integer but got 'two'"),
        (lambda d: d.pop("cluster_name"), "cluster_name", "is required by Ray's cluster launcher"),
        (
            lambda d: _workers(d).pop("resources"),
            "available_node_types.ray.worker.gpu.resources",
            "is required",
        ),
        (
            lambda d: _workers(d)["resources"].update(GPU=-1),
            "available_node_types.ray.worker.gpu.resources.GPU",
            "must be >= 0 but got -1",
        ),
        (
            lambda d: d.update(max_worker=2),
            "max_worker",
            "unknown key 'max_worker'; valid keys here are cluster_name, max_workers",
        ),
        (lambda d: d.update(provider="aws"), "provider", "must be an object but got 'aws'"),
        (
            lambda d: d["provider"].update(type="azure"),
            "provider.type",
            "for aws, gcp but got 'azure'",
        ),
        (
            lambda d: d.update(head_node_type="ray.head.cpu"),
            "head_node_type",
            "must be one of `available_node_types`",
        ),
        (
            lambda d: _workers(d).update(min_workers=3),
            "max_workers",
            "smaller than the sum of `min_workers`",
        ),
    ],
    ids=[
        "wrong-type",
        "missing-key",
        "missing-resources",
        "negative-gpus",
        "unknown-key",
        "provider-not-a-map",
        "unknown-provider",
        "unknown-head-type",
        "min-above-max",
    ],
)
def test_bad_launcher_configs_name_the_key(tmp_path, change, key, says):
    path = _aws_with(tmp_path, change)
    with pytest.raises(SpecError) as err:
        load_profile(path)
    text = str(err.value)
    assert text.startswith(f"{path}: {key}:") and says in text and "\n" not in text, text


def test_a_trial_must_fit_a_worker_node_type():
    profile = load_profile(REPO / "cluster" / "gcp.yaml")
    with pytest.raises(
        SpecError,
        match=(
            r"resources.gpu: 8 GPUs per trial but no worker node type of .*gcp.yaml has that many "
            r"\(ray_worker_gpu: 48 CPUs \+ 4 GPUs\)"
        ),
    ):
        check_fits(profile, 8, 8)
    with pytest.raises(SpecError, match=r"resources.cpu: 64 CPUs per trial"):
        check_fits(profile, 64, 1)


def test_resources_left_to_ray_up_are_not_checked_offline(tmp_path):
    # on AWS, `resources: {}` is filled in from the instance type by `ray up`, a cloud call:
    # nothing to compare here
    profile = load_profile(_aws_with(tmp_path, lambda d: _workers(d).update(resources={})))
    check_fits(profile, 64, 8)
    assert "resources detected at `ray up`" in profile.describe()


def test_validate_cli_with_launcher_configs(tmp_path):
    spec = str(REPO / "search_spaces" / "cifar100.yaml")
    ok = subprocess.run(
        [HAMSWEEP, "validate", spec, "--cluster", str(REPO / "cluster" / "aws.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        ok.returncode == 0
        and "up to 2 x ray.worker.gpu (g5.12xlarge: 48 CPUs + 4 GPUs)" in ok.stdout
        and not ok.stderr
    ), ok.stderr
    broken = _aws_with(tmp_path, lambda d: d.update(max_workers="two"))
    bad = subprocess.run(
        [HAMSWEEP, "validate", spec, "--cluster", broken],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        bad.returncode == 2
        and bad.stderr
        == f"hamsweep: error: {broken}: max_workers: must be an integer but got 'two'\n"
    ), bad.stderr


def test_a_launcher_config_says_how_to_run_a_sweep_on_it():
    profile = load_profile(REPO / "cluster" / "aws.yaml")
    assert "\n" not in profile.message
    assert (
        f"`ray up {profile.path}`" in profile.message
        and "hamsweep run SPEC --address auto" in profile.message
    )


def test_run_on_a_launcher_config_says_to_ray_up_it(tmp_path):
    out = tmp_path / "sweep"
    done = subprocess.run(
        [
            HAMSWEEP,
            "run",
            str(REPO / "search_spaces" / "smoke.yaml"),
            "--cluster",
            str(REPO / "cluster" / "gcp.yaml"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        done.returncode == 2
        and done.stderr.count("\n") == 1
        and "ray up" in done.stderr
        and "--address auto" in done.stderr
    ), done.stderr
    assert not out.exists()  # nothing prepared, nothing started
