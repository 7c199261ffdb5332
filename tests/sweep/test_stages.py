"""The stage scheduler alone, without Ray or Optuna: it is told what was proposed and what ended,
reads the trunk folders (made here in tmp_path), and says what to hand out next."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

from hamsweep.results.spend import Spending
from hamsweep.spec import SweepSpec, validate
from hamsweep.spec.trial import warmup_key
from hamsweep.sweep.stages import FINISHED, Stages
from hamsweep.sweep.trunk import epoch_dir, trunk_config


def spec(confirm: dict | None = None, **search) -> SweepSpec:
    """Two trunks (K = 2 or 3), forks at warm-up epoch 2 or 4 of 6."""
    params = {
        "train.attack_steps": {"choice": [2, 3], "default": 3},
        "ham.warmup_epochs": {"choice": [2, 4], "default": 2},
        "ham.temperature": {"choice": [None, 1.0], "default": None},
    }
    search = {"params": params, "num_samples": 4, "max_concurrent": 2, **search}
    sections = {"name": "s", "train": {"epochs": 6}, "ham": {"warmup_epochs": 2, "drop_step": 1}}
    return validate(SweepSpec, {**sections, "search": search, "confirm": confirm or {}})


def proposal(k: int, w: int, t: float | None = None, number: int = 0) -> dict:
    """A search proposal as the sampler makes it."""
    return {
        "train.attack_steps": k,
        "ham.warmup_epochs": w,
        "ham.temperature": t,
        "optuna_trial": number,
    }


def trunk_key(stages: Stages, k: int) -> str:
    return next(t.key for t in stages.plan.trunks if t.params["train.attack_steps"] == k)


def test_the_scheduler_imports_neither_ray_nor_optuna():
    code = (
        "import sys, hamsweep.sweep.stages; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stderr


def test_trunks_are_handed_out_first(tmp_path):
    stages = Stages(spec(), tmp_path)
    first, second = stages.next_trunk("a"), stages.next_trunk("b")
    assert first == {"role": "trunk", "optuna_trial": -1, "keep": [2, 4], "train.attack_steps": 2}
    assert second == {"role": "trunk", "optuna_trial": -2, "keep": [2, 4], "train.attack_steps": 3}
    assert stages.next_trunk("c") is None  # both trunks run
    assert stages.trunk_trials == {"a": trunk_key(stages, 2), "b": trunk_key(stages, 3)}


def test_a_proposal_waits_until_its_trunk_has_the_epoch(tmp_path):
    stages = Stages(spec(), tmp_path)
    waiting: list = []
    stages.waiting_sink = waiting.append
    stages.next_trunk("trunk")
    key = trunk_key(stages, 2)
    assert stages.offer("t0", "handle-0", proposal(2, 4)) is None  # deferred, not started
    assert waiting[-1] == [(key, 4)] and not stages.running("t0")
    epoch_dir(tmp_path, key, 2).mkdir(parents=True)  # an epoch it does not fork at
    assert stages.release("t1") is None
    epoch_dir(tmp_path, key, 4).mkdir(parents=True)
    handle, config = stages.release("t1")  # handed out as the Tune trial that asked now
    assert handle == "handle-0" and config == {**proposal(2, 4), "fork": key}
    assert waiting[-1] == [] and stages.running("t1") and not stages.deferred
    started = stages.offer("t2", "handle-2", proposal(2, 2))  # its epoch is there: it starts
    assert started == {**proposal(2, 2), "fork": key} and stages.running("t2")


def test_a_failed_trunk_makes_its_proposals_train_their_own_warm_up(tmp_path):
    stages = Stages(spec(), tmp_path)
    stages.next_trunk("trunk2"), stages.next_trunk("trunk3")
    assert stages.offer("t0", "h0", proposal(3, 4)) is None
    assert stages.offer("t1", "h1", proposal(2, 4)) is None
    stages.trunk_ended("trunk3")  # ended before epoch 4: it failed
    handle, config = stages.release("t2")
    assert handle == "h0" and config == proposal(3, 4)  # no fork: it trains its own warm-up
    assert stages.release("t3") is None  # K = 2's trunk still runs
    assert stages.waiting_handles() == ["h1"]


def test_at_most_max_concurrent_wait_and_num_samples_in_all(tmp_path):
    stages = Stages(spec(num_samples=3, max_concurrent=2), tmp_path)
    stages.next_trunk("trunk")
    assert stages.may_ask()
    stages.offer("t0", "h0", proposal(2, 4)), stages.offer("t1", "h1", proposal(2, 4))
    assert not stages.may_ask()  # two wait: enough
    epoch_dir(tmp_path, trunk_key(stages, 2), 4).mkdir(parents=True)
    stages.release("t2")
    assert stages.may_ask()  # one waits, one runs: a third may be asked for
    stages.offer("t3", "h3", proposal(3, 2, number=2))
    assert not stages.may_ask()  # num_samples (3) proposed


def test_the_search_is_over_when_every_proposal_ran_and_ended(tmp_path):
    stages = Stages(spec(num_samples=2), tmp_path)
    for w in (2, 4):
        epoch_dir(tmp_path, trunk_key(stages, 2), w).mkdir(parents=True)
    stages.offer("t0", "h0", proposal(2, 2))
    assert not stages.search_over()  # one proposal of two
    stages.offer("t1", "h1", proposal(2, 4, number=1))
    stages.search_ended("t0", (0, {}, 0.5))
    assert not stages.search_over() and stages.next_trunk("trunk")  # t1 runs
    stages.search_ended("t1")  # stopped early: no candidate
    assert stages.search_over() and list(stages.complete) == ["t0"]


def confirm_stages(tmp_path, seeds: int = 2) -> tuple[Stages, list]:
    """A sweep whose search ended: t0 (best 0.4), t1 (best 0.5), t2 (best 0.5); top 2 on 2 seeds."""
    s = spec(confirm={"top_k": 2, "seeds": seeds}, num_samples=3)
    stages, planned = Stages(s, tmp_path), []
    stages.confirm_sink = planned.append
    stages.next_trunk("trunk2"), stages.next_trunk("trunk3")
    for w in (2, 4):
        epoch_dir(tmp_path, trunk_key(stages, 2), w).mkdir(parents=True)
    for number, (tid, w, best) in enumerate([("t0", 2, 0.4), ("t1", 4, 0.5), ("t2", 2, 0.5)]):
        p = proposal(2, w, number=number)
        stages.offer(tid, tid, p)
        stages.search_ended(tid, (number, {k: v for k, v in p.items() if "." in k}, best))
    assert stages.search_over()
    return stages, planned


def test_the_confirm_stage_hands_out_each_seeds_trunk_first_then_its_configs(tmp_path):
    stages, planned = confirm_stages(tmp_path)
    trunks = [stages.next_confirm(f"c{i}") for i in range(2)]
    assert [(c["role"], c["stage"], c["train.seed"]) for c in trunks] == [
        ("trunk", "confirm", 1),
        ("trunk", "confirm", 2),
    ]
    # the best objective first, a tie to the lower number: t1 (0.5, #1) then t2 (0.5, #2)
    assert [c.trial for c in planned[0].chosen] == ["t1", "t2"]
    assert stages.next_confirm("c2") is None  # every config waits for its seed's trunk
    seed1 = warmup_key(trunk_config(stages.spec, {"train.attack_steps": 2, "train.seed": 1}))
    assert stages.trunk_trials["c0"] == seed1 != trunk_key(stages, 2)  # a new seed: a new warm-up
    epoch_dir(tmp_path, seed1, 4).mkdir(parents=True)  # t1 forks at 4
    first = stages.next_confirm("c3")
    assert (first["config"], first["train.seed"], first["fork"]) == ("t1", 1, seed1)
    assert stages.next_confirm("c4") is None  # t2 forks at 2: not there
    stages.trunk_ended("c1")  # seed 2's trunk failed: its configs train their own warm-up
    rest = [stages.next_confirm(f"c{i}") for i in range(5, 7)]
    assert [(c["config"], c["train.seed"], "fork" in c) for c in rest] == [
        ("t1", 2, False),
        ("t2", 2, False),
    ]
    epoch_dir(tmp_path, seed1, 2).mkdir(parents=True)
    last = stages.next_confirm("c7")
    assert (last["config"], last["train.seed"], last["fork"]) == ("t2", 1, seed1)
    assert stages.next_confirm("c8") == FINISHED


def test_the_confirm_stage_waits_in_the_dashboards_list(tmp_path):
    stages, _ = confirm_stages(tmp_path, seeds=1)
    waiting: list = []
    stages.waiting_sink = waiting.append
    assert stages.next_confirm("c0")["role"] == "trunk"
    seed1 = stages.trunk_trials["c0"]
    assert sorted(waiting[-1]) == [(seed1, 2), (seed1, 4)]


def test_ray_compares_finished_by_value():
    from ray.tune.search import Searcher

    assert Searcher.FINISHED == FINISHED


def test_without_a_spec_every_proposal_starts_at_once(tmp_path):
    stages = Stages()
    assert stages.next_trunk("t0") is None and stages.may_ask()
    assert stages.offer("t0", "h", {"x": 1}) == {"x": 1}
    stages.search_ended("t0")
    assert not stages.search_over()  # no spec: no confirm stage to plan


def _tested(worst: float, attack: str = "pgd20") -> dict:
    """A confirm trial's last result: its test evaluation, worst class ``worst`` (under
    ``attack``: the spec's PGD-eval.attack_steps, what the stage decides on)."""
    correct = [round(1000 * worst), 1000]
    return {
        "test": {
            "epoch": 6,
            "evals": [{"split": "test", "attack": attack, "n": [1000, 1000], "correct": correct}],
        }
    }


