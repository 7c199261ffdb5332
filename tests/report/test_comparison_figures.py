"""The report's comparison figures (``hamsweep.report.figures.comparison``) on a real confirmed
sweep (``conftest.confirmed_sweep``): each number drawn is recomputed here from the Parquet
tables with pyarrow, numpy and scipy."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import kendalltau

from hamsweep.report.data import load
from hamsweep.report.figures import class_differences, cost_of_fairness, rank_agreement
from hamsweep.report.figures.comparison import rank_taus
from hamsweep.results.read import read_table


@pytest.fixture(scope="module")
def data(confirmed_sweep):
    out, _ = confirmed_sweep
    return out, load(out)


def _confirm_classes(out) -> list[dict]:
    rows = read_table(out, "confirm_classes").to_pylist()
    attacks = {r["attack"] for r in rows} - {"clean"}
    attack = "autoattack" if "autoattack" in attacks else min(attacks)
    return [r for r in rows if r["attack"] == attack]


def test_the_heat_map_is_each_configs_paired_difference_per_class_stars_where_it_excludes_0(data):
    out, d = data
    rows = _confirm_classes(out)
    configs = sorted({r["config"] for r in rows if not r["config"].startswith("pgd_at:")})
    base = sorted(r["config"] for r in rows if r["config"].startswith("pgd_at:"))[0]
    base_rows = sorted((r for r in rows if r["config"] == base), key=lambda r: r["class_id"])
    order = sorted(range(len(base_rows)), key=lambda i: (base_rows[i]["mean"], i))
    drawn = class_differences(d)
    ax = drawn.figure.axes[0]
    image = ax.images[0].get_array()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == len(configs) == image.shape[0] and image.shape[1] == len(base_rows)
    stars = 0
    for y, label in enumerate(labels):
        mine = sorted((r for r in rows if r["label"] == label), key=lambda r: r["class_id"])
        want = [100 * mine[i]["diff_mean"] for i in order]
        np.testing.assert_allclose(np.asarray(image[y]), want, rtol=1e-12)
        stars += sum(r["diff_low"] > 0 or r["diff_high"] < 0 for r in mine)
    assert sum(t.get_text() == "*" for t in ax.texts) == stars
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        base_rows[i]["class_name"] for i in order
    ]


def test_the_cost_of_fairness_is_each_configs_worst_class_against_its_device_hours(data):
    out, d = data
    ax = cost_of_fairness(d).figure.axes[0]
    confirm = read_table(out, "confirm").to_pylist()
    attacks = {r["attack"] for r in confirm} - {"clean"}
    attack = "autoattack" if "autoattack" in attacks else min(attacks)
    worst = {r["label"]: r for r in confirm if r["metric"] == "worst" and r["attack"] == attack}
    points = {a.get_text(): a.xy for a in ax.texts}
    assert set(points) == set(worst)
    for label, (x, y) in points.items():
        assert x == pytest.approx(worst[label]["device_hours"], rel=1e-12)
        assert y == pytest.approx(100 * worst[label]["mean"], rel=1e-12)


def test_kendall_tau_compares_each_configs_class_ranks_on_validation_and_test(data):
    out, d = data
    trials = read_table(out, "trials").to_pylist()
    classes = read_table(out, "classes").to_pylist()
    taus = rank_taus(d)
    rows = _confirm_classes(out)
    trunk_of = {
        t["trunk_key"]: t["trial"]
        for t in trials
        if t["role"] == "trunk" and t["stage"] == "search"
    }
    best = {t["trial"]: t["best_epoch"] for t in trials}
    checked = 0
    for config in {r["config"] for r in rows}:
        mine = sorted((r for r in rows if r["config"] == config), key=lambda r: r["class_id"])
        trial = trunk_of[config.removeprefix("pgd_at:")] if config.startswith("pgd_at:") else config
        val = sorted(
            (
                c
                for c in classes
                if c["trial"] == trial
                and c["epoch"] == best[trial]
                and c["split"] == "val"
                and c["attack"] != "clean"
            ),
            key=lambda c: c["class_id"],
        )
        want = kendalltau([c["correct"] / c["n"] for c in val], [r["mean"] for r in mine]).statistic
        got = taus[mine[0]["label"]]["val~test"]
        assert got == pytest.approx(want, abs=1e-12) or (math.isnan(got) and math.isnan(want))
        # the training split: each confirm seed's PGD accuracy on its training subset, averaged
        train = _train_means(trials, classes, config)
        assert len(train) == len(mine)
        for pair, other in (
            ("train~val", [c["correct"] / c["n"] for c in val]),
            ("train~test", [r["mean"] for r in mine]),
        ):
            want = kendalltau(train, other).statistic
            got = taus[mine[0]["label"]][pair]
            assert got == pytest.approx(want, abs=1e-12) or (math.isnan(got) and math.isnan(want))
        checked += 1
    assert checked >= 2
    # (confirm.train_examples: null) as many training images as the test split, each trial
    confirm = {t["trial"] for t in trials if t["stage"] == "confirm" and t["status"] == "completed"}

    def size(trial: str, split: str) -> int:
        return sum(
            c["n"]
            for c in classes
            if c["trial"] == trial and c["split"] == split and c["attack"] == "clean"
        )

    assert confirm and all(size(t, "train") == size(t, "test") > 0 for t in confirm)
    bars = rank_agreement(d).figure.axes[0]
    assert [t.get_text() for t in bars.get_xticklabels()] == list(taus)
    assert pq.read_schema(next((out / "confirm_classes").glob("*.parquet")))  # real Parquet


def _train_means(trials: list[dict], classes: list[dict], config: str) -> list[float]:
    """Per class, the mean over ``config``'s completed confirm trials of its robust accuracy on
    its training-split subset."""
    mine = {
        t["trial"]
        for t in trials
        if t["stage"] == "confirm" and t["status"] == "completed" and t["config"] == config
    }
    by_class: dict[int, list[float]] = {}
    for c in classes:
        if c["trial"] in mine and c["split"] == "train" and c["attack"] != "clean":
            by_class.setdefault(c["class_id"], []).append(c["correct"] / c["n"])
    return [float(np.mean(by_class[k])) for k in sorted(by_class)]
