"""Faults at random moments in a running sweep, and the invariants checked after it (issue 13,
part 1).

Used by ``tests/sweep/test_chaos.py`` (a dozen faults) and ``bench/chaos.py`` (as many as asked). A
seeded schedule (``random.Random(seed)``) picks each fault and its moment; a fault waits a little
for its target (a training worker, the sweep's Ray, a waiting proposal), and gives way to one whose
target is there if it does not come:

- ``driver-kill``: SIGKILL of the driver (then ``hamsweep resume``);
- ``driver-term``, ``driver-usr2``: SIGTERM or SIGUSR2 of the driver, as SLURM sends them before a
  time limit or a preemption (then ``hamsweep resume``);
- ``worker-kill``: SIGKILL of a running trial's worker process (Tune restarts the trial from its
  checkpoint; the driver goes on);
- ``raylet-kill``, ``gcs-kill``: SIGKILL of the raylet or the GCS of the sweep's own Ray (then
  ``hamsweep resume`` once the driver has given up);
- ``fork-wait``: a SIGKILL of the driver at a moment when a proposal waits for its trunk's epoch.

After every fault that ends the driver, whatever is left of the sweep's processes (its process
group) is killed before the next ``resume``. The invariants are read straight from the files:
DuckDB over the Parquet parts, the Optuna journal through optuna, the checkpoints through torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

FAULTS = (
    "driver-kill",
    "driver-term",
    "driver-usr2",
    "worker-kill",
    "raylet-kill",
    "gcs-kill",
    "fork-wait",
)
TARGET_WAIT_S = 10.0  # how long a picked fault waits for its target before another is picked
_ENDS_DRIVER = {"driver-kill", "driver-term", "driver-usr2", "raylet-kill", "gcs-kill", "fork-wait"}


@dataclass
class ChaosRun:
    seed: int
    injected: list[str] = field(default_factory=list)  # the faults, in order
    starts: int = 0  # hamsweep run, then each resume
    finished: bool = False
    seconds: float = 0.0


def _group(pgid: int, needle: str) -> list[int]:
    """Processes of process group ``pgid`` whose command line contains ``needle``."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, group, args = line.split(None, 2) if len(line.split(None, 2)) == 3 else (line, "", "")
        if group.isdigit() and int(group) == pgid and needle in args:
            pids.append(int(pid))
    return pids


def _workers(out: Path) -> list[int]:
    """Pids of trial workers that train right now (their worker.pid file, the process alive)."""
    pids = []
    for f in (out / "ray" / "work").glob("*/worker.pid"):
        try:
            pid = int(f.read_text())
            os.kill(pid, 0)
            pids.append(pid)
        except (OSError, ValueError):
            continue
    return pids


def _waiting(out: Path) -> bool:
    """The dashboard's state file shows a proposal waiting for a trunk epoch."""
    try:
        return bool(json.loads((out / "state.json").read_text()).get("waiting"))
    except (OSError, ValueError):
        return False


def _targets(kind: str, driver: subprocess.Popen, out: Path) -> list[int]:
    """The pids fault ``kind`` would hit at this moment (empty: its target is not there)."""
    if kind in ("driver-kill", "driver-term", "driver-usr2"):
        return [driver.pid]
    if kind == "fork-wait":
        return [driver.pid] if _waiting(out) else []
    if kind == "worker-kill":
        return _workers(out)
    return _group(driver.pid, "raylet" if kind == "raylet-kill" else "gcs_server")


_SIGNALS = {"driver-term": signal.SIGTERM, "driver-usr2": signal.SIGUSR2}


def _inject(kind: str, driver: subprocess.Popen, out: Path) -> bool:
    """Apply one fault; False when its target is not there at this moment (nothing was done)."""
    pids = _targets(kind, driver, out)
    if not pids:
        return False
    try:
        os.kill(pids[0], _SIGNALS.get(kind, signal.SIGKILL))
    except ProcessLookupError:  # it ended between the look and the signal
        return False
    return True


def _end(driver: subprocess.Popen, timeout: float) -> None:
    """Wait for the driver to end (killing it past ``timeout``), then kill what is left of its
    group."""
    try:
        driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)
    time.sleep(0.5)