def _run_round(stages: Stages, first: int, values: dict) -> list[dict]:
    """Hand out the round's trials (Tune ids c<first>, ...) and end each with the objective
    ``values[(config kind, seed)]``: 'b' the baseline, 'c' the chosen config."""
    got, i = [], first
    while isinstance(config := stages.next_confirm(f"c{i}"), dict):
        got.append(config)
        i += 1
    for j, config in enumerate(got):
        kind = "b" if config.get("role") == "trunk" else "c"
        stages.confirm_ended(f"c{first + j}", _tested(values[(kind, config["train.seed"])]), False)
    return got


def test_seeds_are_added_in_rounds_while_the_difference_is_undecided(tmp_path):
    """confirm.seeds {min: 2, max: 4}: round 1 trains seeds 1-2; the difference (0.2, 0.0) is
    undecided, so seed 3 follows, then seed 4 (the maximum); then the stage ends."""
    s = spec(confirm={"top_k": 1, "seeds": {"min": 2, "max": 4}}, num_samples=1, share_warmup=False)
    stages, planned = Stages(s, tmp_path), []
    stages.confirm_sink = planned.append
    stages.offer("t0", "h0", proposal(2, 2))
    stages.search_ended("t0", (0, {"train.attack_steps": 2, "ham.warmup_epochs": 2}, 0.5))
    values = {("b", s): 0.3 for s in range(1, 5)} | {("c", 1): 0.5, ("c", 2): 0.3}
    values |= {("c", 3): 0.35, ("c", 4): 0.25}
    rounds = [_run_round(stages, 0, values)]
    for first in (10, 20):
        rounds.append(_run_round(stages, first, values))
    assert [[(c.get("role", "config"), c["train.seed"]) for c in r] for r in rounds] == [
        [("trunk", 1), ("config", 1), ("trunk", 2), ("config", 2)],
        [("trunk", 3), ("config", 3)],
        [("trunk", 4), ("config", 4)],
    ]
    numbers = [c["optuna_trial"] for r in rounds for c in r]
    assert len(set(numbers)) == len(numbers)  # unique over the rounds: work folders, job names
    assert [p.seeds for p in planned] == [(1, 2), (1, 2, 3), (1, 2, 3, 4)]
    assert stages.next_confirm("c99") == FINISHED


