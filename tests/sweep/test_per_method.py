"""The comparison's sampler (hamsweep.sweep.per_method) on real Optuna studies: each method gets
the same number of trials, and a method's sampler learns from its own trials alone."""

from __future__ import annotations

from collections import Counter

import optuna
import pytest

from hamsweep.spec import SweepSpec, flat, validate
from hamsweep.sweep.per_method import METHOD_ATTR, PerMethodSampler
from hamsweep.sweep.search import Space, make_sampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC = {
    "train": {"epochs": 4, "attack_steps": 3},
    "ham": {"drop_step": 1, "warmup_epochs": 2},
    "search": {
        "sampler": "tpe",
        "seed": 3,
        "params": {"train.lr": {"choice": [0.05, 0.1], "default": 0.05}},
        "methods": {
            "ham": {
                "params": {
                    "ham.drop_step": {"int": [1, "train.attack_steps"], "default": 1},
                    "ham.discard_threshold": {"uniform": [0.0, 0.9], "default": 0.0},
                }
            },
            "cfa": {"params": {"cfa.lambda1": {"uniform": [0.1, 0.9], "default": 0.5}}},
            "trades": {},
        },
    },
}


def _value(params: dict) -> float:
    """A made-up objective with an optimum per method, deterministic in the params."""
    x = params.get("ham.discard_threshold", params.get("cfa.lambda1", 0.5))
    return 1 - (x - 0.3) ** 2 + (0.1 if params["train.lr"] == 0.1 else 0)


def _run(spec: SweepSpec, trials: int, defaults: list[dict]) -> list[dict]:
    per_method = {m: spec.search.method_params(m) for m in spec.search.methods}
    space = Space(spec.search.params, flat(spec.trial_config()), per_method)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec))
    for point in defaults:
        study.enqueue_trial(point)
    out = []
    for _ in range(trials):
        trial = study.ask()
        space(trial)
        study.tell(trial, _value(trial.params))
        out.append(dict(trial.params))
    return out


def test_each_method_gets_its_turn_and_searches_only_its_own_keys():
    spec = validate(SweepSpec, SPEC)
    got = _run(spec, 12, [spec.defaults(m) for m in spec.methods])
    assert Counter(p["train.method"] for p in got) == {"ham": 4, "cfa": 4, "trades": 4}
    assert got[:3] == [spec.defaults(m) for m in spec.methods]  # each paper's setting first
    for p in got:
        assert set(p) == {"train.method", *spec.search.method_params(p["train.method"])}


def _ham_alone(spec: SweepSpec, n: int) -> list[dict]:
    """HAM's first ``n`` proposals in a study of HAM alone (its params, the same seed)."""
    data = {**SPEC, "train": {**SPEC["train"], "method": "ham"}}
    own = SPEC["search"]["methods"]["ham"]["params"]
    data["search"] = {k: v for k, v in SPEC["search"].items() if k != "methods"}
    data["search"]["params"] = {**SPEC["search"]["params"], **own}
    alone = validate(SweepSpec, data)
    return _run(alone, n, [alone.defaults()])


def _ham_in(got: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in p.items() if k != "train.method"}
        for p in got
        if p["train.method"] == "ham"
    ]


def test_a_methods_sampler_proposes_what_it_would_with_that_method_alone(monkeypatch):
    """HAM's TPE in the comparison (seed + 0) against a study of HAM alone, same seed, same
    objective: the same proposals, so the other methods' trials taught it nothing. With the
    whole study in its view instead (one sampler state for all), it proposes otherwise."""
    spec = validate(SweepSpec, SPEC)
    ham = _ham_in(_run(spec, 24, [spec.defaults(m) for m in spec.methods]))
    assert len(ham) == 8 and ham == _ham_alone(spec, 8)
    monkeypatch.setattr(PerMethodSampler, "_view", staticmethod(lambda study, method: study))
    mixed = _ham_in(_run(spec, 24, [spec.defaults(m) for m in spec.methods]))
    assert mixed != ham


