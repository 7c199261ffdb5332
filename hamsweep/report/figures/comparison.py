"""The report's comparison of the confirmed configs (each method's best, in a comparison of methods,
``search.methods``) against PGD-AT, from the confirm stage's per-class test numbers: which classes
each config moves (a configs x classes heat map of the paired differences), what its fairness costs
(the worst class against the device-hours of a training run) and whether the fairness it was
chosen for on validation holds on the test split (Kendall's tau between its class ranks on the
training AEs, validation and test). Each figure is a pure function of ``ReportData``.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from hamsweep.report.data import ReportData
from hamsweep.report.figures._base import Drawn, pct, robust_attack

__all__ = ["class_differences", "cost_of_fairness", "rank_agreement", "rank_taus"]

_BASELINE_PREFIX = "pgd_at:"  # a baseline's config (``sweep.confirm``)


def _none(name: str, title: str, why: str) -> Drawn:
    """A figure with nothing to draw yet, saying why."""
    fig, ax = plt.subplots(figsize=(8, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=11)
    return Drawn(name, title, why, fig)


def _by_config(d: ReportData) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """The robust attack shown, and config -> its confirm_classes rows of it, by class id."""
    attack = robust_attack(d.confirm_classes)
    rows: dict[str, list[dict[str, Any]]] = {}
    # the baseline first, then the configs by their search trial's number (the tables' order)
    number = {r["config"]: r.get("number") for r in d.confirm}
    for r in sorted(
        d.confirm_classes,
        key=lambda r: (number.get(r["config"]) is not None, number.get(r["config"]) or 0),
    ):
        if r["attack"] == attack:
            rows.setdefault(r["config"], []).append(r)
    return attack, {c: sorted(v, key=lambda r: r["class_id"]) for c, v in rows.items()}


def _baseline(rows: dict[str, list[dict[str, Any]]]) -> str | None:
    return next((c for c in rows if c.startswith(_BASELINE_PREFIX)), None)


# ---- the paired per-class differences ----
def class_differences(d: ReportData) -> Drawn:
    title = "Which classes each config moves: its per-class difference to PGD-AT on the test split"
    attack, rows = _by_config(d)
    base = _baseline(rows)  # the classes' order: the first baseline's (the one, in a comparison)
    configs = [c for c in rows if not c.startswith(_BASELINE_PREFIX)]
    if base is None or not configs:
        return _none("class_differences", title, "no confirm stage yet: nothing to compare")
    order = sorted(range(len(rows[base])), key=lambda i: (rows[base][i]["mean"], i))
    diff = np.array([[pct(rows[c][i]["diff_mean"]) for i in order] for c in configs])
    limit = max(1.0, float(np.nanmax(np.abs(diff)))) if np.isfinite(diff).any() else 1.0
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(order) + 3), 0.5 * len(configs) + 2.2))
    image = ax.imshow(diff, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for y, c in enumerate(configs):
        for x, i in enumerate(order):
            r = rows[c][i]
            if _excludes_zero(r):  # its paired interval excludes 0: marked
                ax.text(x, y, "*", ha="center", va="center", fontsize=12, color="black")
    ax.set_yticks(range(len(configs)), [rows[c][0]["label"] for c in configs], fontsize=8)
    names = [rows[base][i]["class_name"] for i in order]
    if len(order) <= 40:
        ax.set_xticks(range(len(order)), names, rotation=60, fontsize=7)
    ax.set_xlabel("class, sorted by PGD-AT's test accuracy (weakest left)")
    fig.colorbar(image, ax=ax, label="Δ robust accuracy vs PGD-AT (points)")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    conf = round(100 * rows[configs[0]][0]["confidence"], 6)
    return Drawn(
        "class_differences",
        title,
        f"Mean over paired seeds of the class's {attack} accuracy minus PGD-AT's of the same "
        f"seed (confirm_classes.diff_mean); *: its {conf:g}% interval excludes 0.",
        fig,
    )


def _excludes_zero(r: dict[str, Any]) -> bool:
    low, high = r.get("diff_low"), r.get("diff_high")
    return low is not None and high is not None and (low > 0 or high < 0)


# ---- the cost of fairness ----
def cost_of_fairness(d: ReportData) -> Drawn:
    title = "The cost of fairness: worst-class robust accuracy against device-hours of training"
    worst = {
        r["config"]: r
        for r in d.confirm
        if r["metric"] == "worst" and r["attack"] == robust_attack(d.confirm)
    }
    if not worst:
        return _none("cost_of_fairness", title, "no confirm stage yet: nothing to compare")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    unit = d.device()
    for config, r in worst.items():
        hours = r.get("device_hours") if r.get("device_hours") is not None else r.get("gpu_hours")
        if hours is None:
            continue
        is_base = config.startswith(_BASELINE_PREFIX)
        ax.errorbar(
            [hours],
            [pct(r["mean"])],
            yerr=[[pct(r["std"]) if r.get("std") is not None else 0.0]],
            fmt="s" if is_base else "o",
            color="black" if is_base else None,
            capsize=3,
        )
        ax.annotate(
            r["label"],
            (hours, pct(r["mean"])),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set(
        xlabel=f"{unit}-hours of one training run (its own and the inherited warm-up), mean "
        "over seeds",
        ylabel=f"worst-class {robust_attack(d.confirm)} accuracy (%)",
    )
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return Drawn(
        "cost_of_fairness",
        title,
        "Each confirmed config and PGD-AT (square): the mean over seeds of its worst class on the "
        "test split (bars: one std) against its confirm.device_hours.",
        fig,
    )


# ---- does the fairness generalize? ----
def rank_taus(d: ReportData) -> dict[str, dict[str, float]]:
    """Confirmed config's label -> Kendall's tau (tau-b) between its classes' ranks on pairs of
    splits: 'val~test' (its search trial at its best epoch on validation, and its confirmed test
    means), 'train~val' and 'train~test': the training split's ranks are its confirm trials' PGD
    accuracy on a training subset (``confirm.train_examples``), the mean over seeds; in a folder
    without them, where its method records accuracy on each class's training AEs
    (``class_state.train_robust_acc``: CFA, FAAL), that at its search trial's best epoch."""
    from scipy.stats import kendalltau

    _, rows = _by_config(d)
    val = _per_class(d.best_classes, lambda r: r["correct"] / r["n"] if r["n"] else math.nan)
    train = _per_class(d.chosen_state, lambda r: r["train_robust_acc"])
    confirmed_train = _per_class(
        [{**r, "trial": r["config"]} for r in d.train_classes], lambda r: r["acc"]
    )
    trunks = {t["trunk_key"]: t["trial"] for t in d.baselines() if t.get("trunk_key")}
    out: dict[str, dict[str, float]] = {}
    for config, classes in rows.items():
        trial = (
            trunks.get(config.removeprefix(_BASELINE_PREFIX))
            if config.startswith(_BASELINE_PREFIX)
            else config
        )
        splits = {"test": [r["mean"] for r in classes]}
        for name, table, key in (
            ("val", val, trial),
            ("train", train, trial),
            ("train", confirmed_train, config),  # the confirm trials' own, where they have it
        ):
            if key in table and len(table[key]) == len(classes):
                splits[name] = table[key]
        taus = {}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            if a in splits and b in splits:
                tau = kendalltau(splits[a], splits[b], nan_policy="omit").statistic
                taus[f"{a}~{b}"] = float(tau)
        out[classes[0]["label"]] = taus
    return out


