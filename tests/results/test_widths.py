"""Tables fit a terminal of 120 columns without cutting a number: ``results`` (the confirmed table
and the ranking), ``status`` and the live dashboard, each drawn at 80, 120 and 160 columns, every
cell that holds a number checked whole (``tests/cut_cells.py``; ``bench/table_widths.py`` prints the
same counts for any sweep folder).

The results and status come from a copy of ``conftest.confirmed_sweep``, a real sweep that searched
three knobs, widened to the six a HAM sweep searches at most (search_spaces/cifar100.yaml's five and
smoke.yaml's ham.loss_normalization): its spec lists them and its trials and state.json get a value
for each, of the longest form a table writes. The dashboard is drawn from a
synthetic CIFAR-100 sweep.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
from cut_cells import number_cells

from hamsweep import rundir
from hamsweep.keys import TRUNK
from hamsweep.launch import status_frame
from hamsweep.results import store as results
from hamsweep.results.tables import confirmed_table, results_table
from hamsweep.spec import SweepSpec, validate
from hamsweep.sweep.dashboard import (
    STATE_FILE,
    SweepState,
    TrialView,
    render,
    state_from_json,
    state_to_json,
)

WIDTHS = (80, 120, 160)
# the knobs confirmed_sweep does not search, each with its widest value: '.021', '10', 'batch'
EXTRA = {
    "ham.keep_easy_fraction": ({"uniform": [0.0, 0.5], "default": 0.3}, 0.0213),
    "ham.drop_step": ({"int": [1, "train.attack_steps"], "default": 3}, 10),
    "ham.loss_normalization": ({"choice": ["kept", "batch"], "default": "kept"}, "batch"),
}


@pytest.fixture(scope="module")
def sweep(
    confirmed_sweep: tuple[Path, subprocess.CompletedProcess],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, SweepSpec]:
    out = tmp_path_factory.mktemp("widths") / "out"
    shutil.copytree(confirmed_sweep[0], out, ignore=shutil.ignore_patterns("report", "ray"))
    data = rundir.read_spec(out)
    data["search"]["params"].update({k: space for k, (space, _) in EXTRA.items()})
    data["train"]["attack_steps"] = max(data["train"]["attack_steps"], 10)
    rundir.write_spec(out, data)
    trials = results.read_table(out, results.TRIALS)
    search = [role != TRUNK for role in trials.column("role").to_pylist()]
    for key, (_, value) in EXTRA.items():
        trials = trials.append_column(
            results.param_column(key), pa.array([value if s else None for s in search])
        )
    old = sorted((out / results.TRIALS).glob("*.parquet"))
    # the writer's own atomic part, then the old parts go
    results._write_part(out / results.TRIALS, trials)
    for path in old:
        path.unlink()
    state = state_from_json((out / STATE_FILE).read_text())
    for view in state.trials.values():
        if view.role != TRUNK and view.stage != "confirm":
            view.params.update({k: value for k, (_, value) in EXTRA.items()})
    (out / STATE_FILE).write_text(state_to_json(state))
    return out, validate(SweepSpec, data)


def _cut(renderable, width: int) -> list:
    cells = number_cells(renderable, width)
    assert cells, "no number cell found: the measure would pass vacuously"
    return [c for c in cells if c.cut]


@pytest.mark.parametrize("width", WIDTHS)
def test_results_tables_cut_no_number_from_120_columns(sweep, width):
    out, spec = sweep
    for table in (confirmed_table(out, spec), results_table(out, spec)):
        cut = _cut(table, width)
        if width >= 120:
            assert not cut, cut
    # the knobs: one column, abbreviated
    assert "τ=" in results_table(out, spec).columns[4]._cells[0].plain


def test_the_confirmed_table_shows_the_cost_per_seed_and_its_ratio_to_pgd_at(sweep):
    out, spec = sweep
    table = confirmed_table(out, spec)
    headers = [c.header for c in table.columns]
    # the fixture reserves CPUs: CPU-hours, not 0.00 GPU-hours
    assert headers[-2:] == ["CPU-h", "×PGD-AT"]
    hours, ratio = ([c.plain for c in table.columns[i]._cells] for i in (-2, -1))
    # the baseline first, then its configs
    assert ratio[0] == "—" and all(float(r) > 0 for r in ratio[1:])
    assert all(float(h) > 0 for h in hours)


@pytest.mark.parametrize("width", WIDTHS)
def test_status_cuts_no_number_from_120_columns(sweep, width):
    out, _ = sweep
    frame, _ = status_frame(out)
    cut = _cut(frame, width)
    if width >= 120:
        assert not cut, cut


def test_the_tables_list_the_knobs_with_a_legend(sweep):
    import io

    from rich.console import Console

    out, spec = sweep
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(confirmed_table(out, spec), results_table(out, spec))
    text = " ".join(console.export_text().split())
    configs = [
        label
        for (label,) in results.connect(out)
        .execute("SELECT DISTINCT label FROM confirm WHERE label <> 'PGD-AT'")
        .fetchall()
    ]
    # the confirmed configs' knobs, under the table
    assert all(f"{label} τ=" in text.split("configs: ")[1] for label in configs), text
    for key, symbol in (
        ("ham.discard_threshold", "τ"),
        ("ham.temperature", "T"),
        ("ham.warmup_epochs", "w"),
        ("ham.keep_easy_fraction", "ρ"),
        ("ham.drop_step", "M"),
        ("ham.loss_normalization", "norm"),
    ):
        assert f"{symbol} = {key}" in text
    assert "ρ=.021" in text and "M=10" in text and "norm=batch" in text


# ---- the dashboard, of a synthetic CIFAR-100 sweep ----
T0 = 1_700_000_000.0
CIFAR100 = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
)


def _cifar100_params(rng: random.Random) -> dict:
    return {
        "ham.discard_threshold": rng.uniform(0, 0.9),
        "ham.keep_easy_fraction": rng.uniform(0, 0.5),
        "ham.temperature": rng.choice([None, 0.5, 1.0, 2.0, 4.0]),
        "ham.drop_step": rng.randint(1, 10),
        "ham.warmup_epochs": rng.choice(range(20, 81, 5)),
        "ham.loss_normalization": rng.choice(["kept", "batch"]),
    }


def cifar100_state() -> SweepState:
    """A CIFAR-100 sweep three days in: the trunk, 20 trials in every status, the
    confirm stage running."""
    rng = random.Random(0)
    state = SweepState(
        name="cifar100",
        objective="worst_robust",
        num_samples=64,
        started=T0,
        now=T0 + 3 * 86400 + 5025,
        gpu_hours_budget=500,
        wall_hours_budget=72,
        confirm_trials=12,
        confirm_seeds=(1001, 1002, 1003),
    )
    trunk = TrialView(
        "5f3a9c21",
        {},
        120,
        status="running",
        epoch=97,
        objective=0.0712,
        best_objective=0.0833,
        best_epoch=90,
        mean_robust=0.2541,
        clean_mean=0.5312,
        role="trunk",
        gpu_seconds=3.1e5,
    )
    state.trials[trunk.trial] = trunk
    for i, status in enumerate(
        ["running"] * 6 + ["completed"] * 6 + ["stopped"] * 6 + ["failed"] * 2
    ):
        params, best = _cifar100_params(rng), rng.uniform(0.02, 0.16)
        reason = {
            "stopped": "ASHA at epoch 90",
            "failed": "diverged: train loss is nan at epoch 63, batch 211",
        }.get(status)
        view = TrialView(
            f"{rng.getrandbits(32):08x}",
            params,
            120,
            number=i + 3,
            status=status,
            epoch=120 if status == "completed" else rng.randint(61, 119),
            objective=best - 0.01,
            best_objective=best,
            best_epoch=100,
            mean_robust=best + 0.2,
            clean_mean=best + 0.45,
            class_robust=tuple(rng.uniform(0, 0.6) for _ in CIFAR100),
            class_names=CIFAR100,
            stop_reason=reason,
            trunk=trunk.trial,
            forked_at=params["ham.warmup_epochs"],
            gpu_seconds=rng.uniform(1e4, 2e5),
        )
        state.trials[view.trial] = view
    state.sampler_best = (7, 0.1523, _cifar100_params(rng))
    for j, label in enumerate(["PGD-AT", "#7", "#12", "#3"]):
        for seed in state.confirm_seeds:
            view = TrialView(
                f"c{j}{seed:06d}",
                {"train.seed": seed},
                120,
                number=None if label == "PGD-AT" else int(label[1:]),
                status="running",
                epoch=rng.randint(1, 119),
                best_objective=rng.uniform(0.02, 0.16),
                stage="confirm",
                role="trunk" if label == "PGD-AT" else "search",
                seed=seed,
                label=label,
                forked_at=None if label == "PGD-AT" else 60,
                trunk=None if label == "PGD-AT" else trunk.trial,
            )
            state.trials[view.trial] = view
    state.waiting = [("5f3a9c21", 100), ("5f3a9c21", 105)]
    return state


@pytest.mark.parametrize("width", WIDTHS)
def test_the_dashboard_cuts_no_number_from_120_columns(width):
    cut = _cut(render(cifar100_state()), width)
    if width >= 120:
        assert not cut, cut
