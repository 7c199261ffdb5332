"""A comparison of methods in one spec (``search.methods``, issue 21): what it searches per method,
how many trials each gets, and every mistake as one line naming the key."""

from __future__ import annotations

import textwrap

import pytest

from hamsweep.core.sequential import design
from hamsweep.errors import SpecError
from hamsweep.spec import load_spec

BASE = """
    train: {epochs: 4, attack_steps: 2}
    ham: {drop_step: 1, warmup_epochs: 2}
    search:
      num_samples: 3
      params:
        train.lr: {choice: [0.05, 0.1], default: 0.1}
"""
# appended under ``search:`` as written (two spaces in)
METHODS = """\
  methods:
    ham:
      params:
        ham.drop_step: {int: [1, train.attack_steps], default: 2}
    cfa: {params: {cfa.lambda1: {uniform: [0.1, 0.9], default: 0.3}}}
    trades: {}
"""


def _load(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(BASE) + text + "\n")
    return load_spec(path)


def test_each_method_searches_the_common_keys_and_its_own(tmp_path):
    spec = _load(tmp_path, METHODS)
    assert spec.methods == ("ham", "cfa", "trades")
    assert spec.search.trials == 9  # num_samples for each method
    assert list(spec.search.method_params("cfa")) == ["train.lr", "cfa.lambda1"]
    assert list(spec.search.method_params("trades")) == ["train.lr"]
    space = spec.search.space
    assert space["train.method"].choices == ("ham", "cfa", "trades")
    assert set(space) == {"train.method", "train.lr", "ham.drop_step", "cfa.lambda1"}
    # a method's defaults are its own: its paper's setting, with the common keys'
    assert spec.defaults("cfa") == {"train.method": "cfa", "train.lr": 0.1, "cfa.lambda1": 0.3}
    cfg = spec.trial_config({"train.method": "ham", "train.lr": 0.05})
    assert (cfg.train.method, cfg.train.lr, cfg.ham.drop_step) == ("ham", 0.05, 2)
    # a trial of another method keeps the spec's own value of a key it does not search
    assert spec.trial_config({"train.method": "trades"}).ham.drop_step == 1


def test_a_spec_without_methods_is_what_it_was(tmp_path):
    spec = _load(tmp_path, "")
    assert spec.methods == (spec.train.method,) and spec.search.trials == 3
    assert list(spec.search.space) == ["train.lr"] and spec.defaults() == {"train.lr": 0.1}


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            "  methods: {ham: {}, frll: {}}",
            "search.methods.frll",
            "unknown method; valid are cfa, dafa, faal, fgsm_rs, frl, ham, pgd_at, trades, wat",
        ),
        (
            "  methods: {ham: {params: {train.lr: {choice: [0.1], default: 0.1}}}}",
            "search.methods.ham.params.train.lr",
            "is searched for every method (search.params) already; give it once",
        ),
        (
            "  methods:\n"
            "    ham: {params: {train.momentum: {uniform: [0.8, 0.9], default: 0.9}}}\n"
            "    cfa: {params: {train.momentum: {uniform: [0.5, 0.9], default: 0.9}}}",
            "search.methods.cfa.params.train.momentum",
            "differs from methods.ham.params.train.momentum; one study keeps one distribution "
            "per key, so give both methods the same",
        ),
        (
            "  methods: {ham: {params: {train.method: {choice: [ham], default: ham}}}}",
            "search.methods.ham.params.train.method",
            "each method is its own; drop this key",
        ),
        (
            "  methods: {ham: {params: {ham.drop_step: {int: [1, 5], default: 2}}}}",
            "search.methods.ham.params.ham.drop_step",
            "5 can be sampled but is invalid",
        ),
        (
            "  methods: {cfa: {params: {cfa.lamda1: {uniform: [0, 1], default: 0.5}}}}",
            "search.methods.cfa.params.cfa.lamda1",
            "unknown key; valid keys are",
        ),
        (
            "  methods: {ham: {}, cfa: {}}\n  method_hours: 0",
            "search.method_hours",
            "must be > 0 device-hours per method (or null: the same number of trials for each)",
        ),
        (
            "  methods: {cfa: {set: {train.seed: 3}}}",
            "search.methods.cfa.set.train.seed",
            "is not a method's own to fix; drop this key",
        ),
        (
            "  methods: {cfa: {set: {cfa.lambda1: 0.2}, params: {cfa.lambda1: "
            "{uniform: [0.1, 0.9], default: 0.3}}}}",
            "search.methods.cfa.set.cfa.lambda1",
            "is searched for cfa; fix it or search it, not both",
        ),
        (
            "  methods: {cfa: {set: {train.lr: 0.05}}}",
            "search.methods.cfa.set.train.lr",
            "is searched for cfa; fix it or search it, not both",
        ),
        (
            "  methods: {cfa: {set: {model.width: 8}}}",
            "search.methods.cfa.set.model.width",
            "model is the comparison's, the same for every method; a method fixes only train.* "
            "keys or its own section's",
        ),
        (
            "  methods: {cfa: {set: {ham.warmup_epochs: 3}}}",
            "search.methods.cfa.set.ham.warmup_epochs",
            "is ham's section, not cfa's; a method fixes only train.* keys or its own section's",
        ),
        (
            "  methods: {cfa: {set: {train.epoch: 8}}}",
            "search.methods.cfa.set.train.epoch",
            "unknown key; valid keys are",
        ),
        (
            "  methods: {cfa: {set: {train.lr_milestones: [0.5]}}}",
            "search.methods.cfa.set",
            "gives an invalid trial: train.lr_factors: lr_milestones (1) and lr_factors (3) must "
            "have the same length",
        ),
        (
            "  methods: {cfa: {set: {train.epochs: 2}}}\nscheduler: {name: asha, grace_period: 3}",
            "scheduler.grace_period",
            "3 is larger than cfa's train.epochs (2, search.methods.cfa.set)",
        ),
        (
            "confirm: {train_examples: -1}",
            "confirm.train_examples",
            "train_examples must be >= 0 but got -1",
        ),
        (
            "  method_hours: 2",
            "search.method_hours",
            "is a comparison's budget rule; list the methods compared in search.methods",
        ),
    ],
)
def test_a_bad_comparison_is_one_line_naming_its_key(tmp_path, text, key, message):
    with pytest.raises(SpecError) as err:
        _load(tmp_path, text)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{tmp_path / 's.yaml'}: {key}: "), line
    assert message in line, line


