"""YAML -> frozen, validated configs: the trial config and the sweep spec.

Every default of the project lives here. A spec file (``search_spaces/*.yaml``) is the trial config
(sections ``data``, ``model``, ``train``, ``ham``, ``eval``) plus a ``search`` section whose every
parameter declares its distribution *and* its default (the paper's value)::

    ham:
      drop_step: 3
    search:
      params:
        ham.discard_threshold: {uniform: [0.0, 0.9], default: 0.0}
        ham.drop_step: {int: [1, train.attack_steps], default: 3}   # bound may name another key

Errors are ``SpecError``s whose message starts with the key path and says what is valid.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> the module that defines it, imported on first use: ``hamsweep.spec._base`` is then
# importable alone (the method modules build on it while ``spec.trial`` imports them), and the CLI
# imports only what a command needs
_LAZY = {
    "validate": "hamsweep.spec._base",
    "CloudProfile": "hamsweep.spec.cluster",
    "LocalProfile": "hamsweep.spec.cluster",
    "SlurmProfile": "hamsweep.spec.cluster",
    "load_profile": "hamsweep.spec.cluster",
    "DISTRIBUTIONS": "hamsweep.spec.sweep",
    "SAMPLERS": "hamsweep.spec.sweep",
    "SCHEDULERS": "hamsweep.spec.sweep",
    "BudgetConfig": "hamsweep.spec.sweep",
    "ConfirmConfig": "hamsweep.spec.sweep",
    "Distribution": "hamsweep.spec.sweep",
    "METHOD_KEY": "hamsweep.spec.sweep",
    "MethodSearch": "hamsweep.spec.sweep",
    "ObjectiveConfig": "hamsweep.spec.sweep",
    "ResourcesConfig": "hamsweep.spec.sweep",
    "SchedulerConfig": "hamsweep.spec.sweep",
    "SearchConfig": "hamsweep.spec.sweep",
    "SweepSpec": "hamsweep.spec.sweep",
    "load_spec": "hamsweep.spec.sweep",
    "parse_overrides": "hamsweep.spec.sweep",
    "DATASETS": "hamsweep.spec.trial",
    "METHODS": "hamsweep.spec.trial",
    "MODELS": "hamsweep.spec.trial",
    "OBJECTIVES": "hamsweep.spec.trial",
    "TRIAL_SECTIONS": "hamsweep.spec.trial",
    "DataConfig": "hamsweep.spec.trial",
    "EvalConfig": "hamsweep.spec.trial",
    "HamConfig": "hamsweep.spec.trial",
    "ModelConfig": "hamsweep.spec.trial",
    "TrainConfig": "hamsweep.spec.trial",
    "TrialConfig": "hamsweep.spec.trial",
    "config_diff": "hamsweep.spec.trial",
    "config_keys": "hamsweep.spec.trial",
    "flat": "hamsweep.spec.trial",
}

__all__ = [
    "DATASETS",
    "DISTRIBUTIONS",
    "METHODS",
    "METHOD_KEY",
    "MODELS",
    "OBJECTIVES",
    "SAMPLERS",
    "SCHEDULERS",
    "TRIAL_SECTIONS",
    "BudgetConfig",
    "CloudProfile",
    "ConfirmConfig",
    "DataConfig",
    "Distribution",
    "EvalConfig",
    "HamConfig",
    "LocalProfile",
    "MethodSearch",
    "ModelConfig",
    "ObjectiveConfig",
    "ResourcesConfig",
    "SchedulerConfig",
    "SearchConfig",
    "SlurmProfile",
    "SweepSpec",
    "TrainConfig",
    "TrialConfig",
    "config_diff",
    "config_keys",
    "flat",
    "load_profile",
    "load_spec",
    "parse_overrides",
    "validate",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hamsweep.spec' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