def test_a_difference_decided_at_the_first_look_ends_the_stage(tmp_path):
    s = spec(confirm={"top_k": 1, "seeds": {"min": 2, "max": 4}}, num_samples=1, share_warmup=False)
    stages, planned = Stages(s, tmp_path), []
    stages.confirm_sink = planned.append
    stages.offer("t0", "h0", proposal(2, 2))
    stages.search_ended("t0", (0, {"train.attack_steps": 2, "ham.warmup_epochs": 2}, 0.5))
    # a difference of 0.400 and 0.401: |T| = 801 over 2 seeds, past O'Brien-Fleming's first
    # boundary (113 at 2 of 4 seeds)
    values = {("b", 1): 0.1, ("b", 2): 0.1, ("c", 1): 0.5, ("c", 2): 0.501}
    assert len(_run_round(stages, 0, values)) == 4
    assert stages.next_confirm("c9") == FINISHED and [p.seeds for p in planned] == [(1, 2)]


def test_a_round_waits_for_its_trials_to_end(tmp_path):
    s = spec(confirm={"top_k": 1, "seeds": {"min": 2, "max": 3}}, num_samples=1, share_warmup=False)
    stages = Stages(s, tmp_path)
    stages.offer("t0", "h0", proposal(2, 2))
    stages.search_ended("t0", (0, {"train.attack_steps": 2, "ham.warmup_epochs": 2}, 0.5))
    handed = [stages.next_confirm(f"c{i}") for i in range(4)]
    assert all(isinstance(c, dict) for c in handed) and stages.next_confirm("c4") is None
    for i in range(3):
        stages.confirm_ended(f"c{i}", _tested(0.3), False)
    assert stages.next_confirm("c4") is None  # one trial of the round still runs
    stages.confirm_ended("c3", None, True)  # it failed: no value, and a next round may follow
    assert isinstance(stages.next_confirm("c4"), dict)


