"""Bad input, widened (issue 13, part 6): spec files, cluster profiles, CLI arguments and folders,
each refused in one line naming what to fix, exit code 2, nothing started or written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, TINY, hamsweep, write_spec
from pydantic import BaseModel

from hamsweep.spec import SweepSpec

SMOKE = str(REPO / "search_spaces" / "smoke.yaml")


def _spec(tmp: Path, **changes) -> str:
    return str(write_spec(tmp / "s.yaml", **changes))


def _raw(tmp: Path, text: str) -> str:
    (tmp / "raw.yaml").write_text(text)
    return str(tmp / "raw.yaml")


def _with_params(tmp: Path, params: dict) -> str:
    return _spec(tmp, search={"params": params})


def _profile(tmp: Path, **fields) -> str:
    data = yaml.safe_load((REPO / "cluster" / "slurm.yaml").read_text())
    data.update(fields)
    (tmp / "p.yaml").write_text(yaml.safe_dump(data))
    return str(tmp / "p.yaml")


def _folder(tmp: Path, kind: str) -> str:
    out = tmp / "folder"
    out.mkdir()
    if kind == "other tool":
        (out / "wandb-summary.json").write_text("{}")
    elif kind == "spec only":
        (out / "spec.yaml").write_text(yaml.safe_dump(TINY))
    elif kind == "newer schema":
        (out / "spec.yaml").write_text(yaml.safe_dump(TINY))
        (out / "trials").mkdir()
        pq.write_table(
            pa.table({"trial": ["t"]}).replace_schema_metadata({"hamsweep.schema_version": "99"}),
            out / "trials" / "part-1-1.parquet",
        )
    return str(out)


# (case, argv built in a temporary folder, what the line must say)
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("missing spec file", lambda t: ["validate", str(t / "nope.yaml")], "no such spec file"),
    ("not YAML", lambda t: ["validate", _raw(t, "train: [1, 2\n")], "is not valid YAML"),
    (
        "a list, not sections",
        lambda t: ["validate", _raw(t, "- 1\n- 2\n")],
        "must be a mapping of sections",
    ),
    ("unknown section", lambda t: ["validate", _spec(t, trian={"epochs": 1})], "trian"),
    ("unknown key", lambda t: ["validate", _spec(t, train={"epoch": 3})], "train.epoch"),
    (
        "eps in pixel levels",
        lambda t: ["validate", _spec(t, train={"eps": 8})],
        "did you mean 8/255",
    ),
    (
        "M larger than K",
        lambda t: ["validate", _spec(t, ham={"drop_step": 9}, search={"params": {}})],
        "drop_step",
    ),
    (
        "unknown objective",
        lambda t: ["validate", _spec(t, objective={"metric": "accuracy"})],
        "objective.metric",
    ),
    (
        "unknown sampler",
        lambda t: ["validate", _spec(t, search={"sampler": "bayes"})],
        "search.sampler",
    ),
    ("unknown scheduler", lambda t: ["validate", _spec(t, scheduler="hyperband")], "scheduler"),
    (
        "grace period 0",
        lambda t: ["validate", _spec(t, scheduler={"grace_period": 0})],
        "grace_period",
    ),
    ("1.5 GPUs", lambda t: ["validate", _spec(t, resources={"gpu": 1.5})], "resources.gpu"),
    (
        "a zero budget",
        lambda t: ["validate", _spec(t, budget={"gpu_hours": 0})],
        "budget.gpu_hours",
    ),
    ("negative top_k", lambda t: ["validate", _spec(t, confirm={"top_k": -1})], "confirm.top_k"),
    (
        "confidence in percent",
        lambda t: ["validate", _spec(t, confirm={"confidence": 95})],
        "confirm.confidence",
    ),
    (
        "final_eval and confirm",
        lambda t: ["validate", _spec(t, final_eval={"top_k": 1})],
        "final_eval",
    ),
    (
        "unknown searched key",
        lambda t: ["validate", _with_params(t, {"ham.tau": {"uniform": [0, 1], "default": 0}})],
        "search.params.ham.tau",
    ),
    (
        "bound names no key",
        lambda t: [
            "validate",
            _with_params(t, {"ham.drop_step": {"int": [1, "train.k"], "default": 1}}),
        ],
        "train.k",
    ),
    (
        "two distributions",
        lambda t: [
            "validate",
            _with_params(t, {"train.lr": {"uniform": [0, 1], "choice": [1], "default": 1}}),
        ],
        "exactly one of",
    ),
    (
        "default not a choice",
        lambda t: [
            "validate",
            _with_params(t, {"ham.temperature": {"choice": [1.0, 2.0], "default": 3.0}}),
        ],
        "not one of the choices",
    ),
    (
        "loguniform from 0",
        lambda t: [
            "validate",
            _with_params(t, {"train.lr": {"loguniform": [0, 0.1], "default": 0.05}}),
        ],
        "loguniform needs low > 0",
    ),
    (
        "default outside its range",
        lambda t: [
            "validate",
            _with_params(t, {"train.lr": {"uniform": [0.1, 0.2], "default": 0.05}}),
        ],
        "outside",
    ),
    (
        "no default",
        lambda t: ["validate", _with_params(t, {"train.lr": {"uniform": [0.1, 0.2]}})],
        "needs a default",
    ),
    ("unknown dataset", lambda t: ["validate", _spec(t, data={"name": "mnist"})], "data.name"),
    (
        "tiny image folder images",
        lambda t: ["validate", _spec(t, data={"name": "imagefolder", "image_size": 4})],
        "image_size",
    ),
    (
        "validation fraction 1",
        lambda t: ["validate", _spec(t, data={"val_fraction": 1.0})],
        "val_fraction",
    ),
    ("unknown model", lambda t: ["validate", _spec(t, model={"name": "vit"})], "model.name"),
    (
        "warm-up past the epochs",
        lambda t: ["validate", _spec(t, ham={"warmup_epochs": 9})],
        "warmup_epochs",
    ),
    (
        "select_by against the objective",
        lambda t: ["validate", _spec(t, eval={"select_by": "worst_robust"})],
        "eval.select_by",
    ),
    (
        "CMA-ES with two objectives",
        lambda t: [
            "validate",
            _spec(
                t,
                objective={"metric": ["worst_robust", "mean_robust"]},
                search={"sampler": "cmaes"},
            ),
        ],
        "search.sampler",
    ),
    (
        "max_epochs past the epochs",
        lambda t: ["validate", _spec(t, scheduler={"max_epochs": 9})],
        "scheduler.max_epochs",
    ),
    (
        "missing CIFAR files",
        lambda t: [
            "run",
            _spec(t, data={"name": "cifar10", "root": str(t / "data")}),
            "--out",
            str(t / "out"),
        ],
        "cifar-10-batches-py",
    ),
    (
        "missing image folder",
        lambda t: [
            "run",
            _spec(t, data={"name": "imagefolder", "root": str(t / "data")}),
            "--out",
            str(t / "out"),
        ],
        "train/ not found",
    ),
    ("--set without =", lambda t: ["train", SMOKE, "--set", "ham.drop_step"], "expected KEY=VALUE"),
    (
        "--set unknown key",
        lambda t: ["train", SMOKE, "--set", "ham.tau=1", "--out", str(t / "out")],
        "ham.tau",
    ),
    (
        "--set a searched key",
        lambda t: ["run", SMOKE, "--set", "ham.drop_step=2", "--out", str(t / "out")],
        "is searched",
    ),
    # each fair-AT method's knobs (issue 20): a negative step, a threshold outside [0, 1], an option
    # that does not exist
    *[
        (
            f"{key} out of range",
            lambda t, key=key, value=value: [
                "run",
                SMOKE,
                "--set",
                f"train.method={key.split('.')[0]}",
                "--set",
                f"{key}={value}",
                "--out",
                str(t / "out"),
            ],
            says,
        )
        for key, value, says in (
            ("frl.alpha_nat", "-0.1", "frl.alpha_nat: alpha_nat cannot be negative"),
            ("cfa.fawa_threshold", "1.2", "cfa.fawa_threshold: fawa_threshold must be in [0, 1]"),
            ("wat.eta", "-0.1", "wat.eta: eta must be finite and > 0"),
            ("dafa.weight_rule", "own", "dafa.weight_rule: Input should be 'transfer' or"),
            ("faal.divergence", "chi2", "faal.divergence: Input should be 'kl_uniform_q' or"),
        )
    ],
    (
        "--resume of an empty folder",
        lambda t: ["run", SMOKE, "--resume", str(t)],
        "nothing to resume",
    ),
    (
        "--out that is not empty",
        lambda t: ["run", SMOKE, "--out", _folder(t, "other tool")],
        "already exists and is not empty",
    ),
    (
        "more CPUs than the machine",
        lambda t: ["run", _spec(t, resources={"cpu": 4096}), "--out", str(t / "out")],
        "resources.cpu",
    ),
    (
        "resume a folder of another tool",
        lambda t: ["resume", _folder(t, "other tool")],
        "spec.yaml",
    ),
    (
        "resume a newer hamsweep's folder",
        lambda t: ["resume", _folder(t, "newer schema")],
        "newer hamsweep",
    ),
    (
        "results of a folder without trials",
        lambda t: ["results", _folder(t, "spec only")],
        "holds no trials yet",
    ),
    (
        "results --format xml",
        lambda t: ["results", _folder(t, "spec only"), "--format", "xml"],
        "--format",
    ),
    (
        "query of a folder without tables",
        lambda t: ["query", _folder(t, "spec only"), "SELECT 1"],
        "holds no results tables",
    ),
    (
        "report of a folder without trials",
        lambda t: ["report", _folder(t, "spec only")],
        "holds no trials yet",
    ),
    (
        "status of a folder of another tool",
        lambda t: ["status", _folder(t, "other tool")],
        "spec.yaml",
    ),
    (
        "missing cluster profile",
        lambda t: ["validate", SMOKE, "--cluster", str(t / "nope.yaml")],
        "nope.yaml",
    ),
    (
        "profile with an unknown key",
        lambda t: ["validate", SMOKE, "--cluster", _profile(t, partitoin="gpu")],
        "partitoin",
    ),
    (
        "profile of an unknown kind",
        lambda t: ["validate", SMOKE, "--cluster", _profile(t, kind="pbs")],
        "kind",
    ),
    (
        "trials asking more GPUs than a node has",
        lambda t: [
            "validate",
            _spec(t, resources={"gpu": 2}),
            "--cluster",
            _profile(t, gpus_per_node=0),
        ],
        "gpus_per_node",
    ),
    (
        "validate: missing CIFAR files",
        lambda t: ["validate", _spec(t, data={"name": "cifar10", "root": str(t / "data")})],
        "data.root",
    ),
    (
        "validate: missing image folder",
        lambda t: ["validate", _spec(t, data={"name": "imagefolder", "root": str(t / "data")})],
        "train/ not found",
    ),
    (
        "validate --set a searched key",
        lambda t: ["validate", SMOKE, "--set", "ham.drop_step=2"],
        "is searched",
    ),
    (
        "validate --out that is not empty",
        lambda t: ["validate", SMOKE, "--out", _folder(t, "other tool")],
        "already exists and is not empty",
    ),
    (
        "validate: more CPUs than this machine, run here",
        lambda t: [
            "validate",
            _spec(t, resources={"cpu": 4096}),
            "--cluster",
            str(REPO / "cluster" / "local.yaml"),
        ],
        "resources.cpu",
    ),
    (
        "cancel a folder that is no sweep folder",
        lambda t: ["cancel", _folder(t, "other tool")],
        "holds no spec.yaml",
    ),
    (
        "evaluate a folder that is no sweep folder",
        lambda t: ["evaluate", _folder(t, "other tool")],
        "holds no spec.yaml",
    ),
]


@pytest.mark.parametrize(("case", "argv", "says"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(case, argv, says, tmp_path):
    args = argv(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    proc = hamsweep(*args)
    assert proc.returncode == 2, (case, proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("hamsweep: error: ") and says in lines[0], lines[0]
    assert sorted(p for p in tmp_path.rglob("*")) == before, "something was written"


def test_every_command_has_a_bad_input_case(tmp_path):
    """The commands are read from the CLI itself: a new command fails here until a case above
    feeds it bad input."""
    from hamsweep.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    covered = set()
    for i, (_, argv, _) in enumerate(CASES):
        (tmp_path / str(i)).mkdir()
        covered.add(argv(tmp_path / str(i))[0])
    assert commands - covered == set(), f"commands no case above runs: {commands - covered}"


def _sections() -> dict[str, type[BaseModel]]:
    """The spec's sections, read from the spec model: a section a method adds is tested too."""
    fields = SweepSpec.model_fields.items()
    return {
        name: f.annotation
        for name, f in fields
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    }


@pytest.mark.parametrize("section", list(_sections()))
def test_an_unknown_key_in_any_section_is_named_with_the_valid_ones(section, tmp_path):
    spec = _spec(tmp_path, **{section: {"bogus_key": 1}})
    before = sorted(tmp_path.rglob("*"))
    proc = hamsweep("validate", spec)
    valid = ", ".join(_sections()[section].model_fields)
    assert (proc.returncode, proc.stderr.strip()) == (
        2,
        f"hamsweep: error: {spec}: {section}.bogus_key: unknown key 'bogus_key'; "
        f"valid keys here are {valid}",
    )
    assert sorted(tmp_path.rglob("*")) == before, "something was written"
