"""hamsweep: sweeps of HAM (Hard Adversarial example Mining) adversarial training, per-class
results.

The public API. Names beyond the errors are imported on first use (torch for ``train``,
``ham_attack`` ...; pydantic for the spec), so ``import hamsweep`` and the CLI stay fast:
``hamsweep query`` needs neither.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from hamsweep import _moved
from hamsweep.errors import DataError as DataError
from hamsweep.errors import DivergenceError as DivergenceError
from hamsweep.errors import HamsweepError as HamsweepError
from hamsweep.errors import SpecError as SpecError

_moved.install()  # the module paths before issue 19 stay importable: old sweep folders resume

__version__ = "0.1.0"

_LAZY = {
    "SweepSpec": "hamsweep.spec",
    "TrialConfig": "hamsweep.spec",
    "load_spec": "hamsweep.spec",
    "parse_overrides": "hamsweep.spec",
    "run": "hamsweep.core.train",
    "EpochRecord": "hamsweep.core.train",
    "ham_attack": "hamsweep.core.methods.ham",
    "pgd": "hamsweep.core.attacks",
    "load_data": ("hamsweep.core.data", "load"),
    "build_model": ("hamsweep.core.models", "build"),
    "summarize": "hamsweep.core.metrics",
    "read_table": "hamsweep.results.read",
    "connect": "hamsweep.results.read",
    "read_pandas": "hamsweep.results.read",
    "open_study": "hamsweep.results.study",
    "run_sweep": "hamsweep.sweep.driver",
}

__all__ = [
    "DataError",
    "DivergenceError",
    "EpochRecord",
    "HamsweepError",
    "SpecError",
    "SweepSpec",
    "TrialConfig",
    "build_model",
    "connect",
    "ham_attack",
    "load_data",
    "load_spec",
    "open_study",
    "parse_overrides",
    "pgd",
    "read_pandas",
    "read_table",
    "run",
    "run_sweep",
    "summarize",
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'hamsweep' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(import_module(module), attr)
