"""The chaos test (issue 13, part 1): a tiny sweep with a shared trunk and a confirm stage meets a
dozen faults at seeded random moments (``tests/chaos.py``); once it has finished, every invariant
holds. A failing schedule prints its seed: replay it with HAMSWEEP_CHAOS_SEED=<seed>."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from chaos import invariants, run_with_faults
from conftest import HAMSWEEP, write_spec

pytestmark = pytest.mark.timeout(1500)

FAULTS = 12
SAMPLES = 8


def test_a_sweep_survives_a_dozen_faults_with_nothing_lost(tmp_path):
    seed = int(os.environ.get("HAMSWEEP_CHAOS_SEED", "20261202"))
    params = {
        "ham.discard_threshold": {"uniform": [0.0, 0.9], "default": 0.0},
        "ham.warmup_epochs": {"int": [1, 3], "default": 2},
        "ham.temperature": {"choice": [None, 1.0], "default": None},
    }
    # 8192 images: on an idle machine a 2048-image sweep ended in 26 s, and a 4096-image one after
    # 5 faults (its Ray's restarts take most of each start; the sweep must outlast a dozen)
    spec = write_spec(
        tmp_path / "chaos.yaml",
        data={"train_size": 8192},
        train={"epochs": 8},
        search={"num_samples": SAMPLES, "max_concurrent": 2, "params": params},
        confirm={"top_k": 1, "seeds": 1},
    )
    run = run_with_faults(str(HAMSWEEP), spec, tmp_path / "out", FAULTS, seed)
    replay = f"seed {seed} (replay with HAMSWEEP_CHAOS_SEED={seed}); faults {run.injected}"
    assert len(run.injected) == FAULTS, f"only {len(run.injected)} faults found a target: {replay}"
    assert run.finished, f"the sweep did not finish after {run.starts} starts: {replay}"
    problems = invariants(tmp_path / "out", SAMPLES)
    assert not problems, f"{replay}: " + "; ".join(problems)
    print(
        f"chaos: {len(run.injected)} faults injected and survived in {run.starts} starts, "
        f"{run.seconds:.0f} s; rows lost: 0; {replay}"
    )


def test_two_sweeps_at_once_on_one_machine_do_not_interfere(tmp_path):
    import subprocess

    import pyarrow.parquet as pq

    from hamsweep.sweep.driver import TOKEN, _ray_temp_dir

    specs = [
        write_spec(
            tmp_path / f"s{i}.yaml",
            name=f"twin{i}",
            search={"num_samples": 3, "max_concurrent": 1, "seed": i},
            confirm={"top_k": 0},
        )
        for i in range(2)
    ]
    outs = [tmp_path / f"out{i}" for i in range(2)]
    temps = [_ray_temp_dir(o) for o in outs]
    errs = [(tmp_path / f"err{i}").open("w") for i in range(2)]  # a file: a pipe could fill up
    drivers = [
        subprocess.Popen(
            [str(HAMSWEEP), "run", str(s), "--out", str(o)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
        for s, o, err in zip(specs, outs, errs)
    ]
    # watch both while they run: each one's Ray sessions, and the auth its Ray's processes run with
    sessions: list[set[str]] = [set(), set()]
    auth: list[set[tuple[str, str]]] = [set(), set()]
    overlapped, deadline = False, time.monotonic() + 900
    while any(d.poll() is None for d in drivers) and time.monotonic() < deadline:
        now = [{p.name for p in t.glob("session_[0-9]*")} for t in temps]
        overlapped |= all(now)
        for i, t in enumerate(temps):
            sessions[i] |= now[i]
            auth[i] |= _ray_auth(t)
        time.sleep(0.5)
    for d, err in zip(drivers, errs):
        d.wait(timeout=60)
        err.close()
        assert d.returncode == 0, Path(err.name).read_text()[-3000:]
    assert overlapped, "the two sweeps' Rays never ran at the same time: nothing was tested"
    # each driver started a Ray of its own, in its own session folder: neither joined the other's
    assert sessions[0] and sessions[1] and not sessions[0] & sessions[1], sessions
    for out, seen in zip(outs, auth):
        # every process of a sweep's Ray checks tokens against that sweep's own token file, so
        # neither driver can reach the other's Ray (nor another user's process either)
        assert seen == {("token", str((out / TOKEN).resolve()))}, seen
    assert not any(t.exists() for t in temps)  # each driver removed its Ray's session folder
    for o in outs:
        trials = pq.read_table(o / "trials").to_pylist()
        assert len([t for t in trials if t["role"] == "search"]) == 3 and all(
            t["status"] in ("completed", "stopped") for t in trials
        )


def _ray_auth(temp: Path) -> set[tuple[str, str]]:
    """(RAY_AUTH_MODE, resolved RAY_AUTH_TOKEN_PATH) of every running process whose command line
    names ``temp``: the GCS, raylet and helper processes of the Ray whose temp folder it is."""
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(temp) not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            environ = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # it ended meanwhile, or is not ours
            continue
        env = dict(kv.split("=", 1) for kv in environ if "=" in kv)
        token = env.get("RAY_AUTH_TOKEN_PATH", "")
        found.add((env.get("RAY_AUTH_MODE", ""), str(Path(token).resolve()) if token else ""))
    return found
