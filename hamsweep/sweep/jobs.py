"""What the driver and the Recorder ask of trials that train outside Ray's workers (SLURM mode
jobs). Its own module so that both import it: the driver starts and closes the jobs, the Recorder
polls them and stops the ones whose trial ended early."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from hamsweep.spec import SweepSpec

__all__ = ["TrialJobs"]


class TrialJobs(Protocol):
    """Trials that train outside Ray's workers (``hamsweep.launch.jobs.TrialJobs``: one SLURM job
    each): Tune runs a light trainable that relays their results, the Recorder polls and stops
    them."""

    def trainable(self, spec: SweepSpec, experiment: Path) -> tuple[Any, dict[str, float]]:
        """The function Tune runs per trial, and the Ray resources it reserves."""

    def start(self) -> None:
        """Before Tune starts (a resumed sweep may have left jobs behind)."""

    def poll(self) -> None:
        """Each step of Tune's loop: look at the jobs (sparingly)."""

    def stop(self, number: int | None) -> None:
        """Trial ``number`` ended early or restarts: end its work."""

    def close(self) -> None:
        """The driver is ending: end every job whose trial did not finish."""