def _per_class(rows: list[dict[str, Any]], value: Any) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in sorted(rows, key=lambda r: (r["trial"], r["class_id"])):
        out.setdefault(r["trial"], []).append(value(r))
    return out


def rank_agreement(d: ReportData) -> Drawn:
    # (no apostrophe in a title: the page escapes it, and a reader searching for it would miss)
    title = (
        "Does the fairness generalize? Kendall tau of each config, its class ranks across splits"
    )
    taus = rank_taus(d)
    if not taus:
        return _none("rank_agreement", title, "no confirm stage yet: nothing to compare")
    pairs = ["train~val", "train~test", "val~test"]
    labels = list(taus)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels) + 2), 4))
    width = 0.8 / len(pairs)
    for k, pair in enumerate(pairs):
        ys = [taus[c].get(pair, math.nan) for c in labels]
        ax.bar([i + (k - 1) * width for i in range(len(labels))], ys, width, label=pair)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    ax.set(ylabel="Kendall's tau-b", ylim=(-1.05, 1.05))
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return Drawn(
        "rank_agreement",
        title,
        "Per config, tau-b between its per-class robust accuracies: on validation (its search "
        "trial at its best epoch; PGD-AT: the search trunk), on the test split (mean over the "
        "confirm seeds) and on the training split (its confirm trials' PGD accuracy on "
        "confirm.train_examples training images, mean over seeds; in older folders, for methods "
        "that record it, on its training AEs at its best epoch: class_state.train_robust_acc). "
        "A missing bar: that split has no per-class number.",
        fig,
    )
