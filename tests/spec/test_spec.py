"""Spec validation: every mistake is one line with the key path and what is valid."""

from __future__ import annotations

import textwrap

import pytest
from conftest import REPO
from pydantic import ValidationError

from hamsweep.errors import SpecError
from hamsweep.spec import SweepSpec, TrialConfig, load_spec, parse_overrides, validate

REPO_SPECS = sorted((REPO / "search_spaces").glob("*.yaml"))


def _spec(tmp_path, text: str):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return load_spec(path)


@pytest.mark.parametrize(
    "override,pattern",
    [
        (
            {"ham.drop_step": 12},
            r"^ham\.drop_step: 12 is larger than train\.attack_steps \(10\); "
            r"drop_step must be in 1\.\.10$",
        ),
        (
            {"train.eps": 8},
            r"^train\.eps: eps must be in \(0, 1\] but got 8; did you mean 8/255\?$",
        ),
        ({"train.eps": 0}, r"train\.eps: eps must be in \(0, 1\] but got 0"),
        (
            {"model.name": "resnet50"},
            r"^model\.name: .*'preact_resnet18', 'wrn34_10' or 'small_cnn' \(got 'resnet50'\)$",
        ),
        (
            {"data.name": "imagenet"},
            r"^data\.name: .*'cifar10', 'cifar100', 'svhn', 'imagenette', 'stl10', 'imagefolder' "
            r"or 'synthetic'",
        ),
        (
            {"ham.temperature": 0},
            r"^ham\.temperature: temperature must be > 0 \(or null for uniform weights\) but got 0",
        ),
        ({"ham.temperature": -1.0}, r"^ham\.temperature: "),
        (
            {"ham.keep_easy_fraction": 1.5},
            r"^ham\.keep_easy_fraction: keep_easy_fraction must be in \[0, 1\] but got 1\.5$",
        ),
        (
            {"ham.discard_threshold": 1.0},
            r"^ham\.discard_threshold: discard_threshold must be in \[0, 1\)",
        ),
        ({"data.val_fraction": -0.1}, r"^data\.val_fraction: "),
        (
            {"ham.warmup_epochs": 200},
            r"^ham\.warmup_epochs: 200 is larger than train\.epochs \(120\)",
        ),
        ({"train.method": "fgsm_at"}, r"^train\.method: .*'ham', 'pgd_at', 'trades' or 'wat'"),
        (
            {"ham.drop_step": 11},
            r"^ham\.drop_step: 11 is larger than train\.attack_steps \(10\); "
            r"drop_step must be in 1\.\.10$",
        ),
        (
            {"ham.easy_rule": "never"},
            r"^ham\.easy_rule: .*'correct_at_m' or 'never_misclassified' \(got 'never'\)$",
        ),
        (
            {"ham.drop_stpe": 3},
            r"^ham\.drop_stpe: unknown key; valid keys are ham\.warmup_epochs, ham\.drop_step",
        ),
        ({"train.epochs": "many"}, r"^train\.epochs: .*integer.*\(got 'many'\)$"),
    ],
)
def test_bad_values_name_the_key_and_what_is_valid(override, pattern):
    with pytest.raises(SpecError, match=pattern) as err:
        SweepSpec().trial_config(override)
    assert "\n" not in str(err.value)


def test_drop_step_may_equal_attack_steps_and_pgd_at_ignores_it():
    assert SweepSpec().trial_config({"ham.drop_step": 10}).ham.drop_step == 10
    assert (
        SweepSpec().trial_config({"ham.drop_step": 12, "train.method": "pgd_at"}).train.method
        == "pgd_at"
    )


def test_eps_accepts_fractions_as_written_in_yaml():
    cfg = SweepSpec().trial_config(parse_overrides(["train.eps=4/255", "eval.step_size=1/255"]))
    assert cfg.train.eps == pytest.approx(4 / 255) and cfg.eval.step_size == pytest.approx(1 / 255)


def test_easy_rule_defaults_to_the_papers_and_is_searchable(tmp_path):
    assert TrialConfig().ham.easy_rule == "correct_at_m"
    spec = _spec(
        tmp_path,
        "search:\n  params:\n"
        "    ham.easy_rule: {choice: [correct_at_m, never_misclassified], default: correct_at_m}\n",
    )
    assert (
        spec.trial_config({"ham.easy_rule": "never_misclassified"}).ham.easy_rule
        == "never_misclassified"
    )
    with pytest.raises(
        SpecError, match=r"search\.params\.ham\.easy_rule: 'never' can be sampled but is invalid"
    ):
        _spec(
            tmp_path,
            "search:\n  params:\n"
            "    ham.easy_rule: {choice: [correct_at_m, never], default: correct_at_m}\n",
        )


