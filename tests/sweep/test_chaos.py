"""The chaos test (issue 13, part 1): a tiny sweep with a shared trunk and a confirm stage meets a
dozen faults at seeded random moments (``tests/chaos.py``); once it has finished, every invariant
holds. A failing schedule prints its seed: replay it with HAMSWEEP_CHAOS_SEED=<seed>."""

from __future__ import annotations

import os

import pytest
from chaos import invariants, run_with_faults
from conftest import HAMSWEEP, write_spec

pytestmark = pytest.mark.timeout(1500)

FAULTS = 12
SAMPLES = 8


def test_a_sweep_survives_a_dozen_faults_with_nothing_lost(tmp_path):
    seed = int(os.environ.get("HAMSWEEP_CHAOS_SEED", "20261202"))
    params = {"ham.discard_threshold": {"uniform": [0.0, 0.9], "default": 0.0}, "ham.warmup_epochs": {"int": [1, 3], "default": 2},
              "ham.temperature": {"choice": [None, 1.0], "default": None}}
    # 4096 images: on an idle machine a 2048-image sweep ended in 26 s, before its 12 faults had all landed
    spec = write_spec(tmp_path / "chaos.yaml", data={"train_size": 4096}, train={"epochs": 8},
                      search={"num_samples": SAMPLES, "max_concurrent": 2, "params": params}, confirm={"top_k": 1, "seeds": 1})
    run = run_with_faults(str(HAMSWEEP), spec, tmp_path / "out", FAULTS, seed)
    replay = f"seed {seed} (replay with HAMSWEEP_CHAOS_SEED={seed}); faults {run.injected}"
    assert len(run.injected) == FAULTS, f"only {len(run.injected)} faults found a target: {replay}"
    assert run.finished, f"the sweep did not finish after {run.starts} starts: {replay}"
    problems = invariants(tmp_path / "out", SAMPLES)
    assert not problems, f"{replay}: " + "; ".join(problems)
    print(f"chaos: {len(run.injected)} faults injected and survived in {run.starts} starts, {run.seconds:.0f} s; rows lost: 0; {replay}")


def test_two_sweeps_at_once_on_one_machine_do_not_interfere(tmp_path):
    import subprocess

    import pyarrow.parquet as pq

    from hamsweep.sweep import TOKEN, _ray_temp_dir

    specs = [write_spec(tmp_path / f"s{i}.yaml", name=f"twin{i}", search={"num_samples": 3, "max_concurrent": 1, "seed": i},
                        confirm={"top_k": 0}) for i in range(2)]
    outs = [tmp_path / f"out{i}" for i in range(2)]
    drivers = [subprocess.Popen([str(HAMSWEEP), "run", str(s), "--out", str(o)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True) for s, o in zip(specs, outs)]
    for d in drivers:
        _, err = d.communicate(timeout=900)
        assert d.returncode == 0, err[-3000:]
    assert _ray_temp_dir(outs[0]) != _ray_temp_dir(outs[1])  # separate Ray sessions, sockets and ports
    assert (outs[0] / TOKEN).read_text() != (outs[1] / TOKEN).read_text()  # and tokens: neither can reach the other's Ray
    for o in outs:
        trials = pq.read_table(o / "trials").to_pylist()
        assert len([t for t in trials if t["role"] == "search"]) == 3 and all(t["status"] in ("completed", "stopped") for t in trials)