SCHEDULES = """\
  methods:
    ham: {}
    frl: {set: {train.epochs: 6, frl.warmup_epochs: 3}}
    cfa: {set: {train.epochs: 8, train.lr_milestones: [0.5], train.lr_factors: [0.1]EXTRA}}
    trades: {}
"""


def test_a_method_on_its_own_schedule_trains_it_and_forks_from_a_trunk_of_its_own(tmp_path):
    from hamsweep.sweep.confirm import early_baselines
    from hamsweep.sweep.trunk import plan

    spec = _load(tmp_path, SCHEDULES.replace("EXTRA", ", train.eps: 4/255"))
    cfa = spec.trial_config({"train.method": "cfa"})
    assert (cfa.train.epochs, cfa.train.lr_milestones, cfa.train.eps) == (8, (0.5,), 4 / 255)
    frl = spec.trial_config({"train.method": "frl"})
    assert (frl.train.epochs, frl.frl.warmup_epochs, frl.train.lr_milestones) == (
        6,
        3,
        spec.train.lr_milestones,
    )
    # the others keep the spec's schedule, and so does a trunk that is no method's
    assert spec.trial_config({"train.method": "trades"}).train.epochs == 4
    assert spec.trial_config({"train.method": "pgd_at"}).train.epochs == 4
    assert (spec.epochs("cfa"), spec.epochs("ham"), spec.full_epochs("frl")) == (8, 4, 6)
    # the schedules hold the keys any method fixes that a warm-up depends on (not frl.*)
    keys = {"train.epochs", "train.lr_milestones", "train.lr_factors", "train.eps"}
    assert all(set(s) == keys for s in spec.schedules().values())
    assert spec.schedules()["ham"] == spec.schedules()["trades"] != spec.schedules()["frl"]
    # train.lr is searched over a choice: a trunk per value, per forking method's schedule
    p = plan(spec)
    assert sorted((t.epochs, t.methods, t.keep) for t in p.trunks) == [
        (4, ("ham",), (2,)),
        (4, ("ham",), (2,)),
        (6, ("frl",), (3,)),
        (6, ("frl",), (3,)),
    ]
    # train.lr is searched: the baselines are known only once the search has chosen
    assert early_baselines(spec) == []


def test_each_schedule_has_its_early_pgd_at_baseline(tmp_path):
    from hamsweep.sweep.confirm import Chosen, early_baselines, plan_confirm

    path = tmp_path / "s.yaml"
    base = textwrap.dedent(BASE).replace("train.lr: {choice: [0.05, 0.1], default: 0.1}", "")
    path.write_text(base.replace("params:", "params: {}") + SCHEDULES.replace("EXTRA", ""))
    spec = load_spec(path)  # nothing searched changes a warm-up
    early = early_baselines(spec)
    # per seed: the spec's schedule (ham and trades; ham forks at 2), frl's (forks at 3), cfa's
    assert [(b["train.seed"], b.get("train.epochs"), b["keep"]) for b in early] == [
        (seed, *schedule) for seed in (1, 2, 3) for schedule in ((4, [2]), (6, [3]), (8, []))
    ]
    chosen = [Chosen(f"t{i}", i, {"train.method": m}, 0.5) for i, m in enumerate(spec.methods)]
    p = plan_confirm(spec, chosen)
    baselines = [t for t in p.trials if t.get("role") == "trunk"]
    # the plan's baselines are the early ones, numbered alike: the stage skips them
    key = ("config", "train.seed", "optuna_trial")
    assert [tuple(b[k] for k in key) for b in baselines] == [
        tuple(b[k] for k in key) for b in early
    ]
    pairs = {t["config"]: t["baseline"] for t in p.trials if t.get("role") != "trunk"}
    assert pairs["t0"] == pairs["t3"] == early[0]["config"]  # ham and trades: PGD-AT alike
    assert (pairs["t1"], pairs["t2"]) == (early[1]["config"], early[2]["config"])
    assert p.label(early[2]["config"]) == "PGD-AT (epochs=8, lr_milestones=[0.5], lr_factors=[0.1])"