def run_with_faults(
    hamsweep: str,
    spec: Path,
    out: Path,
    faults: int,
    seed: int,
    *,
    max_starts: int = 60,
    env: dict[str, str] | None = None,
) -> ChaosRun:
    """Run the sweep of ``spec`` into ``out`` and inject ``faults`` faults on the seeded schedule,
    then let it finish (resuming as often as needed)."""
    rng, run = random.Random(seed), ChaosRun(seed)
    start = time.monotonic()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **(env or {})}
    while not run.finished and run.starts < max_starts:
        if (out / "spec.yaml").is_file():
            cmd = [hamsweep, "resume", str(out)]
        else:  # killed before it wrote its folder: start it again
            shutil.rmtree(out, ignore_errors=True)
            cmd = [hamsweep, "run", str(spec), "--out", str(out)]
        driver = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        run.starts += 1
        ended_by_fault = False
        while driver.poll() is None and len(run.injected) < faults:
            # the moment: anywhere in Ray's start, a trial, the confirm stage, compaction
            time.sleep(rng.uniform(2.0, 9.0))
            if driver.poll() is not None:
                break
            # the fault waits (up to TARGET_WAIT_S) for its target to be there: a worker to
            # train, Ray to be up, a proposal to wait; one that is not there by then gives way to
            # one whose target is. A pick that did not land used to spend a whole interval, and a
            # sweep on a fast machine could end before the dozen had landed
            kind = rng.choice(FAULTS)
            deadline = time.monotonic() + TARGET_WAIT_S
            while not _targets(kind, driver, out) and time.monotonic() < deadline:
                if driver.poll() is not None:
                    break
                time.sleep(0.2)
            if driver.poll() is not None:
                break
            if not _targets(kind, driver, out):
                kind = rng.choice([k for k in FAULTS if _targets(k, driver, out)])
            if _inject(kind, driver, out):
                run.injected.append(kind)
                if kind in _ENDS_DRIVER:
                    ended_by_fault = True
                    break
        _end(driver, timeout=600 if len(run.injected) >= faults else 120)
        run.finished = driver.returncode == 0
        if run.finished and ended_by_fault:
            # the driver had finished as the signal went out (it exited 0): that fault did not land
            run.injected.pop()
    run.seconds = time.monotonic() - start
    return run


# ---- the invariants, from the files ----
def invariants(out: Path, num_samples: int) -> list[str]:
    """What is wrong with a finished sweep folder (empty: nothing)."""
    import duckdb
    import torch

    from hamsweep.results.study import open_baseline_study, open_study

    con = duckdb.connect()
    for table in ("trials", "epochs"):
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM "
            f"read_parquet('{out / table}/part-*.parquet', union_by_name = true)"
        )
    problems = []
    search = con.execute(
        "SELECT count(*), count(DISTINCT trial) FROM trials "
        "WHERE stage = 'search' AND role = 'search'"
    ).fetchone()
    if search != (num_samples, num_samples):
        problems.append(
            f"search trials (rows, distinct): {search}, expected {num_samples} once each"
        )
    trunks = con.execute(
        "SELECT trunk_key, count(*) FROM trials WHERE role = 'trunk' "
        "GROUP BY ALL HAVING count(*) > 1"
    ).fetchall()
    if trunks:
        problems.append(f"trunk rows more than once: {trunks}")
    gaps = con.execute(
        "SELECT e.trial, count(*), count(DISTINCT e.epoch), min(e.epoch), max(e.epoch), "
        "t.epochs_run, t.forked_at "
        "FROM epochs e JOIN trials t USING (trial) GROUP BY ALL "
        "HAVING count(*) <> count(DISTINCT e.epoch) "
        "OR max(e.epoch) - min(e.epoch) + 1 <> count(*) "
        "OR max(e.epoch) <> t.epochs_run "
        "OR min(e.epoch) <> coalesce(t.forked_at, 0) + 1"
    ).fetchall()
    if gaps:
        problems.append(f"epochs not contiguous from the first to epochs_run, or repeated: {gaps}")
    # the search's study, not its baseline study
    states = {t.number: t.state.name for t in open_study(out).trials}
    baseline = open_baseline_study(out)
    told = [t.user_attrs.get("tune_trial") for t in baseline.trials] if baseline is not None else []
    if len(told) != len(set(told)):
        problems.append(f"a trunk is in the baseline study more than once: {told}")
    want = {"completed": "COMPLETE", "stopped": "PRUNED", "failed": "FAIL"}
    for number, status in con.execute(
        "SELECT number, status FROM trials WHERE stage = 'search' AND role = 'search'"
    ).fetchall():
        if states.get(number) != want.get(status):
            problems.append(
                f"Optuna trial {number} is {states.get(number)} but trials says {status}"
            )
    for trial, checkpoint in con.execute(
        "SELECT trial, checkpoint FROM trials WHERE checkpoint IS NOT NULL"
    ).fetchall():
        try:
            torch.load(out / checkpoint / "last.pt", map_location="cpu", weights_only=False)
        except Exception as err:
            problems.append(
                f"trial {trial}: its checkpoint {checkpoint} does not load "
                f"({type(err).__name__}: {err})"
            )
    return problems
