"""FGSM-RS, the example method: it trains through the loop, sweeps beside HAM, and a copy of its
module under a new name is a new method with no other file edited."""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

import hamsweep
from hamsweep.core import models
from hamsweep.core.methods import fgsm_rs
from hamsweep.core.train import Tally, run
from hamsweep.errors import SpecError
from hamsweep.spec import SweepSpec, load_spec, validate
from hamsweep.sweep import trunk


def test_a_tiny_trial_trains_with_fgsm_rs(tmp_path):
    records = run(tiny_config(train={"method": "fgsm_rs"}), workdir=tmp_path)
    assert [r.phase for r in records] == ["fgsm_rs"] * 3
    for r in records:
        assert math.isfinite(r.train_loss) and r.val_robust() is not None
        assert r.attack_steps == r.images == r.train_examples  # one step per example
        assert r.hard_fraction is None and r.flip_backs is None  # HAM's columns, not its
    assert (tmp_path / "checkpoint" / "best.pt").is_file()


def test_the_step_is_one_signed_step_of_alpha_eps_from_a_random_start():
    cfg = tiny_config(train={"method": "fgsm_rs"}, fgsm_rs={"alpha": 1.5})
    torch.manual_seed(0)
    model = models.build(cfg.model, num_classes=4, in_channels=3).eval()
    before = copy.deepcopy(model.state_dict())  # the training forward moves BN statistics
    x, y = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 4
    learner = SimpleNamespace(cfg=cfg, model=model, generator=torch.Generator().manual_seed(7))
    loss, logits, _ = fgsm_rs.METHOD.step(learner, x, y, Tally())

    # written out from the paper: delta ~ U(-eps, eps), delta += alpha sign(grad), clip to the ball
    model.load_state_dict(before)
    model.eval()
    eps, step = cfg.train.eps, 1.5 * cfg.train.eps
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(7))
    x0 = (x + (2 * noise - 1) * eps).clamp(0, 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x0), y, reduction="sum"), x0)
    x1 = torch.min(torch.max(x0.detach() + step * grad.sign(), x - eps), x + eps).clamp(0, 1)
    expected = model.train()(x1)
    assert torch.equal(logits, expected)
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(expected, y).detach()))


def test_alpha_is_checked_in_one_line():
    with pytest.raises(SpecError) as err:
        validate(SweepSpec, {"fgsm_rs": {"alpha": 3}})
    assert str(err.value) == "fgsm_rs.alpha: alpha must be in (0, 2] (times train.eps) but got 3.0"


def test_a_sweep_searches_it_beside_ham_and_only_ham_forks(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "train: {epochs: 4}\nham: {warmup_epochs: 2}\n"
        "search:\n  params:\n"
        "    train.method: {choice: [ham, fgsm_rs], default: ham}\n"
        "    fgsm_rs.alpha: {uniform: [1.0, 1.25], default: 1.25}\n"
    )
    spec = load_spec(path)
    plan = trunk.plan(spec)
    assert plan.shared and plan.fork_epochs == (2,)
    assert plan.forks(spec.search_trial_config({"train.method": "ham"}))
    assert not plan.forks(spec.search_trial_config({"train.method": "fgsm_rs"}))


_NEW_METHOD = """
import sys
from pathlib import Path

import hamsweep
from hamsweep.core import methods
from hamsweep.core.train import run
from hamsweep.spec import config_keys

sys.path.insert(0, sys.argv[2])
from conftest import tiny_config

assert hamsweep.__file__.startswith(sys.argv[1]), hamsweep.__file__  # the copy, not the checkout
assert "fgsm_rs2" in methods.names()
cfg = tiny_config(train={"method": "fgsm_rs2", "epochs": 1}, fgsm_rs2={"alpha": 1.0})
assert cfg.fgsm_rs2.alpha == 1.0 and "fgsm_rs2.alpha" in config_keys()
[record] = run(cfg, workdir=Path(sys.argv[1]) / "trial")
print(record.phase, record.epoch, record.attack_steps == record.images)
"""


def test_a_copy_of_the_module_under_a_new_name_is_a_new_method(tmp_path):
    """The README's claim: a method is one module. A copy of the package gains ``fgsm_rs2.py``
    (fgsm_rs.py with its name changed) and nothing else; the registry, the spec and the loop
    take it."""
    package = Path(hamsweep.__file__).parent
    shutil.copytree(package, tmp_path / "hamsweep", ignore=shutil.ignore_patterns("__pycache__"))
    source = (package / "core" / "methods" / "fgsm_rs.py").read_text()
    new = source.replace('name = "fgsm_rs"', 'name = "fgsm_rs2"').replace(".fgsm_rs.", ".fgsm_rs2.")
    assert new.count("fgsm_rs2") == 2
    (tmp_path / "hamsweep" / "core" / "methods" / "fgsm_rs2.py").write_text(new)
    tests = Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _NEW_METHOD, str(tmp_path), str(tests)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["fgsm_rs2", "1", "True"]
