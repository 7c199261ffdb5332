"""The method registry, and the contract every registered method meets (one suite run over each
real method, as optuna runs its storage contract over every backend)."""

from __future__ import annotations

import dataclasses
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from hamsweep.core import methods
from hamsweep.core.methods import TRUNK_METHOD, Method
from hamsweep.core.train import EpochRecord, Tally, Trainer, run
from hamsweep.errors import SpecError
from hamsweep.spec import TrialConfig, config_keys, validate
from hamsweep.spec.trial import WARMUP_FREE_KEYS

NAMES = methods.names()
PACKAGE = Path(methods.__file__).parent


def test_the_registry_finds_every_module_of_the_package():
    modules = {p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")}
    assert set(NAMES) == modules
    assert {"pgd_at", "trades", "ham"} <= set(NAMES)
    assert list(NAMES) == sorted(NAMES)


def test_an_unknown_method_is_one_line_listing_the_valid_ones():
    with pytest.raises(SpecError) as err:
        methods.get("fast_at")
    assert str(err.value) == (
        f"train.method: unknown method 'fast_at'; valid are {', '.join(NAMES)}"
    )
    with pytest.raises(SpecError, match=r"^train\.method: Input should be ") as err:
        validate(TrialConfig, {"train": {"method": "fast_at"}})
    assert all(f"'{name}'" in str(err.value) for name in NAMES)
    assert "\n" not in str(err.value)


def test_importing_the_methods_and_the_spec_imports_no_torch():
    code = (
        "import sys; from hamsweep.core import methods; methods.names(); "
        "from hamsweep.spec import TrialConfig; TrialConfig(); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the contract, over every registered method ----
def _learner(name: str, workdir: Path) -> Trainer:
    """A real trainer of a tiny trial of method ``name`` (a forking one forks at epoch 1): what a
    step sees of the loop, the splits, the method state and the validation included."""
    torch.manual_seed(0)
    return Trainer(_at(name, 3, 1), workdir)


@pytest.mark.parametrize("name", NAMES)
def test_a_step_on_a_tiny_batch_returns_a_finite_loss_to_train_on(name, tmp_path):
    method, learner = methods.get(name), _learner(name, tmp_path)
    x, y = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 4
    tally = Tally()
    learner.model.eval()  # as the loop calls it
    out = method.step(learner, x, y, tally)
    assert out is not None, "a fresh model finds hard examples: the step trains on some"
    loss, logits, y_used = out
    assert loss.ndim == 0 and math.isfinite(float(loss.detach()))
    assert logits.shape == (len(y_used), 4) and 0 < len(y_used) <= len(y)
    assert learner.model.training, "the training forward runs in train mode"
    loss.backward()  # the loss reaches the weights
    assert all(p.grad is not None for p in learner.model.parameters())
    assert tally.images == len(y) and tally.attack_steps > 0
    assert tally.train_examples == len(y_used)


@pytest.mark.parametrize("name", NAMES)
def test_the_declaration_is_complete(name):
    method = methods.get(name)
    assert isinstance(method, Method) and method.name == name and method.title
    assert set(method.diagnostics) <= {f.name for f in dataclasses.fields(EpochRecord)}
    keys = config_keys()
    assert all(key in keys and key in WARMUP_FREE_KEYS for key in method.own_keys())
    if method.config is not None:
        assert method.name in TrialConfig.model_fields
        assert TrialConfig.model_fields[method.name].annotation is method.config


@pytest.mark.parametrize("name", [n for n in NAMES if methods.get(n).config is not None])
def test_the_section_validates_each_knob_in_one_line(name):
    section = methods.get(name).config
    assert section is not None
    section()  # the defaults are valid
    for field in section.model_fields:
        with pytest.raises(SpecError) as err:
            validate(TrialConfig, {name: {field: [1, 2]}})  # no knob is a list
        assert str(err.value).startswith(f"{name}.{field}: ") and "\n" not in str(err.value)
    with pytest.raises(SpecError, match=rf"^{name}\.typo: unknown key 'typo'; valid keys here"):
        validate(TrialConfig, {name: {"typo": 1}})


@pytest.mark.parametrize("name", NAMES)
def test_fork_epoch_phase_and_selectable_agree(name):
    method, epochs = methods.get(name), 6
    for w in range(epochs + 1):
        cfg = _at(name, epochs, w)
        fork = method.fork_epoch(cfg)
        assert cfg.fork_epoch() == fork == methods.fork_epoch(cfg)
        phases = [method.phase(cfg, e) for e in range(epochs)]
        if method.fork_key is None:
            assert fork is None and phases == [name] * epochs
            assert all(method.selectable(cfg, e) for e in range(1, epochs + 1))
            continue
        # w PGD-AT epochs (the trunk's), then its own; a fork only inside the run
        assert phases == [TRUNK_METHOD] * min(w, epochs) + [name] * (epochs - w)
        assert fork == (w if 0 < w < epochs else None)


def _at(name: str, epochs: int, w: int) -> TrialConfig:
    """A config of method ``name`` with ``epochs`` epochs and its fork key (if any) set to ``w``."""
    fork_key = methods.get(name).fork_key
    sections: dict = {"train": {"method": name, "epochs": epochs}}
    if fork_key:
        section, key = fork_key.split(".")
        sections[section] = {**sections.get(section, {}), key: w}
    return tiny_config(**sections)


def test_the_loop_calls_the_epoch_hook_of_each_epochs_method(tmp_path, monkeypatch):
    seen: list[tuple[str, int, int]] = []

    class Counting(type(methods.get("ham"))):  # HAM as it is, plus a hook that records its calls
        def end_epoch(self, learner, record):
            seen.append((record.phase, record.epoch, len(record.evals)))

    monkeypatch.setitem(methods._registry(), "ham", Counting())
    run(tiny_config(), workdir=tmp_path)  # ham, warm-up 1 of 3 epochs
    assert seen == [("ham", 2, 2), ("ham", 3, 2)], "after the HAM epochs, evaluated (val)"


def test_a_methods_state_between_epochs_survives_a_restart(tmp_path, monkeypatch):
    """What ``end_epoch`` keeps in ``learner.method_state`` is in every checkpoint: a trial
    stopped after its second epoch and started again ends with the state of one run straight."""

    class Keeping(type(methods.get("ham"))):  # HAM, plus per-class state kept between epochs
        def end_epoch(self, learner, record):
            val = next(e for e in record.evals if e.split == "val" and e.attack != "clean")
            state = learner.method_state
            state["correct"] = state.get("correct", 0) + torch.tensor(val.correct)
            state["epochs"] = [*state.get("epochs", []), record.epoch]

    monkeypatch.setitem(methods._registry(), "ham", Keeping())
    cfg = tiny_config()  # ham, warm-up 1 of 3 epochs: the hook runs after epochs 2 and 3
    straight = Trainer(cfg, tmp_path / "straight")
    list(straight.epochs())
    first = Trainer(cfg, tmp_path / "restarted")
    for record in first.epochs():
        if record.epoch == 2:
            break  # the process ends here: the checkpoint of epoch 2 is on disk
    again = Trainer(cfg, tmp_path / "restarted")
    assert again.start_epoch == 2 and again.method_state["epochs"] == [2]
    list(again.epochs())
    assert again.method_state["epochs"] == straight.method_state["epochs"] == [2, 3]
    assert torch.equal(again.method_state["correct"], straight.method_state["correct"])


def test_a_config_pickled_before_a_section_existed_gets_its_defaults():
    cfg = tiny_config(ham={"drop_step": 2})
    # a config object as an older hamsweep pickled it: without a section added since (say eval)
    old = TrialConfig.__new__(TrialConfig)
    for attr, value in cfg.__getstate__().items():
        if attr == "__dict__":
            value = {k: v for k, v in value.items() if k != "eval"}
        object.__setattr__(old, attr, value)
    data = pickle.dumps(old)
    assert "eval" not in old.__dict__
    restored = pickle.loads(data)
    assert restored.eval == TrialConfig().eval and restored.ham.drop_step == 2
    assert restored.model_dump() == {**cfg.model_dump(), "eval": TrialConfig().eval.model_dump()}


@pytest.mark.parametrize("name", [n for n in NAMES if methods.get(n).fork_key is not None])
def test_a_fork_from_the_pgd_at_trunk_is_bit_identical_to_the_trial_from_scratch(name, tmp_path):
    """Every forking method: its trial forked from a PGD-AT trunk's checkpoint at its fork epoch
    trains exactly as the same trial run from scratch (its own warm-up): every record, per-class
    state and weight (HAM's own test, tests/core/test_train.py, also checks best.pt)."""
    import shutil

    from hamsweep.core.data import load

    cfg = _at(name, 3, 1)
    trunk = cfg.model_copy(update={"train": cfg.train.model_copy(update={"method": TRUNK_METHOD})})
    dataset = load(cfg.data)
    snap = tmp_path / "epoch-1"

    def keep(record, ckpt):
        if record.epoch == 1:
            shutil.copytree(ckpt, snap)

    run(trunk, workdir=tmp_path / "trunk", report=keep, dataset=dataset)
    scratch = run(cfg, workdir=tmp_path / "scratch", dataset=dataset)
    forked = run(cfg, workdir=tmp_path / "fork", fork=snap, dataset=dataset)
    assert [r.epoch for r in forked] == [2, 3] and {r.phase for r in forked} == {name}
    for a, b in zip(scratch[1:], forked):
        a, b = a.to_dict(), b.to_dict()
        for timing in ("seconds", "images_per_s"):
            a.pop(timing), b.pop(timing)
        assert a == b
    final = [
        torch.load(tmp_path / w / "checkpoint/last.pt", weights_only=False)
        for w in ("scratch", "fork")
    ]
    for k, v in final[0]["model"].items():
        assert torch.equal(v, final[1]["model"][k]), k
    assert repr(final[0]["method_state"]) == repr(final[1]["method_state"])
