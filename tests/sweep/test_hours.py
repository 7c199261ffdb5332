"""Predicted device-hours (``hamsweep validate --time``, ``hamsweep.sweep.hours``): the
arithmetic from given epoch times, recomputed here by hand, and the real measurement on this
machine's CPU."""

from __future__ import annotations

import pytest
from conftest import hamsweep, write_spec

from hamsweep.core.timing import EpochTime
from hamsweep.spec import SweepSpec, load_spec, validate
from hamsweep.sweep.hours import measure, predict

EPOCHS, WARMUP, SAMPLES = 8, 6, 4


def _spec(**search) -> SweepSpec:
    methods = {
        "trades": {},
        "faal": {"params": {"faal.eta": {"uniform": [0.1, 1], "default": 0.5}}},
    }
    return validate(
        SweepSpec,
        {
            "name": "h",
            "train": {"epochs": EPOCHS},
            "faal": {"warmup_epochs": WARMUP},
            "ham": {"warmup_epochs": 2},
            "eval": {"every_epochs": 2},
            "scheduler": "none",
            "resources": {"cpu": 2, "gpu": 0},
            "confirm": {"top_k": 1, "seeds": 3},
            "search": {"num_samples": SAMPLES, "methods": methods, **search},
        },
    )


TIMES = {  # seconds: a training epoch, one evaluation of the validation split
    "trades": EpochTime(train=30.0, evaluation=6.0, device="cpu", batches=5),
    "faal": EpochTime(train=20.0, evaluation=6.0, device="cpu", batches=5),
    "pgd_at": EpochTime(train=18.0, evaluation=6.0, device="cpu", batches=5),
}


def test_equal_trials_cost_each_methods_epochs_at_its_measured_pace():
    h = predict(_spec(), TIMES)
    epoch = {m: t.train + t.evaluation / 2 for m, t in TIMES.items()}  # evaluated every 2nd epoch
    cores = 2 / 3600  # CPU-seconds -> CPU-hours
    assert h.trials == {"trades": SAMPLES, "faal": SAMPLES}
    assert h.search["trades"] == pytest.approx(SAMPLES * EPOCHS * epoch["trades"] * cores)
    assert h.search["faal"] == pytest.approx(SAMPLES * (EPOCHS - WARMUP) * epoch["faal"] * cores)
    assert h.trunks == pytest.approx(EPOCHS * epoch["pgd_at"] * cores)  # one shared trunk
    # PGD-AT, each method's best and TRADES at its defaults (confirm.trades), all of a seed
    per_seed = EPOCHS * epoch["pgd_at"] + 2 * EPOCHS * epoch["trades"] + 2 * epoch["faal"]
    assert h.confirm == pytest.approx(3 * per_seed * cores)
    assert h.total == pytest.approx(sum(h.search.values()) + h.trunks + h.confirm)


def test_equal_hours_give_the_cheaper_method_more_trials_up_to_num_samples():
    cores = 2 / 3600
    trades_trial = EPOCHS * (30.0 + 3.0) * cores
    faal_trial, warmup = 2 * (20.0 + 3.0) * cores, WARMUP * (18.0 + 3.0) * cores
    budget = 2.5 * trades_trial
    h = predict(_spec(method_hours=budget, num_samples=20), TIMES)
    assert h.trials["trades"] == pytest.approx(2.5)
    assert h.trials["faal"] == pytest.approx((budget - warmup) / faal_trial)  # its warm-up once
    assert h.search["faal"] == pytest.approx(budget) == h.search["trades"]
    capped = predict(_spec(method_hours=budget, num_samples=3), TIMES)  # FAAL's 3: under budget
    assert capped.trials == {"trades": 2.5, "faal": 3.0}
    assert capped.search["faal"] == pytest.approx(warmup + 3 * faal_trial)


def test_measure_times_every_method_and_the_trunks_pgd_at_here(tmp_path):
    spec = load_spec(
        write_spec(
            tmp_path / "s.yaml",
            train={"method": "trades", "epochs": 4},
            search={"params": {}, "methods": {"trades": {}, "faal": {}}, "num_samples": 2},
        )
    )
    times = measure(spec, batches=2)
    assert list(times) == ["faal", "trades", "pgd_at"]
    for t in times.values():
        assert t.device == "cpu" and t.batches == 2 and t.train > 0 and t.evaluation > 0


def test_validate_time_prints_the_prediction_and_refuses_a_gpu_spec_without_a_gpu(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", search={"num_samples": 2})
    proc = hamsweep("validate", str(spec), "--time")
    assert proc.returncode == 0, proc.stderr
    assert "timed here on cpu" in proc.stdout and "predicted CPU-hours: search ham " in proc.stdout
    gpu = write_spec(tmp_path / "g.yaml", resources={"cpu": 1, "gpu": 1})
    proc = hamsweep("validate", str(gpu), "--time")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "resources.gpu: the spec's trials hold 1 GPU each but this machine has no CUDA" in (
        proc.stderr + proc.stdout
    )


def test_validate_time_warns_when_the_hours_fit_less_than_one_trial_of_a_method(tmp_path):
    spec = write_spec(
        tmp_path / "s.yaml",
        train={"method": "trades", "epochs": 4},
        search={
            "params": {},
            "methods": {"trades": {}, "faal": {}},
            "num_samples": 2,
            "method_hours": 1e-7,  # a third of a millisecond
        },
    )
    proc = hamsweep("validate", str(spec), "--time")
    assert proc.returncode == 0, proc.stderr
    assert (
        "warning: search.method_hours (1e-07) is predicted to fit less than one trial of "
        "faal, trades: the budget would stop it before its last epoch"
    ) in proc.stdout, proc.stdout
