"""Tiny data, a tiny model and a tiny trial config: every test here runs in seconds on 2 CPU cores."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from hamsweep.spec import TrialConfig

REPO = Path(__file__).resolve().parents[1]
HAMSWEEP = str(Path(sys.executable).with_name("hamsweep"))  # the console script of this venv

# tiny tensors: threads only add synchronisation, and oversubscribe the cores under pytest-xdist or a busy CI
torch.set_num_threads(1)


def tiny_config(**sections: dict) -> TrialConfig:
    """A trial that trains in about a second: 8x8 synthetic images, small_cnn of width 4."""
    base = {
        "data": {"name": "synthetic", "num_classes": 4, "image_size": 8, "train_size": 256, "test_size": 64, "val_fraction": 0.25},
        "model": {"name": "small_cnn", "width": 4},
        "train": {"method": "ham", "epochs": 3, "batch_size": 32, "lr": 0.05, "attack_steps": 3, "device": "cpu"},
        "ham": {"warmup_epochs": 1, "drop_step": 1},
        "eval": {"attack_steps": 3, "batch_size": 128, "test": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return TrialConfig.model_validate(base)


@pytest.fixture
def cfg() -> TrialConfig:
    return tiny_config()


@pytest.fixture
def dataset(cfg: TrialConfig):
    from hamsweep.data import load

    return load(cfg.data)


@dataclass(frozen=True)
class LocalSlurm:
    """The project's test SLURM (cluster/local/slurm.sh), as `sinfo` describes it."""

    conf: Path  # its slurm.conf, the SLURM_CONF the tests run with
    partitions: tuple[str, ...]  # every partition, the default first
    cpus: int  # CPUs the one node advertises (more than the machine has: 1-CPU jobs run side by side)
    gpus: int  # fake GPUs on that node, handed to jobs as CUDA_VISIBLE_DEVICES

    @property
    def default_partition(self) -> str:
        return self.partitions[0]


_SLURM_HINT = (
    'start it with `eval "$(cluster/local/slurm.sh up)"` (root; it installs slurm and munge with '
    "apt-get the first time) and run pytest in that shell, or run `make test`, which starts and stops it"
)


@pytest.fixture(scope="session")
def slurm() -> LocalSlurm:
    """The running test cluster; fails (not skips) when there is none, so that a SLURM test never
    passes by not running."""
    conf = os.environ.get("SLURM_CONF")
    if not conf or not Path(conf).is_file():
        why = f"SLURM_CONF={conf} is no file (cluster down?)" if conf else "SLURM_CONF is not set"
        pytest.fail(f"{why}: the SLURM tests need the project's local cluster; {_SLURM_HINT}", pytrace=False)
    if "ClusterName=hamsweep" not in Path(conf).read_text():
        # the tests submit and cancel jobs: never on a real cluster by accident
        pytest.fail(f"SLURM_CONF={conf} is not the project's test cluster (ClusterName=hamsweep); {_SLURM_HINT}", pytrace=False)
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P|%c|%G"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", None) or err
        pytest.fail(f"sinfo failed with SLURM_CONF={conf}: {str(detail).strip()}; is the cluster down? {_SLURM_HINT}", pytrace=False)
    rows = [line.split("|") for line in out.stdout.split()]  # one per partition: ["debug*", "8", "gpu:2"]
    names = [name for name, _, _ in rows if name.endswith("*")] + [name for name, _, _ in rows if not name.endswith("*")]
    gpus = re.search(r"gpu(?::\w+)?:(\d+)", rows[0][2])
    return LocalSlurm(Path(conf), tuple(n.rstrip("*") for n in names), cpus=int(rows[0][1]), gpus=int(gpus[1]) if gpus else 0)


# ---- sweeps: a tiny spec, the CLI, waiting on a running sweep ----
TINY = {  # a sweep of 5 tiny trials, about a minute on 2 cores
    "name": "tiny",
    "data": {"name": "synthetic", "num_classes": 4, "image_size": 8, "train_size": 1024, "test_size": 64, "val_fraction": 0.25},
    "model": {"name": "small_cnn", "width": 4},
    "train": {"method": "ham", "epochs": 4, "batch_size": 64, "lr": 0.05, "attack_steps": 3},
    "ham": {"warmup_epochs": 1, "drop_step": 1},
    "eval": {"attack_steps": 3, "batch_size": 256},
    "objective": {"metric": "mean_robust"},  # varies more than the worst class on tiny data: ASHA has something to cut
    "scheduler": {"grace_period": 1, "reduction_factor": 2},
    "confirm": {"top_k": 1, "seeds": 0},
    "search": {
        "seed": 0, "num_samples": 5, "max_concurrent": 2,
        "params": {
            "ham.discard_threshold": {"uniform": [0.0, 0.9], "default": 0.0},
            "train.attack_steps": {"int": [1, 3], "default": 3},
            "ham.drop_step": {"int": [1, "train.attack_steps"], "default": 1},
            "ham.temperature": {"choice": [None, 1.0], "default": None},
            "train.lr": {"loguniform": [0.01, 0.1], "default": 0.05},
        },
    },
}


