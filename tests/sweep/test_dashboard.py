"""The dashboard's pure part: frames rendered to text, event lines, and the choice of view."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest
from rich.console import Console

from hamsweep.sweep.dashboard import (
    EVENTS,
    LineView,
    LiveView,
    SweepState,
    TrialView,
    event_line,
    make_view,
    render,
)

T0 = 1_700_000_000.0  # a fixed start time, in seconds: frames are pure functions of the state


def _state(**kw) -> SweepState:
    base = {
        "name": "cifar10-ham",
        "objective": "worst_robust",
        "num_samples": 10,
        "started": T0,
        "now": T0 + 83,
    }
    return SweepState(**{**base, **kw})


def _trial(tid: str, status: str = "running", **kw) -> TrialView:
    base = {"params": {"train.lr": 0.05123, "ham.temperature": None}, "epochs": 6, "status": status}
    return TrialView(trial=tid, **{**base, **kw})


def _add(state: SweepState, *views: TrialView) -> SweepState:
    state.trials.update({v.trial: v for v in views})
    return state


def _text(state: SweepState, **kw) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(render(state, **kw))
    return console.export_text()


def _sweep() -> SweepState:
    """One trial in each status but pending, two of them scored."""
    return _add(
        _state(gpu_hours_budget=10, wall_hours_budget=2),
        _trial(
            "aaaa0000",
            number=0,
            epoch=2,
            objective=0.41,
            best_objective=0.412,
            best_epoch=2,
            gpu_seconds=1800,
            device_seconds=1800,
        ),
        _trial(
            "bbbb1111",
            "completed",
            number=1,
            epoch=6,
            best_objective=0.3,
            gpu_seconds=1800,
            device_seconds=1800,
        ),
        _trial(
            "cccc2222",
            "stopped",
            number=2,
            epoch=2,
            best_objective=0.2,
            stop_reason="ASHA at epoch 2",
        ),
        _trial("dddd3333", "failed", number=3, epoch=3, stop_reason="diverged: loss is nan"),
    )


def test_header_counts_elapsed_and_budgets():
    text = _text(_sweep())
    assert "sweep cifar10-ham" in text and "elapsed 0:01:23" in text
    # 6 of the 10 samples have no trial yet: they count as pending
    assert "1 running, 1 done, 1 stopped by ASHA, 1 failed, 6 pending, of 10" in text
    assert "GPU-hours used 1.00 of budget 10" in text
    assert "wall-clock 0:01:23 of budget 2:00:00" in text


def test_header_without_budget_shows_only_use():
    text = _text(_add(_state(), _trial("aaaa0000", gpu_seconds=900, device_seconds=900)))
    assert "GPU-hours used 0.25" in text and "budget" not in text


def test_a_sweep_without_gpus_counts_cpu_hours_and_shows_a_gpu_budget_apart():
    state = _add(_state(gpu_hours_budget=2, device="cpu"), _trial("aaaa0000", device_seconds=1800))
    text = _text(state)
    assert "CPU-hours used 0.50; GPU-hours 0.00 of budget 2" in text


def test_params_are_compact_and_a_missing_temperature_is_uniform():
    state = _add(
        _state(),
        _trial("aaaa0000", params={"train.lr": 0.05123, "ham.temperature": None, "ham.beta": None}),
    )
    text = _text(state)
    row = next(line for line in text.splitlines() if "aaaa0000" in line)
    assert "lr=.051 T=u beta=—" in row  # one knobs column: short names, two significant digits
    # the legend
    assert "knobs: lr = train.lr, T = ham.temperature (u: uniform weights), beta = ham.beta" in text


def test_knob_names_are_the_papers_symbols_else_the_field():
    from hamsweep.sweep.dashboard import knob_names

    keys = [
        "ham.discard_threshold",
        "ham.keep_easy_fraction",
        "ham.temperature",
        "ham.drop_step",
        "ham.warmup_epochs",
        "ham.loss_normalization",
        "train.lr",
        "model.width",
        "data.width",
        "x.norm",
    ]
    assert list(knob_names(keys).values()) == [
        "τ",
        "ρ",
        "T",
        "M",
        "w",
        "norm",
        "lr",
        "model.width",
        "data.width",
        "x.norm",
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.494, ".49"),
        (0.0094, ".0094"),
        (1e-4, "1.0e-4"),
        (0.0, "0"),
        (-0.3, "-.3"),
        (2.0, "2"),
        (12.5, "12.5"),
        (1234.5, "1234"),
        (10, "10"),
        ("batch", "batch"),
        (None, "—"),
    ],
)
def test_knob_values_are_short(value, shown):
    from hamsweep.sweep.dashboard import knob_names, knobs_text

    assert knobs_text({"train.lr": value}, knob_names(["train.lr"])) == f"lr={shown}"


def test_rows_are_limited_and_the_rest_counted():
    state = _add(
        _state(num_samples=30),
        *(_trial(f"t{i:07d}", "completed", best_objective=i / 100) for i in range(25)),
    )
    text = _text(state, max_rows=20)
    assert sum(f"t{i:07d}" in text for i in range(25)) == 20
    assert "… 5 more" in text
    assert "t0000024" in text and "t0000000" not in text  # the best finished ones are kept


def test_running_trials_come_first_then_finished_best_first():
    text = _text(_sweep())
    order = [text.index(t) for t in ("aaaa0000", "bbbb1111", "cccc2222", "dddd3333")]
    assert order == sorted(order)
    state = _add(_state(), _trial("done0000", "completed", best_objective=0.9), _trial("run00000"))
    text = _text(state)
    assert text.index("run00000") < text.index("done0000")


def test_best_trial_shows_its_weakest_classes_lowest_first():
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog")
    robust = (0.3, 0.2, 0.5, 0.1, 0.9, 0.4, 0.6)
    best = _trial(
        "best0000",
        number=7,
        best_objective=0.5,
        best_epoch=4,
        class_names=names,
        class_robust=robust,
    )
    text = _text(_add(_state(), _trial("other000", best_objective=0.2), best))
    panel = text[text.index("best trial so far") :]
    # percent, as in every table
    assert "best0000 (#7): worst_robust 50.0% at epoch 4 (validation)" in panel
    assert "lr=0.0512 temperature=uniform" in panel
    lines = [line for line in panel.splitlines() if "%" in line and "worst_robust" not in line]
    expected = [
        ("cat", "10.0%"),
        ("automobile", "20.0%"),
        ("airplane", "30.0%"),
        ("dog", "40.0%"),
        ("bird", "50.0%"),
    ]
    assert len(lines) == 5
    for line, (name, pct) in zip(lines, expected, strict=True):
        assert name in line and pct in line
    assert "deer" not in panel and "frog" not in panel


def test_failed_trial_shows_its_reason():
    text = _text(_sweep())
    row = next(line for line in text.splitlines() if "dddd3333" in line)
    assert "failed" in row and "diverged: loss is nan" in row


def test_sampler_best_is_shown_when_set():
    assert "sampler" not in _text(_sweep())
    text = _text(
        _add(
            _state(sampler_best=(4, 0.4321, {"train.lr": 0.1, "ham.temperature": None})),
            _trial("aaaa0000"),
        )
    )
    assert "trial #4: worst_robust 43.2%" in text and "lr=0.1 temperature=uniform" in text


def test_empty_state_renders():
    text = _text(_state())
    assert "0 running, 0 done, 0 stopped by ASHA, 0 failed, 10 pending, of 10" in text
    assert "no trials started yet" in text and "best trial" not in text


def test_render_never_reads_the_clock(monkeypatch):
    def no_clock() -> float:
        raise AssertionError("render read the clock")

    monkeypatch.setattr(time, "time", no_clock)
    monkeypatch.setattr(time, "monotonic", no_clock)
    assert _text(_sweep()) == _text(_sweep())


def test_render_rejects_a_row_limit_below_one():
    with pytest.raises(ValueError, match="max_rows must be at least 1 but got 0"):
        render(_state(), max_rows=0)


def test_state_counts_gpu_hours_and_best():
    state = _sweep()
    assert state.counts() == {"pending": 0, "running": 1, "completed": 1, "stopped": 1, "failed": 1}
    assert state.gpu_hours() == 1.0
    assert state.best().trial == "aaaa0000"
    # a diverged trial
    state.trials["nan00000"] = _trial("nan00000", "failed", best_objective=float("nan"))
    assert state.best().trial == "aaaa0000"
    assert _state().best() is None


def test_unknown_status_is_named_with_the_valid_ones():
    state = _add(_state(), _trial("aaaa0000", "paused"))
    with pytest.raises(
        ValueError,
        match=r"trial aaaa0000: status must be one of pending, running.*but got 'paused'",
    ):
        state.counts()


_VIEW = {
    "number": 3,
    "epoch": 2,
    "objective": 0.412,
    "best_objective": 0.412,
    "mean_robust": 0.51,
    "clean_mean": 0.83,
}
_LINES = {
    "start": "[0:01:23] trial 3 a1b2c3d4 start lr=0.0512 temperature=uniform",
    "epoch": (
        "[0:01:23] trial 3 a1b2c3d4 epoch 2/6 worst_robust 41.2% (best 41.2%) "
        "mean 51.0% clean 83.0% running"
    ),
    "completed": (
        "[0:01:23] trial 3 a1b2c3d4 epoch 2/6 worst_robust 41.2% (best 41.2%) "
        "mean 51.0% clean 83.0% completed"
    ),
    "stopped": (
        "[0:01:23] trial 3 a1b2c3d4 epoch 2/6 worst_robust 41.2% (best 41.2%) "
        "mean 51.0% clean 83.0% stopped: ASHA at epoch 2"
    ),
    "failed": (
        "[0:01:23] trial 3 a1b2c3d4 epoch 2/6 worst_robust 41.2% (best 41.2%) "
        "mean 51.0% clean 83.0% failed: ASHA at epoch 2"
    ),
}


@pytest.mark.parametrize("event", EVENTS)
def test_event_line(event):
    view = _trial("a1b2c3d4", stop_reason="ASHA at epoch 2", **_VIEW)
    assert event_line(_state(), view, event) == _LINES[event]


def test_event_line_before_any_epoch_and_without_a_reason():
    view = _trial("a1b2c3d4", "failed")
    assert (
        event_line(_state(), view, "failed")
        == "[0:01:23] trial a1b2c3d4 epoch 0/6 failed: no reason given"
    )


def test_event_line_rejects_an_unknown_event():
    with pytest.raises(ValueError, match=r"event must be one of start, epoch.*but got 'paused'"):
        event_line(_state(), _trial("a1b2c3d4"), "paused")


@pytest.mark.parametrize(("terminal", "kind"), [(True, LiveView), (False, LineView)])
def test_make_view_picks_by_terminal(terminal, kind):
    assert type(make_view(Console(force_terminal=terminal, file=io.StringIO()))) is kind


def test_line_view_prints_one_plain_line_per_event():
    out = io.StringIO()
    # narrower than any line: no wrapping
    view = make_view(Console(force_terminal=False, file=out, width=40))
    state = _state()
    # user text, not markup
    trial = _trial("a1b2c3d4", stop_reason="[bold]diverged[/bold] :x:", **_VIEW)
    view.update(state)
    for event in EVENTS:
        view.event(state, trial, event)
    view.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == len(EVENTS)
    assert lines[1] == _LINES["epoch"]
    assert lines[-1].endswith("failed: [bold]diverged[/bold] :x:")


def test_live_view_leaves_the_final_frame():
    out = io.StringIO()
    view = LiveView(Console(force_terminal=True, file=out, width=160))
    first = _add(_state(), _trial("first000"))
    view.event(first, first.trials["first000"], "start")
    assert out.getvalue() == ""  # nothing is drawn before the first update
    view.update(first)
    view.update(_add(_state(now=T0 + 3723), _trial("final000", "completed")))
    view.close()
    view.close()  # closing twice is harmless
    text = out.getvalue()
    last = text.rindex("elapsed 1:02:03")
    assert text.rindex("elapsed 0:01:23") < last  # both frames were drawn, the final one last
    assert "final000" in text[last:] and "first000" not in text[last:]


def test_import_pulls_in_neither_torch_nor_ray():
    code = (
        "import sys, hamsweep.sweep.dashboard; "
        "bad = {'torch', 'ray', 'optuna'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_trunk_is_the_pgd_at_baseline_row_with_its_waiting_proposals():
    state = _add(
        _state(waiting=[("tttt0000", 4), ("tttt0000", 2)]),
        _trial("aaaa0000", number=0, epoch=3, trunk="tttt0000", forked_at=2, best_objective=0.9),
        _trial("tttt0000", params={}, epochs=6, epoch=2, role="trunk", best_objective=0.95),
    )
    text = _text(state)
    assert (
        "shared warm-up tttt0000 (PGD-AT baseline): epoch 2/6, running; 1 trials forked from it; "
        "2 waiting for its epochs 2, 4"
    ) in text
    rows = [ln for ln in text.splitlines() if "tttt0000" in ln or "aaaa0000" in ln]
    # the baseline row comes first in the table
    assert "PGD-AT" in rows[1] and "tttt0000" in rows[1]
    # the trunk is not one of the samples
    assert "trials: 1 running, 0 done" in text and "9 pending, of 10" in text
    # the baseline is not the best *search* trial
    assert "best trial so far" in text and "aaaa0000 (#0)" in text
    fork = event_line(state, state.trials["aaaa0000"], "start")
    assert fork.endswith("(forks tttt0000 after epoch 2)")
    assert event_line(state, state.trials["tttt0000"], "epoch").startswith(
        "[0:01:23] trial PGD-AT tttt0000 epoch 2/6"
    )


def test_the_confirm_stage_is_a_phase_of_its_own():
    confirm = {"stage": "confirm", "params": {"train.seed": 1}}
    state = _add(
        _state(confirm_trials=3, confirm_seeds=(1,), waiting=[("cccc0000", 2)]),
        _trial("aaaa0000", "completed", number=4, epoch=6, best_objective=0.4),
        _trial(
            "cccc0000", **confirm, role="trunk", label="PGD-AT", seed=1, epoch=3, best_objective=0.5
        ),
        _trial("dddd0000", "pending", **confirm, label="#4", seed=1, number=4),
        _trial(
            "eeee0000",
            "completed",
            **confirm,
            label="#4",
            seed=2,
            number=4,
            epoch=6,
            best_objective=0.45,
        ),
    )
    text = _text(state)
    assert "confirm stage: 1 of 3 trials done (train.seed 1)" in text
    assert "1 waiting for their seed's warm-up epoch" in text
    rows = [
        ln
        for ln in text.splitlines()
        if ln.strip().startswith(("│ #4", "#4", "PGD-AT")) or " #4 " in ln
    ]
    assert any("#4" in r and "6/6" in r and "45.0" in r and "completed" in r for r in rows), rows
    # the confirm stage is not one of the samples
    assert "trials: 0 running, 1 done" in text and "9 pending, of 10" in text
    # a seed's trunk is drawn in the confirm panel, not as the search's
    assert "shared warm-up cccc0000" not in text
    # the search's table
    header = next(
        ln for ln in text.splitlines() if "trial" in ln and "epoch" in ln and "status" in ln
    )
    legend = next(ln for ln in text.splitlines() if ln.startswith("knobs:"))
    # the search's knobs, not the confirm stage's seed
    assert "seed" not in header + legend and "lr = train.lr" in legend
    line = event_line(state, state.trials["eeee0000"], "completed")
    assert line.startswith("[0:01:23] confirm trial #4 seed 2 eeee0000 epoch 6/6")
    from hamsweep.sweep.dashboard import state_from_json, state_to_json

    assert state_from_json(state_to_json(state)) == state


def test_a_comparisons_budget_in_hours_shows_each_methods_search_spend():
    """SweepState.method_spend: own device-seconds, the running trials' too, and once per method
    the trunk warm-up as far as its latest fork; the header shows it against method_hours."""
    trunk = TrialView(
        trial="trunk000",
        params={},
        epochs=8,
        role="trunk",
        epoch=8,
        device_seconds=80.0,
        status="completed",
    )
    faal = [
        _trial(
            f"faal000{i}",
            status="completed",
            params={"train.method": "faal"},
            epochs=8,
            epoch=8,
            forked_at=w,
            trunk="trunk000",
            device_seconds=6.0,
        )
        for i, w in enumerate((6, 7))
    ]
    trades = [
        _trial(
            "trades00",
            status="completed",
            params={"train.method": "trades"},
            epochs=8,
            epoch=8,
            device_seconds=40.0,
        ),
        _trial(
            "trades01",
            status="running",
            params={"train.method": "trades"},
            epochs=8,
            epoch=3,
            device_seconds=15.0,
        ),
    ]
    state = _add(_state(method_hours_budget=0.05), trunk, *faal, *trades)
    spend = state.method_spend()
    # FAAL: 2 x 6 s own, and the trunk's 10 s an epoch up to its latest fork (7), once
    # (seconds, an epoch, ahead, trials, running)
    assert spend["faal"] == (12.0 + 70.0, 12.0 / 3, 0, 2, 0)
    assert spend["trades"] == (55.0, 55.0 / 11, 5, 2, 1)  # 5 epochs ahead of the running one
    assert "search per method, of 0.05 each: faal 0.0228 (2 trials), trades 0.0153 (2 trials)" in (
        _text(state)
    )
