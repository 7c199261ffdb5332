"""The live sweep dashboard, its pure part:
a sweep's state -> one rich frame, or one log line per event.

``render(state)`` is a pure function of a ``SweepState`` (it never reads the clock: ``state.now`` is
the frame's time), so a frame can be pinned in a test. The driver owns the state and hands it to a
view from ``make_view``: a ``LiveView`` redraws the frame in a terminal, a ``LineView`` prints one
plain line per trial event for logs. Only rich, the standard library and results' formatting here:
no Ray, Optuna or torch.

Its tables, and ``hamsweep results``', fit 120 columns without cutting a number, built with the
helpers of ``hamsweep.results._format``: accuracies in percent with one decimal, the searched knobs
in one column by their paper symbols (``τ=.49 ρ=.36 T=u M=5 w=60``, a legend line under the table),
and every number column unwrapped and at least as wide as its widest cell (``numeric_column``):
only text (status words, stop reasons) shrinks. ``tests/results/test_widths.py`` draws them at 80,
120 and 160 columns.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from rich.bar import Bar
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from hamsweep.results._format import (
    DASH,
    knob_legend,
    knob_names,
    knobs_column,
    knobs_text,
    numeric_column,
    param_text,
    pct,
    short_names,
)
from hamsweep.results.spend import SearchCost, Spending, spending

__all__ = [
    "ENDED",
    "EVENTS",
    "STATE_FILE",
    "STATUSES",
    "LineView",
    "LiveView",
    "SweepState",
    "TrialView",
    "event_line",
    "knob_legend",
    "knob_names",
    "knobs_text",
    "make_view",
    "pct",
    "render",
    "state_from_json",
    "state_to_json",
]

# stopped = ended early by ASHA (or the budget)
STATUSES = ("pending", "running", "completed", "stopped", "failed")
# what event_line and the views' event() accept
EVENTS = ("start", "epoch", "completed", "stopped", "failed")
# the statuses of a trial that ended: it never runs again
ENDED = ("completed", "stopped", "failed")
# in the sweep folder: the driver's last SweepState, for `hamsweep status` elsewhere
STATE_FILE = "state.json"
_STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "completed": "green",
    "stopped": "yellow",
    "failed": "red",
}
_WEAKEST = 5  # classes shown as bars for the best trial
TRUNK = "trunk"  # TrialView.role of a shared warm-up (hamsweep.keys.TRUNK)
CONFIRM = "confirm"  # TrialView.stage of the confirm stage (hamsweep.keys.CONFIRM)
_BASELINE = "PGD-AT"  # how a trunk is named in tables: it is the sweep's PGD-AT baseline


@dataclass
class TrialView:
    """What the dashboard knows of one trial; the driver updates it in place as reports arrive."""

    trial: str  # Ray Tune trial id, e.g. "a1b2c3d4"
    # searched keys 'section.field' -> sampled value (None allowed, e.g. ham.temperature)
    params: dict[str, Any]
    epochs: int  # epochs planned (train.epochs)
    number: int | None = None  # Optuna trial number
    status: str = "pending"  # one of STATUSES
    epoch: int = 0  # epochs completed
    objective: float | None = None  # objective of the latest epoch, validation split, in [0, 1]
    best_objective: float | None = None  # highest objective over the epochs so far, in [0, 1]
    best_epoch: int | None = None  # epoch (1-based) of best_objective
    mean_robust: float | None = None  # latest epoch's mean robust accuracy (validation), in [0, 1]
    clean_mean: float | None = None  # latest epoch's mean clean accuracy (validation), in [0, 1]
    # per-class robust accuracy at best_epoch (validation), in [0, 1]
    class_robust: tuple[float, ...] = ()
    class_names: tuple[str, ...] = ()  # one per entry of class_robust
    # e.g. "ASHA at epoch 2", "diverged: train loss is nan at epoch 3, batch 4"
    stop_reason: str | None = None
    gpu_seconds: float = 0.0  # GPU time spent, in seconds (GPUs held x wall time)
    # own cost in device-seconds: wall time x the GPUs (else CPU cores) held
    device_seconds: float = 0.0
    wall_seconds: float = 0.0  # wall time since the trial started, in seconds
    # search | trunk (a shared PGD-AT warm-up, run to the end: the PGD-AT baseline)
    role: str = "search"
    trunk: str | None = None  # a fork's trunk (its trial id)
    forked_at: int | None = None  # the trunk epoch a fork started from (its warm-up)
    # search | confirm (a winner or the baseline retrained on a new seed, on the test split)
    stage: str = "search"
    seed: int | None = None  # train.seed
    # confirm: the config it retrains (a search trial id, pgd_at:<key> for the baseline)
    config: str | None = None
    baseline: str | None = None  # confirm: the config of the baseline it is compared with
    label: str | None = None  # confirm: how tables name its config, '#12' or 'PGD-AT'


@dataclass
class SweepState:
    """The whole sweep as the dashboard draws it."""

    name: str  # sweep name, from the spec
    objective: str  # metric name, e.g. "worst_robust"
    num_samples: int  # trials the sweep will run in all
    started: float  # time.time() at the start, in seconds since the epoch
    now: float  # time.time() of this frame, in seconds (render is pure: it never reads the clock)
    # trial id -> view; insertion order = start order
    trials: dict[str, TrialView] = field(default_factory=dict)
    gpu_hours_budget: float | None = None  # in GPU-hours; None = no budget
    device: str = "gpu"  # what TrialView.device_seconds counts: gpu | cpu (resources.gpu == 0)
    wall_hours_budget: float | None = None  # in hours of wall time; None = no budget
    # a comparison's budget per method in device-hours (search.method_hours); None = equal trials
    method_hours_budget: float | None = None
    # Optuna's current best: (number, value, params)
    sampler_best: tuple[int, float, dict[str, Any]] | None = None
    # proposals waiting for a trunk epoch: (trunk, epoch)
    waiting: list[tuple[str, int]] = field(default_factory=list)
    confirm_trials: int = 0  # trials of the confirm stage once it is planned (0: not yet, or none)
    confirm_seeds: tuple[int, ...] = ()  # its new train.seed values

    def counts(self) -> dict[str, int]:
        """status -> number of search trials (trunks and the confirm stage apart),
        every status present (0 if none)."""
        out = dict.fromkeys(STATUSES, 0)
        for view in self.trials.values():
            if view.role == TRUNK or view.stage == CONFIRM:
                continue
            if view.status not in out:
                raise ValueError(
                    f"trial {view.trial}: status must be one of {', '.join(STATUSES)} "
                    f"but got {view.status!r}"
                )
            out[view.status] += 1
        return out

    def gpu_hours(self) -> float:
        return sum(v.gpu_seconds for v in self.trials.values()) / 3600

    def device_hours(self) -> float:
        """The sweep's cost so far: its trials' own device-hours
        (a trunk's warm-up counted once)."""
        return sum(v.device_seconds for v in self.trials.values()) / 3600

    def method_spend(self) -> dict[str | None, Spending]:
        """A comparison's search, method by method (``params['train.method']``), as
        ``results.spend`` counts it: what a budget in device-hours (``per_method.MethodBudget``)
        and the header read."""
        search = [
            SearchCost(
                v.params.get("train.method"),
                v.device_seconds,
                max(0, v.epoch - (v.forked_at or 0)),
                0 if v.status in ENDED else max(0, v.epochs - v.epoch),
                v.trunk,
                v.forked_at,
            )
            for v in self.trials.values()
            if v.role != TRUNK and v.stage != CONFIRM
        ]
        trunks = {v.trial: (v.device_seconds, v.epoch) for v in self.trials.values()}
        return spending(search, trunks)

    def best(self) -> TrialView | None:
        """The trial with the highest best_objective (the first started on a tie);
        None if none has one."""
        scored = [
            v
            for v in self.trials.values()
            if _score(v) is not None and v.role != TRUNK and v.stage != CONFIRM
        ]
        return max(scored, key=lambda v: _score(v)) if scored else None


def state_to_json(state: SweepState) -> str:
    # vars, not dataclasses.asdict: asdict deep-copies every value,
    # 10x slower (60 ms for 1,000 trials)
    data = {**vars(state), "trials": {tid: vars(view) for tid, view in state.trials.items()}}
    return json.dumps(data, allow_nan=True)


def state_from_json(text: str) -> SweepState:
    """The inverse of ``state_to_json`` (tuples come back as tuples)."""
    data = json.loads(text)
    trials = {}
    for tid, view in data.pop("trials").items():
        view["class_robust"], view["class_names"] = (
            tuple(view["class_robust"]),
            tuple(view["class_names"]),
        )
        trials[tid] = TrialView(**view)
    best = data.pop("sampler_best")
    data["confirm_seeds"] = tuple(data.get("confirm_seeds", ()))
    data["waiting"] = [tuple(w) for w in data.get("waiting", ())]
    return SweepState(**data, trials=trials, sampler_best=tuple(best) if best else None)


def _score(view: TrialView) -> float | None:
    # a diverged trial can report nan; it must rank as unscored, not break max() and sorted()
    x = view.best_objective
    return None if x is None or math.isnan(x) else x


def _hms(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _param_keys(state: SweepState) -> list[str]:
    keys: dict[str, None] = {}  # an ordered set: the first trial's order, then any key added later
    for view in state.trials.values():
        if view.stage != CONFIRM:  # drawn in the confirm panel
            keys.update(dict.fromkeys(view.params))
    return list(keys)


def _params_text(params: dict[str, Any]) -> str:
    short = short_names(list(params))
    return " ".join(f"{short[k]}={param_text(k, v)}" for k, v in params.items())


def _header(state: SweepState) -> Panel:
    n = state.counts()
    # Tune creates trials lazily, so samples not created yet are pending too
    pending = n["pending"] + max(state.num_samples - sum(n.values()), 0)
    trials = (
        f"trials: {n['running']} running, {n['completed']} done, {n['stopped']} stopped by ASHA, "
        f"{n['failed']} failed, {pending} pending, of {state.num_samples}"
    )
    cost = f"{state.device.upper()}-hours used {state.device_hours():.2f}"
    if state.gpu_hours_budget is not None:  # the budget is in GPU-hours (budget.gpu_hours)
        b = state.gpu_hours_budget
        cost += (
            f" of budget {b:g}"
            if state.device == "gpu"
            else f"; GPU-hours {state.gpu_hours():.2f} of budget {b:g}"
        )
    if state.wall_hours_budget is not None:
        cost += (
            f"; wall-clock {_hms(state.now - state.started)} "
            f"of budget {_hms(state.wall_hours_budget * 3600)}"
        )
    if state.method_hours_budget is not None:  # a comparison: each method's share of its hours
        spend = state.method_spend()
        cost += f"; search per method, of {state.method_hours_budget:g} each: " + ", ".join(
            f"{m} {s.seconds / 3600:.3g} ({s.trials} trials)" for m, s in spend.items()
        )
    top = Text.assemble(
        ("sweep ", "bold"), (state.name, "bold"), f"   elapsed {_hms(state.now - state.started)}"
    )
    trunks = [v for v in state.trials.values() if v.role == TRUNK and v.stage != CONFIRM]
    lines = [top, Text(trials), *(_trunk_line(state, v) for v in trunks), Text(cost)]
    return Panel(Group(*lines), title="hamsweep", title_align="left")


def _trunk_line(state: SweepState, trunk: TrialView) -> Text:
    """A shared warm-up: how far it is, and the proposals waiting for its epochs."""
    waiting = sorted(epoch for tid, epoch in state.waiting if tid == trunk.trial)
    line = (
        f"shared warm-up {trunk.trial} ({_BASELINE} baseline): "
        f"epoch {trunk.epoch}/{trunk.epochs}, {trunk.status}"
    )
    forks = sum(v.trunk == trunk.trial for v in state.trials.values())
    line += f"; {forks} trials forked from it"
    if waiting:
        line += (
            f"; {len(waiting)} waiting for its epoch{'s' if len(waiting) > 1 else ''} "
            f"{', '.join(map(str, waiting))}"
        )
    return Text(line)


def _confirm_panel(state: SweepState) -> Panel:
    """The confirm stage as its own phase: each config and seed, how far,
    on the test split at the end."""
    views = [v for v in state.trials.values() if v.stage == CONFIRM]
    done = sum(v.status in ENDED for v in views)
    seeds = ", ".join(map(str, state.confirm_seeds))
    head = (
        f"confirm stage: {done} of {state.confirm_trials} trials done (train.seed {seeds}); "
        "each is evaluated on the test split at its end"
    )
    table = Table(box=None, padding=(0, 1), show_header=True)
    cells = [
        [
            v.label or DASH,
            DASH if v.seed is None else str(v.seed),
            f"{v.epoch}/{v.epochs}",
            pct(v.best_objective),
        ]
        for v in views
    ]
    for i, name in enumerate(("config", "seed", "epoch", "best val %")):
        numeric_column(
            table, name, [c[i] for c in cells], justify="left" if name == "config" else "right"
        )
    table.add_column("status", overflow="ellipsis")
    table.add_column("", overflow="fold")
    for v, cell in zip(views, cells, strict=True):
        fork = f"forks {v.trunk} after epoch {v.forked_at}" if v.forked_at else ""
        table.add_row(
            *cell,
            Text(v.status, style=_STATUS_STYLE.get(v.status, "")),
            Text(v.stop_reason or fork),
        )
    trunks = {v.trial for v in views if v.role == TRUNK}
    waiting = sum(tid in trunks for tid, _ in state.waiting)
    parts: list[RenderableType] = [Text(head), table]
    if waiting:
        parts.append(Text(f"{waiting} waiting for their seed's warm-up epoch", style="dim"))
    return Panel(Group(*parts), title="confirm", title_align="left")


def _ordered(state: SweepState, max_rows: int) -> tuple[list[TrialView], int]:
    """The rows shown (running first, then finished best first, then pending)
    and how many were left out."""
    views = [v for v in state.trials.values() if v.stage != CONFIRM]
    finished = [v for v in views if v.status in ENDED]
    # stable: ties keep start order
    finished.sort(key=lambda v: (_score(v) is None, -(_score(v) or 0.0)))
    rows = (
        [v for v in views if v.status == "running"]
        + finished
        + [v for v in views if v.status == "pending"]
    )
    # the baseline on top
    rows = [v for v in rows if v.role == TRUNK] + [v for v in rows if v.role != TRUNK]
    return rows[:max_rows], max(len(rows) - max_rows, 0)


def _trial_table(state: SweepState, rows: list[TrialView]) -> Table:
    names = knob_names(_param_keys(state))
    title = (
        f"trials, validation %: {state.objective} now and best so far; mean robust and clean now"
    )
    table = Table(
        title=title,
        title_justify="left",
        caption=knob_legend(names) or None,
        caption_justify="left",
        expand=False,
    )
    numbers = [[_number(v), v.trial] for v in rows]
    knobs = [knobs_text(v.params, names) for v in rows]
    scores = [
        [
            f"{v.epoch}/{v.epochs}",
            pct(v.objective),
            pct(v.best_objective),
            pct(v.mean_robust),
            pct(v.clean_mean),
        ]
        for v in rows
    ]
    for i, name in enumerate(["#", "trial"]):
        numeric_column(
            table, name, [r[i] for r in numbers], justify="left" if name == "trial" else "right"
        )
    if names:
        knobs_column(table, knobs)
    for i, name in enumerate(["epoch", "now", "best", "mean", "clean"]):
        numeric_column(table, name, [r[i] for r in scores])
    table.add_column("status", overflow="fold")  # the one column that shrinks: its words wrap
    for v, number, knob, score in zip(rows, numbers, knobs, scores, strict=True):
        # a completed trial's reason only repeats its epoch column ("ran all 8 epochs")
        reason = f": {v.stop_reason}" if v.stop_reason and v.status != "completed" else ""
        status = Text.assemble((v.status, _STATUS_STYLE.get(v.status, "")), reason)
        table.add_row(
            *map(Text, number), *([Text(knob)] if names else []), *map(Text, score), status
        )
    return table


def _number(view: TrialView) -> str:
    if view.role == TRUNK:
        return _BASELINE
    return DASH if view.number is None else str(view.number)


def _weakest(view: TrialView) -> Table:
    """The best trial's weakest classes as bars, lowest first."""
    names = list(view.class_names) + [
        f"class {i}" for i in range(len(view.class_names), len(view.class_robust))
    ]
    # a class with no validation examples has accuracy nan: it sorts last, it is not "weakest"
    pairs = sorted(
        zip(names, view.class_robust, strict=False), key=lambda p: (math.isnan(p[1]), p[1])
    )[:_WEAKEST]
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(width=30)
    grid.add_column(justify="right", no_wrap=True)
    for name, acc in pairs:
        known = not math.isnan(acc)
        bar = Bar(1.0, 0.0, acc if known else 0.0, width=30, color="red")
        grid.add_row(Text(name), bar, f"{100 * acc:.1f}%" if known else DASH)
    return grid


def _best_panel(state: SweepState, view: TrialView) -> Panel:
    number = "" if view.number is None else f" (#{view.number})"
    head = (
        f"{view.trial}{number}: {state.objective} {pct(view.best_objective)}% "
        f"at epoch {view.best_epoch} (validation)"
    )
    parts: list[RenderableType] = [Text(head), Text(_params_text(view.params))]
    if view.class_robust:
        parts += [
            Text(f"weakest classes, robust accuracy (validation, epoch {view.best_epoch}):"),
            _weakest(view),
        ]
    return Panel(Group(*parts), title="best trial so far", title_align="left")


def _sampler_panel(objective: str, best: tuple[int, float, dict[str, Any]]) -> Panel:
    number, value, params = best
    line = f"trial #{number}: {objective} {pct(value)}%   {_params_text(params)}"
    return Panel(Text(line), title="sampler's best (Optuna)", title_align="left")


def render(state: SweepState, *, max_rows: int = 20) -> RenderableType:
    """One dashboard frame: header, trial table (at most ``max_rows`` rows),
    best trial, sampler's best."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1 but got {max_rows}")
    parts: list[RenderableType] = [_header(state)]
    rows, left_out = _ordered(state, max_rows)
    parts.append(_trial_table(state, rows) if rows else Text("no trials started yet", style="dim"))
    if left_out:
        parts.append(Text(f"… {left_out} more", style="dim"))
    if (best := state.best()) is not None:
        parts.append(_best_panel(state, best))
    if state.sampler_best is not None:
        parts.append(_sampler_panel(state.objective, state.sampler_best))
    if state.confirm_trials:
        parts.append(_confirm_panel(state))
    return Group(*parts)


def _metrics(state: SweepState, view: TrialView) -> str:
    """The epoch and its validation accuracies in %, as the tables show them."""
    out = f"epoch {view.epoch}/{view.epochs}"
    if view.objective is not None:
        out += f" {state.objective} {pct(view.objective)}% (best {pct(view.best_objective)}%)"
    if view.mean_robust is not None:
        out += f" mean {pct(view.mean_robust)}%"
    if view.clean_mean is not None:
        out += f" clean {pct(view.clean_mean)}%"
    return out


def event_line(state: SweepState, view: TrialView, event: str) -> str:
    """One plain line (no markup) for a trial event, for logs when stdout is not a terminal."""
    if event not in EVENTS:
        raise ValueError(f"event must be one of {', '.join(EVENTS)} but got {event!r}")
    number = (
        f" {_BASELINE}" if view.role == TRUNK else "" if view.number is None else f" {view.number}"
    )
    if view.stage == CONFIRM:
        number = f" {view.label or DASH} seed {view.seed}"
    stage = "confirm " if view.stage == CONFIRM else ""
    prefix = f"[{_hms(state.now - state.started)}] {stage}trial{number} {view.trial}"
    if event == "start":
        fork = (
            f" (forks {view.trunk or 'its trunk'} after epoch {view.forked_at})"
            if view.forked_at
            else ""
        )
        return f"{prefix} start {_params_text(view.params)}{fork}".rstrip()
    line = f"{prefix} {_metrics(state, view)} {view.status if event == 'epoch' else event}"
    if event in ("stopped", "failed"):
        line += f": {view.stop_reason or 'no reason given'}"
    return line


class LiveView:
    """Redraws the whole frame in place, in a terminal; trial events are already in the frame."""

    def __init__(self, console: Console) -> None:
        self.console = console
        # started on the first update, so an early crash leaves no empty frame
        self._live: Live | None = None

    def update(self, state: SweepState) -> None:
        if self._live is None:
            # auto_refresh off: a refresh thread would redraw a state the driver is mutating
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(render(state), refresh=True)

    def event(self, state: SweepState, view: TrialView, event: str) -> None:
        """Nothing: the next update shows it."""

    def close(self) -> None:
        """Stop redrawing and leave the last frame on screen; safe to call twice."""
        if self._live is not None:
            self._live.stop()
            self._live = None


class LineView:
    """One plain line per trial event, for logs and pipes; no frames."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def update(self, state: SweepState) -> None:
        """Nothing: a log gets events, not frames."""

    def event(self, state: SweepState, view: TrialView, event: str) -> None:
        # markup and emoji off: a stop reason or a param value is user text, not rich markup
        line = event_line(state, view, event)
        self.console.print(line, highlight=False, soft_wrap=True, markup=False, emoji=False)

    def close(self) -> None:
        """Nothing to release."""


def make_view(console: Console) -> LiveView | LineView:
    """A live frame in a terminal, plain event lines otherwise (logs, pipes, SLURM output files)."""
    return LiveView(console) if console.is_terminal else LineView(console)
