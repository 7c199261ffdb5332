"""Tiny data, a tiny model and a tiny trial config: every test here runs in seconds on 2 CPU
cores."""

from __future__ import annotations

import difflib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from hamsweep.core.evaluation import EvalCounts
from hamsweep.core.train import EpochRecord
from hamsweep.spec import TrialConfig

REPO = Path(__file__).resolve().parents[1]
HAMSWEEP = str(Path(sys.executable).with_name("hamsweep"))  # the console script of this venv

# tiny tensors: threads only add synchronisation, and oversubscribe the cores under pytest-xdist or
# a busy CI
torch.set_num_threads(1)


def tiny_config(**sections: dict) -> TrialConfig:
    """A trial that trains in about a second: 8x8 synthetic images, small_cnn of width 4."""
    base = {
        "data": {
            "name": "synthetic",
            "num_classes": 4,
            "image_size": 8,
            "train_size": 256,
            "test_size": 64,
            "val_fraction": 0.25,
        },
        "model": {"name": "small_cnn", "width": 4},
        "train": {
            "method": "ham",
            "epochs": 3,
            "batch_size": 32,
            "lr": 0.05,
            "attack_steps": 3,
            "device": "cpu",
        },
        "ham": {"warmup_epochs": 1, "drop_step": 1},
        "eval": {"attack_steps": 3, "batch_size": 128, "test": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return TrialConfig.model_validate(base)


def killed_and_resumed(cfg: TrialConfig, workdir: Path, after: int, dataset: Any) -> list:
    """Train ``cfg`` in ``workdir`` as a process killed right after epoch ``after`` is
    checkpointed (its report raises), then resumed from that checkpoint to the end: the records of
    the resumed run (epochs ``after`` + 1 ..)."""
    from hamsweep.core.train import last_record, run

    class Killed(Exception):
        pass

    def die(record: Any, _ckpt: Path) -> None:
        if record.epoch == after:
            raise Killed

    with pytest.raises(Killed):
        run(cfg, workdir=workdir, report=die, dataset=dataset)
    assert last_record(workdir / "checkpoint").epoch == after
    resumed = run(cfg, workdir=workdir, dataset=dataset)
    assert [r.epoch for r in resumed] == list(range(after + 1, cfg.train.epochs + 1))
    return resumed


@pytest.fixture
def cfg() -> TrialConfig:
    return tiny_config()


@pytest.fixture
def dataset(cfg: TrialConfig):
    from hamsweep.core.data import load

    return load(cfg.data)


@dataclass(frozen=True)
class LocalSlurm:
    """The project's test SLURM (cluster/local/slurm.sh), as `sinfo` describes it."""

    conf: Path  # its slurm.conf, the SLURM_CONF the tests run with
    partitions: tuple[str, ...]  # every partition, the default first
    cpus: (
        int  # CPUs the one node advertises (more than the machine has: 1-CPU jobs run side by side)
    )
    gpus: int  # fake GPUs on that node, handed to jobs as CUDA_VISIBLE_DEVICES

    @property
    def default_partition(self) -> str:
        return self.partitions[0]


_SLURM_HINT = (
    'start it with `eval "$(cluster/local/slurm.sh up)"` (root; it installs slurm and munge with '
    "apt-get the first time) and run pytest in that shell, or run `make test`, which starts and "
    "stops it"
)


@pytest.fixture(scope="session")
def slurm() -> LocalSlurm:
    """The running test cluster; fails (not skips) when there is none, so that a SLURM test never
    passes by not running."""
    conf = os.environ.get("SLURM_CONF")
    if not conf or not Path(conf).is_file():
        why = f"SLURM_CONF={conf} is no file (cluster down?)" if conf else "SLURM_CONF is not set"
        pytest.fail(
            f"{why}: the SLURM tests need the project's local cluster; {_SLURM_HINT}", pytrace=False
        )
    if "ClusterName=hamsweep" not in Path(conf).read_text():
        # the tests submit and cancel jobs: never on a real cluster by accident
        pytest.fail(
            f"SLURM_CONF={conf} is not the project's test cluster (ClusterName=hamsweep); "
            f"{_SLURM_HINT}",
            pytrace=False,
        )
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%P|%c|%G"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", None) or err
        pytest.fail(
            f"sinfo failed with SLURM_CONF={conf}: {str(detail).strip()}; is the cluster down? "
            f"{_SLURM_HINT}",
            pytrace=False,
        )
    # one per partition: ["debug*", "8", "gpu:2"]
    rows = [line.split("|") for line in out.stdout.split()]
    names = [name for name, _, _ in rows if name.endswith("*")] + [
        name for name, _, _ in rows if not name.endswith("*")
    ]
    gpus = re.search(r"gpu(?::\w+)?:(\d+)", rows[0][2])
    return LocalSlurm(
        Path(conf),
        tuple(n.rstrip("*") for n in names),
        cpus=int(rows[0][1]),
        gpus=int(gpus[1]) if gpus else 0,
    )


# ---- sweeps: a tiny spec, the CLI, waiting on a running sweep ----
TINY = {  # a sweep of 5 tiny trials, about a minute on 2 cores
    "name": "tiny",
    "data": {
        "name": "synthetic",
        "num_classes": 4,
        "image_size": 8,
        "train_size": 1024,
        "test_size": 64,
        "val_fraction": 0.25,
    },
    "model": {"name": "small_cnn", "width": 4},
    "train": {"method": "ham", "epochs": 4, "batch_size": 64, "lr": 0.05, "attack_steps": 3},
    "ham": {"warmup_epochs": 1, "drop_step": 1},
    "eval": {"attack_steps": 3, "batch_size": 256},
    # varies more than the worst class on tiny data: ASHA has something to cut
    "objective": {"metric": "mean_robust"},
    "scheduler": {"grace_period": 1, "reduction_factor": 2},
    "confirm": {"top_k": 1, "seeds": 0},
    "search": {
        "seed": 0,
        "num_samples": 5,
        "max_concurrent": 2,
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


def matches_golden(path: Path, text: str) -> None:
    """Assert that ``text`` is the golden file ``path`` (a reviewer sees a change as its diff).
    With HAMSWEEP_GOLDEN=update the file is written and the test fails, naming it: an update is
    reviewed (``git diff``) and the test rerun without the variable, never passed by
    construction."""
    if os.environ.get("HAMSWEEP_GOLDEN") == "update":
        same = path.is_file() and path.read_text() == text
        path.write_text(text)
        pytest.fail(
            f"HAMSWEEP_GOLDEN=update wrote {path} ({'unchanged' if same else 'changed'}): review "
            f"git diff {path}, then rerun without HAMSWEEP_GOLDEN",
            pytrace=False,
        )
    assert path.is_file(), f"no golden file {path}: write it with HAMSWEEP_GOLDEN=update"
    golden = path.read_text()
    diff = difflib.unified_diff(
        golden.splitlines(), text.splitlines(), str(path), "now", lineterm=""
    )
    assert text == golden, "\n".join(diff)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def snapshotted_trials(out: Path, unfinished: bool = False) -> list[tuple[dict, dict]]:
    """(config, result of its latest registered checkpoint) of each trial in Tune's experiment
    snapshot: what a restored sweep continues from. Not the trial's ``last_result``: a snapshot can
    be taken after a result is recorded but before its checkpoint is registered, and a restored
    trial then starts without that checkpoint. The snapshot lags the folders on disk by a second or
    more. ``unfinished``: only the trials that had not ended in the snapshot (a restore continues
    them; an ended one is not trained again)."""
    from ray import cloudpickle

    found = []
    for state in (out / "ray").glob("experiment_state*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (OSError, ValueError, KeyError):
            continue
        for data, runtime in trials:
            if unfinished and json.loads(data).get("status") in ("TERMINATED", "ERROR"):
                continue
            manager = cloudpickle.loads(
                bytes.fromhex(json.loads(runtime)["checkpoint_manager"]["value"])
            )
            latest = manager._latest_checkpoint_result
            found.append(
                (
                    json.loads(data).get("config", {}),
                    dict(latest.metrics) if latest is not None else {},
                )
            )
    return found


def checkpoint_whole(out: Path, last: dict) -> bool:
    """The checkpoint a snapshotted trial's result names (``snapshotted_trials``) is on disk whole:
    the snapshot can name one whose copy is not complete yet, and a kill then leaves a damaged
    checkpoint (set aside on resume, so the trial starts over instead of continuing)."""
    folder = out / "ray" / f"trial_{last.get('trial_id')}" / str(last.get("checkpoint_dir_name"))
    if not last.get("checkpoint_dir_name") or not (folder / "last.pt").is_file():
        return False
    try:
        return len(json.loads((folder / "history.json").read_text())) >= 1 and bool(
            torch.load(folder / "last.pt", weights_only=False)
        )
    except Exception:
        return False


def snapshotted_epochs(out: Path, unfinished: bool = False) -> int:
    """Epochs of trials in Tune's experiment snapshot whose checkpoint is whole (see
    ``snapshotted_trials``); ``unfinished``: of the trials a restore would continue from them."""
    return sum(
        last.get("epoch", 0)
        for _, last in snapshotted_trials(out, unfinished)
        if checkpoint_whole(out, last)
    )


def assert_resumed_to_the_end(out: Path, trials: int, epochs: int) -> None:
    """A resumed sweep of ``trials`` trials of ``epochs`` epochs: every trial completed, each
    epoch's row stored once, and some trial continued from a checkpoint, not from epoch 0."""
    from hamsweep.results import store as results

    rows = results.read_table(out, results.TRIALS).to_pylist()
    assert len(rows) == trials and all(t["status"] == "completed" for t in rows), rows
    con = results.connect(out)
    counts = con.execute("SELECT count(*), count(DISTINCT (trial, epoch)) FROM epochs").fetchone()
    assert counts == (trials * epochs, trials * epochs)
    assert any(t["resumed_from"] for t in rows)


def finished_sweep(spec: Path, out: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """``hamsweep run SPEC --out OUT`` to its end, which must succeed."""
    proc = hamsweep("run", str(spec), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


# ---- a sweep with a confirm stage, killed during it and resumed ----
# test_confirm and test_report read it
CONFIRM_PARAMS = {  # K and lr fixed: one warm-up config, so one trunk per seed
    "ham.discard_threshold": {"uniform": [0.0, 0.9], "default": 0.0},
    "ham.temperature": {"choice": [None, 1.0], "default": None},
    "ham.warmup_epochs": {"int": [2, 4], "default": 3},
}
CONFIRM_EPOCHS, CONFIRM_SAMPLES, CONFIRM_TOP_K, CONFIRM_SEEDS, CONFIRM_CLASSES = 8, 3, 2, 2, 4
CONFIRM_CVAR = 0.5  # cvar = the mean of the 2 weakest of 4 classes


def confirm_spec(path: Path, **changes) -> Path:
    return write_spec(
        path,
        data={"train_size": 2048},
        train={"epochs": CONFIRM_EPOCHS},
        scheduler="none",
        eval={"cvar_fraction": CONFIRM_CVAR},
        search={"num_samples": CONFIRM_SAMPLES, "max_concurrent": 2, "params": CONFIRM_PARAMS},
        confirm={"top_k": CONFIRM_TOP_K, "seeds": CONFIRM_SEEDS},
        **changes,
    )


def _in_confirm(out: Path) -> bool:
    """The confirm stage is planned and one of its trials is checkpointed (whole on disk),
    unfinished, in Tune's snapshot."""
    return (out / "confirm.json").is_file() and any(
        config.get("stage") == "confirm"
        and last.get("epoch", 0) < CONFIRM_EPOCHS
        and checkpoint_whole(out, last)
        for config, last in snapshotted_trials(out)
    )


@pytest.fixture(scope="session")
def confirmed_sweep(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess]:
    """A sweep killed with SIGKILL during its confirm stage, then resumed to its end."""
    root = tmp_path_factory.mktemp("confirm")
    out, spec = root / "out", confirm_spec(root / "confirm.yaml")
    driver = subprocess.Popen(
        [HAMSWEEP, "run", str(spec), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: _in_confirm(out),
            400,
            "a confirm trial checkpointed and unfinished in Tune's snapshot",
        )
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    proc = hamsweep("resume", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


# ---- shared by tests in several folders ----
SHARED_PARAMS = {  # K and lr fixed: every trial has the same warm-up, one trunk
    "ham.discard_threshold": {"uniform": [0.0, 0.9], "default": 0.0},
    "ham.drop_step": {"int": [1, "train.attack_steps"], "default": 1},
    "ham.temperature": {"choice": [None, 1.0], "default": None},
    "ham.warmup_epochs": {"int": [1, 3], "default": 2},
}


def epoch_record(epoch: int, correct=(3, 1)) -> EpochRecord:
    evals = (
        EvalCounts("val", "clean", (4, 4), (4, 3)),
        EvalCounts("val", "pgd20", (4, 4), correct),
    )
    return EpochRecord(
        epoch=epoch,
        phase="ham",
        seconds=1.0,
        images=8,
        images_per_s=8.0,
        lr=0.1,
        train_loss=1.0,
        train_acc=0.5,
        hard_fraction=0.5,
        kept_fraction=0.5,
        attack_steps=40,
        attack_steps_full=80,
        decision_forwards=8,
        train_examples=4,
        empty_batches=0,
        evals=evals,
    )


def tmpfs(path: Path, megabytes: int):
    path.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True,
    ).returncode:
        pytest.fail(
            f"mounting a {megabytes} MB tmpfs failed: the disk tests need root "
            "(make test runs as root)",
            pytrace=False,
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# ---- the fixtures of the release before the house move (tests/fixtures/pre_house) ----
PRE_HOUSE_JOBS = REPO / "tests" / "fixtures" / "pre_house" / "jobs"
PRE_HOUSE_TIMINGS = ("seconds", "images_per_s")  # the only figures of a result that vary by run
PRE_HOUSE_ADDED = ("class_state",)  # record fields added since the old release: it wrote none


def pre_house_comparable(result: dict) -> dict:
    """A job's result without what differs between two runs (timings, the node it ran on) and the
    record fields the old release did not write."""
    drop = PRE_HOUSE_TIMINGS + PRE_HOUSE_ADDED
    record = {k: v for k, v in result["record"].items() if k not in drop}
    return {**{k: v for k, v in result.items() if k not in ("node", "devices")}, "record": record}


def run_pre_house_job(root: Path, job: str = "1") -> list[dict]:
    """Run the old release's pickled trial job (a copy of tests/fixtures/pre_house/jobs in
    ``root``) as submitit's runner runs it on a node, job environment ``local``; its result
    messages in epoch order."""
    import shutil

    shutil.copytree(PRE_HOUSE_JOBS, root)
    env = {**os.environ, "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": job}
    runner = [sys.executable, "-u", "-m", "submitit.core._submit", str(root / "slurm")]
    proc = subprocess.run(runner, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((PRE_HOUSE_JOBS / "config.json").read_text())
    folder = root / "sweep" / "ray" / "work" / f"{config['optuna_trial']:05d}" / "jobs" / job
    return [json.loads(p.read_text()) for p in sorted((folder / "results").glob("*.json"))]


@pytest.fixture(scope="session")
def pre_house_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The old pickled trial job run once on this machine: (its folder, its result messages)."""
    root = tmp_path_factory.mktemp("pre_house_job") / "jobs"
    return root, run_pre_house_job(root)


@pytest.fixture(scope="session")
def fixture_arithmetic(pre_house_job: tuple[Path, list[dict]]) -> str | None:
    """None if this machine computes the pre-house fixtures' numbers bit for bit; else why not.

    The fixtures hold numbers the old release computed on the machine that made them, and a test
    compares this release's numbers with them bit for bit. A CPU with other vector units sums in
    another order (seen on one with AVX-512 FP16: train_loss differs in the 8th digit from epoch 1,
    and per-class counts drift after that), whatever the code. The canary is the job's first epoch
    (tests/fixtures/pre_house/jobs/expected.json): this release interprets the pickle and trains as
    the old one did, so on the fixtures' arithmetic its first epoch is the recorded one exactly."""
    _, messages = pre_house_job
    expected = json.loads((PRE_HOUSE_JOBS / "expected.json").read_text())
    if messages and pre_house_comparable(messages[0]["result"]) == expected[0]:
        return None
    got = messages[0]["result"]["record"].get("train_loss") if messages else None
    return (
        "this CPU computes the fixtures' first epoch differently from the machine that made them "
        f"(train_loss {got!r} against {expected[0]['record'].get('train_loss')!r}): their numbers "
        "cannot match bit for bit here"
    )
