"""The figures of a sweep's search and its confirmed configs: per class, fairness against
accuracy, the search's progress, the knobs, the curves, HAM's diagnostics and what the method did
to each class (``hamsweep.report.figures`` lists them in the page's order).

Per class, lines over the classes sorted by the baseline rather than bars: with 100 classes and a
few configs, grouped bars are a wall; sorted lines show at a glance where each config lifts or
lowers the weak end, and a heat map would hide how large the gaps are.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from hamsweep.report.data import ReportData
from hamsweep.report.figures._base import Drawn, pct, robust_attack

__all__ = [
    "class_state",
    "curves",
    "diagnostics",
    "fairness",
    "knobs",
    "per_class",
    "progress",
]

_STOPPED, _FAILED = "stopped", "failed"
_BASELINE = "PGD-AT"


def _label(t: dict[str, Any]) -> str:
    return _BASELINE if t.get("role") == "trunk" else f"#{t['number']}"


# ---- 1. per class ----
def per_class(d: ReportData) -> Drawn:
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if d.confirm_classes:
        _per_class_confirmed(d, ax)
        how = (
            "test split, mean over the confirm stage's seeds, the band its interval (Jeffreys on "
            "the effective test images, stats.class_intervals)"
        )
    else:
        _per_class_search(d, ax)
        how = "validation split, at each trial's best epoch"
    title = "Per class: which classes stay weak, and does HAM lift them above PGD-AT?"
    return _one_axes(
        fig,
        ax,
        "per_class",
        title,
        "class, sorted by the PGD-AT baseline (weakest left)",
        "robust accuracy (%)",
        f"Robust accuracy of every class for the best configs and the baseline ({how}).",
    )


def _one_axes(
    fig: Figure, ax: Any, name: str, title: str, xlabel: str, ylabel: str, caption: str
) -> Drawn:
    """A one-panel figure's labels, legend and title."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return Drawn(name, title, caption, fig)


def _per_class_search(d: ReportData, ax: Any) -> None:
    by_trial: dict[str, list[float]] = {}
    for r in d.best_classes:
        by_trial.setdefault(r["trial"], []).append(r["correct"] / r["n"] if r["n"] else math.nan)
    best = sorted(
        (t for t in d.search() if t["trial"] in by_trial and t["best_objective"] is not None),
        key=lambda t: -t["best_objective"],
    )[:3]
    shown = [*[t for t in d.baselines() if t["trial"] in by_trial][:1], *best]
    _lines(
        ax,
        [(_label(t), by_trial[t["trial"]], None) for t in shown],
        names=_names(d, shown[0]["trial"]) if shown else [],
    )


def _per_class_confirmed(d: ReportData, ax: Any) -> None:
    attack = robust_attack(d.confirm_classes)
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in d.confirm_classes:
        if r["attack"] == attack:
            rows.setdefault(r["config"], []).append(r)
    order = sorted(rows, key=lambda c: (not c.startswith("pgd_at:"), c))  # the baseline first
    series = [
        (
            rows[c][0]["label"],
            [r["mean"] for r in rows[c]],
            [(r["ci_low"], r["ci_high"]) for r in rows[c]],
        )
        for c in order
    ]
    _lines(ax, series, names=[r["class_name"] for r in rows[order[0]]] if order else [])


def _names(d: ReportData, trial: str) -> list[str]:
    return [r["class_name"] for r in d.best_classes if r["trial"] == trial]


def _lines(
    ax: Any,
    series: list[tuple[str, list[float], list[tuple[float, float]] | None]],
    names: list[str],
) -> None:
    """One line per series over the classes, sorted by the first series (the baseline)."""
    if not series:
        ax.text(0.5, 0.5, "no trial has a validated epoch yet", ha="center", transform=ax.transAxes)
        return
    order = sorted(
        range(len(series[0][1])),
        key=lambda i: (math.isnan(series[0][1][i] or math.nan), series[0][1][i]),
    )
    x = list(range(len(order)))
    marker = "o" if len(order) <= 20 else None
    for label, values, bands in series:
        y = [pct(values[i]) for i in order]
        (line,) = ax.plot(
            x,
            y,
            marker=marker,
            markersize=4,
            linewidth=2.2 if label == _BASELINE else 1.4,
            color="black" if label == _BASELINE else None,
            label=label,
        )
        if bands:
            ax.fill_between(
                x,
                [pct(bands[i][0]) for i in order],
                [pct(bands[i][1]) for i in order],
                alpha=0.15,
                color=line.get_color(),
            )
    if len(order) <= 20 and names:
        ax.set_xticks(x, [names[i] for i in order], rotation=60, fontsize=7)
    ax.set_ylim(-2, 102)


