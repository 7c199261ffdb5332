"""Ray cluster-launcher configs (``cluster/aws.yaml``, ``cluster/gcp.yaml``):
the files ``ray up`` takes.

hamsweep does not start such a cluster. It checks the file offline, with the validation ``ray up``
itself runs before its first cloud call (Ray's JSON schema, then ``prepare_config`` and
``validate_config``; no boto3, no Google client, no network), and says how to run a sweep there:
``ray up FILE``, then ``hamsweep run SPEC --address auto`` on the head. Ray's errors become one-line
``SpecError``s naming the file and the key.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Any, Literal

from hamsweep.errors import SpecError
from hamsweep.spec._base import _Frozen

__all__ = [
    "LAUNCHER_KEYS",
    "PROVIDERS",
    "CloudProfile",
    "NodeType",
    "is_launcher_config",
    "load_cloud_profile",
]

PROVIDERS = ("aws", "gcp")  # Ray node providers whose launcher configs hamsweep ships and checks
# any of these (and no `kind`): a `ray up` file
LAUNCHER_KEYS = ("provider", "cluster_name", "available_node_types")
_TICKED = re.compile(r"`(\w+)`")  # Ray's own ValueErrors name the key in backticks
_INSTANCE_KEYS = ("InstanceType", "machineType")  # the instance type in an AWS / GCP node_config


class NodeType(_Frozen):
    """One of the launcher's ``available_node_types``, as Ray's autoscaler will see it."""

    instance: str  # InstanceType (AWS) or machineType (GCP); "?" when not given
    # what Ray may hand out on one node, e.g. {CPU: 48, GPU: 4}; {} = detected at `ray up`
    resources: dict[str, int]
    max_workers: int  # nodes of this type at most (0 for the head's type)


class CloudProfile(_Frozen):
    """A Ray cluster-launcher config, validated; hamsweep runs sweeps on it but never starts it."""

    kind: Literal["cloud"] = "cloud"
    path: str  # the launcher config, as given on the command line
    provider: Literal["aws", "gcp"]  # Ray's node provider
    region: str  # provider.region ("?" when Ray's default applies)
    cluster_name: str  # Ray's name for the cluster's instances
    head_node_type: str  # the node type that runs Ray's head (and the sweep driver)
    node_types: dict[str, NodeType]  # every node type, the head's included

    @property
    def workers(self) -> dict[str, NodeType]:
        """The node types that trials can run on: all but the head's."""
        return {name: t for name, t in self.node_types.items() if name != self.head_node_type}

    @property
    def message(self) -> str:
        """Why ``hamsweep run --cluster`` does not take this file, and what to
        do instead (one line)."""
        return (
            f"{self.path} is a Ray cluster-launcher config ({self.provider}), which hamsweep does "
            f"not start: run `ray up {self.path}`, then the sweep on its head with --address auto, "
            f"e.g. `ray exec {self.path} --tmux 'cd ~/hamsweep && .venv/bin/hamsweep run SPEC "
            "--address auto --out /mnt/shared/runs/NAME'` (cluster/README.md)"
        )

    def describe(self) -> str:
        head = self.node_types[self.head_node_type]
        workers = ", ".join(
            f"up to {t.max_workers} x {name} ({t.instance}{_offer(t.resources)})"
            for name, t in self.workers.items()
        )
        return (
            f"Ray cluster launcher on {self.provider} {self.region}, cluster {self.cluster_name}: "
            f"head {self.head_node_type} ({head.instance}), workers {workers or 'none'}; start it "
            f"with `ray up {self.path}`, then run the sweep on its head with --address auto "
            "(cluster/README.md)"
        )

    def check_fits(self, cpu: float, gpu: float) -> None:
        """A trial must fit on one worker node type, else it would wait forever for a
        node that never comes."""
        known = [t.resources for t in self.workers.values()]
        # resources detected at `ray up` (AWS): nothing to check offline
        if not known or any(not r for r in known):
            return
        if not any(r.get("GPU", 0) >= gpu for r in known):
            offers = "; ".join(f"{name}{_offer(t.resources)}" for name, t in self.workers.items())
            raise SpecError(
                "resources.gpu",
                f"{gpu:g} GPUs per trial but no worker node "
                f"type of {self.path} has that many ({offers})",
            )
        if not any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in known):
            offers = "; ".join(f"{name}{_offer(t.resources)}" for name, t in self.workers.items())
            raise SpecError(
                "resources.cpu",
                f"{cpu:g} CPUs per trial but no worker node "
                f"type of {self.path} has that many ({offers})",
            )


