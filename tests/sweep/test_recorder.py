"""The Recorder split by job (issue 19, part 4): each job alone, without Ray where the job needs
none, and the Recorder as Tune pickles it, by this release and by the one before the split
(``fixtures/recorder_8b70c57.*``, made with 8b70c57: see ``_old_held``)."""

from __future__ import annotations

import os
import pickle
import signal
import time
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import epoch_record, tmpfs, write_spec

from hamsweep.results import store as results
from hamsweep.spec import load_spec
from hamsweep.sweep.count import confirm_trials, trial_count
from hamsweep.sweep.dashboard import STATE_FILE, SweepState, TrialView
from hamsweep.sweep.recorder._book import Clock, TrialBook
from hamsweep.sweep.recorder._budget import Budget
from hamsweep.sweep.recorder._confirm import ConfirmSink
from hamsweep.sweep.recorder._disk_watch import DiskWatch
from hamsweep.sweep.recorder._feed import DashboardFeed
from hamsweep.sweep.recorder._state import StateFile
from hamsweep.sweep.recorder._writer import RowWriter, param_types

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ["c0", "c1"]


def _spec(tmp_path: Path, **changes: dict):
    return load_spec(write_spec(tmp_path / "spec.yaml", **changes))


def _state(**kw) -> SweepState:
    return SweepState(name="s", objective="mean_robust", num_samples=2, started=0.0, now=0.0, **kw)


# ---- the writer ----
def test_writer_rows_read_back(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    writer = RowWriter(spec, out)
    view = TrialView(trial="t1", params={"train.lr": 0.05}, epochs=4, number=0, epoch=1)
    view.status, view.best_objective = "running", 0.25
    clock = Clock(started=1000.0, before=10.0)
    writer.epoch("t1", epoch_record(1).to_dict(), NAMES)
    writer.trial(view, clock, None, now=2000.0)
    view.status = "completed"  # a second row of the trial replaces the first
    writer.trial(view, clock, None, now=2000.0)
    writer.flush()

    con = results.connect(out)
    assert con.execute(
        "SELECT trial, status, number, wall_seconds, best_objective, train_lr FROM trials"
    ).fetchall() == [("t1", "completed", 0, 10.0, 0.25, 0.05)]
    epochs = results.read_table(out, results.EPOCHS).to_pylist()
    assert [(r["trial"], r["epoch"]) for r in epochs] == [("t1", 1)]
    classes = con.execute(
        "SELECT class_name, correct FROM classes WHERE attack = 'pgd20' ORDER BY class_id"
    ).fetchall()
    assert classes == [("c0", 3), ("c1", 1)]


def test_writer_types_of_choices() -> None:
    from hamsweep.spec import Distribution

    types = param_types(
        {
            "a": Distribution(choice=[True, False], default=True),
            "b": Distribution(choice=[1, 2, None], default=1),
            "c": Distribution(choice=[1, 2.5], default=1),
            "d": Distribution(choice=["x", "y"], default="x"),
            "e": Distribution(uniform=[0.0, 1.0], default=0.5),
        }
    )
    assert types == {
        "a": pa.bool_(),
        "b": pa.int64(),
        "c": pa.float64(),
        "d": pa.string(),
        "e": pa.float64(),
    }


# ---- the budget ----
def test_budget_stops_at_the_gpu_hours(tmp_path: Path) -> None:
    spec = _spec(tmp_path, budget={"gpu_hours": 1.0})
    budget, state = Budget(spec.budget), _state()
    state.trials["t"] = TrialView(trial="t", params={}, epochs=1, gpu_seconds=3599.0)
    assert not budget.spent(state) and budget.hit is None
    state.trials["t"].gpu_seconds = 3600.0
    assert budget.spent(state)
    assert budget.hit == "budget: 1 GPU-hours reached"


def test_budget_stops_at_the_wall_hours(tmp_path: Path) -> None:
    spec = _spec(tmp_path, budget={"wall_hours": 0.5})
    budget = Budget(spec.budget)
    assert not budget.spent(_state())
    late = _state()
    late.now = 1800.0
    assert budget.spent(late) and budget.hit == "budget: 0.5 wall-clock hours reached"
    assert not Budget(_spec(tmp_path).budget).spent(late)  # no budget: never


# ---- the disk watch ----
@pytest.fixture
def small(tmp_path: Path):
    yield from tmpfs(tmp_path / "small", 8)


def test_disk_watch_on_a_filling_tmpfs(small: Path) -> None:
    watch = DiskWatch(small, None, keep_free=4 * 1024**2)
    assert watch.low() is None and not watch.check(at_once=True)
    (small / "fill").write_bytes(b"\0" * 5 * 1024**2)
    assert not watch.check()  # looked at less than a second ago: not yet
    assert watch.check(at_once=True)
    assert str(watch.full).startswith(f"--out: {small}: ")
    assert f"continue with: hamsweep resume {small}" in str(watch.full)
    assert watch.must_stop_now()  # no handler of Tune's here: the stopper must end the run


def test_disk_watch_guard_stops_on_enospc_with_tunes_signal(small: Path) -> None:
    heard: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: heard.append(signum))
    try:
        watch = DiskWatch(small, None, keep_free=0)
        watch.guard(lambda: (small / "big").write_bytes(b"\0" * 16 * 1024**2))
        time.sleep(0.1)  # the signal is delivered to the main thread at its next bytecode
        assert heard == [signal.SIGUSR1]
        assert "no space left on its disk" in str(watch.full)
        assert not watch.must_stop_now()  # Tune's handler stops it gracefully
        with pytest.raises(PermissionError):  # anything but a full disk is raised
            watch.guard(lambda: (_ for _ in ()).throw(PermissionError(13, "denied")))
    finally:
        signal.signal(signal.SIGUSR1, old)


