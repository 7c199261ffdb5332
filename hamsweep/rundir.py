"""A run folder reproduces itself: the resolved spec, a manifest, then tables and checkpoints.

Everything here is written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from hamsweep.errors import SpecError

__all__ = [
    "MANIFEST",
    "SPEC",
    "atomic_write_text",
    "default_out",
    "prepare",
    "write_manifest",
    "write_spec",
]

SPEC, MANIFEST = "spec.yaml", "manifest.json"
_PACKAGES = (
    "hamsweep",
    "torch",
    "torchvision",
    "ray",
    "optuna",
    "submitit",
    "pyarrow",
    "duckdb",
    "pydantic",
    "rich",
    "numpy",
)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def default_out(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare(out: Path, *, resume: bool) -> None:
    """Check ``out`` before anything starts: new runs need an empty folder, resumed ones a spec."""
    if resume:
        if not (out / SPEC).is_file():
            raise SpecError(
                "--resume",
                f"{out} holds no {SPEC}: nothing to resume; drop --resume to start a new run",
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpecError(
            "--out",
            f"{out} already exists and is not empty; pass "
            "--resume to continue it or choose a new --out",
        )
    check_writable(out.parent if out.parent != Path("") else Path("."), "--out")


def check_writable(folder: Path, key: str) -> None:
    """``folder`` exists as a writable folder, or can be created: its nearest
    existing ancestor is one."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise SpecError(
            key,
            f"{folder} is not a writable folder ({probe} is "
            f"{'not writable' if probe.is_dir() else 'a file'}); "
            "choose a folder where you can write",
        )


def write_spec(out: Path, data: dict[str, Any]) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SPEC, yaml.safe_dump(data, sort_keys=False))


def read_spec(out: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((out / SPEC).read_text())


def write_manifest(out: Path, *, resumed: bool = False) -> None:
    """Package versions, git sha, command line, host and start time. A resumed run keeps its
    original manifest and appends this invocation to its ``resumes`` list."""
    now = {
        "command": sys.argv,
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_sha": _git_sha(),
    }
    path = out / MANIFEST
    if resumed and path.is_file():
        manifest = json.loads(path.read_text())
        manifest.setdefault("resumes", []).append(now)
    else:
        manifest = {
            **now,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": {p: _version(p) for p in _PACKAGES},
        }
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
