"""Disk space of a sweep: checked before it starts (``check_before``)
and while it runs (``low_now``).

A sweep writes checkpoints, Parquet parts and Tune's state into its folder, and Ray keeps its
session (sockets, logs, spilled objects) in a temp folder of its own. Ray stops creating objects on
a disk more than 95% full and the sweep then hangs without a word; a full sweep folder fails the
next checkpoint. So a sweep does not start without room for what it will write, and a running one
stops cleanly (``DiskFull``, exit code 1) while there is still room for its last state: free space,
then ``hamsweep resume`` continues it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from hamsweep.errors import DiskFull, SpecError

if TYPE_CHECKING:
    from hamsweep.spec import SweepSpec

__all__ = ["RAY_FULL", "check_before", "disk_needed", "low_now", "reserve", "size_text"]

# Ray stops creating objects on a disk fuller than this, and the sweep hangs without a word
RAY_FULL = 0.95
# Ray's session folder: logs, sockets, spilled objects of a sweep this size
_RAY_TEMP_BYTES = 200 * 1024**2
# a running sweep's last writes besides checkpoints (Tune's state, a flush, the dashboard's): this,
# and _TRIAL_STATE_BYTES a trial (Tune's snapshot holds every trial)
_STATE_BYTES, _TRIAL_STATE_BYTES = 1024**2, 16 * 1024
_MARGIN = 0.01  # a running sweep stops this far below Ray's threshold, before Ray does


def check_before(spec: SweepSpec, out: Path, ray_temp: Path | None) -> None:
    """Enough free space for the sweep's checkpoints and tables in ``out`` (and for Ray's session
    folder), with the disk still under Ray's 95% after them: else one line naming the path."""
    need = disk_needed(spec) + reserve(spec)  # and still the room a running sweep keeps (low_now)
    places = [("--out", out, need)] + (
        [("Ray's temp folder", ray_temp, _RAY_TEMP_BYTES)] if ray_temp is not None else []
    )
    same = ray_temp is not None and _device(out) == _device(ray_temp)
    for key, path, bytes_ in places:
        total_need = need + _RAY_TEMP_BYTES if same else bytes_
        usage = shutil.disk_usage(_existing(path))
        short = total_need - (usage.free - (1 - RAY_FULL) * usage.total)
        if short > 0:
            raise SpecError(
                key,
                f"{path}: {size_text(usage.free)} free of {size_text(usage.total)}; "
                f"the sweep needs about {size_text(total_need)} there (checkpoints, tables) "
                f"and Ray stops working once the disk is {RAY_FULL:.0%} full: "
                f"free {size_text(short)} or choose another folder",
            )


def reserve(spec: SweepSpec) -> int:
    """Bytes a running sweep keeps free in its folder: one more checkpoint of each running trial,
    copied by Ray (two copies), and its last state."""
    from hamsweep.sweep.trunk import checkpoint_bytes

    return (
        2 * (spec.search.max_concurrent + 1) * checkpoint_bytes(spec)
        + _STATE_BYTES
        + _TRIAL_STATE_BYTES * spec.search.trials
    )


def low_now(out: Path, ray_temp: Path | None, keep_free: int, resume: str) -> DiskFull | None:
    """The error that stops a running sweep, if ``out`` has less than ``keep_free`` bytes free or
    Ray's temp folder is within a point of Ray's threshold; None while there is room."""
    usage = shutil.disk_usage(_existing(out))
    if usage.free < keep_free:
        return DiskFull(
            f"--out: {out}: {size_text(usage.free)} free of {size_text(usage.total)}, under the "
            f"{size_text(keep_free)} a running sweep keeps for its next checkpoints; "
            f"stopped cleanly: free space, then continue with: {resume}"
        )
    if ray_temp is not None:
        usage = shutil.disk_usage(_existing(ray_temp))
        if usage.used >= (RAY_FULL - _MARGIN) * usage.total:
            return DiskFull(
                f"Ray's temp folder: {ray_temp}: its disk is {usage.used / usage.total:.0%} full "
                f"and Ray stops working at {RAY_FULL:.0%}; "
                f"stopped cleanly: free space, then continue with: {resume}"
            )
    return None


def disk_needed(spec: SweepSpec) -> int:
    """Bytes a sweep writes into its folder: per trial the two checkpoints Ray keeps
    (``prune_checkpoints``), one more per running trial (its work folder), the trunks' fork
    checkpoints, and the per-class rows."""
    from hamsweep.sweep.count import trial_count
    from hamsweep.sweep.trunk import checkpoint_bytes, predicted_cost

    trials = trial_count(spec)
    ckpt = checkpoint_bytes(spec)
    classes = spec.data.num_classes if spec.data.name in ("synthetic", "imagefolder") else 100
    # epochs x (clean, robust) x classes, bytes a row
    longest = max(spec.epochs(m) for m in spec.methods)
    rows = trials * longest * 2 * classes * 64
    return (
        2 * trials + spec.search.max_concurrent + predicted_cost(spec).checkpoints
    ) * ckpt + rows


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _device(path: Path) -> int:
    return os.stat(_existing(path)).st_dev


def size_text(n: float) -> str:
    """Bytes for a reader: 35.4 GB, 8.4 MB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
