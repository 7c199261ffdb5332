"""The training methods, one module each, and their registry.

Every public module of this package (``pgd_at.py``, ``trades.py``, ``ham.py``, ...) defines a
``Method`` (``_base.py``) named ``METHOD``; the registry finds them by listing the package, so a new
method is its module and nothing else: ``train.method`` accepts its name, the trial config gets its
section, the training loop dispatches to its step. Importing this package imports no torch.
"""

from __future__ import annotations

import functools
import pkgutil
from importlib import import_module
from typing import Any

from hamsweep.core.methods._base import CLASS_STATE, TRUNK_METHOD, Method
from hamsweep.errors import SpecError

__all__ = ["CLASS_STATE", "TRUNK_METHOD", "Method", "fork_epoch", "get", "names"]


@functools.cache
def _registry() -> dict[str, Method]:
    """name -> method, over the package's modules in name order (``_``-modules are not methods)."""
    found: dict[str, Method] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = import_module(f"{__name__}.{info.name}")
        method = getattr(module, "METHOD", None)
        if not isinstance(method, Method):
            raise TypeError(f"{module.__name__} defines no METHOD (a Method instance)")
        if method.name != info.name:
            raise TypeError(f"{module.__name__}.METHOD is named {method.name!r}, not its module's")
        found[method.name] = method
    return found


def names() -> tuple[str, ...]:
    """Every registered method's name, in name order."""
    return tuple(_registry())


def get(name: str) -> Method:
    """The method called ``name``; an unknown name is a ``SpecError`` listing the valid ones."""
    method = _registry().get(name)
    if method is None:
        raise SpecError("train.method", f"unknown method {name!r}; valid are {', '.join(names())}")
    return method


def fork_epoch(cfg: Any) -> int | None:
    """The epoch a trial of ``cfg`` forks from the PGD-AT trunk at (its method's ``fork_epoch``)."""
    return get(cfg.train.method).fork_epoch(cfg)
