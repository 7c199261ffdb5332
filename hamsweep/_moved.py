"""Old module paths, kept importable after the modules moved into layer folders (issue 19).

Ray Tune pickles module paths into every sweep folder (``hamsweep.recorder.Recorder`` and its
bound methods, ``hamsweep.search.Searcher``, ``hamsweep.trunk.Plan``,
``hamsweep.trial.trial_dirname`` ...) and submitit pickles a trial job's function by its module, so
a folder written before the move must still resume, and a SLURM job queued before it must still
run. Ray did the same after its 2.0 restructure with three-line re-export modules at the old paths;
one table here does it for all of them: importing an old path gives the module at its new path
itself (the same object, so a class unpickled through either path is one class), without a file
per old path in the package's top.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

__all__ = ["MOVED", "install"]

# old path -> new path; ``hamsweep.sweep`` and ``hamsweep.results`` are packages now and re-export
# the old modules' names themselves
MOVED = {
    "hamsweep.attacks": "hamsweep.core.attacks",
    "hamsweep.models": "hamsweep.core.models",
    "hamsweep.data": "hamsweep.core.data",
    "hamsweep.folders": "hamsweep.core.folders",
    "hamsweep.metrics": "hamsweep.core.metrics",
    "hamsweep.evaluation": "hamsweep.core.evaluation",
    "hamsweep.train": "hamsweep.core.train",
    "hamsweep.stats": "hamsweep.core.stats",
    "hamsweep.ham": "hamsweep.core.methods.ham",
    "hamsweep.search": "hamsweep.sweep.search",
    "hamsweep.trial": "hamsweep.sweep.trial",
    "hamsweep.recorder": "hamsweep.sweep.recorder",
    "hamsweep.trunk": "hamsweep.sweep.trunk",
    "hamsweep.confirm": "hamsweep.sweep.confirm",
    "hamsweep.dashboard": "hamsweep.sweep.dashboard",
    "hamsweep.disk": "hamsweep.sweep.disk",
    "hamsweep.repair": "hamsweep.sweep.repair",
    "hamsweep.standalone": "hamsweep.sweep.standalone",
    "hamsweep.query": "hamsweep.results.query",
    "hamsweep.tables": "hamsweep.results.tables",
    "hamsweep.study": "hamsweep.results.study",
    "hamsweep.summary": "hamsweep.report.summary",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module of its new path."""

    def find_spec(
        self, name: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        pass  # the new path's import ran it already


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``import hamsweep`` does this)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