def _offer(resources: dict[str, int]) -> str:
    return (
        f": {resources.get('CPU', 0)} CPUs + {resources.get('GPU', 0)} GPUs"
        if resources
        else ": resources detected at `ray up`"
    )


def is_launcher_config(data: dict[str, Any]) -> bool:
    """A mapping with no ``kind`` but a key of Ray's launcher config is a ``ray up`` file."""
    return "kind" not in data and any(key in data for key in LAUNCHER_KEYS)


def load_cloud_profile(path: str | Path, data: dict[str, Any]) -> CloudProfile:
    """Validate a launcher config (already read from ``path``) as ``ray up`` would, offline."""
    provider = data.get("provider")
    if isinstance(provider, dict) and "type" in provider and provider["type"] not in PROVIDERS:
        got = provider["type"]
        raise SpecError(
            f"{path}: provider.type",
            f"hamsweep checks Ray launcher configs for {', '.join(PROVIDERS)} but got {got!r}",
        )
    try:
        config = _ray_validate(data)
    except SpecError as err:
        where = f"{path}: {err.key}" if err.key else str(path)
        raise SpecError(where, str(err).removeprefix(f"{err.key}: ")) from None
    return _profile(str(path), config)


def _ray_validate(data: dict[str, Any]) -> dict[str, Any]:
    """Ray's schema on the file as written (a key Ray's defaults would fill in is still required
    here, and wrong types are named before defaults hide them), then what ``ray up`` runs before any
    cloud call: defaults merged, node types completed, ``validate_config``. Returns that config."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads(Path(ray.autoscaler.__file__).with_name("ray-schema.json").read_text())
    quiet = logging.getLogger("ray.autoscaler")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # Ray logs "setting max workers for ..." per node type at INFO
    try:
        jsonschema.validate(data, schema)
        config = prepare_config(copy.deepcopy(data))
        validate_config(config)
    except jsonschema.ValidationError as err:
        raise _schema_error(err) from None
    except (ValueError, AssertionError, KeyError, TypeError, RuntimeError) as err:
        raise _ray_error(err, data) from None
    finally:
        quiet.setLevel(level)
    return config


def _ray_error(err: Exception, data: dict[str, Any]) -> SpecError:
    """One of Ray's own checks failed (e.g. head_node_type not among the node types): its words, on
    one line, under the key it names in backticks, with the value received."""
    said = " ".join(str(err).split())
    key = m.group(1) if (m := _TICKED.search(said)) else ""
    if key in data:
        said += f" (got {data[key]!r})"
    if key == "head_node_type" and isinstance(data.get("available_node_types"), dict):
        said += f"; node types here are {', '.join(data['available_node_types'])}"
    return SpecError(key, f"Ray's cluster launcher rejects it: {said}")


def _schema_error(err: Any) -> SpecError:
    """A ``jsonschema.ValidationError`` against Ray's schema as one line:
    'key.path: what is wrong'."""
    key = ".".join(str(p) for p in err.absolute_path)
    rule, want, got = err.validator, err.validator_value, err.instance
    if rule == "required":
        missing = next((k for k in want if k not in got), "?")
        return SpecError(_join(key, missing), "is required by Ray's cluster launcher")
    if rule == "additionalProperties":
        valid = list(err.schema.get("properties", {}))
        extra = next((k for k in got if k not in valid), "?")
        return SpecError(
            _join(key, extra), f"unknown key {extra!r}; valid keys here are {', '.join(valid)}"
        )
    if rule == "type":
        kinds = " or ".join(want) if isinstance(want, list) else want
        return SpecError(
            key, f"must be {'an' if kinds[0] in 'aeiou' else 'a'} {kinds} but got {got!r}"
        )
    if rule == "minimum":
        return SpecError(key, f"must be >= {want} but got {got!r}")
    return SpecError(key, " ".join(err.message.split()))


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _profile(path: str, config: dict[str, Any]) -> CloudProfile:
    """The facts hamsweep reports and checks, from the config Ray prepared (defaults merged)."""
    types = {
        name: NodeType(
            instance=str(
                next((t["node_config"][k] for k in _INSTANCE_KEYS if k in t["node_config"]), "?")
            ),
            resources=dict(t["resources"]),
            max_workers=int(t["max_workers"]),
        )
        for name, t in config["available_node_types"].items()
    }
    provider = config["provider"]
    return CloudProfile(
        path=path,
        provider=provider["type"],
        region=str(provider.get("region", "?")),
        cluster_name=config["cluster_name"],
        head_node_type=config["head_node_type"],
        node_types=types,
    )
