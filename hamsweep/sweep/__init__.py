"""The sweep engine: Ray Tune and Optuna around the core.

``driver`` (spec -> Tuner -> resume), ``search`` (what proposes trials: the Optuna adapter),
``schedulers`` (ASHA: what stops them early), ``trial`` (the trainable), ``recorder`` (Tune events
-> Parquet rows, one module per job), ``trunk`` (shared warm-ups), ``confirm`` (the confirm stage),
``dashboard``, ``disk``, ``repair``, ``count`` (how many trials a sweep runs), ``jobs`` (what the
driver and the Recorder ask of trials trained outside Ray), and ``standalone`` (one trial outside a
sweep).
Importing the package imports none of them (nor Ray): the names ``hamsweep.sweep`` had as a module
are looked up in ``driver`` on first use.
"""

from __future__ import annotations

from typing import Any

_DRIVER = (
    "RAY_DIR",
    "TOKEN",
    "TrialJobs",
    "check_fits_here",
    "check_room",
    "drive",
    "prepare_sweep",
    "resolve_spec",
    "run_sweep",
    "wide_console",
)


def __getattr__(name: str) -> Any:
    if name in _DRIVER:
        from hamsweep.sweep import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'hamsweep.sweep' has no attribute {name!r}")
