"""Cluster profiles: the shipped ones are valid, a bad one is one line naming the key (CLI: exit 2)."""

from __future__ import annotations

import subprocess

import pytest
from conftest import HAMSWEEP, REPO

from hamsweep.errors import SpecError
from hamsweep.spec.cluster import LocalProfile, SlurmProfile, check_fits, load_profile


def test_shipped_profiles_are_valid():
    slurm = load_profile(REPO / "cluster" / "slurm.yaml")
    assert isinstance(slurm, SlurmProfile) and slurm.mode == "ray" and slurm.nodes >= 1 and slurm.gpus_per_node >= 1
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
    assert str(err.value).startswith(f"{path}: {key}".rstrip()) and says in str(err.value), str(err.value)


def test_a_trial_must_fit_one_node():
    node = SlurmProfile(kind="slurm", cpus_per_task=4, gpus_per_node=1)
    check_fits(node, 4, 1)
    with pytest.raises(SpecError, match="resources.gpu: 2 GPUs per trial"):
        check_fits(node, 1, 2)
    with pytest.raises(SpecError, match="resources.cpu: 8 CPUs per trial"):
        check_fits(node, 8, 0)
    check_fits(LocalProfile(), 64, 8)  # the local launcher checks the machine itself when it starts


def test_validate_checks_spec_and_profile_together(tmp_path):
    ok = subprocess.run([HAMSWEEP, "validate", str(REPO / "search_spaces" / "cifar100.yaml"), "--cluster", str(REPO / "cluster" / "slurm.yaml")],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "SLURM, mode ray: 2 node(s)" in ok.stdout, ok.stderr
    cpu_only = tmp_path / "cpu.yaml"
    cpu_only.write_text("kind: slurm\ngpus_per_node: 0\n")
    bad = subprocess.run([HAMSWEEP, "validate", str(REPO / "search_spaces" / "cifar100.yaml"), "--cluster", str(cpu_only)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "gpus_per_node 0" in bad.stderr