def write_spec(path: Path, **changes: dict) -> Path:
    spec = yaml.safe_load(yaml.safe_dump(TINY))
    for section, values in changes.items():
        spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(spec))
    return path


def hamsweep(*args: str, timeout: float = 500) -> subprocess.CompletedProcess:
    return subprocess.run([HAMSWEEP, *args], capture_output=True, text=True, timeout=timeout)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def snapshotted_trials(out: Path) -> list[tuple[dict, dict]]:
    """(config, result of its latest registered checkpoint) of each trial in Tune's experiment
    snapshot: what a restored sweep continues from. Not the trial's ``last_result``: a snapshot can
    be taken after a result is recorded but before its checkpoint is registered, and a restored
    trial then starts without that checkpoint. The snapshot lags the folders on disk by a second or more."""
    from ray import cloudpickle

    found = []
    for state in (out / "ray").glob("experiment_state*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (OSError, ValueError, KeyError):
            continue
        for data, runtime in trials:
            manager = cloudpickle.loads(bytes.fromhex(json.loads(runtime)["checkpoint_manager"]["value"]))
            latest = manager._latest_checkpoint_result  # noqa: SLF001 - Tune 2.60 keeps no public accessor in its snapshot
            found.append((json.loads(data).get("config", {}), dict(latest.metrics) if latest is not None else {}))
    return found


def checkpoint_whole(out: Path, last: dict) -> bool:
    """The checkpoint a snapshotted trial's result names (``snapshotted_trials``) is on disk whole: the snapshot can name
    one whose copy is not complete yet, and a kill then leaves a damaged checkpoint (set aside on
    resume, so the trial starts over instead of continuing)."""
    folder = out / "ray" / f"trial_{last.get('trial_id')}" / str(last.get("checkpoint_dir_name"))
    if not last.get("checkpoint_dir_name") or not (folder / "last.pt").is_file():
        return False
    try:
        return len(json.loads((folder / "history.json").read_text())) >= 1 and bool(torch.load(folder / "last.pt", weights_only=False))
    except Exception:  # noqa: BLE001 - a file still being written
        return False


def snapshotted_epochs(out: Path) -> int:
    """Epochs of trials in Tune's experiment snapshot whose checkpoint is whole (see ``snapshotted_trials``)."""
    return sum(last.get("epoch", 0) for _, last in snapshotted_trials(out) if checkpoint_whole(out, last))


def finished_sweep(spec: Path, out: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """``hamsweep run SPEC --out OUT`` to its end, which must succeed."""
    proc = hamsweep("run", str(spec), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


# ---- a sweep with a confirm stage, killed during it and resumed: test_confirm and test_report read it ----
CONFIRM_PARAMS = {  # K and lr fixed: one warm-up config, so one trunk per seed
    "ham.discard_threshold": {"uniform": [0.0, 0.9], "default": 0.0},
    "ham.temperature": {"choice": [None, 1.0], "default": None},
    "ham.warmup_epochs": {"int": [2, 4], "default": 3},
}
CONFIRM_EPOCHS, CONFIRM_SAMPLES, CONFIRM_TOP_K, CONFIRM_SEEDS, CONFIRM_CLASSES = 8, 3, 2, 2, 4
CONFIRM_CVAR = 0.5  # cvar = the mean of the 2 weakest of 4 classes


def confirm_spec(path: Path, **changes) -> Path:
    return write_spec(
        path, data={"train_size": 2048}, train={"epochs": CONFIRM_EPOCHS}, scheduler="none", eval={"cvar_fraction": CONFIRM_CVAR},
        search={"num_samples": CONFIRM_SAMPLES, "max_concurrent": 2, "params": CONFIRM_PARAMS},
        confirm={"top_k": CONFIRM_TOP_K, "seeds": CONFIRM_SEEDS},
        **changes,
    )


def _in_confirm(out: Path) -> bool:
    """The confirm stage is planned and one of its trials is checkpointed (whole on disk), unfinished, in Tune's snapshot."""
    return (out / "confirm.json").is_file() and any(
        config.get("stage") == "confirm" and last.get("epoch", 0) < CONFIRM_EPOCHS and checkpoint_whole(out, last)
        for config, last in snapshotted_trials(out))


@pytest.fixture(scope="session")
def confirmed_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A sweep killed with SIGKILL during its confirm stage, then resumed to its end."""
    root = tmp_path_factory.mktemp("confirm")
    out, spec = root / "out", confirm_spec(root / "confirm.yaml")
    driver = subprocess.Popen([HAMSWEEP, "run", str(spec), "--out", str(out)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: _in_confirm(out), 400, "a confirm trial checkpointed and unfinished in Tune's snapshot")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    proc = hamsweep("resume", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc
