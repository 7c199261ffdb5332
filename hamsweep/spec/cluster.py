"""Cluster profiles (``cluster/*.yaml``): where a sweep runs. Validated like specs: one-line errors
naming the key, before anything is submitted.

``kind: local`` is the default (a Ray that hamsweep starts on this machine). ``kind: slurm``
describes one SLURM allocation; its fields map one to one onto submitit's SLURM parameters. A Ray
cluster-launcher config (``ray up`` file, no ``kind``: ``cluster/aws.yaml``, ``cluster/gcp.yaml``)
is checked with Ray's own validation and becomes a ``CloudProfile`` (``hamsweep/spec/cloud.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from hamsweep.errors import SpecError
from hamsweep.spec._base import _Frozen, at_least, validate
from hamsweep.spec.cloud import CloudProfile, is_launcher_config, load_cloud_profile

__all__ = [
    "KINDS",
    "MODES",
    "CloudProfile",
    "LocalProfile",
    "Profile",
    "SlurmProfile",
    "check_fits",
    "load_profile",
]

KINDS = ("local", "slurm")
# ray: the allocation becomes one Ray cluster; jobs: one SLURM job per trial
MODES = ("ray", "jobs")


class LocalProfile(_Frozen):
    """A Ray that hamsweep starts on this machine and stops at the end (the default)."""

    kind: Literal["local"] = "local"

    def describe(self) -> str:
        return "a local Ray on this machine, started and stopped by hamsweep"


class SlurmProfile(_Frozen):
    """One SLURM allocation, submitted through submitit."""

    kind: Literal["slurm"]
    # ray: N nodes become one Ray cluster; jobs: one SLURM job per trial
    mode: Literal["ray", "jobs"] = "ray"
    partition: str | None = None  # sbatch --partition; None = the cluster's default partition
    account: str | None = None  # sbatch --account (the allocation billed)
    qos: str | None = None  # sbatch --qos
    constraint: str | None = None  # sbatch --constraint, node features, e.g. "a100|h100"
    nodes: int = 1  # nodes of the allocation (mode: ray); a trial job always takes one
    gpus_per_node: int = 0  # GPUs per node (--gpus-per-node); trials get resources.gpu of them
    cpus_per_task: int = 8  # CPU cores per node (one task per node)
    # memory per node in GB (mode jobs: a trial job asks its share); None = the partition's default
    mem_gb: float | None = None
    timeout_min: int = 24 * 60  # wall-clock limit of each job, in minutes; a requeued job resumes
    setup: tuple[str, ...] = ()  # shell lines run first in every job, e.g. "module load cuda/12.4"
    sbatch_extra: dict[str, str] = {}  # any other sbatch option, e.g. {mail-type: END}
    # where sweep folders go: visible from the login node and every compute node
    shared_folder: str = "runs"
    # times a job is requeued after its time limit or a preemption (each one resumes the sweep)
    max_requeues: int = 50
    # SLURM warns the job this many seconds before its time limit, to save and requeue
    signal_delay_s: int = 120
    # mode jobs with --detach: CPU cores of the driver's job (Ray Tune and one light proxy per
    # running trial)
    driver_cpus: int = 2
    # mode jobs with --detach: memory of the driver's job, GB; None = the partition's default
    driver_mem_gb: float | None = 8

    @model_validator(mode="after")
    def _check(self) -> SlurmProfile:
        at_least(self, 1, "nodes", "cpus_per_task", "timeout_min", "driver_cpus")
        at_least(self, 0, "max_requeues", "signal_delay_s")
        if self.gpus_per_node < 0:
            raise SpecError(
                "gpus_per_node", f"gpus_per_node cannot be negative but got {self.gpus_per_node}"
            )
        for key in ("mem_gb", "driver_mem_gb"):
            if (value := getattr(self, key)) is not None and value <= 0:
                raise SpecError(
                    key, f"{key} must be > 0 (or null for the partition's default) but got {value}"
                )
        if self.mode == "jobs" and self.nodes != 1:
            raise SpecError(
                "nodes",
                "mode: jobs runs each trial as its own one-node job; nodes must be 1 but got "
                f"{self.nodes}",
            )
        return self

    def describe(self) -> str:
        where = f"partition {self.partition}" if self.partition else "the default partition"
        size = (
            f"{self.nodes} node(s) x {self.cpus_per_task} CPUs + {self.gpus_per_node} GPUs"
            if self.mode == "ray"
            else (
                f"one job per trial, up to {self.cpus_per_task} "
                f"CPUs + {self.gpus_per_node} GPUs each"
            )
        )
        return (
            f"SLURM, mode {self.mode}: {size} on {where}, {self.timeout_min} min per job; sweeps "
            f"in {self.shared_folder}/"
        )


def check_fits(profile: LocalProfile | SlurmProfile | CloudProfile, cpu: float, gpu: float) -> None:
    """A trial must fit on one node of the profile: else it would wait in the queue forever."""
    if isinstance(profile, CloudProfile):
        profile.check_fits(cpu, gpu)
        return
    if not isinstance(profile, SlurmProfile):
        return
    if cpu > profile.cpus_per_task:
        raise SpecError(
            "resources.cpu",
            f"{cpu:g} CPUs per trial but the profile's nodes have cpus_per_task "
            f"{profile.cpus_per_task}",
        )
    if gpu > profile.gpus_per_node:
        raise SpecError(
            "resources.gpu",
            f"{gpu:g} GPUs per trial but the profile's nodes have gpus_per_node "
            f"{profile.gpus_per_node}",
        )


Profile = LocalProfile | SlurmProfile | CloudProfile
_BY_KIND: dict[str, type[LocalProfile] | type[SlurmProfile]] = {
    "local": LocalProfile,
    "slurm": SlurmProfile,
}


def load_profile(path: str | Path) -> LocalProfile | SlurmProfile | CloudProfile:
    """Read and validate a profile file; every problem is a one-line
    ``SpecError`` naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SpecError(
            str(path),
            "no such cluster profile; pass a YAML file such as cluster/local.yaml or "
            "cluster/slurm.yaml",
        )
    try:
        data: Any = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecError(str(path), f"is not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise SpecError(str(path), "must be a mapping of keys (kind, mode, partition, ...)")
    if is_launcher_config(data):  # a `ray up` file: Ray's schema forbids a `kind` key there
        return load_cloud_profile(path, data)
    if data.get("kind") not in KINDS:
        raise SpecError(
            f"{path}: kind", f"must be one of {', '.join(KINDS)} but got {data.get('kind')!r}"
        )
    try:
        return validate(_BY_KIND[data["kind"]], data)
    except SpecError as err:
        raise SpecError(f"{path}: {err.key}", str(err).removeprefix(f"{err.key}: ")) from None