def test_a_proposal_a_killed_driver_left_behind_does_not_use_up_its_methods_turn():
    spec = validate(SweepSpec, SPEC)
    sampler = make_sampler(spec)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    orphan = study.ask()  # ham's turn: proposed, then the driver died before Tune's snapshot
    orphan.set_user_attr("tune_trial", "lost")  # handed to Tune, but not in the snapshot
    study.tell(orphan, state=optuna.trial.TrialState.FAIL)  # what fail_orphans does on resume
    ran = study.ask()  # a trial Tune ran, and that failed: that turn was spent
    ran.set_user_attr("tune_trial", "abc")
    ran.set_user_attr("status", "FAIL")  # as OptunaAdapter tells a trial that ended
    study.tell(ran, state=optuna.trial.TrialState.FAIL)
    study.ask(), study.ask()
    methods = [t.system_attrs[METHOD_ATTR] for t in study.get_trials()]
    assert methods == ["ham", "ham", "cfa", "trades"]


@pytest.mark.parametrize("sampler", ["random", "cmaes", "gp", "nsga2"])
def test_every_sampler_kind_runs_per_method(sampler):
    spec = validate(SweepSpec, {**SPEC, "search": {**SPEC["search"], "sampler": sampler}})
    got = _run(spec, 9, [])
    assert Counter(p["train.method"] for p in got) == {"ham": 3, "cfa": 3, "trades": 3}


def _rung_decisions(per_method: bool) -> list[str]:
    """ASHA's word at the first rung for two HAM trials (0.9, 0.8) and then a TRADES one (0.1)."""
    from ray.tune.experiment import Trial

    from hamsweep.sweep.schedulers import Asha

    asha = Asha(
        per_method=per_method,
        time_attr="epoch",
        metric="objective",
        mode="max",
        max_t=4,
        grace_period=1,
        reduction_factor=2,
    )
    out = []
    for trial_id, method, value in (("a1", "ham", 0.9), ("a2", "ham", 0.8), ("b1", "trades", 0.1)):
        trial = Trial("trainable", config={"train.method": method}, trial_id=trial_id, stub=True)
        asha.on_trial_add(None, trial)
        out.append(asha.on_trial_result(None, trial, {"epoch": 1, "objective": value}))
    return out


def test_asha_compares_a_trial_with_its_own_methods_trials_only():
    # one set of rungs for all: the TRADES trial is cut for being below HAM's
    assert _rung_decisions(per_method=False) == ["CONTINUE", "STOP", "STOP"]
    # a comparison's rungs per method: the first TRADES trial is alone at its rung
    assert _rung_decisions(per_method=True) == ["CONTINUE", "STOP", "CONTINUE"]


def test_asha_rungs_end_at_each_methods_own_last_epoch():
    """A method on a schedule of its own (``search.methods.M.set``) has rungs up to its own
    epochs: CFA's 16-epoch trials meet rungs at 1, 2, 4, 8, 16 and stop at 16, TRADES's at 4 (a
    WAT trial counted complete at its own last epoch: ``test_methods``)."""
    from ray.tune.experiment import Trial

    from hamsweep.sweep.schedulers import make_scheduler

    methods = {"cfa": {"set": {"train.epochs": 16}}, "trades": {}}
    spec = validate(
        SweepSpec,
        {
            **SPEC,
            "train": {**SPEC["train"], "epochs": 4},
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
            "search": {**SPEC["search"], "methods": methods},
        },
    )
    asha = make_scheduler(spec)
    rungs = {m: [r for r, _ in asha._new_bracket(m)._rungs] for m in methods}
    assert rungs == {"cfa": [16, 8, 4, 2, 1], "trades": [4, 2, 1]}
    words = {}
    for method in methods:
        trial = Trial("trainable", config={"train.method": method}, trial_id=method, stub=True)
        asha.on_trial_add(None, trial)
        for epoch in range(1, 17):
            word = asha.on_trial_result(None, trial, {"epoch": epoch, "objective": 0.5})
            if word == "STOP":
                break
        words[method] = epoch
    assert words == {"cfa": 16, "trades": 4}