def test_the_confirm_stages_baselines_train_early_when_the_search_cannot_change_them(tmp_path):
    """No searched key touches the warm-up: each new seed's PGD-AT baseline is the same whatever
    the search chooses, so it takes a slot the search leaves idle, and the confirm stage does not
    train it again."""
    params = {
        "ham.warmup_epochs": {"choice": [2, 4], "default": 2},
        "ham.temperature": {"choice": [None, 1.0], "default": None},
    }
    sections = {"name": "s", "train": {"epochs": 6}, "ham": {"warmup_epochs": 2, "drop_step": 1}}
    s = validate(
        SweepSpec,
        {
            **sections,
            "search": {"params": params, "num_samples": 1, "max_concurrent": 2},
            "confirm": {"top_k": 1, "seeds": 2},
        },
    )
    stages, planned = Stages(s, tmp_path), []
    stages.confirm_sink = planned.append
    stages.next_trunk("trunk")
    p = {"ham.warmup_epochs": 4, "ham.temperature": None, "optuna_trial": 0}
    assert stages.offer("t0", "t0", p) is None  # waits for the trunk's epoch 4
    early = [stages.early_baseline(f"e{i}") for i in range(3)]
    assert [(c["role"], c["stage"], c["train.seed"], c["keep"]) for c in early[:2]] == [
        ("trunk", "confirm", 1, [2, 4]),
        ("trunk", "confirm", 2, [2, 4]),
    ]
    assert early[2] is None  # both seeds' baselines run
    epoch_dir(tmp_path, stages.plan.trunks[0].key, 4).mkdir(parents=True)
    assert stages.release("t0")[1]["fork"] == stages.plan.trunks[0].key
    stages.search_ended("t0", (0, {"ham.warmup_epochs": 4, "ham.temperature": None}, 0.5))
    handed = stages.next_confirm("c0")  # the config of seed 1 waits for its seed's trunk
    assert handed is None and len(planned) == 1
    baselines = [t for t in planned[0].trials if t.get("role") == "trunk"]
    # the planned baselines are the ones that trained early: same config, seed and number
    same = ("config", "train.seed", "optuna_trial")
    assert [{k: b[k] for k in same} for b in baselines] == [
        {k: e[k] for k in same} for e in early[:2]
    ]
    seed1 = stages.trunk_trials["e0"]
    epoch_dir(tmp_path, seed1, 4).mkdir(parents=True)
    config = stages.next_confirm("c1")
    assert (config["config"], config["train.seed"], config["fork"]) == ("t0", 1, seed1)


def test_no_early_baseline_when_the_search_varies_the_warm_up(tmp_path):
    stages = Stages(spec(confirm={"top_k": 1, "seeds": 2}), tmp_path)  # searches attack_steps
    assert stages.early_baseline("e0") is None


def test_confirm_early_false_keeps_the_baselines_for_the_confirm_stage(tmp_path):
    params = {"ham.temperature": {"choice": [None, 1.0], "default": None}}
    s = validate(
        SweepSpec,
        {
            "name": "s",
            "train": {"epochs": 6},
            "ham": {"warmup_epochs": 2, "drop_step": 1},
            "search": {"params": params, "num_samples": 1},
            "confirm": {"top_k": 1, "seeds": 2, "early": False},
        },
    )
    assert Stages(s, tmp_path).early_baseline("e0") is None
    on = s.model_copy(update={"confirm": s.confirm.model_copy(update={"early": True})})
    assert Stages(on, tmp_path).early_baseline("e0") is not None