# ---- the state file ----
def test_state_file_written_atomically_and_read_back(tmp_path: Path) -> None:
    state = _state(confirm_seeds=(7, 8))
    state.trials["t"] = TrialView(trial="t", params={"ham.temperature": None}, epochs=3)
    file = StateFile(tmp_path)
    written: list[str] = []
    file.tick(state, lambda write: (write(), written.append("once")))
    file.tick(state, lambda write: (write(), written.append("twice")))  # under a second later
    assert written == ["once"]
    assert file.read() == state
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]  # no temporary left


# ---- the dashboard feed ----
class _Frames:
    """The terminal's side of a view: what it was asked to draw."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def update(self, state: SweepState) -> None:
        self.calls.append("frame")

    def event(self, state: SweepState, view: TrialView, event: str) -> None:
        self.calls.append(event)

    def close(self) -> None:
        self.calls.append("close")


def test_feed_frames_at_most_twice_a_second() -> None:
    frames, moved = _Frames(), []
    feed = DashboardFeed(frames, lambda: moved.append(1) or _state())
    feed.tick(event=True)
    feed.tick(event=True)  # too soon after the last
    feed.tick()
    feed.event(TrialView(trial="t", params={}, epochs=1), "start")
    assert frames.calls == ["frame", "start"]
    time.sleep(0.55)
    feed.tick()  # a plain frame waits a second ...
    feed.tick(event=True)  # ... one after an event half a second
    assert frames.calls == ["frame", "start", "frame"]
    assert len(moved) == 3  # the clocks move only when something is drawn


# ---- the book and the confirm sink ----
def test_book_resumes_from_the_trials_rows(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    writer = RowWriter(spec, out)
    ended = TrialView(trial="a", params={"train.lr": 0.05}, epochs=4, number=0, epoch=4)
    ended.status = "completed"
    running = TrialView(trial="b", params={"train.lr": 0.02}, epochs=4, number=1, epoch=2)
    running.status = "running"
    writer.trial(ended, Clock(started=100.0, before=50.0, ended=150.0), None, now=200.0)
    writer.trial(running, Clock(started=120.0, before=30.0, restarts=1), None, now=200.0)
    writer.flush()

    book = TrialBook(spec, 100.0, ConfirmSink(out))
    book.load(results.read_table(out, results.TRIALS).to_pylist(), list(writer.types))
    assert {t: v.status for t, v in book.state.trials.items()} == {
        "a": "completed",
        "b": "pending",
    }
    assert book.open == {"b"} and book.ended() == 1
    assert book.clocks["b"].restarts == 1 and book.clocks["b"].seconds(1e9) == 30.0
    assert book.state.trials["b"].params == {k: None for k in writer.types} | {"train.lr": 0.02}


def test_confirm_sink_keeps_the_plan(tmp_path: Path) -> None:
    from hamsweep.sweep.confirm import Chosen, plan_confirm

    spec = _spec(tmp_path, confirm={"top_k": 1, "seeds": 2})
    plan = plan_confirm(spec, [Chosen("t7", 7, {"train.lr": 0.05}, 0.5)])
    sink = ConfirmSink(tmp_path)
    assert sink.planned() is None and sink.label("t7") is None
    sink.set(plan)
    again = ConfirmSink(tmp_path)
    assert again.load() == plan and again.planned() == len(plan.trials) == 4
    assert again.label("t7") == "#7" and again.chosen_number("t7") == 7


# ---- the trial count, one formula for the driver, the disk and the Recorder ----
def test_trial_count(tmp_path: Path) -> None:
    spec = _spec(tmp_path, confirm={"top_k": 2, "seeds": 3})
    assert confirm_trials(spec) == 12  # each config and a baseline of its own, on each seed
    assert trial_count(spec) == 5 + 12  # no trunk: lr is searched over a range
    assert trial_count(spec, confirm=4) == 9
    assert trial_count(_spec(tmp_path, confirm={"top_k": 2, "seeds": 0})) == 5


# ---- the Recorder as Tune pickles it ----
def _recorder(tmp_path: Path):
    from hamsweep.sweep.recorder import Recorder

    spec = _spec(tmp_path)
    return Recorder(spec, tmp_path / "out", _Frames(), started=0.0, restored=False)


def _old_held(kind: str) -> dict:
    """What 8b70c57 pickled of its Recorder (Tune's run config and the searcher's sinks), with
    ``pickle`` (the searcher's state) or ray's ``cloudpickle`` (tuner.pkl). Made in a worktree of
    8b70c57 with PYTHONPATH set to it: ``r = hamsweep.recorder.Recorder.__new__(Recorder)``, then
    ``{"callbacks": [r], "stop": r, "waiting_sink": r.set_waiting, "confirm_sink": r.set_confirm}``
    dumped (its ``__getstate__`` kept nothing: the state in the file is ``{}``)."""
    from ray import cloudpickle

    data = (FIXTURES / f"recorder_8b70c57.{kind}").read_bytes()
    assert b"hamsweep.recorder" in data  # the path before the move
    return cloudpickle.loads(data)


@pytest.fixture
def detached():
    import hamsweep.sweep.recorder as module

    before = module._attached
    module._attached = None
    yield
    module._attached = before


@pytest.mark.parametrize("kind", ["pickle", "cloudpickle"])
def test_old_pickle_shares_the_attached_recorders_jobs(tmp_path: Path, detached, kind) -> None:
    from hamsweep.sweep.recorder import Recorder

    live = _recorder(tmp_path).attach()
    held = _old_held(kind)
    old = held["callbacks"][0]
    assert type(old) is Recorder and held["stop"] is old
    assert old.book is live.book and old.disk is live.disk and old.budget is live.budget
    held["waiting_sink"]([("key", 2)])  # the bound method, by its name on the class
    assert live.book.state.waiting == [("key", 2)]
    assert held["confirm_sink"].__func__ is Recorder.set_confirm
    assert not old.stop_all() and old.unfinished() == live.unfinished() == 5


@pytest.mark.parametrize("kind", ["pickle", "cloudpickle"])
def test_old_pickle_without_a_sweep_is_inert(detached, kind) -> None:
    held = _old_held(kind)
    assert not held["stop"].stop_all() and not held["stop"]("t", {})
    assert held["callbacks"] == [held["stop"]] and held["waiting_sink"].__name__ == "set_waiting"


def test_new_pickle_is_the_attached_recorder(tmp_path: Path, detached) -> None:
    from ray import cloudpickle

    rec = _recorder(tmp_path)
    loose = cloudpickle.loads(cloudpickle.dumps(rec))
    assert not loose.stop_all()  # nothing attached: inert
    source = pickle.loads(pickle.dumps(rec.method_seconds))  # as the searcher pickles its sinks
    assert source() == {}  # ... nothing spent
    rec.attach()
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back, sink = pickle.loads(dumps([rec, rec.set_waiting]))
        assert back is rec and sink.__self__ is rec
    assert b"Recorder" not in pickle.dumps(rec)  # a reference: no state, no class


def test_recorder_is_jobs_only(tmp_path: Path, detached) -> None:
    """Every attribute of the Recorder is a job, the spec, the folder or the trial jobs: a copy
    unpickled from an old folder that shares them shares all its state."""
    rec = _recorder(tmp_path)
    assert set(vars(rec)) == {
        "spec",
        "out",
        "jobs",
        "writer",
        "confirm",
        "book",
        "budget",
        "disk",
        "state_file",
        "feed",
        "study",
    }
    assert os.path.samefile(rec.disk.out.parent, tmp_path)