def test_the_official_eps_and_step_as_the_specs_suggest():
    cfg = SweepSpec().trial_config(parse_overrides(["train.eps=0.031", "train.step_size=0.007"]))
    assert (cfg.train.eps, cfg.train.step_size) == (0.031, 0.007)


def test_configs_are_frozen():
    cfg = TrialConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.lr = 1.0  # type: ignore[misc]


def test_unknown_section_key_lists_valid_keys(tmp_path):
    with pytest.raises(
        SpecError,
        match=(
            r"s\.yaml: ham\.drop: unknown key 'drop'; "
            r"valid keys here are warmup_epochs, drop_step"
        ),
    ):
        _spec(tmp_path, "ham:\n  drop: 3\n")
    with pytest.raises(
        SpecError,
        # the sections: data, model, train, one per method with knobs (ham, ...), eval
        match=r"s\.yaml: hamm: unknown key 'hamm'; valid keys here are data, model, train, "
        r"(\w+, )*ham, (\w+, )*eval,",
    ):
        _spec(tmp_path, "hamm: {}\n")


def test_search_params_need_a_distribution_and_a_default(tmp_path):
    with pytest.raises(SpecError, match=r"search\.params\.ham\.drop_step: .*needs a default"):
        _spec(tmp_path, "search:\n  params:\n    ham.drop_step: {int: [1, 5]}\n")
    with pytest.raises(SpecError, match=r"needs exactly one of uniform, loguniform, int, choice"):
        _spec(tmp_path, "search:\n  params:\n    ham.drop_step: {normal: [1, 5], default: 3}\n")
    with pytest.raises(
        SpecError, match=r"search\.params\.ham\.drop_sep: unknown key; valid keys are"
    ):
        _spec(tmp_path, "search:\n  params:\n    ham.drop_sep: {int: [1, 5], default: 3}\n")
    with pytest.raises(
        SpecError,
        match=r"search\.params\.ham\.discard_threshold: default 0\.95 is outside \[0\.0, 0\.9\]",
    ):
        _spec(
            tmp_path,
            "search:\n  params:\n    ham.discard_threshold: {uniform: [0.0, 0.9], default: 0.95}\n",
        )
    with pytest.raises(SpecError, match=r"default 3 is not one of the choices"):
        _spec(
            tmp_path, "search:\n  params:\n    ham.temperature: {choice: [null, 1.0], default: 3}\n"
        )
    with pytest.raises(
        SpecError,
        match=r"search\.params\.ham\.discard_threshold: 1\.5 can be sampled but is invalid: "
        r"ham\.discard_threshold: discard_threshold must be in \[0, 1\)",
    ):
        _spec(
            tmp_path,
            "search:\n  params:\n    ham.discard_threshold: {uniform: [0.0, 1.5], default: 0.0}\n",
        )
    with pytest.raises(
        SpecError, match=r"search\.params\.ham\.temperature: -1\.0 can be sampled but is invalid"
    ):
        _spec(
            tmp_path,
            "search:\n  params:\n    ham.temperature: {choice: [null, -1.0], default: null}\n",
        )
    with pytest.raises(SpecError, match=r"loguniform needs low > 0"):
        _spec(tmp_path, "search:\n  params:\n    train.lr: {loguniform: [0, 0.1], default: 0.05}\n")


def test_int_bounds_may_name_another_key(tmp_path):
    spec = _spec(
        tmp_path,
        """
        search:
          params:
            train.attack_steps: {int: [5, 10], default: 7}
            ham.drop_step: {int: [1, train.attack_steps], default: 3}
        """,
    )
    assert spec.search.params["ham.drop_step"].bounds({"train.attack_steps": 6}) == (1, 6)
    with pytest.raises(
        SpecError, match=r"ham\.drop_step: 9 is larger than train\.attack_steps \(7\)"
    ):
        _spec(
            tmp_path,
            """
            search:
              params:
                train.attack_steps: {int: [5, 10], default: 7}
                ham.drop_step: {int: [1, train.attack_steps], default: 9}
            """,
        )


def test_searched_defaults_then_overrides_make_the_trial():
    spec = validate(
        SweepSpec,
        {
            "ham": {"drop_step": 2},
            "search": {"params": {"ham.drop_step": {"int": [1, 5], "default": 4}}},
        },
    )
    assert spec.trial_config().ham.drop_step == 4
    assert spec.trial_config({"ham.drop_step": 5}).ham.drop_step == 5


def test_file_errors_are_one_line(tmp_path):
    with pytest.raises(SpecError, match=r"no such spec file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ham: [1, 2\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: is not valid YAML at line \d+"):
        load_spec(bad)
    with pytest.raises(SpecError, match=r"--set: expected KEY=VALUE"):
        parse_overrides(["ham.drop_step"])


@pytest.mark.parametrize("path", REPO_SPECS)
def test_shipped_specs_validate(path):
    spec = load_spec(path)
    assert spec.search.space, "every shipped spec searches something"
