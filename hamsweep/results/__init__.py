"""A sweep folder's data, Ray-free: ``schema`` (the Parquet tables' columns and rows), ``layout``
(their part files on disk), ``writer`` (the single writer and its compaction), ``read`` (the
deduplicating readers and DuckDB views), ``store`` (all of those as one module, as before the
split), ``query`` (``hamsweep query``), ``tables`` (the printed tables), ``study`` (the Optuna
journal). The names ``hamsweep.results`` had as a module are looked up in ``store`` on first use."""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("schema", "layout", "writer", "read", "store", "query", "tables", "study")


def __getattr__(name: str) -> Any:
    # a submodule being imported, or a dunder probe
    if name in _SUBMODULES or name.startswith("__"):
        raise AttributeError(f"module 'hamsweep.results' has no attribute {name!r}")
    return getattr(importlib.import_module("hamsweep.results.store"), name)