# ---- 2. fairness against accuracy ----
def fairness(d: ReportData) -> Drawn:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    best = _at_best(d)
    for ax, x_key, x_label in (
        (axes[0], "robust_mean", "mean robust accuracy (%)"),
        (axes[1], "clean_mean", "mean clean accuracy (%)"),
    ):
        pts = [
            (pct(r[x_key]), pct(r[d.column]), r)
            for r in best.values()
            if r.get(x_key) is not None and r.get(d.column) is not None
        ]
        search = [p for p in pts if p[2]["role"] != "trunk"]
        ax.scatter([p[0] for p in search], [p[1] for p in search], s=18, alpha=0.7, label="trials")
        front = _pareto([(p[0], p[1]) for p in search])
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            color="tab:red",
            linewidth=1.2,
            marker="s",
            markersize=4,
            markerfacecolor="none",
            label="Pareto front",
        )
        for p in pts:
            if p[2]["role"] == "trunk":
                ax.scatter(
                    [p[0]],
                    [p[1]],
                    marker="*",
                    s=180,
                    color="black",
                    label=f"{_BASELINE} baseline",
                    zorder=3,
                )
        ax.set_xlabel(x_label)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel(f"{d.objective} (%)")
    title = (
        "Fairness against accuracy: what does a higher "
        f"{d.objective} cost in mean and clean accuracy?"
    )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return Drawn(
        "fairness",
        title,
        "One point per search trial at its best epoch (validation split); the red line joins the "
        "trials no other beats on both axes.",
        fig,
    )


