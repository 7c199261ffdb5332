"""The search adapter without a Ray cluster: the define-by-run space, samplers, the journal study,
the Optuna adapter's truthful, restart-safe bookkeeping, and the Searcher Tune sees (the adapter
composed with the stage scheduler, tested alone in test_stages.py), restored from a folder written
before the two were split."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import REPO

from hamsweep.errors import SpecError
from hamsweep.results.schema import OBJECTIVE_COLUMNS
from hamsweep.spec import OBJECTIVES, SweepSpec, load_spec, validate
from hamsweep.spec.trial import objective_summary
from hamsweep.sweep.schedulers import make_scheduler
from hamsweep.sweep.search import (
    BEST,
    JOURNAL,
    OBJECTIVE,
    OptunaAdapter,
    Searcher,
    Space,
    journal_storage,
    make_sampler,
    make_searcher,
    open_study,
    resuming,
)
from hamsweep.sweep.stages import Stages
from hamsweep.sweep.trunk import plan

OLD = Path(__file__).parent / "fixtures" / "old_searcher"  # made by the release before the split

PARAMS = {
    "train.attack_steps": {"int": [2, 10], "default": 10},
    "ham.drop_step": {"int": [1, "train.attack_steps"], "default": 3},
    "ham.temperature": {"choice": [None, 1.0], "default": None},
    "train.lr": {"loguniform": [0.01, 0.1], "default": 0.05},
}


def spec(**sections) -> SweepSpec:
    base = {
        "name": "s",
        "train": {"epochs": 6},
        "ham": {"warmup_epochs": 1},
        "search": {"params": PARAMS},
    }
    return validate(SweepSpec, {**base, **sections})


def test_every_objective_is_a_column_of_the_epochs_table():
    assert {f"robust_{objective_summary(o)}" for o in OBJECTIVES} <= set(OBJECTIVE_COLUMNS)


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp", "nsga2"])
def test_every_sampler_keeps_m_at_most_k(tmp_path, sampler):
    s = make_searcher(
        spec(search={"params": PARAMS, "sampler": sampler, "num_samples": 30}), tmp_path
    )
    configs = [s.suggest(f"t{i}") for i in range(30)]
    assert all(1 <= c["ham.drop_step"] <= c["train.attack_steps"] <= 10 for c in configs)
    assert all(
        0.01 <= c["train.lr"] <= 0.1 and c["ham.temperature"] in (None, 1.0) for c in configs
    )
    assert [c["optuna_trial"] for c in configs] == list(range(30))


def test_first_trial_is_the_spec_defaults_then_seeded(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = make_searcher(spec(), tmp_path / "a")
    first = a.suggest("t0")
    assert {k: first[k] for k in PARAMS} == {
        "train.attack_steps": 10,
        "ham.drop_step": 3,
        "ham.temperature": None,
        "train.lr": 0.05,
    }
    b = make_searcher(spec(), tmp_path / "b")
    b.suggest("t0")
    assert a.suggest("t1") == b.suggest("t1")  # seeded: the same proposals again


def test_tpe_is_multivariate_with_constant_liar():
    sampler = make_sampler(spec())
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._multivariate and sampler._constant_liar  # Optuna keeps no public getters


def test_searcher_tells_optuna_complete_pruned_and_fail(tmp_path):
    s = make_searcher(spec(), tmp_path)
    for i in range(4):
        s.suggest(f"t{i}")
    for epoch in (1, 2):
        s.on_trial_result("t0", {OBJECTIVE: 0.1 * epoch, BEST: 0.1 * epoch, "epoch": epoch})
    s.on_trial_complete("t0", {OBJECTIVE: 0.3, BEST: 0.35, "epoch": 6})  # ran all 6 epochs
    s.on_trial_complete("t1", {OBJECTIVE: 0.2, BEST: 0.2, "epoch": 2})  # ASHA stopped it at epoch 2
    s.on_trial_complete("t2", {OBJECTIVE: 0.0, BEST: 0.0, "epoch": 1, "failed": "diverged: nan"})
    s.on_trial_complete("t3", None, error=True)
    study = open_study(tmp_path)
    t0, t1, t2, t3 = study.trials
    assert (t0.state.name, t0.value, t0.intermediate_values) == (
        "COMPLETE",
        0.35,
        {1: 0.1, 2: 0.2, 6: 0.3},
    )
    # not taken for a final value
    assert (t1.state.name, t1.intermediate_values) == ("PRUNED", {2: 0.2})
    assert t2.state.name == t3.state.name == "FAIL"


def test_updates_to_finished_trials_are_ignored_and_orphans_fail_on_restore(tmp_path):
    s = make_searcher(spec(), tmp_path)
    s.suggest("t0")
    s.save(str(tmp_path / "snapshot.pkl"))  # Tune's snapshot knows t0 only
    s.suggest("t1")  # proposed after the snapshot: the driver is killed before the next one
    s.on_trial_complete("t0", {OBJECTIVE: 0.3, BEST: 0.3, "epoch": 6})
    restored = make_searcher(spec(), tmp_path)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    # Tune re-runs t0 (finished in the journal, running in the snapshot): no error, no change
    restored.on_trial_result("t0", {OBJECTIVE: 0.9, BEST: 0.9, "epoch": 1})
    restored.on_trial_complete("t0", {OBJECTIVE: 0.9, BEST: 0.9, "epoch": 6})
    states = [(t.number, t.state.name, t.value) for t in open_study(tmp_path).trials]
    assert states == [(0, "COMPLETE", 0.3), (1, "FAIL", None)]


def test_a_copied_sweep_folder_resumes_its_own_journal_not_the_original(tmp_path):
    """The snapshot pickles absolute paths (the journal's file, the folder of the trunks): a copy
    resumed with the original still there must read and write its own study, never the other."""
    first, copy = tmp_path / "first", tmp_path / "copy"
    (first / "ray").mkdir(parents=True)
    s = make_searcher(spec(), first)
    s.suggest("t0")
    s.suggest("t1")
    s.save_to_dir(str(first / "ray"), session_str="2026")  # as Tune snapshots it
    shutil.copytree(first, copy)
    before = (first / JOURNAL).read_bytes()
    (snapshot,) = (copy / "ray").glob("searcher-state-*.pkl")
    with resuming(copy):
        restored = pickle.loads(pickle.dumps(s))  # as the pickled Tuner holds it, then Tune's
        assert restored.stages.folder == copy
        restored.restore(str(snapshot))  # restore, from a staging copy of the snapshot
    assert restored.stages.folder == copy
    restored.on_trial_complete("t0", {OBJECTIVE: 0.5, BEST: 0.5, "epoch": 6})
    restored.suggest("t2")
    assert (first / JOURNAL).read_bytes() == before  # the original sweep is not touched
    trials = open_study(copy).trials
    assert [(t.state.name, t.value) for t in trials] == [
        ("COMPLETE", 0.5),
        ("RUNNING", None),
        ("RUNNING", None),
    ]


def test_a_journal_with_another_direction_is_refused(tmp_path):
    optuna.create_study(
        study_name="s", storage=journal_storage(tmp_path / JOURNAL), direction="minimize"
    )
    with pytest.raises(SpecError, match="directions"):
        make_searcher(spec(), tmp_path)


def test_the_searcher_survives_pickling_with_its_journal(tmp_path):
    s = make_searcher(spec(), tmp_path)
    s.suggest("t0")
    copy = pickle.loads(pickle.dumps(s))
    copy.on_trial_complete("t0", {OBJECTIVE: 0.5, BEST: 0.5, "epoch": 6})
    assert open_study(tmp_path).trials[0].value == 0.5


def test_multi_objective_sweeps_tell_every_objective_at_the_best_epoch(tmp_path):
    s = make_searcher(
        spec(
            objective={"metric": ["worst_robust", "mean_robust"]},
            search={"params": PARAMS, "sampler": "nsga2"},
        ),
        tmp_path,
    )
    s.suggest("t0")
    s.on_trial_complete(
        "t0",
        {OBJECTIVE: 0.1, BEST: 0.2, "best_worst_robust": 0.2, "best_mean_robust": 0.5, "epoch": 6},
    )
    assert open_study(tmp_path).trials[0].values == [0.2, 0.5]


def test_asha_on_the_epoch_counter_or_none():
    asha = make_scheduler(spec(scheduler={"grace_period": 2, "reduction_factor": 3}))
    assert (asha._time_attr, asha._metric, asha._max_t) == ("epoch", OBJECTIVE, 6)
    assert make_scheduler(spec(scheduler="none")) is None


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"objective": {"metric": "accuracy"}}, "objective.metric"),
        (
            {
                "objective": {"metric": ["worst_robust", "mean_robust"]},
                "search": {"sampler": "cmaes"},
            },
            "search.sampler",
        ),
        ({"objective": {"mode": "min"}}, "objective.mode"),
        ({"scheduler": "hyperband"}, "scheduler.name"),
        ({"scheduler": {"grace_period": 9}}, "scheduler.grace_period"),
        ({"scheduler": {"max_epochs": 9}}, "scheduler.max_epochs"),
        ({"scheduler": {"reduction_factor": 1}}, "scheduler.reduction_factor"),
        ({"resources": {"gpu": 1.5}}, "resources.gpu"),
        ({"resources": {"cpu": 0}}, "resources.cpu"),
        ({"budget": {"gpu_hours": 0}}, "budget.gpu_hours"),
        ({"confirm": {"top_k": -1}}, "confirm.top_k"),
        ({"confirm": {"seeds": -1}}, "confirm.seeds"),
        ({"confirm": {"confidence": 95}}, "confirm.confidence"),
        ({"eval": {"select_by": "mean_robust"}}, "eval.select_by"),
        ({"search": {"params": PARAMS, "max_concurrent": 0}}, "search.max_concurrent"),
    ],
)
def test_sweep_sections_fail_with_the_key(sections, key):
    with pytest.raises(SpecError) as err:
        spec(**sections)
    assert str(err.value).startswith(key), str(err.value)


def test_checkpoints_are_selected_by_the_objective():
    assert spec(objective={"metric": "cvar_robust"}).trial_config().eval.select_by == "cvar_robust"
    assert spec().trial_config().eval.select_by == "worst_robust"


@pytest.mark.parametrize("name", ["smoke", "cifar10", "cifar100", "svhn", "imagenette"])
def test_shipped_specs_are_valid_sweeps(name):
    s = load_spec(REPO / "search_spaces" / f"{name}.yaml")
    searched = set(s.search.params)
    assert {
        "ham.discard_threshold",
        "ham.keep_easy_fraction",
        "ham.temperature",
        "ham.drop_step",
        "ham.warmup_epochs",
    } <= searched
    # K and lr fixed: every trial shares one warm-up
    assert not searched & {"train.attack_steps", "train.lr"}
    assert len(plan(s).trunks) == 1
    assert None in s.search.params["ham.temperature"].choices  # uniform weights is a choice
    assert s.scheduler.name == "asha"
    assert s.objective.primary == ("cvar_robust" if name == "smoke" else "worst_robust")


def test_a_searcher_started_over_an_existing_journal_fails_its_running_trials(tmp_path):
    # the driver was killed before Tune's first snapshot: a resume starts a new Tuner on the journal
    make_searcher(spec(), tmp_path).suggest("t0")
    again = make_searcher(spec(), tmp_path)
    assert [t.state.name for t in open_study(tmp_path).trials] == ["FAIL"]
    proposal = again.suggest("t0")
    assert (
        proposal["optuna_trial"] == 1
        and proposal["train.attack_steps"] >= proposal["ham.drop_step"]
    )


def test_cmaes_runs_past_its_random_start(tmp_path):
    params = {k: v for k, v in PARAMS.items() if k != "ham.temperature"}  # CMA-ES: numbers only
    s = make_searcher(
        spec(
            search={
                "params": params,
                "sampler": "cmaes",
                "start_with_defaults": False,
                "num_samples": 25,
            }
        ),
        tmp_path,
    )
    for i in range(25):
        c = s.suggest(f"t{i}")
        assert 1 <= c["ham.drop_step"] <= c["train.attack_steps"]
        s.on_trial_complete(f"t{i}", {OBJECTIVE: c["train.lr"], BEST: c["train.lr"], "epoch": 6})
    assert len([t for t in open_study(tmp_path).trials if t.state.name == "COMPLETE"]) == 25


def test_trunk_first_then_proposals_wait_for_their_trunk_epoch(tmp_path):
    from hamsweep.sweep.trunk import epoch_dir

    params = {
        "ham.warmup_epochs": {"choice": [2, 4], "default": 2},
        "ham.temperature": {"choice": [None, 1.0], "default": None},
    }
    s = make_searcher(
        spec(
            search={"params": params, "num_samples": 4, "max_concurrent": 2},
            confirm={"early": False},  # the idle slots stay idle (see the test after this one)
        ),
        tmp_path,
    )
    (trunk,) = plan(s.spec).trunks
    waiting: list = []
    s.waiting_sink = waiting.append
    # the epochs forks start from
    assert s.suggest("t0") == {"role": "trunk", "optuna_trial": -1, "keep": [2, 4]}
    # the defaults (w=2) and one more wait
    assert s.suggest("t1") is None and s.suggest("t2") is None
    # at most max_concurrent wait
    assert s.suggest("t3") is None and len(open_study(tmp_path).trials) == 2
    assert sorted(w for _, w in waiting[-1]) == sorted(
        c["ham.warmup_epochs"] for _, c, _ in s.stages.deferred
    )
    epoch_dir(tmp_path, trunk.key, 2).mkdir(parents=True)  # the trunk reached epoch 2
    first = s.suggest("t4")
    assert (
        first["fork"] == trunk.key
        and first["ham.warmup_epochs"] == 2
        and first["optuna_trial"] == 0
    )
    s.on_trial_complete("t0", {"epoch": 3}, error=True)  # the trunk failed before epoch 4
    rest = [s.suggest(f"t{i}") for i in range(5, 8)]
    assert all(c is not None for c in rest)
    # w=4 now trains its own warm-up
    assert all("fork" not in c or c["ham.warmup_epochs"] == 2 for c in rest)
    assert s.suggest("t9") is None  # num_samples (4) proposals in all


def test_a_slot_the_search_leaves_idle_trains_a_confirm_baseline(tmp_path):
    """As above, with confirm.early (the default): where the proposals wait for the trunk's epoch,
    the slots train the confirm stage's PGD-AT baselines of the new seeds, named in the study."""
    params = {"ham.warmup_epochs": {"choice": [2, 4], "default": 2}}
    s = make_searcher(
        spec(
            search={"params": params, "num_samples": 2, "max_concurrent": 2},
            confirm={"top_k": 1, "seeds": 2},
        ),
        tmp_path,
    )
    assert s.suggest("t0")["role"] == "trunk"
    early = [s.suggest(f"t{i}") for i in range(1, 5)]
    # t1 and t2: each asks for a proposal, which waits, and trains a baseline instead (seeds 1
    # and 2); t3 and t4: both proposals asked for, both baselines running: nothing to start
    assert [(c["stage"], c["role"], c["train.seed"]) for c in early[:2]] == [
        ("confirm", "trunk", 1),
        ("confirm", "trunk", 2),
    ]
    assert early[2:] == [None, None] and len(s.stages.deferred) == 2
    named = open_study(tmp_path).user_attrs["confirm"]
    assert {v["seed"] for v in named.values()} == {1, 2}


def adapter(folder: Path, **kwargs) -> OptunaAdapter:
    s = spec()
    return OptunaAdapter(
        space=Space(s.search.params, {"train.attack_steps": 10}),
        metric=BEST,
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="alone",
        storage=journal_storage(folder / JOURNAL),
        full_epochs=6,
        **kwargs,
    )


def test_the_adapter_alone_proposes_from_the_journal_study_and_is_told_results(tmp_path):
    a = adapter(tmp_path)
    first, second = a.suggest("t0"), a.suggest("t1")
    assert (first["optuna_trial"], second["optuna_trial"]) == (0, 1)
    assert 1 <= first["ham.drop_step"] <= first["train.attack_steps"] <= 10
    a.mark_started("t0", {**first, "fork": "abc"})
    a.on_trial_result("t0", {OBJECTIVE: 0.2, BEST: 0.2, "epoch": 1, "best_epoch": 1})
    candidate = a.on_trial_complete("t0", {OBJECTIVE: 0.1, BEST: 0.3, "epoch": 6, "best_epoch": 4})
    params = {k: first[k] for k in PARAMS}
    assert candidate == (0, params, 0.3)  # COMPLETE: a candidate for the confirm stage
    assert a.on_trial_complete("t0", {OBJECTIVE: 0.9, BEST: 0.9, "epoch": 6}) is None  # told once
    assert a.on_trial_complete("t1", {OBJECTIVE: 0.1, BEST: 0.1, "epoch": 2}) is None  # PRUNED
    study = optuna.load_study(study_name="alone", storage=journal_storage(tmp_path / JOURNAL))
    t0, t1 = study.trials
    assert (t0.state.name, t0.value, t0.intermediate_values) == ("COMPLETE", 0.3, {1: 0.2, 6: 0.1})
    assert {k: t0.user_attrs[k] for k in ("tune_trial", "role", "fork", "best_epoch")} == {
        "tune_trial": "t0",
        "role": "search",
        "fork": "abc",
        "best_epoch": 4,
    }
    assert t1.state.name == "PRUNED" and t1.params == {k: second[k] for k in PARAMS}


def test_the_adapter_fails_orphans_but_not_the_proposals_that_wait(tmp_path):
    a = adapter(tmp_path)
    a.suggest("t0"), a.suggest("t1"), a.suggest("t2")
    waits = a.trial_of("t1")
    a.forget("t1")  # deferred by the scheduler: not Tune's, and not an orphan
    a.forget("t2")  # as if proposed after Tune's last snapshot: an orphan
    a.fail_orphans([waits])
    study = optuna.load_study(study_name="alone", storage=journal_storage(tmp_path / JOURNAL))
    assert [t.state.name for t in study.trials] == ["RUNNING", "RUNNING", "FAIL"]


def old_folder(tmp_path, monkeypatch, name: str) -> Path:
    """A copy of the fixture's ``name`` folder; the pickles name it relative (``search``)."""
    shutil.copytree(OLD / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return Path(name)


def test_a_searcher_pickled_before_the_split_comes_back_as_the_two_parts(tmp_path, monkeypatch):
    folder = old_folder(tmp_path, monkeypatch, "search")
    s = pickle.loads((folder / "tuner-searcher.pkl").read_bytes())  # as the pickled Tuner holds it
    s.restore(str(folder / "searcher-state.pkl"))  # then Tune's searcher state file
    assert isinstance(s, Searcher) and set(vars(s)) == {"_metric", "_mode", "optuna", "stages"}
    assert isinstance(s.optuna, OptunaAdapter) and isinstance(s.stages, Stages)
    (handle, config, point) = s.stages.deferred[0]  # the proposal that waits for epoch 2
    assert handle.number == config["optuna_trial"] == 1 and point[1] == 2
    assert s.stages.started == s.stages.ended == {"t2"} and list(s.stages.complete) == ["t2"]
    assert s.stages.trunk_trials == {"t0": s.stages.plan.trunks[0].key}
    assert s.optuna._best == {"t2": (0.4, 3)} and s.stages.folder == folder
    states = [t.state.name for t in open_study(folder).trials]
    assert states == ["COMPLETE", "RUNNING"]  # the waiting proposal is not taken for an orphan


@pytest.mark.parametrize("name", ["search", "confirm"])
def test_a_searcher_pickled_before_the_split_goes_on_as_the_old_one_did(
    tmp_path, monkeypatch, name
):
    """The fixture's ``replay`` restores the folder and runs it to FINISHED; ``expected.json`` is
    what the release before the split did in the same replay."""
    import importlib.util

    loader = importlib.util.spec_from_file_location("make_fixture", OLD / "make_fixture.py")
    make_fixture = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(make_fixture)
    old_folder(tmp_path, monkeypatch, name)
    got = json.loads(json.dumps(make_fixture.replay(name)))
    assert got == json.loads((OLD / "expected.json").read_text())[name]


def test_a_confirm_trial_handed_out_after_the_last_snapshot_loses_its_name(tmp_path):
    """Killed after handing out seed 2's baseline but before Tune's next snapshot: the restored
    searcher does not know that trial, hands the baseline out again, and the study no longer
    names the trial that never ran."""
    params = {"ham.warmup_epochs": {"choice": [2, 4], "default": 2}}
    s = make_searcher(
        spec(
            search={"params": params, "num_samples": 2, "max_concurrent": 2},
            confirm={"top_k": 1, "seeds": 2},
        ),
        tmp_path,
    )
    s.suggest("t0"), s.suggest("t1")  # the trunk, then seed 1's baseline (the proposal waits)
    s.save(str(tmp_path / "snapshot.pkl"))  # Tune's last snapshot
    assert s.suggest("t2")["train.seed"] == 2  # handed out, then the driver is killed
    assert set(open_study(tmp_path).user_attrs["confirm"]) == {"t1", "t2"}
    s.restore(str(tmp_path / "snapshot.pkl"))
    assert set(open_study(tmp_path).user_attrs["confirm"]) == {"t1"}
    assert s.suggest("t3")["train.seed"] == 2  # seed 2's baseline, again
    assert set(open_study(tmp_path).user_attrs["confirm"]) == {"t1", "t3"}
