"""What ``hamsweep run`` will need, checked without starting, submitting or writing anything
(``hamsweep validate``): the checks ``launch`` and ``prepare_sweep`` make before a sweep starts,
called here rather than copied. One difference: the data is looked for, not loaded, since loading
may download it and decodes image folders into a cache. What cannot be checked from this machine
(a download, a cloud cluster's machines) comes back as a warning line, never as passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hamsweep import rundir
from hamsweep.spec import SweepSpec
from hamsweep.spec.cluster import CloudProfile, LocalProfile, SlurmProfile, check_fits

__all__ = ["Preflight", "preflight"]


@dataclass(frozen=True)
class Preflight:
    """What was checked and passed, and what could not be checked from here."""

    checked: tuple[str, ...]  # short phrases: "the data in data/", "sbatch and partition gpu"
    warnings: tuple[str, ...]  # one line each: what was not checked, and why

    def verdict(self) -> str:
        """The last line of ``hamsweep validate``: "ok" only when there is no warning."""
        checked = ", ".join(("the spec", *self.checked))
        if not self.warnings:
            return f"ok: checked {checked}"
        n = len(self.warnings)
        return f"checked {checked}; {n} warning{'s' if n > 1 else ''} above"


def preflight(
    spec: SweepSpec, out: Path | None, profile: LocalProfile | SlurmProfile | CloudProfile | None
) -> Preflight:
    """Check what a run of ``spec`` into ``out`` (None: where the run would write) on ``profile``
    needs; the first problem is raised as the one-line error the run would stop with. ``profile``
    None (no ``--cluster``): the run may use this machine or ``--address`` (a Ray cluster
    elsewhere), so trials too big for this machine are a warning, not an error."""
    if isinstance(profile, CloudProfile):
        return _on_cloud(spec, profile)
    from hamsweep.core.data import check_files
    from hamsweep.sweep.driver import check_room

    checked: list[str] = []
    warnings: list[str] = []
    here = not isinstance(profile, SlurmProfile)  # the run starts a Ray of its own on this machine
    if isinstance(profile, SlurmProfile):
        checked.append(_on_slurm(spec, profile))
    elif profile is None and (too_big := _too_big_here(spec)) is not None:
        warnings.append(f"{too_big}; `hamsweep run` without --address stops on this here")
        here = False  # checked as a run with --address is: no Ray of its own here
    else:
        # check_room checks it: with --cluster cluster/local.yaml a trial too big is the run's error
        checked.append(
            f"this machine for {spec.resources.cpu:g} CPU + {spec.resources.gpu:g} GPU per trial"
        )
    folder = _out(spec, out, profile)
    rundir.prepare(folder.resolve(), resume=False)
    check_room(spec, folder.resolve(), check_here=here)
    checked.append(f"the sweep folder {folder} (new, writable, room on its disk)")
    if (missing := check_files(spec.trial_config().data)) is None:
        checked.append(
            "the data (generated)"
            if spec.data.name == "synthetic"
            else f"the data in {spec.data.root}/"
        )
    return Preflight(tuple(checked), (*warnings, *([missing] if missing else [])))


def _too_big_here(spec: SweepSpec) -> str | None:
    """Why a trial does not fit this machine (``check_fits_here``'s line), or None."""
    from hamsweep.errors import SpecError
    from hamsweep.sweep.driver import check_fits_here

    try:
        check_fits_here(spec)
    except SpecError as err:
        return str(err)
    return None


def _on_slurm(spec: SweepSpec, profile: SlurmProfile) -> str:
    from hamsweep.launch.slurm import SlurmLauncher

    SlurmLauncher(profile).check(spec)
    where = f"partition {profile.partition}" if profile.partition else "the default partition"
    return f"sbatch on this machine, {where}, a trial on one node"


def _out(spec: SweepSpec, out: Path | None, profile: LocalProfile | SlurmProfile | None) -> Path:
    """The sweep folder the run would write: ``--out``, else a new one in runs/ (SLURM: the
    profile's shared_folder)."""
    if out is not None:
        return out
    if isinstance(profile, SlurmProfile):
        rundir.check_writable(Path(profile.shared_folder), "shared_folder")
        return Path(profile.shared_folder) / rundir.default_out(spec.name).name
    return rundir.default_out(spec.name)


def _on_cloud(spec: SweepSpec, profile: CloudProfile) -> Preflight:
    """A ``ray up`` cluster: its config (Ray's validation, at load) and the fit of a trial are
    checked; its machines, and so its data and disk, are not reachable from here."""
    check_fits(profile, spec.resources.cpu, spec.resources.gpu)
    return Preflight(
        ("the cluster config (Ray's own validation), a trial on one worker node type",),
        (
            f"data and disk: {spec.data.name} in data.root {spec.data.root}/ and the sweep folder "
            "are on the cluster's machines, not checked from here; `hamsweep run ... --address "
            "auto` checks them on the head node before it starts",
        ),
    )