def test_train_method_is_not_searched_beside_methods(tmp_path):
    text = "    train.method: {choice: [ham, cfa], default: ham}\n  methods: {ham: {}, cfa: {}}"
    with pytest.raises(SpecError, match=r"search\.params\.train\.method: search\.methods names"):
        _load(tmp_path, text)


def test_seeds_in_rounds_are_written_as_a_range(tmp_path):
    spec = _load(tmp_path, "confirm: {seeds: {min: 3, max: 10, step: 2}, spending: pocock}")
    c = spec.confirm
    assert (c.seeds, c.max_seeds, c.round_seeds, c.most_seeds) == (3, 10, 2, 10)
    assert design(c).looks == (3, 5, 7, 9, 10) and design(c).spending == "pocock"
    fixed = _load(tmp_path, "confirm: {seeds: 3}").confirm
    assert design(fixed) is None and fixed.most_seeds == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("confirm: {seeds: {min: 3}}", "confirm.seeds: needs both min and max"),
        ("confirm: {seeds: {min: 3, max: 5, by: 1}}", "takes min, max and step"),
        ("confirm: {seeds: {min: 1, max: 5}}", "2 <= min (1) <= max (5)"),
        ("confirm: {seeds: {min: 3, max: 5}, spending: linear}", "confirm.spending"),
    ],
)
def test_a_bad_seed_range_is_one_line(tmp_path, text, message):
    with pytest.raises(SpecError) as err:
        _load(tmp_path, text)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_readmes_comparison_example_is_a_valid_spec(tmp_path):
    import re

    import yaml
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Comparing methods") :]
    block = re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1)
    data = yaml.safe_load(textwrap.dedent(BASE)) | yaml.safe_load(block)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_spec(tmp_path / "r.yaml")
    assert spec.methods == ("ham", "cfa", "trades") and spec.search.trials == 48
    assert (spec.epochs("cfa"), spec.epochs("ham")) == (200, 4)  # cfa on its own schedule
    assert design(spec.confirm).looks == tuple(range(3, 11))


def test_trades_at_its_defaults_is_confirmed_beside_the_methods(tmp_path):
    from hamsweep.sweep.confirm import TRADES_DEFAULTS, Chosen, plan_confirm, trades_reference

    spec = _load(tmp_path, METHODS)  # trades is one of the methods: its defaults, with train.lr's
    defaults = {"train.method": "trades", "train.lr": 0.1}
    best = [Chosen("h", 3, {"train.method": "ham", "train.lr": 0.05}, 0.4)]
    trades = {"train.method": "trades", "train.lr": 0.05}
    # the search ran TRADES's defaults (trial 1): that trial is confirmed, as the reference
    complete = {"h": (3, best[0].params, 0.4), "t1": (1, defaults, 0.2), "t5": (5, trades, 0.3)}
    ref = trades_reference(spec, [*best, Chosen("t5", 5, trades, 0.3)], complete)
    assert ref == Chosen("t1", 1, defaults, 0.2, reference=True)
    # TRADES's best is its defaults already: nothing more
    assert trades_reference(spec, [*best, Chosen("t1", 1, defaults, 0.2)], complete) is None
    # no search trial of TRADES's defaults completed (ASHA stopped it): a config of its own
    ref = trades_reference(spec, best, {"h": complete["h"]})
    assert ref == Chosen(TRADES_DEFAULTS, None, defaults, None, reference=True)
    p = plan_confirm(spec, [*best, ref])
    assert p.label(TRADES_DEFAULTS) == "TRADES (defaults)" and p.label("h") == "HAM #3"
    mine = [t for t in p.trials if t.get("config") == TRADES_DEFAULTS]
    assert [(t["train.method"], t["train.seed"]) for t in mine] == [("trades", s) for s in p.seeds]
    # where TRADES is no method of the comparison, it still is the reference, on the spec's train
    two = _load(tmp_path, "  methods: {ham: {}, cfa: {}}")
    assert trades_reference(two, best, {}) == Chosen(
        TRADES_DEFAULTS, None, defaults, None, reference=True
    )
    assert two.trial_config(defaults).train.trades_beta == two.train.trades_beta
    off = _load(tmp_path, METHODS + "confirm: {trades: false}")
    assert trades_reference(off, best, complete) is None