def test_a_comparison_confirms_each_methods_own_best(tmp_path):
    s = validate(
        SweepSpec,
        {
            "name": "s",
            "train": {"epochs": 6},
            "ham": {"warmup_epochs": 2, "drop_step": 1},
            "search": {"num_samples": 2, "methods": {"ham": {}, "trades": {}, "cfa": {}}},
            "confirm": {"top_k": 1, "seeds": 1},
        },
    )
    stages, planned = Stages(s, tmp_path), []
    stages.confirm_sink = planned.append
    stages.next_trunk("trunk")
    # HAM's two trials beat every TRADES and CFA trial: a top-1 over all would take HAM alone
    for number, (method, best) in enumerate(
        [("ham", 0.9), ("ham", 0.8), ("trades", 0.3), ("trades", 0.4), ("cfa", 0.2), ("cfa", 0.1)]
    ):
        tid = f"t{number}"
        stages.started.add(tid)
        stages.search_ended(tid, (number, {"train.method": method}, best))
    assert stages.search_over()
    stages.next_confirm("c0")
    chosen = [(c.trial, c.params["train.method"]) for c in planned[0].chosen]
    assert chosen == [("t0", "ham"), ("t3", "trades"), ("t4", "cfa")]  # spec order, each its best
    assert [planned[0].label(c.trial) for c in planned[0].chosen] == [
        "HAM #0",
        "TRADES #3",
        "CFA #4",
    ]


def _hours_spec(**search) -> SweepSpec:
    """A comparison of TRADES and FAAL, 3 trials at most each, with 0.01 device-hours each."""
    methods = {
        "trades": {},
        "faal": {"params": {"faal.eta": {"uniform": [0.1, 1], "default": 0.5}}},
    }
    return validate(
        SweepSpec,
        {
            "name": "s",
            "train": {"epochs": 6},
            "faal": {"warmup_epochs": 4},
            "ham": {"warmup_epochs": 2},
            "search": {"num_samples": 3, "method_hours": 0.01, "methods": methods, **search},
        },
    )


def test_a_budget_in_device_hours_asks_while_a_method_has_hours_and_trials_left(tmp_path):
    from hamsweep.sweep.per_method import method_budget

    s = _hours_spec(max_concurrent=4)
    # (device-seconds, their mean an epoch, epochs the running trials have ahead, trials)
    spent = {"trades": Spending(0.0, 0.0, 0, 0), "faal": Spending(0.0, 0.0, 0, 0)}
    stages = Stages(s, tmp_path)
    stages.budget = method_budget(s)
    stages.budget.source = lambda: dict(spent)  # the Recorder's method_seconds in a sweep
    stages.next_trunk("trunk")
    epoch_dir(tmp_path, stages.plan.trunks[0].key, 4).mkdir(parents=True)
    assert stages.budget.left({}) == ["trades", "faal"]  # nothing spent: the spec's order
    stages.offer("t0", "h0", {"train.method": "trades"})
    assert stages.budget.left(stages.method_counts()) == ["faal", "trades"]  # fewer trials first
    stages.offer("t1", "h1", {"train.method": "faal", "faal.eta": 0.5})
    spent.update(trades=Spending(30.0, 3.0, 0, 1), faal=Spending(4.0, 1.0, 0, 1))  # FAAL cheaper
    assert stages.budget.left(stages.method_counts()) == ["faal", "trades"]
    spent["trades"] = Spending(
        27.0, 3.0, 2, 1
    )  # its running trial's 2 epochs to come leave half an epoch
    assert stages.budget.left(stages.method_counts()) == ["faal", "trades"]
    spent["trades"] = Spending(
        29.0, 3.0, 2, 1
    )  # ... no longer: TRADES gets no new trial, and runs on
    assert stages.budget.left(stages.method_counts()) == ["faal"] and not stages.budget.over(
        "trades"
    )
    spent["trades"] = Spending(34.6, 3.0, 1, 1)  # half an epoch more reaches TRADES' 36 s: it stops
    assert stages.budget.left(stages.method_counts()) == ["faal"] and stages.may_ask()
    assert stages.budget.over("trades") and not stages.budget.over("faal")
    # two TRADES trials running: each adds an epoch before the next word on either, so the stop
    # comes an epoch (two halves) before its hours rather than half of one
    spent["trades"] = Spending(33.5, 3.0, 4, 2, running=1)
    assert not stages.budget.over("trades")
    spent["trades"] = Spending(33.5, 3.0, 4, 2, running=2)
    assert stages.budget.over("trades")
    for tid in ("t2", "t3"):
        stages.offer(tid, f"h{tid}", {"train.method": "faal", "faal.eta": 0.2})
    assert stages.method_counts() == {"trades": 1, "faal": 3}
    assert not stages.may_ask()  # FAAL has had its 3 trials (num_samples), TRADES its hours
    assert not stages.search_over()  # ... but they still run
    for tid in ("t0", "t1", "t2", "t3"):
        stages.search_ended(tid)
    # 4 of the 6 trials num_samples allows, and the search is over: no method has any left
    assert stages.search_over()


