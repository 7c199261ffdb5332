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

from hamsweep.spec._base import validate as validate
from hamsweep.spec.cluster import CloudProfile as CloudProfile
from hamsweep.spec.cluster import LocalProfile as LocalProfile
from hamsweep.spec.cluster import SlurmProfile as SlurmProfile
from hamsweep.spec.cluster import load_profile as load_profile
from hamsweep.spec.sweep import DISTRIBUTIONS as DISTRIBUTIONS
from hamsweep.spec.sweep import SCHEDULERS as SCHEDULERS
from hamsweep.spec.sweep import BudgetConfig as BudgetConfig
from hamsweep.spec.sweep import ConfirmConfig as ConfirmConfig
from hamsweep.spec.sweep import ObjectiveConfig as ObjectiveConfig
from hamsweep.spec.sweep import ResourcesConfig as ResourcesConfig
from hamsweep.spec.sweep import SchedulerConfig as SchedulerConfig
from hamsweep.spec.sweep import SAMPLERS as SAMPLERS
from hamsweep.spec.sweep import Distribution as Distribution
from hamsweep.spec.sweep import SearchConfig as SearchConfig
from hamsweep.spec.sweep import SweepSpec as SweepSpec
from hamsweep.spec.sweep import load_spec as load_spec
from hamsweep.spec.sweep import parse_overrides as parse_overrides
from hamsweep.spec.trial import DATASETS as DATASETS
from hamsweep.spec.trial import METHODS as METHODS
from hamsweep.spec.trial import OBJECTIVES as OBJECTIVES
from hamsweep.spec.trial import MODELS as MODELS
from hamsweep.spec.trial import TRIAL_SECTIONS as TRIAL_SECTIONS
from hamsweep.spec.trial import DataConfig as DataConfig
from hamsweep.spec.trial import EvalConfig as EvalConfig
from hamsweep.spec.trial import HamConfig as HamConfig
from hamsweep.spec.trial import ModelConfig as ModelConfig
from hamsweep.spec.trial import TrainConfig as TrainConfig
from hamsweep.spec.trial import TrialConfig as TrialConfig
from hamsweep.spec.trial import config_diff as config_diff
from hamsweep.spec.trial import config_keys as config_keys
from hamsweep.spec.trial import flat as flat

__all__ = [
    "DATASETS",
    "DISTRIBUTIONS",
    "METHODS",
    "MODELS",
    "OBJECTIVES",
    "SAMPLERS",
    "SCHEDULERS",
    "TRIAL_SECTIONS",
    "BudgetConfig",
    "CloudProfile",
    "DataConfig",
    "Distribution",
    "EvalConfig",
    "ConfirmConfig",
    "HamConfig",
    "LocalProfile",
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