def _at_best(d: ReportData) -> dict[str, dict[str, Any]]:
    """Each search-stage trial's epoch row at its best epoch, with its role."""
    roles = {
        t["trial"]: (t.get("role") or "search", t.get("best_epoch"))
        for t in d.trials
        if (t.get("stage") or "search") == "search"
    }
    out = {}
    for r in d.epochs:
        role, epoch = roles.get(r["trial"], (None, None))
        if role is not None and r["epoch"] == epoch:
            out[r["trial"]] = {**r, "role": role}
    return out


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (both maximised), by x."""
    front, best_y = [], -math.inf
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


# ---- 3. search progress ----
def progress(d: ReportData) -> Drawn:
    fig, ax = plt.subplots(figsize=(10, 4.2))
    # the spend counts every trial of the search stage (its trunks too) in the order they ended
    stage = sorted(
        (
            t
            for t in d.trials
            if (t.get("stage") or "search") == "search" and t.get("ended") is not None
        ),
        key=lambda t: t["ended"],
    )
    device = d.device()
    unit = f"{device}-hours"
    spent, xs, ys, best, best_line, ended = 0.0, [], [], -math.inf, [], []
    for t in stage:
        # own costs: the trunk's warm-up counts once, when it ends
        spent += t["device_seconds"] or 0.0
        if t.get("role") == "trunk":
            continue
        ended.append(t)
        xs.append(spent / 3600)
        ys.append(pct(t["best_objective"]))
        best = max(best, ys[-1]) if not math.isnan(ys[-1]) else best
        best_line.append(best)
    styles = {
        "completed": ("o", "tab:blue"),
        _STOPPED: ("x", "tab:orange"),
        _FAILED: ("v", "tab:red"),
    }
    for status, (marker, color) in styles.items():
        sel = [i for i, t in enumerate(ended) if t["status"] == status]
        ax.scatter(
            [xs[i] for i in sel],
            [ys[i] for i in sel],
            marker=marker,
            color=color,
            label=f"{status} ({len(sel)})",
        )
    ax.step(xs, best_line, where="post", color="black", linewidth=1.2, label="best so far")
    title = f"Search progress: how far the search got per {device}-hour"
    return _one_axes(
        fig,
        ax,
        "progress",
        title,
        f"cumulative {unit}, in the order trials ended",
        f"best {d.objective} (%)",
        "Each search trial's best validation objective when it ended; ASHA-stopped (x) and failed "
        "(v) trials are marked.",
    )


# ---- 4. which knob matters ----
def knobs(d: ReportData) -> Drawn:
    import warnings

    import optuna
    from optuna.trial import TrialState

    study = d.study
    complete = (
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if study is not None else []
    )
    left_out = _dynamic_params(complete)
    params = sorted({p for t in complete for p in t.params} - set(left_out))
    multi = study is not None and len(study.directions) > 1
    title = "Which knob matters: parameter importance (fANOVA) and one slice per searched parameter"
    n = max(len(params), 1)
    fig = plt.figure(figsize=(10, 3.6 + 2.6 * math.ceil(n / 3)))
    grid = fig.add_gridspec(1 + math.ceil(n / 3), 3)
    top = fig.add_subplot(grid[0, :])
    if len(complete) < 2 or not params or multi:
        why = (
            "fewer than 2 completed trials"
            if len(complete) < 2
            else "a multi-objective study"
            if multi
            else "no parameter varies"
        )
        top.text(0.5, 0.5, f"no importance: {why}", ha="center", transform=top.transAxes)
        top.set_axis_off()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            importances = optuna.importance.get_param_importances(study, params=params)
        names = list(importances)[::-1]
        top.barh(names, [importances[p] for p in names], color="tab:blue")
        top.set_xlabel("importance for the objective (fANOVA, Optuna)")
    if left_out:
        top.set_title(
            "left out (its range depends on another searched key, so trials do not share it): "
            f"{', '.join(left_out)}",
            fontsize=8,
        )
    value = (lambda t: t.value) if not multi else (lambda t: t.values[0])
    for i, p in enumerate(params):
        ax = fig.add_subplot(grid[1 + i // 3, i % 3])
        xs = [t.params[p] for t in complete if p in t.params]
        # a choice: its values as categories
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            xs = [str(x) for x in xs]
        ax.scatter(xs, [pct(value(t)) for t in complete if p in t.params], s=14, alpha=0.8)
        ax.set_xlabel(p, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return Drawn(
        "knobs",
        title,
        "Optuna's fANOVA importance evaluator on the sweep's study (completed trials), then the "
        "objective against each parameter.",
        fig,
    )


def _dynamic_params(trials: list[Any]) -> list[str]:
    """Parameters whose distribution differs between trials (an int range naming another key)."""
    seen: dict[str, Any] = {}
    dynamic = set()
    for t in trials:
        for p, dist in t.distributions.items():
            if p in seen and seen[p] != dist:
                dynamic.add(p)
            seen.setdefault(p, dist)
    return sorted(dynamic)


# ---- 5. learning curves ----
def curves(d: ReportData) -> Drawn:
    fig, ax = plt.subplots(figsize=(10, 4.5))
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for r in d.epochs:
        if r.get(d.column) is not None:
            by_trial.setdefault(r["trial"], []).append(r)
    search = {t["trial"]: t for t in d.trials if (t.get("stage") or "search") == "search"}
    for tid, rows in by_trial.items():
        t = search.get(tid)
        if t is None:
            continue
        own = [r for r in rows if not r.get("inherited")]
        trunk = t.get("role") == "trunk"
        # a fork's line leaves the trunk's
        start = [r for r in rows if r.get("inherited") and r["epoch"] == t.get("forked_at")]
        own = start + own
        ax.plot(
            [r["epoch"] for r in own],
            [pct(r[d.column]) for r in own],
            linewidth=2.4 if trunk else 0.9,
            color="black" if trunk else None,
            alpha=1 if trunk else 0.7,
            label=f"{_BASELINE} (the trunk)" if trunk else None,
        )
        if t.get("forked_at") and own:
            ax.scatter(
                [t["forked_at"]],
                [pct(next((r[d.column] for r in rows if r["epoch"] == t["forked_at"]), None))],
                marker="o",
                s=16,
                color="gray",
                zorder=3,
            )
        if t["status"] == _STOPPED and len(own) > len(start):
            ax.scatter(
                [own[-1]["epoch"]],
                [pct(own[-1][d.column])],
                marker="x",
                color="tab:orange",
                zorder=3,
            )
    ax.scatter([], [], marker="o", color="gray", s=16, label="fork from the trunk")
    ax.scatter([], [], marker="x", color="tab:orange", label="stopped by ASHA")
    title = (
        f"Learning curves: {d.objective} per epoch; forks leave the PGD-AT trunk at their warm-up"
    )
    return _one_axes(
        fig,
        ax,
        "curves",
        title,
        "epoch",
        f"{d.objective} (%, validation)",
        "Every search trial's own epochs (a fork's inherited warm-up is the trunk's line); grey "
        "dots: fork points; orange x: ASHA stops.",
    )


# ---- 6. HAM diagnostics ----
def diagnostics(d: ReportData) -> Drawn:
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    search = {t["trial"]: t for t in d.search()}
    for tid in search:
        rows = [
            r
            for r in d.epochs
            if r["trial"] == tid and not r.get("inherited") and r.get("hard_fraction") is not None
        ]
        if rows:
            axes[0].plot(
                [r["epoch"] for r in rows],
                [pct(r["hard_fraction"]) for r in rows],
                linewidth=0.9,
                alpha=0.7,
            )
            axes[1].plot(
                [r["epoch"] for r in rows],
                [pct(r["kept_fraction"]) for r in rows],
                linewidth=0.9,
                alpha=0.7,
            )
    axes[0].set(xlabel="epoch", ylabel="hard AEs (% of the batch)", title="hard fraction")
    axes[1].set(
        xlabel="epoch", ylabel="kept AEs (% of the batch)", title="kept fraction (hard + kept easy)"
    )
    steps = {}
    for r in d.epochs:
        if r["trial"] in search and not r.get("inherited"):
            steps[r["trial"]] = steps.get(r["trial"], 0) + (r.get("attack_steps") or 0)
    pts = [
        (steps[t] / 1e6, pct(search[t]["best_objective"]), search[t]["status"])
        for t in steps
        if search[t]["best_objective"] is not None
    ]
    for status, marker in (("completed", "o"), (_STOPPED, "x"), (_FAILED, "v")):
        sel = [p for p in pts if p[2] == status]
        axes[2].scatter([p[0] for p in sel], [p[1] for p in sel], marker=marker, label=status)
    axes[2].set(
        xlabel="attack example-steps trained (millions)",
        ylabel=f"best {d.objective} (%)",
        title="compute against fairness",
    )
    axes[2].legend(fontsize=8)
    title = (
        "HAM diagnostics: how much of each batch is hard, and what fairness costs in attack compute"
    )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return Drawn(
        "diagnostics",
        title,
        "HAM epochs of the search trials (a fork's own); attack steps count PGD forward+backward "
        "per example.",
        fig,
    )


# ---- 7. what the method did to each class ----
def class_state(d: ReportData) -> Drawn:
    """One panel per ``class_state`` column the best search trial's method filled: a line per
    class over the epochs; the class worst on validation at its best epoch drawn thick."""
    from hamsweep.core.methods import CLASS_STATE

    rows = d.class_state
    columns = [c for c in CLASS_STATE if any(r.get(c) is not None for r in rows)]
    fig, axes = plt.subplots(1, max(len(columns), 1), figsize=(4 * max(len(columns), 1), 3.8))
    axes = list(axes) if len(columns) > 1 else [axes]
    trial = rows[0]["trial"] if rows else None
    at_best = [r for r in d.best_classes if r["trial"] == trial and r["n"]]
    worst = (
        min(at_best, key=lambda r: (r["correct"] / r["n"], r["class_id"]))["class_id"]
        if at_best
        else None
    )
    if not columns:
        axes[0].text(
            0.5,
            0.5,
            "no per-class state: the method keeps none",
            ha="center",
            transform=axes[0].transAxes,
        )
    fractions = {"train_robust_acc", "hard_fraction"}
    for ax, column in zip(axes, columns):
        for c in sorted({r["class_id"] for r in rows}):
            mine = [r for r in rows if r["class_id"] == c and r.get(column) is not None]
            ys = [pct(r[column]) if column in fractions else r[column] for r in mine]
            thick = c == worst
            ax.plot(
                [r["epoch"] for r in mine],
                ys,
                linewidth=2.2 if thick else 0.8,
                alpha=1.0 if thick else 0.6,
                color="C3" if thick else None,
                label=f"{mine[0]['class_name']} (worst)" if thick and mine else None,
            )
        ax.set(
            xlabel="epoch", ylabel=f"{column} (%)" if column in fractions else column, title=column
        )
        if worst is not None:
            ax.legend(fontsize=8)
    title = "What the method did to each class, epoch by epoch (the best search trial)"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return Drawn(
        "class_state",
        title,
        "The class_state table of the search trial with the best objective: one line per class; "
        "thick: its worst class on validation at its best epoch.",
        fig,
    )