def test_without_hours_left_no_trial_is_asked_for_and_the_search_ends(tmp_path):
    from hamsweep.sweep.per_method import method_budget

    s = _hours_spec()
    stages = Stages(s, tmp_path)
    stages.budget = method_budget(s)
    stages.budget.source = lambda: {
        "trades": Spending(40.0, 3.0, 0, 1),
        "faal": Spending(35.0, 2.0, 0, 1),
    }
    stages.next_trunk("trunk")
    assert not stages.may_ask() and stages.search_over()  # 35 s + half of 2 s: FAAL's 36 s
    stages.budget.source = lambda: {
        "trades": Spending(40.0, 3.0, 0, 1),
        "faal": Spending(34.9, 2.0, 0, 1),
    }
    assert stages.may_ask() and not stages.search_over()


def test_a_config_whose_trials_ended_gets_its_next_seed_while_another_config_runs(tmp_path):
    """Two configs (one PGD-AT baseline), seeds {min: 2, max: 3}: once the first config's and the
    baseline's trials of seeds 1-2 have ended, the first gets seed 3 (and PGD-AT seed 3) while the
    second config's seed 2 still runs; the second then gets seed 3 alone, paired with the same
    PGD-AT seed 3."""
    s = spec(confirm={"top_k": 2, "seeds": {"min": 2, "max": 3}}, num_samples=2, share_warmup=False)
    stages, planned = Stages(s, tmp_path), []
    stages.confirm_sink = planned.append
    for i, t in enumerate((None, 1.0)):
        stages.offer(f"t{i}", f"h{i}", proposal(2, 2, t, number=i))
        params = {"train.attack_steps": 2, "ham.warmup_epochs": 2, "ham.temperature": t}
        stages.search_ended(f"t{i}", (i, params, 0.5 - i / 10))
    first = [stages.next_confirm(f"c{i}") for i in range(6)]
    kinds = [(c.get("role") or c["config"], c["train.seed"]) for c in first]
    assert kinds == [("trunk", 1), ("t0", 1), ("t1", 1), ("trunk", 2), ("t0", 2), ("t1", 2)]
    assert stages.next_confirm("c6") is None  # all handed out, none ended
    # t0 (0.5 and 0.3 against 0.3: undecided) and the baseline end; t1's seed 2 still runs
    ends = {0: 0.3, 1: 0.5, 2: 0.4, 3: 0.3, 4: 0.3}
    for i, worst in ends.items():
        stages.confirm_ended(f"c{i}", _tested(worst), False)
    more = [stages.next_confirm(f"c{i}") for i in (6, 7)]
    assert [(c.get("role") or c["config"], c["train.seed"]) for c in more] == [
        ("trunk", 3),
        ("t0", 3),
    ]
    assert stages.next_confirm("c8") is None  # t1 waits for its own seed 2
    stages.confirm_ended("c5", _tested(0.45), False)
    last = stages.next_confirm("c8")
    assert (last["config"], last["train.seed"], last["baseline"]) == ("t1", 3, more[1]["baseline"])
    assert stages.next_confirm("c9") is None  # seed 3 runs: max reached once it ends
    for i in (6, 7, 8):
        stages.confirm_ended(f"c{i}", _tested(0.3), False)
    assert stages.next_confirm("c9") == FINISHED
    assert [p.seeds for p in planned] == [(1, 2), (1, 2, 3), (1, 2, 3)]
    numbers = [c["optuna_trial"] for c in [*first, *more, last]]
    assert len(set(numbers)) == len(numbers)
